//! The running cluster node: announces itself in [`super::NODES_BUCKET`],
//! holds partition leases and opens an [`Owner`] for each, keeps its fair
//! share (`ceil(partitions / live nodes)`), and is the [`ClusterView`] the
//! read path queries.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    checkpoint::CheckpointManifest,
    config::ClusterConfig,
    lease::{self, Take},
    nats::{ClusterError, Nats},
    owner::{LeaseClock, Owner, OwnerContext},
    view::{ClusterView, LocalPartition, NodeInfo},
};

/// A node is live while its heartbeat is younger than this many leases
/// (it beats every third of one): a dead node's partitions are orphans
/// once their leases run out, and the living count their fair share
/// without it by then, so they take them at once instead of waiting for
/// the dead node to drop out of the count.
const LIVE_NODE_LEASES: i64 = 1;

pub struct Node {
    nats: Nats,
    node_id: String,
    info: NodeInfo,
    lease_ms: u64,
    ctx: OwnerContext,
    base: Instant,
    held: tokio::sync::Mutex<BTreeMap<u16, Owner>>,
    /// The lease clocks of the partitions held or being opened, renewed by
    /// [`Node::renew_all`] on its own schedule: a round that opens or closes
    /// partitions (a checkpoint restored, a store let go) takes seconds, and
    /// the other leases must not run out meanwhile.
    clocks: Mutex<BTreeMap<u16, LeaseClock>>,
    /// The partitions open now: what `local()` answers are those that can
    /// answer queries ([`Opened::answers`]).
    open: Mutex<BTreeMap<u16, Opened>>,
    /// The partitions being closed in the background, each until its store
    /// is let go: taking one back waits for it (its RocksDB lock is held
    /// until then; opening it sooner failed and released the lease).
    closing: Mutex<HashMap<u16, Closing>>,
    /// The last seen leases (partition -> node) and nodes, kept by watches.
    leases_seen: Arc<Mutex<HashMap<u16, lease::Lease>>>,
    nodes_seen: Arc<Mutex<HashMap<String, NodeInfo>>>,
    /// The newest checkpoint announced for each partition
    /// ([`super::checkpoint_subject`]): what the warm copies follow.
    announced: Arc<Mutex<HashMap<u16, CheckpointManifest>>>,
}

/// A partition open on this node, as the read path sees it.
struct Opened {
    local: LocalPartition,
    lease: LeaseClock,
    caught_up: CancellationToken,
    failed: CancellationToken,
}

impl Opened {
    /// Whether queries are answered from it: its owner has caught up with
    /// the stream since it opened (a new owner would give fewer events than
    /// the last one did), still applies it, and its lease still holds here
    /// (once it does not, another node may apply what this one will not:
    /// the partition is let go at the next round, which a round opening or
    /// closing other partitions can hold up for seconds).
    fn answers(&self) -> bool {
        self.caught_up.is_cancelled() && !self.failed.is_cancelled() && self.lease.valid()
    }
}

/// How long opening a partition waits for this node's own close of it.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A partition's owner closing in the background (see [`Node::closing`]).
type Closing = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

impl Node {
    /// Joins the cluster: announces the node and follows the leases and
    /// nodes buckets until `stop`. [`Node::run`] then keeps its leases.
    pub async fn start(
        cfg: &ClusterConfig,
        nats: Nats,
        info: NodeInfo,
        ctx: OwnerContext,
        stop: CancellationToken,
    ) -> Result<Arc<Node>, ClusterError> {
        let node = Arc::new(Node {
            node_id: info.node_id.clone(),
            info,
            lease_ms: cfg.lease_ms,
            ctx,
            base: Instant::now(),
            held: Default::default(),
            clocks: Default::default(),
            open: Default::default(),
            closing: Default::default(),
            leases_seen: Default::default(),
            nodes_seen: Default::default(),
            announced: Default::default(),
            nats,
        });
        node.heartbeat().await?;
        node.watch(stop).await?;
        Ok(node)
    }

