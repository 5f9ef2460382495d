//! The query API in cluster mode: every request is answered from the
//! partitions this node holds ([`ClusterView::local`]) and, for the others,
//! by the owners ([`ClusterView::owner`]) over peer calls ([`super::peer`]),
//! then merged so that the answer is the one a single node holding every
//! event would give:
//! - TopItems: each partition answers with its *untruncated* counts per
//!   location and item; they are summed, then ranked and cut to X (exact);
//! - ListEvents: one page from each partition, merged in key order
//!   (timestamp_detected, det_oid); the page token holds a cursor per
//!   partition ([`EventsToken`]);
//! - Search: each partition searched with the same cursor (a position in the
//!   one total order, newest first, det_oid breaking ties), merged; the token
//!   is the single node's;
//! - GetEvent: asked of the det_oid's partition only;
//! - Stats, Completeness: summed / united over the partitions;
//!   ListQuarantine: the partitions' quarantines one after another;
//!   Fleet: every node's agents.
//!
//! The caller's credential, role, scope and audit record are checked on the
//! node it called (`api::query`); peer calls carry its scope and the owner
//! filters by it.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::Arc,
};

use futures::{StreamExt, TryStreamExt};
use sightline_proto::v1::{
    query_client::QueryClient, AgentInfo, CameraCompleteness, CompletenessRequest,
    CompletenessResponse, EventFilter, FleetRequest, Gap, GetEventRequest, ItemCount, JoinedEvent,
    ListEventsRequest, ListEventsResponse, ListQuarantineRequest, ListQuarantineResponse,
    LocationTop, QuarantinedEvent, SearchRequest, SearchResponse, StatsRequest, StatsResponse,
    TimelineRequest, TimelineResponse, TopItemsRequest, TopItemsResponse,
};
use sightline_proto::ApiError;
use tonic::{transport::Channel, Status};

use super::{
    peer::{self, PeerCall, Peers, MAX_FANOUT},
    view::{ClusterView, LocalPartition, NodeInfo},
};
use crate::{
    access::Scope,
    api::query::blocking,
    search,
    store::{
        keys,
        received::RangeSet,
        views::{timeline_buckets, TimelineBy, TimelineCounts, TimelineSeries},
        Counters, LocationCounts,
    },
};

/// The read path of a cluster node: its view of the cluster and its clients
/// for the other nodes.
pub struct ClusterQuery {
    pub view: Arc<dyn ClusterView>,
    pub peers: Peers,
    /// Subscribe's source ([`super::feed`]); `None`: Subscribe is refused
    /// as UNAVAILABLE (no NATS connection).
    pub feed: Option<super::feed::Feed>,
    /// This node's own [`super::status::collect`], as the status task last
    /// made it (for [`ClusterQuery::status`]).
    pub own_status: Arc<std::sync::Mutex<Option<super::status::ClusterStatus>>>,
    /// How long a query waits for moving partitions ([`MOVE_WAIT`]).
    pub move_wait: std::time::Duration,
}

/// How long a query waits for the owners of partitions that are moving
/// (a lease expiring after its node died, a new owner restoring the
/// checkpoint) before it answers UNAVAILABLE: a few leases.
pub const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// How often a waiting query looks for the new owners.
pub const MOVE_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// What a refusal says of a partition without an open owner.
const NO_OWNER: &str = "has no open owner now";

/// Whether `s` says a partition is moving: no open owner, a node that no
/// longer holds it, or an owner that does not answer (dead, its lease not
/// yet expired).
fn moving(s: &Status) -> bool {
    peer::is_not_held(s)
        || (s.code() == tonic::Code::Unavailable
            && (s.message().contains(NO_OWNER) || s.message().contains(peer::NO_ANSWER)))
}

/// Where a query's partitions are answered.
enum Target {
    Local(Vec<LocalPartition>),
    Remote(NodeInfo, Vec<u16>),
}

type Client = QueryClient<Channel>;

/// Messages of [`super::OUT_STREAM`] (one partition's commit each) read at
/// most for the latest events.
const LATEST_MESSAGES: usize = 512;

impl ClusterQuery {
    pub fn new(view: Arc<dyn ClusterView>, peer_token: impl Into<String>) -> Self {
        Self {
            view,
            peers: Peers::new(peer_token),
            feed: None,
            own_status: Arc::default(),
            move_wait: MOVE_WAIT,
        }
    }

    /// The newest `limit` events committed over every partition that `keep`
    /// accepts, newest first (joined with Dataset B as their owners
    /// published them; no media): see [`super::feed::Feed::latest`].
    pub async fn latest(
        &self,
        limit: usize,
        keep: impl Fn(&JoinedEvent) -> bool,
    ) -> Result<Vec<JoinedEvent>, Status> {
        let feed = self.feed.as_ref().ok_or_else(|| {
            Status::from(ApiError::unavailable(
                "the latest events: this cluster node has no NATS connection",
            ))
        })?;
        feed.latest(limit, LATEST_MESSAGES, keep).await
    }

