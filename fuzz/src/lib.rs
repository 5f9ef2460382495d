//! Fuzzing on a stable toolchain: each target is a function of arbitrary
//! bytes that must not panic, hang or allocate without bound. Inputs are the
//! checked-in corpus (`fuzz/corpus/<target>/`) and mutations of it (bit
//! flips, byte inserts and deletes, interesting integers, truncation,
//! duplication, splices), each one derived from the run's seed and its
//! index alone, so any input of a run can be made again.
//!
//! - `cargo run -p sightline-fuzz --bin fuzz -- <target|all> --seconds N`
//!   runs a target (or each in turn) for N seconds; a crash writes its input
//!   to `fuzz/crashes/<target>-<hash>` and exits non-zero. The dev profile
//!   on purpose: integer overflow and debug assertions panic there (they
//!   wrap silently in release), dependencies are built at opt-level 1, and
//!   it reuses the workspace's own build.
//! - `cargo test -p sightline-fuzz` runs each target over its corpus and a
//!   few thousand mutations (CI).
//!
//! No coverage feedback (that needs a nightly toolchain's sanitizers): the
//! corpus is the guide, so it holds valid examples of each format.

pub mod targets;

use std::{
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{mpsc, Mutex},
    thread,
    time::Duration,
};

/// One call of a target taking longer than this is a hang.
pub const HANG: Duration = Duration::from_secs(2);

/// The largest input tried, in bytes: mutations are cut back to it.
pub const MAX_INPUT: usize = 256 * 1024;

/// A fuzz target: must return for any bytes, without panicking.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Where the checked-in corpus is.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// Where crashing inputs are written.
pub fn crash_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crashes")
}

/// The corpus of `target`, by file name; one empty input when there is none.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// Bytes text formats give meaning to.
const TOKENS: &[&[u8]] = &[
    b",",
    b"\n",
    b"\r\n",
    b"\"",
    b"'",
    b"=",
    b"&",
    b"%",
    b"%00",
    b"%ff",
    b":",
    b"-",
    b"0",
    b"9",
    b"-1",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"99999999999999999999",
    b"1e308",
    b"NaN",
    b"inf",
    b"null",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\\",
    b"\\u0000",
    b"*",
    b"(",
    b")",
    b"AND",
    b"OR",
    b"NOT",
    b"~",
    b"^",
    b"TO",
    b" ",
    b"\t",
    b"\xff",
    b"\xc3",
    b"\0",
    b"bytes=",
    b"custom",
];

/// Input `i` of a run seeded with `seed`: the corpus entries first, as they
/// are, then mutations; the same (seed, i) always gives the same bytes.
pub fn input(corpus: &[Vec<u8>], seed: u64, i: u64) -> Vec<u8> {
    if (i as usize) < corpus.len() {
        return corpus[i as usize].clone();
    }
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let mut data = corpus[rng.below(corpus.len())].clone();
    let rounds = 1 + rng.below(4) + if rng.below(8) == 0 { 8 } else { 0 };
    for _ in 0..rounds {
        mutate(&mut data, corpus, &mut rng);
    }
    data.truncate(MAX_INPUT);
    data
}

fn mutate(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        2 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        4 if len > 0 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            let width = [1usize, 2, 4, 8][rng.below(4)];
            let bytes = if rng.below(2) == 0 {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let slice = if rng.below(2) == 0 {
                &bytes[..width]
            } else {
                &bytes[8 - width..]
            };
            let at = rng.below(len);
            for (k, b) in slice.iter().enumerate() {
                if let Some(d) = data.get_mut(at + k) {
                    *d = *b;
                }
            }
        }
        5 if len > 0 => data.truncate(rng.below(len)),
        6 if len > 0 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(4096));
            let chunk = data[from..from + n].to_vec();
            let times = 1 + rng.below(4);
            let at = rng.below(len + 1);
            for _ in 0..times {
                data.splice(at..at, chunk.iter().copied());
            }
        }
        7 => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        8 | 9 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            let at = rng.below(len + 1);
            if rng.below(2) == 0 || len == 0 {
                data.splice(at..at, t.iter().copied());
            } else {
                let end = (at + t.len()).min(len);
                data.splice(at..end, t.iter().copied());
            }
        }
        _ if len > 0 => {
            // A run of one byte value, as in a length or a padding.
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(16));
            let v = [0u8, 0xff, b'9'][rng.below(3)];
            data[at..at + n].fill(v);
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

/// A stable name for an input (FNV-1a, hex).
pub fn hash(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// How one call went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The panic, with where it happened.
    Panic(String),
    /// No answer within the bound.
    Hang(Duration),
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Keeps panics quiet (a target's panic is reported as its outcome) but
/// remembers the last one's message and place.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(info.to_string());
        }
    }));
}

/// Runs a target's calls on its own thread, so a call that does not return
/// is seen (the caller ends the process: the thread cannot be stopped).
pub struct Worker {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Result<(), String>>,
}

