//! The agent's own observability: Prometheus metrics (`GET /metrics`) and a
//! health check (`GET /healthz`) on `metrics.listen`, loopback by default.
//!
//! Promises:
//! - The endpoint MUST NOT listen beyond loopback unless the operator says so
//!   (`metrics.allow_non_loopback = true`): it has neither TLS nor
//!   authentication.
//! - A scrape MUST NOT block the runtime: the figures that need the disk
//!   (spool, free space) are read on a blocking thread.
//! - Every metric is named `sightline_edge_*`, apart from the core's
//!   `sightline_agent_*` (what the core hears from its agents), so one
//!   Prometheus can scrape both without two meanings under one name.

mod http;
#[cfg(test)]
mod tests;

pub use http::{serve, MAX_CONNECTIONS};

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde::Deserialize;

use crate::{
    buffer::Buffer,
    capture::{spool::Spool, CameraBoard},
    config::ConfigError,
    transport::{sender::SenderStats, Transport},
};

/// Where the metrics endpoint listens when `metrics.listen` is unset (next
/// to the intake's 50061).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50062";

/// `[metrics]`: the agent's own `/metrics` and `/healthz` endpoint.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to listen, `host:port`; `"off"` or `""`: no endpoint. Unset:
    /// [`DEFAULT_LISTEN`], skipped with a warning if that port is taken (an
    /// address set here must bind, or the agent does not start).
    #[serde(default)]
    pub listen: Option<String>,
    /// Allow a `listen` address that is not loopback. The endpoint has
    /// neither TLS nor authentication; off unless the operator says so.
    #[serde(default)]
    pub allow_non_loopback: bool,
}

/// Where the endpoint listens, and whether the operator chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// Set in the config or on the command line (a bind failure is then fatal).
    pub explicit: bool,
}

