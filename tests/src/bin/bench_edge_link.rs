//! Edge-link benchmark: gRPC over TLS vs QUIC through the same impaired link
//! (2% loss and 50 ms delay each way, a bottleneck of `--rate-mb` MB/s with a
//! 256 KiB queue), the real core and agent binaries, mutual TLS.
//!
//! Per transport:
//! 1. A 50 MB clip sits in the agent's spool, so its upload starts with the
//!    agent, on the same connection as the events. While it uploads, a
//!    detector publishes 1,000 events/s into the agent's intake for
//!    one second and then `--seconds`; each event's latency is publish
//!    (intake call) → the joined event arriving at a `Subscribe` client of
//!    the core (sent after the durable commit). p50 and p99 of the steady
//!    flow; the first second is printed apart (`--tail`: when the slowest 1%
//!    were published; `--breakdown`: where the time went, from trace logs).
//! 2. Sustained events/s: 20,000 events published at once; the time from the
//!    first publish until the core committed the last of them.
//!    Nothing may be lost or doubled: every det_oid arrives once.
//!
//! Last line: `edge_link grpc_event_p99_ms=<g> quic_event_p99_ms=<q> grpc_events_per_s=<a> quic_events_per_s=<b>`.
//! Run with `deploy/bench-edge-link.sh` (release build).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use sightline_agent::capture::spool::{MediaItem, Spool};
use sightline_proto::v1::{
    intake_client::IntakeClient, Detection, PublishRequest, SubscribeRequest,
};
use sightline_tests::{
    data::{now_ms, write_locations},
    query::client,
    Agent, AgentArgs, Core, CoreArgs, Edge, ImpairedTcpProxy, Impairment, UdpProxy,
};

/// The start of the event flow, reported apart from the steady flow.
const WARM_UP: Duration = Duration::from_secs(1);

/// The clip's size: 50 MB (`--clip-mb` to change it, 0 for none).
fn clip_bytes() -> usize {
    (arg("--clip-mb", 50.0) * 1024.0 * 1024.0) as usize
}

