//! The edge link: mutual TLS on both transports, identities from
//! certificates, per-agent authorization, revocation, a lossy link, QUIC
//! migration and the fallback to gRPC. Real core and agent processes on
//! 127.0.0.1; certificates from the real `sightline-core certs` (and, for the
//! expired one, rcgen signing with the CA's key, as another tool would).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use sightline_proto::v1::{
    intake_client::IntakeClient, AgentGrant, AgentInfo, Detection, FleetRequest,
    ListQuarantineRequest, PublishRequest, RevokeAgentRequest,
};
use sightline_tests::{
    data::write_locations,
    proc::issue_agent,
    query::{assert_exactly_once, stats, wait_more_stored, wait_stored},
    wait_for, Agent, AgentArgs, Core, CoreArgs, Dataset, Edge, ImpairedTcpProxy, Impairment,
    UdpProxy,
};

const LOCATIONS: &[i64] = &[1, 2];

sightline_tests::over_both_transports!(
    certificates_are_checked_and_refusals_say_why,
    revoking_an_agent_closes_its_session_at_once_and_keeps_it_out,
    an_agent_may_publish_only_for_its_own_cameras,
    a_lossy_link_loses_and_duplicates_nothing,
);

/// A core with Dataset B for LOCATIONS and, optionally, an agent registry.
fn start_core(dir: &Path, registry: Option<&Path>) -> Core {
    let b = dir.join("locations.csv");
    write_locations(&b, LOCATIONS);
    let mut extra = vec![];
    if let Some(r) = registry {
        extra = vec!["--registry".to_string(), r.display().to_string()];
    }
    Core::start_with(CoreArgs {
        data_dir: dir.join("core"),
        locations: Some(b),
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra,
    })
}

async fn metrics(core: &Core) -> String {
    let (_, body) = sightline_tests::http::get(core.http, "/metrics", "").await;
    String::from_utf8(body).unwrap()
}

