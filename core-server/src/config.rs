//! Core configuration: a TOML file (see `deploy/core.example.toml`), every
//! field documented and defaulted, overridable from the command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytesize::ByteSize;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub locations: LocationsConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub live: LiveConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub dashboard: DashboardConfig,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub edge: EdgeConfig,
    #[serde(default)]
    pub connections: ConnectionsConfig,
    #[serde(default)]
    pub access: crate::access::AccessConfig,
    /// The audit log (see [`crate::audit`]).
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// The continuous Parquet export (see [`crate::export::follow`]).
    #[serde(default)]
    pub export: crate::export::ExportConfig,
    /// Cluster mode on NATS JetStream (see [`crate::cluster`]); absent: the
    /// embedded single node.
    #[serde(default)]
    pub cluster: crate::cluster::config::ClusterConfig,
}

/// Bounds on the TCP connections of the HTTP, gRPC and edge listeners (see
/// [`crate::api::limits`]). A connection over a cap is accepted and closed at
/// once (HTTP: after a `503`), counted in `sightline_connections_refused`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// HTTP/1: a request's headers must arrive within this; it is also how
    /// long a kept-alive connection waits for its next request. gRPC and
    /// edge: a new connection must send its first bytes within this.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub header_timeout: Duration,
    /// A connection on which no byte moved either way for this long is
    /// closed (gRPC clients answer the core's keepalive pings, so a healthy
    /// idle one stays; a live feed gets a tick every second).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub idle_timeout: Duration,
    /// Most open connections on each listener (HTTP, gRPC, edge). 0: derived
    /// from the open-file limit at start, so that the caps bite before the
    /// store and the search index run out of descriptors (the start log says
    /// what it came to).
    #[serde(default)]
    pub max_per_listener: usize,
    /// Most open connections from one IP address on each listener.
    #[serde(default = "default_conn_per_client")]
    pub max_per_client: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_per_listener: 0,
            max_per_client: default_conn_per_client(),
        }
    }
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_conn_per_client() -> usize {
    256
}

/// The edge link: how agents reach the core (see `edge/mod.rs`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// One port for both transports: gRPC over TLS on TCP and QUIC on UDP.
    /// Port 0 picks one. Served when `tls_dir` is set.
    #[serde(default = "default_edge")]
    pub listen: SocketAddr,
    /// The folder `sightline-core certs` wrote: `ca.pem` (the CA agents'
    /// certificates must chain to), `core.pem` and `core.key` (this core).
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// Also serve Ingest and Media without client certificates on
    /// `server.grpc_listen`, where an agent is whoever it claims to be. For
    /// local demos only: refused unless `server.grpc_listen` is a loopback
    /// address; the log and the fleet view say so for every such session.
    /// `--edge-plaintext` sets it.
    #[serde(default)]
    pub plaintext: bool,
    /// The agent registry (TOML, see `deploy/agents.example.toml`): the
    /// cameras and locations each agent may publish for, and revocations. The
    /// admin API (`sightline-core grant`) writes it back. Unset:
    /// `<storage.path>/agents.toml`, created empty on the first start, so a
    /// new agent is refused until an admin grants it.
    #[serde(default)]
    pub registry: Option<PathBuf>,
    /// `false`: no registry at all, every agent may publish for every camera
    /// (the open mode, for demos; the log says so loudly at start).
    /// `--no-registry` sets it.
    #[serde(default = "default_true")]
    pub registry_enforced: bool,
    /// QUIC congestion control for what the core sends: "edge" (default;
    /// delay-based, indifferent to random loss, see
    /// `sightline_proto::congestion`), "cubic" or "bbr" (quinn's, experimental).
    #[serde(default = "default_congestion")]
    pub quic_congestion: String,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: default_edge(),
            tls_dir: None,
            plaintext: false,
            registry: None,
            registry_enforced: true,
            quic_congestion: default_congestion(),
        }
    }
}

fn default_edge() -> SocketAddr {
    "0.0.0.0:50443".parse().unwrap()
}
fn default_congestion() -> String {
    "edge".into()
}

