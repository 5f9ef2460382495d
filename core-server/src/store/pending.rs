//! A commit's aggregate counts, written as one entry and folded later.
//!
//! A commit counts each stored event in its minute and its hour (`agg`). As
//! merges, that is one memtable insert per (bucket, location, item) per
//! commit: a commit of 30 live events made ~2 merges an event, and merging
//! was half the store's time in such a commit (BENCHMARKS.md,
//! thirty-second session); so did the camera_seq values received, one merge
//! per camera into `received`. Instead a commit puts its minute counts and
//! its cameras' values in one `agg` entry of its own, keyed `'p'` ‖ a
//! sequence number; after [`FOLD_AFTER`] such entries a fold takes them:
//! one merge per (bucket, location, item) and per camera for all of them,
//! and their deletion, in one `WriteBatch`. A commit says when a fold is
//! due ([`super::commit::Written::fold_due`]) and does not fold: the
//! partition writers leave folds to a thread of their own
//! (`dedup::Pipeline`), so that no commit waits behind one.
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
//! - A fold takes only numbers below the first one still being written
//!   (entries are numbered before their write, and two writers' writes may
//!   land out of order), so it never passes an entry it did not sum; reads
//!   and folds start from the first number not folded, never stepping over
//!   the tombstones of folded entries.
//! - Retention ([`Store::apply_retention`]) folds first and counts only
//!   folded keys: an entry pending past it is folded later, into keys the
//!   next pass removes and counts.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use rocksdb::{Direction::Forward, IteratorMode, WriteBatch, DB};

use super::{cf, keys, keys::Bucket, received, Store, StoreError, CF_AGG, CF_RECEIVED};

/// The tag of pending entries in `agg` (after 'h' and 'm': a bucket's scan
/// never reaches them).
const TAG: u8 = b'p';

/// Pending entries that make a fold due. A read adds up at most
/// about this many entries; a fold writes one merge per (bucket, location,
/// item) they hold.
pub const FOLD_AFTER: usize = 64;

/// Counts and cameras in pending entries that make a fold due: a
/// burst's entries hold a hundred or more each, and every read decodes them
/// all (at 64 such entries TopItems after a burst took 6-16 ms instead of
/// 2-3: BENCHMARKS.md, thirty-third session).
pub const FOLD_WEIGHT: u64 = 2048;

/// Most pending entries one fold takes (after a crash many may be left).
const FOLD_AT_MOST: usize = 4096;

/// The pending entries' bookkeeping in a [`Store`].
///
/// A fold deletes the entries it sums, and a delete is a tombstone that
/// stays until a compaction drops it: thousands after a burst. A scan from
/// the first pending key would step over every one of them (TopItems after
/// a burst took 30 ms instead of 3: BENCHMARKS.md, thirty-third session).
/// So the store keeps `folded_below`, a sequence number below which every
/// entry is folded or was never written, and reads and folds seek there.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// The next sequence number, and those handed to commits whose write
    /// has not returned yet.
    numbers: Mutex<Numbers>,
    /// Every entry below this one is folded (or was never written).
    folded_below: AtomicU64,
    /// About how many counts and cameras the entries not folded yet hold
    /// (added after a commit's write, taken off by the fold that sums them;
    /// approximate when the two cross): the other trigger of a fold.
    weight: AtomicU64,
    /// Held by the one fold at a time.
    folding: Mutex<()>,
}

#[derive(Debug, Default)]
struct Numbers {
    next: u64,
    writing: BTreeSet<u64>,
}

impl Pending {
    /// The bookkeeping of the entries `db` holds.
    pub(super) fn of(db: &DB) -> Result<Self, StoreError> {
        let (mut first, mut last) = (None, None);
        for item in db.iterator_cf(cf(db, CF_AGG), IteratorMode::From(&[TAG], Forward)) {
            let (k, _) = item?;
            if k.first() != Some(&TAG) {
                break;
            }
            let seq = seq_of(&k)?;
            first.get_or_insert(seq);
            last = Some(seq);
        }
        let next = last.map_or(0, |s| s + 1);
        Ok(Self {
            numbers: Mutex::new(Numbers {
                next,
                writing: BTreeSet::new(),
            }),
            folded_below: AtomicU64::new(first.unwrap_or(next)),
            weight: AtomicU64::new(0),
            folding: Mutex::new(()),
        })
    }

    /// A new entry's number and key; [`Pending::settled`] once its write
    /// returned, written or not.
    pub(super) fn next_key(&self) -> (u64, [u8; 9]) {
        let mut n = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        let seq = n.next;
        n.next += 1;
        n.writing.insert(seq);
        (seq, key(seq))
    }

