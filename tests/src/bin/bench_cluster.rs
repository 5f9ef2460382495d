//! Cluster benchmark (issue 15): the embedded default and a 3-node cluster
//! (3 clustered `nats-server -js`, R3 streams, moto, 3 cores with the
//! default cluster settings: 32 partitions, 3 s leases) measured in the same
//! run, with the same agents and load (10 % upstream duplicates, Dataset B
//! joined, durable: fsync on every side).
//!
//! 1. Throughput, each mode: publishers push into 2 agents' intake as fast
//!    as they take it for `--seconds`; events/s from the first publish until
//!    every unique one is stored. CPU per stored event: the core (embedded);
//!    the 3 cores and the 3 nats-servers (cluster).
//! 2. Cluster, live at `--rate` events/s with a subscriber on node 0: the
//!    publish → Subscribe latency (p99 of the events sent until 1 s before
//!    the kill; after `--settle` s for the partitions to spread, and after the
//!    throughput phase has been applied and checkpointed everywhere: see
//!    [`wait_quiet`]; `--quiet 0` skips that wait), then `kill -9` of
//!    node 2 (a partition owner; the agents send to nodes 0 and 1).
//!    Failover: from the kill until every partition has committed (and
//!    published to the subscriber) an event sent after the kill — the
//!    slowest partition, i.e. the dead node's, moved and restored. Then
//!    every accepted event must be stored once and seen once by the
//!    subscriber: lost and duplicated count what is not.
//!
//! Last line: `cluster embedded_events_per_s=<a> cluster_events_per_s=<b>
//! p99_live_ms=<c> failover_s=<d> lost=<e> duplicated=<f>
//! embedded_cpu_us_per_event=<g> cluster_cpu_us_per_event=<h>`.
//! Run with `deploy/bench-cluster.sh` (release build).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use sightline_proto::v1::{intake_client::IntakeClient, PublishRequest, SubscribeRequest};
use sightline_tests::{
    bench::{percentile, Args, Gen, LOCATIONS},
    cluster::{Rig, RigConfig},
    data::write_locations,
    proc::cpu_seconds,
    query::client,
    Agent, AgentArgs, Core, CoreArgs,
};

/// Events sent this close before the kill are not counted in the steady
/// state's latency (those of the dead node's partitions wait for the
/// failover).
const STEADY_MARGIN: Duration = Duration::from_secs(1);

/// The cluster's partitions (the config's default).
const PARTITIONS: u32 = 32;

