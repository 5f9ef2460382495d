//! The core's Prometheus metrics (`GET /metrics`, text format).
//!
//! Besides counters of what happens, the metrics follow each event along its
//! path ([`hop`]: detector → agent stamp → agent buffer durable → core commit
//! → live push / searchable) and say how far behind each consumer of the
//! commits is (`*_lag_seconds`). Gauges read from elsewhere (disk space, lag)
//! are refreshed at each scrape by the closures given to [`Metrics::on_scrape`].

use std::sync::{atomic::AtomicU64, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Cluster mode: one partition.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: String,
}

/// Cluster mode: a partition and the node that owns it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabel {
    pub partition: String,
    pub node: String,
}

/// Cluster mode: a live node and its addresses.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
    pub grpc: String,
    pub http: String,
}

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopLabel {
    /// One of the [`hop`] names.
    pub hop: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CfLabel {
    /// A column family of the store (`events`, `det`, …).
    pub cf: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabel {
    /// "edge_ca" (`ca.pem` of `edge.tls_dir`) or "edge_core" (`core.pem`).
    pub cert: &'static str,
}

/// The hops of an event's path, the `hop` label of `sightline_event_hop_seconds`.
/// Times from two clocks (the camera host's, the core's) are compared as
/// they are: a negative difference (clock skew) is observed as 0.
pub mod hop {
    /// `timestamp_detected` (detector) → `accepted_ms` (the agent stamped and
    /// took it). Observed for each event of an in-order batch when its commit
    /// is acknowledged.
    pub const DETECTED_TO_STAMPED: &str = "detected_to_stamped";
    /// `accepted_ms` → durable in the agent's buffer (`Batch.durable_after_ms`;
    /// not observed when the agent does not send it).
    pub const STAMPED_TO_DURABLE: &str = "stamped_to_durable";
    /// Durable in the agent's buffer → the core's commit acknowledged (a
    /// backlog's events show how long they waited).
    pub const DURABLE_TO_COMMITTED: &str = "durable_to_committed";
    /// `accepted_ms` → the core's session read the event off the live lane
    /// (PROTOCOL.md rule 6b: sent ahead of a backlog). With the agent's
    /// `sightline_edge_live_lane_wait_seconds` (accepted → sent), it says
    /// whether a live event waited at the agent or on the way.
    pub const STAMPED_TO_LIVE_RECEIVED: &str = "stamped_to_live_received";
    /// The core's commit → handed to the live subscribers (observed while
    /// anyone subscribes).
    pub const COMMITTED_TO_LIVE: &str = "committed_to_live";
    /// The core's commit → searchable (the search index committed it).
    pub const COMMITTED_TO_SEARCHABLE: &str = "committed_to_searchable";
    pub const ALL: [&str; 6] = [
        DETECTED_TO_STAMPED,
        STAMPED_TO_DURABLE,
        DURABLE_TO_COMMITTED,
        STAMPED_TO_LIVE_RECEIVED,
        COMMITTED_TO_LIVE,
        COMMITTED_TO_SEARCHABLE,
    ];
}

/// Upper bounds (s) of the hop histograms: from a millisecond in process to
/// an hour of backlog after an outage.
pub const HOP_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

type HopFamily = Family<HopLabel, Histogram, fn() -> Histogram>;
type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    /// video_camera_oid: only cameras events were received from, which the
    /// agent registry bounds.
    pub camera: String,
}

/// Every metric the core exports.
pub struct Metrics {
    registry: Registry,
    /// Latency of each hop of an event's path, by [`hop`].
    pub hop_seconds: HopFamily,
    /// How long a share waited in its partition writer's queue, by lane.
    pub writer_queue_seconds: LaneFamily,
    /// How long a session's reader was held up, by [`reader_held`].
    pub reader_held_seconds: HeldFamily,
    /// Seconds the slowest live subscriber is behind the newest commit.
    pub live_feed_lag: Gauge<f64, AtomicU64>,
    /// Events the live hub holds for subscribers that have not read them
    /// (at most `live.buffer_events`).
    pub live_held_events: Gauge,
    /// Seconds the search index is behind the commits.
    pub search_index_lag: Gauge<f64, AtomicU64>,
    /// Seconds the continuous export is behind the commits. Registered here
    /// (0) for the dashboards and alerts; the export sets it (issue 14).
    pub export_lag: Gauge<f64, AtomicU64>,
    /// When each edge certificate expires (Unix seconds).
    pub cert_expiry: Family<CertLabel, Gauge>,
    /// Free and total bytes of the file system holding `storage.path`.
    pub disk_free_bytes: Gauge,
    pub disk_total_bytes: Gauge,
    refreshers: Mutex<Vec<Refresher>>,
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
    /// Detections of the camera missing for good (see `completeness`).
    pub completeness_missing: Family<CameraLabel, Gauge>,
    /// Holes of the camera (runs of missing detections).
    pub completeness_gaps: Family<CameraLabel, Gauge>,
    /// The continuous Parquet export (see `export::follow`).
    pub export_hours: Counter,
    pub export_rows: Counter,
    pub export_failures: Counter,
    pub export_pending: Gauge,
    /// Cluster mode ([`crate::cluster::status`]); empty on a single node.
    pub cluster: ClusterGauges,
    /// RocksDB's own state (refreshed at each scrape) and its writes.
    pub store: StoreGauges,
}

/// A partition writer's queue: the live lane's or the backlog's.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    /// "live" or "backlog".
    pub lane: &'static str,
}

