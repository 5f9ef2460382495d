//! The manifest of one backup, and which files a new backup must upload.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Component, Path},
};

use serde::{Deserialize, Serialize};

/// The manifest format this core writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// What `search` says when the index is not in the backup: the restored
/// core rebuilds it from the store at its first start.
pub const SEARCH_REBUILD: &str = "rebuild";

/// One backup: what it holds and where each file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`]; another is refused.
    pub format: u32,
    /// `YYYYMMDDTHHMMSSmmmZ`: sorts in time order; `backups/<id>/`.
    pub id: String,
    /// When the checkpoint was taken (Unix ms).
    pub created_ms: i64,
    /// The `sightline-core` version that made it.
    pub core_version: String,
    /// The store's watermarks in the checkpoint: where each agent's epoch
    /// resumes on a core restored from it.
    pub watermarks: Vec<Watermark>,
    /// [`SEARCH_REBUILD`]: the index is not copied (it is derived from the
    /// store, and rebuilt by the restored core).
    pub search: String,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
}

/// An (agent, epoch)'s highest committed seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    pub agent: String,
    pub epoch: u64,
    pub seq: u64,
}

/// One file of a backup. Its bytes are the blob `blobs/<sha256>`, shared by
/// every backup that holds the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative, `/`-separated: `store/…` (the store's RocksDB files, put in
    /// the data directory itself), `access/…`, `audit/…`, `dataset-b/…`, or a
    /// file of the data directory (`agents.toml`, `admin.token`,
    /// `site-signing.key`, `site-signing.pub.pem`).
    pub path: String,
    pub size: u64,
    /// 64 lowercase hex digits.
    pub sha256: String,
}

impl Manifest {
    /// Parses and checks a manifest read from `key` (named in errors).
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest {key}: {e}"))?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest {key}: format {} (this core reads format {MANIFEST_FORMAT})",
                m.format
            ));
        }
        for f in &m.files {
            check_path(&f.path).map_err(|e| format!("manifest {key}: file `{}`: {e}", f.path))?;
            if !super::valid_sha(&f.sha256) {
                return Err(format!(
                    "manifest {key}: file `{}`: sha256 must be 64 lowercase hex digits",
                    f.path
                ));
            }
        }
        Ok(m)
    }

    /// The sum of the files' sizes.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// sha256 of each `(path, size)`: the hashes a new backup may reuse for
    /// an immutable file (an SST) it finds again under the same name and size.
    pub fn known_hashes(&self) -> HashMap<(String, u64), String> {
        self.files
            .iter()
            .map(|f| ((f.path.clone(), f.size), f.sha256.clone()))
            .collect()
    }
}

/// A path in a manifest: relative, no `..`, no empty or `.` component — a
/// restore never writes outside its data directory.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.contains('\\') {
        return Err("must be a relative `/`-separated path");
    }
    let ok = path
        .split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err("must be relative, without `.` or `..`")
    }
}

/// Whether an SST file (immutable once written: same name and size, same
/// bytes) — the only files whose hash a backup takes from the last manifest.
pub fn immutable(path: &str) -> bool {
    path.ends_with(".sst")
}

/// The files of `files` whose blob is not in the destination yet (`held`:
/// sha256 → size of every blob there), each blob once.
pub fn to_upload<'a>(files: &'a [FileEntry], held: &HashMap<String, u64>) -> Vec<&'a FileEntry> {
    let mut seen = BTreeMap::new();
    for f in files {
        if held.get(&f.sha256) != Some(&f.size) {
            seen.entry(f.sha256.as_str()).or_insert(f);
        }
    }
    seen.into_values().collect()
}
