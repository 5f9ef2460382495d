//! `sightline.v1.Query` (`sightline.v1.Admin` is in [`super::admin`]). Store reads run on blocking
//! threads; events are joined with the Dataset B table in use at read time,
//! and carry the media attached so far (live events: none yet).
//!
//! `Subscribe` is bounded: at most `live.max_subscribers` streams (and
//! `live.max_subscribers_per_client` from one IP address), refused past that
//! with `RESOURCE_EXHAUSTED` naming the key; a replay from `from_ms` reads the
//! store a page at a time and remembers only a window of what it delivered
//! (see [`QueryService::replay_history`]), and a replay cut short by a limit
//! ends with an error that says where to resume, never silently.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use prost::Message;
use sightline_proto::v1::{
    query_server::Query, CompletenessRequest, CompletenessResponse, EventFilter, FleetRequest,
    FleetResponse, GetEventRequest, ItemCount, JoinedEvent, ListEventsRequest, ListEventsResponse,
    ListQuarantineRequest, ListQuarantineResponse, LocationTop, SearchRequest, SearchResponse,
    StatsRequest, StatsResponse, SubscribeRequest, TimelineRequest, TimelineResponse,
    TopItemsRequest, TopItemsResponse,
};
use sightline_proto::{ApiError, Code};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    limits::Gate,
    live::{LiveHub, LiveReceiver, Missed},
    subscribe_wire::Encoded,
};
use crate::{
    access::{Access, Role, Scope},
    enrich::Locations,
    fleet::Fleet,
    metrics::Metrics,
    search::{self, SearchIndex},
    store::{matches_filter, Store},
};

/// Events a Subscribe stream may have queued for its client (memory per
/// subscriber: this many events, plus one page being read).
pub const SUBSCRIBE_QUEUE: usize = 1024;
/// Events read from the store per page while a Subscribe replays.
const REPLAY_PAGE: usize = 1000;
/// How far apart a commit's time (`committed_ms`, taken when its write
/// starts) and the moment it is readable and published may be, at most: the
/// overlap of a Subscribe's reads (the search index's, for the same reason).
const COMMIT_SLACK_MS: i64 = crate::search::CATCH_UP_SLACK.as_millis() as i64;
/// Passes by commit time a Subscribe makes before it attaches to the live
/// hub even if each still finds a page or more (steady ingest): the hub holds
/// `live.buffer_events` events for it during the last pass.
const CATCH_UP_PASSES: usize = 3;
/// Most events a Subscribe remembers while catching up (those committed in
/// the last [`COMMIT_SLACK_MS`] of its reads, to deliver each once); past it
/// the client reads slower than events arrive and the stream ends saying
/// where to resume.
pub const MAX_CATCH_UP_WINDOW: usize = 200_000;

#[derive(Clone)]
pub struct QueryService {
    /// Open `Subscribe` streams, against `live.max_subscribers` (and per client).
    pub subscribers: Arc<Gate>,
    /// `live.replay_limit`: most stored events one Subscribe replays.
    pub replay_limit: usize,
    pub search: Arc<SearchIndex>,
    pub store: Arc<Store>,
    pub locations: Arc<Locations>,
    pub fleet: Arc<Fleet>,
    pub hub: LiveHub,
    pub metrics: Arc<Metrics>,
    /// Who is asking: every call needs an API token or the admin token.
    pub access: Access,
    /// Cluster mode: the reads go to the partitions' owners through this
    /// (see [`crate::cluster::query`]); `None` on a single node, where
    /// nothing else changes.
    pub cluster: Option<Arc<crate::cluster::query::ClusterQuery>>,
}