type LaneFamily = Family<LaneLabel, Histogram, fn() -> Histogram>;

/// What held a session's reader up (see [`reader_held`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabel {
    /// One of [`reader_held`]'s names.
    pub by: &'static str,
}

type HeldFamily = Family<HeldLabel, Histogram, fn() -> Histogram>;

/// Why a session's reader was not reading its transport, the `by` label of
/// `sightline_session_reader_held_seconds`: while it is held, the messages
/// behind (a live-lane batch among them) wait on the link.
pub mod reader_held {
    /// A live-lane batch waited for room in a writer's live queue.
    pub const LIVE_QUEUE: &str = "live_queue";
    /// A batch waited for the session's read-ahead budget (`ingest.read_ahead_bytes`).
    pub const READ_AHEAD: &str = "read_ahead";
    /// A message waited for room in the session loop's queue.
    pub const SESSION_LOOP: &str = "session_loop";
    pub const ALL: [&str; 3] = [LIVE_QUEUE, READ_AHEAD, SESSION_LOOP];
}

/// The store's engine (see `store::engine`).
#[derive(Clone)]
pub struct StoreGauges {
    /// A commit group's write alone (WAL and memtables, not fsync'd).
    pub write_seconds: Histogram,
    /// One fsync of the WAL, for every group written before it.
    pub wal_sync_seconds: Histogram,
    /// One fold of the commits' pending aggregate entries (off the writers).
    pub fold_seconds: Histogram,
    /// One ingest of the det_oids held in memory into `det` (off the
    /// writers).
    pub det_ingest_seconds: Histogram,
    pub det_buffer_entries: Gauge,
    pub write_stopped: Gauge,
    pub disk_fault: Gauge,
    pub delayed_write_rate: Gauge,
    pub stall_seconds: Counter<f64, AtomicU64>,
    pub l0_files: Gauge,
    pub pending_compaction_bytes: Gauge,
    pub immutable_memtables: Gauge,
    pub memtable_bytes: Gauge,
    pub running_compactions: Gauge,
    pub running_flushes: Gauge,
    /// Per column family: bytes its flushes and compactions wrote.
    pub table_written_bytes: Family<CfLabel, Counter>,
    /// Per column family: CPU seconds its flushes and compactions took.
    pub table_cpu_seconds: Family<CfLabel, Counter<f64, AtomicU64>>,
}

