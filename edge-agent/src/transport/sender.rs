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
use rand::Rng;
use sightline_proto::v1::{agent_message, core_message, AgentMessage, AgentStatus, Batch, Hello};
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
            match self.session(&shutdown, &mut backoff).await {
                Ok(SessionEnd::Shutdown) => return,
                Ok(SessionEnd::NewEpoch) => continue,
                Err(e) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
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
        let welcome = match link.rx.next().await {
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
        backoff.reset();
        tracing::info!(peer = %link.peer, transport = %self.transport.describe(), resume_from, depth = buffer.depth(), "session open");

        let cfg = &self.config;
        let mut cursor = resume_from;
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut appended = buffer.watch_appends();
        let mut status_tick = tokio::time::interval(cfg.status_interval);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if drain_deadline.is_none() {
                appended.borrow_and_update();
                while in_flight.len() < cfg.max_in_flight {
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
                        events,
                    };
                    if let Some(shadow) = &link.shadow {
                        shadow(&batch);
                    }
                    send(&link.tx, agent_message::Msg::Batch(batch)).await?;
                    tracing::trace!(first_seq = cursor, events = n, "batch sent");
                    cursor += n;
                    in_flight.push_back(cursor - 1);
                }
            } else if in_flight.is_empty() {
                return Ok(SessionEnd::Shutdown);
            }
            let window_open = in_flight.len() < cfg.max_in_flight && drain_deadline.is_none();
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
                    while in_flight.front().is_some_and(|&last| last <= ack.committed_through) {
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
                _ = appended.changed(), if window_open => {}
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
        let n = self.buffer.new_epoch().await?;
        self.stats.epochs_started.fetch_add(1, Ordering::Relaxed);
        let text = format!(
            "new epoch {:016x} (was {:016x}): {why}; this buffer had acknowledged through seq {acked} and assigned up to {}; {} held events renumbered 1..={} and resent (the core drops those it has by det_oid)",
            n.epoch,
            n.old_epoch,
            next_seq - 1,
            n.renumbered,
            n.renumbered
        );
        tracing::warn!(
            old_epoch = n.old_epoch,
            epoch = n.epoch,
            agent_acked = acked,
            agent_last_seq = next_seq - 1,
            renumbered = n.renumbered,
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
