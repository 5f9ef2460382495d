//! The agent's durable event buffer, in RocksDB.
//!
//! Every event the agent accepts is appended here, with the next sequence
//! number, before the publisher hears "accepted"; it leaves only once the core
//! has acknowledged it. A crash of the agent (kill -9), of the core or of the
//! link loses nothing: on restart the buffer still holds every event the core
//! has not acknowledged, under the same seqs.
//!
//! # On-disk format (version 2)
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `events` | the first seq of a run, u64 big-endian (8 bytes) | a **run**: the encoded `sightline.v1.EdgeEvent`s of consecutive seqs from the key's, each as u32 LE length ‖ bytes |
//! | `meta` | `epoch` | u64 BE: random, non-zero; written when the buffer is created and by [`Buffer::new_epoch`] |
//! | `meta` | `next_seq` | u64 BE: the seq the next accepted event gets (starts at 1) |
//! | `meta` | `acked` | u64 BE: the highest seq the core acknowledged (starts at 0) |
//! | `meta` | `source/<name>` | u64 BE: how far a source (a replayed file) got |
//! | `meta` | `camera/` ‖ video_camera_oid (i64 BE) | `sightline.v1.CameraIntake`: the camera's intake numbering and losses ([`cameras`]), written in the same `WriteBatch` as the events it numbered |
//! | `meta` | `format` | u64 BE: 2 (format 1, one event per `events` entry, is rewritten as runs at open) |
//!
//! # Promises
//!
//! - Seqs MUST be gap-free: one epoch's events carry 1, 2, 3, ... in the order
//!   they were accepted.
//! - An append MUST write its events, `next_seq` and its source position in one
//!   `WriteBatch`, so after any crash `events` holds exactly the seqs
//!   `acked + 1 ..= next_seq - 1` (the first run MAY start at or below
//!   `acked`: a run is deleted once all of it is acknowledged) and a replay
//!   resumes after the rows it stored. A group commit writes its events as
//!   runs of at most [`RUN_BYTES`]: one RocksDB entry for many events.
//! - An append MUST be durable (fsync'd, with `sync = true`) before it is
//!   answered.
//! - An append that does not fit MUST be refused whole ([`BufferError::Full`]):
//!   nothing of it is kept, nothing already held is dropped.
//! - An event MUST be deleted only by [`Buffer::ack_through`], i.e. after the
//!   core acknowledged its seq (a run, with a range delete, once all its seqs
//!   are) and, with [`BufferOptions::keep_acked`] = N, once N newer events
//!   are acknowledged too (whole runs are kept: up to a run more); the
//!   deletion and `acked` go in one `WriteBatch`
//!   (not fsync'd on its own: the next synced append carries it to disk, and a
//!   lost ack only means a resend the core recognises by seq).
//! - The epoch MUST be new when the buffer is created afresh (the directory was
//!   wiped), and MUST change otherwise only through [`Buffer::new_epoch`]: the
//!   core keys its watermark by (agent, epoch), so a wiped buffer can never be
//!   mistaken for a resend.
//! - [`Buffer::new_epoch`] MUST renumber every event still held into the new
//!   epoch as seqs `1 ..= n`, in their order, and write the renumbered events,
//!   the new epoch, `next_seq = n + 1` and `acked = 0` in one fsync'd
//!   `WriteBatch`: after a crash the buffer is wholly in the old epoch or
//!   wholly in the new one. [`Buffer::new_epoch_after`] (a core restored from
//!   a backup, PROTOCOL.md rule 18a) also renumbers, first, the kept
//!   acknowledged events after the core's watermark.
//! - A disk that refuses writes (full, or failing) MUST NOT lose what is held:
//!   appends are refused ([`BufferError::DiskFull`], [`BufferError::DiskFault`]),
//!   reads go on, acknowledgements are applied in memory and written once the
//!   disk takes writes again; the buffer reopens its database in place
//!   (at most every [`RECOVERY_INTERVAL`], once [`RECOVERY_PROBE_BYTES`] can be
//!   written) so that appends work again without a restart.
//! - Reads SHOULD come from an in-memory cache of the newest events (bounded by
//!   `CACHE_BYTES`), falling back to RocksDB after a restart or a long outage.

pub mod cameras;
mod disk;
mod epoch;
mod held;
#[cfg(test)]
mod tests;

pub use disk::{RECOVERY_INTERVAL, RECOVERY_PROBE_BYTES};

use disk::{load_state, open_db};

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex, RwLock},
    thread::JoinHandle,
    time::Instant,
};

use bytes::Bytes;
use prost::Message;
use rocksdb::{WriteBatch, DB};
use sightline_proto::v1::{CameraIntake, Detection, EdgeEvent, LossReason};
use tokio::sync::{oneshot, watch, Notify};

