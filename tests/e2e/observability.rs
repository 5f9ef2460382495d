//! Observability end to end: Debian's `prometheus` scrapes a running core and
//! agent with the shipped alert rules loaded, and every expression of the
//! Grafana dashboard (`deploy/grafana/sightline.json`) and of the alert rules
//! (`deploy/prometheus/alerts.yml`) returns data through Prometheus's HTTP
//! API. The expressions are read from those files, so none can be forgotten.
//! `promtool` checks the configuration and the rules and runs their unit
//! tests (an alert that fires).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sightline_tests::{data::now_ms, http, Agent, AgentArgs, Core};

/// Metrics not exported yet; until they exist, an expression over one of
/// them may return no data, and the test says so instead of failing. Remove
/// a name once its metric exists (none left).
const NOT_YET_PRESENT_METRICS: &[&str] = &[];

/// Metrics only a cluster node has series of (one per partition it holds):
/// the single-node core scraped here exports none, so an expression over
/// one of them returns no data and is skipped, saying so. The cluster
/// end-to-end tests read them from real nodes
/// (`two_nats_servers_down_acknowledge_nothing_and_lose_nothing_once_back`).
const CLUSTER_ONLY_METRICS: &[&str] = &["sightline_cluster_lost_seqs_total"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package; deploy/install-deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_rules_and_the_scrape_config_pass_promtool_and_an_alert_fires_in_its_unit_test() {
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = promtool(&["check", "rules", "alerts.yml"]);
    assert!(rules.contains("SUCCESS"), "{rules}");
    let tests = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");
    // The unit tests expect at least one alert to fire, not only silence.
    let unit = std::fs::read_to_string(deploy().join("prometheus/alerts_test.yml")).unwrap();
    assert!(
        unit.contains("exp_labels:"),
        "no unit test expects an alert to fire"
    );
}

/// Every `expr` of the dashboard's panels.
fn dashboard_expressions() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(deploy().join("grafana/sightline.json")).unwrap();
    let json: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&json, &mut out);
    assert!(out.len() >= 20, "only {} expressions found", out.len());
    out
}

/// The left side of an alert's `expr` (an alert's expression returns data
/// only while it fires; what it compares must return data always). Each
/// `expr` is one line: `<expression> <comparison> <threshold>`.
fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut alert = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = Some(name.trim().to_string());
        } else if let Some(expr) = line.strip_prefix("expr:") {
            let name = alert.take().expect("an expr belongs to an alert");
            let expr = expr.trim();
            assert!(
                !expr.is_empty() && !expr.starts_with('|') && !expr.starts_with('>'),
                "alert {name}: keep its expr on one line"
            );
            out.push((name, left_of_comparison(expr)));
        }
    }
    assert!(out.len() >= 6, "only {} alerts found", out.len());
    out
}

/// `expr` up to its one top-level comparison (outside brackets and quotes).
fn left_of_comparison(expr: &str) -> String {
    let b = expr.as_bytes();
    let (mut depth, mut quoted, mut found) = (0i32, false, Vec::new());
    for i in 0..b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b'(' | b'[' | b'{' if !quoted => depth += 1,
            b')' | b']' | b'}' if !quoted => depth -= 1,
            b'<' | b'>' if !quoted && depth == 0 => found.push(i),
            b'=' if !quoted && depth == 0 && i > 0 && matches!(b[i - 1], b'=' | b'!') => {
                found.push(i - 1)
            }
            _ => {}
        }
    }
    assert_eq!(
        found.len(),
        1,
        "{expr:?}: expected one comparison at the top level"
    );
    expr[..found[0]].trim().to_string()
}

/// A port free a moment ago (Prometheus cannot be told to take port 0),
/// below the ephemeral range so that no port-0 bind takes it meanwhile.
fn free_port() -> u16 {
    sightline_tests::nats::free_ports(1)[0]
}

