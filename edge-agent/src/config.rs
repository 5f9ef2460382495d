//! Agent configuration: a TOML file (see `deploy/agent.example.toml`), every
//! field documented and defaulted, overridable from the command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Everything an agent needs to run.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agent's id at the core (letters, digits, `-`, `_`, `.`).
    pub agent_id: String,
    /// The core's edge link; the scheme picks the transport:
    /// `quic://core.example:50443` (QUIC, falling back to gRPC over TLS on
    /// the same port when UDP is blocked), `https://core.example:50443`
    /// (gRPC over TLS), `http://core.example:50051` (gRPC without TLS: only
    /// to a core on the same host started with `--edge-plaintext`, for local demos).
    #[serde(default = "default_core_url")]
    pub core_url: String,
    /// Several cores of one cluster (each URL as in `core_url`, its own
    /// transport): the agent sends to the first and, when its session with
    /// one fails (refused, reset, closed, no Welcome within
    /// `sender.connect_timeout`, the core shutting down), moves on to the
    /// next with the usual backoff and resumes from the watermark that
    /// core's Welcome gives. Set: replaces `core_url` (leave that unset).
    #[serde(default)]
    pub core_urls: Vec<String>,
    /// This agent's certificate and the CA it trusts (quic:// and https://).
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub buffer: BufferConfig,
    #[serde(default)]
    pub sender: SenderConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    /// The agent's own `/metrics` and `/healthz` endpoint.
    #[serde(default)]
    pub metrics: crate::observe::MetricsConfig,
    /// Footage: cameras, spool, upload cap.
    #[serde(default)]
    pub capture: crate::capture::CaptureConfig,
    /// How far ahead of this host's clock a detection's timestamp may be.
    #[serde(default = "default_max_future_skew", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub max_future_skew: Duration,
}

/// The durable event buffer.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// RocksDB directory. Deleting it starts a new epoch.
    #[serde(default = "default_buffer_path")]
    pub path: PathBuf,
    /// Most events held (not yet acknowledged by the core).
    #[serde(default = "default_max_events")]
    pub max_events: u64,
    /// Most bytes held (encoded events).
    #[serde(default = "default_max_bytes")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub max_bytes: ByteSize,
    /// What a full buffer does to a publisher.
    #[serde(default)]
    pub when_full: WhenFull,
    /// With `when_full = "block"`: how long a publisher waits for room.
    #[serde(default = "default_block_timeout", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub block_timeout: Duration,
    /// fsync every append before answering the publisher. Turning this off
    /// makes appends cheaper but events accepted in the last moments before a
    /// power loss can be lost (a process crash loses nothing either way).
    #[serde(default = "default_true")]
    pub sync: bool,
    /// Acknowledged events to keep (at least the newest this many; they
    /// leave the disk in whole runs of up to 256 KiB once that many newer
    /// ones are acknowledged). A core restored from a backup is behind what
    /// it acknowledged: the agent then sends it the kept events after its
    /// watermark again, in a new epoch, and the core drops those it has by
    /// det_oid (PROTOCOL.md rule 18a). Set it to at least the events this
    /// agent sends between two backups of the core. They take disk, not
    /// `max_events`/`max_bytes`. 0: deleted once acknowledged.
    #[serde(default)]
    pub keep_acked: u64,
}

/// What happens when the buffer is full. Nothing is ever dropped silently:
/// a refused or dropped detection still took its camera number
/// (`Detection.camera_seq`), so the core sees the hole and the agent says why.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the publish at once with a retryable RESOURCE_EXHAUSTED.
    #[default]
    Backpressure,
    /// Hold the publisher until there is room, up to `block_timeout`, then refuse.
    Block,
    /// Accept the call but drop the detections that do not fit (each is
    /// answered `dropped`), counted per camera and reported to the core,
    /// whose completeness report names them (for detectors that cannot wait
    /// nor retry).
    Drop,
}

