//! The typed commit batch: the one place that lays a commit out in the
//! column families (see the key layouts in [`super`]). The partition writers
//! fill it through what a commit means — an event stored, an aggregate
//! counted, an event quarantined, a watermark moved — and [`Store::commit`]
//! writes it as one `WriteBatch`.

use std::sync::Arc;

use foldhash::HashMap;

use prost::Message;
use rocksdb::{WriteBatch, DB};
use sightline_proto::v1::{JoinedEvent, QuarantinedEvent};

use super::{
    cf, det_buffer, keys, received, Store, StoreError, CF_AGG, CF_BY_COMMIT, CF_COUNTERS,
    CF_EVENTS, CF_META, CF_QUARANTINE, CF_WM,
};

/// One commit's writes, in memory until [`Store::commit`].
///
/// The events are kept aside and written in key order (as are the
/// aggregates): RocksDB's memtable skiplist starts each insert from where the
/// last one in the same memtable went, so keys in order cost a short walk
/// each instead of a search from the top — inserting into the memtables was
/// half of a partition writer's CPU (BENCHMARKS.md, "The commit path"). Their
/// `det` entries go in one det log entry ([`super::det_buffer`]).
pub struct CommitBatch {
    db: Arc<DB>,
    batch: WriteBatch,
    /// `events` entries: key, encoded event.
    events: Vec<([u8; 16], Vec<u8>)>,
    /// `det` entries: key, value (16 bytes, or 24 with a live tag) and its length.
    dets: Vec<([u8; 8], det_buffer::Value)>,
    /// The commit's events in one `by_commit` entry (one memtable insert per
    /// commit instead of one per event; see `Store::committed_since`): its
    /// first det_oid (the key's second half; `None`: no event stored) and
    /// the packed (detection ms, det_oid) pairs.
    first_oid: Option<i64>,
    by_commit: Vec<u8>,
    /// The commit's events counted per minute key (`keys::agg_key`), written
    /// as one pending entry ([`super::pending`]).
    agg: HashMap<Vec<u8>, u64>,
    /// The aggregate key being counted (a key is allocated only when new
    /// to the commit).
    agg_key: Vec<u8>,
    counters: HashMap<&'static str, u64>,
    /// The camera_seq values this commit received (with their detection
    /// times), per camera: in the commit's pending entry. Kept as a list
    /// and made into ranges once, sorted, at the end: a range-set insert per
    /// event was ~5 % of the core's CPU under a burst (BENCHMARKS.md, "The
    /// commit path", sixteenth session).
    received: HashMap<i64, Vec<(u64, i64)>>,
    /// Cluster mode: the events stored from each share, by the share's
    /// stream sequence (`super::outbox`).
    outbox: std::collections::BTreeMap<u64, Vec<u8>>,
    committed_ms: i64,
    /// fsync'd when the store is so configured (see [`CommitBatch::without_fsync`]).
    sync: bool,
}

impl Store {
    /// An empty commit stamped `committed_ms`. It holds the database while it
    /// is filled; [`Store::commit`] lets go of it before writing (a store
    /// reopening after a disk fault waits for holders to let go).
    pub fn begin(&self, committed_ms: i64) -> Result<CommitBatch, StoreError> {
        Ok(CommitBatch {
            db: self.db()?,
            batch: WriteBatch::default(),
            events: Vec::new(),
            dets: Vec::new(),
            first_oid: None,
            by_commit: Vec::new(),
            agg: HashMap::default(),
            agg_key: Vec::new(),
            counters: HashMap::default(),
            received: HashMap::default(),
            outbox: std::collections::BTreeMap::new(),
            committed_ms,
            sync: true,
        })
    }

