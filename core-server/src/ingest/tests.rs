//! The session logic in process: an [`IngestCore`] over a real store (in a
//! temporary directory) and a real pipeline of two partitions, driven from
//! memory — no process, no socket. One test per rule of `PROTOCOL.md`, named
//! after the promise the rule makes.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use prost::Message;
use sightline_proto::{
    v1::{
        agent_message, core_message, Ack, AgentGrant, AgentMessage, Batch, CoreMessage, Detection,
        EdgeEvent, Hello, Welcome,
    },
    validate::MAX_DETECTION_BYTES,
    Limits,
};
use tempfile::TempDir;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::{IngestCore, ReadAhead};
use crate::{
    dedup::{Pipeline, WriterContext, CONFLICT},
    edge::{registry::Registry, Identity, Peer, LINK_GRPC_TLS},
    fleet::Fleet,
    metrics::Metrics,
    store::Store,
};

const AGENT: &str = "gate-3";
const EPOCH: u64 = 7;
/// Two, so that every batch is split and every ack waits for both shares.
const PARTITIONS: usize = 2;
/// `retention.events` of the harness.
const RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// How long a test waits for a message before it fails (a healthy session
/// answers in milliseconds; this only turns a hang into a failure).
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing comes" is watched for.
const QUIET: Duration = Duration::from_millis(100);

/// A detection of camera 1 at location 1, now.
fn det(det_oid: i64) -> Detection {
    det_on(det_oid, 1)
}

fn det_on(det_oid: i64, camera: i64) -> Detection {
    Detection {
        geographical_location_oid: 1,
        video_camera_oid: camera,
        detection_oid: Some(det_oid),
        item_name: "person".into(),
        timestamp_detected: sightline_proto::now_ms(),
        ..Default::default()
    }
}

/// Detections of camera 1 with det_oids `from..=to`.
fn dets(from: i64, to: i64) -> Vec<Detection> {
    (from..=to).map(det).collect()
}

/// The agent's bytes of the event at `seq`.
fn encoded(seq: u64, d: Detection) -> Bytes {
    EdgeEvent {
        seq,
        detection: Some(d),
        accepted_ms: sightline_proto::now_ms(),
    }
    .encode_to_vec()
    .into()
}

fn batch_of(first_seq: u64, dets: Vec<Detection>) -> Batch {
    Batch {
        first_seq,
        events: dets
            .into_iter()
            .enumerate()
            .map(|(i, d)| encoded(first_seq + i as u64, d))
            .collect(),
        ..Default::default()
    }
}

/// One core: store, pipeline, fleet, metrics and registry, as `server.rs`
/// builds them, over a directory that outlives a restart.
struct Core {
    dir: TempDir,
    ingest: Arc<IngestCore>,
    store: Arc<Store>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    sessions: Vec<JoinHandle<()>>,
}

impl Core {
    /// A core without an agent registry (any agent, any camera).
    fn start() -> Core {
        Self::open(tempfile::tempdir().unwrap(), false)
    }

    /// A core enforcing an agent registry (`agents.toml` in its directory).
    fn with_registry() -> Core {
        Self::open(tempfile::tempdir().unwrap(), true)
    }

    fn open(dir: TempDir, enforced: bool) -> Core {
        let store = Arc::new(Store::open(&dir.path().join("db"), false, 8 << 20).unwrap());
        let metrics = Arc::new(Metrics::new());
        let fleet = Arc::new(Fleet::new(metrics.clone(), store.watermarks().unwrap()));
        let registry = Arc::new(if enforced {
            Registry::open_or_create(dir.path().join("agents.toml")).unwrap()
        } else {
            Registry::open(None).unwrap()
        });
        let pipeline = Pipeline::start(
            WriterContext::for_tests(store.clone(), metrics.clone()),
            PARTITIONS,
            8,
        )
        .unwrap();
        let ingest = Arc::new(IngestCore {
            pipeline,
            store: store.clone(),
            fleet: fleet.clone(),
            metrics: metrics.clone(),
            limits: Limits::default(),
            max_event_age: RETENTION,
            hello_timeout: WAIT,
            registry: registry.clone(),
            shutdown: CancellationToken::new(),
            front: None,
            read_ahead: ReadAhead::new(4 << 20, 64 << 20),
        });
        Core {
            dir,
            ingest,
            store,
            fleet,
            metrics,
            registry,
            sessions: Vec::new(),
        }
    }

    /// Kills the core as a crash would, between any two steps of its
    /// sessions (what the writers had queued still commits: a crash may come
    /// after a commit whose ack never left), and opens it again over the
    /// same directory.
    async fn restart(self) -> Core {
        let enforced = self.registry.enforced();
        let dir = self.stop().await;
        Self::open(dir, enforced)
    }

    async fn stop(self) -> TempDir {
        let Core {
            dir,
            ingest,
            store,
            sessions,
            ..
        } = self;
        for s in &sessions {
            s.abort();
        }
        for s in sessions {
            let _ = s.await;
        }
        // Dropping the pipeline joins its writer threads: off the runtime.
        tokio::task::spawn_blocking(move || drop((ingest, store)))
            .await
            .unwrap();
        dir
    }

