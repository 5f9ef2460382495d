//! The `det` index's newest entries: in memory, then written to `det` as
//! one sorted table file at a time.
//!
//! det_oids are hashes, so each event's `det` key lands at a random place in
//! the index. Put through a commit's `WriteBatch`, every one was an insert
//! at a random place in `det`'s memtable skiplist (some twenty cache misses
//! each) and a walk of that skiplist again for the next lookups: the two
//! together were over half of the core's CPU per event (BENCHMARKS.md,
//! forty-fifth session). Instead a commit puts its `det` entries in one
//! `meta` entry of its own, the *det log* (`detlog/` ‖ a sequence number,
//! one sequential key per commit), and the store keeps them in a hash map
//! that the det_oid lookups ([`Store::stored_dets`], [`Store::get_event`])
//! read before `det`. The map is two hash tables, allocated once: when a
//! commit's entries would make the one taking them grow, that one is frozen
//! and the other takes them, and [`Store::ingest_dets_if_due`] (called off
//! the writers, by the same thread as the aggregate folds) sorts the frozen
//! one's entries, writes them as one table file (`SstFileWriter`), ingests
//! it into `det`, deletes their log entries and empties it for the next
//! turn.
//!
//! # Promises
//!
//! - A commit's `det` entries MUST be in its `WriteBatch` (as its det log
//!   entry): whatever RocksDB keeps of a commit across a crash, it keeps its
//!   det_oids with it. At open (and at a reopen after a disk fault) the map
//!   is filled again from every det log entry left, so a det_oid stored by a
//!   commit is found by every lookup after that commit, across any crash.
//! - A commit's entries go into the map only while the database it was
//!   written to is the one open (a reopen after a disk fault reloads the
//!   map instead): the map never holds a det_oid RocksDB lost.
//! - An entry leaves the map only after the file holding it is ingested
//!   into `det` (lookups read the map first, `det` after: an entry is
//!   always in one of them); its log entry is deleted only after that too.
//!   A crash between the two ingests it again, with the same value.
//! - The map holds at most twice [`capacity`] entries while ingests keep
//!   up (the entries being ingested and those since), in its two tables; a
//!   failing ingest puts its entries back, and the next commit that finds
//!   the table full asks for another.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use foldhash::HashMap;
use rocksdb::{IngestExternalFileOptions, IteratorMode, Options, SstFileWriter, WriteBatch, DB};

use super::{cf, keys, Store, StoreError, CF_DET, CF_META};

/// Slots of the map's hash table for a store of `memtable_bytes`
/// memtables (40 bytes each: 10 MiB of 64). Fewer, smaller table files cost
/// every det_oid lookup more (each L0 file is probed): at half of this the
/// CPU per event won back was a third of it (BENCHMARKS.md, forty-fifth
/// session).
fn slots(memtable_bytes: usize) -> usize {
    (memtable_bytes / 256).next_power_of_two().max(1024)
}

/// Entries each of the map's two tables is allocated for, and the most a
/// table file of `det` takes: as many as [`slots`] hold before they grow
/// (seven eighths). A table is frozen by the commit that would make it
/// grow, not by the ingest: when the ingest froze it, on its own thread,
/// the commits written until then made it grow, to twice its bytes, before
/// every ingest — 21.5 MiB of the core's 180 MiB heap at its peak
/// (heaptrack, forty-sixth session).
pub(super) fn capacity(memtable_bytes: usize) -> usize {
    slots(memtable_bytes) / 8 * 7
}

/// What the map and the one an ingest is reading may take, taken from the
/// memtables' share of `storage.memtable` (`open_db`).
pub(super) fn map_bytes(memtable_bytes: usize) -> usize {
    2 * 41 * slots(memtable_bytes)
}

/// The det log's keys in `meta`: this ‖ sequence number (u64 BE).
const PREFIX: &[u8] = b"detlog/";

/// A `det` value as stored: up to 24 bytes, and how many.
pub(super) type Value = ([u8; 24], u8);

/// One det log entry's bytes: per entry det_key (8) ‖ value length (1) ‖
/// value.
pub(super) fn encode(entries: &[([u8; 8], Value)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 33);
    for (k, (v, n)) in entries {
        out.extend_from_slice(k);
        out.push(*n);
        out.extend_from_slice(&v[..*n as usize]);
    }
    out
}

