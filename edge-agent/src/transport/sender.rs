//! The one sender logic: reads the buffer in seq order, sends batches with a
//! window of several in flight, deletes only what the core acknowledged, and
//! after any break reconnects with backoff and resumes where the core says.
//!
//! The protocol it speaks is specified in `core-server/src/ingest/PROTOCOL.md`.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::StreamExt;
use prost::Message;
use rand::Rng;
use sightline_proto::v1::{
    agent_message, core_message, AgentMessage, AgentStatus, Batch, EdgeEvent, Hello,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Link, LinkError, Transport};
use crate::{
    buffer::{Buffer, BufferError},
    config::SenderConfig,
};

/// What the sender has seen, for logs, the CLI and tests.
#[derive(Debug, Default)]
pub struct SenderStats {
    pub connected: AtomicBool,
    /// Highest seq the core acknowledged.
    pub acked_through: AtomicU64,
    /// Events the core refused (they sit in its quarantine).
    pub rejected: AtomicU64,
    /// Events the core dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Sessions opened (1 + reconnects).
    pub sessions: AtomicU64,
    pub last_error: Mutex<String>,
    /// New epochs started since the agent started, because the core's state
    /// and the buffer's disagreed (PROTOCOL.md, "Time travel").
    pub epochs_started: AtomicU64,
    /// Why the last new epoch was started, with the figures ("" if none).
    pub last_new_epoch: Mutex<String>,
    /// Events sent on the live lane, ahead of a backlog (they are sent again
    /// with the backlog, in order).
    pub live_sent: AtomicU64,
    /// The agent's Prometheus metrics (sent events, ack round trips, reconnects).
    pub metrics: Arc<crate::observe::AgentMetrics>,
}

/// The live lane's decision (PROTOCOL.md rule 6b): which of the newest
/// events to send ahead of the backlog, at most `max_rate` a second.
#[derive(Debug)]
pub struct LiveLane {
    after: u64,
    after_wait: Duration,
    max_rate: f64,
    max_share: f64,
    /// Events the lane may send now (a token bucket, up to
    /// [`LIVE_BURST`] of its rate or one batch, whichever is more).
    tokens: f64,
    refilled: Instant,
    /// The first seq the lane has not sent nor skipped.
    next: u64,
    /// How fast the core acknowledges (events/s, smoothed), and the last
    /// sample of it (when, acked, newest). Starts as if the share allowed
    /// the whole `max_rate`, so that the lane is not starved while it learns.
    ack_rate: f64,
    /// How fast new events arrive (events/s, smoothed).
    arrival_rate: f64,
    sampled: Option<(Instant, u64, u64)>,
    /// Events the lane passed over for want of budget (left to the
    /// backlog's order) and not yet taken by [`LiveLane::take_skipped`].
    skipped: u64,
}

/// How often the live lane samples the core's acknowledgement rate and the
/// rate new events arrive at.
const ACK_RATE_SAMPLE: Duration = Duration::from_millis(250);

/// The live lane's rate is at least this times the rate new events arrive
/// at, so that it keeps up with them through bursts.
const ARRIVAL_HEADROOM: f64 = 1.25;

/// How much of its rate the live lane's bucket holds: the sender's loop
/// may be held up (its link's queue full of backlog batches) for this
/// long without the lane passing over new events that its rate covers.
const LIVE_BURST: Duration = Duration::from_secs(1);

impl LiveLane {
    /// `from`: the first seq that is new to this session (what the buffer
    /// held when it opened is backlog).
    pub fn new(cfg: &SenderConfig, from: u64, now: Instant) -> Self {
        let max_share = cfg.live_lane_max_share.max(1e-3);
        Self {
            after: cfg.live_lane_after,
            after_wait: cfg.live_lane_after_wait,
            max_rate: cfg.live_lane_max_rate as f64,
            max_share,
            tokens: 0.0,
            refilled: now,
            next: from,
            ack_rate: cfg.live_lane_max_rate as f64 / max_share,
            arrival_rate: 0.0,
            sampled: None,
            skipped: 0,
        }
    }

