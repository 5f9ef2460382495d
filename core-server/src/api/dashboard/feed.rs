//! The dashboard's live feed: one task turns the hub's commits into ticks —
//! at most one every [`TICK`] (a commit after a quiet spell goes out at
//! once), with the exact totals, the count since the last tick and the
//! newest events — serialised once and shared by every
//! viewer, so a hundred open Live pages cost a hundred socket writes per
//! tick, not a hundred JSON encodings per event.
//!
//! Viewers are bounded: at most `live.max_feeds` open feeds, and
//! `live.max_feeds_per_client` from one IP address (see [`LiveFeed::subscribe`]).
//!
//! The same task keeps, per agent, the cameras seen in its events (for the
//! fleet view).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sightline_proto::v1::JoinedEvent;
use sightline_web::model::{CameraRow, EventRow, LiveTick, Totals};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{
        limits::{Gate, Refused, Slot},
        live::LiveHub,
    },
    enrich::{LocationTable, Locations},
    store::{Counters, Store},
};

/// Ticks are at least this far apart (at most 20 a second). Measured: 25 ms
/// made the browser render twice as often and the p99 lag worse (120 ms
/// against 81-117 ms at 10,000 events/s on 2 cores).
pub const TICK: Duration = Duration::from_millis(50);
/// The events/s figure is taken over at least this long.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// Events a tick carries at most: the page shows 50, so at 10,000 events/s
/// (a tick every 50 ms) the table turns over every two ticks, half of it at
/// a time, which keeps each render small.
pub const TICK_EVENTS: usize = 25;

/// One tick as the feed task made it: serialised for viewers who see
/// everything, and in parts for the ones a scope or a role limits.
pub struct Tick {
    pub json: Arc<str>,
    pub tick: LiveTick,
    /// Events committed since the previous tick, per location.
    pub by_location: HashMap<i64, u64>,
}

/// What one viewer of the live feed may see of each tick.
///
/// A scoped viewer's count is the scope's stored events read from the store,
/// plus the scope's commits in each tick since. A read while commits are in
/// flight may count some of them twice (read, then ticked) or not at all
/// (ticked before the feed was subscribed, or skipped when the viewer fell
/// behind), so the count is marked unsure and read again at the next idle
/// tick (no commit for a second: none in flight). Exact whenever the feed
/// is quiet; under traffic off by at most the commits of one tick window.
pub struct TickView {
    pub who: crate::access::Principal,
    /// The scope's stored events as last counted (scoped viewers).
    pub stored: u64,
    /// `stored` may be off (see above): read it again at the next idle tick.
    pub unsure: bool,
}

impl TickView {
    /// A scoped viewer whose count may be off meets an idle tick: the time
    /// to read the count again ([`TickView::recounted`]) before rendering.
    pub fn wants_recount(&self, t: &Tick) -> bool {
        self.unsure && !self.who.scope.is_all() && t.tick.committed == 0
    }

    /// The scope's stored events, read from the store at an idle tick.
    pub fn recounted(&mut self, stored: u64) {
        self.stored = stored;
        self.unsure = false;
    }

    /// Ticks were skipped (the viewer fell behind): their commits are not in
    /// the count.
    pub fn lagged(&mut self) {
        self.unsure = true;
    }

    /// The tick as this viewer may see it: the shared JSON when nothing is
    /// withheld; otherwise only the scope's events and counts, no footage
    /// for a viewer.
    pub fn render(&mut self, t: &Tick) -> Arc<str> {
        let footage = self.who.role >= crate::access::Role::Investigator;
        if self.who.scope.is_all() && footage {
            return t.json.clone();
        }
        let scope = &self.who.scope;
        let mut tick = t.tick.clone();
        tick.events.retain(|r| scope.allows(r.location_oid));
        if !footage {
            for r in &mut tick.events {
                r.thumbnail = None;
            }
        }
        if !scope.is_all() {
            tick.committed = t
                .by_location
                .iter()
                .filter(|(l, _)| scope.allows(**l))
                .map(|(_, n)| n)
                .sum();
            self.stored += tick.committed;
            // Counted from ticks, not read: a read at the next idle tick
            // catches what the count missed or doubled.
            self.unsure |= tick.committed > 0;
            tick.totals = Totals {
                stored: self.stored,
                at_ms: tick.totals.at_ms,
                ..Totals::default()
            };
            // The rate is of every location: withheld.
            tick.per_s = tick.per_s.map(|_| 0.0);
        }
        serde_json::to_string(&tick).unwrap_or_default().into()
    }
}

