//! Cluster mode end to end (issue 15): 3 `nats-server -js` clustered (R3),
//! moto as the object store, 3 real core nodes with `[cluster]` configs on
//! 127.0.0.1, agents replaying a generated Dataset A with duplicates; every
//! result is compared with ground truth (every unique det_oid stored once,
//! counts and top X per location equal, from any node).

use std::time::Duration;

use futures::StreamExt;
use sightline_proto::v1::{
    intake_client::IntakeClient, Detection, PublishRequest, SubscribeRequest,
};
use sightline_tests::{
    cluster::{Rig, RigConfig},
    query::{stats, wait_more_stored, wait_stored_beyond, wait_stored_beyond_within},
    wait_for, Agent, AgentArgs, Dataset, Truth,
};

const LOCATIONS: &[i64] = &[1, 2, 3, 4, 5];
/// Replay rate of the disruption tests: ~40,000 events take ~13 s, so each
/// kill falls mid-stream.
const RATE: u32 = 3000;
/// Short leases so that a dead node's partitions move within seconds.
const LEASE_MS: u64 = 2000;
/// Partitions of the test cluster (fewer than the default: faster moves).
const PARTITIONS: u32 = 8;

/// The test cluster of `nodes` nodes: [`PARTITIONS`] partitions,
/// [`LEASE_MS`] leases, checkpoints every 2 s.
async fn start(nodes: usize) -> Rig {
    Rig::start(nodes, rig_config(false)).await
}

/// The test cluster's config; `secure`: TLS and credentials on every link.
fn rig_config(secure: bool) -> RigConfig {
    RigConfig {
        partitions: PARTITIONS,
        lease_ms: LEASE_MS,
        checkpoint_interval: "2s".into(),
        locations: LOCATIONS.to_vec(),
        core_args: Vec::new(),
        secure,
    }
}

/// The det_oids a live subscriber on `url` receives, until `n` arrived.
fn subscribe(url: String, n: u64) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let mut feed = sightline_tests::query::client(&url)
            .await
            .subscribe(SubscribeRequest {
                from_ms: 0,
                filter: None,
            })
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while (seen.len() as u64) < n {
            match tokio::time::timeout(Duration::from_secs(60), feed.next()).await {
                Ok(Some(Ok(e))) => seen.push(e.detection.unwrap().detection_oid.unwrap()),
                other => panic!("subscriber ended after {} events: {other:?}", seen.len()),
            }
        }
        seen
    })
}

