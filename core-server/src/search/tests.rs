//! The index over a real store (RocksDB) in a temp dir, fed as the writers
//! feed it: events committed to the store, then published on the live hub.

use std::{path::PathBuf, sync::Arc, time::Duration};

use prost::Message;
use rocksdb::WriteBatch;
use sightline_proto::v1::{Detection, JoinedEvent};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::{cf, keys, CF_BY_COMMIT, CF_DET, CF_EVENTS};

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    locations: Arc<Locations>,
    hub: LiveHub,
    index: Arc<SearchIndex>,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

const LOCATIONS: &str = "geographical_location_oid,geographical_location\n\
    1,Site 1000 — Gate 1\n\
    2,Site 1000 — Gate 2\n\
    3,Gate-7\n\
    4,Depot\n";

fn fixture() -> Fixture {
    fixture_with(Duration::from_millis(50))
}

fn fixture_with(commit_interval: Duration) -> Fixture {
    fixture_after(commit_interval, |_, _| {})
}

/// A fixture whose index starts once `before` has filled the store.
fn fixture_after(commit_interval: Duration, before: impl FnOnce(&Store, &Locations)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("locations.csv");
    std::fs::write(&csv, LOCATIONS).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("store"), false, 8 << 20).unwrap());
    let locations = Arc::new(Locations::new(Some(csv)).unwrap());
    before(&store, &locations);
    let hub = LiveHub::new(64);
    let shutdown = CancellationToken::new();
    let index = SearchIndex::start(
        &dir.path().join("search"),
        store.clone(),
        locations.clone(),
        &hub,
        commit_interval,
        shutdown.clone(),
    )
    .unwrap();
    Fixture {
        dir,
        store,
        locations,
        hub,
        index,
        shutdown,
    }
}

/// Writes events as one writer commit (see [`Fixture::commit`]) without
/// publishing them: returns the commit time and the joined events.
fn write_commit(
    store: &Store,
    locations: &Locations,
    events: &[(i64, i64, i64, &str)],
) -> (i64, Vec<JoinedEvent>) {
    let now = sightline_proto::now_ms();
    let mut batch = WriteBatch::default();
    let mut packed = Vec::new();
    let mut live = Vec::new();
    for &(det, ts, loc, item) in events {
        let ev = JoinedEvent {
            detection: Some(Detection {
                detection_oid: Some(det),
                timestamp_detected: ts,
                geographical_location_oid: loc,
                video_camera_oid: 9,
                item_name: item.into(),
                ..Default::default()
            }),
            agent_id: "agent-1".into(),
            committed_ms: now,
            ..Default::default()
        };
        let db = store.db().unwrap();
        batch.put_cf(
            cf(&db, CF_EVENTS),
            keys::event_key(ts, det),
            ev.encode_to_vec(),
        );
        batch.put_cf(cf(&db, CF_DET), keys::det_key(det), keys::i64_key(ts));
        packed.extend_from_slice(&keys::event_key(ts, det));
        live.push(ev);
    }
    let db = store.db().unwrap();
    batch.put_cf(
        cf(&db, CF_BY_COMMIT),
        keys::event_key(now, events[0].0),
        packed,
    );
    drop(db);
    store.write(batch).unwrap();
    // As the partition writer hands them to the hub: matched or not, but
    // without the Dataset B row (the indexer looks it up itself).
    let table = locations.current();
    for e in &mut live {
        let loc = e.detection.as_ref().unwrap().geographical_location_oid;
        e.location_matched = table.get(loc).is_some();
    }
    (now, live)
}

impl Fixture {
    fn index_dir(&self) -> PathBuf {
        self.dir.path().join("search")
    }

    /// Commits events (det_oid, timestamp_detected, location, item) as one
    /// writer commit: events, det keys and the `by_commit` entry in one
    /// batch, then the joined events on the hub. Returns the commit time.
    fn commit(&self, events: &[(i64, i64, i64, &str)]) -> i64 {
        let (now, live) = write_commit(&self.store, &self.locations, events);
        self.hub.publish(live);
        now
    }

    fn search(&self, query: &str) -> Result<SearchHits, SearchError> {
        self.index.search(&SearchRequest {
            query: query.into(),
            page_size: MAX_PAGE,
            ..Default::default()
        })
    }

