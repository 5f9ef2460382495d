//! Partition checkpoints in object storage (`cluster.checkpoints`), reusing
//! the backup's destination ([`crate::backup::Dest`]: content-addressed
//! blobs, uploaded only when absent).
//!
//! ```text
//! <checkpoints>/pNNN/blobs/<sha256>                   a file's bytes
//! <checkpoints>/pNNN/checkpoints/<stream_seq>.json    one checkpoint: [`CheckpointManifest`]
//! ```
//!
//! A checkpoint is the partition store's RocksDB checkpoint (the search
//! index is rebuilt from it by the new owner) with the stream sequence it
//! covers, read from the copy itself; it becomes visible only complete
//! (blobs, then the manifest). Only then are the partition's IN messages at
//! or below that sequence purged. The newest checkpoint is the manifest with
//! the highest stream sequence, whoever wrote it last: an owner that lost
//! its lease while uploading (slow object store, paused) may finish after
//! the next owner checkpointed further and purged the stream behind it, and
//! its older checkpoint must not become the one the next owner restores
//! (the shares between the two would be gone from the stream).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{in_subject, nats::Nats, IN_STREAM};
use crate::{
    backup::{manifest::FileEntry, Dest},
    store::Store,
};

/// One partition checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointManifest {
    pub partition: u16,
    /// Every share of the partition's IN subject up to this stream sequence
    /// is in it.
    pub stream_seq: u64,
    /// The lease revision of the owner that took it.
    pub lease_revision: u64,
    pub created_ms: i64,
    pub files: Vec<FileEntry>,
}

/// Partition `p`'s checkpoint destination under `url`.
pub fn dest(url: &str, p: u16) -> anyhow::Result<Dest> {
    let to = format!("{}/p{p:03}", url.trim_end_matches('/'));
    Dest::open("cluster.checkpoints", &to, true).map_err(|e| anyhow::anyhow!("{e}"))
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{:x}", h.finalize()), size))
}

/// The SHA-256 and size of the SST files of a partition's last checkpoint,
/// by file name. RocksDB never changes an SST file once written and never
/// reuses its name, so a checkpoint hashes only the SSTs that are new since
/// the one before (and the few small files that do change: MANIFEST, WAL,
/// OPTIONS) instead of the whole store every time.
pub type SstHashes = std::collections::HashMap<String, (u64, String)>;

/// Takes a checkpoint of `store` (partition `p`) in `staging` (a fresh
/// folder on the store's filesystem), uploads it, and returns its manifest.
pub async fn take(
    store: &std::sync::Arc<Store>,
    p: u16,
    lease_revision: u64,
    staging: &Path,
    dest: &Dest,
    hashed: &mut SstHashes,
) -> anyhow::Result<CheckpointManifest> {
    let _ = std::fs::remove_dir_all(staging);
    if let Some(parent) = staging.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let (s, dir) = (store.clone(), staging.to_path_buf());
    let known = std::mem::take(hashed);
    let (stream_seq, files, still) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        s.checkpoint(&dir)?;
        // The sequence the copy covers, read from the copy.
        let copy = Store::open(&dir, false, 1 << 20)?;
        let seq = copy.stream_seq()?;
        drop(copy);
        let mut files = Vec::new();
        let mut still = SstHashes::default();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let len = entry.metadata()?.len();
            let (sha256, size) = match known.get(&name) {
                Some((size, sha)) if *size == len => (sha.clone(), *size),
                _ => sha256_file(&entry.path())?,
            };
            if name.ends_with(".sst") {
                still.insert(name.clone(), (size, sha256.clone()));
            }
            files.push(FileEntry {
                path: name,
                size,
                sha256,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((seq, files, still))
    })
    .await??;
    *hashed = still;
    let held = dest.blobs().await?;
    for f in crate::backup::manifest::to_upload(&files, &held) {
        let bytes = tokio::fs::read(staging.join(&f.path)).await?;
        dest.put(&crate::backup::blob_key(&f.sha256), bytes.into())
            .await?;
    }
    let m = CheckpointManifest {
        partition: p,
        stream_seq,
        lease_revision,
        created_ms: sightline_proto::now_ms(),
        files,
    };
    let name = format!("checkpoints/{stream_seq:020}.json");
    dest.put(&name, serde_json::to_vec(&m)?.into()).await?;
    let _ = std::fs::remove_dir_all(staging);
    Ok(m)
}

