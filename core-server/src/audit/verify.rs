//! `audit verify`: walks the chain from its anchor (or record 1) to the
//! head and names the first record that does not match. Read-only: safe
//! while the core appends.

use std::{fmt, path::Path, path::PathBuf};

use super::{
    files::{self, Anchor, Head},
    record::{body_hash, split_line, Link, Record, GENESIS_HASH},
};

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    pub first_seq: Option<u64>,
    /// The last record checked (seq, hash); (0 or the anchor's, …) when none.
    pub last_seq: u64,
    pub last_hash: String,
    pub head: Option<Head>,
    pub anchor: Option<Anchor>,
    /// Records after the head: written while verify ran, or the head's
    /// update lost in a crash. Not an error.
    pub beyond_head: u64,
    /// The first thing that does not match; `None`: the chain verifies.
    pub problem: Option<Problem>,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: Option<PathBuf>,
    /// 1-based line in `file`.
    pub line: Option<u64>,
    pub seq: Option<u64>,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProblemKind {
    /// The record's bytes do not hash to its `hash`: it was altered.
    HashMismatch { stored: String, computed: String },
    /// A seq other than the next one: records removed (or duplicated).
    MissingSeq { expected: u64, found: u64 },
    /// `prev_hash` is not the previous record's hash.
    BrokenLink { stored: String, expected: String },
    /// Time earlier than the record before.
    TimeBackwards { time: i64, previous: i64 },
    /// Not a record (not JSON, no trailing `hash`, an unfinished line inside).
    Malformed(String),
    /// The head names a record past the end: the last records were removed.
    Truncated { head_seq: u64, last_seq: u64 },
    /// The head's hash differs from the stored record's at the head's seq.
    HeadMismatch { head_hash: String, stored: String },
    /// `head.json` is missing or unreadable.
    HeadMissing(String),
    /// The anchor is not named by any `audit_cut` record, or unreadable.
    AnchorMismatch(String),
    /// A file could not be read.
    Io(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            write!(f, "{name}")?;
            if let Some(l) = self.line {
                write!(f, " line {l}")?;
            }
            f.write_str(": ")?;
        }
        if let Some(s) = self.seq {
            write!(f, "record seq {s}: ")?;
        }
        match &self.kind {
            ProblemKind::HashMismatch { stored, computed } => write!(
                f,
                "hash mismatch: the record was altered (stored {stored}, its bytes hash to {computed})"
            ),
            ProblemKind::MissingSeq { expected, found } if found > expected => write!(
                f,
                "missing seq: expected {expected}, found {found} (records {expected}..={} removed)",
                found - 1
            ),
            ProblemKind::MissingSeq { expected, found } => write!(
                f,
                "out of order: expected seq {expected}, found {found}"
            ),
            ProblemKind::BrokenLink { stored, expected } => write!(
                f,
                "broken link: prev_hash {stored} is not the previous record's hash {expected}"
            ),
            ProblemKind::TimeBackwards { time, previous } => write!(
                f,
                "time {time} is before the previous record's {previous}"
            ),
            ProblemKind::Malformed(why) => write!(f, "malformed: {why}"),
            ProblemKind::Truncated { head_seq, last_seq } => write!(
                f,
                "truncated: head.json names record {head_seq} but the log ends at record {last_seq} (records {}..={head_seq} removed)",
                last_seq + 1
            ),
            ProblemKind::HeadMismatch { head_hash, stored } => write!(
                f,
                "head mismatch: head.json has hash {head_hash}, the stored record {stored}"
            ),
            ProblemKind::HeadMissing(why) => write!(f, "head.json: {why}"),
            ProblemKind::AnchorMismatch(why) => write!(f, "anchor.json: {why}"),
            ProblemKind::Io(why) => f.write_str(why),
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Some(p) => write!(f, "audit verify: FAILED at {p}"),
            None => {
                write!(
                    f,
                    "audit verify: ok: {} records, seq {}..={}, head seq {} hash {}",
                    self.records,
                    self.first_seq.unwrap_or(self.last_seq),
                    self.last_seq,
                    self.head.as_ref().map_or(0, |h| h.seq),
                    self.head.as_ref().map_or("-", |h| h.hash.as_str()),
                )?;
                if let Some(a) = &self.anchor {
                    write!(f, ", anchored at seq {} (older records cut)", a.seq)?;
                }
                if self.beyond_head > 0 {
                    write!(f, ", {} records after the head", self.beyond_head)?;
                }
                Ok(())
            }
        }
    }
}