    /// The cluster as `sightline-core cluster status` shows it, gathered by
    /// this node: owners as it sees them, each partition's sequences, lag
    /// and checkpoint age from its owner's `/metrics`; with the nodes whose
    /// report could not be read, and why.
    pub async fn status(&self) -> Result<(super::status::ClusterStatus, Vec<String>), Status> {
        let own = self
            .own_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Status::from(ApiError::unavailable(
                    "this node has not gathered the cluster's status yet (every 5 s)",
                ))
            })?;
        Ok(super::status::gather(own, Some(self.view.node_id()), self.peers.tls()).await)
    }

    /// Events stored at the locations of `scope` over every partition (all
    /// time, from the aggregates), as on a single node.
    pub async fn scoped_stored(&self, scope: &Scope) -> Result<u64, Status> {
        let to = sightline_proto::now_ms() + 60_000;
        let counts = self.top_items(scope, 0, to, 1, None).await?;
        Ok(counts.iter().map(|c| c.total).sum())
    }

    /// Nodes that serve TLS are dialled trusting `tls` (`cluster.peer_ca`).
    pub fn with_peer_tls(mut self, tls: Option<super::peer::PeerTls>) -> Self {
        self.peers = self.peers.with_tls(tls);
        self
    }

    /// Subscribe reads [`super::OUT_STREAM`] through `feed`.
    pub fn with_feed(mut self, feed: super::feed::Feed) -> Self {
        self.feed = Some(feed);
        self
    }

    /// `None`: not a peer call. Otherwise the call, or why it is refused.
    pub fn peer_call<T>(&self, req: &tonic::Request<T>) -> Option<Result<PeerCall, ApiError>> {
        peer::peer_call(req, self.peers.token(), self.view.partitions())
    }

    fn all_partitions(&self) -> Vec<u16> {
        (0..self.view.partitions()).collect()
    }

    /// Who answers for `parts` now: this node's open partitions, and the
    /// others grouped by owner (one call per owner when `group`, else one
    /// per partition). A partition without an owner is UNAVAILABLE.
    fn plan(&self, parts: &[u16], group: bool) -> Result<Vec<Target>, Status> {
        let local: HashMap<u16, LocalPartition> = self
            .view
            .local()
            .into_iter()
            .map(|l| (l.partition, l))
            .collect();
        let mut here = Vec::new();
        let mut remote: BTreeMap<(String, u16), (NodeInfo, Vec<u16>)> = BTreeMap::new();
        for &p in parts {
            if let Some(l) = local.get(&p) {
                here.push(l.clone());
                continue;
            }
            match self.view.owner(p) {
                Some(n) if n.node_id != self.view.node_id() => {
                    let key = (n.node_id.clone(), if group { 0 } else { p });
                    remote
                        .entry(key)
                        .or_insert_with(|| (n, Vec::new()))
                        .1
                        .push(p);
                }
                _ => {
                    return Err(ApiError::unavailable(format!(
                        "partition {p} {NO_OWNER} (its lease is moving, or its new owner is catching up with its stream); try again in a few seconds"
                    ))
                    .into())
                }
            }
        }
        let mut out = vec![Target::Local(here)];
        out.extend(remote.into_values().map(|(n, ps)| Target::Remote(n, ps)));
        Ok(out)
    }

    /// Runs `local` on each partition of `parts` this node holds (on the
    /// blocking pool) and `remote` for the others on their owners, at most
    /// [`MAX_FANOUT`] at once; a peer that no longer holds a partition gets
    /// it asked again of the owner read anew (once). Each answer comes with
    /// the partitions it covers.
    ///
    /// While partitions move (a node died or joined: leases expire, new
    /// owners restore and open them), a query waits for their owners up to
    /// [`MOVE_WAIT`], asking again every [`MOVE_POLL`], instead of failing
    /// at once; past that it is UNAVAILABLE, naming the partition.
    async fn fan<R, L, F, Fut>(
        &self,
        parts: &[u16],
        group: bool,
        local: L,
        remote: F,
    ) -> Result<Vec<(Vec<u16>, R)>, Status>
    where
        R: Send + 'static,
        L: Fn(&LocalPartition) -> Result<R, Status> + Clone + Send + Sync + 'static,
        F: Fn(Client, Vec<u16>) -> Fut + Clone + Send + Sync,
        Fut: Future<Output = Result<R, Status>> + Send,
    {
        let deadline = tokio::time::Instant::now() + self.move_wait;
        loop {
            match self
                .fan_once(parts, group, local.clone(), remote.clone())
                .await
            {
                Err(s) if moving(&s) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %s.message(), "a partition is moving; asking again");
                    tokio::time::sleep(MOVE_POLL).await;
                }
                // A peer's "not held here" is between nodes: the caller is
                // told what it means to them, "moving, try again".
                Err(s) if peer::is_not_held(&s) => {
                    return Err(ApiError::unavailable(format!(
                        "{} (its lease moved and the cluster has not settled within {:?}); try again in a few seconds",
                        s.message(),
                        self.move_wait
                    ))
                    .into())
                }
                r => return r,
            }
        }
    }

    async fn fan_once<R, L, F, Fut>(
        &self,
        parts: &[u16],
        group: bool,
        local: L,
        remote: F,
    ) -> Result<Vec<(Vec<u16>, R)>, Status>
    where
        R: Send + 'static,
        L: Fn(&LocalPartition) -> Result<R, Status> + Clone + Send + Sync + 'static,
        F: Fn(Client, Vec<u16>) -> Fut + Clone + Send + Sync,
        Fut: Future<Output = Result<R, Status>> + Send,
    {
        let mut units: Vec<Target> = Vec::new();
        for t in self.plan(parts, group)? {
            match t {
                // One unit per local partition: they run in parallel too.
                Target::Local(ls) => units.extend(ls.into_iter().map(|l| Target::Local(vec![l]))),
                t => units.push(t),
            }
        }
        let results: Vec<Vec<(Vec<u16>, R)>> = futures::stream::iter(units)
            .map(|t| {
                let (local, remote) = (local.clone(), remote.clone());
                async move { self.run(t, local, remote, true).await }
            })
            .buffer_unordered(MAX_FANOUT)
            .try_collect()
            .await?;
        Ok(results.into_iter().flatten().collect())
    }

    async fn run<R, L, F, Fut>(
        &self,
        t: Target,
        local: L,
        remote: F,
        retry: bool,
    ) -> Result<Vec<(Vec<u16>, R)>, Status>
    where
        R: Send + 'static,
        L: Fn(&LocalPartition) -> Result<R, Status> + Clone + Send + Sync + 'static,
        F: Fn(Client, Vec<u16>) -> Fut + Clone + Send + Sync,
        Fut: Future<Output = Result<R, Status>> + Send,
    {
        match t {
            Target::Local(ls) => {
                let mut out = Vec::with_capacity(ls.len());
                for l in ls {
                    let f = local.clone();
                    let p = l.partition;
                    out.push((vec![p], blocking(move || f(&l)).await?));
                }
                Ok(out)
            }
            Target::Remote(node, ps) => {
                let client = self.peers.client(&node.grpc)?;
                match remote(client, ps.clone()).await {
                    Ok(r) => Ok(vec![(ps, r)]),
                    Err(s) if retry && peer::is_not_held(&s) => {
                        tracing::debug!(node = %node.node_id, ?ps, "peer no longer holds partitions; asking their owner again");
                        let mut out = Vec::new();
                        for t in self.plan(&ps, true)? {
                            let again = Box::pin(self.run(t, local.clone(), remote.clone(), false));
                            out.extend(again.await?);
                        }
                        Ok(out)
                    }
                    Err(s) => Err(peer::peer_failed(&node.node_id, s)),
                }
            }
        }
    }

    /// The partitions of a peer call, each held here; else the named
    /// refusal of the first that is not.
    fn held(&self, call: &PeerCall) -> Result<Vec<LocalPartition>, Status> {
        let mut local: HashMap<u16, LocalPartition> = self
            .view
            .local()
            .into_iter()
            .map(|l| (l.partition, l))
            .collect();
        call.partitions
            .iter()
            .map(|p| {
                local
                    .remove(p)
                    .ok_or_else(|| peer::not_held(*p, self.view.node_id()).into())
            })
            .collect()
    }
}