    /// A session over a plaintext link.
    fn session(&mut self) -> Session {
        self.session_as(Peer::plaintext("127.0.0.1:4000".into()), false)
    }

    /// A session as QUIC runs it: batches may also come as copies.
    fn session_with_copies(&mut self) -> Session {
        self.session_as(Peer::plaintext("127.0.0.1:4000".into()), true)
    }

    fn session_as(&mut self, peer: Peer, copies: bool) -> Session {
        let (tx, inbound) = mpsc::channel(64);
        let (out, rx) = mpsc::channel(64);
        let (shadow, copies_rx) = if copies {
            let (tx, rx) = mpsc::channel(64);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.sessions
            .push(tokio::spawn(self.ingest.clone().run_session(
                peer,
                ReceiverStream::new(inbound),
                copies_rx,
                out,
            )));
        Session {
            tx: Some(tx),
            shadow,
            rx,
        }
    }

    /// The events stored, as a query lists them.
    fn listed(&self) -> usize {
        self.store
            .list_events(0, 0, None, 10_000, "")
            .unwrap()
            .0
            .len()
    }

    fn stored(&self) -> u64 {
        self.store.counters().unwrap().stored
    }

    fn watermark(&self) -> u64 {
        self.store.watermark(AGENT, EPOCH).unwrap()
    }

    async fn grant(&self, agent: &str, cameras: Vec<i64>) {
        self.registry
            .grant_agent(AgentGrant {
                agent_id: agent.into(),
                cameras,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// The agent's end of one session.
struct Session {
    tx: Option<mpsc::Sender<Result<AgentMessage, Status>>>,
    shadow: Option<mpsc::Sender<AgentMessage>>,
    rx: mpsc::Receiver<Result<CoreMessage, Status>>,
}

impl Session {
    async fn send(&self, msg: agent_message::Msg) {
        self.tx
            .as_ref()
            .expect("the agent hung up")
            .send(Ok(AgentMessage { msg: Some(msg) }))
            .await
            .expect("the session stopped reading");
    }

    /// Says Hello as `agent` in `epoch`; the Welcome, or the refusal.
    async fn hello_as(&mut self, agent: &str, epoch: u64) -> Result<Welcome, Status> {
        self.send(agent_message::Msg::Hello(Hello {
            agent_id: agent.into(),
            epoch,
            version: "test".into(),
            transport: "in process".into(),
            ..Default::default()
        }))
        .await;
        match self.next_message().await {
            Some(Ok(CoreMessage {
                msg: Some(core_message::Msg::Welcome(w)),
            })) => Ok(w),
            Some(Err(s)) => Err(s),
            other => panic!("expected a Welcome, got {other:?}"),
        }
    }

    /// Says Hello as [`AGENT`] in [`EPOCH`]; the Welcome.
    async fn hello(&mut self) -> Welcome {
        self.hello_as(AGENT, EPOCH).await.expect("welcomed")
    }

    async fn batch(&self, first_seq: u64, dets: Vec<Detection>) {
        self.send(agent_message::Msg::Batch(batch_of(first_seq, dets)))
            .await;
    }

    async fn raw_batch(&self, first_seq: u64, events: Vec<Bytes>) {
        self.send(agent_message::Msg::Batch(Batch {
            first_seq,
            events,
            ..Default::default()
        }))
        .await;
    }

    /// A datagram copy of a run of a batch's seqs.
    async fn copy(&self, first_seq: u64, dets: Vec<Detection>) {
        self.shadow
            .as_ref()
            .expect("a session with copies")
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Batch(batch_of(first_seq, dets))),
            })
            .await
            .unwrap();
    }

    /// The agent's link breaks (or it leaves).
    fn hang_up(&mut self) {
        self.tx = None;
        self.shadow = None;
    }

    /// The next message from the core; `None` once the session is over.
    async fn next_message(&mut self) -> Option<Result<CoreMessage, Status>> {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("the core said nothing in time")
    }

    async fn ack(&mut self) -> Ack {
        match self.next_message().await {
            Some(Ok(CoreMessage {
                msg: Some(core_message::Msg::Ack(a)),
            })) => a,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }

    /// How the session ended: its status, after which the core says nothing.
    async fn end(&mut self) -> Status {
        match self.next_message().await {
            Some(Err(s)) => {
                assert!(
                    self.next_message().await.is_none(),
                    "the core spoke after ending the session"
                );
                s
            }
            other => panic!("expected the session to end with a status, got {other:?}"),
        }
    }

    /// Nothing comes for a while.
    async fn quiet(&mut self) {
        if let Ok(m) = tokio::time::timeout(QUIET, self.rx.recv()).await {
            panic!("expected nothing, got {m:?}");
        }
    }
}

fn assert_code(s: &Status, code: Code, says: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(says),
        "{:?} does not say {says:?}",
        s.message()
    );
}

fn tls_peer(agent: &str) -> Peer {
    Peer {
        addr: "127.0.0.1:4001".into(),
        identity: Some(Identity {
            agent_id: agent.into(),
            issued: 1,
        }),
        link: LINK_GRPC_TLS,
        refusal: None,
    }
}

// Rule 1.
#[tokio::test]
async fn a_session_must_open_with_a_hello_from_a_valid_agent_id() {
    let mut core = Core::start();
    let mut s = core.session();
    s.batch(1, dets(1, 1)).await;
    assert_code(
        &s.end().await,
        Code::InvalidArgument,
        "first message must be Hello",
    );

    let mut s = core.session();
    let refused = s.hello_as("not an id!", EPOCH).await.unwrap_err();
    assert_code(&refused, Code::InvalidArgument, "agent_id");
    assert!(s.next_message().await.is_none());

    // A Hello that is not first ends the session too.
    let mut s = core.session();
    s.hello().await;
    s.send(agent_message::Msg::Hello(Hello {
        agent_id: AGENT.into(),
        epoch: EPOCH,
        ..Default::default()
    }))
    .await;
    assert_code(
        &s.end().await,
        Code::InvalidArgument,
        "Hello may only come first",
    );
    assert_eq!(core.stored(), 0);
}

// Rule 2 (and 17: the digest of the event at the watermark).
#[tokio::test]
async fn welcome_resumes_after_the_watermark_in_a_new_session_and_after_a_restart() {
    let mut core = Core::start();
    let mut s = core.session();
    assert_eq!(s.hello().await.resume_from, 1);
    let b = batch_of(1, dets(1, 3));
    let last = sightline_proto::event_digest(&b.events[2]);
    s.send(agent_message::Msg::Batch(b)).await;
    assert_eq!(s.ack().await.committed_through, 3);
    s.hang_up();
    assert!(s.next_message().await.is_none());

    let w = core.session().hello().await;
    assert_eq!((w.resume_from, w.committed_digest), (4, last));

    let mut core = core.restart().await;
    let w = core.session().hello().await;
    assert_eq!((w.resume_from, w.committed_digest), (4, last));
    // Another epoch of the same agent starts afresh.
    let w = core.session().hello_as(AGENT, EPOCH + 1).await.unwrap();
    assert_eq!((w.resume_from, w.committed_digest), (1, 0));
}

// Rule 3.
#[tokio::test]
async fn a_newer_session_of_an_agent_ends_the_older_with_aborted() {
    let mut core = Core::start();
    let mut old = core.session();
    old.hello().await;
    let mut new = core.session();
    new.hello().await;
    assert_code(&old.end().await, Code::Aborted, "newer session");
    // The newer one goes on.
    new.batch(1, dets(1, 2)).await;
    assert_eq!(new.ack().await.committed_through, 2);
}

// Rule 3a: identity.
#[tokio::test]
async fn a_certificate_for_another_agent_or_none_valid_is_refused_in_process() {
    let mut core = Core::start();
    let mut s = core.session_as(tls_peer("gate-9"), false);
    let refused = s.hello_as(AGENT, EPOCH).await.unwrap_err();
    assert_code(&refused, Code::PermissionDenied, "\"gate-9\"");
    assert!(refused.message().contains(AGENT), "{refused:?}");

    let mut s = core.session_as(
        Peer {
            refusal: Some("the certificate has expired".into()),
            ..tls_peer(AGENT)
        },
        false,
    );
    let refused = s.hello_as(AGENT, EPOCH).await.unwrap_err();
    assert_code(&refused, Code::Unauthenticated, "expired");

    // Its own certificate is welcome.
    let mut s = core.session_as(tls_peer(AGENT), false);
    assert_eq!(s.hello().await.resume_from, 1);
}

// Rule 3a: registry.
#[tokio::test]
async fn an_unregistered_or_revoked_agent_is_refused_and_revoking_ends_its_session_in_process() {
    let mut core = Core::with_registry();
    let refused = core.session().hello_as(AGENT, EPOCH).await.unwrap_err();
    assert_code(&refused, Code::PermissionDenied, "not granted");
    // The fleet view says why.
    let info = core.fleet.snapshot();
    assert!(info[0].last_refusal.contains("not granted"), "{info:?}");

    core.grant(AGENT, vec![1]).await;
    let mut s = core.session();
    s.hello().await;
    s.batch(1, dets(1, 1)).await;
    assert_eq!(s.ack().await.committed_through, 1);
    // Revoked as the admin API does it: at once, with the session open.
    core.registry.revoke(AGENT).await.unwrap();
    core.fleet.revoke(AGENT);
    assert_code(&s.end().await, Code::PermissionDenied, "revoked");
    let refused = core.session().hello_as(AGENT, EPOCH).await.unwrap_err();
    assert_code(&refused, Code::PermissionDenied, "revoked");
}

// Rule 4.
#[tokio::test]
async fn an_event_whose_seq_does_not_match_its_position_ends_the_session() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    s.raw_batch(1, vec![encoded(1, det(1)), encoded(3, det(2))])
        .await;
    let end = s.end().await;
    assert_code(&end, Code::InvalidArgument, "carries seq 3, expected 2");
    assert_eq!((core.stored(), core.watermark()), (0, 0));

    let mut s = core.session();
    s.hello().await;
    s.raw_batch(0, vec![encoded(0, det(1))]).await;
    assert_code(&s.end().await, Code::InvalidArgument, "first_seq");
    assert_eq!(core.stored(), 0);
}

// Rule 5.
#[tokio::test]
async fn acks_come_in_order_cumulative_and_only_once_the_commit_is_durable() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    // Ten batches in flight at once, 20 events each, over both partitions.
    for b in 0..10u64 {
        let first = b * 20 + 1;
        s.batch(first, dets(first as i64, first as i64 + 19)).await;
    }
    for b in 1..=10u64 {
        let a = s.ack().await;
        assert_eq!(a.committed_through, b * 20, "acks out of order");
        assert_eq!((a.duplicates, a.rejected.len()), (0, 0));
        // Acknowledged: already in the store, every event up to it.
        assert!(core.watermark() >= a.committed_through);
        assert!(core.stored() >= a.committed_through);
    }
    s.quiet().await;
    // And still there when the store is opened again.
    let core = core.restart().await;
    assert_eq!(
        (core.watermark(), core.stored(), core.listed()),
        (200, 200, 200)
    );
    for d in [1, 77, 200] {
        assert!(
            core.store.get_event(d).unwrap().is_some(),
            "det_oid {d} lost"
        );
    }
}