    /// Keeps the leases (renewed every third of `lease_ms`) until `stop`,
    /// then stops every owner and gives their leases back.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let tick = Duration::from_millis(self.lease_ms / 3);
        // A round changes nothing and asks nothing of NATS unless the fair
        // share or a lease changed: cheap enough to run often, so that a
        // dead node's partitions are taken within a fraction of a second
        // of their leases running out instead of up to a third of a lease.
        let round =
            Duration::from_millis(self.lease_ms / 20).clamp(Duration::from_millis(100), tick);
        // Renewals go on while a round opens or closes partitions; both
        // are this one task (aborting it stops both).
        let renewals = async {
            loop {
                self.renew_all().await;
                tokio::time::sleep(tick).await;
            }
        };
        let rounds = async {
            loop {
                if let Err(e) = self.tick().await {
                    tracing::warn!(error = %e, "cluster lease round failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(round) => {}
                }
            }
        };
        // Warm copies of the checkpoints of the partitions this node would
        // take over (see `Node::warm`), following the announced checkpoints.
        let warms = async {
            let Some(url) = self.ctx.checkpoints.clone() else {
                return std::future::pending().await;
            };
            let mut dests = HashMap::new();
            let mut warmed = HashMap::new();
            loop {
                self.warm(&url, &mut dests, &mut warmed).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            _ = renewals => {}
            _ = rounds => {}
            _ = warms => {}
        }
        self.leave().await;
    }

    /// One warm round: for every partition another node holds and this
    /// node is one of the first takers of ([`warm_partitions`]: those that
    /// take it first if its owner dies), the warm copy of its newest
    /// checkpoint is brought up to date; the other warm copies are deleted.
    /// A takeover then restores from local disk all but the files the dead
    /// owner checkpointed since the last round, instead of fetching the
    /// whole checkpoint from the object store while the partition waits.
    /// `warmed`: the stream sequence each warm copy is at.
    async fn warm(
        &self,
        url: &str,
        dests: &mut HashMap<u16, Arc<crate::backup::Dest>>,
        warmed: &mut HashMap<u16, u64>,
    ) {
        let live: Vec<String> = self.live_nodes().into_iter().map(|n| n.node_id).collect();
        let seen = self.leases_seen.lock().unwrap().clone();
        let mine = warm_partitions(self.nats.partitions, &seen, &live, &self.node_id);
        let root = self.ctx.storage.join("warm");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let wanted = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix('p'))
                    .and_then(|n| n.parse::<u16>().ok())
                    .is_some_and(|p| mine.contains(&p));
                if !wanted {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        warmed.retain(|p, _| mine.contains(p));
        for p in mine {
            // Taken meanwhile (a round may take seconds): its warm copy is
            // the restore's now.
            if self.clocks.lock().unwrap().contains_key(&p) {
                continue;
            }
            let dest = match dests.get(&p) {
                Some(d) => d.clone(),
                None => match super::checkpoint::dest(url, p) {
                    Ok(d) => dests.entry(p).or_insert(Arc::new(d)).clone(),
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "cannot open the checkpoints");
                        continue;
                    }
                },
            };
            let known = self.announced.lock().unwrap().get(&p).cloned();
            let m = match known {
                Some(m) => m,
                // Nothing announced since this node started following:
                // the object store's newest, read once per partition.
                None if !warmed.contains_key(&p) => match super::checkpoint::latest(&dest).await {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        warmed.insert(p, 0);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(partition = p, error = %e, "reading the newest checkpoint failed");
                        continue;
                    }
                },
                None => continue,
            };
            if warmed.get(&p) == Some(&m.stream_seq) {
                continue;
            }
            let started = Instant::now();
            let dir = super::warm_dir(&self.ctx.storage, p);
            match super::checkpoint::warm_refresh(&dest, &m, &dir).await {
                Ok((files, bytes)) => {
                    warmed.insert(p, m.stream_seq);
                    tracing::debug!(
                        partition = p,
                        stream_seq = m.stream_seq,
                        files,
                        bytes,
                        ms = started.elapsed().as_millis() as u64,
                        "warm copy of the partition's checkpoint refreshed"
                    )
                }
                // Only a takeover's speed depends on it: tried again next round.
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "refreshing a warm copy failed")
                }
            }
        }
    }

    /// One renewal round: the heartbeat, then every lease in `clocks`, at
    /// once. A lease another node holds now is expired on its clock (its
    /// owner stops applying; the next round lets it go).
    async fn renew_all(&self) {
        if let Err(e) = self.heartbeat().await {
            tracing::warn!(error = %e, "cluster heartbeat failed");
        }
        let hold = self.hold();
        let clocks: Vec<(u16, LeaseClock)> = self
            .clocks
            .lock()
            .unwrap()
            .iter()
            .map(|(p, c)| (*p, c.clone()))
            .collect();
        futures::future::join_all(clocks.into_iter().map(|(p, clock)| async move {
            let rev = clock.revision.load(std::sync::atomic::Ordering::SeqCst);
            let sent = Instant::now();
            match lease::renew(&self.nats.leases, p, &self.node_id, self.lease_ms, rev).await {
                Ok(Some(r)) => clock.renewed(sent, hold, r),
                Ok(None) => {
                    tracing::warn!(partition = p, "lease lost to another node");
                    clock.expire();
                }
                // Kept while the lease still holds; its owner stops on its
                // own once it runs out.
                Err(e) => tracing::warn!(partition = p, error = %e, "lease renewal failed"),
            }
        }))
        .await;
    }

    pub fn nats(&self) -> &Nats {
        &self.nats
    }

    /// Writes this node's [`NodeInfo`] with a fresh heartbeat.
    async fn heartbeat(&self) -> Result<(), ClusterError> {
        let mut info = self.info.clone();
        info.heartbeat_ms = sightline_proto::now_ms();
        self.nats
            .nodes
            .put(
                &self.node_id,
                serde_json::to_vec(&info).expect("json").into(),
            )
            .await
            .map_err(|e| ClusterError::js("bucket sightline_nodes", e))?;
        Ok(())
    }

    /// Keeps `leases_seen` and `nodes_seen` current from the buckets. A
    /// watch that ends or breaks (its nats-server died, the bucket's leader
    /// moved) is made again — it delivers every key's last value first —
    /// so the view never freezes on what it last saw.
    async fn watch(&self, stop: CancellationToken) -> Result<(), ClusterError> {
        let leases = self.nats.leases.clone();
        let seen = self.leases_seen.clone();
        // Longer than any quiet spell of a live bucket (see `follow`).
        let silent = Duration::from_millis(2 * self.lease_ms);
        follow(
            "sightline_leases",
            leases,
            silent,
            stop.clone(),
            move |e: async_nats::jetstream::kv::Entry| {
                let Some(p) = e.key.strip_prefix("p.").and_then(|p| p.parse::<u16>().ok()) else {
                    return;
                };
                let mut seen = seen.lock().unwrap();
                match serde_json::from_slice::<lease::Lease>(&e.value) {
                    Ok(l) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                        seen.insert(p, l);
                    }
                    _ => {
                        seen.remove(&p);
                    }
                }
            },
        )
        .await?;
        // Checkpoint announcements (core NATS: the client subscribes again
        // after a reconnect by itself; one missed only delays a warm copy).
        let mut sub = self
            .nats
            .client
            .subscribe("sightline.checkpoint.*")
            .await
            .map_err(|e| ClusterError::js("checkpoint announcements", e))?;
        let (announced, partitions, stop_sub) =
            (self.announced.clone(), self.nats.partitions, stop.clone());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop_sub.cancelled() => return,
                    m = sub.next() => match m { Some(m) => m, None => return },
                };
                let p = msg
                    .subject
                    .as_str()
                    .strip_prefix("sightline.checkpoint.")
                    .and_then(|p| p.parse::<u16>().ok());
                match (
                    p,
                    serde_json::from_slice::<CheckpointManifest>(&msg.payload),
                ) {
                    (Some(p), Ok(m)) if m.partition == p && p < partitions => {
                        let mut a = announced.lock().unwrap();
                        if a.get(&p).is_none_or(|old| old.stream_seq < m.stream_seq) {
                            a.insert(p, m);
                        }
                    }
                    _ => {
                        tracing::debug!(subject = %msg.subject, "an announcement that is not a checkpoint manifest; skipped")
                    }
                }
            }
        });
        let seen = self.nodes_seen.clone();
        follow(
            "sightline_nodes",
            self.nats.nodes.clone(),
            silent,
            stop,
            move |e: async_nats::jetstream::kv::Entry| {
                let mut seen = seen.lock().unwrap();
                match serde_json::from_slice::<NodeInfo>(&e.value) {
                    Ok(n) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                        seen.insert(e.key, n);
                    }
                    _ => {
                        seen.remove(&e.key);
                    }
                }
            },
        )
        .await
    }

    /// The nodes whose heartbeat is recent.
    fn live_nodes(&self) -> Vec<NodeInfo> {
        let now = sightline_proto::now_ms();
        let horizon = LIVE_NODE_LEASES * self.lease_ms as i64;
        let mut v: Vec<NodeInfo> = self
            .nodes_seen
            .lock()
            .unwrap()
            .values()
            .filter(|n| now - n.heartbeat_ms <= horizon)
            .cloned()
            .collect();
        if !v.iter().any(|n| n.node_id == self.node_id) {
            let mut me = self.info.clone();
            me.heartbeat_ms = now;
            v.push(me);
        }
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// How many partitions this node should hold: its fair share.
    fn fair_share(&self) -> usize {
        let live = self.live_nodes().len().max(1);
        (self.nats.partitions as usize).div_ceil(live)
    }

    /// One round: let go of what is no longer held, take or release
    /// partitions toward the fair share ([`Node::renew_all`] renews).
    async fn tick(self: &Arc<Self>) -> Result<(), ClusterError> {
        let hold = self.hold();
        let mut held = self.held.lock().await;
        // A partition whose lease ran out or was lost, or whose owner
        // stopped, is let go.
        let ps: Vec<u16> = held.keys().copied().collect();
        for p in ps {
            let owner = &held[&p];
            let failed = owner.failed.is_cancelled();
            if !failed && owner.lease.valid() {
                continue;
            }
            let owner = held.remove(&p).expect("held");
            self.clocks.lock().unwrap().remove(&p);
            let rev = owner
                .lease
                .revision
                .load(std::sync::atomic::Ordering::SeqCst);
            owner.lease.expire();
            self.open.lock().unwrap().remove(&p);
            tracing::warn!(
                partition = p,
                failed,
                "partition let go (lease lost or owner stopped)"
            );
            if failed {
                let _ = lease::release(&self.nats.leases, p, rev).await;
            }
            // Closed in the background: closing waits until its store is
            // let go (a search index catching up holds it for seconds), and
            // this round must go on taking what the node is short of.
            self.close_in_background(p, owner);
        }
        let want = self.fair_share();
        // Held, or taken and still opening (in the background, see below).
        let have = self.clocks.lock().unwrap().len().max(held.len());
        if have > want {
            // Give back the extras, highest first: stop, then release.
            let extra: Vec<u16> = held.keys().rev().take(have - want).copied().collect();
            for p in extra {
                let owner = held.remove(&p).expect("held");
                self.clocks.lock().unwrap().remove(&p);
                self.open.lock().unwrap().remove(&p);
                let rev = owner
                    .lease
                    .revision
                    .load(std::sync::atomic::Ordering::SeqCst);
                owner.lease.expire();
                owner.close().await;
                if let Err(e) = lease::release(&self.nats.leases, p, rev).await {
                    tracing::warn!(partition = p, error = %e, "releasing a lease failed; it expires");
                }
                tracing::info!(partition = p, "partition released (rebalance)");
            }
        } else if have < want {
            // Start at a node-specific partition so nodes do not all race for the same ones.
            let n = self.nats.partitions;
            let start = self
                .node_id
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % n as u32;
            let now = sightline_proto::now_ms();
            let seen = self.leases_seen.lock().unwrap().clone();
            let live: Vec<String> = self.live_nodes().into_iter().map(|n| n.node_id).collect();
            // The other nodes holding their fair share already: they would
            // not take an expired lease they are designated for, so the
            // next in line is designated instead of everyone waiting for
            // the grace.
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for l in seen.values().filter(|l| l.expires_ms >= now) {
                *counts.entry(l.node.as_str()).or_default() += 1;
            }
            let full: std::collections::HashSet<&str> = counts
                .into_iter()
                .filter(|(n, c)| *c >= want && *n != self.node_id)
                .map(|(n, _)| n)
                .collect();
            // Take what the share allows first, then open them all at once
            // (each may restore a checkpoint: one after another, a dead
            // node's partitions would wait for each other).
            let mut taken = Vec::new();
            for i in 0..n {
                if have + taken.len() >= want {
                    break;
                }
                let p = ((start + i as u32) % n as u32) as u16;
                if held.contains_key(&p) || self.clocks.lock().unwrap().contains_key(&p) {
                    continue;
                }
                if let Some(l) = seen.get(&p) {
                    if l.expires_ms >= now {
                        continue;
                    }
                    // An expired lease is taken by one designated node
                    // first; the others only once it is still free a
                    // grace later. Two nodes taking one lease at once can
                    // both be told they have it on nats-server 2.9 (see
                    // `lease::take`), and each then restores the partition for
                    // nothing while another waits for an owner.
                    let first = designated_taker(p, &live, &l.node, &full);
                    if first.is_some_and(|d| d != self.node_id)
                        && now - l.expires_ms < self.take_grace_ms()
                    {
                        continue;
                    }
                }
                let sent = Instant::now();
                match lease::take(&self.nats.leases, p, &self.node_id, self.lease_ms).await? {
                    Take::Held(_) => continue,
                    Take::Taken(rev) => {
                        tracing::info!(partition = p, revision = rev, "lease taken");
                        let clock = LeaseClock::new(self.base);
                        clock.renewed(sent, hold, rev);
                        // Opening may take longer than a lease (a checkpoint
                        // restored): renewed meanwhile with the others.
                        self.clocks.lock().unwrap().insert(p, clock.clone());
                        taken.push((p, rev, clock));
                    }
                }
            }
            if !taken.is_empty() {
                // Opened in the background: a restore takes seconds, and the
                // rounds go on meanwhile (letting go what is lost, taking
                // what a grace later is still free).
                tokio::spawn(self.clone().open_taken(taken));
            }
        }
        Ok(())
    }

    /// Closes `owner` of partition `p` in the background, remembered until
    /// it has (see [`Node::closing`]).
    fn close_in_background(self: &Arc<Self>, p: u16, owner: Owner) {
        use futures::FutureExt;
        let done: Closing = tokio::spawn(owner.close()).map(|_| ()).boxed().shared();
        self.closing.lock().unwrap().insert(p, done.clone());
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            done.await;
            if let Some(node) = node.upgrade() {
                let mut closing = node.closing.lock().unwrap();
                // Unless a later close of the same partition replaced it.
                if closing.get(&p).is_some_and(|c| c.peek().is_some()) {
                    closing.remove(&p);
                }
            }
        });
    }

    /// Opens the partitions just taken, all at once (each may restore a
    /// checkpoint: one after another, a dead node's partitions would wait for
    /// each other), and holds those whose lease is still this node's.
    async fn open_taken(self: Arc<Self>, taken: Vec<(u16, u64, LeaseClock)>) {
        let opened = futures::future::join_all(taken.into_iter().map(|(p, rev, clock)| {
            let node = self.clone();
            async move {
                // Taken back while this node still closes it: after that,
                // within a bound (a close that never ends must not keep the
                // partition here: opening then fails and releases the lease,
                // as it did before).
                let closing = node.closing.lock().unwrap().get(&p).cloned();
                if let Some(c) = closing {
                    if tokio::time::timeout(CLOSE_WAIT, c).await.is_err() {
                        tracing::warn!(
                            partition = p,
                            "still closing after {CLOSE_WAIT:?}; opening anyway"
                        );
                    }
                }
                (p, rev, Owner::open(&node.ctx, p, clock).await)
            }
        }))
        .await;
        let mut held = self.held.lock().await;
        for (p, rev, opened) in opened {
            match opened {
                // Left (the node is stopping) or lost meanwhile: closed.
                Ok(owner) if !self.clocks.lock().unwrap().contains_key(&p) => {
                    self.close_in_background(p, owner);
                }
                Ok(owner) => {
                    self.open.lock().unwrap().insert(
                        p,
                        Opened {
                            local: LocalPartition {
                                partition: p,
                                store: owner.store.clone(),
                                search: Some(owner.search.clone()),
                                lease_revision: owner
                                    .lease
                                    .revision
                                    .load(std::sync::atomic::Ordering::SeqCst),
                                checkpoint_ms: owner.checkpoint_ms.clone(),
                            },
                            lease: owner.lease.clone(),
                            caught_up: owner.caught_up.clone(),
                            failed: owner.failed.clone(),
                        },
                    );
                    held.insert(p, owner);
                }
                Err(e) => {
                    self.clocks.lock().unwrap().remove(&p);
                    tracing::error!(partition = p, error = %e, "cannot open the partition; its lease is released");
                    let _ = lease::release(&self.nats.leases, p, rev).await;
                }
            }
        }
    }

    /// How long after a lease expired a node other than its designated
    /// taker ([`designated_taker`]) may take it.
    fn take_grace_ms(&self) -> i64 {
        (self.lease_ms / 2) as i64
    }

    /// How long a lease written now holds for this node: a sixth short of
    /// its length, so that it stops before any other node may take it.
    fn hold(&self) -> Duration {
        Duration::from_millis(self.lease_ms - self.lease_ms / 6)
    }

    /// Stops every owner and releases their leases; leaves the nodes bucket.
    async fn leave(&self) {
        let mut held = self.held.lock().await;
        self.clocks.lock().unwrap().clear();
        for (p, owner) in std::mem::take(&mut *held) {
            self.open.lock().unwrap().remove(&p);
            let rev = owner
                .lease
                .revision
                .load(std::sync::atomic::Ordering::SeqCst);
            owner.lease.expire();
            owner.close().await;
            let _ = lease::release(&self.nats.leases, p, rev).await;
        }
        let _ = self.nats.nodes.delete(&self.node_id).await;
    }

    /// The partitions this node holds now.
    pub async fn held(&self) -> Vec<u16> {
        self.held.lock().await.keys().copied().collect()
    }
}