// ---- TopItems -------------------------------------------------------------

/// Sums per location and item, then ranks (count, then name) and keeps `x`
/// items per location: what [`crate::store::Store::top_items_in`] gives for
/// the union of the partitions.
pub fn merge_top(
    parts: impl IntoIterator<Item = Vec<LocationCounts>>,
    x: usize,
) -> Vec<LocationCounts> {
    let mut sums: HashMap<i64, (u64, HashMap<String, u64>)> = HashMap::new();
    for part in parts {
        for l in part {
            let e = sums.entry(l.location).or_default();
            e.0 += l.total;
            for (item, n) in l.items {
                *e.1.entry(item).or_default() += n;
            }
        }
    }
    let mut out: Vec<LocationCounts> = sums
        .into_iter()
        .map(|(location, (total, items))| {
            let mut items: Vec<(String, u64)> = items.into_iter().filter(|(_, c)| *c > 0).collect();
            items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            items.truncate(x);
            LocationCounts {
                location,
                total,
                items,
            }
        })
        .filter(|l| l.total > 0)
        .collect();
    out.sort_by_key(|l| l.location);
    out
}

fn counts_of(r: TopItemsResponse) -> Vec<LocationCounts> {
    r.locations
        .into_iter()
        .map(|l| LocationCounts {
            location: l.geographical_location_oid,
            total: l.total,
            items: l
                .items
                .into_iter()
                .map(|i| (i.item_name, i.count))
                .collect(),
        })
        .collect()
}

