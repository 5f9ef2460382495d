//! Reading the log: the admin page's query (newest first, paged, bounded)
//! and `audit export` (oldest first, lines as stored so each stays checkable).

use std::{io::Write, path::Path};

use sightline_proto::error::ApiError;

use super::{
    files,
    record::{Action, Actor, Record},
};

/// Most records on one page of [`query`].
pub const MAX_PAGE: usize = 500;

/// Most records one [`query`] call reads; a page that reaches it ends early
/// with a cursor to go on from, so a rare filter cannot make one request
/// read the whole log.
pub const MAX_SCAN: usize = 200_000;

/// Which records: every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<Actor>,
    pub action: Option<Action>,
    pub camera: Option<i64>,
    pub location: Option<i64>,
    /// Unix ms, inclusive.
    pub since: Option<i64>,
    /// Unix ms, exclusive.
    pub until: Option<i64>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == r.actor)
            && self.action.is_none_or(|a| a == r.action)
            && self.camera.is_none_or(|c| Some(c) == r.camera)
            && self.location.is_none_or(|l| Some(l) == r.location)
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time < t)
    }
}

/// Which page: records with seq below `before` (none: from the newest).
#[derive(Debug, Clone)]
pub struct Page {
    pub before: Option<u64>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct QueryPage {
    /// Newest first.
    pub records: Vec<Record>,
    /// The `before` of the next page; `None`: no older records.
    pub next_before: Option<u64>,
}

/// Segments with the time of their first record, oldest first.
fn segments_with_times(dir: &Path) -> std::io::Result<Vec<(files::Segment, Option<i64>)>> {
    let mut out = Vec::new();
    for s in files::list_segments(dir)? {
        let t = files::first_line(&s.path)?.and_then(|l| {
            serde_json::from_str::<super::record::Link>(&l)
                .ok()
                .map(|l| l.time)
        });
        out.push((s, t));
    }
    Ok(out)
}

/// Whether segment `i` can hold records in [since, until): its records'
/// times lie between its first record's and the next segment's first.
fn may_overlap(segs: &[(files::Segment, Option<i64>)], i: usize, f: &Filter) -> bool {
    let start = segs[i].1;
    let end = segs.get(i + 1).and_then(|s| s.1);
    let after_until = matches!((start, f.until), (Some(s), Some(u)) if s >= u);
    let before_since = matches!((end, f.since), (Some(e), Some(s)) if e < s);
    !(after_until || before_since)
}

fn unavailable(dir: &Path, e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("audit store {}: {e}", dir.display()))
}

/// One page of records matching `filter`, newest first.
pub fn query(dir: &Path, filter: &Filter, page: &Page) -> Result<QueryPage, ApiError> {
    if page.limit == 0 || page.limit > MAX_PAGE {
        return Err(ApiError::field(
            "limit",
            format!("{} is not within 1..={MAX_PAGE}", page.limit),
        ));
    }
    let segs = segments_with_times(dir).map_err(|e| unavailable(dir, e))?;
    let mut records = Vec::new();
    let mut scanned = 0usize;
    for i in (0..segs.len()).rev() {
        let s = &segs[i].0;
        if page.before.is_some_and(|b| s.first_seq >= b) || !may_overlap(&segs, i, filter) {
            continue;
        }
        let Some(bytes) = complete_lines(dir, &s.path)? else {
            continue;
        };
        for line in bytes.split(|&b| b == b'\n').rev() {
            let Ok(r) = serde_json::from_slice::<Record>(line) else {
                continue;
            };
            if page.before.is_some_and(|b| r.seq >= b) {
                continue;
            }
            scanned += 1;
            let seq = r.seq;
            if filter.matches(&r) {
                records.push(r);
                if records.len() == page.limit {
                    return Ok(QueryPage {
                        records,
                        next_before: (seq > 1).then_some(seq),
                    });
                }
            }
            if scanned >= MAX_SCAN {
                return Ok(QueryPage {
                    records,
                    next_before: (seq > 1).then_some(seq),
                });
            }
        }
    }
    Ok(QueryPage {
        records,
        next_before: None,
    })
}

/// The page just newer than a seq: the `limit` oldest records matching
/// `filter` with seq above `after`, returned newest first (as [`query`]
/// does), for the admin page's "newer" link. `newer_after` is where the next
/// newer page starts (the last seq read), `None` when the scan reached the
/// end of the log. Bounded by [`MAX_SCAN`] like [`query`].
pub fn query_after(
    dir: &Path,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> Result<AfterPage, ApiError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::field(
            "limit",
            format!("{limit} is not within 1..={MAX_PAGE}"),
        ));
    }
    let segs = segments_with_times(dir).map_err(|e| unavailable(dir, e))?;
    let mut records = Vec::new();
    let mut scanned = 0usize;
    for i in 0..segs.len() {
        // Segment i holds seqs below the next one's first: skip those at or
        // below `after`.
        if segs.get(i + 1).is_some_and(|n| n.0.first_seq <= after + 1)
            || !may_overlap(&segs, i, filter)
        {
            continue;
        }
        let Some(bytes) = complete_lines(dir, &segs[i].0.path)? else {
            continue;
        };
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(r) = serde_json::from_slice::<Record>(line) else {
                continue;
            };
            if r.seq <= after {
                continue;
            }
            scanned += 1;
            let seq = r.seq;
            if filter.matches(&r) {
                records.push(r);
            }
            if records.len() == limit || scanned >= MAX_SCAN {
                records.reverse();
                return Ok(AfterPage {
                    records,
                    newer_after: Some(seq),
                });
            }
        }
    }
    records.reverse();
    Ok(AfterPage {
        records,
        newer_after: None,
    })
}

/// A segment's complete lines (a last line still being written left out);
/// `None` when the segment was removed by a retention cut since it was listed.
fn complete_lines(dir: &Path, path: &Path) -> Result<Option<Vec<u8>>, ApiError> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unavailable(dir, e)),
    };
    let (_, complete) = files::last_line(&bytes);
    bytes.truncate(complete);
    Ok(Some(bytes))
}

/// What [`query_after`] found.
#[derive(Debug, Clone)]
pub struct AfterPage {
    /// Newest first.
    pub records: Vec<Record>,
    /// The `after` of the next newer page; `None`: none newer yet.
    pub newer_after: Option<u64>,
}

/// Writes the records matching `filter` to `out`, oldest first, one line
/// each exactly as stored (so `hash` can be checked line by line). The count.
pub fn export(dir: &Path, filter: &Filter, out: &mut dyn Write) -> Result<u64, ApiError> {
    let segs = segments_with_times(dir).map_err(|e| unavailable(dir, e))?;
    let mut n = 0;
    for i in 0..segs.len() {
        if !may_overlap(&segs, i, filter) {
            continue;
        }
        let Some(bytes) = complete_lines(dir, &segs[i].0.path)? else {
            continue;
        };
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(r) = serde_json::from_slice::<Record>(line) else {
                continue;
            };
            if filter.matches(&r) {
                out.write_all(line)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| ApiError::unavailable(format!("writing the export: {e}")))?;
                n += 1;
            }
        }
    }
    Ok(n)
}