/// Store and index reads that may run at once. The rest wait their turn, so
/// a burst of expensive queries cannot take every core from the partition
/// writers (ingest) and the blocking pool.
pub const MAX_CONCURRENT_READS: usize = 4;
static READ_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_READS);

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let _slot = READ_SLOTS
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("the core is shutting down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// A refusal of one request field, in the one error vocabulary.
fn bad_field(name: &str, reason: impl std::fmt::Display) -> Status {
    ApiError::field(name, reason).into()
}

/// Most events or quarantine entries one page of `ListEvents` /
/// `ListQuarantine` returns (0 asks for [`DEFAULT_PAGE`]).
pub const MAX_PAGE: u32 = 10_000;
pub const DEFAULT_PAGE: u32 = 100;

fn page_size(n: u32) -> Result<usize, Status> {
    match n {
        0 => Ok(DEFAULT_PAGE as usize),
        n @ 1..=MAX_PAGE => Ok(n as usize),
        n => Err(bad_field(
            "page_size",
            format!("{n} is more than {MAX_PAGE}"),
        )),
    }
}

/// Times before this (epoch ms: 1973-03-03) are most likely seconds.
const SECONDS_NOT_MS: i64 = 100_000_000_000;

/// A `[from_ms, to_ms)` range (0: unbounded): not inverted, not negative,
/// and in milliseconds (a value that reads as seconds is refused with a hint,
/// not answered with nothing).
fn check_range(from_ms: i64, to_ms: i64) -> Result<(), Status> {
    if to_ms != 0 && to_ms < from_ms {
        return Err(bad_field(
            "to_ms",
            format!("{to_ms} is before `from_ms` {from_ms}"),
        ));
    }
    for (field, v) in [("from_ms", from_ms), ("to_ms", to_ms)] {
        if v < 0 {
            return Err(bad_field(
                field,
                format!("{v} is negative; times are epoch milliseconds"),
            ));
        }
        if v != 0 && v < SECONDS_NOT_MS {
            return Err(bad_field(
                field,
                format!(
                    "{v} reads as seconds (before 1973 in milliseconds); times are epoch milliseconds, e.g. {}",
                    v.saturating_mul(1000)
                ),
            ));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Query for QueryService {
    async fn search(
        &self,
        req: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        if let Some((c, call)) = self.peer(&req, "Search").await? {
            return Ok(Response::new(c.peer_search(call, req.into_inner()).await?));
        }
        let who = self.caller(&req, "Search").await?;
        let peer = req.remote_addr();
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        if let Some(l) = r.geographical_location_oid {
            self.allowed(&who, peer, "Search", who.require_location(l))
                .await?;
        }
        audited(
            &self.access,
            &who,
            peer,
            crate::audit::Action::Search,
            serde_json::json!({
                "query": r.query, "location": r.geographical_location_oid,
                "camera": r.video_camera_oid, "item": r.item_name,
                "from_ms": r.from_ms, "to_ms": r.to_ms, "via": "grpc",
            }),
        )
        .await?;
        if let Some(c) = &self.cluster {
            let mut found = c.search(&who.scope, r).await?;
            self.locations.current().join_all(&mut found.events);
            return Ok(Response::new(found));
        }
        let req = search::SearchRequest {
            query: r.query,
            location_oid: r.geographical_location_oid,
            scope_locations: who
                .scope
                .locations
                .as_ref()
                .map(|s| s.iter().copied().collect()),
            camera_oid: r.video_camera_oid,
            item_name: r.item_name,
            from_ms: r.from_ms,
            to_ms: r.to_ms,
            page_size: r.page_size as usize,
            page_token: r.page_token,
        };
        let (index, store, locations) = (
            self.search.clone(),
            self.store.clone(),
            self.locations.clone(),
        );
        let (events, hits) =
            blocking(move || Ok(index.search_joined(&store, &locations, &req)?)).await?;
        Ok(Response::new(SearchResponse {
            events,
            total_hits: hits.total,
            next_page_token: hits.next_page_token,
        }))
    }

    async fn list_events(
        &self,
        req: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        if let Some((c, call)) = self.peer(&req, "ListEvents").await? {
            return Ok(Response::new(
                c.peer_list_events(call, req.into_inner()).await?,
            ));
        }
        let who = self.caller(&req, "ListEvents").await?;
        let peer = req.remote_addr();
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        let page_size = page_size(r.page_size)?;
        if let Some(l) = r.filter.as_ref().and_then(|f| f.geographical_location_oid) {
            self.allowed(&who, peer, "ListEvents", who.require_location(l))
                .await?;
        }
        // Once per call, with its filters (not once per event it returns).
        let f = r.filter.clone().unwrap_or_default();
        let mut entry = who
            .entry(crate::audit::Action::ListEvents)
            .from(peer)
            .detail(serde_json::json!({
                "from_ms": r.from_ms, "to_ms": r.to_ms, "item": f.item_name,
                "page_size": page_size, "page_token": r.page_token, "via": "grpc",
            }));
        (entry.camera, entry.location) = (f.video_camera_oid, f.geographical_location_oid);
        record(&self.access, entry).await?;
        if let Some(c) = &self.cluster {
            let (mut events, next_page_token) = c
                .list_events(
                    &who.scope,
                    r.from_ms,
                    r.to_ms,
                    r.filter,
                    page_size,
                    &r.page_token,
                )
                .await?;
            self.locations.current().join_all(&mut events);
            return Ok(Response::new(ListEventsResponse {
                events,
                next_page_token,
            }));
        }
        let store = self.store.clone();
        let (mut events, next_page_token) = blocking(move || {
            let scope = &who.scope;
            let (mut events, token) = store.list_events_in(
                r.from_ms,
                r.to_ms,
                r.filter.as_ref(),
                page_size,
                &r.page_token,
                |l| scope.allows(l),
            )?;
            store.fill_media(&mut events)?;
            Ok((events, token))
        })
        .await?;
        self.locations.current().join_all(&mut events);
        Ok(Response::new(ListEventsResponse {
            events,
            next_page_token,
        }))
    }

    async fn get_event(
        &self,
        req: Request<GetEventRequest>,
    ) -> Result<Response<JoinedEvent>, Status> {
        if let Some((c, call)) = self.peer(&req, "GetEvent").await? {
            let oid = req.into_inner().detection_oid;
            return Ok(Response::new(c.peer_get_event(call, oid).await?));
        }
        let who = self.caller(&req, "GetEvent").await?;
        let peer = req.remote_addr();
        let oid = req.into_inner().detection_oid;
        if oid <= 0 {
            return Err(bad_field(
                "detection_oid",
                format!("must be positive, got {oid}"),
            ));
        }
        let ev = match &self.cluster {
            Some(c) => c.get_event(&who.scope, oid).await?,
            None => {
                let store = self.store.clone();
                blocking(move || {
                    let mut ev = store.get_event(oid)?;
                    if let Some(e) = ev.as_mut() {
                        store.fill_media(std::slice::from_mut(e))?;
                    }
                    Ok(ev)
                })
                .await?
            }
        };
        // Outside the caller's scope reads as absent: a scoped principal
        // does not learn which det_oids exist elsewhere.
        let ev = ev.filter(|e| {
            e.detection
                .as_ref()
                .is_some_and(|d| who.scope.allows(d.geographical_location_oid))
        });
        match ev {
            None => Err(ApiError::not_found(format!("no event with detection_oid {oid}")).into()),
            Some(mut e) => {
                // Who looked at which event (an event it may see; one
                // outside its scope or absent is NOT_FOUND, not recorded).
                let d = e.detection.clone().unwrap_or_default();
                record(
                    &self.access,
                    who.entry(crate::audit::Action::GetEvent)
                        .from(peer)
                        .event(oid, d.video_camera_oid, d.geographical_location_oid)
                        .detail(serde_json::json!({ "via": "grpc" })),
                )
                .await?;
                self.locations.current().join(&mut e);
                Ok(Response::new(e))
            }
        }
    }

    async fn timeline(
        &self,
        req: Request<TimelineRequest>,
    ) -> Result<Response<TimelineResponse>, Status> {
        if let Some((c, call)) = self.peer(&req, "Timeline").await? {
            return Ok(Response::new(
                c.peer_timeline(call, req.into_inner()).await?,
            ));
        }
        let who = self.caller(&req, "Timeline").await?;
        let peer = req.remote_addr();
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        if r.to_ms == 0 {
            return Err(bad_field("to_ms", "must be set (epoch milliseconds)"));
        }
        let by = crate::cluster::query::timeline_by(r.by)?;
        let max_series = match r.max_series {
            0 => 10,
            n @ 1..=1000 => n as usize,
            n => return Err(bad_field("max_series", format!("{n} is more than 1000"))),
        };
        audited(
            &self.access,
            &who,
            peer,
            crate::audit::Action::Timeline,
            serde_json::json!({
                "by": r.by, "from_ms": r.from_ms, "to_ms": r.to_ms, "via": "grpc",
            }),
        )
        .await?;
        let counts = match &self.cluster {
            Some(c) => c.timeline(&who.scope, r.from_ms, r.to_ms, by).await?,
            None => {
                let store = self.store.clone();
                let scope = who.scope.clone();
                blocking(
                    move || Ok(store.timeline_in(r.from_ms, r.to_ms, by, |l| scope.allows(l))?),
                )
                .await?
            }
        };
        Ok(Response::new(crate::cluster::query::timeline_response(
            counts, max_series,
        )))
    }

    async fn top_items(
        &self,
        req: Request<TopItemsRequest>,
    ) -> Result<Response<TopItemsResponse>, Status> {
        if let Some((c, call)) = self.peer(&req, "TopItems").await? {
            return Ok(Response::new(
                c.peer_top_items(call, req.into_inner()).await?,
            ));
        }
        let who = self.caller(&req, "TopItems").await?;
        let peer = req.remote_addr();
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        if let Some(l) = r.geographical_location_oid {
            self.allowed(&who, peer, "TopItems", who.require_location(l))
                .await?;
        }
        audited(
            &self.access,
            &who,
            peer,
            crate::audit::Action::TopItems,
            serde_json::json!({
                "x": r.x, "location": r.geographical_location_oid,
                "from_ms": r.from_ms, "to_ms": r.to_ms, "via": "grpc",
            }),
        )
        .await?;
        if r.to_ms == 0 || r.to_ms < r.from_ms {
            return Err(bad_field(
                "to_ms",
                format!(
                    "must be set and not before `from_ms` (got from {} to {})",
                    r.from_ms, r.to_ms
                ),
            ));
        }
        let x = match r.x {
            0 => 10,
            n @ 1..=1000 => n as usize,
            n => return Err(bad_field("x", format!("{n} is more than 1000"))),
        };
        let counts = match &self.cluster {
            Some(c) => {
                c.top_items(
                    &who.scope,
                    r.from_ms,
                    r.to_ms,
                    x,
                    r.geographical_location_oid,
                )
                .await?
            }
            None => {
                let store = self.store.clone();
                let scope = who.scope.clone();
                blocking(move || {
                    Ok(crate::access::scoped_top_items(
                        &store,
                        &scope,
                        r.from_ms,
                        r.to_ms,
                        x,
                        r.geographical_location_oid,
                    )?)
                })
                .await?
            }
        };
        let table = self.locations.current();
        let locations = counts
            .into_iter()
            .map(|c| {
                let loc = table.get(c.location);
                LocationTop {
                    geographical_location_oid: c.location,
                    geographical_location: loc
                        .map(|l| l.geographical_location.clone())
                        .unwrap_or_default(),
                    location_matched: loc.is_some(),
                    total: c.total,
                    items: c
                        .items
                        .into_iter()
                        .map(|(item_name, count)| ItemCount { item_name, count })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(TopItemsResponse {
            locations,
            from_ms: crate::store::keys::Bucket::Minute.floor(r.from_ms),
            to_ms: crate::store::keys::Bucket::Minute.floor(r.to_ms),
        }))
    }

    type SubscribeStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<JoinedEvent, Status>> + Send>>;

    /// Served by [`super::subscribe_wire::QueryRoutes`], which sends the
    /// events as encoded bytes; this decodes them, for a `QueryServer` used
    /// without it.
    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use tokio_stream::StreamExt;
        let events = self.open_subscribe(req).await?.into_inner();
        Ok(Response::new(Box::pin(
            events.map(|e| e.and_then(Encoded::decode)),
        )))
    }

    async fn fleet(&self, req: Request<FleetRequest>) -> Result<Response<FleetResponse>, Status> {
        if self.peer(&req, "Fleet").await?.is_some() {
            return Ok(Response::new(FleetResponse {
                agents: self.fleet.snapshot(),
            }));
        }
        let who = self.caller(&req, "Fleet").await?;
        self.allowed(
            &who,
            req.remote_addr(),
            "Fleet",
            who.require(Role::Admin, "Fleet"),
        )
        .await?;
        let agents = match &self.cluster {
            Some(c) => c.fleet(self.fleet.snapshot()).await?,
            None => self.fleet.snapshot(),
        };
        Ok(Response::new(FleetResponse { agents }))
    }

    async fn completeness(
        &self,
        req: Request<CompletenessRequest>,
    ) -> Result<Response<CompletenessResponse>, Status> {
        if let Some((c, call)) = self.peer(&req, "Completeness").await? {
            return Ok(Response::new(c.peer_completeness(call).await?));
        }
        let who = self.caller(&req, "Completeness").await?;
        self.allowed(
            &who,
            req.remote_addr(),
            "Completeness",
            who.require(Role::Admin, "Completeness"),
        )
        .await?;
        let since_ms = req.into_inner().since_ms;
        if since_ms < 0 {
            return Err(bad_field(
                "since_ms",
                format!("{since_ms} is negative; times are epoch milliseconds"),
            ));
        }
        let received = match &self.cluster {
            Some(c) => c.received_all().await?,
            None => {
                let store = self.store.clone();
                blocking(move || store.received_all().map_err(|e| ApiError::from(e).into())).await?
            }
        };
        let r = crate::completeness::report(received, &self.fleet.snapshot(), since_ms);
        Ok(Response::new(r))
    }

    async fn list_quarantine(
        &self,
        req: Request<ListQuarantineRequest>,
    ) -> Result<Response<ListQuarantineResponse>, Status> {
        if let Some((c, call)) = self.peer(&req, "ListQuarantine").await? {
            return Ok(Response::new(
                c.peer_list_quarantine(call, req.into_inner()).await?,
            ));
        }
        let who = self.caller(&req, "ListQuarantine").await?;
        let admin = who.require(Role::Admin, "ListQuarantine");
        self.allowed(&who, req.remote_addr(), "ListQuarantine", admin)
            .await?;
        let r = req.into_inner();
        let page_size = page_size(r.page_size)?;
        if let Some(c) = &self.cluster {
            return Ok(Response::new(
                c.list_quarantine(page_size, &r.page_token).await?,
            ));
        }
        let store = self.store.clone();
        let (events, next_page_token, total) = blocking(move || {
            let (events, token) = store.list_quarantine(page_size, &r.page_token)?;
            Ok((events, token, store.counters()?.rejected))
        })
        .await?;
        Ok(Response::new(ListQuarantineResponse {
            events,
            next_page_token,
            total,
        }))
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        if let Some((c, call)) = self.peer(&req, "Stats").await? {
            return Ok(Response::new(c.peer_stats(call).await?));
        }
        let who = self.caller(&req, "Stats").await?;
        let unscoped = if who.scope.is_all() {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "Stats counts every location; {} is scoped to {}",
                who.actor, who.scope
            )))
        };
        self.allowed(&who, req.remote_addr(), "Stats", unscoped)
            .await?;
        let c = match &self.cluster {
            Some(c) => c.counters().await?,
            None => {
                let store = self.store.clone();
                blocking(move || Ok(store.counters()?)).await?
            }
        };
        Ok(Response::new(StatsResponse {
            stored: c.stored,
            duplicates_transport: c.dup_transport,
            duplicates_semantic: c.dup_semantic,
            rejected: c.rejected,
            unmatched: c.unmatched,
            expired: c.expired,
            locations_loaded: self.locations.current().rows.len() as u64,
        }))
    }
}

impl QueryService {
    /// In cluster mode, a call from another node (it carries
    /// [`crate::cluster::peer::PARTITIONS_HEADER`]): trusted only with the
    /// peer token, and then answered from this node's partitions without the
    /// caller checks (the node the caller called made them). A refused peer
    /// call is recorded like any refused credential. `None`: an ordinary
    /// call (always, on a single node).
    async fn peer<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
    ) -> Result<
        Option<(
            Arc<crate::cluster::query::ClusterQuery>,
            crate::cluster::peer::PeerCall,
        )>,
        Status,
    > {
        let Some(c) = &self.cluster else {
            return Ok(None);
        };
        match c.peer_call(req) {
            None => Ok(None),
            Some(Ok(call)) => Ok(Some((c.clone(), call))),
            Some(Err(e)) => {
                if e.code == Code::Unauthenticated {
                    let entry = crate::audit::Entry::new(
                        crate::audit::Actor::Anonymous,
                        crate::audit::Action::AccessRefused,
                    );
                    self.refused(entry.from(req.remote_addr()), method, &e)
                        .await;
                }
                Err(e.into())
            }
        }
    }

    /// The caller of a Query method. A missing, wrong, expired or revoked
    /// credential is refused (UNAUTHENTICATED) and the refusal recorded, as
    /// `anonymous` (coalesced per source address and minute, see
    /// [`crate::audit::refusals`]).
    async fn caller<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
    ) -> Result<crate::access::Principal, Status> {
        match self.access.grpc_principal(req) {
            Ok(p) => Ok(p),
            Err(e) => {
                let entry = crate::audit::Entry::new(
                    crate::audit::Actor::Anonymous,
                    crate::audit::Action::AccessRefused,
                );
                self.refused(entry.from(req.remote_addr()), method, &e)
                    .await;
                Err(e.into())
            }
        }
    }

    /// `check` (a role or scope check of `who`); a refusal (PERMISSION_DENIED)
    /// is recorded with who was refused.
    async fn allowed(
        &self,
        who: &crate::access::Principal,
        peer: Option<std::net::SocketAddr>,
        method: &'static str,
        check: Result<(), ApiError>,
    ) -> Result<(), Status> {
        match check {
            Ok(()) => Ok(()),
            Err(e) => {
                let entry = who.entry(crate::audit::Action::AccessRefused).from(peer);
                self.refused(entry, method, &e).await;
                Err(e.into())
            }
        }
    }

    /// Records a refused call; the call is refused whether or not the
    /// record could be written.
    async fn refused(&self, entry: crate::audit::Entry, method: &'static str, e: &ApiError) {
        let entry = entry
            .denied()
            .detail(serde_json::json!({ "method": method, "reason": e.message, "via": "grpc" }));
        if let Err(e) = self.access.audit.refused(entry).await {
            tracing::warn!(error = %e, "audit: a refusal could not be recorded");
        }
    }
}