fn response_of(counts: Vec<LocationCounts>, from_ms: i64, to_ms: i64) -> TopItemsResponse {
    TopItemsResponse {
        locations: counts
            .into_iter()
            .map(|c| LocationTop {
                geographical_location_oid: c.location,
                total: c.total,
                items: c
                    .items
                    .into_iter()
                    .map(|(item_name, count)| ItemCount { item_name, count })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        from_ms: keys::Bucket::Minute.floor(from_ms),
        to_ms: keys::Bucket::Minute.floor(to_ms),
    }
}

impl ClusterQuery {
    /// Top `x` items per location over every partition, exact.
    pub async fn top_items(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
        x: usize,
        location: Option<i64>,
    ) -> Result<Vec<LocationCounts>, Status> {
        let s = scope.clone();
        let local = move |l: &LocalPartition| {
            Ok(crate::access::scoped_top_items(
                &l.store,
                &s,
                from_ms,
                to_ms,
                usize::MAX,
                location,
            )?)
        };
        let remote = |mut c: Client, ps: Vec<u16>| {
            let req = self.peers.request(
                TopItemsRequest {
                    from_ms,
                    to_ms,
                    x: 0,
                    geographical_location_oid: location,
                },
                &ps,
                scope,
            );
            async move { Ok(counts_of(c.top_items(req).await?.into_inner())) }
        };
        let parts = self
            .fan(&self.all_partitions(), true, local, remote)
            .await?;
        Ok(merge_top(parts.into_iter().map(|(_, r)| r), x))
    }

    /// A peer's TopItems: every item's count (`x` is ignored: the caller
    /// ranks after summing), from the partitions asked for.
    pub async fn peer_top_items(
        &self,
        call: PeerCall,
        r: TopItemsRequest,
    ) -> Result<TopItemsResponse, Status> {
        let held = self.held(&call)?;
        let scope = call.scope;
        let (from, to, loc) = (r.from_ms, r.to_ms, r.geographical_location_oid);
        let counts = blocking(move || {
            let mut parts = Vec::with_capacity(held.len());
            for l in &held {
                parts.push(crate::access::scoped_top_items(
                    &l.store,
                    &scope,
                    from,
                    to,
                    usize::MAX,
                    loc,
                )?);
            }
            Ok(merge_top(parts, usize::MAX))
        })
        .await?;
        Ok(response_of(counts, from, to))
    }
}

// ---- Timeline -------------------------------------------------------------

/// The proto's `by` as the store's; UNSPECIFIED and unknown values refused
/// naming the field.
pub fn timeline_by(by: i32) -> Result<TimelineBy, ApiError> {
    use sightline_proto::v1::TimelineBy as P;
    match P::try_from(by) {
        Ok(P::Item) => Ok(TimelineBy::Item),
        Ok(P::Location) => Ok(TimelineBy::Location),
        _ => Err(ApiError::field(
            "by",
            format!("{by} is not TIMELINE_BY_ITEM (1) or TIMELINE_BY_LOCATION (2)"),
        )),
    }
}

/// `t` as the API answers it: the first `max_series` series by name, the
/// rest summed per bucket into `other`.
pub fn timeline_response(t: TimelineCounts, max_series: usize) -> TimelineResponse {
    let mut other = vec![0u64; t.buckets];
    let mut series = Vec::new();
    let mut folded = false;
    for (i, s) in t.series.into_iter().enumerate() {
        if i < max_series {
            series.push(sightline_proto::v1::TimelineSeries {
                total: s.counts.iter().sum(),
                key: s.key,
                counts: s.counts,
            });
        } else {
            folded = true;
            for (o, c) in other.iter_mut().zip(s.counts) {
                *o += c;
            }
        }
    }
    TimelineResponse {
        from_ms: t.from_ms,
        bucket_ms: t.bucket_ms,
        buckets: t.buckets as u32,
        series,
        other: if folded { other } else { Vec::new() },
    }
}

/// A peer's whole answer (no `other`) back to counts.
fn timeline_of(r: TimelineResponse) -> TimelineCounts {
    TimelineCounts {
        from_ms: r.from_ms,
        bucket_ms: r.bucket_ms,
        buckets: r.buckets as usize,
        series: r
            .series
            .into_iter()
            .map(|s| TimelineSeries {
                key: s.key,
                counts: s.counts,
            })
            .collect(),
    }
}

/// The timeline of `parts` (held here) for `scope`, summed.
fn local_timeline(
    parts: &[LocalPartition],
    scope: &Scope,
    from_ms: i64,
    to_ms: i64,
    by: TimelineBy,
) -> Result<TimelineCounts, Status> {
    let mut all = Vec::with_capacity(parts.len());
    for l in parts {
        all.push(
            l.store
                .timeline_in(from_ms, to_ms, by, |loc| scope.allows(loc))?,
        );
    }
    merged_timeline(all, from_ms, to_ms)
}

fn merged_timeline(
    parts: Vec<TimelineCounts>,
    from_ms: i64,
    to_ms: i64,
) -> Result<TimelineCounts, Status> {
    match TimelineCounts::merge(parts).map_err(ApiError::internal)? {
        Some(t) => Ok(t),
        // No partition at all: the empty timeline of the range, as a store
        // without events gives it.
        None => Ok(empty_timeline(from_ms, to_ms)),
    }
}

fn empty_timeline(from_ms: i64, to_ms: i64) -> TimelineCounts {
    let (_, from_ms, bucket_ms, buckets) = timeline_buckets(from_ms, to_ms);
    TimelineCounts {
        from_ms,
        bucket_ms,
        buckets,
        series: Vec::new(),
    }
}

impl ClusterQuery {
    /// Events per bucket over every partition, series summed across them
    /// before they are ranked (exact, as on one node).
    pub async fn timeline(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
        by: TimelineBy,
    ) -> Result<TimelineCounts, Status> {
        let s = scope.clone();
        let local = move |l: &LocalPartition| {
            local_timeline(std::slice::from_ref(l), &s, from_ms, to_ms, by)
        };
        let proto_by = match by {
            TimelineBy::Item => sightline_proto::v1::TimelineBy::Item,
            TimelineBy::Location => sightline_proto::v1::TimelineBy::Location,
        } as i32;
        let remote = |mut c: Client, ps: Vec<u16>| {
            let req = self.peers.request(
                TimelineRequest {
                    from_ms,
                    to_ms,
                    by: proto_by,
                    max_series: 0,
                },
                &ps,
                scope,
            );
            async move { Ok(timeline_of(c.timeline(req).await?.into_inner())) }
        };
        let parts = self
            .fan(&self.all_partitions(), true, local, remote)
            .await?;
        merged_timeline(parts.into_iter().map(|(_, t)| t).collect(), from_ms, to_ms)
    }

    /// A peer's Timeline: every series (`max_series` is ignored: the
    /// caller ranks after summing), from the partitions asked for.
    pub async fn peer_timeline(
        &self,
        call: PeerCall,
        r: TimelineRequest,
    ) -> Result<TimelineResponse, Status> {
        let held = self.held(&call)?;
        let by = timeline_by(r.by)?;
        let scope = call.scope;
        let t = blocking(move || local_timeline(&held, &scope, r.from_ms, r.to_ms, by)).await?;
        Ok(timeline_response(t, usize::MAX))
    }
}

// ---- ListEvents -----------------------------------------------------------

/// Where one partition's next ListEvents page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartCursor {
    /// At `from_ms` (nothing read yet).
    Start,
    /// Strictly after this event key (timestamp_detected, det_oid).
    After([u8; 16]),
    /// Nothing more in this partition.
    Done,
}

/// A cluster ListEvents page token: one [`PartCursor`] per partition, as hex
/// of `[EVENTS_TOKEN_VERSION, partitions (u16 BE), per partition: tag (0
/// start, 1 after + 16-byte key, 2 done)]`. Its length is bounded by the
/// partition count (at most 3 + 17 × partitions bytes); anything else is
/// refused naming `page_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsToken(pub Vec<PartCursor>);

/// First byte of an [`EventsToken`] (its format's version).
pub const EVENTS_TOKEN_VERSION: u8 = 0xc1;

fn bad_token(why: impl std::fmt::Display) -> Status {
    ApiError::field(
        "page_token",
        format!("{why}: not a token this API gave out (use the previous page's `next_page_token`)"),
    )
    .into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl EventsToken {
    pub fn first(partitions: u16) -> Self {
        Self(vec![PartCursor::Start; partitions as usize])
    }

    pub fn encode(&self) -> String {
        if self.0.iter().all(|c| *c == PartCursor::Done) {
            return String::new();
        }
        let mut b = vec![EVENTS_TOKEN_VERSION];
        b.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for c in &self.0 {
            match c {
                PartCursor::Start => b.push(0),
                PartCursor::After(k) => {
                    b.push(1);
                    b.extend_from_slice(k);
                }
                PartCursor::Done => b.push(2),
            }
        }
        hex(&b)
    }

    /// `""`: the first page. Refuses (naming `page_token`) anything
    /// [`Self::encode`] did not make for a cluster of `partitions`.
    pub fn decode(token: &str, partitions: u16) -> Result<Self, Status> {
        if token.is_empty() {
            return Ok(Self::first(partitions));
        }
        let max = 2 * (3 + 17 * partitions as usize);
        if token.len() > max {
            return Err(bad_token(format!("{} bytes (at most {max})", token.len())));
        }
        let b = unhex(token).ok_or_else(|| bad_token("not hex"))?;
        if b.len() < 3 || b[0] != EVENTS_TOKEN_VERSION {
            return Err(bad_token("not a cluster page token"));
        }
        let n = u16::from_be_bytes([b[1], b[2]]);
        if n != partitions {
            return Err(bad_token(format!(
                "made for {n} partitions, the cluster has {partitions}"
            )));
        }
        let mut out = Vec::with_capacity(n as usize);
        let mut rest = &b[3..];
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            out.push(match tag {
                0 => PartCursor::Start,
                2 => PartCursor::Done,
                1 if rest.len() >= 16 => {
                    let (k, tail) = rest.split_at(16);
                    rest = tail;
                    PartCursor::After(k.try_into().expect("16 bytes"))
                }
                _ => return Err(bad_token("malformed")),
            });
        }
        if out.len() != n as usize {
            return Err(bad_token("malformed"));
        }
        Ok(Self(out))
    }
}

fn event_key(e: &JoinedEvent) -> [u8; 16] {
    let d = e.detection.as_ref();
    keys::event_key(
        d.map_or(0, |d| d.timestamp_detected),
        d.and_then(|d| d.detection_oid).unwrap_or_default(),
    )
}

/// One partition's ListEvents page: its events (key order) and where its
/// scan stopped (`None`: it has nothing after them).
pub struct PartPage {
    pub events: Vec<JoinedEvent>,
    pub frontier: Option<[u8; 16]>,
}

/// Merges the partitions' pages (each the next `page_size` events of its
/// partition after its cursor, and where its scan stopped) into the page a
/// single node would give, and the cursors to go on from. No event is given
/// out past the nearest partition frontier, so none of the others can come
/// before it later: each event is given once, in (timestamp_detected,
/// det_oid) order.
pub fn merge_events(
    pages: Vec<(u16, PartPage)>,
    mut cursors: EventsToken,
    page_size: usize,
) -> (Vec<JoinedEvent>, EventsToken) {
    let cut = pages.iter().filter_map(|(_, p)| p.frontier).min();
    let mut all: Vec<([u8; 16], u16, JoinedEvent)> = pages
        .iter()
        .flat_map(|(p, page)| {
            page.events
                .iter()
                .map(move |e| (event_key(e), *p, e.clone()))
        })
        .filter(|(k, _, _)| cut.is_none_or(|c| *k <= c))
        .collect();
    all.sort_by_key(|a| a.0);
    let truncated = all.len() > page_size;
    all.truncate(page_size);
    // Everything up to `upto` has been given out (None: everything).
    let upto = if truncated {
        all.last().map(|(k, _, _)| *k)
    } else {
        cut
    };
    for (p, page) in &pages {
        let left = page
            .events
            .iter()
            .any(|e| upto.is_some_and(|u| event_key(e) > u));
        cursors.0[*p as usize] = match (left, upto, page.frontier) {
            (true, Some(u), _) => PartCursor::After(u),
            (_, _, Some(f)) => PartCursor::After(f),
            _ => PartCursor::Done,
        };
    }
    (all.into_iter().map(|(_, _, e)| e).collect(), cursors)
}

fn frontier_of(token: &str) -> Result<Option<[u8; 16]>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    unhex(token)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::internal("a partition gave a page token that is not an event key").into()
        })
}

