//! The write path against a real `nats-server -js` (see [`super::testing`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sightline_proto::v1::{Detection, EdgeEvent};
use tokio::sync::oneshot;

use super::{
    front::Front,
    lease::{self, Take},
    nats::{ClusterError, Nats},
    node::Node,
    out_subject,
    owner::{LeaseClock, Owner, OwnerContext},
    testing::NatsServer,
    view::{ClusterView, NodeInfo},
    IN_STREAM, OUT_STREAM,
};
use crate::{
    dedup::{CommitOutcome, CommitRequest, Incoming},
    enrich::Locations,
    metrics::Metrics,
    store::keys,
};

/// How long a test waits for something the cluster does in the background.
const WAIT: Duration = Duration::from_secs(20);

fn event(seq: u64, det_oid: i64) -> Incoming {
    Incoming::Valid(EdgeEvent {
        seq,
        detection: Some(Detection {
            geographical_location_oid: 1,
            video_camera_oid: 7,
            detection_oid: Some(det_oid),
            item_name: "person".into(),
            timestamp_detected: sightline_proto::now_ms(),
            ..Default::default()
        }),
        accepted_ms: sightline_proto::now_ms(),
    })
}

/// A batch of `n` events from `first`, det_oid = 1000 + seq (each unique).
fn batch(
    agent: &str,
    first: u64,
    n: u64,
) -> (
    CommitRequest,
    oneshot::Receiver<anyhow::Result<CommitOutcome>>,
) {
    batch_from(agent, first, n, 1000)
}

/// [`batch`] with det_oid = `oids` + seq.
fn batch_from(
    agent: &str,
    first: u64,
    n: u64,
    oids: i64,
) -> (
    CommitRequest,
    oneshot::Receiver<anyhow::Result<CommitOutcome>>,
) {
    let (reply, rx) = oneshot::channel();
    let (tx, out) = oneshot::channel();
    tokio::spawn(async move {
        let r: Result<_, crate::dedup::CommitError> = rx.await.unwrap();
        let _ = tx.send(r.map_err(|e| anyhow::anyhow!("{e}")));
    });
    (
        CommitRequest {
            agent: agent.into(),
            epoch: 1,
            first_seq: first,
            events: (first..first + n)
                .map(|s| event(s, oids + s as i64))
                .collect(),
            last_digest: first + n,
            reply,
        },
        out,
    )
}

async fn send(front: &Front, agent: &str, first: u64, n: u64) -> CommitOutcome {
    let (req, rx) = batch(agent, first, n);
    front.submit(req).await.unwrap();
    rx.await.unwrap().unwrap()
}

async fn stream_messages(nats: &Nats, name: &str) -> u64 {
    let mut s = nats.js.get_stream(name).await.unwrap();
    s.info().await.unwrap().state.messages
}

fn owner_ctx(nats: &Nats, dir: &std::path::Path) -> OwnerContext {
    OwnerContext {
        nats: nats.clone(),
        storage: dir.to_path_buf(),
        locations: Arc::new(Locations::new(None).unwrap()),
        metrics: Arc::new(Metrics::new()),
        max_group_events: 1000,
        queue_batches: 16,
        live_buffer: 1024,
        search_commit: Duration::from_millis(200),
        cache_bytes: 8 << 20,
        checkpoints: None,
        checkpoint_interval: Duration::from_secs(3600),
    }
}

fn clock(rev: u64) -> LeaseClock {
    let c = LeaseClock::new(Instant::now());
    c.renewed(Instant::now(), Duration::from_secs(3600), rev);
    c
}