/// Records `entry` before the call answers (no record, no answer).
async fn record(access: &Access, entry: crate::audit::Entry) -> Result<(), Status> {
    access
        .audit
        .record(entry)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::from(e).into())
}

/// Records a query in the audit log before it runs (no record, no answer).
async fn audited(
    access: &Access,
    who: &crate::access::Principal,
    peer: Option<std::net::SocketAddr>,
    action: crate::audit::Action,
    detail: serde_json::Value,
) -> Result<(), Status> {
    access
        .audit
        .record(who.entry(action).from(peer).detail(detail))
        .await
        .map(|_| ())
        .map_err(|e| ApiError::from(e).into())
}

/// A Subscribe's filter and its caller's scope.
#[derive(Clone)]
struct Scoped {
    filter: EventFilter,
    scope: Scope,
}

impl Scoped {
    /// Whether it lets every event through.
    fn is_everything(&self) -> bool {
        self.filter == EventFilter::default() && self.scope.locations.is_none()
    }

    fn matches(&self, e: &JoinedEvent) -> bool {
        matches_filter(e, &self.filter)
            && e.detection
                .as_ref()
                .is_some_and(|d| self.scope.allows(d.geographical_location_oid))
    }
}

/// What a Subscribe delivered from the store that the live hub may bring
/// again: (committed_ms, det_oid) of the events it delivered in its last
/// [`COMMIT_SLACK_MS`] of reads.
#[derive(Default)]
struct Replayed {
    seen: BTreeSet<(i64, i64)>,
    /// A live event committed after this was written after the last read:
    /// from then on nothing replayed can come again, and `seen` is dropped.
    until_ms: Option<i64>,
}