async fn fleet(core: &Core, agent: &str) -> Option<AgentInfo> {
    let mut q = sightline_tests::query::client(&core.url()).await;
    q.fleet(FleetRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .find(|a| a.agent_id == agent)
}

/// Waits until `log()` contains `needle`.
async fn wait_log(what: &str, needle: &str, log: impl Fn() -> String) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let l = log();
        if l.contains(needle) {
            return l;
        }
        if std::time::Instant::now() > deadline {
            let tail: Vec<&str> = l.lines().rev().take(8).collect();
            panic!(
                "timed out waiting for {what}: no {needle:?} in the log, which ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A folder for `--tls-dir` holding the core's CA and, as `agent-<id>`, the
/// given certificate and key.
fn tls_dir(dir: &Path, core: &Core, id: &str, cert: &Path, key: &Path) -> PathBuf {
    let d = dir.join(format!("tls-{id}-{}", rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(core.pki().join("ca.pem"), d.join("ca.pem")).unwrap();
    std::fs::copy(cert, d.join(format!("agent-{id}.pem"))).unwrap();
    std::fs::copy(key, d.join(format!("agent-{id}.key"))).unwrap();
    d
}

fn rand_suffix() -> u64 {
    rand::random::<u64>() % 1_000_000
}

/// An agent of `id` replaying a small file over `edge` with the certificate in `tls`.
fn agent_with(dir: &Path, core: &Core, edge: Edge, id: &str, tls: &Path) -> Agent {
    let data = Dataset::generate(9, 100, 0.0, 0.0, LOCATIONS);
    let csv = dir.join(format!("{id}.csv"));
    data.write_csv(&csv);
    let mut args = AgentArgs::replay(dir, id, core.edge_url(edge), &csv, None);
    args.extra = vec!["--tls-dir".into(), tls.display().to_string()];
    if edge == Edge::Quic {
        args.extra.push("--no-quic-fallback".into());
    }
    Agent::start(args)
}

/// Client connections without a certificate, from outside the agent.
async fn connect_without_certificate(core: &Core, edge: Edge) -> String {
    let ca = std::fs::read(core.pki().join("ca.pem")).unwrap();
    match edge {
        Edge::Grpc => {
            use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
            let ep = Endpoint::from_shared(core.edge_url(Edge::Grpc))
                .unwrap()
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .unwrap();
            let r = async {
                let ch = ep.connect().await?;
                let mut c = sightline_proto::v1::ingest_client::IngestClient::new(ch);
                let hello = sightline_proto::v1::AgentMessage {
                    msg: Some(sightline_proto::v1::agent_message::Msg::Hello(
                        sightline_proto::v1::Hello {
                            agent_id: "nobody".into(),
                            epoch: 1,
                            ..Default::default()
                        },
                    )),
                };
                let mut s = c
                    .session(futures::stream::iter(vec![hello]))
                    .await?
                    .into_inner();
                s.message().await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
            .await;
            let e = r.expect_err("a session without a client certificate must fail");
            let mut text = e.to_string();
            let mut cur = e.source();
            while let Some(s) = cur {
                text.push_str(&format!(": {s}"));
                cur = s.source();
            }
            text
        }
        Edge::Quic => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
                roots.add(c.unwrap()).unwrap();
            }
            let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            cfg.alpn_protocols = vec![b"sightline/1".to_vec()];
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(cfg)).unwrap();
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let r = async {
                let conn = ep
                    .connect_with(
                        quinn::ClientConfig::new(Arc::new(crypto)),
                        core.edge,
                        "127.0.0.1",
                    )?
                    .await?;
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(&[0, 0, 0, 0]).await?;
                let mut b = [0u8; 1];
                recv.read_exact(&mut b).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            }
            .await;
            let e = r.expect_err("a QUIC connection without a client certificate must fail");
            format!("{e}: {e:?}")
        }
    }
}

/// An agent certificate that expired yesterday, signed by the site's CA.
fn expired_cert(pki: &Path, id: &str, out: &Path) -> (PathBuf, PathBuf) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, id);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(30);
    p.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let (c, k) = (out.join("expired.pem"), out.join("expired.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

async fn certificates_are_checked_and_refusals_say_why(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let core = start_core(dir.path(), None);

    // No certificate at all: the agent will not start without one...
    let mut args = AgentArgs::replay(
        dir.path(),
        "bare",
        core.edge_url(edge),
        Path::new("x.csv"),
        None,
    );
    args.exit_when_drained = false;
    let mut bare = Agent::start(args);
    assert!(!bare.wait(Duration::from_secs(30)).success());
    assert!(
        bare.log()
            .contains("config `tls.ca`: unset (and no tls.dir)"),
        "{}",
        bare.log()
    );
    // ...and a client without one is refused, and told why.
    let err = connect_without_certificate(&core, edge).await;
    assert!(
        err.contains("the agent presented no client certificate"),
        "{err}"
    );
    wait_log(
        "the core says the agent had no certificate",
        "presented no client certificate",
        || core.log(),
    )
    .await;

    // Expired.
    let (c, k) = expired_cert(&core.pki(), "old-cam", &dir.path().join("expired"));
    let d = tls_dir(dir.path(), &core, "old-cam", &c, &k);
    let mut a = agent_with(dir.path(), &core, edge, "old-cam", &d);
    wait_log(
        "the agent is told its certificate expired",
        "expired",
        || a.log(),
    )
    .await;
    wait_log(
        "the core logs the expired certificate",
        "has expired",
        || core.log(),
    )
    .await;
    a.kill9();

    // Signed by another CA.
    let other = sightline_tests::proc::pki(&dir.path().join("other-pki"));
    issue_agent(&other, "intruder");
    let d = tls_dir(
        dir.path(),
        &core,
        "intruder",
        &other.join("agent-intruder.pem"),
        &other.join("agent-intruder.key"),
    );
    let mut a = agent_with(dir.path(), &core, edge, "intruder", &d);
    wait_log(
        "the agent is told its CA is unknown",
        "the agent's certificate is not signed by this core's CA",
        || a.log(),
    )
    .await;
    wait_log(
        "the core logs the foreign certificate",
        "not signed by this core's CA",
        || core.log(),
    )
    .await;
    a.kill9();

    // A valid certificate for alice, used by an agent that says it is bob.
    issue_agent(&core.pki(), "alice");
    let d = tls_dir(
        dir.path(),
        &core,
        "bob",
        &core.pki().join("agent-alice.pem"),
        &core.pki().join("agent-alice.key"),
    );
    let mut a = agent_with(dir.path(), &core, edge, "bob", &d);
    let claim =
        "this connection's certificate is for agent \"alice\", but its Hello claims agent \"bob\"";
    wait_log("the agent is told its claim is refused", claim, || a.log()).await;
    wait_log("the core logs the false claim", claim, || core.log()).await;
    a.kill9();

    assert_eq!(
        stats(&core.url()).await.stored,
        0,
        "no refused agent got an event in"
    );
    let metrics = metrics(&core).await;
    for reason in ["tls", "claimed_other_id"] {
        assert!(
            metrics.contains(&format!("edge_refused_total{{reason=\"{reason}\"}}")),
            "refusals are counted by reason ({reason}):\n{metrics}"
        );
    }
}

fn write_registry(path: &Path, agent: &str, cameras: &[i64]) {
    let list: Vec<String> = cameras.iter().map(i64::to_string).collect();
    std::fs::write(
        path,
        format!("[agents.{agent}]\ncameras = [{}]\n", list.join(", ")),
    )
    .unwrap();
}

fn detection(oid: i64, camera: i64) -> Detection {
    Detection {
        geographical_location_oid: camera / 100,
        video_camera_oid: camera,
        detection_oid: Some(oid),
        item_name: "bicycle".into(),
        timestamp_detected: sightline_tests::data::now_ms() - 1000,
        ..Default::default()
    }
}

async fn publish(agent: &Agent, dets: Vec<Detection>) {
    let mut c = IntakeClient::connect(agent.intake_url()).await.unwrap();
    c.publish(PublishRequest { detections: dets })
        .await
        .unwrap();
}

async fn revoking_an_agent_closes_its_session_at_once_and_keeps_it_out(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("agents.toml");
    write_registry(&registry, "gate", &[101, 102]);
    let core = start_core(dir.path(), Some(&registry));
    let mut agent =
        Agent::start(AgentArgs::intake(dir.path(), "gate", String::new()).over(&core, edge));
    publish(&agent, (1..=50).map(|i| detection(i, 101)).collect()).await;
    wait_stored(&core.url(), 50).await;

    let mut admin = core.admin().await;
    let g = admin
        .revoke_agent(RevokeAgentRequest {
            agent_id: "gate".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.revoked);
    // Its open session ends at once, and the agent is told why.
    wait_log("the agent's session is closed", "was revoked", || {
        agent.log()
    })
    .await;
    let info = wait_for(
        "the fleet shows the revocation",
        Duration::from_secs(10),
        || {
            let c = &core;
            async move { fleet(c, "gate").await.filter(|i| i.revoked && !i.connected) }
        },
    )
    .await;
    assert!(info.revoked);
    // What it publishes now stays in its buffer; it cannot reconnect.
    publish(&agent, (51..=80).map(|i| detection(i, 102)).collect()).await;
    wait_log(
        "its reconnects are refused",
        "is revoked; an operator must grant it again",
        || agent.log(),
    )
    .await;
    agent.restart();
    wait_log(
        "a restarted agent is refused too",
        "is revoked; an operator must grant it again",
        || agent.log(),
    )
    .await;
    assert_eq!(stats(&core.url()).await.stored, 50);
    let info = fleet(&core, "gate").await.unwrap();
    assert!(info.last_refusal.contains("revoked"), "{info:?}");

    // Granted again, its old certificate stays retired: a copy of the old
    // key does not come back with the grant.
    admin
        .grant_agent(AgentGrant {
            agent_id: "gate".into(),
            cameras: vec![101, 102],
            ..Default::default()
        })
        .await
        .unwrap();
    agent.restart();
    wait_log(
        "the old certificate is refused",
        "a revocation retires every certificate issued before it; issue a new one",
        || agent.log(),
    )
    .await;
    assert!(metrics(&core)
        .await
        .contains("reason=\"retired_certificate\""));
    // With a certificate issued now, it delivers what it held: nothing lost.
    // (Certificates carry whole seconds: one issued in the second of the
    // revocation counts as issued before it.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for ext in ["pem", "key"] {
        std::fs::remove_file(core.pki().join(format!("agent-gate.{ext}"))).unwrap();
    }
    issue_agent(&core.pki(), "gate");
    agent.restart();
    wait_stored(&core.url(), 80).await;
    let text = std::fs::read_to_string(&registry).unwrap();
    assert!(
        !text.contains("revoked"),
        "the registry file follows: {text}"
    );
}

async fn an_agent_may_publish_only_for_its_own_cameras(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("agents.toml");
    let allowed = [101, 102, 201];
    write_registry(&registry, "gate", &allowed);
    let core = start_core(dir.path(), Some(&registry));
    // Cameras 100..=103 and 200..=203; some are not gate's.
    let data = Dataset::generate(11, 3000, 0.1, 0.0, LOCATIONS);
    let own = Dataset {
        rows: data
            .rows
            .iter()
            .filter(|r| allowed.contains(&r.video_camera_oid))
            .cloned()
            .collect(),
    };
    let denied = (data.rows.len() - own.rows.len()) as u64;
    assert!(denied > 500, "the input must hold foreign cameras");
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "gate", String::new(), &csv, None).over(&core, edge),
    );
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &own.truth()).await;

    let mut q = sightline_tests::query::client(&core.url()).await;
    let quarantine = q
        .list_quarantine(ListQuarantineRequest {
            page_size: 10_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(quarantine.total, denied, "every refused event is kept");
    for e in &quarantine.events {
        let cam = e
            .event
            .as_ref()
            .unwrap()
            .detection
            .as_ref()
            .unwrap()
            .video_camera_oid;
        assert_eq!(e.field, "video_camera_oid");
        assert_eq!(
            e.reason,
            format!("camera {cam} is not registered to agent \"gate\"")
        );
    }
    let metrics = metrics(&core).await;
    assert!(
        metrics.contains(&format!(
            "permission_denied_events_total{{agent=\"gate\"}} {denied}"
        )),
        "counted:\n{metrics}"
    );
    let info = fleet(&core, "gate").await.unwrap();
    assert_eq!(info.denied, denied);
    assert!(
        info.last_denied.contains("is not registered to agent"),
        "{info:?}"
    );
    assert_eq!(
        info.link,
        if edge == Edge::Quic {
            "quic mtls"
        } else {
            "grpc mtls"
        }
    );
    assert!(agent.log().contains("PERMISSION_DENIED") || agent.log().contains("is not registered"));
}

async fn a_lossy_link_loses_and_duplicates_nothing(edge: Edge) {
    let dir = tempfile::tempdir().unwrap();
    let core = start_core(dir.path(), None);
    let data = Dataset::generate(12, 6000, 0.1, 0.2, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let mut args =
        AgentArgs::replay(dir.path(), "far", String::new(), &csv, Some(1500)).over(&core, edge);
    let imp = Impairment::lossy();
    let (_tcp, udp) = match edge {
        Edge::Grpc => {
            let p = ImpairedTcpProxy::start(core.edge, imp).await;
            args.core_url = p.https_url();
            (Some(p), None)
        }
        Edge::Quic => {
            let p = UdpProxy::start(core.edge, imp).await;
            args.core_url = format!("quic://{}", p.addr);
            (None, Some(p))
        }
    };
    let mut agent = Agent::start(args);
    assert!(agent.wait(Duration::from_secs(180)).success());
    assert_exactly_once(&core.url(), &data.truth()).await;
    if let Some(p) = udp {
        let dropped = p.dropped.load(std::sync::atomic::Ordering::Relaxed);
        let sent = p.forwarded.load(std::sync::atomic::Ordering::Relaxed);
        assert!(dropped > 0, "the link lost packets ({dropped} of {sent})");
        // The datagram copies took part (exactly once held with them).
        let text = metrics(&core).await;
        let copies: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sightline_batches_from_datagrams_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(
            copies > 0.0,
            "some batches were committed from datagram copies"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quic_session_survives_the_agent_moving() {
    let dir = tempfile::tempdir().unwrap();
    let core = start_core(dir.path(), None);
    let data = Dataset::generate(13, 20_000, 0.1, 0.2, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let proxy = UdpProxy::start(core.edge, Impairment::NONE).await;
    let mut args = AgentArgs::replay(dir.path(), "rover", String::new(), &csv, Some(4000))
        .over(&core, Edge::Quic);
    args.core_url = format!("quic://{}", proxy.addr);
    let mut agent = Agent::start(args);
    for _ in 0..3 {
        wait_more_stored(&core.url(), 2000).await;
        proxy.move_client();
    }
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &data.truth()).await;
    let log = agent.log();
    assert_eq!(
        log.matches("session open").count(),
        1,
        "one session throughout: the connection migrated; log:\n{log}"
    );
    let metrics = metrics(&core).await;
    assert!(metrics.contains("ingest_sessions_total 1\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quic_falls_back_to_grpc_when_udp_is_blocked_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let core = start_core(dir.path(), None);
    // UDP to the core is black-holed; TCP on the same port goes through.
    let (udp, _tcp) = ImpairedTcpProxy::beside_udp(core.edge, Impairment::NONE).await;
    udp.cut();
    let data = Dataset::generate(14, 3000, 0.1, 0.2, LOCATIONS);
    let csv = data.csv_in(dir.path());
    issue_agent(&core.pki(), "walled");
    let mut args = AgentArgs::replay(
        dir.path(),
        "walled",
        format!("quic://{}", udp.addr),
        &csv,
        None,
    );
    args.extra = vec!["--tls-dir".into(), core.pki().display().to_string()];
    let mut agent = Agent::start(args);
    assert!(agent.wait(Duration::from_secs(120)).success());
    assert_exactly_once(&core.url(), &data.truth()).await;
    assert!(
        agent.log().contains("falling back to gRPC"),
        "{}",
        agent.log()
    );
    let info = fleet(&core, "walled").await.unwrap();
    assert_eq!(info.link, "grpc mtls");
    assert!(
        info.agent_transport
            .starts_with("grpc+tls (QUIC fallback: no answer from quic://"),
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_session_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let core = start_core(dir.path(), None);
    let data = Dataset::generate(15, 200, 0.0, 0.0, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(AgentArgs::replay(
        dir.path(),
        "demo",
        core.url(),
        &csv,
        None,
    ));
    assert!(agent.wait(Duration::from_secs(60)).success());
    assert!(agent.log().contains("PLAINTEXT link to the core"));
    assert!(core.log().contains("agent session open over PLAINTEXT"));
    let info = fleet(&core, "demo").await.unwrap();
    assert_eq!(info.link, "grpc PLAINTEXT");
    assert_eq!(info.agent_transport, "grpc plaintext");
}

/// A gRPC client of the edge link presenting `id`'s certificate.
async fn media_client_as(
    core: &Core,
    id: &str,
) -> sightline_proto::v1::media_client::MediaClient<tonic::transport::Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    issue_agent(&core.pki(), id);
    let read = |f: String| std::fs::read(core.pki().join(f)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
        .identity(Identity::from_pem(
            read(format!("agent-{id}.pem")),
            read(format!("agent-{id}.key")),
        ));
    let ch = Endpoint::from_shared(core.edge_url(Edge::Grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    sightline_proto::v1::media_client::MediaClient::new(ch)
}

#[tokio::test(flavor = "multi_thread")]
async fn footage_may_be_attached_only_to_the_agents_own_detections() {
    use sightline_proto::v1::{AttachMediaRequest, MediaRef};
    let dir = tempfile::tempdir().unwrap();
    let core = start_core(dir.path(), None);
    let data = Dataset::generate(16, 100, 0.0, 0.0, LOCATIONS);
    let csv = data.csv_in(dir.path());
    let mut agent = Agent::start(
        AgentArgs::replay(dir.path(), "owner", String::new(), &csv, None).over(&core, Edge::Grpc),
    );
    assert!(agent.wait(Duration::from_secs(60)).success());
    let oid = *data.truth().det_oids.iter().next().unwrap();
    let attach = |oid: i64| AttachMediaRequest {
        detection_oids: vec![oid],
        media: Some(MediaRef {
            kind: "snapshot".into(),
            sha256: "ab".repeat(32),
            content_type: "image/jpeg".into(),
            size: 10,
        }),
    };
    let err = media_client_as(&core, "thief")
        .await
        .attach(attach(oid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains(&format!(
            "field `detection_oids`: detection {oid} was published by agent \"owner\", not \"thief\""
        )),
        "{}",
        err.message()
    );
    media_client_as(&core, "owner")
        .await
        .attach(attach(oid))
        .await
        .expect("the publisher may attach footage to its own detection");
}
