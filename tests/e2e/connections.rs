//! Connections are bounded: slow and idle clients are closed, floods are
//! capped per client, Subscribe streams are capped with a named error, and
//! a Subscribe from a point in time delivers every stored event exactly once
//! or says where to resume.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use sightline_proto::v1::{StatsRequest, SubscribeRequest};
use sightline_tests::{
    data::write_locations,
    query::{all_events, stats},
    wait_for, Agent, AgentArgs, Core, Dataset,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};
use tonic::Code;

const LOCATIONS: &[i64] = &[1, 2, 3];

/// A core with `config` (TOML) on top of the test defaults.
fn core_with(dir: &Path, config: &str) -> Core {
    let b = dir.join("b.csv");
    write_locations(&b, LOCATIONS);
    Core::start_with_config(dir, Some(&b), config)
}

/// A TCP connection to `to` from the loopback address `from` (another
/// client, as far as the core's per-client caps go).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// `/healthz` answers `ok` and a gRPC `Stats` call answers, each within 5 s.
async fn core_answers(core: &Core) {
    let (head, body) = tokio::time::timeout(
        Duration::from_secs(5),
        sightline_tests::http::get(core.http, "/healthz", ""),
    )
    .await
    .expect("/healthz answers within 5 s");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok\n");
    tokio::time::timeout(Duration::from_secs(5), stats(&core.url()))
        .await
        .expect("Stats answers within 5 s");
}