fn decode(mut b: &[u8], mut f: impl FnMut(i64, Value)) -> Result<(), StoreError> {
    let malformed = || StoreError::Corrupt("a det log entry is malformed".into());
    while !b.is_empty() {
        if b.len() < 9 {
            return Err(malformed());
        }
        let oid = keys::i64_from_key(&b[..8]);
        let n = b[8] as usize;
        if !(8..=24).contains(&n) || b.len() < 9 + n {
            return Err(malformed());
        }
        let mut v = [0u8; 24];
        v[..n].copy_from_slice(&b[9..9 + n]);
        f(oid, (v, n as u8));
        b = &b[9 + n..];
    }
    Ok(())
}

pub(super) fn log_key(seq: u64) -> [u8; 15] {
    let mut k = [0u8; 15];
    k[..7].copy_from_slice(PREFIX);
    k[7..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The entries not ingested into `det` yet, in a [`Store`].
pub(super) struct DetBuffer {
    state: Mutex<State>,
    /// Entries a table is allocated for; 0: never frozen nor ingested.
    capacity: usize,
    /// Where table files are written before they are ingested (moved).
    scratch: PathBuf,
    /// One ingest at a time.
    ingesting: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Entries of the commits since the last ingest began.
    active: HashMap<i64, Value>,
    /// Their det log entries.
    active_logs: Vec<u64>,
    /// The entries an ingest is due to write or writing (read by lookups
    /// until it is done).
    frozen: Option<Arc<HashMap<i64, Value>>>,
    /// Their det log entries.
    frozen_logs: Vec<u64>,
    /// The table the last ingest emptied, kept to become `active` at the
    /// next freeze (allocated once, not at each ingest).
    spare: HashMap<i64, Value>,
    next_log: u64,
    /// Moved by a reload: an ingest begun before it leaves the map alone.
    reloads: u64,
}

impl DetBuffer {
    /// The buffer of a store of `memtable_bytes` memtables ([`capacity`]),
    /// filled from `db`'s det log; its table files are written in `scratch`
    /// (emptied here) before they are ingested. `None`: never ingest (a
    /// secondary, reading what its primary ingests).
    pub(super) fn load(
        db: &DB,
        scratch: PathBuf,
        memtable_bytes: Option<usize>,
    ) -> Result<Self, StoreError> {
        // A file left by an ingest a crash cut short: its entries are
        // still in the det log.
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).map_err(|e| io_error(&scratch, e))?;
        }
        let b = Self {
            state: Mutex::new(State::default()),
            capacity: memtable_bytes.map_or(0, capacity),
            scratch,
            ingesting: Mutex::new(()),
        };
        b.reload(db)?;
        Ok(b)
    }

    fn table(&self) -> HashMap<i64, Value> {
        HashMap::with_capacity_and_hasher(self.capacity, Default::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills the map again from `db`'s det log, forgetting what it held: a
    /// reopen after a disk fault keeps only what RocksDB kept.
    pub(super) fn reload(&self, db: &DB) -> Result<(), StoreError> {
        let mut active = self.table();
        let mut logs = Vec::new();
        let mut next_log = 0;
        let it = db.iterator_cf(
            cf(db, CF_META),
            IteratorMode::From(PREFIX, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(PREFIX) {
                break;
            }
            let seq = <[u8; 8]>::try_from(&k[PREFIX.len()..])
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("a det log key is malformed".into()))?;
            decode(&v, |oid, value| {
                active.insert(oid, value);
            })?;
            logs.push(seq);
            next_log = seq + 1;
        }
        if !logs.is_empty() {
            tracing::info!(
                entries = active.len(),
                commits = logs.len(),
                "det_oids not yet in the det index read back from the det log"
            );
        }
        let mut s = self.lock();
        s.active = active;
        s.active_logs = logs;
        s.frozen = None;
        s.frozen_logs.clear();
        s.next_log = s.next_log.max(next_log);
        s.reloads += 1;
        Ok(())
    }

    /// A det log sequence number for a commit about to be written.
    pub(super) fn next_log(&self) -> u64 {
        let mut s = self.lock();
        let n = s.next_log;
        s.next_log += 1;
        n
    }

    /// A commit holding these entries under det log entry `log` was
    /// written, and `kept` says (under the map's lock) that the database
    /// written is still the one open: after a reopen, the reload that
    /// follows it reads them from the det log if RocksDB kept them, and
    /// only then. True when the table taking them was full and is now due
    /// for an ingest ([`Store::ingest_dets_if_due`]).
    pub(super) fn add(
        &self,
        log: u64,
        entries: &[([u8; 8], Value)],
        kept: impl FnOnce() -> bool,
    ) -> bool {
        let mut s = self.lock();
        if !kept() {
            return false;
        }
        // Frozen before it grows (unless the last ingest is not done yet:
        // then it grows).
        let due = self.capacity > 0
            && s.frozen.is_none()
            && !s.active.is_empty()
            && s.active.len() + entries.len() > self.capacity;
        if due {
            let mut fresh = std::mem::take(&mut s.spare);
            if fresh.capacity() < self.capacity {
                fresh = self.table();
            }
            let full = std::mem::replace(&mut s.active, fresh);
            s.frozen = Some(Arc::new(full));
            s.frozen_logs = std::mem::take(&mut s.active_logs);
        }
        s.active.reserve(entries.len());
        for (k, v) in entries {
            s.active.insert(keys::i64_from_key(k), *v);
        }
        s.active_logs.push(log);
        due
    }

    /// Each det_oid's value if the map holds it; `None`: look in `det`.
    pub(super) fn get_many(&self, oids: &[i64]) -> Vec<Option<Value>> {
        let s = self.lock();
        oids.iter()
            .map(|o| {
                s.active
                    .get(o)
                    .or_else(|| s.frozen.as_ref().and_then(|f| f.get(o)))
                    .copied()
            })
            .collect()
    }

    /// How many entries each of the map's tables has room for before it
    /// grows: the active one and the spare.
    #[cfg(test)]
    pub(super) fn room(&self) -> (usize, usize) {
        let s = self.lock();
        (s.active.capacity(), s.spare.capacity())
    }

    /// How many entries the map holds (those being ingested included).
    pub(super) fn entries(&self) -> usize {
        let s = self.lock();
        s.active.len() + s.frozen.as_ref().map_or(0, |f| f.len())
    }
}

impl Store {
    /// When a table of the map is frozen ([`DetBuffer::add`]), writes its
    /// entries into `det` as one sorted table file and deletes their det
    /// log entries; returns how many it moved (0: none due, or another
    /// ingest is under way). Blocks for the sort, the file and its ingest;
    /// call it off the partition writers.
    pub fn ingest_dets_if_due(&self) -> Result<usize, StoreError> {
        let Ok(_one) = self.dets.ingesting.try_lock() else {
            return Ok(0);
        };
        let (frozen, logs, reloads) = {
            let s = self.dets.lock();
            let Some(frozen) = s.frozen.clone() else {
                return Ok(0);
            };
            (frozen, s.frozen_logs.clone(), s.reloads)
        };
        let done = self.ingest(&frozen, &logs);
        let moved = frozen.len();
        let mut s = self.dets.lock();
        if s.reloads != reloads {
            return done.map(|()| moved);
        }
        s.frozen = None;
        s.frozen_logs.clear();
        // The only other holder was `s.frozen`.
        let mut table = Arc::try_unwrap(frozen).unwrap_or_else(|a| (*a).clone());
        if done.is_err() {
            // Back into the map, under the commits since (whose values are
            // the same: a det_oid is stored once): the next commit finds
            // the table full and freezes it again.
            let active = std::mem::take(&mut s.active);
            table.extend(active);
            s.active = table;
            let since = std::mem::replace(&mut s.active_logs, logs);
            s.active_logs.extend(since);
        } else {
            // Emptied under the lock (a memset of its control bytes), so
            // that no commit finds the spare missing and allocates one.
            table.clear();
            s.spare = table;
        }
        done.map(|()| moved)
    }

    fn ingest(&self, dets: &HashMap<i64, Value>, logs: &[u64]) -> Result<(), StoreError> {
        let mut sorted: Vec<([u8; 8], &Value)> =
            dets.iter().map(|(o, v)| (keys::det_key(*o), v)).collect();
        sorted.sort_unstable_by_key(|e| e.0);
        std::fs::create_dir_all(&self.dets.scratch).map_err(|e| io_error(&self.dets.scratch, e))?;
        let file = self
            .dets
            .scratch
            .join(format!("{}.sst", logs.first().copied().unwrap_or(0)));
        let opts = det_table_options(sorted.len());
        let written = (|| {
            let mut w = SstFileWriter::create(&opts);
            w.open(&file)?;
            for (k, (v, n)) in &sorted {
                w.put(k, &v[..*n as usize])?;
            }
            w.finish()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&file);
            return Err(e.into());
        }
        // RocksDB's SstFileWriter drops the file's pages from the page
        // cache as it writes them (`invalidate_page_cache`, which its C API
        // leaves on), so each lookup that finds a det_oid in it read a block
        // from the disk: the backlog's copies of the events its agent sent on
        // the live lane are all such lookups. Read back at once, in the
        // background, they are in the page cache again (advice: a failure
        // only costs those reads).
        if let Ok(f) = std::fs::File::open(&file) {
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
        }
        let db = self.db()?;
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        // Not while a checkpoint is taken ([`Store::checkpoint`]).
        let shared = self.writes.read().unwrap_or_else(|p| p.into_inner());
        let ingested = db.ingest_external_file_cf_opts(cf(&db, CF_DET), &ingest, vec![&file]);
        drop(shared);
        if let Err(e) = ingested {
            let _ = std::fs::remove_file(&file);
            return Err(e.into());
        }
        let mut batch = WriteBatch::default();
        let meta = cf(&db, CF_META);
        for seq in logs {
            batch.delete_cf(meta, log_key(*seq));
        }
        drop(db);
        // Not fsync'd: a log entry a crash brings back is ingested again.
        self.write_synced(batch, false)?;
        Ok(())
    }
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

/// The most entries an ingested table's filter is written whole for: 320
/// KiB at 10 bits each, within a shard of the default block cache (32 MiB
/// in 64). A larger whole filter (a larger `storage.memtable`) is more
/// than its shard holds: unless the table is pinned in level 0, it would be
/// read again for every lookup.
const WHOLE_FILTER_ENTRIES: usize = 1 << 18;

/// The options [`Store::ingest_dets_if_due`] writes a `det` table file of
/// `entries` with: `open_db`'s layout, but with the filter whole when it
/// is small ([`WHOLE_FILTER_ENTRIES`]). A partitioned filter cost each
/// lookup, in each table, a seek in its partitions' index and a block cache
/// lookup before the bloom probe; the ingested tables, in level 0, are
/// every lookup's (13 % of the core's samples in a backlog's drain, 2 to
/// 3 % whole: BENCHMARKS.md, fiftieth session). Compactions write partitioned
/// filters, sized for their larger tables.
pub(super) fn det_table_options(entries: usize) -> Options {
    let mut o = Options::default();
    let mut t = rocksdb::BlockBasedOptions::default();
    super::table_layout(&mut t, true);
    if entries <= WHOLE_FILTER_ENTRIES {
        t.set_partition_filters(false);
    }
    o.set_block_based_table_factory(&t);
    o.set_compression_type(super::DET_COMPRESSION);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_proto::v1::{Detection, JoinedEvent};

    /// Memtables of 4 MiB: tables of 14,336 entries.
    const MEMTABLES: usize = 4 << 20;

    fn open(path: &std::path::Path) -> Store {
        let memory = crate::store::StoreMemory {
            cache_bytes: 8 << 20,
            memtable_bytes: MEMTABLES,
        };
        Store::open_with(path, false, memory).unwrap()
    }

    fn event(oid: i64, camera: i64) -> JoinedEvent {
        JoinedEvent {
            detection: Some(Detection {
                geographical_location_oid: 1,
                video_camera_oid: camera,
                detection_oid: Some(oid),
                item_name: "car".into(),
                timestamp_detected: 1_700_000_000_000 + oid,
                ..Default::default()
            }),
            agent_id: "a".into(),
            ..Default::default()
        }
    }

    /// Commits `oids` (camera 7; live-lane tags for odd ones) in commits of
    /// 100; true when the last said an ingest is due.
    fn commit(s: &Store, oids: std::ops::Range<i64>) -> bool {
        let mut due = false;
        let oids: Vec<i64> = oids.collect();
        for chunk in oids.chunks(100) {
            let mut c = s.begin(1_700_000_000_000).unwrap();
            for &o in chunk {
                c.put_event(&event(o, 7), (o % 2 == 1).then_some(o as u64 * 3));
            }
            due = s.commit(c).unwrap().ingest_due;
        }
        due
    }

    fn log_entries(s: &Store) -> usize {
        let db = s.db().unwrap();
        let n = db
            .prefix_iterator_cf(cf(&db, CF_META), PREFIX)
            .map(|r| r.unwrap())
            .take_while(|(k, _)| k.starts_with(PREFIX))
            .count();
        n
    }

    fn assert_all_found(s: &Store, oids: std::ops::Range<i64>, when: &str) {
        let oids: Vec<i64> = oids.collect();
        for (o, d) in oids.iter().zip(s.stored_dets(&oids).unwrap()) {
            let d = d.unwrap_or_else(|| panic!("{when}: det_oid {o} not found"));
            assert_eq!(d.ts, 1_700_000_000_000 + o, "{when}");
            assert_eq!(d.camera, Some(7), "{when}");
            assert_eq!(d.live_tag, (o % 2 == 1).then_some(*o as u64 * 3), "{when}");
        }
        assert!(s.get_event(oids[0]).unwrap().is_some(), "{when}: get_event");
    }

    #[test]
    fn the_maps_two_tables_are_allocated_once_and_do_not_grow_before_an_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let cap = capacity(MEMTABLES);
        assert_eq!(s.dets.room().0, cap);
        let cap = cap as i64;
        assert!(!commit(&s, 1..cap + 1), "full, not due");
        let mut next = cap + 1;
        for round in 0..3 {
            assert!(commit(&s, next..next + 1), "round {round}: due once full");
            // The fold thread is late: the other table takes commits until
            // it is full.
            assert!(!commit(&s, next + 1..next + cap), "round {round}");
            assert_eq!(
                s.dets.room().0,
                cap as usize,
                "round {round}: no table grew"
            );
            assert_eq!(
                s.ingest_dets_if_due().unwrap(),
                cap as usize,
                "round {round}"
            );
            // The emptied table waits for the next freeze.
            assert_eq!(s.dets.room(), (cap as usize, cap as usize), "round {round}");
            assert_all_found(&s, 1..next + cap, "after the ingest");
            next += cap;
        }
    }

    #[test]
    fn det_oids_are_found_in_ingested_tables_and_in_the_tables_compacted_from_them() {
        // Ingested tables carry whole filters, compactions write partitioned
        // ones: a lookup reads both kinds side by side.
        assert!(
            capacity(crate::store::DEFAULT_MEMTABLE_BYTES) <= WHOLE_FILTER_ENTRIES,
            "the default store's ingested tables have whole filters"
        );
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mut next = 1;
        let ingest = |s: &Store, next: &mut i64| {
            // Commits until a table is full, then ingests it.
            while !commit(s, *next..*next + 100) {
                *next += 100;
            }
            *next += 100;
            assert!(s.ingest_dets_if_due().unwrap() > 0, "ingested");
        };
        for _ in 0..3 {
            ingest(&s, &mut next);
        }
        let db = s.db().unwrap();
        db.compact_range_cf(cf(&db, CF_DET), None::<&[u8]>, None::<&[u8]>);
        assert_eq!(
            db.property_int_value_cf(cf(&db, CF_DET), "rocksdb.num-files-at-level0")
                .unwrap(),
            Some(0),
            "all compacted"
        );
        drop(db);
        ingest(&s, &mut next);
        assert_all_found(&s, 1..next, "compacted and ingested");
        let absent: Vec<i64> = (next + 1_000..next + 11_000).collect();
        assert!(
            s.stored_dets(&absent).unwrap().iter().all(Option::is_none),
            "never stored, never found"
        );
    }

    #[test]
    fn a_stored_det_oid_is_found_before_its_ingest_after_it_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let at = capacity(MEMTABLES) as i64;
        {
            let s = open(dir.path());
            assert!(!commit(&s, 1..at / 2), "not due yet");
            assert_all_found(&s, 1..at / 2, "in memory");
            assert_eq!(s.ingest_dets_if_due().unwrap(), 0, "none due");
            assert!(!commit(&s, at / 2..at + 1), "full, not due");
            assert!(commit(&s, at + 1..at + 2), "due: the next commit froze it");
            assert_eq!(s.ingest_dets_if_due().unwrap(), at as usize);
            assert_eq!(s.dets.entries(), 1);
            assert_eq!(log_entries(&s), 1, "the det log goes with the ingest");
            assert_all_found(&s, 1..at + 2, "in det");
            assert_eq!(
                s.stored_dets(&[0, at + 2]).unwrap(),
                vec![None, None],
                "unknown det_oids"
            );
            // More, left in memory and in the det log.
            commit(&s, at + 2..at + 502);
            assert_eq!(s.dets.entries(), 501);
        }
        let s = open(dir.path());
        assert_eq!(s.dets.entries(), 501, "read back from the det log");
        assert_all_found(&s, 1..at + 502, "after a reopen");
    }

    #[test]
    fn det_oids_a_commit_stored_survive_a_process_that_stops_before_their_ingest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            commit(&s, 1..1001);
            // The process ends here: no ingest, no flush.
            std::mem::forget(s);
        }
        // RocksDB's lock belongs to the leaked handle: open a copy of what
        // a crash leaves on the disk (its files as they are).
        let copy = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap();
            if f.file_type().unwrap().is_file() && f.file_name() != "LOCK" {
                std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
            }
        }
        let s = open(copy.path());
        assert_all_found(&s, 1..1001, "after the crash");
    }

    #[test]
    fn an_ingest_a_crash_cut_short_before_its_log_was_deleted_leaves_every_entry_found() {
        let dir = tempfile::tempdir().unwrap();
        let at = capacity(MEMTABLES) as i64;
        let s = open(dir.path());
        assert!(!commit(&s, 1..at + 1), "full");
        assert!(commit(&s, at + 1..at + 2), "due");
        // The det log as it was before the ingest deleted it.
        let db = s.db().unwrap();
        let saved: Vec<_> = db
            .prefix_iterator_cf(cf(&db, CF_META), PREFIX)
            .map(|r| r.unwrap())
            .take_while(|(k, _)| k.starts_with(PREFIX))
            .collect();
        drop(db);
        assert_eq!(s.ingest_dets_if_due().unwrap(), at as usize);
        let mut b = WriteBatch::default();
        let db = s.db().unwrap();
        for (k, v) in &saved {
            b.put_cf(cf(&db, CF_META), k, v);
        }
        drop(db);
        s.write(b).unwrap();
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.dets.entries(), at as usize + 1, "read back");
        assert_all_found(&s, 1..at + 2, "in both");
        assert!(commit(&s, at + 2..at + 3), "due: more than a table holds");
        assert_eq!(
            s.ingest_dets_if_due().unwrap(),
            at as usize + 1,
            "ingested again"
        );
        assert_all_found(&s, 1..at + 3, "ingested twice");
        assert_eq!(log_entries(&s), 1, "the commit since");
    }

    #[test]
    fn a_malformed_det_log_entry_is_named_not_read_as_entries() {
        let mut ok = Vec::new();
        decode(&encode(&[(keys::det_key(5), ([1; 24], 16))]), |o, v| {
            ok.push((o, v.1))
        })
        .unwrap();
        assert_eq!(ok, vec![(5, 16)]);
        for bad in [
            &[0u8; 8][..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 25][..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 1, 1, 1][..],
            &[0, 0, 0, 0, 0, 0, 0, 0, 16, 1][..],
        ] {
            let err = decode(bad, |_, _| {}).unwrap_err();
            assert!(err.to_string().contains("det log"), "{err}");
        }
    }
}