/// Cameras seen per agent since the core started: agent → camera → row.
pub type CamerasSeen = Mutex<HashMap<String, BTreeMap<i64, CameraRow>>>;

/// Shared by the SSE handler (subscribe) and the feed task (publish).
#[derive(Clone)]
pub struct LiveFeed {
    tx: broadcast::Sender<Arc<Tick>>,
    pub cameras: Arc<CamerasSeen>,
    /// Counts the open feeds against `live.max_feeds` (and per client).
    viewers: Arc<Gate>,
    /// For a scoped viewer's counts when its feed opens.
    pub store: Arc<Store>,
    /// Dataset B, for the rows' location names.
    locations: Arc<Locations>,
    /// Cluster mode: the counts are every partition's (see
    /// [`LiveFeed::set_cluster`]), not this node's store's.
    cluster: Arc<std::sync::OnceLock<ClusterCounts>>,
}

/// Cluster mode: the queries across the partitions, and their counters as
/// last read (by a task, once a second: a tick does not wait for the
/// cluster, e.g. while a partition moves).
#[derive(Clone)]
struct ClusterCounts {
    query: Arc<crate::cluster::query::ClusterQuery>,
    last: Arc<Mutex<Option<Counters>>>,
}

/// How often the feed reads the cluster's counters.
const CLUSTER_COUNTS_EVERY: Duration = Duration::from_secs(1);

impl LiveFeed {
    /// Starts the feed task; it ends with `shutdown`. `viewers` bounds the
    /// open feeds.
    pub fn start(
        hub: &LiveHub,
        store: Arc<Store>,
        locations: Arc<Locations>,
        shutdown: CancellationToken,
        viewers: Arc<Gate>,
    ) -> Self {
        let (tx, _) = broadcast::channel(16);
        let feed = Self {
            tx,
            cameras: Arc::default(),
            viewers,
            store: store.clone(),
            locations,
            cluster: Arc::default(),
        };
        let this = feed.clone();
        let commits = hub.subscribe();
        tokio::spawn(async move { this.run(commits, shutdown).await });
        feed
    }

