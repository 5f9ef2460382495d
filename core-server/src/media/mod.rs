//! Footage at the core: agents upload snapshots, thumbnails and clips apart
//! from events (`sightline.v1.Media`, adapter in [`grpc`], logic in
//! [`upload`]); the core checks them ([`check`]), keeps them in an object
//! store, links them to events, and serves them over HTTP with byte ranges
//! ([`http`]).
//!
//! # Object key layout
//!
//! `media/<kind>/<sha256[0..2]>/<sha256>.<jpg|mp4>` in the object store
//! (`media.url`, default the directory `<storage.path>-media`), e.g.
//! `media/clip/9f/9f86d0…0a08.mp4`. `kind` is one of `snapshot`, `thumbnail`,
//! `clip`; the extension follows the content type (`image/jpeg` → `jpg`,
//! `video/mp4` → `mp4`). Partial uploads wait in the staging directory
//! (`media.staging_path`, default `<storage.path>-media-staging`) as
//! `<sha256>.part`. The RocksDB rows (`media`, `media_age`, `media_refs`,
//! `media_quarantine`) are laid out in [`crate::store`].
//!
//! # Promises
//!
//! - A key MUST be built only from a sha256 that is 64 lowercase hex digits
//!   and a kind from the fixed set, so no request can name a path outside
//!   the store or the staging directory.
//! - An object MUST be stored only when its bytes hash to the claimed sha256,
//!   their count is `total_size`, and its content checks: a JPEG decodes; an
//!   MP4's top-level boxes tile the file, `ftyp` first, `moov` before `mdat`
//!   (fast start: a browser plays it before the download ends).
//! - The `media` row MUST be written only after the object store returned
//!   from the put (and, for a local directory with `storage.sync`, after the
//!   file was fsync'd); the staging file is deleted only after the row. So a
//!   `media` row always means the bytes are there, and a crash in between
//!   only leaves work that a re-upload redoes.
//! - The same bytes uploaded twice MUST be stored once: an upload of a stored
//!   sha256 is drained and answered `newly_stored = false`. The first upload
//!   fixes the object's kind and content type.
//! - An upload MUST resume exactly: `Offset` answers the bytes held in
//!   staging, and a first chunk at any other offset is refused with
//!   FAILED_PRECONDITION "… resume from <n>". Staged bytes are fsync'd when a
//!   stream ends, with or without its last chunk (ABORTED "… resume from
//!   <n>"). When every byte is held but the last chunk never came, an empty
//!   chunk at `total_size` with `last` set completes the upload. A staged
//!   file longer than the `total_size` now claimed is dropped (resume from 0).
//!   One upload per sha256 runs at a time; another waits up to
//!   [`BUSY_WAIT`], then gets ABORTED.
//! - Content that fails its check MUST be answered INVALID_ARGUMENT with the
//!   reason, counted (`sightline_media_rejected_total{kind}`) and recorded in
//!   `media_quarantine` (listed at `GET /media-quarantine`); its bytes are
//!   dropped (the agent still has them). A wrong sha256 is refused the same
//!   way but not quarantined (the bytes were damaged, not the footage).
//! - `Attach` MAY come before or after the upload, and before or after the
//!   event: refs are kept by det_oid and kind, whatever exists yet. Events
//!   served by the query API carry the refs attached so far.
//! - Retention SHOULD delete an object `media.retention` after it was stored:
//!   the object first, then its rows, so an interrupted sweep is finished by
//!   the next one. Refs outlive neither their event nor their object by more
//!   than the longer of the two retentions; abandoned staging files go after
//!   `media.retention` too. A ref whose object expired answers 404 over HTTP.

pub mod check;
pub mod grpc;
pub mod http;
pub mod upload;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use object_store::{
    local::LocalFileSystem, path::Path as ObjectPath, ObjectStore, ObjectStoreExt as _,
};
use sightline_proto::v1::MediaRef;

use crate::{
    config::{MediaConfig, RetentionConfig},
    metrics::Metrics,
    store::{Store, StoreError},
};

