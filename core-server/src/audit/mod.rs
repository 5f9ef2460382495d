//! The audit log: an append-only, hash-chained record of who saw which
//! footage and who changed what, kept in its own files and checkable with
//! standard tools (`sed`, `sha256sum`, `jq`).
//!
//! # Promises
//!
//! 1. [`AuditLog::record`] returns `Ok` only once the record is on disk
//!    (`fdatasync` of its segment) and the head names it. A caller that gets
//!    `Err` MUST refuse what it was about to do: footage is not served
//!    unless its viewing is recorded. The error is `UNAVAILABLE` naming the
//!    audit store ([`AuditError`] → [`ApiError`]).
//! 2. Records are numbered 1, 2, 3, … without gaps; each carries the hash of
//!    the one before; [`verify()`] names the first record that does not match.
//! 3. Removing or altering the last records is detected by the head, kept
//!    apart in `head.json`; removing the first ones by the anchor.
//! 4. A retention cut ([`AuditLog::cut`]) removes whole oldest segments only,
//!    writes `anchor.json` and records an `audit_cut` record naming the
//!    anchor, so what remains still verifies.
//! 5. Range requests of one playback are recorded once
//!    ([`AuditLog::footage_viewed`], [`PLAYBACK_WINDOW`]).
//!
//! # Files (under `<storage.path>/audit/`, or `audit.path`)
//!
//! - `seg-<first seq, 20 digits>.jsonl`: segments of records, one JSON object
//!   per line, `\n`-terminated. The last segment is appended to; a new one
//!   starts when it reaches `audit.segment_bytes`.
//! - `head.json`: `{"seq":N,"hash":"…"}`, the last record written, replaced
//!   atomically (temporary file, fsync, rename) after each durable group.
//! - `anchor.json` (after a cut): `{"seq":M,"hash":"…","time":T}`, the last
//!   record removed; the first remaining record has `seq` M+1 and
//!   `prev_hash` equal to that hash.
//!
//! # A record
//!
//! ```json
//! {"seq":7,"time":1764480000123,"actor":"user:alice","source":"10.1.2.3:50412",
//!  "action":"clip_viewed","det_oid":42,"camera":3,"location":1,"object":"sha256-…",
//!  "detail":{…},"outcome":"ok","prev_hash":"<64 hex>","hash":"<64 hex>"}
//! ```
//! (one line on disk). Fields appear in exactly this order; `source`,
//! `det_oid`, `camera`, `location`, `object` and `detail` are left out when
//! absent; `hash` is always the last field. `actor` is `user:NAME`,
//! `token:NAME`, `agent:ID`, `admin-token`, `anonymous` or `system`;
//! `action` one of [`record::ACTIONS`]; `outcome` `ok`, `denied` or `error`.
//!
//! # The chain
//!
//! `hash` = SHA-256 (lower-case hex) of the line's bytes as stored, up to but
//! not including `,"hash":"`, followed by one `}` — that is, of the record
//! with its `hash` field removed, byte for byte. Nothing is re-serialized to
//! check it. `prev_hash` is the previous record's `hash`; for record 1 it is
//! 64 zeros ([`record::GENESIS_HASH`]); after a cut the first record's is the
//! anchor's `hash`. By hand, for line 5 of a segment:
//!
//! ```sh
//! sed -n 5p seg-….jsonl | sed -E 's/,"hash":"[0-9a-f]{64}"\}$/}/' | tr -d '\n' | sha256sum
//! sed -n 5p seg-….jsonl | jq -r .hash          # must equal the sum above
//! sed -n 6p seg-….jsonl | jq -r .prev_hash     # must equal it too
//! ```
//!
//! # Wiring (one line per action)
//!
//! ```ignore
//! // server::run: open once (refuses a log whose tail does not match its head),
//! // keep the handle in the handlers' state, cut by age in the background.
//! let audit = AuditLog::open(&cfg.audit.dir(&cfg.storage.path), cfg.audit.segment_bytes.as_u64())?;
//! tokio::spawn(audit::retention_loop(audit.clone(), cfg.audit.retention, shutdown.clone()));
//!
//! // A snapshot, after authorization and before the first byte is sent:
//! audit.record(Entry::new(actor, Action::SnapshotViewed).from(addr).event(det, cam, loc).object(key)).await?;
//! // A clip's Range requests (one record per playback):
//! audit.footage_viewed(&session_id, Entry::new(actor, Action::ClipViewed).from(addr).object(key)).await?;
//! // A search with its filters; a refusal:
//! audit.record(Entry::new(actor, Action::Search).from(addr).detail(json!({"q": q, "last": last}))).await?;
//! // A refusal (anonymous ones coalesced per address and minute, see [`refusals`]):
//! audit.refused(Entry::new(actor, Action::AccessRefused).from(addr).denied().detail(json!({"path": p, "why": why}))).await;
//! ```
//!
//! `?` turns an [`AuditError`] into `ApiError` `UNAVAILABLE` ("audit store
//! <dir>: …"). Appends from concurrent requests share one fsync
//! ([`writer::MAX_GROUP`]); the admin page reads with [`query()`] (older pages)
//! and [`query_after`] (newer ones), both cut by seq.
//!
//! # Limits of the promise
//!
//! Anyone who can write the folder can rewrite the whole chain and the head
//! consistently; the chain proves nothing against that. Copy the head
//! (`audit verify` prints it) somewhere else from time to time: a later
//! verify that does not reach the same hash at that seq shows the rewrite.

