//! A commit's aggregate counts, written as one entry and folded later.
//!
//! A commit counts each stored event in its minute and its hour (`agg`). As
//! merges, that is one memtable insert per (bucket, location, item) per
//! commit: a commit of 30 live events made ~2 merges an event, and merging
//! was half the store's time in such a commit (BENCHMARKS.md,
//! thirty-second session); so did the camera_seq values received, one merge
//! per camera into `received`. Instead a commit puts its minute counts and
//! its cameras' values in one `agg` entry of its own, keyed `'p'` ‖ a sequence number; after
//! [`FOLD_AFTER`] such entries a commit folds them all: one merge per
//! (bucket, location, item) and per camera for all of them, and their
//! deletion, in one `WriteBatch`.
//!
//! # Promises
//!
//! - A commit's counts are written in the same `WriteBatch` as its events
//!   (so aggregates still count exactly the stored events), and a fold
//!   removes the entries it added in the same `WriteBatch` as the sums: a
//!   count is in a pending entry or in its bucket's key, never both, never
//!   neither, across any crash (a fold lost with the WAL's tail leaves its
//!   entries pending; the commits it folded precede it in the WAL).
//! - Every read of the aggregates ([`Store::for_each_agg`]) adds the pending
//!   entries to the folded keys from one snapshot: a count is visible from
//!   its commit on, counted once. A read of the cameras' values
//!   ([`Store::received_all`]) adds them too (a union: no snapshot needed).
//! - Retention ([`Store::apply_retention`]) folds first and counts only
//!   folded keys: an entry pending past it is folded later, into keys the
//!   next pass removes and counts.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use rocksdb::{IteratorMode, WriteBatch, DB};

use super::{cf, keys, keys::Bucket, received, Store, StoreError, CF_AGG, CF_RECEIVED};

/// The tag of pending entries in `agg` (after 'h' and 'm': a bucket's scan
/// never reaches them).
const TAG: u8 = b'p';

/// Pending entries that make a commit fold them. A read adds up at most
/// about this many entries; a fold writes one merge per (bucket, location,
/// item) they hold.
pub const FOLD_AFTER: usize = 64;

/// Most pending entries one fold takes (after a crash many may be left).
const FOLD_AT_MOST: usize = 4096;

/// The pending entries' bookkeeping in a [`Store`].
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// The next entry's sequence number (above every one in the store).
    next: AtomicU64,
    /// About how many entries are not folded yet: the trigger of a fold.
    unfolded: AtomicUsize,
    /// Held by the one fold at a time.
    folding: Mutex<()>,
}

impl Pending {
    /// The bookkeeping of the entries `db` holds.
    pub(super) fn of(db: &DB) -> Result<Self, StoreError> {
        let (mut count, mut last) = (0usize, None);
        for item in db.iterator_cf(
            cf(db, CF_AGG),
            IteratorMode::From(&[TAG], rocksdb::Direction::Forward),
        ) {
            let (k, _) = item?;
            if k.first() != Some(&TAG) {
                break;
            }
            count += 1;
            last = Some(seq_of(&k)?);
        }
        Ok(Self {
            next: AtomicU64::new(last.map_or(0, |s| s + 1)),
            unfolded: AtomicUsize::new(count),
            folding: Mutex::new(()),
        })
    }

    /// A new entry's key.
    pub(super) fn next_key(&self) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = TAG;
        k[1..].copy_from_slice(&self.next.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        k
    }
}

fn seq_of(k: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(&k[1..])
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("pending agg key {k:?}")))
}

/// An entry's value: the number of minute counts; for each minute key
/// (`keys::agg_key`, in key order) its length and count as varints, then the
/// key; then for each camera with camera_seq values received, the camera
/// (i64 BE), the length of its piece (varint) and the piece
/// ([`received::Piece::add`]).
pub(super) fn encode(minutes: &[(Vec<u8>, u64)], cameras: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        minutes.iter().map(|(k, _)| k.len() + 4).sum::<usize>()
            + cameras.iter().map(|(_, p)| p.len() + 10).sum::<usize>()
            + 2,
    );
    prost::encoding::encode_varint(minutes.len() as u64, &mut out);
    for (k, n) in minutes {
        prost::encoding::encode_varint(k.len() as u64, &mut out);
        prost::encoding::encode_varint(*n, &mut out);
        out.extend_from_slice(k);
    }
    for (camera, piece) in cameras {
        out.extend_from_slice(&camera.to_be_bytes());
        prost::encoding::encode_varint(piece.len() as u64, &mut out);
        out.extend_from_slice(piece);
    }
    out
}

