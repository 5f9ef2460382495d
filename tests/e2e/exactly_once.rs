//! Exactly once, end to end: real core and agent processes, real RocksDB, on
//! 127.0.0.1 over both transports of the edge link (gRPC over TLS, QUIC, each
//! with client certificates); the stored result is compared with ground truth
//! computed from the generated input alone.

use std::time::Duration;

use futures::StreamExt;
use sightline_proto::v1::{
    agent_message, core_message, ingest_client::IngestClient, intake_client::IntakeClient,
    publish_result, AgentMessage, Batch, CoreMessage, Detection, EdgeEvent, Hello, PublishRequest,
    SubscribeRequest,
};
use sightline_tests::{
    data::write_locations,
    query::{assert_exactly_once, stats, wait_more_stored, wait_more_stored_before},
    wait_for, Agent, AgentArgs, Core, Dataset, Edge, ImpairedTcpProxy, Impairment, UdpProxy,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LOCATIONS: &[i64] = &[1, 2, 3, 4, 5];

/// The disruption tests replay ~44,000 events at this rate (~15 s) and
/// reconnect within [`RECONNECT`], so every kill or cut falls mid-stream.
const RATE: u32 = 3000;
const RECONNECT: Duration = Duration::from_millis(300);

// Each runs as `<test>::grpc` and `<test>::quic`.
sightline_tests::over_both_transports!(
    upstream_duplicates_are_stored_once,
    jsonl_replay_is_stored_exactly_once,
    core_killed_mid_stream_loses_and_duplicates_nothing,
    core_killed_while_its_det_index_takes_files_loses_and_duplicates_nothing,
    agent_killed_mid_stream_loses_and_duplicates_nothing,
    agent_killed_under_a_publishing_detector_loses_and_duplicates_nothing,
    link_cut_and_restored_loses_and_duplicates_nothing,
    new_events_reach_a_live_subscriber_while_a_backlog_drains,
);

async fn upstream_duplicates_are_stored_once(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    // Location 5 is not in Dataset B: kept, flagged, counted.
    write_locations(&b, &LOCATIONS[..4]);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(1, 20_000, 0.2, 0.3, LOCATIONS);
    let truth = data.truth();
    assert!(
        truth.published > truth.unique + 3000,
        "the input must hold many duplicates"
    );
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "dup-agent", String::new(), &csv, None).over(&core, edge),
    );
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert!(agent
        .stdout()
        .iter()
        .any(|l| l.contains(&format!("accepted={}", truth.published))));
    assert_exactly_once(&core.url(), &truth).await;
    let s = stats(&core.url()).await;
    assert_eq!(
        s.duplicates_semantic + s.duplicates_transport,
        truth.published - truth.unique
    );
    let unmatched: u64 = truth.counts[&5].values().sum();
    assert_eq!(
        s.unmatched, unmatched,
        "events at a location missing from Dataset B are counted"
    );
    let events = sightline_tests::query::all_events(&core.url()).await;
    for e in &events {
        let loc = e.detection.as_ref().unwrap().geographical_location_oid;
        assert_eq!(e.location_matched, loc != 5);
        if loc != 5 {
            assert_eq!(
                e.location.as_ref().unwrap().geographical_location,
                format!("Location {loc}")
            );
        }
    }
}

async fn jsonl_replay_is_stored_exactly_once(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(2, 5_000, 0.1, 0.5, LOCATIONS);
    let file = dir.path().join("a.jsonl");
    data.write_jsonl(&file);
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "jsonl-agent", String::new(), &file, None).over(&core, edge),
    );
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &data.truth()).await;
}

async fn core_killed_mid_stream_loses_and_duplicates_nothing(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let kills = Kills {
        seed: 3,
        unique: 40_000,
        rate: RATE,
        times: 3,
        every: 2000,
        down: Duration::from_millis(700),
    };
    replay_killing_the_core(dir.path(), core, edge, kills).await;
}

