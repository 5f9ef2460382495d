//! The targets: every decoder and request handler that takes bytes from
//! outside. Each is `fn(&[u8])` and must return, without panicking, for any
//! bytes; where a result has a property that must hold (a range inside the
//! object), it is asserted too.
//!
//! Structured inputs are text, so mutations of the corpus stay meaningful:
//! `search_query` is lines (query, page token, item, location, camera, from,
//! to); `http_query` is a query string.

use std::{
    io::Cursor,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use prost::Message;
use rocksdb::WriteBatch;
use sightline_core::{
    api::{dashboard::backend::CoreBackend, live::LiveHub},
    enrich::{LocationTable, Locations},
    fleet::Fleet,
    ingest::decode_batch,
    media::{check, http::parse_range, http::RangeAsk},
    metrics::Metrics,
    search::{SearchIndex, SearchRequest},
    store::{cf, keys, keys::Bucket, Store, CF_AGG, CF_EVENTS},
};
use sightline_proto::{
    edge::codec_limited,
    v1::{
        AgentMessage, CoreMessage, Detection, EdgeEvent, JoinedEvent, PublishRequest, QuicCall,
        QuicReply,
    },
    validate_detection, Limits,
};
use sightline_web::{backend::Backend, model::SearchQuery};
use tokio_util::codec::Decoder;

use crate::Target;

/// Every target, by name.
pub const ALL: &[Target] = &[
    Target {
        name: "edge_messages",
        run: edge_messages,
    },
    Target {
        name: "intake",
        run: intake,
    },
    Target {
        name: "replay_csv",
        run: replay_csv,
    },
    Target {
        name: "replay_jsonl",
        run: replay_jsonl,
    },
    Target {
        name: "replay_parquet",
        run: replay_parquet,
    },
    Target {
        name: "dataset_b_csv",
        run: dataset_b_csv,
    },
    Target {
        name: "dataset_b_parquet",
        run: dataset_b_parquet,
    },
    Target {
        name: "search_query",
        run: search_query,
    },
    Target {
        name: "page_tokens",
        run: page_tokens,
    },
    Target {
        name: "http_range",
        run: http_range,
    },
    Target {
        name: "http_query",
        run: http_query,
    },
    Target {
        name: "media_jpeg",
        run: media_jpeg,
    },
    Target {
        name: "media_mp4",
        run: media_mp4,
    },
];

pub fn by_name(name: &str) -> Option<Target> {
    ALL.iter().find(|t| t.name == name).copied()
}

/// The largest frame the edge codec is given here (the link's own bound is
/// 16 MiB; a smaller one keeps each call fast, the checks are the same).
const FRAME_LIMIT: usize = 1024 * 1024;

/// Protobuf messages of the edge link, its length-delimited frames, and the
/// core's batch decoding (a batch's events as raw bytes).
pub fn edge_messages(data: &[u8]) {
    let limits = Limits::default();
    let _ = CoreMessage::decode(data);
    let _ = QuicCall::decode(data);
    let _ = QuicReply::decode(data);
    if let Ok(AgentMessage {
        msg: Some(sightline_proto::v1::agent_message::Msg::Batch(b)),
    }) = AgentMessage::decode(data)
    {
        let _ = decode_batch(b.first_seq, b.events, &limits, 0, None);
    }
    // The bytes as one event, and as a batch of events cut at zero bytes.
    let _ = decode_batch(1, vec![Bytes::copy_from_slice(data)], &limits, 0, None);
    let parts: Vec<Bytes> = data
        .split(|b| *b == 0)
        .take(64)
        .map(Bytes::copy_from_slice)
        .collect();
    let _ = decode_batch(1, parts, &limits, i64::MAX, None);
    // QUIC streams: frames, each a message.
    let mut codec = codec_limited(FRAME_LIMIT);
    let mut buf = BytesMut::from(data);
    for _ in 0..1000 {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let _ = AgentMessage::decode(frame.as_ref());
                let _ = QuicReply::decode(frame.as_ref());
            }
            _ => break,
        }
    }
}

/// The agent's intake: a PublishRequest's detections validated, stamped,
/// and the stamped event checked again as the core would.
pub fn intake(data: &[u8]) {
    let limits = Limits::default();
    let now = sightline_proto::now_ms();
    let mut detections = match PublishRequest::decode(data) {
        Ok(r) => r.detections,
        Err(_) => Vec::new(),
    };
    if let Ok(d) = Detection::decode(data) {
        detections.push(d);
    }
    for mut d in detections.into_iter().take(1000) {
        if validate_detection(&d, now, &limits, false).is_ok() {
            let oid = sightline_agent::stamp::stamp(&mut d);
            assert!(oid > 0, "a stamped det_oid is positive");
            assert_eq!(
                sightline_agent::stamp::stamp(&mut d),
                oid,
                "stamping is stable"
            );
            let ev = EdgeEvent {
                seq: 1,
                detection: Some(d),
                accepted_ms: now,
            };
            let _ = decode_batch(1, vec![ev.encode_to_vec().into()], &limits, 0, None);
        }
    }
}

