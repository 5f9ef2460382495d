//! The buffer's database on disk: opening it, loading and checking its
//! state, writing to it, and recovering when its disk refused a write (full,
//! or failing) — see the promises in the module above.

use std::{io::Write, time::Duration};

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions};

use super::*;

/// After a failed write, how often at most the buffer tries to recover (probe
/// for space, reopen its database).
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// Free bytes a recovery probe must be able to write (and fsync) in the buffer
/// directory before the database is reopened: room for a WAL record, a
/// manifest update and a memtable flush of a small group.
pub const RECOVERY_PROBE_BYTES: usize = 1024 * 1024;
/// Name of the recovery probe file, in the buffer directory.
const PROBE_FILE: &str = "space-probe";
/// Most bytes all memtables of the buffer's database hold together
/// (RocksDB's `db_write_buffer_size`; past it the largest is flushed). The
/// agent runs beside a detector on a camera host: with two column families
/// of two 4 MiB memtables each it held up to 16 MiB.
pub const MEMTABLE_BYTES: usize = 4 * 1024 * 1024;
/// One column family's memtable, at most (RocksDB's `write_buffer_size`).
pub const CF_MEMTABLE_BYTES: usize = 2 * 1024 * 1024;
/// The block cache, which also holds the tables' index and filter blocks
/// (held outside it, they would grow with the backlog on disk).
pub const BLOCK_CACHE_BYTES: usize = 2 * 1024 * 1024;
/// Most bytes RocksDB buffers per file it writes before a write(2).
pub const WRITE_BUFFER_BYTES: u64 = 128 * 1024;

pub(super) fn open_db(path: &Path) -> Result<DB, BufferError> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    // Small memory: the agent runs beside a detector on a camera host.
    db_opts.set_db_write_buffer_size(MEMTABLE_BYTES);
    db_opts.set_max_total_wal_size(32 * 1024 * 1024);
    db_opts.set_max_open_files(64);
    db_opts.set_keep_log_file_num(2);
    // Each file RocksDB writes (the WAL, a flush's or a compaction's table)
    // buffers up to this much before a write(2): 1 MiB by default, ~2.8 MiB
    // of the agent's heap at a burst's peak (heaptrack).
    db_opts.set_writable_file_max_buffer_size(WRITE_BUFFER_BYTES);
    // RocksDB's own LOG file lives on the buffer's disk. Once one line fails
    // to go in (disk full), the next line aborts the process in the RocksDB
    // built with assertions (Debian's librocksdb, which the agent links):
    // only fatal lines are written, the agent logs what matters itself.
    db_opts.set_log_level(rocksdb::LogLevel::Fatal);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES)?);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut cf_opts = Options::default();
    cf_opts.set_write_buffer_size(CF_MEMTABLE_BYTES);
    cf_opts.set_max_write_buffer_number(2);
    cf_opts.set_block_based_table_factory(&table);
    // Uncompressed: the buffer is a queue, each run is written once, read
    // once to send and deleted; Snappy on every flush and compaction was a
    // fifth of the agent's CPU under a backlog (BENCHMARKS.md, "The commit
    // path", eleventh session). `buffer.max_bytes` counts encoded events, so
    // the disk it takes is about that.
    cf_opts.set_compression_type(rocksdb::DBCompressionType::None);
    let cfs = vec![
        ColumnFamilyDescriptor::new(CF_EVENTS, cf_opts.clone()),
        ColumnFamilyDescriptor::new(CF_META, cf_opts),
    ];
    Ok(DB::open_cf_descriptors(&db_opts, path, cfs)?)
}