impl Replayed {
    /// Forgets the events committed before `floor` (no read goes there again).
    fn forget_below(&mut self, floor: i64) {
        self.seen = self.seen.split_off(&(floor, i64::MIN));
    }
}

fn det_oid(e: &JoinedEvent) -> i64 {
    e.detection
        .as_ref()
        .and_then(|d| d.detection_oid)
        .unwrap_or_default()
}

fn location(e: &JoinedEvent) -> i64 {
    e.detection
        .as_ref()
        .map(|d| d.geographical_location_oid)
        .unwrap_or_default()
}

fn detected_ms(e: &JoinedEvent) -> i64 {
    e.detection
        .as_ref()
        .map(|d| d.timestamp_detected)
        .unwrap_or_default()
}

impl QueryService {
    /// `Subscribe`: checks the caller and its limits, then streams what it
    /// asked for from a task of its own.
    pub(crate) async fn open_subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<ReceiverStream<Result<Encoded, Status>>>, Status> {
        let who = self.caller(&req, "Subscribe").await?;
        let client = req
            .remote_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let slot = self
            .subscribers
            .try_acquire(client)
            .map_err(|r| ApiError::exhausted(format!("too many Subscribe streams: {r}")))?;
        let peer = req.remote_addr();
        let start = crate::cluster::feed::Start::of(&req, req.get_ref().from_ms)?;
        if self.cluster.is_none() && matches!(start, crate::cluster::feed::Start::AfterSeq(_)) {
            return Err(ApiError::new(
                Code::FailedPrecondition,
                format!(
                    "`{}` resumes a cluster Subscribe; this core runs alone: resume with from_ms",
                    crate::cluster::feed::AFTER_SEQ_HEADER
                ),
            )
            .into());
        }
        let r = req.into_inner();
        if let Some(l) = r.filter.as_ref().and_then(|f| f.geographical_location_oid) {
            self.allowed(&who, peer, "Subscribe", who.require_location(l))
                .await?;
        }
        let filter = r.filter.unwrap_or_default();
        audited(
            &self.access,
            &who,
            peer,
            crate::audit::Action::Subscribe,
            serde_json::json!({
                "from_ms": r.from_ms, "location": filter.geographical_location_oid,
                "camera": filter.video_camera_oid, "item": filter.item_name,
            }),
        )
        .await?;
        if let Some(c) = &self.cluster {
            let feed = c.feed.clone().ok_or_else(|| {
                ApiError::unavailable("Subscribe: this cluster node has no NATS connection")
            })?;
            let events = feed.open(start).await?;
            return Ok(
                self.spawn_stream(slot, who, filter, move |_, filter, tx| async move {
                    crate::cluster::feed::forward(events, |e| filter.matches(e), &tx).await
                }),
            );
        }
        // Live only: attach now, so that nothing committed after this call
        // returns is missed.
        let live = (r.from_ms <= 0).then(|| self.hub.subscribe());
        Ok(
            self.spawn_stream(slot, who, filter, move |this, filter, tx| async move {
                match live {
                    Some(live) => {
                        this.stream_live(live, Replayed::default(), &filter, &tx)
                            .await
                    }
                    None => match this.replay_history(r.from_ms, &filter, &tx).await {
                        Ok(Some((live, replayed))) => {
                            this.stream_live(live, replayed, &filter, &tx).await
                        }
                        Ok(None) => Ok(()),
                        Err(s) => Err(s),
                    },
                }
            }),
        )
    }

