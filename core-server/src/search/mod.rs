//! The full-text index of the joined events (tantivy), beside the store.
//!
//! # What is indexed
//!
//! One document per stored event, keyed by det_oid: the item (`item`, words;
//! `item_name`, the exact name), the agent (`agent`), and as numbers
//! `det_oid`, `location_oid`, `camera` and `ts` (timestamp_detected, ms). A
//! query is tantivy's query syntax over `item`, `location`, `columns` and
//! `agent` by default, e.g. `backpack`, `location:gate`, `det_oid:123`,
//! `camera:7 AND item:bicycle`. The location's name (`location`) and Dataset
//! B's other columns (`columns`, "name value" pairs) are not in the events'
//! documents: a query's words on them are looked up in Dataset B's rows, as
//! the table in use holds them, and stand for the events at the locations
//! they match ([`places`]).
//!
//! # How a query is read
//!
//! - At most [`MAX_QUERY_BYTES`] bytes and [`MAX_QUERY_DEPTH`] levels
//!   (parentheses open at once plus `NOT`s), checked before parsing; more is
//!   refused (`INVALID_ARGUMENT`, "field `query`: ...").
//! - Plain text means what it says: a word of punctuation alone (`—`, `-`,
//!   `&`) is a separator, not syntax, so `Site 1000 — Gate 1` finds that
//!   location; `Gate-1` is the phrase "gate 1". Text that is not valid
//!   syntax or names an unknown field (`Gate 1: north`) is searched as its
//!   words, all required, unless it names a field (`item:(` is refused:
//!   it was meant as syntax). A `-` or `+` glued to the front of a word is
//!   syntax (`-car`: without cars); quote it to search for it.
//!
//! # Pages
//!
//! Hits come newest detection first, det_oid (higher first) breaking ties:
//! a total order. A page token is an opaque cursor, the position of the last
//! hit given out (`c1` and 32 hex digits); the next page is the hits after
//! it, found in one pass over the matches whatever the depth (no offset,
//! nothing proportional to the page number is allocated). A token the API
//! did not give out is refused, naming `page_token`. `total` counts every
//! hit of the query, not only those after the cursor. Events indexed while
//! paging appear in their place: newer ones on a fresh first page.
//!
//! # Promises
//!
//! - The index follows the store's commits (the live hub) and commits itself
//!   every `search.commit_interval` (default 500 ms). A committed event is
//!   searchable after the rest of the interval, the commit (the interval's
//!   documents flushed as a segment) and the reader's reload: at 10,000
//!   events/s with the cores free, 0.37 s median, 0.74 s p99, 0.79 s at most
//!   (`search_lag_at_10000_events_per_second`, in-process). The indexer and
//!   its writer run at a lower CPU priority than ingest (nice 10), so while
//!   ingest keeps every core busy the index falls behind (1.6–3.1 s was seen
//!   at 10,000 events/s on 2 cores) and catches up when they free: ingest is
//!   never slowed to keep the index fresh, and the store, not the index, is
//!   the source of truth. Indexing runs on its own thread, searches on
//!   blocking threads, never on the async runtime.
//! - It never holds an event twice and converges to the store: each tantivy
//!   commit records how far (in commit time) it got; after a restart, or when
//!   it fell behind the hub, it re-reads the events committed since then from
//!   the store (`by_commit`, with [`CATCH_UP_SLACK`] of overlap for writers
//!   that commit out of clock order) and replaces their documents.
//! - After any error of the index (a full disk, a vanished directory, a
//!   killed writer) the writer is dropped and the index reopened from disk,
//!   after [`FIRST_RETRY`], doubling up to [`MAX_RETRY`] while it fails; it
//!   then catches up from its last commit as after a restart. Searches answer
//!   from what was committed meanwhile.
//! - A missing, unreadable or outdated index is rebuilt from the store, in
//!   the background; searches answer from what is indexed so far. Until a
//!   rebuild ends its commits record no position (it reads in detection
//!   order, not commit order), so one interrupted reads everything again.
//! - Retention: the core's retention task cuts the index
//!   ([`SearchIndex::apply_retention`]) right after the store's events.
//! - When Dataset B is reloaded, searches read the new names and columns at
//!   once, for every event: no event is indexed again.