/// The full-text index of the events (tantivy), see [`crate::search`].
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// The index directory. Unset: `<storage.path>-search`. Deleting it is
    /// safe: it is rebuilt from the store.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How often new events are made searchable.
    #[serde(default = "default_search_commit", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub commit_interval: Duration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            path: None,
            commit_interval: default_search_commit(),
        }
    }
}

fn default_search_commit() -> Duration {
    Duration::from_millis(500)
}

/// The web dashboard, served on `server.http_listen`.
#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// The folder `deploy/build-web.sh` built the browser's half into (it
    /// holds `pkg/sightline_web.js` and `pkg/sightline_web_bg.wasm`).
    /// Default: `site` beside the folder of the `sightline-core` binary
    /// (`target/site` for `target/release/sightline-core`). Without it the
    /// pages still render, but do not update by themselves.
    #[serde(default)]
    pub site_root: Option<PathBuf>,
}

impl DashboardConfig {
    /// `site_root`, or its default.
    pub fn site_root(&self) -> PathBuf {
        self.site_root.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("site")))
                .unwrap_or_else(|| PathBuf::from("target/site"))
        })
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// gRPC: ingest (agents), query and admin (integrators). Port 0 picks one.
    #[serde(default = "default_grpc")]
    pub grpc_listen: SocketAddr,
    /// HTTP: /metrics, /healthz, admin.
    #[serde(default = "default_http")]
    pub http_listen: SocketAddr,
    /// The bearer token `sightline.v1.Admin` and `POST /admin/…` require
    /// (made on the first start when missing). Default: `admin.token` in
    /// `storage.path`.
    #[serde(default)]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// The certificate (PEM, chain with the server's first) the HTTP
    /// (dashboard) and query gRPC ports serve over TLS: one from the site CA
    /// (`sightline-core certs core --san HOST`, `core.pem`) or one the
    /// operator brings. Set with `tls_key`, or neither.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert` (`core.key` from `certs core`).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTP and query gRPC without TLS on an address that is not
    /// loopback. Off, the core refuses to start so; on, it says so in the
    /// log at start and in the dashboard's footer.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// How long a shutdown (SIGTERM, SIGINT) may take: listeners stop,
    /// sessions close, queued commits finish, background tasks stop and the
    /// store closes within it; what did not finish is logged by name.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub shutdown_grace: Duration,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// RocksDB directory.
    #[serde(default = "default_storage_path")]
    pub path: PathBuf,
    /// fsync every commit before acknowledging it. Off, a power loss can lose
    /// the last acknowledged commits (a process crash still loses nothing).
    /// The partition writers do not wait for the fsync: one thread fsyncs
    /// the WAL for every commit written since its last, then acknowledges
    /// them. The live lane's commits are never waited for: nothing in them
    /// is acknowledged, and their events come again with the backlog.
    /// Cluster mode: acknowledged means in the replicated stream, and the
    /// partition stores are not fsync'd per commit whatever this says (they
    /// replay what they lost from the stream).
    #[serde(default = "default_true")]
    pub sync: bool,
    /// RocksDB block cache: the blocks read, and the tables' index and
    /// filter blocks (kept in it, so that they do not grow with the store).
    #[serde(default = "default_cache")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub cache: ByteSize,
    /// Most memory all RocksDB memtables hold together (writes not yet
    /// flushed to tables); one column family's memtable is at most a quarter
    /// of it. The det_oid index's newest entries are kept apart, in memory
    /// and in their commits' det log entries, and written to the index as
    /// table files of ~230,000 entries per 64 MiB of this; in memory they
    /// take up to a third of it. Smaller: more, smaller flushes.
    #[serde(default = "default_memtable")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub memtable: ByteSize,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Partitions, each with one writer thread; events are spread by a hash
    /// of their det_oid (changing it re-keys the watermarks at the next start).
    #[serde(default = "default_partitions")]
    pub partitions: usize,
    /// Most events one group commit takes. A live event (or the live lane's)
    /// waits for the group being committed when it comes: larger groups
    /// save little per event and cost live latency (a group of 4,096 takes
    /// ~40 ms here). The live lane's events are committed in groups of
    /// their own, and while it is in use (events on it within the last
    /// second) a group takes a sixteenth of this from the backlog.
    #[serde(default = "default_group")]
    pub max_group_events: usize,
    /// Batches queued per partition before sessions are held back: with
    /// agents' batches of up to 2,000 events, the default holds at most
    /// 16 × 2,000 events per partition (~10 MiB) while a backlog drains.
    #[serde(default = "default_queue")]
    pub queue_batches: usize,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest gRPC message accepted (a batch).
    #[serde(default = "default_max_message")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub max_message_bytes: ByteSize,
    /// How far ahead of the core's clock timestamp_detected may be.
    #[serde(default = "default_skew", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub max_future_skew: Duration,
    /// How long a new session may take to say Hello.
    #[serde(default = "default_hello_timeout", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub hello_timeout: Duration,
    /// Batches one session reads ahead (encoded bytes) while its oldest waits
    /// for room in the partition queues, so that a live-lane batch behind
    /// them is taken at once instead of after them (PROTOCOL.md rule 6b).
    /// The default covers an agent's default in-flight window (16,384
    /// events). 0: no read-ahead (a live batch waits its turn).
    #[serde(default = "default_read_ahead")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub read_ahead_bytes: ByteSize,
    /// What all sessions together read ahead, at most (encoded bytes; held
    /// decoded, about twice that in memory). Past it, sessions read a batch
    /// only when the one before it is queued, as without read-ahead.
    #[serde(default = "default_read_ahead_total")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub read_ahead_total_bytes: ByteSize,
}