    /// The lane's rate now, at most `max_rate`: as fast as new events
    /// arrive (with [`ARRIVAL_HEADROOM`]), so that every new event goes
    /// live — live beats backlog — or `max_share` of what the core
    /// acknowledges if that is more (bursts).
    fn rate(&mut self, acked: u64, newest: u64, now: Instant) -> f64 {
        match self.sampled {
            None => self.sampled = Some((now, acked, newest)),
            Some((t, a, n)) => {
                let dt = now.duration_since(t);
                if dt >= ACK_RATE_SAMPLE {
                    let secs = dt.as_secs_f64();
                    let r = acked.saturating_sub(a) as f64 / secs;
                    self.ack_rate = 0.5 * self.ack_rate + 0.5 * r;
                    let r = newest.saturating_sub(n) as f64 / secs;
                    self.arrival_rate = 0.5 * self.arrival_rate + 0.5 * r;
                    self.sampled = Some((now, acked, newest));
                }
            }
        }
        let share = self.max_share * self.ack_rate;
        self.max_rate
            .min(share.max(self.arrival_rate * ARRIVAL_HEADROOM))
    }

    /// The seqs to send on the live lane now (first, count), if any: when
    /// more than `after` events wait unacknowledged (`acked` is the highest
    /// seq the core acknowledged, `newest` the next seq to be assigned) —
    /// sent or not, for what is sent waits in the core's queues behind the
    /// rest — or when the oldest batch in flight has `waited` at least
    /// `after_wait` for its ack (the core's queues hold other agents'
    /// backlogs: a small backlog of this agent's own is no sign that new
    /// events would be quick), the newest of those the lane has not sent,
    /// as many as the rate allows (see [`LiveLane::rate`]), oldest first
    /// and at most `max_batch` a call (call again for the rest). What the
    /// rate cannot cover is left to the backlog, and counted
    /// ([`LiveLane::take_skipped`]).
    pub fn due(
        &mut self,
        acked: u64,
        newest: u64,
        waited: Duration,
        max_batch: usize,
        now: Instant,
    ) -> Option<(u64, usize)> {
        let rate = self.rate(acked, newest, now);
        let cap = (rate * LIVE_BURST.as_secs_f64()).max(max_batch as f64);
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(cap);
        self.refilled = now;
        let queued = !self.after_wait.is_zero() && waited >= self.after_wait;
        if self.after == 0 || (newest.saturating_sub(acked + 1) <= self.after && !queued) {
            return None;
        }
        let start = self.next.max(acked + 1);
        let budget = self.tokens.floor() as u64;
        if newest <= start || budget == 0 {
            return None;
        }
        let first = start.max(newest.saturating_sub(budget));
        let n = (newest - first).min(max_batch.max(1) as u64);
        self.skipped += first - start;
        self.tokens -= n as f64;
        self.next = first + n;
        Some((first, n as usize))
    }

    /// The events passed over since the last call (see [`LiveLane::due`]).
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    /// `n` events from `first` on were sent (fewer than due when a batch's
    /// byte limit cut them): the rest are sent next time, and their tokens
    /// go back to the bucket.
    pub fn sent(&mut self, first: u64, n: usize) {
        let end = first + n as u64;
        self.tokens += self.next.saturating_sub(end) as f64;
        self.next = end;
    }
}

/// Why the core's `Welcome` and this buffer disagree: each starts a new epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeTravel {
    /// The core's watermark is below what it acknowledged before: its data
    /// directory went back in time (restored from a copy, or wiped).
    CoreBehind { watermark: u64, acked: u64 },
    /// The core's watermark is beyond every seq this buffer assigned: the
    /// buffer went back in time (restored from a copy), or another buffer
    /// used this epoch.
    CoreAhead { watermark: u64, last_assigned: u64 },
    /// The core's last committed event is not this buffer's event at that
    /// seq: the buffer was restored and has since reused the seqs.
    OtherEvent {
        watermark: u64,
        core_digest: u64,
        own_digest: u64,
    },
}

