//! Which `camera_seq` values the core received, per camera (PROTOCOL.md,
//! "Completeness"): the ground the completeness report counts gaps on.
//!
//! # Layout
//!
//! `received`: key video_camera_oid (i64 BE) → a [`Piece`]: a cut time
//! (i64 BE; `i64::MIN` for none) ‖ ranges, each first ‖ last (u64 BE) ‖
//! first_ms ‖ last_ms (i64 BE: detection times of the events at either
//! end). Every commit *merges* the piece of what it received into the key
//! (the merge operator unions), so the partition writers never read, never
//! race, and the values are in the same `WriteBatch` as the events; retention
//! merges a piece that is only a cut: ranges that ended before it go.
//!
//! # Promises
//!
//! - A commit MUST mark every camera_seq it handled (stored, semantic
//!   duplicate, conflict or invalid-but-decoded, quarantined): they reached
//!   the core. The live lane marks only what it stores (the rest is marked
//!   when the backlog brings it).
//! - Marks are idempotent and commutative: resends and out-of-order commits
//!   (the live lane, partitions) leave the same set.
//! - Size is bounded by the holes, not the events: adjacent values merge into
//!   one range; an open gap costs one range.

use std::collections::BTreeMap;

use rocksdb::MergeOperands;

/// A received range of camera_seq values, with the detection times of its ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// A set of received camera_seq values, as disjoint, non-adjacent ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// first → the range starting there.
    ranges: BTreeMap<u64, Range>,
}

impl RangeSet {
    /// Adds one value, received with an event detected at `ms`.
    pub fn insert(&mut self, seq: u64, ms: i64) {
        self.insert_range(Range {
            first: seq,
            last: seq,
            first_ms: ms,
            last_ms: ms,
        });
    }

    /// The set of `values` (camera_seq, detection ms), in any order, with
    /// repeats: sorted once and cut into runs, instead of one insert per
    /// value. A repeated seq keeps its earliest detection time at either end
    /// of a range, as [`RangeSet::insert`] does.
    pub fn from_values(mut values: Vec<(u64, i64)>) -> Self {
        values.sort_unstable();
        let mut runs: Vec<(u64, Range)> = Vec::new();
        for (seq, ms) in values {
            match runs.last_mut() {
                Some((_, r)) if seq <= r.last => {}
                Some((_, r)) if seq == r.last + 1 => {
                    r.last = seq;
                    r.last_ms = ms;
                }
                _ => runs.push((
                    seq,
                    Range {
                        first: seq,
                        last: seq,
                        first_ms: ms,
                        last_ms: ms,
                    },
                )),
            }
        }
        Self {
            ranges: runs.into_iter().collect(),
        }
    }

    /// Adds a range, merging it with every range it overlaps or touches.
    pub fn insert_range(&mut self, mut r: Range) {
        // The range starting at or before r.first, if it reaches r.
        if let Some((_, prev)) = self.ranges.range(..=r.first).next_back() {
            if prev.last.saturating_add(1) >= r.first {
                let prev = *prev;
                self.ranges.remove(&prev.first);
                r = join(prev, r);
            }
        }
        // Ranges starting within r or right after it.
        loop {
            let next = self
                .ranges
                .range(r.first..)
                .next()
                .map(|(_, n)| *n)
                .filter(|n| n.first <= r.last.saturating_add(1));
            match next {
                Some(n) => {
                    self.ranges.remove(&n.first);
                    r = join(r, n);
                }
                None => break,
            }
        }
        self.ranges.insert(r.first, r);
    }

    /// Adds every range of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for r in other.ranges.values() {
            self.insert_range(*r);
        }
    }

    /// Drops the ranges whose newest event was detected before `cut_ms`.
    pub fn prune(&mut self, cut_ms: i64) {
        self.ranges.retain(|_, r| r.last_ms >= cut_ms);
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, r)| r.last >= seq)
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = &Range> {
        self.ranges.values()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn len_ranges(&self) -> usize {
        self.ranges.len()
    }
}

/// The union of two overlapping or touching ranges.
fn join(a: Range, b: Range) -> Range {
    let (first, first_ms) = if a.first <= b.first {
        (a.first, a.first_ms)
    } else {
        (b.first, b.first_ms)
    };
    let (last, last_ms) = if a.last >= b.last {
        (a.last, a.last_ms)
    } else {
        (b.last, b.last_ms)
    };
    Range {
        first,
        last,
        first_ms,
        last_ms,
    }
}

/// What one merge operand (or a merged value) says: drop ranges that ended
/// before `cut_ms`, then add `set`. Two pieces compose into one, so the merge
/// is associative: (c1, s1) then (c2, s2) = (max c, prune(s1, c2) ∪ s2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub cut_ms: i64,
    pub set: RangeSet,
}

const RANGE_BYTES: usize = 32;

impl Piece {
    pub fn add(set: RangeSet) -> Self {
        Piece {
            cut_ms: i64::MIN,
            set,
        }
    }

    pub fn cut(cut_ms: i64) -> Self {
        Piece {
            cut_ms,
            set: RangeSet::default(),
        }
    }

