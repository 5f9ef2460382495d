//! Ingest: one session logic for every transport. A transport adapter (see
//! [`grpc`]) only turns its connection into a stream of [`AgentMessage`]s in
//! and a channel of [`CoreMessage`]s out, then calls [`IngestCore::run_session`].
//!
//! The protocol this keeps is written down in `ingest/PROTOCOL.md`.

pub mod grpc;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost::Message;
use sightline_proto::{
    v1::{agent_message, core_message, Ack, AgentMessage, Batch, CoreMessage, EdgeEvent, Welcome},
    validate_agent_id, validate_detection, ApiError, Code, Limits,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    dedup::{CommitError, CommitOutcome, CommitRequest, Incoming, Pipeline},
    edge::{
        registry::{Grant, Registry, SessionRefusal},
        Peer,
    },
    fleet::Fleet,
    metrics::Metrics,
    store::Store,
};

/// What every session needs.
pub struct IngestCore {
    pub pipeline: Pipeline,
    pub store: Arc<Store>,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// `retention.events`: an event detected longer ago than this is refused
    /// (quarantined as too old) instead of stored and silently cut by the
    /// next retention pass.
    pub max_event_age: Duration,
    pub hello_timeout: Duration,
    /// Which cameras each agent may publish for; revocations.
    pub registry: Arc<Registry>,
    /// Cancelled on shutdown: sessions stop taking batches and finish.
    pub shutdown: CancellationToken,
    /// Cluster mode: batches go to the edge front (published to the IN
    /// stream, PROTOCOL.md "Cluster mode") instead of `pipeline`, and
    /// watermarks come from the cluster. `None`: the embedded core.
    pub front: Option<Arc<crate::cluster::front::Front>>,
    /// `ingest.read_ahead_bytes` and `ingest.read_ahead_total_bytes`.
    pub read_ahead: ReadAhead,
}

/// How much a session reads of its transport ahead of the batch it is
/// handing to the partition queues: per session, and for all together.
#[derive(Clone)]
pub struct ReadAhead {
    per_session: u32,
    total: Arc<tokio::sync::Semaphore>,
    total_permits: u32,
}

impl ReadAhead {
    /// `per_session` and `total` bytes (each at most 4 GiB - 1).
    pub fn new(per_session: u64, total: u64) -> Self {
        let clamp = |v: u64| v.min(u64::from(u32::MAX)) as u32;
        Self {
            per_session: clamp(per_session),
            total: Arc::new(tokio::sync::Semaphore::new(clamp(total) as usize)),
            total_permits: clamp(total),
        }
    }
}