impl ClusterQuery {
    /// One page of events over every partition, oldest first, with media
    /// (not yet joined with Dataset B).
    #[allow(clippy::too_many_arguments)]
    pub async fn list_events(
        &self,
        scope: &Scope,
        from_ms: i64,
        to_ms: i64,
        filter: Option<EventFilter>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<JoinedEvent>, String), Status> {
        let cursors = EventsToken::decode(page_token, self.view.partitions())?;
        let active: Vec<u16> = (0..self.view.partitions())
            .filter(|p| cursors.0[*p as usize] != PartCursor::Done)
            .collect();
        let token_of = |p: u16| match cursors.0[p as usize] {
            PartCursor::After(k) => hex(&k),
            _ => String::new(),
        };
        let tokens: Arc<HashMap<u16, String>> =
            Arc::new(active.iter().map(|&p| (p, token_of(p))).collect());
        let (s, f, t) = (scope.clone(), filter.clone(), tokens.clone());
        let local = move |l: &LocalPartition| {
            let tok = t.get(&l.partition).cloned().unwrap_or_default();
            let (mut events, next) =
                l.store
                    .list_events_in(from_ms, to_ms, f.as_ref(), page_size, &tok, |loc| {
                        s.allows(loc)
                    })?;
            l.store.fill_media(&mut events)?;
            Ok(PartPage {
                events,
                frontier: frontier_of(&next)?,
            })
        };
        let remote = |mut c: Client, ps: Vec<u16>| {
            let req = self.peers.request(
                ListEventsRequest {
                    from_ms,
                    to_ms,
                    filter: filter.clone(),
                    page_size: page_size as u32,
                    page_token: ps
                        .first()
                        .and_then(|p| tokens.get(p).cloned())
                        .unwrap_or_default(),
                },
                &ps,
                scope,
            );
            async move {
                let r = c.list_events(req).await?.into_inner();
                Ok(PartPage {
                    events: r.events,
                    frontier: frontier_of(&r.next_page_token)?,
                })
            }
        };
        let pages = self.fan(&active, false, local, remote).await?;
        let pages = pages
            .into_iter()
            .filter_map(|(ps, page)| ps.first().map(|p| (*p, page)))
            .collect();
        let (events, next) = merge_events(pages, cursors, page_size);
        Ok((events, next.encode()))
    }

