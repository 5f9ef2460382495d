//! The core's Prometheus metrics (`GET /metrics`, text format).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabel {
    /// "transport" (seq below the watermark) or "semantic" (det_oid already stored).
    pub level: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabel {
    pub field: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// "tls" (handshake refused: no, expired or foreign certificate),
    /// "identity", "revoked", "unregistered", "claimed_other_id".
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The config key of the cap that was reached, e.g. `connections.max_per_client`.
    pub limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// "snapshot", "thumbnail" or "clip".
    pub kind: String,
}

/// Every metric the core exports.
pub struct Metrics {
    registry: Registry,
    pub ingested: Counter,
    pub duplicates: Family<LevelLabel, Counter>,
    pub rejected: Family<FieldLabel, Counter>,
    pub unmatched: Counter,
    pub commit_seconds: Histogram,
    pub commit_events: Histogram,
    pub agent_connected: Family<AgentLabel, Gauge>,
    pub agent_lag: Family<AgentLabel, Gauge>,
    pub agent_buffer_depth: Family<AgentLabel, Gauge>,
    /// Seconds since the agent accepted the oldest event it still holds.
    pub agent_backlog_age: Family<AgentLabel, Gauge>,
    pub sessions: Counter,
    pub live_subscribers: Gauge,
    pub live_lagged: Counter,
    pub media_stored: Family<KindLabel, Counter>,
    pub media_stored_bytes: Counter,
    pub media_rejected: Family<KindLabel, Counter>,
    pub edge_refused: Family<ReasonLabel, Counter>,
    pub permission_denied: Family<AgentLabel, Counter>,
    pub batches_from_datagrams: Counter,
    /// Events quarantined because their det_oid is stored for another camera.
    pub det_oid_conflicts: Counter,
    /// Events refused because they are older than the store keeps.
    pub too_old: Counter,
    /// Events stored through the live lane, ahead of their agent's backlog.
    pub live_lane_stored: Counter,
    /// Backlog events acknowledged as stored earlier through the live lane.
    pub delivered_live: Counter,
    pub connections_refused: Family<LimitLabel, Counter>,
    /// The continuous Parquet export (see `export::follow`).
    pub export_hours: Counter,
    pub export_rows: Counter,
    pub export_failures: Counter,
    pub export_lag: Gauge,
    pub export_pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("sightline");
        let ingested = Counter::default();
        r.register(
            "events_ingested",
            "Events stored (unique det_oids)",
            ingested.clone(),
        );
        let duplicates = Family::<LevelLabel, Counter>::default();
        r.register(
            "duplicates",
            "Events dropped as duplicates, by level",
            duplicates.clone(),
        );
        let rejected = Family::<FieldLabel, Counter>::default();
        r.register(
            "rejected",
            "Events refused and quarantined, by field",
            rejected.clone(),
        );
        let unmatched = Counter::default();
        r.register(
            "unmatched_location",
            "Events stored whose location is not in Dataset B",
            unmatched.clone(),
        );
        let commit_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
        ]);
        r.register(
            "commit_seconds",
            "Time of one durable commit (WriteBatch + fsync)",
            commit_seconds.clone(),
        );
        let commit_events = Histogram::new([1.0, 10.0, 100.0, 1000.0, 5000.0, 20000.0]);
        r.register(
            "commit_events",
            "Events per commit (group commit size)",
            commit_events.clone(),
        );
        let agent_connected = Family::<AgentLabel, Gauge>::default();
        r.register(
            "agent_connected",
            "1 while the agent has a session open",
            agent_connected.clone(),
        );
        let agent_lag = Family::<AgentLabel, Gauge>::default();
        r.register(
            "agent_lag_events",
            "Events the agent has assigned that the core has not committed",
            agent_lag.clone(),
        );
        let agent_buffer_depth = Family::<AgentLabel, Gauge>::default();
        r.register(
            "agent_buffer_depth_events",
            "Buffer depth the agent last reported",
            agent_buffer_depth.clone(),
        );
        let agent_backlog_age = Family::<AgentLabel, Gauge>::default();
        r.register(
            "agent_backlog_age_seconds",
            "Seconds since the agent accepted the oldest event it still holds unacknowledged (0: none)",
            agent_backlog_age.clone(),
        );
        let sessions = Counter::default();
        r.register("ingest_sessions", "Agent sessions opened", sessions.clone());
        let live_subscribers = Gauge::default();
        r.register(
            "live_subscribers",
            "Live subscribers connected",
            live_subscribers.clone(),
        );
        let live_lagged = Counter::default();
        r.register(
            "live_subscribers_lagged",
            "Live subscribers cut off for falling behind",
            live_lagged.clone(),
        );
        let media_stored = Family::<KindLabel, Counter>::default();
        r.register(
            "media_stored",
            "Media objects stored (new ones; re-uploads are not counted), by kind",
            media_stored.clone(),
        );
        let media_stored_bytes = Counter::default();
        r.register(
            "media_stored_bytes",
            "Bytes of media objects stored",
            media_stored_bytes.clone(),
        );
        let media_rejected = Family::<KindLabel, Counter>::default();
        r.register(
            "media_rejected",
            "Media uploads refused for their content and quarantined, by kind",
            media_rejected.clone(),
        );
        let edge_refused = Family::<ReasonLabel, Counter>::default();
        r.register(
            "edge_refused",
            "Edge connections and sessions refused, by reason",
            edge_refused.clone(),
        );
        let permission_denied = Family::<AgentLabel, Counter>::default();
        r.register(
            "permission_denied_events",
            "Events refused because their camera or location is not registered to the agent",
            permission_denied.clone(),
        );
        let connections_refused = Family::<LimitLabel, Counter>::default();
        r.register(
            "connections_refused",
            "Connections, Subscribe streams and live feeds refused at a cap, by its config key",
            connections_refused.clone(),
        );
        let batches_from_datagrams = Counter::default();
        r.register(
            "batches_from_datagrams",
            "Batches committed from their QUIC datagram copy, ahead of the event stream",
            batches_from_datagrams.clone(),
        );
        let det_oid_conflicts = Counter::default();
        r.register(
            "det_oid_conflicts",
            "Events quarantined because their det_oid is stored for another camera",
            det_oid_conflicts.clone(),
        );
        let live_lane_stored = Counter::default();
        r.register(
            "live_lane_stored",
            "Events stored through the live lane, ahead of their agent's backlog",
            live_lane_stored.clone(),
        );
        let delivered_live = Counter::default();
        r.register(
            "delivered_live",
            "Backlog events acknowledged as stored earlier through the live lane (not duplicates)",
            delivered_live.clone(),
        );
        let too_old = Counter::default();
        r.register(
            "events_too_old",
            "Events refused (quarantined) because they are older than retention.events keeps",
            too_old.clone(),
        );
        let (export_hours, export_rows, export_failures): (Counter, Counter, Counter) =
            Default::default();
        let (export_lag, export_pending): (Gauge, Gauge) = Default::default();
        r.register(
            "export_hours",
            "Hours written by the continuous Parquet export (a rewrite counts again)",
            Clone::clone(&export_hours),
        );
        r.register(
            "export_rows",
            "Rows written by the continuous Parquet export",
            Clone::clone(&export_rows),
        );
        r.register(
            "export_failures",
            "Failed passes of the continuous Parquet export",
            Clone::clone(&export_failures),
        );
        r.register(
            "export_lag_seconds",
            "Age of the oldest commit not yet in the Parquet export (0: none)",
            Clone::clone(&export_lag),
        );
        r.register(
            "export_hours_pending",
            "Hours waiting to be written by the Parquet export",
            Clone::clone(&export_pending),
        );
        Self {
            registry: r,
            export_hours,
            export_rows,
            export_failures,
            export_lag,
            export_pending,
            batches_from_datagrams,
            det_oid_conflicts,
            too_old,
            live_lane_stored,
            delivered_live,
            edge_refused,
            connections_refused,
            permission_denied,
            ingested,
            duplicates,
            rejected,
            unmatched,
            commit_seconds,
            commit_events,
            agent_connected,
            agent_lag,
            agent_buffer_depth,
            agent_backlog_age,
            sessions,
            live_subscribers,
            live_lagged,
            media_stored,
            media_stored_bytes,
            media_rejected,
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn edge_refused(&self, reason: &'static str) {
        self.edge_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn connection_refused(&self, limit: &'static str) {
        self.connections_refused
            .get_or_create(&LimitLabel { limit })
            .inc();
    }

    pub fn kind(kind: &str) -> KindLabel {
        KindLabel {
            kind: kind.to_string(),
        }
    }

    pub fn agent(agent: &str) -> AgentLabel {
        AgentLabel {
            agent: agent.to_string(),
        }
    }
}
