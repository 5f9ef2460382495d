//! Soak (issue 11): the real core and two agents on 127.0.0.1, durable (fsync
//! on both sides), ingest at `--rate` events/s (default 10,000) for
//! `--minutes` (default 30) with deliberate retries and duplicates, while a
//! storm of random valid and invalid requests hits every port of the core:
//!
//! - gRPC queries: ListEvents, TopItems, Search (bad queries, page tokens,
//!   huge values), GetEvent, Stats, Fleet, Subscribe opened and dropped;
//! - dashboard HTTP: pages, `/api/live`, `/search`, `/timeline` with odd
//!   ranges, bad query strings, Range headers on `/media`;
//! - malformed edge messages: garbage bytes to the gRPC, edge (TCP and UDP)
//!   and HTTP ports, truncated and oversized frames, Ingest sessions with
//!   invalid events, invalid detections and det_oid conflicts through an
//!   agent's intake.
//!
//! Meanwhile the core's RSS is sampled every second and its process watched.
//! At the end the agents are drained and every stored event is read back
//! through `ListEvents` and compared with the ground truth kept here (the
//! det_oids each intake acknowledged): lost = acknowledged but not stored,
//! duplicated = stored more than once. Exit status non-zero if the core died,
//! lost or duplicated is not 0, or the core's RSS passed [`CORE_RSS_BOUND_MB`].
//!
//! Last line: `soak minutes=<m> queries=<q> bad_requests=<b> core_rss_max_mb=<r> core_restarts=<n> lost=<l> duplicated=<d>`.
//! Run with `deploy/soak.sh [--minutes M]` (release build).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use prost::Message;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sha2::{Digest, Sha256};
use sightline_proto::v1::{
    agent_message, core_message, ingest_client::IngestClient, intake_client::IntakeClient,
    media_client::MediaClient, publish_result, AgentMessage, Batch, Detection, EdgeEvent,
    EventFilter, FleetRequest, GetEventRequest, Hello, ListEventsRequest, ListQuarantineRequest,
    MediaChunk, PublishRequest, SearchRequest, StatsRequest, SubscribeRequest, TopItemsRequest,
};
use sightline_tests::{
    data::{now_ms, write_locations},
    proc::rss_mb,
    query::client,
    Agent, AgentArgs, Core, CoreArgs, Edge,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, Semaphore},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code};

/// The bound on the core's resident memory this soak holds it to, from the
/// default configuration's caps: RocksDB memtables, all column families
/// together (`storage.memtable`, 64 MiB; before a cap each of the eleven
/// could hold 2 × 32 MiB, and the first 30-minute soak grew past this
/// bound), plus the block cache (`storage.cache`, 32 MiB), the search index
/// writer's heap (24 MB), the live hub (`live.buffer_events`, 32,768
/// events of ~0.3 KB: ≤ 10 MiB), Subscribe queues (1,024 events
/// each, the storm holds ≤ 8: < 4 MiB), the pipeline queues
/// (`pipeline.queue_batches` 16 × 2 partitions × ~50 events), index pages
/// and code (~200 MiB): ≈ 340 MiB, rounded up to 1 GiB for allocator slack.
/// A leak grows past it in minutes.
const CORE_RSS_BOUND_MB: f64 = 1024.0;

/// Locations in the generated Dataset B (one more is used, unmatched).
const LOCATIONS: i64 = 12;
/// Share of publishes that repeat an earlier detection (a retry or an
/// upstream duplicate), half of them through the other agent.
const DUP_SHARE: f64 = 0.05;
/// Publishes in flight per publisher before it waits (the rate then drops,
/// and the summary says so).
const MAX_IN_FLIGHT: usize = 64;
/// det_oids of the ground truth: publisher p's n-th event is `(p+1) << 40 | n`.
const OID_SHIFT: u32 = 40;
/// det_oids the storm sends (always invalid or conflicting): from here up.
const STORM_OID_BASE: i64 = 1 << 60;
/// Storm workers running at once (each a loop of random requests).
const STORM_WORKERS: usize = 4;
/// Pause between one storm worker's requests.
const STORM_PAUSE: Duration = Duration::from_millis(40);
/// Longest a storm request may take before it counts as hung.
const STORM_TIMEOUT: Duration = Duration::from_secs(30);

const ITEMS: [&str; 8] = [
    "person", "car", "bicycle", "backpack", "truck", "dog", "bus", "cat",
];

/// The detection whose det_oid is `oid`: every field a function of it, so a
/// stored event can be checked for being the one published.
fn detection(oid: i64) -> Detection {
    let n = oid & ((1 << OID_SHIFT) - 1);
    let loc = 1 + n % (LOCATIONS + 1);
    Detection {
        geographical_location_oid: loc,
        video_camera_oid: camera_of(oid),
        detection_oid: Some(oid),
        item_name: ITEMS[(n as usize / 13) % ITEMS.len()].into(),
        timestamp_detected: now_ms(),
        confidence: 0.5 + (n % 50) as f32 / 100.0,
        ..Default::default()
    }
}

fn camera_of(oid: i64) -> i64 {
    let n = oid & ((1 << OID_SHIFT) - 1);
    (1 + n % (LOCATIONS + 1)) * 100 + (n / 7) % 4
}

/// Minimal `--key value` parsing.
fn arg(key: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{key} takes a number")))
        .unwrap_or(default)
}

// ---------------------------------------------------------------- truth

/// What the intakes acknowledged, per publisher: bit n set = det_oid
/// `(p+1) << 40 | n` was accepted by an agent.
struct Truth {
    acked: Vec<Mutex<Vec<u64>>>,
    /// Highest n handed out per publisher.
    issued: Vec<AtomicU64>,
}

