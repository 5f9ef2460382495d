//! The core's durable store, in RocksDB: events, the det_oid index, agent
//! watermarks, the top-X aggregates, the quarantine and the totals.
//!
//! # Key layouts (format version 4)
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `events` | timestamp_detected (i64, sign-flipped BE) ‖ det_oid (same) | `JoinedEvent` without `location` (joined at read time) |
//! | `det` (written as table files, [`det_buffer`]) | det_oid (i64, sign-flipped BE) | timestamp_detected (same encoding): finds the event ‖ video_camera_oid (i64 BE): whose det_oid it is (absent in rows written before 2026-11-30) ‖ for an event the live lane stored, `keys::live_tag` (u64 BE) of the (agent, epoch, seq) it came with |
//! | `wm` | agent_id ‖ 0x00 ‖ epoch (u64 BE) ‖ partition (u16 BE) | the highest seq of (agent, epoch) that partition committed (u64 BE) ‖ the digest of that seq's event (`sightline_proto::event_digest`, u64 BE; absent in older rows). The agent's watermark is the smallest over the partitions (see `dedup`). Format 1 had no partition. |
//! | `agg` | 'm' or 'h' ‖ bucket start ms ‖ location oid ‖ item_name | count, u64 LE, summed by a merge operator |
//! | `agg` | 'p' ‖ sequence (u64 BE) | a commit's pending counts and camera_seq values: varint count of minute keys, then per minute key varint key length ‖ varint count ‖ key; then per camera video_camera_oid (i64 BE) ‖ varint length ‖ a `received` piece; folded into the 'm', 'h' and `received` keys later ([`pending`]) |
//! | `quarantine` | quarantined_ms ‖ agent_id ‖ 0x00 ‖ seq (u64 BE) | `QuarantinedEvent` |
//! | `counters` | `stored`, `dup_transport`, `dup_semantic`, `rejected`, `unmatched` | u64 LE, merge-summed |
//! | `media` | sha256 (64 lowercase hex ASCII) | stored_ms (i64 BE) ‖ `MediaRef` (protobuf) |
//! | `media_age` | stored_ms (i64, sign-flipped BE) ‖ sha256 | empty: the retention order of `media` |
//! | `media_refs` | det_oid (as in `det`) ‖ kind (ASCII) | attached_ms (i64 BE) ‖ `MediaRef` (protobuf) |
//! | `media_quarantine` | quarantined_ms (i64, sign-flipped BE) ‖ sha256 | [`media::MediaQuarantined`] as JSON |
//! | `by_commit` | committed_ms ‖ det_oid (as in `events`) | timestamp_detected (as in `det`): the events in commit order, for the search index to catch up |
//! | `received` | video_camera_oid (i64 BE) | the camera_seq values received, as ranges with the detection times of their ends, merged by a merge operator ([`received`]); a commit's values wait in its pending `agg` entry until folded |
//! | `meta` | `format` | u32 BE: [`FORMAT_VERSION`]; absent: format 1 (migrated at open); 2 (no pending `agg` entries) and 3 (no det log): opened as 4 |
//! | `meta` | `detlog/` ‖ sequence (u64 BE) | a commit's `det` entries not yet ingested into `det` ([`det_buffer`]): per entry det_oid (as in `det`) ‖ value length (u8) ‖ the `det` value |
//! | `meta` | `partitions` | u32 BE: how many partitions the `wm` keys are written for |
//!
//! # Promises
//!
//! - Only the store lays out a commit: writers fill a [`commit::CommitBatch`]
//!   (`put_event`, `add_aggregate`, `quarantine`, `count`, `set_watermark`,
//!   `mark_received`)
//!   and hand it to [`Store::commit`].
//! - A commit MUST put a batch's events, their `det` keys (in its det log
//!   entry, [`det_buffer`]), their aggregate
//!   increments, its quarantined events, the counters, the camera_seq values
//!   it received (`received`) and the agent's new watermark in one `WriteBatch`; the agent MUST be acknowledged only after
//!   that write returned and, when `storage.sync`, a [`Store::sync_wal`] of
//!   its generation that began after it returned.
//! - There MUST never be two `events` entries with one det_oid: a det_oid is
//!   written only when `det` does not hold it (checked by the single writer of
//!   det_oid's partition — `keys::partition_of`, so no other writer sees it). A
//!   det_oid belongs to the camera that stored it first: the same det_oid
//!   from another camera is a conflict, quarantined, never a duplicate.
//! - A watermark MUST only grow. Every batch of an agent reaches every
//!   partition (with none of its events, if none hash there), and each
//!   partition writes its own `wm` entry with its commit; the agent's
//!   watermark is the smallest of them, so it never passes a seq that some
//!   partition has not committed.
//! - The store MUST refuse to open a format it does not know; a format-1
//!   store is migrated at open (its `wm` entries become partition 0's), a
//!   format-2 one only marked 3 (it holds no pending `agg` entries), and
//!   [`Store::use_partitions`] re-keys the `wm` entries (each partition starts
//!   from the smallest of the old ones) when the partition count changes, in
//!   one `WriteBatch`.
//! - Aggregates MUST count exactly the stored events: they are counted in
//!   the same `WriteBatch` as the event (a pending entry), and moved only by
//!   a fold that deletes the entries it sums ([`pending`]).
//! - Retention removes `events`, minute aggregates and the quarantine by time;
//!   `det` keys live longer (`retention.dedup_keys`) so late duplicates are
//!   still caught, and are removed by a compaction filter.
//! - Every `events` entry MUST have its `by_commit` entry in the same
//!   `WriteBatch`; `by_commit` is cut by commit time when events are cut by
//!   detection time.
//! - The media rows (`media*`) are kept by [`crate::media`], whose module docs
//!   state their promises; the methods are in [`media`].

pub mod checkpoint;
pub mod commit;
mod det_buffer;
pub mod engine;
pub mod export;
pub mod keys;
pub mod media;
pub mod outbox;
pub mod pending;
pub mod received;
pub mod secondary;
pub mod views;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use prost::Message;
use rocksdb::{
    compaction_filter::Decision, BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode,
    MergeOperands, Options, WriteBatch, WriteOptions, DB,
};
use sightline_proto::v1::{EventFilter, JoinedEvent, QuarantinedEvent};

use keys::Bucket;

/// Merge operands one key holds in the memtable before a write folds them
/// into a value (a `Get` and a `Put`). Each merge first counts the key's
/// operands in the memtable (a walk of up to this many entries), so the
/// cap costs every merge; a read sums at most this many.
const MAX_SUCCESSIVE_MERGES: usize = 8;

pub const CF_EVENTS: &str = "events";
pub const CF_DET: &str = "det";
pub const CF_WM: &str = "wm";
pub const CF_AGG: &str = "agg";
pub const CF_QUARANTINE: &str = "quarantine";
pub const CF_COUNTERS: &str = "counters";
pub const CF_MEDIA: &str = "media";
pub const CF_MEDIA_AGE: &str = "media_age";
pub const CF_MEDIA_REFS: &str = "media_refs";
pub const CF_MEDIA_QUARANTINE: &str = "media_quarantine";
pub const CF_BY_COMMIT: &str = "by_commit";
pub const CF_META: &str = "meta";
pub const CF_RECEIVED: &str = "received";

/// (agent, epoch) -> (seq, digest) of its watermark.
type WatermarkTable = BTreeMap<(String, u64), (u64, u64)>;

/// The store's format: 2 since watermarks are kept per partition, 3 since
/// `agg` holds the commits' pending entries ([`pending`]; a format-2 core
/// would not read them), 4 since the newest `det` entries are in the det
/// log ([`det_buffer`]; a format-3 core would not read them).
pub const FORMAT_VERSION: u32 = 4;
const META_FORMAT: &[u8] = b"format";
const META_PARTITIONS: &[u8] = b"partitions";
/// Cluster mode: the stream sequence a partition store has applied through.
const META_STREAM_SEQ: &[u8] = b"stream_seq";