/// Debian's `prometheus`, scraping `core` and `agent` every second.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Prometheus {
    async fn start(dir: &Path, core: SocketAddr, agent: SocketAddr) -> Self {
        let rules = deploy()
            .join("prometheus/alerts.yml")
            .canonicalize()
            .unwrap();
        let config = dir.join("prometheus.yml");
        // The shipped job names: the dashboard and the rules select by them.
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: sightline-core\n    static_configs:\n      - targets: [\"{core}\"]\n\
                 \x20 - job_name: sightline-agent\n    static_configs:\n      - targets: [\"{agent}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        for attempt in 0.. {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("tsdb-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("prometheus (Debian's package; deploy/install-deps.sh installs it)");
            let mut p = Prometheus { child, addr, log };
            // Ready, or gone (the port was taken meanwhile: try another).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                if p.child.try_wait().unwrap().is_some() {
                    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                    assert!(
                        attempt < 5 && log.contains("address already in use"),
                        "prometheus exited:\n{log}"
                    );
                    break;
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    let (head, _) = http::request(
                        &addr.to_string(),
                        "GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                    if http::status(&head) == 200 {
                        return p;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "prometheus not ready in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        unreachable!()
    }

    /// Whether `expr` returns any sample now (an instant query).
    async fn has_data(&self, expr: &str) -> bool {
        let (head, body) = http::request(
            &self.addr.to_string(),
            &format!(
                "GET /api/v1/query?query={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                percent_encode(expr)
            ),
        )
        .await;
        let json: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{expr}: {head}\n{}", String::from_utf8_lossy(&body)));
        assert_eq!(json["status"], "success", "{expr}: {json}");
        match json["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => json["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
            _ => !json["data"]["result"].is_null(),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one event the core must quarantine (detected a day ahead), over a
/// raw session on the plaintext port, as an agent with a bad clock would.
async fn quarantined_event(core_url: &str) {
    use prost::Message;
    use sightline_proto::v1::{
        agent_message, core_message, ingest_client::IngestClient, AgentMessage, Batch, Detection,
        EdgeEvent, Hello,
    };
    let mut ingest = IngestClient::connect(core_url.to_string()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = Hello {
        agent_id: "skewed".into(),
        epoch: 1,
        ..Default::default()
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
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

/// An agent simulating two cameras, the first of them a synthetic camera
/// that takes a snapshot for each of its detections.
fn camera_agent(dir: &Path, core_url: &str) -> Agent {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "agent_id = \"observed\"\ncore_url = \"{core_url}\"\n[buffer]\npath = \"{}\"\n[capture]\nspool_path = \"{}\"\n\
             [[capture.cameras]]\ncamera_oid = 1\ninput = \"synthetic://obs?width=160&height=120&fps=10&gop=10\"\nmode = \"snapshot\"\n",
            dir.join("agent-buffer").display(),
            dir.join("agent-spool").display()
        ),
    )
    .unwrap();
    Agent::start(AgentArgs {
        id: "observed".into(),
        core_url: core_url.into(),
        data_dir: dir.join("agent-buffer"),
        command: ["simulate", "--cameras", "2", "--rate", "20"]
            .map(String::from)
            .to_vec(),
        intake: false,
        exit_when_drained: false,
        extra: vec!["--config".into(), cfg.display().to_string()],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_alert_expression_returns_data_from_a_scraped_core_and_agent() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path(), None);
    let agent = camera_agent(dir.path(), &core.url());
    let agent_metrics = agent.metrics_addr();
    // The agent's own endpoint answers before Prometheus is involved.
    let (head, body) = http::request(
        &agent_metrics.to_string(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((http::status(&head), body.as_slice()), (200, &b"ok\n"[..]));
    quarantined_event(&core.url()).await;

    let prometheus = Prometheus::start(dir.path(), core.http, agent_metrics).await;
    let mut exprs: Vec<(String, String)> = dashboard_expressions()
        .into_iter()
        .map(|e| ("dashboard".to_string(), e))
        .collect();
    exprs.extend(
        alert_expressions()
            .into_iter()
            .map(|(name, e)| (format!("alert {name}"), e)),
    );

    // Until every expression returns data, but for those over a metric not
    // yet added (NOT_YET_PRESENT_METRICS) while Prometheus has no series of
    // it at all, which are skipped.
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(45);
    let mut without: Vec<(String, String)> = exprs.clone();
    let (skipped, missing) = loop {
        let mut still = Vec::new();
        for (from, e) in without {
            if !prometheus.has_data(&e).await {
                still.push((from, e));
            }
        }
        without = still;
        let (mut skipped, mut missing) = (BTreeSet::new(), Vec::new());
        for (from, e) in &without {
            let pending = NOT_YET_PRESENT_METRICS
                .iter()
                .chain(CLUSTER_ONLY_METRICS)
                .find(|m| e.contains(*m));
            match pending {
                Some(m) if !prometheus.has_data(&format!("{{__name__=\"{m}\"}}")).await => {
                    skipped.insert(*m);
                }
                _ => missing.push(format!("{from}: {e}")),
            }
        }
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break (skipped, missing);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "{} expressions checked in {:?} after Prometheus was ready",
        exprs.len(),
        started.elapsed()
    );
    assert!(
        missing.is_empty(),
        "{} of {} expressions returned no data:\n{}",
        missing.len(),
        exprs.len(),
        missing.join("\n")
    );
    if !skipped.is_empty() {
        eprintln!(
            "skipped (no series here: NOT_YET_PRESENT_METRICS, CLUSTER_ONLY_METRICS): {skipped:?}"
        );
    }
}