impl Truth {
    fn new(publishers: usize) -> Self {
        Self {
            acked: (0..publishers).map(|_| Mutex::new(Vec::new())).collect(),
            issued: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn ack(&self, oid: i64) {
        let (p, n) = split(oid).expect("a det_oid of the truth");
        let mut bits = self.acked[p].lock().unwrap();
        let w = (n / 64) as usize;
        if bits.len() <= w {
            bits.resize(w + 1, 0);
        }
        bits[w] |= 1 << (n % 64);
    }
    fn is_acked(&self, oid: i64) -> bool {
        let Some((p, n)) = split(oid) else {
            return false;
        };
        if p >= self.acked.len() {
            return false;
        }
        let bits = self.acked[p].lock().unwrap();
        bits.get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
    fn count(&self) -> u64 {
        self.acked
            .iter()
            .map(|b| {
                b.lock()
                    .unwrap()
                    .iter()
                    .map(|w| w.count_ones() as u64)
                    .sum::<u64>()
            })
            .sum()
    }
}

/// (publisher, n) of a truth det_oid.
fn split(oid: i64) -> Option<(usize, u64)> {
    if !(1 << OID_SHIFT..STORM_OID_BASE).contains(&oid) {
        return None;
    }
    Some((
        ((oid >> OID_SHIFT) - 1) as usize,
        (oid & ((1 << OID_SHIFT) - 1)) as u64,
    ))
}

// ---------------------------------------------------------------- counters

#[derive(Default)]
struct Counters {
    /// Storm requests sent (valid and invalid).
    queries: AtomicU64,
    /// Invalid storm requests (each answered with an error or closed).
    bad_requests: AtomicU64,
    /// Invalid requests that were answered as if valid.
    invalid_accepted: AtomicU64,
    /// Valid requests that failed (other than a documented cap).
    valid_failed: AtomicU64,
    /// Answers with an INTERNAL / UNKNOWN status or an HTTP 5xx other than 503.
    internal: AtomicU64,
    /// Requests that took longer than STORM_TIMEOUT.
    hung: AtomicU64,
    /// Answers refused by a documented cap (RESOURCE_EXHAUSTED, 503).
    capped: AtomicU64,
    /// Publishes retried after an error.
    publish_retries: AtomicU64,
    /// Detections the intake called invalid although they were valid.
    valid_refused: AtomicU64,
    /// Published events (acknowledged by an intake), duplicates included.
    published: AtomicU64,
    duplicates_sent: AtomicU64,
    conflicts_sent: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Counters {
    fn sample(&self, what: String) {
        let mut s = self.samples.lock().unwrap();
        if s.len() < 40 {
            s.push(what);
        }
    }
    fn grpc_invalid<T>(&self, what: &str, r: Result<T, tonic::Status>) {
        self.queries.fetch_add(1, Relaxed);
        self.bad_requests.fetch_add(1, Relaxed);
        match r {
            Ok(_) => {
                self.invalid_accepted.fetch_add(1, Relaxed);
                self.sample(format!("invalid accepted: {what}"));
            }
            Err(s) => self.status(what, &s),
        }
    }
    fn grpc_valid<T>(&self, what: &str, r: Result<T, tonic::Status>) -> Option<T> {
        self.queries.fetch_add(1, Relaxed);
        match r {
            Ok(v) => Some(v),
            Err(s) => {
                if !matches!(s.code(), Code::ResourceExhausted | Code::NotFound) {
                    self.valid_failed.fetch_add(1, Relaxed);
                    self.sample(format!(
                        "valid failed: {what}: {:?} {}",
                        s.code(),
                        s.message()
                    ));
                }
                self.status(what, &s);
                None
            }
        }
    }
    /// Any answer is fine but an internal error.
    fn grpc_odd<T>(&self, what: &str, r: Result<T, tonic::Status>) {
        self.queries.fetch_add(1, Relaxed);
        if let Err(s) = r {
            self.status(what, &s);
        }
    }
    fn status(&self, what: &str, s: &tonic::Status) {
        match s.code() {
            Code::Internal | Code::Unknown | Code::DataLoss => {
                self.internal.fetch_add(1, Relaxed);
                self.sample(format!("internal: {what}: {:?} {}", s.code(), s.message()));
            }
            Code::ResourceExhausted => {
                self.capped.fetch_add(1, Relaxed);
            }
            Code::DeadlineExceeded => {
                self.hung.fetch_add(1, Relaxed);
                self.sample(format!("timed out: {what}"));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------- publishers

struct Publisher {
    id: usize,
    truth: Arc<Truth>,
    counters: Arc<Counters>,
    intakes: Vec<IntakeClient<Channel>>,
    home: usize,
    recent: Vec<i64>,
    rng: StdRng,
}

impl Publisher {
    fn next_oid(&self) -> i64 {
        let n = self.truth.issued[self.id].fetch_add(1, Relaxed) + 1;
        ((self.id as i64 + 1) << OID_SHIFT) | n as i64
    }

    /// One tick: `n` events to the home agent, repeats of recent ones mixed
    /// in (some through the other agent).
    fn tick(&mut self, n: usize) -> Vec<(usize, Vec<Detection>)> {
        let mut home = Vec::with_capacity(n);
        let mut other = Vec::new();
        for _ in 0..n {
            if !self.recent.is_empty() && self.rng.random::<f64>() < DUP_SHARE {
                let oid = self.recent[self.rng.random_range(0..self.recent.len())];
                self.counters.duplicates_sent.fetch_add(1, Relaxed);
                if self.rng.random::<bool>() {
                    other.push(detection(oid));
                } else {
                    home.push(detection(oid));
                }
                continue;
            }
            let oid = self.next_oid();
            if self.recent.len() < 4096 {
                self.recent.push(oid);
            } else {
                let i = self.rng.random_range(0..4096);
                self.recent[i] = oid;
            }
            home.push(detection(oid));
        }
        let mut out = vec![(self.home, home)];
        if !other.is_empty() {
            out.push(((self.home + 1) % self.intakes.len(), other));
        }
        out
    }
}

/// Publishes until acknowledged (each failure is a deliberate retry of the
/// same detections, which the core must store once).
async fn publish(
    mut c: IntakeClient<Channel>,
    dets: Vec<Detection>,
    truth: Arc<Truth>,
    counters: Arc<Counters>,
) {
    let mut wait = Duration::from_millis(20);
    loop {
        match c
            .publish(PublishRequest {
                detections: dets.clone(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                for (d, res) in dets.iter().zip(r.results) {
                    match res.result {
                        Some(publish_result::Result::Accepted(a)) => {
                            assert_eq!(Some(a.detection_oid), d.detection_oid);
                            truth.ack(a.detection_oid);
                        }
                        other => {
                            counters.valid_refused.fetch_add(1, Relaxed);
                            counters.sample(format!("valid detection refused: {other:?}"));
                        }
                    }
                }
                counters.published.fetch_add(dets.len() as u64, Relaxed);
                return;
            }
            Err(s) => {
                counters.publish_retries.fetch_add(1, Relaxed);
                if s.code() != Code::ResourceExhausted {
                    counters.sample(format!(
                        "publish failed, retried: {:?} {}",
                        s.code(),
                        s.message()
                    ));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

// ---------------------------------------------------------------- storm

struct Storm {
    url: String,
    http: SocketAddr,
    grpc: SocketAddr,
    edge: SocketAddr,
    intakes: Vec<String>,
    media_sha: Option<String>,
    truth: Arc<Truth>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// det_oids of the truth already read back (for GetEvent and conflicts).
    seen: Arc<Mutex<Vec<i64>>>,
}

fn random_string(rng: &mut StdRng, len: usize) -> String {
    (0..len)
        .map(|_| char::from_u32(rng.random_range(0x20..0x3000)).unwrap_or('?'))
        .collect()
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

/// A query nested `depth` parentheses deep.
fn nested(depth: usize) -> String {
    format!("{}car{}", "(".repeat(depth), ")".repeat(depth))
}

impl Storm {
    async fn run(self: Arc<Self>, worker: usize) {
        let mut rng = StdRng::seed_from_u64(7_000 + worker as u64);
        let q = client(&self.url).await;
        while !self.stop.load(Relaxed) {
            let kind = rng.random_range(0..100);
            let c = self.counters.clone();
            let what = format!("storm kind {kind}");
            let fut =
                self.clone()
                    .one(worker, kind, q.clone(), StdRng::seed_from_u64(rng.random()));
            if tokio::time::timeout(STORM_TIMEOUT, fut).await.is_err() {
                c.hung.fetch_add(1, Relaxed);
                c.sample(format!("hung > {STORM_TIMEOUT:?}: {what}"));
            }
            tokio::time::sleep(STORM_PAUSE).await;
        }
    }

    async fn one(
        self: Arc<Self>,
        worker: usize,
        kind: u32,
        mut q: sightline_tests::query::Client,
        mut rng: StdRng,
    ) {
        let c = &self.counters;
        let now = now_ms();
        match kind {
            // ---- gRPC queries, valid ----
            0..=5 => {
                let from = now - rng.random_range(0..3_600_000);
                let r = q
                    .list_events(ListEventsRequest {
                        from_ms: from,
                        to_ms: now,
                        filter: rng.random::<bool>().then(|| EventFilter {
                            geographical_location_oid: Some(rng.random_range(1..=LOCATIONS + 1)),
                            video_camera_oid: None,
                            item_name: Some(ITEMS[rng.random_range(0..ITEMS.len())].into()),
                        }),
                        page_size: rng.random_range(0..=1000),
                        page_token: String::new(),
                    })
                    .await;
                if let Some(r) = c.grpc_valid("ListEvents", r) {
                    let r = r.into_inner();
                    // The next page too, by the cursor given.
                    if !r.next_page_token.is_empty() {
                        let r2 = q
                            .list_events(ListEventsRequest {
                                from_ms: from,
                                to_ms: now,
                                filter: None,
                                page_size: 100,
                                page_token: r.next_page_token,
                            })
                            .await;
                        c.grpc_odd("ListEvents next page", r2);
                    }
                    let mut seen = self.seen.lock().unwrap();
                    for e in r.events.iter().take(5) {
                        let oid = e
                            .detection
                            .as_ref()
                            .and_then(|d| d.detection_oid)
                            .unwrap_or(0);
                        if self.truth.is_acked(oid) && seen.len() < 100_000 {
                            seen.push(oid);
                        }
                    }
                }
            }
            6..=10 => {
                let span = [60_000, 3_600_000, 86_400_000][rng.random_range(0..3)];
                let r = q
                    .top_items(TopItemsRequest {
                        from_ms: now - span,
                        to_ms: now,
                        x: rng.random_range(1..=10),
                        geographical_location_oid: rng
                            .random::<bool>()
                            .then(|| rng.random_range(1..=LOCATIONS + 1)),
                    })
                    .await;
                c.grpc_valid("TopItems", r);
            }
            11..=15 => {
                let query = match rng.random_range(0..5) {
                    0 => "car".to_string(),
                    1 => "person OR dog".to_string(),
                    2 => format!("item:{}", ITEMS[rng.random_range(0..ITEMS.len())]),
                    3 => "bicycle AND NOT truck".to_string(),
                    _ => String::new(),
                };
                let r = q
                    .search(SearchRequest {
                        query: query.clone(),
                        from_ms: now - 600_000,
                        to_ms: now,
                        page_size: rng.random_range(1..=50),
                        ..Default::default()
                    })
                    .await;
                if let Some(r) = c.grpc_valid(&format!("Search {query:?}"), r) {
                    let t = r.into_inner().next_page_token;
                    if !t.is_empty() {
                        let r = q
                            .search(SearchRequest {
                                query,
                                from_ms: now - 600_000,
                                to_ms: now,
                                page_size: 50,
                                page_token: t,
                                ..Default::default()
                            })
                            .await;
                        c.grpc_valid("Search next page", r);
                    }
                }
            }
            16..=18 => {
                let oid = {
                    let seen = self.seen.lock().unwrap();
                    (!seen.is_empty()).then(|| seen[rng.random_range(0..seen.len())])
                };
                if let Some(oid) = oid {
                    let r = q.get_event(GetEventRequest { detection_oid: oid }).await;
                    if let Some(e) = c.grpc_valid("GetEvent stored", r) {
                        let cam = e.into_inner().detection.map(|d| d.video_camera_oid);
                        if cam != Some(camera_of(oid)) {
                            c.sample(format!(
                                "GetEvent {oid}: camera {cam:?}, published {}",
                                camera_of(oid)
                            ));
                        }
                    }
                }
                // One that does not exist: NOT_FOUND.
                let r = q
                    .get_event(GetEventRequest {
                        detection_oid: rng.random_range(1..1 << 39),
                    })
                    .await;
                c.grpc_odd("GetEvent unknown", r);
            }
            19..=21 => {
                let r = q.stats(StatsRequest {}).await;
                c.grpc_valid("Stats", r);
                let r = q.fleet(FleetRequest {}).await;
                c.grpc_valid("Fleet", r);
                let r = q
                    .list_quarantine(ListQuarantineRequest {
                        page_size: rng.random_range(0..=100),
                        page_token: String::new(),
                    })
                    .await;
                c.grpc_valid("ListQuarantine", r);
            }
            22..=25 => {
                // Subscribe opened, a few events read, dropped.
                let from_ms = match rng.random_range(0..4) {
                    0 => 0,
                    1 => now - 60_000,
                    2 => now - rng.random_range(0..3_600_000),
                    _ => now,
                };
                let r = q
                    .subscribe(SubscribeRequest {
                        from_ms,
                        filter: None,
                    })
                    .await;
                if let Some(s) = c.grpc_valid("Subscribe", r) {
                    let mut s = s.into_inner();
                    let n = rng.random_range(0..200);
                    let deadline = tokio::time::sleep(Duration::from_secs(2));
                    tokio::pin!(deadline);
                    for _ in 0..n {
                        tokio::select! {
                            m = s.next() => match m {
                                Some(Ok(_)) => {}
                                Some(Err(e)) => { c.status("Subscribe stream", &e); break; }
                                None => break,
                            },
                            _ = &mut deadline => break,
                        }
                    }
                }
            }
            // ---- gRPC queries, invalid ----
            26..=29 => {
                let r = q
                    .list_events(ListEventsRequest {
                        page_size: rng.random_range(10_001..=u32::MAX),
                        ..Default::default()
                    })
                    .await;
                c.grpc_invalid("ListEvents huge page_size", r);
                let token = match rng.random_range(0..4) {
                    0 => random_string(&mut rng, 20),
                    1 => "é".repeat(rng.random_range(1..100)),
                    2 => "A".repeat(rng.random_range(1000..20_000)),
                    _ => "!!!notatoken".into(),
                };
                let r = q
                    .list_events(ListEventsRequest {
                        page_size: 10,
                        page_token: token,
                        ..Default::default()
                    })
                    .await;
                c.grpc_invalid("ListEvents bad page_token", r);
                let r = q
                    .list_events(ListEventsRequest {
                        from_ms: now,
                        to_ms: now - 1,
                        ..Default::default()
                    })
                    .await;
                c.grpc_odd("ListEvents from > to", r);
            }
            30..=35 => {
                let (query, why) = match rng.random_range(0..6) {
                    0 => (nested(rng.random_range(17..5000)), "nested"),
                    1 => ("x".repeat(rng.random_range(1025..100_000)), "long"),
                    2 => ("item:(car".into(), "unbalanced"),
                    3 => ("AND OR NOT ((".into(), "operators"),
                    4 => (random_string(&mut rng, 64), "random"),
                    _ => ("\"unterminated".into(), "quote"),
                };
                let r = q
                    .search(SearchRequest {
                        query: query.clone(),
                        page_size: rng.random_range(0..200),
                        ..Default::default()
                    })
                    .await;
                // Random text and odd syntax may be read as plain words.
                if matches!(why, "nested" | "long") {
                    c.grpc_invalid(&format!("Search {why}"), r);
                } else {
                    c.grpc_odd(&format!("Search {why}"), r);
                }
                let token = match rng.random_range(0..3) {
                    0 => "é€".into(),
                    1 => random_string(&mut rng, 40),
                    _ => "9".repeat(rng.random_range(10..400)),
                };
                let r = q
                    .search(SearchRequest {
                        query: "car".into(),
                        page_size: 10,
                        page_token: token,
                        ..Default::default()
                    })
                    .await;
                c.grpc_invalid("Search bad page_token", r);
                let r = q
                    .search(SearchRequest {
                        query: "car".into(),
                        page_size: rng.random_range(1_000..u32::MAX),
                        ..Default::default()
                    })
                    .await;
                c.grpc_invalid("Search huge page_size", r);
            }
            36..=38 => {
                let r = q
                    .top_items(TopItemsRequest {
                        from_ms: rng.random(),
                        to_ms: rng.random(),
                        x: rng.random(),
                        geographical_location_oid: rng.random::<bool>().then(|| rng.random()),
                    })
                    .await;
                c.grpc_odd("TopItems random values", r);
                let r = q
                    .top_items(TopItemsRequest {
                        from_ms: 0,
                        to_ms: i64::MAX,
                        x: u32::MAX,
                        geographical_location_oid: None,
                    })
                    .await;
                c.grpc_odd("TopItems huge", r);
                let r = q
                    .get_event(GetEventRequest {
                        detection_oid: -rng.random_range(0..i64::MAX),
                    })
                    .await;
                c.grpc_invalid("GetEvent non-positive", r);
            }
            39..=40 => {
                let r = q
                    .subscribe(SubscribeRequest {
                        from_ms: rng.random_range(i64::MIN..0),
                        filter: Some(EventFilter {
                            item_name: Some("z".repeat(rng.random_range(1..10_000))),
                            ..Default::default()
                        }),
                    })
                    .await;
                c.grpc_odd("Subscribe odd", r.map(|_| ()));
                let r = q
                    .list_quarantine(ListQuarantineRequest {
                        page_size: 10,
                        page_token: random_string(&mut rng, 30),
                    })
                    .await;
                c.grpc_invalid("ListQuarantine bad page_token", r);
            }
            // ---- dashboard HTTP ----
            41..=55 => {
                let path = self.http_path(&mut rng, now);
                let headers = if path.starts_with("/media/") {
                    range_header(&mut rng)
                } else {
                    String::new()
                };
                let live = path == "/api/live";
                self.http_one(&path, &headers, live).await;
            }
            56..=60 => {
                let (path, headers) = bad_http(&mut rng);
                c.queries.fetch_add(1, Relaxed);
                c.bad_requests.fetch_add(1, Relaxed);
                let status = http_status(self.http, &path, &headers, false).await;
                match status {
                    Some(s) if (400..500).contains(&s) || s == 503 => {}
                    Some(s) if s >= 500 => {
                        c.internal.fetch_add(1, Relaxed);
                        c.sample(format!("HTTP {s} for bad {path:?}"));
                    }
                    // Some odd paths are still pages (a 200 that says "nothing").
                    _ => {}
                }
            }
            // ---- malformed edge messages ----
            61..=68 => self.garbage(&mut rng).await,
            69..=76 => self.bad_ingest_session(worker, &mut rng).await,
            77..=84 => self.bad_intake(&mut rng).await,
            85..=87 => self.conflict(&mut rng).await,
            _ => {
                // Valid, cheap: the live page and health.
                let path = ["/", "/healthz", "/fleet", "/top"][rng.random_range(0..4)];
                self.http_one(path, "", false).await;
            }
        }
    }

    fn http_path(&self, rng: &mut StdRng, now: i64) -> String {
        let media = self.media_sha.clone().unwrap_or_else(|| "0".repeat(64));
        match rng.random_range(0..14) {
            0 => "/".into(),
            1 => format!(
                "/top?range={}",
                ["5m", "1h", "24h", "7d"][rng.random_range(0..4)]
            ),
            2 => "/api/live".into(),
            3 => format!(
                "/search?q={}",
                ["car", "person+OR+dog", "item%3Abus", ""][rng.random_range(0..4)]
            ),
            4 => format!(
                "/timeline?range=custom&from={}&to={}",
                ["0", "1970-01-01", "2026-11-30 00:00:00", "-5"][rng.random_range(0..4)],
                ["99999999999999", "2999-01-01", "now", "1"][rng.random_range(0..4)]
            ),
            5 => format!(
                "/timeline?range=1h&by={}",
                ["item", "location", "x"][rng.random_range(0..3)]
            ),
            6 => format!("/event/{}", rng.random_range(-5..1i64 << 41)),
            7 => "/fleet".into(),
            8 => format!("/quarantine?page={}", rng.random_range(0..5)),
            9 | 10 => format!("/media/{media}"),
            11 => "/metrics".into(),
            12 => format!("/search?q=car&page={}", rng.random_range(0..1000)),
            _ => format!(
                "/top?range=custom&from={}&to={}&x={}",
                now - 3_600_000,
                now,
                rng.random_range(0..200)
            ),
        }
    }

    async fn http_one(&self, path: &str, headers: &str, live: bool) {
        let c = &self.counters;
        c.queries.fetch_add(1, Relaxed);
        match http_status(self.http, path, headers, live).await {
            Some(503) => {
                c.capped.fetch_add(1, Relaxed);
            }
            Some(s) if s >= 500 => {
                c.internal.fetch_add(1, Relaxed);
                c.sample(format!("HTTP {s} for {path:?} {headers:?}"));
            }
            Some(_) => {}
            None => {
                c.valid_failed.fetch_add(1, Relaxed);
                c.sample(format!("HTTP no answer for {path:?}"));
            }
        }
    }

    /// Raw garbage to a port, or a truncated / oversized frame.
    async fn garbage(&self, rng: &mut StdRng) {
        let c = &self.counters;
        c.queries.fetch_add(1, Relaxed);
        c.bad_requests.fetch_add(1, Relaxed);
        let tcp_target = [self.grpc, self.edge, self.http][rng.random_range(0..3)];
        let bytes: Vec<u8> = match rng.random_range(0..8) {
            0 => {
                let n = rng.random_range(1..65_536);
                random_bytes(rng, n)
            }
            // HTTP/2 preface, then a frame header cut short.
            1 => [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &[0, 0, 18, 4, 0]].concat(),
            // Preface + a DATA frame claiming 16 MiB on stream 1 + a few bytes.
            2 => [
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
                &[0, 0, 0, 4, 0, 0, 0, 0, 0],
                &[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1],
                &random_bytes(rng, 1000),
            ]
            .concat(),
            // A TLS ClientHello record header promising more than it sends.
            3 => vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc, 0x03, 0x03],
            // A TLS record of the largest length, random body.
            4 => [&[0x16u8, 0x03, 0x03, 0xff, 0xff][..], &random_bytes(rng, 4096)].concat(),
            // A gRPC length prefix claiming 4 GiB, on HTTP/1.
            5 => b"POST /sightline.v1.Query/Stats HTTP/1.1\r\nContent-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\x00\xff\xff\xff\xff".to_vec(),
            6 => Vec::new(), // connect and close at once
            _ => {
                // UDP to the QUIC port: random datagrams, and a long-header
                // Initial cut short.
                if let Ok(s) = tokio::net::UdpSocket::bind("127.0.0.1:0").await {
                    for _ in 0..rng.random_range(1..20) {
                        let n = rng.random_range(1..1500);
                        let mut d = random_bytes(rng, n);
                        if rng.random::<bool>() {
                            d[0] = 0xc3;
                            d.truncate(20);
                        }
                        let _ = s.send_to(&d, self.edge).await;
                    }
                }
                return;
            }
        };
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(tcp_target),
        )
        .await
        else {
            c.sample(format!("cannot connect to {tcp_target}"));
            return;
        };
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        // The core answers or closes; it does not keep the connection.
        let mut sink = vec![0u8; 65_536];
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if closed.is_err() {
            c.sample(format!(
                "garbage connection to {tcp_target} held open > 20 s"
            ));
        }
    }

    /// An Ingest session (plaintext gRPC, a claimed agent id) that sends
    /// events none of which may be stored, or breaks the protocol.
    async fn bad_ingest_session(&self, worker: usize, rng: &mut StdRng) {
        let c = &self.counters;
        c.queries.fetch_add(1, Relaxed);
        c.bad_requests.fetch_add(1, Relaxed);
        let Ok(ingest) = IngestClient::connect(self.url.clone()).await else {
            c.sample("Ingest: cannot connect".into());
            return;
        };
        let mut ingest = ingest.max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(4);
        let mode = rng.random_range(0..10);
        let hello = |id: String| AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                agent_id: id,
                epoch: 1,
                ..Default::default()
            })),
        };
        let first = match mode {
            // A batch before any hello.
            0 => AgentMessage {
                msg: Some(agent_message::Msg::Batch(Batch {
                    first_seq: 1,
                    events: vec![vec![1, 2, 3].into()],
                    ..Default::default()
                })),
            },
            // A hello naming no one, or too long a name.
            1 => hello(if rng.random::<bool>() {
                String::new()
            } else {
                "a".repeat(rng.random_range(65..5000))
            }),
            // One id per storm worker: its sessions never overlap.
            _ => hello(format!("storm-{worker}")),
        };
        let _ = tx.send(first).await;
        let Ok(resp) = ingest.session(ReceiverStream::new(rx)).await else {
            return; // refused at once: an error, as it should
        };
        let mut inbound = resp.into_inner();
        if mode < 2 {
            match inbound.next().await {
                Some(Ok(_)) => {
                    c.invalid_accepted.fetch_add(1, Relaxed);
                    c.sample(format!("Ingest: a bad start (mode {mode}) was welcomed"));
                }
                Some(Err(s)) => c.status("Ingest bad start", &s),
                None => {}
            }
            return;
        }
        let resume_from = match inbound.next().await {
            Some(Ok(m)) => match m.msg {
                Some(core_message::Msg::Welcome(w)) => w.resume_from.max(1),
                _ => return,
            },
            Some(Err(s)) => {
                c.status("Ingest hello", &s);
                return;
            }
            None => return,
        };
        if mode == 2 {
            // Over ingest.max_message_bytes: the session ends with an error.
            let blob = bytes::Bytes::from(vec![0u8; 9 * 1024 * 1024]);
            let _ = tx
                .send(AgentMessage {
                    msg: Some(agent_message::Msg::Batch(Batch {
                        first_seq: resume_from,
                        events: vec![blob],
                        ..Default::default()
                    })),
                })
                .await;
            if let Some(Ok(_)) = inbound.next().await {
                c.invalid_accepted.fetch_add(1, Relaxed);
                c.sample("Ingest: a 9 MiB batch was acknowledged".into());
            }
            return;
        }
        // Events that must all be refused: garbage, cut-off encodings, and
        // invalid detections (empty item name, confidence out of range,
        // no det_oid), each with a det_oid of the storm's range.
        let now = now_ms();
        let n = rng.random_range(1..50);
        let events: Vec<bytes::Bytes> = (0..n)
            .map(|i| {
                let oid = STORM_OID_BASE + rng.random_range(0..1i64 << 40);
                let mut d = detection(oid);
                match rng.random_range(0..4) {
                    0 => d.item_name.clear(),
                    1 => d.confidence = 7.0,
                    2 => d.detection_oid = None,
                    _ => d.timestamp_detected = now + 86_400_000,
                }
                let ev = EdgeEvent {
                    seq: resume_from + i,
                    detection: Some(d),
                    accepted_ms: now,
                }
                .encode_to_vec();
                match rng.random_range(0..3) {
                    0 => {
                        let n = rng.random_range(0..300);
                        random_bytes(rng, n).into()
                    }
                    1 => {
                        let cut = rng.random_range(0..ev.len());
                        ev[..cut].to_vec().into()
                    }
                    _ => ev.into(),
                }
            })
            .collect();
        let _ = tx
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Batch(Batch {
                    first_seq: resume_from,
                    events,
                    ..Default::default()
                })),
            })
            .await;
        match tokio::time::timeout(Duration::from_secs(20), inbound.next()).await {
            Ok(Some(Ok(m))) => {
                if let Some(core_message::Msg::Ack(a)) = m.msg {
                    let refused = a.rejected.len() as u64;
                    if refused != n {
                        c.invalid_accepted
                            .fetch_add(n.saturating_sub(refused), Relaxed);
                        c.sample(format!(
                            "Ingest: {refused} of {n} invalid events rejected ({} counted as transport duplicates, committed through {}, first seq {resume_from})",
                            a.duplicates, a.committed_through
                        ));
                    }
                }
            }
            Ok(Some(Err(s))) => c.status("Ingest batch", &s),
            Ok(None) => {}
            Err(_) => {
                c.hung.fetch_add(1, Relaxed);
                c.sample("Ingest: no ack in 20 s".into());
            }
        }
    }

    /// Invalid detections through an agent's intake: each answered Invalid.
    async fn bad_intake(&self, rng: &mut StdRng) {
        let c = &self.counters;
        c.queries.fetch_add(1, Relaxed);
        c.bad_requests.fetch_add(1, Relaxed);
        let url = self.intakes[rng.random_range(0..self.intakes.len())].clone();
        let Ok(client) = IntakeClient::connect(url).await else {
            c.sample("intake: cannot connect".into());
            return;
        };
        let mut client = client.max_encoding_message_size(64 * 1024 * 1024);
        if rng.random_range(0..20) == 0 {
            // More detections in one call than the intake takes.
            let dets = vec![detection(STORM_OID_BASE); 10_001];
            let r = client.publish(PublishRequest { detections: dets }).await;
            match r {
                Ok(_) => {
                    c.invalid_accepted.fetch_add(1, Relaxed);
                    c.sample("intake: 10,001 detections in one call were accepted".into());
                }
                Err(s) => c.status("intake too many", &s),
            }
            return;
        }
        let n = rng.random_range(1..20);
        let dets: Vec<Detection> = (0..n)
            .map(|_| {
                let oid = STORM_OID_BASE + rng.random_range(0..1i64 << 40);
                let mut d = detection(oid);
                match rng.random_range(0..9) {
                    0 => d.item_name.clear(),
                    1 => d.item_name = "x".repeat(129),
                    2 => d.item_name = "bus\u{7}".into(),
                    3 => d.confidence = f32::NAN,
                    4 => d.geographical_location_oid = -rng.random_range(0..1000),
                    5 => d.video_camera_oid = 0,
                    6 => d.detection_oid = Some(-rng.random_range(0..i64::MAX)),
                    7 => d.timestamp_detected = now_ms() + 3_600_000,
                    _ => {
                        d.media_expected = (0..9).map(|i| format!("k{i}")).collect();
                    }
                }
                d
            })
            .collect();
        match client.publish(PublishRequest { detections: dets }).await {
            Ok(r) => {
                let accepted = r
                    .into_inner()
                    .results
                    .iter()
                    .filter(|r| matches!(r.result, Some(publish_result::Result::Accepted(_))))
                    .count();
                if accepted > 0 {
                    c.invalid_accepted.fetch_add(accepted as u64, Relaxed);
                    c.sample(format!("intake accepted {accepted} invalid detections"));
                }
            }
            Err(s) => c.status("intake invalid", &s),
        }
    }

    /// A det_oid already stored, published again for another camera: a
    /// conflict the core quarantines; the stored event must stay as it was.
    async fn conflict(&self, rng: &mut StdRng) {
        let c = &self.counters;
        let oid = {
            let seen = self.seen.lock().unwrap();
            if seen.is_empty() {
                return;
            }
            seen[rng.random_range(0..seen.len())]
        };
        c.queries.fetch_add(1, Relaxed);
        c.bad_requests.fetch_add(1, Relaxed);
        let url = self.intakes[rng.random_range(0..self.intakes.len())].clone();
        let Ok(mut client) = IntakeClient::connect(url).await else {
            return;
        };
        let mut d = detection(oid);
        d.video_camera_oid += 1_000_000;
        if client
            .publish(PublishRequest {
                detections: vec![d],
            })
            .await
            .is_ok()
        {
            c.conflicts_sent.fetch_add(1, Relaxed);
        }
    }
}

fn range_header(rng: &mut StdRng) -> String {
    let r = match rng.random_range(0..9) {
        0 => "bytes=0-10".to_string(),
        1 => "bytes=-5".into(),
        2 => "bytes=999999999-".into(),
        3 => "bytes=5-2".into(),
        4 => "bytes=abc".into(),
        5 => "bytes=0-1,2-3,4-5,6-7".into(),
        6 => format!("bytes={}-{}", rng.random::<u64>(), rng.random::<u64>()),
        7 => "items=0-1".into(),
        _ => "bytes=0-".into(),
    };
    format!("Range: {r}\r\n")
}

/// A request the dashboard must refuse (or answer harmlessly), and headers.
fn bad_http(rng: &mut StdRng) -> (String, String) {
    match rng.random_range(0..10) {
        0 => ("/search?q=%ZZ%".into(), String::new()),
        1 => (
            format!("/search?q={}", "(".repeat(rng.random_range(17..3000))),
            String::new(),
        ),
        2 => (
            "/timeline?range=custom&from=0&to=99999999999999999999999".into(),
            String::new(),
        ),
        3 => ("/timeline?range=%00%ff&by=%fe".into(), String::new()),
        4 => (format!("/top?x={}", "9".repeat(40)), String::new()),
        5 => ("/media/../../etc/passwd".into(), String::new()),
        6 => ("/media/xyz".into(), "Range: bytes=0-1\r\n".into()),
        7 => (
            format!("/search?q=car&page={}", "9".repeat(30)),
            String::new(),
        ),
        8 => (
            format!("/quarantine?page={}", "é".repeat(50)),
            String::new(),
        ),
        _ => (
            "/".into(),
            format!(
                "X-Junk: {}\r\n",
                "a".repeat(rng.random_range(10_000..200_000))
            ),
        ),
    }
}

/// `GET path` on a new connection: the status code, or None if the server
/// did not answer within 20 s. With `live`, only the head is read (a feed
/// that never ends), a little of the body, then the connection is dropped.
async fn http_status(addr: SocketAddr, path: &str, headers: &str, live: bool) -> Option<u16> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        // Every page and API needs a credential: the core's admin token,
        // unless the request brings its own (or is about to be refused).
        let auth = match sightline_tests::proc::admin_token_for(&addr.to_string()) {
            Some(t) if !headers.to_ascii_lowercase().contains("authorization:") => {
                format!("Authorization: Bearer {t}\r\n")
            }
            _ => String::new(),
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{headers}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 65_536];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if live && buf.len() > 12 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        break;
                    }
                }
            }
        }
        let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(20), go)
        .await
        .ok()
        .flatten()
}

