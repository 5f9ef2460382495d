//! The cluster read path on real partitions: each partition a real `Store`
//! and `SearchIndex` filled through the real commit pipeline, a
//! [`ClusterView`] over them, and a second node serving the query API on
//! 127.0.0.1 over its own partitions, so peer calls are real gRPC calls.

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use sightline_proto::v1::{
    query_client::QueryClient, Detection, EdgeEvent, JoinedEvent, TopItemsRequest,
};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{
    access::{Access, AccessConfig, AccessDb, Scope},
    api::{admin_token::AdminToken, limits::Gate, live::LiveHub, query::QueryService},
    cluster::{
        peer,
        view::{ClusterView, LocalPartition, NodeInfo},
    },
    dedup::{CommitRequest, Incoming, Pipeline, WriterContext},
    enrich::Locations,
    fleet::Fleet,
    metrics::Metrics,
    search::SearchIndex,
    store::{keys, Store},
};

const P: u16 = 4;
const TOKEN: &str = "peer-secret-for-tests";
const ITEMS: [&str; 4] = ["person", "car", "dog", "cat"];

/// A cluster as one node sees it: fixed owners, its partitions open.
struct FixedView {
    me: NodeInfo,
    local: Vec<LocalPartition>,
    owners: HashMap<u16, NodeInfo>,
}

impl ClusterView for FixedView {
    fn partitions(&self) -> u16 {
        P
    }
    fn node_id(&self) -> &str {
        &self.me.node_id
    }
    fn local(&self) -> Vec<LocalPartition> {
        self.local.clone()
    }
    fn owner(&self, p: u16) -> Option<NodeInfo> {
        self.owners.get(&p).cloned()
    }
    fn nodes(&self) -> Vec<NodeInfo> {
        let mut n: Vec<NodeInfo> = self.owners.values().cloned().collect();
        n.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        n.dedup();
        n
    }
}

fn node(id: &str, grpc: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        grpc: grpc.into(),
        http: String::new(),
        edge: None,
        heartbeat_ms: 0,
    }
}

fn part_of(det: i64) -> u16 {
    keys::partition_of(det, P as usize) as u16
}

/// A det_oid of partition `p`, the next after `*next`.
fn det_in(p: u16, next: &mut i64) -> i64 {
    loop {
        *next += 1;
        if part_of(*next) == p {
            return *next;
        }
    }
}

fn detection(det: i64, loc: i64, item: &str, ts: i64) -> Detection {
    Detection {
        geographical_location_oid: loc,
        video_camera_oid: loc * 10,
        detection_oid: Some(det),
        item_name: item.into(),
        timestamp_detected: ts,
        camera_seq: Some(det as u64),
        ..Default::default()
    }
}