const CF_EVENTS: &str = "events";
const CF_META: &str = "meta";
const FORMAT_VERSION: u64 = 2;
/// Most bytes of events in one run (one `events` entry); a run holds at
/// least one event. A run is one block of RocksDB's, read and uncompressed
/// whole for any event in it: runs of 1 MiB held ~11 MiB of the agent's heap
/// in blocks read while a backlog drained (BENCHMARKS.md, "Memory under a
/// backlog").
pub const RUN_BYTES: usize = 256 * 1024;
/// Most bytes of recent events kept in memory for the sender, each event
/// counted with its handle in the cache's index ([`cached_cost`]): ~6,500
/// events, over half a second of an agent taking 10,000 a second, which
/// the sender (and the live lane) read within milliseconds. During a burst
/// it holds the newest events, which the sender reaches only after the
/// backlog before them: 2 MiB was ~2 MiB more of the agent's peak
/// (BENCHMARKS.md, forty-third session).
pub const CACHE_BYTES: usize = 1024 * 1024;
/// Bytes of each buffer that encoded events are sliced from.
const ENCODE_CHUNK: usize = 32 * 1024;
/// Most events one writer commit takes from its queue.
const MAX_GROUP_EVENTS: usize = 20_000;

/// What one cached event counts against [`CACHE_BYTES`]: its encoding and
/// its handle in the cache's index. The handle (a `Bytes`, 32 bytes) is as
/// large as a small event's encoding: counting the encodings alone, 4 MiB of
/// them held another 4 MiB of index, a fifth of the agent's heap at its peak
/// (BENCHMARKS.md, twenty-ninth session).
pub(crate) fn cached_cost(b: &Bytes) -> usize {
    b.len() + std::mem::size_of::<Bytes>()
}

/// Why the buffer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer full: {held_events} events / {held_bytes} bytes held, limits are {max_events} events / {max_bytes} bytes; nothing of this publish was kept, retry once the core has caught up")]
    Full {
        held_events: u64,
        held_bytes: u64,
        max_events: u64,
        max_bytes: u64,
    },
    #[error("buffer disk full at {path}: {reason}; nothing of this publish was kept, retry once space is freed (the agent recovers by itself)")]
    DiskFull { path: String, reason: String },
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("buffer is corrupt: {0}")]
    Corrupt(String),
    #[error("the core acknowledged seq {seq}, but the buffer only ever assigned up to {last}")]
    AckBeyond { seq: u64, last: u64 },
    #[error("seq {from} was already acknowledged and deleted (acked through {acked})")]
    Gone { from: u64, acked: u64 },
    #[error("buffer database at {path} takes no writes since one failed ({reason}); it is reopened once its disk takes writes again")]
    DiskFault { path: String, reason: String },
    #[error("buffer is closed")]
    Closed,
}

/// Limits and durability of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct BufferOptions {
    pub max_events: u64,
    pub max_bytes: u64,
    pub sync: bool,
    /// Acknowledged events kept (at least the newest this many, in whole
    /// runs) so that a core restored from a backup can be given them again
    /// (`buffer.keep_acked`; PROTOCOL.md rule 18a). They do not count
    /// towards `max_events`/`max_bytes`. 0: deleted once acknowledged.
    pub keep_acked: u64,
}

impl Default for BufferOptions {
    fn default() -> Self {
        Self {
            max_events: 2_000_000,
            max_bytes: 512 * 1024 * 1024,
            sync: true,
            keep_acked: 0,
        }
    }
}

/// What an append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The seq of the first event; the others follow without gaps.
    pub first_seq: u64,
    pub count: u64,
}

/// What [`Buffer::new_epoch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEpoch {
    pub old_epoch: u64,
    pub epoch: u64,
    /// Events carried over, now seqs `1 ..= renumbered`.
    pub renumbered: u64,
    /// Of them, acknowledged events that were kept (`keep_acked`) and are
    /// sent again ([`Buffer::new_epoch_after`]).
    pub resent_acked: u64,
    /// Acknowledged events after the core's watermark that were no longer
    /// kept: the core lacks them, and they cannot be sent again (rule 18).
    pub lost: u64,
}

/// A position of a source to store along with its events.
#[derive(Debug, Clone)]
pub struct SourcePosition {
    pub name: String,
    pub position: u64,
}

/// What a refused append means for the camera numbers it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// The caller tries again: the numbers are given back.
    Retry,
    /// The detections are refused for good (the publisher was told).
    Refuse,
    /// The detections are dropped (`when_full = "drop"`).
    Drop,
}

struct AppendReq {
    events: Vec<Detection>,
    accepted_ms: i64,
    source: Option<SourcePosition>,
    on_full: OnFull,
    reply: oneshot::Sender<Result<Appended, BufferError>>,
}