pub mod cli;
mod files;
mod read;
pub mod record;
pub mod refusals;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytesize::ByteSize;
use serde::Deserialize;
use sightline_proto::error::ApiError;
use tokio::sync::{mpsc, oneshot};

pub use files::{Anchor, Head};
pub use read::{
    export, query, query_after, AfterPage, Filter, Page, QueryPage, MAX_PAGE, MAX_SCAN,
};
pub use record::{Action, Actor, Outcome, Record};
pub use verify::{verify, Problem, ProblemKind, VerifyReport};

/// One playback: repeated requests for the same footage by the same actor
/// and session within this long of the last one are recorded once (the
/// window slides with each request).
pub const PLAYBACK_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Most playbacks remembered for [`PLAYBACK_WINDOW`]; past it each request
/// is recorded (more records, never fewer).
pub const MAX_TRACKED_PLAYBACKS: usize = 100_000;

/// Appends waiting for the writer; past it [`AuditLog::record`] waits.
pub const QUEUE: usize = 4096;

/// A record's `detail`, serialized, at most; a larger one is replaced by
/// `{"detail_too_large_bytes": n}`.
pub const MAX_DETAIL_BYTES: usize = 4096;

/// How often the retention cut runs ([`retention_loop`]).
pub const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The `[audit]` section of the core's config.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit folder. Unset: `<storage.path>/audit`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// How long records are kept. Whole segments older than this are cut
    /// (so records live up to one segment longer).
    #[serde(default = "default_retention", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub retention: Duration,
    /// A segment file's size before the next one starts: the unit of a cut.
    #[serde(default = "default_segment_bytes")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub segment_bytes: ByteSize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            path: None,
            retention: default_retention(),
            segment_bytes: default_segment_bytes(),
        }
    }
}

fn default_retention() -> Duration {
    Duration::from_secs(365 * 24 * 3600)
}
fn default_segment_bytes() -> ByteSize {
    ByteSize::mib(16)
}

impl AuditConfig {
    /// The audit folder for a store at `storage_path`.
    pub fn dir(&self, storage_path: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| storage_path.join("audit"))
    }

    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let err = |key, reason: &str| {
            Err(crate::config::ConfigError {
                key,
                reason: reason.into(),
            })
        };
        if self.retention < Duration::from_secs(3600) {
            return err("audit.retention", "must be at least 1h");
        }
        let s = self.segment_bytes.as_u64();
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&s) {
            return err("audit.segment_bytes", "must be within 64 KiB..=1 GiB");
        }
        Ok(())
    }
}

/// The audit store could not do what was asked: the record is not written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit store {dir}: {what}")]
pub struct AuditError {
    pub dir: PathBuf,
    pub what: String,
}

