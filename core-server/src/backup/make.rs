//! Taking a backup of the running core.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use sightline_proto::ApiError;

use super::{
    blob_key,
    manifest::{self, FileEntry, Manifest, Watermark},
    manifest_key, Dest, LATEST,
};
use crate::{access::AccessDb, audit::AuditLog, enrich::Locations, store::Store};

/// What the core backs up, and where it stages the copy.
pub struct Sources {
    pub store: Arc<Store>,
    pub access: Arc<AccessDb>,
    pub audit: AuditLog,
    pub locations: Arc<Locations>,
    /// `storage.path`: the admin token and signing key are read from here
    /// when not configured elsewhere.
    pub data_dir: PathBuf,
    /// The agent registry file, when enforced.
    pub registry: Option<PathBuf>,
    /// The admin token file (`server.admin_token_file`).
    pub admin_token: PathBuf,
    /// Where the checkpoint is staged: on the store's filesystem, so that
    /// SST files are hard links (`<storage.path>-backup-staging`).
    pub staging: PathBuf,
    /// One backup at a time.
    pub busy: tokio::sync::Mutex<()>,
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct Report {
    pub id: String,
    pub files: u64,
    pub bytes: u64,
    pub uploaded_files: u64,
    pub uploaded_bytes: u64,
    pub duration_ms: u64,
}

/// The staging folder's layout (the manifest's paths): the store's files
/// are under `store/`.
const STORE: &str = "store";

impl Sources {
    /// The staging folder beside `storage_path`.
    pub fn staging_for(storage_path: &Path) -> PathBuf {
        let mut s = storage_path.as_os_str().to_os_string();
        s.push("-backup-staging");
        PathBuf::from(s)
    }

    /// Backs up to `to` (see [`Dest::open`]); refused while another runs.
    pub async fn backup(&self, to: &str) -> Result<Report, ApiError> {
        let _one = self.busy.try_lock().map_err(|_| {
            ApiError::new(
                sightline_proto::Code::FailedPrecondition,
                "a backup is already running; try again once it ended",
            )
        })?;
        let dest = Dest::open("to", to, true)?;
        let started = Instant::now();
        let id = new_id();
        let stage = self.staging.join(&id);
        // The staging folder is this core's, one backup at a time: what an
        // interrupted backup left there goes, before and after.
        let remove = |dir: PathBuf| async move {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        };
        remove(self.staging.clone()).await;
        let result = self.backup_into(&dest, &id, &stage).await;
        remove(self.staging.clone()).await;
        let mut report = result.map_err(|e| {
            tracing::error!(error = format!("{e:#}"), to, "backup failed");
            ApiError::unavailable(format!("backup to {to} failed: {e:#}"))
        })?;
        report.duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            id = %report.id, to, files = report.files, bytes = report.bytes,
            uploaded_files = report.uploaded_files, uploaded_bytes = report.uploaded_bytes,
            ms = report.duration_ms, "backup made"
        );
        Ok(report)
    }