/// The read-ahead budget a message holds until the session's loop has
/// handed it on: the session's, and the core's when it had room.
type Budget = (
    tokio::sync::OwnedSemaphorePermit,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// What a session's reader hands its loop, in the transport's order (the
/// live lane's batches excepted: the reader commits those itself).
enum Ahead {
    Msg(AgentMessage, Budget),
    /// The transport broke or refused a message.
    Broken(Status),
    /// The agent closed the stream.
    Closed,
    /// A live batch could not be committed: the session ends, with this.
    End(Option<Status>),
}

type Out = mpsc::Sender<Result<CoreMessage, Status>>;

impl IngestCore {
    /// Runs one agent session until the agent leaves, the link breaks, a newer
    /// session replaces it, or the core shuts down.
    ///
    /// `shadow`: best-effort copies of the agent's batches that came apart
    /// from `inbound` (QUIC datagrams), each a run of a batch's seqs. A copy
    /// is committed when its seqs are the next ones (one that comes ahead
    /// waits, among a few); what copies committed is then skipped when the
    /// batch arrives on `inbound`, its ack being the copies'.
    pub async fn run_session<S>(
        self: Arc<Self>,
        peer: Peer,
        mut inbound: S,
        mut shadow: Option<mpsc::Receiver<AgentMessage>>,
        out: Out,
    ) where
        S: Stream<Item = Result<AgentMessage, Status>> + Unpin + Send,
    {
        let hello = match tokio::time::timeout(self.hello_timeout, inbound.next()).await {
            Ok(Some(Ok(AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            }))) => h,
            Ok(Some(Ok(other))) => {
                let _ = out
                    .send(Err(ApiError::invalid(format!(
                        "the first message must be Hello, got {:?}",
                        other.msg.map(|m| kind(&m))
                    ))
                    .into()))
                    .await;
                return;
            }
            Ok(Some(Err(s))) => {
                tracing::debug!(peer = %peer.addr, status = %s, "session broke before Hello");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                let _ = out
                    .send(Err(ApiError::new(
                        Code::DeadlineExceeded,
                        "no Hello in time",
                    )
                    .into()))
                    .await;
                return;
            }
        };
        if let Err(e) = validate_agent_id(&hello.agent_id) {
            let _ = out.send(Err(e.into())).await;
            return;
        }
        if let Err(status) = self.admit(&peer, &hello.agent_id) {
            let _ = out.send(Err(status)).await;
            return;
        }
        let agent: Arc<str> = hello.agent_id.as_str().into();
        let epoch = hello.epoch;
        let store = self.store.clone();
        let (a, e) = (agent.clone(), epoch);
        let resume = match &self.front {
            None => tokio::task::spawn_blocking(move || store.watermark_digest(&a, e)).await,
            Some(front) => Ok(front
                .watermark(&a, e)
                .await
                .map(|w| (w.through, w.digest))
                .map_err(|e| crate::store::StoreError::Unavailable(e.to_string()))),
        };
        let (wm, digest) = match resume {
            Ok(Ok(wm)) => wm,
            Ok(Err(e)) => {
                let _ = out.send(Err(e.into())).await;
                return;
            }
            Err(e) => {
                let _ = out
                    .send(Err(ApiError::internal(e.to_string()).into()))
                    .await;
                return;
            }
        };
        let (session_id, kicked) = self.fleet.connect(&hello, &peer, wm);
        self.metrics.sessions.inc();
        if peer.identity.is_none() {
            tracing::warn!(%agent, epoch, peer = %peer.addr, link = peer.link, resume_from = wm + 1,
                "agent session open over PLAINTEXT: its identity is only what it claims (edge.plaintext is for local demos)");
        } else {
            tracing::info!(%agent, epoch, peer = %peer.addr, link = peer.link, transport = %hello.transport, resume_from = wm + 1, "agent session open");
        }
        let welcome = CoreMessage {
            msg: Some(core_message::Msg::Welcome(Welcome {
                resume_from: wm + 1,
                committed_digest: digest,
            })),
        };
        if out.send(Ok(welcome)).await.is_err() {
            self.fleet.disconnect(&agent, session_id);
            return;
        }

        // Acks go out in order from their own task, as commits complete.
        let (tx, pending_rx) = mpsc::channel::<PendingCommit>(64);
        let pending_tx = Pending {
            tx,
            front: self.front.as_ref().map(|f| f.session()),
        };
        let failed = CancellationToken::new();
        let acker = tokio::spawn(ack_loop(
            pending_rx,
            out.clone(),
            self.fleet.clone(),
            self.metrics.clone(),
            agent.clone(),
            failed.clone(),
        ));

        // The first seq not yet handed to the pipeline in this session; the
        // shadow copies that came ahead of it (their turn comes when the
        // batches before them arrive, by either path); the runs of seqs
        // committed from copies (first -> end), for their stream batch to skip.
        let mut next_seq = wm + 1;
        let mut ahead: BTreeMap<u64, Batch> = BTreeMap::new();
        let mut copied: BTreeMap<u64, u64> = BTreeMap::new();
        // The transport is read by its own future, beside the loop: while
        // the loop waits for room in the partition queues (a backlog
        // draining), the batches behind are read ahead (within
        // `ingest.read_ahead_*`), and a live-lane batch among them goes to
        // the writers' live queues at once instead of after them.
        let (ahead_tx, mut from_reader) = mpsc::channel::<Ahead>(READ_AHEAD_MESSAGES);
        let reader = async {
            self.read_ahead(&agent, epoch, inbound, ahead_tx).await;
            // What it sent last ends the loop, which ends the select below.
            std::future::pending::<()>().await
        };
        let session = async {
            loop {
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => break Some(ApiError::unavailable("the core is shutting down; reconnect later").into()),
                    Some(copy) = recv_shadow(&mut shadow) => {
                        let Some(agent_message::Msg::Batch(b)) = copy.msg else { continue };
                        let last = b.first_seq + b.events.len() as u64;
                        if b.events.is_empty() || last <= next_seq {
                            continue; // the other path was first
                        }
                        if ahead.len() < MAX_AHEAD_COPIES {
                            ahead.insert(b.first_seq, b);
                        }
                        if let Err(end) = self.commit_copies(&agent, epoch, &mut next_seq, &mut ahead, &mut copied, &pending_tx).await {
                            break end;
                        }
                    }
                    _ = kicked.cancelled() => break Some(if self.registry.is_revoked(&agent) {
                        tracing::warn!(%agent, "agent revoked: its session is closed");
                        ApiError::permission_denied(format!("agent {agent:?} was revoked; its session is closed")).into()
                    } else {
                        ApiError::new(Code::Aborted, "a newer session of this agent replaced this one").into()
                    }),
                    _ = failed.cancelled() => break None,
                    item = from_reader.recv() => match item {
                        None | Some(Ahead::Closed) => break None,
                        Some(Ahead::End(end)) => break end,
                        Some(Ahead::Broken(s)) => {
                            // A broken link, or a message the transport refused
                            // (too large, not decodable): say why, if anyone listens.
                            tracing::debug!(%agent, status = %s, "session stream ended with an error");
                            break Some(s);
                        }
                        Some(Ahead::Msg(AgentMessage { msg: None }, _)) => {
                            break Some(ApiError::invalid("empty AgentMessage").into());
                        }
                        // The message holds its read-ahead budget until the
                        // loop has handed it on (a batch: queued to commit).
                        Some(Ahead::Msg(AgentMessage { msg: Some(m) }, _budget)) => match m {
                            agent_message::Msg::Hello(_) => {
                                break Some(ApiError::invalid("Hello may only come first").into());
                            }
                            agent_message::Msg::Status(s) => {
                                self.fleet.status(&agent, s);
                            }
                            // The reader commits these itself and never hands them on.
                            agent_message::Msg::Live(_) => {}
                            agent_message::Msg::Batch(b) => {
                                // What shadow copies committed already is skipped
                                // (its acks were theirs); the runs of later
                                // batches stay for them.
                                let mut from = b.first_seq;
                                let last = b.first_seq + b.events.len() as u64;
                                while from < last {
                                    let Some(end) = copied.remove(&from) else { break };
                                    from = end;
                                }
                                copied.retain(|&first, _| first >= from);
                                let Some(b) = unseen(b, from) else { continue };
                                next_seq = next_seq.max(b.first_seq + b.events.len() as u64);
                                let checked = match self.check_batch(&agent, b) {
                                    Ok(x) => x,
                                    Err(s) => break Some(s),
                                };
                                if let Err(end) = self.commit(&agent, epoch, checked, &pending_tx).await {
                                    break end;
                                }
                                if let Err(end) = self.commit_copies(&agent, epoch, &mut next_seq, &mut ahead, &mut copied, &pending_tx).await {
                                    break end;
                                }
                                // The reader shares this task: while batches
                                // ahead come ready one after another it would
                                // be polled only when the queues are full, and
                                // a live batch behind them would wait for
                                // their decoding. It is polled after each.
                                tokio::task::yield_now().await;
                            }
                        },
                    },
                }
            }
        };
        let end: Option<Status> = tokio::select! {
            end = session => end,
            () = reader => None,
        };
        // Let the commits in flight finish and their acks go out, then close.
        drop(pending_tx);
        let _ = acker.await;
        if let Some(status) = end {
            let _ = out.send(Err(status)).await;
        }
        self.fleet.disconnect(&agent, session_id);
        tracing::info!(%agent, epoch, "agent session closed");
    }
}

