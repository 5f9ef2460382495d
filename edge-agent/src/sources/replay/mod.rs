//! Replay of Dataset A from a file: CSV (with a header row), JSON Lines, or
//! Parquet, at a given rate or as fast as the buffer takes it.
//!
//! Columns are Dataset A's names. `detection_oid` may be empty (the agent
//! stamps one); `confidence`, `box_x`, `box_y`, `box_width`, `box_height` are
//! read when present; any other column becomes an attribute.
//!
//! Promises:
//! - A line or row that does not read, parse or validate (invalid UTF-8, bad
//!   JSON, a bad CSV record, a wrong type, a missing field) is reported with
//!   its position, the field and the reason, counted, and the replay goes on
//!   with the next one. Positions are what an editor or a Parquet tool shows:
//!   CSV and JSON Lines lines from 1 (the CSV header is line 1), Parquet rows
//!   from 1 across the file, row groups from 0.
//! - Reports are bounded: the first [`MAX_REPORTED_ROWS`] bad rows and
//!   [`MAX_REPORTED_PARTS`] unreadable parts are logged one line each, the
//!   rest only counted ([`ReplaySummary`]).
//! - A part of the file that cannot be read (a damaged Parquet row group or
//!   column chunk, a read error, a CSV record past [`MAX_RECORD_BYTES`]) is
//!   reported once and the reader moves past it (the next row group, or the
//!   end of the file); it never reads the same part twice.
//! - A file that cannot be read at all (missing, no usable header or footer,
//!   a required column absent) ends the replay with an error naming it.
//! - The position reached is stored with the events, so a restarted replay
//!   goes on after the last row that reached the buffer (bad rows included).

mod parquet_file;
mod rows;
mod text;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::sync::mpsc;

use super::Publisher;
use crate::buffer::SourcePosition;
use rows::{detection_from_row, Row};

/// Bad rows logged one line each; past this many they are counted only (the
/// count is in [`ReplaySummary::invalid`] and in the closing line).
pub const MAX_REPORTED_ROWS: usize = 100;

/// Unreadable parts (row groups, file tails) logged one line each; past this
/// many they are counted only ([`ReplaySummary::unreadable`]).
pub const MAX_REPORTED_PARTS: usize = 100;

/// The longest line (JSON Lines) or record (CSV) read, in bytes: a longer
/// JSON line is a bad row and skipped; a longer CSV record (an unclosed quote
/// makes the rest of the file one) ends the file. A detection's attributes are
/// limited to 16 KiB, so a good row is far below it.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// File formats replay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
    Parquet,
}

impl Format {
    /// From the file extension.
    pub fn detect(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// What to replay, and how fast.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub path: PathBuf,
    pub format: Option<Format>,
    /// Events per second; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Ignore the stored position and replay from the first row.
    pub from_start: bool,
}

/// Totals of a replay.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Lines or rows read (good and bad; skipped ones not included).
    pub rows: u64,
    /// Rows that became events in the buffer.
    pub accepted: u64,
    /// Rows reported as bad (did not read, parse or validate).
    pub invalid: u64,
    /// Parts of the file that could not be read (row groups, file tails).
    pub unreadable: u64,
    /// Rows skipped because an earlier run already stored them.
    pub skipped: u64,
    /// The problems as they were logged (bounded by [`MAX_REPORTED_ROWS`]
    /// and [`MAX_REPORTED_PARTS`], plus the lines saying so).
    pub reported: Vec<String>,
}

/// What the file reader hands the replay loop.
enum Read {
    /// A line (CSV, JSON Lines) or row (Parquet) by its 1-based number, and
    /// what it held or why it is bad.
    Row { line: u64, row: Result<Row, String> },
    /// A part of the file that could not be read, described once; the reader
    /// has moved past it.
    Unreadable(String),
}

/// Reads the file on a blocking thread, sending rows in chunks. Rows up to
/// `skip_through` are not sent. The rows read before an error are sent.
fn read_file(
    path: &Path,
    format: Format,
    skip_through: u64,
    chunk_rows: usize,
    tx: mpsc::Sender<Vec<Read>>,
) -> anyhow::Result<()> {
    let mut chunk = Vec::with_capacity(chunk_rows);
    let mut emit = |r: Read| -> bool {
        if matches!(r, Read::Row { line, .. } if line <= skip_through) {
            return true;
        }
        chunk.push(r);
        if chunk.len() >= chunk_rows {
            return tx.blocking_send(std::mem::take(&mut chunk)).is_ok();
        }
        true
    };
    let result = match format {
        Format::Csv => text::read_csv(path, &mut emit),
        Format::Jsonl => text::read_jsonl(path, &mut emit),
        Format::Parquet => parquet_file::read_parquet(path, skip_through, &mut emit),
    };
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
    result
}

/// Reads the whole file as a replay would and turns each row into a
/// detection, without a buffer: what was read and how it went (`accepted`
/// counts rows that became valid detections; `reported` stays empty). For
/// fuzzing and tools; the replay itself goes through [`replay`].
pub fn read_rows(path: &Path, format: Format) -> anyhow::Result<ReplaySummary> {
    let mut s = ReplaySummary::default();
    let mut emit = |r: Read| -> bool {
        match r {
            Read::Unreadable(_) => s.unreadable += 1,
            Read::Row { row, .. } => {
                s.rows += 1;
                match row.and_then(|row| detection_from_row(row).map_err(|e| e.to_string())) {
                    Ok(_) => s.accepted += 1,
                    Err(_) => s.invalid += 1,
                }
            }
        }
        true
    };
    match format {
        Format::Csv => text::read_csv(path, &mut emit),
        Format::Jsonl => text::read_jsonl(path, &mut emit),
        Format::Parquet => parquet_file::read_parquet(path, 0, &mut emit),
    }?;
    Ok(s)
}

