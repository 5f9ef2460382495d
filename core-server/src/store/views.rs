//! Reads the dashboard needs beyond the query API: the newest events, and
//! counts per bucket over a range (the timeline), both from the same column
//! families and key layouts as the rest of the store.

use std::collections::HashMap;

use rocksdb::IteratorMode;
use sightline_proto::v1::JoinedEvent;

use super::{decode_event, keys, keys::Bucket, Store, StoreError, CF_BY_COMMIT, CF_EVENTS};

/// What a timeline series is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineBy {
    Item,
    Location,
}

/// Per-bucket counts of one item or location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSeries {
    /// The item name, or the location oid as text.
    pub key: String,
    pub counts: Vec<u64>,
}

impl Store {
    /// Up to `limit` events, newest detection first, that `keep` accepts,
    /// looking at no more than `scan` events.
    pub fn latest_events(
        &self,
        limit: usize,
        scan: usize,
        keep: impl Fn(&JoinedEvent) -> bool,
    ) -> Result<Vec<JoinedEvent>, StoreError> {
        let mut out = Vec::new();
        for (seen, item) in self
            .db
            .iterator_cf(self.cf(CF_EVENTS), IteratorMode::End)
            .enumerate()
        {
            if out.len() >= limit || seen >= scan {
                break;
            }
            let (_, v) = item?;
            let ev = decode_event(&v)?;
            if keep(&ev) {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Events per `bucket` over `[from_ms, to_ms)` (rounded down to the
    /// bucket), one series per item or location, from the aggregates.
    pub fn timeline(
        &self,
        from_ms: i64,
        to_ms: i64,
        bucket: Bucket,
        by: TimelineBy,
    ) -> Result<(i64, usize, Vec<TimelineSeries>), StoreError> {
        let from = bucket.floor(from_ms);
        let to = bucket.floor(to_ms + bucket.millis() - 1);
        let n = ((to - from) / bucket.millis()).max(0) as usize;
        let mut series: HashMap<String, Vec<u64>> = HashMap::new();
        if n > 0 {
            self.for_each_agg(bucket, from, to, |start_ms, loc, name, count| {
                let i = ((start_ms - from) / bucket.millis()) as usize;
                let key = match by {
                    TimelineBy::Item => name.to_string(),
                    TimelineBy::Location => loc.to_string(),
                };
                let counts = series.entry(key).or_insert_with(|| vec![0; n]);
                if let Some(c) = counts.get_mut(i) {
                    *c += count;
                }
            })?;
        }
        let mut out: Vec<TimelineSeries> = series
            .into_iter()
            .map(|(key, counts)| TimelineSeries { key, counts })
            .collect();
        out.sort_by(|a, b| {
            let (sa, sb) = (a.counts.iter().sum::<u64>(), b.counts.iter().sum::<u64>());
            sb.cmp(&sa).then_with(|| a.key.cmp(&b.key))
        });
        Ok((from, n, out))
    }
}

impl Store {
    /// Events committed at or after `from_ms`, in commit order, after the
    /// `by_commit` key `after` (exclusive; empty: from the start), about
    /// `limit` (whole commits). Returns them with the key to continue from.
    ///
    /// A `by_commit` entry is one commit: key (commit ms, its first det_oid),
    /// value the (detection ms, det_oid) of each of its events, 16 bytes
    /// each; a store written before that holds one entry per event, value
    /// the detection ms alone.
    pub fn committed_since(
        &self,
        from_ms: i64,
        after: &[u8],
        limit: usize,
    ) -> Result<(Vec<JoinedEvent>, Vec<u8>), StoreError> {
        let start = keys::event_key(from_ms, i64::MIN);
        let start: &[u8] = if after > &start[..] { after } else { &start };
        let mut out = Vec::new();
        let mut last = after.to_vec();
        let malformed = || StoreError::Corrupt("a by_commit entry is malformed".into());
        for item in self.db.iterator_cf(
            self.cf(CF_BY_COMMIT),
            IteratorMode::From(start, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if &k[..] == after {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            last = k.to_vec();
            if k.len() != 16 {
                return Err(malformed());
            }
            let events: Vec<(i64, i64)> = if v.len() == 8 {
                vec![(keys::i64_from_key(&v), keys::i64_from_key(&k[8..]))]
            } else if !v.is_empty() && v.len() % 16 == 0 {
                v.chunks_exact(16)
                    .map(|e| (keys::i64_from_key(&e[..8]), keys::i64_from_key(&e[8..])))
                    .collect()
            } else {
                return Err(malformed());
            };
            for (ts, det) in events {
                // Gone when retention cut it (by detection time) first.
                if let Some(ev) = self
                    .db
                    .get_pinned_cf(self.cf(CF_EVENTS), keys::event_key(ts, det))?
                {
                    out.push(decode_event(&ev)?);
                }
            }
        }
        Ok((out, last))
    }

    /// Every stored event, in detection-time order, `batch` at a time
    /// (rebuilding the search index).
    pub fn for_each_event(
        &self,
        batch: usize,
        mut f: impl FnMut(Vec<JoinedEvent>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(batch);
        for item in self.db.iterator_cf(self.cf(CF_EVENTS), IteratorMode::Start) {
            let (_, v) = item?;
            buf.push(decode_event(&v)?);
            if buf.len() >= batch {
                f(std::mem::take(&mut buf))?;
            }
        }
        if !buf.is_empty() {
            f(buf)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CF_AGG;
    use rocksdb::WriteBatch;
    use sightline_proto::v1::JoinedEvent;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        (dir, s)
    }

    fn count(s: &Store, bucket: Bucket, at: i64, loc: i64, item: &str, n: u64) {
        let mut b = WriteBatch::default();
        b.merge_cf(
            s.cf(CF_AGG),
            keys::agg_key(bucket, bucket.floor(at), loc, item),
            n.to_le_bytes(),
        );
        s.write(b).unwrap();
    }

    #[test]
    fn committed_since_reads_whole_commits_and_the_older_per_event_entries() {
        use prost::Message;
        let (_d, s) = store();
        let mut b = WriteBatch::default();
        let event = |det: i64, ts: i64, committed: i64| {
            let ev = JoinedEvent {
                detection: Some(sightline_proto::v1::Detection {
                    detection_oid: Some(det),
                    timestamp_detected: ts,
                    ..Default::default()
                }),
                committed_ms: committed,
                ..Default::default()
            };
            (keys::event_key(ts, det), ev.encode_to_vec())
        };
        // Committed at 1000: one event per entry (the older layout).
        for det in [7, 8] {
            let (k, v) = event(det, 500 + det, 1000);
            b.put_cf(s.cf(CF_EVENTS), k, v);
            b.put_cf(
                s.cf(CF_BY_COMMIT),
                keys::event_key(1000, det),
                keys::i64_key(500 + det),
            );
        }
        // Committed at 2000 and 3000: one entry per commit.
        for (at, dets) in [(2000, vec![30, 10, 20]), (3000, vec![40])] {
            let mut packed = Vec::new();
            for &det in &dets {
                let (k, v) = event(det, 100 + det, at);
                b.put_cf(s.cf(CF_EVENTS), k, v);
                packed.extend_from_slice(&k);
            }
            b.put_cf(s.cf(CF_BY_COMMIT), keys::event_key(at, dets[0]), packed);
        }
        s.write(b).unwrap();
        let oids = |evs: &[JoinedEvent]| -> Vec<i64> {
            evs.iter()
                .map(|e| e.detection.as_ref().unwrap().detection_oid.unwrap())
                .collect()
        };
        let (all, _) = s.committed_since(0, &[], 100).unwrap();
        assert_eq!(oids(&all), vec![7, 8, 30, 10, 20, 40]);
        let (since, _) = s.committed_since(1500, &[], 100).unwrap();
        assert_eq!(oids(&since), vec![30, 10, 20, 40]);
        // Paged: a commit is never split; the next page starts after it.
        let (page, last) = s.committed_since(1500, &[], 2).unwrap();
        assert_eq!(oids(&page), vec![30, 10, 20]);
        let (rest, _) = s.committed_since(1500, &last, 2).unwrap();
        assert_eq!(oids(&rest), vec![40]);
    }

    #[test]
    fn timeline_counts_each_minute_by_item_and_by_location() {
        let (_d, s) = store();
        // A whole minute.
        let t0 = 1_800_000_000_000;
        count(&s, Bucket::Minute, t0, 1, "car", 3);
        count(&s, Bucket::Minute, t0 + 60_000, 1, "car", 2);
        count(&s, Bucket::Minute, t0 + 60_000, 2, "person", 7);
        count(&s, Bucket::Minute, t0 + 180_000, 2, "car", 1); // outside the range
        let (from, n, by_item) = s
            .timeline(t0 + 5, t0 + 120_000, Bucket::Minute, TimelineBy::Item)
            .unwrap();
        assert_eq!((from, n), (t0, 2));
        assert_eq!(
            by_item,
            vec![
                TimelineSeries {
                    key: "person".into(),
                    counts: vec![0, 7]
                },
                TimelineSeries {
                    key: "car".into(),
                    counts: vec![3, 2]
                },
            ]
        );
        let (_, _, by_loc) = s
            .timeline(t0, t0 + 120_000, Bucket::Minute, TimelineBy::Location)
            .unwrap();
        assert_eq!(
            by_loc[0],
            TimelineSeries {
                key: "2".into(),
                counts: vec![0, 7]
            }
        );
        assert_eq!(
            by_loc[1],
            TimelineSeries {
                key: "1".into(),
                counts: vec![3, 2]
            }
        );
    }
}
