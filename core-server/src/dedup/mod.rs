//! Dedup and commit: the partitioned pipeline with one writer per partition.
//!
//! Partitions are keyed by det_oid (`store::keys::partition_of`): every
//! event of a det_oid goes through one writer, so checking whether a det_oid
//! is stored and storing it cannot race, and needs no coordination with other
//! partitions (nor with other nodes, once partitions move between them).
//! [`Pipeline::submit`] splits each batch of an agent by partition and hands
//! every partition its share — an empty one when none of the batch's events
//! hash there, so that every partition sees every seq. Each partition's
//! writer, on its own thread, takes every share queued (group commit) and, in
//! order:
//! 1. drops events at or below its watermark of the agent (transport dedup)
//!    and refuses a share that would leave a gap;
//! 2. drops det_oids already stored or seen earlier in the group (semantic
//!    dedup, no time window);
//! 3. writes events, det keys, aggregates, quarantine, counters and its new
//!    watermark of each agent in one `WriteBatch` (see `store`'s promises),
//!    without an fsync, and goes on with its next group;
//! 4. the syncer thread fsyncs the WAL once for every group written since
//!    its last fsync (by any writer), then answers each share of them, in
//!    the order they were written, and pushes the joined events to live
//!    subscribers. Nothing is acknowledged before it is durable; a group
//!    whose fsync failed is refused, and the writers read their watermarks
//!    again from the store.
//!
//! The batch is answered once every partition has committed its share: the
//! ack's `committed_through` is the smallest of theirs, the watermark the
//! store reports (the smallest over the partitions). A crash between two
//! partitions' commits leaves one ahead: the resend is dropped there by seq,
//! committed in the others.
//!
//! The live lane (PROTOCOL.md rule 6b): an agent draining a backlog also sends
//! its newest events out of order. Their shares go to each writer on a queue
//! of their own that it takes before the backlog's, and are committed in
//! groups of their own, answered and pushed at once without waiting for an
//! fsync (each event comes again with the backlog, whose commit is), without
//! touching the watermark; the backlog has the group
//! after each. Only new, valid det_oids are stored (anything else
//! waits for its turn in the backlog, where it is quarantined or counted).
//! Such an event's `det` entry carries the tag of the (agent, epoch, seq) it
//! came with ([`keys::live_tag`]), so that when the backlog brings the same
//! det_oid from the same seq it is acknowledged as delivered, not counted as
//! a duplicate — with nothing to remember in memory, and across restarts.

use foldhash::HashMap;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::Bytes;
use sightline_proto::v1::{EdgeEvent, JoinedEvent, QuarantinedEvent, Rejection};
use tokio::sync::{mpsc, oneshot};

use crate::{
    api::live::LiveHub,
    enrich::Locations,
    metrics::{FieldLabel, LevelLabel, Metrics},
    store::{commit::CommitBatch, counter, keys, Store, StoreError},
};

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
    fn put(self, commit: &mut CommitBatch, now: i64, agent: &str, outcome: &mut CommitOutcome) {
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
        commit.quarantine(&QuarantinedEvent {
            agent_id: agent.to_string(),
            seq,
            event: self.event,
            field: self.field,
            reason: self.reason,
            quarantined_ms: now,
            raw: self.raw,
        });
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
    /// Events stored earlier through the live lane, acknowledged now.
    pub delivered_live: u64,
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

impl CommitOutcome {
    /// The outcome of a batch from its partitions' shares: acknowledged
    /// through the smallest of their watermarks, the counts summed.
    fn merge(mut self, other: CommitOutcome) -> CommitOutcome {
        self.committed_through = self.committed_through.min(other.committed_through);
        self.stored += other.stored;
        self.dup_transport += other.dup_transport;
        self.dup_semantic += other.dup_semantic;
        self.delivered_live += other.delivered_live;
        self.rejected.extend(other.rejected);
        self
    }
}

/// One partition's share of a batch.
struct Share {
    agent: Arc<str>,
    epoch: u64,
    first_seq: u64,
    /// Seqs the batch covers (`first_seq ..= first_seq + count - 1`); this
    /// share's events are those of them whose det_oid hashes here.
    count: u64,
    events: Vec<Incoming>,
    last_digest: u64,
    /// From the live lane: stored if new, watermark untouched, not answered.
    live: bool,
    /// Cluster mode: the stream sequence of the share's message, kept in the
    /// same commit (`CommitBatch::set_stream_seq`). 0: none.
    stream_seq: u64,
    reply: oneshot::Sender<Result<CommitOutcome, CommitError>>,
    /// When it was queued for its writer.
    queued: Instant,
}

/// While the live lane is in use, a commit group takes at most this
/// fraction (1/n) of `pipeline.max_group_events` from the backlog: a live
/// share that comes while a group is being committed waits for that commit.
/// 16 (256 events by default): since a commit's aggregates went into one
/// pending entry a small group costs little more an event than a large
/// one, and against 4 the live p99 during a drain fell at a like drain
/// rate (BENCHMARKS.md, thirty-fourth session).
const LIVE_GROUP_SHARE: usize = 16;

/// The live lane is in use at a writer while it brought it events this
/// recently.
const LIVE_RECENT: Duration = Duration::from_secs(1);

/// The seq an event came with (every `Incoming` the session makes has one).
fn seq_of(ev: &Incoming) -> Option<u64> {
    match ev {
        Incoming::Valid(e) => Some(e.seq),
        Incoming::Invalid { event, .. } => event.as_ref().map(|e| e.seq),
    }
}

/// The partition an event goes to: its det_oid's; an event without one
/// (refused before it got that far) goes by seq.
pub(crate) fn partition_of(ev: &Incoming, partitions: usize) -> usize {
    let event = match ev {
        Incoming::Valid(e) => Some(e),
        Incoming::Invalid { event, .. } => event.as_ref(),
    };
    match event {
        Some(EdgeEvent {
            detection:
                Some(sightline_proto::v1::Detection {
                    detection_oid: Some(oid),
                    ..
                }),
            ..
        }) => keys::partition_of(*oid, partitions),
        Some(e) => (e.seq % partitions as u64) as usize,
        None => 0,
    }
}

/// The partition writers.
pub struct Pipeline {
    partitions: Vec<mpsc::Sender<Share>>,
    /// Each writer's live lane, taken before its backlog queue.
    live: Vec<mpsc::Sender<Share>>,
    threads: Vec<JoinHandle<()>>,
    /// Answers the groups the writers wrote, once the WAL is fsync'd; ends
    /// after the writers.
    syncer: Option<JoinHandle<()>>,
    /// Folds the commits' pending aggregate entries when a writer's commit
    /// says a fold is due (`store::pending`); ends after the writers.
    folder: Option<JoinHandle<()>>,
}

/// What every writer shares.
pub struct WriterContext {
    pub store: Arc<Store>,
    pub locations: Arc<Locations>,
    pub hub: LiveHub,
    pub metrics: Arc<Metrics>,
    pub max_group_events: usize,
}

#[cfg(test)]
impl WriterContext {
    /// For in-process tests: over `store`, no Dataset B, a small live hub.
    pub(crate) fn for_tests(store: Arc<Store>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            store,
            locations: Arc::new(Locations::new(None).unwrap()),
            hub: LiveHub::new(16),
            metrics,
            max_group_events: 10_000,
        })
    }
}