/// Watches every key of `bucket` and hands each entry to `apply` until
/// `stop`, making the watch again whenever it ends or breaks. The first
/// watch is made before this returns (its error is the caller's).
async fn follow(
    name: &'static str,
    bucket: async_nats::jetstream::kv::Store,
    silent: Duration,
    stop: CancellationToken,
    apply: impl Fn(async_nats::jetstream::kv::Entry) + Send + 'static,
) -> Result<(), ClusterError> {
    let mut watch = bucket
        .watch_all()
        .await
        .map_err(|e| ClusterError::js(name, e))?;
    tokio::spawn(async move {
        loop {
            let e = tokio::select! {
                _ = stop.cancelled() => return,
                e = tokio::time::timeout(silent, watch.next()) => e,
            };
            match e {
                Ok(Some(Ok(e))) => {
                    apply(e);
                    continue;
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(bucket = name, error = %e, "the bucket's watch broke; watching again")
                }
                Ok(None) => {
                    tracing::warn!(bucket = name, "the bucket's watch ended; watching again")
                }
                // Both buckets change every third of a lease (heartbeats,
                // renewals, this node's own among them): a watch silent for
                // longer is stuck (seen: the client reconnected to another
                // nats-server and the watch's consumer was never made again,
                // without an error), and this node's view would freeze.
                Err(_) => tracing::warn!(
                    bucket = name,
                    silent_ms = silent.as_millis() as u64,
                    "the bucket's watch went silent; watching again"
                ),
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                match bucket.watch_all().await {
                    Ok(w) => {
                        watch = w;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(bucket = name, error = %e, "cannot watch the bucket; trying again")
                    }
                }
            }
        }
    });
    Ok(())
}

