//! Ingest benchmark: the real core and agents on this machine, durable
//! (fsync on both sides), 10% upstream duplicates, joined with Dataset B.
//!
//! 1. Live latency at `--rate` events/s: publish (intake call start) → the
//!    joined event received by a `Subscribe` client, p50 and p99; RSS of the
//!    agents and the core meanwhile (steady state).
//! 2. Throughput: publishers push into the agents' intake as fast as they
//!    take it for `--seconds`; the figure is published events (duplicates
//!    included) per second, from the first publish until the core has
//!    committed the last of them.
//!
//! Last line: `ingest events_per_s=<N> p50_live_ms=<x> p99_live_ms=<y>
//! cpu_us_per_event=<c> agent_rss_mb=<a> core_rss_mb=<c> core_rss_peak_mb=<m>
//! agent_rss_peak_mb=<p> core_cpu_us_per_event=<k>` (the core's share of the CPU per event; RSS: steady state at the live rate, and the peak
//! while publishing and draining, sampled every 0.5 s, then every 20 ms). `deploy/bench-ingest.sh` adds the peers' ratios.
//! Run with `deploy/bench-ingest.sh` (release build).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sightline_proto::v1::{intake_client::IntakeClient, PublishRequest, TopItemsRequest};
use sightline_tests::{
    bench::{percentile, Args, Gen, LatencyProbe, LOCATIONS},
    data::write_locations,
    proc::{cpu_seconds, rss_mb},
    query::{client, stats},
    Agent, AgentArgs, Core,
};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    String::from_utf8_lossy(&sightline_tests::http::get(addr, path, "").await.1).into_owned()
}

