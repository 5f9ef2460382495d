//! Dashboard benchmark, against a real core taking 10,000 events/s from two
//! simulated agents:
//!
//! 1. `first_paint_ms`: first contentful paint of the Live page in headless
//!    Chromium, cold cache, median of 5 (`tests/browser/bench.mjs`).
//! 2. `wasm_gz_kb`: the compressed wasm the browser downloads.
//! 3. `live_lag_p99_ms`: commit at the core → row on screen, p99 over 20 s,
//!    measured in the page (MutationObserver; same machine clock).
//! 4. `core_cpu_delta_pct`: the core's extra CPU (% of one core) with
//!    `viewers` (100) live viewers (SSE clients reading `/api/live`) against
//!    none, 10 s each, while ingesting.
//!
//! Last line: `dashboard first_paint_ms=<f> wasm_gz_kb=<w> live_lag_p99_ms=<l> viewers=<v> core_cpu_delta_pct=<d>`.
//! Run with `deploy/bench-dashboard.sh` (release build).

use std::{
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use sightline_tests::{bin_path, data::write_locations, proc::cpu_seconds, Agent, AgentArgs, Core};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VIEWERS: usize = 100;

async fn core_cpu_pct(pid: u32, secs: f64) -> f64 {
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    (cpu_seconds(pid) - before) / secs * 100.0
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let locations = dir.path().join("locations.csv");
    write_locations(&locations, &(1..=12).collect::<Vec<i64>>());
    let core = Core::start(dir.path(), Some(&locations));
    let agents: Vec<Agent> = (0..2)
        .map(|i| {
            let locs = if i == 0 {
                "1,2,3,4,5,6"
            } else {
                "7,8,9,10,11,12"
            };
            Agent::start(AgentArgs {
                id: format!("bench-{i}"),
                core_url: core.url(),
                data_dir: dir.path().join(format!("agent-{i}")),
                command: [
                    "simulate",
                    "--cameras",
                    "6",
                    "--camera-base",
                    &(i * 100 + 1).to_string(),
                    "--locations",
                    locs,
                    "--rate",
                    "5000",
                    "--duplicates",
                    "0.05",
                ]
                .map(String::from)
                .to_vec(),
                intake: false,
                exit_when_drained: false,
                extra: vec![],
            })
        })
        .collect();
    // The simulated fleet stands in for camera hosts, which are other
    // machines: on this one it runs at a lower priority, so that what is
    // measured is the core and the browser rather than the load generator.
    for a in &agents {
        let _ = Command::new("renice")
            .args(["-n", "10", "-p", &a.pid().to_string()])
            .output();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let base = format!("http://{}", core.http);

    let wasm = bin_path("sightline-core")
        .parent()
        .and_then(|d| d.parent())
        .map(|t| t.join("site/pkg/sightline_web_bg.wasm.gz"))
        .unwrap();
    let wasm_gz_kb = std::fs::metadata(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e} (run deploy/build-web.sh)", wasm.display()))
        .len() as f64
        / 1024.0;

    let (user, password) = ("bench", "bench-password-not-secret");
    core.add_user(user, sightline_proto::v1::Role::Viewer, &[], password)
        .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/bench.mjs");
    let run = Command::new("node")
        .args([script, &base, "20", user, password])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let b: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    println!("browser: {b}");
    let first_paint_ms = b["first_paint_ms"].as_f64().unwrap_or(f64::NAN);
    let live_lag_p99_ms = b["live_lag_p99_ms"].as_f64().unwrap_or(f64::NAN);

    let stored = || async { sightline_tests::query::stats(&core.url()).await.stored };
    // Alternating windows without and with the viewers (CPU is noisy on a
    // saturated 2-core machine): the delta is the mean of the pairs.
    let received = Arc::new(AtomicU64::new(0));
    let mut idle = Vec::new();
    let mut watched = Vec::new();
    let (mut rate, mut mb) = (0.0, 0.0);
    for round in 0..2 {
        let s0 = stored().await;
        idle.push(core_cpu_pct(core.pid(), 10.0).await);
        rate += (stored().await - s0) as f64 / 10.0 / 4.0;
        let mut viewers = Vec::new();
        for _ in 0..VIEWERS {
            let mut s = tokio::net::TcpStream::connect(core.http).await.unwrap();
            s.write_all(
                format!(
                    "GET /api/live HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
                    core.http,
                    core.admin_token()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let received = received.clone();
            viewers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (b0, s1) = (received.load(Ordering::Relaxed), stored().await);
        watched.push(core_cpu_pct(core.pid(), 10.0).await);
        rate += (stored().await - s1) as f64 / 10.0 / 4.0;
        mb += (received.load(Ordering::Relaxed) - b0) as f64 / 1e6 / 2.0;
        for v in viewers {
            v.abort();
        }
        println!(
            "round {round}: core CPU {:.1}% of a core without viewers, {:.1}% with {VIEWERS}",
            idle[round], watched[round]
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (idle, watched) = (mean(&idle), mean(&watched));
    let core_cpu_delta_pct = watched - idle;
    println!("core CPU: {idle:.1}% of a core with no viewer, {watched:.1}% with {VIEWERS} live viewers ({rate:.0} events/s stored, {mb:.1} MB of ticks sent per 10 s)");
    println!(
        "dashboard first_paint_ms={first_paint_ms:.0} wasm_gz_kb={wasm_gz_kb:.0} live_lag_p99_ms={live_lag_p99_ms:.0} viewers={VIEWERS} core_cpu_delta_pct={core_cpu_delta_pct:.1}"
    );
}