/// One JPEG uploaded over `sightline.v1.Media`, so `/media/<sha>` has bytes
/// to serve ranges of.
async fn upload_jpeg(url: &str) -> Option<String> {
    let img = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([x as u8, y as u8, 77]));
    let mut jpg = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .ok()?;
    let sha: String = Sha256::digest(&jpg)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut c = MediaClient::connect(url.to_string()).await.ok()?;
    let chunk = MediaChunk {
        sha256: sha.clone(),
        offset: 0,
        data: jpg.clone().into(),
        total_size: jpg.len() as u64,
        kind: "snapshot".into(),
        content_type: "image/jpeg".into(),
        last: true,
        agent_id: "soak-0".into(),
    };
    match c.upload(tokio_stream::iter(vec![chunk])).await {
        Ok(_) => Some(sha),
        Err(e) => {
            println!(
                "note: the JPEG upload was refused ({e}); /media ranges go to an unknown object"
            );
            None
        }
    }
}

// ---------------------------------------------------------------- process watch

/// (VmRSS, RssAnon) of a process in MiB, and whether it is alive (not a zombie).
fn proc_status(pid: u32) -> (f64, f64, bool) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0.0, 0.0, false);
    };
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let zombie = status
        .lines()
        .filter_map(|l| l.strip_prefix("State:"))
        .any(|l| matches!(l.split_whitespace().next(), Some("Z" | "X")));
    (kb("VmRSS:"), kb("RssAnon:"), !zombie)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() {
    let minutes = arg("--minutes", 30.0);
    let rate = arg("--rate", 10_000.0);
    let agents_n = (arg("--agents", 2.0) as usize).max(2);
    let publishers = agents_n * 2;
    let publish_for = Duration::from_secs_f64(minutes * 60.0);

    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("SIGHTLINE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let b = dir.join("locations.csv");
    write_locations(&b, &(1..=LOCATIONS).collect::<Vec<_>>());
    let core = Core::start_with(CoreArgs {
        data_dir: dir.join("core"),
        locations: Some(b),
        grpc: "127.0.0.1:0".parse().unwrap(),
        edge: "127.0.0.1:0".parse().unwrap(),
        extra: vec![],
    });
    let core_pid = core.pid();
    let agents: Vec<Agent> = (0..agents_n)
        .map(|i| {
            // Over the edge link with mutual TLS, alternately gRPC and QUIC.
            let edge = if i % 2 == 0 { Edge::Grpc } else { Edge::Quic };
            Agent::start(
                AgentArgs::intake(&dir, &format!("soak-{i}"), core.url()).over(&core, edge),
            )
        })
        .collect();
    let url = core.url();
    println!(
        "setup: core (pid {core_pid}) + {agents_n} agents (mutual TLS; gRPC, QUIC alternately), durable (fsync), {rate:.0} events/s for {minutes} min, \
         {:.0}% repeats (half through the other agent); storm: {STORM_WORKERS} workers; RSS bound {CORE_RSS_BOUND_MB:.0} MiB; \
         load {}; data in {}",
        DUP_SHARE * 100.0,
        load(),
        dir.display()
    );

    let truth = Arc::new(Truth::new(publishers));
    let counters = Arc::new(Counters::default());
    let stop_publish = Arc::new(AtomicBool::new(false));
    let stop_storm = Arc::new(AtomicBool::new(false));

    // ---- process watch: RSS every second, the pid ----
    let rss_max = Arc::new(Mutex::new((0.0f64, 0.0f64, 0.0f64)));
    let core_deaths = Arc::new(AtomicU64::new(0));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let agent_pids: Vec<u32> = agents.iter().map(|a| a.pid()).collect();
    let watch = {
        let (rss_max, deaths, stop) = (rss_max.clone(), core_deaths.clone(), watch_stop.clone());
        tokio::spawn(async move {
            let mut dead = false;
            while !stop.load(Relaxed) {
                let (rss, anon, alive) = proc_status(core_pid);
                if !alive && !dead {
                    dead = true;
                    deaths.fetch_add(1, Relaxed);
                    println!("THE CORE (pid {core_pid}) DIED");
                }
                let agent = agent_pids.iter().map(|p| rss_mb(*p)).fold(0.0, f64::max);
                {
                    let mut m = rss_max.lock().unwrap();
                    m.0 = m.0.max(rss);
                    m.1 = m.1.max(anon);
                    m.2 = m.2.max(agent);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // ---- publishers ----
    let intake_urls: Vec<String> = agents.iter().map(|a| a.intake_url()).collect();
    let mut intakes = Vec::new();
    for u in &intake_urls {
        intakes.push(IntakeClient::connect(u.clone()).await.unwrap());
    }
    let tick = Duration::from_millis(10);
    let per_tick = (rate * tick.as_secs_f64() / publishers as f64)
        .round()
        .max(1.0) as usize;
    let t0 = Instant::now();
    let mut pub_tasks = Vec::new();
    for p in 0..publishers {
        let mut publ = Publisher {
            id: p,
            truth: truth.clone(),
            counters: counters.clone(),
            intakes: intakes.clone(),
            home: p % agents_n,
            recent: Vec::new(),
            rng: StdRng::seed_from_u64(100 + p as u64),
        };
        let stop = stop_publish.clone();
        pub_tasks.push(tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Relaxed) {
                interval.tick().await;
                for (agent, dets) in publ.tick(per_tick) {
                    let slot = slots.clone().acquire_owned().await.unwrap();
                    let (c, t, k) = (
                        publ.intakes[agent].clone(),
                        publ.truth.clone(),
                        publ.counters.clone(),
                    );
                    tokio::spawn(async move {
                        publish(c, dets, t, k).await;
                        drop(slot);
                    });
                }
            }
            // Every publish answered (acknowledged) before the count is final.
            let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await.unwrap();
        }));
    }

    // ---- storm ----
    let media_sha = upload_jpeg(&url).await;
    let storm = Arc::new(Storm {
        url: url.clone(),
        http: core.http,
        grpc: core.grpc,
        edge: core.edge,
        intakes: intake_urls.clone(),
        media_sha,
        truth: truth.clone(),
        counters: counters.clone(),
        stop: stop_storm.clone(),
        seen: Arc::new(Mutex::new(Vec::new())),
    });
    let storm_tasks: Vec<_> = (0..STORM_WORKERS)
        .map(|w| tokio::spawn(storm.clone().run(w)))
        .collect();

    // ---- progress, once a minute ----
    let mut q = client(&url).await;
    let mut last = (Instant::now(), 0u64);
    let mut next_report = Duration::from_secs(60);
    while t0.elapsed() < publish_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if core_deaths.load(Relaxed) > 0 {
            break;
        }
        if t0.elapsed() >= next_report || t0.elapsed() >= publish_for {
            next_report += Duration::from_secs(60);
            let published = counters.published.load(Relaxed);
            let rate_now = (published - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), published);
            let st = q.stats(StatsRequest {}).await.map(|r| r.into_inner());
            let (rss, anon, _) = proc_status(core_pid);
            println!(
                "t={:>4.0}s published={published} ({rate_now:.0}/s) stored={} dup_semantic={} rejected={} core_rss_mb={rss:.0} (anon {anon:.0}) \
                 queries={} bad={} capped={} internal={} valid_failed={} invalid_accepted={} hung={} load {}",
                t0.elapsed().as_secs_f64(),
                st.as_ref().map(|s| s.stored).unwrap_or(0),
                st.as_ref().map(|s| s.duplicates_semantic).unwrap_or(0),
                st.as_ref().map(|s| s.rejected).unwrap_or(0),
                counters.queries.load(Relaxed),
                counters.bad_requests.load(Relaxed),
                counters.capped.load(Relaxed),
                counters.internal.load(Relaxed),
                counters.valid_failed.load(Relaxed),
                counters.invalid_accepted.load(Relaxed),
                counters.hung.load(Relaxed),
                load(),
            );
        }
    }
    stop_publish.store(true, Relaxed);
    for t in pub_tasks {
        t.await.unwrap();
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    stop_storm.store(true, Relaxed);
    for t in storm_tasks {
        let _ = t.await;
    }
    let published = counters.published.load(Relaxed);
    let unique = truth.count();
    println!(
        "published {published} events in {publish_secs:.0} s ({:.0}/s; {unique} unique det_oids acknowledged, {} repeats, {} publish retries, {} conflicts sent)",
        published as f64 / publish_secs,
        counters.duplicates_sent.load(Relaxed),
        counters.publish_retries.load(Relaxed),
        counters.conflicts_sent.load(Relaxed),
    );

    // ---- drain: the agents' lag to 0 and the store still ----
    let drain_t0 = Instant::now();
    let mut stable_since: Option<(u64, Instant)> = None;
    while core_deaths.load(Relaxed) == 0 {
        let stored = q
            .stats(StatsRequest {})
            .await
            .map(|r| r.into_inner().stored)
            .unwrap_or(0);
        let fleet = q
            .fleet(FleetRequest {})
            .await
            .map(|r| r.into_inner().agents)
            .unwrap_or_default();
        let drained = fleet
            .iter()
            .filter(|a| a.agent_id.starts_with("soak-"))
            .all(|a| a.lag == 0 && a.next_seq > 0);
        match stable_since {
            Some((s, since)) if s == stored => {
                if drained && since.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            _ => stable_since = Some((stored, Instant::now())),
        }
        if drain_t0.elapsed() > Duration::from_secs(900) {
            println!("not drained after 15 min; comparing what is stored");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("drained in {:.1} s", drain_t0.elapsed().as_secs_f64());
    watch_stop.store(true, Relaxed);
    let _ = watch.await;

    // ---- compare with the ground truth ----
    let mut lost = unique;
    let mut duplicated = 0u64;
    let mut stored_total = 0u64;
    let mut foreign = 0u64;
    let mut wrong = 0u64;
    if core_deaths.load(Relaxed) == 0 {
        let read_t0 = Instant::now();
        let mut counts: Vec<Vec<u8>> = (0..publishers)
            .map(|p| vec![0u8; truth.issued[p].load(Relaxed) as usize + 1])
            .collect();
        let mut storm_stored: HashMap<i64, u32> = HashMap::new();
        let mut token = String::new();
        loop {
            let r = q
                .list_events(ListEventsRequest {
                    from_ms: 0,
                    to_ms: 0,
                    filter: None,
                    page_size: 10_000,
                    page_token: token.clone(),
                })
                .await
                .expect("ListEvents while reading back")
                .into_inner();
            for e in &r.events {
                stored_total += 1;
                let d = e.detection.as_ref().unwrap();
                let oid = d.detection_oid.unwrap_or(0);
                match split(oid) {
                    Some((p, n)) if p < publishers && (n as usize) < counts[p].len() => {
                        let c = &mut counts[p][n as usize];
                        *c = c.saturating_add(1);
                        if d.video_camera_oid != camera_of(oid)
                            || d.item_name != detection(oid).item_name
                        {
                            wrong += 1;
                        }
                    }
                    _ => {
                        *storm_stored.entry(oid).or_default() += 1;
                    }
                }
            }
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        lost = 0;
        for (p, c) in counts.iter().enumerate() {
            for (n, k) in c.iter().enumerate() {
                let oid = ((p as i64 + 1) << OID_SHIFT) | n as i64;
                let acked = truth.is_acked(oid);
                if acked && *k == 0 {
                    lost += 1;
                    if lost <= 5 {
                        println!("lost: det_oid {oid} (publisher {p}, n {n})");
                    }
                }
                if *k > 1 {
                    duplicated += 1;
                    if duplicated <= 5 {
                        println!("stored {k} times: det_oid {oid}");
                    }
                }
                if *k > 0 && !acked {
                    foreign += 1;
                }
            }
        }
        foreign += storm_stored.len() as u64;
        duplicated += storm_stored.values().filter(|k| **k > 1).count() as u64;
        let st = q.stats(StatsRequest {}).await.unwrap().into_inner();
        println!(
            "read back {stored_total} events in {:.0} s; Stats: stored={} duplicates_semantic={} duplicates_transport={} rejected={}; \
             stored but never acknowledged (storm or unacknowledged): {foreign}; stored with other fields than published: {wrong}",
            read_t0.elapsed().as_secs_f64(),
            st.stored,
            st.duplicates_semantic,
            st.duplicates_transport,
            st.rejected,
        );
        if st.stored != stored_total {
            println!(
                "Stats.stored {} differs from the events listed {stored_total}",
                st.stored
            );
        }
    }
    let (rss_max_mb, anon_max_mb, agent_max_mb) = *rss_max.lock().unwrap();
    println!(
        "storm: queries={} bad_requests={} capped={} internal_errors={} valid_failed={} invalid_accepted={} hung={} valid_refused_at_intake={}",
        counters.queries.load(Relaxed),
        counters.bad_requests.load(Relaxed),
        counters.capped.load(Relaxed),
        counters.internal.load(Relaxed),
        counters.valid_failed.load(Relaxed),
        counters.invalid_accepted.load(Relaxed),
        counters.hung.load(Relaxed),
        counters.valid_refused.load(Relaxed),
    );
    for s in counters.samples.lock().unwrap().iter() {
        println!("  sample: {s}");
    }
    println!(
        "core RSS max {rss_max_mb:.0} MiB (anonymous {anon_max_mb:.0} MiB; bound {CORE_RSS_BOUND_MB:.0} MiB); agent RSS max {agent_max_mb:.0} MiB; load {}",
        load()
    );
    let restarts = core_deaths.load(Relaxed);
    let mut failed = Vec::new();
    if restarts > 0 {
        failed.push("the core died".to_string());
    }
    if lost > 0 || duplicated > 0 {
        failed.push(format!("lost={lost} duplicated={duplicated}"));
    }
    if wrong > 0 || foreign > 0 {
        failed.push(format!("{wrong} events stored with other fields, {foreign} stored that were never acknowledged"));
    }
    if rss_max_mb > CORE_RSS_BOUND_MB {
        failed.push(format!(
            "core RSS {rss_max_mb:.0} MiB over the bound {CORE_RSS_BOUND_MB:.0} MiB"
        ));
    }
    if !failed.is_empty() {
        println!("FAILED: {}", failed.join("; "));
    }
    drop(agents);
    drop(core);
    println!(
        "soak minutes={} queries={} bad_requests={} core_rss_max_mb={rss_max_mb:.0} core_restarts={restarts} lost={lost} duplicated={duplicated}",
        minutes,
        counters.queries.load(Relaxed),
        counters.bad_requests.load(Relaxed),
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