impl Worker {
    pub fn start(target: Target) -> Self {
        let (tx, in_rx) = mpsc::channel::<Vec<u8>>();
        let (out_tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("fuzz-{}", target.name))
            .spawn(move || {
                while let Ok(data) = in_rx.recv() {
                    // A panic the target caught itself leaves nothing behind.
                    if let Ok(mut last) = LAST_PANIC.lock() {
                        *last = None;
                    }
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&data)))
                        .map_err(|payload| {
                            let recorded = LAST_PANIC.lock().ok().and_then(|mut l| l.take());
                            recorded.unwrap_or_else(|| {
                                payload
                                    .downcast_ref::<&str>()
                                    .map(|s| s.to_string())
                                    .or_else(|| payload.downcast_ref::<String>().cloned())
                                    .unwrap_or_else(|| "a panic".into())
                            })
                        });
                    if out_tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the fuzz worker");
        Self { tx, rx }
    }

    pub fn run(&self, data: Vec<u8>, bound: Duration) -> Outcome {
        if self.tx.send(data).is_err() {
            return Outcome::Panic("the worker thread is gone".into());
        }
        match self.rx.recv_timeout(bound) {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(p)) => Outcome::Panic(p),
            Err(_) => Outcome::Hang(bound),
        }
    }
}

/// For the tests: the corpus and then mutations, until `max_mutations` or
/// `budget` is spent (whichever first). The first bad input and what
/// happened, or how many inputs ran.
pub fn quick(
    target: Target,
    seed: u64,
    max_mutations: u64,
    budget: Duration,
) -> Result<u64, String> {
    quiet_panics();
    let corpus = corpus(target.name);
    let worker = Worker::start(target);
    let started = std::time::Instant::now();
    let total = corpus.len() as u64 + max_mutations;
    let mut i = 0;
    while i < total && (i < corpus.len() as u64 || started.elapsed() < budget) {
        let data = input(&corpus, seed, i);
        // A test build (opt-level 0 for this crate) is slower than the runner.
        match worker.run(data.clone(), HANG * 5) {
            Outcome::Ok => {}
            bad => {
                return Err(format!(
                    "target {} seed {seed} input #{i} ({} bytes, {:?}): {bad:?}",
                    target.name,
                    data.len(),
                    String::from_utf8_lossy(&data[..data.len().min(200)])
                ))
            }
        }
        i += 1;
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each target's test time: with 13 targets, CI spends well under 10 s.
    const BUDGET: Duration = Duration::from_millis(500);
    const MUTATIONS: u64 = 3000;

    fn survives(name: &str) {
        let t = targets::by_name(name).expect("a known target");
        assert!(
            corpus_dir(name).is_dir(),
            "the corpus of {name} is checked in"
        );
        match quick(t, 0x5eed, MUTATIONS, BUDGET) {
            Ok(n) => assert!(n > 0),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_same_seed_and_index_give_the_same_input() {
        let corpus = vec![b"hello, world".to_vec(), vec![1, 2, 3]];
        for i in 0..200 {
            assert_eq!(input(&corpus, 9, i), input(&corpus, 9, i));
        }
        let distinct: std::collections::HashSet<Vec<u8>> =
            (2..200).map(|i| input(&corpus, 9, i)).collect();
        assert!(distinct.len() > 100, "mutations vary: {}", distinct.len());
    }

    #[test]
    fn a_panicking_or_hanging_target_is_caught() {
        quiet_panics();
        let w = Worker::start(Target {
            name: "bad",
            run: |d| {
                if d == b"panic" {
                    panic!("boom");
                }
                if d == b"hang" {
                    thread::sleep(Duration::from_secs(5));
                }
            },
        });
        assert_eq!(w.run(b"fine".to_vec(), HANG), Outcome::Ok);
        assert!(matches!(w.run(b"panic".to_vec(), HANG), Outcome::Panic(p) if p.contains("boom")));
        assert!(matches!(
            w.run(b"hang".to_vec(), Duration::from_millis(100)),
            Outcome::Hang(_)
        ));
    }

    #[test]
    fn edge_messages_of_any_bytes_never_panic() {
        survives("edge_messages");
    }

    #[test]
    fn intake_of_any_detection_never_panics() {
        survives("intake");
    }

    #[test]
    fn replay_csv_of_any_bytes_never_panics() {
        survives("replay_csv");
    }

    #[test]
    fn replay_jsonl_of_any_bytes_never_panics() {
        survives("replay_jsonl");
    }

    #[test]
    fn replay_parquet_of_any_bytes_never_panics() {
        survives("replay_parquet");
    }

    #[test]
    fn dataset_b_csv_of_any_bytes_never_panics() {
        survives("dataset_b_csv");
    }

    #[test]
    fn dataset_b_parquet_of_any_bytes_never_panics() {
        survives("dataset_b_parquet");
    }

    #[test]
    fn a_search_of_any_query_filters_and_token_never_panics() {
        survives("search_query");
    }

    #[test]
    fn a_page_token_of_any_bytes_never_panics() {
        survives("page_tokens");
    }

    #[test]
    fn a_range_header_of_any_bytes_never_panics() {
        survives("http_range");
    }

    #[test]
    fn a_dashboard_query_string_of_any_bytes_never_panics() {
        survives("http_query");
    }

    #[test]
    fn a_jpeg_check_of_any_bytes_never_panics() {
        survives("media_jpeg");
    }

    #[test]
    fn an_mp4_check_of_any_bytes_never_panics() {
        survives("media_mp4");
    }
}
