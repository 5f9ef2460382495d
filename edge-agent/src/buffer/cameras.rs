//! Per-camera numbering at intake (PROTOCOL.md, "Completeness"): every
//! detection the agent receives gets the next `camera_seq` of its camera (or
//! keeps the detector's own), before the buffer decides to keep it, so a
//! refused or dropped detection leaves a hole the core can see. The counters
//! are written with the events they numbered (meta key `camera/<oid>`), so a
//! restart never reuses a number.
//!
//! Promises:
//! - A camera's `camera_seq_high` MUST only grow, in memory and on disk.
//! - `camera_seq_settled` MUST NOT pass a number whose event the agent may
//!   still send: it moves only when the core acknowledged every seq assigned
//!   up to the commit that numbered it ([`Cameras::settle`]).
//! - A refusal that the publisher will retry (the block policy before its
//!   deadline, sources that wait) MUST NOT consume numbers
//!   ([`Cameras::rollback`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prost::Message;
use sightline_proto::v1::{CameraIntake, Detection, LossRange, LossReason};

/// Most loss ranges kept (and reported) per camera; the oldest go first.
pub const MAX_LOSS_RANGES: usize = 32;
/// Most settle checkpoints held (one per group commit while the core is
/// behind); beyond it the oldest two merge, which only settles later.
pub const MAX_CHECKPOINTS: usize = 4096;
/// Most (camera, number) pairs the settle checkpoints hold together; beyond
/// it the oldest two merge, as past [`MAX_CHECKPOINTS`]. Each checkpoint
/// holds every camera its commit numbered: without this bound an agent with
/// many cameras and the core far behind held up to `MAX_CHECKPOINTS` ×
/// `MAX_CAMERAS` of them (a map of 52 cameras per group commit was ~1.2 MiB
/// of the agent's peak in `bench-ingest`). 16 bytes each: 256 KiB at most.
pub const MAX_CHECKPOINT_ENTRIES: usize = 16_384;
/// Most cameras numbered: a detector publishing for ever new camera ids must
/// not grow the agent's memory and status report without end. The agent
/// does not number detections of cameras beyond it (a detector's own
/// numbers pass through; without one: unknown to the core, not counted).
pub const MAX_CAMERAS: usize = 4096;
/// The meta key prefix of a camera's counters.
pub const META_PREFIX: &str = "camera/";

/// The meta key of a camera's counters.
pub fn meta_key(camera: i64) -> Vec<u8> {
    let mut k = META_PREFIX.as_bytes().to_vec();
    k.extend_from_slice(&camera.to_be_bytes());
    k
}

/// (camera, highest camera_seq) pairs, sorted by camera, a camera once.
type Highs = Box<[(i64, u64)]>;

/// What numbering one request did, to keep or undo.
#[derive(Debug, Default)]
pub struct Numbering {
    /// (camera, its high before) for every camera the request touched.
    before: Vec<(i64, u64)>,
    /// (camera, camera_seq) given to each detection, in order.
    pub assigned: Vec<(i64, u64)>,
    /// Jumps in the detector's counter: (camera, first, last) skipped.
    jumps: Vec<(i64, u64, u64)>,
}

/// Every camera's counters, and what is still unsettled.
#[derive(Debug, Default)]
pub struct Cameras {
    by_camera: BTreeMap<i64, CameraIntake>,
    /// (last seq of a commit, highest camera_seq per camera it numbered,
    /// sorted by camera): once the core acknowledged that seq, those numbers
    /// are settled.
    checkpoints: VecDeque<(u64, Highs)>,
    /// (camera, number) pairs in `checkpoints`.
    checkpoint_entries: usize,
    /// Cameras changed since the last [`Cameras::take_dirty`].
    dirty: BTreeSet<i64>,
}

impl Cameras {
    /// Counters as loaded from the buffer; `held_through` is the last seq
    /// still held unacknowledged (0: none), up to which nothing is settled
    /// beyond what was stored.
    pub fn loaded(entries: Vec<CameraIntake>, held_through: u64) -> Self {
        let mut c = Cameras::default();
        for e in entries {
            c.by_camera.insert(e.video_camera_oid, e);
        }
        c.reset_checkpoints(held_through);
        c
    }

    /// Decodes a stored camera entry.
    pub fn decode(bytes: &[u8]) -> Result<CameraIntake, prost::DecodeError> {
        CameraIntake::decode(bytes)
    }

    /// After a restart or a new epoch: everything numbered so far is settled
    /// once the core acknowledges `held_through` (at once if 0).
    pub fn reset_checkpoints(&mut self, held_through: u64) {
        self.checkpoints.clear();
        self.checkpoint_entries = 0;
        if held_through == 0 {
            for e in self.by_camera.values_mut() {
                e.camera_seq_settled = e.camera_seq_high;
            }
        } else {
            // In camera order, as the map iterates.
            let highs: Highs = self
                .by_camera
                .iter()
                .map(|(c, e)| (*c, e.camera_seq_high))
                .collect();
            self.checkpoint_entries = highs.len();
            self.checkpoints.push_back((held_through, highs));
        }
    }