/// As above, longer, with the smallest memtables (8 MiB): the det_oid
/// index's newest entries go into it as a table file every 24,576 events
/// (`store::det_buffer`), so the kills fall between, around and after those
/// ingests, and the det_oids a commit stored come back from its det log
/// after each.
async fn core_killed_while_its_det_index_takes_files_loses_and_duplicates_nothing(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start_with_config(dir.path(), Some(&b), "[storage]\nmemtable = \"8 MiB\"\n");
    let kills = Kills {
        seed: 5,
        unique: 120_000,
        rate: 10_000,
        times: 6,
        every: 15_000,
        down: Duration::from_millis(500),
    };
    replay_killing_the_core(dir.path(), core, edge, kills).await;
}

/// A replay of a generated dataset (10 % duplicates, a fifth without a
/// det_oid) at `rate`, and the kills of the core in it.
struct Kills {
    seed: u64,
    unique: usize,
    rate: u32,
    /// Kills (-9), each after `every` more events are stored, the core
    /// started again `down` later.
    times: usize,
    every: u64,
    down: Duration,
}

/// Replays `kills`' dataset from `dir` into `core` over `edge`, killing
/// the core as it says, then compares the store with ground truth.
async fn replay_killing_the_core(dir: &std::path::Path, mut core: Core, edge: Edge, kills: Kills) {
    let data = Dataset::generate(kills.seed, kills.unique, 0.1, 0.2, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir);
    let mut agent = Agent::start(
        AgentArgs::replay(dir, "a", String::new(), &csv, Some(kills.rate))
            .over(&core, edge)
            .reconnect_within(RECONNECT),
    );
    // Each kill comes `every` events after the count read once the core is
    // back, which a drained backlog may have moved far: on a loaded machine
    // the last kills may find fewer than `every` events left to store.
    let mut done = 0;
    for _ in 0..kills.times {
        if wait_more_stored_before(&core.url(), kills.every, truth.unique)
            .await
            .is_none()
        {
            break;
        }
        core.kill9();
        tokio::time::sleep(kills.down).await;
        core.restart();
        done += 1;
    }
    assert!(
        done >= kills.times.div_ceil(2),
        "only {done} of {} kills before the run's end",
        kills.times
    );
    assert!(agent.wait(Duration::from_secs(180)).success());
    assert_exactly_once(&core.url(), &truth).await;
}

async fn agent_killed_mid_stream_loses_and_duplicates_nothing(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(4, 40_000, 0.1, 0.2, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "a", String::new(), &csv, Some(RATE))
            .over(&core, edge)
            .reconnect_within(RECONNECT),
    );
    for _ in 0..3 {
        wait_more_stored(&core.url(), 2000).await;
        agent.restart(); // kill -9, then start again on the same buffer and file
    }
    assert!(agent.wait(Duration::from_secs(180)).success());
    assert_exactly_once(&core.url(), &truth).await;
}