// Rule 6.
#[tokio::test]
async fn resent_batch_below_watermark_is_acked_not_stored_in_process() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    s.batch(1, dets(1, 10)).await;
    assert_eq!(s.ack().await.committed_through, 10);
    // The ack was lost: the agent sends it all again, then more.
    s.batch(1, dets(1, 10)).await;
    let a = s.ack().await;
    assert_eq!((a.committed_through, a.duplicates), (10, 10));
    s.batch(6, dets(6, 15)).await;
    let a = s.ack().await;
    assert_eq!((a.committed_through, a.duplicates), (15, 5));
    let c = core.store.counters().unwrap();
    assert_eq!((c.stored, c.dup_transport, c.dup_semantic), (15, 15, 0));
    assert_eq!(core.listed(), 15);
}

// Rule 6b.
#[tokio::test]
async fn a_live_batch_is_stored_at_once_unanswered_and_acknowledged_with_its_backlog() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    s.batch(1, dets(1, 5)).await;
    assert_eq!(s.ack().await.committed_through, 5);
    // Seqs 21..=25 go ahead of 6..=20 on the live lane: stored, no answer,
    // the watermark where it was.
    s.send(agent_message::Msg::Live(batch_of(21, dets(21, 25))))
        .await;
    s.quiet().await;
    let t0 = std::time::Instant::now();
    while core.stored() < 10 {
        assert!(t0.elapsed() < WAIT, "the live batch was not stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((core.stored(), core.watermark()), (10, 5));
    // The backlog brings them again in order: acknowledged, not counted as
    // duplicates nor stored twice.
    s.batch(6, dets(6, 25)).await;
    let a = s.ack().await;
    assert_eq!((a.committed_through, a.duplicates), (25, 0));
    let c = core.store.counters().unwrap();
    assert_eq!((c.stored, c.dup_transport, c.dup_semantic), (25, 0, 0));
    assert_eq!(core.listed(), 25);
    // A malformed live batch ends the session as a batch would.
    s.send(agent_message::Msg::Live(Batch {
        first_seq: 30,
        events: vec![encoded(31, det(31))],
        ..Default::default()
    }))
    .await;
    assert_code(&s.end().await, Code::InvalidArgument, "expected 30");
}

// Rule 6b, within one session: the backlog's batches waiting for room in
// the partition queues do not hold up a live batch sent after them.
#[tokio::test]
async fn a_live_batch_is_stored_while_the_backlog_sent_before_it_waits_for_the_queues() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    // 15,000 events in 30 batches, far more than the queues hold (8 shares
    // of a batch per partition) and all within the session's read-ahead
    // (4 MiB), then one live event. Without read-ahead the live event is
    // read only once 22 of the batches have left the queues.
    let (batches, n) = (30u64, 500u64);
    for b in 0..batches {
        let first = 1 + b * n;
        s.batch(first, dets(first as i64, (first + n - 1) as i64))
            .await;
    }
    let (live_seq, live_oid) = (1 + batches * n, 10_000_000);
    s.send(agent_message::Msg::Live(batch_of(
        live_seq,
        vec![det(live_oid)],
    )))
    .await;
    let t0 = std::time::Instant::now();
    while core.store.get_event(live_oid).unwrap().is_none() {
        assert!(t0.elapsed() < 4 * WAIT, "the live event was not stored");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stored_then = core.stored();
    assert!(
        stored_then < batches * n / 2,
        "the live event waited for {stored_then} of the {} backlog events sent before it",
        batches * n
    );
    // The backlog then brings it in order: acknowledged, not stored twice.
    s.batch(live_seq, vec![det(live_oid)]).await;
    loop {
        let a = s.ack().await;
        if a.committed_through == live_seq {
            break;
        }
    }
    let c = core.store.counters().unwrap();
    assert_eq!((c.stored, c.dup_semantic), (live_seq, 0));
}

// The core-wide read-ahead budget held elsewhere (sessions whose agents read
// no acks) slows no session below reading one batch at a time.
#[tokio::test]
async fn a_session_is_served_when_other_sessions_hold_the_whole_read_ahead_budget() {
    let mut core = Core::start();
    let ra = &core.ingest.read_ahead;
    let _held = ra
        .total
        .clone()
        .try_acquire_many_owned(ra.total_permits)
        .unwrap();
    let mut s = core.session();
    s.hello().await;
    for b in 0..5i64 {
        s.batch((1 + b * 100) as u64, dets(1 + b * 100, 100 + b * 100))
            .await;
    }
    let mut through = 0;
    while through < 500 {
        through = tokio::time::timeout(WAIT, s.ack())
            .await
            .expect("the session stalled")
            .committed_through;
    }
    assert_eq!(core.stored(), 500);
}

// Rule 7.
#[tokio::test]
async fn a_gap_ends_the_session_naming_the_seq_to_resume_from_and_stores_nothing_of_it() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    s.batch(1, dets(1, 4)).await;
    assert_eq!(s.ack().await.committed_through, 4);
    s.batch(9, dets(9, 12)).await;
    let end = s.end().await;
    assert_code(&end, Code::FailedPrecondition, "resume from 5");
    assert_eq!((core.watermark(), core.stored()), (4, 4));
    assert!(core.store.get_event(9).unwrap().is_none());
    // The agent resumes where it was told.
    let mut s = core.session();
    assert_eq!(s.hello().await.resume_from, 5);
}