    /// Numbers `events` (those without the detector's own camera_seq).
    pub fn number(&mut self, events: &mut [Detection]) -> Numbering {
        let mut n = Numbering::default();
        for d in events {
            let cam = d.video_camera_oid;
            if self.by_camera.len() >= MAX_CAMERAS && !self.by_camera.contains_key(&cam) {
                continue;
            }
            let e = self.by_camera.entry(cam).or_insert_with(|| CameraIntake {
                video_camera_oid: cam,
                ..Default::default()
            });
            if !n.before.iter().any(|(c, _)| *c == cam) {
                n.before.push((cam, e.camera_seq_high));
            }
            let seq = match d.camera_seq {
                Some(given) => {
                    // The first number a camera shows is where it starts.
                    if e.camera_seq_high > 0 && given > e.camera_seq_high + 1 {
                        n.jumps.push((cam, e.camera_seq_high + 1, given - 1));
                    }
                    e.camera_seq_high = e.camera_seq_high.max(given);
                    given
                }
                None => {
                    e.camera_seq_high += 1;
                    d.camera_seq = Some(e.camera_seq_high);
                    e.camera_seq_high
                }
            };
            n.assigned.push((cam, seq));
            self.dirty.insert(cam);
        }
        n
    }

    /// The request's numbers stand (kept, or refused for good): its jumps
    /// are counted, and, if `lost`, its numbers as lost for that reason.
    pub fn keep(&mut self, n: &Numbering, lost: Option<LossReason>) {
        for &(cam, first, last) in &n.jumps {
            self.lose(cam, first, last, LossReason::Upstream);
        }
        if let Some(reason) = lost {
            for &(cam, seq) in &n.assigned {
                self.lose(cam, seq, seq, reason);
            }
        }
    }

    /// The request will be retried: its numbers are given back.
    pub fn rollback(&mut self, n: Numbering) {
        for (cam, high) in n.before {
            if let Some(e) = self.by_camera.get_mut(&cam) {
                e.camera_seq_high = high;
            }
        }
    }

    fn lose(&mut self, cam: i64, first: u64, last: u64, reason: LossReason) {
        let Some(e) = self.by_camera.get_mut(&cam) else {
            return;
        };
        let n = last - first + 1;
        match reason {
            LossReason::RefusedFull => e.refused_full += n,
            LossReason::DroppedFull => e.dropped_full += n,
            LossReason::Upstream => e.skipped_upstream += n,
            LossReason::Unspecified => {}
        }
        match e.losses.last_mut() {
            Some(l) if l.reason == reason as i32 && l.last + 1 == first => l.last = last,
            _ => e.losses.push(LossRange {
                first,
                last,
                reason: reason as i32,
            }),
        }
        if e.losses.len() > MAX_LOSS_RANGES {
            e.losses.remove(0);
        }
        self.dirty.insert(cam);
    }

    /// A commit ended at seq `last_seq` (the last seq assigned so far),
    /// numbering what `n` lists: settled once the core acknowledges it.
    pub fn checkpoint(&mut self, last_seq: u64, numbered: &[&Numbering], acked: u64) {
        let highs = highest_per_camera(
            numbered
                .iter()
                .flat_map(|n| n.assigned.iter().copied())
                .collect(),
        );
        if highs.is_empty() {
            return;
        }
        self.checkpoint_entries += highs.len();
        self.checkpoints.push_back((last_seq, highs));
        while self.checkpoints.len() > 1
            && (self.checkpoints.len() > MAX_CHECKPOINTS
                || self.checkpoint_entries > MAX_CHECKPOINT_ENTRIES)
        {
            let (_, older) = self.checkpoints.pop_front().expect("more than one");
            let next = self.checkpoints.front_mut().expect("more than one");
            let merged = merge_highs(&older, &next.1);
            self.checkpoint_entries -= older.len() + next.1.len();
            self.checkpoint_entries += merged.len();
            next.1 = merged;
        }
        self.settle(acked);
    }

    /// The core acknowledged every seq through `acked`.
    pub fn settle(&mut self, acked: u64) {
        while self.checkpoints.front().is_some_and(|(s, _)| *s <= acked) {
            let (_, highs) = self.checkpoints.pop_front().expect("checked");
            self.checkpoint_entries -= highs.len();
            for &(cam, h) in &highs {
                if let Some(e) = self.by_camera.get_mut(&cam) {
                    e.camera_seq_settled = e.camera_seq_settled.max(h.min(e.camera_seq_high));
                }
            }
        }
    }

    /// The cameras changed since the last call, encoded for the meta column.
    pub fn take_dirty(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|cam| self.by_camera.get(&cam))
            .map(|e| (meta_key(e.video_camera_oid), e.encode_to_vec()))
            .collect()
    }

    /// Every camera's counters, for the status report.
    pub fn report(&self) -> Vec<CameraIntake> {
        self.by_camera.values().cloned().collect()
    }
}