impl MetricsConfig {
    /// The address to listen on (`None`: off), or why `metrics.listen` is refused.
    pub fn address(&self) -> Result<Option<Listen>, ConfigError> {
        let (text, explicit) = match self.listen.as_deref() {
            None => (DEFAULT_LISTEN, false),
            Some(t) => (t.trim(), true),
        };
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr: SocketAddr = text.parse().map_err(|e| ConfigError {
            key: "metrics.listen",
            reason: format!("{text:?} is not host:port nor \"off\": {e}"),
        })?;
        if !addr.ip().is_loopback() && !self.allow_non_loopback {
            return Err(ConfigError {
                key: "metrics.listen",
                reason: format!(
                    "{addr} is not a loopback address and the endpoint has no TLS nor authentication; set metrics.allow_non_loopback = true to serve it there anyway"
                ),
            });
        }
        Ok(Some(Listen { addr, explicit }))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a detection was refused at intake: "invalid" (a field is wrong),
    /// "buffer_full", "dropped_buffer_full" (`buffer.when_full = "drop"`),
    /// "disk_full", "disk_fault", "closed".
    pub reason: &'static str,
}

/// Every `reason` of `sightline_edge_intake_refused_events_total`.
pub const REFUSAL_REASONS: [&str; 7] = [
    "invalid",
    "buffer_full",
    "dropped_buffer_full",
    "disk_full",
    "disk_fault",
    "closed",
    "buffer_error",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// "quic", "grpc+tls", "grpc+tls-fallback" (QUIC was tried and failed) or "grpc".
    pub transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoreLabel {
    /// One URL of `core_urls` (or the one `core_url`).
    pub url: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    pub camera: String,
    /// off | connecting | streaming | reconnecting
    pub state: &'static str,
}

/// Every state a camera's capture can be in (`CameraStatus.state`).
pub const CAMERA_STATES: [&str; 4] = ["off", "connecting", "streaming", "reconnecting"];

/// Upper bounds (s) of the ack round-trip and live-lane wait histograms: a loopback link and a
/// group commit take about a millisecond, a cellular link a second.
const RTT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric the agent exports. Counters and histograms are updated where
/// things happen; gauges are read from their owners at each scrape
/// ([`Scrape::encode`]).
pub struct AgentMetrics {
    registry: Registry,
    /// Detections appended to the buffer from any source.
    pub intake_accepted: Counter,
    pub intake_refused: Family<ReasonLabel, Counter>,
    /// Events sent to the core in in-order batches (resends included).
    pub events_sent: Counter,
    /// Events sent ahead of a backlog on the live lane.
    pub live_sent: Counter,
    pub live_skipped: Counter,
    /// From sending a batch to the core's ack of it.
    pub ack_rtt: Histogram,
    /// How long the oldest event of each live-lane batch waited at the
    /// agent, from being accepted to being sent.
    pub live_lane_wait: Histogram,
    /// Sessions with the core that ended in an error (each is followed by a
    /// reconnect after a backoff).
    pub reconnects: Counter,
    buffer_events: Gauge,
    buffer_bytes: Gauge,
    buffer_max_events: Gauge,
    buffer_max_bytes: Gauge,
    oldest_unacked_age: Gauge<f64, AtomicU64>,
    buffer_disk_fault: Gauge,
    connected: Gauge,
    transport: Family<TransportLabel, Gauge>,
    core_connected: Family<CoreLabel, Gauge>,
    camera_state: Family<CameraLabel, Gauge>,
    spool_bytes: Gauge,
    spool_max_bytes: Gauge,
    spool_evicted: Gauge,
    disk_free_bytes: Gauge,
    disk_total_bytes: Gauge,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("sightline_edge");
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
        }
        Self {
            intake_accepted: reg!(
                "intake_accepted_events",
                "Detections accepted (durable in the buffer), from every source",
                Counter::default()
            ),
            intake_refused: reg!(
                "intake_refused_events",
                "Detections refused at intake, by reason",
                Family::<ReasonLabel, Counter>::default()
            ),
            events_sent: reg!(
                "events_sent",
                "Events sent to the core in in-order batches (resends included)",
                Counter::default()
            ),
            live_sent: reg!(
                "live_lane_sent_events",
                "Events sent ahead of a backlog on the live lane (sent again with the backlog)",
                Counter::default()
            ),
            live_skipped: reg!(
                "live_lane_skipped_events",
                "New events the live lane passed over for want of rate budget (sent only in order, with the backlog)",
                Counter::default()
            ),
            ack_rtt: reg!(
                "ack_rtt_seconds",
                "From sending a batch to the core's ack of it: the link's round trip plus the core's commit",
                Histogram::new(RTT_BUCKETS)
            ),
            live_lane_wait: reg!(
                "live_lane_wait_seconds",
                "From accepting an event to sending it on the live lane (the oldest of each live batch)",
                // A millisecond when the lane keeps up, seconds when not.
                Histogram::new(RTT_BUCKETS)
            ),
            reconnects: reg!(
                "reconnects",
                "Sessions with the core that ended in an error (a reconnect follows)",
                Counter::default()
            ),
            buffer_events: reg!(
                "buffer_events",
                "Events held in the buffer, not yet acknowledged by the core",
                Gauge::default()
            ),
            buffer_bytes: reg!(
                "buffer_bytes",
                "Encoded bytes of the events held in the buffer",
                Gauge::default()
            ),
            buffer_max_events: reg!(
                "buffer_max_events",
                "buffer.max_events: most events the buffer holds",
                Gauge::default()
            ),
            buffer_max_bytes: reg!(
                "buffer_max_bytes",
                "buffer.max_bytes: most bytes the buffer holds",
                Gauge::default()
            ),
            oldest_unacked_age: reg!(
                "oldest_unacked_age_seconds",
                "Seconds since the agent accepted the oldest event the core has not acknowledged (0: none)",
                Gauge::<f64, AtomicU64>::default()
            ),
            buffer_disk_fault: reg!(
                "buffer_disk_fault",
                "1 while the buffer's disk refuses writes (publishes are refused)",
                Gauge::default()
            ),
            connected: reg!(
                "connected",
                "1 while a session with the core is open",
                Gauge::default()
            ),
            transport: reg!(
                "transport",
                "1 for the transport the agent reaches the core over",
                Family::<TransportLabel, Gauge>::default()
            ),
            core_connected: reg!(
                "core_connected",
                "1 for the core (of core_urls) a session is open with, 0 for the others",
                Family::<CoreLabel, Gauge>::default()
            ),
            camera_state: reg!(
                "camera_state",
                "1 for each camera's current capture state, 0 for the others",
                Family::<CameraLabel, Gauge>::default()
            ),
            spool_bytes: reg!(
                "spool_bytes",
                "Bytes of footage in the local spool, waiting for upload",
                Gauge::default()
            ),
            spool_max_bytes: reg!(
                "spool_max_bytes",
                "capture.spool_max_bytes: the spool's quota",
                Gauge::default()
            ),
            spool_evicted: reg!(
                "spool_evicted_entries",
                "Spool entries dropped to stay under the quota since the agent started",
                Gauge::default()
            ),
            disk_free_bytes: reg!(
                "disk_free_bytes",
                "Bytes free (to this user) on the buffer's file system",
                Gauge::default()
            ),
            disk_total_bytes: reg!(
                "disk_total_bytes",
                "Size of the buffer's file system",
                Gauge::default()
            ),
            registry: r,
        }
        .with_every_reason()
    }