/// Reads (or, for a new buffer, writes) the meta keys and checks that the
/// events are exactly `acked + 1 ..= next_seq - 1`.
pub(super) fn load_state(db: &DB) -> Result<State, BufferError> {
    let meta = db.cf_handle(CF_META).expect("meta cf");
    let get = |k: &str| -> Result<Option<u64>, BufferError> {
        db.get_cf(meta, k)?.map(|v| be_u64(&v, k)).transpose()
    };
    let epoch = match get("epoch")? {
        Some(e) => {
            match get("format")? {
                Some(FORMAT_VERSION) => {}
                Some(1) => migrate_from_1(db)?,
                other => {
                    return Err(BufferError::Corrupt(format!(
                        "unknown buffer format {other:?}, this agent reads {FORMAT_VERSION} (and migrates 1)"
                    )))
                }
            }
            e
        }
        None => {
            let epoch = rand::random::<u64>().max(1);
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, "epoch", epoch.to_be_bytes());
            batch.put_cf(meta, "format", FORMAT_VERSION.to_be_bytes());
            batch.put_cf(meta, "next_seq", 1u64.to_be_bytes());
            batch.put_cf(meta, "acked", 0u64.to_be_bytes());
            let mut w = WriteOptions::default();
            w.set_sync(true);
            db.write_opt(batch, &w)?;
            epoch
        }
    };
    let next_seq = get("next_seq")?.unwrap_or(1);
    let acked = get("acked")?.unwrap_or(0);
    if acked >= next_seq {
        return Err(BufferError::Corrupt(format!(
            "acked {acked} is not below next_seq {next_seq}"
        )));
    }
    let mut held = super::held::HeldBytes::default();
    let mut runs = VecDeque::new();
    let mut kept_runs = VecDeque::new();
    let mut expect = acked + 1;
    let mut deleted_below = None;
    let events = db.cf_handle(CF_EVENTS).expect("events cf");
    // Every run is read once here: none is kept in the block cache.
    for item in db.iterator_cf_opt(events, super::uncached(), rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        let first = be_u64(&k, "event key")?;
        deleted_below.get_or_insert(first);
        let mut holds = false;
        for (i, e) in unpack_run(&v)?.into_iter().enumerate() {
            let seq = first + i as u64;
            if seq <= acked {
                continue; // an acknowledged part of a run still held
            }
            if seq != expect {
                return Err(BufferError::Corrupt(format!(
                    "expected event seq {expect}, found {seq} (acked {acked}, next_seq {next_seq})"
                )));
            }
            held.extend(seq, [e.len() as u64]);
            expect += 1;
            holds = true;
        }
        if holds {
            runs.push_back(first);
        } else {
            kept_runs.push_back(first);
        }
    }
    if expect != next_seq {
        return Err(BufferError::Corrupt(format!(
            "events end before seq {expect}, but next_seq is {next_seq}"
        )));
    }
    let mut counted = Vec::new();
    for item in db.prefix_iterator_cf(meta, cameras::META_PREFIX.as_bytes()) {
        let (k, v) = item?;
        if !k.starts_with(cameras::META_PREFIX.as_bytes()) {
            break;
        }
        counted.push(
            cameras::Cameras::decode(&v)
                .map_err(|e| BufferError::Corrupt(format!("camera counters: {e}")))?,
        );
    }
    let held_through = if acked + 1 >= next_seq {
        0
    } else {
        next_seq - 1
    };
    Ok(State {
        epoch,
        next_seq,
        acked,
        cameras: cameras::Cameras::loaded(counted, held_through),
        persisted_acked: acked,
        held,
        runs,
        kept_runs,
        deleted_below: deleted_below.unwrap_or(next_seq),
        cache: VecDeque::new(),
        cache_first: next_seq,
        cache_bytes: 0,
        durable: VecDeque::new(),
    })
}

/// Whether a RocksDB error means "no space left" (ENOSPC, or RocksDB's own
/// space limit).
fn is_no_space(e: &rocksdb::Error) -> bool {
    let m = e.to_string();
    m.contains("No space left") || m.contains("NoSpace") || m.contains("space limit")
}