// Rule 8.
#[tokio::test]
async fn an_upstream_duplicate_is_acked_dropped_and_counted_however_late_in_process() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    s.batch(1, vec![det(100), det(101)]).await;
    s.ack().await;
    // The same det_oid from the same camera at another seq.
    s.batch(3, vec![det(100), det(102)]).await;
    let a = s.ack().await;
    assert_eq!(
        (a.committed_through, a.duplicates, a.rejected.len()),
        (4, 1, 0)
    );
    // Long after, from a new epoch of the agent, after a restart.
    let mut core = core.restart().await;
    let mut s = core.session();
    s.hello_as(AGENT, EPOCH + 1).await.unwrap();
    s.batch(1, vec![det(101)]).await;
    let a = s.ack().await;
    assert_eq!((a.committed_through, a.duplicates), (1, 1));
    let c = core.store.counters().unwrap();
    assert_eq!((c.stored, c.dup_semantic, c.rejected), (3, 2, 0));
    assert_eq!(core.listed(), 3);
}

// Rule 8a.
#[tokio::test]
async fn another_cameras_det_oid_is_acked_and_rejected_as_already_exists() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    s.batch(1, vec![det_on(100, 1)]).await;
    s.ack().await;
    s.batch(2, vec![det_on(100, 2), det_on(101, 2)]).await;
    let a = s.ack().await;
    assert_eq!((a.committed_through, a.duplicates), (3, 0));
    assert_eq!(a.rejected.len(), 1, "{:?}", a.rejected);
    let r = &a.rejected[0];
    assert_eq!(
        (r.seq, r.detection_oid, r.code.as_str(), r.field.as_str()),
        (2, Some(100), CONFLICT, "detection_oid")
    );
    assert!(r.reason.contains("camera 1"), "{}", r.reason);
    let c = core.store.counters().unwrap();
    assert_eq!((c.stored, c.rejected, c.dup_semantic), (2, 1, 0));
    assert_eq!(core.store.list_quarantine(10, "").unwrap().0.len(), 1);
    assert_eq!(core.metrics.det_oid_conflicts.get(), 1);
    let kept = core.store.get_event(100).unwrap().unwrap();
    assert_eq!(kept.detection.unwrap().video_camera_oid, 1);
}

