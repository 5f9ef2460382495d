//! A partition's owner: the embedded partition writer (`dedup::Pipeline`
//! with one partition) over the partition's own store and search index
//! ([`super::partition_dir`]), fed from `sightline.in.<p>` in stream order
//! from the sequence after the last one it committed (kept in the same
//! RocksDB commit: `CommitBatch::set_stream_seq`), so a restart or a move
//! resumes exactly. What it commits (the joined events) goes to
//! `sightline.out.<p>`, in batches (`feed::OutBatch`), from the store's
//! outbox (`store::outbox`, written in the same commit),
//! after the position the subject's last message carries — so what an
//! owner committed but had not published when it died is published by the
//! next owner, once — and fenced by `Nats-Expected-Last-Subject-Sequence`:
//! a stale owner's publish is refused, and it stops owning the partition.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    consumer::{pull::OrderedConfig, DeliverPolicy},
    context::PublishErrorKind,
    message::PublishMessage,
};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    checkpoint::{Handled, Placement},
    feed::{OutBatch, OUT_BATCH_BYTES, OUT_BATCH_EVENTS},
    in_subject,
    nats::{ClusterError, Nats},
    out_subject,
    share::{is_attach, AttachMsg, ShareMsg, ATTACH_KIND, KIND_HEADER},
    IN_STREAM, OUT_STREAM,
};
use crate::{
    api::live::LiveHub,
    dedup::{CommitError, CommitOutcome, CommitRequest, Pipeline, WriterContext},
    enrich::Locations,
    metrics::{Metrics, PartitionLabel},
    search::SearchIndex,
    store::{outbox::Position, Store},
};

/// Shares handed to the writer whose commits are not yet answered, at most.
const INFLIGHT_SHARES: usize = 256;

/// What every owner of a node shares.
#[derive(Clone)]
pub struct OwnerContext {
    pub nats: Nats,
    pub storage: PathBuf,
    pub locations: Arc<Locations>,
    pub metrics: Arc<Metrics>,
    pub max_group_events: usize,
    pub queue_batches: usize,
    pub live_buffer: usize,
    pub search_commit: std::time::Duration,
    pub cache_bytes: usize,
    /// `cluster.checkpoints`: where partitions are checkpointed; `None`: never.
    pub checkpoints: Option<String>,
    pub checkpoint_interval: std::time::Duration,
}

/// The lease an owner applies under: valid while `Instant::now()` is
/// before `valid_until` (ms since `base`), moved by each renewal.
#[derive(Clone)]
pub struct LeaseClock {
    base: Instant,
    valid_until_ms: Arc<AtomicU64>,
    pub revision: Arc<AtomicU64>,
}

impl LeaseClock {
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            valid_until_ms: Arc::new(AtomicU64::new(0)),
            revision: Arc::new(AtomicU64::new(0)),
        }
    }
    /// The lease was (re)written at `at` under `revision`; it holds until `at + hold`.
    pub fn renewed(&self, at: Instant, hold: std::time::Duration, revision: u64) {
        let until = (at + hold).saturating_duration_since(self.base).as_millis() as u64;
        self.valid_until_ms.store(until, Ordering::SeqCst);
        self.revision.store(revision, Ordering::SeqCst);
    }
    pub fn valid(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::SeqCst)
    }
    /// Ends it now: nothing more is applied or published under it.
    pub fn expire(&self) {
        self.valid_until_ms.store(0, Ordering::SeqCst);
    }
}

/// An open partition, applying its stream.
pub struct Owner {
    pub partition: u16,
    pub store: Arc<Store>,
    pub search: Arc<SearchIndex>,
    pub lease: LeaseClock,
    /// When the partition's newest checkpoint was taken (epoch ms; 0: none).
    pub checkpoint_ms: Arc<std::sync::atomic::AtomicI64>,
    stop: CancellationToken,
    /// Cancelled when the owner stopped on its own (fenced, lease lost,
    /// store failure): the node lets the partition go.
    pub failed: CancellationToken,
    /// Cancelled once the store has committed every share the partition's
    /// IN subject held when the owner opened it: from then on it answers
    /// queries (before, a query would miss what the last owner had already
    /// applied — events that earlier answers showed).
    pub caught_up: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    checkpointer: Option<tokio::task::JoinHandle<()>>,
}

/// How long [`Owner::close`] waits for the partition's store to be let go
/// by its readers (search indexer, queries) before it returns anyway.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where partition `p`'s store and index are under its directory.
pub fn store_dir(part: &Path) -> PathBuf {
    part.join("store")
}
pub fn search_dir(part: &Path) -> PathBuf {
    part.join("search")
}

