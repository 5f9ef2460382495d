//! What RocksDB says of its own state: write stalls, L0 files, pending
//! compaction, memtables, and what each column family's flushes and
//! compactions wrote and cost, for the metrics (`sightline_store_*`). An
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
    /// det_oids held in memory, not yet in `det` (`store::det_buffer`).
    pub det_buffer_entries: u64,
    /// The store's disk refused a write (full, failing) and the store has
    /// not reopened since: no commit is acknowledged.
    pub disk_fault: bool,
}

/// What the flushes and compactions of one column family did since the
/// store was opened (RocksDB's own accounting, `rocksdb.cfstats`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TableWork {
    /// Bytes written to tables (flushes and compactions), to RocksDB's
    /// precision: 0.01 GB.
    pub written_bytes: u64,
    /// CPU seconds they took (RocksDB's `CompMergeCPU`).
    pub cpu_seconds: f64,
}

impl Store {
    /// RocksDB's state now (a few property reads; no I/O; `Err` during a
    /// reopen rather than waiting for it).
    pub fn engine_stats(&self) -> Result<EngineStats, StoreError> {
        let mut s = read(&*self.db_now()?);
        s.det_buffer_entries = self.dets.entries() as u64;
        s.disk_fault = self.in_disk_fault();
        Ok(s)
    }

    /// Each column family's [`TableWork`], by name (one stats text per
    /// column family, formatted by RocksDB; no I/O). A column family whose
    /// text does not read as expected is left out.
    pub fn table_work(&self) -> Result<Vec<(&'static str, TableWork)>, StoreError> {
        let db = self.db_now()?;
        Ok(ALL
            .iter()
            .filter_map(|&name| {
                let cf = db.cf_handle(name)?;
                let text = db
                    .property_value_cf(cf, "rocksdb.cfstats-no-file-histogram")
                    .ok()??;
                Some((name, table_work(&text)?))
            })
            .collect())
    }
}

/// Reads a [`TableWork`] from a column family's `rocksdb.cfstats` text: the
/// CPU seconds from the `Sum` row of the table by level, under the
/// `CompMergeCPU(sec)` header, and the bytes from the line
/// "Cumulative compaction: 1.23 GB write, ..." (more precise than the
/// table's one decimal).
fn table_work(cfstats: &str) -> Option<TableWork> {
    let header: Vec<&str> = cfstats
        .lines()
        .find(|l| l.contains("CompMergeCPU(sec)"))?
        .split_whitespace()
        .collect();
    let mut sum: Vec<&str> = cfstats
        .lines()
        .find(|l| l.trim_start().starts_with("Sum "))?
        .split_whitespace()
        .collect();
    // The size is printed with its unit ("318.03 MB"): one header, two words.
    if sum
        .get(3)
        .is_some_and(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
    {
        sum.remove(3);
    }
    let at = header.iter().position(|h| *h == "CompMergeCPU(sec)")?;
    let cpu_seconds = sum.get(at)?.parse::<f64>().ok()?;
    let gb = cfstats
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cumulative compaction:"))?
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()?;
    Some(TableWork {
        written_bytes: (gb * (1u64 << 30) as f64) as u64,
        cpu_seconds,
    })
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

    #[test]
    fn each_column_familys_table_work_is_read_from_rocksdbs_own_stats_text() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false, 1 << 20).unwrap();
        // This RocksDB's text reads for every column family (nothing
        // written yet: no work).
        let work = store.table_work().unwrap();
        assert_eq!(work.len(), ALL.len(), "{work:?}");
        assert!(
            work.iter().all(|(_, w)| *w == TableWork::default()),
            "{work:?}"
        );
        // Lines as RocksDB 7.8 prints them after some work.
        let text = "\n** Compaction Stats [events] **\n\
Level    Files   Size     Score Read(GB)  Rn(GB) Rnp1(GB) Write(GB) Wnew(GB) Moved(GB) W-Amp Rd(MB/s) Wr(MB/s) Comp(sec) CompMergeCPU(sec) Comp(cnt) Avg(sec) KeyIn KeyDrop Rblob(GB) Wblob(GB)\n\
------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------\n\
  L0      3/0   150.10 MB   0.8      0.0     0.0      0.0       1.2      1.2       0.0   1.0      0.0     61.2     20.01             17.50        25    0.800       0      0       0.0       0.0\n\
  L1      4/0   240.22 MB   0.9      2.1     1.2      0.9       2.0      1.1       0.0   1.7     80.2     76.4     26.80             24.25         6    4.467    12M      0       0.0       0.0\n\
 Sum      7/0   390.32 MB   0.0      2.1     1.2      0.9       3.2      2.3       0.0   2.7     45.8     69.8     46.81             41.75        31    1.510    12M      0       0.0       0.0\n\
 Int      0/0    0.00 KB   0.0      0.0     0.0      0.0       0.0      0.0       0.0   0.0      0.0      0.0      0.00              0.00         0    0.000       0      0       0.0       0.0\n\
\n\
Cumulative compaction: 3.21 GB write, 69.80 MB/s write, 2.10 GB read, 45.80 MB/s read, 46.8 seconds\n";
        let w = table_work(text).unwrap();
        assert_eq!(w.cpu_seconds, 41.75);
        assert_eq!(w.written_bytes, (3.21 * (1u64 << 30) as f64) as u64);
        assert_eq!(table_work("** DB Stats **"), None);
    }
}