/// A scratch directory for the files the targets write (one file per
/// target, so targets may run side by side).
fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"))
        .path()
        .join(name)
}

fn replay(data: &[u8], file: &str, format: sightline_agent::sources::replay::Format) {
    let path = scratch(file);
    std::fs::write(&path, data).expect("writing the scratch file");
    let _ = sightline_agent::sources::replay::read_rows(&path, format);
}

pub fn replay_csv(data: &[u8]) {
    replay(
        data,
        "replay.csv",
        sightline_agent::sources::replay::Format::Csv,
    );
}

pub fn replay_jsonl(data: &[u8]) {
    replay(
        data,
        "replay.jsonl",
        sightline_agent::sources::replay::Format::Jsonl,
    );
}

pub fn replay_parquet(data: &[u8]) {
    replay(
        data,
        "replay.parquet",
        sightline_agent::sources::replay::Format::Parquet,
    );
}

fn dataset_b(data: &[u8], file: &str) {
    let path = scratch(file);
    std::fs::write(&path, data).expect("writing the scratch file");
    let _ = LocationTable::load(&path);
}

pub fn dataset_b_csv(data: &[u8]) {
    dataset_b(data, "locations.csv");
}

pub fn dataset_b_parquet(data: &[u8]) {
    dataset_b(data, "locations.parquet");
}

/// Events in the fixture core.
const EVENTS: i64 = 40;
/// Their detection times: one a minute from here.
const T0: i64 = 1_764_000_000_000;

/// A small real core: store, search index and the dashboard's backend.
pub struct Core {
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
    pub store: Arc<Store>,
    pub index: Arc<SearchIndex>,
    pub backend: CoreBackend,
}

fn event(i: i64) -> JoinedEvent {
    let items = ["car", "person", "backpack", "bicycle"];
    JoinedEvent {
        detection: Some(Detection {
            geographical_location_oid: 1 + i % 3,
            video_camera_oid: 10 + i % 5,
            detection_oid: Some(1000 + i),
            item_name: items[(i % 4) as usize].into(),
            timestamp_detected: T0 + i * 60_000,
            ..Default::default()
        }),
        agent_id: format!("agent-{}", i % 2),
        seq: i as u64 + 1,
        accepted_ms: T0 + i * 60_000,
        committed_ms: T0 + i * 60_000 + 5,
        ..Default::default()
    }
}