/// Names of the persisted totals.
pub mod counter {
    pub const STORED: &str = "stored";
    pub const DUP_TRANSPORT: &str = "dup_transport";
    pub const DUP_SEMANTIC: &str = "dup_semantic";
    pub const REJECTED: &str = "rejected";
    pub const UNMATCHED: &str = "unmatched";
    pub const EXPIRED: &str = "expired";
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("field `page_token`: {0}")]
    BadToken(String),
    /// The disk refuses writes (full, failing); nothing was written.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// Its code in the error vocabulary: a full or failing disk is
    /// `Unavailable` (nothing was written; retry later), corrupt data
    /// `Internal`.
    pub fn code(&self) -> sightline_proto::Code {
        use sightline_proto::Code;
        match self {
            StoreError::BadToken(_) => Code::InvalidArgument,
            StoreError::Db(db) if disk_trouble(db) => Code::Unavailable,
            StoreError::Unavailable(_) => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

impl From<StoreError> for sightline_proto::ApiError {
    fn from(e: StoreError) -> Self {
        sightline_proto::ApiError::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        sightline_proto::ApiError::from(e).into()
    }
}

/// Whether a RocksDB error is the disk's (full, failing, read-only) rather
/// than the data's.
pub fn disk_trouble(e: &rocksdb::Error) -> bool {
    let s = e.to_string();
    s.contains("IO error") || s.contains("No space left") || s.contains("read only")
}

/// Totals since the store was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub stored: u64,
    pub dup_transport: u64,
    pub dup_semantic: u64,
    pub rejected: u64,
    pub unmatched: u64,
    /// Events removed by retention (`stored` counts the events held now).
    pub expired: u64,
}

/// Top items of one location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationCounts {
    pub location: i64,
    pub total: u64,
    /// Most frequent first, ties by name; at most X.
    pub items: Vec<(String, u64)>,
}

/// The RocksDB store. Shared as `Arc<Store>`; all methods block (call them
/// from blocking threads).
///
/// A write that fails for the disk (full, failing) puts the store in a
/// fault: RocksDB refuses every write after such a failure until it is
/// opened again, so the next writes (at most one a second) check that the
/// disk takes a probe file again and then reopen the database in place.
/// Until then writes answer `Unavailable` (nothing is acknowledged) and
/// reads go on.
pub struct Store {
    /// `None` only while it is being reopened.
    db: arc_swap::ArcSwapOption<DB>,
    path: PathBuf,
    memory: StoreMemory,
    /// Since when writes fail for the disk, and when recovery was last tried.
    fault: Mutex<Option<Fault>>,
    /// Whether `fault` is set, read without its lock (which a recovery
    /// holds through the reopen) by the metrics' scrape.
    faulted: std::sync::atomic::AtomicBool,
    sync: bool,
    /// `det` entries with a timestamp below this are dropped at compaction.
    dedup_cutoff: Arc<AtomicI64>,
    /// `media_refs` entries attached before this are dropped at compaction.
    refs_cutoff: Arc<AtomicI64>,
    /// How many partitions the `wm` entries are kept for.
    partitions: std::sync::atomic::AtomicUsize,
    /// Held shared by every [`Store::write`], alone by
    /// [`Store::checkpoint`]: no commit lands while a checkpoint is taken.
    writes: std::sync::RwLock<()>,
    /// How many times the database was reopened after a disk fault: a write
    /// left to a later [`Store::sync_wal`] is durable only if no reopen
    /// came between them.
    generation: std::sync::atomic::AtomicU64,
    /// True while a reopen after a disk fault runs: [`Store::db`] waits for
    /// it (up to [`REOPEN_WAIT`]) rather than failing the read.
    reopening: std::sync::atomic::AtomicBool,
    /// The commits' aggregate entries not folded yet ([`pending`]).
    pending: pending::Pending,
    /// The `det` entries not ingested into `det` yet ([`det_buffer`]).
    dets: det_buffer::DetBuffer,
}

fn add_u64(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut sum = existing.map(le_u64).unwrap_or(0);
    for op in operands {
        sum = sum.wrapping_add(le_u64(op));
    }
    Some(sum.to_le_bytes().to_vec())
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

/// A disk fault of the store's.
#[derive(Debug, Clone)]
struct Fault {
    since: Instant,
    last_try: Instant,
    /// When the log last said the fault goes on ([`FAULT_REMINDER_EVERY`]).
    last_told: Instant,
    why: String,
}

/// Bytes the disk must take again before the store reopens.
const PROBE_BYTES: usize = 1 << 20;
/// How often a faulted store tries to recover.
const RECOVERY_EVERY: Duration = Duration::from_secs(1);
/// How often the log says again that the store's disk still refuses writes
/// (refused commits are answered to the agents, not logged one by one).
const FAULT_REMINDER_EVERY: Duration = Duration::from_secs(30);
/// Longest a read waits for a reopen after a disk fault to finish. A reopen
/// takes tens of milliseconds (the det log read back included); a read that
/// still holds the old handle and asks for the database again would hold
/// the reopen up, so the wait is bounded and then answers `Unavailable`.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// A column family of `db` (every one exists: they are created at open).
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family exists")
}

/// What the store's RocksDB may hold in memory (`storage.cache`,
/// `storage.memtable`).
#[derive(Debug, Clone, Copy)]
pub struct StoreMemory {
    /// The block cache, index and filter blocks included.
    pub cache_bytes: usize,
    /// All memtables together (RocksDB's `db_write_buffer_size`); one column
    /// family's is at most a quarter of it.
    pub memtable_bytes: usize,
}

impl Store {
    /// [`Store::open_with`] a `cache_bytes` block cache and
    /// [`DEFAULT_MEMTABLE_BYTES`] of memtables.
    pub fn open(path: &Path, sync: bool, cache_bytes: usize) -> Result<Self, StoreError> {
        Self::open_with(
            path,
            sync,
            StoreMemory {
                cache_bytes,
                memtable_bytes: DEFAULT_MEMTABLE_BYTES,
            },
        )
    }

    pub fn open_with(path: &Path, sync: bool, memory: StoreMemory) -> Result<Self, StoreError> {
        let dedup_cutoff = Arc::new(AtomicI64::new(i64::MIN));
        let refs_cutoff = Arc::new(AtomicI64::new(i64::MIN));
        let db = open_db(path, memory, &dedup_cutoff, &refs_cutoff)?;
        let partitions = check_format(&db)?;
        let pending = pending::Pending::of(&db)?;
        let dets =
            det_buffer::DetBuffer::load(&db, path.join("det-ingest"), Some(memory.memtable_bytes))?;
        Ok(Self {
            db: arc_swap::ArcSwapOption::from_pointee(db),
            path: path.to_path_buf(),
            memory,
            fault: Mutex::new(None),
            faulted: std::sync::atomic::AtomicBool::new(false),
            sync,
            dedup_cutoff,
            refs_cutoff,
            partitions: std::sync::atomic::AtomicUsize::new(partitions),
            writes: std::sync::RwLock::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
            reopening: std::sync::atomic::AtomicBool::new(false),
            pending,
            dets,
        })
    }

    /// How many partitions the watermarks are kept for.
    pub fn partitions(&self) -> usize {
        self.partitions.load(Ordering::Relaxed)
    }

