//! Where detections come from: [`intake`] (the detector on the host, over
//! local gRPC), [`replay`] (Dataset A from a file) and [`simulate`]
//! (synthetic cameras). All of them hand detections to a [`Publisher`], which
//! validates them, stamps missing det_oids and appends them to the buffer.

pub mod intake;
pub mod replay;
pub mod simulate;

use std::{sync::Arc, time::Duration};

use sightline_proto::{v1::Detection, validate_detection, FieldError, Limits};

use crate::{
    buffer::{Appended, Buffer, BufferError, OnFull, SourcePosition},
    capture::Capture,
    config::WhenFull,
    stamp,
};

/// The outcome of publishing one valid detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Durable in the buffer: its det_oid and seq.
    Accepted { detection_oid: i64, seq: u64 },
    /// Not kept: the buffer was full and `when_full = "drop"` (why).
    Dropped(String),
}

/// The outcome of publishing one detection.
pub type ItemResult = Result<Kept, FieldError>;

/// Validates, stamps and appends detections, applying the `when_full` policy.
#[derive(Clone)]
pub struct Publisher {
    pub buffer: Arc<Buffer>,
    pub when_full: WhenFull,
    pub block_timeout: Duration,
    pub limits: Limits,
    /// Cameras that make footage for detections (none: no footage).
    pub capture: Option<Arc<Capture>>,
    /// Counts what is accepted and refused at intake.
    pub metrics: Arc<crate::observe::AgentMetrics>,
}

impl Publisher {
    /// Splits `detections` into valid (stamped) ones and per-item refusals.
    pub fn prepare(&self, detections: Vec<Detection>) -> (Vec<Detection>, Vec<Option<FieldError>>) {
        let now = sightline_proto::now_ms();
        let mut verdicts = Vec::with_capacity(detections.len());
        // Filtered in place: a second vector of a large request's
        // detections would be another large allocation per call.
        let mut valid = detections;
        valid.retain_mut(|d| match validate_detection(d, now, &self.limits, false) {
            Ok(()) => {
                stamp::stamp(d);
                if let Some(c) = &self.capture {
                    c.mark(d);
                }
                verdicts.push(None);
                true
            }
            Err(e) => {
                verdicts.push(Some(e));
                false
            }
        });
        let invalid = verdicts.len() - valid.len();
        if invalid > 0 {
            self.metrics.refused("invalid", invalid as u64);
        }
        (valid, verdicts)
    }

    /// Publishes with the configured `when_full` policy: one result per
    /// detection, or a buffer error for the whole call (nothing kept).
    pub async fn publish(
        &self,
        detections: Vec<Detection>,
        source: Option<SourcePosition>,
    ) -> Result<Vec<ItemResult>, BufferError> {
        let (valid, verdicts) = self.prepare(detections);
        let deadline = tokio::time::Instant::now() + self.block_timeout;
        let oids: Vec<i64> = valid
            .iter()
            .map(|d| d.detection_oid.unwrap_or_default())
            .collect();
        let triggers = self.footage_triggers(&valid);
        let n = valid.len();
        let mut pending = Some(valid);
        let appended = loop {
            // Only the block policy tries again, so only it needs a copy;
            // until its deadline a refusal gives the camera numbers back.
            let (attempt, on_full) = match self.when_full {
                WhenFull::Block if tokio::time::Instant::now() < deadline => {
                    (pending.clone().unwrap_or_default(), OnFull::Retry)
                }
                WhenFull::Block | WhenFull::Backpressure => {
                    (pending.take().unwrap_or_default(), OnFull::Refuse)
                }
                WhenFull::Drop => (pending.take().unwrap_or_default(), OnFull::Drop),
            };
            match self.append_or_full(attempt, source.clone(), on_full).await {
                Err(e @ BufferError::Full { .. }) if on_full == OnFull::Retry => {
                    let _ = tokio::time::timeout_at(deadline, self.buffer.room()).await;
                    tracing::debug!(error = %e, "buffer full, publisher waits");
                    continue;
                }
                Err(e @ BufferError::Full { .. }) if on_full == OnFull::Drop => {
                    tracing::debug!(error = %e, "buffer full, detections dropped");
                    self.metrics.refused("dropped_buffer_full", n as u64);
                    return Ok(dropped(verdicts, &e.to_string()));
                }
                other => {
                    self.count(n, &other);
                    break other?;
                }
            }
        };
        self.trigger_footage(&triggers, appended.is_some());
        Ok(merge(verdicts, &oids, appended))
    }

