//! Agent failover across `core_urls`, end to end: real agents and cores on
//! 127.0.0.1. The cores here are separate single-node cores that share
//! nothing (the cluster's shared watermarks are issue 15's write path), so
//! these tests hold the failover's mechanics to what the protocol promises
//! between two cores that do not know each other: the agent moves on when
//! its core fails, says so in its log and `/metrics`, and the core it moves
//! to ends with every event the agent still held (a core behind the agent's
//! acknowledgements gets the kept events again, PROTOCOL.md rule 18a).

use std::time::Duration;

use sightline_tests::{
    data::write_locations,
    query::{all_events, assert_exactly_once, wait_more_stored},
    Agent, AgentArgs, Core, Dataset, Edge,
};

const LOCATIONS: &[i64] = &[1, 2, 3];

/// A 127.0.0.1 URL nothing listens on: a free port below the ephemeral
/// range, which no other test's server bound at port 0 is given.
fn dead_url() -> String {
    format!(
        "http://127.0.0.1:{}",
        sightline_tests::nats::free_ports(1)[0]
    )
}

/// An agent config: reconnects within `backoff_max`, keeps `keep_acked`
/// acknowledged events.
fn agent_config(dir: &std::path::Path, id: &str, keep_acked: u64) -> Vec<String> {
    let file = dir.join(format!("{id}.toml"));
    std::fs::write(
        &file,
        format!(
            "agent_id = \"{id}\"\n[buffer]\nkeep_acked = {keep_acked}\n[sender]\nbackoff_max = \"300ms\"\nconnect_timeout = \"2s\"\n"
        ),
    )
    .unwrap();
    vec!["--config".into(), file.display().to_string()]
}

/// `sightline_edge_core_connected{url="…"}` from the agent's /metrics.
async fn core_connected(metrics: std::net::SocketAddr, url: &str) -> Option<i64> {
    let (_, body) = sightline_tests::http::get(metrics, "/metrics", "").await;
    let text = String::from_utf8_lossy(&body).to_string();
    let key = format!("sightline_edge_core_connected{{url=\"{url}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_first_core_is_down_delivers_everything_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    let core = Core::start(dir.path(), Some(&b));
    let data = Dataset::generate(41, 5_000, 0.2, 0.2, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let dead = dead_url();
    let mut args = AgentArgs::replay(
        dir.path(),
        "fo-dead-first",
        format!("{dead},{}", core.url()),
        &csv,
        None,
    );
    args.extra = agent_config(dir.path(), "fo-dead-first", 0);
    let mut agent = Agent::start(args);
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &data.truth()).await;
    let log = agent.log();
    let moved = log
        .lines()
        .find(|l| l.contains("failing over to the next core"))
        .unwrap_or_else(|| panic!("no failover logged:\n{log}"));
    assert!(
        moved.contains(&dead) && moved.contains(&core.url()) && moved.contains("reason"),
        "the failover line names both cores and the reason: {moved}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_core_is_killed_moves_to_the_next_which_ends_with_every_event_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    for d in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let mut core_a = Core::start(&dir.path().join("a"), Some(&b));
    let core_b = Core::start(&dir.path().join("b"), Some(&b));
    let (url_a, url_b) = (core_a.url(), core_b.url());
    let data = Dataset::generate(42, 30_000, 0.1, 0.2, LOCATIONS);
    let truth = data.truth();
    let csv = data.csv_in(dir.path());
    let mut args = AgentArgs::replay(
        dir.path(),
        "fo-kill",
        format!("{},{}", core_a.url(), core_b.url()),
        &csv,
        Some(3000),
    );
    // Keeps every acknowledged event: core B, which never saw this agent,
    // is sent all of them again (its watermark is behind the agent's acks).
    args.extra = agent_config(dir.path(), "fo-kill", 1_000_000);
    let mut agent = Agent::start(args);
    let metrics = agent.metrics_addr();
    sightline_tests::wait_for("the agent on core A", Duration::from_secs(30), || {
        let url = url_a.clone();
        async move { (core_connected(metrics, &url).await == Some(1)).then_some(()) }
    })
    .await;
    wait_more_stored(&core_a.url(), 3_000).await;
    core_a.kill9();
    sightline_tests::wait_for("the agent on core B", Duration::from_secs(30), || {
        let (url_a, url_b) = (url_a.clone(), url_b.clone());
        async move {
            let b = core_connected(metrics, &url_b).await;
            let a = core_connected(metrics, &url_a).await;
            (b == Some(1) && a == Some(0)).then_some(())
        }
    })
    .await;
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core_b.url(), &truth).await;
    // What core A had stored before the kill is still there, once each.
    core_a.restart();
    let on_a = all_events(&core_a.url()).await;
    assert!(on_a.len() >= 3_000, "core A kept {} events", on_a.len());
    let mut oids: Vec<i64> = on_a
        .iter()
        .map(|e| e.detection.as_ref().unwrap().detection_oid.unwrap())
        .collect();
    let n = oids.len();
    oids.sort_unstable();
    oids.dedup();
    assert_eq!(oids.len(), n, "core A stored a det_oid twice");
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("failing over to the next core") && l.contains(&core_b.url())),
        "no failover to core B logged:\n{}",
        sightline_tests::proc::tail(&agent_log_path(&agent), 40)
    );
}

