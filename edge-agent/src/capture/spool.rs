//! The local media spool: finished footage waits here for upload.
//!
//! Layout: `<sha256>.bin` (the bytes) and one `<sha256>-<kind>.json` per use
//! of them (kind, content type, size, det_oids, created_ms), each written to a
//! temporary name and renamed, so a crash leaves either a whole entry or none.
//! The same bytes produced for two detections are one entry listing both; the
//! same bytes used as two kinds (a small camera's snapshot is its own
//! thumbnail) are one `.bin` with two entries, uploaded once. Over the quota, the oldest
//! entries go first and are counted; events are never dropped for footage.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Footage to spool.
#[derive(Debug)]
pub struct MediaItem {
    pub kind: &'static str,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
    pub det_oids: Vec<i64>,
}

/// A spooled object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpoolEntry {
    pub sha256: String,
    pub kind: String,
    pub content_type: String,
    pub size: u64,
    pub det_oids: Vec<i64>,
    pub created_ms: i64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    lock: Mutex<()>,
    /// Wakes the uploader.
    pub notify: tokio::sync::Notify,
    /// Entries dropped to stay under the quota.
    pub evicted: AtomicU64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Spool {
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("scratch"))?;
        Ok(Self {
            dir,
            max_bytes,
            lock: Mutex::new(()),
            notify: tokio::sync::Notify::new(),
            evicted: AtomicU64::new(0),
        })
    }

    /// The quota (`capture.spool_max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the cutter writes its temporary files.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    pub fn data_path(&self, sha: &str) -> PathBuf {
        self.dir.join(format!("{sha}.bin"))
    }

    fn meta_path(&self, sha: &str, kind: &str) -> PathBuf {
        self.dir.join(format!("{sha}-{kind}.json"))
    }

    fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    /// Spools footage; returns its entry.
    pub fn put(&self, item: MediaItem) -> std::io::Result<SpoolEntry> {
        let sha = sha256_hex(&item.bytes);
        let _g = self.lock.lock().unwrap();
        let mut entry = SpoolEntry {
            sha256: sha.clone(),
            kind: item.kind.to_string(),
            content_type: item.content_type.to_string(),
            size: item.bytes.len() as u64,
            det_oids: item.det_oids,
            created_ms: sightline_proto::now_ms(),
        };
        if let Some(old) = self.read_meta(&self.meta_path(&sha, item.kind)) {
            for d in old.det_oids {
                if !entry.det_oids.contains(&d) {
                    entry.det_oids.push(d);
                }
            }
            entry.created_ms = old.created_ms;
        }
        if !self.data_path(&sha).exists() {
            Self::write_atomic(&self.data_path(&sha), &item.bytes)?;
        }
        Self::write_atomic(
            &self.meta_path(&sha, item.kind),
            &serde_json::to_vec(&entry)?,
        )?;
        tracing::debug!(sha256 = %sha, kind = %entry.kind, size = entry.size, "spooled");
        self.enforce_quota();
        drop(_g);
        self.notify.notify_one();
        Ok(entry)
    }

    fn read_meta(&self, path: &Path) -> Option<SpoolEntry> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Vec<SpoolEntry> {
        let mut out: Vec<SpoolEntry> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json")?;
                self.read_meta(&e.path())
            })
            .collect();
        out.sort_by_key(|e| (e.created_ms, e.sha256.clone()));
        out
    }

    /// Removes one use of an object; the bytes go with the last use.
    pub fn remove(&self, sha: &str, kind: &str) {
        let _g = self.lock.lock().unwrap();
        self.remove_locked(sha, kind);
    }

    fn remove_locked(&self, sha: &str, kind: &str) {
        let _ = std::fs::remove_file(self.meta_path(sha, kind));
        let still_used = ["snapshot", "thumbnail", "clip"]
            .iter()
            .any(|k| self.meta_path(sha, k).exists());
        if !still_used {
            let _ = std::fs::remove_file(self.data_path(sha));
        }
    }

    fn enforce_quota(&self) {
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        for e in entries {
            if total <= self.max_bytes {
                break;
            }
            self.remove_locked(&e.sha256, &e.kind);
            total -= e.size;
            self.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sha256 = %e.sha256, kind = %e.kind, "media spool over quota: oldest footage dropped (its events stay)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(bytes: &[u8], det: i64) -> MediaItem {
        MediaItem {
            kind: "snapshot",
            content_type: "image/jpeg",
            bytes: bytes.to_vec(),
            det_oids: vec![det],
        }
    }

    #[test]
    fn the_same_bytes_are_one_entry_for_both_detections() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path().to_path_buf(), 1 << 20).unwrap();
        s.put(item(b"abc", 1)).unwrap();
        s.put(item(b"abc", 2)).unwrap();
        let l = s.list();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].det_oids, vec![2, 1]);
    }

    #[test]
    fn over_the_quota_the_oldest_goes_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path().to_path_buf(), 25).unwrap();
        s.put(item(&[1u8; 10], 1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.put(item(&[2u8; 10], 2)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.put(item(&[3u8; 10], 3)).unwrap();
        let l = s.list();
        assert_eq!(
            l.iter().map(|e| e.det_oids[0]).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(s.evicted.load(Ordering::Relaxed), 1);
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;

    #[test]
    fn the_same_bytes_as_two_kinds_are_two_entries_over_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path().to_path_buf(), 1 << 30).unwrap();
        let put = |kind| {
            s.put(MediaItem {
                kind,
                content_type: "image/jpeg",
                bytes: vec![7; 10],
                det_oids: vec![1],
            })
            .unwrap()
        };
        let a = put("snapshot");
        put("thumbnail");
        assert_eq!(s.list().len(), 2);
        s.remove(&a.sha256, "snapshot");
        assert!(
            s.data_path(&a.sha256).exists(),
            "still used by the thumbnail"
        );
        s.remove(&a.sha256, "thumbnail");
        assert!(!s.data_path(&a.sha256).exists());
    }

    #[test]
    fn two_items_put_back_to_back_are_both_listed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path().to_path_buf(), 1 << 30).unwrap();
        for i in 0..20u8 {
            s.put(MediaItem {
                kind: "snapshot",
                content_type: "image/jpeg",
                bytes: vec![i; 100],
                det_oids: vec![1],
            })
            .unwrap();
            s.put(MediaItem {
                kind: "thumbnail",
                content_type: "image/jpeg",
                bytes: vec![i; 50],
                det_oids: vec![1],
            })
            .unwrap();
        }
        assert_eq!(s.list().len(), 40);
    }
}
