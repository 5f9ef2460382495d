//! Access benchmark: what access control costs, against a real core holding
//! `--events` (default 1,000,000) stored events.
//!
//! 1. Load: two intake agents take the events (100 locations, 4 cameras
//!    each, timestamps spread over the last 6 days, det_oids given) as fast
//!    as they accept them; the bench waits until the core stored them all,
//!    the search index holds them all and the core is idle again.
//! 2. `scoped_top_ms`, `scoped_search_ms` against `unscoped_top_ms`,
//!    `unscoped_search_ms`: the same gRPC `TopItems` (a one-day range and the
//!    whole range) and `Search` (a word matching ~30% of the events, one
//!    matching ~0.05%) as three viewer API tokens — unscoped, scoped to 3 of
//!    the 100 locations, scoped to 50 of them — `--reps` timed calls each
//!    (after 3 untimed), interleaved so that the three share the machine's
//!    noise. Each call is timed at the client (loopback gRPC, the audit
//!    record every Search and TopItems writes included, for all three).
//!    The last line carries, per family, the pair with the worst ratio
//!    scoped/unscoped (medians); every pair is printed above it.
//! 3. `media_authz_ms`: `GET /media/<sha>?event=<det_oid>` of a snapshot on
//!    a keep-alive connection, as an investigator session scoped to 3
//!    locations seeing the snapshot for the first time (the scope check —
//!    the event read, its media refs — and a durable audit record) against
//!    the admin token fetching the same snapshot again within its playback
//!    window (no scope check, no audit record: the fetch with both left
//!    out). Median over `--snapshots` distinct snapshots (each first view
//!    writes a record; a repeat within 10 minutes does not).
//! 4. `audit_verify_per_s`: the core's audit log is then filled to at least
//!    `--audit-records` (default 1,000,000) records by real audited calls
//!    (`TopItems` over an empty minute, 512 at a time), the core is stopped,
//!    and `sightline-core audit verify` is timed (3 runs, the median).
//!
//! Last line: `access events=<n> scoped_top_ms=<a> unscoped_top_ms=<b> scoped_search_ms=<c> unscoped_search_ms=<d> media_authz_ms=<e> audit_verify_per_s=<f>`.
//! Run with `deploy/bench-access.sh` (release build).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use sightline_agent::{
    capture::spool::{MediaItem, Spool},
    transport::media::Uploader,
};
use sightline_proto::v1::{
    intake_client::IntakeClient, Detection, GetEventRequest, PublishRequest, Role, SearchRequest,
    TopItemsRequest,
};
use sightline_tests::{
    data::{now_ms, write_locations, ITEMS},
    proc::cpu_seconds,
    query::{client, client_as, stats, Client},
    Agent, AgentArgs, Core,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const LOCATIONS: i64 = 100;
/// The few locations of the small scope.
const FEW: [i64; 3] = [1, 2, 3];
/// The span the events' timestamps cover, ending a minute ago (retention
/// keeps 7 days by default).
const SPAN_MS: i64 = 6 * 86_400_000;
/// A rare item: what "a word matching few events" searches for.
const RARE: &str = "ladder";
const RARE_SHARE: f64 = 0.0005;
/// Publishing tasks (4 per agent) and their batch.
const PUBLISHERS: u64 = 8;
const BATCH: usize = 500;
/// Untimed calls before the timed ones.
const WARMUP: usize = 3;

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// One publisher's share of the events; what it made, for the checks.
struct Made {
    per_location: HashMap<i64, u64>,
    /// det_oids (and nothing else) of events at location 1, for snapshots.
    at_location_1: Vec<i64>,
}

fn detection(rng: &mut StdRng, oid: i64, from_ms: i64) -> Detection {
    let loc = rng.random_range(1..=LOCATIONS);
    let item = if rng.random::<f64>() < RARE_SHARE {
        RARE
    } else {
        ITEMS[(rng.random::<f64>().powi(2) * ITEMS.len() as f64) as usize]
    };
    Detection {
        geographical_location_oid: loc,
        video_camera_oid: loc * 100 + rng.random_range(0..4),
        detection_oid: Some(oid),
        item_name: item.into(),
        timestamp_detected: from_ms + rng.random_range(0..SPAN_MS),
        confidence: 0.9,
        ..Default::default()
    }
}

async fn publish(url: String, task: u64, n: u64, from_ms: i64, keep: usize) -> Made {
    let mut c = IntakeClient::connect(url).await.unwrap();
    let mut rng = StdRng::seed_from_u64(7000 + task);
    let mut made = Made {
        per_location: HashMap::new(),
        at_location_1: Vec::new(),
    };
    let mut k = 0;
    while k < n {
        let dets: Vec<Detection> = (k..(k + BATCH as u64).min(n))
            .map(|i| detection(&mut rng, (task * 1_000_000_000 + i + 1) as i64, from_ms))
            .collect();
        for d in &dets {
            *made
                .per_location
                .entry(d.geographical_location_oid)
                .or_default() += 1;
            if d.geographical_location_oid == 1 && made.at_location_1.len() < keep {
                made.at_location_1.push(d.detection_oid.unwrap());
            }
        }
        k += dets.len() as u64;
        loop {
            match c
                .publish(PublishRequest {
                    detections: dets.clone(),
                })
                .await
            {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(s) => panic!("publish failed: {s}"),
            }
        }
    }
    made
}

/// Waits until the core's CPU stays under 15% of a core for 2 s (flushes,
/// compactions and indexing done), at most `max`.
async fn settle(pid: u32, max: Duration) {
    let t = Instant::now();
    loop {
        let before = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pct = (cpu_seconds(pid) - before) / 2.0 * 100.0;
        if pct < 15.0 || t.elapsed() > max {
            println!(
                "settled: core at {pct:.0}% of a core after {:.0} s",
                t.elapsed().as_secs_f64()
            );
            return;
        }
    }
}

/// A query as measured: what it asks, by which token.
#[derive(Clone, Copy)]
enum Ask {
    Top { from_ms: i64, to_ms: i64 },
    Search { query: &'static str },
}

/// Runs one call; (ms at the client, a figure of the answer: the events
/// counted by TopItems, the hits of Search).
async fn call(c: &mut Client, ask: Ask) -> (f64, u64) {
    let t = Instant::now();
    let n = match ask {
        Ask::Top { from_ms, to_ms } => c
            .top_items(TopItemsRequest {
                from_ms,
                to_ms,
                x: 10,
                geographical_location_oid: None,
            })
            .await
            .unwrap()
            .into_inner()
            .locations
            .iter()
            .map(|l| l.total)
            .sum(),
        Ask::Search { query } => {
            c.search(SearchRequest {
                query: query.into(),
                page_size: 20,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .total_hits
        }
    };
    (t.elapsed().as_secs_f64() * 1000.0, n)
}

/// An HTTP/1.1 keep-alive connection, enough for `GET`s with a
/// `Content-Length` answer.
struct Conn {
    s: BufReader<tokio::net::TcpStream>,
    host: String,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Self {
            s: BufReader::new(s),
            host: addr.to_string(),
        }
    }

    /// `GET path` with `credential` (a header line ending in `\r\n`):
    /// (status, body bytes, ms from the request to the body's last byte).
    async fn get(&mut self, path: &str, credential: &str) -> (u16, usize, f64) {
        let t = Instant::now();
        self.s
            .get_mut()
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {}\r\n{credential}\r\n",
                    self.host
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut line = String::new();
        self.s.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {line:?}"));
        let mut len = None;
        loop {
            line.clear();
            self.s.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.unwrap_or_else(|| panic!("{path}: status {status} without Content-Length"));
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).await.unwrap();
        (status, len, t.elapsed().as_secs_f64() * 1000.0)
    }
}

/// A JPEG of 640x360 (a gradient with noise, different for each `i`).
fn jpeg(i: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(i);
    let img = image::RgbImage::from_fn(640, 360, |x, y| {
        let n: u8 = rng.random_range(0..24);
        image::Rgb([
            (x / 3) as u8 ^ n,
            (y / 2) as u8 ^ n,
            (i as u8).wrapping_mul(37) ^ n,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .unwrap();
    out
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[tokio::main]
async fn main() {
    let args = sightline_tests::bench::Args::from_env();
    let events = args.get("--events", 1_000_000.0) as u64;
    let reps = args.get("--reps", 30.0) as usize;
    let snapshots = args.get("--snapshots", 100.0) as usize;
    let audit_records = args.get("--audit-records", 1_000_000.0) as u64;

    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, &(1..=LOCATIONS).collect::<Vec<_>>());
    let core = Core::start(dir.path(), Some(&b));
    let url = core.url();

    // ---- 1. load ----
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| {
            Agent::start(AgentArgs::intake(
                dir.path(),
                &format!("load-{i}"),
                url.clone(),
            ))
        })
        .collect();
    let end_ms = now_ms() - 60_000;
    let from_ms = end_ms - SPAN_MS;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..PUBLISHERS {
        let n = events / PUBLISHERS + u64::from(task < events % PUBLISHERS);
        let url = agents[(task % 2) as usize].intake_url();
        let keep = if task == 0 { snapshots } else { 0 };
        tasks.push(tokio::spawn(publish(url, task, n, from_ms, keep)));
    }
    let mut per_location: BTreeMap<i64, u64> = BTreeMap::new();
    let mut at_location_1 = Vec::new();
    for t in tasks {
        let m = t.await.unwrap();
        for (l, n) in m.per_location {
            *per_location.entry(l).or_default() += n;
        }
        at_location_1.extend(m.at_location_1);
    }
    let published_s = t0.elapsed().as_secs_f64();
    let mut last_print = Instant::now();
    loop {
        let s = stats(&url).await.stored;
        if s >= events {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("load: {s} of {events} stored");
            last_print = Instant::now();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3600),
            "the core stored {s} of {events} within an hour"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stored_s = t0.elapsed().as_secs_f64();
    for a in &mut agents {
        a.terminate();
    }
    let mut admin = client(&url).await;
    loop {
        let hits = admin
            .search(SearchRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .total_hits;
        if hits >= events {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("load: {hits} of {events} indexed");
            last_print = Instant::now();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3600),
            "the index held {hits} of {events} within an hour"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let indexed_s = t0.elapsed().as_secs_f64();
    println!(
        "load: {events} events over {LOCATIONS} locations and 6 days published in {published_s:.1} s, stored after {stored_s:.1} s ({:.0}/s), indexed after {indexed_s:.1} s",
        events as f64 / stored_s
    );
    settle(core.pid(), Duration::from_secs(300)).await;

    // ---- 2. scoped against unscoped queries ----
    let half: Vec<i64> = (1..=LOCATIONS / 2).collect();
    let scopes: [(&str, Vec<i64>); 3] = [
        ("unscoped", vec![]),
        ("scope 3/100", FEW.to_vec()),
        ("scope 50/100", half.clone()),
    ];
    let mut clients = Vec::new();
    for (name, locs) in &scopes {
        let secret = core
            .create_token(&format!("bench-{}", locs.len()), Role::Viewer, locs, 0)
            .await;
        clients.push((*name, locs.clone(), client_as(&url, &secret).await));
    }
    let now = now_ms();
    // One day, in the middle of the span, starting and ending off the hour
    // (minute aggregates at both ends, hour aggregates between).
    let day_from = from_ms + 2 * 86_400_000 + 17 * 60_000 + 30_000;
    let asks: [(&str, Ask); 4] = [
        (
            "TopItems, one day",
            Ask::Top {
                from_ms: day_from,
                to_ms: day_from + 86_400_000,
            },
        ),
        (
            "TopItems, whole range (6 days)",
            Ask::Top {
                from_ms: from_ms - 60_000,
                to_ms: now + 60_000,
            },
        ),
        ("Search \"person\"", Ask::Search { query: "person" }),
        ("Search \"ladder\"", Ask::Search { query: RARE }),
    ];
    // times[ask][scope]
    let mut times = vec![vec![Vec::new(); scopes.len()]; asks.len()];
    let mut answers = vec![vec![0u64; scopes.len()]; asks.len()];
    for rep in 0..WARMUP + reps {
        for (a, (_, ask)) in asks.iter().enumerate() {
            for (s, (_, _, c)) in clients.iter_mut().enumerate() {
                let (ms, n) = call(c, *ask).await;
                if rep >= WARMUP {
                    times[a][s].push(ms);
                }
                answers[a][s] = n;
            }
        }
    }
    // The whole range's counts are the ground truth's, scope by scope.
    for (s, (name, locs, _)) in clients.iter().enumerate() {
        let truth: u64 = per_location
            .iter()
            .filter(|(l, _)| locs.is_empty() || locs.contains(l))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            answers[1][s], truth,
            "TopItems over the whole range, {name}: events counted vs published"
        );
    }
    println!(
        "queries: gRPC, {reps} timed calls of each (after {WARMUP}), the three tokens interleaved; median (p95) ms, ratio of medians to unscoped"
    );
    let mut worst: [(f64, f64, f64, String); 2] = Default::default();
    for (a, (what, _)) in asks.iter().enumerate() {
        let base = median(&times[a][0]);
        let mut line = format!("  {what}:");
        for (s, (name, _, _)) in clients.iter().enumerate() {
            let m = median(&times[a][s]);
            line += &format!(
                " {name} {m:.2} ({:.2}){} [{}]",
                percentile(&times[a][s], 0.95),
                if s == 0 {
                    String::new()
                } else {
                    format!(" x{:.2}", m / base)
                },
                answers[a][s]
            );
            let family = usize::from(a >= 2);
            if s > 0 && m / base > worst[family].0 {
                worst[family] = (m / base, m, base, format!("{what}, {name}"));
            }
        }
        println!("{line}");
    }
    println!(
        "worst ratios: TopItems x{:.2} ({}), Search x{:.2} ({})",
        worst[0].0, worst[0].3, worst[1].0, worst[1].3
    );

    // ---- 3. a snapshot fetch: authorization and audit ----
    assert!(
        at_location_1.len() >= snapshots,
        "only {} events at location 1",
        at_location_1.len()
    );
    let spool = Arc::new(Spool::open(dir.path().join("upload-spool"), u64::MAX).unwrap());
    let mut shots = Vec::new();
    for (i, det) in at_location_1.iter().take(snapshots).enumerate() {
        let bytes = jpeg(i as u64);
        shots.push((*det, sha256_hex(&bytes), bytes.len()));
        spool
            .put(MediaItem {
                kind: "snapshot",
                content_type: "image/jpeg",
                bytes,
                det_oids: vec![*det],
            })
            .unwrap();
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let uploader = Uploader {
        spool: spool.clone(),
        transport: Arc::new(
            sightline_agent::transport::grpc::GrpcTransport::new(
                &url,
                None,
                Duration::from_secs(5),
            )
            .unwrap(),
        ),
        agent_id: "load-0".into(),
        bytes_per_s: 0,
    };
    let up = tokio::spawn(uploader.run(stop.clone()));
    let t = Instant::now();
    while !spool.list().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "uploads did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = up.await;
    for (det, sha, _) in &shots {
        let ev = admin
            .get_event(GetEventRequest {
                detection_oid: *det,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            ev.media.iter().any(|m| &m.sha256 == sha),
            "snapshot of {det} not attached"
        );
    }
    let (inv, password) = ("investigator", "bench-password-not-secret");
    core.add_user(inv, Role::Investigator, &FEW, password).await;
    let cookie = sightline_tests::http::login(core.http, inv, password).await;
    let admin_auth = format!("Authorization: Bearer {}\r\n", core.admin_token());
    let mut as_admin = Conn::open(core.http).await;
    let mut as_inv = Conn::open(core.http).await;
    settle(core.pid(), Duration::from_secs(60)).await;
    // [admin first view, admin again, investigator first view, investigator again]
    let mut fetch: [Vec<f64>; 4] = Default::default();
    for (det, sha, size) in &shots {
        let path = format!("/media/{sha}?event={det}");
        for (k, times) in fetch.iter_mut().enumerate() {
            let (status, len, ms) = if k < 2 {
                as_admin.get(&path, &admin_auth).await
            } else {
                as_inv.get(&path, &cookie).await
            };
            assert_eq!((status, len), (200, *size), "GET {path} ({k})");
            times.push(ms);
        }
    }
    let names = [
        "admin, first view (audit record, no scope check)",
        "admin, again (neither)",
        "investigator scoped 3/100, first view (scope check + audit record)",
        "investigator scoped 3/100, again (scope check only)",
    ];
    let sizes: Vec<f64> = shots.iter().map(|s| s.2 as f64 / 1024.0).collect();
    println!(
        "snapshot fetch: {} snapshots of {:.0} KiB (median), keep-alive HTTP/1.1; median (p95) ms:",
        shots.len(),
        median(&sizes)
    );
    for (k, n) in names.iter().enumerate() {
        println!(
            "  {n}: {:.3} ({:.3})",
            median(&fetch[k]),
            percentile(&fetch[k], 0.95)
        );
    }
    let media_authz_ms = median(&fetch[2]) - median(&fetch[1]);
    println!(
        "  authorization + audit: {media_authz_ms:.3} ms (investigator first view - admin again); of which the scope check {:.3} ms (investigator again - admin again), the audit record {:.3} ms (admin first - admin again)",
        median(&fetch[3]) - median(&fetch[1]),
        median(&fetch[0]) - median(&fetch[1])
    );

    // ---- 4. audit verify over >= audit_records records ----
    let channels = 8;
    let per_channel = 64;
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..channels {
        let c = client(&url).await;
        for _ in 0..per_channel {
            let (mut c, done) = (c.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                // An empty minute: the call is little more than its record.
                let (from_ms, to_ms) = (end_ms + 120_000, end_ms + 180_000);
                while done.fetch_add(1, Ordering::Relaxed) < audit_records {
                    c.top_items(TopItemsRequest {
                        from_ms,
                        to_ms,
                        x: 1,
                        geographical_location_oid: None,
                    })
                    .await
                    .unwrap();
                }
            }));
        }
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                println!(
                    "audit: {} of {audit_records} audited calls",
                    done.load(Ordering::Relaxed).min(audit_records)
                );
            }
        })
    };
    for w in workers {
        w.await.unwrap();
    }
    progress.abort();
    let fill_s = t.elapsed().as_secs_f64();
    println!(
        "audit: {audit_records} audited TopItems calls in {fill_s:.1} s ({:.0}/s, {} in flight)",
        audit_records as f64 / fill_s,
        channels * per_channel
    );
    drop((admin, clients));
    let data_dir = core.args.data_dir.clone();
    let mut core = core;
    core.terminate();
    let audit_dir = data_dir.join("audit");
    let bytes: u64 = std::fs::read_dir(&audit_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mut rates = Vec::new();
    let mut records = 0u64;
    for run in 0..3 {
        let (secs, n) = verify(&data_dir);
        records = n;
        println!(
            "audit verify run {run}: {n} records ({:.0} MiB, {:.0} bytes each) in {secs:.2} s = {:.0} records/s",
            bytes as f64 / 1048576.0,
            bytes as f64 / n as f64,
            n as f64 / secs
        );
        rates.push(n as f64 / secs);
    }
    assert!(
        records >= audit_records,
        "the log holds {records} records, fewer than {audit_records}"
    );
    let audit_verify_per_s = median(&rates);

    println!(
        "access events={events} scoped_top_ms={:.2} unscoped_top_ms={:.2} scoped_search_ms={:.2} unscoped_search_ms={:.2} media_authz_ms={media_authz_ms:.3} audit_verify_per_s={audit_verify_per_s:.0}",
        worst[0].1, worst[0].2, worst[1].1, worst[1].2
    );
}

/// Runs `sightline-core audit verify` on the core's data folder: (seconds,
/// records verified).
fn verify(data_dir: &Path) -> (f64, u64) {
    let t = Instant::now();
    let out = std::process::Command::new(sightline_tests::bin_path("sightline-core"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "audit verify failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = text
        .split("ok: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {text:?}"));
    (secs, n)
}