#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationsConfig {
    /// Dataset B, CSV or Parquet. Unset: every event is "unmatched".
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events (and minute aggregates) older than this are deleted.
    #[serde(default = "default_events_ttl", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub events: Duration,
    /// det_oid keys are kept this long, so a duplicate this late is still caught.
    #[serde(default = "default_dedup_ttl", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub dedup_keys: Duration,
    /// Hour aggregates (top X over long ranges).
    #[serde(default = "default_agg_ttl", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub aggregates: Duration,
    /// Quarantined events (refused by the core, e.g. too far in the future)
    /// are kept this long.
    #[serde(default = "default_quarantine_ttl", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub quarantine: Duration,
    /// How often retention runs.
    #[serde(default = "default_retention_interval", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// Events a live subscriber may fall behind before it is cut off (at
    /// least 256): the hub holds the events its slowest subscriber has not
    /// read, up to this many (~7 MiB at the default, at ~230 bytes an event,
    /// which carries no Dataset B row).
    #[serde(default = "default_live_buffer")]
    pub buffer_events: usize,
    /// Replaced by `buffer_events`: it counted messages, which a burst of
    /// small commits made few events (a subscriber keeping up on average was
    /// cut off). A config that sets it is refused, naming the new key.
    #[serde(default)]
    #[schemars(skip)]
    pub buffer_commits: Option<usize>,
    /// Most open `Subscribe` streams (gRPC); one more is refused with
    /// `RESOURCE_EXHAUSTED` naming this key.
    #[serde(default = "default_max_subscribers")]
    pub max_subscribers: usize,
    /// Most open `Subscribe` streams from one IP address.
    #[serde(default = "default_max_subscribers_per_client")]
    pub max_subscribers_per_client: usize,
    /// Most stored events one `Subscribe` with `from_ms` replays before it
    /// ends with `OUT_OF_RANGE` saying where to resume.
    #[serde(default = "default_replay_limit")]
    pub replay_limit: usize,
    /// Most open dashboard live feeds (`GET /api/live`); one more gets `503`.
    #[serde(default = "default_max_feeds")]
    pub max_feeds: usize,
    /// Most open dashboard live feeds from one IP address.
    #[serde(default = "default_max_feeds_per_client")]
    pub max_feeds_per_client: usize,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Where footage is stored, as an object store URL: `file:///abs/path`
    /// or `s3://bucket` (S3 or any S3-compatible server, see `options`).
    /// Unset: the directory `<storage.path>-media`.
    #[serde(default)]
    pub url: Option<String>,
    /// Settings of the object store named by `url`, by object_store's key
    /// names, e.g. for S3: `endpoint`, `region`, `access_key_id`,
    /// `secret_access_key`, `allow_http`. Values may also come from the
    /// usual `AWS_*` environment variables.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// Where partial uploads are held until their last chunk (must be a local
    /// directory). Unset: `<storage.path>-media-staging`.
    #[serde(default)]
    pub staging_path: Option<PathBuf>,
    /// Largest object an agent may upload (`total_size`).
    #[serde(default = "default_max_object")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub max_object_bytes: ByteSize,
    /// Objects are deleted this long after they were stored (independent of
    /// `retention.events`). Checked every `retention.interval`.
    #[serde(default = "default_media_ttl", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub retention: Duration,
}