impl ClusterView for Node {
    fn partitions(&self) -> u16 {
        self.nats.partitions
    }
    fn node_id(&self) -> &str {
        &self.node_id
    }
    fn local(&self) -> Vec<LocalPartition> {
        self.open
            .lock()
            .unwrap()
            .values()
            .filter(|o| o.answers())
            .map(|o| o.local.clone())
            .collect()
    }
    fn opened(&self) -> Vec<u16> {
        self.open.lock().unwrap().keys().copied().collect()
    }
    fn owner(&self, p: u16) -> Option<NodeInfo> {
        let l = self.leases_seen.lock().unwrap().get(&p).cloned()?;
        if l.expires_ms < sightline_proto::now_ms() {
            return None;
        }
        if l.node == self.node_id {
            return Some(self.info.clone());
        }
        self.nodes_seen.lock().unwrap().get(&l.node).cloned()
    }
    fn nodes(&self) -> Vec<NodeInfo> {
        self.live_nodes()
    }
    fn applied_seq(&self, p: u16) -> Option<u64> {
        let store = self.open.lock().unwrap().get(&p)?.local.store.clone();
        store.stream_seq().ok()
    }
    fn checkpoint_ms(&self, p: u16) -> Option<i64> {
        let at = self
            .open
            .lock()
            .unwrap()
            .get(&p)?
            .local
            .checkpoint_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        (at > 0).then_some(at)
    }
}