    /// Waits until a search for everything counts `n` hits.
    async fn searchable(&self, n: u64, within: Duration) {
        let started = std::time::Instant::now();
        loop {
            let total = self.search("").map(|h| h.total).unwrap_or(0);
            if total == n {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{total} of {n} events searchable after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every det_oid the index holds, newest first, paging by cursor.
    fn all_hits(&self, page_size: usize) -> Vec<i64> {
        let (mut out, mut token) = (Vec::new(), String::new());
        loop {
            let page = self
                .index
                .search(&SearchRequest {
                    page_size,
                    page_token: token,
                    ..Default::default()
                })
                .unwrap();
            assert!(page.det_oids.len() <= page_size);
            out.extend(page.det_oids);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }
}

fn invalid_field(r: Result<SearchHits, SearchError>) -> (&'static str, String) {
    match r {
        Err(e @ SearchError::Invalid { field, .. }) => (field, e.to_string()),
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_search_offset_is_refused_and_the_core_stays_up() {
    let f = fixture();
    // 3 events per millisecond: the order needs det_oid to be total.
    let t0 = 1_800_000_000_000;
    let events: Vec<(i64, i64, i64, &str)> = (0..250)
        .map(|i| (1_000 + (i * 7919) % 250, t0 + i / 3, 1 + i % 4, "car"))
        .collect();
    for chunk in events.chunks(50) {
        f.commit(chunk);
    }
    f.searchable(250, Duration::from_secs(10)).await;
    // Offsets of the old format, huge or not, and other strangers.
    for token in ["18446744073709551615", "1000000000000", "20", "-1", " "] {
        let r = f.index.search(&SearchRequest {
            page_token: token.into(),
            ..Default::default()
        });
        let (field, msg) = invalid_field(r);
        assert_eq!(field, "page_token", "{token:?}: {msg}");
        assert!(msg.starts_with("field `page_token`: "), "{msg}");
    }
    // Still answering; every hit exactly once, newest first, det_oid
    // breaking ties, whatever the page size.
    let mut want: Vec<(i64, i64)> = events.iter().map(|e| (e.1, e.0)).collect();
    want.sort_by(|a, b| b.cmp(a));
    let want: Vec<i64> = want.into_iter().map(|(_, d)| d).collect();
    for page_size in [1, 7, 50, MAX_PAGE] {
        assert_eq!(f.all_hits(page_size), want, "page size {page_size}");
    }
    // total is the query's, not what is left after the cursor.
    let first = f
        .index
        .search(&SearchRequest {
            page_size: 10,
            ..Default::default()
        })
        .unwrap();
    let second = f
        .index
        .search(&SearchRequest {
            page_size: 10,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((first.total, second.total), (250, 250));
    assert_eq!(second.det_oids, want[10..20]);
    // The last page says so: no token; an exact fit leaves no empty page.
    let last = f
        .index
        .search(&SearchRequest {
            page_size: 62,
            query: "location:depot".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (last.det_oids.len(), last.next_page_token.as_str()),
        (62, "")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_page_token_is_refused() {
    let f = fixture();
    f.commit(&[(1, 1_800_000_000_000, 1, "car")]);
    f.searchable(1, Duration::from_secs(10)).await;
    f.commit(&[(2, 1_800_000_000_001, 1, "car")]);
    f.searchable(2, Duration::from_secs(10)).await;
    let real = f
        .index
        .search(&SearchRequest {
            page_size: 1,
            ..Default::default()
        })
        .unwrap()
        .next_page_token;
    let n = real.len();
    // As long as a real token, so only the bytes can refuse them.
    let same_length = [
        format!("c1{}", "é".repeat((n - 2) / 2)),
        format!("é{}", &real[2..]),
        format!("{}ü", &real[..n - 2]),
        "\u{0}".repeat(n),
    ];
    for token in same_length.iter().cloned().chain(["日本".to_string()]) {
        assert!(token.len() == n || token == "日本");
        let r = f.index.search(&SearchRequest {
            page_token: token.clone(),
            ..Default::default()
        });
        assert_eq!(invalid_field(r).0, "page_token", "{token:?}");
    }
    assert_eq!(f.search("car").unwrap().total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_query_is_refused_not_a_stack_overflow() {
    let f = fixture();
    f.commit(&[(1, 1_800_000_000_000, 4, "car")]);
    f.searchable(1, Duration::from_secs(10)).await;
    let nest = |depth: usize| format!("{}car{}", "(".repeat(depth), ")".repeat(depth));
    // Thousands deep (what aborted the core), and just past each limit.
    for (query, limit) in [
        (nest(5_000), "1024"),
        (nest(MAX_QUERY_DEPTH + 1), "16"),
        (format!("{}car", "NOT ".repeat(MAX_QUERY_DEPTH + 1)), "16"),
        ("car ".repeat(MAX_QUERY_BYTES / 4 + 1), "1024"),
    ] {
        let (field, msg) = invalid_field(f.search(&query));
        assert_eq!(field, "query");
        assert!(msg.contains(limit), "{msg}");
    }
    // At the limit it runs, even on a small stack (a tokio blocking thread
    // has 2 MiB; this one a quarter).
    let index = f.index.clone();
    let deepest = nest(MAX_QUERY_DEPTH);
    let hits = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            index
                .search(&SearchRequest {
                    query: deepest,
                    ..Default::default()
                })
                .map(|h| h.det_oids)
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(hits, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_search_counts_and_pages_only_its_locations() {
    let f = fixture();
    let t0 = 1_800_000_000_000;
    let events: Vec<(i64, i64, i64, &str)> = (1..=40)
        .map(|i| {
            (
                i,
                t0 + i,
                i % 4 + 1,
                if i % 2 == 0 { "car" } else { "person" },
            )
        })
        .collect();
    f.commit(&events);
    f.searchable(40, Duration::from_secs(10)).await;
    let scoped = |query: &str, scope: Option<Vec<i64>>| {
        f.index
            .search(&SearchRequest {
                query: query.into(),
                scope_locations: scope,
                page_size: MAX_PAGE,
                ..Default::default()
            })
            .unwrap()
    };
    let want = |item: Option<&str>, scope: &[i64]| -> Vec<i64> {
        let mut v: Vec<i64> = events
            .iter()
            .filter(|e| scope.contains(&e.2) && item.is_none_or(|i| i == e.3))
            .map(|e| e.0)
            .collect();
        v.reverse(); // newest first
        v
    };
    for scope in [vec![2], vec![1, 3], vec![1, 2, 3, 4], vec![4, 9]] {
        for (query, item) in [("", None), ("car", Some("car")), ("person", Some("person"))] {
            let hits = scoped(query, Some(scope.clone()));
            let w = want(item, &scope);
            assert_eq!(hits.total, w.len() as u64, "{query:?} in {scope:?}");
            assert_eq!(hits.det_oids, w, "{query:?} in {scope:?}");
        }
    }
    // An empty scope sees nothing; no scope sees everything.
    assert_eq!(scoped("", Some(vec![])).total, 0);
    assert_eq!(scoped("car", None).total, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_name_with_a_dash_matches() {
    let f = fixture();
    let t0 = 1_800_000_000_000;
    f.commit(&[
        (1, t0, 1, "car"),
        (2, t0 + 1, 2, "car"),
        (3, t0 + 2, 3, "person"),
        (4, t0 + 3, 4, "car"),
    ]);
    f.searchable(4, Duration::from_secs(10)).await;
    for (query, want) in [
        // As written in Dataset B, with an em dash.
        ("Site 1000 — Gate 1", vec![1]),
        // With a hyphen or an en dash typed instead, or none.
        ("Site 1000 - Gate 1", vec![1]),
        ("site 1000 – gate 2", vec![2]),
        ("Site 1000 Gate 2", vec![2]),
        ("\"Site 1000 — Gate 1\"", vec![1]),
        ("Gate-7", vec![3]),
        ("gate-7 person", vec![3]),
        // Not valid syntax, or an unknown field: the words are searched.
        ("Site 1000: Gate 1", vec![1]),
        ("(Gate 2", vec![2]),
        // Query syntax still works; a leading `-` excludes.
        ("site -car", vec![]),
        ("car -location:depot", vec![2, 1]),
        // Punctuation alone matches nothing.
        ("—", vec![]),
    ] {
        let hits = f.search(query).unwrap_or_else(|e| panic!("{query:?}: {e}"));
        assert_eq!(hits.det_oids, want, "{query:?}");
    }
    // Syntax gone wrong around a field's name, only exclusions, or a bad
    // number for a numeric field: refused.
    assert_eq!(invalid_field(f.search("item:(")).0, "query");
    assert_eq!(invalid_field(f.search("location:(Gate")).0, "query");
    assert_eq!(invalid_field(f.search("-car")).0, "query");
    assert_eq!(invalid_field(f.search("camera:abc")).0, "query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_words_are_answered_from_dataset_b_as_it_is_now() {
    let f = fixture();
    let t0 = 1_800_000_000_000;
    f.commit(&[
        (1, t0, 1, "car"),
        (2, t0 + 1, 2, "car"),
        (3, t0 + 2, 3, "person"),
        (4, t0 + 3, 4, "car"),
        // A location Dataset B does not know.
        (5, t0 + 4, 9, "car"),
    ]);
    f.searchable(5, Duration::from_secs(10)).await;
    let hits = |q: &str| {
        f.search(q)
            .unwrap_or_else(|e| panic!("{q:?}: {e}"))
            .det_oids
    };
    assert_eq!(hits("depot"), vec![4]);
    assert_eq!(hits("location:\"site 1000\""), vec![2, 1], "a phrase");
    assert_eq!(hits("location:\"gate 2\" OR item:person"), vec![3, 2]);
    assert_eq!(
        hits("car AND NOT location:gate"),
        vec![5, 4],
        "unknown places stay"
    );
    assert_eq!(hits("NOT location:gate AND car"), vec![5, 4]);
    assert_eq!(hits("person OR NOT car"), vec![3]);
    assert_eq!(
        invalid_field(f.search("NOT car")).0,
        "query",
        "exclusions only"
    );
    assert_eq!(hits("car -depot"), vec![5, 2, 1], "an unfielded exclusion");
    assert_eq!(hits("location:nowhere"), Vec::<i64>::new());
    assert_eq!(hits("car location:nowhere"), Vec::<i64>::new());
    assert_eq!(hits("car OR location:nowhere"), vec![5, 4, 2, 1]);
    assert_eq!(
        hits("location_oid:9"),
        vec![5],
        "the number is the event's own"
    );
    assert_eq!(
        hits("location:depot^3 car"),
        vec![4],
        "a boost is only dropped"
    );
    assert_eq!(hits("columns:north"), Vec::<i64>::new(), "no columns yet");

    // Dataset B reloaded: location 4 renamed, a column added. Searches see
    // it at once, with no event indexed again.
    std::fs::write(
        f.dir.path().join("locations.csv"),
        "geographical_location_oid,geographical_location,region\n\
         1,Site 1000 — Gate 1,North\n\
         2,Site 1000 — Gate 2,South\n\
         3,Gate-7,North\n\
         4,Warehouse,East\n",
    )
    .unwrap();
    f.locations.reload(None).unwrap();
    assert_eq!(hits("depot"), Vec::<i64>::new());
    assert_eq!(hits("warehouse"), vec![4]);
    assert_eq!(hits("columns:north"), vec![3, 1]);
    assert_eq!(
        hits("\"region north\" car"),
        vec![1],
        "a phrase over a column"
    );
    assert_eq!(hits("north OR east"), vec![4, 3, 1]);
    assert_eq!(
        hits("region:north"),
        vec![3, 1],
        "an unknown field: its words"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_writer_recovers_after_an_error_and_converges() {
    let f = fixture();
    let t0 = 1_800_000_000_000;
    let batch = |from: i64| -> Vec<(i64, i64, i64, &'static str)> {
        (from..from + 40)
            .map(|i| (i, t0 + i, 1 + i % 4, "car"))
            .collect()
    };
    f.commit(&batch(0));
    f.searchable(40, Duration::from_secs(10)).await;
    // The index directory fails: gone, and a file where it was, so neither
    // the writer nor a reopen can write there.
    // (Moved away in one step: the indexer may be writing in it.)
    let dir = f.index_dir();
    std::fs::rename(&dir, f.dir.path().join("search-gone")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    f.commit(&batch(40));
    f.commit(&batch(80));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Searches still answer, from what was committed before.
    assert_eq!(f.search("").unwrap().total, 40);
    // The disk is back: the index is reopened (rebuilt here, the directory
    // being new) and converges to the store, each event once.
    std::fs::remove_file(&dir).unwrap();
    f.commit(&batch(120));
    f.searchable(160, Duration::from_secs(30)).await;
    let mut hits = f.all_hits(MAX_PAGE);
    hits.sort();
    assert_eq!(hits, (0..160).collect::<Vec<i64>>());
    // And keeps following the store.
    f.commit(&batch(160));
    f.searchable(200, Duration::from_secs(10)).await;
}

/// A commit larger than the indexer's queue is left to a catch-up from the
/// store, which re-reads from before the newest event indexed: the events
/// indexed already are replaced, the rest added, and each is found once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_past_a_full_queue_indexes_each_event_once() {
    let f = fixture();
    let t0 = 1_800_000_000_000;
    let events = |from: i64, n: i64| -> Vec<(i64, i64, i64, &'static str)> {
        (from..from + n)
            .map(|i| (i, t0 + i, 1 + i % 4, "car"))
            .collect()
    };
    f.commit(&events(0, 100));
    f.searchable(100, Duration::from_secs(10)).await;
    // Indexed from the hub: a catch-up will read these again (its slack).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let big = super::MAX_QUEUED_INDEX_EVENTS as i64 + 1_000;
    f.commit(&events(100, big));
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The next commit finds room in the queue and starts the catch-up.
    f.commit(&events(100 + big, 10));
    let n = 110 + big;
    f.searchable(n as u64, Duration::from_secs(120)).await;
    let mut hits = f.all_hits(MAX_PAGE);
    hits.sort();
    assert_eq!(hits, (0..n).collect::<Vec<i64>>());
    // And ingest goes on from the hub.
    f.commit(&events(n, 10));
    f.searchable(n as u64 + 10, Duration::from_secs(10)).await;
}

/// The writers publish a commit after its write lands, so an event the
/// start-up catch-up read may reach the hub after it: it replaces its
/// document (indexed once), and the events committed after everything the
/// catch-up read are added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_both_read_by_the_catch_up_and_delivered_live_is_indexed_once() {
    let t0 = 1_800_000_000_000;
    let events = |from: i64, n: i64| -> Vec<(i64, i64, i64, &'static str)> {
        (from..from + n)
            .map(|i| (i, t0 + i, 1 + i % 4, "car"))
            .collect()
    };
    let mut late = Vec::new();
    let f = fixture_after(Duration::from_millis(50), |store, locations| {
        late = write_commit(store, locations, &events(0, 50)).1;
    });
    // The catch-up at start read the 50 from the store.
    f.searchable(50, Duration::from_secs(10)).await;
    // Their fan-out comes after, then a new commit.
    f.hub.publish(late);
    tokio::time::sleep(Duration::from_millis(5)).await;
    f.commit(&events(50, 10));
    f.searchable(60, Duration::from_secs(10)).await;
    let mut hits = f.all_hits(MAX_PAGE);
    hits.sort();
    assert_eq!(hits, (0..60).collect::<Vec<i64>>());
}

/// How far the index lags the store at 10,000 events/s (100 every 10 ms),
/// in-process, with nothing else competing for the cores: a measurement,
/// run by hand (`cargo test -p sightline-core --lib search_lag -- --ignored
/// --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn search_lag_at_10000_events_per_second() {
    // The default commit interval (config `search.commit_interval`).
    let f = fixture_with(Duration::from_millis(500));
    let t0 = 1_800_000_000_000;
    let mut lags: Vec<i64> = Vec::new();
    // (committed_ms, when it was committed) of commits not yet searchable.
    let mut waiting: std::collections::VecDeque<(i64, std::time::Instant)> = Default::default();
    let started = std::time::Instant::now();
    let mut next = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < Duration::from_secs(10) {
        tick.tick().await;
        let events: Vec<(i64, i64, i64, &str)> = (next..next + 100)
            .map(|i| (i, t0 + i, 1 + i % 4, "car"))
            .collect();
        next += 100;
        let committed = f.commit(&events);
        waiting.push_back((committed, std::time::Instant::now()));
        let indexed = f.index.indexed_ms();
        while let Some(&(ms, at)) = waiting.front() {
            if ms > indexed {
                break;
            }
            lags.push(at.elapsed().as_millis() as i64);
            waiting.pop_front();
        }
    }
    lags.sort();
    let pct = |p: usize| lags[(lags.len() - 1) * p / 100];
    println!(
        "search lag at 10,000 events/s: commits={} p50={}ms p90={}ms p99={}ms max={}ms",
        lags.len(),
        pct(50),
        pct(90),
        pct(99),
        pct(100)
    );
}

#[test]
fn a_scope_set_answers_membership_for_every_shape_of_oids() {
    // Near oids (a bitset), far-apart ones (a sorted list), negatives, one.
    for scope in [
        vec![3, 1, 64, 65, 127],
        vec![-5, 7, i64::MAX, i64::MIN],
        vec![42],
        vec![1, 1_000_000_000],
    ] {
        let set = LocationSet::new(&scope);
        for probe in [
            i64::MIN,
            -6,
            -5,
            0,
            1,
            2,
            3,
            7,
            42,
            63,
            64,
            65,
            66,
            127,
            128,
            1_000_000_000,
            i64::MAX,
        ] {
            assert_eq!(
                set.contains(probe),
                scope.contains(&probe),
                "{scope:?} {probe}"
            );
        }
    }
    assert!(!LocationSet::new(&[]).contains(0));
}