    /// Keeps the watermarks for `n` partitions from now on. When the count
    /// changes, each (agent, epoch) gets `n` entries holding the smallest of
    /// its old ones (every seq at or below it is committed in every
    /// partition; what lies above is resent, and dropped where it is held by
    /// the det_oid check), in one synced `WriteBatch`. Call before the
    /// partition writers start.
    pub fn use_partitions(&self, n: usize) -> Result<(), StoreError> {
        if n == 0 || n > usize::from(u16::MAX) {
            return Err(StoreError::Corrupt(format!(
                "{n} partitions: must be within 1..=65535"
            )));
        }
        let old = self.partitions();
        if old == n {
            return Ok(());
        }
        let db = self.db()?;
        let mut batch = WriteBatch::default();
        let wm = cf(&db, CF_WM);
        for ((agent, epoch), (seq, digest)) in self.watermark_table(&db)? {
            for p in 0..old {
                batch.delete_cf(wm, keys::wm_key(&agent, epoch, p as u16));
            }
            for p in 0..n {
                batch.put_cf(
                    wm,
                    keys::wm_key(&agent, epoch, p as u16),
                    keys::wm_value(seq, digest),
                );
            }
        }
        batch.put_cf(cf(&db, CF_META), META_PARTITIONS, (n as u32).to_be_bytes());
        let mut w = WriteOptions::default();
        w.set_sync(true);
        db.write_opt(batch, &w)?;
        tracing::info!(
            from = old,
            to = n,
            "watermarks re-keyed for a new partition count"
        );
        self.partitions.store(n, Ordering::Relaxed);
        Ok(())
    }

    /// (agent, epoch) -> the smallest (seq, digest) over the partitions.
    fn watermark_table(&self, db: &DB) -> Result<WatermarkTable, StoreError> {
        let n = self.partitions();
        let mut seen: BTreeMap<(String, u64), (usize, (u64, u64))> = BTreeMap::new();
        for item in db.iterator_cf(cf(db, CF_WM), IteratorMode::Start) {
            let (k, v) = item?;
            let (agent, epoch, p) = keys::decode_wm_key(&k, FORMAT_VERSION)
                .ok_or_else(|| StoreError::Corrupt(format!("wm key {k:?}")))?;
            if usize::from(p) >= n {
                continue;
            }
            let v = keys::decode_wm(&v);
            let e = seen.entry((agent.to_string(), epoch)).or_insert((0, v));
            e.0 += 1;
            if v.0 < e.1 .0 {
                e.1 = v;
            }
        }
        // A partition without an entry has committed nothing of this epoch.
        Ok(seen
            .into_iter()
            .map(|(k, (count, v))| (k, if count < n { (0, 0) } else { v }))
            .collect())
    }

    /// The open database (reads hold it while they run).
    ///
    /// While the store is reopened after a disk fault, waits for the new
    /// handle (up to [`REOPEN_WAIT`]): reads go on through a fault, and a
    /// query that comes during the reopen is answered a little later rather
    /// than refused.
    pub fn db(&self) -> Result<Arc<DB>, StoreError> {
        if let Ok(db) = self.db_now() {
            return Ok(db);
        }
        let deadline = Instant::now() + REOPEN_WAIT;
        while self.reopening.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            if let Ok(db) = self.db_now() {
                return Ok(db);
            }
        }
        self.db_now()
    }

    /// The open database, without waiting for a reopen: for what runs on
    /// the async runtime's threads (the metrics' scrape).
    pub fn db_now(&self) -> Result<Arc<DB>, StoreError> {
        self.db.load_full().ok_or_else(|| {
            StoreError::Unavailable("the store is being reopened after a disk fault".into())
        })
    }

    /// Writes a commit; fsync'd when the store is configured so. A failure
    /// for the disk puts the store in a fault (see [`Store`]).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write_synced(batch, true).map(|_| ())
    }

    /// [`Store::write`]; `sync` false: not fsync'd even when the store is.
    /// Returns the generation of the database written (see
    /// [`Store::sync_wal`]).
    pub(crate) fn write_synced(&self, batch: WriteBatch, sync: bool) -> Result<u64, StoreError> {
        self.recover_if_faulted()?;
        let generation = self.generation.load(Ordering::SeqCst);
        let db = self.db()?;
        let mut w = WriteOptions::default();
        w.set_sync(self.sync && sync);
        // When two writers' batches go into the memtables together, each
        // batch's inserts start from its own last position (its keys are in
        // order per column family: see `commit::CommitBatch`).
        w.set_memtable_insert_hint_per_batch(true);
        let _shared = self.writes.read().unwrap_or_else(|p| p.into_inner());
        match db.write_opt(batch, &w) {
            Ok(()) => Ok(generation),
            Err(e) => {
                self.fault_on(&e);
                Err(e.into())
            }
        }
    }

    /// Makes every write made so far durable (an fsync of the WAL) when the
    /// store is configured to fsync, without holding up the writes made
    /// meanwhile: the partition writers write their groups without an fsync
    /// and acknowledge them after this (`dedup`'s syncer). Returns the
    /// [`commit::Written::generation`] it covers; a write of another generation (the
    /// database was reopened after a disk fault since) is not covered. `Err`
    /// in a fault, without trying to recover: whatever waits for this sync
    /// is refused, and the agents send it again.
    pub fn sync_wal(&self) -> Result<u64, StoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(f) = self.fault.lock().unwrap().as_ref() {
            return Err(refused(&f.why));
        }
        if self.sync {
            let db = self.db()?;
            if let Err(e) = db.flush_wal(true) {
                self.fault_on(&e);
                return Err(e.into());
            }
        }
        if self.generation.load(Ordering::SeqCst) != generation {
            return Err(StoreError::Unavailable(
                "the store was reopened after a disk fault before its writes were synced".into(),
            ));
        }
        Ok(generation)
    }

    /// For tests: what a reopen after a disk fault does to the writes not
    /// synced yet (a new generation).
    #[cfg(test)]
    pub(crate) fn simulate_reopen(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// For tests: a fault of the disk's, as a failed write leaves it, with
    /// recovery due at the next write.
    #[cfg(test)]
    pub(crate) fn simulate_disk_fault(&self) {
        let long_ago = Instant::now() - RECOVERY_EVERY * 2;
        self.faulted.store(true, Ordering::SeqCst);
        *self.fault.lock().unwrap() = Some(Fault {
            since: long_ago,
            last_try: long_ago,
            last_told: long_ago,
            why: "simulated".into(),
        });
    }

    /// Puts the store in a fault when `e` is the disk's.
    fn fault_on(&self, e: &rocksdb::Error) {
        if !disk_trouble(e) {
            return;
        }
        let mut f = self.fault.lock().unwrap();
        if f.is_none() {
            tracing::error!(path = %self.path.display(), error = %e,
                "the store's disk refused a write: nothing more is acknowledged until it takes writes again");
            let now = Instant::now();
            self.faulted.store(true, Ordering::SeqCst);
            *f = Some(Fault {
                since: now,
                last_try: now,
                last_told: now,
                why: e.to_string(),
            });
        }
    }

    /// Whether writes fail for the disk now, without waiting for a
    /// recovery in progress (for the metrics' scrape).
    pub fn in_disk_fault(&self) -> bool {
        self.faulted.load(Ordering::SeqCst)
    }

    /// Why writes fail now, if they do (for health and the fleet view).
    pub fn disk_fault(&self) -> Option<String> {
        self.fault
            .lock()
            .unwrap()
            .as_ref()
            .map(|f| format!("{} (for {} s)", f.why, f.since.elapsed().as_secs()))
    }

    /// In a fault: at most once a [`RECOVERY_EVERY`], checks the disk takes
    /// a probe file, then reopens the database. `Err` while it does not.
    fn recover_if_faulted(&self) -> Result<(), StoreError> {
        let mut f = self.fault.lock().unwrap();
        let Some(fault) = f.as_mut() else {
            return Ok(());
        };
        if fault.last_try.elapsed() < RECOVERY_EVERY {
            return Err(refused(&fault.why));
        }
        fault.last_try = Instant::now();
        if let Err(e) = probe(&self.path) {
            fault.why = format!("{e}");
            if fault.last_told.elapsed() >= FAULT_REMINDER_EVERY {
                fault.last_told = Instant::now();
                tracing::error!(path = %self.path.display(), error = %fault.why,
                    for_s = fault.since.elapsed().as_secs(),
                    "the store's disk still refuses writes: nothing is acknowledged (agents keep their events)");
            }
            return Err(refused(&fault.why));
        }
        // Every reader lets go of the old handle before the new one opens
        // (RocksDB locks its directory).
        self.reopening.store(true, Ordering::SeqCst);
        let _reopened = Reopening(&self.reopening);
        let old = self.db.swap(None);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(old) = old {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        match open_db(
            &self.path,
            self.memory,
            &self.dedup_cutoff,
            &self.refs_cutoff,
        ) {
            Ok(db) => {
                // What the map held may be more than RocksDB kept.
                if let Err(e) = self.dets.reload(&db) {
                    fault.why = e.to_string();
                    return Err(refused(&fault.why));
                }
                self.db.store(Some(Arc::new(db)));
                tracing::warn!(path = %self.path.display(), after_s = fault.since.elapsed().as_secs(),
                    "the store's disk takes writes again: reopened, acknowledging again");
                *f = None;
                self.faulted.store(false, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "reopening the store failed; retrying");
                fault.why = e.to_string();
                Err(refused(&fault.why))
            }
        }
    }
}

/// Clears [`Store::reopening`] when the reopen ends, however it ends.
struct Reopening<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Reopening<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn refused(why: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "the store's disk refuses writes ({why}); nothing was written, retry later"
    ))
}