/// The live nodes other than `holder`, in the order they are asked to take
/// partition `p`'s expired lease: by FNV-1a hash of (partition, node id),
/// highest first, the same on every node (rendezvous hashing: a dead node's
/// partitions spread over the living).
fn takers<'a>(p: u16, live: &'a [String], holder: &str) -> Vec<&'a str> {
    let hash = |n: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in p.to_be_bytes().iter().chain(n.as_bytes()) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let mut v: Vec<&str> = live
        .iter()
        .map(String::as_str)
        .filter(|n| *n != holder)
        .collect();
    v.sort_by(|a, b| (hash(b), *b).cmp(&(hash(a), *a)));
    v
}

/// Which live node takes partition `p`'s expired lease first (the one that
/// held it excluded): the first of [`takers`] that is not `full` (holds its
/// fair share already, so would not take it), or the first of all when
/// every one is.
fn designated_taker<'a>(
    p: u16,
    live: &'a [String],
    holder: &str,
    full: &std::collections::HashSet<&str>,
) -> Option<&'a str> {
    let ranked = takers(p, live, holder);
    ranked
        .iter()
        .find(|n| !full.contains(**n))
        .or(ranked.first())
        .copied()
}

/// How many of a partition's first [`takers`] keep a warm copy of its
/// checkpoints. The first may be full when the holder dies (see
/// [`designated_taker`]) and the next then takes it without one; two
/// copies doubled the object store's reads, and on this machine (moto, a
/// Python process beside everything else) the copies then lagged behind
/// (BENCHMARKS.md, "tenth session").
const WARM_TAKERS: usize = 1;

