//! The dashboard in a real headless Chromium (Debian's, driven by
//! playwright-core from `tests/browser/dashboard.mjs`) against a real core
//! with a fleet: a replayed dataset (the ground truth), a simulated agent
//! (live traffic) and an agent with a synthetic camera (footage). The page is
//! rendered on the server and hydrates; the live counter rises without a
//! reload; the top-X table equals the gRPC answer and the ground truth; search
//! finds a known det_oid and an item; the clip plays and seeks; no console
//! errors. Screenshots land in `tests/artifacts/dashboard/`.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use sightline_proto::v1::{
    intake_client::IntakeClient, publish_result, Detection, PublishRequest, Role,
};
use sightline_tests::{
    data::{now_ms, write_locations},
    query::{event_with_media, top_in, wait_stored},
    Agent, AgentArgs, Core, Dataset,
};

fn footage_agent(dir: &Path, core_url: &str) -> Agent {
    let cfg = dir.join("footage.toml");
    std::fs::write(
        &cfg,
        format!(
            "agent_id = \"camera-host\"\ncore_url = \"{core_url}\"\n[buffer]\npath = \"{}\"\n[capture]\nspool_path = \"{}\"\n\
             [[capture.cameras]]\ncamera_oid = 101\ninput = \"synthetic://gate-1?width=320&height=240&fps=25&gop=25\"\nmode = \"clip\"\npre = \"2s\"\npost = \"2s\"\n",
            dir.join("footage-buffer").display(),
            dir.join("footage-spool").display()
        ),
    )
    .unwrap();
    Agent::start(AgentArgs {
        id: "camera-host".into(),
        core_url: core_url.into(),
        data_dir: dir.join("footage-buffer"),
        command: vec![],
        intake: true,
        exit_when_drained: false,
        extra: vec!["--config".into(), cfg.display().to_string()],
    })
}