/// A batch after [`IngestCore::check_batch`].
struct Checked {
    first_seq: u64,
    events: Vec<Incoming>,
    last_digest: u64,
    /// The agent-side times of its valid events, for the hop metrics.
    times: Vec<EventTimes>,
}

/// When an event was detected, stamped and made durable at the agent (epoch
/// ms; `durable_ms` 0: unknown), observed as hops once its commit is acknowledged.
#[derive(Debug, Clone, Copy)]
struct EventTimes {
    detected_ms: i64,
    accepted_ms: i64,
    durable_ms: i64,
}

impl EventTimes {
    /// The times of a batch's valid events (`durable_after_ms` is used only
    /// when it has one figure per event).
    fn of(events: &[Incoming], durable_after_ms: &[u32]) -> Vec<EventTimes> {
        let durable = (durable_after_ms.len() == events.len()).then_some(durable_after_ms);
        events
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let Incoming::Valid(ev) = e else { return None };
                let d = ev.detection.as_ref()?;
                Some(EventTimes {
                    detected_ms: d.timestamp_detected,
                    accepted_ms: ev.accepted_ms,
                    durable_ms: durable.map_or(0, |a| ev.accepted_ms + i64::from(a[i])),
                })
            })
            .collect()
    }

    /// Observes the agent-side hops and the wait until the commit acknowledged at `now_ms`.
    fn observe(times: &[EventTimes], metrics: &Metrics, now_ms: i64) {
        if times.is_empty() {
            return;
        }
        use crate::metrics::hop;
        let (detected, durable, committed) = (
            metrics.hop(hop::DETECTED_TO_STAMPED),
            metrics.hop(hop::STAMPED_TO_DURABLE),
            metrics.hop(hop::DURABLE_TO_COMMITTED),
        );
        for t in times {
            Metrics::observe_hop_ms(&detected, t.accepted_ms - t.detected_ms);
            if t.durable_ms != 0 {
                Metrics::observe_hop_ms(&durable, t.durable_ms - t.accepted_ms);
                Metrics::observe_hop_ms(&committed, now_ms - t.durable_ms);
            }
        }
    }
}

