//! Backlog benchmark: an outage, then the drain beside live traffic. The
//! real core and agents on this machine, durable (fsync on both sides), 10%
//! upstream duplicates, joined with Dataset B.
//!
//! 1. The agents publish at `--rate` events/s (fleet-wide) and the core is
//!    stopped for `--outage-seconds` (default 600): the agents buffer it all.
//! 2. The core starts again; the agents reconnect and drain their backlog
//!    while publishing on at the same rate. The drain rate is how many seqs
//!    the core acknowledged (the agents' acknowledged seqs in the fleet
//!    view) from its first commit after the restart until every agent was
//!    within 200 ms of its publisher, over that time;
//!    `drain_x_live` divides it by the live rate. Events published during
//!    the drain — from when every agent is back (each after its reconnect
//!    backoff; what they took before is backlog) — carry the item
//!    `live-probe` and are timed from publish (the intake call)
//!    to a `Subscribe` client watching that item: the live latency. A second
//!    client takes everything the core commits, the backlog too (a
//!    dashboard's fire hose), and its latency for the same events is
//!    reported beside (`firehose_p99_ms`): it includes how long that client
//!    takes to read ~10× the live rate. When the core cuts it off (it fell
//!    `live.buffer_events` behind) it subscribes again at once, so that the
//!    core serves it through the whole drain (`firehose_cut_offs`).
//!
//! Last line: `backlog events=<n> drain_x_live=<x> live_p99_during_drain_ms=<p>
//! agent_rss_max_mb=<a>` and more figures after them (the agents' RSS is the
//! largest of any agent over the whole run). Run with `deploy/bench-backlog.sh`.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sightline_proto::v1::{intake_client::IntakeClient, EventFilter, PublishRequest};
use sightline_tests::{
    bench::{histogram_line, percentile, Args, Gen, LatencyProbe, LOCATIONS},
    data::write_locations,
    proc::rss_mb,
    Agent, AgentArgs, Core,
};

/// The item of the events published during the drain, which the live
/// latency is measured on.
const PROBE_ITEM: &str = "live-probe";