/// Sends one event the core must refuse (its timestamp is a day ahead) over
/// a raw ingest session, as an agent with a bad clock would.
async fn refused_event(core_url: &str) {
    use prost::Message;
    use sightline_proto::v1::{
        agent_message, core_message, ingest_client::IngestClient, AgentMessage, Batch, EdgeEvent,
        Hello,
    };
    let mut ingest = IngestClient::connect(core_url.to_string()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            agent_id: "skewed".into(),
            epoch: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = ingest
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap();
    let event = EdgeEvent {
        seq: 1,
        accepted_ms: now_ms(),
        detection: Some(Detection {
            geographical_location_oid: 1,
            video_camera_oid: 9,
            detection_oid: Some(99),
            item_name: "car".into(),
            timestamp_detected: now_ms() + 86_400_000,
            ..Default::default()
        }),
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Batch(Batch {
            first_seq: 1,
            events: vec![event.encode_to_vec().into()],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let Some(core_message::Msg::Ack(ack)) = inbound.message().await.unwrap().unwrap().msg else {
        panic!("expected an ack")
    };
    assert_eq!(ack.rejected.len(), 1);
}

/// Publishes one detection on the synthetic camera; waits for its footage.
async fn detection_with_footage(agent: &Agent, core_url: &str) -> i64 {
    let mut intake = IntakeClient::connect(agent.intake_url()).await.unwrap();
    let r = intake
        .publish(PublishRequest {
            detections: vec![Detection {
                geographical_location_oid: 1,
                video_camera_oid: 101,
                item_name: "backpack".into(),
                timestamp_detected: now_ms(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let oid = match r.results[0].result.clone().unwrap() {
        publish_result::Result::Accepted(a) => a.detection_oid,
        other => panic!("detection refused: {other:?}"),
    };
    event_with_media(core_url, oid, 3).await;
    oid
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_renders_hydrates_updates_live_and_agrees_with_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let locations = dir.path().join("locations.csv");
    write_locations(&locations, &[1, 2, 3]);
    let core = Core::start(dir.path(), Some(&locations));

    // Ground truth: a replayed dataset (location 4 is not in Dataset B).
    let data = Dataset::generate(41, 3_000, 0.1, 0.2, &[1, 2, 3, 4]);
    let truth = data.truth();
    let file = dir.path().join("a.csv");
    data.write_csv(&file);
    let mut replay = Agent::start(AgentArgs::replay(
        dir.path(),
        "replay",
        core.url(),
        &file,
        None,
    ));
    assert!(replay.wait(Duration::from_secs(120)).success());
    wait_stored(&core.url(), truth.unique).await;
    refused_event(&core.url()).await;

    // Footage, then live traffic (both after the dataset's time range).
    let camera = footage_agent(dir.path(), &core.url());
    tokio::time::sleep(Duration::from_secs(3)).await; // the ring fills its pre-roll
    let clip_det = detection_with_footage(&camera, &core.url()).await;
    let _sim = Agent::start(AgentArgs {
        id: "sim".into(),
        core_url: core.url(),
        data_dir: dir.path().join("sim"),
        command: [
            "simulate",
            "--cameras",
            "2",
            "--camera-base",
            "201",
            "--locations",
            "2,3",
            "--rate",
            "200",
        ]
        .map(String::from)
        .to_vec(),
        intake: false,
        exit_when_drained: false,
        extra: vec![],
    });

    // The range of the dataset, in whole minutes, ending before live traffic.
    let (from, to, x) = (
        truth.min_ts - truth.min_ts.rem_euclid(60_000),
        truth.max_ts - truth.max_ts.rem_euclid(60_000) + 60_000,
        5,
    );
    assert!(
        to <= now_ms() - 5_000,
        "the range must close before the live traffic"
    );
    let known_det = *truth.det_oids.iter().min().unwrap();
    // The browser logs in through the /login form as an admin account (the
    // fleet and quarantine pages need the admin role).
    let (user, password) = ("operator", "correct horse battery staple");
    core.add_user(user, Role::Admin, &[], password).await;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/dashboard");
    let cfg = serde_json::json!({
        "base": format!("http://{}", core.http),
        "artifacts": artifacts,
        "top": { "from": from, "to": to, "x": x },
        // As strings: a det_oid does not fit in a JavaScript number.
        "search_det": known_det.to_string(),
        "search_item": "bicycle",
        "clip_det": clip_det.to_string(),
        "user": { "name": user, "password": password },
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.mjs");
    let run = Command::new("node")
        .arg(&script)
        .arg(cfg.to_string())
        .output()
        .expect("node runs (deploy/install-deps.sh installs Node's playwright-core and Chromium)");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "browser script failed: {stderr}\ncore log:\n{}",
        core.log()
    );
    let out: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "browser script printed no JSON ({e}): {}",
            String::from_utf8_lossy(&run.stdout)
        )
    });
    println!("browser: {out}");

    // Without a session, the browser was sent to the login form (and back
    // to the page it asked for after logging in).
    assert_eq!(out["anonymous_landed_on"], "/login?next=/top", "{out}");

    // Rendered on the server, then hydrated; live without a reload.
    assert!(out["ssr_rows"].as_u64().unwrap() > 0, "{out}");
    assert!(out["ssr_stored"].as_u64().unwrap() >= truth.unique, "{out}");
    assert_eq!(out["hydrated"], true, "{out}");
    assert!(
        out["live_after"].as_u64().unwrap() > out["live_before"].as_u64().unwrap(),
        "{out}"
    );
    assert_eq!(out["live_no_reload"], true, "{out}");
    assert!(out["live_rows"].as_u64().unwrap() > 0, "{out}");

    // The top-X table equals the gRPC answer for the same range, and the truth.
    let shown = sightline_tests::query::top_table(&out["top"], "location");
    let api = top_in(&core.url(), from, to, x).await;
    assert_eq!(shown, api, "the page and the gRPC API disagree");
    assert_eq!(
        shown,
        truth.top(x as usize),
        "the page disagrees with the ground truth"
    );

    // Search finds the det_oid, and every stored bicycle at least.
    let rows: Vec<String> = out["search_det_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(rows, vec![known_det.to_string()], "{out}");
    let bicycles: u64 = truth.counts.values().filter_map(|m| m.get("bicycle")).sum();
    assert!(
        out["search_item_hits"].as_u64().unwrap() >= bicycles,
        "{out} vs {bicycles}"
    );
    assert!(out["search_item_rows"].as_u64().unwrap() > 0, "{out}");

    // Footage: timeline drawn, the clip ready, playing and seeking, the snapshot shown.
    assert!(out["timeline_series"].as_u64().unwrap() > 0, "{out}");
    assert!(out["video_ready"].as_u64().unwrap() >= 2, "{out}");
    assert!(out["video_played"].as_f64().unwrap() > 0.0, "{out}");
    let seek = out["video_seeked"].as_array().unwrap();
    let (target, at) = (seek[0].as_f64().unwrap(), seek[1].as_f64().unwrap());
    assert!(
        (at - target).abs() < 0.5,
        "seek to {target} landed at {at}: {out}"
    );
    assert_eq!(out["snapshot_width"].as_u64().unwrap(), 320, "{out}");
    assert!(out["fleet_agents"].as_u64().unwrap() >= 3, "{out}");
    // The camera host reports its camera's capture.
    assert_eq!(out["camera_state"], "streaming", "{out}");

    // The refused event, with its field.
    assert_eq!(out["quarantine_total"], 1, "{out}");
    assert_eq!(
        out["quarantine_fields"],
        serde_json::json!(["timestamp_detected"]),
        "{out}"
    );

    // The audit page: linked for the admin; without JavaScript its form
    // filters; after hydration it pages to older records and back, each row
    // this account's login; a bad filter is said plainly.
    assert_eq!(out["audit_nav"], 1, "{out}");
    let me = format!("user:{user}");
    assert!(
        out["ssr_audit_url"]
            .as_str()
            .unwrap()
            .contains("action=login_succeeded"),
        "{out}"
    );
    let ssr_rows = out["ssr_audit_rows"].as_array().unwrap();
    assert!(!ssr_rows.is_empty(), "{out}");
    for r in ssr_rows {
        assert_eq!(r, &serde_json::json!([me, "login_succeeded"]), "{out}");
    }
    let seq = |key: &str| -> u64 {
        let rows = out[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {out}"));
        assert_eq!(rows.len(), 1, "{key}: {out}");
        assert_eq!(rows[0]["actor"], me.as_str(), "{key}: {out}");
        assert_eq!(rows[0]["action"], "login_succeeded", "{key}: {out}");
        rows[0]["seq"].as_u64().unwrap()
    };
    let (first, older, newer) = (seq("audit_first"), seq("audit_older"), seq("audit_newer"));
    assert!(older < first, "{out}");
    assert_eq!(newer, first, "{out}");
    assert!(
        out["audit_bad"]
            .as_str()
            .unwrap()
            .contains("field `camera`: "),
        "{out}"
    );
    assert_eq!(out["audit_bad_status"], 400, "{out}");

    // And nothing went wrong in the page.
    assert_eq!(
        out["errors"],
        serde_json::json!([]),
        "console errors: {out}"
    );
    for page in [
        "live",
        "top",
        "timeline",
        "search",
        "event",
        "fleet",
        "quarantine",
        "audit",
        "live-tablet",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
