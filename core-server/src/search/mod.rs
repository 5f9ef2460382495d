//! The full-text index of the joined events (tantivy), beside the store.
//!
//! # What is indexed
//!
//! One document per stored event, keyed by det_oid: the item (`item`, words;
//! `item_name`, the exact name), the location's name (`location`) and Dataset
//! B's other columns (`columns`, "name value" pairs) as they were when the
//! event was indexed, and as numbers `det_oid`, `location_oid`, `camera`,
//! `ts` (timestamp_detected, ms) and the agent (`agent`). A query is tantivy's
//! query syntax over `item`, `location`, `columns` and `agent` by default, e.g.
//! `backpack`, `location:gate`, `det_oid:123`, `camera:7 AND item:bicycle`.
//!
//! # Promises
//!
//! - The index follows the store's commits (the live hub) and commits itself
//!   every `search.commit_interval` (default 500 ms), so a committed event is
//!   searchable about that long after. Indexing runs on its own thread,
//!   searches on blocking threads, never on the async runtime.
//! - It never holds an event twice and converges to the store: each tantivy
//!   commit records how far (in commit time) it got; after a restart, or when
//!   it fell behind the hub, it re-reads the events committed since then from
//!   the store (`by_commit`, with [`CATCH_UP_SLACK`] of overlap for writers
//!   that commit out of clock order) and replaces their documents.
//! - A missing, unreadable or outdated index is rebuilt from the store, in
//!   the background; searches answer from what is indexed so far.
//! - Retention: the core's retention task cuts the index
//!   ([`SearchIndex::apply_retention`]) right after the store's events.
//! - When Dataset B is reloaded, every event is indexed again with the new
//!   location names and columns (in the background; each document is
//!   replaced in place, so a search never misses an event meanwhile).

use std::{
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use sightline_proto::v1::JoinedEvent;
use tantivy::{
    collector::{Count, TopDocs},
    query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery},
    schema::{
        Field, IndexRecordOption, NumericOptions, Schema, Value, FAST, INDEXED, STORED, STRING,
        TEXT,
    },
    Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{api::live::LiveHub, enrich::Locations, store::Store};

/// Overlap re-read from the store when catching up, for partition writers
/// whose commit times are not in the order their writes landed.
pub const CATCH_UP_SLACK: Duration = Duration::from_secs(10);
/// Most results one page returns.
pub const MAX_PAGE: usize = 100;
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

impl From<SearchError> for tonic::Status {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::Invalid { .. } => tonic::Status::invalid_argument(e.to_string()),
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}

/// A search: a query string plus filters, paged.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub query: String,
    pub location_oid: Option<i64>,
    pub camera_oid: Option<i64>,
    pub item_name: Option<String>,
    /// `[from_ms, to_ms)` on timestamp_detected; 0 means unbounded.
    pub from_ms: i64,
    pub to_ms: i64,
    /// 1..=[`MAX_PAGE`]; 0 means 20.
    pub page_size: usize,
    /// The previous page's `next_page_token` (an offset).
    pub page_token: String,
}

/// Matching det_oids, newest detection first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchHits {
    pub det_oids: Vec<i64>,
    pub total: u64,
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
    index: Index,
    reader: IndexReader,
    fields: Fields,
    parser: QueryParser,
    /// Commit time of the newest event indexed and committed.
    indexed_ms: Arc<AtomicI64>,
    /// To the indexer thread.
    jobs: mpsc::Sender<Job>,
}

