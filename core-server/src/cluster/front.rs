//! The edge front of a cluster node: an agent's batch, decoded and checked
//! by the ingest session as in the embedded core, is split by det_oid
//! partition into one share per partition (empty ones too: every
//! partition's writer sees every seq, see `dedup`), each published to
//! `sightline.in.<p>`; the batch is answered once every share has its
//! publish ack from the stream's quorum, and the agent's watermark is then
//! moved in [`super::WATERMARKS_BUCKET`] (compare-and-set on the revision),
//! where any node reads it at the agent's next Hello.

use std::{collections::HashMap, sync::Arc};

use async_nats::jetstream::{context::PublishAckFuture, kv, message::PublishMessage};
use serde::{Deserialize, Serialize};
use sightline_proto::v1::Rejection;

use super::{
    in_subject,
    nats::{ClusterError, Nats},
    share::{partition_of, ShareEvent, ShareMsg},
};
use crate::dedup::{CommitError, CommitOutcome, CommitRequest, Incoming};

/// Tries of a watermark's compare-and-set before the batch is refused (each
/// failed try re-reads the entry: another node moved it meanwhile).
const WATERMARK_CAS_TRIES: usize = 8;

/// An agent's watermark as kept in [`super::WATERMARKS_BUCKET`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Every seq up to this one is durable in the IN stream.
    pub through: u64,
    /// `sightline_proto::event_digest` of seq `through`'s event (0: unknown).
    pub digest: u64,
}

/// The watermark key of (agent, epoch): the agent id hex-encoded (an agent
/// id may hold dots, which KV keys use as separators).
pub fn watermark_key(agent: &str, epoch: u64) -> String {
    let hex: String = agent.bytes().map(|b| format!("{b:02x}")).collect();
    format!("a{hex}.{epoch}")
}

/// The watermark of (agent, epoch) in [`super::WATERMARKS_BUCKET`] with its
/// revision (`None`: none kept). Read from any replica: one behind answers
/// an older watermark, never a newer one.
pub(crate) async fn read_watermark(
    nats: &Nats,
    agent: &str,
    epoch: u64,
) -> Result<Option<(u64, Watermark)>, ClusterError> {
    let entry = nats
        .watermarks
        .entry(watermark_key(agent, epoch))
        .await
        .map_err(|e| ClusterError::js("bucket sightline_watermarks", e))?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => Some((
            e.revision,
            serde_json::from_slice(&e.value).unwrap_or_default(),
        )),
        _ => None,
    })
}

/// The `Nats-Msg-Id` of a share: the batch's agent, epoch, seqs and the
/// partition, and the sending session's nonce. A share published again in
/// the same session is one message; an agent's resend (a new session) is a
/// new one, and the owner drops what it already applied by seq. (Not
/// deduplicated across sessions on purpose: a session publishes its
/// batches without waiting for the acks of the ones before, so a batch's
/// share may be refused (a stream leader moving) while the next batch's
/// lands; the agent then sends both again, and the later one must not be
/// taken for a duplicate of the message the owner could not apply.)
pub fn share_msg_id(
    agent: &str,
    epoch: u64,
    first_seq: u64,
    count: u64,
    p: u16,
    nonce: u64,
) -> String {
    format!("{agent}/{epoch}/{first_seq}/{count}/{p}/{nonce:x}")
}

/// A batch whose shares are published and whose acks are awaited.
struct Sent {
    acks: Vec<PublishAckFuture>,
    reply: tokio::sync::oneshot::Sender<Result<CommitOutcome, CommitError>>,
    agent: Arc<str>,
    epoch: u64,
    through: u64,
    digest: u64,
    stored: u64,
    rejected: Vec<Rejection>,
}

/// Batches a session may have published and not yet answered, at most.
const SESSION_IN_FLIGHT: usize = 64;

/// One agent session's way into the stream: its batches are published in
/// order as they come, without waiting for the acks of the ones before;
/// one task awaits the acks in order and answers each batch once all its
/// shares are acknowledged — moving the watermark once for all the batches
/// acknowledged together. Dropped with the session (what was published is
/// still answered).
pub struct FrontSession {
    front: Arc<Front>,
    nonce: u64,
    tx: tokio::sync::mpsc::Sender<Sent>,
}