/// How events travel to the core.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Most events in one batch.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Most bytes in one batch (keep well under the core's message limit).
    #[serde(default = "default_batch_max_bytes")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub batch_max_bytes: ByteSize,
    /// Batches sent and not yet acknowledged, at most. Live batches are
    /// small and come every few ms, so this must cover a round trip plus a
    /// lost ack's recovery (acks come in order: one lost packet holds up the
    /// acks behind it for another round trip).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Events sent and not yet acknowledged, at most (a batch is not sent
    /// while this many are out). Everything in flight waits in the core's
    /// queues ahead of what comes next; a backlog's large batches would
    /// otherwise put `max_in_flight` × `batch_max_events` there.
    #[serde(default = "default_max_in_flight_events")]
    pub max_in_flight_events: u64,
    /// First reconnect delay; doubles up to `backoff_max`, with full jitter.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub backoff_max: Duration,
    /// How often the agent reports its buffer depth.
    #[serde(default = "default_status_interval", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub status_interval: Duration,
    /// Connection attempt timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub connect_timeout: Duration,
    /// On shutdown, how long to wait for acks of what is in flight.
    #[serde(default = "default_drain_grace", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub drain_grace: Duration,
    /// With quic://: how long a QUIC handshake may go unanswered before the
    /// agent takes UDP as blocked and falls back to gRPC over TLS.
    #[serde(default = "default_quic_timeout", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub quic_timeout: Duration,
    /// With quic://: fall back to gRPC when UDP is blocked (and try QUIC again
    /// every `quic_retry`).
    #[serde(default = "default_true")]
    pub quic_fallback: bool,
    /// With `quic_fallback`: how long the agent stays on gRPC before trying QUIC again.
    #[serde(default = "default_quic_retry", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub quic_retry: Duration,
    /// QUIC congestion control for what the agent sends: "edge" (delay-based,
    /// indifferent to random loss; see `sightline_proto::congestion`), "cubic"
    /// or "bbr" (quinn's, experimental).
    #[serde(default = "default_quic_congestion")]
    pub quic_congestion: String,
    /// The live lane (PROTOCOL.md rule 6b): while more than this many events
    /// wait unsent behind the newest (a backlog after an outage), the newest
    /// are also sent at once, ahead of it, so that the dashboard sees them
    /// live; the backlog brings them again in order and the core
    /// acknowledges them without storing them twice. 0 turns the lane off.
    #[serde(default = "default_live_lane_after")]
    pub live_lane_after: u64,
    /// The live lane also opens, whatever this agent's own backlog, while
    /// its oldest batch in flight has waited this long for its ack: the
    /// core is queueing (other agents' backlogs), and new events sent in
    /// order would wait behind them. 0: only `live_lane_after` opens it.
    #[serde(default = "default_live_lane_after_wait", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub live_lane_after_wait: Duration,
    /// Most events a second on the live lane; newer events past it wait for
    /// the backlog (the lane must not take the drain's place).
    #[serde(default = "default_live_lane_max_rate")]
    pub live_lane_max_rate: u64,
    /// The lane sends as fast as new events arrive (up to
    /// `live_lane_max_rate`), or this share of the rate the core
    /// acknowledges events at if that is more (bursts). Every event on the
    /// lane is one the core handles twice (stored live, then acknowledged
    /// as delivered when the backlog brings it).
    #[serde(default = "default_live_lane_max_share")]
    pub live_lane_max_share: f64,
}

fn default_quic_congestion() -> String {
    "edge".into()
}

fn default_quic_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_quic_retry() -> Duration {
    Duration::from_secs(300)
}

/// Mutual TLS on the edge link (`sightline-core certs agent` issues them).
#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A folder holding `ca.pem`, `agent-<agent_id>.pem` and
    /// `agent-<agent_id>.key`; the fields below override single files.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The CA the core's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This agent's certificate (its agent id is the common name) and key.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the core's certificate must carry (default: the URL's host).
    #[serde(default)]
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// (ca, cert, key) paths, or the dotted key of the one missing.
    pub fn paths(&self, agent_id: &str) -> Result<(PathBuf, PathBuf, PathBuf), ConfigError> {
        let from_dir = |name: String| self.dir.as_ref().map(|d| d.join(name));
        let pick = |explicit: &Option<PathBuf>, name: String, key: &'static str| {
            explicit
                .clone()
                .or_else(|| from_dir(name))
                .ok_or(ConfigError {
                    key,
                    reason:
                        "unset (and no tls.dir): quic:// and https:// need this agent's certificate"
                            .into(),
                })
        };
        Ok((
            pick(&self.ca, "ca.pem".into(), "tls.ca")?,
            pick(&self.cert, format!("agent-{agent_id}.pem"), "tls.cert")?,
            pick(&self.key, format!("agent-{agent_id}.key"), "tls.key")?,
        ))
    }
}