    /// Numbers handed out and not folded yet (some may be writing, a few
    /// never written): the trigger of a fold.
    fn unfolded(&self) -> u64 {
        let next = self.numbers.lock().unwrap_or_else(|p| p.into_inner()).next;
        next.saturating_sub(self.folded_below.load(Ordering::SeqCst))
    }

    pub(super) fn settled(&self, seq: u64) {
        let mut n = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        n.writing.remove(&seq);
    }

    /// Where a read of the pending entries starts: take it before the
    /// read's snapshot (a fold moves it only after its write).
    pub(super) fn read_from(&self) -> [u8; 9] {
        key(self.folded_below.load(Ordering::SeqCst))
    }
}

fn key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = TAG;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
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
    /// A camera's received camera_seq values: an encoded
    /// [`received::Piece`] ([`piece`] decodes it).
    Received(i64, &'a [u8]),
}

/// Calls `f` with each part of an entry's value; stops at its first error.
fn decode<'a>(
    mut v: &'a [u8],
    mut f: impl FnMut(Part<'a>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
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
        f(Part::Count(start, loc, item, n))?;
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
        f(Part::Received(camera, piece))?;
        v = rest;
    }
    Ok(())
}

fn piece(b: &[u8]) -> Result<received::Piece, StoreError> {
    received::Piece::decode(b)
        .ok_or_else(|| StoreError::Corrupt("malformed piece in a pending agg entry".into()))
}

/// Calls `f` with each part of the pending entries `entries` yields (an
/// `agg` iterator from a pending key), up to the last pending key.
fn each_pending(
    entries: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    mut f: impl FnMut(Part<'_>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for item in entries {
        let (k, v) = item?;
        if k.first() != Some(&TAG) {
            break;
        }
        decode(&v, &mut f)?;
    }
    Ok(())
}

impl Store {
    /// After a commit wrote a pending entry of `weight` counts and cameras:
    /// whether a fold is due ([`FOLD_AFTER`] entries or [`FOLD_WEIGHT`]
    /// counts and cameras). The commit does not fold: its caller does, with
    /// [`Store::fold_if_due`] (the partition writers hand it to a thread of
    /// its own, so that no commit waits for a fold).
    pub(super) fn pending_written(&self, weight: u64) -> bool {
        self.pending.weight.fetch_add(weight, Ordering::Relaxed);
        self.fold_due()
    }

    fn fold_due(&self) -> bool {
        self.pending.unfolded() >= FOLD_AFTER as u64
            || self.pending.weight.load(Ordering::Relaxed) >= FOLD_WEIGHT
    }