    /// `then` applied after `self`.
    pub fn then(mut self, then: Piece) -> Piece {
        self.set.prune(then.cut_ms);
        self.set.union(&then.set);
        self.cut_ms = self.cut_ms.max(then.cut_ms);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.set.len_ranges() * RANGE_BYTES);
        out.extend_from_slice(&self.cut_ms.to_be_bytes());
        for r in self.set.ranges() {
            out.extend_from_slice(&r.first.to_be_bytes());
            out.extend_from_slice(&r.last.to_be_bytes());
            out.extend_from_slice(&r.first_ms.to_be_bytes());
            out.extend_from_slice(&r.last_ms.to_be_bytes());
        }
        out
    }

    /// Decodes a piece; `None` when it is not one (a corrupt value is read
    /// as nothing received rather than failing every commit).
    pub fn decode(b: &[u8]) -> Option<Piece> {
        if b.len() < 8 || !(b.len() - 8).is_multiple_of(RANGE_BYTES) {
            return None;
        }
        let i = |at: usize| i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let u = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let mut set = RangeSet::default();
        for at in (8..b.len()).step_by(RANGE_BYTES) {
            let r = Range {
                first: u(at),
                last: u(at + 8),
                first_ms: i(at + 16),
                last_ms: i(at + 24),
            };
            if r.first > r.last {
                return None;
            }
            set.insert_range(r);
        }
        Some(Piece { cut_ms: i(0), set })
    }
}

/// The `received` column family's merge operator (full and partial).
pub fn merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut acc = existing
        .and_then(Piece::decode)
        .unwrap_or_else(|| Piece::cut(i64::MIN));
    for op in operands {
        if let Some(p) = Piece::decode(op) {
            acc = acc.then(p);
        }
    }
    Some(acc.encode())
}

/// A camera's key.
pub fn key(camera: i64) -> [u8; 8] {
    camera.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The range set holds exactly the values inserted, whatever the
        /// order, with resends, and no two of its ranges touch.
        #[test]
        fn the_range_set_matches_a_btreeset_of_the_values_received(
            values in proptest::collection::vec(1u64..300, 0..400),
            split in 0usize..400,
        ) {
            let mut model = BTreeSet::new();
            let (mut a, mut b) = (RangeSet::default(), RangeSet::default());
            for (i, v) in values.iter().enumerate() {
                model.insert(*v);
                // Two halves merged later: the partitions' pieces.
                if i < split { a.insert(*v, *v as i64) } else { b.insert(*v, *v as i64) }
            }
            a.union(&b);
            for v in 0..302u64 {
                prop_assert_eq!(a.contains(v), model.contains(&v), "value {}", v);
            }
            let rs: Vec<Range> = a.ranges().copied().collect();
            for w in rs.windows(2) {
                prop_assert!(w[0].last + 1 < w[1].first);
            }
            for r in &rs {
                // The times are those of the values at either end.
                prop_assert_eq!((r.first_ms, r.last_ms), (r.first as i64, r.last as i64));
            }
            let round = Piece::decode(&Piece::add(a.clone()).encode()).unwrap();
            prop_assert_eq!(round.set, a);
        }

        /// A commit's values made into ranges at once, in any order and with
        /// repeats, are the set of inserting them one by one.
        #[test]
        fn values_made_into_ranges_at_once_are_the_set_of_inserting_them_one_by_one(
            values in proptest::collection::vec(1u64..300, 0..400),
        ) {
            let mut one_by_one = RangeSet::default();
            for v in &values {
                one_by_one.insert(*v, *v as i64);
            }
            let at_once = RangeSet::from_values(values.iter().map(|v| (*v, *v as i64)).collect());
            prop_assert_eq!(at_once, one_by_one);
        }
    }

    /// Commits that mark values out of order and twice (partitions, the live
    /// lane, resends) leave one merged set that survives a reopen, and
    /// retention's cut drops only the ranges that ended before it.
    #[test]
    fn received_values_are_merged_in_the_store_and_survive_a_reopen() {
        use crate::store::Store;
        use sightline_proto::v1::Detection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let d = |cam: i64, seq: u64| Detection {
            video_camera_oid: cam,
            camera_seq: Some(seq),
            // A minute apart: retention cuts at whole minutes.
            timestamp_detected: 60_000 * seq as i64,
            ..Default::default()
        };
        {
            let store = Store::open(&path, false, 8 << 20).unwrap();
            for chunk in [(51..=100u64), (1..=40), (1..=20), (41..=45)] {
                let mut c = store.begin(1).unwrap();
                for seq in chunk {
                    c.mark_received(&d(7, seq));
                }
                c.mark_received(&Detection {
                    camera_seq: None,
                    ..d(8, 1)
                });
                store.commit(c).unwrap();
            }
        }
        let store = Store::open(&path, false, 8 << 20).unwrap();
        let all = store.received_all().unwrap();
        assert_eq!(all.len(), 1, "no camera_seq: nothing marked");
        let got: Vec<(u64, u64, i64, i64)> = all[0]
            .1
            .ranges()
            .map(|r| (r.first, r.last, r.first_ms, r.last_ms))
            .collect();
        let min = 60_000;
        assert_eq!(
            got,
            [(1, 45, min, 45 * min), (51, 100, 51 * min, 100 * min)]
        );
        store
            .apply_retention(46 * min, i64::MIN, i64::MIN, i64::MIN)
            .unwrap();
        let got: Vec<(u64, u64)> = store.received_all().unwrap()[0]
            .1
            .ranges()
            .map(|r| (r.first, r.last))
            .collect();
        assert_eq!(got, [(51, 100)]);
    }

    #[test]
    fn a_cut_drops_the_ranges_that_ended_before_it_and_keeps_what_follows() {
        let mut s = RangeSet::default();
        for v in [1, 2, 3, 10, 11] {
            s.insert(v, v as i64 * 1000);
        }
        let later = {
            let mut l = RangeSet::default();
            l.insert(12, 12_000);
            l
        };
        let p = Piece::add(s)
            .then(Piece::cut(5_000))
            .then(Piece::add(later));
        let got: Vec<(u64, u64)> = p.set.ranges().map(|r| (r.first, r.last)).collect();
        assert_eq!(got, [(10, 12)]);
    }
}