/// The partitions `me` keeps warm copies of: those another node holds (or
/// held, its lease run out) and `me` is one of the first [`WARM_TAKERS`]
/// [`takers`] of.
fn warm_partitions(
    partitions: u16,
    leases: &HashMap<u16, lease::Lease>,
    live: &[String],
    me: &str,
) -> Vec<u16> {
    (0..partitions)
        .filter(|p| {
            leases.get(p).is_some_and(|l| {
                l.node != me
                    && takers(*p, live, &l.node)
                        .iter()
                        .take(WARM_TAKERS)
                        .any(|n| *n == me)
            })
        })
        .collect()
}

#[cfg(test)]
mod designated_tests {
    use std::collections::HashSet;

    use super::{designated_taker, takers, warm_partitions, WARM_TAKERS};

    #[test]
    fn each_held_partition_is_kept_warm_by_its_first_takers() {
        let live: Vec<String> = ["core-0", "core-1", "core-2", "core-3"]
            .map(String::from)
            .to_vec();
        let leases: std::collections::HashMap<u16, crate::cluster::lease::Lease> = (0..32u16)
            .map(|p| {
                let l = crate::cluster::lease::Lease {
                    node: live[p as usize % 4].clone(),
                    expires_ms: 0,
                };
                (p, l)
            })
            .collect();
        let warm: Vec<Vec<u16>> = live
            .iter()
            .map(|me| warm_partitions(32, &leases, &live, me))
            .collect();
        for p in 0..32u16 {
            let holder = &leases[&p].node;
            let keepers: HashSet<&str> = (0..4)
                .filter(|i| warm[*i].contains(&p))
                .map(|i| live[i].as_str())
                .collect();
            assert_eq!(keepers.len(), WARM_TAKERS, "partition {p}: {keepers:?}");
            assert!(
                !keepers.contains(holder.as_str()),
                "never the holder itself"
            );
            // The first in line (designated when the holder dies and it is
            // not full) has a warm copy, and so on down the line.
            let ranked = takers(p, &live, holder);
            let first = designated_taker(p, &live, holder, &HashSet::new()).unwrap();
            assert_eq!(first, ranked[0]);
            let want: HashSet<&str> = ranked[..WARM_TAKERS].iter().copied().collect();
            assert_eq!(keepers, want);
        }
        // A partition with no lease (never held) is nobody's.
        let mut some = leases.clone();
        some.remove(&5);
        assert!(live
            .iter()
            .all(|me| !warm_partitions(32, &some, &live, me).contains(&5)));
    }