/// Waits until `store` has applied the IN stream through its last
/// sequence now.
async fn wait_applied_all(nats: &Nats, store: &crate::store::Store) {
    let last = {
        let mut s = nats.js.get_stream(IN_STREAM).await.unwrap();
        s.info().await.unwrap().state.last_sequence
    };
    wait_for("the owner to apply the stream", async || {
        store.stream_seq().unwrap() >= last
    })
    .await;
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_acked_once_every_partition_has_its_share_in_the_stream() {
    let server = NatsServer::start();
    let nats = server.connect("a", 4).await;
    let front = Front::new(nats.clone());
    let o = send(&front, "agent-1", 1, 10).await;
    assert_eq!(o.committed_through, 10);
    // One share per partition, the empty ones too, durable before the ack.
    assert_eq!(stream_messages(&nats, IN_STREAM).await, 4);
    let o = send(&front, "agent-1", 11, 1).await;
    assert_eq!(o.committed_through, 11);
    assert_eq!(stream_messages(&nats, IN_STREAM).await, 8);
    // The same batch sent again (an agent's resend: another session) is
    // published again; its owner drops it by seq (see share_msg_id).
    send(&front, "agent-1", 11, 1).await;
    assert_eq!(stream_messages(&nats, IN_STREAM).await, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_publishes_batches_without_waiting_and_each_is_answered_in_order_once_durable() {
    let server = NatsServer::start();
    let nats = server.connect("a", 4).await;
    let front = Front::new(nats.clone());
    let session = front.session();
    let mut answers = Vec::new();
    for i in 0..20 {
        let (req, rx) = batch("agent-1", 1 + i * 5, 5);
        session.submit(req).await.unwrap();
        answers.push(rx);
    }
    let mut through = Vec::new();
    for rx in answers {
        through.push(rx.await.unwrap().unwrap().committed_through);
    }
    assert_eq!(through, (1..=20).map(|i| i * 5).collect::<Vec<u64>>());
    assert_eq!(stream_messages(&nats, IN_STREAM).await, 80);
    // The watermark is past the last batch, for any node.
    let other = Front::new(server.connect("b", 4).await);
    assert_eq!(other.watermark("agent-1", 1).await.unwrap().through, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_share_fails_its_batch_and_the_watermark_stays_before_it() {
    let server = NatsServer::start();
    let nats = server.connect("a", 4).await;
    // The stream takes 6 messages: the first batch's 4 shares, then 2 of
    // the second's; the rest are refused (discard new: a full stream).
    let mut cfg = nats
        .js
        .get_stream(IN_STREAM)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    cfg.max_messages = 6;
    nats.js.update_stream(cfg).await.unwrap();
    let front = Front::new(nats.clone());
    let session = front.session();
    let mut answers = Vec::new();
    for i in 0..3 {
        let (req, rx) = batch("agent-1", 1 + i * 5, 5);
        session.submit(req).await.unwrap();
        answers.push(rx);
    }
    let mut got = Vec::new();
    for rx in answers {
        got.push(rx.await.unwrap().map(|o| o.committed_through).ok());
    }
    assert_eq!(got, [Some(5), None, None]);
    // No node resumes the agent past what every partition has.
    assert_eq!(front.watermark("agent-1", 1).await.unwrap().through, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_resumes_on_another_node_from_the_watermark_its_last_node_kept() {
    let server = NatsServer::start();
    let a = Front::new(server.connect("a", 4).await);
    let b = Front::new(server.connect("b", 4).await);
    assert_eq!(b.watermark("agent.x", 3).await.unwrap().through, 0);
    let (mut req, rx) = batch("agent.x", 1, 5);
    req.epoch = 3;
    a.submit(req).await.unwrap();
    assert_eq!(rx.await.unwrap().unwrap().committed_through, 5);
    let w = b.watermark("agent.x", 3).await.unwrap();
    assert_eq!((w.through, w.digest), (5, 6));
    // Node b moves it on; node a, whose revision is stale, still only moves it up.
    let (mut req, rx) = batch("agent.x", 6, 5);
    req.epoch = 3;
    b.submit(req).await.unwrap();
    rx.await.unwrap().unwrap();
    assert_eq!(
        a.advance(
            "agent.x",
            3,
            super::front::Watermark {
                through: 7,
                digest: 0
            }
        )
        .await
        .unwrap()
        .through,
        10
    );
    assert_eq!(a.watermark("agent.x", 3).await.unwrap().through, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_count_other_than_the_clusters_is_refused_at_start() {
    let server = NatsServer::start();
    server.connect("a", 4).await;
    let err = Nats::connect(&server.config("b", 8), "b")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            ClusterError::PartitionMismatch {
                configured: 8,
                cluster: 4
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cluster.partitions"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_cannot_be_taken_and_an_expired_one_moves_with_a_new_revision() {
    let server = NatsServer::start();
    let nats = server.connect("a", 4).await;
    let Take::Taken(rev_a) = lease::take(&nats.leases, 2, "a", 600).await.unwrap() else {
        panic!("a free lease is taken")
    };
    match lease::take(&nats.leases, 2, "b", 600).await.unwrap() {
        Take::Held(l) => assert_eq!(l.node, "a"),
        t => panic!("b took a live lease: {t:?}"),
    }
    let rev_a = lease::renew(&nats.leases, 2, "a", 600, rev_a)
        .await
        .unwrap()
        .expect("a renews its own");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let Take::Taken(rev_b) = lease::take(&nats.leases, 2, "b", 600).await.unwrap() else {
        panic!("an expired lease is taken")
    };
    assert!(rev_b > rev_a);
    // a's revision is stale: its renewal is refused (it has lost the lease).
    assert_eq!(
        lease::renew(&nats.leases, 2, "a", 600, rev_a)
            .await
            .unwrap(),
        None
    );
    // A released lease is free at once.
    lease::release(&nats.leases, 2, rev_b).await.unwrap();
    assert!(matches!(
        lease::take(&nats.leases, 2, "a", 600).await.unwrap(),
        Take::Taken(_)
    ));
}

/// The det_oids of `first..first+n` (as [`batch`] makes them) in partition `p` of `parts`.
fn oids_of(p: u16, parts: u16, first: u64, n: u64) -> Vec<i64> {
    (first..first + n)
        .map(|s| 1000 + s as i64)
        .filter(|o| keys::partition_of(*o, parts as usize) == p as usize)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_applies_every_share_exactly_once_across_a_restart() {
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    let front = Front::new(nats.clone());
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    for i in 0..10 {
        send(&front, "agent-1", 1 + i * 20, 20).await;
    }
    let owner = Owner::open(&ctx, 1, clock(1)).await.unwrap();
    // Stopped mid-way: more shares come while it is closed.
    let closing = tokio::spawn(async move {
        owner.close().await;
    });
    for i in 10..20 {
        send(&front, "agent-1", 1 + i * 20, 20).await;
    }
    closing.await.unwrap();
    // A resend of batches already in the stream, cut differently (new Msg-Ids).
    send(&front, "agent-1", 101, 150).await;
    let owner = Owner::open(&ctx, 1, clock(2)).await.unwrap();
    let store = owner.store.clone();
    wait_applied_all(&nats, &store).await;
    let want = oids_of(1, 2, 1, 400);
    let c = store.counters().unwrap();
    assert_eq!(
        c.stored,
        want.len() as u64,
        "each det_oid of the partition stored once"
    );
    assert!(all_stored(&store, &want));
    assert!(store
        .stored_dets(&oids_of(0, 2, 1, 400))
        .unwrap()
        .iter()
        .all(|d| d.is_none()));
    drop(store);
    owner.close().await;
}

/// A new owner answers queries only once it has applied what its
/// partition's stream held when it opened: otherwise a query right after a
/// move gives fewer events than one before it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_is_caught_up_only_once_it_holds_everything_its_stream_held_at_open() {
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    let front = Front::new(nats.clone());
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    // Partition 0 has nothing in the stream yet: caught up at once.
    let empty = Owner::open(&ctx, 0, clock(1)).await.unwrap();
    tokio::time::timeout(WAIT, empty.caught_up.cancelled())
        .await
        .expect("an owner of an empty subject is caught up");
    empty.close().await;
    for i in 0..100 {
        send(&front, "agent-1", 1 + i * 40, 40).await;
    }
    let want = oids_of(1, 2, 1, 4000);
    let owner = Owner::open(&ctx, 1, clock(2)).await.unwrap();
    let store = owner.store.clone();
    let stored_then = tokio::time::timeout(WAIT, async {
        owner.caught_up.cancelled().await;
        store.counters().unwrap().stored
    })
    .await
    .expect("the owner catches up");
    assert_eq!(
        stored_then,
        want.len() as u64,
        "when it says it is caught up, it holds every event of the partition"
    );
    // Closed and opened again over the same store: nothing left to apply.
    drop(store);
    owner.close().await;
    let owner = Owner::open(&ctx, 1, clock(3)).await.unwrap();
    tokio::time::timeout(WAIT, owner.caught_up.cancelled())
        .await
        .expect("caught up again");
    assert_eq!(owner.store.counters().unwrap().stored, want.len() as u64);
    owner.close().await;
}

/// Rule 31: an attach received by any node is carried to the owners of its
/// events' partitions and kept in their stores (so it moves with them); one
/// from another agent than the events' publisher is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footage_attached_on_any_node_is_kept_by_its_events_partitions_and_another_agents_is_refused(
) {
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    let front = Front::new(nats.clone());
    let (d0, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let o0 = Owner::open(&owner_ctx(&nats, d0.path()), 0, clock(1))
        .await
        .unwrap();
    let o1 = Owner::open(&owner_ctx(&nats, d1.path()), 1, clock(1))
        .await
        .unwrap();
    send(&front, "agent-1", 1, 20).await;
    let stores = [o0.store.clone(), o1.store.clone()];
    wait_for("the events stored", async || {
        stores
            .iter()
            .map(|s| s.counters().unwrap().stored)
            .sum::<u64>()
            == 20
    })
    .await;
    let oids: Vec<i64> = (1001..=1020).collect();
    let at = sightline_proto::now_ms();
    super::media::publish_attach(
        &nats,
        oids.clone(),
        media_ref("snapshot", 'a'),
        at,
        Some("agent-1".into()),
    )
    .await
    .unwrap();
    // Another agent's footage for an event of agent-1's, then agent-1's
    // thumbnail: once that is kept, the other was looked at (stream order).
    super::media::publish_attach(
        &nats,
        vec![1001],
        media_ref("clip", 'b'),
        at,
        Some("agent-2".into()),
    )
    .await
    .unwrap();
    super::media::publish_attach(
        &nats,
        vec![1001],
        media_ref("thumbnail", 'c'),
        at,
        Some("agent-1".into()),
    )
    .await
    .unwrap();
    let holder = &stores[keys::partition_of(1001, 2)];
    wait_for("agent-1's thumbnail kept", async || {
        holder
            .media_of(1001, "agent-1")
            .unwrap()
            .iter()
            .any(|m| m.kind == "thumbnail")
    })
    .await;
    for &oid in &oids {
        let s = &stores[keys::partition_of(oid, 2)];
        let other = &stores[1 - keys::partition_of(oid, 2)];
        wait_for("the snapshot kept with its event", async || {
            s.media_of(oid, "agent-1")
                .unwrap()
                .iter()
                .any(|m| m.sha256 == "a".repeat(64))
        })
        .await;
        assert!(
            other.media_of(oid, "agent-1").unwrap().is_empty(),
            "kept only by its partition"
        );
    }
    assert!(
        holder.media_of(1001, "agent-2").unwrap().is_empty(),
        "another agent's footage is not attached to agent-1's event"
    );
    drop(stores);
    o0.close().await;
    o1.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_publishes_its_commits_to_out_and_a_stale_owners_publish_is_refused() {
    let server = NatsServer::start();
    let nats = server.connect("a", 1).await;
    let front = Front::new(nats.clone());
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx, 0, clock(1)).await.unwrap();
    send(&front, "agent-1", 1, 5).await;
    wait_for("5 events in SIGHTLINE_OUT", async || {
        out_events(&nats, 0).await.len() == 5
    })
    .await;
    let published = stream_messages(&nats, OUT_STREAM).await;
    // Another owner (with the partition now) publishes to the subject.
    nats.js
        .publish(out_subject(0), "newer owner".into())
        .await
        .unwrap()
        .await
        .unwrap();
    send(&front, "agent-1", 6, 5).await;
    // The stale owner's next publish is refused and it stops.
    let failed = owner.failed.clone();
    wait_for("the stale owner to stop", async || failed.is_cancelled()).await;
    assert_eq!(stream_messages(&nats, OUT_STREAM).await, published + 1);
    assert!(!owner.lease.valid());
    owner.close().await;
}

/// The det_oids of partition `p`'s events in [`OUT_STREAM`], in order,
/// with the outbox position each message carries (its last event's).
async fn out_messages(nats: &Nats, p: u16) -> Vec<(Vec<i64>, String)> {
    use prost::Message;
    let stream = nats.js.get_stream(OUT_STREAM).await.unwrap();
    let last = stream.cached_info().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        if m.subject.as_str() != out_subject(p) {
            continue;
        }
        let batch = super::feed::OutBatch::decode(m.payload.as_ref()).unwrap();
        let pos = m
            .headers
            .get(super::owner::OUT_POS_HEADER)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let dets = batch
            .events
            .into_iter()
            .map(|e| e.detection.unwrap().detection_oid.unwrap())
            .collect();
        out.push((dets, pos));
    }
    out
}

async fn out_events(nats: &Nats, p: u16) -> Vec<i64> {
    out_messages(nats, p)
        .await
        .into_iter()
        .flat_map(|m| m.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_owner_committed_and_did_not_publish_before_it_died_is_published_by_the_next_once()
{
    let server = NatsServer::start();
    // A short duplicate window: the next owner's publishes are not
    // hidden by JetStream's Msg-Id dedup, only its cursor keeps them once.
    let cfg = super::config::ClusterConfig {
        duplicate_window: Duration::from_millis(500),
        ..server.config("a", 1)
    };
    let nats = Nats::connect(&cfg, "a").await.unwrap();
    let front = Front::new(nats.clone());
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx, 0, clock(1)).await.unwrap();
    send(&front, "agent-1", 1, 6).await;
    wait_for("6 events in SIGHTLINE_OUT", async || {
        out_events(&nats, 0).await.len() == 6
    })
    .await;
    send(&front, "agent-1", 7, 4).await;
    wait_for("10 events in SIGHTLINE_OUT", async || {
        out_events(&nats, 0).await.len() == 10
    })
    .await;
    owner.close().await;
    // The owner had committed all ten but published the first six when it
    // died: the stream is made to hold what it would then.
    let stream = nats.js.get_stream(OUT_STREAM).await.unwrap();
    let first = stream.get_raw_message(1).await.unwrap();
    stream.purge().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut headers = async_nats::HeaderMap::new();
    let pos = first.headers.get(super::owner::OUT_POS_HEADER).unwrap();
    headers.insert(super::owner::OUT_POS_HEADER, pos.as_str());
    nats.js
        .publish_with_headers(first.subject, headers, first.payload)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(out_events(&nats, 0).await.len(), 6);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A duplicate share from the agent (after the window too) stores nothing.
    send(&front, "agent-1", 9, 2).await;
    let next = Owner::open(&ctx, 0, clock(2)).await.unwrap();
    send(&front, "agent-1", 11, 5).await;
    let want: Vec<i64> = (1001..=1015).collect();
    wait_for("15 events in SIGHTLINE_OUT", async || {
        out_events(&nats, 0).await.len() >= 15
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(out_events(&nats, 0).await, want);
    // Every message says where its last event is in the outbox, in order.
    let pos: Vec<super::super::store::outbox::Position> = out_messages(&nats, 0)
        .await
        .iter()
        .map(|g| g.1.parse().unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    next.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_the_partitions_and_a_dead_nodes_partitions_move_to_the_living() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let start = |id: &'static str| {
        let server = &server;
        let dir = dir.path().join(id);
        async move {
            let nats = server.connect(id, 4).await;
            let info = NodeInfo {
                node_id: id.into(),
                grpc: format!("{id}:1"),
                http: format!("{id}:2"),
                edge: None,
                heartbeat_ms: 0,
            };
            let ctx = owner_ctx(&nats, &dir);
            let stop = tokio_util::sync::CancellationToken::new();
            let node = Node::start(&server.config(id, 4), nats, info, ctx, stop.clone())
                .await
                .unwrap();
            let task = tokio::spawn(node.clone().run(stop.clone()));
            (node, task, stop)
        }
    };
    let (a, a_task, _a_stop) = start("a").await;
    wait_for("a to hold every partition", async || {
        a.held().await.len() == 4
    })
    .await;
    let (b, _b_task, b_stop) = start("b").await;
    // Held first, then opened and answering (a moment later).
    wait_for(
        "a and b to hold 2 each, b answering for its 2",
        async || a.held().await.len() == 2 && b.held().await.len() == 2 && b.local().len() == 2,
    )
    .await;
    for p in 0..4 {
        let owner = a.owner(p).expect("every partition has an owner");
        let holder = if a.held().await.contains(&p) {
            "a"
        } else {
            "b"
        };
        assert_eq!(owner.node_id, holder);
    }
    // a dies (its lease loop stops without giving anything back).
    a_task.abort();
    wait_for("b to hold every partition", async || {
        b.held().await.len() == 4
    })
    .await;
    b_stop.cancel();
}

/// Rule 30: the shares after an owner's previous checkpoint stay in the
/// stream whatever it uploads next (it may be stale by then, and the owner
/// after it may have started from that previous checkpoint); a new owner
/// restores the newest checkpoint and replays the rest to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_restores_the_checkpoint_and_replays_the_rest_to_the_same_state() {
    let server = NatsServer::start();
    let nats = server.connect("a", 1).await;
    let front = Front::new(nats.clone());
    let (dir_a, dir_b, objects) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let url = format!("file://{}", objects.path().display());
    let interval = Duration::from_millis(200);
    let with_checkpoints = |dir: &std::path::Path| OwnerContext {
        checkpoints: Some(url.clone()),
        checkpoint_interval: interval,
        ..owner_ctx(&nats, dir)
    };
    let dest = super::checkpoint::dest(&url, 0).unwrap();
    let newest = async || {
        super::checkpoint::latest(&dest)
            .await
            .unwrap()
            .map_or(0, |m| m.stream_seq)
    };
    // What the stream must hold once `sent` shares are in it: all of them
    // after a first checkpoint, those after the one before the newest once
    // there are two or more. Which checkpoints there are depends on how
    // the sends fell between the owner's ticks, so it is read back.
    let held = async |sent: u64| {
        let mut seqs: Vec<u64> = dest
            .names("checkpoints")
            .await
            .unwrap()
            .iter()
            .filter_map(|n| n.strip_suffix(".json")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        let previous = seqs.len().checked_sub(2).map_or(0, |i| seqs[i]);
        sent - previous
    };
    let a = Owner::open(&with_checkpoints(dir_a.path()), 0, clock(1))
        .await
        .unwrap();
    for i in 0..5 {
        send(&front, "agent-1", 1 + i * 10, 10).await;
    }
    wait_for("the first checkpoint", async || newest().await == 5).await;
    // Reported for `cluster status` (its age).
    let m = super::checkpoint::latest(&dest).await.unwrap().unwrap();
    wait_for("its age reported", async || {
        a.checkpoint_ms.load(std::sync::atomic::Ordering::SeqCst) == m.created_ms
    })
    .await;
    // A first checkpoint purges nothing (`held` gives all 5 when there is
    // one): an owner that started before it landed may still need every
    // share.
    tokio::time::sleep(3 * interval).await;
    assert_eq!(stream_messages(&nats, IN_STREAM).await, held(5).await);
    for i in 5..8 {
        send(&front, "agent-1", 1 + i * 10, 10).await;
    }
    wait_for("the second checkpoint", async || newest().await == 8).await;
    // A later one purges what the one before it covers, and no more.
    let want = held(8).await;
    assert!(
        want < 8,
        "two checkpoints at least (5 and 8): some shares purged"
    );
    wait_for(
        "the shares the previous checkpoint covers purged",
        async || stream_messages(&nats, IN_STREAM).await == want,
    )
    .await;
    tokio::time::sleep(3 * interval).await;
    assert_eq!(stream_messages(&nats, IN_STREAM).await, want);
    let want = a.store.counters().unwrap();
    a.close().await;
    // Two more batches while no one holds the partition.
    for i in 8..10 {
        send(&front, "agent-1", 1 + i * 10, 10).await;
    }
    // Another node (no local state) takes the partition over: checkpoint
    // 8, then shares 9 and 10 from the stream.
    let b = Owner::open(&with_checkpoints(dir_b.path()), 0, clock(2))
        .await
        .unwrap();
    let store = b.store.clone();
    wait_for("b to replay after the checkpoint", async || {
        store.stream_seq().unwrap() == 10
    })
    .await;
    let got = store.counters().unwrap();
    assert_eq!(
        (got.stored, got.dup_transport, got.dup_semantic),
        (want.stored + 20, want.dup_transport, want.dup_semantic)
    );
    assert_eq!(got.stored, 100);
    let oids: Vec<i64> = (1..=100).map(|s| 1000 + s).collect();
    assert!(all_stored(&store, &oids));
    drop(store);
    b.close().await;
}

/// The front's cost, measured: 200 batches of 500 events into 32
/// partitions on one local nats-server (R1, file storage), one session.
/// `cargo test -p sightline-core --lib front_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn front_throughput() {
    let server = NatsServer::start();
    let nats = server.connect("a", 32).await;
    let front = Front::new(nats.clone());
    let started = Instant::now();
    let (batches, per) = (200u64, 500u64);
    for i in 0..batches {
        send(&front, "agent-1", 1 + i * per, per).await;
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "front: {} events in {s:.2}s = {:.0} events/s, {:.2} ms per batch (32 shares + watermark CAS)",
        batches * per,
        (batches * per) as f64 / s,
        s * 1000.0 / batches as f64
    );
}

/// One nats-server, 2 partitions and `batches` batches of 10 sent: one share
/// per partition each, p0 then p1 (seqs 1 2, 3 4, ...).
async fn two_partitions_with(batches: u64) -> (NatsServer, Nats) {
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    let front = Front::new(nats.clone());
    for i in 0..batches {
        send(&front, "agent-1", 1 + i * 10, 10).await;
    }
    (server, nats)
}

/// The owner's check of a gap in what its consumer delivered: the stream's
/// leader names the partition's first share at or after a sequence (the
/// non-direct get, answered by the leader, on Debian's nats-server 2.9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_names_a_partitions_first_share_after_a_sequence() {
    // Seqs 1 to 6.
    let (_server, nats) = two_partitions_with(3).await;
    let next = async |p, from| super::owner::leader_next(&nats, p, from).await.unwrap();
    assert_eq!(next(1, 1).await, Some(2));
    assert_eq!(next(1, 3).await, Some(4));
    assert_eq!(next(0, 2).await, Some(3));
    assert_eq!(next(1, 7).await, None, "past the last share");
    // Purged shares (covered by a checkpoint) are not named.
    let handled = std::sync::Mutex::new(super::checkpoint::Handled::default());
    super::checkpoint::delete_applied(&nats, 1, 5, &handled)
        .await
        .unwrap();
    assert_eq!(next(1, 1).await, Some(6));
    assert_eq!(next(0, 1).await, Some(1), "another partition's shares stay");
}

/// PROTOCOL.md rule 30: an owner deletes its partition's shares below the
/// point a checkpoint covers, one by one — those it dealt with, and those
/// an earlier owner left before them (named by the stream's leader) — and
/// no other message; one deleted already counts as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_deletes_the_checkpointed_shares_it_and_earlier_owners_dealt_with_and_no_others() {
    use super::checkpoint::{delete_applied, Handled};
    // Seqs 1 to 12.
    let (_server, nats) = two_partitions_with(6).await;
    let next = async |p, from| super::owner::leader_next(&nats, p, from).await.unwrap();
    // This owner dealt with p1's shares from seq 6 on; 2 and 4 are an
    // earlier owner's.
    let handled = std::sync::Mutex::new(Handled::default());
    let fp10 = dealt_with(&nats, 10).await;
    for seq in [6, 8, 10, 12] {
        let fp = dealt_with(&nats, seq).await;
        handled.lock().unwrap().push(seq, fp);
    }
    let deleted = async |keep_from, h: &std::sync::Mutex<Handled>| {
        let d = delete_applied(&nats, 1, keep_from, h).await.unwrap();
        assert!(d.diverged.is_empty());
        d.count
    };
    assert_eq!(deleted(9, &handled).await, 4);
    assert_eq!(next(1, 1).await, Some(10), "2, 4, 6 and 8 gone");
    assert_eq!(next(0, 1).await, Some(1), "another partition's shares stay");
    // What it knows now starts at 10 (no earlier owner's left to ask for);
    // a seq deleted already (by an owner before it) counts as gone.
    handled.lock().unwrap().push(14, 0);
    let mut again = Handled::default();
    again.push(10, fp10);
    again.push(10, fp10);
    let again = std::sync::Mutex::new(again);
    assert_eq!(deleted(11, &again).await, 1);
    assert_eq!(deleted(13, &handled).await, 1, "12 (10 was gone)");
    assert_eq!(next(1, 1).await, None);
    assert_eq!(next(0, 1).await, Some(1));
}

/// A snapshot's or clip's reference, its digest `c` repeated.
fn media_ref(kind: &str, c: char) -> sightline_proto::v1::MediaRef {
    sightline_proto::v1::MediaRef {
        kind: kind.into(),
        sha256: c.to_string().repeat(64),
        content_type: if kind == "clip" {
            "video/mp4"
        } else {
            "image/jpeg"
        }
        .into(),
        size: 10,
    }
}

/// Two partitions whose IN stream holds agent-1's first batch: seqs 1 (p0)
/// and 2 (p1); and p1's first det_oid.
async fn a_share_in_each_of_two_partitions() -> (NatsServer, Nats, i64) {
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    send(&Front::new(nats.clone()), "agent-1", 1, 20).await;
    (server, nats, oids_of(1, 2, 1, 20)[0])
}

/// The fingerprint of the IN message at `seq`, as an owner delivered it
/// records it.
async fn dealt_with(nats: &Nats, seq: u64) -> u64 {
    let stream = nats.js.get_stream(IN_STREAM).await.unwrap();
    let m = stream.get_raw_message(seq).await.unwrap();
    super::checkpoint::fingerprint(&m.payload)
}

/// A message the stream's leader holds at a sequence where the owner's
/// consumer delivered another one (nats-server 2.9.10's replicas were seen
/// to differ so after two of three were killed) is not deleted with the
/// messages a checkpoint covers, once the owner has seen a sign of a NATS
/// fault: it stays in the stream, where the owner's check for acknowledged
/// seqs it was never handed finds a share, and footage there is attached
/// and published again after the checkpoint — tried again when NATS failed
/// it the first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_leader_holds_where_the_owner_was_delivered_another_is_kept_and_its_footage_attached(
) {
    use super::checkpoint::{delete_applied, Handled};
    // Seqs 1 (p0) and 2 (p1); then p1's attach at 3.
    let (server, nats, oid) = a_share_in_each_of_two_partitions().await;
    let snapshot = media_ref("snapshot", 'a');
    let at = sightline_proto::now_ms();
    super::media::publish_attach(&nats, vec![oid], snapshot, at, Some("agent-1".into()))
        .await
        .unwrap();
    assert_eq!(
        super::owner::leader_next(&nats, 1, 3).await.unwrap(),
        Some(3)
    );
    // The owner was delivered the share at 2, and at 3 another message
    // than the leader's attach (here: the share's payload again); its
    // consumer had broken (a nats-server died), so it checks before it
    // deletes.
    let share = dealt_with(&nats, 2).await;
    let handled = std::sync::Mutex::new(Handled::default());
    handled.lock().unwrap().push(2, share);
    handled.lock().unwrap().push(3, share);
    handled.lock().unwrap().suspect();
    let d = delete_applied(&nats, 1, 4, &handled).await.unwrap();
    assert_eq!(d.count, 1, "the share at 2 deleted");
    let kept: Vec<u64> = d.diverged.iter().map(|m| m.sequence).collect();
    assert_eq!(kept, [3]);
    assert_eq!(
        super::owner::leader_next(&nats, 1, 1).await.unwrap(),
        Some(3),
        "the attach stays in the stream"
    );
    // The partition's store holds the event, not the footage it never
    // applied; the owner attaches it from what the leader holds.
    let (_dir, store) = store_with_event(oid, at);
    let attach = dealt_with(&nats, 3).await;
    // NATS not answering: the attach is not dealt with, and comes back to
    // be tried again (the owner does so at its next checkpoint).
    server.pause();
    let failed = super::owner::deal_with_diverged(&nats, &store, 1, d.diverged).await;
    server.resume();
    let (_, left) = failed.expect_err("publishing with NATS paused fails");
    let left_seqs: Vec<u64> = left.iter().map(|m| m.sequence).collect();
    assert_eq!(left_seqs, [3]);
    super::owner::deal_with_diverged(&nats, &store, 1, left)
        .await
        .unwrap();
    let media = store.media_of(oid, "agent-1").unwrap();
    assert_eq!(media.len(), 1);
    assert_eq!(media[0].sha256, "a".repeat(64));
    // And it is in the stream again after the checkpoint (an owner that
    // restores it replays the attach), the leader's message at 3 deleted.
    let again = super::owner::leader_next(&nats, 1, 1).await.unwrap();
    assert!(again.is_some_and(|s| s > 3), "{again:?}");
    assert_eq!(dealt_with(&nats, again.unwrap()).await, attach);
}

/// A partition's store holding agent-1's event `oid` (no footage yet).
fn store_with_event(oid: i64, at: i64) -> (tempfile::TempDir, Arc<crate::store::Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(crate::store::Store::open(&dir.path().join("db"), false, 8 << 20).unwrap());
    let mut c = store.begin(at).unwrap();
    let event = sightline_proto::v1::JoinedEvent {
        detection: Some(Detection {
            geographical_location_oid: 1,
            video_camera_oid: 7,
            detection_oid: Some(oid),
            item_name: "person".into(),
            timestamp_detected: at,
            ..Default::default()
        }),
        agent_id: "agent-1".into(),
        seq: 1,
        ..Default::default()
    };
    c.put_event(&event, None);
    store.commit(c).unwrap();
    assert!(store.media_of(oid, "agent-1").unwrap().is_empty());
    (dir, store)
}

/// An owner may leave a partition with footage it did not apply (a
/// diverged attach it was to try again, or one it had not reached): the
/// owner taking the partition over, whose checkpoint restored from the
/// earlier owner's may lack it, keeps the attaches it finds before the
/// first message it dealt with instead of deleting them, attaches their
/// footage and publishes them again after its checkpoint; the shares
/// there, and the attaches it dealt with itself, are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footage_an_earlier_owner_left_in_the_stream_is_attached_by_the_owner_taking_the_partition_over(
) {
    use super::checkpoint::{delete_applied, Handled};
    // Seqs 1 (p0) and 2 (p1), the earlier owner's share; p1's attach at 3,
    // left by it; then an attach at 4 this owner is delivered.
    let (_server, nats, oid) = a_share_in_each_of_two_partitions().await;
    let at = sightline_proto::now_ms();
    for c in ['a', 'b'] {
        let snapshot = media_ref("snapshot", c);
        super::media::publish_attach(&nats, vec![oid], snapshot, at, Some("agent-1".into()))
            .await
            .unwrap();
    }
    let handled = std::sync::Mutex::new(Handled::default());
    handled.lock().unwrap().check_through(3);
    let this_owners = dealt_with(&nats, 4).await;
    handled.lock().unwrap().push(4, this_owners);
    let left = dealt_with(&nats, 3).await;
    let d = delete_applied(&nats, 1, 5, &handled).await.unwrap();
    assert_eq!(d.count, 2, "the share at 2 and this owner's attach at 4");
    assert!(d.diverged.is_empty());
    let kept: Vec<u64> = d.unseen_attaches.iter().map(|m| m.sequence).collect();
    assert_eq!(kept, [3]);
    // (Read by sequence: nats-server 2.9.10 names no message of the
    // subject after its first and last were deleted around one kept, until
    // another message comes.)
    let stream = nats.js.get_stream(IN_STREAM).await.unwrap();
    let held = async |seq| stream.get_raw_message(seq).await.is_ok();
    assert!(
        held(3).await,
        "the earlier owner's attach stays in the stream"
    );
    assert!(!held(2).await && !held(4).await);
    // The store restored from the earlier owner's checkpoint lacks it.
    let (_dir, store) = store_with_event(oid, at);
    super::owner::deal_with_diverged(&nats, &store, 1, d.unseen_attaches)
        .await
        .unwrap();
    let attached = store.media_of(oid, "agent-1").unwrap();
    assert_eq!(attached.len(), 1);
    assert_eq!(attached[0].sha256, "a".repeat(64));
    // In the stream again after this owner's checkpoint, the message at 3
    // deleted.
    assert!(!held(3).await);
    let again = super::owner::leader_next(&nats, 1, 1).await.unwrap();
    assert_eq!(again, Some(5));
    assert_eq!(dealt_with(&nats, 5).await, left);
}

/// An owner that takes a partition over checks the messages its subject
/// held then against the stream's leader before it deletes them (a
/// previous owner may have seen a NATS fault that left this owner's
/// replica differing from the leader; this owner cannot tell), and, with
/// no sign of a fault since, not the messages that came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_taking_a_partition_over_checks_what_its_subject_held_then_before_deleting_it() {
    use super::checkpoint::{delete_applied, Handled};
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    let front = Front::new(nats.clone());
    // Partition 1's shares at 2 and 4.
    send(&front, "agent-1", 1, 20).await;
    send(&front, "agent-1", 21, 20).await;
    let handled = std::sync::Mutex::new(Handled::default());
    let took_over_at = super::owner::leader_last(&nats, 1).await.unwrap();
    assert_eq!(took_over_at, 4);
    handled.lock().unwrap().check_through(took_over_at);
    // Then its shares at 6 and 8.
    send(&front, "agent-1", 41, 20).await;
    send(&front, "agent-1", 61, 20).await;
    // The owner was delivered other messages than the leader's at 2 and at
    // 6 (a replica differing from the leader), the leader's at 4 and 8.
    let other = super::checkpoint::fingerprint(b"another message");
    for (seq, fp) in [
        (2, other),
        (4, dealt_with(&nats, 4).await),
        (6, other),
        (8, dealt_with(&nats, 8).await),
    ] {
        handled.lock().unwrap().push(seq, fp);
    }
    let d = delete_applied(&nats, 1, 9, &handled).await.unwrap();
    let kept: Vec<u64> = d.diverged.iter().map(|m| m.sequence).collect();
    assert_eq!(kept, [2], "the leader's message at 2 is kept");
    assert_eq!(d.count, 3, "4, 6 and 8 deleted: {d:?}");
    assert_eq!(
        super::owner::leader_next(&nats, 1, 1).await.unwrap(),
        Some(2)
    );
    assert_eq!(super::owner::leader_next(&nats, 1, 3).await.unwrap(), None);
    assert!(!handled.lock().unwrap().suspected());
}

/// Publishes partition `p`'s share of the batch `first..first + n` of
/// agent-1 straight to the IN stream, as a front whose session then failed
/// would have left it: the agent's watermark does not move.
async fn publish_share(nats: &Nats, p: u16, first: u64, n: u64) -> u64 {
    use super::share::{ShareEvent, ShareMsg};
    let share = ShareMsg {
        agent: "agent-1".into(),
        epoch: 1,
        first_seq: first,
        count: n,
        last_digest: first + n,
        events: oids_of(p, 2, first, n)
            .into_iter()
            .map(|o| ShareEvent::from_incoming(event((o - 1000) as u64, o)))
            .collect(),
    };
    nats.js
        .publish(super::in_subject(p), share.encode_bytes())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// Whether `store` holds an event of every det_oid of `oids`.
fn all_stored(store: &crate::store::Store, oids: &[i64]) -> bool {
    store.stored_dets(oids).unwrap().iter().all(|d| d.is_some())
}

fn lost_seqs(ctx: &OwnerContext, p: u16) -> u64 {
    ctx.metrics
        .cluster
        .lost_seqs
        .get_or_create(&crate::metrics::PartitionLabel {
            partition: p.to_string(),
        })
        .get()
}

/// "No acknowledged event is dropped without an error that names why":
/// shares acknowledged to the agent (it deleted the events) that the IN
/// stream no longer holds — as nats-server#4196's replayed purge lost them
/// — are counted and logged as lost by the partition's owner, which applies
/// the agent's later shares past them instead of refusing each as a gap;
/// the agent's last shares, lost with nothing after them, are found once
/// the partition is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_shares_the_stream_lost_are_named_and_the_agents_later_ones_still_applied() {
    // Seqs 1 to 10: agent-1's batches 1..=10, 11..=20, ... (p0, p1 each).
    let (_server, nats) = two_partitions_with(5).await;
    // The stream loses p1's shares of 11..=20 (seq 4) and 41..=50 (seq 10,
    // its last).
    for seq in [4, 10] {
        super::checkpoint::delete_message(&nats, seq).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx, 1, clock(1)).await.unwrap();
    let store = owner.store.clone();
    wait_for("the owner to apply the stream", async || {
        store.stream_seq().unwrap() >= 8
    })
    .await;
    assert_eq!(lost_seqs(&ctx, 1), 10, "seqs 11..=20 counted as lost");
    // Idle (5 s), the owner finds 41..=50 acknowledged and not in the stream.
    wait_for("the loss at the stream's end", async || {
        lost_seqs(&ctx, 1) == 20
    })
    .await;
    let lost = [oids_of(1, 2, 11, 10), oids_of(1, 2, 41, 10)].concat();
    let kept: Vec<i64> = oids_of(1, 2, 1, 50)
        .into_iter()
        .filter(|o| !lost.contains(o))
        .collect();
    assert!(!kept.is_empty() && lost.len() > 2);
    assert_eq!(store.counters().unwrap().stored, kept.len() as u64);
    assert!(all_stored(&store, &kept));
    assert_eq!(store.watermark("agent-1", 1).unwrap(), 50);
    // A restart reads the stream again from where the owner committed:
    // nothing more is stored or counted.
    drop(store);
    owner.close().await;
    let ctx2 = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx2, 1, clock(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(owner.store.counters().unwrap().stored, kept.len() as u64);
    assert_eq!(lost_seqs(&ctx2, 1), 0);
    owner.close().await;
}

/// Rule 25's gap is not taken for a loss: a share left by a failed session
/// waits for the agent to send the batches again — whether the owner meets
/// it before the agent's watermark passes the gap, or after, with the
/// resend further on in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_agent_sends_again_is_not_taken_for_a_loss() {
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    let front = Front::new(nats.clone());
    send(&front, "agent-1", 1, 10).await;
    // A failed session's later share: 11..=20 never made it.
    let orphan = publish_share(&nats, 1, 21, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx, 1, clock(1)).await.unwrap();
    let store = owner.store.clone();
    wait_for("the owner to reach the orphan", async || {
        store.stream_seq().unwrap() >= orphan
    })
    .await;
    assert_eq!(store.watermark("agent-1", 1).unwrap(), 10, "refused");
    // The agent sends both again.
    send(&front, "agent-1", 11, 10).await;
    send(&front, "agent-1", 21, 10).await;
    wait_for("the owner to apply the resend", async || {
        store.watermark("agent-1", 1).unwrap() == 30
    })
    .await;
    drop(store);
    owner.close().await;
    // Once more with the owner closed: it meets the orphan after the
    // watermark passed it, the resend further on.
    publish_share(&nats, 1, 41, 10).await;
    send(&front, "agent-1", 31, 10).await;
    send(&front, "agent-1", 41, 10).await;
    let ctx = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx, 1, clock(2)).await.unwrap();
    let store = owner.store.clone();
    wait_applied_all(&nats, &store).await;
    let want = oids_of(1, 2, 1, 50);
    assert_eq!(store.counters().unwrap().stored, want.len() as u64);
    assert!(all_stored(&store, &want));
    assert_eq!(store.watermark("agent-1", 1).unwrap(), 50);
    assert_eq!(lost_seqs(&ctx, 1), 0);
    drop(store);
    owner.close().await;
}

/// Acknowledged seqs whose share the owner passed are applied, not taken
/// for lost: the stream may hold an agent's shares out of order — a failed
/// session's orphan flushed after the agent's resend of the batches past
/// it, or (nats-server 2.9.10, two of three servers killed) a consumer's
/// replica holding another share at a stream sequence than the leader —
/// and the share that brings the first missing seq is then behind the
/// owner. Found in the subject as the stream's leader holds it, mid-stream
/// and at the stream's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_share_the_owner_passed_is_applied_not_taken_for_lost() {
    let server = NatsServer::start();
    let nats = server.connect("a", 2).await;
    let front = Front::new(nats.clone());
    // Partition 1 holds 11..=20 before 1..=10, and 41..=50 before 31..=40
    // (its last): each first share is refused as a gap when the owner
    // meets it, as the share after it brings the seqs before.
    for (first, n) in [(11, 10), (1, 10), (21, 10), (41, 10), (31, 10)] {
        publish_share(&nats, 1, first, n).await;
    }
    // The agent was acknowledged for every one: it resumes past them.
    front
        .advance(
            "agent-1",
            1,
            super::front::Watermark {
                through: 50,
                digest: 0,
            },
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx, 1, clock(1)).await.unwrap();
    let store = owner.store.clone();
    wait_applied_all(&nats, &store).await;
    assert!(
        store.watermark("agent-1", 1).unwrap() >= 40,
        "11..=20 applied mid-stream"
    );
    // 41..=50 once the partition is idle (5 s).
    wait_for("every seq applied", async || {
        store.watermark("agent-1", 1).unwrap() == 50
    })
    .await;
    let want = oids_of(1, 2, 1, 50);
    assert_eq!(store.counters().unwrap().stored, want.len() as u64);
    assert!(all_stored(&store, &want));
    assert_eq!(lost_seqs(&ctx, 1), 0);
    drop(store);
    owner.close().await;
}

/// A loss at the end of an agent's stream is named while other agents keep
/// its partition busy: the owner does not wait for the partition to be
/// idle, which it is not while the rest of a fleet publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_lost_last_shares_are_named_while_other_agents_keep_its_partition_busy() {
    // Seqs 1 to 10: agent-1's batches 1..=10 to 41..=50 (p0, p1 each).
    let (_server, nats) = two_partitions_with(5).await;
    // The stream loses p1's share of 41..=50, agent-1's last.
    super::checkpoint::delete_message(&nats, 10).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = owner_ctx(&nats, dir.path());
    let owner = Owner::open(&ctx, 1, clock(1)).await.unwrap();
    let store = owner.store.clone();
    // agent-2 sends a batch of 10 every 200 ms (a share in each partition)
    // until the loss is named, its det_oids apart from agent-1's.
    const AGENT_2: i64 = 1_000_000;
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = {
        let (front, stop) = (Front::new(nats.clone()), stop.clone());
        tokio::spawn(async move {
            let (mut first, mut longest, mut last) = (1, Duration::ZERO, Instant::now());
            while !stop.is_cancelled() {
                let (req, rx) = batch_from("agent-2", first, 10, AGENT_2);
                front.submit(req).await.unwrap();
                rx.await.unwrap().unwrap();
                first += 10;
                longest = longest.max(last.elapsed());
                last = Instant::now();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (first - 1, longest)
        })
    };
    wait_for("the loss at agent-1's stream's end", async || {
        lost_seqs(&ctx, 1) == 10
    })
    .await;
    stop.cancel();
    let (sent, longest) = sender.await.unwrap();
    assert!(
        longest < Duration::from_secs(2),
        "agent-2's batches kept partition 1 busy (longest pause {longest:?})"
    );
    wait_applied_all(&nats, &store).await;
    assert_eq!(store.watermark("agent-1", 1).unwrap(), 50);
    assert_eq!(store.watermark("agent-2", 1).unwrap(), sent);
    let agent_2: Vec<i64> = (1..=sent)
        .map(|s| AGENT_2 + s as i64)
        .filter(|o| keys::partition_of(*o, 2) == 1)
        .collect();
    let kept = [oids_of(1, 2, 1, 40), agent_2].concat();
    assert_eq!(store.counters().unwrap().stored, kept.len() as u64);
    assert!(all_stored(&store, &kept));
    assert_eq!(lost_seqs(&ctx, 1), 10);
    drop(store);
    owner.close().await;
}