fn agent_log_path(agent: &Agent) -> std::path::PathBuf {
    agent.args.data_dir.with_extension("log")
}

/// `sightline_edge_transport{transport="…"}` from the agent's /metrics.
async fn transport_gauge(metrics: std::net::SocketAddr, transport: &str) -> Option<i64> {
    let (_, body) = sightline_tests::http::get(metrics, "/metrics", "").await;
    let text = String::from_utf8_lossy(&body).to_string();
    let key = format!("sightline_edge_transport{{transport=\"{transport}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_core_of_the_list_is_reached_over_its_own_transport() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, LOCATIONS);
    // One site CA for both cores (as in a cluster): core B gets a copy of
    // core A's PKI folder, so one agent certificate works with both.
    for d in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let pki_a = sightline_tests::proc::pki(&dir.path().join("a/core.pki"));
    let pki_b = dir.path().join("b/core.pki");
    std::fs::create_dir_all(&pki_b).unwrap();
    for f in std::fs::read_dir(&pki_a).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), pki_b.join(f.file_name())).unwrap();
    }
    let mut core_a = Core::start(&dir.path().join("a"), Some(&b));
    let core_b = Core::start(&dir.path().join("b"), Some(&b));
    sightline_tests::proc::issue_agent(&pki_a, "fo-mixed");
    let (quic_a, https_b) = (core_a.edge_url(Edge::Quic), core_b.edge_url(Edge::Grpc));
    let data = Dataset::generate(43, 20_000, 0.1, 0.2, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let mut args = AgentArgs::replay(
        dir.path(),
        "fo-mixed",
        format!("{quic_a},{https_b}"),
        &csv,
        Some(3000),
    );
    args.extra = agent_config(dir.path(), "fo-mixed", 1_000_000);
    args.extra
        .extend(["--tls-dir".to_string(), pki_a.display().to_string()]);
    let mut agent = Agent::start(args);
    let metrics = agent.metrics_addr();
    sightline_tests::wait_for(
        "the agent on core A over QUIC",
        Duration::from_secs(30),
        || {
            let url = quic_a.clone();
            async move {
                (core_connected(metrics, &url).await == Some(1)
                    && transport_gauge(metrics, "quic").await == Some(1))
                .then_some(())
            }
        },
    )
    .await;
    wait_more_stored(&core_a.url(), 2_000).await;
    core_a.kill9();
    sightline_tests::wait_for(
        "the agent on core B over gRPC+TLS",
        Duration::from_secs(30),
        || {
            let url = https_b.clone();
            async move {
                (core_connected(metrics, &url).await == Some(1)
                    && transport_gauge(metrics, "grpc+tls").await == Some(1))
                .then_some(())
            }
        },
    )
    .await;
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core_b.url(), &data.truth()).await;
}