    /// Writes a commit in one `WriteBatch` (fsync'd when the store is so
    /// configured); says how long the write itself took.
    pub fn commit(&self, c: CommitBatch) -> Result<Written, StoreError> {
        let CommitBatch {
            db,
            mut batch,
            mut events,
            dets,
            first_oid,
            by_commit,
            agg,
            agg_key: _,
            counters,
            received,
            outbox,
            committed_ms,
            sync,
        } = c;
        events.sort_unstable_by_key(|e| e.0);
        let cf_e = cf(&db, CF_EVENTS);
        for (k, v) in events {
            batch.put_cf(cf_e, k, v);
        }
        let cf_m = cf(&db, CF_META);
        let det_log = (!dets.is_empty()).then(|| self.dets.next_log());
        if let Some(log) = det_log {
            batch.put_cf(cf_m, det_buffer::log_key(log), det_buffer::encode(&dets));
        }
        for (share, packed) in outbox {
            batch.put_cf(cf_m, super::outbox::key(share), packed);
        }
        if let Some(first_oid) = first_oid {
            batch.put_cf(
                cf(&db, CF_BY_COMMIT),
                keys::event_key(committed_ms, first_oid),
                by_commit,
            );
        }
        // The minute counts and the cameras' values in one pending entry;
        // folds make them the minute, hour and camera keys'
        // ([`super::pending`]).
        let mut pending = None;
        let weight = (agg.len() + received.len()) as u64;
        if weight > 0 {
            let mut agg: Vec<_> = agg.into_iter().collect();
            agg.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let cameras: Vec<(i64, Vec<u8>)> = received
                .into_iter()
                .map(|(camera, values)| {
                    let set = received::RangeSet::from_values(values);
                    (camera, received::Piece::add(set).encode())
                })
                .collect();
            let (seq, key) = self.pending.next_key();
            pending = Some(seq);
            batch.put_cf(cf(&db, CF_AGG), key, super::pending::encode(&agg, &cameras));
        }
        let cf_c = cf(&db, CF_COUNTERS);
        for (name, v) in counters {
            if v > 0 {
                batch.merge_cf(cf_c, name, v.to_le_bytes());
            }
        }
        drop(db);
        let started = std::time::Instant::now();
        let written = self.write_synced(batch, sync);
        let seconds = started.elapsed().as_secs_f64();
        if let Some(seq) = pending {
            self.pending.settled(seq);
        }
        let generation = written?;
        let fold_due = pending.is_some() && self.pending_written(weight);
        let ingest_due = det_log.is_some_and(|log| {
            self.dets.add(log, &dets, || {
                self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation
            })
        });
        Ok(Written {
            seconds,
            generation,
            fold_due,
            ingest_due,
        })
    }
}

/// A commit's write, once in the store.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// Seconds from the `WriteBatch` handed to RocksDB to its return: the
    /// WAL, the fsync when there is one, the memtables, and any write stall.
    pub seconds: f64,
    /// The database's generation (see [`Store::sync_wal`]): a write made
    /// without an fsync is durable after a sync of the same generation.
    pub generation: u64,
    /// Enough pending aggregate entries for a fold ([`Store::fold_if_due`]),
    /// which the commit leaves to its caller ([`super::pending`]).
    pub fold_due: bool,
    /// Enough `det` entries in memory for an ingest
    /// ([`Store::ingest_dets_if_due`]), also left to the caller.
    pub ingest_due: bool,
}

impl CommitBatch {
    /// Written without waiting for the disk (in the WAL, which the next
    /// fsync takes with it): only for a commit nothing of which is
    /// acknowledged before a [`Store::sync_wal`] of its generation (the
    /// partition writers' backlog groups), or whose every event its agent
    /// still holds and sends again, in order, until that copy is
    /// acknowledged — the live lane's (PROTOCOL.md rule 6b). A power cut
    /// may lose it whole, and every write after it, never part of it; a
    /// process crash does not.
    pub fn without_fsync(&mut self) {
        self.sync = false;
    }

    /// Room for `events` more events, so that filling a large commit does
    /// not copy its lists as they grow.
    pub fn reserve(&mut self, events: usize) {
        self.events.reserve(events);
        self.dets.reserve(events);
        self.by_commit.reserve(events * 16);
    }

    /// Stores an event under its det_oid (the `det` key that makes it the
    /// only one, with its camera) and in the commit's `by_commit` entry.
    /// `event` is kept without its joined location. `live_tag`: the
    /// [`keys::live_tag`] of an event stored through the live lane.
    pub fn put_event(&mut self, event: &JoinedEvent, live_tag: Option<u64>) {
        let d = event
            .detection
            .as_ref()
            .expect("a stored event has its detection");
        let (ts, oid, cam) = (
            d.timestamp_detected,
            d.detection_oid.unwrap_or_default(),
            d.video_camera_oid,
        );
        let key = keys::event_key(ts, oid);
        self.events.push((key, event.encode_to_vec()));
        let mut value = [0u8; 24];
        let n = match live_tag {
            None => {
                value[..16].copy_from_slice(&keys::det_value(ts, cam));
                16
            }
            Some(tag) => {
                value.copy_from_slice(&keys::det_value_live(ts, cam, tag));
                24
            }
        };
        self.dets.push((keys::det_key(oid), (value, n)));
        self.first_oid.get_or_insert(oid);
        self.by_commit.extend_from_slice(&key);
    }