enum Job {
    Events(Arc<Vec<JoinedEvent>>),
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
        commit_interval: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, SearchError> {
        let (schema, fields) = schema();
        let (index, resume) = open_or_rebuild(dir, &schema)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let mut parser = QueryParser::for_index(
            &index,
            vec![fields.item, fields.location, fields.columns, fields.agent],
        );
        parser.set_conjunction_by_default();
        let (tx, rx) = mpsc::channel::<Job>();
        let this = Arc::new(Self {
            index,
            reader,
            fields,
            parser,
            indexed_ms: Arc::new(AtomicI64::new(resume.unwrap_or(i64::MIN))),
            jobs: tx.clone(),
        });
        // Subscribed before the first read of the store: nothing falls between.
        let mut commits = hub.subscribe();
        let stop = shutdown.clone();
        let forward = tx.clone();
        tokio::spawn(async move {
            loop {
                let job = tokio::select! {
                    _ = stop.cancelled() => return,
                    msg = commits.recv() => match msg {
                        Ok(events) => Job::Events(events),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(commits = n, "search index fell behind the live hub; catching up from the store");
                            Job::CatchUp
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
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
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let idx = this.clone();
        let spawned = std::thread::Builder::new()
            .name("search-indexer".into())
            .spawn(move || {
                lower_priority();
                let writer: IndexWriter = match idx.index.writer_with_num_threads(1, 50_000_000) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let indexer = Indexer {
                    idx,
                    writer,
                    store,
                    locations,
                    commit_interval,
                    resume,
                    replace_through: i64::MIN,
                    pending: 0,
                    newest_ms: resume.unwrap_or(i64::MIN),
                };
                indexer.run(rx, shutdown);
            });
        spawned.map_err(|e| tantivy::TantivyError::SystemError(e.to_string()))?;
        ready_rx
            .recv()
            .map_err(|e| tantivy::TantivyError::SystemError(e.to_string()))??;
        Ok(this)
    }

    /// Deletes the documents of events detected before `before_ms` (at the
    /// indexer's next step; the store's retention has cut them already).
    pub fn apply_retention(&self, before_ms: i64) {
        let _ = self.jobs.send(Job::Retention(before_ms));
    }

    /// Commit time of the newest event that is searchable.
    pub fn indexed_ms(&self) -> i64 {
        self.indexed_ms.load(Ordering::Relaxed)
    }

    /// Runs a search (blocking).
    pub fn search(&self, req: &SearchRequest) -> Result<SearchHits, SearchError> {
        let page = match req.page_size {
            0 => 20,
            n @ 1..=MAX_PAGE => n,
            n => {
                return Err(SearchError::Invalid {
                    field: "page_size",
                    reason: format!("{n} is more than {MAX_PAGE}"),
                })
            }
        };
        let offset = if req.page_token.is_empty() {
            0
        } else {
            req.page_token
                .parse::<usize>()
                .map_err(|_| SearchError::Invalid {
                    field: "page_token",
                    reason: format!("{:?} is not a token this API gave out", req.page_token),
                })?
        };
        if req.to_ms != 0 && req.to_ms <= req.from_ms {
            return Err(SearchError::Invalid {
                field: "to_ms",
                reason: format!("{} is not after from_ms {}", req.to_ms, req.from_ms),
            });
        }
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let text = req.query.trim();
        if !text.is_empty() {
            let q = self
                .parser
                .parse_query(text)
                .map_err(|e| SearchError::Invalid {
                    field: "query",
                    reason: e.to_string(),
                })?;
            clauses.push((Occur::Must, q));
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
        if let Some(c) = req.camera_oid {
            clauses.push(term(Term::from_field_i64(f.camera, c)));
        }
        if let Some(i) = req.item_name.as_deref().filter(|i| !i.is_empty()) {
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
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(page)
            .and_offset(offset)
            .order_by_fast_field::<i64>("ts", Order::Desc);
        let (total, docs) = searcher.search(&query, &(Count, top))?;
        let mut det_oids = Vec::with_capacity(docs.len());
        for (_, addr) in docs {
            let doc: TantivyDocument = searcher.doc(addr)?;
            if let Some(oid) = doc.get_first(f.det_oid).and_then(|v| v.as_i64()) {
                det_oids.push(oid);
            }
        }
        let next = offset + det_oids.len();
        Ok(SearchHits {
            next_page_token: if next < total {
                next.to_string()
            } else {
                String::new()
            },
            det_oids,
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
        if let Some(l) = ev.location.as_ref().filter(|_| ev.location_matched) {
            doc.add_text(f.location, &l.geographical_location);
            let mut cols: Vec<_> = l.extra.iter().collect();
            cols.sort();
            for (k, v) in cols {
                doc.add_text(f.columns, format!("{k} {v}"));
            }
        }
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

/// The indexer thread's state.
struct Indexer {
    idx: Arc<SearchIndex>,
    writer: IndexWriter,
    store: Arc<Store>,
    locations: Arc<Locations>,
    commit_interval: Duration,
    /// Where to catch up from (`None`: rebuild everything).
    resume: Option<i64>,
    /// Live events committed at or before this may already be indexed (by a
    /// catch-up): their documents are replaced, not added.
    replace_through: i64,
    pending: usize,
    /// Newest commit time added (committed or not).
    newest_ms: i64,
}

impl Indexer {
    fn run(mut self, rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        if let Err(e) = self.catch_up() {
            tracing::error!(error = %e, "search index: reading the store failed");
        }
        let mut table = self.locations.current();
        let mut last_commit = Instant::now();
        loop {
            let wait = self.commit_interval.saturating_sub(last_commit.elapsed());
            match rx.recv_timeout(wait) {
                Ok(Job::Events(events)) => self.add(&events, false),
                Ok(Job::Retention(before)) => {
                    let old = RangeQuery::new(
                        Bound::Unbounded,
                        Bound::Excluded(Term::from_field_i64(self.idx.fields.ts, before)),
                    );
                    match self.writer.delete_query(Box::new(old)) {
                        Ok(_) => self.pending += 1,
                        Err(e) => tracing::error!(error = %e, "search index: retention failed"),
                    }
                }
                Ok(Job::CatchUp) => {
                    self.resume = Some(self.newest_ms);
                    if let Err(e) = self.catch_up() {
                        tracing::error!(error = %e, "search index: catching up failed");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.commit();
                    return;
                }
            }
            if shutdown.is_cancelled() {
                let _ = self.commit();
                return;
            }
            // Dataset B was reloaded: every document is made again with the
            // new names and columns (replaced one by one, so searches see
            // either the old or the new document, never none).
            if !Arc::ptr_eq(&table, &self.locations.current()) {
                table = self.locations.current();
                tracing::info!("Dataset B changed: re-indexing every event");
                self.resume = None;
                if let Err(e) = self.catch_up() {
                    tracing::error!(error = %e, "search index: re-indexing failed");
                }
            }
            if last_commit.elapsed() >= self.commit_interval {
                if let Err(e) = self.commit() {
                    tracing::error!(error = %e, "search index: commit failed");
                }
                last_commit = Instant::now();
            }
        }
    }

    /// Adds events; `replace` (or a commit time the last catch-up covered)
    /// replaces an existing document with the same det_oid.
    fn add(&mut self, events: &[JoinedEvent], replace: bool) {
        let f = self.idx.fields;
        for ev in events {
            let Some(doc) = self.idx.document(ev) else {
                continue;
            };
            if replace || ev.committed_ms <= self.replace_through {
                if let Some(oid) = ev.detection.as_ref().and_then(|d| d.detection_oid) {
                    self.writer
                        .delete_term(Term::from_field_i64(f.det_oid, oid));
                }
            }
            if let Err(e) = self.writer.add_document(doc) {
                tracing::error!(error = %e, "search index: adding a document failed");
                continue;
            }
            self.newest_ms = self.newest_ms.max(ev.committed_ms);
            self.pending += 1;
        }
    }

    /// Re-reads from the store what may be missing: everything (rebuild), or
    /// what was committed since the last position, less the slack.
    fn catch_up(&mut self) -> Result<(), SearchError> {
        let started = Instant::now();
        let mut n = 0usize;
        // Events committed from now on arrive from the hub; the ones already
        // committed may come both ways, so they are replaced, not added.
        self.replace_through = sightline_proto::now_ms() + CATCH_UP_SLACK.as_millis() as i64;
        match self.resume {
            None => {
                let table = self.locations.current();
                let store = self.store.clone();
                store.for_each_event(10_000, |mut events| {
                    table.join_all(&mut events);
                    n += events.len();
                    self.add(&events, true);
                    if self.pending >= 200_000 {
                        self.commit().map_err(|e| {
                            crate::store::StoreError::Corrupt(format!("search index commit: {e}"))
                        })?;
                    }
                    Ok(())
                })?;
            }
            Some(from) => {
                let from = from.saturating_sub(CATCH_UP_SLACK.as_millis() as i64);
                let mut after = Vec::new();
                loop {
                    let (mut events, last) = self.store.committed_since(from, &after, 10_000)?;
                    if events.is_empty() {
                        break;
                    }
                    self.locations.current().join_all(&mut events);
                    n += events.len();
                    self.add(&events, true);
                    after = last;
                }
            }
        }
        self.commit()?;
        self.resume = Some(self.newest_ms);
        tracing::info!(
            events = n,
            ms = started.elapsed().as_millis() as u64,
            "search index caught up with the store"
        );
        Ok(())
    }

    fn commit(&mut self) -> Result<(), SearchError> {
        if self.pending == 0 {
            return Ok(());
        }
        let payload = serde_json::to_string(&Payload {
            version: SCHEMA_VERSION.into(),
            committed_ms: self.newest_ms,
        })
        .unwrap_or_default();
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.idx.reader.reload()?;
        self.idx.indexed_ms.store(self.newest_ms, Ordering::Relaxed);
        self.pending = 0;
        Ok(())
    }
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