impl std::fmt::Display for TimeTravel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            TimeTravel::CoreBehind { watermark, acked } => write!(
                f,
                "the core's watermark {watermark} is below seq {acked}, which it had acknowledged (its data was restored from an older copy or lost)"
            ),
            TimeTravel::CoreAhead { watermark, last_assigned } => write!(
                f,
                "the core's watermark {watermark} is beyond seq {last_assigned}, the last this buffer assigned (the buffer was restored from an older copy, or another buffer used this epoch)"
            ),
            TimeTravel::OtherEvent { watermark, core_digest, own_digest } => write!(
                f,
                "the core's event at seq {watermark} (digest {core_digest:016x}) is not this buffer's (digest {own_digest:016x}) (the buffer was restored from an older copy)"
            ),
        }
    }
}

/// What to do with a `Welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The core holds everything through `acked_through`: delete it, send on.
    Resume { acked_through: u64 },
    /// The two sides' states disagree: start a new epoch.
    NewEpoch(TimeTravel),
}

/// The rules of PROTOCOL.md "Time travel", as one decision. `watermark` is
/// `resume_from - 1`, `core_digest` the Welcome's `committed_digest` (0:
/// unknown), `acked` and `next_seq` the buffer's, `own_digest` the digest of
/// the buffer's event at seq `watermark` when it holds it.
pub fn welcome_verdict(
    watermark: u64,
    core_digest: u64,
    acked: u64,
    next_seq: u64,
    own_digest: Option<u64>,
) -> Verdict {
    let last_assigned = next_seq - 1;
    if watermark < acked {
        return Verdict::NewEpoch(TimeTravel::CoreBehind { watermark, acked });
    }
    if watermark > last_assigned {
        return Verdict::NewEpoch(TimeTravel::CoreAhead {
            watermark,
            last_assigned,
        });
    }
    match own_digest {
        Some(own) if core_digest != 0 && watermark > acked && own != core_digest => {
            Verdict::NewEpoch(TimeTravel::OtherEvent {
                watermark,
                core_digest,
                own_digest: own,
            })
        }
        _ => Verdict::Resume {
            acked_through: watermark,
        },
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in [0, min(max, initial * 2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        let millis = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis.max(1)))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sends the buffer's events to the core until `shutdown`.
pub struct Sender {
    pub agent_id: String,
    pub buffer: Arc<Buffer>,
    pub transport: Arc<dyn Transport>,
    pub config: SenderConfig,
    pub stats: Arc<SenderStats>,
    /// The cameras, reported with the buffer (none: an event-only agent).
    pub cameras: Option<Arc<crate::capture::CameraBoard>>,
}

enum SessionEnd {
    Shutdown,
    /// A new epoch was started: open the next session at once.
    NewEpoch,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Buffer(#[from] BufferError),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Sender {
    /// Runs until `shutdown` is cancelled; then waits up to `drain_grace` for
    /// the acks of what is in flight.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let opened = Instant::now();
            match self.session(&shutdown, &mut backoff).await {
                Ok(SessionEnd::Shutdown) => return,
                Ok(SessionEnd::NewEpoch) => continue,
                Err(e) => {
                    // A session that lasted longer than the longest delay
                    // was not a tight loop: start again from the first.
                    if opened.elapsed() >= self.config.backoff_max {
                        backoff.reset();
                    }
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.transport.session_failed(&e.to_string());
                    self.stats.metrics.reconnects.inc();
                    *self.stats.last_error.lock().unwrap() = e.to_string();
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "session with the core ended");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, SessionError> {
        let buffer = &self.buffer;
        let mut link: Link = tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            l = self.transport.connect() => l?,
        };
        let hello = Hello {
            agent_id: self.agent_id.clone(),
            epoch: buffer.epoch(),
            version: crate::VERSION.into(),
            buffer_depth: buffer.depth(),
            next_seq: buffer.next_seq(),
            transport: self.transport.describe(),
        };
        send(&link.tx, agent_message::Msg::Hello(hello)).await?;
        // A core that accepts the link but never welcomes (overloaded, or
        // a cluster node that lost its engine) is a failed session too.
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            m = tokio::time::timeout(self.config.connect_timeout, link.rx.next()) => m,
        };
        let Ok(first) = first else {
            return Err(LinkError::Broken(format!(
                "no Welcome from {} within {} ms (sender.connect_timeout)",
                link.peer,
                self.config.connect_timeout.as_millis()
            ))
            .into());
        };
        let welcome = match first {
            Some(Ok(m)) => match m.msg {
                Some(core_message::Msg::Welcome(w)) => w,
                other => {
                    return Err(SessionError::Protocol(format!(
                        "expected Welcome first, got {other:?}"
                    )))
                }
            },
            Some(Err(e)) => return Err(e.into()),
            None => return Err(LinkError::Broken("core closed before Welcome".into()).into()),
        };
        if welcome.resume_from == 0 {
            return Err(SessionError::Protocol(
                "field `resume_from`: 0, but seqs start at 1".into(),
            ));
        }
        let resume_from = welcome.resume_from;
        let watermark = resume_from - 1;
        let (acked, next_seq) = (buffer.acked(), buffer.next_seq());
        let own_digest = if watermark > acked && watermark < next_seq {
            let event = buffer.read(watermark, 1, usize::MAX)?;
            event.first().map(|e| sightline_proto::event_digest(e))
        } else {
            None
        };
        match welcome_verdict(
            watermark,
            welcome.committed_digest,
            acked,
            next_seq,
            own_digest,
        ) {
            Verdict::Resume { acked_through } => buffer.ack_through(acked_through)?,
            Verdict::NewEpoch(why) => {
                drop(link);
                self.start_new_epoch(why, acked, next_seq).await?;
                return Ok(SessionEnd::NewEpoch);
            }
        }
        self.stats
            .acked_through
            .store(resume_from - 1, Ordering::Relaxed);
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        // The backoff is reset by progress (an ack), not by the session
        // opening: a core that opens sessions and then cannot store (a
        // cluster whose stream has no leader) must not be hammered by
        // every agent of the fleet in a tight loop.
        tracing::info!(peer = %link.peer, transport = %self.transport.describe(), resume_from, depth = buffer.depth(), "session open");

        let cfg = &self.config;
        let mut cursor = resume_from;
        // The last seq of each batch in flight, and when it was sent.
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut appended = buffer.watch_appends();
        let mut status_tick = tokio::time::interval(cfg.status_interval);
        let mut drain_deadline: Option<Instant> = None;
        let mut live = LiveLane::new(cfg, buffer.next_seq(), Instant::now());
        loop {
            if drain_deadline.is_none() {
                appended.borrow_and_update();
                while in_flight.len() < cfg.max_in_flight
                    && (cursor - 1).saturating_sub(buffer.acked()) < cfg.max_in_flight_events
                {
                    let events = buffer.read(
                        cursor,
                        cfg.batch_max_events,
                        cfg.batch_max_bytes.as_u64() as usize,
                    )?;
                    if events.is_empty() {
                        break;
                    }
                    let n = events.len() as u64;
                    let batch = Batch {
                        first_seq: cursor,
                        durable_after_ms: buffer.durable_after(cursor, events.len()),
                        events,
                    };
                    if let Some(shadow) = &link.shadow {
                        shadow(&batch);
                    }
                    send(&link.tx, agent_message::Msg::Batch(batch)).await?;
                    tracing::trace!(first_seq = cursor, events = n, "batch sent");
                    cursor += n;
                    in_flight.push_back((cursor - 1, Instant::now()));
                    self.stats.metrics.events_sent.inc_by(n);
                }
            } else if in_flight.is_empty() {
                return Ok(SessionEnd::Shutdown);
            }
            if drain_deadline.is_none() {
                let now = Instant::now();
                let waited = in_flight.front().map_or(Duration::ZERO, |(_, sent)| {
                    now.saturating_duration_since(*sent)
                });
                // Each call gives at most one batch: what the bucket covers
                // after the loop was held up takes a few.
                while let Some((first, n)) = live.due(
                    buffer.acked(),
                    buffer.next_seq(),
                    waited,
                    cfg.batch_max_events,
                    now,
                ) {
                    let events = buffer.read(first, n, cfg.batch_max_bytes.as_u64() as usize)?;
                    live.sent(first, events.len());
                    if events.is_empty() {
                        break;
                    }
                    if let Some(oldest) = events
                        .first()
                        .and_then(|e| EdgeEvent::decode(e.as_ref()).ok())
                    {
                        let ms = sightline_proto::now_ms().saturating_sub(oldest.accepted_ms);
                        self.stats
                            .metrics
                            .live_lane_wait
                            .observe(ms.max(0) as f64 / 1000.0);
                    }
                    self.stats
                        .live_sent
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    self.stats.metrics.live_sent.inc_by(events.len() as u64);
                    tracing::trace!(first_seq = first, events = events.len(), "live batch sent");
                    let batch = Batch {
                        first_seq: first,
                        durable_after_ms: buffer.durable_after(first, events.len()),
                        events,
                    };
                    send(&link.live_tx, agent_message::Msg::Live(batch)).await?;
                }
                let skipped = live.take_skipped();
                if skipped > 0 {
                    self.stats.metrics.live_skipped.inc_by(skipped);
                }
            }
            let window_open = in_flight.len() < cfg.max_in_flight
                && (cursor - 1).saturating_sub(buffer.acked()) < cfg.max_in_flight_events
                && drain_deadline.is_none();
            // New events wake the loop when the window can take them, or the
            // live lane might send them ahead of a backlog.
            let watch_appends =
                drain_deadline.is_none() && (window_open || cfg.live_lane_after > 0);
            tokio::select! {
                msg = link.rx.next() => {
                    let msg = match msg {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(LinkError::Broken("core closed the session".into()).into()),
                    };
                    let Some(core_message::Msg::Ack(ack)) = msg.msg else {
                        return Err(SessionError::Protocol(format!("expected Ack, got {:?}", msg.msg)));
                    };
                    if ack.committed_through >= cursor {
                        return Err(SessionError::Protocol(format!(
                            "core acknowledged seq {} but only {} was sent", ack.committed_through, cursor - 1
                        )));
                    }
                    buffer.ack_through(ack.committed_through)?;
                    backoff.reset();
                    while let Some(&(last, sent)) = in_flight.front() {
                        if last > ack.committed_through {
                            break;
                        }
                        self.stats.metrics.ack_rtt.observe(sent.elapsed().as_secs_f64());
                        in_flight.pop_front();
                    }
                    self.stats.acked_through.store(ack.committed_through, Ordering::Relaxed);
                    self.stats.duplicates.fetch_add(ack.duplicates, Ordering::Relaxed);
                    self.stats.rejected.fetch_add(ack.rejected.len() as u64, Ordering::Relaxed);
                    for r in &ack.rejected {
                        tracing::warn!(seq = r.seq, det_oid = ?r.detection_oid, field = %r.field, reason = %r.reason,
                            "core refused an event (kept in its quarantine)");
                    }
                }
                _ = appended.changed(), if watch_appends => {}
                _ = status_tick.tick() => {
                    let status = AgentStatus {
                        buffer_depth: buffer.depth(),
                        buffer_bytes: buffer.held_bytes(),
                        next_seq: buffer.next_seq(),
                        cameras: self.cameras.as_ref().map(|c| c.all()).unwrap_or_default(),
                        epochs_started: self.stats.epochs_started.load(Ordering::Relaxed),
                        last_new_epoch: self.stats.last_new_epoch.lock().unwrap().clone(),
                        buffer_disk_fault: buffer.disk_fault().unwrap_or_default(),
                        oldest_held_ms: buffer.oldest_held_ms(),
                        intake: buffer.camera_intake(),
                    };
                    send(&link.tx, agent_message::Msg::Status(status)).await?;
                }
                _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + cfg.drain_grace);
                }
                _ = sleep_until_opt(drain_deadline) => {
                    tracing::warn!(in_flight = in_flight.len(), "shutdown: gave up waiting for acks; the events stay buffered");
                    return Ok(SessionEnd::Shutdown);
                }
            }
        }
    }
}