/// `pairs` as [`Highs`]: each camera once, with its highest number.
fn highest_per_camera(mut pairs: Vec<(i64, u64)>) -> Highs {
    // Highest first within a camera, so that the dedup keeps it.
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    pairs.dedup_by_key(|(cam, _)| *cam);
    pairs.into_boxed_slice()
}

/// Two checkpoints' highs as one: every camera of either, with the higher
/// number.
fn merge_highs(a: &[(i64, u64)], b: &[(i64, u64)]) -> Highs {
    highest_per_camera([a, b].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(cam: i64, given: Option<u64>) -> Detection {
        Detection {
            video_camera_oid: cam,
            camera_seq: given,
            ..Default::default()
        }
    }

    #[test]
    fn each_camera_counts_on_its_own_and_a_retried_refusal_gives_its_numbers_back() {
        let mut c = Cameras::default();
        let mut a = vec![det(1, None), det(2, None), det(1, None)];
        let n = c.number(&mut a);
        c.keep(&n, None);
        assert_eq!(
            a.iter().map(|d| d.camera_seq.unwrap()).collect::<Vec<_>>(),
            [1, 1, 2]
        );
        let mut b = vec![det(1, None)];
        let n = c.number(&mut b);
        c.rollback(n);
        let mut b = vec![det(1, None)];
        let n = c.number(&mut b);
        assert_eq!(b[0].camera_seq, Some(3));
        c.keep(&n, Some(LossReason::DroppedFull));
        let r = c.report();
        assert_eq!(r[0].dropped_full, 1);
        assert_eq!(r[0].losses[0].first, 3);
    }

    #[test]
    fn a_jump_in_the_detectors_counter_is_a_loss_upstream_but_its_first_number_is_not() {
        let mut c = Cameras::default();
        let mut a = vec![det(7, Some(100)), det(7, Some(101)), det(7, Some(110))];
        let n = c.number(&mut a);
        c.keep(&n, None);
        let r = &c.report()[0];
        assert_eq!(r.skipped_upstream, 8);
        assert_eq!((r.losses[0].first, r.losses[0].last), (102, 109));
        assert_eq!(r.camera_seq_high, 110);
    }

    #[test]
    fn numbers_settle_only_once_the_core_acknowledged_their_commit() {
        let mut c = Cameras::default();
        let mut a = vec![det(1, None), det(1, None)];
        let n = c.number(&mut a);
        c.keep(&n, None);
        c.checkpoint(2, &[&n], 0);
        assert_eq!(c.report()[0].camera_seq_settled, 0);
        c.settle(1);
        assert_eq!(c.report()[0].camera_seq_settled, 0);
        c.settle(2);
        assert_eq!(c.report()[0].camera_seq_settled, 2);
    }

    #[test]
    fn checkpoints_of_many_cameras_stay_bounded_and_never_settle_an_unacknowledged_number() {
        let mut c = Cameras::default();
        // 300 cameras, 100 detections per commit, the core acknowledging
        // nothing: 2,000 commits of up to 100 cameras each.
        let mut acked_high = std::collections::HashMap::<i64, u64>::new();
        let mut commits = Vec::new();
        for k in 1..=2000u64 {
            let mut a: Vec<_> = (0..100)
                .map(|i| det(((k * 7 + i * 13) % 300) as i64, None))
                .collect();
            let n = c.number(&mut a);
            c.keep(&n, None);
            c.checkpoint(k, &[&n], 0);
            commits.push(n.assigned.clone());
            let held: usize = c.checkpoints.iter().map(|(_, h)| h.len()).sum();
            assert_eq!(held, c.checkpoint_entries);
            assert!(held <= MAX_CHECKPOINT_ENTRIES, "{held} pairs held");
        }
        assert!(c.report().iter().all(|e| e.camera_seq_settled == 0));
        // Half acknowledged: no camera settles past a number of an
        // acknowledged commit.
        c.settle(1000);
        for (cam, seq) in commits[..1000].iter().flatten() {
            let h = acked_high.entry(*cam).or_default();
            *h = (*h).max(*seq);
        }
        for e in c.report() {
            let limit = acked_high.get(&e.video_camera_oid).copied().unwrap_or(0);
            assert!(e.camera_seq_settled <= limit, "{e:?} settled past {limit}");
        }
        // All acknowledged: every number settles.
        c.settle(2000);
        assert!(c.checkpoints.is_empty());
        assert_eq!(c.checkpoint_entries, 0);
        let r = c.report();
        assert_eq!(r.len(), 300);
        assert!(r.iter().all(|e| e.camera_seq_settled == e.camera_seq_high));
    }

    #[test]
    fn merged_checkpoints_keep_every_camera_at_its_higher_number() {
        let m = merge_highs(&[(1, 5), (3, 2), (4, 9)], &[(2, 1), (3, 7), (4, 8), (6, 1)]);
        assert_eq!(&m[..], &[(1, 5), (2, 1), (3, 7), (4, 9), (6, 1)]);
        assert_eq!(&merge_highs(&[], &[(1, 1)])[..], &[(1, 1)]);
    }
}
