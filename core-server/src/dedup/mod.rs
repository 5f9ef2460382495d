//! Dedup and commit: the partitioned pipeline with one writer per partition.
//!
//! Sessions hand decoded batches to the partition of their agent (by hash of
//! the agent id). Each partition's writer, on its own thread, takes every
//! batch queued (group commit) and, in order:
//! 1. drops events at or below the agent's watermark (transport dedup) and
//!    refuses a batch that would leave a gap;
//! 2. claims the det_oids (see [`claims`]) and drops those already stored or
//!    seen earlier in the group (semantic dedup, no time window);
//! 3. writes events, det keys, aggregates, quarantine, counters and the new
//!    watermarks in one `WriteBatch` (see `store`'s promises);
//! 4. answers each batch, then pushes the joined events to live subscribers.

pub mod claims;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Instant,
};

use bytes::Bytes;
use prost::Message;
use rocksdb::WriteBatch;
use sightline_proto::v1::{EdgeEvent, JoinedEvent, QuarantinedEvent, Rejection};
use tokio::sync::{mpsc, oneshot};

use crate::{
    api::live::LiveHub,
    enrich::Locations,
    metrics::{FieldLabel, LevelLabel, Metrics},
    store::{
        cf, counter, keys, Store, CF_AGG, CF_BY_COMMIT, CF_COUNTERS, CF_DET, CF_EVENTS,
        CF_QUARANTINE, CF_WM,
    },
};
use claims::Claims;

/// One event of a batch, as the session decoded and checked it.
#[derive(Debug)]
pub enum Incoming {
    Valid(EdgeEvent),
    Invalid {
        /// The event, when it decoded.
        event: Option<EdgeEvent>,
        /// The bytes, when it did not.
        raw: Bytes,
        field: String,
        reason: String,
        /// gRPC code name: "INVALID_ARGUMENT", or "PERMISSION_DENIED" for a
        /// camera or location not registered to the agent.
        code: &'static str,
    },
}

/// An event refused at commit: kept in the quarantine and listed in its
/// batch's ack, the one way both kinds of refusal (invalid, conflict) go.
struct Quarantine {
    event: Option<EdgeEvent>,
    raw: Vec<u8>,
    field: String,
    reason: String,
    code: &'static str,
}

impl Quarantine {
    fn put(
        self,
        batch: &mut WriteBatch,
        cf_q: &rocksdb::ColumnFamily,
        now: i64,
        agent: &str,
        outcome: &mut CommitOutcome,
    ) {
        let seq = self.event.as_ref().map(|e| e.seq).unwrap_or_default();
        let detection_oid = self
            .event
            .as_ref()
            .and_then(|e| e.detection.as_ref())
            .and_then(|d| d.detection_oid);
        outcome.rejected.push(Rejection {
            seq,
            detection_oid,
            field: self.field.clone(),
            reason: self.reason.clone(),
            code: self.code.to_string(),
        });
        let q = QuarantinedEvent {
            agent_id: agent.to_string(),
            seq,
            event: self.event,
            field: self.field,
            reason: self.reason,
            quarantined_ms: now,
            raw: self.raw,
        };
        batch.put_cf(
            cf_q,
            keys::quarantine_key(now, agent, seq),
            q.encode_to_vec(),
        );
    }
}

/// The `Rejection.code` of an event whose det_oid is stored for another camera.
pub const CONFLICT: &str = "ALREADY_EXISTS";

/// A batch to commit.
pub struct CommitRequest {
    pub agent: Arc<str>,
    pub epoch: u64,
    pub first_seq: u64,
    /// `events[i]` has seq `first_seq + i`.
    pub events: Vec<Incoming>,
    /// `sightline_proto::event_digest` of the last event's bytes as the agent
    /// sent them: kept with the watermark, so a restored agent buffer is
    /// told apart from a resend (PROTOCOL.md, "Time travel"). 0: unknown.
    pub last_digest: u64,
    pub reply: oneshot::Sender<Result<CommitOutcome, CommitError>>,
}