/// A commit on its way, and the times of its events.
type PendingCommit = (
    oneshot::Receiver<Result<CommitOutcome, CommitError>>,
    Vec<EventTimes>,
);
/// Where a session's commits go: the acker's queue, and in cluster mode
/// the session's way into the stream.
struct Pending {
    tx: mpsc::Sender<PendingCommit>,
    front: Option<crate::cluster::front::FrontSession>,
}

/// Shadow copies kept while they wait for the batches before them.
const MAX_AHEAD_COPIES: usize = 64;

/// The part of a batch from seq `from` on (a batch MAY overlap what the other
/// path delivered: copies are cut to datagram size), or `None` if nothing is
/// left. A batch that starts past `from` is returned whole.
fn unseen(mut b: Batch, from: u64) -> Option<Batch> {
    let n = b.events.len() as u64;
    if b.first_seq + n <= from && n > 0 {
        return None;
    }
    if b.first_seq < from {
        b.events.drain(..(from - b.first_seq) as usize);
        b.first_seq = from;
    }
    Some(b)
}

/// Messages a session's reader may hold for its loop, besides the byte
/// budget (an agent keeps at most 64 batches in flight by default).
const READ_AHEAD_MESSAGES: usize = 64;

impl IngestCore {
    /// Reads the session's transport until it ends, handing the loop every
    /// message in order but the live lane's batches, which it commits at
    /// once ([`IngestCore::commit_live`]). A message waits for its encoded
    /// size in the session's and the core's read-ahead budgets before the
    /// next is read: past them (or with read-ahead off), the transport is
    /// read no faster than the loop takes batches.
    async fn read_ahead<S>(
        &self,
        agent: &Arc<str>,
        epoch: u64,
        mut inbound: S,
        to_loop: mpsc::Sender<Ahead>,
    ) where
        S: Stream<Item = Result<AgentMessage, Status>> + Unpin + Send,
    {
        let ra = &self.read_ahead;
        // Read-ahead off (0): a budget of one, which every message takes
        // whole, so the next is read only once the loop has handed it on.
        let per_session = ra.per_session.max(1);
        let shared = ra.per_session > 0 && ra.total_permits > 0;
        let session = Arc::new(tokio::sync::Semaphore::new(per_session as usize));
        use crate::metrics::reader_held;
        // Looked up once: each message observes one.
        let by_live_queue = self.metrics.reader_held(reader_held::LIVE_QUEUE);
        let by_read_ahead = self.metrics.reader_held(reader_held::READ_AHEAD);
        let by_session_loop = self.metrics.reader_held(reader_held::SESSION_LOOP);
        let held = |h: &prometheus_client::metrics::histogram::Histogram,
                    since: std::time::Instant| {
            h.observe(since.elapsed().as_secs_f64());
        };
        loop {
            let item = match inbound.next().await {
                None => Ahead::Closed,
                Some(Err(s)) => Ahead::Broken(s),
                Some(Ok(AgentMessage {
                    msg: Some(agent_message::Msg::Live(b)),
                })) => {
                    let since = std::time::Instant::now();
                    let done = self.commit_live(agent, epoch, b).await;
                    held(&by_live_queue, since);
                    match done {
                        Ok(()) => continue,
                        Err(end) => Ahead::End(end),
                    }
                }
                Some(Ok(m)) => {
                    let since = std::time::Instant::now();
                    let bytes = m.encoded_len().clamp(1, u32::MAX as usize) as u32;
                    let Ok(mut mine) = session
                        .clone()
                        .acquire_many_owned(bytes.min(per_session))
                        .await
                    else {
                        return; // never closed
                    };
                    // The core-wide budget is never waited for: other
                    // sessions may hold it as long as their agents do not
                    // read their acks. Without it, the message takes the
                    // session's whole budget, so the next one is read only
                    // once the loop has handed this one on — as without
                    // read-ahead, never less.
                    let all = shared
                        .then(|| {
                            ra.total
                                .clone()
                                .try_acquire_many_owned(bytes.min(ra.total_permits))
                                .ok()
                        })
                        .flatten();
                    if all.is_none() {
                        let rest = per_session - mine.num_permits() as u32;
                        match session.clone().acquire_many_owned(rest).await {
                            Ok(p) => mine.merge(p),
                            Err(_) => return,
                        }
                    }
                    held(&by_read_ahead, since);
                    Ahead::Msg(m, (mine, all))
                }
            };
            let last = !matches!(item, Ahead::Msg(..));
            let since = std::time::Instant::now();
            if to_loop.send(item).await.is_err() || last {
                return;
            }
            held(&by_session_loop, since);
        }
    }