fn assert_each_once(seen: &[i64], truth: &Truth) {
    let mut s = seen.to_vec();
    s.sort_unstable();
    let n = s.len();
    s.dedup();
    assert_eq!(s.len(), n, "the subscriber saw an event twice");
    assert_eq!(n as u64, truth.unique, "the subscriber saw every event");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_core_node_killed_mid_stream_loses_and_duplicates_nothing_and_rejoins() {
    let mut rig = start(3).await;
    let data = Dataset::generate(151, 40_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-kill", &data, RATE);
    let before = wait_more_stored(&rig.nodes[0].url(), 5_000).await;
    rig.nodes[1].kill9();
    // More stored after the fault, counted from before it.
    wait_stored_beyond(&rig.nodes[0].url(), before + 5_000).await;
    rig.nodes[1].restart();
    assert!(agent.wait(Duration::from_secs(180)).success());
    rig.assert_truth(&truth).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_subscriber_sees_each_event_once_through_a_core_node_killed() {
    let mut rig = start(3).await;
    let data = Dataset::generate(151, 40_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    let live = subscribe(rig.nodes[0].url(), truth.unique);
    let mut agent = rig.replay("c-kill", &data, RATE);
    let before = wait_more_stored(&rig.nodes[0].url(), 5_000).await;
    rig.nodes[1].kill9();
    // More stored after the fault, counted from before it.
    wait_stored_beyond(&rig.nodes[0].url(), before + 5_000).await;
    rig.nodes[1].restart();
    assert!(agent.wait(Duration::from_secs(180)).success());
    rig.assert_truth(&truth).await;
    assert_each_once(&live.await.unwrap(), &truth);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut rig = start(3).await;
    let data = Dataset::generate(152, 40_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-nats", &data, RATE);
    let before = wait_more_stored(&rig.nodes[0].url(), 5_000).await;
    rig.nats.kill9(0);
    // More stored while it is down, counted from before the kill. The
    // stream and bucket leaders it held are elected again elsewhere (5-10 s
    // here), leases run out meanwhile and partitions move: up to 2 minutes.
    wait_stored_beyond_within(
        &rig.nodes[0].url(),
        before + 5_000,
        Duration::from_secs(120),
    )
    .await;
    rig.nats.restart(0).await;
    assert!(agent.wait(Duration::from_secs(180)).success());
    rig.assert_truth(&truth).await;
}

/// Two of the three nats-servers down mid-stream: without a quorum nothing
/// is acknowledged (the agent keeps its events and cannot finish) and no
/// lease can be renewed; once both are back the replay completes and every
/// event is stored once.
#[tokio::test(flavor = "multi_thread")]
async fn two_nats_servers_down_acknowledge_nothing_and_lose_nothing_once_back() {
    let mut rig = start(3).await;
    let data = Dataset::generate(158, 40_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-quorum", &data, RATE);
    wait_more_stored(&rig.nodes[0].url(), 5_000).await;
    rig.nats.kill9(1);
    rig.nats.kill9(2);
    // The rest of the replay takes ~11 s at RATE: had anything been
    // acknowledged without a quorum, the agent would be done by now.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        agent.alive(),
        "the agent had every event acknowledged while the cluster had no quorum"
    );
    rig.nats.restart_together(&[1, 2]).await;
    assert!(agent.wait(Duration::from_secs(240)).success());
    rig.assert_truth(&truth).await;
    // Each node counts, per partition it holds, the acknowledged seqs the
    // stream lost (the series the alert SightlineClusterLostAcknowledged
    // reads): there, and 0.
    let mut series = 0;
    for n in &rig.nodes {
        let (_, body) = sightline_tests::http::request(
            &n.http.to_string(),
            "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n",
        )
        .await;
        for l in String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("sightline_cluster_lost_seqs_total{"))
        {
            series += 1;
            assert!(l.ends_with(" 0"), "{l}");
        }
    }
    assert!(series >= PARTITIONS as usize, "{series} series");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_added_mid_stream_takes_partitions_and_nothing_is_lost() {
    let mut rig = start(2).await;
    let data = Dataset::generate(153, 40_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-add", &data, RATE);
    wait_more_stored(&rig.nodes[0].url(), 5_000).await;
    rig.add_node(2);
    assert!(agent.wait(Duration::from_secs(180)).success());
    rig.assert_truth(&truth).await;
    let log = rig.nodes[2].log();
    assert!(
        log.contains("lease") || log.contains("partition"),
        "the new node took no partition:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_node_dies_fails_over_and_resumes_exactly() {
    let mut rig = start(3).await;
    let data = Dataset::generate(154, 40_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    // keep_acked = 0: exactly once must come from the cluster's watermark,
    // not from the agent sending acknowledged events again.
    let mut agent = rig.replay("c-failover", &data, RATE);
    wait_more_stored(&rig.nodes[0].url(), 5_000).await;
    // The agent sends to the first of its list: that node dies.
    rig.nodes[0].kill9();
    assert!(agent.wait(Duration::from_secs(180)).success());
    let log = agent.log();
    assert!(
        log.contains("failing over to the next core"),
        "no failover logged"
    );
    assert!(
        !log.contains("new epoch"),
        "the next node gave another watermark: the agent started a new epoch"
    );
    rig.assert_truth(&truth).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_owner_paused_past_its_lease_cannot_write() {
    let mut rig = start(3).await;
    let data = Dataset::generate(155, 40_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-stale", &data, RATE);
    let before = wait_more_stored(&rig.nodes[0].url(), 5_000).await;
    let pid = rig.nodes[2].pid().to_string();
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    // Past its leases: the others take its partitions and go on.
    tokio::time::sleep(Duration::from_millis(3 * LEASE_MS)).await;
    wait_stored_beyond(&rig.nodes[0].url(), before + 3_000).await;
    signal("-CONT");
    assert!(agent.wait(Duration::from_secs(180)).success());
    rig.assert_truth(&truth).await;
    assert!(rig.nodes[2].alive(), "the resumed node stays up");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_sent_a_day_later_after_its_partition_moved_twice_is_still_caught() {
    let mut rig = start(3).await;
    let agent = Agent::start(AgentArgs::intake(
        rig.dir.path(),
        "c-day-later",
        rig.core_list(),
    ));
    let now = sightline_tests::data::now_ms();
    let det = |ts: i64| Detection {
        geographical_location_oid: 1,
        video_camera_oid: 100,
        detection_oid: Some(4_242_424_242),
        item_name: "car".into(),
        timestamp_detected: ts,
        ..Default::default()
    };
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    intake
        .publish(PublishRequest {
            detections: vec![det(now - 86_400_000)],
        })
        .await
        .unwrap();
    let url0 = rig.nodes[0].url();
    wait_for("the first copy stored", Duration::from_secs(30), || {
        let u = url0.clone();
        async move { (stats(&u).await.stored == 1).then_some(()) }
    })
    .await;
    // Two rounds through every node: whichever owns the partition is
    // killed at least twice, so it moves at least twice.
    for round in 0..2 {
        for i in 0..3 {
            rig.nodes[i].kill9();
            tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
            rig.nodes[i].restart();
            eprintln!("round {round}: node {i} killed and restarted");
        }
    }
    let before = stats(&rig.nodes[1].url()).await;
    intake
        .publish(PublishRequest {
            detections: vec![det(now)],
        })
        .await
        .unwrap();
    let url1 = rig.nodes[1].url();
    let after = wait_for("the second copy judged", Duration::from_secs(60), || {
        let u = url1.clone();
        async move {
            let s = stats(&u).await;
            (s.duplicates_semantic + s.duplicates_transport
                > before.duplicates_semantic + before.duplicates_transport)
                .then_some(s)
        }
    })
    .await;
    assert_eq!(after.stored, 1, "the day-later duplicate was stored");
}

/// Issue 15's "any node serves any footage": a snapshot uploaded to and
/// attached on one node comes back with its event from every node, its
/// bytes served by every node — and still after that node is killed.
#[tokio::test(flavor = "multi_thread")]
async fn footage_uploaded_to_one_node_comes_with_its_event_and_is_served_by_every_node() {
    use sightline_proto::v1::{
        media_client::MediaClient, AttachMediaRequest, GetEventRequest, MediaChunk, MediaRef,
    };
    let mut rig = start(3).await;
    let data = Dataset::generate(157, 2_000, 0.0, 0.0, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-media", &data, RATE);
    assert!(agent.wait(Duration::from_secs(120)).success());
    rig.assert_truth(&truth).await;
    let det_oid = data.rows[0].detection_oid.unwrap();

    let jpeg = sightline_tests::footage::gradient_jpeg();
    let sha = sightline_tests::footage::sha_hex(&jpeg);
    let media_ref = MediaRef {
        kind: "snapshot".into(),
        sha256: sha.clone(),
        content_type: "image/jpeg".into(),
        size: jpeg.len() as u64,
    };
    let mut media = MediaClient::connect(rig.nodes[0].url()).await.unwrap();
    let up = media
        .upload(tokio_stream::iter(vec![MediaChunk {
            sha256: sha.clone(),
            offset: 0,
            data: jpeg.clone().into(),
            total_size: jpeg.len() as u64,
            kind: "snapshot".into(),
            content_type: "image/jpeg".into(),
            last: true,
            agent_id: "c-media".into(),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(up.newly_stored);
    media
        .attach(AttachMediaRequest {
            detection_oids: vec![det_oid],
            media: Some(media_ref),
        })
        .await
        .unwrap();

    let check = |url: String, http: String| {
        let (sha, jpeg) = (sha.clone(), jpeg.clone());
        async move {
            wait_for(
                "the event with its snapshot",
                Duration::from_secs(30),
                || {
                    let (url, sha) = (url.clone(), sha.clone());
                    async move {
                        let e = sightline_tests::query::client(&url)
                            .await
                            .get_event(GetEventRequest {
                                detection_oid: det_oid,
                            })
                            .await
                            .ok()?
                            .into_inner();
                        e.media.iter().any(|m| m.sha256 == sha).then_some(())
                    }
                },
            )
            .await;
            let request =
                format!("GET /media/{sha} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let auth = sightline_tests::http::admin_auth(&http, &request);
            let request = request.replacen("\r\n", &format!("\r\n{auth}"), 1);
            let (head, body) = sightline_tests::http::request(&http, &request).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{http}: {head}");
            assert_eq!(body, jpeg, "{http}: the bytes uploaded");
        }
    };
    for n in &rig.nodes {
        check(n.url(), n.http.to_string()).await;
    }
    // The node that took the upload (and keeps its row) dies: the others
    // still have the link (in the partition, moved) and the bytes (shared).
    rig.nodes[0].kill9();
    for n in &rig.nodes[1..] {
        check(n.url(), n.http.to_string()).await;
    }
}

/// A dashboard server function's answer from the node at `http` (as its
/// admin), as JSON.
async fn server_fn(http: std::net::SocketAddr, name: &str, form: &str) -> serde_json::Value {
    let (head, body) = sightline_tests::http::post_form(http, &format!("/api/{name}"), form).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{name} on {http}: {head}\n{}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{name} on {http}: not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// The det_oids in the live ticks `/api/live` on `http` sends (as its
/// admin), read until `enough` says they are or `within` has passed.
async fn live_dets(
    http: std::net::SocketAddr,
    within: Duration,
    enough: impl Fn(&[i64]) -> bool,
) -> Vec<i64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = http.to_string();
    let auth = sightline_tests::http::admin_auth(&addr, "");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /api/live HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let (mut raw, mut buf) = (Vec::new(), [0u8; 65536]);
    let deadline = tokio::time::Instant::now() + within;
    // The det_oids of the ticks read so far, and how much of the body they
    // came from (each line is parsed once).
    let (mut dets, mut parsed) = (Vec::new(), 0);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.len() < 12 || text.starts_with("HTTP/1.1 200"),
            "/api/live on {addr}: {text}"
        );
        let Some(start) = text.find("\r\n\r\n").map(|p| p + 4) else {
            continue;
        };
        let body = sightline_tests::http::dechunk_body(&raw[start..]);
        let Some(end) = body.iter().rposition(|b| *b == b'\n').map(|p| p + 1) else {
            continue;
        };
        if end <= parsed {
            continue;
        }
        dets.extend(
            String::from_utf8_lossy(&body[parsed..end])
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
                .flat_map(|t| {
                    t["events"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|e| e["det_oid"].as_i64())
                }),
        );
        parsed = end;
        if enough(&dets) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "/api/live on {addr}: {text}"
    );
    dets
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_on_any_node_shows_the_whole_cluster() {
    let mut rig = start(3).await;
    let data = Dataset::generate(157, 6_000, 0.1, 0.2, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-dash", &data, 6000);
    assert!(agent.wait(Duration::from_secs(180)).success());
    rig.assert_truth(&truth).await;

    let x = 3;
    let (from, to) = (
        truth.min_ts - truth.min_ts.rem_euclid(60_000),
        truth.max_ts - truth.max_ts.rem_euclid(60_000) + 60_000,
    );
    let known = *truth.det_oids.iter().min().unwrap();
    let mut item_totals: std::collections::BTreeMap<String, u64> = Default::default();
    for items in truth.counts.values() {
        for (item, n) in items {
            *item_totals.entry(item.clone()).or_default() += n;
        }
    }
    for node in &rig.nodes {
        let http = node.http;
        // The totals, top X and an event: every partition's, from any node.
        let totals = server_fn(http, "get_totals", "").await;
        assert_eq!(
            totals["stored"].as_u64(),
            Some(truth.unique),
            "{http}: {totals}"
        );
        let top = server_fn(
            http,
            "get_top_items",
            &format!("range=custom&from={from}&to={to}&x={x}"),
        )
        .await;
        let shown = sightline_tests::query::top_table(&top["locations"], "location_oid");
        assert_eq!(shown, truth.top(x), "{http}: the top X page and the truth");
        let ev = server_fn(http, "get_event", &format!("det_oid={known}")).await;
        assert_eq!(ev["row"]["det_oid"].as_i64(), Some(known), "{http}: {ev}");
        // The timeline: every partition's events, summed per series.
        let timeline = server_fn(
            http,
            "get_timeline",
            &format!("range=custom&from={from}&to={to}&by=item"),
        )
        .await;
        let series = timeline["series"].as_array().unwrap();
        let all: u64 = series.iter().map(|s| s["total"].as_u64().unwrap()).sum();
        assert_eq!(all, truth.unique, "{http}: {timeline}");
        for s in series {
            let name = s["name"].as_str().unwrap();
            if let Some(want) = item_totals.get(name) {
                assert_eq!(s["total"].as_u64(), Some(*want), "{http}: {name}");
            }
        }
        // The same over the query API, every series by name.
        let t = sightline_tests::query::client(&node.url())
            .await
            .timeline(sightline_proto::v1::TimelineRequest {
                from_ms: from,
                to_ms: to,
                by: sightline_proto::v1::TimelineBy::Item as i32,
                max_series: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        let got: std::collections::BTreeMap<String, u64> =
            t.series.iter().map(|s| (s.key.clone(), s.total)).collect();
        assert_eq!(got, item_totals, "{http}: Timeline over gRPC");
        assert!(t.other.is_empty());
        let search = server_fn(
            http,
            "search_events",
            &format!(
                "query[query]=det_oid:{known}&query[from_ms]=0&query[to_ms]=0&query[page_token]="
            ),
        )
        .await;
        assert_eq!(search["total_hits"].as_u64(), Some(1), "{http}: {search}");
        // The latest events: the newest committed anywhere, each once.
        let latest = server_fn(http, "get_latest", "limit=50").await;
        let rows: Vec<i64> = latest
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["det_oid"].as_i64().unwrap())
            .collect();
        assert_eq!(rows.len(), 50, "{http}: {latest}");
        // Each a stored event (some det_oids are stamped by the agent, so
        // not in the truth's list: asked for one by one).
        for d in &rows {
            let ev = server_fn(http, "get_event", &format!("det_oid={d}")).await;
            assert_eq!(
                ev["row"]["det_oid"].as_i64(),
                Some(*d),
                "{http}: latest {d}: {ev}"
            );
        }
        let mut once = rows.clone();
        once.sort_unstable();
        once.dedup();
        assert_eq!(once.len(), rows.len(), "{http}: a latest event twice");
        // The cluster table of the Fleet page: every partition owned, by a
        // node it lists, and every node's partitions counted.
        let cluster = wait_for("the cluster table", Duration::from_secs(30), || async {
            let c = server_fn(http, "get_cluster", "").await;
            let parts = c["partitions"].as_array().cloned().unwrap_or_default();
            (parts.len() == PARTITIONS as usize
                && parts
                    .iter()
                    .all(|p| p["owner"].is_string() && p["lag"].is_u64()))
            .then_some(c)
        })
        .await;
        let nodes = cluster["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3, "{http}: {cluster}");
        let owned: u64 = nodes
            .iter()
            .map(|n| n["partitions"].as_u64().unwrap())
            .sum();
        assert_eq!(owned, u64::from(PARTITIONS), "{http}: {cluster}");
        // Each partition's owner counts the acknowledged seqs it named
        // lost (PROTOCOL.md rule 32): none here.
        assert!(
            cluster["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["lost_seqs"].as_u64() == Some(0)),
            "{http}: {cluster}"
        );
    }
    // Who owns what, as node 2 sees it.
    let table = server_fn(rig.nodes[2].http, "get_cluster", "").await;
    let me = table["node_id"].as_str().unwrap().to_string();
    let others: std::collections::HashSet<u32> = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["owner"].as_str() != Some(me.as_str()))
        .map(|p| p["partition"].as_u64().unwrap() as u32)
        .collect();
    // The Fleet page shows the table (rendered on the server).
    let (head, page) = sightline_tests::http::get(rig.nodes[1].http, "/fleet", "").await;
    let page = String::from_utf8_lossy(&page);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        page.matches("data-partition=").count(),
        PARTITIONS as usize,
        "{page}"
    );

    // Live: a node's dashboard feed carries events committed by every
    // partition, whichever node took them. A tick carries the newest few
    // (`TICK_EVENTS`) of what was committed since the last one, so the
    // events go out in small rounds, each fewer than a tick shows, until the
    // feed has shown one of another node's partitions (or a minute passed).
    let other_partition = {
        let others = others.clone();
        move |d: &i64| {
            others.contains(
                &(sightline_core::store::keys::partition_of(*d, PARTITIONS as usize) as u32),
            )
        }
    };
    let watcher = tokio::spawn({
        let other_partition = other_partition.clone();
        live_dets(rig.nodes[2].http, Duration::from_secs(60), move |seen| {
            seen.iter()
                .any(|d| d >= &9_100_000_000 && other_partition(d))
        })
    });
    let live = Agent::start(AgentArgs::intake(
        rig.dir.path(),
        "c-dash-live",
        rig.nodes[0].url(),
    ));
    let mut intake = IntakeClient::connect(live.intake_url()).await.unwrap();
    let base = 9_100_000_000i64;
    let mut sent: Vec<i64> = Vec::new();
    while !watcher.is_finished() && sent.len() < 8 * 200 {
        let round: Vec<i64> = (0..8).map(|i| base + sent.len() as i64 + i).collect();
        let now = sightline_tests::data::now_ms();
        intake
            .publish(PublishRequest {
                detections: round
                    .iter()
                    .map(|d| Detection {
                        geographical_location_oid: 1 + d % 5,
                        video_camera_oid: 100,
                        detection_oid: Some(*d),
                        item_name: "car".into(),
                        timestamp_detected: now,
                        ..Default::default()
                    })
                    .collect(),
            })
            .await
            .unwrap();
        sent.extend(round);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = watcher.await.unwrap();
    let got: std::collections::HashSet<i64> = seen.into_iter().collect();
    let partitions: std::collections::HashSet<u32> = sent
        .iter()
        .filter(|d| got.contains(d))
        .map(|d| sightline_core::store::keys::partition_of(*d, PARTITIONS as usize) as u32)
        .collect();
    assert!(
        sent.iter().any(|d| got.contains(d) && other_partition(d)),
        "node 2's live feed showed events of partitions {partitions:?} only (others own {others:?}) \
         of {} sent in rounds of 8",
        sent.len()
    );
}

/// The cluster as on a real network: the NATS servers take clients over TLS
/// with a token only, every core serves its query and HTTP ports over TLS
/// (one site CA), and the cores call each other over TLS trusting that CA.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_on_a_network_uses_tls_and_credentials_on_every_link() {
    let mut rig = Rig::start(3, rig_config(true)).await;
    assert!(rig.nats.urls().iter().all(|u| u.starts_with("tls://")));
    let data = Dataset::generate(157, 12_000, 0.15, 0.2, LOCATIONS);
    let truth = data.truth();
    let mut agent = rig.replay("c-tls", &data, 4_000);
    assert!(agent.wait(Duration::from_secs(180)).success());
    // Every node answers over TLS for all 8 partitions: those it does not
    // own by calling their owners' query ports over TLS.
    assert!(rig.nodes.iter().all(|n| n.url().starts_with("https://")));
    rig.assert_truth(&truth).await;

    // `cluster status` reads every node's /metrics over TLS, trusting the
    // site CA; the nodes announce https:// addresses. (A node refreshes its
    // cluster gauges every 5 s: asked until it shows every node and owner.)
    let ca = rig.pki().join("ca.pem");
    let status = || {
        let out = std::process::Command::new(sightline_tests::proc::bin_path("sightline-core"))
            .args(["cluster", "status", "--http"])
            .arg(format!("https://{}", rig.nodes[1].http))
            .env("SIGHTLINE_CA", &ca)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = wait_for(
        "cluster status of every node",
        Duration::from_secs(30),
        || {
            let text = status();
            async move {
                (text.contains(&format!("partitions: {PARTITIONS} ({PARTITIONS} owned)"))
                    && text.matches("grpc https://").count() == 3)
                    .then_some(text)
            }
        },
    )
    .await;
    assert!(!text.contains("unreachable"), "{text}");
    assert!(
        text.contains("lost_seqs") && !text.contains("LOST:"),
        "{text}"
    );
    // Without the CA it refuses, naming what is missing.
    let out = std::process::Command::new(sightline_tests::proc::bin_path("sightline-core"))
        .args(["cluster", "status", "--http"])
        .arg(format!("https://{}", rig.nodes[1].http))
        .env_remove("SIGHTLINE_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SIGHTLINE_CA"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A plaintext client gets no answer from a node's query port.
    let plain = format!("http://{}", rig.nodes[0].grpc);
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(plain)
            .unwrap()
            .connect()
            .await?;
        sightline_tests::query::with_token(channel, &rig.nodes[0].admin_token())
            .stats(sightline_proto::v1::StatsRequest::default())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        anyhow::Ok(())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_or(true, |r| r.is_err()),
        "a plaintext query was answered"
    );

    // A node without the NATS token is refused by the servers and says so.
    let cfg = rig.dir.path().join("core-0.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("nats_token"))
        .map(|l| l.replace("core-0", "core-9") + "\n")
        .collect::<String>();
    let bad = rig.dir.path().join("no-token.toml");
    std::fs::write(&bad, text).unwrap();
    let pki = rig.pki();
    let (bad, cert, key) = (
        bad.display().to_string(),
        pki.join("core.pem").display().to_string(),
        pki.join("core.key").display().to_string(),
    );
    let err = sightline_tests::proc::refused_start(
        &rig.dir.path().join("core-9"),
        &[
            "--config",
            &bad,
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--edge-plaintext",
            "--edge-listen",
            "127.0.0.1:0",
            "--no-registry",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        Duration::from_secs(60),
    );
    assert!(err.contains("cluster.nats"), "{err}");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
}

/// `Stats` on `url` as the API token `token`.
async fn stats_as(
    url: &str,
    token: &str,
) -> Result<sightline_proto::v1::StatsResponse, tonic::Status> {
    sightline_tests::query::client_as(url, token)
        .await
        .stats(sightline_proto::v1::StatsRequest::default())
        .await
        .map(|r| r.into_inner())
}

/// The agent grants `node` lists (as its admin).
async fn grants(node: &sightline_tests::Core) -> Vec<sightline_proto::v1::AgentGrant> {
    node.admin()
        .await
        .list_grants(sightline_proto::v1::ListGrantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .agents
}

/// The accounts, API tokens and agent grants are the cluster's: what an
/// admin does on one node holds on every node — a token made on one node
/// answers on the others, a login works anywhere, and a revocation on any
/// node (a token, an account, an agent) is enforced by all of them, so a
/// revoked agent cannot fail over to another node and go on publishing.
#[tokio::test(flavor = "multi_thread")]
async fn an_account_token_or_agent_changed_on_one_node_holds_on_every_node() {
    use sightline_proto::v1::{
        AgentGrant, RevokeAgentRequest, RevokeTokenRequest, Role, UpdateUserRequest,
    };
    use sightline_tests::http;
    const PASSWORD: &str = "cluster-wide password";
    let mut cfg = rig_config(false);
    cfg.core_args = vec![sightline_tests::proc::DEFAULT_REGISTRY.into()];
    let rig = Rig::start(3, cfg).await;
    let [a, b, c] = [&rig.nodes[0], &rig.nodes[1], &rig.nodes[2]];

    // Made on A: an account and a token.
    a.add_user("ann", Role::Viewer, &[], PASSWORD).await;
    let token = a.create_token("ci", Role::Viewer, &[], 0).await;
    for node in [b, c] {
        let addr = node.http;
        wait_for(
            "ann logs in on another node",
            Duration::from_secs(10),
            || async move {
                let (head, _) = http::post_login(addr, "ann", PASSWORD).await;
                (http::status(&head) == 303).then_some(())
            },
        )
        .await;
        let url = node.url();
        wait_for(
            "A's token answers on another node",
            Duration::from_secs(10),
            || async { stats_as(&url, &token).await.ok() },
        )
        .await;
    }
    let ann_on_b = http::login(b.http, "ann", PASSWORD).await;
    let (head, _) = http::get(b.http, "/", &ann_on_b).await;
    assert_eq!(http::status(&head), 200, "ann's dashboard on B: {head}");

    // An agent granted on B publishes through whichever node it reaches.
    let data = Dataset::generate(157, 20_000, 0.1, 0.2, LOCATIONS);
    let truth = data.truth();
    let cameras: std::collections::BTreeSet<i64> =
        data.rows.iter().map(|r| r.video_camera_oid).collect();
    b.admin()
        .await
        .grant_agent(AgentGrant {
            agent_id: "c-gated".into(),
            cameras: cameras.into_iter().collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    for node in [a, c] {
        wait_for(
            "the grant on every node",
            Duration::from_secs(10),
            || async {
                grants(node)
                    .await
                    .iter()
                    .any(|g| g.agent_id == "c-gated" && !g.revoked)
                    .then_some(())
            },
        )
        .await;
    }
    let mut agent = rig.replay("c-gated", &data, 2_000);
    let url = a.url();
    wait_stored_beyond(&url, 2_000).await;

    // Revoked on C: every node ends its session and refuses it again.
    c.admin()
        .await
        .revoke_agent(RevokeAgentRequest {
            agent_id: "c-gated".into(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = stats(&url).await.stored;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = stats(&url).await.stored;
    assert_eq!(before, after, "events stored after the agent was revoked");
    assert!(
        after < truth.unique,
        "the revocation came after the whole replay"
    );
    assert!(agent.alive(), "the agent gave up instead of being refused");
    let log = agent.log();
    assert!(log.contains("is revoked"), "the agent was not told: {log}");
    for node in [a, b] {
        let g = grants(node).await;
        assert!(
            g.iter().any(|g| g.agent_id == "c-gated" && g.revoked),
            "{}: {g:?}",
            node.url()
        );
    }
    agent.kill9();

    // The token revoked on B and the account disabled on C: refused on A and
    // B, and ann's session on B ends.
    b.admin()
        .await
        .revoke_token(RevokeTokenRequest { token: "ci".into() })
        .await
        .unwrap();
    c.admin()
        .await
        .update_user(UpdateUserRequest {
            name: "ann".into(),
            disabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    for node in [a, b] {
        let url = node.url();
        let e = wait_for(
            "the revoked token refused",
            Duration::from_secs(10),
            || async { stats_as(&url, &token).await.err() },
        )
        .await;
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        assert!(e.message().contains("revoked"), "{e}");
        let (head, body) = http::post_login(node.http, "ann", PASSWORD).await;
        assert_ne!(http::status(&head), 303, "a disabled account logged in");
        assert!(
            String::from_utf8_lossy(&body).contains("disabled"),
            "{head}{}",
            String::from_utf8_lossy(&body)
        );
    }
    let (head, _) = http::get(b.http, "/", &ann_on_b).await;
    assert_ne!(
        http::status(&head),
        200,
        "ann's session on B outlived her account: {head}"
    );
}