    /// A peer's ListEvents: one partition's page, with the store's own token.
    pub async fn peer_list_events(
        &self,
        call: PeerCall,
        r: ListEventsRequest,
    ) -> Result<ListEventsResponse, Status> {
        let [l] = <[LocalPartition; 1]>::try_from(self.held(&call)?).map_err(|_| {
            ApiError::field(
                peer::PARTITIONS_HEADER,
                "ListEvents asks one partition at a time",
            )
        })?;
        let scope = call.scope;
        let page_size = (r.page_size as usize).clamp(1, crate::api::query::MAX_PAGE as usize);
        blocking(move || {
            let (mut events, next_page_token) = l.store.list_events_in(
                r.from_ms,
                r.to_ms,
                r.filter.as_ref(),
                page_size,
                &r.page_token,
                |loc| scope.allows(loc),
            )?;
            l.store.fill_media(&mut events)?;
            Ok(ListEventsResponse {
                events,
                next_page_token,
            })
        })
        .await
    }
}

// ---- Search ---------------------------------------------------------------

/// One source's search page: its events newest first, whether it has more,
/// and its hit count.
pub struct SearchPart {
    pub events: Vec<JoinedEvent>,
    pub more: bool,
    pub total: u64,
}

fn newest_first_key(e: &JoinedEvent) -> (i64, i64) {
    let d = e.detection.as_ref();
    (
        d.map_or(0, |d| d.timestamp_detected),
        d.and_then(|d| d.detection_oid).unwrap_or_default(),
    )
}

/// Merges search pages asked with the same cursor: newest detection first,
/// det_oid (higher first) breaking ties, `page` of them; the token names the
/// last one given out (a single node's token), empty when none is left.
pub fn merge_search(parts: Vec<SearchPart>, page: usize) -> SearchResponse {
    let total = parts.iter().map(|p| p.total).sum();
    let more = parts.iter().any(|p| p.more);
    let mut all: Vec<JoinedEvent> = parts.into_iter().flat_map(|p| p.events).collect();
    all.sort_by_key(|e| std::cmp::Reverse(newest_first_key(e)));
    let more = more || all.len() > page;
    all.truncate(page);
    let next_page_token = match all.last() {
        Some(e) if more => {
            let (ts, det_oid) = newest_first_key(e);
            search::Cursor { ts, det_oid }.encode()
        }
        _ => String::new(),
    };
    SearchResponse {
        events: all,
        total_hits: total,
        next_page_token,
    }
}

fn search_local(l: &LocalPartition, req: &search::SearchRequest) -> Result<SearchPart, Status> {
    let index = l.search.as_ref().ok_or_else(|| {
        ApiError::unavailable(format!(
            "partition {}'s search index is not open yet; try again shortly",
            l.partition
        ))
    })?;
    let hits = index.search(req)?;
    let mut events = Vec::with_capacity(hits.det_oids.len());
    for oid in &hits.det_oids {
        // Gone from the store (retention) but not yet from the index: skipped.
        if let Some(ev) = l.store.get_event(*oid)? {
            events.push(ev);
        }
    }
    l.store.fill_media(&mut events)?;
    Ok(SearchPart {
        events,
        more: !hits.next_page_token.is_empty(),
        total: hits.total,
    })
}

fn search_request(r: &SearchRequest, scope: &Scope) -> search::SearchRequest {
    search::SearchRequest {
        query: r.query.clone(),
        location_oid: r.geographical_location_oid,
        scope_locations: scope
            .locations
            .as_ref()
            .map(|s| s.iter().copied().collect()),
        camera_oid: r.video_camera_oid,
        item_name: r.item_name.clone(),
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        page_size: r.page_size as usize,
        page_token: r.page_token.clone(),
    }
}

impl ClusterQuery {
    /// A search over every partition (events with media, not yet joined).
    pub async fn search(&self, scope: &Scope, r: SearchRequest) -> Result<SearchResponse, Status> {
        let page = match r.page_size as usize {
            0 => search::DEFAULT_PAGE,
            n => n,
        };
        let req = Arc::new(search_request(&r, scope));
        let local = move |l: &LocalPartition| search_local(l, &req);
        let remote = |mut c: Client, ps: Vec<u16>| {
            let req = self.peers.request(r.clone(), &ps, scope);
            async move {
                let r = c.search(req).await?.into_inner();
                Ok(SearchPart {
                    more: !r.next_page_token.is_empty(),
                    total: r.total_hits,
                    events: r.events,
                })
            }
        };
        let parts = self
            .fan(&self.all_partitions(), true, local, remote)
            .await?;
        Ok(merge_search(
            parts.into_iter().map(|(_, p)| p).collect(),
            page,
        ))
    }

    /// A peer's Search over the partitions asked for, merged.
    pub async fn peer_search(
        &self,
        call: PeerCall,
        r: SearchRequest,
    ) -> Result<SearchResponse, Status> {
        let held = self.held(&call)?;
        let page = match r.page_size as usize {
            0 => search::DEFAULT_PAGE,
            n => n,
        };
        let req = search_request(&r, &call.scope);
        blocking(move || {
            let parts = held
                .iter()
                .map(|l| search_local(l, &req))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(merge_search(parts, page))
        })
        .await
    }
}

// ---- GetEvent, Stats ------------------------------------------------------