impl Pipeline {
    /// Starts `partitions` writer threads; each queues up to `queue` shares.
    /// The store's watermarks are re-keyed first if it kept them for another
    /// partition count.
    pub fn start(
        ctx: Arc<WriterContext>,
        partitions: usize,
        queue: usize,
    ) -> Result<Self, StoreError> {
        let partitions = partitions.max(1);
        ctx.store.use_partitions(partitions)?;
        let mut senders = Vec::new();
        let mut live = Vec::new();
        let mut threads = Vec::new();
        // A writer runs at most this many groups ahead of the WAL's fsync.
        let (unsynced, to_sync) = std::sync::mpsc::sync_channel(UNSYNCED_GROUPS * partitions);
        let faults = Arc::new(AtomicU64::new(0));
        // One fold asked for while one runs is enough: it takes every entry.
        let (fold, fold_rx) = std::sync::mpsc::sync_channel(1);
        for p in 0..partitions {
            let (tx, rx) = mpsc::channel(queue.max(1));
            let (live_tx, live_rx) = mpsc::channel(queue.max(1));
            let writer = Writer::new(
                ctx.clone(),
                p,
                unsynced.clone(),
                faults.clone(),
                fold.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("writer-{p}"))
                    .spawn(move || writer.run(rx, live_rx))
                    .expect("spawn writer thread"),
            );
            senders.push(tx);
            live.push(live_tx);
        }
        drop((unsynced, fold));
        let folder = {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name("agg-fold".into())
                .spawn(move || fold_when_asked(&ctx, fold_rx))
                .expect("spawn the aggregate fold thread")
        };
        let syncer = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || sync_groups(&ctx, to_sync, &faults))
            .expect("spawn the WAL sync thread");
        Ok(Self {
            partitions: senders,
            live,
            threads,
            syncer: Some(syncer),
            folder: Some(folder),
        })
    }

    /// Queues a batch: its share to every partition (waits while a
    /// partition's queue is full: backpressure). `req.reply` is answered once
    /// every share is committed, or with the first failure.
    pub async fn submit(&self, req: CommitRequest) -> Result<(), CommitError> {
        let n = self.partitions.len();
        let stopped = || CommitError::Store("the pipeline is shut down".into());
        let count = req.events.len() as u64;
        if n == 1 {
            return self.partitions[0]
                .send(Share {
                    agent: req.agent,
                    epoch: req.epoch,
                    first_seq: req.first_seq,
                    count,
                    events: req.events,
                    last_digest: req.last_digest,
                    live: false,
                    stream_seq: 0,
                    reply: req.reply,
                    queued: Instant::now(),
                })
                .await
                .map_err(|_| stopped());
        }
        let mut split: Vec<Vec<Incoming>> = (0..n)
            .map(|_| Vec::with_capacity(req.events.len() / n + 1))
            .collect();
        for ev in req.events {
            split[partition_of(&ev, n)].push(ev);
        }
        let mut replies = Vec::with_capacity(n);
        for (p, events) in split.into_iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            self.partitions[p]
                .send(Share {
                    agent: req.agent.clone(),
                    epoch: req.epoch,
                    first_seq: req.first_seq,
                    count,
                    events,
                    last_digest: req.last_digest,
                    live: false,
                    stream_seq: 0,
                    reply,
                    queued: Instant::now(),
                })
                .await
                .map_err(|_| stopped())?;
            replies.push(rx);
        }
        let reply = req.reply;
        tokio::spawn(async move {
            let mut merged: Option<Result<CommitOutcome, CommitError>> = None;
            for rx in replies {
                let r = rx.await.unwrap_or_else(|_| {
                    Err(CommitError::Store(
                        "a partition writer stopped before it answered".into(),
                    ))
                });
                merged = Some(match (merged, r) {
                    (None, r) => r,
                    (Some(Err(e)), _) | (Some(Ok(_)), Err(e)) => Err(e),
                    (Some(Ok(a)), Ok(b)) => Ok(a.merge(b)),
                });
            }
            if let Some(Ok(o)) = merged.as_mut() {
                o.rejected.sort_by_key(|r| r.seq);
            }
            let _ = reply.send(merged.expect("at least one partition"));
        });
        Ok(())
    }

    /// Cluster mode: queues one partition's share of a batch (cluster
    /// `ShareMsg`) on a pipeline of one partition. `count` is the batch's
    /// number of seqs (the share holds only those of its events that hash to
    /// this partition); `stream_seq`, the share's stream sequence, is written
    /// in the same commit. Answered like [`Pipeline::submit`].
    pub async fn submit_share(
        &self,
        req: CommitRequest,
        count: u64,
        stream_seq: u64,
    ) -> Result<(), CommitError> {
        self.partitions[0]
            .send(Share {
                agent: req.agent,
                epoch: req.epoch,
                first_seq: req.first_seq,
                count,
                events: req.events,
                last_digest: req.last_digest,
                live: false,
                stream_seq,
                reply: req.reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| CommitError::Store("the pipeline is shut down".into()))
    }

    /// Queues events of the live lane (PROTOCOL.md rule 6b) on the writers'
    /// live queues, taken before the backlog. Nothing is answered: the
    /// events are acknowledged with the batch that brings their seqs in order.
    pub async fn submit_live(
        &self,
        agent: Arc<str>,
        epoch: u64,
        events: Vec<Incoming>,
    ) -> Result<(), CommitError> {
        let n = self.live.len();
        let mut split: Vec<Vec<Incoming>> = (0..n).map(|_| Vec::new()).collect();
        for ev in events {
            if matches!(ev, Incoming::Valid(_)) {
                split[partition_of(&ev, n)].push(ev);
            }
        }
        for (p, events) in split.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let (reply, _) = oneshot::channel();
            self.live[p]
                .send(Share {
                    agent: agent.clone(),
                    epoch,
                    first_seq: 0,
                    count: events.len() as u64,
                    events,
                    last_digest: 0,
                    live: true,
                    stream_seq: 0,
                    reply,
                    queued: Instant::now(),
                })
                .await
                .map_err(|_| CommitError::Store("the pipeline is shut down".into()))?;
        }
        Ok(())
    }

    /// Stops accepting, lets the writers finish what is queued, and joins them.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Pipeline {
    /// The writers hold the store: joined here, so that it is closed before
    /// whoever dropped the pipeline goes on (a process that exits while a
    /// detached writer closes RocksDB aborts).
    fn drop(&mut self) {
        self.partitions.clear();
        self.live.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The writers are gone: the syncer answers what they left and ends.
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        // Its last senders were the writers'.
        if let Some(t) = self.folder.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    ctx: Arc<WriterContext>,
    partition: usize,
    /// This partition's watermarks of its agents, by (agent, epoch).
    watermarks: HashMap<(Arc<str>, u64), u64>,
    /// When the live lane last brought this writer events.
    live_at: Option<Instant>,
    /// The last group was the live lane's: the backlog's turn.
    backlog_turn: bool,
    /// Where written backlog groups wait for the WAL's fsync.
    unsynced: std::sync::mpsc::SyncSender<Unsynced>,
    /// Syncs that failed (see [`sync_groups`]), and how many this writer
    /// has seen: on a new one it forgets the watermarks it holds.
    faults: Arc<AtomicU64>,
    faults_seen: u64,
    /// Asks the folder for a fold (see [`fold_when_asked`]).
    fold: std::sync::mpsc::SyncSender<()>,
}

/// Groups a writer may have written and not seen fsync'd yet, per partition.
const UNSYNCED_GROUPS: usize = 4;

/// A group written to the store without an fsync, to answer once the WAL
/// is synced.
struct Unsynced {
    planned: Vec<Planned>,
    live: Vec<JoinedEvent>,
    /// When its commit began.
    started: Instant,
    /// The store's generation it was written to (`Store::sync_wal`).
    generation: u64,
}

/// A share, after the watermark check.
struct Planned {
    reply: oneshot::Sender<Result<CommitOutcome, CommitError>>,
    outcome: Result<CommitOutcome, CommitError>,
    /// The share's epoch, and whether it came on the live lane.
    epoch: u64,
    live: bool,
    /// Cluster mode: the share's stream sequence (0: none), the outbox
    /// entry its stored events go to.
    stream_seq: u64,
}

