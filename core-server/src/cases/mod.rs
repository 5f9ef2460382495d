//! Evidence export ("cases"): selected events with their footage, in a
//! folder or a zip that proves itself — a manifest signed with the site's
//! Ed25519 key ([`key`]) and checked by [`verify`] or by standard tools.
//!
//! # A case (format `sightline-case/1`)
//!
//! ```text
//! <case_id>/                       (the zip's one top folder; a folder export is this folder)
//!   manifest.json                  what the case holds (see [`manifest::Manifest`]), signed as written
//!   manifest.json.sig              Ed25519 signature of manifest.json's exact bytes: 64 raw bytes
//!   site-signing.pub.pem           the site's public key, SubjectPublicKeyInfo PEM
//!   events/<det_oid>/snapshot.jpg  the footage, as stored: standard JPEG and MP4,
//!   events/<det_oid>/clip.mp4      each listed in the manifest with its length and SHA-256
//! ```
//!
//! The signature is raw (not base64) because that is what
//! `openssl pkeyutl -verify -pubin -inkey site-signing.pub.pem -rawin -in manifest.json -sigfile manifest.json.sig`
//! reads as it is; the hashes are what `sha256sum` prints.
//!
//! # Promises
//!
//! - Every bound is checked before any work: a non-empty `reason` of at most
//!   [`MAX_REASON_BYTES`], 1..=[`MAX_EVENTS_PER_CASE`] positive det_oids
//!   (repeats taken once), footage of at most [`MAX_CASE_BYTES`].
//! - A case is all or nothing: a det_oid that is not stored, is outside the
//!   exporter's scope (answered the same, so the scope leaks nothing) or has
//!   no footage left refuses the whole export, and the refusal names every
//!   such det_oid.
//! - Every exported file MUST hash to the address it is stored under; an
//!   object damaged at rest refuses the export (`Internal`), never signs it.
//! - The manifest MUST list every file of the case but itself, its signature
//!   and the public key, and the signature MUST be over its exact bytes.
//! - [`verify`] MUST name each file altered, missing or added, and whether
//!   the signature holds under a pinned key or only the bundled one.
//! - At most [`MAX_CONCURRENT_EXPORTS`] exports run at once; staging lives in
//!   `<data_dir>-cases` and is emptied at start.

pub mod cli;
pub mod export;
pub mod http;
pub mod key;
pub mod manifest;
#[cfg(test)]
mod tests;
pub mod verify;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;
use sightline_proto::{ApiError, Code};

use crate::{enrich::Locations, media::MediaStore, store::Store};
pub use key::{PublicKey, SiteKey};
pub use verify::{verify, Finding, FindingKind, Report};

/// Most events in one case. A case is one download and one audit record;
/// an investigation larger than this is several cases.
pub const MAX_EVENTS_PER_CASE: usize = 500;
/// Most bytes of footage in one case. A case is staged on the core's disk
/// (folder, then zip) and sent in one response: 4 GiB keeps that bounded
/// and within what browsers and zip tools handle without trouble.
pub const MAX_CASE_BYTES: u64 = 4 << 30;
/// Longest `reason`, in bytes.
pub const MAX_REASON_BYTES: usize = 4096;
/// Longest exporter name, in bytes.
pub const MAX_EXPORTER_BYTES: usize = 256;
/// Exports running at once; another is refused `ResourceExhausted` (they
/// copy gigabytes: two at once already share the disk).
pub const MAX_CONCURRENT_EXPORTS: usize = 2;

/// The manifest's file name in a case.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The signature's file name in a case.
pub const SIGNATURE_FILE: &str = "manifest.json.sig";

/// What to export, and on whose behalf.
#[derive(Debug, Clone, Default)]
pub struct CaseRequest {
    pub det_oids: Vec<i64>,
    /// Why (required free text).
    pub reason: String,
    /// Who, as the access layer identified them.
    pub exported_by: String,
    /// When (epoch ms).
    pub now_ms: i64,
    /// The locations the exporter may see; `None`: every location.
    pub locations: Option<BTreeSet<i64>>,
}

/// What was exported: for the answer and the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseSummary {
    pub case_id: String,
    pub det_oids: Vec<i64>,
    pub files: usize,
    pub footage_bytes: u64,
    /// SHA-256 of manifest.json as signed.
    pub manifest_sha256: String,
    pub key_fingerprint: String,
    pub exported_by: String,
    pub exported_at_ms: i64,
    pub reason: String,
}

/// The case exporter of one core.
pub struct Cases {
    store: Arc<Store>,
    media: Arc<MediaStore>,
    locations: Arc<Locations>,
    key: Arc<SiteKey>,
    /// `<data_dir>-cases`: cases being built.
    staging: PathBuf,
    slots: tokio::sync::Semaphore,
}

impl Cases {
    /// Loads (or makes) the site key in `data_dir` and empties the staging
    /// folder `<data_dir>-cases`. Blocking.
    pub fn open(
        data_dir: &Path,
        store: Arc<Store>,
        media: Arc<MediaStore>,
        locations: Arc<Locations>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let key = Arc::new(SiteKey::load_or_create(data_dir)?);
        let mut staging = data_dir.as_os_str().to_os_string();
        staging.push("-cases");
        let staging = PathBuf::from(staging);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("emptying {}", staging.display()))?;
        }
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        Ok(Self {
            store,
            media,
            locations,
            key,
            staging,
            slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_EXPORTS),
        })
    }

    pub fn key(&self) -> &SiteKey {
        &self.key
    }

    /// Exports a case as a zip in the staging folder; the file is deleted
    /// when the returned path is dropped (an open handle keeps reading it).
    pub async fn export_zip(
        &self,
        req: &CaseRequest,
    ) -> Result<(CaseSummary, tempfile::TempPath), ApiError> {
        export::check_request(req)?;
        let _slot = self.slot()?;
        let dir = tempfile::tempdir_in(&self.staging).map_err(staging_error)?;
        let (m, summary) = self.build(req, dir.path()).await?;
        let zip = tempfile::Builder::new()
            .suffix(".zip")
            .tempfile_in(&self.staging)
            .map_err(staging_error)?;
        let (file, path) = zip.into_parts();
        tokio::task::spawn_blocking(move || {
            let r = export::zip_case(dir.path(), &m, &file);
            drop(dir);
            r
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        Ok((summary, path))
    }

    /// Exports a case as the folder `out`, which must not exist (it is made,
    /// and removed again when the export fails).
    pub async fn export_dir(&self, req: &CaseRequest, out: &Path) -> Result<CaseSummary, ApiError> {
        export::check_request(req)?;
        let _slot = self.slot()?;
        std::fs::create_dir(out).map_err(|e| {
            ApiError::new(
                Code::FailedPrecondition,
                format!("cannot make the case folder {}: {e}", out.display()),
            )
        })?;
        match self.build(req, out).await {
            Ok((_, summary)) => Ok(summary),
            Err(e) => {
                let _ = std::fs::remove_dir_all(out);
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        req: &CaseRequest,
        root: &Path,
    ) -> Result<(manifest::Manifest, CaseSummary), ApiError> {
        export::build(
            &self.store,
            &self.media,
            self.locations.current(),
            &self.key,
            req,
            root,
        )
        .await
    }

    fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.slots.try_acquire().map_err(|_| {
            ApiError::new(
                Code::ResourceExhausted,
                format!("{MAX_CONCURRENT_EXPORTS} case exports are running; retry when one ends"),
            )
        })
    }
}

fn staging_error(e: std::io::Error) -> ApiError {
    ApiError::unavailable(format!("case staging folder: {e}"))
}
