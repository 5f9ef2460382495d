//! `sightline.v1.Query` and `sightline.v1.Admin`. Store reads run on blocking
//! threads; events are joined with the Dataset B table in use at read time,
//! and carry the media attached so far (live events: none yet).

use std::{collections::HashSet, path::PathBuf, sync::Arc};

use sightline_proto::v1::{
    admin_server::Admin, query_server::Query, AgentGrant, EventFilter, FleetRequest, FleetResponse,
    GetEventRequest, ItemCount, JoinedEvent, ListEventsRequest, ListEventsResponse,
    ListGrantsRequest, ListGrantsResponse, ListQuarantineRequest, ListQuarantineResponse,
    LocationTop, ReloadLocationsRequest, ReloadLocationsResponse, RevokeAgentRequest,
    SearchRequest, SearchResponse, StatsRequest, StatsResponse, SubscribeRequest, TopItemsRequest,
    TopItemsResponse,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::live::LiveHub;
use crate::{
    enrich::Locations,
    fleet::Fleet,
    metrics::Metrics,
    search::{self, SearchIndex},
    store::{matches_filter, Store},
};

/// Most stored events a Subscribe replays before going live.
pub const HISTORY_LIMIT: usize = 100_000;

#[derive(Clone)]
pub struct QueryService {
    pub search: Arc<SearchIndex>,
    pub store: Arc<Store>,
    pub locations: Arc<Locations>,
    pub fleet: Arc<Fleet>,
    pub hub: LiveHub,
    pub metrics: Arc<Metrics>,
}

/// Store and index reads that may run at once. The rest wait their turn, so
/// a burst of expensive queries cannot take every core from the partition
/// writers (ingest) and the blocking pool.
pub const MAX_CONCURRENT_READS: usize = 4;
static READ_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_READS);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let _slot = READ_SLOTS
        .acquire()
        .await
        .map_err(|_| Status::unavailable("the core is shutting down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
}

/// Most events or quarantine entries one page of `ListEvents` /
/// `ListQuarantine` returns (0 asks for [`DEFAULT_PAGE`]).
pub const MAX_PAGE: u32 = 10_000;
pub const DEFAULT_PAGE: u32 = 100;

fn page_size(n: u32) -> Result<usize, Status> {
    match n {
        0 => Ok(DEFAULT_PAGE as usize),
        n @ 1..=MAX_PAGE => Ok(n as usize),
        n => Err(Status::invalid_argument(format!(
            "field `page_size`: {n} is more than {MAX_PAGE}"
        ))),
    }
}

/// Times before this (epoch ms: 1973-03-03) are most likely seconds.
const SECONDS_NOT_MS: i64 = 100_000_000_000;

/// A `[from_ms, to_ms)` range (0: unbounded): not inverted, not negative,
/// and in milliseconds (a value that reads as seconds is refused with a hint,
/// not answered with nothing).
fn check_range(from_ms: i64, to_ms: i64) -> Result<(), Status> {
    if to_ms != 0 && to_ms < from_ms {
        return Err(Status::invalid_argument(format!(
            "field `to_ms`: {to_ms} is before `from_ms` {from_ms}"
        )));
    }
    for (field, v) in [("from_ms", from_ms), ("to_ms", to_ms)] {
        if v < 0 {
            return Err(Status::invalid_argument(format!(
                "field `{field}`: {v} is negative; times are epoch milliseconds"
            )));
        }
        if v != 0 && v < SECONDS_NOT_MS {
            return Err(Status::invalid_argument(format!(
                "field `{field}`: {v} reads as seconds (before 1973 in milliseconds); times are epoch milliseconds, e.g. {}",
                v.saturating_mul(1000)
            )));
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
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        let req = search::SearchRequest {
            query: r.query,
            location_oid: r.geographical_location_oid,
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
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        let page_size = page_size(r.page_size)?;
        let store = self.store.clone();
        let (mut events, next_page_token) = blocking(move || {
            let (mut events, token) = store.list_events(
                r.from_ms,
                r.to_ms,
                r.filter.as_ref(),
                page_size,
                &r.page_token,
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
        let oid = req.into_inner().detection_oid;
        if oid <= 0 {
            return Err(Status::invalid_argument(format!(
                "field `detection_oid`: must be positive, got {oid}"
            )));
        }
        let store = self.store.clone();
        let ev = blocking(move || {
            let mut ev = store.get_event(oid)?;
            if let Some(e) = ev.as_mut() {
                store.fill_media(std::slice::from_mut(e))?;
            }
            Ok(ev)
        })
        .await?;
        match ev {
            None => Err(Status::not_found(format!(
                "no event with detection_oid {oid}"
            ))),
            Some(mut e) => {
                self.locations.current().join(&mut e);
                Ok(Response::new(e))
            }
        }
    }

    async fn top_items(
        &self,
        req: Request<TopItemsRequest>,
    ) -> Result<Response<TopItemsResponse>, Status> {
        let r = req.into_inner();
        check_range(r.from_ms, r.to_ms)?;
        if r.to_ms == 0 || r.to_ms < r.from_ms {
            return Err(Status::invalid_argument(format!(
                "field `to_ms`: must be set and not before `from_ms` (got from {} to {})",
                r.from_ms, r.to_ms
            )));
        }
        let x = match r.x {
            0 => 10,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "field `x`: {n} is more than 1000"
                )))
            }
        };
        let store = self.store.clone();
        let counts = blocking(move || {
            Ok(store.top_items(r.from_ms, r.to_ms, x, r.geographical_location_oid)?)
        })
        .await?;
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

    type SubscribeStream = ReceiverStream<Result<JoinedEvent, Status>>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.into_inner();
        // Attach first, then read history: nothing committed in between is missed.
        let mut live = self.hub.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let this = self.clone();
        tokio::spawn(async move {
            this.metrics.live_subscribers.inc();
            let filter = r.filter.unwrap_or_default();
            let mut replayed: HashSet<i64> = HashSet::new();
            if r.from_ms > 0 {
                if let Err(s) = this
                    .replay_history(r.from_ms, &filter, &tx, &mut replayed)
                    .await
                {
                    let _ = tx.send(Err(s)).await;
                    this.metrics.live_subscribers.dec();
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    msg = live.recv() => match msg {
                        Ok(events) => {
                            for e in events.iter() {
                                if !matches_filter(e, &filter) {
                                    continue;
                                }
                                if !replayed.is_empty() {
                                    let oid = e.detection.as_ref().and_then(|d| d.detection_oid).unwrap_or_default();
                                    if replayed.remove(&oid) {
                                        continue;
                                    }
                                }
                                if tx.send(Ok(e.clone())).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            this.metrics.live_lagged.inc();
                            let _ = tx.send(Err(Status::resource_exhausted(format!(
                                "subscriber fell behind by {n} commits; resubscribe with from_ms to catch up"
                            )))).await;
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let _ = tx.send(Err(Status::unavailable("the core is shutting down"))).await;
                            break;
                        }
                    }
                }
            }
            this.metrics.live_subscribers.dec();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fleet(&self, _req: Request<FleetRequest>) -> Result<Response<FleetResponse>, Status> {
        Ok(Response::new(FleetResponse {
            agents: self.fleet.snapshot(),
        }))
    }

    async fn list_quarantine(
        &self,
        req: Request<ListQuarantineRequest>,
    ) -> Result<Response<ListQuarantineResponse>, Status> {
        let r = req.into_inner();
        let page_size = page_size(r.page_size)?;
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

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let store = self.store.clone();
        let c = blocking(move || Ok(store.counters()?)).await?;
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
    async fn replay_history(
        &self,
        from_ms: i64,
        filter: &EventFilter,
        tx: &mpsc::Sender<Result<JoinedEvent, Status>>,
        replayed: &mut HashSet<i64>,
    ) -> Result<(), Status> {
        let mut token = String::new();
        let table = self.locations.current();
        loop {
            let store = self.store.clone();
            let f = filter.clone();
            let t = token.clone();
            let (events, next) = blocking(move || {
                let (mut events, next) = store.list_events(from_ms, 0, Some(&f), 1000, &t)?;
                store.fill_media(&mut events)?;
                Ok((events, next))
            })
            .await?;
            for mut e in events {
                if replayed.len() >= HISTORY_LIMIT {
                    return Ok(());
                }
                replayed.insert(
                    e.detection
                        .as_ref()
                        .and_then(|d| d.detection_oid)
                        .unwrap_or_default(),
                );
                table.join(&mut e);
                if tx.send(Ok(e)).await.is_err() {
                    return Ok(());
                }
            }
            if next.is_empty() {
                return Ok(());
            }
            token = next;
        }
    }
}

/// `sightline.v1.Admin`.
pub struct AdminService {
    pub locations: Arc<Locations>,
    pub registry: Arc<crate::edge::registry::Registry>,
    pub fleet: Arc<crate::fleet::Fleet>,
    pub token: Arc<super::admin_token::AdminToken>,
}

impl AdminService {
    /// Every admin call carries the admin token (see [`super::admin_token`]).
    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.token.check(auth).map_err(|why| {
            tracing::warn!(peer = ?req.remote_addr(), reason = %why, "admin call refused");
            Status::unauthenticated(why)
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_locations(
        &self,
        req: Request<ReloadLocationsRequest>,
    ) -> Result<Response<ReloadLocationsResponse>, Status> {
        self.authorize(&req)?;
        let path = req.into_inner().path;
        let locations = self.locations.clone();
        let path = (!path.is_empty()).then(|| PathBuf::from(path));
        let (rows, path) = blocking(move || {
            locations
                .reload(path)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .await?;
        Ok(Response::new(ReloadLocationsResponse {
            rows: rows as u64,
            path,
        }))
    }

    async fn grant_agent(&self, req: Request<AgentGrant>) -> Result<Response<AgentGrant>, Status> {
        self.authorize(&req)?;
        let g = self.registry.grant_agent(req.into_inner()).await?;
        self.fleet.reinstate(&g.agent_id);
        tracing::info!(agent = %g.agent_id, cameras = ?g.cameras, locations = ?g.locations, "admin: agent granted");
        Ok(Response::new(g))
    }

    async fn revoke_agent(
        &self,
        req: Request<RevokeAgentRequest>,
    ) -> Result<Response<AgentGrant>, Status> {
        self.authorize(&req)?;
        let g = self.registry.revoke(&req.into_inner().agent_id).await?;
        // Ends its open session at once; the registry refuses the next one.
        self.fleet.revoke(&g.agent_id);
        tracing::warn!(agent = %g.agent_id, "admin: agent revoked");
        Ok(Response::new(g))
    }

    async fn list_grants(
        &self,
        req: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(ListGrantsResponse {
            enforced: self.registry.enforced(),
            agents: self.registry.list(),
        }))
    }
}
