//! The indexer thread: follows the store's commits, commits the index every
//! `commit_interval`, and after any error of the index (a full or vanished
//! disk, a killed writer) reopens it from disk with a backoff and catches up
//! from the store.

use std::{
    ops::Bound,
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant},
};

use sightline_proto::v1::JoinedEvent;
use tantivy::{query::RangeQuery, IndexWriter, Term};
use tokio_util::sync::CancellationToken;

use super::{
    open_or_rebuild, safe_delete::SafeTermSet, Job, Opened, Payload, SearchError, SearchIndex,
    SCHEMA_VERSION,
};
use crate::store::Store;

/// Overlap re-read from the store when catching up, for partition writers
/// whose commit times are not in the order their writes landed.
pub const CATCH_UP_SLACK: Duration = Duration::from_secs(10);
/// First wait before reopening the index after an error; doubled after each
/// failed attempt up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to reopen a failed index.
pub const MAX_RETRY: Duration = Duration::from_secs(10);
/// The writer's indexing memory (tantivy's arena; a segment is flushed when
/// it is full, besides every commit). Between two commits (every
/// `search.commit_interval`, 500 ms) a draining backlog adds ~45,000
/// documents; 24 MB holds them in one segment more often than not. It was
/// 50 MB (BENCHMARKS.md, "Memory under a backlog"); tantivy's least is 15 MB.
const WRITER_HEAP: usize = 24_000_000;
/// Documents added during a rebuild or a catch-up between two commits. Each
/// one replaces (a delete by det_oid, ~1 KiB held by tantivy's delete queue
/// until the next commit): a catch-up chasing a draining backlog without a
/// commit held them by the million — 1.5–2 GiB (heaptrack: `delete_term` ←
/// `catch_up`; BENCHMARKS.md, "The commit path").
const REBUILD_COMMIT_EVERY: usize = 25_000;
/// Most live events whose commit times wait for the next index commit (for
/// the commit → searchable hop; beyond it they are not observed): ~800 KiB.
const MAX_TIMED: usize = 100_000;
/// Events read from the store per step of a catch-up (whole commits, so
/// one step may read more). Each step's events and their documents are held
/// together: 10,000 held ~15 MB of the core's peak while a burst's catch-up
/// ran (BENCHMARKS.md, "thirty-first session").
const CATCH_UP_BATCH: usize = 2_500;

/// The indexer thread's state.
pub(super) struct Indexer {
    pub idx: Arc<SearchIndex>,
    /// `None` after an error, until the index is reopened.
    pub writer: Option<IndexWriter>,
    pub store: Arc<Store>,
    pub commit_interval: Duration,
    /// Where to catch up from (`None`: rebuild everything).
    pub resume: Option<i64>,
    /// Whether a catch-up from `resume` is due.
    pub catch_up_due: bool,
    /// Live events committed at or before this may already be indexed (by a
    /// catch-up): their documents are replaced, not added. The newest commit
    /// time indexed when the last catch-up ended: a catch-up reads only
    /// commits already written, each stamped before its write, so nothing it
    /// read is newer. (It was the catch-up's start plus [`CATCH_UP_SLACK`]:
    /// every live event of the next 10 s was a delete, a term-set query
    /// tantivy runs over every segment's det_oid terms — ~8 % of the core's
    /// CPU at 10,000 events/s after a start; BENCHMARKS.md, "twenty-eighth
    /// session".)
    pub replace_through: i64,
    /// Documents added or deleted since the last commit.
    pub pending: usize,
    /// Newest commit time added (committed or not).
    pub newest_ms: i64,
    /// Commit times of the live events added since the last commit (at most
    /// [`MAX_TIMED`]), observed as the commit → searchable hop at the next.
    pub unsearchable: Vec<i64>,
    /// The newest retention cut asked for, applied again after a reopen.
    pub retention: Option<i64>,
    /// When to try reopening after an error, and the wait after that.
    pub retry_at: Instant,
    pub backoff: Duration,
}

impl Indexer {
    pub fn new(
        idx: Arc<SearchIndex>,
        store: Arc<Store>,
        commit_interval: Duration,
        resume: Option<i64>,
    ) -> Self {
        Self {
            idx,
            writer: None,
            store,
            commit_interval,
            resume,
            catch_up_due: true,
            replace_through: i64::MIN,
            pending: 0,
            newest_ms: resume.unwrap_or(i64::MIN),
            unsearchable: Vec::new(),
            retention: None,
            retry_at: Instant::now(),
            backoff: FIRST_RETRY,
        }
    }