/// Writes, syncs and removes a [`PROBE_BYTES`] file beside the store.
fn probe(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let p = path.join("space-probe");
    let r = (|| {
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&p);
    r
}

/// `storage.memtable`'s default: most memory all memtables of the store
/// hold together (RocksDB's `db_write_buffer_size`). It was 128 MiB, with
/// 32 MiB per column family: the core's largest fixed cost under a backlog
/// (BENCHMARKS.md, "Memory under a backlog").
pub const DEFAULT_MEMTABLE_BYTES: usize = 64 * 1024 * 1024;
/// Most memtables one column family keeps (the one written and those
/// waiting for their flush): with a quarter of `storage.memtable` each, the
/// two busiest column families (`events`, `det`) stay within it.
const MEMTABLES_PER_CF: i32 = 2;

/// Opens (or creates) the database with every column family and option.
/// Checks the store's format at open, migrating a format-1 store (no
/// partition in its `wm` keys: they become partition 0's, of 1) in one synced
/// `WriteBatch`; returns the partition count the `wm` entries are kept for.
fn check_format(db: &DB) -> Result<usize, StoreError> {
    let meta = cf(db, CF_META);
    let u32_of = |v: &[u8], what: &str| {
        <[u8; 4]>::try_from(v)
            .map(u32::from_be_bytes)
            .map_err(|_| StoreError::Corrupt(format!("meta `{what}` is {} bytes, not 4", v.len())))
    };
    match db.get_cf(meta, META_FORMAT)? {
        Some(v) => {
            let format = u32_of(&v, "format")?;
            if format == 2 || format == 3 {
                // Formats 3 and 4 only add pending `agg` entries and the det
                // log: a format-2 store has neither, a format-3 one no det log.
                let mut w = WriteOptions::default();
                w.set_sync(true);
                db.put_cf_opt(meta, META_FORMAT, FORMAT_VERSION.to_be_bytes(), &w)?;
                tracing::info!("store migrated from format {format} to {FORMAT_VERSION}");
            } else if format != FORMAT_VERSION {
                return Err(StoreError::Corrupt(format!(
                    "the store has format {format}; this core reads format {FORMAT_VERSION} (and migrates 1 to 3)"
                )));
            }
            let n = match db.get_cf(meta, META_PARTITIONS)? {
                Some(v) => u32_of(&v, "partitions")? as usize,
                None => return Err(StoreError::Corrupt("meta `partitions` is missing".into())),
            };
            if n == 0 {
                return Err(StoreError::Corrupt("meta `partitions` is 0".into()));
            }
            Ok(n)
        }
        None => {
            let wm = cf(db, CF_WM);
            let mut batch = WriteBatch::default();
            let mut moved = 0usize;
            for item in db.iterator_cf(wm, IteratorMode::Start) {
                let (k, v) = item?;
                let (agent, epoch, _) = keys::decode_wm_key(&k, 1)
                    .ok_or_else(|| StoreError::Corrupt(format!("format-1 wm key {k:?}")))?;
                batch.delete_cf(wm, &k);
                batch.put_cf(wm, keys::wm_key(agent, epoch, 0), v);
                moved += 1;
            }
            batch.put_cf(meta, META_FORMAT, FORMAT_VERSION.to_be_bytes());
            batch.put_cf(meta, META_PARTITIONS, 1u32.to_be_bytes());
            let mut w = WriteOptions::default();
            w.set_sync(true);
            db.write_opt(batch, &w)?;
            if moved > 0 {
                tracing::info!(
                    watermarks = moved,
                    "store migrated from format 1 to {FORMAT_VERSION}"
                );
            }
            Ok(1)
        }
    }
}

fn open_db(
    path: &Path,
    memory: StoreMemory,
    dedup_cutoff: &Arc<AtomicI64>,
    refs_cutoff: &Arc<AtomicI64>,
) -> Result<DB, StoreError> {
    {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_total_wal_size(256 * 1024 * 1024);
        // Every column family's memtables together: without this cap each
        // of the eleven may hold up to two 32 MiB memtables, and the rarely
        // written ones fill theirs slowly — the core's memory grew for the
        // whole 30-minute soak (BENCHMARKS.md, "Soak"). Past the cap RocksDB
        // flushes the largest memtable.
        // Less the `det` entries held in memory ([`det_buffer`]).
        db_opts.set_db_write_buffer_size(
            memory
                .memtable_bytes
                .saturating_sub(det_buffer::map_bytes(memory.memtable_bytes))
                .max(memory.memtable_bytes / 2),
        );
        db_opts.set_keep_log_file_num(4);
        // Debian's librocksdb is built with assertions: on a full disk, a
        // line that fails to reach RocksDB's own LOG file makes the next one
        // abort the process. Only fatal lines go there; the core logs every
        // failed write itself.
        db_opts.set_log_level(rocksdb::LogLevel::Fatal);
        let cache = Cache::new_lru_cache(memory.cache_bytes)?;
        let cf = |bloom: bool| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            // Index and filter blocks count against the cache: held beside
            // it, they grow with the store (a table reader keeps its own).
            // The newest tables' (L0, read by every lookup) stay pinned.
            t.set_cache_index_and_filter_blocks(true);
            t.set_pin_l0_filter_and_index_blocks_in_cache(true);
            table_layout(&mut t, bloom);
            o.set_block_based_table_factory(&t);
            o.set_compression_per_level(&LEVEL_COMPRESSION);
            o.set_write_buffer_size(memory.memtable_bytes / 4);
            o.set_max_write_buffer_number(MEMTABLES_PER_CF);
            o
        };
        // Written by ingested table files, not through its memtable
        // ([`det_buffer`]).
        let mut det_opts = cf(true);
        det_opts.set_compression_per_level(&[DET_COMPRESSION; LEVELS]);
        let cutoff = dedup_cutoff.clone();
        det_opts.set_compaction_filter(
            "sightline-dedup-retention",
            move |_level: u32, _key: &[u8], value: &[u8]| {
                if value.len() >= 8 && keys::i64_from_key(value) < cutoff.load(Ordering::Relaxed) {
                    Decision::Remove
                } else {
                    Decision::Keep
                }
            },
        );
        // Every commit merges into a few hot keys (the totals, this minute's
        // counts): without a cap (MAX_SUCCESSIVE_MERGES), a read would sum
        // thousands of operands held in the memtable.
        let mut agg_opts = cf(false);
        agg_opts.set_merge_operator_associative("sightline-add-u64", add_u64);
        agg_opts.set_max_successive_merges(MAX_SUCCESSIVE_MERGES);
        let mut refs_opts = cf(false);
        let cutoff = refs_cutoff.clone();
        refs_opts.set_compaction_filter(
            "sightline-media-refs-retention",
            move |_level: u32, _key: &[u8], value: &[u8]| {
                if value.len() >= 8 && media::attached_ms(value) < cutoff.load(Ordering::Relaxed) {
                    Decision::Remove
                } else {
                    Decision::Keep
                }
            },
        );
        let mut counter_opts = cf(false);
        counter_opts.set_merge_operator_associative("sightline-add-u64", add_u64);
        counter_opts.set_max_successive_merges(MAX_SUCCESSIVE_MERGES);
        // Every commit merges into its cameras' keys (capped as above).
        let mut received_opts = cf(false);
        received_opts.set_merge_operator_associative("sightline-received", received::merge);
        received_opts.set_max_successive_merges(MAX_SUCCESSIVE_MERGES);
        // `meta` takes every commit's det log entry ([`det_buffer`]), deleted
        // again once its entries are in `det`: a memtable of a sixteenth
        // flushes them sooner than a quarter would, so that they and the
        // map holding the same entries take no more than `det`'s
        // memtables took when its entries went through them.
        let mut meta_opts = cf(false);
        meta_opts.set_write_buffer_size(memory.memtable_bytes / 16);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_RECEIVED, received_opts),
            ColumnFamilyDescriptor::new(CF_EVENTS, cf(false)),
            ColumnFamilyDescriptor::new(CF_DET, det_opts),
            ColumnFamilyDescriptor::new(CF_WM, cf(false)),
            ColumnFamilyDescriptor::new(CF_AGG, agg_opts),
            ColumnFamilyDescriptor::new(CF_QUARANTINE, cf(false)),
            ColumnFamilyDescriptor::new(CF_COUNTERS, counter_opts),
            ColumnFamilyDescriptor::new(CF_MEDIA, cf(true)),
            ColumnFamilyDescriptor::new(CF_MEDIA_AGE, cf(false)),
            ColumnFamilyDescriptor::new(CF_MEDIA_REFS, refs_opts),
            ColumnFamilyDescriptor::new(CF_MEDIA_QUARANTINE, cf(false)),
            ColumnFamilyDescriptor::new(CF_BY_COMMIT, cf(false)),
            ColumnFamilyDescriptor::new(CF_META, meta_opts),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        lower_compaction_priority();
        Ok(db)
    }
}

