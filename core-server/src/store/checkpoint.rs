//! A consistent copy of the running store, for [`crate::backup`].

use std::path::Path;

use rocksdb::{checkpoint::Checkpoint, Options, DB};

use super::{Store, StoreError};

impl Store {
    /// Writes a RocksDB checkpoint of the store into `dir` (which must not
    /// exist; on the store's filesystem its SST files are hard links) while
    /// writes go on, and returns the watermarks *in that copy*: every
    /// (agent, epoch, seq) a core restored from it resumes from.
    ///
    /// Commits wait while it is taken (every column family is flushed, then
    /// the files linked: typically well under a second). So it holds exactly
    /// the commits acknowledged before it, every column family at the same
    /// point — RocksDB 7.8's checkpoint taken under concurrent writes to
    /// several column families could not be opened ("SST file is ahead of
    /// WALs").
    pub fn checkpoint(&self, dir: &Path) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let db = self.db()?;
        {
            let _alone = self.writes.write().unwrap_or_else(|p| p.into_inner());
            db.flush_wal(true)?;
            for name in DB::list_cf(&Options::default(), &self.path)? {
                if let Some(cf) = db.cf_handle(&name) {
                    db.flush_cf(cf)?;
                }
            }
            Checkpoint::new(&db)?.create_checkpoint(dir)?;
        }
        drop(db);
        // Read the copy's own `wm` entries (read-only: it is not changed).
        let opts = Options::default();
        let names = DB::list_cf(&opts, dir)?;
        let copy = DB::open_cf_for_read_only(&opts, dir, &names, false)?;
        Ok(self
            .watermark_table(&copy)?
            .into_iter()
            .map(|((agent, epoch), (seq, _))| (agent, epoch, seq))
            .collect())
    }
}