    async fn backup_into(&self, dest: &Dest, id: &str, stage: &Path) -> anyhow::Result<Report> {
        let created_ms = sightline_proto::now_ms();
        let watermarks = {
            let (s, a, stage) = (self.store.clone(), self.access.clone(), stage.to_path_buf());
            let files = self.plain_files();
            tokio::task::spawn_blocking(move || stage_files(&s, &a, &files, &stage)).await??
        };
        self.audit
            .copy_to(stage.join("audit"))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let known = match dest.latest().await {
            Ok(Some(last)) => match dest.get(&manifest_key(&last)).await {
                Ok(Some(b)) => Manifest::parse(&last, &b)
                    .map(|m| m.known_hashes())
                    .unwrap_or_default(),
                _ => Default::default(),
            },
            _ => Default::default(),
        };
        let files = {
            let stage = stage.to_path_buf();
            tokio::task::spawn_blocking(move || list_and_hash(&stage, &known)).await??
        };
        let held = dest.blobs().await?;
        let upload = manifest::to_upload(&files, &held);
        let (mut uploaded_files, mut uploaded_bytes) = (0, 0);
        for f in upload {
            let bytes = tokio::fs::read(stage_path(stage, &f.path))
                .await
                .with_context(|| format!("reading staged {}", f.path))?;
            anyhow::ensure!(
                bytes.len() as u64 == f.size,
                "staged {} changed size while backed up",
                f.path
            );
            dest.put(&blob_key(&f.sha256), bytes.into()).await?;
            uploaded_files += 1;
            uploaded_bytes += f.size;
        }
        let m = Manifest {
            format: manifest::MANIFEST_FORMAT,
            id: id.to_string(),
            created_ms,
            core_version: env!("CARGO_PKG_VERSION").to_string(),
            watermarks: watermarks
                .into_iter()
                .map(|(agent, epoch, seq)| Watermark { agent, epoch, seq })
                .collect(),
            search: manifest::SEARCH_REBUILD.to_string(),
            files,
        };
        let json = serde_json::to_vec_pretty(&m)?;
        dest.put(&manifest_key(id), json.into()).await?;
        dest.put(LATEST, format!("{id}\n").into()).await?;
        Ok(Report {
            id: id.to_string(),
            files: m.files.len() as u64,
            bytes: m.bytes(),
            uploaded_files,
            uploaded_bytes,
            duration_ms: 0,
        })
    }

    /// (source file, name in the backup) of the plain files that exist.
    fn plain_files(&self) -> Vec<(PathBuf, String)> {
        let mut out = vec![(self.admin_token.clone(), "admin.token".to_string())];
        if let Some(r) = &self.registry {
            out.push((r.clone(), "agents.toml".into()));
        }
        for key in [
            crate::cases::key::KEY_FILE,
            crate::cases::key::PUBLIC_KEY_FILE,
        ] {
            out.push((self.data_dir.join(key), key.to_string()));
        }
        if let Some(b) = self.locations.path() {
            let name = b
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "locations.csv".into());
            out.push((b, format!("dataset-b/{name}")));
        }
        out
    }
}

/// A new backup id: the time, `YYYYMMDDTHHMMSSmmmZ`.
fn new_id() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':', '.'], "")
}

/// Checkpoints and copies into `stage`; the watermarks in the checkpoint.
fn stage_files(
    store: &Store,
    access: &AccessDb,
    files: &[(PathBuf, String)],
    stage: &Path,
) -> anyhow::Result<Vec<(String, u64, u64)>> {
    if stage.exists() {
        std::fs::remove_dir_all(stage)?;
    }
    std::fs::create_dir_all(stage).with_context(|| format!("making {}", stage.display()))?;
    let wm = store
        .checkpoint(&stage.join(STORE))
        .context("checkpoint of the store")?;
    access.checkpoint(&stage.join("access"))?;
    for (from, name) in files {
        let to = stage.join(name);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::copy(from, &to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("copying {}", from.display())),
        }
    }
    Ok(wm)
}

/// The staged file of a manifest path.
fn stage_path(stage: &Path, rel: &str) -> PathBuf {
    stage.join(rel)
}

/// Every staged file (not RocksDB's info logs), sorted, with its size and
/// sha256 — taken from `known` for an SST file of the same name and size.
pub(super) fn list_and_hash(
    stage: &Path,
    known: &std::collections::HashMap<(String, u64), String>,
) -> anyhow::Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    let mut dirs = vec![stage.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                dirs.push(e.path());
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if !kind.is_file() || name == "LOG" || name.starts_with("LOG.old") || name == "LOCK" {
                continue;
            }
            let rel = e
                .path()
                .strip_prefix(stage)?
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let size = e.metadata()?.len();
            let sha256 = match known.get(&(rel.clone(), size)) {
                Some(h) if manifest::immutable(&rel) => h.clone(),
                _ => hash_file(&e.path())?,
            };
            out.push(FileEntry {
                path: rel,
                size,
                sha256,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// sha256 of a file, 64 lowercase hex digits.
pub(super) fn hash_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}