/// The newest complete checkpoint, if any.
pub async fn latest(dest: &Dest) -> anyhow::Result<Option<CheckpointManifest>> {
    // `<stream_seq:020>.json`: the highest sequence sorts last.
    let Some(name) = dest
        .names("checkpoints")
        .await?
        .into_iter()
        .filter(|n| {
            n.len() == 25 && n.ends_with(".json") && n[..20].bytes().all(|b| b.is_ascii_digit())
        })
        .max()
    else {
        return Ok(None);
    };
    let name = format!("checkpoints/{name}");
    let Some(bytes) = dest.get(&name).await? else {
        anyhow::bail!("{name} was listed but is missing in {}", dest.shown);
    };
    Ok(Some(
        serde_json::from_slice(&bytes).with_context(|| format!("{name} in {}", dest.shown))?,
    ))
}

/// Blobs of a checkpoint fetched at once while restoring it.
const RESTORE_FETCHES: usize = 8;

/// Writes checkpoint `m` into `into` (which must not exist), every file's
/// size and sha256 checked; written in `<into>.restoring` and renamed.
pub async fn restore(dest: &Dest, m: &CheckpointManifest, into: &Path) -> anyhow::Result<()> {
    let tmp = PathBuf::from(format!("{}.restoring", into.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for f in &m.files {
        crate::backup::manifest::check_path(&f.path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.path))?;
    }
    // Fetched a few at a time: a new owner is waited for by the partition's
    // agents and subscribers, and one object-store round trip per file, one
    // after another, was most of a takeover.
    futures::stream::iter(m.files.clone())
        .map(|f| {
            let tmp = tmp.clone();
            async move {
                let bytes = dest
                    .get(&crate::backup::blob_key(&f.sha256))
                    .await?
                    .with_context(|| format!("blob {} of {} is missing", f.sha256, f.path))?;
                let (bytes, sha) = tokio::task::spawn_blocking(move || {
                    let sha = format!("{:x}", Sha256::digest(&bytes));
                    (bytes, sha)
                })
                .await?;
                if sha != f.sha256 || bytes.len() as u64 != f.size {
                    anyhow::bail!("{}: its blob does not match the manifest (corrupt)", f.path);
                }
                tokio::fs::write(tmp.join(&f.path), &bytes).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(RESTORE_FETCHES)
        .try_collect::<Vec<()>>()
        .await?;
    std::fs::rename(&tmp, into)?;
    Ok(())
}

/// Purges partition `p`'s IN messages below `keep_from` (those a checkpoint
/// holds): JetStream purge with the subject filter and sequence.
pub async fn purge_applied(nats: &Nats, p: u16, keep_from: u64) -> anyhow::Result<u64> {
    let stream = nats.js.get_stream(IN_STREAM).await?;
    let r = stream
        .purge()
        .filter(in_subject(p))
        .sequence(keep_from)
        .await?;
    Ok(r.purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(stream_seq: u64) -> bytes::Bytes {
        serde_json::to_vec(&CheckpointManifest {
            partition: 0,
            stream_seq,
            lease_revision: 1,
            created_ms: 0,
            files: Vec::new(),
        })
        .unwrap()
        .into()
    }

    #[tokio::test]
    async fn the_newest_checkpoint_is_the_highest_sequence_even_when_an_older_one_lands_last() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dest(dir.path().to_str().unwrap(), 0).unwrap();
        assert!(latest(&dest).await.unwrap().is_none());
        dest.put(&format!("checkpoints/{:020}.json", 900), manifest(900))
            .await
            .unwrap();
        // A stale owner finishing its upload after the next owner's.
        dest.put(&format!("checkpoints/{:020}.json", 85), manifest(85))
            .await
            .unwrap();
        dest.put("checkpoints/notes.txt", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(latest(&dest).await.unwrap().unwrap().stream_seq, 900);
    }
}
