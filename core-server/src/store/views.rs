//! Reads the dashboard needs beyond the query API: the newest events, and
//! counts per bucket over a range (the timeline), both from the same column
//! families and key layouts as the rest of the store.

use std::collections::HashMap;

use rocksdb::IteratorMode;
use sightline_proto::v1::JoinedEvent;

use super::{cf, decode_event, keys, keys::Bucket, Store, StoreError, CF_BY_COMMIT, CF_EVENTS};

/// What a timeline series is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineBy {
    Item,
    Location,
}

/// Most buckets a timeline has (the range sets the width; see
/// [`timeline_width`]). 360 is the minutes of six hours, what the dashboard
/// showed before the width followed the range.
pub const MAX_TIMELINE_BUCKETS: usize = 360;
/// The latest instant a range may name: the end of the year 9999 UTC, in
/// epoch ms. Later is refused where ranges are parsed; the store clamps.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// A timeline: `buckets` of `bucket_ms` from `from_ms`, counts per series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCounts {
    pub from_ms: i64,
    pub bucket_ms: i64,
    pub buckets: usize,
    /// Largest total first.
    pub series: Vec<TimelineSeries>,
}

/// Per-bucket counts of one item or location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineSeries {
    /// The item name, or the location oid as text.
    pub key: String,
    pub counts: Vec<u64>,
}

impl TimelineCounts {
    /// The timeline of the union of stores whose timelines over one range
    /// are `parts` (each has the range's buckets, so counts add per series
    /// and bucket); ordered as [`Store::timeline`] orders. `None`: no parts.
    /// Parts of another shape (a different range) are refused.
    pub fn merge(parts: impl IntoIterator<Item = TimelineCounts>) -> Result<Option<Self>, String> {
        let mut out: Option<(i64, i64, usize)> = None;
        let mut sums: HashMap<String, Vec<u64>> = HashMap::new();
        for p in parts {
            let shape = (p.from_ms, p.bucket_ms, p.buckets);
            match out {
                None => out = Some(shape),
                Some(s) if s != shape => {
                    return Err(format!(
                        "timelines of different ranges: {s:?} and {shape:?} (from_ms, bucket_ms, buckets)"
                    ))
                }
                _ => {}
            }
            for series in p.series {
                if series.counts.len() != p.buckets {
                    return Err(format!(
                        "series {:?} has {} counts for {} buckets",
                        series.key,
                        series.counts.len(),
                        p.buckets
                    ));
                }
                let sum = sums.entry(series.key).or_insert_with(|| vec![0; p.buckets]);
                for (a, b) in sum.iter_mut().zip(series.counts) {
                    *a += b;
                }
            }
        }
        Ok(out.map(|(from_ms, bucket_ms, buckets)| TimelineCounts {
            from_ms,
            bucket_ms,
            buckets,
            series: sorted(sums),
        }))
    }
}