impl Owner {
    /// Opens partition `p` (its store and index under
    /// [`super::partition_dir`]) and starts applying its stream.
    pub async fn open(ctx: &OwnerContext, p: u16, lease: LeaseClock) -> anyhow::Result<Owner> {
        let dir = super::partition_dir(&ctx.storage, p);
        std::fs::create_dir_all(&dir)?;
        let dest = match &ctx.checkpoints {
            Some(url) => Some(Arc::new(super::checkpoint::dest(url, p)?)),
            None => None,
        };
        let checkpoint_ms = Arc::new(std::sync::atomic::AtomicI64::new(0));
        if let Some(dest) = &dest {
            // The warm copy this node kept of the partition's checkpoints
            // (`Node::warm`), taken out of the warm folder first so that
            // the node's warm round does not change it while it is read
            // (a file missing or changed in it is fetched instead).
            let warm = dir.join("warm.taken");
            let _ = std::fs::remove_dir_all(&warm);
            let warm = std::fs::rename(super::warm_dir(&ctx.storage, p), &warm)
                .is_ok()
                .then_some(warm);
            let newest = restore_if_newer(dest, &dir, p, ctx.cache_bytes, warm.as_deref()).await;
            if let Some(w) = &warm {
                let _ = std::fs::remove_dir_all(w);
            }
            checkpoint_ms.store(newest?, Ordering::SeqCst);
        }
        let (sdir, cache) = (store_dir(&dir), ctx.cache_bytes);
        // Not fsync'd per commit: the partition's durable log is its IN
        // subject (replicated, acknowledged to the agent before it is
        // applied) and the stream sequence is in every commit, so a store
        // that lost its newest commits (the host crashed; a killed process
        // loses nothing) replays them from the stream, which is purged only
        // behind a checkpoint in object storage. The OUT cursor is ahead of
        // such a store then, and the replayed events, at the same outbox
        // positions, are not published twice.
        let store =
            Arc::new(tokio::task::spawn_blocking(move || Store::open(&sdir, false, cache)).await??);
        let stop = CancellationToken::new();
        let hub = LiveHub::new(ctx.live_buffer);
        let search = {
            let (d, s, l, h) = (
                search_dir(&dir),
                store.clone(),
                ctx.locations.clone(),
                hub.clone(),
            );
            let (interval, token) = (ctx.search_commit, stop.clone());
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let _rt = handle.enter();
                SearchIndex::start(&d, s, l, &h, interval, token)
            })
            .await??
        };
        // Each commit wakes the OUT publisher (which reads the outbox).
        let commits = hub.subscribe();
        let pipeline = Pipeline::start(
            Arc::new(WriterContext {
                store: store.clone(),
                locations: ctx.locations.clone(),
                hub,
                metrics: ctx.metrics.clone(),
                max_group_events: ctx.max_group_events,
            }),
            1,
            ctx.queue_batches,
        )?;
        let applied = {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.stream_seq()).await??
        };
        let failed = CancellationToken::new();
        let caught_up = CancellationToken::new();
        // The IN messages dealt with, deleted once a checkpoint covers them.
        let handled = Arc::new(std::sync::Mutex::new(Handled::default()));
        let checkpointer = dest.map(|dest| {
            tokio::spawn(checkpoints(
                ctx.nats.clone(),
                p,
                store.clone(),
                dir.join("checkpoint.staging"),
                dest,
                ctx.checkpoint_interval,
                lease.clone(),
                checkpoint_ms.clone(),
                handled.clone(),
                stop.clone(),
            ))
        });
        let task = tokio::spawn(run(
            ctx.nats.clone(),
            p,
            applied,
            store.clone(),
            ctx.locations.clone(),
            pipeline,
            commits,
            lease.clone(),
            stop.clone(),
            failed.clone(),
            caught_up.clone(),
            handled,
            ctx.metrics
                .cluster
                .lost_seqs
                .get_or_create(&PartitionLabel {
                    partition: p.to_string(),
                })
                .clone(),
        ));
        tracing::info!(
            partition = p,
            from_stream_seq = applied + 1,
            "partition opened"
        );
        Ok(Owner {
            partition: p,
            store,
            search,
            lease,
            checkpoint_ms,
            stop,
            failed,
            caught_up,
            task: Some(task),
            checkpointer,
        })
    }

    /// Stops applying, lets what is queued commit, and closes the partition
    /// (returns once its store is let go, or after [`CLOSE_WAIT`]).
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.checkpointer.take() {
            let _ = t.await;
        }
        let deadline = Instant::now() + CLOSE_WAIT;
        while Arc::strong_count(&self.store) > 1 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Replaces the partition's local store (if any) by the newest checkpoint
/// when that covers more of the stream: what the checkpoint covers may have
/// been purged from the stream since this node last held the partition.
/// Returns when the newest checkpoint was taken (epoch ms; 0: none).
async fn restore_if_newer(
    dest: &crate::backup::Dest,
    dir: &Path,
    p: u16,
    cache: usize,
    warm: Option<&Path>,
) -> anyhow::Result<i64> {
    let Some(m) = super::checkpoint::latest(dest).await? else {
        return Ok(0);
    };
    let sdir = store_dir(dir);
    let local = if sdir.exists() {
        let d = sdir.clone();
        tokio::task::spawn_blocking(move || Store::open(&d, false, cache)?.stream_seq()).await??
    } else {
        0
    };
    if m.stream_seq <= local {
        return Ok(m.created_ms);
    }
    let _ = std::fs::remove_dir_all(&sdir);
    let _ = std::fs::remove_dir_all(search_dir(dir));
    let started = Instant::now();
    let warmed = super::checkpoint::restore(dest, &m, &sdir, warm).await?;
    tracing::info!(
        partition = p,
        files = m.files.len(),
        from_warm_copy = warmed,
        bytes = m.files.iter().map(|f| f.size).sum::<u64>(),
        ms = started.elapsed().as_millis() as u64,
        stream_seq = m.stream_seq,
        local_stream_seq = local,
        "partition restored from its checkpoint"
    );
    Ok(m.created_ms)
}

/// An owner deletes old checkpoints after every this many of its own.
const PRUNE_EVERY: u64 = 6;

/// Every `interval` while the lease holds: a checkpoint uploaded, then the
/// stream's messages the previous one covers deleted (PROTOCOL.md rule 30).
#[allow(clippy::too_many_arguments)]
async fn checkpoints(
    nats: Nats,
    p: u16,
    store: Arc<Store>,
    staging: PathBuf,
    dest: Arc<crate::backup::Dest>,
    interval: std::time::Duration,
    lease: LeaseClock,
    taken_ms: Arc<std::sync::atomic::AtomicI64>,
    handled: Arc<std::sync::Mutex<Handled>>,
    stop: CancellationToken,
) {
    let mut last = store.stream_seq().unwrap_or(0);
    // What the stream may drop: the shares this owner's *previous*
    // checkpoint covers, never those of the one just uploaded. This owner
    // may be stale by now (paused, its lease run out meanwhile): the next
    // owner restored the newest checkpoint there was when it took over,
    // which is this owner's previous one or later; had this owner purged
    // behind the one it just uploaded, after the next owner started from
    // an older one, the shares between would be gone before that owner
    // applied them (seen as a gap it never closes: acknowledged events
    // lost). 0: nothing yet.
    let mut purgeable = 0u64;
    // Diverged messages (see [`deal_with_diverged`]) whose footage could not
    // be applied or published again: tried again at the next checkpoint.
    let mut diverged_left = Vec::new();
    let mut hashed = super::checkpoint::SstHashes::default();
    let mut held = None;
    let mut taken = 0u64;
    // Taking the partition over: the messages its subject holds now came
    // through whatever NATS faults there were before (a previous owner may
    // have seen them; this one cannot), so they are checked against the
    // stream's leader before they are deleted, and the stream's placement
    // now is what later looks compare with.
    match leader_last(&nats, p).await {
        Ok(l) => handled.lock().unwrap().check_through(l),
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "could not read the partition's last stream sequence on taking it over: every message is checked against the stream's leader before it is deleted");
            handled.lock().unwrap().suspect();
        }
    }
    let mut placement = None;
    watch_placement(&nats, p, &mut placement, &handled).await;
    loop {
        // `interval` after the last one ended: under load a checkpoint takes
        // seconds (flushes, hashing, uploads), and taking the next at once
        // starved the owners and the object store.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if !lease.valid() || store.stream_seq().unwrap_or(0) == last {
            continue;
        }
        let rev = lease.revision.load(Ordering::SeqCst);
        let started = Instant::now();
        match super::checkpoint::take(&store, p, rev, &staging, &dest, &mut hashed, &mut held).await
        {
            Ok(m) => {
                tracing::debug!(
                    partition = p,
                    stream_seq = m.stream_seq,
                    files = m.files.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "partition checkpoint taken"
                );
                last = m.stream_seq;
                taken_ms.store(m.created_ms, Ordering::SeqCst);
                // Announced to the node keeping a warm copy (best effort).
                if let Ok(json) = serde_json::to_vec(&m) {
                    if let Err(e) = nats
                        .client
                        .publish(super::checkpoint_subject(p), json.into())
                        .await
                    {
                        tracing::debug!(partition = p, error = %e, "announcing a checkpoint failed");
                    }
                }
                let keep_from = purgeable + 1;
                purgeable = m.stream_seq;
                if keep_from == 1 {
                    continue;
                }
                watch_placement(&nats, p, &mut placement, &handled).await;
                match super::checkpoint::delete_applied(&nats, p, keep_from, &handled).await {
                    Ok(d) => {
                        tracing::debug!(
                            partition = p,
                            stream_seq = m.stream_seq,
                            deleted_before = keep_from,
                            deleted = d.count,
                            "partition checkpointed"
                        );
                        for m in &d.diverged {
                            let attach = is_attach(&m.headers);
                            tracing::warn!(
                                partition = p,
                                stream_seq = m.sequence,
                                attach,
                                "the stream's leader holds another message at this sequence than this owner's consumer delivered (its replica differed from the leader's): {}",
                                if attach {
                                    "the footage is attached now and published again"
                                } else {
                                    "kept in the stream"
                                }
                            );
                        }
                        if !d.unseen_attaches.is_empty() {
                            tracing::info!(
                                partition = p,
                                attaches = d.unseen_attaches.len(),
                                "footage an earlier owner left in the stream is attached again and published again after the checkpoint (an owner may leave with footage it did not apply)"
                            );
                        }
                        let mut todo = std::mem::take(&mut diverged_left);
                        todo.extend(d.diverged);
                        todo.extend(d.unseen_attaches);
                        if let Err((e, left)) = deal_with_diverged(&nats, &store, p, todo).await {
                            tracing::warn!(partition = p, error = %e, left = left.len(), "applying footage the stream's leader held and this owner was not delivered failed; tried again at the next checkpoint");
                            diverged_left = left;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "deleting the checkpointed shares failed")
                    }
                }
                // Old checkpoints deleted every few (a listing and a few
                // reads each time: the object store serves every owner).
                taken += 1;
                if !taken.is_multiple_of(PRUNE_EVERY) {
                    continue;
                }
                match super::checkpoint::prune(
                    &dest,
                    super::checkpoint::KEEP_CHECKPOINTS,
                    super::checkpoint::BLOB_GRACE_MS,
                )
                .await
                {
                    Ok((0, 0)) => {}
                    Ok((manifests, blobs)) => tracing::debug!(
                        partition = p,
                        manifests,
                        blobs,
                        "old partition checkpoints deleted"
                    ),
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "deleting old checkpoints failed")
                    }
                }
            }
            Err(e) => tracing::warn!(partition = p, error = %e, "partition checkpoint failed"),
        }
    }
}