// Rule 8b.
#[tokio::test]
async fn an_event_older_than_retention_is_acked_and_rejected_as_out_of_range_in_process() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    let mut old = det(1);
    old.timestamp_detected -= RETENTION.as_millis() as i64 + 86_400_000;
    s.batch(1, vec![old, det(2)]).await;
    let a = s.ack().await;
    assert_eq!(a.committed_through, 2);
    assert_eq!(a.rejected.len(), 1);
    let r = &a.rejected[0];
    assert_eq!(
        (r.seq, r.code.as_str(), r.field.as_str()),
        (1, super::TOO_OLD, "timestamp_detected")
    );
    assert!(r.reason.contains("retention.events"), "{}", r.reason);
    assert!(core.store.get_event(1).unwrap().is_none());
    assert_eq!(core.stored(), 1);
    assert_eq!(core.metrics.too_old.get(), 1);
    assert_eq!(core.store.list_quarantine(10, "").unwrap().0.len(), 1);
}

// Rule 9.
#[tokio::test]
async fn invalid_events_are_quarantined_with_field_and_reason_and_the_rest_stored_in_process() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    let mut unnamed = det(2);
    unnamed.item_name = String::new();
    s.raw_batch(
        1,
        vec![
            encoded(1, det(1)),
            encoded(2, unnamed),
            Bytes::from_static(b"\xff\xff\xff not an event"),
            encoded(4, det(4)),
        ],
    )
    .await;
    let a = s.ack().await;
    assert_eq!(a.committed_through, 4);
    let got: Vec<_> = a
        .rejected
        .iter()
        .map(|r| (r.seq, r.field.as_str(), r.code.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "item_name", "INVALID_ARGUMENT"),
            (3, "event", "INVALID_ARGUMENT")
        ]
    );
    assert!(
        a.rejected[0].reason.contains("empty"),
        "{:?}",
        a.rejected[0]
    );
    assert!(
        a.rejected[1].reason.contains("decode"),
        "{:?}",
        a.rejected[1]
    );
    let q = core.store.list_quarantine(10, "").unwrap().0;
    assert_eq!(q.len(), 2);
    assert!(q
        .iter()
        .any(|e| e.field == "item_name" && e.agent_id == AGENT));
    assert_eq!(
        (core.stored(), core.store.counters().unwrap().rejected),
        (2, 2)
    );
    assert!(core.store.get_event(1).unwrap().is_some());
    assert!(core.store.get_event(4).unwrap().is_some());
}