/// What the writer thread is asked to do, in order.
enum Req {
    Append(AppendReq),
    /// With the core's watermark when kept acknowledged events after it go
    /// into the new epoch too.
    NewEpoch(Option<u64>, oneshot::Sender<Result<NewEpoch, BufferError>>),
}

/// In-memory view of what the buffer holds.
struct State {
    epoch: u64,
    next_seq: u64,
    /// Per-camera numbering at intake.
    cameras: cameras::Cameras,
    /// The highest acknowledged seq (may be ahead of `persisted_acked` while
    /// the disk refuses writes).
    acked: u64,
    /// `acked` as last written to disk.
    persisted_acked: u64,
    /// Encoded bytes of the held events, seqs `acked + 1 ..` (by chunks of
    /// seqs: see `held`).
    held: held::HeldBytes,
    /// The first seq of each run on disk holding an unacknowledged event, in
    /// order (the first MAY start at or below `acked`).
    runs: VecDeque<u64>,
    /// The first seq of each run on disk all of whose events are
    /// acknowledged, kept (`keep_acked`) or not yet deleted, in order; all
    /// before `runs`.
    kept_runs: VecDeque<u64>,
    /// Every `events` key below this is deleted on disk: where the next
    /// range delete of acknowledged runs starts, so that range tombstones
    /// never overlap (see `Shared::persist_acked`).
    deleted_below: u64,
    /// The newest encoded events, contiguous, ending at `next_seq - 1`.
    cache: VecDeque<Bytes>,
    /// Seq of `cache[0]`.
    cache_first: u64,
    cache_bytes: usize,
    /// How long each append of the cached events took to become durable:
    /// (first seq of the append, ms from its `accepted_ms` to its fsync), in
    /// seq order; an append's events run to the next mark's seq. Kept only
    /// for what the cache holds (so bounded with it), for the latency
    /// metrics (`Batch.durable_after_ms`); unknown after a restart.
    durable: VecDeque<(u64, u32)>,
}

impl State {
    /// Events held, not yet acknowledged: seqs `acked + 1 .. next_seq`.
    fn held_events(&self) -> u64 {
        self.next_seq.saturating_sub(self.acked + 1)
    }

    /// Drops the durable marks of appends wholly below `seq`.
    fn forget_durable_below(&mut self, seq: u64) {
        while self.durable.get(1).is_some_and(|&(next, _)| next <= seq) {
            self.durable.pop_front();
        }
        if self.durable.len() == 1 && self.next_seq <= seq {
            self.durable.clear();
        }
    }

    /// Forgets (in memory) every event through `seq`.
    fn drop_through(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.held.drop_through(seq);
        while self.cache_first <= seq && !self.cache.is_empty() {
            let b = self.cache.pop_front().unwrap();
            self.cache_bytes -= cached_cost(&b);
            self.cache_first += 1;
        }
        if self.cache.is_empty() {
            self.cache_first = self.next_seq;
        }
        self.forget_durable_below(self.cache_first.max(seq + 1));
        self.acked = seq;
        self.cameras.settle(seq);
        // Runs all of whose seqs are acknowledged.
        while !self.runs.is_empty() {
            let end = self.runs.get(1).copied().unwrap_or(self.next_seq);
            if end > seq + 1 {
                break;
            }
            let first = self.runs.pop_front().expect("not empty");
            self.kept_runs.push_back(first);
        }
    }

    /// The first seq of the run on disk holding `seq` (a kept run or a held
    /// one; `seq` itself when none is known to).
    fn run_start(&self, seq: u64) -> u64 {
        let below = |runs: &VecDeque<u64>| {
            let i = runs.partition_point(|&r| r <= seq);
            i.checked_sub(1).map(|i| runs[i])
        };
        below(&self.runs)
            .or_else(|| below(&self.kept_runs))
            .unwrap_or(seq)
    }

    /// The lowest seq on disk (of a kept run, or a held one).
    fn first_on_disk(&self) -> u64 {
        self.kept_runs
            .front()
            .or(self.runs.front())
            .copied()
            .unwrap_or(self.next_seq)
    }

    /// Forgets the kept runs that end before `floor` (they are deleted from
    /// disk with the next range delete); the first seq still kept.
    fn forget_kept_below(&mut self, floor: u64) -> u64 {
        while let Some(_first) = self.kept_runs.front() {
            let end = self
                .kept_runs
                .get(1)
                .or(self.runs.front())
                .copied()
                .unwrap_or(self.next_seq);
            if end > floor {
                break;
            }
            self.kept_runs.pop_front();
        }
        self.first_on_disk()
    }
}