/// RocksDB's number of levels (its default, `num_levels`).
const LEVELS: usize = 7;

/// Each level's compression. A flush writes level 0 and the first
/// compaction level 1, both while the memtables wait on them: uncompressed
/// they cost no Snappy (3 % of the core's samples in a backlog's drain, all
/// in the `events` family's flushes and compactions, whose CPU fell by two
/// fifths: BENCHMARKS.md, forty-ninth session) for tables about 1.7 times
/// as large, compacted away soon. The older levels, most of the store, stay
/// compressed.
const LEVEL_COMPRESSION: [rocksdb::DBCompressionType; LEVELS] = {
    use rocksdb::DBCompressionType::{None, Snappy};
    [None, None, Snappy, Snappy, Snappy, Snappy, Snappy]
};

/// `det`'s table files (its compactions' and the ingested ones): random
/// 8-byte keys and 16-byte values barely compress, so Snappy on them is CPU
/// for nothing in every compaction.
const DET_COMPRESSION: rocksdb::DBCompressionType = rocksdb::DBCompressionType::None;

/// The layout of a column family's table files: partitioned indexes, and
/// partitioned bloom filters when `bloom`.
fn table_layout(t: &mut BlockBasedOptions, bloom: bool) {
    // Indexes and filters cut into 4 KiB partitions under a small
    // top level (pinned): a lookup loads the one partition it
    // needs. Whole, a large table's filter (MBs) is bigger than a
    // shard of the cache (it has 64), so it was read from disk,
    // checksummed and dropped again on every det_oid lookup — a
    // quarter of a partition writer's CPU (BENCHMARKS.md, "The
    // commit path", eleventh session).
    t.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    t.set_pin_top_level_index_and_filter(true);
    t.set_metadata_block_size(4096);
    if bloom {
        t.set_bloom_filter(10.0, false);
        t.set_partition_filters(true);
    }
}

/// The CPU priority (nice value) of RocksDB's compaction threads: below the
/// partition writers and the sessions (0), as the search indexer's (also
/// 10). While a long backlog drains every core is busy; at one priority the
/// compactions took a quarter of the core's CPU beside the live events' path
/// (BENCHMARKS.md, thirty-fifth session). RocksDB's own setting
/// (`Env::lower_thread_pool_cpu_priority`) is nice 19, at which they fell 34
/// L0 files behind in a 10-minute backlog's drain, 2 short of stopping
/// writes.
const COMPACTION_NICE: i32 = 10;

/// Gives RocksDB's compaction threads (its LOW pool, threads named
/// `rocksdb:low`, started when the store is opened) [`COMPACTION_NICE`]. On
/// Linux a nice value belongs to a thread, given by its id.
fn lower_compaction_priority() {
    use rustix::process::{getpriority_process, setpriority_process, Pid};
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Some(pid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        let named = std::fs::read_to_string(task.path().join("comm"))
            .is_ok_and(|c| c.trim_end() == "rocksdb:low");
        if !named || getpriority_process(Some(pid)).is_ok_and(|n| n >= COMPACTION_NICE) {
            continue;
        }
        if let Err(e) = setpriority_process(Some(pid), COMPACTION_NICE) {
            tracing::debug!(error = %e, "store: could not lower a compaction thread's priority");
        }
    }
}

impl Store {
    /// The highest seq of (agent, epoch) that `partition` committed, and the
    /// digest of its event; (0, 0) when none.
    pub fn partition_watermark(
        &self,
        agent: &str,
        epoch: u64,
        partition: usize,
    ) -> Result<(u64, u64), StoreError> {
        let db = self.db()?;
        Ok(db
            .get_cf(cf(&db, CF_WM), keys::wm_key(agent, epoch, partition as u16))?
            .map(|v| keys::decode_wm(&v))
            .unwrap_or((0, 0)))
    }

    /// The highest committed seq of (agent, epoch); 0 when none.
    pub fn watermark(&self, agent: &str, epoch: u64) -> Result<u64, StoreError> {
        Ok(self.watermark_digest(agent, epoch)?.0)
    }