/// The det_oid of a valid event.
fn det_oid_of(ev: &Incoming) -> Option<i64> {
    match ev {
        Incoming::Valid(e) => e.detection.as_ref().and_then(|d| d.detection_oid),
        Incoming::Invalid { .. } => None,
    }
}

impl Writer {
    fn new(
        ctx: Arc<WriterContext>,
        partition: usize,
        unsynced: std::sync::mpsc::SyncSender<Unsynced>,
        faults: Arc<AtomicU64>,
        fold: std::sync::mpsc::SyncSender<()>,
    ) -> Self {
        Self {
            ctx,
            partition,
            watermarks: HashMap::default(),
            live_at: None,
            backlog_turn: false,
            unsynced,
            faults,
            faults_seen: 0,
            fold,
        }
    }

    /// Commits groups until both queues are closed and empty: the live
    /// shares queued, in a group of their own, before the backlog's (which
    /// has the next turn), backlog shares up to `max_group_events` (a
    /// sixteenth while the live lane is in use).
    fn run(mut self, mut rx: mpsc::Receiver<Share>, mut live_rx: mpsc::Receiver<Share>) {
        while let Some(group) = self.next_group(&mut rx, &mut live_rx) {
            self.commit(group);
        }
    }

    /// The next group to commit (waiting for one); `None` once both queues
    /// are closed and empty.
    fn next_group(
        &mut self,
        rx: &mut mpsc::Receiver<Share>,
        live_rx: &mut mpsc::Receiver<Share>,
    ) -> Option<Vec<Share>> {
        // After a group of live shares the backlog has its turn: a flood on
        // the live lane slows the backlog, never stops it.
        let turn = if std::mem::take(&mut self.backlog_turn) {
            rx.try_recv().ok()
        } else {
            None
        };
        let first = turn.or_else(|| {
            futures::executor::block_on(async {
                tokio::select! {
                    biased;
                    Some(s) = live_rx.recv() => Some(s),
                    Some(s) = rx.recv() => Some(s),
                    else => None,
                }
            })
        })?;
        let mut n = first.events.len();
        let live = first.live;
        let mut group = vec![first];
        let now = Instant::now();
        if live {
            // Live shares are committed in a group of their own: what holds
            // them up is the group being committed when they came, not also
            // a share of the backlog in theirs.
            while let Ok(r) = live_rx.try_recv() {
                group.push(r);
            }
            self.live_at = Some(now);
            self.backlog_turn = true;
            return Some(group);
        }
        // While the live lane is in use a group takes little of the backlog,
        // so that a live share coming during its commit waits for little.
        let cap = if self
            .live_at
            .is_some_and(|t| now.duration_since(t) < LIVE_RECENT)
        {
            (self.ctx.max_group_events / LIVE_GROUP_SHARE).max(1)
        } else {
            self.ctx.max_group_events
        };
        while n < cap {
            match rx.try_recv() {
                Ok(r) => {
                    n += r.events.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        Some(group)
    }

    fn watermark(&mut self, agent: &Arc<str>, epoch: u64) -> Result<u64, CommitError> {
        if let Some(w) = self.watermarks.get(&(agent.clone(), epoch)) {
            return Ok(*w);
        }
        let (w, _) = self
            .ctx
            .store
            .partition_watermark(agent, epoch, self.partition)
            .map_err(|e| CommitError::Store(e.to_string()))?;
        self.watermarks.insert((agent.clone(), epoch), w);
        Ok(w)
    }

    fn commit(&mut self, group: Vec<Share>) {
        let started = Instant::now();
        // A sync failed since the last group: the watermarks held may be of
        // groups that were refused, not made durable. Read them again.
        let faults = self.faults.load(Ordering::SeqCst);
        if faults != self.faults_seen {
            self.faults_seen = faults;
            self.watermarks.clear();
        }
        let ctx = self.ctx.clone();
        let now = sightline_proto::now_ms();
        // (agent, epoch) -> (new watermark, digest of its event; 0: unchanged).
        let mut staged: HashMap<(Arc<str>, u64), (u64, u64)> = HashMap::default();
        let mut planned = Vec::with_capacity(group.len());
        // (index into planned, event) for events past the watermark.
        // Sized for the whole group up front, as are the commit's and the
        // hub's lists below: grown by doubling, these lists were copied and
        // their fresh pages faulted in again for every large group.
        let mut fresh: Vec<(usize, Arc<str>, Incoming)> =
            Vec::with_capacity(group.iter().map(|r| r.events.len()).sum());
        let stream_seq = group.iter().map(|s| s.stream_seq).max().unwrap_or(0);
        if let Some(first) = group.first() {
            let h = ctx.metrics.writer_queue(first.live);
            for req in &group {
                h.observe(started.duration_since(req.queued).as_secs_f64());
            }
        }
        for req in group {
            let key = (req.agent.clone(), req.epoch);
            let wm = match staged.get(&key) {
                Some((w, _)) => Ok(*w),
                None => self.watermark(&req.agent, req.epoch),
            };
            if req.live {
                let idx = planned.len();
                if let Ok(wm) = wm {
                    for ev in req.events {
                        let (Some(seq), Some(oid)) = (seq_of(&ev), det_oid_of(&ev)) else {
                            continue;
                        };
                        if seq > wm && oid != 0 {
                            fresh.push((idx, req.agent.clone(), ev));
                        }
                    }
                }
                planned.push(Planned {
                    reply: req.reply,
                    outcome: wm.map(|wm| CommitOutcome {
                        committed_through: wm,
                        ..Default::default()
                    }),
                    epoch: req.epoch,
                    live: true,
                    stream_seq: req.stream_seq,
                });
                continue;
            }
            let outcome = wm.and_then(|wm| {
                if req.count == 0 {
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
                let last = req.first_seq + req.count - 1;
                let idx = planned.len();
                let mut dup_transport = 0;
                for ev in req.events {
                    if seq_of(&ev).is_some_and(|s| s <= wm) {
                        dup_transport += 1;
                        continue;
                    }
                    fresh.push((idx, req.agent.clone(), ev));
                }
                if last > wm {
                    staged.insert(key.clone(), (last, req.last_digest));
                }
                Ok(CommitOutcome {
                    committed_through: last.max(wm),
                    dup_transport,
                    ..Default::default()
                })
            });
            planned.push(Planned {
                reply: req.reply,
                outcome,
                epoch: req.epoch,
                live: false,
                stream_seq: req.stream_seq,
            });
        }

        // Semantic dedup: every det_oid of this partition goes through this
        // writer alone, so the lookup and the write cannot race.
        let mut oids: Vec<i64> = fresh
            .iter()
            .filter_map(|(_, _, ev)| match ev {
                Incoming::Valid(e) => e.detection.as_ref().and_then(|d| d.detection_oid),
                Incoming::Invalid { .. } => None,
            })
            .collect();
        oids.sort_unstable();
        oids.dedup();
        let result = self.build_and_write(now, &oids, fresh, &mut planned, &staged, stream_seq);

        let (live, generation) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the agents will resend");
                refuse(planned, CommitError::Store(e.to_string()));
                return;
            }
        };
        for (k, (w, _)) in staged {
            self.watermarks.insert(k, w);
        }
        let group = Unsynced {
            planned,
            live,
            started,
            generation,
        };
        if group.planned.iter().all(|p| p.live) {
            // Nothing in it is acknowledged: out at once.
            answer(&ctx, group);
        } else if let Err(std::sync::mpsc::SendError(group)) = self.unsynced.send(group) {
            refuse_unsynced(group, "the WAL sync thread stopped");
        }
    }

    /// Fills and writes the WriteBatch; returns the joined events for live
    /// subscribers (empty when nobody listens).
    fn build_and_write(
        &self,
        now: i64,
        oids: &[i64],
        fresh: Vec<(usize, Arc<str>, Incoming)>,
        planned: &mut [Planned],
        staged: &HashMap<(Arc<str>, u64), (u64, u64)>,
        stream_seq: u64,
    ) -> Result<(Vec<JoinedEvent>, u64), crate::store::StoreError> {
        let ctx = &*self.ctx;
        let store = &ctx.store;
        // det_oid -> the camera it belongs to (None: stored by an older
        // version that did not record it) and the live lane's tag, for what
        // is stored and what this commit stores.
        let mut owners: HashMap<i64, (Option<i64>, Option<u64>)> = oids
            .iter()
            .zip(store.stored_dets(oids)?)
            .filter_map(|(o, det)| det.map(|d| (*o, (d.camera, d.live_tag))))
            .collect();
        let table = ctx.locations.current();
        let want_live = ctx.hub.has_subscribers();
        let mut commit = store.begin(now)?;
        commit.reserve(fresh.len());
        let mut live = Vec::with_capacity(if want_live { fresh.len() } else { 0 });
        let (mut n_stored, mut n_sem, mut n_rej, mut n_unmatched, mut n_transport) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for (idx, agent, ev) in fresh {
            let (epoch, lane_live, share) = (
                planned[idx].epoch,
                planned[idx].live,
                planned[idx].stream_seq,
            );
            let Ok(outcome) = planned[idx].outcome.as_mut() else {
                continue;
            };
            if lane_live {
                // Only a new det_oid is stored from the live lane; a duplicate
                // or a conflict waits for the backlog to say so.
                let Incoming::Valid(e) = &ev else { continue };
                let Some(d) = e.detection.as_ref() else {
                    continue;
                };
                let oid = d.detection_oid.unwrap_or_default();
                if owners.contains_key(&oid) {
                    continue;
                }
            }
            mark_received(&mut commit, &ev);
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
                    q.put(&mut commit, now, &agent, outcome);
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
                    let tag = lane_live.then(|| keys::live_tag(&agent, epoch, seq));
                    match owners.get(&oid) {
                        None => {
                            owners.insert(oid, (Some(d.video_camera_oid), tag));
                        }
                        Some((Some(cam), _)) if *cam != d.video_camera_oid => {
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
                            q.put(&mut commit, now, &agent, outcome);
                            n_rej += 1;
                            ctx.metrics.det_oid_conflicts.inc();
                            continue;
                        }
                        // The backlog's copy of an event the live lane stored.
                        Some((_, Some(t))) if *t == keys::live_tag(&agent, epoch, seq) => {
                            outcome.delivered_live += 1;
                            continue;
                        }
                        Some(_) => {
                            outcome.dup_semantic += 1;
                            n_sem += 1;
                            continue;
                        }
                    }
                    let loc = d.geographical_location_oid;
                    let matched = table.get(loc).is_some();
                    if !matched {
                        n_unmatched += 1;
                    }
                    commit.add_aggregate(d.timestamp_detected, loc, &d.item_name);
                    let joined = JoinedEvent {
                        detection: Some(d),
                        agent_id: agent.to_string(),
                        seq,
                        accepted_ms,
                        committed_ms: now,
                        location_matched: matched,
                        location: None,
                        media: Vec::new(),
                        stream_seq: 0,
                    };
                    commit.put_event(&joined, tag);
                    if share > 0 {
                        commit.to_outbox(share, &joined);
                    }
                    outcome.stored += 1;
                    n_stored += 1;
                    // Without its Dataset B row: each reader of the hub
                    // joins what it uses (api::live).
                    if want_live {
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
        for (name, v) in [
            (counter::STORED, n_stored),
            (counter::DUP_SEMANTIC, n_sem),
            (counter::DUP_TRANSPORT, n_transport),
            (counter::REJECTED, n_rej),
            (counter::UNMATCHED, n_unmatched),
        ] {
            commit.count(name, v);
        }
        for ((agent, epoch), (wm, digest)) in staged {
            commit.set_watermark(agent, *epoch, self.partition, *wm, *digest);
        }
        if stream_seq > 0 {
            commit.set_stream_seq(stream_seq);
        }
        if n_unmatched > 0 {
            ctx.metrics.unmatched.inc_by(n_unmatched);
        }
        // Not fsync'd here: the syncer fsyncs the WAL for every group
        // written meanwhile, then answers them (`sync_groups`). A live
        // group is not answered at all: its events come again with the
        // backlog.
        commit.without_fsync();
        let w = store.commit(commit)?;
        ctx.metrics.store.write_seconds.observe(w.seconds);
        if w.fold_due || w.ingest_due {
            // Full: a fold (or ingest) is asked for already, and takes this
            // commit's entries too.
            let _ = self.fold.try_send(());
        }
        Ok((live, w.generation))
    }
}

/// Answers a group's shares and pushes its events to live subscribers:
/// once the WAL holding it is fsync'd, or at once for the live lane's.
fn answer(ctx: &WriterContext, group: Unsynced) {
    let Unsynced {
        planned,
        live,
        started,
        ..
    } = group;
    let m = &ctx.metrics;
    let mut total = 0;
    for p in planned {
        if p.live {
            if let Ok(o) = &p.outcome {
                total += o.stored;
                m.ingested.inc_by(o.stored);
                m.live_lane_stored.inc_by(o.stored);
            }
            continue;
        }
        if let Ok(o) = &p.outcome {
            m.delivered_live.inc_by(o.delivered_live);
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
    if !live.is_empty() {
        let (h, now) = (
            m.hop(crate::metrics::hop::COMMITTED_TO_LIVE),
            sightline_proto::now_ms(),
        );
        for e in &live {
            Metrics::observe_hop_ms(&h, now - e.committed_ms);
        }
    }
    ctx.hub.publish(live);
}

/// Answers every share of a group with `err`: its agents send it again.
fn refuse(planned: Vec<Planned>, err: CommitError) {
    for p in planned {
        let _ = p.reply.send(Err(err.clone()));
    }
}

/// Refuses a group written but not made durable.
fn refuse_unsynced(group: Unsynced, why: &str) {
    tracing::error!(
        error = why,
        "a commit group was written but not fsync'd; the agents will resend"
    );
    refuse(
        group.planned,
        CommitError::Store(format!("not made durable: {why}")),
    );
}

/// The syncer: takes every group the writers wrote since its last fsync
/// (group commit across partitions), fsyncs the WAL once, and answers them
/// in the order they were written. The writers go on with their next groups
/// meanwhile, so neither the backlog nor the live lane waits for the disk
/// in a writer. A failed sync refuses every group waiting for it (and the
/// writers forget their watermarks, see `Writer::commit`).
fn sync_groups(ctx: &WriterContext, rx: std::sync::mpsc::Receiver<Unsynced>, faults: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut round = vec![first];
        while let Ok(g) = rx.try_recv() {
            round.push(g);
        }
        let started = Instant::now();
        let synced = ctx.store.sync_wal();
        ctx.metrics
            .store
            .wal_sync_seconds
            .observe(started.elapsed().as_secs_f64());
        let durable = |g: &Unsynced| matches!(synced, Ok(gen) if gen == g.generation);
        if !round.iter().all(durable) {
            faults.fetch_add(1, Ordering::SeqCst);
        }
        for g in round {
            if durable(&g) {
                answer(ctx, g);
            } else {
                let why = match &synced {
                    Err(e) => e.to_string(),
                    Ok(_) => {
                        "the store was reopened after a disk fault before it was synced".into()
                    }
                };
                refuse_unsynced(g, &why);
            }
        }
    }
}

/// The folder: folds the commits' pending aggregate entries
/// (`store::pending`) each time a writer's commit says a fold is due, so
/// that no commit waits for one (a fold on the writer that crossed the
/// trigger held up that writer's next commits; BENCHMARKS.md, thirty-fourth
/// session); and ingests the `det` entries held in memory when enough are
/// (`store::det_buffer`). Ends when the writers are gone.
fn fold_when_asked(ctx: &WriterContext, rx: std::sync::mpsc::Receiver<()>) {
    while rx.recv().is_ok() {
        // The `det` entries in memory into `det` (`store::det_buffer`),
        // when enough are.
        let started = Instant::now();
        match ctx.store.ingest_dets_if_due() {
            Ok(0) => {}
            Ok(n) => {
                let seconds = started.elapsed().as_secs_f64();
                ctx.metrics.store.det_ingest_seconds.observe(seconds);
                tracing::debug!(entries = n, seconds, "det entries ingested");
            }
            // They stay in memory and in the det log for the next one.
            Err(e) => {
                tracing::warn!(error = %e, "ingesting the det entries failed; they stay in memory and in the det log")
            }
        }
        let started = Instant::now();
        match ctx.store.fold_if_due() {
            Ok(0) => {}
            Ok(_) => ctx
                .metrics
                .store
                .fold_seconds
                .observe(started.elapsed().as_secs_f64()),
            // Its entries stay pending (read as such) for the next fold;
            // the disk's fault, if that is why, is the store's own.
            Err(e) => {
                tracing::warn!(error = %e, "folding the pending aggregates failed; they stay pending")
            }
        }
    }
}

/// Marks the event's camera_seq as received: whatever the commit does with
/// it, it reached the core (`store::received`). Not for an event refused for
/// a camera that is not its agent's: that camera's numbers are not this
/// agent's to fill.
fn mark_received(commit: &mut CommitBatch, ev: &Incoming) {
    let d = match ev {
        Incoming::Valid(e) => e.detection.as_ref(),
        Incoming::Invalid {
            event: Some(e),
            code,
            ..
        } if *code != "PERMISSION_DENIED" => e.detection.as_ref(),
        Incoming::Invalid { .. } => None,
    };
    if let Some(d) = d.filter(|d| d.video_camera_oid > 0) {
        commit.mark_received(d);
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
        metrics: Arc<Metrics>,
        pipeline: Pipeline,
    }

    fn rig() -> Rig {
        rig_of(2, 8, 10_000)
    }

    /// A pipeline of `partitions` writers, each queueing `queue` shares and
    /// committing groups of at most `max_group_events`.
    fn rig_of(partitions: usize, queue: usize, max_group_events: usize) -> Rig {
        let memory = crate::store::StoreMemory {
            cache_bytes: 8 << 20,
            memtable_bytes: crate::store::DEFAULT_MEMTABLE_BYTES,
        };
        rig_with(memory, partitions, queue, max_group_events)
    }

    /// As [`rig_of`], on a store of `memory`.
    fn rig_with(
        memory: crate::store::StoreMemory,
        partitions: usize,
        queue: usize,
        max_group_events: usize,
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_with(&dir.path().join("db"), false, memory).unwrap());
        let metrics = Arc::new(Metrics::new());
        let mut ctx = WriterContext::for_tests(store.clone(), metrics.clone());
        Arc::get_mut(&mut ctx).unwrap().max_group_events = max_group_events;
        Rig {
            _dir: dir,
            store,
            metrics,
            pipeline: Pipeline::start(ctx, partitions, queue).unwrap(),
        }
    }

    /// Queues agent "a"'s (epoch 7) backlog shares `shares`, `n` events
    /// each (seq = det_oid, from 1 + share × n), detected at `ts`; their
    /// replies.
    async fn submit_backlog(
        pipeline: &Pipeline,
        shares: std::ops::Range<u64>,
        n: u64,
        ts: i64,
    ) -> Vec<oneshot::Receiver<Result<CommitOutcome, CommitError>>> {
        let mut replies = Vec::new();
        for b in shares {
            let (reply, rx) = oneshot::channel();
            let first = 1 + b * n;
            pipeline
                .submit(CommitRequest {
                    agent: "a".into(),
                    epoch: 7,
                    first_seq: first,
                    events: (first..first + n)
                        .map(|s| event(s, s as i64, 1, ts))
                        .collect(),
                    last_digest: 0,
                    reply,
                })
                .await
                .unwrap();
            replies.push(rx);
        }
        replies
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

    /// Queues events on the live lane and waits until the writers took them
    /// (`stored` events stored in all).
    fn live(rig: &Rig, agent: &str, events: Vec<Incoming>, stored: u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(rig.pipeline.submit_live(agent.into(), 7, events))
            .unwrap();
        let t0 = Instant::now();
        while rig.store.counters().unwrap().stored < stored {
            assert!(t0.elapsed().as_secs() < 5, "the live lane stored nothing");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn a_live_event_is_stored_at_once_and_acknowledged_with_its_backlog_not_twice() {
        let rig = rig();
        let ts = sightline_proto::now_ms();
        // Seqs 5 and 6 come on the live lane while 1..=4 are still on their way.
        live(
            &rig,
            "a",
            vec![event(5, 105, 1, ts), event(6, 106, 1, ts)],
            2,
        );
        assert!(rig.store.get_event(105).unwrap().is_some());
        assert_eq!(
            rig.store.watermark_digest("a", 7).unwrap().0,
            0,
            "the live lane moved the watermark"
        );
        let o = commit(
            &rig,
            "a",
            1,
            (1..=6).map(|s| event(s, 100 + s as i64, 1, ts)).collect(),
            0,
        );
        assert_eq!(o.committed_through, 6);
        assert_eq!((o.stored, o.delivered_live, o.dup_semantic), (4, 2, 0));
        let c = rig.store.counters().unwrap();
        assert_eq!((c.stored, c.dup_semantic, c.dup_transport), (6, 0, 0));
        // Resent after that: below the watermark, as ever.
        let o = commit(
            &rig,
            "a",
            5,
            vec![event(5, 105, 1, ts), event(6, 106, 1, ts)],
            0,
        );
        assert_eq!((o.stored, o.dup_transport, o.delivered_live), (0, 2, 0));
    }

    #[test]
    fn a_live_event_is_known_as_delivered_after_a_restart_and_nothing_else_is() {
        let mut rig = rig();
        let ts = sightline_proto::now_ms();
        // A backlog of 1..=100 000 behind; the live lane stores seqs 99 999
        // and 100 000, far more than any writer could have remembered.
        live(
            &rig,
            "a",
            vec![event(99_999, 7, 1, ts), event(100_000, 8, 1, ts)],
            2,
        );
        // The core restarts before the backlog reaches them.
        let ctx = WriterContext::for_tests(rig.store.clone(), Arc::new(Metrics::new()));
        rig.pipeline = Pipeline::start(ctx, 2, 8).unwrap();
        commit(
            &rig,
            "a",
            1,
            (1..=99_997)
                .map(|s| event(s, 1_000_000 + s as i64, 1, ts))
                .collect(),
            0,
        );
        // Seq 99 998 brings det_oid 7 too (a retry upstream: a duplicate);
        // 99 999 is the live event's own copy; 100 000 is another event than
        // the lane stored at that seq (its buffer was restored): stored.
        let o = commit(
            &rig,
            "a",
            99_998,
            vec![
                event(99_998, 7, 1, ts),
                event(99_999, 7, 1, ts),
                event(100_000, 9, 1, ts),
            ],
            0,
        );
        assert_eq!(
            (o.stored, o.delivered_live, o.dup_semantic),
            (1, 1, 1),
            "{o:?}"
        );
        assert!(rig.store.get_event(9).unwrap().is_some());
        // Another agent's event with the live event's det_oid is a duplicate.
        let o = commit(&rig, "b", 1, vec![event(99_999, 7, 1, ts)], 0);
        assert_eq!((o.stored, o.delivered_live, o.dup_semantic), (0, 0, 1));
    }

    #[test]
    fn the_live_lane_stores_only_new_det_oids_and_leaves_the_rest_to_the_backlog() {
        let rig = rig();
        let ts = sightline_proto::now_ms();
        commit(&rig, "a", 1, vec![event(1, 1, 1, ts)], 0);
        // A duplicate of det_oid 1 (same camera), another camera's det_oid 1,
        // one below the watermark, an invalid event, and one new event.
        live(
            &rig,
            "a",
            vec![
                event(1, 50, 1, ts),
                event(3, 1, 1, ts),
                event(4, 1, 2, ts),
                Incoming::Invalid {
                    event: None,
                    raw: Bytes::new(),
                    field: "event".into(),
                    reason: "junk".into(),
                    code: "INVALID_ARGUMENT",
                },
                event(5, 5, 1, ts),
            ],
            2,
        );
        let c = rig.store.counters().unwrap();
        assert_eq!((c.stored, c.dup_semantic, c.rejected), (2, 0, 0));
        assert!(
            rig.store.get_event(50).unwrap().is_none(),
            "a seq below the watermark was stored"
        );
        // The backlog counts, quarantines and acknowledges each once.
        let o = commit(
            &rig,
            "a",
            2,
            vec![
                event(2, 2, 1, ts),
                event(3, 1, 1, ts),
                event(4, 1, 2, ts),
                event(5, 5, 1, ts),
            ],
            0,
        );
        assert_eq!(
            (o.stored, o.dup_semantic, o.rejected.len(), o.delivered_live),
            (1, 1, 1, 1)
        );
        let c = rig.store.counters().unwrap();
        assert_eq!((c.stored, c.dup_semantic, c.rejected), (3, 1, 1));
    }

    #[test]
    fn a_live_duplicate_or_conflict_committed_beside_its_backlog_is_still_counted_or_quarantined() {
        // One partition kept busy by a large batch, so that the live share
        // and the backlog batch that brings the same seqs are committed in
        // one group (or, if the writer was quick, one after the other: the
        // counts must be the same either way).
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false, 8 << 20).unwrap());
        let pipeline = Pipeline::start(
            WriterContext::for_tests(store.clone(), Arc::new(Metrics::new())),
            1,
            8,
        )
        .unwrap();
        let ts = sightline_proto::now_ms();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let n = 20_000u64;
        let (big, tail) = rt.block_on(async {
            let send = |first_seq: u64, events: Vec<Incoming>| {
                let (reply, rx) = oneshot::channel();
                let req = CommitRequest {
                    agent: "a".into(),
                    epoch: 7,
                    first_seq,
                    events,
                    last_digest: 0,
                    reply,
                };
                (req, rx)
            };
            // Seqs 1..=n; det_oid 901 belongs to camera 1 from here on.
            let mut first: Vec<Incoming> =
                (1..n).map(|s| event(s, s as i64 + 10_000, 1, ts)).collect();
            first.push(event(n, 901, 1, ts));
            let (req, big) = send(1, first);
            pipeline.submit(req).await.unwrap();
            // Let the writer start on it (its commit takes far longer).
            std::thread::sleep(std::time::Duration::from_millis(50));
            // n+1: det_oid 900; n+2: its upstream duplicate; n+3: camera 2
            // claiming det_oid 901. The last two also come on the live lane.
            let (req, tail) = send(
                n + 1,
                vec![
                    event(n + 1, 900, 1, ts),
                    event(n + 2, 900, 1, ts),
                    event(n + 3, 901, 2, ts),
                ],
            );
            pipeline
                .submit_live(
                    "a".into(),
                    7,
                    vec![event(n + 2, 900, 1, ts), event(n + 3, 901, 2, ts)],
                )
                .await
                .unwrap();
            pipeline.submit(req).await.unwrap();
            (big.await.unwrap().unwrap(), tail.await.unwrap().unwrap())
        });
        assert_eq!(big.stored, n);
        assert_eq!(tail.committed_through, n + 3);
        assert_eq!(
            (
                tail.stored + tail.delivered_live,
                tail.dup_semantic,
                tail.rejected.len()
            ),
            (1, 1, 1),
            "{tail:?}"
        );
        assert_eq!(tail.rejected[0].code, CONFLICT);
        let c = store.counters().unwrap();
        assert_eq!((c.stored, c.dup_semantic, c.rejected), (n + 1, 1, 1));
    }

    #[test]
    fn a_live_event_waits_for_no_backlog_queued_before_it() {
        // One partition whose backlog queue holds 64 shares of 2,000 events;
        // the live share queued after them is committed in the next group.
        let Rig {
            _dir,
            store,
            pipeline,
            ..
        } = rig_of(1, 64, 2_000);
        let ts = sightline_proto::now_ms();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let n = 2_000u64;
        let replies: Vec<_> = rt.block_on(async {
            let replies = submit_backlog(&pipeline, 0..64, n, ts).await;
            pipeline
                .submit_live("b".into(), 7, vec![event(1, -1, 9, ts)])
                .await
                .unwrap();
            replies
        });
        while store.get_event(-1).unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stored_then = store.counters().unwrap().stored;
        assert!(
            stored_then < 64 * n / 2,
            "the live event waited for {stored_then} backlog events"
        );
        rt.block_on(async {
            for rx in replies {
                rx.await.unwrap().unwrap();
            }
        });
    }

    /// The groups committed so far: how many, and how many took more than
    /// 1,000 events (from the `commit_events` histogram).
    fn groups_over_1000(metrics: &Metrics) -> (u64, u64) {
        let text = metrics.encode();
        let value = |prefix: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {prefix} in the metrics")) as u64
        };
        let count = value("sightline_commit_events_count ");
        (
            count,
            count - value("sightline_commit_events_bucket{le=\"1000.0\"} "),
        )
    }

    #[test]
    fn the_det_oids_held_in_memory_go_to_the_det_index_on_the_folders_thread_timed() {
        // The smallest memtables: a table of the det buffer holds 28,672
        // det_oids (`store::det_buffer`).
        let memory = crate::store::StoreMemory {
            cache_bytes: 8 << 20,
            memtable_bytes: 8 << 20,
        };
        let rig = rig_with(memory, 2, 8, 10_000);
        let ts = sightline_proto::now_ms();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (shares, n) = (40u64, 1_000u64);
        rt.block_on(async {
            for rx in submit_backlog(&rig.pipeline, 0..shares, n, ts).await {
                rx.await.unwrap().unwrap();
            }
        });
        let ingests = || {
            rig.metrics
                .encode()
                .lines()
                .find_map(|l| l.strip_prefix("sightline_store_det_ingest_seconds_count "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .expect("the det ingest histogram") as u64
        };
        let t0 = Instant::now();
        while ingests() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "no ingest in 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        // In memory or in `det`, every one is found, once.
        let oids: Vec<i64> = (1..=(shares * n) as i64).collect();
        let found = rig.store.stored_dets(&oids).unwrap();
        assert!(found.iter().all(Option::is_some));
        let engine = rig.store.engine_stats().unwrap();
        assert!(
            engine.det_buffer_entries < shares * n,
            "{} still in memory: some went to det",
            engine.det_buffer_entries
        );
    }

    #[test]
    fn the_writers_leave_folds_to_the_folder_and_the_counts_stay_exact_throughout() {
        // One partition, one share of 10 events a group: each commit writes
        // a pending aggregate entry, and every 64th says a fold is due.
        let rig = rig_of(1, 64, 10);
        let ts = sightline_proto::now_ms();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let total = |store: &Store| {
            let mut n = 0;
            store
                .for_each_agg(
                    crate::store::keys::Bucket::Hour,
                    i64::MIN,
                    i64::MAX,
                    |_, _, _, c| n += c,
                )
                .unwrap();
            n
        };
        let shares = 3 * crate::store::pending::FOLD_AFTER as u64;
        for round in 0..shares / 16 {
            rt.block_on(async {
                let from = round * 16;
                for rx in submit_backlog(&rig.pipeline, from..from + 16, 10, ts).await {
                    rx.await.unwrap().unwrap();
                }
            });
            // Counted once whether pending, being folded or folded.
            assert_eq!(total(&rig.store), (round + 1) * 16 * 10);
        }
        // The folds ran on the folder's thread, which the metric times.
        let folds = || {
            rig.metrics
                .encode()
                .lines()
                .find_map(|l| l.strip_prefix("sightline_store_fold_seconds_count "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .expect("the fold histogram") as u64
        };
        let t0 = Instant::now();
        while folds() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "no fold in 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(total(&rig.store), shares * 10);
        // Shut down with folds asked for: the folder is joined, the store let go.
        let Rig {
            store, pipeline, ..
        } = rig;
        drop(pipeline);
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "something still holds the store"
        );
        assert_eq!(total(&store), shares * 10);
    }

    #[test]
    fn while_the_live_lane_is_in_use_no_group_takes_more_than_its_live_share_of_the_backlog() {
        // One partition, groups of at most 2,000 events, the backlog in
        // shares of 500: while the live lane is in use every group takes one
        // share (more than its sixteenth, 125), so that a live batch coming
        // during a commit waits for 500 events, not 2,000.
        let Rig {
            _dir,
            store,
            metrics,
            pipeline,
        } = rig_of(1, 64, 2_000);
        let ts = sightline_proto::now_ms();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let backlog = |from_share: u64, shares: u64| {
            rt.block_on(async {
                let replies =
                    submit_backlog(&pipeline, from_share..from_share + shares, 500, ts).await;
                for rx in replies {
                    rx.await.unwrap().unwrap();
                }
            })
        };
        rt.block_on(pipeline.submit_live("b".into(), 7, vec![event(1, -1, 9, ts)]))
            .unwrap();
        while store.get_event(-1).unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        backlog(0, 32);
        let (groups, over) = groups_over_1000(&metrics);
        assert_eq!(
            over, 0,
            "{over} of {groups} groups took more than 1,000 events while the live lane was in use"
        );
        // Once the live lane has been quiet for a while, groups are full again.
        std::thread::sleep(LIVE_RECENT + Duration::from_millis(100));
        backlog(32, 32);
        let (_, over) = groups_over_1000(&metrics);
        assert!(
            over > 0,
            "with the live lane quiet no group took more than 1,000 events"
        );
    }

    #[test]
    fn a_flood_on_the_live_lane_slows_the_backlog_never_stops_it() {
        // The writer's queues as it sees them, the live one never empty:
        // every other group is the backlog's.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false, 8 << 20).unwrap());
        let (unsynced, _to_sync) = std::sync::mpsc::sync_channel(1);
        let mut writer = Writer::new(
            WriterContext::for_tests(store, Arc::new(Metrics::new())),
            0,
            unsynced,
            Arc::new(AtomicU64::new(0)),
            std::sync::mpsc::sync_channel(1).0,
        );
        let (tx, mut rx) = mpsc::channel(64);
        let (live_tx, mut live_rx) = mpsc::channel(64);
        // A backlog share fills a group while the live lane is in use
        // (more than a sixteenth of the test context's 10,000).
        let share = |live: bool| Share {
            agent: "a".into(),
            epoch: 7,
            first_seq: 1,
            count: 1,
            events: (0..if live { 1 } else { 2_500 })
                .map(|_| event(1, 1, 1, 0))
                .collect(),
            last_digest: 0,
            live,
            stream_seq: 0,
            reply: oneshot::channel().0,
            queued: Instant::now(),
        };
        for _ in 0..8 {
            tx.try_send(share(false)).unwrap();
        }
        let mut kinds = String::new();
        for _ in 0..8 {
            for _ in 0..4 {
                live_tx.try_send(share(true)).unwrap();
            }
            let group = writer.next_group(&mut rx, &mut live_rx).unwrap();
            assert!(
                group.iter().all(|s| s.live == group[0].live),
                "a group mixed the lanes"
            );
            kinds.push(if group[0].live { 'L' } else { 'B' });
        }
        assert_eq!(kinds, "LBLBLBLB", "groups taken (L: live, B: backlog)");
    }

    #[test]
    fn a_group_is_answered_only_after_the_wal_sync_and_refused_when_the_sync_does_not_cover_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), true, 8 << 20).unwrap());
        let ctx = WriterContext::for_tests(store.clone(), Arc::new(Metrics::new()));
        let (unsynced, to_sync) = std::sync::mpsc::sync_channel(8);
        let faults = Arc::new(AtomicU64::new(0));
        let mut writer = Writer::new(
            ctx.clone(),
            0,
            unsynced,
            faults.clone(),
            std::sync::mpsc::sync_channel(1).0,
        );
        let ts = sightline_proto::now_ms();
        let share = |agent: &str, first: u64| {
            let (reply, rx) = oneshot::channel();
            let share = Share {
                agent: agent.into(),
                epoch: 7,
                first_seq: first,
                count: 2,
                events: vec![
                    event(first, first as i64 * 10, 1, ts),
                    event(first + 1, first as i64 * 10 + 1, 1, ts),
                ],
                last_digest: 0,
                live: false,
                stream_seq: 0,
                reply,
                queued: Instant::now(),
            };
            (share, rx)
        };
        // Written, then waiting for the syncer: not answered yet, while the
        // writer is free for its next group.
        let (s1, mut r1) = share("a", 1);
        writer.commit(vec![s1]);
        assert!(r1.try_recv().is_err(), "answered before the WAL was synced");
        assert_eq!(store.watermark("a", 7).unwrap(), 2, "written at once");
        // The syncer fsyncs and answers it.
        let g = to_sync.try_recv().expect("the group waits for the syncer");
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        tx.send(g).unwrap();
        drop(tx);
        sync_groups(&ctx, rx, &faults);
        assert_eq!(r1.try_recv().unwrap().unwrap().committed_through, 2);
        assert_eq!(faults.load(Ordering::SeqCst), 0);

        // A group written before the store was reopened (a disk fault) is
        // not covered by a sync after it: refused, and the writer reads its
        // watermarks again before its next group.
        let (s2, mut r2) = share("a", 3);
        writer.commit(vec![s2]);
        assert!(writer.watermarks.contains_key(&(Arc::from("a"), 7)));
        store.simulate_reopen();
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        tx.send(to_sync.try_recv().unwrap()).unwrap();
        drop(tx);
        sync_groups(&ctx, rx, &faults);
        let refused = r2.try_recv().unwrap().unwrap_err().to_string();
        assert!(refused.contains("reopened"), "{refused}");
        assert_eq!(faults.load(Ordering::SeqCst), 1);
        let (s3, _r3) = share("b", 1);
        writer.commit(vec![s3]);
        assert!(
            !writer.watermarks.contains_key(&(Arc::from("a"), 7)),
            "the watermark of a refused group was kept"
        );
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

    /// `n` events from seq `first`, det_oids `first * 1000 + i`, camera 1.
    fn run(first: u64, n: u64, ts: i64) -> Vec<Incoming> {
        (0..n)
            .map(|i| event(first + i, (first * 1000 + i) as i64, 1, ts))
            .collect()
    }

    fn det_of(ev: &Incoming) -> i64 {
        match ev {
            Incoming::Valid(e) => e.detection.as_ref().unwrap().detection_oid.unwrap(),
            Incoming::Invalid { .. } => unreachable!(),
        }
    }

    #[test]
    fn a_batch_split_over_the_partitions_is_acked_once_all_committed() {
        let rig = rig();
        let ts = sightline_proto::now_ms();
        let o = commit(&rig, "a", 1, run(1, 200, ts), 0);
        assert_eq!((o.committed_through, o.stored), (200, 200));
        // Both partitions hold part of it, and each keeps the watermark.
        for p in 0..2 {
            assert_eq!(rig.store.partition_watermark("a", 7, p).unwrap().0, 200);
        }
        assert_eq!(rig.store.watermark("a", 7).unwrap(), 200);
        // A batch none of whose events hash to a partition still moves its
        // watermark there.
        let d = (1_000_000..)
            .find(|d| keys::partition_of(*d, 2) == 0)
            .unwrap();
        let o = commit(&rig, "a", 201, vec![event(201, d, 1, ts)], 0);
        assert_eq!((o.committed_through, o.stored), (201, 1));
        assert_eq!(rig.store.partition_watermark("a", 7, 1).unwrap().0, 201);
        assert_eq!(rig.store.watermark("a", 7).unwrap(), 201);
    }

    #[test]
    fn a_resend_after_a_crash_between_partitions_is_dropped_where_committed_and_stored_where_not() {
        let rig = rig();
        let ts = sightline_proto::now_ms();
        let batch = run(1, 100, ts);
        let in_p1: Vec<i64> = batch
            .iter()
            .map(det_of)
            .filter(|d| keys::partition_of(*d, 2) == 1)
            .collect();
        // Partition 0 committed its share of seqs 1..=100, partition 1 did not
        // (the core died between the two writes): only partition 0's share.
        let p0: Vec<Incoming> = batch
            .into_iter()
            .filter(|e| keys::partition_of(det_of(e), 2) == 0)
            .collect();
        let p0_n = p0.len() as u64;
        {
            let (reply, _rx) = oneshot::channel();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(rig.pipeline.partitions[0].send(Share {
                agent: "a".into(),
                epoch: 7,
                first_seq: 1,
                count: 100,
                events: p0,
                last_digest: 0,
                live: false,
                stream_seq: 0,
                reply,
                queued: Instant::now(),
            }))
            .map_err(|_| ())
            .unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while rig.store.partition_watermark("a", 7, 0).unwrap().0 < 100 {
            assert!(Instant::now() < deadline, "partition 0 never committed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The agent was never acknowledged: the store says resume from 1.
        assert_eq!(rig.store.watermark("a", 7).unwrap(), 0);
        // It resends the whole batch: partition 0 drops its share by seq,
        // partition 1 stores its own — every event once.
        let o = commit(&rig, "a", 1, run(1, 100, ts), 0);
        assert_eq!(o.committed_through, 100);
        assert_eq!(o.stored, in_p1.len() as u64);
        assert_eq!(o.dup_transport, p0_n);
        assert_eq!(o.dup_semantic, 0);
        let (events, _) = rig.store.list_events(0, 0, None, 1000, "").unwrap();
        assert_eq!(events.len(), 100);
        assert_eq!(rig.store.counters().unwrap().stored, 100);
        assert_eq!(rig.store.watermark("a", 7).unwrap(), 100);
    }

    #[test]
    fn a_gap_in_any_partition_refuses_the_batch_naming_the_seq_to_resume_from() {
        let rig = rig();
        let ts = sightline_proto::now_ms();
        commit(&rig, "a", 1, run(1, 10, ts), 0);
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            agent: "a".into(),
            epoch: 7,
            first_seq: 20,
            events: run(20, 5, ts),
            last_digest: 0,
            reply,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(async {
            rig.pipeline.submit(req).await.unwrap();
            rx.await.unwrap().unwrap_err()
        });
        assert!(
            matches!(
                err,
                CommitError::Gap {
                    expected: 11,
                    got: 20,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(rig.store.watermark("a", 7).unwrap(), 10);
    }

    /// Agent `a`'s events are from camera 1, agent `b`'s from camera 2 and
    /// agent `c`'s from camera 1 too (another host of the same camera): the
    /// event at (agent, seq) is always the same, its det_oid from a small
    /// pool, so that resends, duplicates and conflicts across agents and
    /// partitions are common.
    fn stream_event(agent: usize, seq: u64, pool: &[i64]) -> (i64, i64) {
        let det = pool[(seq as usize * 7 + agent * 3) % pool.len()];
        (det, if agent == 1 { 2 } else { 1 })
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap as Map;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

            /// Whatever mix of next batches, resends overlapping the
            /// watermark and gaps three agents send, over 1 to 3 partitions,
            /// each batch's outcome and the store end as a sequential model
            /// says: an event stored once, a det_oid kept by its first
            /// camera (a duplicate from it, a conflict from another), seqs at
            /// or below the watermark dropped, a gap refused.
            #[test]
            fn the_pipeline_matches_a_sequential_model(
                partitions in 1usize..=3,
                pool in proptest::collection::vec(0i64..1_000_000, 3..40),
                ops in proptest::collection::vec((0usize..3, -4i64..=1, 1u64..=12), 1..30),
            ) {
                let rig = rig_of(partitions, 8, 10_000);
                let ts = sightline_proto::now_ms();
                let names = ["a", "b", "c"];
                let mut wm = [0u64; 3];
                let mut owner: Map<i64, i64> = Map::new();
                let mut stored = 0u64;
                for (agent, offset, len) in ops {
                    let first = (wm[agent] as i64 + 1 + offset).max(1) as u64;
                    let events: Vec<Incoming> = (first..first + len)
                        .map(|seq| {
                            let (det, cam) = stream_event(agent, seq, &pool);
                            event(seq, det, cam, ts)
                        })
                        .collect();
                    let (reply, rx) = oneshot::channel();
                    let req = CommitRequest {
                        agent: names[agent].into(),
                        epoch: 7,
                        first_seq: first,
                        events,
                        last_digest: 0,
                        reply,
                    };
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    let got = rt.block_on(async {
                        rig.pipeline.submit(req).await.unwrap();
                        rx.await.unwrap()
                    });
                    if first > wm[agent] + 1 {
                        prop_assert!(matches!(got, Err(CommitError::Gap { .. })), "{got:?}");
                        continue;
                    }
                    let o = got.unwrap();
                    let (mut transport, mut semantic, mut conflicts, mut new) = (0, 0, 0, 0);
                    for seq in first..first + len {
                        if seq <= wm[agent] {
                            transport += 1;
                            continue;
                        }
                        let (det, cam) = stream_event(agent, seq, &pool);
                        match owner.get(&det) {
                            None => {
                                owner.insert(det, cam);
                                new += 1;
                            }
                            Some(c) if *c == cam => semantic += 1,
                            Some(_) => conflicts += 1,
                        }
                    }
                    wm[agent] = wm[agent].max(first + len - 1);
                    stored += new;
                    prop_assert_eq!(o.committed_through, wm[agent]);
                    prop_assert_eq!((o.stored, o.dup_transport, o.dup_semantic), (new, transport, semantic));
                    prop_assert_eq!(o.rejected.len() as u64, conflicts);
                    prop_assert!(o.rejected.iter().all(|r| r.code == CONFLICT));
                }
                for (i, name) in names.iter().enumerate() {
                    prop_assert_eq!(rig.store.watermark(name, 7).unwrap(), wm[i]);
                }
                let (events, _) = rig.store.list_events(0, 0, None, 1000, "").unwrap();
                prop_assert_eq!(events.len() as u64, stored);
                prop_assert_eq!(rig.store.counters().unwrap().stored, stored);
            }
        }
    }
}