fn arg_str(key: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg(key: &str, default: f64) -> f64 {
    arg_str(key)
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{key} takes a number")))
        .unwrap_or(default)
}

/// An MP4 the core accepts (ftyp, moov, then a 50 MB mdat of random bytes):
/// the link does not care what the samples hold.
fn clip() -> Vec<u8> {
    let bx = |kind: &[u8; 4], payload: &[u8]| {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    };
    let mut out = bx(b"ftyp", b"isom\0\0\x02\0isomiso2mp41");
    out.extend(bx(b"moov", &bx(b"mvhd", &[0u8; 100])));
    let mut data = vec![0u8; clip_bytes().saturating_sub(out.len() + 8)];
    rand::fill(&mut data[..]);
    out.extend(bx(b"mdat", &data));
    out
}

struct Latencies {
    published: Mutex<HashMap<i64, Instant>>,
    seen: Mutex<Vec<(i64, f64)>>,
    /// How long each intake call took: the agent's durable append.
    appends: Mutex<Vec<f64>>,
}

fn detection(oid: i64) -> Detection {
    Detection {
        geographical_location_oid: 1 + oid % 4,
        video_camera_oid: 100 + oid % 4,
        detection_oid: Some(oid),
        item_name: ["person", "car", "bicycle", "dog"][(oid % 4) as usize].into(),
        timestamp_detected: now_ms(),
        ..Default::default()
    }
}

async fn publish(intake: &str, lat: &Latencies, oids: std::ops::Range<i64>) {
    let mut c = IntakeClient::connect(intake.to_string()).await.unwrap();
    let dets: Vec<Detection> = oids.clone().map(detection).collect();
    let t = Instant::now();
    {
        let mut p = lat.published.lock().unwrap();
        for o in oids {
            p.insert(o, t);
        }
    }
    c.publish(PublishRequest { detections: dets })
        .await
        .unwrap();
    lat.appends
        .lock()
        .unwrap()
        .push(t.elapsed().as_secs_f64() * 1000.0);
}

/// `--breakdown`: where the steady flow's events spent their time, from the
/// processes' trace logs (run with `RUST_LOG=warn,sightline_agent::transport::sender=trace,sightline_core::ingest=trace`):
/// publish → the agent sent the event's batch → the core handed it to the
/// commit pipeline → the subscriber had it. Phase 1's events are the first
/// the fresh agent buffers, so det_oid 1000 + k is seq 1 + k.
fn breakdown(
    edge: Edge,
    agent_log: &str,
    core_log: &str,
    started: std::time::SystemTime,
    events: &[(i64, f64, f64)],
) {
    // seq → when its line was logged (seconds since the epoch), first time.
    fn times(log: &str, marker: &str) -> HashMap<u64, f64> {
        let mut out = HashMap::new();
        for line in log.lines().filter(|l| l.contains(marker)) {
            let at = line
                .split_whitespace()
                .next()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map(epoch_s);
            let field = |name: &str| -> Option<u64> {
                let rest = &line[line.find(name)? + name.len()..];
                rest.split_whitespace().next()?.parse().ok()
            };
            if let (Some(at), Some(first), Some(n)) = (at, field("first_seq="), field("events=")) {
                for seq in first..first + n {
                    out.entry(seq).or_insert(at);
                }
            }
        }
        out
    }
    let sent = times(agent_log, "batch sent");
    let handed = times(core_log, "batch to commit");
    if sent.is_empty() || handed.is_empty() {
        eprintln!("{edge:?}: --breakdown needs RUST_LOG=warn,sightline_agent::transport::sender=trace,sightline_core::ingest=trace");
        return;
    }
    let t0 = epoch_s(started);
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for (oid, published_ms, latency_ms) in events {
        let seq = (oid - 999) as u64;
        let (Some(s), Some(h)) = (sent.get(&seq), handed.get(&seq)) else {
            continue;
        };
        let p = t0 + published_ms / 1e3;
        a.push((s - p) * 1e3);
        b.push((h - s) * 1e3);
        c.push(latency_ms - (h - p) * 1e3);
    }
    for (name, v) in [
        ("publish -> agent sent the batch", &mut a),
        ("sent -> core handed it to commit", &mut b),
        ("handed -> subscriber had it", &mut c),
    ] {
        v.sort_by(f64::total_cmp);
        eprintln!(
            "{edge:?}: {name}, ms: p50 {:.1} p90 {:.1} p99 {:.1} ({} events)",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            v.len()
        );
    }
}

fn epoch_s(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Run {
    p50: f64,
    p99: f64,
    /// p90, p95, p99.9 and the worst, for a closer look at the tail.
    tail: [f64; 4],
    events_per_s: f64,
    /// The clip's upload rate during phase 1.
    clip_mb_s: f64,
}

async fn run(edge: Edge, seconds: f64, rate_mb: f64, tcp_loss_response: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("locations.csv");
    write_locations(&b, &[1, 2, 3, 4]);
    let core = Core::start_with(CoreArgs {
        data_dir: dir.path().join("core"),
        locations: Some(b),
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec![],
    });
    let imp = Impairment {
        loss: 0.02,
        delay: Duration::from_millis(50),
        rate: Some((rate_mb * 1e6) as u64),
        queue: 256 * 1024,
        tcp_loss_response,
    };
    let (tcp, udp) = match edge {
        Edge::Grpc => (Some(ImpairedTcpProxy::start(core.edge, imp).await), None),
        Edge::Quic => (None, Some(UdpProxy::start(core.edge, imp).await)),
    };
    let url = match (&tcp, &udp) {
        (Some(p), _) => p.https_url(),
        (_, Some(p)) => format!("quic://{}", p.addr),
        _ => unreachable!(),
    };
    let spool_dir = dir.path().join("spool");
    let spool = Spool::open(spool_dir.clone(), u64::MAX).unwrap();
    let bytes = clip();
    let sha = sightline_agent::capture::spool::sha256_hex(&bytes);
    spool
        .put(MediaItem {
            kind: "clip",
            content_type: "video/mp4",
            bytes,
            det_oids: vec![1],
        })
        .unwrap();
    drop(spool);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "agent_id = \"far-host\"\n[capture]\nspool_path = \"{}\"\n{}\n",
            spool_dir.display(),
            arg_str("--agent-config")
                .unwrap_or_default()
                .replace("\\n", "\n"),
        ),
    )
    .unwrap();
    let mut args = AgentArgs::intake(dir.path(), "far-host", String::new());
    args.extra = vec!["--config".into(), cfg.display().to_string()];
    let mut args = args.over(&core, edge);
    args.core_url = url;
    let agent = Agent::start(args);
    let intake = agent.intake_url();

    let lat = Arc::new(Latencies {
        published: Mutex::new(HashMap::new()),
        seen: Mutex::new(Vec::new()),
        appends: Mutex::new(Vec::new()),
    });
    let mut q = client(&core.url()).await;
    let mut sub = q
        .subscribe(SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let l2 = lat.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(e)) = sub.next().await {
            let oid = e.detection.unwrap().detection_oid.unwrap();
            let at = l2.published.lock().unwrap().get(&oid).copied();
            if let Some(t) = at {
                l2.seen
                    .lock()
                    .unwrap()
                    .push((oid, t.elapsed().as_secs_f64() * 1000.0));
            }
        }
    });
    // Let the clip's upload get going.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. 1,000 events/s in 10 ms slices while the clip uploads.
    let clip_before = clip_received(&core, &sha).await;
    let queued = |p: &UdpProxy| p.queued_ms.lock().unwrap().len();
    let q0 = udp.as_ref().map(queued).unwrap_or(0);
    let mut next = 1_000i64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while start.elapsed() < WARM_UP + Duration::from_secs_f64(seconds) {
        tick.tick().await;
        publish(&intake, &lat, next..next + 10).await;
        next += 10;
    }
    let phase1 = (next - 1_000) as usize;
    {
        let (_, body) = sightline_tests::http::get(core.http, "/metrics", "").await;
        let text = String::from_utf8(body).unwrap();
        let commits: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sightline_commit_seconds"))
            .collect();
        eprintln!("{edge:?}: core commit latency after phase 1: {commits:?}");
    }
    let q1 = udp.as_ref().map(queued).unwrap_or(0);
    {
        let mut a = lat.appends.lock().unwrap().clone();
        a.sort_by(f64::total_cmp);
        eprintln!(
            "{edge:?}: intake call (the agent's durable append) during phase 1, ms: p50 {:.1} p99 {:.1} max {:.1}",
            pct(&a, 0.5),
            pct(&a, 0.99),
            pct(&a, 1.0)
        );
    }
    let clip_mb_s =
        (clip_received(&core, &sha).await - clip_before) / start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    while lat.seen.lock().unwrap().len() < phase1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ms: Vec<f64> = lat.seen.lock().unwrap().iter().map(|(_, m)| *m).collect();
    if std::env::args().any(|a| a == "--tail") {
        // When the slowest 1% were published (ms into phase 1): spread out
        // (each event on its own) or together (a stall)?
        // The steady flow only, as in the figures.
        let published = lat.published.lock().unwrap();
        let steady: Vec<(u128, f64)> = lat
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(o, m)| (published[o].duration_since(start).as_millis(), *m))
            .filter(|(t, _)| *t >= WARM_UP.as_millis())
            .collect();
        let mut sorted: Vec<f64> = steady.iter().map(|(_, m)| *m).collect();
        sorted.sort_by(f64::total_cmp);
        let cut = pct(&sorted, 0.99);
        let mut tail: Vec<(u128, f64)> = steady.into_iter().filter(|(_, m)| *m >= cut).collect();
        tail.sort_by_key(|t| t.0);
        // One entry per 10 ms slice: its events were published together.
        tail.dedup_by_key(|(t, _)| *t);
        let line: Vec<String> = tail.iter().map(|(t, m)| format!("{t}:{m:.0}")).collect();
        eprintln!(
            "{edge:?}: the slowest 1% (published at ms : latency ms): {}",
            line.join(" ")
        );
    }
    assert_eq!(ms.len(), phase1, "{edge:?}: every event of phase 1 arrives");
    if std::env::args().any(|a| a == "--breakdown") {
        let started = std::time::SystemTime::now() - start.elapsed();
        let events: Vec<(i64, f64, f64)> = {
            let published = lat.published.lock().unwrap();
            lat.seen
                .lock()
                .unwrap()
                .iter()
                .map(|(o, m)| {
                    let t = published[o].duration_since(start).as_secs_f64() * 1e3;
                    (*o, t, *m)
                })
                .filter(|(_, t, _)| *t >= WARM_UP.as_secs_f64() * 1e3)
                .collect()
        };
        breakdown(edge, &agent.log(), &core.log(), started, &events);
    }
    // The first second's events are reported apart (the flow starting after
    // a quiet spell), the percentiles are of the steady flow after it.
    let (mut warm, mut steady) = (Vec::new(), Vec::new());
    {
        let published = lat.published.lock().unwrap();
        for (o, m) in lat.seen.lock().unwrap().iter() {
            if published[o].duration_since(start) < WARM_UP {
                warm.push(*m);
            } else {
                steady.push(*m);
            }
        }
    }
    warm.sort_by(f64::total_cmp);
    eprintln!(
        "{edge:?}: the first second of the flow: {} events, p50 {:.1} ms, p99 {:.1} ms (left out of the figures)",
        warm.len(),
        pct(&warm, 0.5),
        pct(&warm, 0.99)
    );
    ms = steady;
    ms.sort_by(f64::total_cmp);

    // 2. A burst: how fast the link drains it.
    let burst = 20_000i64;
    let first = next;
    let t0 = Instant::now();
    for chunk in 0..burst / 1000 {
        publish(
            &intake,
            &lat,
            first + chunk * 1000..first + (chunk + 1) * 1000,
        )
        .await;
    }
    let want = phase1 + burst as usize;
    let deadline = Instant::now() + Duration::from_secs(300);
    while lat.seen.lock().unwrap().len() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let seen = lat.seen.lock().unwrap().clone();
    let mut count: HashMap<i64, u32> = HashMap::new();
    for (o, _) in &seen {
        *count.entry(*o).or_default() += 1;
    }
    assert_eq!(seen.len(), want, "{edge:?}: every event arrives");
    assert!(count.values().all(|n| *n == 1), "{edge:?}: no event twice");
    reader.abort();
    drop(agent);
    let r = Run {
        p50: pct(&ms, 0.50),
        p99: pct(&ms, 0.99),
        tail: [
            pct(&ms, 0.90),
            pct(&ms, 0.95),
            pct(&ms, 0.999),
            pct(&ms, 1.0),
        ],
        events_per_s: burst as f64 / secs,
        clip_mb_s,
    };
    if let Some(p) = &udp {
        let d = p.dropped.load(std::sync::atomic::Ordering::Relaxed);
        let f = p.forwarded.load(std::sync::atomic::Ordering::Relaxed);
        let (_, body) = sightline_tests::http::get(core.http, "/metrics", "").await;
        let text = String::from_utf8(body).unwrap();
        let shadow = text
            .lines()
            .find(|l| l.starts_with("sightline_batches_from_datagrams_total"))
            .unwrap_or("")
            .to_string();
        let mut q = p.queued_ms.lock().unwrap()[q0..q1].to_vec();
        q.sort_by(f32::total_cmp);
        let qp = |x: f64| q.get(((q.len() as f64 * x) as usize).min(q.len().saturating_sub(1)));
        eprintln!(
            "quic: UDP datagrams to the core forwarded={f}, dropped (both ways)={d}; {shadow}; bottleneck queue wait during phase 1, ms: p50={:?} p90={:?} p99={:?}",
            qp(0.5), qp(0.9), qp(0.99)
        );
    }
    r
}