/// Packs encoded events into runs of at most [`RUN_BYTES`] (at least one
/// event each): (first seq, value) for each. Each run is allocated once, at
/// its final size, rather than grown (and copied) by doubling.
fn pack_runs(first_seq: u64, events: &[Bytes]) -> Vec<(u64, Vec<u8>)> {
    let packed = |e: &Bytes| 4 + e.len();
    let mut left: usize = events.iter().map(packed).sum();
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let seq = first_seq + i as u64;
        if !matches!(out.last(), Some((_, run)) if run.len() + packed(e) <= RUN_BYTES) {
            out.push((seq, Vec::with_capacity(left.min(RUN_BYTES).max(packed(e)))));
        }
        let (_, run) = out.last_mut().expect("pushed above");
        run.extend_from_slice(&(e.len() as u32).to_le_bytes());
        run.extend_from_slice(e);
        left -= packed(e);
    }
    out
}

/// The events of a run, in seq order (from its key's seq).
fn unpack_run(run: &[u8]) -> Result<Vec<&[u8]>, BufferError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < run.len() {
        let len = run
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| BufferError::Corrupt(format!("run cut inside a length at byte {at}")))?;
        let event = run.get(at + 4..at + 4 + len).ok_or_else(|| {
            BufferError::Corrupt(format!(
                "run cut inside an event at byte {at} ({len} bytes claimed, {} left)",
                run.len() - at - 4
            ))
        })?;
        out.push(event);
        at += 4 + len;
    }
    Ok(out)
}

/// Why the disk refused a write, until the database is reopened.
struct Fault {
    reason: String,
    /// The disk was full (ENOSPC, or RocksDB's space limit).
    no_space: bool,
    last_try: Instant,
}

struct Shared {
    path: PathBuf,
    /// The open database; `None` only between a failed reopen and the next
    /// try (see [`Shared::recover`]).
    db: RwLock<Option<DB>>,
    opts: BufferOptions,
    state: Mutex<State>,
    /// Set from a failed write until a write succeeds again.
    fault: Mutex<Option<Fault>>,
    /// Tells the sender that `next_seq` moved.
    next_seq_tx: watch::Sender<u64>,
    /// Tells blocked publishers that acks made room.
    room: Notify,
}