    /// A batch's events, decoded and checked (validity, age, and what the
    /// agent may publish); `Err` when the batch itself is malformed.
    fn check_batch(&self, agent: &Arc<str>, mut b: Batch) -> Result<Checked, Status> {
        let last_digest = b
            .events
            .last()
            .map(|e| sightline_proto::event_digest(e))
            .unwrap_or(0);
        let first_seq = b.first_seq;
        let durable_after_ms = std::mem::take(&mut b.durable_after_ms);
        let events = self.decode(agent, b)?;
        let times = EventTimes::of(&events, &durable_after_ms);
        let too_old = events
            .iter()
            .filter(|e| matches!(e, Incoming::Invalid { code, .. } if *code == TOO_OLD))
            .count();
        if too_old > 0 {
            self.metrics.too_old.inc_by(too_old as u64);
        }
        Ok(Checked {
            first_seq,
            events,
            last_digest,
            times,
        })
    }

    /// A batch's events decoded and checked against the limits, the age the
    /// store keeps (counted back from now) and the agent's grant.
    fn decode(&self, agent: &Arc<str>, b: Batch) -> Result<Vec<Incoming>, Status> {
        let grant = self.registry.grant(agent);
        let oldest_ms =
            sightline_proto::now_ms().saturating_sub(self.max_event_age.as_millis() as i64);
        decode_batch(
            b.first_seq,
            b.events,
            &self.limits,
            oldest_ms,
            Some(agent).zip(grant.as_deref()),
        )
    }