impl FrontSession {
    /// Publishes the batch's shares and queues its answer (`req.reply`);
    /// returns once they are sent (or the session has too many batches
    /// unanswered).
    pub async fn submit(&self, req: CommitRequest) -> Result<(), CommitError> {
        let sent = self.front.publish(req, self.nonce).await?;
        if let Err(tokio::sync::mpsc::error::SendError(sent)) = self.tx.send(sent).await {
            // The acks' task ended on an earlier batch's failure: this one
            // is answered as the batches queued behind that one were.
            let _ = sent.reply.send(Err(earlier_batch_failed()));
        }
        Ok(())
    }
}

fn earlier_batch_failed() -> CommitError {
    CommitError::Store("cluster: an earlier batch of this session failed".into())
}

pub struct Front {
    nats: Nats,
    /// The revisions of the watermark entries this node wrote last, for
    /// the next compare-and-set.
    revisions: std::sync::Mutex<HashMap<String, (u64, Watermark)>>,
}

fn store_err(e: &dyn std::fmt::Display) -> CommitError {
    CommitError::Store(format!("cluster: {e}"))
}

impl Front {
    pub fn new(nats: Nats) -> Arc<Front> {
        Arc::new(Front {
            nats,
            revisions: Default::default(),
        })
    }

    /// The agent's resume point, on whichever node it last sent to.
    pub async fn watermark(&self, agent: &str, epoch: u64) -> Result<Watermark, ClusterError> {
        Ok(match read_watermark(&self.nats, agent, epoch).await? {
            Some((revision, w)) => {
                self.revisions
                    .lock()
                    .unwrap()
                    .insert(watermark_key(agent, epoch), (revision, w));
                w
            }
            None => Watermark::default(),
        })
    }