/// Megabytes of the clip the core holds (asked on the core's own port).
async fn clip_received(core: &Core, sha: &str) -> f64 {
    let mut m = sightline_proto::v1::media_client::MediaClient::connect(core.url())
        .await
        .unwrap();
    let r = m
        .offset(sightline_proto::v1::MediaOffsetRequest {
            sha256: sha.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    if r.complete {
        clip_bytes() as f64 / 1e6
    } else {
        r.received as f64 / 1e6
    }
}

#[tokio::main]
async fn main() {
    let seconds = arg("--seconds", 20.0);
    let rate_mb = arg("--rate-mb", 2.0);
    // 1: TCP's own loss response modelled (see impair.rs); 0: TCP over the
    // proxy keeps its full rate (optimistic for gRPC).
    let tcp_model = arg("--tcp-loss-response", 1.0) != 0.0;
    eprintln!(
        "link: 2% loss, 50 ms each way, {rate_mb} MB/s bottleneck (256 KiB queue); TCP's loss response modelled: {tcp_model}; 50 MB clip + 1,000 events/s for {seconds} s"
    );
    // --only quic|grpc: one transport (for trying out settings).
    let only = arg_str("--only");
    if only.as_deref() == Some("quic") {
        let q = run(Edge::Quic, seconds, rate_mb, tcp_model).await;
        println!(
            "quic: event p50 {:.1} ms p99 {:.1} ms (p90 {:.1} p95 {:.1} p99.9 {:.1} max {:.1}); burst {:.0} events/s; clip upload during phase 1 {:.2} MB/s",
            q.p50, q.p99, q.tail[0], q.tail[1], q.tail[2], q.tail[3], q.events_per_s, q.clip_mb_s
        );
        return;
    }
    let g = run(Edge::Grpc, seconds, rate_mb, tcp_model).await;
    if only.as_deref() == Some("grpc") {
        println!(
            "grpc: event p50 {:.1} ms p99 {:.1} ms (p90 {:.1} p95 {:.1} p99.9 {:.1} max {:.1}); burst {:.0} events/s; clip upload during phase 1 {:.2} MB/s",
            g.p50, g.p99, g.tail[0], g.tail[1], g.tail[2], g.tail[3], g.events_per_s, g.clip_mb_s
        );
        return;
    }
    eprintln!(
        "grpc: event p50 {:.1} ms p99 {:.1} ms; burst {:.0} events/s; clip upload during phase 1 {:.2} MB/s",
        g.p50, g.p99, g.events_per_s, g.clip_mb_s
    );
    let q = run(Edge::Quic, seconds, rate_mb, tcp_model).await;
    eprintln!(
        "quic: event p50 {:.1} ms p99 {:.1} ms; burst {:.0} events/s; clip upload during phase 1 {:.2} MB/s",
        q.p50, q.p99, q.events_per_s, q.clip_mb_s
    );
    println!(
        "edge_link grpc_event_p99_ms={:.1} quic_event_p99_ms={:.1} grpc_events_per_s={:.0} quic_events_per_s={:.0}",
        g.p99, q.p99, g.events_per_s, q.events_per_s
    );
}
