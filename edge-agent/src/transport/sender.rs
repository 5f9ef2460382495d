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
        let resume_from = match link.rx.next().await {
            Some(Ok(m)) => match m.msg {
                Some(core_message::Msg::Welcome(w)) => w.resume_from,
                other => {
                    return Err(SessionError::Protocol(format!(
                        "expected Welcome first, got {other:?}"
                    )))
                }
            },
            Some(Err(e)) => return Err(e.into()),
            None => return Err(LinkError::Broken("core closed before Welcome".into()).into()),
        };
        let next_seq = buffer.next_seq();
        if resume_from == 0 || resume_from > next_seq {
            return Err(SessionError::Protocol(format!(
                "core says resume from seq {resume_from}, but this buffer (epoch {}) has only assigned up to {}",
                buffer.epoch(),
                next_seq - 1
            )));
        }
        // Everything below resume_from is durable at the core.
        buffer.ack_through(resume_from - 1)?;
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
}
