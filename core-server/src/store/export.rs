//! The reads of the Parquet export ([`crate::export`]): events by detection
//! time with their footage, and which detection times were committed when.

use rocksdb::{IteratorMode, ReadOptions};
use sightline_proto::v1::JoinedEvent;

use super::{
    cf, decode_event, keys, media::refs_at, Store, StoreError, CF_BY_COMMIT, CF_EVENTS,
    CF_MEDIA_REFS,
};

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
        let mut opts = ReadOptions::default();
        // A one-off scan: it would only push the core's working set out.
        // No fixed read-ahead: it would read that much of every table at
        // each hour's seek (perf: 18% of the export copying it); RocksDB's
        // own grows as a scan goes on.
        opts.fill_cache(false);
        opts.set_iterate_upper_bound(end);
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_EVENTS), opts);
        it.seek(start);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k >= &end[..] {
                break;
            }
            buf.push(decode_event(v)?);
            if buf.len() >= batch {
                self.fill_media_in_order(&mut buf)?;
                f(&buf)?;
                buf.clear();
            }
            it.next();
        }
        it.status()?;
        if !buf.is_empty() {
            self.fill_media_in_order(&mut buf)?;
            f(&buf)?;
        }
        Ok(())
    }

    /// [`Store::fill_media`] in one forward walk of `media_refs` in det_oid
    /// order: an event whose det_oid lies before the iterator's next ref has
    /// none, and costs no seek (most events of an export have no footage).
    fn fill_media_in_order(&self, events: &mut [JoinedEvent]) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, CF_MEDIA_REFS));
        let mut order: Vec<(i64, usize)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((e.detection.as_ref()?.detection_oid?, i)))
            .collect();
        order.sort_unstable();
        it.seek(keys::det_key(order.first().map_or(i64::MIN, |o| o.0)));
        for (oid, i) in order {
            match it.key() {
                None => break,
                Some(k) if k.len() >= 8 && k[..8] > keys::det_key(oid)[..] => continue,
                _ => {}
            }
            let ev = &mut events[i];
            ev.media = refs_at(&mut it, oid, &ev.agent_id)?;
        }
        it.status()?;
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