mod indexer;
mod places;
mod query;
mod safe_delete;

use std::{
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, AtomicUsize, Ordering},
        mpsc, Arc,
    },
};

use arc_swap::ArcSwap;
use sightline_proto::v1::JoinedEvent;
use tantivy::{
    collector::{Count, TopDocs},
    query::{
        doc_predicate_query::{DocPredicateQuery, FunctionPredicate},
        AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery,
    },
    schema::{
        Field, IndexRecordOption, NumericOptions, Schema, FAST, INDEXED, STORED, STRING, TEXT,
    },
    DocId, Index, IndexReader, ReloadPolicy, SegmentReader, TantivyDocument, Term,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::live::{LiveHub, Missed},
    enrich::Locations,
    store::Store,
};
pub use indexer::{CATCH_UP_SLACK, FIRST_RETRY, MAX_RETRY};
pub(crate) use query::Cursor;
use query::NewestFirst;
pub use query::{MAX_QUERY_BYTES, MAX_QUERY_DEPTH};

/// Most results one page returns.
pub const MAX_PAGE: usize = 100;
/// Results a page returns when the request does not say.
pub const DEFAULT_PAGE: usize = 20;
/// Bump when the schema changes: an index of another version is rebuilt.
const SCHEMA_VERSION: &str = "sightline-search-1";

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl From<SearchError> for sightline_proto::ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Invalid { .. } => sightline_proto::ApiError::invalid(e.to_string()),
            // A full or failing disk under the store is UNAVAILABLE, as
            // everywhere else.
            SearchError::Store(s) => s.into(),
            SearchError::Index(_) => sightline_proto::ApiError::internal(e.to_string()),
        }
    }
}

impl From<SearchError> for tonic::Status {
    fn from(e: SearchError) -> Self {
        sightline_proto::ApiError::from(e).into()
    }
}

/// A search: a query string plus filters, paged.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    /// Tantivy query syntax or plain words (see the module doc); at most
    /// [`MAX_QUERY_BYTES`] bytes and [`MAX_QUERY_DEPTH`] deep.
    pub query: String,
    pub location_oid: Option<i64>,
    /// The caller's scope: only events at these locations (`None`: any).
    /// Checked by the index, so counts and pages cover the scope only.
    pub scope_locations: Option<Vec<i64>>,
    pub camera_oid: Option<i64>,
    /// The exact item name; at most [`MAX_QUERY_BYTES`] bytes.
    pub item_name: Option<String>,
    /// `[from_ms, to_ms)` on timestamp_detected; 0 means unbounded.
    pub from_ms: i64,
    pub to_ms: i64,
    /// 1..=[`MAX_PAGE`]; 0 means [`DEFAULT_PAGE`].
    pub page_size: usize,
    /// The previous page's `next_page_token` (an opaque cursor), or empty.
    pub page_token: String,
}

/// Matching det_oids, newest detection first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchHits {
    pub det_oids: Vec<i64>,
    /// Every hit of the query (not only those after the page token).
    pub total: u64,
    /// Empty on the last page.
    pub next_page_token: String,
}

#[derive(Clone, Copy)]
struct Fields {
    det_oid: Field,
    ts: Field,
    location_oid: Field,
    camera: Field,
    item: Field,
    item_name: Field,
    location: Field,
    columns: Field,
    agent: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let num = || NumericOptions::default().set_indexed().set_fast();
    let fields = Fields {
        det_oid: b.add_i64_field("det_oid", INDEXED | STORED | FAST),
        ts: b.add_i64_field("ts", num()),
        location_oid: b.add_i64_field("location_oid", num()),
        camera: b.add_i64_field("camera", num()),
        item: b.add_text_field("item", TEXT),
        item_name: b.add_text_field("item_name", STRING),
        location: b.add_text_field("location", TEXT),
        columns: b.add_text_field("columns", TEXT),
        agent: b.add_text_field("agent", STRING),
    };
    (b.build(), fields)
}

/// What a tantivy commit records: how far (commit time) the index got.
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    version: String,
    committed_ms: i64,
}