impl AuditError {
    fn new(dir: &Path, what: String) -> Self {
        Self {
            dir: dir.to_path_buf(),
            what,
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        ApiError::unavailable(format!(
            "{e}; the request is refused because it cannot be recorded"
        ))
    }
}

/// What to record: who, what, about which footage or event, and how it
/// ended. The writer adds seq, time (unless [`Entry::at`]) and the hashes.
///
/// ```ignore
/// audit.record(Entry::new(actor, Action::Search).from(addr).detail(filters)).await?;
/// ```
#[derive(Debug, Clone)]
pub struct Entry {
    pub actor: Actor,
    pub action: Action,
    pub source: Option<SocketAddr>,
    pub det_oid: Option<i64>,
    pub camera: Option<i64>,
    pub location: Option<i64>,
    pub object: Option<String>,
    pub detail: serde_json::Map<String, serde_json::Value>,
    pub outcome: Outcome,
    /// Unix ms; unset: when written. Never before the previous record's.
    pub time: Option<i64>,
}

impl Entry {
    pub fn new(actor: Actor, action: Action) -> Self {
        Self {
            actor,
            action,
            source: None,
            det_oid: None,
            camera: None,
            location: None,
            object: None,
            detail: serde_json::Map::new(),
            outcome: Outcome::Ok,
            time: None,
        }
    }
    pub fn from(mut self, source: impl Into<Option<SocketAddr>>) -> Self {
        self.source = source.into();
        self
    }
    /// The event: its det_oid, camera and location.
    pub fn event(mut self, det_oid: i64, camera: i64, location: i64) -> Self {
        self.det_oid = Some(det_oid);
        self.camera = Some(camera);
        self.location = Some(location);
        self
    }
    pub fn camera(mut self, camera: i64) -> Self {
        self.camera = Some(camera);
        self
    }
    pub fn location(mut self, location: i64) -> Self {
        self.location = Some(location);
        self
    }
    pub fn object(mut self, key: impl Into<String>) -> Self {
        self.object = Some(key.into());
        self
    }
    /// A JSON object (anything else is stored under `"value"`).
    pub fn detail(mut self, detail: impl Into<serde_json::Value>) -> Self {
        self.detail = match detail.into() {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            v => serde_json::Map::from_iter([("value".to_string(), v)]),
        };
        self
    }
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
    pub fn denied(self) -> Self {
        self.outcome(Outcome::Denied)
    }
    pub fn at(mut self, time_ms: i64) -> Self {
        self.time = Some(time_ms);
        self
    }
}

/// What a retention cut did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutReport {
    pub segments_removed: usize,
    /// The last record removed, now the chain's anchor.
    pub anchor_seq: Option<u64>,
    /// The `audit_cut` record that names the anchor.
    pub cut_record: Option<u64>,
}

/// Whether [`AuditLog::footage_viewed`] wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new playback: this record's seq.
    New(u64),
    /// A further request of a playback already recorded.
    Repeat,
}

/// A handle on the audit store: cheap to clone, one writer behind it.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tx: mpsc::Sender<writer::Job>,
    /// (actor, session, action, object) → the playback's lock and when its
    /// last request came (Unix ms, `None` until recorded).
    playbacks: Mutex<HashMap<PlaybackKey, Arc<tokio::sync::Mutex<Option<i64>>>>>,
    /// Which anonymous refusals are recorded one by one ([`refusals`]).
    refusals: Mutex<refusals::Gate>,
}

