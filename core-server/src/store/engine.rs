//! What RocksDB says of its own state: write stalls, L0 files, pending
//! compaction and memtables, for the metrics (`sightline_store_*`). An
//! operator reads from them why commits slow down under a long backlog
//! (BENCHMARKS.md, the nineteenth session); the store's own LOG keeps only
//! fatal lines (see `open_db`).

use rocksdb::DB;

use super::{Store, StoreError};

/// Every column family, for the sums over them.
pub(super) const ALL: [&str; 13] = [
    super::CF_RECEIVED,
    super::CF_EVENTS,
    super::CF_DET,
    super::CF_WM,
    super::CF_AGG,
    super::CF_QUARANTINE,
    super::CF_COUNTERS,
    super::CF_MEDIA,
    super::CF_MEDIA_AGE,
    super::CF_MEDIA_REFS,
    super::CF_MEDIA_QUARANTINE,
    super::CF_BY_COMMIT,
    super::CF_META,
];

/// RocksDB's state at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Writes are stopped (too many L0 files, memtables or pending
    /// compaction): every commit waits.
    pub write_stopped: bool,
    /// The rate writes are slowed to, in bytes/s; 0 when they are not.
    pub delayed_write_rate: u64,
    /// Seconds writes have waited for a slowdown or stop since the store was
    /// opened (RocksDB's "Cumulative stall").
    pub stall_seconds: f64,
    /// The most L0 files of any column family (RocksDB slows writes at 20
    /// and stops them at 36 by default).
    pub l0_files_max: u64,
    /// Bytes compaction must rewrite to bring every level under its target.
    pub pending_compaction_bytes: u64,
    /// Memtables full and waiting for a flush, over all column families.
    pub immutable_memtables: u64,
    /// Bytes in every memtable (active, immutable and pinned).
    pub memtable_bytes: u64,
    pub running_compactions: u64,
    pub running_flushes: u64,
}

impl Store {
    /// RocksDB's state now (a few property reads; no I/O).
    pub fn engine_stats(&self) -> Result<EngineStats, StoreError> {
        Ok(read(&*self.db()?))
    }
}

fn read(db: &DB) -> EngineStats {
    let int = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
    let mut s = EngineStats {
        write_stopped: int("rocksdb.is-write-stopped") != 0,
        delayed_write_rate: int("rocksdb.actual-delayed-write-rate"),
        stall_seconds: db
            .property_value("rocksdb.dbstats")
            .ok()
            .flatten()
            .and_then(|t| cumulative_stall_seconds(&t))
            .unwrap_or(0.0),
        running_compactions: int("rocksdb.num-running-compactions"),
        running_flushes: int("rocksdb.num-running-flushes"),
        ..Default::default()
    };
    for name in ALL {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        let int = |p: &str| db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
        s.l0_files_max = s.l0_files_max.max(int("rocksdb.num-files-at-level0"));
        s.pending_compaction_bytes += int("rocksdb.estimate-pending-compaction-bytes");
        s.immutable_memtables += int("rocksdb.num-immutable-mem-table");
        s.memtable_bytes += int("rocksdb.cur-size-all-mem-tables");
    }
    s
}

/// The seconds of "Cumulative stall: 00:01:2.345 H:M:S, 1.2 percent" in
/// RocksDB's `rocksdb.dbstats` text (the only place it reports stall time
/// without its statistics object, which costs every write).
fn cumulative_stall_seconds(dbstats: &str) -> Option<f64> {
    let rest = dbstats
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cumulative stall:"))?;
    let hms = rest.split_whitespace().next()?;
    let mut parts = hms.split(':').map(|p| p.parse::<f64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(h * 3600.0 + m * 60.0 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_time_is_read_from_rocksdbs_own_stats_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false, 1 << 20).unwrap();
        let db = store.db().unwrap();
        let text = db.property_value("rocksdb.dbstats").unwrap().unwrap();
        // The line is there on this RocksDB, and reads as no stall yet.
        assert_eq!(cumulative_stall_seconds(&text), Some(0.0), "{text}");
        assert_eq!(
            cumulative_stall_seconds("Cumulative stall: 01:02:3.500 H:M:S, 0.1 percent"),
            Some(3723.5)
        );
        assert_eq!(cumulative_stall_seconds("Cumulative writes: 0"), None);
        let s = store.engine_stats().unwrap();
        assert!(!s.write_stopped);
        assert_eq!(s.delayed_write_rate, 0);
        // The memtables of thirteen column families hold at least their
        // arenas' first blocks.
        assert!(s.memtable_bytes > 0, "{s:?}");
    }
}