/// The index; searches go through [`SearchIndex::search`] (blocking).
pub struct SearchIndex {
    dir: PathBuf,
    schema: Schema,
    fields: Fields,
    /// The open index, replaced when the indexer reopens it after an error
    /// (a search in flight keeps the one it started with).
    open: ArcSwap<Opened>,
    /// Commit time of the newest event indexed and committed.
    indexed_ms: Arc<AtomicI64>,
    /// To the indexer thread.
    jobs: mpsc::Sender<Job>,
    /// Live events handed to the indexer and not indexed yet: at most
    /// [`MAX_QUEUED_INDEX_EVENTS`]; past it, live events are left to a
    /// catch-up from the store (as when the hub drops them).
    queued: AtomicUsize,
    /// Commit time of the oldest live event the indexer took and has not
    /// made searchable yet (0: none), for `sightline_search_index_lag_seconds`.
    oldest_unsearchable_ms: AtomicI64,
    /// Where the indexer observes the commit → searchable hop, once set
    /// ([`SearchIndex::observe_hop`]).
    hop: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
    /// Dataset B, whose rows answer a query's `location` and `columns`.
    locations: Arc<Locations>,
    /// The index of the table in use ([`places`]), made at the first search
    /// after each reload.
    places: std::sync::Mutex<Option<Arc<places::Places>>>,
}

/// Most live events waiting for the indexer (~6 MiB; 100,000 held ~30 MiB).
/// Ingest outruns the index while a backlog drains (the indexer runs at a
/// lower priority): an unbounded queue held the whole backlog in memory
/// (1.5 GiB for 4 M events, BENCHMARKS.md, "The commit path"); past this the
/// index catches up from the store instead, in steps of 10,000 events.
pub const MAX_QUEUED_INDEX_EVENTS: usize = 20_000;

/// One opening of the index on disk, with what searches need of it.
struct Opened {
    index: Index,
    reader: IndexReader,
    parser: QueryParser,
}

impl Opened {
    fn new(index: Index, fields: Fields) -> Result<Self, SearchError> {
        // `location` and `columns` are answered from Dataset B
        // ([`places`]), for unfielded words too.
        let (reader, parser) = reader_and_parser(&index, vec![fields.item, fields.agent])?;
        Ok(Self {
            index,
            reader,
            parser,
        })
    }
}

/// A reader of `index` reloaded by hand, and its query parser: words over
/// `defaults` when unfielded, all required by default.
fn reader_and_parser(
    index: &Index,
    defaults: Vec<Field>,
) -> Result<(IndexReader, QueryParser), SearchError> {
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let mut parser = QueryParser::for_index(index, defaults);
    parser.set_conjunction_by_default();
    Ok((reader, parser))
}

enum Job {
    Events(crate::api::live::CommitEvents),
    /// The hub dropped commits for us: re-read from the store.
    CatchUp,
    /// Delete documents detected before this (epoch ms).
    Retention(i64),
}