type PlaybackKey = (String, String, Action, String);

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    /// Refuses a store whose tail does not match its head.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Self, AuditError> {
        let w = writer::Writer::open(dir, segment_bytes)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer::run(w, rx))
            .map_err(|e| AuditError::new(dir, format!("starting the writer: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                tx,
                playbacks: Mutex::new(HashMap::new()),
                refusals: Mutex::new(refusals::Gate::default()),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn stopped(&self) -> AuditError {
        AuditError::new(&self.inner.dir, "the writer has stopped".into())
    }

    /// Writes one record durably; its seq. `Err` means it is not written and
    /// what it describes must not happen.
    pub async fn record(&self, entry: Entry) -> Result<u64, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Job::Append(entry, reply))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// [`Self::record`] from a thread that is not on the async runtime.
    pub fn record_blocking(&self, entry: Entry) -> Result<u64, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .blocking_send(writer::Job::Append(entry, reply))
            .map_err(|_| self.stopped())?;
        rx.blocking_recv().map_err(|_| self.stopped())?
    }

    /// Records a footage request once per playback: the first request of
    /// `entry.actor` in `session` for `entry.object` (and `entry.action`)
    /// writes a record; further ones within [`PLAYBACK_WINDOW`] of the last
    /// return [`Recorded::Repeat`] without writing. `session` identifies the
    /// browser session or token (never written to the log).
    pub async fn footage_viewed(
        &self,
        session: &str,
        entry: Entry,
    ) -> Result<Recorded, AuditError> {
        let key = (
            entry.actor.to_string(),
            session.to_string(),
            entry.action,
            entry.object.clone().unwrap_or_default(),
        );
        let now = entry.time.unwrap_or_else(now_ms);
        let window = PLAYBACK_WINDOW.as_millis() as i64;
        let slot = {
            let mut map = self.inner.playbacks.lock().unwrap();
            if map.len() >= MAX_TRACKED_PLAYBACKS && !map.contains_key(&key) {
                map.retain(|_, slot| {
                    Arc::strong_count(slot) > 1
                        || slot
                            .try_lock()
                            .is_ok_and(|t| t.is_some_and(|t| now - t <= window))
                });
            }
            if map.len() >= MAX_TRACKED_PLAYBACKS && !map.contains_key(&key) {
                None
            } else {
                Some(map.entry(key).or_default().clone())
            }
        };
        let Some(slot) = slot else {
            return self.record(entry).await.map(Recorded::New);
        };
        // One request of a playback at a time: a second one waits for the
        // first one's record, so it is never served before that is durable.
        let mut last = slot.lock().await;
        if let Some(t) = *last {
            if now - t <= window {
                *last = Some(now.max(t));
                return Ok(Recorded::Repeat);
            }
        }
        let seq = self.record(entry).await?;
        *last = Some(now);
        Ok(Recorded::New(seq))
    }

    /// Records a refusal of access: always when its actor is a principal;
    /// when it is [`Actor::Anonymous`], coalesced per source address per
    /// minute ([`refusals`]). `Ok(None)`: counted, not written one by one.
    pub async fn refused(&self, mut entry: Entry) -> Result<Option<u64>, AuditError> {
        if entry.actor != Actor::Anonymous {
            return self.record(entry).await.map(Some);
        }
        let now = entry.time.unwrap_or_else(now_ms);
        let ip = entry.source.map(|s| s.ip());
        let admit = self.inner.refusals.lock().unwrap().admit(ip, now);
        let refusals::Admit::Record(carried) = admit else {
            return Ok(None);
        };
        if let Some(c) = carried {
            entry.detail.insert(
                "coalesced_before".into(),
                serde_json::json!({ "refusals": c.refusals, "minute_ms": c.minute_ms }),
            );
        }
        let r = self.record(entry).await;
        if r.is_err() {
            self.inner.refusals.lock().unwrap().restore(carried);
        }
        r.map(Some)
    }

    /// Cuts whole segments older than `before` (Unix ms), see [`writer`].
    pub async fn cut(&self, before: i64) -> Result<CutReport, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Job::Cut(before, reply))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Copies the log's files into `to` between two appends: a copy whose
    /// head matches its tail (for [`crate::backup`]).
    pub async fn copy_to(&self, to: PathBuf) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Job::Copy(to, reply))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// A page for the admin page, newest first (on a blocking thread).
    pub async fn query(&self, filter: Filter, page: Page) -> Result<read::QueryPage, ApiError> {
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || query(&dir, &filter, &page))
            .await
            .map_err(|e| ApiError::internal(format!("audit query: {e}")))?
    }
}

/// Cuts records older than `keep` every [`RETENTION_CHECK_EVERY`] until
/// `shutdown`.
pub async fn retention_loop(
    log: AuditLog,
    keep: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let before = now_ms() - keep.as_millis() as i64;
        match log.cut(before).await {
            Ok(r) if r.segments_removed > 0 => tracing::info!(
                segments = r.segments_removed,
                anchor_seq = r.anchor_seq,
                "audit: retention cut"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit: retention cut failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_CHECK_EVERY) => {}
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
