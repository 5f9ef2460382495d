//! Replay of Dataset A from a file: CSV (with a header row), JSON Lines, or
//! Parquet, at a given rate or as fast as the buffer takes it.
//!
//! Columns are Dataset A's names. `detection_oid` may be empty (the agent
//! stamps one); `confidence`, `box_x`, `box_y`, `box_width`, `box_height` are
//! read when present; any other column becomes an attribute. A row that does
//! not parse or validate is reported with its line (row, for Parquet), the
//! field and the reason, and the replay goes on. The position reached is
//! stored with the events, so a restarted replay goes on after the last row
//! that reached the buffer.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    time::Duration,
};

use sightline_proto::{
    v1::{BoundingBox, Detection},
    FieldError,
};
use tokio::sync::mpsc;

use super::Publisher;
use crate::buffer::SourcePosition;

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
    pub rows: u64,
    pub accepted: u64,
    pub invalid: u64,
    /// Rows skipped because an earlier run already stored them.
    pub skipped: u64,
}

/// A value read from a cell, before it is checked against its field.
#[derive(Debug, Clone)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
}

impl Cell {
    fn as_text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Str(s) => s.clone(),
        }
    }
}

type Row = Vec<(String, Cell)>;

/// A row as read, with where it was.
struct Read {
    line: u64,
    row: Result<Row, String>,
}

fn int_field(
    field: &'static str,
    cell: Option<&Cell>,
    required: bool,
) -> Result<Option<i64>, FieldError> {
    match cell {
        None | Some(Cell::Null) => {
            if required {
                Err(FieldError::new(field, "missing"))
            } else {
                Ok(None)
            }
        }
        Some(Cell::Str(s)) if s.trim().is_empty() => {
            if required {
                Err(FieldError::new(field, "missing (empty)"))
            } else {
                Ok(None)
            }
        }
        Some(Cell::Int(i)) => Ok(Some(*i)),
        Some(Cell::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(*f as i64)),
        Some(other) => other
            .as_text()
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| FieldError::new(field, format!("not an integer: {:?}", other.as_text()))),
    }
}

fn float_field(field: &'static str, cell: Option<&Cell>) -> Result<Option<f32>, FieldError> {
    match cell {
        None | Some(Cell::Null) => Ok(None),
        Some(Cell::Str(s)) if s.trim().is_empty() => Ok(None),
        Some(Cell::Int(i)) => Ok(Some(*i as f32)),
        Some(Cell::Float(f)) => Ok(Some(*f as f32)),
        Some(Cell::Str(s)) => s
            .trim()
            .parse::<f32>()
            .map(Some)
            .map_err(|_| FieldError::new(field, format!("not a number: {s:?}"))),
    }
}

const KNOWN: &[&str] = &[
    "geographical_location_oid",
    "video_camera_oid",
    "detection_oid",
    "item_name",
    "timestamp_detected",
    "confidence",
    "box_x",
    "box_y",
    "box_width",
    "box_height",
];

/// Turns a row into a detection (validation proper happens in the publisher).
fn detection_from_row(row: Row) -> Result<Detection, FieldError> {
    let cells: HashMap<&str, &Cell> = row.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let get = |k: &str| cells.get(k).copied();
    let mut d = Detection {
        geographical_location_oid: int_field(
            "geographical_location_oid",
            get("geographical_location_oid"),
            true,
        )?
        .unwrap_or_default(),
        video_camera_oid: int_field("video_camera_oid", get("video_camera_oid"), true)?
            .unwrap_or_default(),
        detection_oid: int_field("detection_oid", get("detection_oid"), false)?,
        item_name: match get("item_name") {
            None | Some(Cell::Null) => return Err(FieldError::new("item_name", "missing")),
            Some(c) => c.as_text(),
        },
        timestamp_detected: int_field("timestamp_detected", get("timestamp_detected"), true)?
            .unwrap_or_default(),
        confidence: float_field("confidence", get("confidence"))?.unwrap_or(0.0),
        ..Default::default()
    };
    let b = [
        float_field("box_x", get("box_x"))?,
        float_field("box_y", get("box_y"))?,
        float_field("box_width", get("box_width"))?,
        float_field("box_height", get("box_height"))?,
    ];
    if b.iter().any(Option::is_some) {
        d.r#box = Some(BoundingBox {
            x: b[0].unwrap_or(0.0),
            y: b[1].unwrap_or(0.0),
            width: b[2].unwrap_or(0.0),
            height: b[3].unwrap_or(0.0),
        });
    }
    for (k, v) in row {
        if !KNOWN.contains(&k.as_str()) && !matches!(v, Cell::Null) {
            d.attributes.insert(k, v.as_text());
        }
    }
    Ok(d)
}