#[tokio::main]
async fn main() {
    let args = Args::from_env();
    let agents_n = args.get("--agents", 2.0) as usize;
    let seconds = args.get("--seconds", 10.0);
    let rate = args.get("--rate", 10_000.0);
    let batch = args.get("--batch", 500.0) as usize;
    let dup = 0.10;
    // --no-sync: no fsync on either side (not the headline figure; for comparison).
    let no_sync = args.flag("--no-sync");
    let sync_args: Vec<String> = if no_sync {
        vec!["--no-sync".into()]
    } else {
        vec![]
    };

    // SIGHTLINE_BENCH_DIR keeps the stores and logs for a look afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let kept = std::env::var("SIGHTLINE_BENCH_DIR")
        .ok()
        .map(std::path::PathBuf::from);
    if let Some(k) = &kept {
        std::fs::create_dir_all(k).unwrap();
    }
    let dir_path = kept.unwrap_or_else(|| tmp.path().to_path_buf());
    let dir = &dir_path;
    let b = dir.join("locations.csv");
    write_locations(&b, &(1..=LOCATIONS).collect::<Vec<_>>());
    let core = Core::start_with(sightline_tests::CoreArgs {
        data_dir: dir.join("core"),
        locations: Some(b.clone()),
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: sync_args.clone(),
    });
    let agents: Vec<Agent> = (0..agents_n)
        .map(|i| {
            Agent::start(AgentArgs {
                id: format!("bench-{i}"),
                core_url: core.url(),
                data_dir: dir.join(format!("bench-{i}")),
                command: vec![],
                intake: true,
                exit_when_drained: false,
                extra: sync_args.clone(),
            })
        })
        .collect();
    let urls: Vec<String> = agents.iter().map(|a| a.intake_url()).collect();
    println!(
        "setup: core + {agents_n} agents ({}), {:.0}% duplicates, Dataset B joined",
        if no_sync {
            "NO fsync"
        } else {
            "durable, fsync"
        },
        dup * 100.0
    );

    let url = core.url();
    // ---- 1. live latency at a fixed rate (steady state) ----
    let probe = LatencyProbe::default();
    let receiver = probe.subscribe(&url, None).await;
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64() / agents_n as f64)
        .round()
        .max(1.0) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let (url, probe, stop) = (url.clone(), probe.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let c = IntakeClient::connect(url).await.unwrap();
            let mut g = Gen::new(1000 + i as u64, dup);
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Ordering::Relaxed) {
                interval.tick().await;
                let dets: Vec<_> = (0..per_tick).map(|_| g.detection()).collect();
                probe.sent(
                    dets.iter()
                        .filter(|(_, was_dup)| !was_dup)
                        .map(|(d, _)| d.detection_oid.unwrap()),
                );
                let mut c = c.clone();
                tokio::spawn(async move {
                    let _ = c
                        .publish(PublishRequest {
                            detections: dets.into_iter().map(|(d, _)| d).collect(),
                        })
                        .await;
                });
            }
        }));
    }
    let lat_t0 = Instant::now();
    let live_cpu0 = cpu_seconds(core.pid());
    let mut agent_rss: f64 = 0.0;
    let mut core_rss: f64 = 0.0;
    while lat_t0.elapsed().as_secs_f64() < seconds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for a in &agents {
            agent_rss = agent_rss.max(rss_mb(a.pid()));
        }
        core_rss = core_rss.max(rss_mb(core.pid()));
    }
    let live_core_cpu = (cpu_seconds(core.pid()) - live_cpu0) / lat_t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver.abort();
    println!(
        "core CPU during the live run: {:.1} % of one core",
        live_core_cpu * 100.0
    );
    let hops = probe.hops_line();
    let (lat, missing) = probe.take();
    let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
    println!("core commit latency during the live run (histogram, seconds):");
    let metrics = http_get(core.http, "/metrics").await;
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("sightline_commit_"))
    {
        println!("  {l}");
    }
    // Where a commit's time goes: the writers' queue, the write, the WAL's
    // fsync (sums and counts; the buckets are in /metrics).
    println!("core commit stages during the live run (seconds):");
    for l in metrics.lines().filter(|l| {
        (l.starts_with("sightline_store_write_seconds_")
            || l.starts_with("sightline_store_wal_sync_seconds_")
            || l.starts_with("sightline_store_fold_seconds_")
            || l.starts_with("sightline_writer_queue_seconds_"))
            && (l.contains("_sum") || l.contains("_count"))
    }) {
        println!("  {l}");
    }
    println!(
        "live: {} events at {rate:.0}/s over {seconds:.0}s, publish -> Subscribe: p50 {p50:.1} ms, p90 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms; {missing} not seen",
        lat.len(),
        percentile(&lat, 0.90),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!("  by hop: {hops}");
    // ---- 2. throughput ----
    // A live subscriber stays attached, so the core joins and fans out as it would in use.
    let live_received = Arc::new(AtomicU64::new(0));
    // Subscribed again each time the core cuts it off (a reader slower
    // than the burst), so that the core fans out to a subscriber through the
    // whole burst (the figures would otherwise leave that work out after
    // the first cut).
    let live_ended = sightline_tests::bench::Ends::default();
    let counter = live_received.clone();
    let receiver =
        sightline_tests::bench::read_live(&url, None, true, live_ended.clone(), move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .await;
    // Every published event ends stored, a semantic duplicate or rejected.
    let handled =
        |s: &sightline_proto::v1::StatsResponse| s.stored + s.duplicates_semantic + s.rejected;
    let base_stats = stats(&url).await;
    let base = handled(&base_stats);
    // CPU of the core and the agents (not the publishers) over the phase.
    let pids: Vec<u32> = std::iter::once(core.pid())
        .chain(agents.iter().map(|a| a.pid()))
        .collect();
    let cpu_at = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let cpu0 = cpu_at(&pids);
    let core_cpu0 = cpu_at(&pids[..1]);
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        for j in 0..4 {
            let (url, published, stop) = (url.clone(), published.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = IntakeClient::connect(url).await.unwrap();
                let mut g = Gen::new((i * 16 + j) as u64, dup);
                while !stop.load(Ordering::Relaxed) {
                    let mut dets = Vec::with_capacity(batch);
                    for _ in 0..batch {
                        dets.push(g.detection().0);
                    }
                    match c.publish(PublishRequest { detections: dets }).await {
                        Ok(_) => {
                            published.fetch_add(batch as u64, Ordering::Relaxed);
                        }
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        Err(s) => panic!("publish failed: {s}"),
                    }
                }
            }));
        }
    }
    let mut peak_agent_rss: f64 = 0.0;
    let mut peak_core_rss: f64 = 0.0;
    while t0.elapsed().as_secs_f64() < seconds {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for a in &agents {
            peak_agent_rss = peak_agent_rss.max(rss_mb(a.pid()));
        }
        peak_core_rss = peak_core_rss.max(rss_mb(core.pid()));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    let total = published.load(Ordering::Relaxed);
    // The drain after the publishers stopped: the peaks are sampled through it.
    loop {
        for a in &agents {
            peak_agent_rss = peak_agent_rss.max(rss_mb(a.pid()));
        }
        peak_core_rss = peak_core_rss.max(rss_mb(core.pid()));
        let s = stats(&url).await;
        if handled(&s) >= base + total {
            break;
        }
        if t0.elapsed().as_secs_f64() > seconds * 20.0 + 60.0 {
            panic!("core handled {} of {total}", handled(&s) - base);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e2e_secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_at(&pids) - cpu0;
    let core_cpu = cpu_at(&pids[..1]) - core_cpu0;
    peak_core_rss = peak_core_rss.max(rss_mb(core.pid()));
    let stored = stats(&url).await.stored - base_stats.stored;
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.abort();
    let events_per_s = total as f64 / e2e_secs;
    println!(
        "throughput: published={total} (stored {stored}, the rest duplicates) in {publish_secs:.1}s, all committed after {e2e_secs:.1}s: \
         {events_per_s:.0} events/s end to end ({:.0} publish rate); live subscriber received {}{}; peak RSS agent {peak_agent_rss:.1} MiB, core {peak_core_rss:.1} MiB",
        total as f64 / publish_secs,
        live_received.load(Ordering::Relaxed),
        match live_ended.count() {
            0 => String::new(),
            n => format!(
                " (the core cut it off {n} times, and it subscribed again; the last: {})",
                live_ended.last().unwrap_or_default()
            ),
        }
    );

    // The read the dashboard makes most, right after the burst (its
    // aggregates' merges not yet folded by a flush): top 10 items per
    // location over the last hour.
    let mut q = client(&url).await;
    let now = sightline_proto::now_ms();
    let mut top_ms: Vec<f64> = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        q.top_items(TopItemsRequest {
            from_ms: now - 3_600_000,
            to_ms: now + 60_000,
            x: 10,
            geographical_location_oid: None,
        })
        .await
        .unwrap();
        top_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    top_ms.sort_by(f64::total_cmp);
    println!(
        "read after the burst: TopItems over the last hour p50 {:.1} ms, max {:.1} ms (5 calls)",
        top_ms[2], top_ms[4]
    );
    // What the store's flushes and compactions wrote and took, per column
    // family, since the core started (the live run and the burst), scraped
    // after the read above so as not to delay it.
    println!("core tables after the burst (flushes and compactions since the start):");
    for l in http_get(core.http, "/metrics").await.lines().filter(|l| {
        l.starts_with("sightline_store_table_") && !l.ends_with(" 0") && !l.ends_with(" 0.0")
    }) {
        println!("  {l}");
    }

    // Per event stored: what the core and the agents spent to make it
    // durable, deduplicated, joined, indexed and live.
    let cpu_us_per_event = cpu * 1e6 / stored.max(1) as f64;
    let core_us = core_cpu * 1e6 / stored.max(1) as f64;
    println!(
        "cpu: core + agents {cpu:.1} s for {stored} stored events: {cpu_us_per_event:.1} us per event (core {core_us:.1}, agents {:.1})",
        cpu_us_per_event - core_us
    );
    println!(
        "ingest events_per_s={events_per_s:.0} p50_live_ms={p50:.1} p99_live_ms={p99:.1} cpu_us_per_event={cpu_us_per_event:.1} agent_rss_mb={agent_rss:.1} core_rss_mb={core_rss:.1} core_rss_peak_mb={peak_core_rss:.1} agent_rss_peak_mb={peak_agent_rss:.1} core_cpu_us_per_event={core_us:.1}"
    );
}