/// One partition: its store and index, `dets` committed through the pipeline.
struct Part {
    lp: LocalPartition,
    _pipeline: Pipeline,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn partition(dir: &Path, p: u16, dets: &[Detection]) -> Part {
    let store = Arc::new(Store::open(&dir.join(format!("p{p}")), false, 8 << 20).unwrap());
    let locations = Arc::new(Locations::new(None).unwrap());
    let hub = LiveHub::new(64);
    let shutdown = CancellationToken::new();
    let index = SearchIndex::start(
        &dir.join(format!("s{p}")),
        store.clone(),
        locations.clone(),
        &hub,
        Duration::from_millis(20),
        shutdown.clone(),
    )
    .unwrap();
    let ctx = Arc::new(WriterContext {
        store: store.clone(),
        locations,
        hub,
        metrics: Arc::new(Metrics::new()),
        max_group_events: 10_000,
    });
    let pipeline = Pipeline::start(ctx, 1, 8).unwrap();
    let mine: Vec<Incoming> = dets
        .iter()
        .filter(|d| part_of(d.detection_oid.unwrap()) == p)
        .enumerate()
        .map(|(i, d)| {
            Incoming::Valid(EdgeEvent {
                seq: i as u64 + 1,
                detection: Some(d.clone()),
                accepted_ms: d.timestamp_detected,
            })
        })
        .collect();
    let n = mine.len() as u64;
    if n > 0 {
        let (reply, rx) = oneshot::channel();
        pipeline
            .submit(CommitRequest {
                agent: "agent-1".into(),
                epoch: 1,
                first_seq: 1,
                events: mine,
                last_digest: 0,
                reply,
            })
            .await
            .unwrap();
        let out = rx.await.unwrap().unwrap();
        assert_eq!(out.stored, n, "partition {p}");
    }
    // The index follows commits: wait until it has them all.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let hits = index
            .search(&crate::search::SearchRequest::default())
            .unwrap();
        if hits.total == n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "index of p{p} stuck at {}",
            hits.total
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Part {
        lp: LocalPartition {
            partition: p,
            store,
            search: Some(index),
            lease_revision: 1,
            checkpoint_ms: Default::default(),
        },
        _pipeline: pipeline,
        _shutdown: shutdown.drop_guard(),
    }
}

/// Node "b" serving the query API over partitions 2 and 3 (node "a" has 0
/// and 1), on 127.0.0.1.
struct Cluster {
    _dir: TempDir,
    _parts: Vec<Part>,
    a: ClusterQuery,
    b_addr: SocketAddr,
    _b_shutdown: tokio_util::sync::DropGuard,
}

async fn serve_node(
    dir: &Path,
    view: Arc<dyn ClusterView>,
) -> (SocketAddr, CancellationToken, Access) {
    serve_node_with(dir, view, None).await
}

async fn serve_node_with(
    dir: &Path,
    view: Arc<dyn ClusterView>,
    feed: Option<super::super::feed::Feed>,
) -> (SocketAddr, CancellationToken, Access) {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(Store::open(&dir.join("node-store"), false, 8 << 20).unwrap());
    let locations = Arc::new(Locations::new(None).unwrap());
    let hub = LiveHub::new(16);
    let shutdown = CancellationToken::new();
    let search = SearchIndex::start(
        &dir.join("node-search"),
        store.clone(),
        locations.clone(),
        &hub,
        Duration::from_millis(50),
        shutdown.clone(),
    )
    .unwrap();
    let access = Access::new(
        Arc::new(AccessDb::open(&dir.join("access")).unwrap()),
        &AccessConfig::default(),
        Arc::new(AdminToken::load_or_create(&dir.join("admin.token")).unwrap()),
        crate::audit::AuditLog::open(&dir.join("audit"), 1 << 20).unwrap(),
    );
    let q = QueryService {
        subscribers: Gate::new(
            "subscribe",
            ("live.max_subscribers", 8),
            ("live.max_subscribers_per_client", 8),
            metrics.clone(),
        ),
        replay_limit: 1000,
        search,
        store,
        locations,
        fleet: Arc::new(Fleet::new(metrics.clone(), Vec::new())),
        hub,
        metrics,
        access: access.clone(),
        cluster: Some(Arc::new(match feed {
            Some(f) => ClusterQuery::new(view, TOKEN).with_feed(f),
            None => ClusterQuery::new(view, TOKEN),
        })),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(crate::api::subscribe_wire::QueryRoutes::new(q))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled(),
            )
            .await
            .unwrap();
    });
    (addr, shutdown, access)
}

/// Node a's view: it holds partitions 0 and 1, and `rest` owns the others.
fn view_of_a(parts: &[Part], rest: NodeInfo) -> FixedView {
    let a_node = node("a", "127.0.0.1:1");
    let owners = (0..P)
        .map(|p| (p, if p < 2 { a_node.clone() } else { rest.clone() }))
        .collect();
    FixedView {
        me: a_node,
        local: parts[..2].iter().map(|p| p.lp.clone()).collect(),
        owners,
    }
}

/// A node `id` serving peer calls that holds no partition: its address, and
/// the guard that stops it.
async fn empty_node(c: &Cluster, id: &str) -> (NodeInfo, tokio_util::sync::DropGuard) {
    let dir = c._dir.path().join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let (addr, stop, _) = serve_node(
        &dir,
        Arc::new(FixedView {
            me: node(id, ""),
            local: Vec::new(),
            owners: HashMap::new(),
        }),
    )
    .await;
    (node(id, &addr.to_string()), stop.drop_guard())
}