    /// Cluster mode: totals and scoped counts from every partition through
    /// `query` (the hub this feed reads must carry every partition's
    /// commits: see `cluster::feed::into_hub`). Set once; ends with
    /// `shutdown`.
    pub fn set_cluster(
        &self,
        query: Arc<crate::cluster::query::ClusterQuery>,
        shutdown: CancellationToken,
    ) {
        let c = ClusterCounts {
            query,
            last: Arc::default(),
        };
        if self.cluster.set(c.clone()).is_err() {
            return;
        }
        tokio::spawn(async move {
            loop {
                match c.query.counters().await {
                    Ok(n) => *c.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(n),
                    Err(e) => tracing::debug!(error = %e, "the live feed's cluster counters"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(CLUSTER_COUNTS_EVERY) => {}
                }
            }
        });
    }

    /// Whether anyone has a live feed open.
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// The counters a tick shows: this core's store's, or in cluster mode
    /// every partition's as last read (`None` until the first read).
    async fn counters(&self) -> Option<Counters> {
        match self.cluster.get() {
            Some(c) => *c.last.lock().unwrap_or_else(|p| p.into_inner()),
            None => {
                let s = self.store.clone();
                tokio::task::spawn_blocking(move || s.counters())
                    .await
                    .ok()?
                    .ok()
            }
        }
    }

    /// Events stored at the locations of `scope` (all time), on this core
    /// or in cluster mode over every partition.
    pub async fn scoped_stored(&self, scope: &crate::access::Scope) -> Result<u64, String> {
        if let Some(c) = self.cluster.get() {
            return c
                .query
                .scoped_stored(scope)
                .await
                .map_err(|e| e.message().to_string());
        }
        let (store, scope) = (self.store.clone(), scope.clone());
        tokio::task::spawn_blocking(move || scoped_stored(&store, &scope))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// A viewer's stream of serialised [`LiveTick`]s, with its place among
    /// the open feeds (hold it as long as the stream), or the cap it hit.
    pub fn subscribe(
        &self,
        client: std::net::IpAddr,
    ) -> Result<(broadcast::Receiver<Arc<Tick>>, Slot), Refused> {
        let slot = self.viewers.try_acquire(client)?;
        Ok((self.tx.subscribe(), slot))
    }

    async fn run(self, mut commits: crate::api::live::LiveReceiver, shutdown: CancellationToken) {
        // Without commits, a tick a second keeps the totals and the rate fresh.
        let mut idle = tokio::time::interval(Duration::from_secs(1));
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut newest: Vec<EventRow> = Vec::new();
        let mut committed = 0u64;
        let mut by_location: HashMap<i64, u64> = HashMap::new();
        let mut last = (Instant::now(), None::<u64>);
        let mut last_sent = Instant::now() - TICK;
        // When the next tick goes out: set by the first commit after a tick,
        // at least TICK after the previous one (a commit after a quiet spell
        // goes out at once).
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let send_now = tokio::select! {
                _ = shutdown.cancelled() => return,
                msg = commits.recv() => {
                    match msg {
                        Ok(events) => {
                            committed += events.len() as u64;
                            for e in events.iter() {
                                if let Some(d) = &e.detection {
                                    *by_location.entry(d.geographical_location_oid).or_default() += 1;
                                }
                            }
                            self.saw(&events);
                            // Newest last within a commit; keep the tail only.
                            let skip = events.len().saturating_sub(TICK_EVENTS);
                            let table = self.locations.current();
                            newest.extend(events.iter().skip(skip).map(|e| row(e, &table)));
                            if newest.len() > 4 * TICK_EVENTS {
                                newest.drain(..newest.len() - TICK_EVENTS);
                            }
                        }
                        // Behind: the totals below are still exact; only rows were skipped.
                        Err(crate::api::live::Missed::Lagged(_)) => {}
                        Err(crate::api::live::Missed::Closed) => return,
                    }
                    if due.is_none() {
                        due = Some((last_sent + TICK).max(Instant::now()).into());
                    }
                    false
                }
                _ = sleep_until_opt(due) => true,
                _ = idle.tick() => last_sent.elapsed() >= Duration::from_secs(1),
            };
            if !send_now {
                continue;
            }
            due = None;
            last_sent = Instant::now();
            if self.tx.receiver_count() == 0 {
                newest.clear();
                committed = 0;
                by_location.clear();
                continue;
            }
            let Some(c) = self.counters().await else {
                continue;
            };
            let now = Instant::now();
            // The rate over the last half second or more (ticks come faster).
            let per_s = match last.1 {
                Some(prev) if (now - last.0) >= RATE_WINDOW => {
                    let r = c.stored.saturating_sub(prev) as f64 / (now - last.0).as_secs_f64();
                    last = (now, Some(c.stored));
                    Some(r)
                }
                Some(_) => None,
                None => {
                    last = (now, Some(c.stored));
                    Some(0.0)
                }
            };
            let events: Vec<EventRow> = newest.drain(..).rev().take(TICK_EVENTS).collect();
            let t = LiveTick {
                totals: totals(&c),
                committed: std::mem::take(&mut committed),
                per_s,
                events,
            };
            if let Ok(json) = serde_json::to_string(&t) {
                let _ = self.tx.send(Arc::new(Tick {
                    json: json.into(),
                    tick: t,
                    by_location: std::mem::take(&mut by_location),
                }));
            }
        }
    }

    fn saw(&self, events: &[JoinedEvent]) {
        let mut cams = self.cameras.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            let Some(d) = e.detection.as_ref() else {
                continue;
            };
            // The agent's id is copied only the first time it is seen.
            if !cams.contains_key(&e.agent_id) {
                cams.insert(e.agent_id.clone(), BTreeMap::new());
            }
            let Some(per_agent) = cams.get_mut(&e.agent_id) else {
                continue;
            };
            let c = per_agent.entry(d.video_camera_oid).or_insert(CameraRow {
                camera_oid: d.video_camera_oid,
                ..CameraRow::default()
            });
            c.events += 1;
            c.last_event_ms = c.last_event_ms.max(d.timestamp_detected);
        }
    }
}

/// The store's totals as the dashboard shows them, read now.
/// Events stored at the locations of `scope` (all time, from the aggregates).
pub fn scoped_stored(
    store: &crate::store::Store,
    scope: &crate::access::Scope,
) -> Result<u64, crate::store::StoreError> {
    let to = sightline_proto::now_ms() + 60_000;
    Ok(
        crate::access::scoped_top_items(store, scope, 0, to, 1, None)?
            .iter()
            .map(|c| c.total)
            .sum(),
    )
}