impl StoreGauges {
    fn register(r: &mut Registry) -> Self {
        let buckets = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
        ];
        let g = Self {
            write_seconds: Histogram::new(buckets),
            wal_sync_seconds: Histogram::new(buckets),
            fold_seconds: Histogram::new(buckets),
            det_ingest_seconds: Histogram::new(buckets),
            det_buffer_entries: Gauge::default(),
            write_stopped: Gauge::default(),
            disk_fault: Gauge::default(),
            delayed_write_rate: Gauge::default(),
            stall_seconds: Counter::default(),
            l0_files: Gauge::default(),
            pending_compaction_bytes: Gauge::default(),
            immutable_memtables: Gauge::default(),
            memtable_bytes: Gauge::default(),
            running_compactions: Gauge::default(),
            running_flushes: Gauge::default(),
            table_written_bytes: Family::default(),
            table_cpu_seconds: Family::default(),
        };
        r.register(
            "store_write_seconds",
            "Time of a commit group's write to the store alone (WAL and memtables, before its fsync; write stalls included)",
            g.write_seconds.clone(),
        );
        r.register(
            "store_wal_sync_seconds",
            "Time of one fsync of the store's WAL, which makes every group written before it durable",
            g.wal_sync_seconds.clone(),
        );
        r.register(
            "store_fold_seconds",
            "Time of one fold of the commits' pending aggregate entries into the top-X aggregates and the cameras' received values (on a thread of its own, not in a commit)",
            g.fold_seconds.clone(),
        );
        r.register(
            "store_det_ingest_seconds",
            "Time of one ingest of the det_oids held in memory into the det_oid index, as one sorted table file (on the same thread as the folds, not in a commit)",
            g.det_ingest_seconds.clone(),
        );
        r.register(
            "store_det_buffer_entries",
            "det_oids held in memory (and in the det log) until their ingest into the det_oid index",
            g.det_buffer_entries.clone(),
        );
        r.register(
            "store_write_stopped",
            "1 while RocksDB stops writes (too many L0 files, memtables or pending compaction)",
            g.write_stopped.clone(),
        );
        r.register(
            "store_disk_fault",
            "1 while the store's disk refuses writes (full or failing): nothing is acknowledged until the store reopens, which it tries once a second",
            g.disk_fault.clone(),
        );
        r.register(
            "store_delayed_write_rate_bytes",
            "The rate RocksDB slows writes to (bytes/s); 0 when it does not",
            g.delayed_write_rate.clone(),
        );
        r.register(
            "store_write_stall_seconds",
            "Seconds writes waited for a RocksDB slowdown or stop",
            g.stall_seconds.clone(),
        );
        r.register(
            "store_l0_files",
            "The most L0 files of any column family (writes slow at 20, stop at 36)",
            g.l0_files.clone(),
        );
        r.register(
            "store_pending_compaction_bytes",
            "Bytes RocksDB estimates compaction must rewrite, over all column families",
            g.pending_compaction_bytes.clone(),
        );
        r.register(
            "store_immutable_memtables",
            "Full memtables waiting for a flush, over all column families",
            g.immutable_memtables.clone(),
        );
        r.register(
            "store_memtable_bytes",
            "Bytes in all memtables",
            g.memtable_bytes.clone(),
        );
        r.register(
            "store_running_compactions",
            "Compactions running",
            g.running_compactions.clone(),
        );
        r.register(
            "store_running_flushes",
            "Memtable flushes running",
            g.running_flushes.clone(),
        );
        r.register(
            "store_table_written_bytes",
            "Bytes a column family's memtable flushes and compactions wrote to tables (RocksDB's count, to 0.01 GB)",
            g.table_written_bytes.clone(),
        );
        r.register(
            "store_table_cpu_seconds",
            "CPU seconds a column family's memtable flushes and compactions took",
            g.table_cpu_seconds.clone(),
        );
        g
    }
}

