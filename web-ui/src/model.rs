//! What the dashboard shows, as plain serde types shared by the server (which
//! fills them from the store) and the browser (which renders them). Times are
//! epoch milliseconds; media are referred to by their SHA-256, served at
//! `/media/<sha256>`.

use serde::{Deserialize, Serialize};

/// One joined event, as a row of a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    pub det_oid: i64,
    pub location_oid: i64,
    /// The Dataset B name; `None` when the location is not in Dataset B.
    pub location: Option<String>,
    pub camera_oid: i64,
    pub item: String,
    pub detected_ms: i64,
    pub committed_ms: i64,
    pub agent_id: String,
    /// The snapshot's thumbnail, once uploaded.
    pub thumbnail: Option<String>,
}

/// Totals since the store was created, exact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub stored: u64,
    pub dup_transport: u64,
    pub dup_semantic: u64,
    pub rejected: u64,
    pub unmatched: u64,
    /// The core's clock when these were read.
    pub at_ms: i64,
}

/// One message of the live feed (`GET /api/live`, server-sent events): what
/// was committed since the previous tick. Ticks are throttled (at most 20 a
/// second), so a page at 10,000 events/s renders at most that often, while
/// the totals stay exact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveTick {
    pub totals: Totals,
    /// Events committed since the previous tick (all of them, counted).
    pub committed: u64,
    /// Events per second, when this tick measured it (every half second or so).
    pub per_s: Option<f64>,
    /// The newest of those events, newest first (at most a page).
    pub events: Vec<EventRow>,
}

/// Top items of one location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationTop {
    pub location_oid: i64,
    pub location: Option<String>,
    pub total: u64,
    /// Most frequent first.
    pub items: Vec<(String, u64)>,
}

/// The answer to "top X items per location" over `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopItems {
    pub from_ms: i64,
    pub to_ms: i64,
    pub x: u32,
    pub locations: Vec<LocationTop>,
}

/// Events per minute over a range, one series per item or location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub from_ms: i64,
    pub bucket_ms: i64,
    pub buckets: usize,
    /// Largest first; the rest folded into "other".
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub total: u64,
    pub counts: Vec<u64>,
}

/// A search: tantivy query syntax plus filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchQuery {
    pub query: String,
    pub location_oid: Option<i64>,
    pub camera_oid: Option<i64>,
    pub item: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub page_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    pub events: Vec<EventRow>,
    pub total_hits: u64,
    pub next_page_token: String,
}

/// Everything the event page shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    pub row: EventRow,
    pub seq: u64,
    pub accepted_ms: i64,
    pub confidence: f32,
    /// Dataset B's other columns for this location.
    pub location_columns: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
    pub snapshot: Option<String>,
    pub clip: Option<String>,
    /// Kinds announced by the agent but not attached yet ("still uploading").
    pub pending: Vec<String>,
    /// The viewer may see footage (investigator or admin).
    pub footage_allowed: bool,
    /// Other events on the same camera around that moment.
    pub nearby: Vec<EventRow>,
}

/// The cluster as the Fleet page shows it (cluster mode only): what
/// `sightline-core cluster status` prints, as the node asked last saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterTable {
    /// The node that answered.
    pub node_id: String,
    pub nodes: Vec<ClusterNodeRow>,
    pub partitions: Vec<ClusterPartitionRow>,
    /// Nodes whose own report could not be read (their partitions are shown
    /// without sequences), with why.
    pub unreachable: Vec<String>,
    /// When this was gathered.
    pub at_ms: i64,
}

/// A core node of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNodeRow {
    pub node_id: String,
    pub grpc: String,
    pub http: String,
    /// Partitions it owns.
    pub partitions: u32,
}

/// A partition: its owner, how far it has applied its stream, how far
/// behind it is, its newest checkpoint's age, and the acknowledged seqs its
/// owners named lost (summed over the nodes that answered, each since it
/// started).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterPartitionRow {
    pub partition: u32,
    pub owner: Option<String>,
    pub applied_seq: Option<u64>,
    pub lag: Option<u64>,
    pub checkpoint_age_s: Option<f64>,
    #[serde(default)]
    pub lost_seqs: Option<u64>,
}