    #[test]
    fn a_full_node_is_passed_over_and_when_all_are_full_the_first_is_designated() {
        let live: Vec<String> = ["core-0", "core-1", "core-2"].map(String::from).to_vec();
        for p in 0..32u16 {
            let ranked = takers(p, &live, "core-2");
            assert_eq!(ranked.len(), 2);
            let full = HashSet::from([ranked[0]]);
            assert_eq!(designated_taker(p, &live, "core-2", &full), Some(ranked[1]));
            let all = HashSet::from([ranked[0], ranked[1]]);
            assert_eq!(designated_taker(p, &live, "core-2", &all), Some(ranked[0]));
        }
    }

    #[test]
    fn one_live_node_other_than_the_holder_is_designated_for_each_partition_and_they_spread() {
        let live: Vec<String> = ["core-0", "core-1", "core-2"].map(String::from).to_vec();
        let mut per_node = std::collections::HashMap::new();
        for p in 0..32u16 {
            let d = designated_taker(p, &live, "core-2", &HashSet::new()).unwrap();
            assert_ne!(d, "core-2", "the holder is never designated");
            // The same answer whatever order a node lists the live nodes in.
            let mut rev = live.clone();
            rev.reverse();
            assert_eq!(
                designated_taker(p, &rev, "core-2", &HashSet::new()),
                Some(d)
            );
            *per_node.entry(d).or_insert(0) += 1;
        }
        assert_eq!(
            per_node.len(),
            2,
            "both living nodes get some: {per_node:?}"
        );
        assert!(per_node.values().all(|&n| n >= 8), "{per_node:?}");
        assert_eq!(
            designated_taker(0, &live[..1], "core-0", &HashSet::new()),
            None
        );
    }
}

#[cfg(test)]
mod opened_tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use tokio_util::sync::CancellationToken;

    use super::{LeaseClock, LocalPartition, Opened};
    use crate::store::Store;

    #[test]
    fn a_partition_answers_queries_only_caught_up_still_applying_and_under_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let lease = LeaseClock::new(Instant::now());
        lease.renewed(Instant::now(), Duration::from_secs(60), 1);
        let o = Opened {
            local: LocalPartition {
                partition: 0,
                store: Arc::new(Store::open(dir.path(), false, 8 << 20).unwrap()),
                search: None,
                lease_revision: 1,
                checkpoint_ms: Arc::default(),
            },
            lease: lease.clone(),
            caught_up: CancellationToken::new(),
            failed: CancellationToken::new(),
        };
        assert!(!o.answers(), "not before it caught up with its stream");
        o.caught_up.cancel();
        assert!(o.answers());
        lease.expire();
        assert!(!o.answers(), "not once its lease ran out here");
        lease.renewed(Instant::now(), Duration::from_secs(60), 2);
        assert!(o.answers());
        o.failed.cancel();
        assert!(!o.answers(), "not once its owner stopped applying");
    }
}