// Rule 9a.
#[tokio::test]
async fn an_event_for_a_camera_not_granted_is_rejected_as_permission_denied_in_process() {
    let mut core = Core::with_registry();
    core.grant(AGENT, vec![1]).await;
    let mut s = core.session();
    s.hello().await;
    s.batch(1, vec![det_on(1, 1), det_on(2, 7)]).await;
    let a = s.ack().await;
    assert_eq!(a.committed_through, 2);
    assert_eq!(a.rejected.len(), 1);
    let r = &a.rejected[0];
    assert_eq!(
        (r.seq, r.code.as_str(), r.field.as_str()),
        (2, super::DENIED, "video_camera_oid")
    );
    assert!(r.reason.contains("camera 7"), "{}", r.reason);
    assert!(core.store.get_event(2).unwrap().is_none());
    assert_eq!(core.stored(), 1);
    let denied = core
        .metrics
        .permission_denied
        .get_or_create(&Metrics::agent(AGENT))
        .get();
    assert_eq!(denied, 1);
}

// Rule 6a.
#[tokio::test]
async fn datagram_copies_commit_only_in_turn_once_and_the_stream_skips_what_they_committed() {
    let mut core = Core::start();
    let mut s = core.session_with_copies();
    s.hello().await;
    // A copy ahead of the session waits for the seqs before it.
    s.copy(3, dets(3, 4)).await;
    s.quiet().await;
    assert_eq!((core.watermark(), core.stored()), (0, 0));
    // The stream brings 1..=2: committed, then the copy in its turn.
    s.batch(1, dets(1, 2)).await;
    assert_eq!(s.ack().await.committed_through, 2);
    assert_eq!(s.ack().await.committed_through, 4);
    // The copy again, and the stream's batch of it: both ignored, no ack.
    s.copy(3, dets(3, 4)).await;
    s.batch(3, dets(3, 4)).await;
    s.quiet().await;
    // A copy cut from a batch whose start the stream delivered: only the rest.
    s.batch(5, dets(5, 5)).await;
    assert_eq!(s.ack().await.committed_through, 5);
    s.copy(5, dets(5, 7)).await;
    assert_eq!(s.ack().await.committed_through, 7);
    // Copies of two batches committed before the stream brings either:
    // each stream batch skips its own (the first does not take the
    // second's with it).
    s.copy(8, dets(8, 8)).await;
    assert_eq!(s.ack().await.committed_through, 8);
    s.copy(9, dets(9, 10)).await;
    assert_eq!(s.ack().await.committed_through, 10);
    s.batch(6, dets(6, 7)).await;
    s.batch(8, dets(8, 8)).await;
    s.batch(9, dets(9, 10)).await;
    s.quiet().await;
    let c = core.store.counters().unwrap();
    assert_eq!((c.stored, c.dup_transport, c.dup_semantic), (10, 0, 0));
    assert_eq!(core.listed(), 10);
    assert_eq!(core.metrics.batches_from_datagrams.get(), 4);
}

// Rule 10, the part in the core.
#[tokio::test]
async fn an_event_over_max_detection_bytes_is_rejected_at_the_core_not_stored() {
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    // Many small attributes: within their own bound, over the event's.
    let mut big = det(2);
    let mut attr_bytes = 0;
    for a in b'!'..=b'~' {
        for b in b'!'..=b'~' {
            if attr_bytes + 2 > Limits::default().max_attributes_bytes {
                break;
            }
            big.attributes
                .insert(String::from_utf8(vec![a, b]).unwrap(), String::new());
            attr_bytes += 2;
        }
    }
    assert!(
        big.encoded_len() > MAX_DETECTION_BYTES,
        "{}",
        big.encoded_len()
    );
    s.batch(1, vec![det(1), big, det(3)]).await;
    let a = s.ack().await;
    assert_eq!(a.committed_through, 3);
    assert_eq!(a.rejected.len(), 1, "{:?}", a.rejected);
    let r = &a.rejected[0];
    assert_eq!((r.seq, r.field.as_str()), (2, "detection"));
    assert!(
        r.reason.contains(&MAX_DETECTION_BYTES.to_string()),
        "{}",
        r.reason
    );
    assert!(core.store.get_event(2).unwrap().is_none());
    assert_eq!(core.stored(), 2);
}