    /// Publishes and waits for room as long as it takes (for sources that read
    /// a file or generate events: they slow down, they never drop).
    pub async fn publish_waiting(
        &self,
        detections: Vec<Detection>,
        source: Option<SourcePosition>,
    ) -> Result<Vec<ItemResult>, BufferError> {
        let (valid, verdicts) = self.prepare(detections);
        let oids: Vec<i64> = valid
            .iter()
            .map(|d| d.detection_oid.unwrap_or_default())
            .collect();
        let triggers = self.footage_triggers(&valid);
        loop {
            match self
                .append_or_full(valid.clone(), source.clone(), OnFull::Retry)
                .await
            {
                // A full disk is waited out too: the buffer recovers by itself.
                Err(
                    BufferError::Full { .. }
                    | BufferError::DiskFull { .. }
                    | BufferError::DiskFault { .. },
                ) => {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), self.buffer.room()).await;
                }
                other => {
                    self.count(valid.len(), &other);
                    let appended = other?;
                    self.trigger_footage(&triggers, appended.is_some());
                    return Ok(merge(verdicts, &oids, appended));
                }
            }
        }
    }

    /// (camera, det_oid, timestamp) of the detections that get footage.
    fn footage_triggers(&self, valid: &[Detection]) -> Vec<(i64, i64, i64)> {
        match &self.capture {
            None => Vec::new(),
            Some(_) => valid
                .iter()
                .filter(|d| !d.media_expected.is_empty())
                .map(|d| {
                    (
                        d.video_camera_oid,
                        d.detection_oid.unwrap_or_default(),
                        d.timestamp_detected,
                    )
                })
                .collect(),
        }
    }

    /// Footage is asked for only once the events are durable.
    fn trigger_footage(&self, triggers: &[(i64, i64, i64)], appended: bool) {
        if let (Some(c), true) = (&self.capture, appended) {
            c.trigger(triggers);
        }
    }

    async fn append_or_full(
        &self,
        valid: Vec<Detection>,
        source: Option<SourcePosition>,
        on_full: OnFull,
    ) -> Result<Option<Appended>, BufferError> {
        if valid.is_empty() && source.is_none() {
            return Ok(None);
        }
        self.buffer
            .append_with(valid, source, on_full)
            .await
            .map(Some)
    }

    /// Counts the final outcome of appending `n` valid detections.
    fn count(&self, n: usize, r: &Result<Option<Appended>, BufferError>) {
        match r {
            Ok(_) => {
                self.metrics.intake_accepted.inc_by(n as u64);
            }
            Err(e) => self.metrics.refused(refusal_reason(e), n as u64),
        }
    }
}

/// The `reason` label of an append the buffer refused.
fn refusal_reason(e: &BufferError) -> &'static str {
    match e {
        BufferError::Full { .. } => "buffer_full",
        BufferError::DiskFull { .. } => "disk_full",
        BufferError::DiskFault { .. } => "disk_fault",
        BufferError::Closed => "closed",
        _ => "buffer_error",
    }
}

/// The results of a call whose valid detections were all dropped.
fn dropped(verdicts: Vec<Option<FieldError>>, why: &str) -> Vec<ItemResult> {
    verdicts
        .into_iter()
        .map(|v| match v {
            Some(e) => Err(e),
            None => Ok(Kept::Dropped(why.to_string())),
        })
        .collect()
}

fn merge(
    verdicts: Vec<Option<FieldError>>,
    oids: &[i64],
    appended: Option<Appended>,
) -> Vec<ItemResult> {
    let mut seq = appended.map(|a| a.first_seq).unwrap_or(0);
    let mut oid = oids.iter();
    verdicts
        .into_iter()
        .map(|v| match v {
            Some(e) => Err(e),
            None => {
                let r = Ok(Kept::Accepted {
                    detection_oid: *oid.next().expect("one oid per valid detection"),
                    seq,
                });
                seq += 1;
                r
            }
        })
        .collect()
}