/// What an entry's value holds, read by [`decode`].
enum Part<'a> {
    /// (minute start, location, item, count).
    Count(i64, i64, &'a str, u64),
    /// A camera's received camera_seq values.
    Received(i64, received::Piece),
}

/// Calls `f` with each part of an entry's value.
fn decode<'a>(mut v: &'a [u8], mut f: impl FnMut(Part<'a>)) -> Result<(), StoreError> {
    let bad = || StoreError::Corrupt("malformed pending agg entry".into());
    let varint = |v: &mut &'a [u8]| prost::encoding::decode_varint(v).map_err(|_| bad());
    let counts = varint(&mut v)?;
    for _ in 0..counts {
        let len = varint(&mut v)? as usize;
        let n = varint(&mut v)?;
        if v.len() < len {
            return Err(bad());
        }
        let (k, rest) = v.split_at(len);
        let (start, loc, item) = keys::parse_agg_key(k).ok_or_else(bad)?;
        f(Part::Count(start, loc, item, n));
        v = rest;
    }
    while !v.is_empty() {
        if v.len() < 8 {
            return Err(bad());
        }
        let camera = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
        v = &v[8..];
        let len = varint(&mut v)? as usize;
        if v.len() < len {
            return Err(bad());
        }
        let (piece, rest) = v.split_at(len);
        f(Part::Received(
            camera,
            received::Piece::decode(piece).ok_or_else(bad)?,
        ));
        v = rest;
    }
    Ok(())
}

impl Store {
    /// After a commit wrote a pending entry: folds them all when there are
    /// [`FOLD_AFTER`], unless another fold is running.
    pub(super) fn pending_written(&self) {
        let n = self.pending.unfolded.fetch_add(1, Ordering::Relaxed) + 1;
        if n < FOLD_AFTER {
            return;
        }
        let Ok(guard) = self.pending.folding.try_lock() else {
            return;
        };
        // A failed fold leaves its entries pending (read as such) for the
        // next; the disk's fault, if that is why, is the store's own.
        if let Err(e) = self.fold_locked(&guard) {
            tracing::warn!(error = %e, "folding the pending aggregates failed; they stay pending");
        }
    }

    /// Folds every pending entry now (retention, tests).
    pub(crate) fn fold_pending(&self) -> Result<usize, StoreError> {
        let guard = self
            .pending
            .folding
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        loop {
            let n = self.fold_locked(&guard)?;
            total += n;
            if n < FOLD_AT_MOST {
                return Ok(total);
            }
        }
    }