impl SearchIndex {
    /// Opens (or creates, or rebuilds) the index at `dir` and starts its
    /// indexer, which follows `hub` until `shutdown`.
    pub fn start(
        dir: &Path,
        store: Arc<Store>,
        locations: Arc<Locations>,
        hub: &LiveHub,
        commit_interval: std::time::Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, SearchError> {
        let (schema, fields) = schema();
        let (index, resume) = open_or_rebuild(dir, &schema)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let this = Arc::new(Self {
            dir: dir.to_path_buf(),
            schema,
            fields,
            open: ArcSwap::from_pointee(Opened::new(index, fields)?),
            indexed_ms: Arc::new(AtomicI64::new(resume.unwrap_or(i64::MIN))),
            jobs: tx.clone(),
            queued: AtomicUsize::new(0),
            oldest_unsearchable_ms: AtomicI64::new(0),
            hop: std::sync::OnceLock::new(),
            locations: locations.clone(),
            places: std::sync::Mutex::new(None),
        });
        // Subscribed before the first read of the store: nothing falls between.
        let mut commits = hub.subscribe();
        let stop = shutdown.clone();
        let forward = tx.clone();
        let counts = this.clone();
        tokio::spawn(async move {
            // Live events were left to a catch-up (the queue was full).
            let mut behind = false;
            loop {
                let job = tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = commits.recv() => match msg {
                        Ok(events) => {
                            let n = events.len();
                            if counts.queued.load(Ordering::Relaxed) + n > MAX_QUEUED_INDEX_EVENTS {
                                if !behind {
                                    tracing::debug!(queued = MAX_QUEUED_INDEX_EVENTS, "search index behind ingest; it catches up from the store");
                                }
                                behind = true;
                                continue;
                            }
                            if std::mem::take(&mut behind) && forward.send(Job::CatchUp).is_err() {
                                return;
                            }
                            counts.queued.fetch_add(n, Ordering::Relaxed);
                            Job::Events(events)
                        }
                        Err(Missed::Lagged(n)) => {
                            tracing::warn!(events = n, "search index fell behind the live hub; catching up from the store");
                            Job::CatchUp
                        }
                        Err(Missed::Closed) => return,
                    },
                };
                if forward.send(job).is_err() {
                    return;
                }
            }
        });
        drop(tx);
        // The indexer and the threads tantivy starts for its writer (they
        // inherit it) run at a lower CPU priority than ingest: when the two
        // compete for the cores, events are committed first and the index
        // catches up after (it is rebuilt from the store, never the reverse).
        let indexer = indexer::Indexer::new(this.clone(), store, commit_interval, resume);
        std::thread::Builder::new()
            .name("search-indexer".into())
            .spawn(move || {
                lower_priority();
                indexer.run(rx, shutdown);
            })
            .map_err(|e| tantivy::TantivyError::SystemError(e.to_string()))?;
        Ok(this)
    }

    fn current(&self) -> Arc<Opened> {
        self.open.load_full()
    }

    /// The index of Dataset B's table in use, made when it is not the one
    /// indexed last (one search waits for it; the others after it reuse it).
    fn places(&self) -> Result<Arc<places::Places>, SearchError> {
        let table = self.locations.current();
        let mut cached = self.places.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cached.as_ref().filter(|p| Arc::ptr_eq(&p.table, &table)) {
            return Ok(p.clone());
        }
        let made = Arc::new(places::Places::new(&self.schema, self.fields, table)?);
        *cached = Some(made.clone());
        Ok(made)
    }

    /// Deletes the documents of events detected before `before_ms` (at the
    /// indexer's next step; the store's retention has cut them already).
    pub fn apply_retention(&self, before_ms: i64) {
        let _ = self.jobs.send(Job::Retention(before_ms));
    }

    /// Has the indexer observe, for each live event, the time from its commit
    /// until it is searchable into `hop`.
    pub fn observe_hop(&self, hop: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.hop.set(hop);
    }