/// Walks the chain in `dir`. `Err` only when the folder cannot be listed.
pub fn verify(dir: &Path) -> std::io::Result<VerifyReport> {
    // The head first: the writer replaces it only after the records it
    // names are written, so every record it names is already there.
    let head = files::read_json::<Head>(&dir.join(files::HEAD_FILE));
    let anchor = files::read_json::<Anchor>(&dir.join(files::ANCHOR_FILE));
    let segments = files::list_segments(dir)?;
    let mut w = Walk {
        report: VerifyReport {
            records: 0,
            first_seq: None,
            last_seq: 0,
            last_hash: GENESIS_HASH.into(),
            head: None,
            anchor: None,
            beyond_head: 0,
            problem: None,
        },
        head_hash_seen: None,
        cut_records: Vec::new(),
        last_time: i64::MIN,
    };
    let problem = |kind| Problem {
        file: None,
        line: None,
        seq: None,
        kind,
    };
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            w.report.problem = Some(problem(ProblemKind::HeadMissing(e)));
            return Ok(w.report);
        }
    };
    let anchor = match anchor {
        Ok(a) => a,
        Err(e) => {
            w.report.problem = Some(problem(ProblemKind::AnchorMismatch(e)));
            return Ok(w.report);
        }
    };
    w.report.head = head.clone();
    w.report.anchor = anchor.clone();
    if let Some(a) = &anchor {
        w.report.last_seq = a.seq;
        w.report.last_hash = a.hash.clone();
    }
    let head_seq = head.as_ref().map(|h| h.seq);
    for (i, s) in segments.iter().enumerate() {
        // Segments wholly at or before the anchor are left over from a cut
        // that stopped before removing them.
        if let (Some(a), Some(next)) = (&anchor, segments.get(i + 1)) {
            if next.first_seq <= a.seq + 1 {
                continue;
            }
        }
        let bytes = match std::fs::read(&s.path) {
            Ok(b) => b,
            Err(e) => {
                w.report.problem = Some(Problem {
                    file: Some(s.path.clone()),
                    line: None,
                    seq: None,
                    kind: ProblemKind::Io(e.to_string()),
                });
                return Ok(w.report);
            }
        };
        let last_segment = i + 1 == segments.len();
        if let Err(p) = w.segment(s, &bytes, last_segment, head_seq) {
            w.report.problem = Some(p);
            return Ok(w.report);
        }
    }
    w.report.problem = w.finish(head, anchor);
    Ok(w.report)
}

struct Walk {
    report: VerifyReport,
    /// The stored hash of the record at the head's seq.
    head_hash_seen: Option<String>,
    /// (anchor_seq, anchor_hash) named by each `audit_cut` record.
    cut_records: Vec<(u64, String)>,
    last_time: i64,
}