/// The local intake endpoint for the detector.
#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// Where to listen (keep it on loopback). Unset: no intake endpoint.
    pub listen: Option<SocketAddr>,
}

fn default_core_url() -> String {
    "http://127.0.0.1:50051".into()
}
fn default_buffer_path() -> PathBuf {
    "data/agent".into()
}
fn default_max_events() -> u64 {
    2_000_000
}
fn default_max_bytes() -> ByteSize {
    ByteSize::mib(512)
}
fn default_block_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}
fn default_batch_max_events() -> usize {
    2000
}
fn default_batch_max_bytes() -> ByteSize {
    ByteSize::kib(1024)
}
fn default_max_in_flight() -> usize {
    64
}
fn default_max_in_flight_events() -> u64 {
    16_384
}
fn default_live_lane_after() -> u64 {
    10_000
}
fn default_live_lane_after_wait() -> Duration {
    Duration::from_millis(100)
}
fn default_live_lane_max_rate() -> u64 {
    25_000
}
fn default_live_lane_max_share() -> f64 {
    0.25
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_drain_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_max_future_skew() -> Duration {
    Duration::from_secs(300)
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            path: default_buffer_path(),
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            when_full: WhenFull::default(),
            block_timeout: default_block_timeout(),
            sync: true,
            keep_acked: 0,
        }
    }
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            batch_max_events: default_batch_max_events(),
            batch_max_bytes: default_batch_max_bytes(),
            max_in_flight: default_max_in_flight(),
            max_in_flight_events: default_max_in_flight_events(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            status_interval: default_status_interval(),
            connect_timeout: default_connect_timeout(),
            drain_grace: default_drain_grace(),
            quic_timeout: default_quic_timeout(),
            quic_fallback: true,
            quic_retry: default_quic_retry(),
            quic_congestion: default_quic_congestion(),
            live_lane_after: default_live_lane_after(),
            live_lane_after_wait: default_live_lane_after_wait(),
            live_lane_max_rate: default_live_lane_max_rate(),
            live_lane_max_share: default_live_lane_max_share(),
        }
    }
}

/// Most URLs in `core_urls` (a cluster's nodes; the agent tries them in turn).
pub const MAX_CORE_URLS: usize = 16;

/// A configuration value that cannot work, by its dotted key.
#[derive(Debug, thiserror::Error)]
#[error("config `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