impl Sender {
    /// Renumbers what the buffer holds into a new epoch, and says so.
    async fn start_new_epoch(
        &self,
        why: TimeTravel,
        acked: u64,
        next_seq: u64,
    ) -> Result<(), SessionError> {
        // A core behind what it acknowledged (restored from a backup) also
        // gets the kept acknowledged events after its watermark (rule 18a).
        let n = match why {
            TimeTravel::CoreBehind { watermark, .. } => {
                self.buffer.new_epoch_after(watermark).await?
            }
            _ => self.buffer.new_epoch().await?,
        };
        self.stats.epochs_started.fetch_add(1, Ordering::Relaxed);
        let mut text = format!(
            "new epoch {:016x} (was {:016x}): {why}; this buffer had acknowledged through seq {acked} and assigned up to {}; {} events renumbered 1..={} and resent (the core drops those it has by det_oid)",
            n.epoch,
            n.old_epoch,
            next_seq - 1,
            n.renumbered,
            n.renumbered
        );
        if n.resent_acked > 0 || n.lost > 0 {
            text.push_str(&format!(
                "; of them {} acknowledged events kept by `buffer.keep_acked`; {} acknowledged events after the core's watermark were no longer kept and cannot be resent",
                n.resent_acked, n.lost
            ));
        }
        tracing::warn!(
            old_epoch = n.old_epoch,
            epoch = n.epoch,
            agent_acked = acked,
            agent_last_seq = next_seq - 1,
            renumbered = n.renumbered,
            resent_acked = n.resent_acked,
            lost = n.lost,
            "{text}"
        );
        *self.stats.last_new_epoch.lock().unwrap() = text;
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn send(
    tx: &tokio::sync::mpsc::Sender<AgentMessage>,
    msg: agent_message::Msg,
) -> Result<(), LinkError> {
    tx.send(AgentMessage { msg: Some(msg) })
        .await
        .map_err(|_| LinkError::Broken("the outgoing stream closed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(after: u64, rate: u64) -> (LiveLane, Instant) {
        lane_waiting(after, rate, SenderConfig::default().live_lane_after_wait)
    }

    /// A lane that also opens once a batch in flight has waited `wait`.
    fn lane_waiting(after: u64, rate: u64, wait: Duration) -> (LiveLane, Instant) {
        let cfg = SenderConfig {
            live_lane_after: after,
            live_lane_after_wait: wait,
            live_lane_max_rate: rate,
            live_lane_max_share: 1.0,
            ..Default::default()
        };
        let t0 = Instant::now();
        (LiveLane::new(&cfg, 1_001, t0), t0)
    }

    #[test]
    fn the_live_lane_opens_only_behind_a_backlog_and_sends_each_new_event_once() {
        let (mut l, t0) = lane(100, 1_000);
        let s = Duration::from_secs(1);
        // The core keeps up: nothing to do.
        assert_eq!(l.due(1_049, 1_100, Duration::ZERO, 2_000, t0 + s), None);
        // 1,000 unacknowledged: the newest since the session opened go live.
        assert_eq!(
            l.due(99, 1_100, Duration::ZERO, 2_000, t0 + 2 * s),
            Some((1_001, 99))
        );
        // Nothing new: nothing sent twice.
        assert_eq!(l.due(99, 1_100, Duration::ZERO, 2_000, t0 + 2 * s), None);
        assert_eq!(
            l.due(99, 1_110, Duration::ZERO, 2_000, t0 + 2 * s),
            Some((1_100, 10))
        );
        // Acknowledged past the lane: it goes on from there.
        assert_eq!(
            l.due(1_499, 1_700, Duration::ZERO, 2_000, t0 + 3 * s),
            Some((1_500, 200))
        );
    }

    #[test]
    fn the_live_lane_opens_while_the_core_queues_however_small_the_agents_own_backlog() {
        let (mut l, t0) = lane_waiting(10_000, 1_000, Duration::from_millis(100));
        let s = Duration::from_secs(1);
        // 99 unacknowledged, acks quick: in order, as usual.
        assert_eq!(
            l.due(1_000, 1_100, Duration::from_millis(20), 2_000, t0 + s),
            None
        );
        // The same, but the oldest batch in flight has waited 150 ms: the
        // core's queues are deep, so the newest go live.
        assert_eq!(
            l.due(1_000, 1_100, Duration::from_millis(150), 2_000, t0 + 2 * s),
            Some((1_001, 99))
        );
        // Off when set to 0.
        let (mut l, t0) = lane_waiting(10_000, 1_000, Duration::ZERO);
        assert_eq!(
            l.due(1_000, 1_100, Duration::from_secs(9), 2_000, t0 + s),
            None
        );
    }

    #[test]
    fn the_live_lane_keeps_to_its_rate_and_leaves_the_rest_to_the_backlog() {
        let (mut l, t0) = lane(10, 100);
        // 0.5 s of tokens: 50 of the 500 newest, the newest ones.
        let ms = Duration::from_millis(1);
        assert_eq!(
            l.due(0, 1_501, Duration::ZERO, 2_000, t0 + 500 * ms),
            Some((1_451, 50))
        );
        assert_eq!(l.due(0, 1_501, Duration::ZERO, 2_000, t0 + 500 * ms), None);
        assert_eq!(l.take_skipped(), 450);
        // The bucket holds a second of the rate however long it waited
        // (50/s by now: half the core's share, which acknowledged nothing),
        // given out a batch a call, oldest first.
        let mut sent = Vec::new();
        while let Some(d) = l.due(0, 5_001, Duration::ZERO, 20, t0 + 100_000 * ms) {
            sent.push(d);
        }
        assert_eq!(sent, [(4_951, 20), (4_971, 20), (4_991, 10)]);
        assert_eq!(l.take_skipped(), 4_951 - 1_501);
        assert_eq!(l.take_skipped(), 0);
        // Off.
        let (mut off, t0) = lane(0, 100);
        assert_eq!(
            off.due(1, 1_000_000, Duration::ZERO, 2_000, t0 + 1_000 * ms),
            None
        );
    }

    /// A lane as configured by default behind a million-event backlog, for
    /// `steps` of 10 ms: each step the core acknowledges 80 events (8,000/s,
    /// a share of 2,000/s) and 50 new ones arrive (5,000/s); the sender's
    /// loop asks for what is due (until nothing is) at every step but the
    /// `held` ones. The seqs sent on the lane, and the next seq.
    fn behind_a_backlog(
        steps: u64,
        max_batch: usize,
        held: impl Fn(u64) -> bool,
    ) -> (Vec<u64>, u64) {
        let cfg = SenderConfig {
            live_lane_after: 10,
            live_lane_max_rate: 25_000,
            live_lane_max_share: 0.25,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut l = LiveLane::new(&cfg, 1_000_001, t0);
        let (mut acked, mut newest) = (0, 1_000_001);
        let mut lane_sent = Vec::new();
        for step in 1..=steps {
            acked += 80;
            newest += 50;
            if held(step) {
                continue;
            }
            let now = t0 + Duration::from_millis(10 * step);
            while let Some((first, n)) = l.due(acked, newest, Duration::ZERO, max_batch, now) {
                assert!(n <= max_batch);
                lane_sent.extend(first..first + n as u64);
            }
        }
        (lane_sent, newest)
    }

    /// Every event that arrived after the lane's first 0.2 s (when it has
    /// learned the rates) up to `newest` was sent on it, once.
    fn assert_every_new_event_went_live_once(lane_sent: &[u64], newest: u64) {
        let from = 1_000_001 + 20 * 50;
        let missed = (from..newest).filter(|s| !lane_sent.contains(s)).count();
        assert_eq!(missed, 0, "{missed} new events left to the backlog");
        let mut uniq = lane_sent.to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), lane_sent.len(), "an event sent twice");
    }

    #[test]
    fn the_live_lane_keeps_up_with_new_events_beyond_its_share() {
        // The core's share (2,000/s) is less than what arrives (5,000/s):
        // every new event goes live all the same, once.
        let (lane_sent, newest) = behind_a_backlog(200, 4_096, |_| false);
        assert_every_new_event_went_live_once(&lane_sent, newest);
        let ms = Duration::from_millis(1);
        // Capped by max_rate all the same.
        let (mut l, t0) = lane(10, 1_000);
        let mut sent = 0;
        for step in 1..=100u64 {
            if let Some((_, n)) = l.due(
                0,
                1_000 + step * 500,
                Duration::ZERO,
                4_096,
                t0 + 10 * step as u32 * ms,
            ) {
                sent += n;
            }
        }
        assert!(sent <= 1_100, "sent {sent} in 1 s at max_rate 1,000");
    }

    #[test]
    fn what_a_byte_limit_left_of_a_live_batch_goes_next_with_its_tokens() {
        let (mut l, t0) = lane(10, 100);
        let at = t0 + Duration::from_millis(500);
        assert_eq!(
            l.due(0, 1_501, Duration::ZERO, 2_000, at),
            Some((1_451, 50))
        );
        // Only 10 fitted in the batch's bytes: the other 40 go next, at once.
        l.sent(1_451, 10);
        assert_eq!(
            l.due(0, 1_501, Duration::ZERO, 2_000, at),
            Some((1_461, 40))
        );
        l.sent(1_461, 40);
        assert_eq!(l.due(0, 1_501, Duration::ZERO, 2_000, at), None);
        assert_eq!(l.take_skipped(), 450);
    }

    #[test]
    fn the_live_lane_passes_over_nothing_its_rate_covers_when_the_loop_was_held_up() {
        // The sender's loop is held up for 600 ms twice (its link's queue
        // full of backlog batches): what arrived meanwhile goes live after
        // it, a batch (2,000) at a time.
        let (lane_sent, newest) = behind_a_backlog(300, 2_000, |step| {
            (100..160).contains(&step) || (200..260).contains(&step)
        });
        assert_every_new_event_went_live_once(&lane_sent, newest);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    // welcome_verdict(watermark, core_digest, acked, next_seq, own_digest)

    #[test]
    fn a_core_behind_what_it_acknowledged_starts_a_new_epoch() {
        assert_eq!(
            welcome_verdict(500, 0, 800, 1001, None),
            Verdict::NewEpoch(TimeTravel::CoreBehind {
                watermark: 500,
                acked: 800
            })
        );
        // A wiped core (nothing for this epoch) is behind too.
        assert!(matches!(
            welcome_verdict(0, 0, 800, 1001, None),
            Verdict::NewEpoch(TimeTravel::CoreBehind { .. })
        ));
    }

    #[test]
    fn a_core_ahead_of_every_assigned_seq_starts_a_new_epoch() {
        assert_eq!(
            welcome_verdict(1500, 0, 1000, 1001, None),
            Verdict::NewEpoch(TimeTravel::CoreAhead {
                watermark: 1500,
                last_assigned: 1000
            })
        );
        assert!(matches!(
            welcome_verdict(1, 0, 0, 1, None),
            Verdict::NewEpoch(TimeTravel::CoreAhead { .. })
        ));
    }

    #[test]
    fn another_event_at_the_core_watermark_starts_a_new_epoch() {
        assert_eq!(
            welcome_verdict(1500, 7, 1000, 1501, Some(9)),
            Verdict::NewEpoch(TimeTravel::OtherEvent {
                watermark: 1500,
                core_digest: 7,
                own_digest: 9
            })
        );
    }

    #[test]
    fn a_matching_or_unknown_digest_resumes_after_the_watermark() {
        let resume = |acked_through| Verdict::Resume { acked_through };
        assert_eq!(welcome_verdict(1500, 9, 1000, 1501, Some(9)), resume(1500));
        assert_eq!(welcome_verdict(1500, 0, 1000, 1501, Some(9)), resume(1500));
        assert_eq!(welcome_verdict(1200, 9, 1000, 1501, Some(9)), resume(1200));
        // Nothing new: the watermark is what the buffer acknowledged.
        assert_eq!(welcome_verdict(1000, 5, 1000, 1501, None), resume(1000));
        assert_eq!(welcome_verdict(0, 0, 0, 1, None), resume(0));
    }
}