/// How long an upload waits for another upload of the same object to end.
pub const BUSY_WAIT: Duration = Duration::from_secs(15);

/// The kinds of footage, each with its one content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Thumbnail,
    Clip,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "snapshot" => Some(Kind::Snapshot),
            "thumbnail" => Some(Kind::Thumbnail),
            "clip" => Some(Kind::Clip),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Thumbnail => "thumbnail",
            Kind::Clip => "clip",
        }
    }

    /// The content type this kind must have.
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Snapshot | Kind::Thumbnail => "image/jpeg",
            Kind::Clip => "video/mp4",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Kind::Snapshot | Kind::Thumbnail => "jpg",
            Kind::Clip => "mp4",
        }
    }
}

/// Whether `s` is a sha256 as the contract spells it: 64 lowercase hex digits.
pub fn valid_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `media/<kind>/<sha[0..2]>/<sha>.<ext>`; `sha` MUST be [`valid_sha`].
pub fn object_key(kind: Kind, sha: &str) -> ObjectPath {
    debug_assert!(valid_sha(sha));
    ObjectPath::from(format!(
        "media/{}/{}/{sha}.{}",
        kind.as_str(),
        &sha[..2],
        kind.extension()
    ))
}

/// What can go wrong with footage, mapped once to gRPC and HTTP.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A request field is wrong.
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The bytes are not what their content type says (quarantined).
    #[error("{0} (quarantined)")]
    Content(String),
    /// The chunk does not continue what the core holds.
    #[error("{reason}: resume from {held}")]
    Resume { reason: String, held: u64 },
    /// The stream ended or broke before the last chunk.
    #[error("{reason}: resume from {held}")]
    Interrupted { reason: String, held: u64 },
    #[error("another upload of {0} is in progress; retry")]
    Busy(String),
    #[error("no media {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    #[error("staging: {0}")]
    Io(#[from] std::io::Error),
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Cluster mode: the cluster's stream did not take it (try again).
    #[error("cluster: {0}")]
    Cluster(String),
}