    /// Cluster mode: the stream sequence of the last share committed into
    /// this (partition) store; 0: none.
    pub fn stream_seq(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        Ok(match db.get_cf(cf(&db, CF_META), META_STREAM_SEQ)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            _ => 0,
        })
    }

    /// The highest seq of (agent, epoch) every partition committed, and the
    /// digest of that seq's event (0 when unknown); (0, 0) when none.
    pub fn watermark_digest(&self, agent: &str, epoch: u64) -> Result<(u64, u64), StoreError> {
        let db = self.db()?;
        let keys: Vec<Vec<u8>> = (0..self.partitions())
            .map(|p| keys::wm_key(agent, epoch, p as u16))
            .collect();
        let mut least: Option<(u64, u64)> = None;
        for v in db.batched_multi_get_cf(cf(&db, CF_WM), &keys, true) {
            let v = match v? {
                Some(v) => keys::decode_wm(&v),
                None => (0, 0),
            };
            if least.is_none_or(|l| v.0 < l.0) {
                least = Some(v);
            }
        }
        Ok(least.unwrap_or((0, 0)))
    }

    /// Every (agent, epoch, watermark) the store knows.
    pub fn watermarks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let db = self.db()?;
        Ok(self
            .watermark_table(&db)?
            .into_iter()
            .map(|((agent, epoch), (seq, _))| (agent, epoch, seq))
            .collect())
    }

    /// For each det_oid: its `det` entry when an event with it is stored
    /// (the camera, unless a version that did not record it stored it; the
    /// live lane's tag).
    pub fn stored_dets(&self, oids: &[i64]) -> Result<Vec<Option<keys::Det>>, StoreError> {
        let db = self.db()?;
        let cf = cf(&db, CF_DET);
        let keys: Vec<[u8; 8]> = oids.iter().map(|&o| keys::det_key(o)).collect();
        // The partition writers look up their det_oids sorted (and a
        // det_key sorts as its det_oid): RocksDB then skips its own sort of
        // the keys, ~7 % of the lookup's time (BENCHMARKS.md, twenty-fourth
        // session). Told so of keys that are not, it would miss stored ones.
        let sorted = keys.is_sorted();
        // The newest are in memory ([`det_buffer`]), the rest in `det`:
        // read the map first (an entry leaves it only once in `det`).
        let mut found: Vec<Option<keys::Det>> = self
            .dets
            .get_many(oids)
            .into_iter()
            .map(|v| v.map(|(v, n)| keys::decode_det(&v[..n as usize])))
            .collect();
        let missing: Vec<usize> = (0..oids.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let read = db.batched_multi_get_cf(cf, missing.iter().map(|&i| &keys[i]), sorted);
        for (i, r) in missing.into_iter().zip(read) {
            found[i] = match r? {
                Some(v) if v.len() < 8 => {
                    return Err(StoreError::Corrupt(format!("det entry of {}", oids[i])))
                }
                v => v.map(|v| keys::decode_det(&v)),
            };
        }
        Ok(found)
    }

    /// One stored event by det_oid.
    pub fn get_event(&self, det_oid: i64) -> Result<Option<JoinedEvent>, StoreError> {
        let db = self.db()?;
        let Some(det) = self.stored_dets(&[det_oid])?.pop().flatten() else {
            return Ok(None);
        };
        let key = keys::event_key(det.ts, det_oid);
        match db.get_cf(cf(&db, CF_EVENTS), key)? {
            // The det key outlives the event (retention): the event is gone.
            None => Ok(None),
            Some(v) => Ok(Some(decode_event(&v)?)),
        }
    }

    /// Events with `from_ms <= timestamp_detected < to_ms` (to_ms = 0: no
    /// bound), oldest first, after the key in `token`. One page reads at most
    /// [`MAX_SCAN_PER_PAGE`] events: a filter that matches few of them gives
    /// a short (even empty) page with a token to go on from, never an
    /// unbounded scan.
    pub fn list_events(
        &self,
        from_ms: i64,
        to_ms: i64,
        filter: Option<&EventFilter>,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<JoinedEvent>, String), StoreError> {
        self.list_events_in(from_ms, to_ms, filter, page_size, token, |_| true)
    }

    /// [`Store::list_events`], keeping only events whose location
    /// `in_scope` allows (a caller's scope).
    pub fn list_events_in(
        &self,
        from_ms: i64,
        to_ms: i64,
        filter: Option<&EventFilter>,
        page_size: usize,
        token: &str,
        in_scope: impl Fn(i64) -> bool,
    ) -> Result<(Vec<JoinedEvent>, String), StoreError> {
        let db = self.db()?;
        let start: Vec<u8> = if token.is_empty() {
            keys::event_key(from_ms, i64::MIN).to_vec()
        } else {
            let mut k = decode_token(token)?;
            k.push(0); // strictly after the last key served
            k
        };
        let end = if to_ms == 0 {
            None
        } else {
            Some(keys::event_key(to_ms, i64::MIN))
        };
        let mut out = Vec::new();
        let mut last_key = Vec::new();
        let iter = db.iterator_cf(
            cf(&db, CF_EVENTS),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for (scanned, item) in iter.enumerate() {
            let (k, v) = item?;
            if end.as_ref().is_some_and(|e| k.as_ref() >= e.as_slice()) {
                break;
            }
            if out.len() >= page_size || scanned >= MAX_SCAN_PER_PAGE {
                return Ok((out, encode_token(&last_key)));
            }
            let ev = decode_event(&v)?;
            last_key = k.to_vec();
            if !ev
                .detection
                .as_ref()
                .is_some_and(|d| in_scope(d.geographical_location_oid))
            {
                continue;
            }
            if let Some(f) = filter {
                if !matches_filter(&ev, f) {
                    continue;
                }
            }
            out.push(ev);
        }
        Ok((out, String::new()))
    }

    /// Top `x` items per location over `[from_ms, to_ms)`, both rounded down
    /// to the minute; whole hours come from hour buckets.
    pub fn top_items(
        &self,
        from_ms: i64,
        to_ms: i64,
        x: usize,
        location: Option<i64>,
    ) -> Result<Vec<LocationCounts>, StoreError> {
        self.top_items_in(from_ms, to_ms, x, |l| location.is_none_or(|o| o == l))
    }

    /// [`Store::top_items`] for the locations `in_scope` allows, in one read
    /// of the aggregates in the range however many locations it allows.
    pub fn top_items_in(
        &self,
        from_ms: i64,
        to_ms: i64,
        x: usize,
        in_scope: impl Fn(i64) -> bool,
    ) -> Result<Vec<LocationCounts>, StoreError> {
        let from = Bucket::Minute.floor(from_ms);
        let to = Bucket::Minute.floor(to_ms);
        let mut sums: HashMap<i64, HashMap<String, u64>> = HashMap::new();
        if to > from {
            let h_start = Bucket::Hour.floor(from + Bucket::Hour.millis() - 1);
            let h_end = Bucket::Hour.floor(to);
            if h_start < h_end {
                self.sum_buckets(Bucket::Minute, from, h_start, &in_scope, &mut sums)?;
                self.sum_buckets(Bucket::Hour, h_start, h_end, &in_scope, &mut sums)?;
                self.sum_buckets(Bucket::Minute, h_end, to, &in_scope, &mut sums)?;
            } else {
                self.sum_buckets(Bucket::Minute, from, to, &in_scope, &mut sums)?;
            }
        }
        let mut out: Vec<LocationCounts> = sums
            .into_iter()
            .map(|(loc, items)| {
                let total = items.values().sum();
                let mut items: Vec<(String, u64)> =
                    items.into_iter().filter(|(_, c)| *c > 0).collect();
                items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                items.truncate(x);
                LocationCounts {
                    location: loc,
                    total,
                    items,
                }
            })
            .filter(|l| l.total > 0)
            .collect();
        out.sort_by_key(|l| l.location);
        Ok(out)
    }

    fn sum_buckets(
        &self,
        bucket: Bucket,
        from: i64,
        to: i64,
        in_scope: &impl Fn(i64) -> bool,
        sums: &mut HashMap<i64, HashMap<String, u64>>,
    ) -> Result<(), StoreError> {
        if to <= from {
            return Ok(());
        }
        self.for_each_agg(bucket, from, to, |_, loc, name, count| {
            if in_scope(loc) {
                *sums
                    .entry(loc)
                    .or_default()
                    .entry(name.to_string())
                    .or_default() += count;
            }
        })
    }

    /// Calls `f(bucket start, location, item, count)` for every aggregate of
    /// `bucket` starting in `[from, to)`, in key order: the folded keys and
    /// the commits' pending entries ([`pending`]), read from one snapshot.
    pub(crate) fn for_each_agg(
        &self,
        bucket: Bucket,
        from: i64,
        to: i64,
        f: impl FnMut(i64, i64, &str, u64),
    ) -> Result<(), StoreError> {
        self.scan_agg(bucket, from, to, true, f)
    }

    /// [`Store::for_each_agg`]; `with_pending` false: the folded keys only.
    fn scan_agg(
        &self,
        bucket: Bucket,
        from: i64,
        to: i64,
        with_pending: bool,
        mut f: impl FnMut(i64, i64, &str, u64),
    ) -> Result<(), StoreError> {
        let pending_from = self.pending.read_from();
        let db = self.db()?;
        let snapshot = db.snapshot();
        let mut pending = if with_pending {
            Self::pending_in(&snapshot, &db, &pending_from, bucket, from, to)?
        } else {
            BTreeMap::new()
        };
        let mut emit = |k: &[u8], n: u64| -> Result<(), StoreError> {
            let (start_ms, loc, name) = keys::parse_agg_key(k)
                .ok_or_else(|| StoreError::Corrupt("malformed agg key".into()))?;
            f(start_ms, loc, name, n);
            Ok(())
        };
        let (start, end) = (keys::agg_prefix(bucket, from), keys::agg_prefix(bucket, to));
        let iter = snapshot.iterator_cf(
            cf(&db, CF_AGG),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            // The pending keys before this one, then this one with its own.
            while let Some(e) = pending.first_entry() {
                if e.key().as_slice() >= k.as_ref() {
                    break;
                }
                let (pk, n) = e.remove_entry();
                emit(&pk, n)?;
            }
            let extra = pending.remove(k.as_ref()).unwrap_or(0);
            emit(&k, le_u64(&v).wrapping_add(extra))?;
        }
        for (pk, n) in pending {
            emit(&pk, n)?;
        }
        Ok(())
    }

    /// A page of the quarantine, oldest first.
    pub fn list_quarantine(
        &self,
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<QuarantinedEvent>, String), StoreError> {
        let db = self.db()?;
        let start = if token.is_empty() {
            Vec::new()
        } else {
            let mut k = decode_token(token)?;
            k.push(0);
            k
        };
        let mut out = Vec::new();
        let mut last = Vec::new();
        for item in db.iterator_cf(
            cf(&db, CF_QUARANTINE),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if out.len() >= page_size {
                return Ok((out, encode_token(&last)));
            }
            out.push(
                QuarantinedEvent::decode(v.as_ref())
                    .map_err(|e| StoreError::Corrupt(format!("quarantine entry: {e}")))?,
            );
            last = k.to_vec();
        }
        Ok((out, String::new()))
    }

    pub fn counters(&self) -> Result<Counters, StoreError> {
        let db = self.db()?;
        let get = |name: &str| -> Result<u64, StoreError> {
            Ok(db
                .get_cf(cf(&db, CF_COUNTERS), name)?
                .map(|v| le_u64(&v))
                .unwrap_or(0))
        };
        Ok(Counters {
            stored: get(counter::STORED)?,
            dup_transport: get(counter::DUP_TRANSPORT)?,
            dup_semantic: get(counter::DUP_SEMANTIC)?,
            rejected: get(counter::REJECTED)?,
            unmatched: get(counter::UNMATCHED)?,
            expired: get(counter::EXPIRED)?,
        })
    }

    /// Applies retention: removes events and minute aggregates before
    /// `events_before` (rounded down to the minute), hour aggregates before
    /// `aggregates_before`, the quarantine before `quarantine_before`; `det`
    /// keys before `dedup_before` go at their next compaction. The `stored`
    /// total drops by the events removed (counted from their minute
    /// aggregates, which count exactly the stored events), in the same
    /// write, and `expired` grows by as many. Returns that number.
    pub fn apply_retention(
        &self,
        events_before: i64,
        aggregates_before: i64,
        quarantine_before: i64,
        dedup_before: i64,
    ) -> Result<u64, StoreError> {
        // Counted from the folded keys only, after a fold: an entry still
        // pending would be folded after the range deletes below, into keys
        // the next pass counts again ([`pending`]).
        self.fold_pending()?;
        let db = self.db()?;
        let events_before = Bucket::Minute.floor(events_before);
        let mut expired = 0u64;
        self.scan_agg(
            Bucket::Minute,
            i64::MIN,
            events_before,
            false,
            |_, _, _, n| expired += n,
        )?;
        let mut batch = WriteBatch::default();
        if expired > 0 {
            let cf = cf(&db, CF_COUNTERS);
            batch.merge_cf(cf, counter::STORED, expired.wrapping_neg().to_le_bytes());
            batch.merge_cf(cf, counter::EXPIRED, expired.to_le_bytes());
        }
        batch.delete_range_cf(
            cf(&db, CF_EVENTS),
            keys::event_key(i64::MIN, i64::MIN),
            keys::event_key(events_before, i64::MIN),
        );
        batch.delete_range_cf(
            cf(&db, CF_AGG),
            keys::agg_prefix(Bucket::Minute, i64::MIN),
            keys::agg_prefix(Bucket::Minute, Bucket::Minute.floor(events_before)),
        );
        batch.delete_range_cf(
            cf(&db, CF_AGG),
            keys::agg_prefix(Bucket::Hour, i64::MIN),
            keys::agg_prefix(Bucket::Hour, Bucket::Hour.floor(aggregates_before)),
        );
        batch.delete_range_cf(
            cf(&db, CF_BY_COMMIT),
            keys::event_key(i64::MIN, i64::MIN),
            keys::event_key(events_before, i64::MIN),
        );
        batch.delete_range_cf(
            cf(&db, CF_QUARANTINE),
            keys::i64_key(i64::MIN),
            keys::i64_key(quarantine_before),
        );
        let cf_received = cf(&db, CF_RECEIVED);
        let cut = received::Piece::cut(events_before).encode();
        for item in db.iterator_cf(cf_received, IteratorMode::Start) {
            let (k, _) = item?;
            batch.merge_cf(cf_received, k, &cut);
        }
        self.write(batch)?;
        self.dedup_cutoff.store(dedup_before, Ordering::Relaxed);
        Ok(expired)
    }
}

impl Store {
    /// Every camera's received camera_seq values (see [`received`]).
    pub fn received_all(&self) -> Result<Vec<(i64, received::RangeSet)>, StoreError> {
        let db = self.db()?;
        // The pending values before the folded ones: a value folded in
        // between is read twice (the union keeps it once), never missed.
        let mut sets = BTreeMap::new();
        self.pending_received(&db, &mut sets)?;
        for item in db.iterator_cf(cf(&db, CF_RECEIVED), IteratorMode::Start) {
            let (k, v) = item?;
            let Ok(cam) = <[u8; 8]>::try_from(k.as_ref()) else {
                continue;
            };
            if let Some(p) = received::Piece::decode(&v) {
                sets.entry(i64::from_be_bytes(cam))
                    .or_insert_with(received::RangeSet::default)
                    .union(&p.set);
            }
        }
        Ok(sets.into_iter().collect())
    }
}

pub fn matches_filter(ev: &JoinedEvent, f: &EventFilter) -> bool {
    let Some(d) = &ev.detection else {
        return false;
    };
    f.geographical_location_oid
        .is_none_or(|l| l == d.geographical_location_oid)
        && f.video_camera_oid.is_none_or(|c| c == d.video_camera_oid)
        && f.item_name.as_ref().is_none_or(|i| *i == d.item_name)
}

fn decode_event(v: &[u8]) -> Result<JoinedEvent, StoreError> {
    JoinedEvent::decode(v).map_err(|e| StoreError::Corrupt(format!("event does not decode: {e}")))
}

fn encode_token(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Most events one page of [`Store::list_events`] reads.
pub const MAX_SCAN_PER_PAGE: usize = 100_000;

/// Longest page token the store gives out (hex of a key).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// A page token back to its key; anything the store did not give out
/// (odd length, too long, not hex, not ASCII) is refused, never a panic.
fn decode_token(token: &str) -> Result<Vec<u8>, StoreError> {
    if !token.len().is_multiple_of(2) || token.len() > MAX_TOKEN_BYTES {
        return Err(StoreError::BadToken(format!(
            "{} bytes: not a token this API gave out",
            token.len()
        )));
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    token
        .as_bytes()
        .chunks_exact(2)
        .map(|p| match (nibble(p[0]), nibble(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(StoreError::BadToken(
                "not hex: not a token this API gave out".into(),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The store's format and its per-partition watermarks, on a real RocksDB.
    use super::*;

    fn put_wm(s: &Store, key: Vec<u8>, seq: u64, digest: u64) {
        let db = s.db().unwrap();
        let mut b = WriteBatch::default();
        b.put_cf(cf(&db, CF_WM), key, keys::wm_value(seq, digest));
        drop(db);
        s.write(b).unwrap();
    }

    #[test]
    fn reads_go_on_while_the_store_is_reopened_after_a_disk_fault() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(dir.path(), false, 8 << 20).unwrap());
        put_wm(&s, keys::wm_key("a", 1, 0), 10, 0xa);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (s, stop) = (s.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let db = s.db().expect("a read during the reopen waits for it");
                        let v = db.get_cf(cf(&db, CF_WM), keys::wm_key("a", 1, 0));
                        assert!(v.unwrap().is_some());
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        s.simulate_disk_fault();
        assert!(s.in_disk_fault());
        let generation = s.generation.load(Ordering::SeqCst);
        put_wm(&s, keys::wm_key("a", 1, 0), 11, 0xb);
        assert_eq!(
            s.generation.load(Ordering::SeqCst),
            generation + 1,
            "reopened"
        );
        assert!(s.disk_fault().is_none());
        assert!(!s.in_disk_fault());
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_eq!(s.watermark_digest("a", 1).unwrap(), (11, 0xb));
    }

    #[test]
    fn compactions_run_below_the_writers_cpu_priority() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Store::open(dir.path(), false, 8 << 20).unwrap();
        let mut compaction_threads = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "rocksdb:low" {
                continue;
            }
            let tid: i32 = task.file_name().to_str().unwrap().parse().unwrap();
            let pid = rustix::process::Pid::from_raw(tid).unwrap();
            let nice = rustix::process::getpriority_process(Some(pid)).unwrap();
            assert!(nice >= COMPACTION_NICE, "thread {tid}: nice {nice}");
            compaction_threads += 1;
        }
        assert!(
            compaction_threads >= 1,
            "RocksDB's compaction threads are named rocksdb:low"
        );
    }

    #[test]
    fn the_watermark_is_the_smallest_over_the_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        s.use_partitions(2).unwrap();
        put_wm(&s, keys::wm_key("a", 1, 0), 10, 0xa);
        assert_eq!(
            s.watermark_digest("a", 1).unwrap(),
            (0, 0),
            "partition 1 has nothing"
        );
        put_wm(&s, keys::wm_key("a", 1, 1), 7, 0x7);
        assert_eq!(s.watermark_digest("a", 1).unwrap(), (7, 0x7));
        assert_eq!(s.watermarks().unwrap(), vec![("a".to_string(), 1, 7)]);
    }

    #[test]
    fn a_new_partition_count_starts_every_partition_from_the_smallest_watermark() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), false, 8 << 20).unwrap();
            s.use_partitions(2).unwrap();
            put_wm(&s, keys::wm_key("a", 1, 0), 10, 0xa);
            put_wm(&s, keys::wm_key("a", 1, 1), 7, 0x7);
        }
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        assert_eq!(s.partitions(), 2, "the count is kept in the store");
        s.use_partitions(3).unwrap();
        for p in 0..3 {
            assert_eq!(s.partition_watermark("a", 1, p).unwrap(), (7, 0x7));
        }
        s.use_partitions(1).unwrap();
        assert_eq!(s.watermark_digest("a", 1).unwrap(), (7, 0x7));
        assert_eq!(
            s.partition_watermark("a", 1, 1).unwrap(),
            (0, 0),
            "old keys go"
        );
    }

    #[test]
    fn a_format_1_store_is_migrated_at_open_and_an_unknown_format_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), false, 8 << 20).unwrap();
            // Make it look like format 1: no meta, a watermark keyed without
            // a partition.
            let db = s.db().unwrap();
            let mut b = WriteBatch::default();
            b.delete_cf(cf(&db, CF_META), META_FORMAT);
            b.delete_cf(cf(&db, CF_META), META_PARTITIONS);
            let k = keys::wm_key("old-agent", 5, 0);
            b.put_cf(cf(&db, CF_WM), &k[..k.len() - 2], keys::wm_value(42, 0x42));
            drop(db);
            s.write(b).unwrap();
        }
        {
            let s = Store::open(dir.path(), false, 8 << 20).unwrap();
            assert_eq!(s.watermark_digest("old-agent", 5).unwrap(), (42, 0x42));
            s.use_partitions(2).unwrap();
            assert_eq!(s.watermark_digest("old-agent", 5).unwrap(), (42, 0x42));
            let db = s.db().unwrap();
            let mut b = WriteBatch::default();
            b.put_cf(cf(&db, CF_META), META_FORMAT, 5u32.to_be_bytes());
            drop(db);
            s.write(b).unwrap();
        }
        let err = Store::open(dir.path(), false, 8 << 20)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("format 5"), "{err}");
    }

    #[test]
    fn a_format_2_store_is_opened_as_format_3_with_its_aggregates() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Bucket::Hour.floor(1_700_000_000_000);
        {
            let s = Store::open(dir.path(), false, 8 << 20).unwrap();
            // A format-2 store: its aggregates merged into their keys.
            let db = s.db().unwrap();
            let mut b = WriteBatch::default();
            b.put_cf(cf(&db, CF_META), META_FORMAT, 2u32.to_be_bytes());
            b.merge_cf(
                cf(&db, CF_AGG),
                keys::agg_key(Bucket::Hour, hour, 4, "car"),
                5u64.to_le_bytes(),
            );
            drop(db);
            s.write(b).unwrap();
        }
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        let db = s.db().unwrap();
        assert_eq!(
            db.get_cf(cf(&db, CF_META), META_FORMAT).unwrap().unwrap(),
            FORMAT_VERSION.to_be_bytes()
        );
        drop(db);
        let mut c = s.begin(1).unwrap();
        c.add_aggregate(hour + 1, 4, "car");
        s.commit(c).unwrap();
        let top = s.top_items(hour, hour + 3_600_000, 10, None).unwrap();
        assert_eq!(top[0].items, vec![("car".to_string(), 6)]);
    }

    #[test]
    fn a_det_oid_lookup_finds_every_stored_one_whatever_the_order_asked() {
        use sightline_proto::v1::{Detection, JoinedEvent};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        let stored = [-5_i64, 3, 40, i64::MAX, i64::MIN + 1];
        let mut c = s.begin(1).unwrap();
        for (i, oid) in stored.iter().enumerate() {
            c.put_event(
                &JoinedEvent {
                    detection: Some(Detection {
                        detection_oid: Some(*oid),
                        video_camera_oid: 7,
                        timestamp_detected: 1_000 + i as i64,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                None,
            );
        }
        s.commit(c).unwrap();
        let found = |oids: &[i64]| -> Vec<bool> {
            s.stored_dets(oids)
                .unwrap()
                .iter()
                .map(|d| d.is_some())
                .collect()
        };
        // Sorted, with repeats and misses between the stored ones (as the
        // writers ask), and in no order (as other callers may).
        let sorted = [i64::MIN + 1, -5, -5, 0, 3, 4, 40, 40, i64::MAX];
        assert_eq!(
            found(&sorted),
            [true, true, true, false, true, false, true, true, true]
        );
        let unsorted = [40, -5, 4, i64::MAX, 0, 3, i64::MIN + 1];
        assert_eq!(
            found(&unsorted),
            [true, true, false, true, false, true, true]
        );
    }
}