    /// One fold when one is due and no other is running: how many pending
    /// entries it folded (0: none due, or another fold holds them). A
    /// failed fold leaves its entries pending (read as such) for the next.
    pub fn fold_if_due(&self) -> Result<usize, StoreError> {
        if !self.fold_due() {
            return Ok(0);
        }
        let Ok(guard) = self.pending.folding.try_lock() else {
            return Ok(0);
        };
        self.fold_locked(&guard)
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
        // Every number below `bound` is written or failed: what the scan
        // below does not find there never will be.
        let bound = {
            let n = self
                .pending
                .numbers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            n.writing.first().copied().unwrap_or(n.next)
        };
        let from = self.pending.folded_below.load(Ordering::SeqCst);
        if bound <= from {
            return Ok(0);
        }
        let db = self.db()?;
        let cf_agg = cf(&db, CF_AGG);
        let mut sums: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut cameras: BTreeMap<i64, received::RangeSet> = BTreeMap::new();
        let mut folded = Vec::new();
        let (mut below, mut weight) = (bound, 0u64);
        let (start, end) = (key(from), key(bound));
        for item in db.iterator_cf(cf_agg, IteratorMode::From(&start, Forward)) {
            let (k, v) = item?;
            if k.as_ref() >= end.as_slice() {
                break;
            }
            if folded.len() == FOLD_AT_MOST {
                below = seq_of(&k)?;
                break;
            }
            decode(&v, |part| {
                weight += 1;
                match part {
                    Part::Count(start, loc, item, n) => {
                        for bucket in [Bucket::Minute, Bucket::Hour] {
                            *sums
                                .entry(keys::agg_key(bucket, bucket.floor(start), loc, item))
                                .or_default() += n;
                        }
                    }
                    Part::Received(camera, b) => {
                        cameras.entry(camera).or_default().union(&piece(b)?.set);
                    }
                }
                Ok(())
            })?;
            folded.push(k);
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
        if !folded.is_empty() {
            self.write_synced(batch, false)?;
        }
        // Only after the write: a read that starts here finds the sums.
        self.pending.folded_below.store(below, Ordering::SeqCst);
        let _ = self
            .pending
            .weight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(weight))
            });
        Ok(folded.len())
    }

    /// The camera_seq values of the pending entries, by camera, added to
    /// `sets` (a union: a value also folded meanwhile counts once).
    pub(super) fn pending_received(
        &self,
        db: &DB,
        sets: &mut BTreeMap<i64, received::RangeSet>,
    ) -> Result<(), StoreError> {
        let from = self.pending.read_from();
        let entries = db.iterator_cf(cf(db, CF_AGG), IteratorMode::From(&from, Forward));
        each_pending(entries, |part| {
            if let Part::Received(camera, b) = part {
                sets.entry(camera).or_default().union(&piece(b)?.set);
            }
            Ok(())
        })
    }

    /// The pending counts of `bucket` starting in `[from, to)`, by `agg`
    /// key, as `snapshot` sees them.
    pub(super) fn pending_in(
        snapshot: &rocksdb::Snapshot<'_>,
        db: &DB,
        start: &[u8; 9],
        bucket: Bucket,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<Vec<u8>, u64>, StoreError> {
        let mut out = BTreeMap::new();
        let entries = snapshot.iterator_cf(cf(db, CF_AGG), IteratorMode::From(start, Forward));
        each_pending(entries, |part| {
            if let Part::Count(start, loc, item, n) = part {
                let b = bucket.floor(start);
                if (from..to).contains(&b) {
                    *out.entry(keys::agg_key(bucket, b, loc, item)).or_default() += n;
                }
            }
            Ok(())
        })?;
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
        decode(&encode(&minutes, &cameras), |part| {
            match part {
                Part::Count(s, l, i, n) => counts.push((s, l, i.to_string(), n)),
                Part::Received(c, p) => sets.push((c, piece(p)?.set)),
            }
            Ok(())
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
            assert!(decode(bad, |_| Ok(())).is_err(), "{bad:?}");
        }
    }

    fn commit(s: &Store, at: i64, events: &[(i64, i64, &str)]) {
        let mut c = s.begin(at).unwrap();
        for &(ts, loc, item) in events {
            c.add_aggregate(ts, loc, item);
        }
        // As the pipeline's folder does, when the commit says a fold is due.
        if s.commit(c).unwrap().fold_due {
            s.fold_if_due().unwrap();
        }
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
            prop_assert_eq!(s.pending.unfolded(), 0);
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
        assert_eq!(s.pending.unfolded(), 3);
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
        assert!(s.pending.unfolded() > 0);
        assert_eq!(read(&s), model);
        s.fold_pending().unwrap();
        assert_eq!(read(&s), model);
    }

    #[test]
    fn an_entry_written_after_later_ones_were_folded_is_still_read_and_folded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        // A commit numbered first whose write comes last (another writer's).
        let (slow, slow_key) = s.pending.next_key();
        for i in 0..(2 * FOLD_AFTER as i64) {
            commit(&s, i, &[(0, 1, "car")]);
        }
        s.fold_pending().unwrap();
        assert!(
            s.pending.folded_below.load(Ordering::SeqCst) <= slow,
            "a fold passed a number still being written"
        );
        let db = s.db().unwrap();
        let mut b = WriteBatch::default();
        let minute = keys::agg_key(Bucket::Minute, 0, 1, "car");
        b.put_cf(cf(&db, CF_AGG), slow_key, encode(&[(minute, 5)], &[]));
        drop(db);
        s.write(b).unwrap();
        s.pending.settled(slow);
        let total = |s: &Store| read(s, Bucket::Hour).values().sum::<u64>();
        assert_eq!(total(&s), 2 * FOLD_AFTER as u64 + 5);
        s.fold_pending().unwrap();
        assert_eq!(s.pending.unfolded(), 0);
        assert_eq!(total(&s), 2 * FOLD_AFTER as u64 + 5);
    }

    #[test]
    fn heavy_entries_are_folded_before_there_are_many() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        // Each commit counts 300 (minute, location) keys.
        let events: Vec<(i64, i64, &str)> = (0..300).map(|l| (0, l, "car")).collect();
        for i in 0..20 {
            commit(&s, i, &events);
            assert!(
                s.pending.unfolded() * 300 < FOLD_WEIGHT + 300,
                "{} entries of 300 pending",
                s.pending.unfolded()
            );
        }
        assert_eq!(read(&s, Bucket::Hour).values().sum::<u64>(), 20 * 300);
    }

    #[test]
    fn commits_fold_their_entries_so_few_stay_pending() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        for i in 0..(5 * FOLD_AFTER as i64) {
            commit(&s, i, &[(i * 1_000, 1, "car")]);
        }
        let db = s.db().unwrap();
        let left = Pending::of(&db).unwrap().unfolded();
        assert!(left < FOLD_AFTER as u64, "{left} entries pending");
        assert_eq!(
            read(&s, Bucket::Hour).values().sum::<u64>(),
            5 * FOLD_AFTER as u64
        );
    }
}