    /// How long ago (ms, from `now_ms`) the oldest live event the indexer
    /// took but has not made searchable yet was committed (0: none).
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        match self.oldest_unsearchable_ms.load(Ordering::Relaxed) {
            0 => 0,
            oldest => (now_ms - oldest).max(0),
        }
    }

    /// Commit time of the newest event that is searchable.
    pub fn indexed_ms(&self) -> i64 {
        self.indexed_ms.load(Ordering::Relaxed)
    }

    /// Runs a search (blocking). Every bound is checked before the index is
    /// touched; the cost is one pass over the query's matches, whatever the
    /// page.
    pub fn search(&self, req: &SearchRequest) -> Result<SearchHits, SearchError> {
        let page = match req.page_size {
            0 => DEFAULT_PAGE,
            n @ 1..=MAX_PAGE => n,
            n => {
                return Err(SearchError::Invalid {
                    field: "page_size",
                    reason: format!("{n} is more than {MAX_PAGE}"),
                })
            }
        };
        let after = Cursor::decode(&req.page_token)?;
        if req.to_ms != 0 && req.to_ms <= req.from_ms {
            return Err(SearchError::Invalid {
                field: "to_ms",
                reason: format!("{} is not after from_ms {}", req.to_ms, req.from_ms),
            });
        }
        query::check_bounds(&req.query)?;
        let item_name = req.item_name.as_deref().filter(|i| !i.is_empty());
        if let Some(i) = item_name.filter(|i| i.len() > MAX_QUERY_BYTES) {
            return Err(SearchError::Invalid {
                field: "item_name",
                reason: format!(
                    "{} bytes is more than the limit of {MAX_QUERY_BYTES}",
                    i.len()
                ),
            });
        }
        let opened = self.current();
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let text = req.query.trim();
        if !text.is_empty() {
            clauses.push((
                Occur::Must,
                query::parse(&opened.parser, &self.schema, &*self.places()?, f, text)?,
            ));
        }
        let term = |t: Term| -> (Occur, Box<dyn Query>) {
            (
                Occur::Must,
                Box::new(TermQuery::new(t, IndexRecordOption::Basic)),
            )
        };
        if let Some(l) = req.location_oid {
            clauses.push(term(Term::from_field_i64(f.location_oid, l)));
        }
        if let Some(scope) = &req.scope_locations {
            // Checked on the documents the other clauses match, from the
            // `location_oid` column: the cost follows the query's hits, not
            // the scope's events (a union of one term query per location
            // cost 2.1x the unscoped search with half of 100 locations in
            // scope; a term set read into a bitset, 2.1x for a rare word).
            let q: Box<dyn Query> = if scope.is_empty() {
                // An empty set: nothing (not everything).
                Box::new(tantivy::query::EmptyQuery)
            } else {
                let allowed = Arc::new(LocationSet::new(scope));
                let predicate = FunctionPredicate::from(move |segment: &SegmentReader| {
                    let column = segment
                        .fast_fields()
                        .i64("location_oid")?
                        .first_or_default_col(i64::MIN);
                    let allowed = allowed.clone();
                    Ok(move |doc: DocId| allowed.contains(column.get_val(doc)))
                });
                Box::new(DocPredicateQuery::from(predicate))
            };
            clauses.push((Occur::Must, q));
        }
        if let Some(c) = req.camera_oid {
            clauses.push(term(Term::from_field_i64(f.camera, c)));
        }
        if let Some(i) = item_name {
            clauses.push(term(Term::from_field_text(f.item_name, i)));
        }
        if req.from_ms != 0 || req.to_ms != 0 {
            let lower = match req.from_ms {
                0 => Bound::Unbounded,
                v => Bound::Included(Term::from_field_i64(f.ts, v)),
            };
            let upper = match req.to_ms {
                0 => Bound::Unbounded,
                v => Bound::Excluded(Term::from_field_i64(f.ts, v)),
            };
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
        }
        let query: Box<dyn Query> = if clauses.is_empty() {
            Box::new(AllQuery)
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = opened.reader.searcher();
        // One more than the page: whether another page follows.
        let top = TopDocs::with_limit(page + 1).order_by(NewestFirst { after });
        let (total, docs) = searcher.search(&query, &(Count, top))?;
        let mut keys: Vec<(i64, i64)> = docs.into_iter().filter_map(|(key, _)| key).collect();
        let more = keys.len() > page;
        keys.truncate(page);
        Ok(SearchHits {
            next_page_token: match keys.last() {
                Some(&(ts, det_oid)) if more => Cursor { ts, det_oid }.encode(),
                _ => String::new(),
            },
            det_oids: keys.into_iter().map(|(_, det_oid)| det_oid).collect(),
            total: total as u64,
        })
    }

    /// [`Self::search`], then the hits read from the store, joined with
    /// Dataset B and with their media (blocking).
    pub fn search_joined(
        &self,
        store: &Store,
        locations: &Locations,
        req: &SearchRequest,
    ) -> Result<(Vec<JoinedEvent>, SearchHits), SearchError> {
        let hits = self.search(req)?;
        let mut events = Vec::with_capacity(hits.det_oids.len());
        for oid in &hits.det_oids {
            // Gone from the store (retention) but not yet from the index: skipped.
            if let Some(ev) = store.get_event(*oid)? {
                events.push(ev);
            }
        }
        store.fill_media(&mut events)?;
        locations.current().join_all(&mut events);
        Ok((events, hits))
    }

    /// `ev`'s document. Its location's name and columns are not in it:
    /// queries read them from Dataset B ([`places`]).
    fn document(&self, ev: &JoinedEvent) -> Option<TantivyDocument> {
        let f = self.fields;
        let d = ev.detection.as_ref()?;
        let mut doc = TantivyDocument::default();
        doc.add_i64(f.det_oid, d.detection_oid?);
        doc.add_i64(f.ts, d.timestamp_detected);
        doc.add_i64(f.location_oid, d.geographical_location_oid);
        doc.add_i64(f.camera, d.video_camera_oid);
        doc.add_text(f.item, &d.item_name);
        doc.add_text(f.item_name, &d.item_name);
        doc.add_text(f.agent, &ev.agent_id);
        Some(doc)
    }
}