/// [`Placement::watch`], logged; a placement that cannot be read is taken
/// as a sign of a fault too.
async fn watch_placement(
    nats: &Nats,
    p: u16,
    last: &mut Option<Placement>,
    handled: &std::sync::Mutex<Handled>,
) {
    let was = handled.lock().unwrap().suspected();
    let why = match Placement::watch(nats, last, handled).await {
        Ok(why) => why,
        Err(e) => {
            handled.lock().unwrap().suspect();
            Some(format!("the IN stream's placement could not be read: {e}"))
        }
    };
    if let (Some(why), false) = (why, was) {
        tracing::warn!(
            partition = p,
            "{why}: every message this owner deletes is checked against the stream's leader from now on"
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    nats: Nats,
    p: u16,
    applied: u64,
    store: Arc<Store>,
    locations: Arc<Locations>,
    pipeline: Pipeline,
    commits: crate::api::live::LiveReceiver,
    lease: LeaseClock,
    stop: CancellationToken,
    failed: CancellationToken,
    caught_up: CancellationToken,
    handled: Arc<std::sync::Mutex<Handled>>,
    lost: Counter,
) {
    // Ended once the writer has committed what it was handed: what it
    // committed is published before the owner closes (while the lease holds).
    let done = CancellationToken::new();
    let out = tokio::spawn(publish_out(
        nats.clone(),
        p,
        store.clone(),
        locations,
        commits,
        lease.clone(),
        done.clone(),
        failed.clone(),
    ));
    let (answers_tx, answers) = mpsc::channel(INFLIGHT_SHARES);
    let (through_tx, through) = tokio::sync::watch::channel(applied);
    let answered = tokio::spawn(check_answers(
        p,
        answers,
        through_tx,
        handled.clone(),
        failed.clone(),
    ));
    tokio::spawn(signal_caught_up(
        nats.clone(),
        p,
        through,
        caught_up,
        stop.clone(),
    ));
    if let Err(e) = apply(
        &nats, p, applied, &store, &pipeline, &lease, &stop, &failed, answers_tx, &handled, &lost,
    )
    .await
    {
        tracing::warn!(partition = p, error = %e, "partition stopped applying");
        failed.cancel();
    }
    let _ = answered.await;
    // The writer commits what it has queued, then closes.
    tokio::task::spawn_blocking(move || pipeline.shutdown())
        .await
        .ok();
    stop.cancel();
    done.cancel();
    let _ = out.await;
}

/// Consumes `sightline.in.<p>` after `applied` and hands each share to the
/// writer, while the lease holds.
#[allow(clippy::too_many_arguments)]
async fn apply(
    nats: &Nats,
    p: u16,
    applied: u64,
    store: &Arc<Store>,
    pipeline: &Pipeline,
    lease: &LeaseClock,
    stop: &CancellationToken,
    failed: &CancellationToken,
    answers: mpsc::Sender<Answer>,
    handled: &std::sync::Mutex<Handled>,
    lost: &Counter,
) -> anyhow::Result<()> {
    // The last stream sequence handed to the writer: a consumer that breaks
    // (a nats-server died, a stream leader moved, heartbeats missed) is made
    // again from the one after it while the lease holds, instead of giving
    // the partition up.
    let mut submitted = applied;
    let Some(mut messages) =
        consume_retrying(nats, p, submitted, false, lease, stop, failed).await?
    else {
        return Ok(());
    };
    // What this partition has been handed of each (agent, epoch) (every
    // batch has a share in every partition, empty ones too, so a share
    // missing from what the consumer delivers shows as a gap here).
    let mut expect: HashMap<(String, u64), Expected> = HashMap::new();
    // A look for a loss at the end of quiet agents' streams ([`EndCheck`]),
    // waiting for the owner to hand on the stream's last share; when the
    // last look began; whether the consumer just delivered nothing for
    // [`IDLE_CHECK`].
    let mut end: Option<EndCheck> = None;
    let mut looked = Instant::now();
    let mut idle = false;
    // Why the consumer is made again before the next message, if it is.
    let mut remake: Option<String> = None;
    // For a gap: the share further on that brings its first missing seq
    // ([`lost_before`]), so that the gap's later shares do not look again.
    let mut ahead = Ahead::new();
    loop {
        if remake.is_none() {
            if end.is_none() && (idle || looked.elapsed() >= IDLE_CHECK) {
                looked = Instant::now();
                // Idle, every (agent, epoch) is quiet; busy, those with no
                // share for a while.
                let quiet = if idle { Duration::ZERO } else { IDLE_CHECK };
                match EndCheck::look(nats, p, &mut expect, quiet).await {
                    Ok(c) => end = c,
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "could not check the agents' watermarks against what the partition applied; checking again later")
                    }
                }
            }
            idle = false;
            if let Some(c) = end.take_if(|c| submitted >= c.last) {
                c.settle(nats, p, &mut expect, submitted, pipeline, handled, lost)
                    .await?;
            }
        }
        if let Some(why) = remake.take() {
            handled.lock().unwrap().suspect();
            tracing::warn!(
                partition = p,
                after = submitted,
                "{why}; making the stream consumer again"
            );
            match consume_retrying(nats, p, submitted, true, lease, stop, failed).await? {
                Some(m) => messages = m,
                None => return Ok(()),
            }
        }
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = failed.cancelled() => return Ok(()),
            m = tokio::time::timeout(IDLE_CHECK, messages.next()) => match m {
                Ok(Some(Ok(m))) => m,
                Err(_) => {
                    // Nothing for a while: does the stream hold more?
                    match leader_next(nats, p, submitted + 1).await {
                        Ok(Some(s)) => remake = Some(format!(
                            "the stream's leader holds share {s}, not delivered in {IDLE_CHECK:?}"
                        )),
                        Ok(_) => idle = true,
                        Err(e) => tracing::warn!(partition = p, error = %e, "could not ask the stream's leader for the partition's next share"),
                    }
                    continue;
                }
                Ok(broken) => {
                    let why = match broken {
                        Some(Err(e)) => e.to_string(),
                        _ => "the consumer ended".to_string(),
                    };
                    remake = Some(format!("the consumer broke: {why}"));
                    continue;
                }
            },
        };
        if !lease.valid() {
            anyhow::bail!("the lease was not renewed in time: stopped applying");
        }
        let seq = msg
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let fp = super::checkpoint::fingerprint(&msg.payload);
        if seq <= submitted {
            // Handed on already: async-nats remakes an ordered consumer that
            // broke before its first message from the subject's start.
            continue;
        }
        if msg.headers.as_ref().is_some_and(is_attach) {
            let (store, payload) = (store.clone(), msg.payload.clone());
            tokio::task::spawn_blocking(move || apply_attach(&store, p, seq, payload)).await??;
            submitted = seq;
            if answers.send((seq, fp, None)).await.is_err() {
                return Ok(());
            }
            continue;
        }
        let share = match ShareMsg::decode(msg.payload.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(partition = p, stream_seq = seq, error = %e, "a share that does not decode is skipped");
                submitted = seq;
                if answers.send((seq, fp, None)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        let key = (share.agent.clone(), share.epoch);
        let mut next = match expect.get(&key) {
            Some(e) => e.next,
            None => {
                let (s, a, e) = (store.clone(), share.agent.clone(), share.epoch);
                tokio::task::spawn_blocking(move || s.watermark(&a, e)).await?? + 1
            }
        };
        if share.first_seq > next {
            // A gap: a session's later batch whose earlier share the stream
            // refused (the agent sends both again: the writer refuses this
            // one) — or this consumer skipped shares the stream holds (seen
            // after a nats-server holding the stream's leader was killed:
            // a new owner's consumer delivered a partition's shares from
            // past 8 acknowledged ones, which were never applied; an
            // ordered consumer is served by one replica, which may be
            // behind). The stream's leader says which: its first share of
            // the partition after the last one handed on.
            match leader_next(nats, p, submitted + 1).await {
                Ok(Some(s)) if s < seq => {
                    remake = Some(format!(
                        "the consumer delivered share {seq} (agent {} seq {}) but skipped share {s}, which the stream's leader holds (agent seq {next} was never delivered)",
                        share.agent, share.first_seq
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    remake = Some(format!(
                        "a gap before share {seq} (agent {} seq {} after {}) that the stream's leader could not be asked about: {e}",
                        share.agent, share.first_seq, next - 1
                    ));
                }
            }
        }
        while remake.is_none() && share.first_seq > next {
            // The stream holds none of the missing seqs between the last
            // share handed on and this one. Were they acknowledged to the
            // agent (it deleted them)? Then a share the stream holds
            // brings them — further on, or one this owner passed — or the
            // stream lost them.
            match lost_before(nats, p, seq, &share, next, &mut ahead).await {
                Ok(Gap::Wait) => break,
                Ok(Gap::Passed(at, passed)) => {
                    handled.lock().unwrap().suspect();
                    next = hand_passed(pipeline, p, at, passed, &key, next, submitted).await?;
                    expect.insert(key.clone(), Expected::handed(next));
                }
                Ok(Gap::Lost(through)) => {
                    commit_lost(pipeline, p, Some(seq), &key, next, through, submitted, lost)
                        .await?;
                    next = through + 1;
                }
                Err(e) => {
                    remake = Some(format!(
                        "a gap before share {seq} (agent {} seq {} after {}) that could not be checked for a loss: {e}",
                        share.agent, share.first_seq, next - 1
                    ));
                    break;
                }
            }
        }
        if remake.is_some() {
            continue;
        }
        if share.first_seq <= next {
            if !ahead.is_empty() {
                ahead.remove(&key);
            }
            expect.insert(
                key,
                Expected::handed(next.max(share.first_seq + share.count)),
            );
        }
        let (reply, rx) = oneshot::channel();
        let count = share.count;
        let req = share.into_request(reply);
        tracing::trace!(partition = p, stream_seq = seq, agent = %req.agent, first_seq = req.first_seq, count, "share handed to the writer");
        pipeline.submit_share(req, count, seq).await?;
        submitted = seq;
        if answers.send((seq, fp, Some(rx))).await.is_err() {
            return Ok(());
        }
    }
}

/// Messages the IN stream's leader holds at sequences where this owner's
/// consumer delivered another message, and attaches an earlier owner left
/// in the stream (both kept there by [`super::checkpoint::delete_applied`]):
/// an attach, footage this owner never applied, is applied now and
/// published again to the partition's subject, so that it is in the
/// stream after the checkpoint just taken
/// (an owner restoring that checkpoint replays it; applying it twice
/// changes nothing), then the leader's message is deleted; a share is left
/// in the stream, where the owner's check for acknowledged seqs it was
/// never handed finds it ([`lost_before`], [`EndCheck`]). On an error,
/// returns it with the messages not dealt with (the one that failed and
/// those after it, all still in the stream): the owner tries them again at
/// its next checkpoint.
pub(super) async fn deal_with_diverged(
    nats: &Nats,
    store: &Arc<Store>,
    p: u16,
    diverged: Diverged,
) -> Result<(), (anyhow::Error, Diverged)> {
    let mut rest = diverged.into_iter();
    while let Some(m) = rest.next() {
        if let Err(e) = deal_with_one_diverged(nats, store, p, &m).await {
            // This one and the rest are still in the stream: the caller
            // tries them again.
            return Err((e, std::iter::once(m).chain(rest).collect()));
        }
    }
    Ok(())
}

/// Messages the stream's leader holds where this owner was delivered others.
type Diverged = Vec<async_nats::jetstream::message::StreamMessage>;

async fn deal_with_one_diverged(
    nats: &Nats,
    store: &Arc<Store>,
    p: u16,
    m: &async_nats::jetstream::message::StreamMessage,
) -> anyhow::Result<()> {
    if !is_attach(&m.headers) {
        return Ok(());
    }
    let (s, seq, payload) = (store.clone(), m.sequence, m.payload.clone());
    tokio::task::spawn_blocking(move || apply_attach(&s, p, seq, payload)).await??;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(KIND_HEADER, ATTACH_KIND);
    let again = nats
        .js
        .publish_with_headers(in_subject(p), headers, m.payload.clone())
        .await?
        .await?;
    tracing::info!(
        partition = p,
        stream_seq = m.sequence,
        again = again.sequence,
        "footage this owner was not delivered is attached and in the stream again"
    );
    super::checkpoint::delete_message(nats, m.sequence).await?;
    Ok(())
}

/// Applies an [`AttachMsg`] (PROTOCOL.md rule 31) to the partition's store,
/// as `MediaStore::attach` does on a single node: refused (logged) if a
/// stored event among them was published by another agent than the one
/// that attaches. Applying it again changes nothing.
fn apply_attach(store: &Store, p: u16, seq: u64, payload: bytes::Bytes) -> anyhow::Result<()> {
    let m = match AttachMsg::decode(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(partition = p, stream_seq = seq, error = %e, "an attach that does not decode is skipped");
            return Ok(());
        }
    };
    let Some(media) = m.media else {
        tracing::error!(
            partition = p,
            stream_seq = seq,
            "an attach without media is skipped"
        );
        return Ok(());
    };
    if let Some(agent) = m.by.as_deref() {
        if let Some((oid, other)) = store.published_by_other(&m.det_oids, agent)? {
            tracing::warn!(
                partition = p,
                det_oid = oid,
                publisher = %other,
                attacher = agent,
                sha256 = %media.sha256,
                "footage not attached: the event was published by another agent"
            );
            return Ok(());
        }
    }
    store.attach_media(&m.det_oids, &media, m.at_ms, m.by.as_deref())?;
    Ok(())
}

/// Commits seqs `next..=through` of `key` (agent, epoch), which the agent
/// was acknowledged for and the IN stream lost, as received with nothing
/// stored (their camera_seqs show as holes), logged as an ERROR and counted.
/// Committed at `submitted`, the last stream sequence handed on: a restart
/// reads what follows again, past the hole. `at`: the share found after
/// the hole (none: the loss was at the stream's end).
#[allow(clippy::too_many_arguments)]
async fn commit_lost(
    pipeline: &Pipeline,
    p: u16,
    at: Option<u64>,
    key: &(String, u64),
    next: u64,
    through: u64,
    submitted: u64,
    lost: &Counter,
) -> anyhow::Result<()> {
    let (agent, epoch) = (&key.0, key.1);
    tracing::error!(
        partition = p,
        stream_seq = at,
        agent = %agent,
        epoch,
        first_lost = next,
        last_lost = through,
        "ACKNOWLEDGED EVENTS LOST: seqs {next}..={through} of this agent were acknowledged (the stream had them) but the IN stream no longer holds their share for this partition, and nothing sends them again; the partition's events among them are lost, and the agent's later events are applied past them"
    );
    let (reply, rx) = oneshot::channel();
    let hole = CommitRequest {
        agent: agent.as_str().into(),
        epoch,
        first_seq: next,
        events: Vec::new(),
        last_digest: 0,
        reply,
    };
    commit_awaited(
        pipeline,
        hole,
        through + 1 - next,
        submitted,
        rx,
        "a lost range",
    )
    .await?;
    lost.inc_by(through + 1 - next);
    Ok(())
}

/// What a partition's owner has been handed of an (agent, epoch).
struct Expected {
    /// Its next seq.
    next: u64,
    /// A share of it came since the owner last looked for a loss at the
    /// stream's end ([`EndCheck`]).
    seen: bool,
    /// When its last share was handed on.
    handed: Instant,
}

impl Expected {
    /// A share just handed on, `next` the seq after it.
    fn handed(next: u64) -> Self {
        Self {
            next,
            seen: true,
            handed: Instant::now(),
        }
    }
}

/// A look for a loss at the end of an agent's stream — its last shares
/// acknowledged and not in the stream (or passed, see [`lost_before`]), with
/// no later share to show the gap. The watermarks of (agent, epoch)s quiet
/// for a while are read first, then the subject's last stream sequence
/// (every share acknowledged by then is at or before it): once the owner
/// has handed on through it, a watermark still past what the partition was
/// handed means acknowledged shares that never reached the writer. This
/// works under load too, where waiting for the partition to be idle would
/// wait as long as other agents keep it busy.
struct EndCheck {
    /// The subject's last stream sequence, read after the watermarks.
    last: u64,
    /// When the watermarks were read: an (agent, epoch) handed a share
    /// after it is left to the next look.
    read: Instant,
    /// Each (agent, epoch) whose watermark was past what the partition had
    /// been handed, with the seq it was acknowledged through.
    past: Vec<((String, u64), u64)>,
}

impl EndCheck {
    /// Reads the watermark of each (agent, epoch) handed a share since the
    /// last look and none for `quiet`. `None`: none is past what the
    /// partition was handed.
    async fn look(
        nats: &Nats,
        p: u16,
        expect: &mut HashMap<(String, u64), Expected>,
        quiet: Duration,
    ) -> anyhow::Result<Option<EndCheck>> {
        let read = Instant::now();
        let mut looked = Vec::new();
        let mut past = Vec::new();
        for (key, e) in expect.iter() {
            if !e.seen || e.handed.elapsed() < quiet {
                continue;
            }
            let acked = acknowledged_through(nats, &key.0, key.1).await?;
            if acked >= e.next {
                past.push((key.clone(), acked));
            }
            looked.push(key.clone());
        }
        for key in looked {
            if let Some(e) = expect.get_mut(&key) {
                e.seen = false;
            }
        }
        if past.is_empty() {
            return Ok(None);
        }
        let last = leader_last(nats, p).await?;
        Ok(Some(EndCheck { last, read, past }))
    }

    /// The owner has handed on through [`EndCheck::last`] (`submitted`):
    /// for each (agent, epoch) handed nothing since the look whose
    /// watermark is still past what it was handed, the share the stream's
    /// leader holds that brings the first missing seq is applied if the
    /// owner passed it ([`hand_passed`]; the rest is looked at once the
    /// agent is quiet again); none in the stream, the seqs through the
    /// watermark are named lost ([`commit_lost`]).
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        self,
        nats: &Nats,
        p: u16,
        expect: &mut HashMap<(String, u64), Expected>,
        submitted: u64,
        pipeline: &Pipeline,
        handled: &std::sync::Mutex<Handled>,
        lost: &Counter,
    ) -> anyhow::Result<()> {
        // Read once: the shares acknowledged by the look are at or before
        // its `last`, and a later one found is left to the consumer.
        let mut last = None;
        for (key, acked) in self.past {
            let Some(e) = expect.get(&key) else { continue };
            if e.handed > self.read || e.next > acked {
                continue;
            }
            let (next, handed) = (e.next, e.handed);
            let covering = async {
                let to = match last {
                    Some(l) => l,
                    None => *last.insert(leader_last(nats, p).await?),
                };
                leader_covering(nats, p, 1, to, &key, next).await
            };
            match covering.await {
                Ok(Some((at, passed))) if at <= submitted => {
                    handled.lock().unwrap().suspect();
                    let n = hand_passed(pipeline, p, at, passed, &key, next, submitted).await?;
                    expect.insert(key, Expected::handed(n));
                }
                // Further on: the consumer brings it.
                Ok(Some(_)) => {}
                Ok(None) => {
                    commit_lost(pipeline, p, None, &key, next, acked, submitted, lost).await?;
                    expect.insert(
                        key,
                        Expected {
                            next: acked + 1,
                            seen: false,
                            handed,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(partition = p, agent = %key.0, epoch = key.1, error = %e, "could not look in the stream for acknowledged seqs this partition was not handed; looking again later");
                    if let Some(e) = expect.get_mut(&key) {
                        e.seen = true;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The seq through which (agent, epoch) was acknowledged (0: none).
async fn acknowledged_through(nats: &Nats, agent: &str, epoch: u64) -> anyhow::Result<u64> {
    Ok(super::front::read_watermark(nats, agent, epoch)
        .await?
        .map_or(0, |(_, w)| w.through))
}

/// Per (agent, epoch) with a gap: its first missing seq and the stream
/// sequence of the later share that brings it.
type Ahead = HashMap<(String, u64), (u64, u64)>;

/// What an owner does about a gap in an (agent, epoch)'s seqs.
enum Gap {
    /// Nothing yet: the agent sends the missing seqs again (it was not
    /// acknowledged for them), or a share further on brings them.
    Wait,
    /// The share the stream's leader holds at this sequence brings the
    /// first missing seq, and the owner passed it: handed on now
    /// ([`hand_passed`]).
    Passed(u64, ShareMsg),
    /// Acknowledged, and no share in the stream brings them: lost from
    /// the first missing seq through this one.
    Lost(u64),
}

/// A share at stream sequence `seq` starts past `next`, the first seq of
/// its (agent, epoch) this partition has not been handed, and the stream's
/// leader holds no share of the partition between (rule 32). Either a
/// session's earlier batch was refused (rule 25: the agent still holds it
/// and sends it again) or the stream lost shares it had acknowledged
/// (nats-server#4196 did so; a stream is only as safe as its replicas).
/// [`Gap::Wait`] unless the agent's watermark says `next` was
/// acknowledged — the agent deleted it and resumes past it — and no share
/// of the partition in the stream after `seq`, up to its last at the time
/// (read after the watermark: any share acknowledged by then is in it),
/// brings `next`. Then a share the owner passed that brings it is looked
/// for in the whole subject, as the leader has it ([`Gap::Passed`]): one
/// refused as a gap before an orphan share filled the seqs before it, or
/// one whose stream sequence the consumer's replica holds another share at
/// (replicas of nats-server 2.9.10 were seen to differ so after two of
/// three were killed). None: the stream lost `next..` up to the watermark
/// or the seq before this share ([`Gap::Lost`]).
async fn lost_before(
    nats: &Nats,
    p: u16,
    seq: u64,
    share: &ShareMsg,
    next: u64,
    ahead: &mut Ahead,
) -> anyhow::Result<Gap> {
    let key = (share.agent.clone(), share.epoch);
    if ahead
        .get(&key)
        .is_some_and(|&(n, at)| n == next && at > seq)
    {
        return Ok(Gap::Wait);
    }
    let acked = acknowledged_through(nats, &share.agent, share.epoch).await?;
    if acked < next {
        return Ok(Gap::Wait);
    }
    let last = leader_last(nats, p).await?;
    if let Some((at, _)) = leader_covering(nats, p, seq + 1, last, &key, next).await? {
        ahead.insert(key, (next, at));
        return Ok(Gap::Wait);
    }
    if let Some((at, passed)) = leader_covering(nats, p, 1, seq, &key, next).await? {
        return Ok(Gap::Passed(at, passed));
    }
    Ok(Gap::Lost(acked.min(share.first_seq - 1)))
}

/// The first share of `key` (agent, epoch) on partition `p`'s subject from
/// stream sequence `from` through `to`, as the stream's leader holds them,
/// that brings seq `next`; with its stream sequence.
async fn leader_covering(
    nats: &Nats,
    p: u16,
    from: u64,
    to: u64,
    key: &(String, u64),
    next: u64,
) -> anyhow::Result<Option<(u64, ShareMsg)>> {
    let mut from = from;
    while from <= to {
        let Some(m) = leader_first(nats, p, from).await? else {
            break;
        };
        if m.sequence > to {
            break;
        }
        from = m.sequence + 1;
        if m.headers.get(KIND_HEADER).is_some() {
            continue;
        }
        let Ok(share) = ShareMsg::decode(m.payload) else {
            continue;
        };
        if share.agent == key.0
            && share.epoch == key.1
            && share.first_seq <= next
            && next < share.first_seq + share.count
        {
            return Ok(Some((m.sequence, share)));
        }
    }
    Ok(None)
}

/// Hands the writer `share`, which the stream's leader holds at `at` and
/// which brings `next` of `key`, a share this owner passed (see
/// [`lost_before`]); committed at `submitted`, the last stream sequence
/// handed on (so that none is read again) and awaited. Returns the
/// (agent, epoch)'s next seq after it.
async fn hand_passed(
    pipeline: &Pipeline,
    p: u16,
    at: u64,
    share: ShareMsg,
    key: &(String, u64),
    next: u64,
    submitted: u64,
) -> anyhow::Result<u64> {
    tracing::warn!(
        partition = p,
        stream_seq = at,
        agent = %key.0,
        epoch = key.1,
        first_seq = share.first_seq,
        count = share.count,
        missing_from = next,
        "a share the stream's leader holds brings seqs this owner was never handed (its consumer's replica held another share at that stream sequence, or it was passed as a gap before the seqs before it came): applied now"
    );
    let (after, count) = (share.first_seq + share.count, share.count);
    let (reply, rx) = oneshot::channel();
    commit_awaited(
        pipeline,
        share.into_request(reply),
        count,
        submitted,
        rx,
        "a passed share",
    )
    .await?;
    Ok(after)
}

/// Commits `req` (`count` seqs) at stream sequence `submitted`, the last one
/// handed on, and waits for the writer's answer on `rx`: for what the owner
/// commits out of the stream's order ([`commit_lost`], [`hand_passed`]).
async fn commit_awaited(
    pipeline: &Pipeline,
    req: CommitRequest,
    count: u64,
    submitted: u64,
    rx: oneshot::Receiver<Result<CommitOutcome, CommitError>>,
    what: &str,
) -> anyhow::Result<()> {
    pipeline.submit_share(req, count, submitted).await?;
    match rx.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => anyhow::bail!("committing {what}: {e}"),
        Err(_) => anyhow::bail!("the writer stopped before committing {what}"),
    }
}

/// How long a partition's consumer may deliver nothing before its owner
/// asks the stream's leader whether the subject holds more.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The stream sequence of partition `p`'s first share at or after `from`,
/// as the IN stream's leader has it (`None`: there is none). Asked of the
/// leader (the non-direct message get), not of a replica.
pub(crate) async fn leader_next(nats: &Nats, p: u16, from: u64) -> anyhow::Result<Option<u64>> {
    Ok(leader_first(nats, p, from).await?.map(|m| m.sequence))
}

/// [`leader_next`]'s message itself.
async fn leader_first(
    nats: &Nats,
    p: u16,
    from: u64,
) -> anyhow::Result<Option<async_nats::jetstream::message::StreamMessage>> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let stream = nats.js.get_stream_no_info(IN_STREAM).await?;
    match stream
        .get_first_raw_message_by_subject(in_subject(p), from)
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// How long an owner waits before making its broken stream consumer again.
const CONSUMER_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// [`consume`], made again every [`CONSUMER_RETRY`] until it works
/// (`after_break`: wait before the first attempt, the last consumer just
/// broke) while the lease holds. `None`: the owner is stopping.
async fn consume_retrying(
    nats: &Nats,
    p: u16,
    after: u64,
    after_break: bool,
    lease: &LeaseClock,
    stop: &CancellationToken,
    failed: &CancellationToken,
) -> anyhow::Result<Option<async_nats::jetstream::consumer::pull::Ordered>> {
    let mut wait = after_break;
    loop {
        if wait {
            if !lease.valid() {
                anyhow::bail!("the lease was not renewed in time: stopped applying");
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = failed.cancelled() => return Ok(None),
                _ = tokio::time::sleep(CONSUMER_RETRY) => {}
            }
        }
        wait = true;
        match consume(nats, p, after).await {
            Ok(m) => return Ok(Some(m)),
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "the partition's stream consumer could not be made; trying again")
            }
        }
    }
}

/// An ordered consumer of `sightline.in.<p>` from the sequence after `after`.
async fn consume(
    nats: &Nats,
    p: u16,
    after: u64,
) -> anyhow::Result<async_nats::jetstream::consumer::pull::Ordered> {
    let stream = nats.js.get_stream(IN_STREAM).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: in_subject(p),
            deliver_policy: if after == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                }
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// One stream message the owner has dealt with, in stream order: its
/// sequence, its payload's [`super::checkpoint::fingerprint`] and, for a
/// share handed to the writer, the writer's answer to come (`None`:
/// applied or skipped already).
type Answer = (
    u64,
    u64,
    Option<oneshot::Receiver<Result<CommitOutcome, CommitError>>>,
);

/// Reads the writer's answers in order, and sends on `through` the stream
/// sequence through which every message is dealt with (and records each in
/// `handled`, to be deleted once a checkpoint covers it). A store failure
/// stops the owner (it reopens from what it committed); a gap is logged (a
/// session's batch published after one of its earlier batches failed: see
/// `front::share_msg_id`).
async fn check_answers(
    p: u16,
    mut answers: mpsc::Receiver<Answer>,
    through: tokio::sync::watch::Sender<u64>,
    handled: Arc<std::sync::Mutex<Handled>>,
    failed: CancellationToken,
) {
    while let Some((seq, fp, rx)) = answers.recv().await {
        match rx {
            None => {}
            Some(rx) => match rx.await {
                Ok(Ok(_)) => {}
                Ok(Err(e @ CommitError::Gap { .. })) => {
                    // A session's later batch whose earlier batch's share was
                    // refused by the stream: the agent sends both again.
                    tracing::warn!(partition = p, error = %e, "a share after a gap is not applied (its session failed; the agent sends it again)");
                }
                Ok(Err(e)) => {
                    tracing::error!(partition = p, error = %e, "a commit failed: the partition stops");
                    failed.cancel();
                    return;
                }
                Err(_) => return,
            },
        }
        handled.lock().unwrap().push(seq, fp);
        through.send_replace(seq);
    }
}

/// The stream sequence of the last message on partition `p`'s IN subject
/// (0: none), as the stream's leader has it.
pub(crate) async fn in_last_seq<I>(
    stream: &async_nats::jetstream::stream::Stream<I>,
    p: u16,
) -> anyhow::Result<u64> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(&in_subject(p)).await {
        Ok(m) => Ok(m.sequence),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// [`in_last_seq`] of the IN stream.
pub(crate) async fn leader_last(nats: &Nats, p: u16) -> anyhow::Result<u64> {
    let stream = nats.js.get_stream_no_info(IN_STREAM).await?;
    in_last_seq(&stream, p).await
}

/// Cancels `caught_up` once `handled` reaches the last message partition
/// `p`'s IN subject held when this ran (asked again every
/// [`CONSUMER_RETRY`] until the stream answers), unless the owner stops
/// first. Until then the node does not answer queries from the partition.
async fn signal_caught_up(
    nats: Nats,
    p: u16,
    mut handled: tokio::sync::watch::Receiver<u64>,
    caught_up: CancellationToken,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let target = loop {
        let last = async {
            let stream = nats.js.get_stream_no_info(IN_STREAM).await?;
            in_last_seq(&stream, p).await
        };
        let e = tokio::select! {
            _ = stop.cancelled() => return,
            r = last => match r {
                Ok(t) => break t,
                Err(e) => e,
            },
        };
        tracing::warn!(partition = p, error = %e, "the IN stream's last sequence could not be read; trying again");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CONSUMER_RETRY) => {}
        }
    };
    let from = *handled.borrow();
    tokio::select! {
        _ = stop.cancelled() => return,
        r = handled.wait_for(|h| *h >= target) => if r.is_err() {
            // The owner stopped applying.
            return;
        },
    }
    caught_up.cancel();
    tracing::info!(
        partition = p,
        from_stream_seq = from,
        to_stream_seq = target,
        took_ms = started.elapsed().as_millis() as u64,
        "partition caught up with its stream: it answers queries"
    );
}

/// The header of each [`OUT_STREAM`] message: where its last event is in
/// the partition's outbox (`store::outbox::Position`). The next owner reads
/// it back from the subject's last message and goes on after it.
pub const OUT_POS_HEADER: &str = "Sightline-Out-Pos";
/// Events read from the outbox at a time (whole shares).
const OUT_READ: usize = 4 * OUT_BATCH_EVENTS;
/// How long the publisher waits for a commit before it looks at the
/// outbox anyway.
const OUT_IDLE: std::time::Duration = std::time::Duration::from_millis(500);

/// Partition `p`'s last message in [`OUT_STREAM`]: its stream sequence (the
/// fence for the next publish; 0: none) and the outbox position it carries
/// (`None`: nothing published yet).
pub async fn out_cursor(
    nats: &Nats,
    p: u16,
) -> Result<(u64, Option<Option<Position>>), ClusterError> {
    let stream = nats
        .js
        .get_stream(OUT_STREAM)
        .await
        .map_err(|e| ClusterError::js("stream SIGHTLINE_OUT", e))?;
    match stream
        .get_last_raw_message_by_subject(&out_subject(p))
        .await
    {
        Ok(m) => {
            let pos = m
                .headers
                .get(OUT_POS_HEADER)
                .and_then(|v| v.as_str().parse::<Position>().ok());
            Ok((m.sequence, Some(pos)))
        }
        Err(e)
            if e.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            Ok((0, None))
        }
        Err(e) => Err(ClusterError::js("stream SIGHTLINE_OUT", e)),
    }
}

/// Publishes the partition's outbox (the events its commits stored, in
/// stream order) to `sightline.out.<p>`, in batches of consecutive events, each fenced
/// on the subject's last sequence and carrying its [`OUT_POS_HEADER`]; from
/// after the position the subject's last message carries, so what an owner
/// committed and did not publish before it died is published by the next,
/// once. Woken by each commit; once `done`, publishes what is left and
/// returns.
#[allow(clippy::too_many_arguments)]
async fn publish_out(
    nats: Nats,
    p: u16,
    store: Arc<Store>,
    locations: Arc<Locations>,
    mut commits: crate::api::live::LiveReceiver,
    lease: LeaseClock,
    done: CancellationToken,
    failed: CancellationToken,
) {
    let fail = |why: String| {
        tracing::warn!(partition = p, error = %why, "publishing to SIGHTLINE_OUT stopped; the partition stops");
        failed.cancel();
    };
    let (mut last, mut pos) = match out_cursor(&nats, p).await {
        Ok((last, Some(Some(pos)))) => (last, Some(pos)),
        Ok((last, None)) => (last, None),
        Ok((last, Some(None))) => {
            // Not one of ours: count what is in the outbox now as published.
            tracing::warn!(
                partition = p,
                "the partition's last SIGHTLINE_OUT message has no {OUT_POS_HEADER}; publishing from the next commit on"
            );
            match store.stream_seq() {
                Ok(s) => (
                    last,
                    Some(Position {
                        share: s,
                        index: u32::MAX,
                    }),
                ),
                Err(e) => return fail(e.to_string()),
            }
        }
        Err(e) => return fail(e.to_string()),
    };
    let subject = out_subject(p);
    let (mut closed, mut ending) = (false, false);
    // Shares read from the outbox and not yet deleted from it, in order.
    let mut untrimmed: Vec<u64> = Vec::new();
    loop {
        let read = {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.outbox_after(pos, OUT_READ)).await
        };
        let batch = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return fail(format!("reading the outbox: {e}")),
            Err(e) => return fail(format!("reading the outbox: {e}")),
        };
        if batch.is_empty() {
            if ending {
                return;
            }
            tokio::select! {
                biased;
                _ = done.cancelled() => ending = true,
                r = commits.recv(), if !closed => {
                    closed = matches!(r, Err(crate::api::live::Missed::Closed));
                }
                _ = tokio::time::sleep(OUT_IDLE) => {}
            }
            continue;
        }
        for (at, _) in &batch {
            if untrimmed.last() != Some(&at.share) {
                untrimmed.push(at.share);
            }
        }
        let table = locations.current();
        // Messages of at most OUT_BATCH_EVENTS events and about
        // OUT_BATCH_BYTES, each fenced on the subject's last sequence.
        let mut events = batch.into_iter().peekable();
        while events.peek().is_some() {
            if !lease.valid() {
                failed.cancel();
                return;
            }
            let mut out = OutBatch::default();
            let (mut bytes, mut from, mut through) = (0usize, None, None);
            while let Some((at, mut e)) =
                events.next_if(|_| out.events.len() < OUT_BATCH_EVENTS && bytes < OUT_BATCH_BYTES)
            {
                let loc = e
                    .detection
                    .as_ref()
                    .map_or(0, |d| d.geographical_location_oid);
                e.location = table.get(loc).cloned();
                bytes += e.encoded_len();
                out.events.push(e);
                from.get_or_insert(at);
                through = Some(at);
            }
            let (Some(from), Some(through)) = (from, through) else {
                break;
            };
            // The same stretch published again (an owner retrying) within
            // the duplicate window is one message.
            let id = format!("{p}/{from}-{through}");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(OUT_POS_HEADER, through.to_string().as_str());
            let msg = PublishMessage::build()
                .payload(out.encode_to_vec().into())
                .headers(headers)
                .message_id(id)
                .expected_last_subject_sequence(last);
            let ack = match nats.js.send_publish(subject.clone(), msg).await {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match ack {
                // A duplicate (published already, within the duplicate
                // window) is answered with the original's sequence.
                Ok(a) if a.duplicate => {}
                Ok(a) => last = a.sequence,
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    tracing::warn!(
                        partition = p,
                        "fenced: another owner published to this partition's OUT subject; stopping"
                    );
                    lease.expire();
                    failed.cancel();
                    return;
                }
                Err(err) => return fail(err.to_string()),
            }
            pos = Some(through);
        }
        // The shares published whole are let go of.
        let cut = untrimmed.partition_point(|s| pos.is_some_and(|p| *s < p.share));
        let done: Vec<u64> = untrimmed.drain(..cut).collect();
        if !done.is_empty() {
            let s = store.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.outbox_trim(done)).await {
                tracing::warn!(partition = p, error = %e, "trimming the outbox failed");
            }
        }
    }
}