/// Reads the file on a blocking thread, sending rows in chunks.
fn read_file(
    path: &Path,
    format: Format,
    skip_through: u64,
    chunk_rows: usize,
    tx: mpsc::Sender<Vec<Read>>,
) -> anyhow::Result<()> {
    let mut chunk = Vec::with_capacity(chunk_rows);
    let push = |r: Read, chunk: &mut Vec<Read>| -> bool {
        if r.line <= skip_through {
            return true;
        }
        chunk.push(r);
        if chunk.len() >= chunk_rows {
            return tx.blocking_send(std::mem::take(chunk)).is_ok();
        }
        true
    };
    match format {
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new().flexible(true).from_path(path)?;
            let headers: Vec<String> = rdr
                .headers()?
                .iter()
                .map(|h| h.trim().to_string())
                .collect();
            let mut record = csv::StringRecord::new();
            loop {
                let line = rdr.position().line() + 1;
                match rdr.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = record.position().map(|p| p.line()).unwrap_or(line);
                        let row = if record.len() != headers.len() {
                            Err(format!(
                                "has {} fields, the header has {}",
                                record.len(),
                                headers.len()
                            ))
                        } else {
                            Ok(headers
                                .iter()
                                .zip(record.iter())
                                .map(|(h, v)| (h.clone(), Cell::Str(v.to_string())))
                                .collect())
                        };
                        if !push(Read { line, row }, &mut chunk) {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        let line = e.position().map(|p| p.line()).unwrap_or(line);
                        if !push(
                            Read {
                                line,
                                row: Err(format!("unreadable CSV: {e}")),
                            },
                            &mut chunk,
                        ) {
                            return Ok(());
                        }
                        if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                            break;
                        }
                    }
                }
            }
        }
        Format::Jsonl => {
            let reader = BufReader::new(File::open(path)?);
            for (i, text) in reader.lines().enumerate() {
                let line = i as u64 + 1;
                let text = text?;
                if text.trim().is_empty() {
                    continue;
                }
                let row = match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(map)) => Ok(map
                        .into_iter()
                        .map(|(k, v)| {
                            let cell = match v {
                                serde_json::Value::Null => Cell::Null,
                                serde_json::Value::Number(n) => match n.as_i64() {
                                    Some(i) => Cell::Int(i),
                                    None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
                                },
                                serde_json::Value::String(s) => Cell::Str(s),
                                other => Cell::Str(other.to_string()),
                            };
                            (k, cell)
                        })
                        .collect()),
                    Ok(other) => Err(format!(
                        "expected a JSON object, got {}",
                        short(&other.to_string())
                    )),
                    Err(e) => Err(format!("invalid JSON: {e}")),
                };
                if !push(Read { line, row }, &mut chunk) {
                    return Ok(());
                }
            }
        }
        Format::Parquet => {
            use parquet::{
                file::reader::{FileReader, SerializedFileReader},
                record::Field,
            };
            let reader = SerializedFileReader::new(File::open(path)?)?;
            for (i, row) in reader.get_row_iter(None)?.enumerate() {
                let line = i as u64 + 1;
                let row = row.map_err(|e| format!("unreadable row: {e}")).map(|row| {
                    row.get_column_iter()
                        .map(|(name, f)| {
                            let cell = match f {
                                Field::Null => Cell::Null,
                                Field::Byte(v) => Cell::Int(*v as i64),
                                Field::Short(v) => Cell::Int(*v as i64),
                                Field::Int(v) => Cell::Int(*v as i64),
                                Field::Long(v) => Cell::Int(*v),
                                Field::UByte(v) => Cell::Int(*v as i64),
                                Field::UShort(v) => Cell::Int(*v as i64),
                                Field::UInt(v) => Cell::Int(*v as i64),
                                Field::ULong(v) => Cell::Int(*v as i64),
                                Field::Float(v) => Cell::Float(*v as f64),
                                Field::Double(v) => Cell::Float(*v),
                                Field::Str(s) => Cell::Str(s.clone()),
                                Field::TimestampMillis(v) => Cell::Int(*v),
                                Field::TimestampMicros(v) => Cell::Int(*v / 1000),
                                other => Cell::Str(other.to_string()),
                            };
                            (name.clone(), cell)
                        })
                        .collect()
                });
                if !push(Read { line, row }, &mut chunk) {
                    return Ok(());
                }
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
    Ok(())
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Replays the file into the publisher. Returns when every row has been read
/// and every valid one is durable in the buffer.
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

    let mut summary = ReplaySummary {
        skipped: stored,
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    while let Some(chunk) = rx.recv().await {
        let last_line = chunk.last().map(|r| r.line).unwrap_or(stored);
        let mut detections = Vec::with_capacity(chunk.len());
        let mut lines = Vec::with_capacity(chunk.len());
        for r in chunk {
            summary.rows += 1;
            match r.row {
                Err(reason) => {
                    summary.invalid += 1;
                    report(&bar, r.line, &reason);
                }
                Ok(row) => match detection_from_row(row) {
                    Ok(d) => {
                        detections.push(d);
                        lines.push(r.line);
                    }
                    Err(e) => {
                        summary.invalid += 1;
                        report(&bar, r.line, &e.to_string());
                    }
                },
            }
        }
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(summary.rows as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        let results = publisher
            .publish_waiting(
                detections,
                Some(SourcePosition {
                    name: source_name.clone(),
                    position: last_line,
                }),
            )
            .await?;
        for (r, line) in results.iter().zip(lines) {
            match r {
                Ok(_) => summary.accepted += 1,
                Err(e) => {
                    summary.invalid += 1;
                    report(&bar, line, &e.to_string());
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
    reader.await??;
    Ok(summary)
}

fn report(bar: &indicatif::ProgressBar, line: u64, reason: &str) {
    bar.suspend(|| eprintln!("replay: line {line}: {reason}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Cell::Str(v.to_string())))
            .collect()
    }

    #[test]
    fn a_full_row_becomes_a_detection_with_extra_columns_as_attributes() {
        let d = detection_from_row(row(&[
            ("geographical_location_oid", "3"),
            ("video_camera_oid", "30"),
            ("detection_oid", ""),
            ("item_name", "car"),
            ("timestamp_detected", "1700000000000"),
            ("box_x", "1.5"),
            ("lane", "left"),
        ]))
        .unwrap();
        assert_eq!(d.geographical_location_oid, 3);
        assert_eq!(d.detection_oid, None);
        assert_eq!(d.r#box.unwrap().x, 1.5);
        assert_eq!(d.attributes["lane"], "left");
    }

    #[test]
    fn bad_cells_name_their_field() {
        let err = detection_from_row(row(&[
            ("geographical_location_oid", "3"),
            ("video_camera_oid", "thirty"),
            ("item_name", "car"),
            ("timestamp_detected", "1"),
        ]))
        .unwrap_err();
        assert_eq!(err.field, "video_camera_oid");
        assert!(err.reason.contains("thirty"));
        let err = detection_from_row(row(&[
            ("geographical_location_oid", "3"),
            ("video_camera_oid", "1"),
        ]))
        .unwrap_err();
        assert_eq!(err.field, "item_name");
    }
}