// Rule 11.
#[tokio::test]
async fn a_session_broken_mid_stream_resumes_from_the_watermark_and_stores_nothing_twice() {
    const BATCHES: u64 = 20;
    const SIZE: u64 = 25;
    const TOTAL: u64 = BATCHES * SIZE;
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    for b in 0..BATCHES {
        let first = b * SIZE + 1;
        s.batch(first, dets(first as i64, (first + SIZE - 1) as i64))
            .await;
    }
    // The core dies with batches in flight, after the first ack.
    let acked = s.ack().await.committed_through;
    let mut core = core.restart().await;
    let wm = core.watermark();
    assert!(
        wm >= acked,
        "the core lost what it acknowledged: {wm} < {acked}"
    );
    // What was stored unacknowledged (a partition may be ahead of the other).
    let before = core.stored();
    assert!(before >= wm);

    // The agent kept everything not acknowledged and resends it all.
    let mut s = core.session();
    assert_eq!(s.hello().await.resume_from, wm + 1);
    let (mut first, mut sent) = (acked + 1, 0);
    while first <= TOTAL {
        let last = (first + SIZE - 1).min(TOTAL);
        s.batch(first, dets(first as i64, last as i64)).await;
        first = last + 1;
        sent += 1;
    }
    // One ack a batch (a resend of what is all stored is acked at once
    // through the watermark: count them, not their seqs).
    for _ in 0..sent {
        assert!(s.ack().await.committed_through >= wm);
    }
    s.quiet().await;
    let c = core.store.counters().unwrap();
    assert_eq!((c.stored, c.dup_semantic), (TOTAL, 0));
    // Resent and already stored: dropped by seq, never stored twice.
    assert_eq!(c.dup_transport, before - acked);
    assert_eq!(core.listed() as u64, TOTAL);
    assert_eq!(core.watermark(), TOTAL);
}

// Rule 12.
#[tokio::test]
async fn on_shutdown_the_commits_in_flight_are_acked_then_the_session_ends_unavailable() {
    const BATCHES: u64 = 40;
    const SIZE: u64 = 25;
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    for b in 0..BATCHES {
        let first = b * SIZE + 1;
        s.batch(first, dets(first as i64, (first + SIZE - 1) as i64))
            .await;
    }
    let first = s.ack().await.committed_through;
    core.ingest.shutdown.cancel();
    let mut last = first;
    let end = loop {
        match s.next_message().await {
            Some(Ok(CoreMessage {
                msg: Some(core_message::Msg::Ack(a)),
            })) => {
                assert_eq!(a.committed_through, last + SIZE, "acks skipped a batch");
                last = a.committed_through;
            }
            Some(Err(status)) => break status,
            other => panic!("expected an Ack or the end, got {other:?}"),
        }
    };
    assert_code(&end, Code::Unavailable, "shutting down");
    assert!(s.next_message().await.is_none());
    // Every commit the session handed on was acknowledged before the end:
    // what is stored is what was acked, and nothing more is taken.
    s.hang_up();
    let core = core.restart().await;
    assert_eq!(core.watermark(), last);
    assert_eq!(core.stored(), last);
}

mod model {
    //! The session with datagram copies against the simplest model: every
    //! seq the agent sent is stored once and acknowledged, whatever the
    //! copies did.
    use super::*;
    use proptest::{prelude::*, test_runner::TestRunner};

    /// One batch of the agent's stream and what its copies do: its size;
    /// where it is cut into copies (bit `j`: a cut after its event `j`);
    /// per copy whether it is sent, when (an offset from the batch's turn,
    /// 10 apart: negative is ahead of it, even of earlier batches) and
    /// whether it is sent twice, and when.
    /// Copies sent twice are cut as the second mask says (a datagram size
    /// that changed between the two).
    type Plan = (u64, u8, u8, Vec<(bool, i32, Option<i32>)>);

    fn plan() -> impl Strategy<Value = Plan> {
        (
            1u64..=5,
            any::<u8>(),
            any::<u8>(),
            proptest::collection::vec(
                (
                    any::<bool>(),
                    -25i32..=25,
                    proptest::option::of(-25i32..=25),
                ),
                5,
            ),
        )
    }

    enum Send {
        Stream(u64, Vec<Detection>),
        Copy(u64, Vec<Detection>),
    }

    /// The agent's sends in the order it makes them; and how many seqs.
    /// Its det_oids are `base + seq`.
    fn schedule(batches: &[Plan], base: i64) -> (Vec<Send>, u64) {
        let mut out: Vec<(i32, usize, Send)> = Vec::new();
        let mut first = 1u64;
        for (i, (size, cuts, recuts, copies)) in batches.iter().enumerate() {
            let turn = i as i32 * 10;
            let all = dets(base + first as i64, base + (first + size - 1) as i64);
            let cut = |mask: u8| {
                let mut pieces: Vec<(u64, Vec<Detection>)> = vec![(first, Vec::new())];
                for (j, d) in all.iter().enumerate() {
                    if j > 0 && mask & (1 << (j - 1)) != 0 {
                        pieces.push((first + j as u64, Vec::new()));
                    }
                    pieces.last_mut().unwrap().1.push(d.clone());
                }
                pieces
            };
            let (pieces, again_pieces) = (cut(*cuts), cut(*recuts));
            for ((from, part), (send, at, _)) in pieces.into_iter().zip(copies) {
                if *send {
                    let n = out.len();
                    out.push((turn + at, n, Send::Copy(from, part)));
                }
            }
            for ((from, part), (_, _, again)) in again_pieces.into_iter().zip(copies) {
                if let Some(at) = again {
                    let n = out.len();
                    out.push((turn + at, n, Send::Copy(from, part)));
                }
            }
            let n = out.len();
            out.push((turn, n, Send::Stream(first, all)));
            first += size;
        }
        out.sort_by_key(|(at, n, _)| (*at, *n));
        (out.into_iter().map(|(_, _, s)| s).collect(), first - 1)
    }