    /// Hands a batch to the pipeline and its commit to the acker. `Err` ends
    /// the session, with the status to send if any.
    async fn commit(
        &self,
        agent: &Arc<str>,
        epoch: u64,
        batch: Checked,
        pending: &Pending,
    ) -> Result<(), Option<Status>> {
        let Checked {
            first_seq,
            events,
            last_digest,
            times,
        } = batch;
        tracing::trace!(first_seq, events = events.len(), "batch to commit");
        let (reply, rx) = oneshot::channel();
        let req = CommitRequest {
            agent: agent.clone(),
            epoch,
            first_seq,
            events,
            last_digest,
            reply,
        };
        match &pending.front {
            None => self.pipeline.submit(req).await,
            Some(front) => front.submit(req).await,
        }
        .map_err(|e| Some(ApiError::unavailable(e.to_string()).into()))?;
        pending.tx.send((rx, times)).await.map_err(|_| None)
    }

    /// Hands the live lane's events (PROTOCOL.md rule 6b) to the writers'
    /// live queues: the valid ones whose det_oid is new are stored at once;
    /// the rest wait for the batch that brings their seqs in order, which
    /// acknowledges, counts or quarantines them. A malformed batch ends the
    /// session as a Batch would.
    async fn commit_live(
        &self,
        agent: &Arc<str>,
        epoch: u64,
        b: Batch,
    ) -> Result<(), Option<Status>> {
        // Cluster mode: the live lane's events come again, in order, with
        // the backlog (PROTOCOL.md, "Cluster mode").
        if b.events.is_empty() || self.front.is_some() {
            return Ok(());
        }
        let first_seq = b.first_seq;
        let events = self.decode(agent, b).map_err(Some)?;
        let now_ms = sightline_proto::now_ms();
        let received = self
            .metrics
            .hop(crate::metrics::hop::STAMPED_TO_LIVE_RECEIVED);
        for e in &events {
            if let Incoming::Valid(ev) = e {
                Metrics::observe_hop_ms(&received, now_ms - ev.accepted_ms);
            }
        }
        tracing::trace!(first_seq, events = events.len(), "live batch");
        self.pipeline
            .submit_live(agent.clone(), epoch, events)
            .await
            .map_err(|e| Some(ApiError::unavailable(e.to_string()).into()))
    }

    /// Commits the shadow copies that are next in line, in order (PROTOCOL.md
    /// rule 6a); drops the ones the stream overtook.
    async fn commit_copies(
        &self,
        agent: &Arc<str>,
        epoch: u64,
        next_seq: &mut u64,
        ahead: &mut BTreeMap<u64, Batch>,
        copied: &mut BTreeMap<u64, u64>,
        pending: &Pending,
    ) -> Result<(), Option<Status>> {
        while let Some(entry) = ahead.first_entry() {
            if *entry.key() > *next_seq {
                break;
            }
            let Some(b) = unseen(entry.remove(), *next_seq) else {
                continue;
            };
            let n = b.events.len() as u64;
            let Ok(checked) = self.check_batch(agent, b) else {
                continue; // the stream's copy will say what is wrong
            };
            let first = checked.first_seq;
            self.commit(agent, epoch, checked, pending).await?;
            *next_seq = first + n;
            copied.insert(first, first + n);
            self.metrics.batches_from_datagrams.inc();
            tracing::trace!(first_seq = first, "that batch came as a datagram copy");
        }
        Ok(())
    }

    /// Whether the agent behind `peer`, whose Hello says `claimed`, may open
    /// a session. Refusals are logged, counted and shown in the fleet view.
    fn admit(&self, peer: &Peer, claimed: &str) -> Result<(), Status> {
        if let Err(status) = peer.refused() {
            tracing::warn!(peer = %peer.addr, claimed, reason = %status.message(), "session refused: no valid client certificate");
            return Err(status);
        }
        let refuse = |agent: &str, reason: &'static str, why: String, revoked: bool| {
            self.metrics.edge_refused(reason);
            self.fleet.refused(agent, &why, revoked);
            tracing::warn!(agent, peer = %peer.addr, link = peer.link, reason = %why, "session refused");
            ApiError::permission_denied(why).into()
        };
        if let Some(cert_id) = peer.agent_id() {
            if cert_id != claimed {
                return Err(refuse(
                    cert_id,
                    "claimed_other_id",
                    format!(
                        "this connection's certificate is for agent {cert_id:?}, but its Hello claims agent {claimed:?}"
                    ),
                    false,
                ));
            }
        }
        match self
            .registry
            .admit(claimed, peer.identity.as_ref().map(|i| i.issued))
        {
            Ok(()) => Ok(()),
            Err(r) => {
                let (reason, revoked) = match r {
                    SessionRefusal::Revoked => ("revoked", true),
                    SessionRefusal::Unregistered => ("unregistered", false),
                    SessionRefusal::RetiredCertificate { .. } => ("retired_certificate", false),
                };
                Err(refuse(claimed, reason, r.explain(claimed), revoked))
            }
        }
    }
}