pub fn totals(c: &crate::store::Counters) -> Totals {
    Totals {
        stored: c.stored,
        dup_transport: c.dup_transport,
        dup_semantic: c.dup_semantic,
        rejected: c.rejected,
        unmatched: c.unmatched,
        at_ms: sightline_proto::now_ms(),
    }
}

/// An event as a dashboard row, its location's name from `table` (the
/// event's own `location` is not read: the live hub's events carry none).
pub fn row(e: &JoinedEvent, table: &LocationTable) -> EventRow {
    let d = e.detection.clone().unwrap_or_default();
    EventRow {
        det_oid: d.detection_oid.unwrap_or_default(),
        location_oid: d.geographical_location_oid,
        location: table
            .get(d.geographical_location_oid)
            .map(|l| l.geographical_location.clone()),
        camera_oid: d.video_camera_oid,
        item: d.item_name,
        detected_ms: d.timestamp_detected,
        committed_ms: e.committed_ms,
        agent_id: e.agent_id.clone(),
        thumbnail: e
            .media
            .iter()
            .find(|m| m.kind == "thumbnail")
            .map(|m| m.sha256.clone()),
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Credential, Principal, Role, Scope};

    /// A tick with `committed` events per location.
    fn tick(committed: &[(i64, u64)]) -> Tick {
        let tick = LiveTick {
            totals: Totals::default(),
            committed: committed.iter().map(|(_, n)| n).sum(),
            per_s: None,
            events: vec![],
        };
        Tick {
            json: serde_json::to_string(&tick).unwrap().into(),
            tick,
            by_location: committed.iter().copied().collect(),
        }
    }

    #[test]
    fn a_live_row_names_its_location_from_dataset_b_though_the_hub_carries_no_row() {
        use sightline_proto::v1::{Detection, Location};
        let table = LocationTable::new(
            [(
                3,
                Location {
                    geographical_location_oid: 3,
                    geographical_location: "East Gate".into(),
                    extra: Default::default(),
                },
            )]
            .into(),
            String::new(),
        );
        // As the partition writer hands it to the hub: no `location`.
        let at = |loc| JoinedEvent {
            detection: Some(Detection {
                geographical_location_oid: loc,
                detection_oid: Some(7),
                item_name: "car".into(),
                ..Default::default()
            }),
            location_matched: loc == 3,
            ..Default::default()
        };
        assert_eq!(row(&at(3), &table).location.as_deref(), Some("East Gate"));
        assert_eq!(row(&at(5), &table).location, None, "not in Dataset B");
    }

    fn shown(v: &mut TickView, t: &Tick) -> u64 {
        serde_json::from_str::<LiveTick>(&v.render(t))
            .unwrap()
            .totals
            .stored
    }

    #[test]
    fn a_scoped_live_count_is_read_again_at_the_first_idle_tick_after_its_commits() {
        let mut v = TickView {
            who: Principal {
                actor: "user:north".into(),
                role: Role::Viewer,
                scope: Scope::locations([1, 2]),
                credential: Credential::AdminToken,
            },
            stored: 10,
            unsure: true,
        };
        // Counted while commits were in flight: not read again while busy,
        // counted on from the ticks (the scope's commits only).
        assert!(!v.wants_recount(&tick(&[(1, 3)])));
        assert_eq!(shown(&mut v, &tick(&[(1, 3), (3, 5)])), 13);
        // Idle: read again, and shown as read (one commit had been counted
        // twice).
        let idle = tick(&[]);
        assert!(v.wants_recount(&idle));
        v.recounted(12);
        assert_eq!(shown(&mut v, &idle), 12);
        assert!(!v.wants_recount(&idle), "sure until its scope commits");
        // Commits elsewhere leave it sure; its own make it unsure.
        assert_eq!(shown(&mut v, &tick(&[(3, 4)])), 12);
        assert!(!v.wants_recount(&idle));
        assert_eq!(shown(&mut v, &tick(&[(2, 1)])), 13);
        assert!(v.wants_recount(&idle));
        v.recounted(13);
        // Skipped ticks: unsure.
        v.lagged();
        assert!(v.wants_recount(&idle));
        // A viewer of every location gets exact totals with every tick.
        let all = TickView {
            who: Principal::admin_token(),
            stored: 0,
            unsure: true,
        };
        assert!(!all.wants_recount(&idle));
    }
}