    /// Whatever copies of its batches come — cut, ahead of their turn,
    /// late, twice, or not at all — and however the session interleaves
    /// them with the stream, each seq the agent sent is stored once, the
    /// acks never go back, the last acknowledges every seq, and the stream
    /// skips what copies committed. One core for
    /// every case (a new agent each), so that the cases stay fast.
    #[test]
    fn copies_never_lose_nor_duplicate_what_the_stream_delivers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let core = std::cell::RefCell::new(Core::start());
        let case = std::cell::Cell::new(0i64);
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 32,
            ..ProptestConfig::default()
        });
        let cases = (proptest::collection::vec(plan(), 1..=8), any::<u64>());
        let result = runner.run(&cases, |(batches, yields)| {
            case.set(case.get() + 1);
            let agent = format!("model-{}", case.get());
            let base = case.get() * 1_000;
            let (sends, total) = schedule(&batches, base);
            rt.block_on(async {
                let store = core.borrow().store.clone();
                let before = store.counters().unwrap();
                let mut s = core.borrow_mut().session_with_copies();
                s.hello_as(&agent, EPOCH).await.unwrap();
                for (i, send) in sends.into_iter().enumerate() {
                    match send {
                        Send::Stream(first, d) => s.batch(first, d).await,
                        Send::Copy(first, d) => s.copy(first, d).await,
                    }
                    if yields & (1 << (i % 64)) != 0 {
                        tokio::task::yield_now().await;
                    }
                }
                s.hang_up();
                let mut through = 0;
                while let Some(m) = s.next_message().await {
                    match m {
                        Ok(CoreMessage {
                            msg: Some(core_message::Msg::Ack(a)),
                        }) => {
                            prop_assert!(a.committed_through >= through, "an ack went back");
                            prop_assert!(a.rejected.is_empty());
                            through = a.committed_through;
                        }
                        other => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                prop_assert_eq!(through, total);
                prop_assert_eq!(store.watermark(&agent, EPOCH).unwrap(), total);
                let c = store.counters().unwrap();
                // Nothing went to the writers twice: what copies committed,
                // the stream skipped (else it is dropped there by seq).
                prop_assert_eq!(
                    (
                        c.stored - before.stored,
                        c.dup_transport - before.dup_transport,
                        c.dup_semantic,
                        c.rejected
                    ),
                    (total, 0, before.dup_semantic, before.rejected)
                );
                for seq in 1..=total {
                    let e = store.get_event(base + seq as i64).unwrap();
                    prop_assert!(e.is_some_and(|e| e.agent_id == agent), "seq {seq} lost");
                }
                Ok(())
            })
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}

// Rule 4b.
#[tokio::test]
async fn the_agent_side_hops_are_observed_once_acknowledged_and_a_missing_durable_time_is_not() {
    use crate::metrics::hop;
    let mut core = Core::start();
    let mut s = core.session();
    s.hello().await;
    let mut b = batch_of(1, dets(1, 3));
    b.durable_after_ms = vec![2, 2, 5];
    s.send(agent_message::Msg::Batch(b)).await;
    s.ack().await;
    // An older agent (or one read back from disk) says nothing of it.
    s.batch(4, dets(4, 5)).await;
    s.ack().await;
    // A figure per event or none: a partial list is not used.
    let mut b = batch_of(6, dets(6, 7));
    b.durable_after_ms = vec![1];
    s.send(agent_message::Msg::Batch(b)).await;
    s.ack().await;
    let text = core.metrics.encode();
    let count = |h: &str| -> f64 {
        let key = format!("sightline_event_hop_seconds_count{{hop=\"{h}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(count(hop::DETECTED_TO_STAMPED), 7.0);
    assert_eq!(count(hop::STAMPED_TO_DURABLE), 3.0);
    assert_eq!(count(hop::DURABLE_TO_COMMITTED), 3.0);
    // Five milliseconds at most from stamp to durable: all in the 5 ms bucket.
    let bucket = text
        .lines()
        .find(|l| {
            l.starts_with("sightline_event_hop_seconds_bucket{")
                && l.contains("hop=\"stamped_to_durable\"")
                && l.contains("le=\"0.005\"")
        })
        .unwrap_or_else(|| panic!("no 5 ms bucket in\n{text}"));
    assert!(bucket.ends_with(" 3"), "{bucket}");
}
