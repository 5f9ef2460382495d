//! Bad input, end to end: each gets a clear error naming what is wrong, and
//! nothing valid is lost.

use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use sightline_proto::v1::{
    admin_client::AdminClient, agent_message, core_message, ingest_client::IngestClient,
    intake_client::IntakeClient, publish_result, AgentMessage, Batch, Detection, EdgeEvent, Hello,
    ListQuarantineRequest, PublishRequest, ReloadLocationsRequest, TopItemsRequest,
};
use sightline_tests::{
    data::{now_ms, write_locations},
    query::{all_events, client, stats, wait_stored},
    Agent, AgentArgs, Core,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn det(oid: Option<i64>, item: &str, ts: i64) -> Detection {
    Detection {
        geographical_location_oid: 1,
        video_camera_oid: 10,
        detection_oid: oid,
        item_name: item.into(),
        timestamp_detected: ts,
        ..Default::default()
    }
}

fn intake_agent(dir: &std::path::Path, id: &str, core_url: String, extra: Vec<String>) -> Agent {
    Agent::start(AgentArgs {
        extra,
        ..AgentArgs::intake(dir, id, core_url)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_replay_rows_are_reported_by_line_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let ts = now_ms() - 60_000;
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        format!(
            "geographical_location_oid,video_camera_oid,detection_oid,item_name,timestamp_detected\n\
             1,10,101,person,{ts}\n\
             1,ten,102,person,{ts}\n\
             1,10,103,,{ts}\n\
             1,10,104,car\n\
             1,10,105,car,{future}\n\
             -4,10,106,car,{ts}\n\
             1,10,107,car,yesterday\n\
             2,20,108,dog,{ts}\n",
            future = now_ms() + 86_400_000
        ),
    )
    .unwrap();
    let mut agent = Agent::start(AgentArgs {
        id: "replayer".into(),
        core_url: core.url(),
        data_dir: dir.path().join("replayer"),
        command: vec!["replay".into(), csv.display().to_string()],
        intake: false,
        exit_when_drained: true,
        extra: vec![],
    });
    assert!(agent.wait(Duration::from_secs(60)).success());
    let log = agent.log();
    for (line, what) in [
        (
            "line 3",
            "field `video_camera_oid`: not an integer: \"ten\"",
        ),
        ("line 4", "field `item_name`: must not be empty"),
        ("line 5", "has 4 fields, the header has 5"),
        ("line 6", "field `timestamp_detected`"),
        (
            "line 7",
            "field `geographical_location_oid`: must be positive",
        ),
        (
            "line 8",
            "field `timestamp_detected`: not an integer: \"yesterday\"",
        ),
    ] {
        assert!(
            log.contains(&format!("replay: {line}: {what}")),
            "missing report for {line}; log:\n{log}"
        );
    }
    assert!(
        agent
            .stdout()
            .iter()
            .any(|l| l == "replay: rows=8 accepted=2 invalid=6 skipped=0"),
        "{:?}",
        agent.stdout()
    );
    let oids: Vec<i64> = all_events(&core.url())
        .await
        .iter()
        .map(|e| e.detection.as_ref().unwrap().detection_oid.unwrap())
        .collect();
    assert_eq!(oids.len(), 2);
    assert!(oids.contains(&101) && oids.contains(&108));
}

#[tokio::test(flavor = "multi_thread")]
async fn intake_answers_each_invalid_detection_with_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let agent = intake_agent(dir.path(), "intake", core.url(), vec![]);
    let mut c = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let now = now_ms();
    let mut huge = det(Some(7), "car", now);
    huge.attributes.insert("blob".into(), "x".repeat(20_000));
    let dets = vec![
        det(Some(1), "person", now),
        det(Some(2), "", now),
        det(Some(3), "car", now + 3_600_000),
        det(Some(-3), "car", now),
        huge,
        det(None, "dog", now),
    ];
    let results = c
        .publish(PublishRequest { detections: dets })
        .await
        .unwrap()
        .into_inner()
        .results;
    let verdicts: Vec<Result<i64, (String, String)>> = results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            publish_result::Result::Accepted(a) => Ok(a.detection_oid),
            publish_result::Result::Invalid(i) => Err((i.field, i.reason)),
            publish_result::Result::Dropped(d) => Err(("dropped".into(), d.reason)),
        })
        .collect();
    assert_eq!(verdicts[0], Ok(1));
    assert_eq!(verdicts[1].clone().unwrap_err().0, "item_name");
    let (field, reason) = verdicts[2].clone().unwrap_err();
    assert_eq!(field, "timestamp_detected");
    assert!(reason.contains("in the future"), "{reason}");
    assert_eq!(verdicts[3].clone().unwrap_err().0, "detection_oid");
    assert_eq!(verdicts[4].clone().unwrap_err().0, "attributes");
    let stamped = verdicts[5].clone().unwrap();
    assert!(stamped > 0);
    // The valid ones of the call arrive; the refused ones do not.
    let url = core.url();
    wait_stored(&url, 2).await;
    // Too many detections in one call: refused whole, naming the field.
    let many = (0..10_001)
        .map(|i| det(Some(100 + i), "car", now))
        .collect();
    let err = c
        .publish(PublishRequest { detections: many })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("`detections`"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_events_are_quarantined_with_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let mut ingest = IngestClient::connect(core.url()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: "old-agent".into(),
            epoch: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = ingest
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.next().await.unwrap().unwrap();
    let now = now_ms();
    let ev = |seq: u64, d: Detection| EdgeEvent {
        seq,
        detection: Some(d),
        accepted_ms: now,
    };
    let events: Vec<bytes::Bytes> = vec![
        ev(1, det(Some(11), "person", now)).encode_to_vec().into(),
        ev(2, det(None, "person", now)).encode_to_vec().into(),
        ev(3, det(Some(13), "car", now + 86_400_000))
            .encode_to_vec()
            .into(),
        bytes::Bytes::from_static(b"\xff\xff\xff not protobuf"),
        ev(5, det(Some(15), "bus\u{7}", now)).encode_to_vec().into(),
        ev(6, det(Some(16), "dog", now)).encode_to_vec().into(),
    ];
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            first_seq: 1,
            events,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let Some(core_message::Msg::Ack(ack)) = inbound.next().await.unwrap().unwrap().msg else {
        panic!("expected an ack")
    };
    assert_eq!(ack.committed_through, 6);
    let refused: Vec<(u64, String)> = ack
        .rejected
        .iter()
        .map(|r| (r.seq, r.field.clone()))
        .collect();
    assert_eq!(
        refused,
        vec![
            (2, "detection_oid".to_string()),
            (3, "timestamp_detected".to_string()),
            (4, "event".to_string()),
            (5, "item_name".to_string()),
        ]
    );
    let st = stats(&core.url()).await;
    assert_eq!((st.stored, st.rejected), (2, 4));
    let q = client(&core.url())
        .await
        .list_quarantine(ListQuarantineRequest {
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.total, 4);
    assert_eq!(q.events.len(), 4);
    let future = q.events.iter().find(|e| e.seq == 3).unwrap();
    assert!(future.reason.contains("in the future"), "{}", future.reason);
    assert_eq!(
        future
            .event
            .as_ref()
            .unwrap()
            .detection
            .as_ref()
            .unwrap()
            .detection_oid,
        Some(13)
    );
    let garbled = q.events.iter().find(|e| e.seq == 4).unwrap();
    assert!(garbled.reason.contains("does not decode"));
    assert_eq!(garbled.raw, b"\xff\xff\xff not protobuf");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let mut ingest = IngestClient::connect(core.url())
        .await
        .unwrap()
        .max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: "big".into(),
            epoch: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = ingest
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.next().await.unwrap().unwrap();
    let blob = bytes::Bytes::from(vec![0u8; 9 * 1024 * 1024]);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            first_seq: 1,
            events: vec![blob],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let err = inbound.next().await.unwrap().unwrap_err();
    assert!(
        err.message().contains("message length too large") && err.message().contains("8388608"),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(stats(&core.url()).await.stored, 0);

    let agent = intake_agent(dir.path(), "intake", core.url(), vec![]);
    let mut c = IntakeClient::connect(agent.intake_url())
        .await
        .unwrap()
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut d = det(Some(1), "car", now_ms());
    d.attributes
        .insert("blob".into(), "x".repeat(17 * 1024 * 1024));
    let err = c
        .publish(PublishRequest {
            detections: vec![d],
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_dataset_b_is_refused_and_the_old_table_stays() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.csv");
    write_locations(&good, &[1, 2]);
    let core = Core::start(dir.path(), Some(&good));
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "geographical_location_oid,geographical_location\n1,Renamed\nseven,Broken\n",
    )
    .unwrap();
    // Admin calls need the core's admin token: none, or a wrong one, is
    // refused with what is missing and where the token is.
    let mut open = AdminClient::connect(core.url()).await.unwrap();
    let err = open
        .reload_locations(ReloadLocationsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message().contains("no credential") && err.message().contains("authorization: Bearer"),
        "{}",
        err.message()
    );
    let mut wrong = tonic::Request::new(ReloadLocationsRequest::default());
    wrong.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", "f".repeat(64)).parse().unwrap(),
    );
    let err = open.reload_locations(wrong).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(
        err.message()
            .contains("neither the admin token nor an API token"),
        "{}",
        err.message()
    );
    let http = core.http.to_string();
    let post = |auth: String| {
        format!("POST /admin/reload-locations HTTP/1.1\r\nHost: {http}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let (head, body) = sightline_tests::http::request(&http, &post(String::new())).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("Authorization: Bearer"));
    let (head, _) = sightline_tests::http::request(
        &http,
        &post(format!("Authorization: Bearer {}\r\n", core.admin_token())),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let mut admin = core.admin().await;
    let err = admin
        .reload_locations(ReloadLocationsRequest {
            path: bad.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("line 3") && err.message().contains("not an integer: \"seven\""),
        "{}",
        err.message()
    );
    assert_eq!(
        stats(&core.url()).await.locations_loaded,
        2,
        "the old table stays"
    );
    // Over HTTP too (reloads the configured file, which is fine).
    let renamed = dir.path().join("renamed.csv");
    std::fs::write(
        &renamed,
        "geographical_location_oid,geographical_location\n1,North Gate\n2,South Gate\n3,East Gate\n",
    )
    .unwrap();
    let r = admin
        .reload_locations(ReloadLocationsRequest {
            path: renamed.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.rows, 3);
    // A core started with a bad file refuses to start, naming line and reason.
    let out = std::process::Command::new(sightline_tests::bin_path("sightline-core"))
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--edge-plaintext",
            "--data-dir",
        ])
        .arg(dir.path().join("other"))
        .arg("--locations")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("seven"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_location_is_kept_flagged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.csv");
    write_locations(&b, &[1]);
    let core = Core::start(dir.path(), Some(&b));
    let agent = intake_agent(dir.path(), "a", core.url(), vec![]);
    let mut c = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let now = now_ms();
    let mut stranger = det(Some(2), "car", now);
    stranger.geographical_location_oid = 999;
    c.publish(PublishRequest {
        detections: vec![det(Some(1), "car", now), stranger],
    })
    .await
    .unwrap();
    let url = core.url();
    wait_stored(&url, 2).await;
    assert_eq!(stats(&url).await.unmatched, 1);
    let top = client(&url)
        .await
        .top_items(TopItemsRequest {
            from_ms: now - 120_000,
            to_ms: now + 120_000,
            x: 5,
            geographical_location_oid: Some(999),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.locations.len(), 1);
    assert!(!top.locations[0].location_matched);
    assert_eq!(top.locations[0].total, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_answers_retryably_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A port with no core behind it yet, below the ephemeral range: a port
    // bound at 0 and released could be handed to another test's server in
    // the meantime (CI saw a gRPC server answer there, and the core then
    // failed to bind it).
    let port: std::net::SocketAddr =
        ([127, 0, 0, 1], sightline_tests::nats::free_ports(1)[0]).into();
    let agent = intake_agent(
        dir.path(),
        "full",
        format!("http://{port}"),
        vec!["--max-events".into(), "100".into()],
    );
    let mut c = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let now = now_ms();
    let first: Vec<Detection> = (1..=100).map(|i| det(Some(i), "car", now)).collect();
    c.publish(PublishRequest { detections: first })
        .await
        .unwrap();
    let err = c
        .publish(PublishRequest {
            detections: vec![det(Some(101), "car", now)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message().contains("buffer full") && err.message().contains("retry"),
        "{}",
        err.message()
    );
    // The core comes up: everything held arrives, then there is room again.
    let core = Core::start_with(sightline_tests::CoreArgs {
        data_dir: dir.path().join("core"),
        locations: None,
        grpc: port,
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec![],
    });
    let url = core.url();
    wait_stored(&url, 100).await;
    // The core has stored them; the agent frees its buffer once their
    // acknowledgements reach it, a moment later. Retry as the answer says.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c
            .publish(PublishRequest {
                detections: vec![det(Some(101), "car", now)],
            })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the buffer stayed full 30 s after the core stored all it held: {}",
                    e.message()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("publish after the core caught up: {e}"),
        }
    }
    wait_stored(&url, 101).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_must_start_with_a_valid_hello() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let mut ingest = IngestClient::connect(core.url()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: "bad id!".into(),
            epoch: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let err = match ingest.session(ReceiverStream::new(rx)).await {
        Err(s) => s,
        Ok(r) => r.into_inner().next().await.unwrap().unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("agent_id"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn timeline_requests_out_of_bounds_are_refused_naming_the_field() {
    use sightline_proto::v1::{TimelineBy, TimelineRequest};
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let mut q = client(&core.url()).await;
    let now = now_ms();
    let good = TimelineRequest {
        from_ms: now - 3_600_000,
        to_ms: now,
        by: TimelineBy::Location as i32,
        max_series: 0,
    };
    let r = q.timeline(good).await.unwrap().into_inner();
    assert_eq!((r.bucket_ms, r.buckets), (60_000, 61), "{r:?}");
    for (field, bad) in [
        ("by", TimelineRequest { by: 0, ..good }),
        ("by", TimelineRequest { by: 99, ..good }),
        (
            "max_series",
            TimelineRequest {
                max_series: 1001,
                ..good
            },
        ),
        ("to_ms", TimelineRequest { to_ms: 0, ..good }),
        (
            "to_ms",
            TimelineRequest {
                to_ms: good.from_ms - 1,
                ..good
            },
        ),
        (
            "from_ms",
            TimelineRequest {
                from_ms: now / 1000,
                ..good
            },
        ),
        (
            "from_ms",
            TimelineRequest {
                from_ms: -5,
                ..good
            },
        ),
    ] {
        let e = q.timeline(bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(
            e.message().contains(&format!("`{field}`")),
            "{bad:?}: {}",
            e.message()
        );
    }
    // The widest range there is answers with at most 360 buckets.
    let r = q
        .timeline(TimelineRequest {
            from_ms: 0,
            to_ms: i64::MAX,
            ..good
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.buckets <= 360, "{}", r.buckets);
    assert!(core.log().lines().all(|l| !l.contains("panicked")));
}