async fn cluster(dets: &[Detection]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut parts = Vec::new();
    for p in 0..P {
        parts.push(partition(dir.path(), p, dets).await);
    }
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    // Node b's address is known once it listens; its own view only needs
    // its partitions.
    let b_view = Arc::new(FixedView {
        me: node("b", ""),
        local: parts[2..].iter().map(|p| p.lp.clone()).collect(),
        owners: HashMap::new(),
    });
    let (b_addr, b_shutdown, _) = serve_node(&b_dir, b_view).await;
    let a = ClusterQuery::new(
        Arc::new(view_of_a(&parts, node("b", &b_addr.to_string()))),
        TOKEN,
    );
    Cluster {
        _dir: dir,
        _parts: parts,
        a,
        b_addr,
        _b_shutdown: b_shutdown.drop_guard(),
    }
}

/// A minute-aligned time an hour ago, the same for the whole run (a
/// minute boundary passing mid-test does not move the ranges).
fn t0() -> i64 {
    static T0: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T0.get_or_init(|| keys::Bucket::Minute.floor(sightline_proto::now_ms() - 3_600_000))
}

/// Location 1: in each partition one item (`solo-<p>`) leads with 5 while
/// "bicycle" has 3 — top in no partition, first in the sum (12). Location 2:
/// a spread of the other items. Some events share a timestamp.
fn dataset() -> Vec<Detection> {
    let t0 = t0();
    let mut next = 0;
    let mut out = Vec::new();
    let mut i = 0i64;
    let mut ts = || {
        i += 1;
        t0 + (i / 2) * 1000 // pairs share a detection time
    };
    for p in 0..P {
        for _ in 0..5 {
            out.push(detection(
                det_in(p, &mut next),
                1,
                &format!("solo-{p}"),
                ts(),
            ));
        }
        for _ in 0..3 {
            out.push(detection(det_in(p, &mut next), 1, "bicycle", ts()));
        }
    }
    for k in 0..40 {
        let p = (k % P as usize) as u16;
        let item = ITEMS[(k * 7 / 3) % ITEMS.len()];
        out.push(detection(det_in(p, &mut next), 2, item, ts()));
    }
    out
}

/// Top X per location computed directly from the events.
fn direct_top(dets: &[Detection], x: usize, scope: &Scope) -> Vec<LocationCounts> {
    let parts = dets
        .iter()
        .filter(|d| scope.allows(d.geographical_location_oid))
        .map(|d| {
            vec![LocationCounts {
                location: d.geographical_location_oid,
                total: 1,
                items: vec![(d.item_name.clone(), 1)],
            }]
        });
    merge_top(parts, x)
}