/// Series largest total first, then by key.
fn sorted(series: HashMap<String, Vec<u64>>) -> Vec<TimelineSeries> {
    let mut out: Vec<TimelineSeries> = series
        .into_iter()
        .map(|(key, counts)| TimelineSeries { key, counts })
        .collect();
    out.sort_by(|a, b| {
        let (sa, sb) = (a.counts.iter().sum::<u64>(), b.counts.iter().sum::<u64>());
        sb.cmp(&sa).then_with(|| a.key.cmp(&b.key))
    });
    out
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
        let db = self.db()?;
        let mut out = Vec::new();
        for (seen, item) in db
            .iterator_cf(cf(&db, CF_EVENTS), IteratorMode::End)
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

    /// Events per bucket over `[from_ms, to_ms)`, one series per item or
    /// location, from the aggregates. The bucket width is chosen from the
    /// range ([`timeline_width`]) so that there are at most
    /// [`MAX_TIMELINE_BUCKETS`]; the range is first clamped to
    /// `[0, MAX_TIME_MS]`. The work is one scan of the aggregates in the
    /// range, and the answer is at most buckets × series counts.
    pub fn timeline(
        &self,
        from_ms: i64,
        to_ms: i64,
        by: TimelineBy,
    ) -> Result<TimelineCounts, StoreError> {
        self.timeline_in(from_ms, to_ms, by, |_| true)
    }

    /// [`Store::timeline`], counting only the locations `in_scope` allows.
    pub fn timeline_in(
        &self,
        from_ms: i64,
        to_ms: i64,
        by: TimelineBy,
        in_scope: impl Fn(i64) -> bool,
    ) -> Result<TimelineCounts, StoreError> {
        let (stored, from, width, n) = timeline_buckets(from_ms, to_ms);
        let mut series: HashMap<String, Vec<u64>> = HashMap::new();
        if n > 0 {
            let end = from + n as i64 * width;
            self.for_each_agg(stored, from, end, |start_ms, loc, name, count| {
                if !in_scope(loc) {
                    return;
                }
                let i = ((start_ms - from) / width) as usize;
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
        Ok(TimelineCounts {
            from_ms: from,
            bucket_ms: width,
            buckets: n,
            series: sorted(series),
        })
    }
}

/// The buckets of a timeline over `[from_ms, to_ms)` (clamped to
/// `[0, MAX_TIME_MS]` first): the aggregates it reads, the first bucket's
/// start, the width and how many.
pub fn timeline_buckets(from_ms: i64, to_ms: i64) -> (Bucket, i64, i64, usize) {
    let (from_ms, to_ms) = (from_ms.clamp(0, MAX_TIME_MS), to_ms.clamp(0, MAX_TIME_MS));
    let (stored, width) = timeline_width(to_ms.saturating_sub(from_ms));
    let from = from_ms.div_euclid(width) * width;
    let n = if to_ms > from_ms {
        ((to_ms - from + width - 1) / width) as usize
    } else {
        0
    };
    (stored, from, width, n)
}

/// The aggregates a timeline over `span_ms` reads and its bucket width: the
/// first of 1, 5, 15 min, 1, 3, 6, 12 h, 1, 7 days that makes at most
/// [`MAX_TIMELINE_BUCKETS`] buckets (minute aggregates below an hour, hour
/// aggregates from an hour), beyond a week whole days.
pub fn timeline_width(span_ms: i64) -> (Bucket, i64) {
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;
    // Positive operands, far from overflow (spans are clamped first).
    let ceil_div = |a: i64, b: i64| (a + b - 1) / b;
    let max = MAX_TIMELINE_BUCKETS as i64;
    let span = span_ms.clamp(1, MAX_TIME_MS);
    let width = [
        MIN,
        5 * MIN,
        15 * MIN,
        HOUR,
        3 * HOUR,
        6 * HOUR,
        12 * HOUR,
        DAY,
        7 * DAY,
    ]
    .into_iter()
    .find(|w| ceil_div(span, *w) <= max)
    .unwrap_or_else(|| ceil_div(ceil_div(span, max), DAY) * DAY);
    let stored = if width < HOUR {
        Bucket::Minute
    } else {
        Bucket::Hour
    };
    (stored, width)
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
        let db = self.db()?;
        let start = keys::event_key(from_ms, i64::MIN);
        let start: &[u8] = if after > &start[..] { after } else { &start };
        let mut out = Vec::new();
        let mut last = after.to_vec();
        let malformed = || StoreError::Corrupt("a by_commit entry is malformed".into());
        for item in db.iterator_cf(
            cf(&db, CF_BY_COMMIT),
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
            // The commit's `events` keys (an old single-event entry holds
            // the detection time, the det_oid is in its key), read in one
            // MultiGet, which sorts them itself and answers in the commit's
            // order: a catch-up of the search index reads the events of
            // every commit it missed, and one Get per event was ~4 % of the
            // core's CPU while a backlog drained.
            let event_keys: Vec<[u8; 16]> = if v.len() == 8 {
                vec![keys::event_key(
                    keys::i64_from_key(&v),
                    keys::i64_from_key(&k[8..]),
                )]
            } else if !v.is_empty() && v.len() % 16 == 0 {
                v.chunks_exact(16)
                    .map(|e| e.try_into().expect("16 bytes"))
                    .collect()
            } else {
                return Err(malformed());
            };
            for ev in db.batched_multi_get_cf(cf(&db, CF_EVENTS), &event_keys, false) {
                // Gone when retention cut it (by detection time) first.
                if let Some(ev) = ev? {
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
        let db = self.db()?;
        let mut buf = Vec::with_capacity(batch);
        for item in db.iterator_cf(cf(&db, CF_EVENTS), IteratorMode::Start) {
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
        let db = s.db().unwrap();
        b.merge_cf(
            cf(&db, CF_AGG),
            keys::agg_key(bucket, bucket.floor(at), loc, item),
            n.to_le_bytes(),
        );
        drop(db);
        s.write(b).unwrap();
    }

    #[test]
    fn committed_since_reads_whole_commits_and_the_older_per_event_entries() {
        use prost::Message;
        let (_d, s) = store();
        let mut b = WriteBatch::default();
        let db = s.db().unwrap();
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
            b.put_cf(cf(&db, CF_EVENTS), k, v);
            b.put_cf(
                cf(&db, CF_BY_COMMIT),
                keys::event_key(1000, det),
                keys::i64_key(500 + det),
            );
        }
        // Committed at 2000 and 3000: one entry per commit.
        for (at, dets) in [(2000, vec![30, 10, 20]), (3000, vec![40])] {
            let mut packed = Vec::new();
            for &det in &dets {
                let (k, v) = event(det, 100 + det, at);
                b.put_cf(cf(&db, CF_EVENTS), k, v);
                packed.extend_from_slice(&k);
            }
            b.put_cf(cf(&db, CF_BY_COMMIT), keys::event_key(at, dets[0]), packed);
        }
        drop(db);
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
        let t = s.timeline(t0 + 5, t0 + 120_000, TimelineBy::Item).unwrap();
        assert_eq!((t.from_ms, t.bucket_ms, t.buckets), (t0, 60_000, 2));
        assert_eq!(
            t.series,
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
        let by_loc = s
            .timeline(t0, t0 + 120_000, TimelineBy::Location)
            .unwrap()
            .series;
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

    #[test]
    fn a_far_future_timeline_range_is_bounded() {
        let (_d, s) = store();
        let t0 = 1_800_000_000_000;
        for (bucket, n) in [(Bucket::Minute, 3), (Bucket::Hour, 3)] {
            count(&s, bucket, t0, 1, "car", n);
            count(&s, bucket, t0 + 86_400_000, 1, "person", n);
        }
        // From 1970 to the end of 9999, and past it (clamped).
        for to in [MAX_TIME_MS, i64::MAX] {
            for from in [0, i64::MIN] {
                let t = s.timeline(from, to, TimelineBy::Item).unwrap();
                assert!(
                    (1..=MAX_TIMELINE_BUCKETS).contains(&t.buckets),
                    "{} buckets",
                    t.buckets
                );
                assert!(
                    t.from_ms <= 0 && t.from_ms + t.bucket_ms * t.buckets as i64 >= MAX_TIME_MS
                );
                // Every count lands in a bucket, none is lost.
                let totals: Vec<(String, u64)> = t
                    .series
                    .iter()
                    .map(|s| (s.key.clone(), s.counts.iter().sum()))
                    .collect();
                assert_eq!(totals, vec![("car".into(), 3), ("person".into(), 3)]);
                assert!(t.series.iter().all(|s| s.counts.len() == t.buckets));
            }
        }
        // Every span gets a width that keeps the count bounded, and ranges
        // up to six hours keep one-minute buckets.
        for span in [
            1,
            59_999,
            6 * 3_600_000,
            86_400_000,
            30 * 86_400_000,
            MAX_TIME_MS,
        ] {
            let (stored, width) = timeline_width(span);
            assert!((span + width - 1) / width <= MAX_TIMELINE_BUCKETS as i64);
            assert_eq!(width % stored.millis(), 0);
        }
        assert_eq!(timeline_width(6 * 3_600_000).1, 60_000);
        // An empty or reversed range has no buckets.
        assert_eq!(s.timeline(t0, t0, TimelineBy::Item).unwrap().buckets, 0);
        assert_eq!(s.timeline(t0, 0, TimelineBy::Item).unwrap().buckets, 0);
    }
}