    /// Cluster mode: `event` (stored by [`CommitBatch::put_event`]) came
    /// from the share at stream sequence `share`; it goes to the partition's
    /// outbox, in order, for the OUT stream's publisher (`super::outbox`).
    pub fn to_outbox(&mut self, share: u64, event: &JoinedEvent) {
        let d = event
            .detection
            .as_ref()
            .expect("a stored event has its detection");
        let key = keys::event_key(d.timestamp_detected, d.detection_oid.unwrap_or_default());
        self.outbox
            .entry(share)
            .or_default()
            .extend_from_slice(&key);
    }

    /// Counts one event of `item` at `location`, detected at `ts`, in its
    /// minute and its hour.
    pub fn add_aggregate(&mut self, ts: i64, location: i64, item: &str) {
        let minute = keys::Bucket::Minute;
        keys::agg_key_into(&mut self.agg_key, minute, minute.floor(ts), location, item);
        match self.agg.get_mut(self.agg_key.as_slice()) {
            Some(n) => *n += 1,
            None => {
                self.agg.insert(self.agg_key.clone(), 1);
            }
        }
    }

    /// Keeps a refused event in the quarantine.
    pub fn quarantine(&mut self, q: &QuarantinedEvent) {
        self.batch.put_cf(
            cf(&self.db, CF_QUARANTINE),
            keys::quarantine_key(q.quarantined_ms, &q.agent_id, q.seq),
            q.encode_to_vec(),
        );
    }

    /// Marks the detection's camera_seq as received (stored, a duplicate or
    /// quarantined: it reached the core). Without one (an older agent)
    /// nothing is marked.
    pub fn mark_received(&mut self, d: &sightline_proto::v1::Detection) {
        if let Some(seq) = d.camera_seq.filter(|s| *s > 0) {
            self.received
                .entry(d.video_camera_oid)
                .or_default()
                .push((seq, d.timestamp_detected));
        }
    }

    /// Adds `n` to one of the totals ([`counter`]).
    pub fn count(&mut self, name: &'static str, n: u64) {
        *self.counters.entry(name).or_default() += n;
    }

    /// Moves `partition`'s watermark of (agent, epoch) to `seq`, the digest of
    /// its event kept beside it.
    pub fn set_watermark(
        &mut self,
        agent: &str,
        epoch: u64,
        partition: usize,
        seq: u64,
        digest: u64,
    ) {
        self.batch.put_cf(
            cf(&self.db, CF_WM),
            keys::wm_key(agent, epoch, partition as u16),
            keys::wm_value(seq, digest),
        );
    }