/// Logs problems, one line each up to the limits, and keeps what it logged.
struct Reporter {
    bar: indicatif::ProgressBar,
    /// The file as the operator named it.
    file: String,
    /// "line" or "row".
    unit: &'static str,
    bad_rows: usize,
    parts: usize,
    logged: Vec<String>,
}

impl Reporter {
    fn bad_row(&mut self, line: u64, reason: &str) {
        self.bad_rows += 1;
        if self.bad_rows <= MAX_REPORTED_ROWS {
            // One file per replay: its name is in the closing lines, not in
            // each of these ("replay: line N: field `x`: reason").
            self.log(format!("{} {line}: {reason}", self.unit));
        } else if self.bad_rows == MAX_REPORTED_ROWS + 1 {
            self.log(format!(
                "{}: more than {MAX_REPORTED_ROWS} bad {}s; the rest are counted, not listed",
                self.file, self.unit
            ));
        }
    }

    fn unreadable(&mut self, what: &str) {
        self.parts += 1;
        if self.parts <= MAX_REPORTED_PARTS {
            self.log(format!("{}: unreadable: {what}", self.file));
        } else if self.parts == MAX_REPORTED_PARTS + 1 {
            self.log(format!(
                "{}: more than {MAX_REPORTED_PARTS} unreadable parts; the rest are counted, not listed",
                self.file
            ));
        }
    }

    /// The closing count, when some problems were not listed.
    fn finish(&mut self, s: &ReplaySummary) {
        if self.bad_rows > MAX_REPORTED_ROWS || self.parts > MAX_REPORTED_PARTS {
            self.log(format!(
                "{}: {} bad {}s and {} unreadable parts in all",
                self.file, s.invalid, self.unit, s.unreadable
            ));
        }
    }

    fn log(&mut self, line: String) {
        self.bar.suspend(|| eprintln!("replay: {line}"));
        self.logged.push(line);
    }
}

/// Replays the file into the publisher. Returns when every row has been read
/// and every valid one is durable in the buffer; errors when the file cannot
/// be read at all or the buffer fails.
pub async fn replay(publisher: Publisher, opts: ReplayOptions) -> anyhow::Result<ReplaySummary> {
    let format = match opts.format.or_else(|| Format::detect(&opts.path)) {
        Some(f) => f,
        None => anyhow::bail!(
            "cannot tell the format of {} from its extension; pass --format csv|jsonl|parquet",
            opts.path.display()
        ),
    };
    let canonical = std::fs::canonicalize(&opts.path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", opts.path.display()))?;
    let source_name = format!("replay:{}", canonical.display());
    let stored = if opts.from_start {
        0
    } else {
        publisher.buffer.source_position(&source_name)?.unwrap_or(0)
    };
    if stored > 0 {
        tracing::info!(path = %opts.path.display(), after_line = stored, "resuming an earlier replay");
    }
    let total_bytes = std::fs::metadata(&canonical).map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total_bytes.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay {msg} [{elapsed_precise}] {wide_bar}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (tx, mut rx) = mpsc::channel::<Vec<Read>>(4);
    let path = canonical.clone();
    // About 20 chunks a second at the given rate, so pacing stays smooth.
    let chunk_rows = opts
        .rate
        .map(|r| (r / 20.0) as usize)
        .unwrap_or(1000)
        .clamp(1, 1000);
    let reader =
        tokio::task::spawn_blocking(move || read_file(&path, format, stored, chunk_rows, tx));

    let mut reporter = Reporter {
        bar: bar.clone(),
        file: opts.path.display().to_string(),
        unit: if format == Format::Parquet {
            "row"
        } else {
            "line"
        },
        bad_rows: 0,
        parts: 0,
        logged: Vec::new(),
    };
    let mut summary = ReplaySummary {
        skipped: stored,
        ..Default::default()
    };
    let mut position = stored;
    let started = tokio::time::Instant::now();
    while let Some(chunk) = rx.recv().await {
        let mut detections = Vec::with_capacity(chunk.len());
        let mut lines = Vec::with_capacity(chunk.len());
        for r in chunk {
            let (line, row) = match r {
                Read::Unreadable(what) => {
                    summary.unreadable += 1;
                    reporter.unreadable(&what);
                    continue;
                }
                Read::Row { line, row } => (line, row),
            };
            summary.rows += 1;
            position = position.max(line);
            match row.and_then(|row| detection_from_row(row).map_err(|e| e.to_string())) {
                Ok(d) => {
                    detections.push(d);
                    lines.push(line);
                }
                Err(reason) => {
                    summary.invalid += 1;
                    reporter.bad_row(line, &reason);
                }
            }
        }
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(summary.rows as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        let source = SourcePosition {
            name: source_name.clone(),
            position,
        };
        let results = publisher.publish_waiting(detections, Some(source)).await?;
        for (r, line) in results.iter().zip(lines) {
            match r {
                Ok(_) => summary.accepted += 1,
                Err(e) => {
                    summary.invalid += 1;
                    reporter.bad_row(line, &e.to_string());
                }
            }
        }
        bar.set_message(format!(
            "{} rows, {} invalid",
            summary.rows, summary.invalid
        ));
        bar.set_position(total_bytes.min(summary.rows * 64));
    }
    bar.finish_and_clear();
    reporter.finish(&summary);
    summary.reported = reporter.logged;
    match reader.await {
        Ok(Ok(())) => Ok(summary),
        Ok(Err(e)) => Err(anyhow::anyhow!("replay of {}: {e}", opts.path.display())),
        Err(e) => Err(anyhow::anyhow!(
            "replay of {}: the reader failed: {e}",
            opts.path.display()
        )),
    }
}

#[cfg(test)]
mod tests;
