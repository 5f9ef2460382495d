//! The metrics endpoint in process, over a real socket, with a real buffer.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::Duration,
};

use sightline_proto::{v1::Detection, Limits};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    buffer::BufferOptions,
    config::{AgentConfig, WhenFull},
    sources::Publisher,
};

fn config(listen: Option<&str>, allow: bool) -> MetricsConfig {
    MetricsConfig {
        listen: listen.map(str::to_string),
        allow_non_loopback: allow,
    }
}

#[test]
fn the_endpoint_stays_on_loopback_unless_the_operator_allows_more() {
    assert_eq!(
        config(None, false).address().unwrap(),
        Some(Listen {
            addr: DEFAULT_LISTEN.parse().unwrap(),
            explicit: false
        })
    );
    assert_eq!(config(Some("off"), false).address().unwrap(), None);
    assert_eq!(config(Some(""), false).address().unwrap(), None);
    assert!(config(Some("[::1]:0"), false).address().unwrap().is_some());
    let refused = config(Some("0.0.0.0:9100"), false).address().unwrap_err();
    assert_eq!(refused.key, "metrics.listen");
    assert!(refused.reason.contains("allow_non_loopback"), "{refused}");
    assert!(config(Some("0.0.0.0:9100"), true)
        .address()
        .unwrap()
        .is_some());
    assert_eq!(
        config(Some("localhost"), false).address().unwrap_err().key,
        "metrics.listen"
    );
    // The agent's own validate() refuses it too, naming the key.
    let mut agent = AgentConfig::with_id("a");
    agent.metrics = config(Some("192.0.2.1:9100"), false);
    assert_eq!(agent.validate().unwrap_err().key, "metrics.listen");
}

struct Rig {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    publisher: Publisher,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer");
    let opts = BufferOptions {
        max_events: 1000,
        max_bytes: 1 << 20,
        sync: false,
        keep_acked: 0,
    };
    let buffer = Arc::new(Buffer::open(&path, opts).unwrap());
    let metrics = Arc::new(AgentMetrics::new());
    let mut cfg = AgentConfig::with_id("obs");
    cfg.core_url = "http://127.0.0.1:9".into();
    let scrape = Scrape {
        metrics: metrics.clone(),
        buffer: buffer.clone(),
        buffer_dir: path,
        max_events: 1000,
        max_bytes: 1 << 20,
        stats: Arc::new(SenderStats {
            metrics: metrics.clone(),
            ..SenderStats::default()
        }),
        transport: crate::transport::open(&cfg).unwrap(),
        cameras: None,
        spool: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, Arc::new(scrape), stop.clone()));
    let publisher = Publisher {
        buffer,
        when_full: WhenFull::Backpressure,
        block_timeout: Duration::from_secs(1),
        limits: Limits::default(),
        capture: None,
        metrics,
    };
    Rig {
        _dir: dir,
        addr,
        publisher,
        stop,
        task,
    }
}

/// One `GET path` over a fresh connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        if text.len() < 12 {
            return (0, String::new()); // closed unanswered
        }
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    })
    .await
    .unwrap()
}

/// Samples of a text exposition: `name{labels}` -> value. Panics on a line
/// that is neither a comment nor a sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        out.insert(series.to_string(), value);
    }
    out
}

fn det(oid: i64) -> Detection {
    Detection {
        geographical_location_oid: 1,
        video_camera_oid: 1,
        detection_oid: Some(oid),
        item_name: "person".into(),
        timestamp_detected: sightline_proto::now_ms(),
        ..Default::default()
    }
}

#[tokio::test]
async fn healthz_answers_and_metrics_parse_with_what_the_intake_took_and_refused() {
    let rig = rig().await;
    let (status, body) = get(rig.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut bad = det(3);
    bad.item_name.clear();
    let results = rig
        .publisher
        .publish(vec![det(1), det(2), bad], None)
        .await
        .unwrap();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 2);

    let (status, text) = get(rig.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let s = samples(&text);
    let v = |k: &str| *s.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(v("sightline_edge_intake_accepted_events_total"), 2.0);
    assert_eq!(
        v("sightline_edge_intake_refused_events_total{reason=\"invalid\"}"),
        1.0
    );
    assert_eq!(v("sightline_edge_buffer_events"), 2.0);
    assert!(v("sightline_edge_buffer_bytes") > 0.0);
    assert_eq!(v("sightline_edge_buffer_max_events"), 1000.0);
    assert!(v("sightline_edge_oldest_unacked_age_seconds") >= 0.0);
    assert_eq!(v("sightline_edge_connected"), 0.0);
    assert_eq!(v("sightline_edge_transport{transport=\"grpc\"}"), 0.0);
    assert_eq!(v("sightline_edge_events_sent_total"), 0.0);
    assert_eq!(v("sightline_edge_reconnects_total"), 0.0);
    assert_eq!(v("sightline_edge_ack_rtt_seconds_count"), 0.0);
    assert!(v("sightline_edge_disk_total_bytes") > 0.0);

    let (status, _) = get(rig.addr, "/nope").await;
    assert_eq!(status, 404);
    rig.stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), rig.task)
        .await
        .expect("the endpoint stops")
        .unwrap();
}

#[tokio::test]
async fn a_connection_over_the_cap_is_closed_and_a_freed_slot_serves_again() {
    let rig = rig().await;
    let addr = rig.addr;
    let over = tokio::task::spawn_blocking(move || {
        // Idle connections hold every slot (until the header timeout).
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        let n = extra.read(&mut buf).unwrap_or(0);
        drop(held);
        n
    })
    .await
    .unwrap();
    assert_eq!(over, 0, "the connection over the cap is closed unanswered");
    // The slots come back once those connections are gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = get(addr, "/healthz").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    rig.stop.cancel();
}
