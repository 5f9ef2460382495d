//! The typed commit batch: the one place that lays a commit out in the
//! column families (see the key layouts in [`super`]). The partition writers
//! fill it through what a commit means — an event stored, an aggregate
//! counted, an event quarantined, a watermark moved — and [`Store::commit`]
//! writes it as one `WriteBatch`.

use std::{collections::HashMap, sync::Arc};

use prost::Message;
use rocksdb::{WriteBatch, DB};
use sightline_proto::v1::{JoinedEvent, QuarantinedEvent};

use super::{
    cf, keys, received, Store, StoreError, CF_AGG, CF_BY_COMMIT, CF_COUNTERS, CF_DET, CF_EVENTS,
    CF_META, CF_QUARANTINE, CF_RECEIVED, CF_WM,
};

/// One commit's writes, in memory until [`Store::commit`].
///
/// The events and their `det` keys are kept aside and written in key order
/// (as are the aggregates): RocksDB's memtable skiplist starts each insert
/// from where the last one in the same memtable went, so keys in order cost
/// a short walk each instead of a search from the top — inserting into the
/// memtables was half of a partition writer's CPU (BENCHMARKS.md, "The
/// commit path").
pub struct CommitBatch {
    db: Arc<DB>,
    batch: WriteBatch,
    /// `events` entries: key, encoded event.
    events: Vec<([u8; 16], Vec<u8>)>,
    /// `det` entries: key, value (16 bytes, or 24 with a live tag) and its length.
    dets: Vec<([u8; 8], [u8; 24], u8)>,
    /// The commit's events in one `by_commit` entry (one memtable insert per
    /// commit instead of one per event; see `Store::committed_since`):
    /// (first det_oid, packed (detection ms, det_oid) pairs).
    by_commit: Option<(i64, Vec<u8>)>,
    /// Aggregate increments summed per key: one merge per key per commit.
    agg: HashMap<Vec<u8>, u64>,
    counters: HashMap<&'static str, u64>,
    /// The camera_seq values this commit received (with their detection
    /// times), per camera: one merge per camera per commit. Kept as a list
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
            by_commit: None,
            agg: HashMap::new(),
            counters: HashMap::new(),
            received: HashMap::new(),
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
            mut dets,
            by_commit,
            agg,
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
        dets.sort_unstable_by_key(|d| d.0);
        let cf_d = cf(&db, CF_DET);
        for (k, v, n) in &dets {
            batch.put_cf(cf_d, k, &v[..*n as usize]);
        }
        let cf_m = cf(&db, CF_META);
        for (share, packed) in outbox {
            batch.put_cf(cf_m, super::outbox::key(share), packed);
        }
        let cf_r = cf(&db, CF_RECEIVED);
        for (camera, values) in received {
            batch.merge_cf(
                cf_r,
                received::key(camera),
                received::Piece::add(received::RangeSet::from_values(values)).encode(),
            );
        }
        if let Some((first_oid, packed)) = by_commit {
            batch.put_cf(
                cf(&db, CF_BY_COMMIT),
                keys::event_key(committed_ms, first_oid),
                packed,
            );
        }
        let cf_agg = cf(&db, CF_AGG);
        let mut agg: Vec<_> = agg.into_iter().collect();
        agg.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in agg {
            batch.merge_cf(cf_agg, k, v.to_le_bytes());
        }
        let cf_c = cf(&db, CF_COUNTERS);
        for (name, v) in counters {
            if v > 0 {
                batch.merge_cf(cf_c, name, v.to_le_bytes());
            }
        }
        drop(db);
        let started = std::time::Instant::now();
        let generation = self.write_synced(batch, sync)?;
        Ok(Written {
            seconds: started.elapsed().as_secs_f64(),
            generation,
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
        self.dets.push((keys::det_key(oid), value, n));
        let (_, packed) = self.by_commit.get_or_insert_with(|| (oid, Vec::new()));
        packed.extend_from_slice(&key);
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
        for bucket in [keys::Bucket::Minute, keys::Bucket::Hour] {
            *self
                .agg
                .entry(keys::agg_key(bucket, bucket.floor(ts), location, item))
                .or_default() += 1;
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

    /// Commits of 2,000 events with random det_oids into one store, timed:
    /// what a writer's `Store::commit` costs per event (RocksDB is the
    /// optimised shared library even in a debug build). `cargo test -p
    /// sightline-core --lib commit_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn commit_cost() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), false, 8 << 20).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (commits, per) = (300, 2_000);
        let mut in_commit = std::time::Duration::ZERO;
        for c in 0..commits {
            let mut batch = store.begin(1_000 + c).unwrap();
            for i in 0..per {
                batch.put_event(
                    &JoinedEvent {
                        detection: Some(Detection {
                            geographical_location_oid: 1 + i % 12,
                            video_camera_oid: 100 + i % 4,
                            detection_oid: Some(rng.random_range(1..i64::MAX)),
                            item_name: "person".into(),
                            timestamp_detected: 1_700_000_000_000 + c * 1_000 + i,
                            ..Default::default()
                        }),
                        agent_id: "a".into(),
                        seq: (c * per + i) as u64,
                        ..Default::default()
                    },
                    None,
                );
                batch.add_aggregate(1_700_000_000_000 + c * 1_000, 1 + i % 12, "person");
            }
            let t = std::time::Instant::now();
            store.commit(batch).unwrap();
            in_commit += t.elapsed();
        }
        println!(
            "commit_cost: Store::commit {:.2} us per event",
            in_commit.as_secs_f64() * 1e6 / (commits * per) as f64
        );
    }
}
