//! The reads of the Parquet export ([`crate::export`]): events by detection
//! time with their footage, and which detection times were committed when.

use rocksdb::IteratorMode;
use sightline_proto::v1::JoinedEvent;

use super::{cf, decode_event, keys, Store, StoreError, CF_BY_COMMIT, CF_EVENTS};

impl Store {
    /// Every event with `from_ms <= timestamp_detected < to_ms`, in key order
    /// (detection time, then det_oid), `batch` at a time, each with the
    /// footage attached so far (`media`, as the query API serves it). One
    /// iterator over the range: a consistent view of it.
    pub fn scan_detections(
        &self,
        from_ms: i64,
        to_ms: i64,
        batch: usize,
        mut f: impl FnMut(&[JoinedEvent]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let end = keys::event_key(to_ms, i64::MIN);
        let start = keys::event_key(from_ms, i64::MIN);
        let mut buf = Vec::with_capacity(batch);
        let mut it = db.raw_iterator_cf(cf(&db, CF_EVENTS));
        it.seek(start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k >= &end[..] {
                break;
            }
            buf.push(decode_event(v)?);
            if buf.len() >= batch {
                self.fill_media(&mut buf)?;
                f(&buf)?;
                buf.clear();
            }
            it.next();
        }
        it.status()?;
        if !buf.is_empty() {
            self.fill_media(&mut buf)?;
            f(&buf)?;
        }
        Ok(())
    }

    /// Calls `f(committed_ms, timestamp_detected)` for every event committed
    /// at `from_ms <= committed_ms < to_ms` (whether retention has removed it
    /// since or not), in commit order. Reads `by_commit` alone.
    pub fn committed_detections(
        &self,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(i64, i64),
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let end = keys::event_key(to_ms, i64::MIN);
        let mut it = db.raw_iterator_cf(cf(&db, CF_BY_COMMIT));
        it.seek(keys::event_key(from_ms, i64::MIN));
        let malformed = || StoreError::Corrupt("a by_commit entry is malformed".into());
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k >= &end[..] {
                break;
            }
            if k.len() != 16 {
                return Err(malformed());
            }
            let committed = keys::i64_from_key(k);
            if v.len() == 8 {
                // A store written before commits were packed: one entry an event.
                f(committed, keys::i64_from_key(v));
            } else if !v.is_empty() && v.len() % 16 == 0 {
                for e in v.chunks_exact(16) {
                    f(committed, keys::i64_from_key(&e[..8]));
                }
            } else {
                return Err(malformed());
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// The detection time of the oldest stored event, if any.
    pub fn oldest_detection(&self) -> Result<Option<i64>, StoreError> {
        let db = self.db()?;
        let first = db
            .iterator_cf(cf(&db, CF_EVENTS), IteratorMode::Start)
            .next()
            .transpose()?;
        Ok(first.map(|(k, _)| keys::i64_from_key(&k)))
    }
}