fn default_grpc() -> SocketAddr {
    "127.0.0.1:50051".parse().unwrap()
}
fn default_http() -> SocketAddr {
    "127.0.0.1:8080".parse().unwrap()
}
fn default_storage_path() -> PathBuf {
    "data/core".into()
}
fn default_true() -> bool {
    true
}
fn default_cache() -> ByteSize {
    ByteSize::mib(32)
}
fn default_memtable() -> ByteSize {
    ByteSize::mib(64)
}
fn default_partitions() -> usize {
    2
}
fn default_group() -> usize {
    4_096
}
fn default_queue() -> usize {
    16
}
fn default_max_message() -> ByteSize {
    ByteSize::mib(8)
}
fn default_skew() -> Duration {
    Duration::from_secs(300)
}
fn default_hello_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_read_ahead() -> ByteSize {
    ByteSize::mib(4)
}
fn default_read_ahead_total() -> ByteSize {
    ByteSize::mib(64)
}
fn default_events_ttl() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_dedup_ttl() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_agg_ttl() -> Duration {
    Duration::from_secs(400 * 86_400)
}
fn default_quarantine_ttl() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_retention_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_object() -> ByteSize {
    ByteSize::mib(256)
}
fn default_media_ttl() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_live_buffer() -> usize {
    32_768
}
fn default_max_subscribers() -> usize {
    256
}
fn default_max_subscribers_per_client() -> usize {
    32
}
fn default_replay_limit() -> usize {
    1_000_000
}
fn default_max_feeds() -> usize {
    256
}
fn default_max_feeds_per_client() -> usize {
    16
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: default_grpc(),
            http_listen: default_http(),
            admin_token_file: None,
            tls_cert: None,
            tls_key: None,
            insecure_plaintext: false,
            shutdown_grace: default_shutdown_grace(),
        }
    }
}
impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: default_storage_path(),
            sync: true,
            cache: default_cache(),
            memtable: default_memtable(),
        }
    }
}
impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            max_group_events: default_group(),
            queue_batches: default_queue(),
        }
    }
}
impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message(),
            max_future_skew: default_skew(),
            hello_timeout: default_hello_timeout(),
            read_ahead_bytes: default_read_ahead(),
            read_ahead_total_bytes: default_read_ahead_total(),
        }
    }
}
impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            events: default_events_ttl(),
            dedup_keys: default_dedup_ttl(),
            aggregates: default_agg_ttl(),
            quarantine: default_quarantine_ttl(),
            interval: default_retention_interval(),
        }
    }
}
impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            buffer_events: default_live_buffer(),
            buffer_commits: None,
            max_subscribers: default_max_subscribers(),
            max_subscribers_per_client: default_max_subscribers_per_client(),
            replay_limit: default_replay_limit(),
            max_feeds: default_max_feeds(),
            max_feeds_per_client: default_max_feeds_per_client(),
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            url: None,
            options: Default::default(),
            staging_path: None,
            max_object_bytes: default_max_object(),
            retention: default_media_ttl(),
        }
    }
}

impl MediaConfig {
    /// The object store root as a local directory, when it is one:
    /// `url` = `file:///abs/path`, or unset (`<storage_path>-media`).
    /// `None` for any other scheme.
    pub fn local_root(&self, storage_path: &std::path::Path) -> Option<PathBuf> {
        match &self.url {
            None => Some(suffixed(storage_path, "-media")),
            Some(u) => url::Url::parse(u)
                .ok()
                .filter(|u| u.scheme() == "file")
                .and_then(|u| u.to_file_path().ok()),
        }
    }