    /// One fold (the caller holds `folding`): the sums of up to
    /// [`FOLD_AT_MOST`] pending entries merged into their minute and hour
    /// keys, and those entries deleted, in one `WriteBatch`. Not fsync'd:
    /// lost, it leaves the entries pending.
    fn fold_locked(&self, _folding: &std::sync::MutexGuard<'_, ()>) -> Result<usize, StoreError> {
        let db = self.db()?;
        let cf_agg = cf(&db, CF_AGG);
        let mut sums: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut cameras: BTreeMap<i64, received::RangeSet> = BTreeMap::new();
        let mut folded = Vec::new();
        for item in db.iterator_cf(
            cf_agg,
            IteratorMode::From(&[TAG], rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.first() != Some(&TAG) || folded.len() == FOLD_AT_MOST {
                break;
            }
            decode(&v, |part| match part {
                Part::Count(start, loc, item, n) => {
                    for bucket in [Bucket::Minute, Bucket::Hour] {
                        *sums
                            .entry(keys::agg_key(bucket, bucket.floor(start), loc, item))
                            .or_default() += n;
                    }
                }
                Part::Received(camera, piece) => {
                    cameras.entry(camera).or_default().union(&piece.set);
                }
            })?;
            folded.push(k);
        }
        if folded.is_empty() {
            self.pending.unfolded.store(0, Ordering::Relaxed);
            return Ok(0);
        }
        let mut batch = WriteBatch::default();
        for (k, n) in sums {
            batch.merge_cf(cf_agg, k, n.to_le_bytes());
        }
        let cf_r = cf(&db, CF_RECEIVED);
        for (camera, set) in cameras {
            batch.merge_cf(
                cf_r,
                received::key(camera),
                received::Piece::add(set).encode(),
            );
        }
        for k in &folded {
            batch.delete_cf(cf_agg, k);
        }
        drop(db);
        self.write_synced(batch, false)?;
        let n = folded.len();
        let _ = self
            .pending
            .unfolded
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
        Ok(n)
    }

    /// The camera_seq values of the pending entries, by camera, added to
    /// `sets` (a union: a value also folded meanwhile counts once).
    pub(super) fn pending_received(
        db: &DB,
        sets: &mut BTreeMap<i64, received::RangeSet>,
    ) -> Result<(), StoreError> {
        for item in db.iterator_cf(
            cf(db, CF_AGG),
            IteratorMode::From(&[TAG], rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.first() != Some(&TAG) {
                break;
            }
            decode(&v, |part| {
                if let Part::Received(camera, piece) = part {
                    sets.entry(camera).or_default().union(&piece.set);
                }
            })?;
        }
        Ok(())
    }

    /// The pending counts of `bucket` starting in `[from, to)`, by `agg`
    /// key, as `snapshot` sees them.
    pub(super) fn pending_in(
        snapshot: &rocksdb::Snapshot<'_>,
        db: &DB,
        bucket: Bucket,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<Vec<u8>, u64>, StoreError> {
        let mut out = BTreeMap::new();
        for item in snapshot.iterator_cf(
            cf(db, CF_AGG),
            IteratorMode::From(&[TAG], rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            if k.first() != Some(&TAG) {
                break;
            }
            decode(&v, |part| {
                if let Part::Count(start, loc, item, n) = part {
                    let b = bucket.floor(start);
                    if (from..to).contains(&b) {
                        *out.entry(keys::agg_key(bucket, b, loc, item)).or_default() += n;
                    }
                }
            })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_entry_round_trips() {
        let minutes = vec![
            (keys::agg_key(Bucket::Minute, -60_000, 3, "car"), 2),
            (keys::agg_key(Bucket::Minute, 120_000, 9, "dog"), 300),
        ];
        let set = received::RangeSet::from_values(vec![(4, 10), (5, 11), (9, 20)]);
        let cameras = vec![(-7, received::Piece::add(set.clone()).encode())];
        let (mut counts, mut sets) = (Vec::new(), Vec::new());
        decode(&encode(&minutes, &cameras), |part| match part {
            Part::Count(s, l, i, n) => counts.push((s, l, i.to_string(), n)),
            Part::Received(c, p) => sets.push((c, p.set)),
        })
        .unwrap();
        assert_eq!(
            counts,
            vec![
                (-60_000, 3, "car".into(), 2),
                (120_000, 9, "dog".into(), 300)
            ]
        );
        assert_eq!(sets, vec![(-7, set)]);
        for bad in [
            &[1, 5, 1, b'm'][..],
            &[0, 1, 2, 3][..],
            &[0, 0, 0, 0, 0, 0, 0, 1, 9][..],
        ] {
            assert!(decode(bad, |_| {}).is_err(), "{bad:?}");
        }
    }

    fn commit(s: &Store, at: i64, events: &[(i64, i64, &str)]) {
        let mut c = s.begin(at).unwrap();
        for &(ts, loc, item) in events {
            c.add_aggregate(ts, loc, item);
        }
        s.commit(c).unwrap();
    }

    /// (bucket start, location, item) -> count, from the store's reads.
    fn read(s: &Store, bucket: Bucket) -> BTreeMap<(i64, i64, String), u64> {
        let mut out = BTreeMap::new();
        s.for_each_agg(bucket, i64::MIN, i64::MAX, |b, l, i, n| {
            *out.entry((b, l, i.to_string())).or_default() += n;
        })
        .unwrap();
        out
    }

    fn model(events: &[(i64, i64, &str)], bucket: Bucket) -> BTreeMap<(i64, i64, String), u64> {
        let mut out = BTreeMap::new();
        for &(ts, loc, item) in events {
            *out.entry((bucket.floor(ts), loc, item.to_string()))
                .or_default() += 1;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Commits, folds when they come, a reopen (a crash between any two
        /// writes leaves the store as a reopen finds it) and a fold forced:
        /// at every step each bucket reads exactly the events committed.
        #[test]
        fn the_aggregates_read_count_every_committed_event_once_folded_or_not(
            commits in proptest::collection::vec(
                proptest::collection::vec((0i64..3 * 3_600_000, 1i64..4, 0usize..3), 0..12),
                1..(3 * FOLD_AFTER),
            ),
            reopen_at in 0usize..200,
        ) {
            let items = ["car", "dog", "person"];
            let dir = tempfile::tempdir().unwrap();
            let mut s = Store::open(dir.path(), false, 8 << 20).unwrap();
            let mut all = Vec::new();
            for (i, c) in commits.iter().enumerate() {
                let events: Vec<(i64, i64, &str)> =
                    c.iter().map(|&(ts, l, it)| (ts, l, items[it])).collect();
                commit(&s, 1_000 + i as i64, &events);
                all.extend(events);
                if i == reopen_at {
                    drop(s);
                    s = Store::open(dir.path(), false, 8 << 20).unwrap();
                }
                if i % 17 == 0 {
                    for bucket in [Bucket::Minute, Bucket::Hour] {
                        prop_assert_eq!(read(&s, bucket), model(&all, bucket));
                    }
                }
            }
            for bucket in [Bucket::Minute, Bucket::Hour] {
                prop_assert_eq!(read(&s, bucket), model(&all, bucket));
            }
            s.fold_pending().unwrap();
            prop_assert_eq!(s.pending.unfolded.load(Ordering::Relaxed), 0);
            for bucket in [Bucket::Minute, Bucket::Hour] {
                prop_assert_eq!(read(&s, bucket), model(&all, bucket));
            }
        }
    }

    #[test]
    fn retention_counts_each_expired_event_once_though_its_counts_were_pending() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        let min = 60_000;
        // Three pending entries (no fold yet): 5 events in minutes 0-4, 2 in
        // minute 10.
        commit(
            &s,
            1,
            &[(0, 1, "car"), (min, 1, "car"), (2 * min, 2, "dog")],
        );
        commit(&s, 2, &[(3 * min, 1, "car"), (4 * min + 5, 2, "dog")]);
        commit(&s, 3, &[(10 * min, 1, "car"), (10 * min + 1, 1, "car")]);
        assert_eq!(s.pending.unfolded.load(Ordering::Relaxed), 3);
        let cut = 5 * min;
        assert_eq!(
            s.apply_retention(cut, i64::MIN, i64::MIN, i64::MIN)
                .unwrap(),
            5
        );
        // A late event of an expired minute, pending during the next pass.
        commit(&s, 4, &[(min, 3, "car")]);
        assert_eq!(
            s.apply_retention(cut, i64::MIN, i64::MIN, i64::MIN)
                .unwrap(),
            1
        );
        assert_eq!(
            s.apply_retention(cut, i64::MIN, i64::MIN, i64::MIN)
                .unwrap(),
            0
        );
        assert_eq!(
            read(&s, Bucket::Minute),
            BTreeMap::from([((10 * min, 1, "car".to_string()), 2)])
        );
        assert_eq!(s.counters().unwrap().expired, 6);
    }

    #[test]
    fn the_cameras_values_read_are_every_value_committed_folded_or_not() {
        use sightline_proto::v1::Detection;
        use std::collections::BTreeSet;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        let mut model: BTreeMap<i64, BTreeSet<u64>> = BTreeMap::new();
        let read = |s: &Store| -> BTreeMap<i64, BTreeSet<u64>> {
            s.received_all()
                .unwrap()
                .into_iter()
                .map(|(c, set)| (c, set.ranges().flat_map(|r| r.first..=r.last).collect()))
                .collect()
        };
        // Cameras -3, 5 and 9; every third value skipped, some sent twice.
        for i in 0..(2 * FOLD_AFTER as u64 + 5) {
            let mut c = s.begin(i as i64).unwrap();
            for camera in [-3i64, 5, 9] {
                for seq in [3 * i + 1, 3 * i + 2, 3 * i + 1] {
                    c.mark_received(&Detection {
                        video_camera_oid: camera,
                        camera_seq: Some(seq),
                        timestamp_detected: 1_000 + seq as i64,
                        ..Default::default()
                    });
                    model.entry(camera).or_default().insert(seq);
                }
            }
            s.commit(c).unwrap();
            if i % 23 == 0 {
                assert_eq!(read(&s), model, "after commit {i}");
            }
        }
        assert!(s.pending.unfolded.load(Ordering::Relaxed) > 0);
        assert_eq!(read(&s), model);
        s.fold_pending().unwrap();
        assert_eq!(read(&s), model);
    }

    #[test]
    fn commits_fold_their_entries_so_few_stay_pending() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        for i in 0..(5 * FOLD_AFTER as i64) {
            commit(&s, i, &[(i * 1_000, 1, "car")]);
        }
        let db = s.db().unwrap();
        let left = Pending::of(&db).unwrap();
        let left = left.unfolded.load(Ordering::Relaxed);
        assert!(left < FOLD_AFTER, "{left} entries pending");
        assert_eq!(
            read(&s, Bucket::Hour).values().sum::<u64>(),
            5 * FOLD_AFTER as u64
        );
    }
}