    /// Runs a Subscribe's `work` in a task of its own, holding `slot` and
    /// counted among the live subscribers meanwhile. A revoked or expired
    /// credential ends it at once; an error ends the stream with it.
    fn spawn_stream<W, F>(
        &self,
        slot: impl Send + 'static,
        who: crate::access::Principal,
        filter: EventFilter,
        work: W,
    ) -> Response<ReceiverStream<Result<Encoded, Status>>>
    where
        W: FnOnce(QueryService, Scoped, mpsc::Sender<Result<Encoded, Status>>) -> F,
        F: std::future::Future<Output = Result<(), Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE);
        let filter = Scoped {
            filter,
            scope: who.scope.clone(),
        };
        let work = work(self.clone(), filter, tx.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            this.metrics.live_subscribers.inc();
            let outcome = tokio::select! {
                o = work => o,
                e = this.access.until_invalid(&who) => Err(e.into()),
            };
            if let Err(s) = outcome {
                let _ = tx.send(Err(s)).await;
            }
            this.metrics.live_subscribers.dec();
        });
        Response::new(ReceiverStream::new(rx))
    }

    /// The live part of a Subscribe: every committed event matching
    /// `filter`, except the ones `replayed` delivered already. `Ok` when the
    /// client went away; otherwise the error says why it ended.
    async fn stream_live(
        &self,
        mut live: LiveReceiver,
        mut replayed: Replayed,
        filter: &Scoped,
        tx: &mpsc::Sender<Result<Encoded, Status>>,
    ) -> Result<(), Status> {
        loop {
            let events = tokio::select! {
                _ = tx.closed() => return Ok(()),
                msg = live.recv() => match msg {
                    Ok(events) => events,
                    Err(Missed::Lagged(n)) => {
                        self.metrics.live_lagged.inc();
                        return Err(ApiError::exhausted(format!(
                            "subscriber fell behind by more than the core holds for it (`live.buffer_events`): {n} live events went by unread; resubscribe with from_ms to catch up"
                        ))
                        .into());
                    }
                    Err(Missed::Closed) => {
                        return Err(ApiError::unavailable("the core is shutting down").into());
                    }
                },
            };
            let table = self.locations.current();
            // A subscriber of everything sends every event: the message's
            // encoding, made once for all. A filtered one encodes only the
            // events it sends, unless that encoding is there already.
            let shared = if filter.is_everything() {
                Some(events.encoded())
            } else {
                events.encoded_if_made()
            };
            for (i, e) in events.iter().enumerate() {
                if replayed
                    .until_ms
                    .is_some_and(|until| e.committed_ms > until)
                {
                    replayed = Replayed::default();
                }
                if !filter.matches(e) || replayed.seen.contains(&(e.committed_ms, det_oid(e))) {
                    continue;
                }
                let bytes = shared.map_or_else(|| e.encode_to_vec().into(), |all| all[i].clone());
                let event = Encoded::live(bytes, table.join_suffix(location(e)));
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Replays the stored events with `timestamp_detected >= from_ms`, a page
    /// at a time, then hands over the live hub (attached before the last
    /// read) and what it delivered that the hub may bring again. `None`: the
    /// client went away. No event is delivered twice or skipped, provided a
    /// commit is readable within [`COMMIT_SLACK_MS`] of its `committed_ms`:
    ///
    /// 1. By detection time, the events committed before `t0 - slack` (`t0`:
    ///    when the replay starts; all of them were readable at `t0`), at most
    ///    `replay_limit`; past it the stream ends with `OUT_OF_RANGE` saying
    ///    where to resume.
    /// 2. By commit time, in passes over `by_commit`: the first from
    ///    `t0 - slack`, each next one from (the previous pass's start −
    ///    slack), skipping what it delivered already (remembered for that
    ///    window only). After a pass that found less than a page (or after
    ///    [`CATCH_UP_PASSES`], under steady ingest), the next one attaches to
    ///    the hub before it reads, and is the last: what was written before
    ///    the attach it reads, what is written after comes from the hub.
    async fn replay_history(
        &self,
        from_ms: i64,
        filter: &Scoped,
        tx: &mpsc::Sender<Result<Encoded, Status>>,
    ) -> Result<Option<(LiveReceiver, Replayed)>, Status> {
        let cut = sightline_proto::now_ms() - COMMIT_SLACK_MS;
        if !self.replay_by_detection(from_ms, cut, filter, tx).await? {
            return Ok(None);
        }
        let mut replayed = Replayed::default();
        let (mut lo, mut attach) = (cut, false);
        for pass in 1.. {
            let pass_start = sightline_proto::now_ms();
            let live = attach.then(|| self.hub.subscribe());
            let mut after = Vec::new();
            let mut delivered = 0usize;
            loop {
                let (store, a) = (self.store.clone(), after.clone());
                let (events, last) = blocking(move || {
                    let (mut events, last) = store.committed_since(lo, &a, REPLAY_PAGE)?;
                    store.fill_media(&mut events)?;
                    Ok((events, last))
                })
                .await?;
                if events.is_empty() {
                    break;
                }
                let table = self.locations.current();
                for mut e in events {
                    if detected_ms(&e) < from_ms
                        || !filter.matches(&e)
                        || !replayed.seen.insert((e.committed_ms, det_oid(&e)))
                    {
                        continue;
                    }
                    if replayed.seen.len() > MAX_CATCH_UP_WINDOW {
                        return Err(self.too_slow(lo, from_ms).await);
                    }
                    table.join(&mut e);
                    if tx.send(Ok(e.into())).await.is_err() {
                        return Ok(None);
                    }
                    delivered += 1;
                }
                after = last;
            }
            if let Some(live) = live {
                replayed.until_ms = Some(sightline_proto::now_ms() + COMMIT_SLACK_MS);
                return Ok(Some((live, replayed)));
            }
            lo = pass_start - COMMIT_SLACK_MS;
            replayed.forget_below(lo);
            attach = delivered < REPLAY_PAGE || pass >= CATCH_UP_PASSES;
        }
        unreachable!("the passes end by going live")
    }

    /// Step 1 of [`Self::replay_history`]: the events committed before
    /// `cut`, by detection time. `false`: the client went away.
    async fn replay_by_detection(
        &self,
        from_ms: i64,
        cut: i64,
        filter: &Scoped,
        tx: &mpsc::Sender<Result<Encoded, Status>>,
    ) -> Result<bool, Status> {
        let mut sent = 0usize;
        // The earliest detection time of an event left to step 2: a resume
        // point must not be after it.
        let mut deferred: Option<i64> = None;
        let mut token = String::new();
        loop {
            let (store, f, t) = (self.store.clone(), filter.clone(), token.clone());
            let (events, next) = blocking(move || {
                let (mut events, next) =
                    store.list_events_in(from_ms, 0, Some(&f.filter), REPLAY_PAGE, &t, |l| {
                        f.scope.allows(l)
                    })?;
                store.fill_media(&mut events)?;
                Ok((events, next))
            })
            .await?;
            let table = self.locations.current();
            for mut e in events {
                let ts = detected_ms(&e);
                if e.committed_ms >= cut {
                    deferred = Some(deferred.map_or(ts, |d| d.min(ts)));
                    continue;
                }
                if sent >= self.replay_limit {
                    let resume = deferred.map_or(ts, |d| d.min(ts));
                    return Err(ApiError::new(Code::OutOfRange, format!(
                        "history replay stopped after {} events (`live.replay_limit`), before the event at timestamp_detected {ts} (det_oid {}); resubscribe with from_ms={resume} (events from there on come again: skip the det_oids you have)",
                        self.replay_limit,
                        det_oid(&e)
                    ))
                    .into());
                }
                table.join(&mut e);
                if tx.send(Ok(e.into())).await.is_err() {
                    return Ok(false);
                }
                sent += 1;
            }
            if next.is_empty() {
                return Ok(true);
            }
            token = next;
        }
    }

    /// The error that ends a Subscribe whose client reads slower than events
    /// are committed, with the earliest detection time committed since `lo`
    /// (everything before `lo` was delivered) as the resume point.
    async fn too_slow(&self, lo: i64, from_ms: i64) -> Status {
        let store = self.store.clone();
        let earliest = blocking(move || {
            let (mut after, mut earliest) = (Vec::new(), i64::MAX);
            loop {
                let (events, last) = store.committed_since(lo, &after, 10 * REPLAY_PAGE)?;
                if events.is_empty() {
                    return Ok(earliest);
                }
                earliest = events.iter().map(detected_ms).fold(earliest, i64::min);
                after = last;
            }
        })
        .await;
        let resume = match earliest {
            Ok(ms) if ms != i64::MAX => ms.max(from_ms),
            _ => from_ms,
        };
        ApiError::exhausted(format!(
            "this subscriber reads slower than events are committed: more than {MAX_CATCH_UP_WINDOW} arrived while it caught up; resubscribe with from_ms={resume} (events from there on come again: skip the det_oids you have)"
        ))
        .into()
    }
}
