//! A read-only view of a store another process writes: RocksDB's secondary
//! instance. It reads the primary's table files and tails its write-ahead
//! log, never writes to the primary's directory and takes no lock, so tools
//! (`sightline-core export parquet`) read the store of a running core.
//!
//! # Promises
//!
//! - Opening MUST NOT write to the primary's directory: the secondary keeps
//!   its own info log and state in the directory it is given.
//! - Reads see the primary as of the open or the last
//!   [`Store::catch_up`]; nothing newer.
//! - A store of an unknown format (or one never opened by a core) is refused,
//!   as by [`Store::open`]; a format-1 store is not migrated here.

use std::{
    path::Path,
    sync::{atomic::AtomicI64, Arc, Mutex},
};

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

use super::*;

impl Store {
    /// Opens the store at `primary` as a RocksDB secondary instance keeping
    /// its own files in `scratch` (an empty or earlier scratch directory).
    pub fn open_secondary(primary: &Path, scratch: &Path) -> Result<Self, StoreError> {
        if !primary.join("CURRENT").exists() {
            return Err(StoreError::Corrupt(format!(
                "{} holds no store (no CURRENT file)",
                primary.display()
            )));
        }
        let mut opts = Options::default();
        // A secondary must keep every table file open: the primary may delete
        // a file compacted away, and an open one stays readable.
        opts.set_max_open_files(-1);
        opts.set_log_level(rocksdb::LogLevel::Fatal);
        let cf = |merge: bool| {
            let mut o = Options::default();
            if merge {
                o.set_merge_operator_associative("sightline-add-u64", add_u64);
            }
            o
        };
        let cfs = [
            (CF_EVENTS, false),
            (CF_DET, false),
            (CF_WM, false),
            (CF_AGG, true),
            (CF_QUARANTINE, false),
            (CF_COUNTERS, true),
            (CF_MEDIA, false),
            (CF_MEDIA_AGE, false),
            (CF_MEDIA_REFS, false),
            (CF_MEDIA_QUARANTINE, false),
            (CF_BY_COMMIT, false),
            (CF_META, false),
        ]
        .into_iter()
        .map(|(name, merge)| ColumnFamilyDescriptor::new(name, cf(merge)));
        let db = DB::open_cf_descriptors_as_secondary(&opts, primary, scratch, cfs)?;
        let partitions = match db.get_cf(super::cf(&db, CF_META), META_FORMAT)? {
            Some(v) if v.as_ref() == FORMAT_VERSION.to_be_bytes() => db
                .get_cf(super::cf(&db, CF_META), META_PARTITIONS)?
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map_or(1, |b| u32::from_be_bytes(b) as usize),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "the store's format is {}; this tool reads format {FORMAT_VERSION} (start the core once to migrate it)",
                    other.map_or("unset".to_string(), |v| format!("{v:?}"))
                )))
            }
        };
        // Never ingested here: read as of the open and each catch-up.
        let dets = det_buffer::DetBuffer::load(&db, scratch.join("det-ingest"), None)?;
        Ok(Self {
            db: arc_swap::ArcSwapOption::from_pointee(db),
            path: primary.to_path_buf(),
            memory: StoreMemory {
                cache_bytes: 0,
                memtable_bytes: 0,
            },
            fault: Mutex::new(None),
            faulted: std::sync::atomic::AtomicBool::new(false),
            sync: false,
            dedup_cutoff: Arc::new(AtomicI64::new(i64::MIN)),
            refs_cutoff: Arc::new(AtomicI64::new(i64::MIN)),
            partitions: std::sync::atomic::AtomicUsize::new(partitions),
            writes: std::sync::RwLock::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
            reopening: std::sync::atomic::AtomicBool::new(false),
            // Never written here: reads add the primary's pending entries.
            pending: pending::Pending::default(),
            dets,
        })
    }

    /// A secondary catches up with what the primary wrote since (its table
    /// files and the tail of its log). A primary store: nothing to do.
    pub fn catch_up(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        db.try_catch_up_with_primary()?;
        self.dets.reload(&db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secondary_reads_a_store_its_core_holds_open_and_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Store::open(&dir.path().join("core"), false, 8 << 20).unwrap();
        let put = |ts: i64, oid: i64| {
            let db = primary.db().unwrap();
            let mut b = WriteBatch::default();
            b.put_cf(cf(&db, CF_EVENTS), keys::event_key(ts, oid), b"");
            drop(db);
            primary.write(b).unwrap();
        };
        put(1_000, 1);
        let secondary =
            Store::open_secondary(&dir.path().join("core"), &dir.path().join("scratch")).unwrap();
        let count = |s: &Store| {
            let db = s.db().unwrap();
            let n = db
                .iterator_cf(cf(&db, CF_EVENTS), IteratorMode::Start)
                .count();
            n
        };
        assert_eq!(count(&secondary), 1);
        put(2_000, 2);
        assert_eq!(count(&secondary), 1, "as of the open");
        secondary.catch_up().unwrap();
        assert_eq!(count(&secondary), 2, "caught up");
        let err = Store::open_secondary(&dir.path().join("none"), &dir.path().join("s2"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("holds no store"), "{err}");
    }
}