    /// A session's front: see [`FrontSession`].
    pub fn session(self: &Arc<Self>) -> FrontSession {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Sent>(SESSION_IN_FLIGHT);
        let front = self.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut ready = vec![first];
                while let Ok(more) = rx.try_recv() {
                    ready.push(more);
                }
                if !front.settle(ready).await {
                    // The batches after a failed one are answered as failed
                    // too: the session ends and the agent sends them again.
                    rx.close();
                    while let Some(s) = rx.recv().await {
                        let _ = s.reply.send(Err(earlier_batch_failed()));
                    }
                    return;
                }
            }
        });
        FrontSession {
            front: self.clone(),
            nonce: rand::random(),
            tx,
        }
    }

    /// Publishes the batch's shares and answers `req.reply` once every one
    /// is acknowledged and the watermark moved (one batch at a time; a
    /// session uses [`Front::session`]).
    pub async fn submit(&self, req: CommitRequest) -> Result<(), CommitError> {
        let sent = self.publish(req, rand::random()).await?;
        self.settle(vec![sent]).await;
        Ok(())
    }

    /// Splits the batch into one share per partition and sends them.
    async fn publish(&self, req: CommitRequest, nonce: u64) -> Result<Sent, CommitError> {
        let CommitRequest {
            agent,
            epoch,
            first_seq,
            events,
            last_digest,
            reply,
        } = req;
        let n = self.nats.partitions;
        let count = events.len() as u64;
        let mut rejected = Vec::new();
        let mut split: Vec<Vec<ShareEvent>> = (0..n).map(|_| Vec::new()).collect();
        for ev in events {
            if let Incoming::Invalid {
                event,
                field,
                reason,
                code,
                ..
            } = &ev
            {
                rejected.push(Rejection {
                    seq: event.as_ref().map(|e| e.seq).unwrap_or_default(),
                    detection_oid: event
                        .as_ref()
                        .and_then(|e| e.detection.as_ref())
                        .and_then(|d| d.detection_oid),
                    field: field.clone(),
                    reason: reason.clone(),
                    code: code.to_string(),
                });
            }
            split[partition_of(&ev, n) as usize].push(ShareEvent::from_incoming(ev));
        }
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(n as usize);
        for (p, events) in split.into_iter().enumerate() {
            let p = p as u16;
            let share = ShareMsg {
                agent: agent.to_string(),
                epoch,
                first_seq,
                count,
                last_digest,
                events,
            };
            let msg = PublishMessage::build()
                .payload(share.encode_bytes())
                .message_id(share_msg_id(&agent, epoch, first_seq, count, p, nonce));
            let ack = self
                .nats
                .js
                .send_publish(in_subject(p), msg)
                .await
                .map_err(|e| store_err(&e))?;
            acks.push(ack);
        }
        Ok(Sent {
            acks,
            reply,
            agent,
            epoch,
            through: (first_seq + count).saturating_sub(1),
            digest: last_digest,
            stored: count - rejected.len() as u64,
            rejected,
        })
    }

    /// Awaits the acks of `batches` (one session's, in order), moves the
    /// watermark past the last of them and answers each. `false`: one
    /// failed (it and every later one are answered with the error).
    async fn settle(&self, batches: Vec<Sent>) -> bool {
        let mut acked = Vec::with_capacity(batches.len());
        let mut failed = None;
        for mut b in batches {
            if failed.is_none() {
                for (partition, ack) in std::mem::take(&mut b.acks).into_iter().enumerate() {
                    match ack.await {
                        Ok(a) if a.duplicate => {
                            // A share's id is unique to its session, which
                            // publishes it once: the stream had it already.
                            tracing::warn!(partition, stream_seq = a.sequence, agent = %b.agent, through = b.through, "a share was acknowledged as a duplicate");
                        }
                        Ok(a) => {
                            tracing::trace!(partition, stream_seq = a.sequence, agent = %b.agent, through = b.through, "share acknowledged")
                        }
                        Err(e) => {
                            failed = Some(store_err(&e));
                            break;
                        }
                    }
                }
            }
            match &failed {
                None => acked.push(b),
                Some(e) => {
                    let _ = b.reply.send(Err(e.clone()));
                }
            }
        }
        if let Some(last) = acked.last() {
            let to = Watermark {
                through: last.through,
                digest: last.digest,
            };
            match self.advance(&last.agent, last.epoch, to).await {
                Ok(_) => {
                    for b in acked {
                        let _ = b.reply.send(Ok(CommitOutcome {
                            committed_through: b.through,
                            stored: b.stored,
                            rejected: b.rejected,
                            ..Default::default()
                        }));
                    }
                }
                Err(e) => {
                    for b in acked {
                        let _ = b.reply.send(Err(store_err(&e)));
                    }
                    return false;
                }
            }
        }
        failed.is_none()
    }

    /// Moves the watermark of (agent, epoch) up to `to` (never down) by
    /// compare-and-set; returns the watermark now kept.
    pub async fn advance(
        &self,
        agent: &str,
        epoch: u64,
        to: Watermark,
    ) -> Result<Watermark, ClusterError> {
        let key = watermark_key(agent, epoch);
        let kv = &self.nats.watermarks;
        let what = "bucket sightline_watermarks";
        let value = bytes::Bytes::from(serde_json::to_vec(&to).expect("json"));
        let cached = self.revisions.lock().unwrap().get(&key).copied();
        if let Some((_, cur)) = cached {
            if cur.through >= to.through {
                return Ok(cur);
            }
        }
        let mut known = cached.map(|(rev, _)| rev);
        let mut last_err = String::new();
        for _ in 0..WATERMARK_CAS_TRIES {
            let put = match known {
                Some(rev) => kv
                    .update(&key, value.clone(), rev)
                    .await
                    .map_err(|e| e.to_string()),
                None => kv
                    .create(&key, value.clone())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match put {
                Ok(rev) => {
                    self.revisions.lock().unwrap().insert(key, (rev, to));
                    return Ok(to);
                }
                Err(e) => {
                    // Someone else wrote it (or the write failed): re-read,
                    // and stop if it is ahead.
                    last_err = e;
                    let entry = kv
                        .entry(key.clone())
                        .await
                        .map_err(|e| ClusterError::js(what, e))?;
                    match entry {
                        Some(e) if e.operation == kv::Operation::Put => {
                            let cur: Watermark =
                                serde_json::from_slice(&e.value).unwrap_or_default();
                            if cur.through >= to.through {
                                self.revisions
                                    .lock()
                                    .unwrap()
                                    .insert(key, (e.revision, cur));
                                return Ok(cur);
                            }
                            known = Some(e.revision);
                        }
                        Some(e) => known = Some(e.revision),
                        None => known = None,
                    }
                }
            }
        }
        Err(ClusterError::js(
            what,
            format!(
                "the watermark of {agent:?} epoch {epoch} could not be moved to {} in {WATERMARK_CAS_TRIES} compare-and-set tries (the last refused: {last_err})",
                to.through
            ),
        ))
    }
}