    /// Cluster mode: the stream sequence of the last share this commit
    /// applies, written with it (so a restarted or moved owner resumes the
    /// stream exactly after it; [`Store::stream_seq`]).
    pub fn set_stream_seq(&mut self, seq: u64) {
        self.batch.put_cf(
            cf(&self.db, CF_META),
            super::META_STREAM_SEQ,
            seq.to_be_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_proto::v1::Detection;

    /// A partition writer's store work, timed: commits of 2,000 events (a
    /// tenth of them repeats of recent ones, as in `bench-ingest`), each
    /// looked up by det_oid (`Store::stored_dets`), then filled (events,
    /// aggregates, received camera_seqs, counters) and written by
    /// `Store::commit`. Prints each step's wall time per event stored in
    /// this thread, and the process's CPU per event (flushes and
    /// compactions included). Run it in the release profile: the store's
    /// merge operators and compaction filter are Rust, and a debug build
    /// makes the write ~30 times slower. `cargo test --release -p
    /// sightline-core --lib commit_cost -- --ignored --nocapture`;
    /// `SIGHTLINE_COMMIT_COST_COMMITS` sets the number of commits (1,000),
    /// `SIGHTLINE_COMMIT_COST_EVENTS` the events in each (2,000; a live
    /// run's commits hold a few dozen).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn commit_cost() {
        use rand::{Rng, SeedableRng};
        use std::{
            collections::HashSet,
            time::{Duration, Instant},
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), false, 32 << 20).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let env_or = |name: &str, default: i64| -> i64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let commits = env_or("SIGHTLINE_COMMIT_COST_COMMITS", 1_000);
        let per = env_or("SIGHTLINE_COMMIT_COST_EVENTS", 2_000);
        let items = ["person", "car", "bicycle", "backpack", "truck", "dog"];
        let mut recent: Vec<Detection> = Vec::new();
        let mut camera_seqs = HashMap::default();
        let (mut lookup, mut fill, mut write) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let (mut stored, mut seq) = (0u64, 0u64);
        let cpu_before = process_cpu_seconds();
        let started = Instant::now();
        for c in 0..commits {
            let ts0 = 1_700_000_000_000 + c * 20;
            let mut group = Vec::with_capacity(per as usize);
            for i in 0..per {
                if !recent.is_empty() && rng.random::<f64>() < 0.1 {
                    group.push(recent[rng.random_range(0..recent.len())].clone());
                    continue;
                }
                let loc = rng.random_range(1..=13);
                let camera = loc * 100 + rng.random_range(0..4);
                // Each camera numbers its own detections.
                let camera_seq = camera_seqs.entry(camera).or_insert(0u64);
                *camera_seq += 1;
                let d = Detection {
                    geographical_location_oid: loc,
                    video_camera_oid: camera,
                    detection_oid: Some(rng.random_range(1..i64::MAX)),
                    item_name: items[rng.random_range(0..items.len())].into(),
                    timestamp_detected: ts0 + i / 100,
                    camera_seq: Some(*camera_seq),
                    confidence: 0.9,
                    ..Default::default()
                };
                if recent.len() < 4096 {
                    recent.push(d.clone());
                } else {
                    recent[rng.random_range(0..4096)] = d.clone();
                }
                group.push(d);
            }
            let t = Instant::now();
            let mut oids: Vec<i64> = group.iter().filter_map(|d| d.detection_oid).collect();
            oids.sort_unstable();
            oids.dedup();
            let held: HashSet<i64> = oids
                .iter()
                .zip(store.stored_dets(&oids).unwrap())
                .filter_map(|(o, d)| d.map(|_| *o))
                .collect();
            let t = {
                lookup += t.elapsed();
                Instant::now()
            };
            let mut batch = store.begin(ts0).unwrap();
            let mut seen = HashSet::new();
            let mut n = 0u64;
            for d in group {
                batch.mark_received(&d);
                let oid = d.detection_oid.unwrap_or_default();
                if held.contains(&oid) || !seen.insert(oid) {
                    continue;
                }
                batch.add_aggregate(
                    d.timestamp_detected,
                    d.geographical_location_oid,
                    &d.item_name,
                );
                seq += 1;
                batch.put_event(
                    &JoinedEvent {
                        detection: Some(d),
                        agent_id: "bench-0".into(),
                        seq,
                        committed_ms: ts0,
                        location_matched: true,
                        ..Default::default()
                    },
                    None,
                );
                n += 1;
            }
            batch.count(super::super::counter::STORED, n);
            batch.set_watermark("bench-0", 1, 0, seq, 0);
            batch.without_fsync();
            let t = {
                fill += t.elapsed();
                Instant::now()
            };
            // The fold is timed with the write, as when commits folded.
            let w = store.commit(batch).unwrap();
            if w.fold_due {
                store.fold_if_due().unwrap();
            }
            if w.ingest_due {
                store.ingest_dets_if_due().unwrap();
            }
            write += t.elapsed();
            stored += n;
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds() - cpu_before;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / stored as f64;
        println!(
            "commit_cost stored={stored} commits={commits} lookup_us={:.2} fill_us={:.2} write_us={:.2} wall_us={:.2} process_cpu_us={:.2}",
            us(lookup),
            us(fill),
            us(write),
            wall * 1e6 / stored as f64,
            cpu * 1e6 / stored as f64,
        );
    }

    /// CPU time (user + system) this process has used, in seconds.
    fn process_cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime (fields 14 and 15) in clock ticks, 100 a second on Linux.
        (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
    }
}