/// Opens the index at `dir`; a missing, unreadable or outdated one is
/// replaced by an empty index (to be rebuilt: `None`). `Some(ms)`: resume
/// from that commit time.
fn open_or_rebuild(dir: &Path, schema: &Schema) -> Result<(Index, Option<i64>), SearchError> {
    let why = match Index::open_in_dir(dir) {
        _ if !dir.join("meta.json").exists() => "there is none".to_string(),
        Ok(index) if index.schema() == *schema => match index.load_metas() {
            Ok(metas) => match metas
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_str::<Payload>(p).ok())
            {
                Some(p) if p.version == SCHEMA_VERSION => return Ok((index, Some(p.committed_ms))),
                Some(_) => "it was written by another version".to_string(),
                // Created, never committed: nothing indexed yet.
                None if metas.segments.is_empty() => "it is empty".to_string(),
                None => "it records no position".to_string(),
            },
            Err(e) => format!("its metadata does not load: {e}"),
        },
        Ok(_) => "its schema differs".to_string(),
        Err(e) => format!("it does not open: {e}"),
    };
    tracing::info!(dir = %dir.display(), reason = %why, "building the search index from the store");
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| tantivy::TantivyError::SystemError(e.to_string()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| tantivy::TantivyError::SystemError(e.to_string()))?;
    Ok((Index::create_in_dir(dir, schema.clone())?, None))
}

/// Lowers the calling thread's CPU priority to nice 10 (on Linux the nice
/// value belongs to the thread, given by its id, and threads started from it
/// inherit it).
fn lower_priority() {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), 10) {
        tracing::debug!(error = %e, "search index: could not lower the indexer's priority");
    }
}

/// Where the index lives when `search.path` is unset: beside the store.
pub fn default_path(storage: &Path) -> PathBuf {
    let mut p = storage.as_os_str().to_owned();
    p.push("-search");
    PathBuf::from(p)
}

/// A scope's locations, asked once per search hit: a bitset over the
/// scope's span of oids when that is small (one shift and mask; a
/// `HashSet<i64>` lookup hashed every hit and cost a frequent word half the
/// search), else a sorted list searched by halves.
enum LocationSet {
    Bits { min: i64, words: Vec<u64> },
    Sorted(Vec<i64>),
}

/// Widest span of oids kept as a bitset (128 KiB of bits).
const LOCATION_BITSET_SPAN: u64 = 1 << 20;

impl LocationSet {
    fn new(scope: &[i64]) -> Self {
        let (Some(&min), Some(&max)) = (scope.iter().min(), scope.iter().max()) else {
            return LocationSet::Sorted(Vec::new());
        };
        let span = max.abs_diff(min);
        if span < LOCATION_BITSET_SPAN {
            let mut words = vec![0u64; (span / 64 + 1) as usize];
            for &l in scope {
                let d = l.abs_diff(min);
                words[(d / 64) as usize] |= 1 << (d % 64);
            }
            LocationSet::Bits { min, words }
        } else {
            let mut v = scope.to_vec();
            v.sort_unstable();
            v.dedup();
            LocationSet::Sorted(v)
        }
    }

    #[inline]
    fn contains(&self, l: i64) -> bool {
        match self {
            LocationSet::Bits { min, words } => {
                if l < *min {
                    return false;
                }
                let d = l.abs_diff(*min);
                words
                    .get((d / 64) as usize)
                    .is_some_and(|w| w & (1 << (d % 64)) != 0)
            }
            LocationSet::Sorted(v) => v.binary_search(&l).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests;