/// Reads until the peer closes or `within` passes: (bytes read, closed).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_are_closed_and_the_core_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(
        dir.path(),
        "[connections]\nheader_timeout = \"2s\"\nidle_timeout = \"4s\"\nmax_per_client = 1000\nmax_per_listener = 1000\n",
    );
    // 150 on each port: half a request's headers (HTTP) or half the HTTP/2
    // preface (gRPC), then silence.
    let mut slow = Vec::new();
    for i in 0..300 {
        let (to, half): (SocketAddr, &[u8]) = if i % 2 == 0 {
            (core.http, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        } else {
            (core.grpc, b"PRI * HTTP/2.0\r\n")
        };
        let mut s = TcpStream::connect(to).await.unwrap();
        s.write_all(half).await.unwrap();
        slow.push(s);
    }
    let opened = Instant::now();
    // The core answers throughout, and closes every one of them.
    let mut closers = tokio::task::JoinSet::new();
    for mut s in slow {
        closers.spawn(async move { read_until_closed(&mut s, Duration::from_secs(20)).await.1 });
    }
    let mut checks = 0;
    while opened.elapsed() < Duration::from_secs(6) {
        core_answers(&core).await;
        checks += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut closed = 0;
    while let Some(c) = closers.join_next().await {
        closed += c.unwrap() as usize;
    }
    assert_eq!(closed, 300, "every stalled connection is closed");
    assert!(
        opened.elapsed() < Duration::from_secs(20),
        "within the timeouts (2 s header, 4 s idle), not minutes"
    );
    assert!(checks >= 5);
    core_answers(&core).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_is_capped_and_healthz_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(
        dir.path(),
        "[connections]\nheader_timeout = \"60s\"\nidle_timeout = \"120s\"\nmax_per_client = 20\nmax_per_listener = 100\n",
    );
    for (port, name) in [(core.http, "http"), (core.grpc, "grpc")] {
        // 40 idle connections from one client (127.0.0.2): 20 are held, the
        // other 20 are closed at once (HTTP: after a 503 naming the cap).
        let mut conns = Vec::new();
        for _ in 0..40 {
            conns.push(connect_from("127.0.0.2", port).await);
        }
        let mut reads = tokio::task::JoinSet::new();
        for mut s in conns {
            reads.spawn(async move {
                let r = read_until_closed(&mut s, Duration::from_secs(2)).await;
                (r, s)
            });
        }
        let (mut refused, mut held, mut keep) = (0, 0, Vec::new());
        while let Some(r) = reads.join_next().await {
            let ((bytes, closed), s) = r.unwrap();
            if closed {
                refused += 1;
                if name == "http" && !bytes.is_empty() {
                    let text = String::from_utf8_lossy(&bytes);
                    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                    assert!(text.contains("connections.max_per_client"), "{text}");
                }
            } else {
                held += 1;
                keep.push(s);
            }
        }
        assert_eq!((held, refused), (20, 20), "{name}: 20 held, 20 refused");
        // Another client is served while the flood holds its 20.
        core_answers(&core).await;
        let (_, metrics) = sightline_tests::http::get(core.http, "/metrics", "").await;
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("sightline_connections_refused_total")
                    && l.contains("connections.max_per_client")
            })
            .unwrap_or_else(|| panic!("no refusal counted:\n{metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 20.0, "{line}");
        // Closing the held ones frees their places.
        drop(keep);
        wait_for(
            "a place for 127.0.0.2 again",
            Duration::from_secs(10),
            || async {
                let mut s = connect_from("127.0.0.2", port).await;
                let (_, closed) = read_until_closed(&mut s, Duration::from_millis(300)).await;
                (!closed).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_feeds_are_capped_per_client_and_the_held_ones_keep_ticking() {
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(
        dir.path(),
        "[connections]\nheader_timeout = \"2s\"\nidle_timeout = \"4s\"\n[live]\nmax_feeds = 10\nmax_feeds_per_client = 2\n",
    );
    let http = core.http;
    let request = format!(
        "GET /api/live HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        core.admin_token()
    );
    let open_feed = move || {
        let request = request.clone();
        async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            s
        }
    };
    let mut feeds = Vec::new();
    for _ in 0..2 {
        // Held once its answer has begun.
        let mut s = open_feed().await;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        feeds.push(s);
    }
    let mut third = open_feed().await;
    let (bytes, _) = read_until_closed(&mut third, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("live.max_feeds_per_client"), "{text}");
    // The held feeds get a tick a second, and outlive the idle timeout (4 s)
    // because bytes keep moving.
    for s in &mut feeds {
        let (bytes, closed) = read_until_closed(s, Duration::from_secs(6)).await;
        let text = String::from_utf8_lossy(&bytes);
        assert!(!closed, "a live feed stays open: {text}");
        assert!(text.matches("data:").count() >= 3, "{text}");
    }
    // Closing one frees its place.
    feeds.pop();
    wait_for(
        "a free live feed place",
        Duration::from_secs(10),
        move || {
            let open_feed = open_feed.clone();
            async move {
                let mut s = open_feed().await;
                let mut buf = [0u8; 12];
                s.read_exact(&mut buf).await.ok()?;
                (&buf == b"HTTP/1.1 200").then_some(())
            }
        },
    )
    .await;
}

async fn client_from(core: &Core, from: &str) -> sightline_tests::query::Client {
    let channel = tonic::transport::Endpoint::from_shared(core.url())
        .unwrap()
        .local_address(Some(from.parse::<IpAddr>().unwrap()))
        .connect()
        .await
        .unwrap();
    sightline_tests::query::with_token(channel, &core.admin_token())
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_streams_are_capped_with_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(
        dir.path(),
        "[live]\nmax_subscribers = 5\nmax_subscribers_per_client = 3\n",
    );
    let live = || SubscribeRequest {
        from_ms: 0,
        filter: None,
    };
    let mut a = client_from(&core, "127.0.0.1").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(a.subscribe(live()).await.unwrap().into_inner());
    }
    let err = a.subscribe(live()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("live.max_subscribers_per_client"),
        "{err:?}"
    );
    // Another client gets the rest of the total, then the total is named.
    let mut b = client_from(&core, "127.0.0.2").await;
    for _ in 0..2 {
        held.push(b.subscribe(live()).await.unwrap().into_inner());
    }
    let err = b.subscribe(live()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("`live.max_subscribers`"), "{err:?}");
    // The core answers the rest of the API meanwhile.
    a.stats(StatsRequest {}).await.unwrap();
    // A closed stream frees its place.
    held.truncate(1);
    wait_for("a free Subscribe place", Duration::from_secs(10), || {
        let mut b = b.clone();
        async move { b.subscribe(live()).await.ok() }
    })
    .await;
}

/// Reads one Subscribe stream until `want` distinct events arrived (then it
/// is live: stop) or it ends with an error: (det_oids in order, the error).
async fn read_subscription(
    q: &mut sightline_tests::query::Client,
    from_ms: i64,
    want: &HashSet<i64>,
    have: &HashSet<i64>,
) -> (Vec<i64>, Option<tonic::Status>) {
    let mut stream = q
        .subscribe(SubscribeRequest {
            from_ms,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut all: HashSet<i64> = have.clone();
    loop {
        if want.is_subset(&all) {
            return (got, None);
        }
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Err(_) => panic!(
                "no event within 30 s with {} of {} delivered",
                all.len(),
                want.len()
            ),
            Ok(Ok(Some(e))) => {
                let oid = e.detection.unwrap().detection_oid.unwrap();
                got.push(oid);
                all.insert(oid);
            }
            Ok(Ok(None)) => panic!("the stream ended without an error"),
            Ok(Err(s)) => return (got, Some(s)),
        }
    }
}

fn assert_once(got: &[i64], what: &str) {
    let mut seen = HashSet::new();
    for o in got {
        assert!(seen.insert(*o), "{what}: det_oid {o} delivered twice");
    }
}

fn store_events(dir: &Path, core: &Core, id: &str, seed: u64, n: usize) -> Dataset {
    let data = Dataset::generate(seed, n, 0.0, 0.0, LOCATIONS);
    let file = dir.join(format!("{id}.csv"));
    data.write_csv(&file);
    let mut agent = Agent::start(AgentArgs::replay(dir, id, core.url(), &file, None));
    assert!(agent.wait(Duration::from_secs(120)).success());
    data
}

/// Subscribes from `from_ms` and follows the resume points until every
/// event of `want` arrived; each stream delivers an event at most once.
/// Returns how many times it had to resume.
async fn collect_all(
    q: &mut sightline_tests::query::Client,
    from_ms: i64,
    want: &HashSet<i64>,
) -> usize {
    let (mut have, mut from, mut resumes) = (HashSet::new(), from_ms, 0);
    loop {
        let (got, err) = read_subscription(q, from, want, &have).await;
        assert_once(&got, "one stream");
        have.extend(got);
        let Some(err) = err else {
            assert_eq!(&have, want);
            return resumes;
        };
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        assert!(err.message().contains("live.replay_limit"), "{err:?}");
        let next: i64 = err
            .message()
            .split("from_ms=")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no resume point: {err:?}"));
        assert!(
            next >= from,
            "the resume point moves forward: {next} < {from}"
        );
        from = next;
        resumes += 1;
        assert!(resumes <= 10, "resumed {resumes} times");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_from_the_start_replays_all_history_or_says_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(dir.path(), "[live]\nreplay_limit = 1000\n");
    let first = store_events(dir.path(), &core, "a", 21, 2_500);
    let from_ms = first.truth().min_ts;
    let stored: HashSet<i64> = all_events(&core.url())
        .await
        .iter()
        .map(|e| e.detection.as_ref().unwrap().detection_oid.unwrap())
        .collect();
    assert_eq!(stored.len(), 2_500);

    // Just committed: caught up by commit order, then live; the events
    // published while the stream is open come exactly once too.
    let second = Dataset::generate(22, 1_500, 0.0, 0.0, LOCATIONS);
    let mut want = stored.clone();
    want.extend(second.truth().det_oids);
    let reader = {
        let (mut q, want) = (client_from(&core, "127.0.0.1").await, want.clone());
        tokio::spawn(async move { collect_all(&mut q, from_ms, &want).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let file = dir.path().join("b.csv");
    second.write_csv(&file);
    let mut agent = Agent::start(AgentArgs::replay(
        dir.path(),
        "b",
        core.url(),
        &file,
        Some(2000),
    ));
    assert!(agent.wait(Duration::from_secs(120)).success());
    let stored_at = Instant::now();
    reader.await.unwrap();
    assert_eq!(stats(&core.url()).await.stored, 4_000);

    // Older than the commit slack (10 s): replayed by detection time, each
    // replay ended past `live.replay_limit` (1,000) with where to resume.
    tokio::time::sleep_until((stored_at + Duration::from_secs(11)).into()).await;
    let mut q = client_from(&core, "127.0.0.1").await;
    let resumes = collect_all(&mut q, from_ms, &want).await;
    assert!(
        resumes >= 3,
        "4,000 events at 1,000 a replay: {resumes} resumes"
    );
}

/// A detector that opens hundreds of Publish calls at once on the agent's
/// intake gets each answered (the buffer's group commit takes them
/// together), none refused; every detection is kept and reaches the core
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_concurrent_publishes_is_answered_and_every_detection_is_kept() {
    use sightline_proto::v1::{
        intake_client::IntakeClient, publish_result, Detection, PublishRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(dir.path(), "");
    let agent = Agent::start(AgentArgs::intake(dir.path(), "flood", core.url()));
    const CALLS: i64 = 300;
    const PER_CALL: i64 = 500;
    let now = sightline_tests::data::now_ms();
    // Four connections, 75 calls each at once.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(IntakeClient::connect(agent.intake_url()).await.unwrap());
    }
    let mut calls = Vec::new();
    for c in 0..CALLS {
        let mut intake = conns[c as usize % conns.len()].clone();
        calls.push(tokio::spawn(async move {
            let detections = (0..PER_CALL)
                .map(|i| Detection {
                    geographical_location_oid: 1 + i % 3,
                    video_camera_oid: 100 + c % 4,
                    detection_oid: Some(c * PER_CALL + i + 1),
                    item_name: "car".into(),
                    timestamp_detected: now,
                    ..Default::default()
                })
                .collect();
            intake
                .publish(PublishRequest { detections })
                .await
                .map(|r| r.into_inner().results)
        }));
    }
    for call in calls {
        let results = call
            .await
            .unwrap()
            .expect("a publish waits, it is not refused");
        assert_eq!(results.len() as i64, PER_CALL);
        assert!(results
            .iter()
            .all(|r| matches!(r.result, Some(publish_result::Result::Accepted(_)))));
    }
    sightline_tests::query::wait_stored(&core.url(), (CALLS * PER_CALL) as u64).await;
    assert_eq!(stats(&core.url()).await.stored, (CALLS * PER_CALL) as u64);
}
