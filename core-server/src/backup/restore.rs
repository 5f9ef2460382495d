//! Restoring a backup into an empty data directory (offline: no core runs
//! on it).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use super::{blob_key, make::hex, manifest::Manifest, manifest_key, Dest};

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    pub data_dir: PathBuf,
    /// Where Dataset B was put (start the core with `--locations` on it).
    pub dataset_b: Option<PathBuf>,
}

/// Where a manifest path goes in the data directory: the store's files in
/// it, everything else at its own path.
fn target(data_dir: &Path, rel: &str) -> PathBuf {
    match rel.strip_prefix("store/") {
        Some(f) => data_dir.join(f),
        None => data_dir.join(rel),
    }
}

/// Refuses a folder that exists and holds anything, naming it and one entry.
fn ensure_empty(what: &str, dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if let Some(e) = entries.next() {
                let e = e?;
                anyhow::bail!(
                    "{what} {} is not empty (it holds {:?}): restore only into an empty or new folder",
                    dir.display(),
                    e.file_name()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            anyhow::bail!("{what} {} is a file, not a folder", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("reading {what} {}", dir.display())),
    }
}

/// Restores the backup `id` (default: the newest) from `from` into
/// `data_dir`, which must be empty or missing, as must `search_dir` (the
/// index folder the restored core will rebuild). Every file's size and
/// sha256 are checked before the data directory appears.
pub async fn restore(
    from: &str,
    id: Option<&str>,
    data_dir: &Path,
    search_dir: &Path,
) -> anyhow::Result<Restored> {
    ensure_empty("the data directory", data_dir)?;
    ensure_empty("the search index folder", search_dir)?;
    let dest = Dest::open("--from", from, false).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let id = match id {
        Some(i) => i.to_string(),
        None => dest
            .latest()
            .await?
            .ok_or_else(|| anyhow::anyhow!("{} holds no backup (no LATEST)", dest.shown))?,
    };
    let key = manifest_key(&id);
    let bytes = dest
        .get(&key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{} has no backup {id:?} ({key} is missing)", dest.shown))?;
    let manifest = Manifest::parse(&key, &bytes).map_err(anyhow::Error::msg)?;

    let tmp = {
        let mut s = data_dir.as_os_str().to_os_string();
        s.push(".restoring");
        PathBuf::from(s)
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let written = fetch_all(&dest, &manifest, &tmp).await;
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if data_dir.exists() {
        // Empty (checked above): replaced by the restored folder.
        std::fs::remove_dir(data_dir)
            .with_context(|| format!("replacing the empty {}", data_dir.display()))?;
    }
    std::fs::rename(&tmp, data_dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), data_dir.display()))?;
    let dataset_b = manifest
        .files
        .iter()
        .find(|f| f.path.starts_with("dataset-b/"))
        .map(|f| target(data_dir, &f.path));
    Ok(Restored {
        manifest,
        data_dir: data_dir.to_path_buf(),
        dataset_b,
    })
}

/// Downloads and checks every file of `m` into `into`.
async fn fetch_all(dest: &Dest, m: &Manifest, into: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(into).with_context(|| format!("making {}", into.display()))?;
    for f in &m.files {
        let blob = blob_key(&f.sha256);
        let bytes = dest.get(&blob).await?.ok_or_else(|| {
            anyhow::anyhow!(
                "backup file `{}` is missing: {} has no {blob}",
                f.path,
                dest.shown
            )
        })?;
        let sha = hex(&Sha256::digest(&bytes));
        if bytes.len() as u64 != f.size || sha != f.sha256 {
            anyhow::bail!(
                "backup file `{}` ({blob}) is corrupt: {} bytes with sha256 {sha}, the manifest says {} bytes with sha256 {}; nothing was restored",
                f.path,
                bytes.len(),
                f.size,
                f.sha256
            );
        }
        let to = target(into, &f.path);
        let (to2, bytes2) = (to.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write as _;
            if let Some(dir) = to2.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // The backup holds secrets: readable by the core's user only.
            let mut file = {
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to2)?
            };
            file.write_all(&bytes2)?;
            file.sync_all()
        })
        .await?
        .with_context(|| format!("writing {}", to.display()))?;
    }
    Ok(())
}
