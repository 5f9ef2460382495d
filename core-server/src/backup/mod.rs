//! Backup and restore of a core: `sightline-core backup --to DIR|s3://…`
//! while the core runs, `sightline-core restore --from … --data-dir NEW`.
//!
//! The running core makes the backup (`sightline.v1.Admin/Backup`, an admin
//! call): only it holds the store open. It takes RocksDB checkpoints of the
//! store and of the accounts (`access/`), copies the audit log between two
//! appends, the agent registry, the admin token, the site signing key and
//! Dataset B into a staging folder beside the store
//! (`<storage.path>-backup-staging`, hard links for SST files), then uploads
//! what the destination lacks and writes the manifest.
//!
//! # Destination layout
//!
//! ```text
//! <dest>/blobs/<sha256>                 a file's bytes, shared by every backup holding them
//! <dest>/backups/<id>/manifest.json     one backup: format, time, watermarks, files (path, size, sha256)
//! <dest>/LATEST                         the id of the newest complete backup
//! ```
//!
//! # Promises
//!
//! - A backup is consistent: the store's checkpoint holds exactly the
//!   commits acknowledged before it (so agents resume from its watermarks,
//!   see `ingest/PROTOCOL.md` rules 14–18), the accounts are a checkpoint, the
//!   audit log is copied with no append in between.
//! - Incremental: a file is uploaded only when no blob with its sha256 and
//!   size is in the destination; an SST file (immutable) found again under
//!   the same name and size takes its hash from the last manifest instead of
//!   being read. Blobs are never deleted, so every older backup stays
//!   restorable.
//! - A backup becomes visible only complete: its blobs first, then its
//!   manifest, then `LATEST`. An interrupted backup leaves blobs no manifest
//!   names, which the next backup reuses.
//! - The search index is not copied (manifest `search = "rebuild"`): it is
//!   derived from the store, and a restored core rebuilds it at its first
//!   start. Footage (`media.url`) is not in the backup: it lives in its own
//!   object store; the store's media rows refer to it.
//! - A restore writes only into an empty (or missing) data directory, and
//!   refuses a non-empty one or a non-empty search index folder, naming it.
//!   It checks every file's size and sha256 against the manifest and refuses
//!   a corrupt one naming it; it writes into `<data dir>.restoring` and
//!   renames that into place only when every file checked out.
//! - A backup holds secrets (the admin token, the signing key, password
//!   hashes): keep the destination as private as the data directory.

pub mod cli;
mod make;
pub mod manifest;
mod restore;
#[cfg(test)]
mod tests;

pub use make::{Report, Sources};
pub use restore::{restore, Restored};

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::{
    local::LocalFileSystem, path::Path as ObjectPath, ObjectStore, ObjectStoreExt as _, PutPayload,
};
use sightline_proto::ApiError;

/// The key of the newest backup's id.
pub const LATEST: &str = "LATEST";
/// Where blobs are kept, under the destination.
const BLOBS: &str = "blobs";

/// 64 lowercase hex digits.
pub fn valid_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The key of a backup's manifest.
pub fn manifest_key(id: &str) -> String {
    format!("backups/{id}/manifest.json")
}

/// The key of a blob.
pub fn blob_key(sha256: &str) -> String {
    format!("{BLOBS}/{sha256}")
}

/// Where backups are kept: a local folder or an S3 bucket and prefix.
pub struct Dest {
    objects: Arc<dyn ObjectStore>,
    /// Prepended to every key (an S3 URL's path), without slashes at the ends.
    prefix: String,
    /// The destination as given, for messages.
    pub shown: String,
}

impl Dest {
    /// `to`: an absolute folder (made when `create`) or `s3://bucket/prefix`
    /// (credentials, region and endpoint from the `AWS_*` environment, as
    /// object_store's `AmazonS3Builder::from_env` reads it). `field` names
    /// the argument in refusals.
    pub fn open(field: &str, to: &str, create: bool) -> Result<Self, ApiError> {
        if let Some(rest) = to.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(ApiError::field(
                    field,
                    "s3:// needs a bucket: s3://bucket/prefix",
                ));
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| ApiError::field(field, format!("cannot use {to}: {e}")))?;
            return Ok(Self {
                objects: Arc::new(s3),
                prefix: prefix.trim_matches('/').to_string(),
                shown: to.to_string(),
            });
        }
        let dir = PathBuf::from(to.strip_prefix("file://").unwrap_or(to));
        if !dir.is_absolute() {
            return Err(ApiError::field(
                field,
                format!("{to:?}: expected an absolute folder or s3://bucket/prefix"),
            ));
        }
        if create {
            std::fs::create_dir_all(&dir).map_err(|e| {
                ApiError::field(field, format!("cannot make {}: {e}", dir.display()))
            })?;
        } else if !dir.is_dir() {
            return Err(ApiError::field(
                field,
                format!("{} is not a folder", dir.display()),
            ));
        }
        let local = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| ApiError::field(field, format!("cannot open {}: {e}", dir.display())))?;
        Ok(Self {
            objects: Arc::new(local),
            prefix: String::new(),
            shown: dir.display().to_string(),
        })
    }

    fn key(&self, rel: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// sha256 → size of every blob held.
    pub async fn blobs(&self) -> anyhow::Result<HashMap<String, u64>> {
        Ok(self
            .blobs_aged()
            .await?
            .into_iter()
            .map(|(sha, (size, _))| (sha, size))
            .collect())
    }

    /// sha256 → (size, when it was written, epoch ms) of every blob held.
    pub async fn blobs_aged(&self) -> anyhow::Result<HashMap<String, (u64, i64)>> {
        let metas: Vec<_> = self
            .objects
            .list(Some(&self.key(BLOBS)))
            .try_collect()
            .await
            .with_context(|| format!("listing the blobs in {}", self.shown))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                valid_sha(&name).then_some((name, (m.size, m.last_modified.timestamp_millis())))
            })
            .collect())
    }

    /// Deletes the object `rel` (absent already: not an error).
    pub async fn delete(&self, rel: &str) -> anyhow::Result<()> {
        match self.objects.delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {rel} in {}", self.shown)),
        }
    }

    /// The names of the objects directly under the folder `rel`.
    pub async fn names(&self, rel: &str) -> anyhow::Result<Vec<String>> {
        let metas: Vec<_> = self
            .objects
            .list(Some(&self.key(rel)))
            .try_collect()
            .await
            .with_context(|| format!("listing {rel} in {}", self.shown))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| Some(m.location.filename()?.to_string()))
            .collect())
    }

    /// The object `rel`, or `None` when there is none.
    pub async fn get(&self, rel: &str) -> anyhow::Result<Option<Bytes>> {
        match self.objects.get(&self.key(rel)).await {
            Ok(r) => {
                Ok(Some(r.bytes().await.with_context(|| {
                    format!("reading {rel} in {}", self.shown)
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {rel} in {}", self.shown)),
        }
    }

    pub async fn put(&self, rel: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.objects
            .put(&self.key(rel), PutPayload::from(bytes))
            .await
            .with_context(|| format!("writing {rel} in {}", self.shown))?;
        Ok(())
    }

    /// The id `LATEST` names, or `None` when the destination has no backup.
    pub async fn latest(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .get(LATEST)
            .await?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    }
}
