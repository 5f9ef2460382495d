//! Completeness, per camera, end to end (PROTOCOL.md, "Completeness"): real
//! core and agent processes; detections published at the agent's intake, the
//! report read with the real `sightline-core completeness` client. It names
//! exactly the camera_seq ranges that never reached the core, with the
//! agent's reason, and says `complete` when nothing is missing.

use std::time::Duration;

use sightline_proto::v1::{intake_client::IntakeClient, publish_result, Detection, PublishRequest};
use sightline_tests::{
    bin_path, data::write_locations, query::wait_stored, wait_for, Agent, AgentArgs, Core, Edge,
};

const LOCATIONS: &[i64] = &[1, 2];

fn det(oid: i64, camera: i64, now: i64) -> Detection {
    Detection {
        geographical_location_oid: 1,
        video_camera_oid: camera,
        detection_oid: Some(oid),
        item_name: "person".into(),
        timestamp_detected: now + oid,
        ..Default::default()
    }
}

/// `sightline-core completeness --since 24h` against `core`: its stdout.
fn report(core: &Core) -> String {
    let out = std::process::Command::new(bin_path("sightline-core"))
        .args(["completeness", "--since", "24h"])
        .env("SIGHTLINE_CORE", core.url())
        .env(
            "SIGHTLINE_ADMIN_TOKEN_FILE",
            core.args.data_dir.join("admin.token"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "completeness: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until the report holds every one of `lines` (the agent reports its
/// intake every second), and returns it.
async fn wait_report(core: &Core, lines: &[&str]) -> String {
    let mut last = String::new();
    let got = wait_for("the completeness report", Duration::from_secs(30), || {
        let r = report(core);
        let ok = lines.iter().all(|l| r.lines().any(|x| x == *l));
        last = r.clone();
        async move { ok.then_some(r) }
    })
    .await;
    assert!(!last.is_empty());
    got
}

/// Waits until the `/metrics` text served at `addr` has `line`.
async fn wait_metric(what: &str, addr: std::net::SocketAddr, line: &'static str) {
    wait_for(what, Duration::from_secs(30), || async move {
        let (_, body) = sightline_tests::http::get(addr, "/metrics", "").await;
        String::from_utf8_lossy(&body)
            .lines()
            .any(|l| l == line)
            .then_some(())
    })
    .await;
}

async fn publish(intake: &mut IntakeClient<tonic::transport::Channel>, d: Vec<Detection>) -> usize {
    let r = intake
        .publish(PublishRequest { detections: d })
        .await
        .unwrap()
        .into_inner();
    r.results
        .iter()
        .filter(|r| matches!(r.result, Some(publish_result::Result::Dropped(_))))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_lost_with_duplicates_and_a_core_restart_reads_complete() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let mut core = Core::start(dir.path(), Some(&b));
    let agent =
        Agent::start(AgentArgs::intake(dir.path(), "whole", String::new()).over(&core, Edge::Grpc));
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let now = sightline_tests::data::now_ms();
    // 2 cameras, 150 detections each, every 10th det_oid published twice
    // (a semantic duplicate: it reached the core, and counts as received).
    let mut published = [0u64; 2];
    for round in 0..2 {
        for chunk in 0..3 {
            let mut d = Vec::new();
            for i in 0..50 {
                let oid = 1 + round * 1000 + chunk * 50 + i;
                let cam = 100 + (i % 2);
                d.push(det(oid, cam, now));
                if i % 10 == 0 {
                    d.push(det(oid, cam, now));
                }
            }
            for x in &d {
                published[(x.video_camera_oid - 100) as usize] += 1;
            }
            assert_eq!(publish(&mut intake, d).await, 0);
        }
        if round == 0 {
            wait_stored(&core.url(), 150).await;
            core.restart();
        }
    }
    wait_stored(&core.url(), 300).await;
    let r = wait_report(
        &core,
        &[
            "complete",
            &format!(
                "camera 100 (agent whole): complete; {} received",
                published[0]
            ),
            &format!(
                "camera 101 (agent whole): complete; {} received",
                published[1]
            ),
        ],
    )
    .await;
    assert_eq!(r.lines().next(), Some("complete"), "{r}");
    // The metric the dashboards and alerts read (refreshed every 10 s).
    wait_metric(
        "the completeness metric",
        core.http,
        "sightline_completeness_missing_total{camera=\"100\"} 0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn detections_dropped_by_a_full_buffer_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    // The core is down for the agent: pointed at a port where nothing
    // listens (below the ephemeral range, so no other test's server is
    // given it meanwhile).
    let dead_port = sightline_tests::nats::free_ports(1)[0];
    let mut args = AgentArgs::intake(dir.path(), "dropper", String::new()).over(&core, Edge::Grpc);
    let real_url = std::mem::replace(&mut args.core_url, format!("https://127.0.0.1:{dead_port}"));
    let cfg = dir.path().join("dropper.toml");
    std::fs::write(
        &cfg,
        "agent_id = \"dropper\"\n[buffer]\nmax_events = 100\nwhen_full = \"drop\"\n",
    )
    .unwrap();
    args.extra
        .extend(["--config".to_string(), cfg.display().to_string()]);
    let mut agent = Agent::start(args);
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let now = sightline_tests::data::now_ms();
    // camera_seq 1..=100 fit; 101..=250 are dropped.
    let mut dropped = 0;
    for chunk in 0..5 {
        let d = (0..50).map(|i| det(1 + chunk * 50 + i, 100, now)).collect();
        dropped += publish(&mut intake, d).await;
    }
    assert_eq!(dropped, 150);
    assert!(agent.terminate().success());
    // The core comes back for the agent; its numbers go on from 251.
    let mut args = agent.args.clone();
    args.core_url = real_url;
    let agent = Agent::start(args);
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    wait_stored(&core.url(), 100).await;
    // Stored at the core is not yet trimmed at the agent: its buffer frees
    // room only when the acknowledgement arrives, and a buffer still full
    // would (rightly) drop the next detections.
    wait_metric(
        "the agent's buffer emptied",
        agent.metrics_addr(),
        "sightline_edge_buffer_events 0",
    )
    .await;
    let d = (0..20).map(|i| det(1000 + i, 100, now)).collect();
    assert_eq!(publish(&mut intake, d).await, 0);
    wait_stored(&core.url(), 120).await;
    let r = wait_report(
        &core,
        &[
            "incomplete: 150 missing, 0 pending",
            "camera 100 (agent dropper): 150 missing, 0 pending; 120 received",
        ],
    )
    .await;
    let gaps: Vec<&str> = r.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(gaps.len(), 1, "{r}");
    assert!(
        gaps[0].starts_with("  missing 101..250 (150) between "),
        "{r}"
    );
    assert!(
        gaps[0].ends_with(": 150 dropped at the agent (buffer full, when_full = drop)"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jump_in_the_detectors_counter_is_named_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let agent = Agent::start(
        AgentArgs::intake(dir.path(), "counted", String::new()).over(&core, Edge::Grpc),
    );
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let now = sightline_tests::data::now_ms();
    // The detector numbers its own detections: 1..=50, then 61..=100.
    let d = (1..=50u64)
        .chain(61..=100)
        .map(|n| Detection {
            camera_seq: Some(n),
            ..det(n as i64, 200, now)
        })
        .collect();
    assert_eq!(publish(&mut intake, d).await, 0);
    wait_stored(&core.url(), 90).await;
    let r = wait_report(
        &core,
        &["camera 200 (agent counted): 10 missing, 0 pending; 90 received"],
    )
    .await;
    let gaps: Vec<&str> = r.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(gaps.len(), 1, "{r}");
    assert!(gaps[0].starts_with("  missing 51..60 (10) between "), "{r}");
    assert!(
        gaps[0].ends_with(": 10 never reached the agent (the detector's counter jumped)"),
        "{r}"
    );
}
