//! Operating the system: Parquet replay, retention, SIGTERM, /metrics and
//! /healthz, the terminal client.

use std::{io::Write, time::Duration};

use sightline_tests::{
    bin_path,
    data::{now_ms, write_locations},
    query::{all_events, assert_exactly_once, stats, wait_more_stored},
    wait_for, Agent, AgentArgs, Core, CoreArgs, Dataset,
};

const LOCATIONS: &[i64] = &[1, 2, 3];

fn replay(
    dir: &std::path::Path,
    id: &str,
    core_url: String,
    file: &std::path::Path,
    rate: Option<u32>,
) -> Agent {
    Agent::start(AgentArgs::replay(dir, id, core_url, file, rate))
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let (head, body) = sightline_tests::http::get(addr, path, "").await;
    format!(
        "{head}

{}",
        String::from_utf8_lossy(&body)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_replay_is_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(11, 4_000, 0.15, 0.4, LOCATIONS);
    let file = dir.path().join("a.parquet");
    data.write_parquet(&file);
    let mut agent = replay(dir.path(), "pq", core.url(), &file, None);
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &data.truth()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_commits_in_flight_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.csv");
    write_locations(&b, LOCATIONS);
    let mut core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(12, 20_000, 0.1, 0.2, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    let mut agent = replay(dir.path(), "a", core.url(), &csv, Some(6000));
    wait_more_stored(&core.url(), 3000).await;
    let status = core.terminate();
    assert!(
        status.success(),
        "the core exits cleanly on SIGTERM: {status}"
    );
    assert!(core.log().contains("core stopped"));
    let mut args = core.args.clone();
    args.grpc = core.grpc;
    let core = Core::start_with(args);
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &truth).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_old_events_but_still_catches_their_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("core.toml");
    let mut f = std::fs::File::create(&cfg).unwrap();
    writeln!(
        f,
        "[retention]\nevents = \"1h\"\ndedup_keys = \"30d\"\ninterval = \"500ms\""
    )
    .unwrap();
    let core = Core::start_with(CoreArgs {
        data_dir: dir.path().join("core"),
        locations: None,
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec!["--config".into(), cfg.display().to_string()],
    });
    let now = now_ms();
    let csv = dir.path().join("a.csv");
    std::fs::write(
        &csv,
        format!(
            "geographical_location_oid,video_camera_oid,detection_oid,item_name,timestamp_detected\n\
             1,10,1,person,{old}\n1,10,2,person,{now}\n",
            old = now - 2 * 3_600_000
        ),
    )
    .unwrap();
    let mut a = replay(dir.path(), "a", core.url(), &csv, None);
    assert!(a.wait(Duration::from_secs(60)).success());
    let url = core.url();
    let left = wait_for(
        "retention to remove the old event",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let ev = all_events(&url).await;
                (ev.len() == 1).then_some(ev)
            }
        },
    )
    .await;
    assert_eq!(left[0].detection.as_ref().unwrap().detection_oid, Some(2));
    // The old event's det_oid is remembered: its duplicate is not stored.
    let dup = dir.path().join("dup.csv");
    std::fs::write(
        &dup,
        format!(
            "geographical_location_oid,video_camera_oid,detection_oid,item_name,timestamp_detected\n\
             1,10,1,person,{}\n",
            now - 2 * 3_600_000
        ),
    )
    .unwrap();
    let mut b = replay(dir.path(), "b", core.url(), &dup, None);
    assert!(b.wait(Duration::from_secs(60)).success());
    let s = stats(&url).await;
    assert_eq!((s.stored, s.duplicates_semantic), (2, 1));
    assert_eq!(all_events(&url).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_the_terminal_client_answer() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(13, 3_000, 0.1, 0.0, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    let mut agent = replay(dir.path(), "m", core.url(), &csv, None);
    assert!(agent.wait(Duration::from_secs(60)).success());

    assert!(http_get(core.http, "/healthz").await.contains("200 OK"));
    let metrics = http_get(core.http, "/metrics").await;
    assert!(
        metrics.contains(&format!("sightline_events_ingested_total {}", truth.unique)),
        "{metrics}"
    );
    let dups = truth.published - truth.unique;
    assert!(metrics.contains(&format!(
        "sightline_duplicates_total{{level=\"semantic\"}} {dups}"
    )));
    assert!(metrics.contains("sightline_commit_seconds_bucket"));
    assert!(metrics.contains("sightline_agent_lag_events{agent=\"m\"} 0"));

    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin_path("sightline-core"))
            .args(args)
            .env("SIGHTLINE_CORE", core.url())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from = (truth.min_ts - 60_000).to_string();
    let to = (truth.max_ts + 120_000).to_string();
    let top = run(&["top", "-x", "2", "--from-ms", &from, "--to-ms", &to]);
    for (loc, items) in truth.top(2) {
        assert!(top.contains(&format!("Location {loc} [{loc}]")), "{top}");
        for (item, count) in items {
            assert!(
                top.lines()
                    .any(|l| l.contains(&item) && l.trim_end().ends_with(&count.to_string())),
                "{item} {count} missing:\n{top}"
            );
        }
    }
    let fleet = run(&["fleet"]);
    assert!(
        fleet.contains("m ") && fleet.contains(&truth.published.to_string()),
        "{fleet}"
    );
    let tail = run(&["tail", "--from-ms", &from, "--count", "3"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    let stats_line = run(&["stats"]);
    assert!(
        stats_line.contains(&format!("stored={}", truth.unique)),
        "{stats_line}"
    );
}