/// What became of a batch.
#[derive(Debug, Clone, Default)]
pub struct CommitOutcome {
    /// The agent's watermark after this commit.
    pub committed_through: u64,
    pub stored: u64,
    pub dup_transport: u64,
    pub dup_semantic: u64,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("batch starts at seq {got} but seq {expected} was never received (agent {agent}, epoch {epoch}): resume from {expected}")]
    Gap {
        agent: String,
        epoch: u64,
        expected: u64,
        got: u64,
    },
    #[error("store: {0}")]
    Store(String),
}

/// The partition writers.
pub struct Pipeline {
    partitions: Vec<mpsc::Sender<CommitRequest>>,
    threads: Vec<JoinHandle<()>>,
    /// Which partition each agent writes through: sticky for the life of the
    /// process, a new agent goes to the partition with the fewest agents.
    assignment: Mutex<HashMap<Arc<str>, usize>>,
}

/// What every writer shares.
pub struct WriterContext {
    pub store: Arc<Store>,
    pub locations: Arc<Locations>,
    pub hub: LiveHub,
    pub metrics: Arc<Metrics>,
    pub claims: Claims,
    pub max_group_events: usize,
}

impl Pipeline {
    /// Starts `partitions` writer threads; each queues up to `queue` batches.
    pub fn start(ctx: Arc<WriterContext>, partitions: usize, queue: usize) -> Self {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for p in 0..partitions.max(1) {
            let (tx, rx) = mpsc::channel(queue.max(1));
            let ctx = ctx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("writer-{p}"))
                    .spawn(move || Writer::new(ctx).run(rx))
                    .expect("spawn writer thread"),
            );
            senders.push(tx);
        }
        Self {
            partitions: senders,
            threads,
            assignment: Mutex::new(HashMap::new()),
        }
    }

    /// The partition an agent's batches go to. All of one agent's batches go
    /// through one writer, so its watermark has a single owner.
    pub fn partition_of(&self, agent: &Arc<str>) -> usize {
        let mut a = self.assignment.lock().unwrap();
        if let Some(p) = a.get(agent) {
            return *p;
        }
        let mut load = vec![0usize; self.partitions.len()];
        for p in a.values() {
            load[*p] += 1;
        }
        let p = (0..load.len()).min_by_key(|&i| load[i]).unwrap_or(0);
        a.insert(agent.clone(), p);
        p
    }

    /// Queues a batch (waits while the partition's queue is full: backpressure).
    pub async fn submit(&self, req: CommitRequest) -> Result<(), CommitError> {
        let p = self.partition_of(&req.agent);
        self.partitions[p]
            .send(req)
            .await
            .map_err(|_| CommitError::Store("the pipeline is shut down".into()))
    }

    /// Stops accepting, lets the writers finish what is queued, and joins them.
    pub fn shutdown(self) {
        drop(self.partitions);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Writer {
    ctx: Arc<WriterContext>,
    /// Watermarks of the agents of this partition, by (agent, epoch).
    watermarks: HashMap<(Arc<str>, u64), u64>,
}

/// A batch, after the watermark check.
struct Planned {
    reply: oneshot::Sender<Result<CommitOutcome, CommitError>>,
    outcome: Result<CommitOutcome, CommitError>,
}

impl Writer {
    fn new(ctx: Arc<WriterContext>) -> Self {
        Self {
            ctx,
            watermarks: HashMap::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<CommitRequest>) {
        while let Some(first) = rx.blocking_recv() {
            let mut n = first.events.len();
            let mut group = vec![first];
            while n < self.ctx.max_group_events {
                match rx.try_recv() {
                    Ok(r) => {
                        n += r.events.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
    }

    fn watermark(&mut self, agent: &Arc<str>, epoch: u64) -> Result<u64, CommitError> {
        if let Some(w) = self.watermarks.get(&(agent.clone(), epoch)) {
            return Ok(*w);
        }
        let w = self
            .ctx
            .store
            .watermark(agent, epoch)
            .map_err(|e| CommitError::Store(e.to_string()))?;
        self.watermarks.insert((agent.clone(), epoch), w);
        Ok(w)
    }

    fn commit(&mut self, group: Vec<CommitRequest>) {
        let started = Instant::now();
        let ctx = self.ctx.clone();
        let now = sightline_proto::now_ms();
        // (agent, epoch) -> (new watermark, digest of its event; 0: unchanged).
        let mut staged: HashMap<(Arc<str>, u64), (u64, u64)> = HashMap::new();
        let mut planned = Vec::with_capacity(group.len());
        // (index into planned, event) for events past the watermark.
        let mut fresh: Vec<(usize, Arc<str>, Incoming)> = Vec::new();
        for req in group {
            let key = (req.agent.clone(), req.epoch);
            let wm = match staged.get(&key) {
                Some((w, _)) => Ok(*w),
                None => self.watermark(&req.agent, req.epoch),
            };
            let outcome = wm.and_then(|wm| {
                let n = req.events.len() as u64;
                if n == 0 {
                    return Ok(CommitOutcome {
                        committed_through: wm,
                        ..Default::default()
                    });
                }
                if req.first_seq > wm + 1 {
                    return Err(CommitError::Gap {
                        agent: req.agent.to_string(),
                        epoch: req.epoch,
                        expected: wm + 1,
                        got: req.first_seq,
                    });
                }
                let last = req.first_seq + n - 1;
                let skip = (wm + 1 - req.first_seq).min(n);
                let idx = planned.len();
                for ev in req.events.into_iter().skip(skip as usize) {
                    fresh.push((idx, req.agent.clone(), ev));
                }
                if last > wm {
                    staged.insert(key.clone(), (last, req.last_digest));
                }
                Ok(CommitOutcome {
                    committed_through: last.max(wm),
                    dup_transport: skip,
                    ..Default::default()
                })
            });
            planned.push(Planned {
                reply: req.reply,
                outcome,
            });
        }

        // Semantic dedup: claim, then look the det_oids up.
        let mut oids: Vec<i64> = fresh
            .iter()
            .filter_map(|(_, _, ev)| match ev {
                Incoming::Valid(e) => e.detection.as_ref().and_then(|d| d.detection_oid),
                Incoming::Invalid { .. } => None,
            })
            .collect();
        oids.sort_unstable();
        oids.dedup();
        ctx.claims.claim(&oids);
        let result = self.build_and_write(&ctx, now, &oids, fresh, &mut planned, &staged);
        ctx.claims.release(&oids);

        let live = match result {
            Ok(live) => live,
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the agents will resend");
                for p in planned {
                    let _ = p.reply.send(Err(CommitError::Store(e.to_string())));
                }
                return;
            }
        };
        for (k, (w, _)) in staged {
            self.watermarks.insert(k, w);
        }
        let m = &ctx.metrics;
        let mut total = 0;
        for p in planned {
            if let Ok(o) = &p.outcome {
                total += o.stored + o.dup_semantic + o.dup_transport + o.rejected.len() as u64;
                m.ingested.inc_by(o.stored);
                m.duplicates
                    .get_or_create(&LevelLabel { level: "transport" })
                    .inc_by(o.dup_transport);
                m.duplicates
                    .get_or_create(&LevelLabel { level: "semantic" })
                    .inc_by(o.dup_semantic);
                for r in &o.rejected {
                    m.rejected
                        .get_or_create(&FieldLabel {
                            field: r.field.clone(),
                        })
                        .inc();
                }
            }
            let _ = p.reply.send(p.outcome);
        }
        m.commit_seconds.observe(started.elapsed().as_secs_f64());
        m.commit_events.observe(total as f64);
        ctx.hub.publish(live);
    }

    /// Fills and writes the WriteBatch; returns the joined events for live
    /// subscribers (empty when nobody listens).
    fn build_and_write(
        &self,
        ctx: &WriterContext,
        now: i64,
        oids: &[i64],
        fresh: Vec<(usize, Arc<str>, Incoming)>,
        planned: &mut [Planned],
        staged: &HashMap<(Arc<str>, u64), (u64, u64)>,
    ) -> Result<Vec<JoinedEvent>, crate::store::StoreError> {
        let store = &ctx.store;
        // det_oid -> the camera it belongs to (None: stored by an older
        // version that did not record it), for what is stored and what this
        // commit stores.
        let mut owners: HashMap<i64, Option<i64>> = oids
            .iter()
            .zip(store.stored_dets(oids)?)
            .filter_map(|(o, present)| present.map(|cam| (*o, cam)))
            .collect();
        let table = ctx.locations.current();
        let want_live = ctx.hub.has_subscribers();
        // The handle only while the batch is built: the write takes its own
        // (a store reopening after a disk fault waits for readers to let go).
        let db = store.db()?;
        let (cf_events, cf_det, cf_agg, cf_q, cf_c, cf_wm) = (
            cf(&db, CF_EVENTS),
            cf(&db, CF_DET),
            cf(&db, CF_AGG),
            cf(&db, CF_QUARANTINE),
            cf(&db, CF_COUNTERS),
            cf(&db, CF_WM),
        );
        let cf_by_commit = cf(&db, CF_BY_COMMIT);
        let mut batch = WriteBatch::default();
        // The commit's events in one `by_commit` entry (one memtable insert
        // per commit instead of one per event; see Store::committed_since).
        let mut by_commit: Option<(i64, Vec<u8>)> = None;
        let mut live = Vec::new();
        let (mut n_stored, mut n_sem, mut n_rej, mut n_unmatched, mut n_transport) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let one = 1u64.to_le_bytes();
        let mut agg: HashMap<Vec<u8>, u64> = HashMap::new();
        for (idx, agent, ev) in fresh {
            let Ok(outcome) = planned[idx].outcome.as_mut() else {
                continue;
            };
            match ev {
                Incoming::Invalid {
                    event,
                    raw,
                    field,
                    reason,
                    code,
                } => {
                    let q = Quarantine {
                        event,
                        raw: raw.to_vec(),
                        field,
                        reason,
                        code,
                    };
                    q.put(&mut batch, cf_q, now, &agent, outcome);
                    n_rej += 1;
                }
                Incoming::Valid(e) => {
                    let EdgeEvent {
                        seq,
                        detection,
                        accepted_ms,
                    } = e;
                    let Some(d) = detection else { continue };
                    let oid = d.detection_oid.unwrap_or_default();
                    match owners.get(&oid) {
                        None => {
                            owners.insert(oid, Some(d.video_camera_oid));
                        }
                        Some(Some(cam)) if *cam != d.video_camera_oid => {
                            // Another camera's det_oid: a conflict, never a
                            // duplicate (one agent must not hide another's events).
                            let reason = format!(
                                "det_oid {oid} is already stored for camera {cam}, not camera {}: a det_oid belongs to one camera (conflict, quarantined)",
                                d.video_camera_oid
                            );
                            let q = Quarantine {
                                event: Some(EdgeEvent {
                                    seq,
                                    detection: Some(d),
                                    accepted_ms,
                                }),
                                raw: Vec::new(),
                                field: "detection_oid".into(),
                                reason,
                                code: CONFLICT,
                            };
                            q.put(&mut batch, cf_q, now, &agent, outcome);
                            n_rej += 1;
                            ctx.metrics.det_oid_conflicts.inc();
                            continue;
                        }
                        Some(_) => {
                            outcome.dup_semantic += 1;
                            n_sem += 1;
                            continue;
                        }
                    }
                    let (ts, cam) = (d.timestamp_detected, d.video_camera_oid);
                    let loc = d.geographical_location_oid;
                    let matched = table.get(loc).is_some();
                    if !matched {
                        n_unmatched += 1;
                    }
                    for bucket in [keys::Bucket::Minute, keys::Bucket::Hour] {
                        *agg.entry(keys::agg_key(bucket, bucket.floor(ts), loc, &d.item_name))
                            .or_default() += 1;
                    }
                    let mut joined = JoinedEvent {
                        detection: Some(d),
                        agent_id: agent.to_string(),
                        seq,
                        accepted_ms,
                        committed_ms: now,
                        location_matched: matched,
                        location: None,
                        media: Vec::new(),
                    };
                    batch.put_cf(cf_events, keys::event_key(ts, oid), joined.encode_to_vec());
                    batch.put_cf(cf_det, keys::det_key(oid), keys::det_value(ts, cam));
                    let (_, packed) = by_commit.get_or_insert_with(|| (oid, Vec::new()));
                    packed.extend_from_slice(&keys::event_key(ts, oid));
                    outcome.stored += 1;
                    n_stored += 1;
                    if want_live {
                        joined.location = table.get(loc).cloned();
                        live.push(joined);
                    }
                }
            }
        }
        for p in planned.iter() {
            if let Ok(o) = &p.outcome {
                n_transport += o.dup_transport;
            }
        }
        if let Some((first_oid, packed)) = by_commit {
            batch.put_cf(cf_by_commit, keys::event_key(now, first_oid), packed);
        }
        for (k, v) in agg {
            if v == 1 {
                batch.merge_cf(cf_agg, k, one);
            } else {
                batch.merge_cf(cf_agg, k, v.to_le_bytes());
            }
        }
        for (name, v) in [
            (counter::STORED, n_stored),
            (counter::DUP_SEMANTIC, n_sem),
            (counter::DUP_TRANSPORT, n_transport),
            (counter::REJECTED, n_rej),
            (counter::UNMATCHED, n_unmatched),
        ] {
            if v > 0 {
                batch.merge_cf(cf_c, name, v.to_le_bytes());
            }
        }
        for ((agent, epoch), (wm, digest)) in staged {
            batch.put_cf(
                cf_wm,
                keys::wm_key(agent, *epoch),
                keys::wm_value(*wm, *digest),
            );
        }
        if n_unmatched > 0 {
            ctx.metrics.unmatched.inc_by(n_unmatched);
        }
        drop(db);
        store.write(batch)?;
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    //! The writer in process, on a real store: what a commit keeps and refuses.
    use super::*;
    use sightline_proto::v1::Detection;

    struct Rig {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        pipeline: Pipeline,
    }

    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false, 8 << 20).unwrap());
        let ctx = Arc::new(WriterContext {
            store: store.clone(),
            locations: Arc::new(Locations::new(None).unwrap()),
            hub: LiveHub::new(16),
            metrics: Arc::new(Metrics::new()),
            claims: Claims::default(),
            max_group_events: 10_000,
        });
        Rig {
            _dir: dir,
            store,
            pipeline: Pipeline::start(ctx, 2, 8),
        }
    }

    fn event(seq: u64, det_oid: i64, camera: i64, ts: i64) -> Incoming {
        Incoming::Valid(EdgeEvent {
            seq,
            detection: Some(Detection {
                geographical_location_oid: 1,
                video_camera_oid: camera,
                detection_oid: Some(det_oid),
                item_name: "person".into(),
                timestamp_detected: ts,
                ..Default::default()
            }),
            accepted_ms: ts,
        })
    }

    fn commit(
        rig: &Rig,
        agent: &str,
        first_seq: u64,
        events: Vec<Incoming>,
        last_digest: u64,
    ) -> CommitOutcome {
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            agent: agent.into(),
            epoch: 7,
            first_seq,
            events,
            last_digest,
            reply,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            rig.pipeline.submit(req).await.unwrap();
            rx.await.unwrap().unwrap()
        })
    }

    #[test]
    fn another_cameras_det_oid_is_a_conflict_quarantined_not_a_duplicate() {
        let rig = rig();
        let ts = sightline_proto::now_ms();
        let o = commit(&rig, "a", 1, vec![event(1, 100, 1, ts)], 0);
        assert_eq!(o.stored, 1);
        // Agent b claims det_oid 100 for its own camera 2: quarantined, named.
        let o = commit(
            &rig,
            "b",
            1,
            vec![event(1, 100, 2, ts), event(2, 101, 2, ts)],
            0,
        );
        assert_eq!((o.stored, o.dup_semantic), (1, 0));
        assert_eq!(o.rejected.len(), 1);
        let r = &o.rejected[0];
        assert_eq!(
            (r.code.as_str(), r.field.as_str()),
            (CONFLICT, "detection_oid")
        );
        assert!(r.reason.contains("camera 1"), "{}", r.reason);
        // The same det_oid again from its own camera is a duplicate.
        let o = commit(&rig, "a", 2, vec![event(2, 100, 1, ts)], 0);
        assert_eq!((o.stored, o.dup_semantic, o.rejected.len()), (0, 1, 0));
        // Within one commit group too: the second camera's copy is a conflict.
        let o = commit(
            &rig,
            "c",
            1,
            vec![event(1, 200, 5, ts), event(2, 200, 6, ts)],
            0,
        );
        assert_eq!((o.stored, o.rejected.len()), (1, 1));
        let c = rig.store.counters().unwrap();
        assert_eq!((c.stored, c.rejected, c.dup_semantic), (3, 2, 1));
        let (q, _) = rig.store.list_quarantine(10, "").unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(rig.store.get_event(100).unwrap().unwrap().agent_id, "a");
    }

    #[test]
    fn the_watermark_keeps_the_digest_of_its_event() {
        let rig = rig();
        let ts = sightline_proto::now_ms();
        commit(
            &rig,
            "a",
            1,
            vec![event(1, 1, 1, ts), event(2, 2, 1, ts)],
            42,
        );
        assert_eq!(rig.store.watermark_digest("a", 7).unwrap(), (2, 42));
        // A resend below the watermark changes neither.
        commit(&rig, "a", 1, vec![event(1, 1, 1, ts)], 99);
        assert_eq!(rig.store.watermark_digest("a", 7).unwrap(), (2, 42));
        commit(
            &rig,
            "a",
            2,
            vec![event(2, 2, 1, ts), event(3, 3, 1, ts)],
            43,
        );
        assert_eq!(rig.store.watermark_digest("a", 7).unwrap(), (3, 43));
    }

    #[test]
    fn retention_lowers_stored_by_the_events_it_removes() {
        let rig = rig();
        let now = sightline_proto::now_ms();
        let hour = 3_600_000;
        let old: Vec<Incoming> = (0..5)
            .map(|i| event(i + 1, 10 + i as i64, 1, now - 3 * hour + i as i64))
            .collect();
        commit(&rig, "a", 1, old, 0);
        commit(
            &rig,
            "a",
            6,
            vec![event(6, 20, 1, now), event(7, 21, 1, now)],
            0,
        );
        assert_eq!(rig.store.counters().unwrap().stored, 7);
        let expired = rig
            .store
            .apply_retention(now - hour, i64::MIN, i64::MIN, i64::MIN)
            .unwrap();
        assert_eq!(expired, 5);
        let c = rig.store.counters().unwrap();
        assert_eq!((c.stored, c.expired), (2, 5));
        let (events, _) = rig.store.list_events(0, 0, None, 100, "").unwrap();
        assert_eq!(events.len() as u64, c.stored);
        // A second pass removes nothing more.
        assert_eq!(
            rig.store
                .apply_retention(now - hour, i64::MIN, i64::MIN, i64::MIN)
                .unwrap(),
            0
        );
        assert_eq!(rig.store.counters().unwrap().stored, 2);
    }

    #[test]
    fn a_non_ascii_page_token_is_refused_not_a_panic() {
        let rig = rig();
        for token in ["é", "éé", "zz", "0", &"ab".repeat(600)] {
            let err = rig.store.list_events(0, 0, None, 10, token).unwrap_err();
            assert!(err.to_string().contains("page_token"), "{err}");
        }
    }
}