impl Shared {
    /// Runs `f` with the open database.
    pub(super) fn with_db<T>(
        &self,
        f: impl FnOnce(&DB) -> Result<T, BufferError>,
    ) -> Result<T, BufferError> {
        let guard = self.db.read().unwrap();
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(self.reopening()),
        }
    }

    /// The answer to a write while the database is faulted, or closed
    /// between reopen attempts.
    pub(super) fn reopening(&self) -> BufferError {
        if let Some(f) = self.fault.lock().unwrap().as_ref() {
            if f.no_space {
                return BufferError::DiskFull {
                    path: self.path.display().to_string(),
                    reason: f.reason.clone(),
                };
            }
        }
        BufferError::DiskFault {
            path: self.path.display().to_string(),
            reason: self
                .fault
                .lock()
                .unwrap()
                .as_ref()
                .map(|f| f.reason.clone())
                .unwrap_or_default(),
        }
    }

    /// Writes `batch`; a failure is remembered (see [`Shared::recover`]) and
    /// named: [`BufferError::DiskFull`] when the disk has no room. Until the
    /// database is reopened no further write reaches RocksDB: after a failed
    /// one its log writer refuses (and, built with assertions, aborts on)
    /// every write.
    pub(super) fn write(&self, db: &DB, batch: WriteBatch, sync: bool) -> Result<(), BufferError> {
        if self.fault.lock().unwrap().is_some() {
            return Err(self.reopening());
        }
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        db.write_opt(batch, &w).map_err(|e| {
            let reason = e.to_string();
            tracing::error!(path = %self.path.display(), error = %reason,
                "buffer disk refuses writes: publishes are refused until it takes them again; held events are still sent");
            *self.fault.lock().unwrap() = Some(Fault {
                reason,
                no_space: is_no_space(&e),
                last_try: Instant::now(),
            });
            self.reopening()
        })
    }

    /// After a failed write (at most every [`RECOVERY_INTERVAL`]): once
    /// [`RECOVERY_PROBE_BYTES`] can be written to the buffer's disk, closes
    /// and reopens the database — RocksDB keeps refusing writes after a
    /// failed one until it is reopened — and reloads the state from it,
    /// keeping acknowledgements not yet written.
    pub(super) fn recover(&self) {
        {
            let mut fault = self.fault.lock().unwrap();
            match fault.as_mut() {
                Some(f) if f.last_try.elapsed() >= RECOVERY_INTERVAL => f.last_try = Instant::now(),
                _ => return,
            }
        }
        let probe = self.path.join(PROBE_FILE);
        let room = std::fs::File::create(&probe)
            .and_then(|mut f| {
                f.write_all(&vec![0u8; RECOVERY_PROBE_BYTES])?;
                f.sync_all()
            })
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        if !room {
            return;
        }
        let mut guard = self.db.write().unwrap();
        drop(guard.take());
        let reopened = open_db(&self.path).and_then(|db| load_state(&db).map(|st| (db, st)));
        match reopened {
            Ok((db, mut fresh)) => {
                let mut st = self.state.lock().unwrap();
                let acked = st.acked;
                if acked > fresh.acked && acked < fresh.next_seq {
                    fresh.drop_through(acked);
                }
                *st = fresh;
                let next = st.next_seq;
                drop(st);
                *guard = Some(db);
                drop(guard);
                let was = self.fault.lock().unwrap().take().map(|f| f.reason);
                self.next_seq_tx.send_replace(next);
                tracing::info!(path = %self.path.display(), was = ?was, "buffer disk takes writes again: database reopened");
                if let Err(e) = self.persist_acked() {
                    tracing::debug!(error = %e, "acknowledgements kept in memory until the buffer disk takes writes");
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "buffer database could not be reopened yet");
                if let Some(f) = self.fault.lock().unwrap().as_mut() {
                    f.reason = e.to_string();
                }
            }
        }
    }

    /// Writes the acknowledgements applied in memory but not yet on disk.
    pub(super) fn persist_acked(&self) -> Result<(), BufferError> {
        self.with_db(|db| {
            let mut st = self.state.lock().unwrap();
            if st.persisted_acked >= st.acked {
                return Ok(());
            }
            let events = db.cf_handle(CF_EVENTS).expect("events cf");
            let meta = db.cf_handle(CF_META).expect("meta cf");
            let mut batch = WriteBatch::default();
            // Every run all of whose seqs are acknowledged: those before the
            // first run still holding one, from where the last delete ended.
            // Ranges that all started at 0 overlapped: RocksDB splits
            // overlapping tombstones into fragments that each list every
            // tombstone covering them, quadratic in the acks per memtable —
            // 48 MiB of the agent's heap while a backlog drained (heaptrack:
            // `FragmentedRangeTombstoneList`; BENCHMARKS.md, "Memory under a
            // backlog").
            // With `keep_acked`, the newest acknowledged ones stay.
            let floor = (st.acked + 1).saturating_sub(self.opts.keep_acked);
            let keep_from = st.forget_kept_below(floor);
            if st.deleted_below < keep_from {
                batch.delete_range_cf(events, key(st.deleted_below), key(keep_from));
            }
            batch.put_cf(meta, "acked", st.acked.to_be_bytes());
            self.write(db, batch, false)?;
            st.persisted_acked = st.acked;
            st.deleted_below = st.deleted_below.max(keep_from);
            Ok(())
        })
    }
}

/// Rewrites a format-1 buffer (one event per `events` entry) as runs, in one
/// synced `WriteBatch` with the new format.
fn migrate_from_1(db: &DB) -> Result<(), BufferError> {
    let events = db.cf_handle(CF_EVENTS).expect("events cf");
    let meta = db.cf_handle(CF_META).expect("meta cf");
    let mut held: Vec<(u64, Bytes)> = Vec::new();
    for item in db.iterator_cf(events, rocksdb::IteratorMode::Start) {
        let (k, v) = item?;
        held.push((be_u64(&k, "event key")?, Bytes::from(v.into_vec())));
    }
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(events, key(0), key(u64::MAX));
    // Consecutive seqs make one list of runs each (a format-1 buffer holds
    // one stretch; the check at load names any hole).
    let mut i = 0;
    while i < held.len() {
        let mut j = i + 1;
        while j < held.len() && held[j].0 == held[j - 1].0 + 1 {
            j += 1;
        }
        let stretch: Vec<Bytes> = held[i..j].iter().map(|(_, b)| b.clone()).collect();
        for (first, run) in pack_runs(held[i].0, &stretch) {
            batch.put_cf(events, key(first), run);
        }
        i = j;
    }
    batch.put_cf(meta, "format", FORMAT_VERSION.to_be_bytes());
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.write_opt(batch, &w)?;
    tracing::info!(
        events = held.len(),
        "buffer migrated from format 1 to {FORMAT_VERSION} (runs)"
    );
    Ok(())
}
