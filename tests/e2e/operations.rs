//! Operating the system: Parquet replay, retention, SIGTERM, /metrics and
//! /healthz, the terminal client.

use std::{io::Write, time::Duration};

use sightline_tests::{
    bin_path,
    data::{now_ms, write_locations},
    query::{all_events, assert_exactly_once, stats, wait_more_stored},
    Agent, AgentArgs, Core, CoreArgs, Dataset, Edge,
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
async fn an_event_older_than_retention_is_refused_with_a_named_reason_not_dropped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let config = |events: &str| {
        let cfg = dir.path().join(format!("core-{events}.toml"));
        let mut f = std::fs::File::create(&cfg).unwrap();
        writeln!(
            f,
            "[retention]\nevents = \"{events}\"\ndedup_keys = \"30d\"\ninterval = \"500ms\""
        )
        .unwrap();
        cfg
    };
    let args = CoreArgs {
        data_dir: dir.path().join("core"),
        locations: None,
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec!["--config".into(), config("1h").display().to_string()],
    };
    let mut core = Core::start_with(args.clone());
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
    // Acknowledged, but refused with the reason, kept in the quarantine and
    // counted: never stored to be cut by the next retention pass.
    let s = stats(&url).await;
    assert_eq!((s.stored, s.rejected, s.expired), (1, 1, 0));
    let q = sightline_tests::query::client(&url)
        .await
        .list_quarantine(sightline_proto::v1::ListQuarantineRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.events.len(), 1);
    assert_eq!(q.events[0].field, "timestamp_detected");
    assert!(
        q.events[0].reason.contains("retention.events"),
        "{}",
        q.events[0].reason
    );
    // Retention passes run (every 500 ms); Stats and the queries still agree.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = stats(&url).await;
    let events = all_events(&url).await;
    assert_eq!(events.len() as u64, s.stored);
    assert_eq!(events[0].detection.as_ref().unwrap().detection_oid, Some(2));
    // Its det_oid was not kept either: with a longer retention, the same
    // file stores it.
    core.terminate();
    let mut longer = args.clone();
    longer.extra = vec!["--config".into(), config("30d").display().to_string()];
    let core = Core::start_with(longer);
    let mut b = replay(dir.path(), "b", core.url(), &csv, None);
    assert!(b.wait(Duration::from_secs(60)).success());
    let s = stats(&core.url()).await;
    assert_eq!((s.stored, s.duplicates_semantic), (2, 1));
    assert_eq!(all_events(&core.url()).await.len(), 2);
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
            .env(
                "SIGHTLINE_ADMIN_TOKEN_FILE",
                core.args.data_dir.join("admin.token"),
            )
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

/// The core and the agent set their allocators to give freed memory back at
/// once (the peak memory a burst leaves behind), each by running itself
/// again with their settings: the same process, serving, with the settings
/// in its environment.
#[tokio::test(flavor = "multi_thread")]
async fn the_core_and_the_agent_run_with_allocators_that_give_freed_memory_back() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    // It answers: the process started is the one serving.
    stats(&core.url()).await;
    let environ = |pid: u32| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let has = |environ: &[u8], want: &str| environ.split(|b| *b == 0).any(|v| v == want.as_bytes());
    let core_env = environ(core.pid());
    for want in [
        "MIMALLOC_PURGE_DELAY=0",
        "MALLOC_ARENA_MAX=1",
        "MALLOC_MMAP_THRESHOLD_=1048576",
    ] {
        assert!(has(&core_env, want), "{want} not in the core's environment");
    }
    // The agent's intake answers once it is listening (Agent::start waits
    // for the line it prints then), so the process started is serving too.
    let agent =
        Agent::start(AgentArgs::intake(dir.path(), "alloc", String::new()).over(&core, Edge::Grpc));
    let agent_env = environ(agent.pid());
    for want in ["MALLOC_ARENA_MAX=1", "MALLOC_MMAP_THRESHOLD_=131072"] {
        assert!(
            has(&agent_env, want),
            "{want} not in the agent's environment"
        );
    }
}