fn oids(events: &[JoinedEvent]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.detection.as_ref().unwrap().detection_oid.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_x_across_partitions_is_exact_even_for_an_item_top_in_no_single_partition() {
    let dets = dataset();
    let c = cluster(&dets).await;
    let (from, to) = (t0(), t0() + 3_600_000);
    // In every single partition, bicycle is not first at location 1.
    for part in &c._parts {
        let one = part.lp.store.top_items(from, to, 1, Some(1)).unwrap();
        assert_ne!(one[0].items[0].0, "bicycle");
    }
    for x in [1, 2, 3, 10] {
        let got =
            c.a.top_items(&Scope::all(), from, to, x, None)
                .await
                .unwrap();
        assert_eq!(got, direct_top(&dets, x, &Scope::all()), "x = {x}");
    }
    let top1 =
        c.a.top_items(&Scope::all(), from, to, 1, Some(1))
            .await
            .unwrap();
    assert_eq!(top1[0].items, vec![("bicycle".to_string(), 12)]);
    assert_eq!(top1[0].total, 32);
}

/// A timeline counted directly from the events: minute buckets over
/// `[from, from + n minutes)`, largest total first, then by key.
fn direct_timeline(
    dets: &[Detection],
    from: i64,
    n: usize,
    by: TimelineBy,
    scope: &Scope,
) -> Vec<(String, Vec<u64>)> {
    let mut series: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for d in dets {
        if !scope.allows(d.geographical_location_oid) {
            continue;
        }
        let key = match by {
            TimelineBy::Item => d.item_name.clone(),
            TimelineBy::Location => d.geographical_location_oid.to_string(),
        };
        let i = ((d.timestamp_detected - from) / 60_000) as usize;
        series.entry(key).or_insert_with(|| vec![0; n])[i] += 1;
    }
    let mut out: Vec<(String, Vec<u64>)> = series.into_iter().collect();
    out.sort_by_key(|(k, c)| (std::cmp::Reverse(c.iter().sum::<u64>()), k.clone()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_across_partitions_equals_the_events_counted_directly() {
    let dets = dataset();
    let c = cluster(&dets).await;
    let (from, to) = (t0(), t0() + 3_600_000);
    for by in [TimelineBy::Item, TimelineBy::Location] {
        for scope in [Scope::all(), Scope::locations([2])] {
            let got = c.a.timeline(&scope, from, to, by).await.unwrap();
            assert_eq!(
                (got.from_ms, got.bucket_ms, got.buckets),
                (from, 60_000, 60)
            );
            let got: Vec<(String, Vec<u64>)> =
                got.series.into_iter().map(|s| (s.key, s.counts)).collect();
            assert_eq!(
                got,
                direct_timeline(&dets, from, 60, by, &scope),
                "{by:?} {scope:?}"
            );
        }
    }
    // Ranked after summing: bicycle (3 per partition) leads solo-<p> (5 in one).
    let t =
        c.a.timeline(&Scope::all(), from, to, TimelineBy::Item)
            .await
            .unwrap();
    assert_eq!(t.series[0].key, "bicycle");
    // The API's answer keeps the first `max_series` and sums the rest.
    let total: u64 = t.series.iter().flat_map(|s| s.counts.iter()).sum();
    let r = timeline_response(t, 2);
    assert_eq!(r.series.len(), 2);
    let kept: u64 = r.series.iter().map(|s| s.total).sum();
    assert_eq!(kept + r.other.iter().sum::<u64>(), total);
    assert_eq!(total, dets.len() as u64);
    // An empty range has no buckets, on the cluster as on one node.
    let empty =
        c.a.timeline(&Scope::all(), from, from, TimelineBy::Item)
            .await
            .unwrap();
    assert_eq!(empty.buckets, 0);
    assert!(timeline_by(0).is_err(), "UNSPECIFIED is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_events_pages_across_partitions_give_every_event_once_in_order() {
    let dets = dataset();
    let c = cluster(&dets).await;
    for (filter, page) in [
        (None, 7usize),
        (None, 1000),
        (
            Some(sightline_proto::v1::EventFilter {
                item_name: Some("bicycle".into()),
                ..Default::default()
            }),
            5,
        ),
    ] {
        let mut want: Vec<(i64, i64)> = dets
            .iter()
            .filter(|d| {
                filter
                    .as_ref()
                    .and_then(|f| f.item_name.as_ref())
                    .is_none_or(|i| *i == d.item_name)
            })
            .map(|d| (d.timestamp_detected, d.detection_oid.unwrap()))
            .collect();
        want.sort();
        let mut got = Vec::new();
        let mut token = String::new();
        for pages in 0.. {
            assert!(pages < 100, "paging does not end");
            let (events, next) =
                c.a.list_events(&Scope::all(), t0(), 0, filter.clone(), page, &token)
                    .await
                    .unwrap();
            assert!(events.len() <= page);
            got.extend(events.iter().map(|e| {
                let d = e.detection.as_ref().unwrap();
                (d.timestamp_detected, d.detection_oid.unwrap())
            }));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(got, want, "filter {filter:?}, page {page}");
    }
    // A token the API did not give out is refused, naming the field.
    let e =
        c.a.list_events(&Scope::all(), t0(), 0, None, 10, "c1zz")
            .await
            .unwrap_err();
    assert!(e.message().starts_with("field `page_token`"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_across_partitions_pages_newest_first_like_one_node() {
    let dets = dataset();
    let c = cluster(&dets).await;
    let mut want: Vec<(i64, i64)> = dets
        .iter()
        .map(|d| (d.timestamp_detected, d.detection_oid.unwrap()))
        .collect();
    want.sort_by(|a, b| b.cmp(a));
    let mut got = Vec::new();
    let mut token = String::new();
    loop {
        let r =
            c.a.search(
                &Scope::all(),
                sightline_proto::v1::SearchRequest {
                    page_size: 9,
                    page_token: token.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(r.total_hits, dets.len() as u64);
        got.extend(r.events.iter().map(|e| {
            let d = e.detection.as_ref().unwrap();
            (d.timestamp_detected, d.detection_oid.unwrap())
        }));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_call_without_the_peer_token_is_refused() {
    let dets = dataset();
    let c = cluster(&dets).await;
    let mut client = QueryClient::connect(format!("http://{}", c.b_addr))
        .await
        .unwrap();
    let ask = |token: Option<&str>, parts: &str| {
        let mut req = tonic::Request::new(TopItemsRequest {
            from_ms: t0(),
            to_ms: t0() + 3_600_000,
            ..Default::default()
        });
        let md = req.metadata_mut();
        md.insert(peer::PARTITIONS_HEADER, parts.parse().unwrap());
        md.insert(peer::SCOPE_HEADER, "*".parse().unwrap());
        if let Some(t) = token {
            md.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    for token in [None, Some("not-the-peer-token")] {
        let e = client.top_items(ask(token, "2")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }
    // Not a peer call: an ordinary caller, who needs a credential.
    let e = client
        .top_items(TopItemsRequest {
            from_ms: t0(),
            to_ms: t0() + 60_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // With the token: answered for a partition b holds, refused by name for
    // one it does not.
    let ok = client.top_items(ask(Some(TOKEN), "2,3")).await.unwrap();
    assert!(!ok.into_inner().locations.is_empty());
    let e = client.top_items(ask(Some(TOKEN), "0")).await.unwrap_err();
    assert!(peer::is_not_held(&e), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_caller_sees_only_its_locations_through_peer_calls() {
    let dets = dataset();
    let c = cluster(&dets).await;
    let scope = Scope::locations([2]);
    let (from, to) = (t0(), t0() + 3_600_000);
    let top = c.a.top_items(&scope, from, to, 10, None).await.unwrap();
    assert_eq!(top, direct_top(&dets, 10, &scope));
    assert!(top.iter().all(|l| l.location == 2));
    let (events, _) =
        c.a.list_events(&scope, from, 0, None, 10_000, "")
            .await
            .unwrap();
    assert_eq!(
        events.len(),
        dets.iter()
            .filter(|d| d.geographical_location_oid == 2)
            .count()
    );
    assert!(events
        .iter()
        .all(|e| e.detection.as_ref().unwrap().geographical_location_oid == 2));
    let found =
        c.a.search(&scope, sightline_proto::v1::SearchRequest::default())
            .await
            .unwrap();
    assert!(found
        .events
        .iter()
        .all(|e| e.detection.as_ref().unwrap().geographical_location_oid == 2));
    // An event at location 1 held by node b reads as absent for this scope,
    // present for an unscoped caller.
    let on_b = dets
        .iter()
        .find(|d| d.geographical_location_oid == 1 && part_of(d.detection_oid.unwrap()) >= 2)
        .unwrap()
        .detection_oid
        .unwrap();
    assert!(c.a.get_event(&scope, on_b).await.unwrap().is_none());
    let ev = c.a.get_event(&Scope::all(), on_b).await.unwrap().unwrap();
    assert_eq!(oids(&[ev]), vec![on_b]);
    // Stats sum every partition.
    assert_eq!(c.a.counters().await.unwrap().stored, dets.len() as u64);
}

#[test]
fn an_events_token_round_trips_and_a_forged_one_is_refused() {
    let t = EventsToken(vec![
        PartCursor::Start,
        PartCursor::After(keys::event_key(5, -3)),
        PartCursor::Done,
        PartCursor::After(keys::event_key(1, 2)),
    ]);
    assert_eq!(EventsToken::decode(&t.encode(), 4).unwrap(), t);
    assert_eq!(EventsToken(vec![PartCursor::Done; 4]).encode(), "");
    let good = t.encode();
    for bad in [
        "zz".to_string(),
        good[..good.len() - 2].to_string(),
        format!("{good}00"),
        "c1".repeat(1000),
        "é".into(),
    ] {
        let e = EventsToken::decode(&bad, 4).unwrap_err();
        assert!(
            e.message().starts_with("field `page_token`"),
            "{bad:?}: {e:?}"
        );
    }
    // Made for another partition count.
    assert!(EventsToken::decode(&good, 8).is_err());
}

/// A view whose lease of some partitions just moved: the first read of
/// their owner gives the node that held them before.
struct MovedView {
    now: FixedView,
    before: std::sync::Mutex<HashMap<u16, NodeInfo>>,
}

impl ClusterView for MovedView {
    fn partitions(&self) -> u16 {
        self.now.partitions()
    }
    fn node_id(&self) -> &str {
        self.now.node_id()
    }
    fn local(&self) -> Vec<LocalPartition> {
        self.now.local()
    }
    fn owner(&self, p: u16) -> Option<NodeInfo> {
        let stale = self.before.lock().unwrap().remove(&p);
        stale.or_else(|| self.now.owner(p))
    }
    fn nodes(&self) -> Vec<NodeInfo> {
        self.now.nodes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_asked_of_its_former_owner_is_asked_again_of_the_new_one() {
    let dets = dataset();
    let c = cluster(&dets).await;
    // Node c held partitions 2 and 3 before b: it holds nothing now.
    let (c_node, _c_stop) = empty_node(&c, "c").await;
    let view = MovedView {
        now: view_of_a(&c._parts, node("b", &c.b_addr.to_string())),
        before: std::sync::Mutex::new([(2, c_node.clone()), (3, c_node)].into()),
    };
    let a = ClusterQuery::new(Arc::new(view), TOKEN);
    let (from, to) = (t0(), t0() + 3_600_000);
    let top = a
        .top_items(&Scope::all(), from, to, 10, None)
        .await
        .unwrap();
    assert_eq!(top, direct_top(&dets, 10, &Scope::all()));
    // Stats and Completeness cover every partition too.
    assert_eq!(a.counters().await.unwrap().stored, dets.len() as u64);
    let received = a.received_all().await.unwrap();
    let seqs: u64 = received
        .iter()
        .flat_map(|(_, set)| set.ranges().map(|r| r.last - r.first + 1))
        .sum();
    // Every event's camera_seq, each once, whichever node holds it.
    assert_eq!(seqs, dets.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_owner_never_settles_is_unavailable_to_the_caller_not_a_peer_refusal() {
    let dets = dataset();
    let c = cluster(&dets).await;
    // Node c holds nothing, yet every read of the owners of 2 and 3 names
    // it: a lease that keeps moving.
    let (c_node, _c_stop) = empty_node(&c, "c").await;
    let mut a = ClusterQuery::new(Arc::new(view_of_a(&c._parts, c_node)), TOKEN);
    a.move_wait = std::time::Duration::from_millis(600);
    let (from, to) = (t0(), t0() + 3_600_000);
    let errors = [
        a.counters().await.unwrap_err(),
        a.top_items(&Scope::all(), from, to, 10, None)
            .await
            .unwrap_err(),
    ];
    for e in errors {
        // What a client retries on, naming the partition; never the
        // FAILED_PRECONDITION one node says to another.
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(!peer::is_not_held(&e), "{e:?}");
        assert!(e.message().contains("is not held by node c"), "{e:?}");
        assert!(e.message().contains("try again"), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_on_any_node_gets_the_single_node_answer_for_its_locations() {
    let dets = dataset();
    let c = cluster(&dets).await;
    // Node a as a query server too, over partitions 0 and 1.
    let a_dir = c._dir.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let b_node = node("b", &c.b_addr.to_string());
    let a_view = Arc::new(FixedView {
        me: node("a", ""),
        local: c._parts[..2].iter().map(|p| p.lp.clone()).collect(),
        owners: (2..P).map(|p| (p, b_node.clone())).collect(),
    });
    let (a_addr, a_stop, access) = serve_node(&a_dir, a_view).await;
    let _a_stop = a_stop.drop_guard();
    let (_, secret) = access
        .db
        .create_token(
            "viewer-2",
            crate::access::Role::Viewer,
            Scope::locations([2]),
            0,
            sightline_proto::now_ms(),
        )
        .unwrap();
    let mut client = QueryClient::connect(format!("http://{a_addr}"))
        .await
        .unwrap();
    fn with<T>(token: &str, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    }
    let (from, to) = (t0(), t0() + 3_600_000);
    let top = client
        .top_items(with(
            &secret,
            TopItemsRequest {
                from_ms: from,
                to_ms: to,
                x: 3,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let want = direct_top(&dets, 3, &Scope::locations([2]));
    assert_eq!(counts_of(top), want);
    // Asking for a location outside its scope is refused on the node called.
    let e = client
        .top_items(with(
            &secret,
            TopItemsRequest {
                from_ms: from,
                to_ms: to,
                geographical_location_oid: Some(1),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // The peer token is not a client credential.
    let e = client
        .top_items(with(
            TOKEN,
            TopItemsRequest {
                from_ms: from,
                to_ms: to,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Stats count every location: refused to a scoped token, as on one node.
    let e = client
        .stats(with(&secret, sightline_proto::v1::StatsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_on_another_node_resumes_after_the_last_stream_seq_scoped() {
    use crate::cluster::feed::{tests as nats, Feed, AFTER_SEQ_HEADER};
    use futures::StreamExt;
    let (n, client) = nats::nats().await;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: crate::cluster::OUT_STREAM.into(),
        subjects: vec!["sightline.out.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for d in 1..=20 {
        nats::publish(&js, d, 1 + d % 2).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in ["x", "y"] {
        let d = dir.path().join(id);
        std::fs::create_dir_all(&d).unwrap();
        let view = Arc::new(FixedView {
            me: node(id, ""),
            local: Vec::new(),
            owners: HashMap::new(),
        });
        let feed = Feed::new(async_nats::connect(&n.url).await.unwrap());
        nodes.push(serve_node_with(&d, view, Some(feed)).await);
    }
    let secret = |access: &Access| {
        access
            .db
            .create_token(
                "viewer-2",
                crate::access::Role::Viewer,
                Scope::locations([2]),
                0,
                sightline_proto::now_ms(),
            )
            .unwrap()
            .1
    };
    let subscribe = |addr: SocketAddr, token: String, after: u64| async move {
        let mut c = QueryClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut req = tonic::Request::new(sightline_proto::v1::SubscribeRequest::default());
        let md = req.metadata_mut();
        md.insert("authorization", format!("Bearer {token}").parse().unwrap());
        md.insert(AFTER_SEQ_HEADER, after.to_string().parse().unwrap());
        c.subscribe(req).await.unwrap().into_inner()
    };
    let mut got = Vec::new();
    let mut on_x = subscribe(nodes[0].0, secret(&nodes[0].2), 0).await;
    while got.len() < 4 {
        got.push(on_x.next().await.unwrap().unwrap());
    }
    // Node x dies; the subscriber resumes on node y after the last it got.
    nodes[0].1.cancel();
    drop(on_x);
    let last = got.last().unwrap().stream_seq;
    let mut on_y = subscribe(nodes[1].0, secret(&nodes[1].2), last).await;
    while got.len() < 10 {
        got.push(on_y.next().await.unwrap().unwrap());
    }
    // Only its location (odd det_oids are at location 2), each once, in order.
    assert_eq!(oids(&got), (1..=19).step_by(2).collect::<Vec<i64>>());
    let seqs: Vec<u64> = got.iter().map(|e| e.stream_seq).collect();
    assert_eq!(
        seqs,
        (1..=19)
            .step_by(2)
            .map(|s| crate::cluster::feed::cursor(s, 0))
            .collect::<Vec<u64>>()
    );
}