impl Walk {
    fn segment(
        &mut self,
        s: &files::Segment,
        bytes: &[u8],
        last_segment: bool,
        head_seq: Option<u64>,
    ) -> Result<(), Problem> {
        let at = |line: u64, seq: Option<u64>, kind| Problem {
            file: Some(s.path.clone()),
            line: Some(line),
            seq,
            kind,
        };
        let mut rest = bytes;
        let mut line_no = 0u64;
        while !rest.is_empty() {
            line_no += 1;
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                // An unfinished last line: being written, or torn by a crash
                // (never acknowledged). The head check catches a cut inside
                // a record it names.
                if last_segment {
                    return Ok(());
                }
                return Err(at(
                    line_no,
                    None,
                    ProblemKind::Malformed("unfinished line".into()),
                ));
            };
            let raw = &rest[..end];
            rest = &rest[end + 1..];
            let expected = self.report.last_seq + 1;
            let text = std::str::from_utf8(raw).map_err(|_| {
                at(
                    line_no,
                    Some(expected),
                    ProblemKind::Malformed("not UTF-8".into()),
                )
            })?;
            let split = split_line(text).ok_or_else(|| {
                at(
                    line_no,
                    Some(expected),
                    ProblemKind::Malformed("no trailing \"hash\" field".into()),
                )
            })?;
            let link = match Link::from_layout(split.body_open) {
                Some(l) => l,
                None => serde_json::from_str::<Link>(text).map_err(|e| {
                    at(
                        line_no,
                        Some(expected),
                        ProblemKind::Malformed(e.to_string()),
                    )
                })?,
            };
            let computed = body_hash(split.body_open);
            if computed != split.stored_hash {
                return Err(at(
                    line_no,
                    Some(link.seq),
                    ProblemKind::HashMismatch {
                        stored: split.stored_hash.into(),
                        computed,
                    },
                ));
            }
            if link.seq != expected {
                return Err(at(
                    line_no,
                    Some(link.seq),
                    ProblemKind::MissingSeq {
                        expected,
                        found: link.seq,
                    },
                ));
            }
            if line_no == 1 && link.seq != s.first_seq {
                return Err(at(
                    line_no,
                    Some(link.seq),
                    ProblemKind::Malformed(format!(
                        "the file's name says its first record is {}",
                        s.first_seq
                    )),
                ));
            }
            if link.prev_hash != self.report.last_hash {
                return Err(at(
                    line_no,
                    Some(link.seq),
                    ProblemKind::BrokenLink {
                        stored: link.prev_hash.into_owned(),
                        expected: self.report.last_hash.clone(),
                    },
                ));
            }
            if link.time < self.last_time {
                return Err(at(
                    line_no,
                    Some(link.seq),
                    ProblemKind::TimeBackwards {
                        time: link.time,
                        previous: self.last_time,
                    },
                ));
            }
            if text.contains("\"action\":\"audit_cut\"") {
                if let Ok(r) = serde_json::from_str::<Record>(text) {
                    let seq = r.detail.get("anchor_seq").and_then(|v| v.as_u64());
                    let hash = r.detail.get("anchor_hash").and_then(|v| v.as_str());
                    if let (Some(seq), Some(hash)) = (seq, hash) {
                        self.cut_records.push((seq, hash.to_string()));
                    }
                }
            }
            if Some(link.seq) == head_seq {
                self.head_hash_seen = Some(split.stored_hash.to_string());
            }
            if head_seq.is_some_and(|h| link.seq > h) {
                self.report.beyond_head += 1;
            }
            self.last_time = link.time;
            self.report.first_seq.get_or_insert(link.seq);
            self.report.records += 1;
            self.report.last_seq = link.seq;
            self.report.last_hash.clear();
            self.report.last_hash.push_str(split.stored_hash);
        }
        Ok(())
    }

    fn finish(&self, head: Option<Head>, anchor: Option<Anchor>) -> Option<Problem> {
        let bare = |kind| {
            Some(Problem {
                file: None,
                line: None,
                seq: None,
                kind,
            })
        };
        let Some(head) = head else {
            if self.report.records == 0 && anchor.is_none() {
                return None; // an empty folder: nothing written yet
            }
            return bare(ProblemKind::HeadMissing("missing".into()));
        };
        if head.seq > self.report.last_seq {
            return bare(ProblemKind::Truncated {
                head_seq: head.seq,
                last_seq: self.report.last_seq,
            });
        }
        let stored = match &self.head_hash_seen {
            Some(h) => h.clone(),
            // The head is at the anchor (or 0): no record of it was walked.
            None => match &anchor {
                Some(a) if a.seq == head.seq => a.hash.clone(),
                _ if head.seq == 0 => GENESIS_HASH.to_string(),
                _ => String::from("(not in the log)"),
            },
        };
        if stored != head.hash {
            return Some(Problem {
                file: None,
                line: None,
                seq: Some(head.seq),
                kind: ProblemKind::HeadMismatch {
                    head_hash: head.hash,
                    stored,
                },
            });
        }
        if let Some(a) = anchor {
            if !self
                .cut_records
                .iter()
                .any(|(s, h)| *s == a.seq && *h == a.hash)
            {
                return bare(ProblemKind::AnchorMismatch(format!(
                    "no audit_cut record in the chain names the anchor (seq {}): records before it were removed without a cut",
                    a.seq
                )));
            }
        }
        None
    }
}
