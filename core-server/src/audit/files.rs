//! The audit folder's files: segments, the head and the anchor.
//!
//! ```text
//! <dir>/seg-00000000000000000001.jsonl   records 1..k, one JSON line each
//! <dir>/seg-0000000000000000000k+1.jsonl records k+1.., the last one is appended to
//! <dir>/head.json                        {"seq":N,"hash":"…"}: the last record written
//! <dir>/anchor.json                      {"seq":M,"hash":"…","time":T}: the last record cut
//! ```

use std::{
    fs::File,
    io::{Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const HEAD_FILE: &str = "head.json";
pub const ANCHOR_FILE: &str = "anchor.json";
const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".jsonl";

/// How much of a segment's start is read to find its first line.
const FIRST_LINE_READ: usize = 64 * 1024;

/// The chain's head: the last record written (`seq` 0 and the genesis hash
/// for a log with no records yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// Where the chain starts after a retention cut: the last record removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
    /// When the cut was made (Unix ms).
    pub time: i64,
}

/// A segment file: the seq of its first record (from its name) and its path.
#[derive(Debug, Clone)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
}

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// The segment files, oldest first.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(n) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        if let Ok(first_seq) = n.parse() {
            out.push(Segment {
                first_seq,
                path: e.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// A small JSON file, or `None` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Replaces `dir/name` with `value` as one step: a temporary file, synced,
/// renamed over it. A crash leaves the old file or the new one.
pub fn write_json_atomic<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
    sync_dir: bool,
) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    f.write_all(&bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(name))?;
    if sync_dir {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The first complete line of a segment, if it has one.
pub fn first_line(path: &Path) -> std::io::Result<Option<String>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0; FIRST_LINE_READ];
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(buf[..n]
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|end| String::from_utf8(buf[..end].to_vec()).ok()))
}

/// The last complete line of a segment's bytes and the length up to and
/// including its `\n` (bytes after it are a line that was never finished).
pub fn last_line(bytes: &[u8]) -> (Option<&[u8]>, usize) {
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return (None, 0);
    };
    let start = bytes[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (Some(&bytes[start..end]), end + 1)
}
