//! Transport: the dashboard and the query API over TLS with a certificate
//! from the site CA, and the refusals of plaintext where it does not belong.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use sightline_proto::v1::{query_client::QueryClient, StatsRequest};
use sightline_tests::{bin_path, Core, CoreArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A core in `dir/core` with `extra` arguments.
fn core_with(dir: &Path, extra: Vec<String>) -> Core {
    Core::start_with(CoreArgs {
        data_dir: dir.join("core"),
        locations: None,
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra,
    })
}

/// `sightline-core serve` with `args` that must make it refuse to start:
/// its stderr.
fn refused_start(dir: &Path, args: &[&str]) -> String {
    sightline_tests::proc::refused_start(&dir.join("refused"), args, Duration::from_secs(30))
}

fn pki_of(dir: &Path) -> PathBuf {
    dir.join("core").with_extension("pki")
}

fn tls_args(dir: &Path) -> Vec<String> {
    let pki = pki_of(dir);
    vec![
        "--tls-cert".into(),
        pki.join("core.pem").display().to_string(),
        "--tls-key".into(),
        pki.join("core.key").display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_query_api_serve_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let core = core_with(dir.path(), tls_args(dir.path()));
    let ca = std::fs::read(pki_of(dir.path()).join("ca.pem")).unwrap();

    // HTTPS, with a client that trusts the site CA and nothing else.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let token = core.admin_token();
    for path in ["/healthz", "/"] {
        let tcp = tokio::net::TcpStream::connect(core.http).await.unwrap();
        let mut tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("a TLS handshake verified against the site CA");
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text:.200}");
        assert!(!text.contains("WITHOUT TLS"), "{path}: {text:.200}");
    }

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(core.http).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "plaintext was answered");

    // The query API over TLS (tonic's client, the site CA as its only root).
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", core.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("gRPC over TLS");
    let stats = sightline_tests::query::with_token(channel, &token)
        .stats(StatsRequest::default())
        .await
        .expect("Stats over TLS")
        .into_inner();
    assert_eq!(stats.stored, 0);
    // So does the terminal client, told the CA.
    let out = Command::new(bin_path("sightline-core"))
        .arg("stats")
        .env("SIGHTLINE_CORE", format!("https://{}", core.grpc))
        .env("SIGHTLINE_CA", pki_of(dir.path()).join("ca.pem"))
        .env("SIGHTLINE_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A plaintext gRPC client is not served.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", core.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(ch) => QueryClient::new(ch)
            .stats(StatsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plaintext gRPC was served on the TLS port");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_loopback_listener_without_tls_is_refused_unless_insecure_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(
        dir.path(),
        &[
            "--http-listen",
            "0.0.0.0:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--edge-plaintext",
        ],
    );
    assert!(
        stderr.contains("server.http_listen") && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
    let stderr = refused_start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "0.0.0.0:0",
            "--tls-dir",
            "x",
        ],
    );
    assert!(stderr.contains("server.grpc_listen"), "{stderr}");

    // Told so, it starts, and says so in its log.
    let core = core_with(
        dir.path(),
        vec![
            "--http-listen".into(),
            "0.0.0.0:0".into(),
            "--insecure-plaintext".into(),
        ],
    );
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], core.http.port()));
    let (status, _) = sightline_tests::http::get(at, "/healthz", "").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The dashboard says so at the foot of its pages.
    let auth = format!("Authorization: Bearer {}\r\n", core.admin_token());
    let (status, page) = sightline_tests::http::get(at, "/", &auth).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains("served WITHOUT TLS") && page.contains("server.insecure_plaintext"),
        "{page:.400}"
    );
    let log = std::fs::read_to_string(dir.path().join("core").with_extension("log")).unwrap();
    assert!(
        log.contains("INSECURE") && log.contains("server.insecure_plaintext"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_edge_mode_is_refused_on_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(
        dir.path(),
        &[
            "--grpc-listen",
            "0.0.0.0:0",
            "--http-listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--edge-plaintext",
        ],
    );
    assert!(
        stderr.contains("edge.plaintext") && stderr.contains("loopback"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_agent_is_refused_until_an_admin_grants_it() {
    use sightline_proto::v1::{
        intake_client::IntakeClient, Detection, FleetRequest, PublishRequest,
    };
    use sightline_tests::{
        proc::{issue_agent, DEFAULT_REGISTRY},
        query::{stats, wait_stored},
        wait_for, Agent, AgentArgs, Edge,
    };
    let dir = tempfile::tempdir().unwrap();
    // The core's own default: a registry in its data dir, created empty.
    let core = core_with(dir.path(), vec![DEFAULT_REGISTRY.into()]);
    let registry = dir.path().join("core").join("agents.toml");
    assert!(registry.exists(), "no registry at {}", registry.display());

    issue_agent(&core.pki(), "gate");
    let agent =
        Agent::start(AgentArgs::intake(dir.path(), "gate", String::new()).over(&core, Edge::Grpc));
    let dets: Vec<Detection> = (1..=20)
        .map(|oid| Detection {
            geographical_location_oid: 1,
            video_camera_oid: 101,
            detection_oid: Some(oid),
            item_name: "bicycle".into(),
            timestamp_detected: sightline_tests::data::now_ms() - 1000,
            ..Default::default()
        })
        .collect();
    IntakeClient::connect(agent.intake_url())
        .await
        .unwrap()
        .publish(PublishRequest { detections: dets })
        .await
        .unwrap();

    // Refused, visibly: the agent is told it is not granted and how an
    // admin grants it; the core logs it; the fleet view shows it.
    wait_for("the agent is told why", Duration::from_secs(30), || {
        let log = agent.log();
        async move {
            (log.contains("not granted") && log.contains("sightline-core grant --agent-id gate"))
                .then_some(())
        }
    })
    .await;
    assert!(core.log().contains("session refused"), "{}", core.log());
    let mut q = sightline_tests::query::client(&core.url()).await;
    let info = q
        .fleet(FleetRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .find(|a| a.agent_id == "gate")
        .expect("the refused agent is in the fleet view");
    assert!(info.last_refusal.contains("not granted"), "{info:?}");
    let (_, metrics) = sightline_tests::http::get(core.http, "/metrics", "").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("reason=\"unregistered\""), "{metrics}");
    assert_eq!(stats(&core.url()).await.stored, 0);

    // An admin grants it (the terminal client); it delivers what it held.
    let out = Command::new(bin_path("sightline-core"))
        .args(["grant", "--agent-id", "gate", "--cameras", "101"])
        .arg("--admin-token-file")
        .arg(dir.path().join("core").join("admin.token"))
        .env("SIGHTLINE_CORE", core.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&registry)
        .unwrap()
        .contains("[agents.gate]"));
    wait_stored(&core.url(), 20).await;
}