/// An agent as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    pub agent_id: String,
    pub connected: bool,
    pub last_seen_ms: i64,
    pub acked_seq: u64,
    pub buffer_depth: u64,
    pub lag: u64,
    pub duplicates_transport: u64,
    pub duplicates_semantic: u64,
    pub rejected: u64,
    pub version: String,
    pub peer: String,
    pub cameras: Vec<CameraRow>,
    /// The link as the core sees it: "quic mtls", "grpc mtls", "grpc PLAINTEXT".
    pub link: String,
    /// As the agent describes it, e.g. a fallback from QUIC and why.
    pub agent_transport: String,
    /// Events refused for cameras or locations not registered to the agent.
    pub denied: u64,
    pub last_denied: String,
    pub revoked: bool,
    /// The last session refusal (certificate, identity, revocation).
    pub last_refusal: String,
    /// New epochs the agent started (a restored buffer or core), and why
    /// the last one.
    pub epochs_started: u64,
    pub last_new_epoch: String,
    /// Why the agent's buffer disk refuses writes ("" when it takes them).
    pub buffer_disk_fault: String,
    /// When the agent accepted the oldest event it still holds (epoch ms; 0:
    /// none): the age of its backlog.
    pub oldest_held_ms: i64,
}

/// A camera of an agent: seen in its events, and/or reported by the agent
/// with its capture.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CameraRow {
    pub camera_oid: i64,
    pub events: u64,
    pub last_event_ms: i64,
    /// Capture as the agent reports it: `off | snapshot | clip`, empty when
    /// the agent has no capture for this camera.
    pub mode: String,
    /// `off | connecting | streaming | reconnecting`.
    pub state: String,
    /// Why it is reconnecting.
    pub detail: String,
    pub last_frame_ms: i64,
    pub snapshots: u64,
    pub clips: u64,
    /// Over the last 24 h: "complete", or "N missing · M pending" (empty:
    /// nothing numbered yet; see the core's `completeness`).
    pub completeness: String,
    /// One line per hole: the missing camera_seq range, when, and why.
    pub gaps: Vec<String>,
}

/// An event refused at the core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRow {
    pub at_ms: i64,
    pub agent_id: String,
    pub seq: u64,
    pub field: String,
    pub reason: String,
    /// A short rendering of what was received.
    pub received: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuarantinePage {
    pub rows: Vec<QuarantineRow>,
    pub total: u64,
    pub next_page_token: String,
    /// Stored events whose location is not in Dataset B (newest first).
    pub unmatched: Vec<EventRow>,
}

/// Who is logged in, for the header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// `user:alice`, `token:ci`, `admin-token`.
    pub actor: String,
    /// viewer, investigator or admin.
    pub role: String,
    pub admin: bool,
    /// "all locations" or "locations 1,2".
    pub scope: String,
    /// The session's CSRF token (forms that change state carry it).
    pub csrf: String,
}

/// The audit page's filters as the form sends them (all text; parsed and
/// checked by [`crate::api::get_audit`], which names the field it refuses).
/// Fields left out read as empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditQuery {
    /// `user:alice`, `alice` (a user), `token:ci`, `admin-token`, `anonymous`, `system`.
    pub actor: String,
    /// An action's stored name, e.g. `login_succeeded`.
    pub action: String,
    pub camera: String,
    pub location: String,
    /// Epoch ms or a UTC date-time, inclusive.
    pub from: String,
    /// Epoch ms or a UTC date-time, exclusive.
    pub to: String,
    /// Records older than this seq (the "older" link).
    pub before: String,
    /// Records newer than this seq (the "newer" link).
    pub after: String,
    /// Records on a page (empty: the core's default).
    pub limit: String,
}

/// [`AuditQuery`] checked: what the core is asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub camera: Option<i64>,
    pub location: Option<i64>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

/// One audit record as a row of the admin page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub seq: u64,
    pub time_ms: i64,
    pub actor: String,
    pub source: Option<String>,
    pub action: String,
    pub det_oid: Option<i64>,
    pub camera: Option<i64>,
    pub location: Option<i64>,
    /// A footage object's key.
    pub object: Option<String>,
    /// The record's `detail`, as compact JSON ("" when empty).
    pub detail: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
}

/// One page of the audit log, newest first, with the cursors of the pages
/// beside it (seqs, so a page stays the same while records are appended).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub rows: Vec<AuditRow>,
    /// `before` of the next older page; `None`: no older records.
    pub older_before: Option<u64>,
    /// `after` of the next newer page; `None`: this is the newest page.
    pub newer_after: Option<u64>,
}