/// A detector publishing through the intake retries every call that did not
/// answer; the agent is killed -9 under it several times.
async fn agent_killed_under_a_publishing_detector_loses_and_duplicates_nothing(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(5, 12_000, 0.0, 0.0, LOCATIONS);
    let truth = data.truth();
    let mut agent = Agent::start(
        AgentArgs::intake(dir.path(), "intake-agent", String::new()).over(&core, edge),
    );
    let mut sent = 0;
    let mut kills = 0;
    for chunk in data.rows.chunks(200) {
        let dets: Vec<Detection> = chunk
            .iter()
            .map(|r| Detection {
                geographical_location_oid: r.geographical_location_oid,
                video_camera_oid: r.video_camera_oid,
                detection_oid: r.detection_oid,
                item_name: r.item_name.clone(),
                timestamp_detected: r.timestamp_detected,
                ..Default::default()
            })
            .collect();
        loop {
            let attempt = async {
                let mut c = IntakeClient::connect(agent.intake_url()).await.ok()?;
                c.publish(PublishRequest {
                    detections: dets.clone(),
                })
                .await
                .ok()
            };
            if let Some(resp) = attempt.await {
                assert!(resp
                    .into_inner()
                    .results
                    .iter()
                    .all(|r| matches!(r.result, Some(publish_result::Result::Accepted(_)))));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent += 1;
        if sent % 15 == 0 && kills < 3 {
            agent.restart();
            kills += 1;
        }
    }
    let url = core.url();
    wait_for("every detection stored", Duration::from_secs(120), || {
        let url = url.clone();
        let want = truth.unique;
        async move { (stats(&url).await.stored >= want).then_some(()) }
    })
    .await;
    assert_exactly_once(&core.url(), &truth).await;
}

async fn link_cut_and_restored_loses_and_duplicates_nothing(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(6, 40_000, 0.1, 0.2, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    let mut args = AgentArgs::replay(dir.path(), "a", String::new(), &csv, Some(RATE))
        .over(&core, edge)
        .reconnect_within(RECONNECT);
    let (tcp, udp) = match edge {
        Edge::Grpc => {
            let p = ImpairedTcpProxy::start(core.edge, Impairment::NONE).await;
            args.core_url = p.https_url();
            (Some(p), None)
        }
        Edge::Quic => {
            let p = UdpProxy::start(core.edge, Impairment::NONE).await;
            args.core_url = format!("quic://{}", p.addr);
            (None, Some(p))
        }
    };
    let cut = |on: bool| {
        if let Some(p) = &tcp {
            if on {
                p.cut()
            } else {
                p.restore()
            }
        }
        if let Some(p) = &udp {
            if on {
                p.cut()
            } else {
                p.restore()
            }
        }
    };
    let mut agent = Agent::start(args);
    for i in 0..4 {
        wait_more_stored(&core.url(), 1500).await;
        cut(true);
        // QUIC rides out a short cut on the same connection; the last cut
        // outlasts its idle timeout (6 s), so it must reconnect too.
        let long = edge == Edge::Quic && i == 3;
        tokio::time::sleep(Duration::from_millis(if long { 7500 } else { 800 })).await;
        cut(false);
    }
    assert!(agent.wait(Duration::from_secs(180)).success());
    assert_exactly_once(&core.url(), &truth).await;
    let log = agent.log();
    match &tcp {
        Some(p) => {
            let connections = p.connections.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                connections >= 5,
                "the agent reconnects after each cut: {connections} connections; log:\n{log}"
            );
        }
        None => {
            let sessions = log.matches("session open").count();
            assert!(
                sessions >= 2,
                "the agent reconnects after the long cut; log:\n{log}"
            );
        }
    }
}

/// Events held up by an outage (the agent could not reach the core) drain
/// once it can; events published meanwhile go ahead of them on the live lane
/// (PROTOCOL.md rule 6b): a live subscriber gets them while most of the
/// backlog is not yet stored, and everything is stored once, nothing counted
/// as a duplicate.
async fn new_events_reach_a_live_subscriber_while_a_backlog_drains(edge: Edge) {
    const BACKLOG: u64 = 150_000;
    const LIVE: i64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    // The outage: the agent is pointed at a port where nothing listens.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut args = AgentArgs::intake(dir.path(), "backlogged", String::new()).over(&core, edge);
    let real_url = args.core_url.clone();
    args.core_url = match edge {
        Edge::Grpc => format!("https://127.0.0.1:{dead_port}"),
        Edge::Quic => format!("quic://127.0.0.1:{dead_port}"),
    };
    let mut agent = Agent::start(args);
    let now = sightline_tests::data::now_ms();
    let det = |oid: i64, loc: i64| Detection {
        geographical_location_oid: loc,
        video_camera_oid: loc * 100,
        detection_oid: Some(oid),
        item_name: "car".into(),
        timestamp_detected: now,
        ..Default::default()
    };
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    for chunk in 0..BACKLOG / 1000 {
        let detections = (0..1000)
            .map(|i| det(1 + (chunk * 1000 + i) as i64, 1 + (i % 4) as i64))
            .collect();
        intake.publish(PublishRequest { detections }).await.unwrap();
    }
    assert!(agent.terminate().success());
    let mut args = agent.args.clone();
    args.core_url = real_url;
    // Location 5 is only published live, so the subscriber sees only those.
    let mut live = sightline_tests::query::client(&core.url())
        .await
        .subscribe(SubscribeRequest {
            from_ms: 0,
            filter: Some(sightline_proto::v1::EventFilter {
                geographical_location_oid: Some(5),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let agent = Agent::start(args);
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    wait_more_stored(&core.url(), 1).await;
    let mut stored_when_seen = Vec::new();
    for i in 0..LIVE {
        intake
            .publish(PublishRequest {
                detections: vec![det(1_000_000 + i, 5)],
            })
            .await
            .unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(20), live.next())
            .await
            .expect("a live event")
            .unwrap()
            .unwrap();
        assert_eq!(ev.detection.unwrap().detection_oid, Some(1_000_000 + i));
        stored_when_seen.push(stats(&core.url()).await.stored);
    }
    assert!(
        stored_when_seen[0] < BACKLOG / 2,
        "the first live event waited for the backlog: {} of {BACKLOG} backlog events stored when it arrived ({stored_when_seen:?})",
        stored_when_seen[0]
    );
    wait_for("the backlog to drain", Duration::from_secs(180), || async {
        (stats(&core.url()).await.stored == BACKLOG + LIVE as u64).then_some(())
    })
    .await;
    // Let the backlog's acks for the live events come, then check no event
    // was stored twice nor counted as a duplicate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = stats(&core.url()).await;
    assert_eq!(
        (s.stored, s.duplicates_semantic, s.rejected),
        (BACKLOG + LIVE as u64, 0, 0)
    );
}

/// Drives the ingest protocol by hand, as a misbehaving or retrying agent would.
struct RawSession {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<CoreMessage>,
    resume_from: u64,
}

impl RawSession {
    async fn open(url: &str, agent: &str, epoch: u64) -> Self {
        let mut client = IngestClient::connect(url.to_string()).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                agent_id: agent.into(),
                epoch,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut rx = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let Some(core_message::Msg::Welcome(w)) = rx.next().await.unwrap().unwrap().msg else {
            panic!("expected Welcome")
        };
        Self {
            tx,
            rx,
            resume_from: w.resume_from,
        }
    }

    async fn send(&mut self, first_seq: u64, events: Vec<EdgeEvent>) {
        use prost::Message;
        let events = events.iter().map(|e| e.encode_to_vec().into()).collect();
        self.tx
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Batch(Batch {
                    first_seq,
                    events,
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Result<CoreMessage, tonic::Status> {
        self.rx.next().await.unwrap()
    }

    async fn ack(&mut self) -> sightline_proto::v1::Ack {
        match self.next().await.unwrap().msg {
            Some(core_message::Msg::Ack(a)) => a,
            other => panic!("expected Ack, got {other:?}"),
        }
    }
}

fn edge_events(seqs: std::ops::RangeInclusive<u64>, oid_base: i64) -> Vec<EdgeEvent> {
    let now = sightline_tests::data::now_ms();
    seqs.map(|s| EdgeEvent {
        seq: s,
        accepted_ms: now,
        detection: Some(Detection {
            geographical_location_oid: 1,
            video_camera_oid: 100,
            detection_oid: Some(oid_base + s as i64),
            item_name: "person".into(),
            timestamp_detected: now - 1000,
            ..Default::default()
        }),
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn resent_batch_below_watermark_is_acked_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let url = core.url();
    let mut s = RawSession::open(&url, "raw-agent", 7).await;
    assert_eq!(s.resume_from, 1);
    s.send(1, edge_events(1..=10, 1000)).await;
    assert_eq!(s.ack().await.committed_through, 10);
    // Overlapping resend: 5..=10 are below the watermark, 11..=12 are new.
    s.send(5, edge_events(5..=12, 1000)).await;
    let a = s.ack().await;
    assert_eq!(a.committed_through, 12);
    assert_eq!(a.duplicates, 6);
    drop(s);
    // A reconnect is told where to resume; a full resend is acked, not stored.
    let mut s = RawSession::open(&url, "raw-agent", 7).await;
    assert_eq!(s.resume_from, 13);
    s.send(1, edge_events(1..=12, 1000)).await;
    let a = s.ack().await;
    assert_eq!((a.committed_through, a.duplicates), (12, 12));
    let st = stats(&url).await;
    assert_eq!((st.stored, st.duplicates_transport), (12, 18));
    // A gap is refused, naming where to resume.
    s.send(20, edge_events(20..=21, 1000)).await;
    let err = s.next().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("resume from 13"),
        "{}",
        err.message()
    );
    assert_eq!(stats(&url).await.stored, 12);
    // A new epoch (the agent's buffer was wiped) starts at 1 again; its
    // events are new seqs but known det_oids: semantic duplicates.
    let mut s = RawSession::open(&url, "raw-agent", 8).await;
    assert_eq!(s.resume_from, 1);
    s.send(1, edge_events(1..=3, 1000)).await;
    let a = s.ack().await;
    assert_eq!((a.committed_through, a.duplicates), (3, 3));
    assert_eq!(stats(&url).await.duplicates_semantic, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_days_later_is_still_caught() {
    let dir = tempfile::tempdir().unwrap();
    let mut core = Core::start(dir.path(), None);
    let url = core.url();
    let mut s = RawSession::open(&url, "late", 1).await;
    let mut old = edge_events(1..=1, 5000);
    old[0].detection.as_mut().unwrap().timestamp_detected =
        sightline_tests::data::now_ms() - 3 * 86_400_000;
    s.send(1, old.clone()).await;
    s.ack().await;
    drop(s);
    core.restart();
    let mut s = RawSession::open(&core.url(), "late-other", 1).await;
    old[0].seq = 1;
    s.send(1, old).await;
    assert_eq!(s.ack().await.duplicates, 1);
    assert_eq!(stats(&core.url()).await.stored, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_get_joined_events_as_they_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let mut q = sightline_tests::query::client(&core.url()).await;
    let mut live = q
        .subscribe(SubscribeRequest {
            from_ms: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let agent = Agent::start(AgentArgs::intake(dir.path(), "live", core.url()));
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let now = sightline_tests::data::now_ms();
    intake
        .publish(PublishRequest {
            detections: vec![Detection {
                geographical_location_oid: 3,
                video_camera_oid: 301,
                detection_oid: None,
                item_name: "backpack".into(),
                timestamp_detected: now,
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(30), live.next())
        .await
        .expect("a live event")
        .unwrap()
        .unwrap();
    let d = ev.detection.unwrap();
    assert_eq!(d.item_name, "backpack");
    assert!(d.detection_oid.unwrap() > 0, "the agent stamped a det_oid");
    assert!(ev.location_matched);
    assert_eq!(ev.location.unwrap().geographical_location, "Location 3");
    assert_eq!(ev.agent_id, "live");
    // From a point in time: the stored event first, then live ones, none twice.
    let mut replay = q
        .subscribe(SubscribeRequest {
            from_ms: now - 1000,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = replay.next().await.unwrap().unwrap();
    assert_eq!(first.detection.unwrap().detection_oid, d.detection_oid);
}

/// A subscriber of everything that reads as fast as events come, but
/// pauses for a second in the middle of a replay at full speed, gets every
/// event once: the hub holds up to `live.buffer_events` events for it, however
/// small the commits they came in (a bound of 128 messages cut the
/// subscriber of the benchmarks off a few milliseconds behind, after a
/// tenth of a run). The bound here is more than the whole replay, so how
/// far a second's pause falls behind (the default, 32,768, was less than a
/// second of this replay on a quiet machine) does not decide the test.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_pauses_in_a_burst_of_small_commits_gets_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start_with_config(dir.path(), Some(&b), "[live]\nbuffer_events = 100000\n");
    let data = Dataset::generate(47, 60_000, 0.05, 0.0, LOCATIONS);
    let truth = data.truth();
    let mut live = sightline_tests::query::client(&core.url())
        .await
        .subscribe(SubscribeRequest {
            from_ms: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let unique = truth.unique;
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut delivered = 0u64;
        let mut paused = false;
        while let Some(e) = live.next().await {
            let e = e.map_err(|s| format!("after {delivered} events: {s:?}"))?;
            seen.insert(e.detection.unwrap().detection_oid.unwrap());
            delivered += 1;
            if delivered == 10_000 && !std::mem::replace(&mut paused, true) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if seen.len() as u64 == unique {
                break;
            }
        }
        Ok::<_, String>((seen, delivered))
    });
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(AgentArgs::replay(
        dir.path(),
        "burst",
        core.url(),
        &csv,
        None,
    ));
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &truth).await;
    let (seen, delivered) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the subscriber got every event")
        .unwrap()
        .expect("the core kept the subscriber");
    assert_eq!(seen, truth.det_oids, "every stored event, live");
    assert_eq!(delivered, truth.unique, "none twice");
}