impl MediaError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        MediaError::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub fn http_status(&self) -> axum::http::StatusCode {
        let code = sightline_proto::ApiError::from(self).http_status();
        axum::http::StatusCode::from_u16(code)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<&MediaError> for sightline_proto::ApiError {
    fn from(e: &MediaError) -> Self {
        use sightline_proto::{ApiError, Code};
        let msg = e.to_string();
        let code = match e {
            MediaError::Invalid { .. } | MediaError::Content(_) => Code::InvalidArgument,
            MediaError::Resume { .. } | MediaError::Interrupted { .. } => Code::ResumeFrom,
            MediaError::Busy(_) => Code::ResourceExhausted,
            MediaError::NotFound(_) | MediaError::Objects(object_store::Error::NotFound { .. }) => {
                Code::NotFound
            }
            MediaError::Store(s) => s.code(),
            MediaError::Io(io) if io.raw_os_error() == Some(28) => Code::Unavailable,
            MediaError::Cluster(_) => Code::Unavailable,
            _ => Code::Internal,
        };
        ApiError::new(code, msg)
    }
}

impl From<MediaError> for tonic::Status {
    fn from(e: MediaError) -> Self {
        sightline_proto::ApiError::from(&e).into()
    }
}

/// The media store: object store, staging directory and RocksDB rows.
pub struct MediaStore {
    /// Where objects live ([`object_key`] layout).
    objects: Arc<dyn ObjectStore>,
    /// The object store's directory, when it is local: what was put is
    /// fsync'd there (object_store's local backend does not).
    local_root: Option<PathBuf>,
    /// Partial uploads, `<sha>.part`.
    staging: PathBuf,
    /// Media rows (and the events they are attached to).
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// `media.max_object_bytes`.
    max_object_bytes: u64,
    /// `storage.sync`: fsync staging and stored objects.
    sync: bool,
    /// Shas with an upload running (one at a time each).
    busy: Mutex<HashSet<String>>,
    /// Cluster mode: attaches go to the events' partitions, and footage
    /// uploaded to another node (its row there, its bytes in the shared
    /// object store) is served here too.
    cluster: std::sync::OnceLock<Arc<dyn MediaCluster>>,
}

/// What the media store needs of a cluster (`cluster::media`).
#[tonic::async_trait]
pub trait MediaCluster: Send + Sync {
    /// Carries `Media.Attach` to the partitions of `det_oids`; `Ok` once it
    /// is durable in the cluster's stream (their owners apply it).
    async fn attach(
        &self,
        det_oids: Vec<i64>,
        media: MediaRef,
        at_ms: i64,
        by: Option<String>,
    ) -> Result<(), MediaError>;
    /// The event `det_oid` with its media, from whichever node holds its
    /// partition, if stored and in `scope`.
    async fn event(
        &self,
        scope: &crate::access::Scope,
        det_oid: i64,
    ) -> Result<Option<sightline_proto::v1::JoinedEvent>, sightline_proto::ApiError>;
}

impl MediaStore {
    /// Opens (creating) the object store directory and the staging directory.
    pub fn open(
        cfg: &MediaConfig,
        storage_path: &Path,
        sync: bool,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (objects, local_root): (Arc<dyn ObjectStore>, Option<PathBuf>) =
            match cfg.local_root(storage_path) {
                Some(root) => {
                    std::fs::create_dir_all(&root).with_context(|| {
                        format!("config `media.url`: cannot create {}", root.display())
                    })?;
                    let local = LocalFileSystem::new_with_prefix(&root).with_context(|| {
                        format!("config `media.url`: cannot open {}", root.display())
                    })?;
                    (Arc::new(local), Some(root))
                }
                None => {
                    let url = cfg.url.clone().unwrap_or_default();
                    let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(&url);
                    for (k, v) in &cfg.options {
                        let key: object_store::aws::AmazonS3ConfigKey =
                            k.parse().with_context(|| {
                                format!("config `media.options.{k}`: not an S3 setting")
                            })?;
                        b = b.with_config(key, v);
                    }
                    let s3 = b
                        .build()
                        .with_context(|| format!("config `media.url`: cannot use {url}"))?;
                    (Arc::new(s3), None)
                }
            };
        let staging = cfg.staging_dir(storage_path);
        std::fs::create_dir_all(&staging).with_context(|| {
            format!(
                "config `media.staging_path`: cannot create {}",
                staging.display()
            )
        })?;
        Ok(Self {
            objects,
            local_root,
            staging,
            store,
            metrics,
            max_object_bytes: cfg.max_object_bytes.as_u64(),
            sync,
            busy: Mutex::new(HashSet::new()),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Cluster mode (set once, at start).
    pub fn set_cluster(&self, cluster: Arc<dyn MediaCluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<dyn MediaCluster>> {
        self.cluster.get()
    }

    /// The stored object `sha`: its row here, or (cluster mode) the object
    /// another node stored in the shared object store, found by its key.
    pub async fn find(&self, sha: &str) -> Result<Option<MediaRef>, MediaError> {
        if let Some(m) = self.lookup(sha).await? {
            return Ok(Some(m));
        }
        if self.cluster.get().is_none() {
            return Ok(None);
        }
        for kind in [Kind::Snapshot, Kind::Clip, Kind::Thumbnail] {
            match self.objects.head(&object_key(kind, sha)).await {
                Ok(meta) => {
                    return Ok(Some(MediaRef {
                        kind: kind.as_str().into(),
                        sha256: sha.into(),
                        content_type: kind.content_type().into(),
                        size: meta.size,
                    }))
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// The staging file of a (valid) sha.
    fn staging_file(&self, sha: &str) -> PathBuf {
        self.staging.join(format!("{sha}.part"))
    }

    /// The stored object's row, read off the runtime.
    pub async fn lookup(&self, sha: &str) -> Result<Option<MediaRef>, MediaError> {
        let store = self.store.clone();
        let sha = sha.to_string();
        Ok(tokio::task::spawn_blocking(move || store.get_media(&sha))
            .await??
            .map(|m| m.media))
    }

    /// How much of `sha` the core holds: (bytes, complete).
    pub async fn offset(&self, sha: &str) -> Result<(u64, bool), MediaError> {
        if !valid_sha(sha) {
            return Err(MediaError::invalid(
                "sha256",
                "must be 64 lowercase hex digits",
            ));
        }
        if let Some(m) = self.lookup(sha).await? {
            return Ok((m.size, true));
        }
        Ok((held(&self.staging_file(sha)).await?, false))
    }

    /// Copies the stored object `sha` of `kind` into a new file `dest`,
    /// hashing what it writes: answers the bytes' SHA-256 (lowercase hex) and
    /// their count, so the caller can tell an object damaged at rest from
    /// its address. `sha` MUST be [`valid_sha`]. (Used by case exports.)
    pub async fn copy_to_file(
        &self,
        kind: Kind,
        sha: &str,
        dest: &Path,
    ) -> Result<(String, u64), MediaError> {
        use futures::StreamExt as _;
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        if !valid_sha(sha) {
            return Err(MediaError::invalid(
                "sha256",
                "must be 64 lowercase hex digits",
            ));
        }
        let mut stream = self
            .objects
            .get(&object_key(kind, sha))
            .await?
            .into_stream();
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await?;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            len += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        let hex = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((hex, len))
    }

    /// Deletes objects stored longer than `cfg.retention` ago (and their
    /// rows), the media quarantine past `retention.quarantine`, old refs and
    /// abandoned staging files.
    pub async fn sweep(
        &self,
        cfg: &MediaConfig,
        retention: &RetentionConfig,
    ) -> Result<usize, MediaError> {
        let now = sightline_proto::now_ms();
        let before = |d: Duration| now.saturating_sub(d.as_millis() as i64);
        let cutoff = before(cfg.retention);
        let mut deleted = 0;
        loop {
            let store = self.store.clone();
            let batch =
                tokio::task::spawn_blocking(move || store.expired_media(cutoff, 1000)).await??;
            let n = batch.len();
            for m in batch {
                if let Some(kind) = Kind::parse(&m.media.kind) {
                    match self
                        .objects
                        .delete(&object_key(kind, &m.media.sha256))
                        .await
                    {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    store.forget_media(&m.media.sha256, m.stored_ms)
                })
                .await??;
                deleted += 1;
            }
            if n < 1000 {
                break;
            }
        }
        let store = self.store.clone();
        let (q, refs) = (
            before(retention.quarantine),
            before(cfg.retention.max(retention.events)),
        );
        tokio::task::spawn_blocking(move || store.apply_media_retention(q, refs)).await??;
        let staging = self.staging.clone();
        let max_age = cfg.retention;
        tokio::task::spawn_blocking(move || remove_old_files(&staging, max_age)).await??;
        Ok(deleted)
    }
}

/// Bytes held in a staging file (0 when there is none).
async fn held(path: &Path) -> Result<u64, MediaError> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn remove_old_files(dir: &Path, max_age: Duration) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let old = entry
            .metadata()?
            .modified()?
            .elapsed()
            .is_ok_and(|age| age > max_age);
        if old && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout_and_only_take_valid_shas() {
        let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(valid_sha(sha));
        assert_eq!(
            object_key(Kind::Clip, sha).as_ref(),
            format!("media/clip/9f/{sha}.mp4")
        );
        assert_eq!(
            object_key(Kind::Thumbnail, sha).as_ref(),
            format!("media/thumbnail/9f/{sha}.jpg")
        );
        for bad in [
            &sha.to_uppercase(),
            &sha[1..],
            "../../../../etc/passwd",
            &format!("{}/", &sha[..63]),
        ] {
            assert!(!valid_sha(bad), "{bad}");
        }
    }
}