/// Every published event ends stored, a semantic duplicate or refused.
/// Each agent's acknowledged seq (its epoch does not change in this run,
/// and its seqs are 1, 2, … in the order its intake took the events), in
/// the order of `ids`.
async fn acked_seqs(q: &mut sightline_tests::query::Client, ids: &[String]) -> Vec<u64> {
    let fleet = q
        .fleet(sightline_proto::v1::FleetRequest {})
        .await
        .unwrap()
        .into_inner();
    ids.iter()
        .map(|id| {
            fleet
                .agents
                .iter()
                .find(|a| &a.agent_id == id)
                .map_or(0, |a| a.acked_seq)
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let args = Args::from_env();
    let agents_n = args.get("--agents", 2.0) as usize;
    let outage = Duration::from_secs_f64(args.get("--outage-seconds", 600.0));
    let rate = args.get("--rate", 10_000.0);
    let dup = 0.10;
    let no_sync = args.flag("--no-sync");
    let sync_args: Vec<String> = if no_sync {
        vec!["--no-sync".into()]
    } else {
        vec![]
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let b = dir.join("locations.csv");
    write_locations(&b, &(1..=LOCATIONS).collect::<Vec<_>>());
    let mut core = Core::start_with(sightline_tests::CoreArgs {
        data_dir: dir.join("core"),
        locations: Some(b.clone()),
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: sync_args.clone(),
    });
    // Room for the whole outage in each agent's buffer.
    let per_agent = (rate * outage.as_secs_f64() * 1.5 / agents_n as f64) as u64 + 1_000_000;
    let agents: Vec<Agent> = (0..agents_n)
        .map(|i| {
            let id = format!("backlog-{i}");
            let cfg = dir.join(format!("{id}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "agent_id = \"{id}\"\n[buffer]\nmax_events = {per_agent}\nmax_bytes = \"{} MiB\"\n",
                    per_agent * 200 / (1 << 20) + 64
                ),
            )
            .unwrap();
            let mut extra = sync_args.clone();
            extra.extend(["--config".to_string(), cfg.display().to_string()]);
            Agent::start(AgentArgs {
                id: id.clone(),
                core_url: core.url(),
                data_dir: dir.join(&id),
                command: vec![],
                intake: true,
                exit_when_drained: false,
                extra,
            })
        })
        .collect();
    println!(
        "setup: core + {agents_n} agents ({}), {rate:.0} events/s, {:.0}% duplicates, outage {:.0} s",
        if no_sync { "NO fsync" } else { "durable, fsync" },
        dup * 100.0,
        outage.as_secs_f64()
    );

    // Publishers at the live rate for the whole run; the probe times the
    // events published while `measure` is set.
    let probe = LatencyProbe::default();
    let firehose = LatencyProbe::default();
    let published = Arc::new(AtomicU64::new(0));
    // What each agent's intake took: its seqs 1 ..= n.
    let published_by: Vec<Arc<AtomicU64>> =
        (0..agents_n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let refused = Arc::new(AtomicU64::new(0));
    let measure = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64() / agents_n as f64)
        .round()
        .max(1.0) as usize;
    let mut tasks = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let url = a.intake_url();
        let (probe, firehose, published, mine, refused, measure, stop) = (
            probe.clone(),
            firehose.clone(),
            published.clone(),
            published_by[i].clone(),
            refused.clone(),
            measure.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = IntakeClient::connect(url).await.unwrap();
            let mut g = Gen::new(7_000 + i as u64, dup);
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Ordering::Relaxed) {
                interval.tick().await;
                let measuring = measure.load(Ordering::Relaxed);
                g.item = measuring.then_some(PROBE_ITEM);
                let dets: Vec<_> = (0..per_tick).map(|_| g.detection()).collect();
                if measuring {
                    let oids: Vec<i64> = dets
                        .iter()
                        .filter(|(_, was_dup)| !was_dup)
                        .map(|(d, _)| d.detection_oid.unwrap())
                        .collect();
                    probe.sent(oids.iter().copied());
                    firehose.sent(oids);
                }
                let mut c = c.clone();
                let (published, mine, refused) = (published.clone(), mine.clone(), refused.clone());
                tokio::spawn(async move {
                    let n = dets.len() as u64;
                    match c
                        .publish(PublishRequest {
                            detections: dets.into_iter().map(|(d, _)| d).collect(),
                        })
                        .await
                    {
                        Ok(_) => {
                            mine.fetch_add(n, Ordering::Relaxed);
                            published.fetch_add(n, Ordering::Relaxed)
                        }
                        Err(_) => refused.fetch_add(n, Ordering::Relaxed),
                    };
                });
            }
        }));
    }
    let pids: Vec<u32> = agents.iter().map(|a| a.pid()).collect();
    let mut agent_rss_max: f64 = 0.0;
    let sample_rss = |max: &mut f64| {
        for p in &pids {
            *max = max.max(rss_mb(*p));
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // ---- the outage ----
    core.terminate();
    let before = published.load(Ordering::Relaxed);
    let t_out = Instant::now();
    while t_out.elapsed() < outage {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sample_rss(&mut agent_rss_max);
    }
    let backlog = published.load(Ordering::Relaxed) - before;
    println!(
        "outage: {backlog} events published in {:.0} s while the core was down; agents' RSS at most {agent_rss_max:.1} MiB",
        t_out.elapsed().as_secs_f64()
    );

    // ---- the drain, live traffic on ----
    core.restart();
    let url = core.url();
    let receiver = probe
        .subscribe(
            &url,
            Some(EventFilter {
                item_name: Some(PROBE_ITEM.into()),
                ..Default::default()
            }),
        )
        .await;
    let fire_receiver = firehose.subscribe_kept(&url, None).await;
    let t_restart = Instant::now();
    let ids: Vec<String> = (0..agents_n).map(|i| format!("backlog-{i}")).collect();
    let mut q = sightline_tests::query::client(&url).await;
    let at_restart: u64 = acked_seqs(&mut q, &ids).await.iter().sum();
    // The drain starts when every agent is back (each after its reconnect
    // backoff): what they took before is backlog, what comes after is live.
    loop {
        let fleet = q
            .fleet(sightline_proto::v1::FleetRequest {})
            .await
            .unwrap()
            .into_inner();
        if fleet.agents.iter().filter(|a| a.connected).count() >= agents_n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    measure.store(true, Ordering::Relaxed);
    let t_back = Instant::now();
    // The agents' reconnects so far (every failed attempt of the outage):
    // what is added during the drain is a session that broke.
    let mut reconnects_at_back = Vec::new();
    for a in &agents {
        let text = sightline_tests::http::get(a.metrics_addr(), "/metrics", "")
            .await
            .1;
        reconnects_at_back.push(counter(
            &String::from_utf8_lossy(&text),
            "sightline_edge_reconnects_total",
        ));
    }
    let mut first_commit: Option<(Instant, u64)> = None;
    let mut core_rss_peak: f64 = 0.0;
    // Drained: every agent's acknowledged seq within 0.2 s of live traffic
    // of the last seq its intake assigned (acknowledged seqs, not the core's
    // counters: an event the live lane stored early is acknowledged only
    // when the backlog reaches it).
    let lag_ok = (rate * 0.2 / agents_n as f64) as u64;
    // RocksDB's state during the drain, scraped once a second.
    let mut engine = EngineSeen::default();
    let mut next_scrape = Instant::now();
    let (t_drained, acked_drained) = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if Instant::now() >= next_scrape {
            next_scrape += Duration::from_secs(1);
            let text = sightline_tests::http::get(core.http, "/metrics", "")
                .await
                .1;
            engine.sample(&String::from_utf8_lossy(&text));
        }
        sample_rss(&mut agent_rss_max);
        core_rss_peak = core_rss_peak.max(rss_mb(core.pid()));
        let acked = acked_seqs(&mut q, &ids).await;
        let total: u64 = acked.iter().sum();
        let now = Instant::now();
        if first_commit.is_none() && total > at_restart {
            first_commit = Some((now, total));
        }
        if acked
            .iter()
            .zip(&published_by)
            .all(|(a, p)| a + lag_ok >= p.load(Ordering::Relaxed))
        {
            break (now, total);
        }
        if t_restart.elapsed() > outage * 10 + Duration::from_secs(120) {
            panic!(
                "the backlog did not drain: acknowledged {acked:?} of {:?}",
                published_by
                    .iter()
                    .map(|p| p.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            );
        }
    };
    measure.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver.abort();
    fire_receiver.abort();
    let metrics = String::from_utf8_lossy(
        &sightline_tests::http::get(core.http, "/metrics", "")
            .await
            .1,
    )
    .into_owned();
    for l in metrics.lines().filter(|l| {
        l.starts_with("sightline_live_lane_stored")
            || l.starts_with("sightline_delivered_live")
            || l.starts_with("sightline_live_subscribers_lagged")
            || l.starts_with("sightline_live_held_events")
            || l.starts_with("sightline_commit_events_sum")
            || l.starts_with("sightline_commit_events_count")
            || l.starts_with("sightline_store_write_s")
            || l.starts_with("sightline_store_wal_sync_seconds")
            || l.starts_with("sightline_store_fold_seconds")
            || l.starts_with("sightline_writer_queue_seconds")
            || l.starts_with("sightline_store_table_")
    }) {
        println!("  {l}");
    }
    let mut agent_metrics = Vec::new();
    for a in &agents {
        let text = sightline_tests::http::get(a.metrics_addr(), "/metrics", "")
            .await
            .1;
        agent_metrics.push(String::from_utf8_lossy(&text).into_owned());
    }
    let (t_first, acked_first) = first_commit.expect("a commit after the restart");
    let drain_secs = t_drained.duration_since(t_first).as_secs_f64().max(1e-3);
    let drained = acked_drained - acked_first;
    let drain_rate = drained as f64 / drain_secs;
    let hops = probe.hops_line();
    let (lat, missing) = probe.take();
    let p99 = percentile(&lat, 0.99);
    let (fire, fire_missing) = firehose.take();
    let fire_p99 = percentile(&fire, 0.99);
    println!(
        "drain: {drained} events acknowledged in {drain_secs:.1} s after the first commit ({:.1} s after the restart; every agent back after {:.1} s): {drain_rate:.0} events/s beside {rate:.0}/s live; core RSS peak {core_rss_peak:.1} MiB; {} published events refused by the intakes (buffer full)",
        t_first.duration_since(t_restart).as_secs_f64(),
        t_back.duration_since(t_restart).as_secs_f64(),
        refused.load(Ordering::Relaxed)
    );
    println!(
        "live during the drain: {} events, publish -> Subscribe p50 {:.1} ms, p90 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms; {missing} not seen",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!("  by hop: {hops}");
    println!(
        "  the live lane: accepted -> sent by the agent {}; accepted -> read by the core {}",
        histogram_line(&agent_metrics, "sightline_edge_live_lane_wait_seconds", ""),
        histogram_line(
            std::slice::from_ref(&metrics),
            "sightline_event_hop_seconds",
            "hop=\"stamped_to_live_received\""
        )
    );
    let held = |by: &str| {
        histogram_line(
            std::slice::from_ref(&metrics),
            "sightline_session_reader_held_seconds",
            &format!("by=\"{by}\""),
        )
    };
    println!(
        "  the core's session readers held up by a writer's live queue: {}; by the read-ahead budget: {}; by the session loop: {}",
        held("live_queue"),
        held("read_ahead"),
        held("session_loop")
    );
    println!(
        "  agents: sessions broken during the drain {:?}, events sent on the live lane {:?}, new events it passed over (left to the backlog) {:?}",
        agent_metrics
            .iter()
            .zip(&reconnects_at_back)
            .map(|(t, at_back)| counter(t, "sightline_edge_reconnects_total") - at_back)
            .collect::<Vec<_>>(),
        agent_metrics
            .iter()
            .map(|t| counter(t, "sightline_edge_live_lane_sent_events_total"))
            .collect::<Vec<_>>(),
        agent_metrics
            .iter()
            .map(|t| counter(t, "sightline_edge_live_lane_skipped_events_total"))
            .collect::<Vec<_>>()
    );
    println!("  store during the drain: {engine}");
    println!(
        "the same events to a subscriber of everything (the backlog too): p50 {:.1} ms, p99 {fire_p99:.1} ms; {fire_missing} not seen{}",
        percentile(&fire, 0.50),
        firehose
            .ended()
            .map(|why| format!(
                " (the core ended its subscription {} times, subscribed again at once each time; the last: {why})",
                firehose.cut_offs()
            ))
            .unwrap_or_default()
    );
    println!(
        "backlog events={backlog} drain_x_live={:.2} live_p99_during_drain_ms={p99:.1} agent_rss_max_mb={agent_rss_max:.1} drain_events_per_s={drain_rate:.0} core_rss_peak_mb={core_rss_peak:.1} live_not_seen={missing} firehose_p99_ms={fire_p99:.1} firehose_cut_offs={}",
        drain_rate / rate,
        firehose.cut_offs()
    );
}

/// The value of an unlabelled counter or gauge in a `/metrics` text (0 if absent).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// RocksDB's state over the drain's scrapes (`sightline_store_*`).
#[derive(Default)]
struct EngineSeen {
    scrapes: u32,
    stopped: u32,
    delayed: u32,
    l0_max: f64,
    pending_max: f64,
    immutable_max: f64,
    memtable_max: f64,
}

impl EngineSeen {
    fn sample(&mut self, metrics: &str) {
        let v = |name: &str| counter(metrics, name);
        self.scrapes += 1;
        self.stopped += (v("sightline_store_write_stopped") > 0.0) as u32;
        self.delayed += (v("sightline_store_delayed_write_rate_bytes") > 0.0) as u32;
        self.l0_max = self.l0_max.max(v("sightline_store_l0_files"));
        self.pending_max = self
            .pending_max
            .max(v("sightline_store_pending_compaction_bytes"));
        self.immutable_max = self
            .immutable_max
            .max(v("sightline_store_immutable_memtables"));
        self.memtable_max = self.memtable_max.max(v("sightline_store_memtable_bytes"));
    }
}

impl std::fmt::Display for EngineSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} scrapes, writes stopped in {}, slowed in {}; at most {} L0 files, {:.1} MiB pending compaction, {} immutable memtables, {:.1} MiB of memtables",
            self.scrapes,
            self.stopped,
            self.delayed,
            self.l0_max,
            self.pending_max / 1048576.0,
            self.immutable_max,
            self.memtable_max / 1048576.0
        )
    }
}