    /// Where partial uploads are held.
    pub fn staging_dir(&self, storage_path: &std::path::Path) -> PathBuf {
        self.staging_path
            .clone()
            .unwrap_or_else(|| suffixed(storage_path, "-media-staging"))
    }
}

/// `data/core` + `-media` = `data/core-media` (a sibling, not a child, of the
/// RocksDB directory).
fn suffixed(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    s.into()
}

/// Smallest `storage.cache`: room for the index and filter blocks of the
/// tables being read.
const MIN_STORE_CACHE: u64 = 1024 * 1024;
/// Smallest `storage.memtable` (a column family's memtable is a quarter: 2 MiB).
const MIN_STORE_MEMTABLE: u64 = 8 * 1024 * 1024;

/// A configuration value that cannot work, by its dotted key.
#[derive(Debug, thiserror::Error)]
#[error("config `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl CoreConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if self.server.shutdown_grace.is_zero() {
            return err("server.shutdown_grace", "must be more than 0");
        }
        self.validate_transport()?;
        self.cluster.validate(&self.server)?;
        if let Err((key, reason)) = self.export.validate() {
            return Err(ConfigError { key, reason });
        }
        if self.pipeline.partitions == 0 || self.pipeline.partitions > 64 {
            return err("pipeline.partitions", "must be within 1..=64");
        }
        if self.pipeline.max_group_events == 0 {
            return err("pipeline.max_group_events", "must be at least 1");
        }
        if self.pipeline.queue_batches == 0 {
            return err("pipeline.queue_batches", "must be at least 1");
        }
        if self.storage.cache.as_u64() < MIN_STORE_CACHE {
            return err("storage.cache", "must be at least 1 MiB");
        }
        if self.storage.memtable.as_u64() < MIN_STORE_MEMTABLE {
            return err("storage.memtable", "must be at least 8 MiB");
        }
        if self.ingest.max_message_bytes.as_u64() < 64 * 1024 {
            return err("ingest.max_message_bytes", "must be at least 64 KiB");
        }
        if self.retention.dedup_keys < self.retention.events {
            return err(
                "retention.dedup_keys",
                "must not be shorter than retention.events (a duplicate of a stored event must be caught)",
            );
        }
        if self.retention.interval.is_zero() {
            return err("retention.interval", "must be more than 0");
        }
        if self.live.buffer_commits.is_some() {
            return err(
                "live.buffer_commits",
                &format!(
                    "is replaced by live.buffer_events, which counts events, not messages \
                     (128 messages held at most {} events)",
                    128 * crate::api::live::LIVE_CHUNK_EVENTS
                ),
            );
        }
        if self.live.buffer_events < crate::api::live::LIVE_CHUNK_EVENTS {
            return err(
                "live.buffer_events",
                &format!("must be at least {}", crate::api::live::LIVE_CHUNK_EVENTS),
            );
        }
        self.validate_caps()?;
        self.audit.validate()?;
        if let Some(u) = &self.media.url {
            let parsed = match url::Url::parse(u) {
                Ok(p) => p,
                Err(e) => return err("media.url", &format!("{u:?} is not a URL: {e}")),
            };
            let ok = match parsed.scheme() {
                "file" => parsed.to_file_path().is_ok(),
                "s3" => parsed.host_str().is_some_and(|b| !b.is_empty()),
                _ => false,
            };
            if !ok {
                return err(
                    "media.url",
                    &format!("{u:?}: expected file:///absolute/path or s3://bucket"),
                );
            }
        }
        if self.media.max_object_bytes.as_u64() < 1024 {
            return err("media.max_object_bytes", "must be at least 1 KiB");
        }
        if self.media.retention.is_zero() {
            return err("media.retention", "must be more than 0");
        }
        if self.edge.tls_dir.is_none() && !self.edge.plaintext {
            return err(
                "edge.tls_dir",
                "unset, and edge.plaintext is off: no agent could connect. Make a CA with `sightline-core certs init` and `certs core`, or pass --edge-plaintext for a local demo",
            );
        }
        if let Err(why) = sightline_proto::edge::check_congestion(&self.edge.quic_congestion) {
            return err("edge.quic_congestion", &why);
        }
        self.access.validate()?;
        Ok(())
    }

    /// TLS on the HTTP and query gRPC ports, and the plaintext modes:
    /// plaintext listeners on other than loopback only when told
    /// (`server.insecure_plaintext`), plaintext agents only on loopback.
    fn validate_transport(&self) -> Result<(), ConfigError> {
        let err = |key, reason: String| Err(ConfigError { key, reason });
        let s = &self.server;
        match (&s.tls_cert, &s.tls_key) {
            (Some(_), None) => {
                return err(
                    "server.tls_key",
                    "unset, but server.tls_cert is set: set both or neither".into(),
                )
            }
            (None, Some(_)) => {
                return err(
                    "server.tls_cert",
                    "unset, but server.tls_key is set: set both or neither".into(),
                )
            }
            _ => {}
        }
        if s.tls_cert.is_none() && !s.insecure_plaintext {
            for (key, addr) in [
                ("server.http_listen", s.http_listen),
                ("server.grpc_listen", s.grpc_listen),
            ] {
                if !addr.ip().is_loopback() {
                    return err(
                        key,
                        format!(
                            "{addr} is not a loopback address, and server.tls_cert is unset: \
                             refusing to serve the dashboard and the query API there without TLS. \
                             Issue a certificate with `sightline-core certs core --san HOST` and set \
                             server.tls_cert/server.tls_key (--tls-cert/--tls-key), or, knowingly, \
                             server.insecure_plaintext = true (--insecure-plaintext)"
                        ),
                    );
                }
            }
        }
        if !self.edge.registry_enforced && self.edge.registry.is_some() {
            return err(
                "edge.registry_enforced",
                "false, but edge.registry is set: enforce the registry, or unset it".into(),
            );
        }
        if self.edge.plaintext && !s.grpc_listen.ip().is_loopback() {
            return err(
                "edge.plaintext",
                format!(
                    "refused: server.grpc_listen {} is not a loopback address. Plaintext agents \
                     (identified by what they claim) are for local demos on loopback only; \
                     agents on the network use the edge link with certificates (edge.tls_dir)",
                    s.grpc_listen
                ),
            );
        }
        Ok(())
    }

    /// The agent registry file in force (`edge.registry`, by default
    /// `<storage.path>/agents.toml`), or `None` when not enforced.
    pub fn registry_path(&self) -> Option<PathBuf> {
        self.edge.registry_enforced.then(|| {
            self.edge
                .registry
                .clone()
                .unwrap_or_else(|| self.storage.path.join("agents.toml"))
        })
    }

    /// Whether the HTTP or query gRPC port serves plaintext on other than
    /// loopback (`server.insecure_plaintext`, said in the log and the
    /// dashboard's footer).
    pub fn plaintext_exposed(&self) -> bool {
        let s = &self.server;
        s.tls_cert.is_none()
            && !(s.http_listen.ip().is_loopback() && s.grpc_listen.ip().is_loopback())
    }

    /// The connection, live feed and `Subscribe` caps and timeouts.
    fn validate_caps(&self) -> Result<(), ConfigError> {
        let err = |key, reason: String| Err(ConfigError { key, reason });
        let c = &self.connections;
        if c.header_timeout.is_zero() {
            return err("connections.header_timeout", "must be more than 0".into());
        }
        if c.idle_timeout < c.header_timeout {
            return err(
                "connections.idle_timeout",
                format!(
                    "must not be shorter than connections.header_timeout ({:?})",
                    c.header_timeout
                ),
            );
        }
        if c.max_per_client == 0 {
            return err("connections.max_per_client", "must be at least 1".into());
        }
        if c.max_per_listener != 0 && c.max_per_client > c.max_per_listener {
            return err(
                "connections.max_per_client",
                format!(
                    "{} is more than connections.max_per_listener ({})",
                    c.max_per_client, c.max_per_listener
                ),
            );
        }
        let l = &self.live;
        for (key, total, per_client) in [
            (
                "live.max_subscribers_per_client",
                l.max_subscribers,
                l.max_subscribers_per_client,
            ),
            (
                "live.max_feeds_per_client",
                l.max_feeds,
                l.max_feeds_per_client,
            ),
        ] {
            if per_client == 0 || per_client > total {
                return err(
                    key,
                    format!("{per_client} must be within 1..={total} (the total cap)"),
                );
            }
        }
        if l.replay_limit < 1000 {
            return err("live.replay_limit", "must be at least 1000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_validates() {
        let cfg = CoreConfig::from_toml(include_str!("../../deploy/core.example.toml")).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = CoreConfig::from_toml("[storage]\npaht = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("paht"), "{err}");
    }

    #[test]
    fn media_defaults_sit_beside_the_store() {
        let cfg =
            CoreConfig::from_toml("[storage]\npath = \"/d/core\"\n[edge]\nplaintext = true\n")
                .unwrap();
        cfg.validate().unwrap();
        let root = cfg.media.local_root(&cfg.storage.path);
        assert_eq!(root, Some(PathBuf::from("/d/core-media")));
        assert_eq!(
            cfg.media.staging_dir(&cfg.storage.path),
            PathBuf::from("/d/core-media-staging")
        );
        assert_eq!(cfg.media.max_object_bytes, ByteSize::mib(256));
        assert_eq!(cfg.media.retention, Duration::from_secs(30 * 86_400));
        let cfg =
            CoreConfig::from_toml("[media]\nurl = \"file:///srv/footage\"\nretention = \"3d\"\n[edge]\ntls_dir = \"pki\"\n")
                .unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.media.local_root(&cfg.storage.path),
            Some(PathBuf::from("/srv/footage"))
        );
    }

    #[test]
    fn a_media_url_this_build_cannot_use_is_refused_by_key() {
        let cfg = CoreConfig::from_toml("[media]\nurl = \"gs://bucket\"\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().key, "media.url");
        let err = CoreConfig::from_toml("[media]\nretension = \"1d\"\n").unwrap_err();
        assert!(err.to_string().contains("retension"), "{err}");
    }

    #[test]
    fn an_edge_link_nobody_could_use_is_refused() {
        let err = CoreConfig::default().validate().unwrap_err();
        assert_eq!(err.key, "edge.tls_dir");
        assert!(err.reason.contains("--edge-plaintext"), "{err}");
    }

    #[test]
    fn connection_caps_that_cannot_work_are_refused_by_key() {
        let base = "[edge]\nplaintext = true\n";
        let key = |extra: &str| {
            CoreConfig::from_toml(&format!("{base}{extra}"))
                .unwrap()
                .validate()
                .unwrap_err()
                .key
        };
        assert_eq!(
            key("[connections]\nheader_timeout = \"0s\"\n"),
            "connections.header_timeout"
        );
        assert_eq!(
            key("[connections]\nheader_timeout = \"30s\"\nidle_timeout = \"10s\"\n"),
            "connections.idle_timeout"
        );
        assert_eq!(
            key("[connections]\nmax_per_listener = 10\nmax_per_client = 11\n"),
            "connections.max_per_client"
        );
        assert_eq!(
            key("[live]\nmax_subscribers = 4\nmax_subscribers_per_client = 5\n"),
            "live.max_subscribers_per_client"
        );
        assert_eq!(
            key("[live]\nmax_feeds_per_client = 0\n"),
            "live.max_feeds_per_client"
        );
        assert_eq!(key("[live]\nreplay_limit = 10\n"), "live.replay_limit");
    }

    #[test]
    fn a_non_loopback_listener_without_tls_is_refused_unless_insecure_plaintext() {
        let base = "[edge]\ntls_dir = \"pki\"\n";
        let check = |server: &str| {
            CoreConfig::from_toml(&format!("{base}[server]\n{server}"))
                .unwrap()
                .validate()
        };
        let e = check("http_listen = \"0.0.0.0:8080\"\n").unwrap_err();
        assert_eq!(e.key, "server.http_listen");
        assert!(e.reason.contains("--insecure-plaintext"), "{e}");
        let e = check("grpc_listen = \"[::]:50051\"\n").unwrap_err();
        assert_eq!(e.key, "server.grpc_listen");
        // Loopback needs no TLS; elsewhere, TLS or the explicit opt-out.
        check("http_listen = \"[::1]:8080\"\n").unwrap();
        check("http_listen = \"0.0.0.0:8080\"\ntls_cert = \"c.pem\"\ntls_key = \"c.key\"\n")
            .unwrap();
        let cfg = CoreConfig::from_toml(&format!(
            "{base}[server]\nhttp_listen = \"0.0.0.0:8080\"\ninsecure_plaintext = true\n"
        ))
        .unwrap();
        cfg.validate().unwrap();
        assert!(cfg.plaintext_exposed());
        assert_eq!(
            check("tls_cert = \"c.pem\"\n").unwrap_err().key,
            "server.tls_key"
        );
    }

    #[test]
    fn plaintext_edge_mode_is_refused_on_a_non_loopback_address() {
        let cfg = |server: &str| {
            CoreConfig::from_toml(&format!("[edge]\nplaintext = true\n[server]\n{server}"))
                .unwrap()
                .validate()
        };
        let e = cfg("grpc_listen = \"0.0.0.0:50051\"\ninsecure_plaintext = true\n").unwrap_err();
        assert_eq!(e.key, "edge.plaintext");
        assert!(e.reason.contains("0.0.0.0:50051"), "{e}");
        // Even over TLS: a plaintext agent is whoever it claims to be.
        let e = cfg("grpc_listen = \"10.1.2.3:50051\"\ntls_cert = \"c\"\ntls_key = \"k\"\n")
            .unwrap_err();
        assert_eq!(e.key, "edge.plaintext");
        cfg("grpc_listen = \"127.0.0.1:50051\"\n").unwrap();
    }

    #[test]
    fn the_agent_registry_is_enforced_by_default_in_the_data_dir() {
        let cfg = CoreConfig::from_toml("[storage]\npath = \"/d/core\"\n").unwrap();
        assert_eq!(
            cfg.registry_path(),
            Some(PathBuf::from("/d/core/agents.toml"))
        );
        let cfg =
            CoreConfig::from_toml("[edge]\nplaintext = true\nregistry_enforced = false\n").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.registry_path(), None);
        let cfg = CoreConfig::from_toml(
            "[edge]\nplaintext = true\nregistry_enforced = false\nregistry = \"a.toml\"\n",
        )
        .unwrap();
        assert_eq!(cfg.validate().unwrap_err().key, "edge.registry_enforced");
    }

    #[test]
    fn validate_names_the_dotted_key() {
        let mut cfg = CoreConfig::default();
        cfg.retention.dedup_keys = Duration::from_secs(1);
        assert_eq!(cfg.validate().unwrap_err().key, "retention.dedup_keys");
    }

    #[test]
    fn memory_bounds_too_small_to_work_are_refused_by_name() {
        let check = |toml: &str| CoreConfig::from_toml(toml).unwrap().validate();
        assert_eq!(
            check("[storage]\nmemtable = \"4 MiB\"\n").unwrap_err().key,
            "storage.memtable"
        );
        assert_eq!(
            check("[storage]\ncache = \"64 KiB\"\n").unwrap_err().key,
            "storage.cache"
        );
        assert_eq!(
            check("[pipeline]\nqueue_batches = 0\n").unwrap_err().key,
            "pipeline.queue_batches"
        );
        assert_eq!(
            check("[live]\nbuffer_events = 255\n").unwrap_err().key,
            "live.buffer_events"
        );
        // The key it replaced counted messages: refused, naming the new one.
        let old = check("[live]\nbuffer_commits = 128\n").unwrap_err();
        assert_eq!(old.key, "live.buffer_commits");
        assert!(old.to_string().contains("live.buffer_events"), "{old}");
        // The least of each is taken (with an edge a local demo could use).
        check(
            "[storage]\nmemtable = \"8 MiB\"\ncache = \"1 MiB\"\n\
             [edge]\nplaintext = true\nlisten = \"127.0.0.1:50443\"\n",
        )
        .unwrap();
    }
}