impl ClusterQuery {
    /// The event `det_oid` from its partition (with media, not joined), if
    /// stored and in `scope`.
    pub async fn get_event(
        &self,
        scope: &Scope,
        det_oid: i64,
    ) -> Result<Option<JoinedEvent>, Status> {
        let p = keys::partition_of(det_oid, self.view.partitions() as usize) as u16;
        let local = move |l: &LocalPartition| {
            let mut ev = l.store.get_event(det_oid)?;
            if let Some(e) = ev.as_mut() {
                l.store.fill_media(std::slice::from_mut(e))?;
            }
            Ok(ev)
        };
        let remote = |mut c: Client, ps: Vec<u16>| {
            let req = self.peers.request(
                GetEventRequest {
                    detection_oid: det_oid,
                },
                &ps,
                scope,
            );
            async move {
                match c.get_event(req).await {
                    Ok(e) => Ok(Some(e.into_inner())),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) => Err(s),
                }
            }
        };
        let got = self.fan(&[p], true, local, remote).await?;
        Ok(got.into_iter().find_map(|(_, e)| e).filter(|e| {
            e.detection
                .as_ref()
                .is_some_and(|d| scope.allows(d.geographical_location_oid))
        }))
    }

    /// A peer's GetEvent (NOT_FOUND when absent or outside the scope).
    pub async fn peer_get_event(
        &self,
        call: PeerCall,
        det_oid: i64,
    ) -> Result<JoinedEvent, Status> {
        let held = self.held(&call)?;
        let ev = blocking(move || {
            for l in &held {
                if let Some(mut e) = l.store.get_event(det_oid)? {
                    l.store.fill_media(std::slice::from_mut(&mut e))?;
                    return Ok(Some(e));
                }
            }
            Ok(None)
        })
        .await?;
        ev.filter(|e| {
            e.detection
                .as_ref()
                .is_some_and(|d| call.scope.allows(d.geographical_location_oid))
        })
        .ok_or_else(|| ApiError::not_found(format!("no event with detection_oid {det_oid}")).into())
    }

    /// Every partition's counters, summed.
    pub async fn counters(&self) -> Result<Counters, Status> {
        let local = |l: &LocalPartition| Ok(l.store.counters()?);
        let remote = |mut c: Client, ps: Vec<u16>| {
            let req = self.peers.request(StatsRequest {}, &ps, &Scope::all());
            async move {
                let s = c.stats(req).await?.into_inner();
                Ok(Counters {
                    stored: s.stored,
                    dup_transport: s.duplicates_transport,
                    dup_semantic: s.duplicates_semantic,
                    rejected: s.rejected,
                    unmatched: s.unmatched,
                    expired: s.expired,
                })
            }
        };
        let all = self
            .fan(&self.all_partitions(), true, local, remote)
            .await?;
        Ok(all
            .into_iter()
            .map(|(_, c)| c)
            .fold(Counters::default(), add_counters))
    }

    /// A peer's Stats: the partitions' counters summed
    /// (`locations_loaded` is the caller's own).
    pub async fn peer_stats(&self, call: PeerCall) -> Result<StatsResponse, Status> {
        let held = self.held(&call)?;
        let c = blocking(move || {
            let mut sum = Counters::default();
            for l in &held {
                sum = add_counters(sum, l.store.counters()?);
            }
            Ok(sum)
        })
        .await?;
        Ok(StatsResponse {
            stored: c.stored,
            duplicates_transport: c.dup_transport,
            duplicates_semantic: c.dup_semantic,
            rejected: c.rejected,
            unmatched: c.unmatched,
            expired: c.expired,
            locations_loaded: 0,
        })
    }
}

fn add_counters(a: Counters, b: Counters) -> Counters {
    Counters {
        stored: a.stored + b.stored,
        dup_transport: a.dup_transport + b.dup_transport,
        dup_semantic: a.dup_semantic + b.dup_semantic,
        rejected: a.rejected + b.rejected,
        unmatched: a.unmatched + b.unmatched,
        expired: a.expired + b.expired,
    }
}

// ---- ListQuarantine -------------------------------------------------------

/// A cluster ListQuarantine token: `q` + the partition (4 hex digits) + that
/// partition's store token. The partitions' quarantines are listed one after
/// another.
fn quarantine_token(p: u16, store_token: &str) -> String {
    format!("q{p:04x}{store_token}")
}

fn parse_quarantine_token(t: &str, partitions: u16) -> Result<(u16, String), Status> {
    if t.is_empty() {
        return Ok((0, String::new()));
    }
    if t.len() > 5 + crate::store::MAX_TOKEN_BYTES
        || !t.is_ascii()
        || !t.starts_with('q')
        || t.len() < 5
    {
        return Err(bad_token("not a cluster quarantine token"));
    }
    let p = u16::from_str_radix(&t[1..5], 16)
        .map_err(|_| bad_token("not a cluster quarantine token"))?;
    if p >= partitions {
        return Err(bad_token(format!("partition {p} does not exist")));
    }
    Ok((p, t[5..].to_string()))
}

impl ClusterQuery {
    /// A page of every partition's quarantine, partition by partition, and
    /// the total rejected.
    pub async fn list_quarantine(
        &self,
        page_size: usize,
        page_token: &str,
    ) -> Result<ListQuarantineResponse, Status> {
        let n = self.view.partitions();
        let (mut p, mut tok) = parse_quarantine_token(page_token, n)?;
        let mut events: Vec<QuarantinedEvent> = Vec::new();
        let mut next = String::new();
        while p < n {
            let want = page_size - events.len();
            let t = tok.clone();
            let local = move |l: &LocalPartition| Ok(l.store.list_quarantine(want, &t)?);
            let t = tok.clone();
            let remote = |mut c: Client, ps: Vec<u16>| {
                let req = self.peers.request(
                    ListQuarantineRequest {
                        page_size: want as u32,
                        page_token: t.clone(),
                    },
                    &ps,
                    &Scope::all(),
                );
                async move {
                    let r = c.list_quarantine(req).await?.into_inner();
                    Ok((r.events, r.next_page_token))
                }
            };
            let got = self.fan(&[p], true, local, remote).await?;
            let (evs, store_next) = got.into_iter().next().map(|(_, r)| r).unwrap_or_default();
            events.extend(evs);
            if !store_next.is_empty() {
                next = quarantine_token(p, &store_next);
                break;
            }
            p += 1;
            tok = String::new();
            if events.len() >= page_size {
                if p < n {
                    next = quarantine_token(p, "");
                }
                break;
            }
        }
        let total = self.counters().await?.rejected;
        Ok(ListQuarantineResponse {
            events,
            next_page_token: next,
            total,
        })
    }