/// Pushes detections into the agents' intake as fast as they take them for
/// `seconds`, 4 publishers per agent; returns (published, unique).
async fn push(intakes: &[String], seconds: f64, batch: usize, seed: u64) -> (u64, u64) {
    let published = Arc::new(AtomicU64::new(0));
    let unique = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, url) in intakes.iter().enumerate() {
        for j in 0..4 {
            let (url, published, unique, stop) =
                (url.clone(), published.clone(), unique.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = IntakeClient::connect(url).await.unwrap();
                let mut g = Gen::new(seed + (i * 16 + j) as u64, 0.10);
                while !stop.load(Ordering::Relaxed) {
                    let dets: Vec<_> = (0..batch).map(|_| g.detection()).collect();
                    let fresh = dets.iter().filter(|(_, dup)| !dup).count() as u64;
                    match c
                        .publish(PublishRequest {
                            detections: dets.into_iter().map(|(d, _)| d).collect(),
                        })
                        .await
                    {
                        Ok(_) => {
                            published.fetch_add(batch as u64, Ordering::Relaxed);
                            unique.fetch_add(fresh, Ordering::Relaxed);
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
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    (
        published.load(Ordering::Relaxed),
        unique.load(Ordering::Relaxed),
    )
}

/// The stored count from the core at `url`; `None` while it cannot answer
/// (a partition moving after a node died).
async fn stored(url: &str) -> Option<u64> {
    let r = client(url)
        .await
        .stats(sightline_proto::v1::StatsRequest {})
        .await;
    r.ok().map(|s| s.into_inner().stored)
}

/// Waits until the core at `url` counts `want` stored events.
async fn wait_stored(url: &str, want: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut last = 0;
    loop {
        if let Some(s) = stored(url).await {
            last = s;
        }
        if last >= want || Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The throughput phase against agents `intakes`, stats from `url`, CPU of
/// `pids`: (events/s, CPU µs per stored event).
async fn throughput(
    label: &str,
    url: &str,
    intakes: &[String],
    pids: &[u32],
    seconds: f64,
    batch: usize,
) -> (f64, f64) {
    let base = stored(url).await.expect("stats");
    let cpu_at = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let cpu0 = cpu_at();
    let t0 = Instant::now();
    let (published, unique) = push(intakes, seconds, batch, 7).await;
    let publish_s = t0.elapsed().as_secs_f64();
    let timeout = Duration::from_secs_f64(seconds * 20.0 + 120.0);
    let stored = wait_stored(url, base + unique, timeout).await - base;
    assert!(
        stored >= unique,
        "{label}: {stored} of {unique} unique events stored within {timeout:?}"
    );
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_at() - cpu0;
    let (eps, cpu_us) = (published as f64 / secs, cpu * 1e6 / stored.max(1) as f64);
    println!(
        "{label}: published {published} ({unique} unique) in {publish_s:.1} s, all stored after {secs:.1} s: {eps:.0} events/s; CPU {cpu:.1} s ({cpu_us:.1} us per stored event, {} processes)",
        pids.len()
    );
    (eps, cpu_us)
}

/// Waits until every partition has applied all of its stream (lag 0, as its
/// owner reports it in `/metrics`) for `quiet_for`, and has a checkpoint
/// (within `timeout`). A checkpoint is taken `interval` after the previous
/// one whenever the partition applied something since, so after
/// 2 × `interval` + the gauges' age with nothing new, the newest
/// checkpoint covers everything. The live phase then starts from a settled
/// cluster, not in the drain of the throughput phase (whose backlog a kill
/// would otherwise leave to be replayed: that measures the burst, not the
/// failover). Returns the seconds it took, `None` on timeout.
async fn wait_quiet(
    nodes: &[std::net::SocketAddr],
    quiet_for: Duration,
    timeout: Duration,
) -> Option<f64> {
    use sightline_core::cluster::status::{fetch_metrics, gather, parse_metrics};
    let t0 = Instant::now();
    // Since when every partition has been seen applied through.
    let mut applied_since: Option<Instant> = None;
    while t0.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The quiet wait kills no node: node 0 answers, the others are
        // found from it.
        let Ok(t) = fetch_metrics(&nodes[0].to_string(), None).await else {
            continue;
        };
        let (all, _) = gather(parse_metrics(&t), None, None).await;
        let settled = !all.partitions.is_empty()
            && all
                .partitions
                .iter()
                .all(|p| p.lag == Some(0) && p.checkpoint_age_s.is_some());
        if !settled {
            applied_since = None;
            continue;
        }
        let since = *applied_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= quiet_for {
            return Some(t0.elapsed().as_secs_f64());
        }
    }
    None
}

/// What the live subscriber received: det_oid → arrival times.
#[derive(Default)]
struct Seen {
    at: HashMap<i64, Vec<Instant>>,
}

#[tokio::main]
async fn main() {
    let args = Args::from_env();
    let seconds = args.get("--seconds", 10.0);
    let rate = args.get("--rate", 5_000.0);
    let live_seconds = args.get("--live-seconds", 30.0);
    let kill_at = args.get("--kill-at", 10.0);
    let batch = args.get("--batch", 500.0) as usize;
    let settle = args.get("--settle", 30.0);
    let quiet = args.get("--quiet", 1.0) != 0.0;
    let locations: Vec<i64> = (1..=LOCATIONS).collect();

    // ---- embedded ----
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let b = dir.join("locations.csv");
    write_locations(&b, &locations);
    let (embedded_eps, embedded_cpu) = {
        let core = Core::start_with(CoreArgs {
            data_dir: dir.join("core"),
            locations: Some(b.clone()),
            grpc: "127.0.0.1:0".parse().unwrap(),
            edge: "127.0.0.1:0".parse().unwrap(),
            extra: vec![],
        });
        let agents: Vec<Agent> = (0..2)
            .map(|i| Agent::start(AgentArgs::intake(dir, &format!("emb-{i}"), core.url())))
            .collect();
        let intakes: Vec<String> = agents.iter().map(Agent::intake_url).collect();
        println!("setup: embedded core + 2 agents, durable, 10% duplicates, Dataset B joined");
        throughput(
            "embedded",
            &core.url(),
            &intakes,
            &[core.pid()],
            seconds,
            batch,
        )
        .await
    };

    // ---- cluster ----
    let mut rig = Rig::start(
        3,
        RigConfig {
            partitions: PARTITIONS,
            lease_ms: 3000,
            checkpoint_interval: "10s".into(),
            locations: locations.clone(),
            core_args: vec![],
            secure: false,
        },
    )
    .await;
    let urls: Vec<String> = rig.nodes.iter().map(Core::url).collect();
    // Agent i sends to node i first (the others are its failover list).
    let agents: Vec<Agent> = (0..2)
        .map(|i| {
            let list: Vec<String> = (0..3).map(|k| urls[(i + k) % 3].clone()).collect();
            Agent::start(
                AgentArgs::intake(rig.dir.path(), &format!("clu-{i}"), list.join(","))
                    .reconnect_within(Duration::from_millis(500)),
            )
        })
        .collect();
    let intakes: Vec<String> = agents.iter().map(Agent::intake_url).collect();
    // The nodes started one after another: the first took every partition,
    // the others take their share as their leases come up. Measured once
    // that has settled.
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    println!(
        "setup: 3 nats-servers (R3), moto, 3 cores ({PARTITIONS} partitions, 3 s leases, checkpoints every 10 s), 2 agents"
    );
    let pids: Vec<u32> = rig
        .nodes
        .iter()
        .map(Core::pid)
        .chain(rig.nats.servers.iter().filter_map(|s| s.pid()))
        .collect();
    let (cluster_eps, cluster_cpu) =
        throughput("cluster", &urls[0], &intakes, &pids, seconds, batch).await;

    if quiet {
        let http: Vec<_> = rig.nodes.iter().map(|n| n.http).collect();
        // Checkpoints every 10 s (below), gauges refreshed every 5 s.
        let quiet_for = Duration::from_secs(2 * 10 + 5);
        match wait_quiet(&http, quiet_for, Duration::from_secs(180)).await {
            Some(s) => println!(
                "quiet: every partition applied through and checkpointed {s:.1} s after the throughput phase"
            ),
            None => println!(
                "quiet: not reached in 180 s (a partition lagging or not checkpointed); live phase started anyway"
            ),
        }
    }

    // ---- cluster: live, then a partition owner killed ----
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut feed = client(&urls[0])
        .await
        .subscribe(SubscribeRequest {
            from_ms: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let subscriber = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(e)) = feed.next().await {
                let oid = e.detection.unwrap().detection_oid.unwrap();
                seen.lock()
                    .unwrap()
                    .at
                    .entry(oid)
                    .or_default()
                    .push(Instant::now());
            }
        })
    };
    let base = stored(&urls[0]).await.expect("stats");
    // det_oid → when it was accepted by an agent (unique ones only).
    let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64() / intakes.len() as f64)
        .round()
        .max(1.0) as usize;
    let mut tasks = Vec::new();
    for (i, url) in intakes.iter().enumerate() {
        let (url, sent, stop) = (url.clone(), sent.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = IntakeClient::connect(url).await.unwrap();
            let mut g = Gen::new(5000 + i as u64, 0.10);
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Ordering::Relaxed) {
                interval.tick().await;
                let dets: Vec<_> = (0..per_tick).map(|_| g.detection()).collect();
                let at = Instant::now();
                let fresh: Vec<i64> = dets
                    .iter()
                    .filter(|(_, dup)| !dup)
                    .map(|(d, _)| d.detection_oid.unwrap())
                    .collect();
                // Recorded before the call: the subscriber may see an event
                // before the agent's answer arrives.
                {
                    let mut s = sent.lock().unwrap();
                    for o in &fresh {
                        s.insert(*o, at);
                    }
                }
                let r = c
                    .publish(PublishRequest {
                        detections: dets.into_iter().map(|(d, _)| d).collect(),
                    })
                    .await;
                if let Err(e) = r {
                    // Not accepted: not expected to be stored.
                    eprintln!("publish refused: {e}");
                    let mut s = sent.lock().unwrap();
                    for o in &fresh {
                        s.remove(o);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(kill_at)).await;
    let killed_at = Instant::now();
    rig.nodes[2].kill9();
    println!(
        "killed node 2 (kill -9) {:.1} s into the live run",
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs_f64(
        (live_seconds - kill_at).max(kill_at),
    ))
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let unique = sent.len() as u64;
    let stored = wait_stored(&urls[0], base + unique, Duration::from_secs(180)).await - base;
    // The subscriber catches up with what is stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let got = {
            let s = seen.lock().unwrap();
            sent.keys().filter(|o| s.at.contains_key(o)).count() as u64
        };
        if got >= unique {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    subscriber.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // Latency of the events sent before the kill; failover per partition.
    let mut lat = Vec::new();
    let mut first_after: HashMap<usize, f64> = HashMap::new();
    let (mut missing, mut repeated) = (0u64, 0u64);
    for (oid, at) in &sent {
        let Some(arrivals) = seen.at.get(oid) else {
            missing += 1;
            continue;
        };
        repeated += arrivals.len() as u64 - 1;
        let arrived = arrivals[0];
        if *at + STEADY_MARGIN < killed_at {
            lat.push(arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0);
        } else if *at >= killed_at {
            let p = sightline_core::store::keys::partition_of(*oid, PARTITIONS as usize);
            let s = arrived.duration_since(killed_at).as_secs_f64();
            let e = first_after.entry(p).or_insert(s);
            *e = e.min(s);
        }
    }
    // The latency over the run, by 2-second window of sending.
    let mut windows: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (oid, at) in &sent {
        if let Some(a) = seen.at.get(oid) {
            let w = at.saturating_duration_since(t0).as_secs() / 2 * 2;
            windows
                .entry(w)
                .or_default()
                .push(a[0].saturating_duration_since(*at).as_secs_f64() * 1000.0);
        }
    }
    let profile: Vec<String> = windows
        .into_iter()
        .map(|(w, mut v)| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!(
                "{w}s:{:.0}/{:.0}",
                percentile(&v, 0.5),
                percentile(&v, 0.99)
            )
        })
        .collect();
    println!("live latency by window sent (p50/p99 ms; the kill at {kill_at:.0} s): {profile:?}");
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = percentile(&lat, 0.99);
    let failover = if first_after.len() == PARTITIONS as usize {
        first_after.values().cloned().fold(0.0, f64::max)
    } else {
        f64::NAN
    };
    let mut slowest: Vec<(usize, f64)> = first_after.into_iter().collect();
    slowest.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    println!(
        "live: {} events at {rate:.0}/s until 1 s before the kill, publish -> Subscribe on node 0: p50 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms",
        lat.len(),
        percentile(&lat, 0.50),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "failover: slowest partitions (partition, s from the kill to an event sent after it seen live): {:?}",
        slowest
            .iter()
            .take(12)
            .map(|(p, s)| format!("{p}:{s:.2}"))
            .collect::<Vec<_>>()
    );
    let extra_stored = seen.at.keys().filter(|o| !sent.contains_key(o)).count();
    let lost = missing.max(unique.saturating_sub(stored));
    let duplicated = repeated + stored.saturating_sub(unique);
    println!(
        "exactly once: {unique} accepted, {stored} stored, the subscriber saw {} of them ({missing} missing, {repeated} repeated; {extra_stored} others from the throughput phase)",
        unique - missing
    );
    drop(agents);
    drop(rig);
    println!(
        "cluster embedded_events_per_s={embedded_eps:.0} cluster_events_per_s={cluster_eps:.0} p99_live_ms={p99:.1} failover_s={failover:.2} lost={lost} duplicated={duplicated} embedded_cpu_us_per_event={embedded_cpu:.1} cluster_cpu_us_per_event={cluster_cpu:.1}"
    );
}