impl AgentConfig {
    /// A configuration with every default, for the given agent id.
    pub fn with_id(agent_id: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            core_url: default_core_url(),
            core_urls: Vec::new(),
            tls: TlsConfig::default(),
            buffer: BufferConfig::default(),
            sender: SenderConfig::default(),
            intake: IntakeConfig::default(),
            metrics: crate::observe::MetricsConfig::default(),
            capture: crate::capture::CaptureConfig::default(),
            max_future_skew: default_max_future_skew(),
        }
    }

    /// The cores to send to, in order of preference: `core_urls`, or the
    /// one `core_url`.
    pub fn core_urls(&self) -> Vec<String> {
        if self.core_urls.is_empty() {
            vec![self.core_url.clone()]
        } else {
            self.core_urls.clone()
        }
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// Checks what serde cannot, naming the dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if let Err(e) = sightline_proto::validate_agent_id(&self.agent_id) {
            return Err(ConfigError {
                key: "agent_id",
                reason: e.reason,
            });
        }
        let key = if self.core_urls.is_empty() {
            "core_url"
        } else {
            "core_urls"
        };
        if !self.core_urls.is_empty() && self.core_url != default_core_url() {
            return err(
                "core_urls",
                "set together with `core_url`: keep one (core_urls is the list of every core)",
            );
        }
        if self.core_urls.len() > MAX_CORE_URLS {
            return Err(ConfigError {
                key,
                reason: format!("{} URLs, at most {MAX_CORE_URLS}", self.core_urls.len()),
            });
        }
        let urls = self.core_urls();
        for (i, url) in urls.iter().enumerate() {
            if !["http://", "https://", "quic://"]
                .iter()
                .any(|s| url.starts_with(s))
            {
                return Err(ConfigError {
                    key,
                    reason: format!("{url:?}: must start with quic://, https:// or http://"),
                });
            }
            if urls[..i].contains(url) {
                return Err(ConfigError {
                    key,
                    reason: format!("{url:?} is listed twice"),
                });
            }
        }
        if urls.iter().any(|u| !u.starts_with("http://")) {
            self.tls.paths(&self.agent_id)?;
        }
        self.metrics.address()?;
        if self.buffer.max_events == 0 {
            return err("buffer.max_events", "must be at least 1");
        }
        if self.buffer.max_bytes.as_u64() < 64 * 1024 {
            return err("buffer.max_bytes", "must be at least 64 KiB");
        }
        if self.sender.batch_max_events == 0 {
            return err("sender.batch_max_events", "must be at least 1");
        }
        if self.sender.batch_max_bytes.as_u64() < 1024 {
            return err("sender.batch_max_bytes", "must be at least 1 KiB");
        }
        if let Err(why) = sightline_proto::edge::check_congestion(&self.sender.quic_congestion) {
            return err("sender.quic_congestion", &why);
        }
        if self.sender.live_lane_after > 0 && self.sender.live_lane_max_rate == 0 {
            return err(
                "sender.live_lane_max_rate",
                "must be at least 1 while the live lane is on (sender.live_lane_after > 0)",
            );
        }
        if !(self.sender.live_lane_max_share > 0.0 && self.sender.live_lane_max_share <= 1.0) {
            return err("sender.live_lane_max_share", "must be within (0, 1]");
        }
        if self.sender.max_in_flight_events == 0 {
            return err("sender.max_in_flight_events", "must be at least 1");
        }
        if self.sender.max_in_flight == 0 {
            return err("sender.max_in_flight", "must be at least 1");
        }
        if self.sender.backoff_initial.is_zero()
            || self.sender.backoff_max < self.sender.backoff_initial
        {
            return err(
                "sender.backoff_max",
                "backoff_initial must be > 0 and backoff_max >= backoff_initial",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_validates() {
        let text = include_str!("../../deploy/agent.example.toml");
        let cfg = AgentConfig::from_toml(text).unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err =
            AgentConfig::from_toml("agent_id = \"a\"\n[buffer]\nmax_event = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_event"), "{err}");
    }

    #[test]
    fn validate_names_the_dotted_key() {
        let mut cfg = AgentConfig::with_id("a");
        cfg.sender.max_in_flight = 0;
        assert_eq!(cfg.validate().unwrap_err().key, "sender.max_in_flight");
    }

    #[test]
    fn a_list_of_core_urls_replaces_the_single_url_and_is_checked_by_name() {
        let cfg = AgentConfig::from_toml(
            "agent_id = \"a\"\ncore_urls = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.core_urls(),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        // The single key alone still works.
        let one =
            AgentConfig::from_toml("agent_id = \"a\"\ncore_url = \"http://10.0.0.1:5\"\n").unwrap();
        assert_eq!(one.core_urls(), ["http://10.0.0.1:5"]);
        for (bad, why) in [
            (vec!["http://a:1", "ftp://b:2"], "must start with"),
            (vec!["http://a:1", "http://a:1"], "listed twice"),
            (vec!["quic://a:1"], "tls.ca"),
        ] {
            let mut c = AgentConfig::with_id("a");
            c.core_urls = bad.iter().map(|u| u.to_string()).collect();
            let e = c.validate().unwrap_err();
            assert!(
                e.to_string().contains(why),
                "{bad:?}: {e} (expected {why:?})"
            );
            if why != "tls.ca" {
                assert_eq!(e.key, "core_urls");
            }
        }
        let mut both = AgentConfig::with_id("a");
        both.core_url = "http://x:1".into();
        both.core_urls = vec!["http://y:1".into()];
        assert_eq!(both.validate().unwrap_err().key, "core_urls");
        let mut many = AgentConfig::with_id("a");
        many.core_urls = (0..=MAX_CORE_URLS)
            .map(|i| format!("http://127.0.0.1:{}", 1000 + i))
            .collect();
        assert_eq!(many.validate().unwrap_err().key, "core_urls");
    }
}