    /// One refusal at intake.
    pub fn refused(&self, reason: &'static str, n: u64) {
        self.intake_refused
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// Every intake refusal reason, at 0, so that rates have data from the start.
    fn with_every_reason(self) -> Self {
        for reason in REFUSAL_REASONS {
            let _ = self.intake_refused.get_or_create(&ReasonLabel { reason });
        }
        self
    }

    /// The text exposition of what is set now.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The transport label for what [`Transport::describe`] says.
pub fn transport_label(describe: &str) -> &'static str {
    if describe.contains("fallback") {
        "grpc+tls-fallback"
    } else if describe.starts_with("quic") {
        "quic"
    } else if describe.starts_with("grpc+tls") {
        "grpc+tls"
    } else {
        "grpc"
    }
}

/// What a scrape reads: the metrics and the owners of the gauges.
pub struct Scrape {
    pub metrics: Arc<AgentMetrics>,
    pub buffer: Arc<Buffer>,
    /// Where the buffer lives (its file system's free space is reported).
    pub buffer_dir: PathBuf,
    pub max_events: u64,
    pub max_bytes: u64,
    pub stats: Arc<SenderStats>,
    pub transport: Arc<dyn Transport>,
    pub cameras: Option<Arc<CameraBoard>>,
    pub spool: Option<Arc<Spool>>,
}

impl Scrape {
    /// Refreshes the gauges from their owners and encodes everything. Reads
    /// the disk (spool entries, free space): call it off the runtime.
    pub fn encode(&self) -> String {
        use std::sync::atomic::Ordering;
        let m = &self.metrics;
        let b = &self.buffer;
        m.buffer_events.set(b.depth() as i64);
        m.buffer_bytes.set(b.held_bytes() as i64);
        m.buffer_max_events.set(self.max_events as i64);
        m.buffer_max_bytes.set(self.max_bytes as i64);
        let oldest = b.oldest_held_ms();
        let age = if oldest == 0 {
            0.0
        } else {
            (sightline_proto::now_ms() - oldest).max(0) as f64 / 1000.0
        };
        m.oldest_unacked_age.set(age);
        m.buffer_disk_fault.set(b.disk_fault().is_some() as i64);
        let connected = self.stats.connected.load(Ordering::Relaxed);
        m.connected.set(connected as i64);
        m.transport.clear();
        m.transport
            .get_or_create(&TransportLabel {
                transport: transport_label(&self.transport.describe()),
            })
            .set(connected as i64);
        m.core_connected.clear();
        for (url, current) in self.transport.cores() {
            m.core_connected
                .get_or_create(&CoreLabel { url })
                .set((connected && current) as i64);
        }
        m.camera_state.clear();
        for cam in self.cameras.as_ref().map(|c| c.all()).unwrap_or_default() {
            for state in CAMERA_STATES {
                m.camera_state
                    .get_or_create(&CameraLabel {
                        camera: cam.video_camera_oid.to_string(),
                        state,
                    })
                    .set((cam.state == state) as i64);
            }
        }
        if let Some(spool) = &self.spool {
            // An object used by several entries is stored once.
            let mut seen = std::collections::HashSet::new();
            let used: u64 = spool
                .list()
                .into_iter()
                .filter(|e| seen.insert(e.sha256.clone()))
                .map(|e| e.size)
                .sum();
            m.spool_bytes.set(used as i64);
            m.spool_max_bytes.set(spool.max_bytes() as i64);
            m.spool_evicted
                .set(spool.evicted.load(Ordering::Relaxed) as i64);
        }
        if let Ok(fs) = rustix::fs::statvfs(&self.buffer_dir) {
            let unit = fs.f_frsize.max(1);
            m.disk_free_bytes
                .set(fs.f_bavail.saturating_mul(unit).min(i64::MAX as u64) as i64);
            m.disk_total_bytes
                .set(fs.f_blocks.saturating_mul(unit).min(i64::MAX as u64) as i64);
        }
        m.encode()
    }

    /// `Err(why)` while the agent cannot take events (its buffer's disk
    /// refuses writes); the health check answers 503 with it.
    pub fn health(&self) -> Result<(), String> {
        match self.buffer.disk_fault() {
            Some(why) => Err(format!("buffer disk refuses writes: {why}")),
            None => Ok(()),
        }
    }
}