async fn recv_shadow(shadow: &mut Option<mpsc::Receiver<AgentMessage>>) -> Option<AgentMessage> {
    match shadow {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn kind(m: &agent_message::Msg) -> &'static str {
    match m {
        agent_message::Msg::Hello(_) => "Hello",
        agent_message::Msg::Batch(_) => "Batch",
        agent_message::Msg::Status(_) => "Status",
        agent_message::Msg::Live(_) => "Live",
    }
}

async fn ack_loop(
    mut pending: mpsc::Receiver<PendingCommit>,
    out: Out,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    agent: Arc<str>,
    failed: CancellationToken,
) {
    while let Some((rx, times)) = pending.recv().await {
        let outcome = match rx.await {
            Ok(o) => o,
            Err(_) => Err(CommitError::Store("the commit was dropped".into())),
        };
        match outcome {
            Ok(o) => {
                EventTimes::observe(&times, &metrics, sightline_proto::now_ms());
                fleet.committed(
                    &agent,
                    o.committed_through,
                    o.dup_transport,
                    o.dup_semantic,
                    o.rejected.len() as u64,
                );
                let denied: Vec<_> = o.rejected.iter().filter(|r| r.code == DENIED).collect();
                if let Some(last) = denied.last() {
                    let n = denied.len() as u64;
                    metrics
                        .permission_denied
                        .get_or_create(&Metrics::agent(&agent))
                        .inc_by(n);
                    fleet.denied(&agent, n, &last.reason);
                }
                let ack = Ack {
                    committed_through: o.committed_through,
                    duplicates: o.dup_transport + o.dup_semantic,
                    rejected: o.rejected,
                };
                if out
                    .send(Ok(CoreMessage {
                        msg: Some(core_message::Msg::Ack(ack)),
                    }))
                    .await
                    .is_err()
                {
                    failed.cancel();
                    return;
                }
            }
            Err(e) => {
                let status = match &e {
                    CommitError::Gap { .. } => {
                        ApiError::new(Code::FailedPrecondition, e.to_string())
                    }
                    CommitError::Store(_) => ApiError::unavailable(e.to_string()),
                };
                tracing::warn!(%agent, error = %e, "commit refused; ending the session");
                let _ = out.send(Err(status.into())).await;
                failed.cancel();
                // Drain: later commits may still complete, but no more acks go out.
                while let Some((rx, _)) = pending.recv().await {
                    let _ = rx.await;
                }
                return;
            }
        }
    }
}

/// Decodes and checks a batch's events. A malformed batch (seqs that do not
/// match positions) ends the session; a bad event only goes to quarantine.
/// The code of a refusal for a camera or location not registered to the agent.
pub const DENIED: &str = "PERMISSION_DENIED";
const INVALID: &str = "INVALID_ARGUMENT";
/// The code of a refusal for an event older than the store keeps.
pub const TOO_OLD: &str = "OUT_OF_RANGE";

/// Events detected before `oldest_ms` are refused as OUT_OF_RANGE (the
/// store would not keep them). With `grant`, also checks that the agent may
/// publish for each event's camera and location (refused events go to
/// quarantine as PERMISSION_DENIED).
pub fn decode_batch(
    first_seq: u64,
    raw: Vec<Bytes>,
    limits: &Limits,
    oldest_ms: i64,
    grant: Option<(&Arc<str>, &Grant)>,
) -> Result<Vec<Incoming>, Status> {
    if first_seq == 0 {
        return Err(ApiError::field("first_seq", "seqs start at 1").into());
    }
    let now = sightline_proto::now_ms();
    let mut out = Vec::with_capacity(raw.len());
    for (i, bytes) in raw.into_iter().enumerate() {
        let want = first_seq + i as u64;
        match EdgeEvent::decode(bytes.as_ref()) {
            Err(e) => out.push(Incoming::Invalid {
                event: Some(EdgeEvent {
                    seq: want,
                    ..Default::default()
                }),
                raw: bytes,
                field: "event".into(),
                reason: format!("does not decode as EdgeEvent: {e}"),
                code: INVALID,
            }),
            Ok(ev) => {
                if ev.seq != want {
                    return Err(ApiError::invalid(format!(
                        "batch from seq {first_seq}: event #{i} carries seq {}, expected {want}",
                        ev.seq
                    ))
                    .into());
                }
                let verdict = match &ev.detection {
                    None => Err(("detection".to_string(), "missing".to_string(), INVALID)),
                    Some(d) => validate_detection(d, now, limits, true)
                        .map_err(|e| (e.field.to_string(), e.reason, INVALID))
                        .and_then(|()| {
                            if d.timestamp_detected < oldest_ms {
                                Err((
                                    "timestamp_detected".to_string(),
                                    format!(
                                        "{} is older than the store keeps (retention.events: events detected before {} are deleted); refused rather than stored and silently cut",
                                        d.timestamp_detected, oldest_ms
                                    ),
                                    TOO_OLD,
                                ))
                            } else {
                                Ok(())
                            }
                        })
                        .and_then(|()| match grant {
                            Some((agent, g)) => match g.refuse(agent, d) {
                                Some((field, why)) => Err((field.to_string(), why, DENIED)),
                                None => Ok(()),
                            },
                            None => Ok(()),
                        }),
                };
                match verdict {
                    Ok(()) => out.push(Incoming::Valid(ev)),
                    Err((field, reason, code)) => out.push(Incoming::Invalid {
                        event: Some(ev),
                        raw: Bytes::new(),
                        field,
                        reason,
                        code,
                    }),
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    fn batch(first_seq: u64, n: u8) -> Batch {
        Batch {
            first_seq,
            events: (0..n).map(|i| Bytes::from(vec![i])).collect(),
            ..Default::default()
        }
    }

    fn encoded(seq: u64, ts: i64) -> Bytes {
        EdgeEvent {
            seq,
            detection: Some(sightline_proto::v1::Detection {
                geographical_location_oid: 1,
                video_camera_oid: 1,
                detection_oid: Some(seq as i64),
                item_name: "car".into(),
                timestamp_detected: ts,
                ..Default::default()
            }),
            accepted_ms: ts,
        }
        .encode_to_vec()
        .into()
    }

    #[test]
    fn an_event_older_than_retention_is_refused_as_too_old_not_stored() {
        let now = sightline_proto::now_ms();
        let day = 86_400_000;
        let events = decode_batch(
            1,
            vec![encoded(1, now - 40 * day), encoded(2, now - day)],
            &Limits::default(),
            now - 30 * day,
            None,
        )
        .unwrap();
        match &events[0] {
            Incoming::Invalid {
                field,
                code,
                reason,
                ..
            } => {
                assert_eq!((field.as_str(), *code), ("timestamp_detected", TOO_OLD));
                assert!(reason.contains("retention.events"), "{reason}");
            }
            other => panic!("an event 40 days old was not refused: {other:?}"),
        }
        assert!(matches!(events[1], Incoming::Valid(_)));
    }

    #[test]
    fn a_batch_loses_the_seqs_committed_from_copies() {
        assert!(unseen(batch(10, 5), 15).is_none());
        assert!(unseen(batch(10, 5), 20).is_none());
        let b = unseen(batch(10, 5), 12).unwrap();
        assert_eq!(b.first_seq, 12);
        assert_eq!(
            b.events,
            vec![Bytes::from(vec![2]), vec![3].into(), vec![4].into()]
        );
        // Not yet reached, or ahead of a gap: whole.
        assert_eq!(unseen(batch(10, 5), 10).unwrap().events.len(), 5);
        assert_eq!(unseen(batch(10, 5), 7).unwrap().first_seq, 10);
    }
}