    /// A peer's ListQuarantine: one partition's page, the store's token.
    pub async fn peer_list_quarantine(
        &self,
        call: PeerCall,
        r: ListQuarantineRequest,
    ) -> Result<ListQuarantineResponse, Status> {
        let [l] = <[LocalPartition; 1]>::try_from(self.held(&call)?).map_err(|_| {
            ApiError::field(
                peer::PARTITIONS_HEADER,
                "ListQuarantine asks one partition at a time",
            )
        })?;
        let page = (r.page_size as usize).clamp(1, crate::api::query::MAX_PAGE as usize);
        blocking(move || {
            let (events, next_page_token) = l.store.list_quarantine(page, &r.page_token)?;
            Ok(ListQuarantineResponse {
                events,
                next_page_token,
                total: l.store.counters()?.rejected,
            })
        })
        .await
    }
}

// ---- Completeness, Fleet --------------------------------------------------

/// Received camera_seq values on a peer call: each camera's ranges as
/// `Gap`s (first, last, after_ms = first_ms, before_ms = last_ms). Only
/// peers read this encoding; clients get [`crate::completeness::report`].
fn encode_received(received: Vec<(i64, RangeSet)>) -> CompletenessResponse {
    CompletenessResponse {
        cameras: received
            .into_iter()
            .map(|(cam, set)| CameraCompleteness {
                video_camera_oid: cam,
                gaps: set
                    .ranges()
                    .map(|r| Gap {
                        first: r.first,
                        last: r.last,
                        after_ms: r.first_ms,
                        before_ms: r.last_ms,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

fn decode_received(r: CompletenessResponse) -> Vec<(i64, RangeSet)> {
    r.cameras
        .into_iter()
        .map(|c| {
            let mut set = RangeSet::default();
            for g in c.gaps {
                set.insert_range(crate::store::received::Range {
                    first: g.first,
                    last: g.last,
                    first_ms: g.after_ms,
                    last_ms: g.before_ms,
                });
            }
            (c.video_camera_oid, set)
        })
        .collect()
}

fn unite(all: impl IntoIterator<Item = Vec<(i64, RangeSet)>>) -> Vec<(i64, RangeSet)> {
    let mut by_cam: BTreeMap<i64, RangeSet> = BTreeMap::new();
    for part in all {
        for (cam, set) in part {
            by_cam.entry(cam).or_default().union(&set);
        }
    }
    by_cam.into_iter().collect()
}

impl ClusterQuery {
    /// Every camera's received camera_seq values over every partition.
    pub async fn received_all(&self) -> Result<Vec<(i64, RangeSet)>, Status> {
        let local = |l: &LocalPartition| Ok(l.store.received_all()?);
        let remote = |mut c: Client, ps: Vec<u16>| {
            let req = self
                .peers
                .request(CompletenessRequest { since_ms: 0 }, &ps, &Scope::all());
            async move { Ok(decode_received(c.completeness(req).await?.into_inner())) }
        };
        let all = self
            .fan(&self.all_partitions(), true, local, remote)
            .await?;
        Ok(unite(all.into_iter().map(|(_, r)| r)))
    }

    /// A peer's Completeness: the partitions' received values (see
    /// [`encode_received`]).
    pub async fn peer_completeness(&self, call: PeerCall) -> Result<CompletenessResponse, Status> {
        let held = self.held(&call)?;
        let all = blocking(move || {
            held.iter()
                .map(|l| Ok(l.store.received_all()?))
                .collect::<Result<Vec<_>, Status>>()
        })
        .await?;
        Ok(encode_received(unite(all)))
    }

    /// Every node's agents with this node's (`own`): an agent known to
    /// several nodes (it failed over) is shown as the node it is connected
    /// to, else the one that heard from it last, sees it.
    pub async fn fleet(&self, own: Vec<AgentInfo>) -> Result<Vec<AgentInfo>, Status> {
        let me = self.view.node_id().to_string();
        let others: Vec<NodeInfo> = self
            .view
            .nodes()
            .into_iter()
            .filter(|n| n.node_id != me)
            .collect();
        let answers: Vec<Vec<AgentInfo>> = futures::stream::iter(others)
            .map(|n| async move {
                let mut c = self.peers.client(&n.grpc)?;
                let req = self.peers.request(FleetRequest {}, &[], &Scope::all());
                c.fleet(req)
                    .await
                    .map(|r| r.into_inner().agents)
                    .map_err(|s| peer::peer_failed(&n.node_id, s))
            })
            .buffer_unordered(MAX_FANOUT)
            .try_collect()
            .await?;
        Ok(merge_fleet(std::iter::once(own).chain(answers)))
    }
}

/// Agents by id; of an agent's entries, the connected one, else the one
/// seen last.
pub fn merge_fleet(all: impl IntoIterator<Item = Vec<AgentInfo>>) -> Vec<AgentInfo> {
    let mut by_id: BTreeMap<String, AgentInfo> = BTreeMap::new();
    for a in all.into_iter().flatten() {
        match by_id.get(&a.agent_id) {
            Some(b) if (b.connected, b.last_seen_ms) >= (a.connected, a.last_seen_ms) => {}
            _ => {
                by_id.insert(a.agent_id.clone(), a);
            }
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
#[path = "query_tests.rs"]
mod tests;