/// The cluster as the node sees it (refreshed by
/// [`crate::cluster::status::spawn`]).
#[derive(Clone, Default)]
pub struct ClusterGauges {
    pub nodes: Family<NodeLabel, Gauge>,
    pub owner: Family<OwnerLabel, Gauge>,
    pub applied_seq: Family<PartitionLabel, Gauge>,
    pub in_last_seq: Family<PartitionLabel, Gauge>,
    pub lag: Family<PartitionLabel, Gauge>,
    pub checkpoint_age: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    /// Seqs acknowledged to an agent whose share the IN stream lost
    /// (`owner::lost_before`), by partition.
    pub lost_seqs: Family<PartitionLabel, Counter>,
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
        // Both levels from the start (at 0), so a dashboard's rate has data.
        for level in ["transport", "semantic"] {
            let _ = duplicates.get_or_create(&LevelLabel { level });
        }
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
        let hop_seconds: HopFamily = Family::new_with_constructor(|| Histogram::new(HOP_BUCKETS));
        for h in hop::ALL {
            let _ = hop_seconds.get_or_create(&HopLabel { hop: h });
        }
        r.register(
            "event_hop_seconds",
            "Latency of each hop of an event's path (detected_to_stamped, stamped_to_durable, durable_to_committed, stamped_to_live_received, committed_to_live, committed_to_searchable)",
            hop_seconds.clone(),
        );
        let writer_queue_seconds: LaneFamily =
            Family::new_with_constructor(|| Histogram::new(HOP_BUCKETS));
        for lane in ["live", "backlog"] {
            let _ = writer_queue_seconds.get_or_create(&LaneLabel { lane });
        }
        r.register(
            "writer_queue_seconds",
            "How long a share of a batch waited in its partition writer's queue (from the session handing it over to the writer taking it), by lane",
            writer_queue_seconds.clone(),
        );
        let reader_held_seconds: HeldFamily =
            Family::new_with_constructor(|| Histogram::new(HOP_BUCKETS));
        for by in reader_held::ALL {
            let _ = reader_held_seconds.get_or_create(&HeldLabel { by });
        }
        r.register(
            "session_reader_held_seconds",
            "How long an agent session's reader was held up before reading on, by what held it (live_queue, read_ahead, session_loop): the messages behind it, live-lane batches among them, waited meanwhile",
            reader_held_seconds.clone(),
        );
        let live_feed_lag = Gauge::<f64, AtomicU64>::default();
        r.register(
            "live_feed_lag_seconds",
            "Age of the oldest commit a live subscriber (dashboard feed, Subscribe stream, search forwarder) has not taken yet (0: all caught up)",
            live_feed_lag.clone(),
        );
        let live_held_events = Gauge::default();
        r.register(
            "live_held_events",
            "Events the live hub holds for subscribers that have not read them yet (at most live.buffer_events; a subscriber further behind is cut off)",
            live_held_events.clone(),
        );
        let search_index_lag = Gauge::<f64, AtomicU64>::default();
        r.register(
            "search_index_lag_seconds",
            "Age of the oldest commit the search indexer took and has not made searchable yet (0: caught up)",
            search_index_lag.clone(),
        );
        let export_lag = Gauge::<f64, AtomicU64>::default();
        r.register(
            "export_lag_seconds",
            "Age of the oldest closed hour the continuous Parquet export has not written yet (0: caught up or no export)",
            export_lag.clone(),
        );
        let cert_expiry = Family::<CertLabel, Gauge>::default();
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When each edge certificate expires (Unix seconds)",
            cert_expiry.clone(),
        );
        let disk_free_bytes = Gauge::default();
        r.register(
            "disk_free_bytes",
            "Bytes free (to the core's user) on the file system of storage.path",
            disk_free_bytes.clone(),
        );
        let disk_total_bytes = Gauge::default();
        r.register(
            "disk_total_bytes",
            "Size of the file system of storage.path",
            disk_total_bytes.clone(),
        );
        let completeness_missing = Family::<CameraLabel, Gauge>::default();
        r.register(
            "completeness_missing_total",
            "Detections missing for good, per camera: camera_seq values never received that the agent settled (acknowledged, refused or dropped); pending ones are not counted",
            completeness_missing.clone(),
        );
        let completeness_gaps = Family::<CameraLabel, Gauge>::default();
        r.register(
            "completeness_gaps",
            "Runs of missing detections, per camera",
            completeness_gaps.clone(),
        );
        let (export_hours, export_rows, export_failures): (Counter, Counter, Counter) =
            Default::default();
        let export_pending = Gauge::default();
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
            "export_hours_pending",
            "Hours waiting to be written by the Parquet export",
            Clone::clone(&export_pending),
        );
        let cluster = ClusterGauges::default();
        r.register(
            "cluster_node",
            "Cluster mode: each live node (1), with its addresses",
            cluster.nodes.clone(),
        );
        r.register(
            "cluster_partition_owner",
            "Cluster mode: 1 for each partition and the node that owns it",
            cluster.owner.clone(),
        );
        r.register(
            "cluster_partition_applied_seq",
            "Cluster mode: the IN stream sequence each partition held here has applied through",
            cluster.applied_seq.clone(),
        );
        r.register(
            "cluster_partition_in_last_seq",
            "Cluster mode: the IN stream's last sequence for each partition held here",
            cluster.in_last_seq.clone(),
        );
        r.register(
            "cluster_partition_lag",
            "Cluster mode: shares in the IN stream a partition held here has not applied yet",
            cluster.lag.clone(),
        );
        r.register(
            "cluster_partition_checkpoint_age_seconds",
            "Cluster mode: age of the newest checkpoint of each partition held here",
            cluster.checkpoint_age.clone(),
        );
        r.register(
            "cluster_lost_seqs",
            "Cluster mode: seqs acknowledged to an agent that the IN stream lost before the partition applied them (each logged as an ERROR naming the agent and seqs)",
            cluster.lost_seqs.clone(),
        );
        let store = StoreGauges::register(&mut r);
        Self {
            cluster,
            store,
            registry: r,
            hop_seconds,
            writer_queue_seconds,
            reader_held_seconds,
            live_feed_lag,
            live_held_events,
            search_index_lag,
            export_lag,
            cert_expiry,
            disk_free_bytes,
            disk_total_bytes,
            refreshers: Mutex::new(Vec::new()),
            completeness_missing,
            completeness_gaps,
            export_hours,
            export_rows,
            export_failures,
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

    /// The text exposition (after running the [`Metrics::on_scrape`] closures).
    pub fn encode(&self) -> String {
        for f in self.refreshers.lock().unwrap().iter() {
            f(self);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Runs `f` before each scrape, to refresh gauges read from elsewhere.
    /// It must be quick: it runs on the scraping request.
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.refreshers.lock().unwrap().push(Box::new(f));
    }

    /// The histogram of one [`hop`].
    pub fn hop(&self, hop: &'static str) -> Histogram {
        self.hop_seconds.get_or_create(&HopLabel { hop }).clone()
    }

    /// The histogram of what held a session's reader, by [`reader_held`].
    pub fn reader_held(&self, by: &'static str) -> Histogram {
        self.reader_held_seconds
            .get_or_create(&HeldLabel { by })
            .clone()
    }

    /// The writer-queue histogram of the live lane or the backlog.
    pub fn writer_queue(&self, live: bool) -> Histogram {
        self.writer_queue_seconds
            .get_or_create(&LaneLabel {
                lane: if live { "live" } else { "backlog" },
            })
            .clone()
    }

    /// Observes a hop of `ms` milliseconds (a negative one, clock skew, as 0).
    pub fn observe_hop_ms(h: &Histogram, ms: i64) {
        h.observe(ms.max(0) as f64 / 1000.0);
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