/// Built once per process; searches answer once every event is indexed.
pub fn core() -> &'static Core {
    static CORE: OnceLock<Core> = OnceLock::new();
    CORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let store =
            Arc::new(Store::open(&dir.path().join("store"), false, 8 << 20).expect("a store"));
        let events: Vec<JoinedEvent> = (0..EVENTS).map(event).collect();
        let mut b = WriteBatch::default();
        let db = store.db().expect("the store is open");
        for ev in &events {
            let d = ev.detection.as_ref().expect("a detection");
            b.put_cf(
                cf(&db, CF_EVENTS),
                keys::event_key(d.timestamp_detected, d.detection_oid.unwrap_or_default()),
                ev.encode_to_vec(),
            );
            for bucket in [Bucket::Minute, Bucket::Hour] {
                b.merge_cf(
                    cf(&db, CF_AGG),
                    keys::agg_key(
                        bucket,
                        bucket.floor(d.timestamp_detected),
                        d.geographical_location_oid,
                        &d.item_name,
                    ),
                    1u64.to_le_bytes(),
                );
            }
        }
        drop(db);
        store.write(b).expect("writing the fixture events");
        let locations = Arc::new(Locations::new(None).expect("an empty table"));
        let hub = LiveHub::new(16);
        let index = {
            let _enter = rt.enter();
            SearchIndex::start(
                &dir.path().join("index"),
                store.clone(),
                locations.clone(),
                &hub,
                Duration::from_millis(50),
                tokio_util::sync::CancellationToken::new(),
            )
            .expect("a search index")
        };
        hub.publish(events);
        let all = SearchRequest {
            page_size: 1,
            ..Default::default()
        };
        let started = Instant::now();
        while index.search(&all).map(|h| h.total).unwrap_or(0) < EVENTS as u64 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the fixture's events are indexed within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let backend = CoreBackend {
            store: store.clone(),
            locations,
            fleet: Arc::new(Fleet::new(Arc::new(Metrics::new()), Vec::new())),
            cameras: Arc::new(Mutex::default()),
            search: index.clone(),
            who: sightline_core::access::Principal::admin_token(),
            csrf: None,
            audit: None,
            peer: None,
            cluster: None,
        };
        Core {
            _dir: dir,
            _rt: rt,
            store,
            index,
            backend,
        }
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A search: lines query, page token, item, location, camera, from, to,
/// page size; run on the index and through the dashboard's handler.
pub fn search_query(data: &[u8]) {
    let core = core();
    let lines: Vec<String> = data.split(|b| *b == b'\n').map(lossy).collect();
    let line = |i: usize| lines.get(i).cloned().unwrap_or_default();
    let num = |i: usize| line(i).trim().parse::<i64>().ok();
    let item = line(2);
    let req = SearchRequest {
        query: line(0),
        page_token: line(1),
        item_name: (!item.is_empty()).then_some(item.clone()),
        location_oid: num(3),
        scope_locations: None,
        camera_oid: num(4),
        from_ms: num(5).unwrap_or(0),
        to_ms: num(6).unwrap_or(0),
        page_size: num(7).unwrap_or(0).clamp(0, 1000) as usize,
    };
    if let Ok(hits) = core.index.search(&req) {
        assert!(hits.det_oids.len() <= sightline_core::search::MAX_PAGE);
    }
    let q = SearchQuery {
        query: req.query.clone(),
        location_oid: req.location_oid,
        camera_oid: req.camera_oid,
        item: req.item_name.clone(),
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        page_token: req.page_token.clone(),
    };
    let _ = core.backend.search(&q);
}

/// A page token as given (lossy UTF-8): the event list and the quarantine.
pub fn page_tokens(data: &[u8]) {
    let core = core();
    let token = lossy(data);
    if let Ok((events, _next)) = core.store.list_events(0, 0, None, 10, &token) {
        assert!(events.len() <= 10);
    }
    let _ = core.store.list_quarantine(10, &token);
    let _ = core.backend.quarantine(&token);
}

/// A `Range` header against objects of several sizes: a part is inside the
/// object.
pub fn http_range(data: &[u8]) {
    let value = lossy(data);
    // parse_range's callers give it objects of at least one byte (uploads
    // of zero bytes are refused); it is not defined for 0.
    for total in [1, 10, 1000, 1 << 40, u64::MAX] {
        match parse_range(&value, total) {
            RangeAsk::Part { start, end } => {
                assert!(
                    start <= end && end < total,
                    "{value:?} of {total}: part {start}..={end}"
                );
            }
            RangeAsk::Whole | RangeAsk::Unsatisfiable => {}
        }
    }
}

/// The dashboard's query strings: `range`, `from`, `to`, `x`, `by` as the
/// top items and timeline pages pass them to their server functions, and
/// a search query string through axum's `Query` extractor.
pub fn http_query(data: &[u8]) {
    let core = core();
    let mut range = "1h".to_string();
    let (mut from, mut to, mut by, mut x) =
        (String::new(), String::new(), "item".to_string(), 10u32);
    for (k, v) in url::form_urlencoded::parse(data) {
        match &*k {
            "range" => range = v.into_owned(),
            "from" => from = v.into_owned(),
            "to" => to = v.into_owned(),
            "by" => by = v.into_owned(),
            "x" => x = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let now = core.backend.now_ms();
    if let Ok((from_ms, to_ms)) = sightline_web::api::resolve_range(&range, &from, &to, now) {
        // As get_top_items does.
        if (1..=100).contains(&x) {
            let _ = core.backend.top_items(from_ms, to_ms, x);
        }
        let _ = core.backend.timeline(from_ms, to_ms, &by);
    }
    let uri = format!("/search?{}", lossy(data));
    if let Ok(uri) = uri.parse::<axum::http::Uri>() {
        if let Ok(axum::extract::Query(q)) = axum::extract::Query::<SearchQuery>::try_from_uri(&uri)
        {
            let _ = core.backend.search(&q);
        }
    }
}

pub fn media_jpeg(data: &[u8]) {
    let _ = check::check_jpeg(data);
}

/// An MP4 of its real length, and one claiming more bytes than it has.
pub fn media_mp4(data: &[u8]) {
    let len = data.len() as u64;
    let _ = check::check_mp4(&mut Cursor::new(data), len);
    let _ = check::check_mp4(&mut Cursor::new(data), len + 16);
}