    pub fn run(mut self, rx: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        match self
            .idx
            .current()
            .index
            .writer_with_num_threads(1, WRITER_HEAP)
        {
            Ok(w) => self.writer = Some(w),
            Err(e) => self.fail(e.into()),
        }
        let mut last_commit = Instant::now();
        loop {
            self.recover();
            if self.writer.is_some() && self.catch_up_due {
                if let Err(e) = self.catch_up() {
                    self.fail(e);
                }
            }
            let mut wait = self.commit_interval.saturating_sub(last_commit.elapsed());
            if self.writer.is_none() {
                wait = wait.min(self.retry_at.saturating_duration_since(Instant::now()));
            }
            match rx.recv_timeout(wait) {
                // Without a writer they are dropped: the catch-up after the
                // reopen reads them from the store.
                Ok(Job::Events(events)) => {
                    if let Err(e) = self.add(&events, self.replace_through, true) {
                        self.fail(e);
                    }
                    self.idx.queued.fetch_sub(events.len(), Ordering::Relaxed);
                }
                Ok(Job::Retention(before)) => {
                    self.retention = Some(self.retention.map_or(before, |r| r.max(before)));
                    if let Err(e) = self.apply_retention() {
                        self.fail(e);
                    }
                }
                // The hub dropped commits: read them from the store, from
                // the newest added (or from where a due catch-up starts).
                Ok(Job::CatchUp) => {
                    self.resume = match (self.catch_up_due, self.resume) {
                        (true, r) => r.map(|r| r.min(self.newest_ms)),
                        (false, _) => Some(self.newest_ms),
                    };
                    self.catch_up_due = true;
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
            if last_commit.elapsed() >= self.commit_interval {
                if let Err(e) = self.commit() {
                    self.fail(e);
                }
                last_commit = Instant::now();
            }
        }
    }

    /// After an error: the writer is dropped (what it held uncommitted is
    /// read again from the store later), and the index is reopened after
    /// the backoff.
    fn fail(&mut self, e: SearchError) {
        tracing::error!(
            error = %e,
            retry_in_ms = self.backoff.as_millis() as u64,
            "search index failed; reopening it and catching up from the store"
        );
        // Joins the writer's threads and frees its lock on the directory.
        self.writer = None;
        self.pending = 0;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
    }

    /// Reopens the index from disk (rebuilding it when it is missing or
    /// unreadable, as at start) once the backoff is over; a catch-up from
    /// what it committed last follows.
    fn recover(&mut self) {
        if self.writer.is_some() || Instant::now() < self.retry_at {
            return;
        }
        let reopened =
            open_or_rebuild(&self.idx.dir, &self.idx.schema).and_then(|(index, resume)| {
                let opened = Opened::new(index, self.idx.fields)?;
                let writer = opened.index.writer_with_num_threads(1, WRITER_HEAP)?;
                Ok((opened, writer, resume))
            });
        match reopened {
            Ok((opened, writer, on_disk)) => {
                tracing::info!(
                    position_ms = on_disk,
                    "search index reopened; catching up from the store"
                );
                self.idx.open.store(Arc::new(opened));
                self.idx
                    .indexed_ms
                    .store(on_disk.unwrap_or(i64::MIN), Ordering::Relaxed);
                self.newest_ms = on_disk.unwrap_or(i64::MIN);
                // A re-index asked for before the error still applies.
                self.resume = match (self.catch_up_due, self.resume, on_disk) {
                    (true, None, _) | (_, _, None) => None,
                    (true, Some(r), Some(d)) => Some(r.min(d)),
                    (false, _, Some(d)) => Some(d),
                };
                self.catch_up_due = true;
                self.writer = Some(writer);
                if let Err(e) = self.apply_retention() {
                    self.fail(e);
                }
            }
            Err(e) => self.fail(e),
        }
    }

    fn apply_retention(&mut self) -> Result<(), SearchError> {
        let (Some(writer), Some(before)) = (self.writer.as_ref(), self.retention) else {
            return Ok(());
        };
        let old = RangeQuery::new(
            Bound::Unbounded,
            Bound::Excluded(Term::from_field_i64(self.idx.fields.ts, before)),
        );
        writer.delete_query(Box::new(old))?;
        self.pending += 1;
        Ok(())
    }

    /// Adds events: `live` ones from the hub (timed to searchable), or ones
    /// a catch-up read from the store. Without a writer, does nothing.
    ///
    /// The documents replaced go in one delete for the whole call, before
    /// the adds (a delete reaches only documents added before it): a delete
    /// per document is a `TermQuery` weight of ~600 bytes that tantivy's
    /// delete queue holds until the next commit — 69 MiB of the core's heap
    /// while a backlog drained (heaptrack; BENCHMARKS.md, "Memory under a
    /// backlog"); a term set holds its det_oids in an FST ([`SafeTermSet`]:
    /// tantivy's `TermSetQuery`, safe on an empty segment).
    ///
    /// An event that may be indexed already, committed at or before
    /// `replace_through`, replaces the document with its det_oid.
    fn add(
        &mut self,
        events: &[JoinedEvent],
        replace_through: i64,
        live: bool,
    ) -> Result<(), SearchError> {
        let Some(writer) = self.writer.as_ref() else {
            return Ok(());
        };
        let f = self.idx.fields;
        let mut docs = Vec::with_capacity(events.len());
        let mut replaced = Vec::new();
        for ev in events {
            let Some(doc) = self.idx.document(ev) else {
                continue;
            };
            if ev.committed_ms <= replace_through {
                if let Some(oid) = ev.detection.as_ref().and_then(|d| d.detection_oid) {
                    replaced.push(Term::from_field_i64(f.det_oid, oid));
                }
            }
            docs.push((doc, ev.committed_ms));
            if live && self.unsearchable.len() < MAX_TIMED {
                if self.unsearchable.is_empty() {
                    self.idx
                        .oldest_unsearchable_ms
                        .store(ev.committed_ms, Ordering::Relaxed);
                }
                self.unsearchable.push(ev.committed_ms);
            }
        }
        if !replaced.is_empty() {
            writer.delete_query(Box::new(SafeTermSet::new(replaced)))?;
        }
        for (doc, committed_ms) in docs {
            writer.add_document(doc)?;
            self.newest_ms = self.newest_ms.max(committed_ms);
            self.pending += 1;
        }
        Ok(())
    }

    /// Re-reads from the store what may be missing: everything (rebuild), or
    /// what was committed since the last position, less the slack.
    fn catch_up(&mut self) -> Result<(), SearchError> {
        let started = Instant::now();
        let mut n = 0usize;
        // Every document in the index was committed at or before the newest
        // time added so far: the events a catch-up reads past it are new to
        // the index, added without a delete (a catch-up after a backlog
        // overran the queue replaced every event it read — a delete per
        // document, BENCHMARKS.md, "The commit path", eleventh session).
        let indexed_through = self.newest_ms;
        match self.resume {
            None => {
                let store = self.store.clone();
                // An index error stops the store's iteration; kept here.
                let mut failed: Option<SearchError> = None;
                let read = store.for_each_event(CATCH_UP_BATCH, |events| {
                    n += events.len();
                    let step = self.add(&events, i64::MAX, false).and_then(|()| {
                        if self.pending >= REBUILD_COMMIT_EVERY {
                            // Events come in detection order here, not commit
                            // order: until the rebuild ends, the position on
                            // disk says "from the start", so a restart or a
                            // reopen midway reads everything again.
                            self.commit_at(i64::MIN)
                        } else {
                            Ok(())
                        }
                    });
                    step.map_err(|e| {
                        failed = Some(e);
                        crate::store::StoreError::Corrupt("stopped: the search index failed".into())
                    })
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                read?;
            }
            Some(from) => {
                let from = from.saturating_sub(CATCH_UP_SLACK.as_millis() as i64);
                let mut after = Vec::new();
                loop {
                    let (events, last) =
                        self.store.committed_since(from, &after, CATCH_UP_BATCH)?;
                    if events.is_empty() {
                        break;
                    }
                    n += events.len();
                    self.add(&events, indexed_through, false)?;
                    if self.pending >= REBUILD_COMMIT_EVERY {
                        // In commit order: what is committed so far is the
                        // position a restart may resume from.
                        self.commit()?;
                    }
                    after = last;
                }
            }
        }
        self.commit()?;
        // The events read may come again from the hub (their commits'
        // fan-out may follow the read), so they are replaced, not added;
        // the ones committed after the newest read arrive from the hub alone.
        self.replace_through = self.newest_ms;
        self.resume = Some(self.newest_ms);
        self.catch_up_due = false;
        self.backoff = FIRST_RETRY;
        tracing::info!(
            events = n,
            ms = started.elapsed().as_millis() as u64,
            "search index caught up with the store"
        );
        Ok(())
    }

    fn commit(&mut self) -> Result<(), SearchError> {
        self.commit_at(self.newest_ms)
    }

    /// Commits what is pending, recording `position_ms` as how far the index
    /// got (where a restart catches up from).
    fn commit_at(&mut self, position_ms: i64) -> Result<(), SearchError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        if self.pending == 0 {
            return Ok(());
        }
        let payload = serde_json::to_string(&Payload {
            version: SCHEMA_VERSION.into(),
            committed_ms: position_ms,
        })
        .unwrap_or_default();
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.idx.current().reader.reload()?;
        self.idx.indexed_ms.store(position_ms, Ordering::Relaxed);
        self.pending = 0;
        if let Some(h) = self.idx.hop.get() {
            let now = sightline_proto::now_ms();
            for &c in &self.unsearchable {
                h.observe((now - c).max(0) as f64 / 1000.0);
            }
        }
        self.unsearchable.clear();
        self.idx.oldest_unsearchable_ms.store(0, Ordering::Relaxed);
        Ok(())
    }
}