/// The durable buffer. Cheap to share (`Arc<Buffer>`); appends go through one
/// writer thread that commits every queued append in one fsync'd `WriteBatch`
/// (group commit), so many concurrent publishers cost one fsync.
pub struct Buffer {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Req>>,
    writer: Option<JoinHandle<()>>,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn be_u64(bytes: &[u8], what: &str) -> Result<u64, BufferError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        BufferError::Corrupt(format!("{what}: expected 8 bytes, got {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl Buffer {
    /// Opens (or creates) the buffer at `path`.
    pub fn open(path: &Path, opts: BufferOptions) -> Result<Self, BufferError> {
        let db = open_db(path)?;
        let state = load_state(&db)?;
        let (next_seq_tx, _) = watch::channel(state.next_seq);
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            opts,
            state: Mutex::new(state),
            fault: Mutex::new(None),
            next_seq_tx,
            room: Notify::new(),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("buffer-writer".into())
            .spawn(move || writer_loop(&writer_shared, rx))
            .map_err(|e| BufferError::Corrupt(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            shared,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// This buffer's epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.state.lock().unwrap().epoch
    }

    /// The seq the next accepted event gets.
    pub fn next_seq(&self) -> u64 {
        self.shared.state.lock().unwrap().next_seq
    }

    /// The highest acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.shared.state.lock().unwrap().acked
    }

    /// Events held, not yet acknowledged.
    pub fn depth(&self) -> u64 {
        self.shared.state.lock().unwrap().held_events()
    }

    /// Bytes held, not yet acknowledged.
    pub fn held_bytes(&self) -> u64 {
        self.shared.state.lock().unwrap().held.total()
    }

    /// When the oldest unacknowledged event was accepted (epoch ms); 0 when
    /// none is held (or it cannot be read: the sender reports it, best effort).
    pub fn oldest_held_ms(&self) -> i64 {
        let from = {
            let st = self.shared.state.lock().unwrap();
            if st.held_events() == 0 {
                return 0;
            }
            st.acked + 1
        };
        match self.read(from, 1, usize::MAX) {
            Ok(events) => events
                .first()
                .and_then(|b| EdgeEvent::decode(b.as_ref()).ok())
                .map_or(0, |e| e.accepted_ms),
            Err(_) => 0,
        }
    }

    /// Why the buffer's disk refuses writes, while it does.
    pub fn disk_fault(&self) -> Option<String> {
        self.shared
            .fault
            .lock()
            .unwrap()
            .as_ref()
            .map(|f| f.reason.clone())
    }

    /// A receiver that changes whenever events are appended (holds `next_seq`).
    pub fn watch_appends(&self) -> watch::Receiver<u64> {
        self.shared.next_seq_tx.subscribe()
    }

    /// Resolves when an acknowledgement has made room.
    pub async fn room(&self) {
        self.shared.room.notified().await
    }

    /// How far the named source got, as stored with its last append.
    pub fn source_position(&self, name: &str) -> Result<Option<u64>, BufferError> {
        self.shared.with_db(|db| {
            let meta = db.cf_handle(CF_META).expect("meta cf");
            let key = format!("source/{name}");
            db.get_cf(meta, key.as_bytes())?
                .map(|v| be_u64(&v, &key))
                .transpose()
        })
    }

    /// Appends `events` (each with `detection_oid` set) durably; resolves once
    /// they are on disk, with the seqs they got.
    pub async fn append(
        &self,
        events: Vec<Detection>,
        source: Option<SourcePosition>,
    ) -> Result<Appended, BufferError> {
        self.append_with(events, source, OnFull::Retry).await
    }

    /// [`Buffer::append`], saying what a refusal for a full buffer means for
    /// the camera numbers the events were given.
    pub async fn append_with(
        &self,
        events: Vec<Detection>,
        source: Option<SourcePosition>,
        on_full: OnFull,
    ) -> Result<Appended, BufferError> {
        let rx = self.submit(events, source, on_full)?;
        rx.await.map_err(|_| BufferError::Closed)?
    }

    /// Every camera's numbering at intake, for the status report.
    pub fn camera_intake(&self) -> Vec<CameraIntake> {
        self.shared.state.lock().unwrap().cameras.report()
    }

    /// [`Buffer::append`] for synchronous callers.
    pub fn append_blocking(
        &self,
        events: Vec<Detection>,
        source: Option<SourcePosition>,
    ) -> Result<Appended, BufferError> {
        let rx = self.submit(events, source, OnFull::Retry)?;
        rx.blocking_recv().map_err(|_| BufferError::Closed)?
    }

    fn submit(
        &self,
        events: Vec<Detection>,
        source: Option<SourcePosition>,
        on_full: OnFull,
    ) -> Result<oneshot::Receiver<Result<Appended, BufferError>>, BufferError> {
        let (reply, rx) = oneshot::channel();
        let req = AppendReq {
            events,
            accepted_ms: sightline_proto::now_ms(),
            source,
            on_full,
            reply,
        };
        self.send(Req::Append(req))?;
        Ok(rx)
    }

    fn send(&self, req: Req) -> Result<(), BufferError> {
        self.tx
            .as_ref()
            .ok_or(BufferError::Closed)?
            .send(req)
            .map_err(|_| BufferError::Closed)
    }

    /// Starts a new epoch (the core's state and this buffer's disagree, see
    /// PROTOCOL.md "Time travel"): every event still held is renumbered, in
    /// order, as seqs `1 ..= n` of a fresh random epoch, in one fsync'd write.
    /// Runs on the writer thread, between two group commits.
    pub async fn new_epoch(&self) -> Result<NewEpoch, BufferError> {
        let (reply, rx) = oneshot::channel();
        self.send(Req::NewEpoch(None, reply))?;
        rx.await.map_err(|_| BufferError::Closed)?
    }

    /// [`Buffer::new_epoch`] for a core behind what it acknowledged (it was
    /// restored from a backup; PROTOCOL.md rule 18a): the kept acknowledged
    /// events after its `watermark` (`keep_acked`) are renumbered too,
    /// before the unacknowledged ones.
    pub async fn new_epoch_after(&self, watermark: u64) -> Result<NewEpoch, BufferError> {
        let (reply, rx) = oneshot::channel();
        self.send(Req::NewEpoch(Some(watermark), reply))?;
        rx.await.map_err(|_| BufferError::Closed)?
    }

    /// [`Buffer::new_epoch`] for synchronous callers.
    pub fn new_epoch_blocking(&self) -> Result<NewEpoch, BufferError> {
        self.new_epoch_after_blocking(None)
    }

    /// [`Buffer::new_epoch`] or [`Buffer::new_epoch_after`], for synchronous
    /// callers.
    pub fn new_epoch_after_blocking(
        &self,
        watermark: Option<u64>,
    ) -> Result<NewEpoch, BufferError> {
        let (reply, rx) = oneshot::channel();
        self.send(Req::NewEpoch(watermark, reply))?;
        rx.blocking_recv().map_err(|_| BufferError::Closed)?
    }

    /// Up to `max_events` encoded events (and about `max_bytes`, at least
    /// one), starting at seq `from`, consecutive. Empty when `from` is not yet
    /// assigned.
    pub fn read(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, BufferError> {
        let (start, end) = {
            let st = self.shared.state.lock().unwrap();
            if from <= st.acked {
                return Err(BufferError::Gone {
                    from,
                    acked: st.acked,
                });
            }
            if from >= st.next_seq {
                return Ok(Vec::new());
            }
            if !st.cache.is_empty() && from >= st.cache_first {
                // Sized once: a batch's list grown by doubling was ~0.9 MiB
                // of the agent's heap at its peak (heaptrack).
                let mut out = Vec::with_capacity(presize(max_events, st.next_seq - from));
                let mut bytes = 0;
                for b in st.cache.iter().skip((from - st.cache_first) as usize) {
                    if out.len() >= max_events || (!out.is_empty() && bytes + b.len() > max_bytes) {
                        break;
                    }
                    bytes += b.len();
                    out.push(b.clone());
                }
                return Ok(out);
            }
            (st.run_start(from), st.next_seq)
        };
        self.shared
            .with_db(|db| read_db(db, start, from, end, max_events, max_bytes))
    }

    /// For each of the `n` events from seq `from`: ms from its `accepted_ms`
    /// until it was durable here (`Batch.durable_after_ms`). Empty when that
    /// is not known for all of them (read back from disk after a restart).
    pub fn durable_after(&self, from: u64, n: usize) -> Vec<u32> {
        let st = self.shared.state.lock().unwrap();
        let end = from + n as u64;
        if n == 0 || st.durable.front().is_none_or(|&(first, _)| first > from) || end > st.next_seq
        {
            return Vec::new();
        }
        let start = st.durable.partition_point(|&(first, _)| first <= from) - 1;
        let mut out = Vec::with_capacity(n);
        for (i, &(first, after)) in st.durable.iter().enumerate().skip(start) {
            let until = st.durable.get(i + 1).map_or(st.next_seq, |m| m.0).min(end);
            let from_here = first.max(from);
            out.extend(std::iter::repeat_n(after, (until - from_here) as usize));
            if until >= end {
                break;
            }
        }
        out
    }

    /// The core acknowledged everything through `seq`: delete it. While the
    /// disk refuses writes the acknowledgement is applied in memory (the
    /// events are no longer sent nor counted) and written with the next one
    /// that succeeds.
    pub fn ack_through(&self, seq: u64) -> Result<(), BufferError> {
        {
            let mut st = self.shared.state.lock().unwrap();
            if seq <= st.acked {
                return Ok(());
            }
            if seq >= st.next_seq {
                return Err(BufferError::AckBeyond {
                    seq,
                    last: st.next_seq - 1,
                });
            }
            st.drop_through(seq);
        }
        self.shared.room.notify_waiters();
        self.shared.recover();
        if let Err(e) = self.shared.persist_acked() {
            tracing::debug!(error = %e, seq, "acknowledgement kept in memory until the buffer disk takes writes");
        }
        Ok(())
    }

    /// Flushes RocksDB's memtables (used before measuring, and on shutdown).
    pub fn flush(&self) -> Result<(), BufferError> {
        self.shared.with_db(|db| Ok(db.flush()?))
    }
}

/// Reads from the run starting at `start` (the one holding `from`, see
/// [`State::run_start`]) forward. The iterator never looks below `start`:
/// acknowledged runs before it are range-deleted, and a seek backwards over
/// them read (and held) every deleted run still on disk — 60 MiB of the
/// agent's heap under a backlog (heaptrack: `SeekForPrev` ←
/// `SkipPrevDeleted`; BENCHMARKS.md, "The commit path", eleventh session).
fn read_db(
    db: &DB,
    start: u64,
    from: u64,
    end: u64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Bytes>, BufferError> {
    let cf = db.cf_handle(CF_EVENTS).expect("events cf");
    let mut out = Vec::with_capacity(presize(max_events, end.saturating_sub(from)));
    let mut bytes = 0;
    let mut opts = uncached();
    opts.set_iterate_lower_bound(key(start).to_vec());
    let mut it = db.raw_iterator_cf_opt(cf, opts);
    it.seek(key(start));
    if !matches!(it.key().map(|k| be_u64(k, "event key")), Some(Ok(first)) if first <= from) {
        // `start` was not the run holding `from` (the state does not know
        // it): the run is the last one starting at or before `from`.
        it = db.raw_iterator_cf_opt(cf, uncached());
        it.seek_for_prev(key(from));
        if !it.valid() {
            it.seek(key(from));
        }
    }
    let mut expect = from;
    // (offset, length) in the run of each event taken from it.
    let mut taken: Vec<(usize, usize)> = Vec::new();
    let mut full = false;
    while !full && it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        let first = be_u64(k, "event key")?;
        taken.clear();
        for (i, e) in unpack_run(v)?.into_iter().enumerate() {
            let seq = first + i as u64;
            if seq < expect {
                continue;
            }
            if seq >= end
                || out.len() + taken.len() >= max_events
                || (!(out.is_empty() && taken.is_empty()) && bytes + e.len() > max_bytes)
            {
                full = true;
                break;
            }
            if seq != expect {
                return Err(BufferError::Corrupt(format!(
                    "expected seq {expect}, found {seq}"
                )));
            }
            bytes += e.len();
            taken.push((e.as_ptr() as usize - v.as_ptr() as usize, e.len()));
            expect += 1;
        }
        // The events taken, copied out of RocksDB's block in one piece and
        // handed out as slices of it: one allocation per run read, not one
        // per event (a batch is 2,000 of them).
        if let (Some(&(from_at, _)), Some(&(last_at, last_len))) = (taken.first(), taken.last()) {
            let span = Bytes::copy_from_slice(&v[from_at..last_at + last_len]);
            out.extend(
                taken
                    .iter()
                    .map(|&(at, len)| span.slice(at - from_at..at - from_at + len)),
            );
        }
        it.next();
    }
    it.status()?;
    if out.is_empty() {
        return Err(BufferError::Corrupt(format!("seq {from} is missing")));
    }
    Ok(out)
}

/// The room a read's list starts with: the events it may return, up to
/// 4,096 (a larger `batch_max_events` grows the list as it fills, bounded
/// by the read's bytes, rather than reserving it all up front).
fn presize(max_events: usize, held: u64) -> usize {
    max_events
        .min(usize::try_from(held).unwrap_or(usize::MAX))
        .min(4096)
}

/// Reads that leave RocksDB's block cache alone: a run is read once or
/// twice, by consecutive sends, and never again once acknowledged. Cached,
/// the runs read while a burst drained (one block of up to [`RUN_BYTES`]
/// each) filled the cache's 2 MiB, 1.7 MiB of the agent's heap at its peak
/// (heaptrack; BENCHMARKS.md, forty-third session); the cache keeps the
/// tables' index and filter blocks.
fn uncached() -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    opts.fill_cache(false);
    opts
}

impl Drop for Buffer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn writer_loop(shared: &Shared, rx: mpsc::Receiver<Req>) {
    let mut pending: Option<Req> = None;
    loop {
        let first = match pending.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let first = match first {
            Req::NewEpoch(watermark, reply) => {
                let _ = reply.send(epoch::renumber(shared, watermark));
                continue;
            }
            Req::Append(a) => a,
        };
        let mut n: usize = first.events.len();
        let mut group = vec![first];
        while n < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(Req::Append(req)) => {
                    n += req.events.len();
                    group.push(req);
                }
                Ok(other) => {
                    pending = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        shared.recover();
        commit_group(shared, group);
    }
}

fn commit_group(shared: &Shared, group: Vec<AppendReq>) {
    let guard = shared.db.read().unwrap();
    match guard.as_ref() {
        Some(db) => commit_group_in(shared, db, group),
        None => {
            drop(guard);
            for req in group {
                let _ = req.reply.send(Err(shared.reopening()));
            }
        }
    }
}

impl BufferError {
    /// A copy for each caller of a failed group commit.
    fn for_each_caller(&self) -> BufferError {
        match self {
            BufferError::DiskFull { path, reason } => BufferError::DiskFull {
                path: path.clone(),
                reason: reason.clone(),
            },
            BufferError::DiskFault { path, reason } => BufferError::DiskFault {
                path: path.clone(),
                reason: reason.clone(),
            },
            BufferError::Db(e) => BufferError::Db(e.clone()),
            other => BufferError::Corrupt(other.to_string()),
        }
    }
}

/// The request's events encoded as `EdgeEvent`s numbered from `first_seq`,
/// each a slice of a shared buffer: one allocation for many events, not one
/// per event (each is held in the cache and sent as its own slice). The
/// buffers are [`ENCODE_CHUNK`] bytes each (a new one when the last is
/// full), not one for the whole request: a large allocation is mapped and
/// unmapped on its own (see the agent's allocator settings), and the cache
/// frees its oldest events a chunk at a time.
fn encode_events(first_seq: u64, accepted_ms: i64, events: Vec<Detection>) -> Vec<Bytes> {
    let mut buf = bytes::BytesMut::with_capacity(ENCODE_CHUNK);
    events
        .into_iter()
        .enumerate()
        .map(|(i, detection)| {
            let event = EdgeEvent {
                seq: first_seq + i as u64,
                detection: Some(detection),
                accepted_ms,
            };
            // A full buffer reserves a new one of at least its original
            // capacity; the events already split off keep the old one.
            event.encode_raw(&mut buf);
            buf.split().freeze()
        })
        .collect()
}

fn commit_group_in(shared: &Shared, db: &DB, group: Vec<AppendReq>) {
    let started = Instant::now();
    let requests = group.len();
    let events_cf = db.cf_handle(CF_EVENTS).expect("events cf");
    let meta = db.cf_handle(CF_META).expect("meta cf");
    let (mut next, mut held_events, mut held_bytes) = {
        let st = shared.state.lock().unwrap();
        (st.next_seq, st.held_events(), st.held.total())
    };
    let first_of_group = next;
    let mut batch = WriteBatch::default();
    let mut accepted = Vec::with_capacity(group.len());
    // (first seq, accepted_ms) of each append that fits.
    let mut marks: Vec<(u64, i64)> = Vec::with_capacity(group.len());
    let mut encoded_all: Vec<Bytes> =
        Vec::with_capacity(group.iter().map(|r| r.events.len()).sum());
    let mut numbered = Vec::with_capacity(group.len());
    for mut req in group {
        let numbering = shared.state.lock().unwrap().cameras.number(&mut req.events);
        let encoded = encode_events(next, req.accepted_ms, req.events);
        let count = encoded.len() as u64;
        let bytes: u64 = encoded.iter().map(|b| b.len() as u64).sum();
        if held_events + count > shared.opts.max_events
            || held_bytes + bytes > shared.opts.max_bytes
        {
            let _ = req.reply.send(Err(BufferError::Full {
                held_events,
                held_bytes,
                max_events: shared.opts.max_events,
                max_bytes: shared.opts.max_bytes,
            }));
            let mut st = shared.state.lock().unwrap();
            let reason = match req.on_full {
                OnFull::Retry => {
                    st.cameras.rollback(numbering);
                    continue;
                }
                OnFull::Refuse => LossReason::RefusedFull,
                OnFull::Drop => LossReason::DroppedFull,
            };
            st.cameras.keep(&numbering, Some(reason));
            // Settled once everything accepted before it is acknowledged.
            let (last, acked) = (next - 1, st.acked);
            st.cameras.checkpoint(last, &[&numbering], acked);
            continue;
        }
        shared.state.lock().unwrap().cameras.keep(&numbering, None);
        numbered.push(numbering);
        if let Some(src) = &req.source {
            batch.put_cf(
                meta,
                format!("source/{}", src.name),
                src.position.to_be_bytes(),
            );
        }
        marks.push((next, req.accepted_ms));
        accepted.push((
            req.reply,
            Appended {
                first_seq: next,
                count,
            },
        ));
        encoded_all.extend(encoded);
        next += count;
        held_events += count;
        held_bytes += bytes;
    }
    let counters = shared.state.lock().unwrap().cameras.take_dirty();
    let meta_counters = |batch: &mut WriteBatch| {
        for (k, v) in &counters {
            batch.put_cf(meta, k, v);
        }
    };
    if accepted.is_empty() {
        // Refused numbers are kept too, so that a restart does not reuse them.
        if !counters.is_empty() {
            let mut batch = WriteBatch::default();
            meta_counters(&mut batch);
            if let Err(e) = shared.write(db, batch, shared.opts.sync) {
                tracing::debug!(error = %e, "camera counters not written");
            }
        }
        return;
    }
    meta_counters(&mut batch);
    let runs = pack_runs(first_of_group, &encoded_all);
    let run_starts: Vec<u64> = runs.iter().map(|(s, _)| *s).collect();
    for (first, run) in runs {
        batch.put_cf(events_cf, key(first), run);
    }
    batch.put_cf(meta, "next_seq", next.to_be_bytes());
    if let Err(e) = shared.write(db, batch, shared.opts.sync) {
        for (reply, _) in accepted {
            let _ = reply.send(Err(e.for_each_caller()));
        }
        return;
    }
    let durable_ms = sightline_proto::now_ms();
    {
        let mut st = shared.state.lock().unwrap();
        debug_assert_eq!(st.next_seq, first_of_group);
        let acked = st.acked;
        st.cameras
            .checkpoint(next - 1, &numbered.iter().collect::<Vec<_>>(), acked);
        st.runs.extend(run_starts);
        for (first, accepted_ms) in marks {
            let after = durable_ms
                .saturating_sub(accepted_ms)
                .clamp(0, u32::MAX as i64);
            st.durable.push_back((first, after as u32));
        }
        st.held
            .extend(first_of_group, encoded_all.iter().map(|b| b.len() as u64));
        for b in encoded_all {
            st.cache_bytes += cached_cost(&b);
            st.cache.push_back(b);
        }
        st.next_seq = next;
        while st.cache_bytes > CACHE_BYTES {
            let b = st.cache.pop_front().unwrap();
            st.cache_bytes -= cached_cost(&b);
            st.cache_first += 1;
        }
        let below = st.cache_first;
        st.forget_durable_below(below);
    }
    shared.next_seq_tx.send_replace(next);
    for (reply, appended) in accepted {
        let _ = reply.send(Ok(appended));
    }
    tracing::trace!(
        requests,
        events = next - first_of_group,
        micros = started.elapsed().as_micros() as u64,
        "buffer group commit"
    );
}
