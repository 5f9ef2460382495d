//! Batch export to Parquet: joined, deduplicated events, one file per hour
//! of `timestamp_detected` (UTC), in a Hive-partitioned tree that Spark,
//! DuckDB, Trino and pandas read as one table.
//!
//! Layout:
//! - [`parquet`]: the file's schema (its table is there) and the writer.
//! - [`sink`]: where files go — a directory (`file:///…`) or an object store
//!   (`s3://bucket/prefix`) — and how each hour replaces the last copy.
//! - [`follow`]: the core's continuous exporter (config section `export`),
//!   writing each closed hour, again when late events arrive for it.
//! - [`cli`]: `sightline-core export parquet --since … --until … --to …`,
//!   reading the store of a running (or stopped) core as a RocksDB secondary.
//!
//! # Tree
//!
//! ```text
//! <to>/date=YYYY-MM-DD/hour=HH/part-00000.parquet   the hour's events
//! <to>/_sightline/hours/YYYY-MM-DDTHH.json           the hour's manifest
//! <to>/_sightline/position.json                      the continuous exporter's position
//! ```
//!
//! Readers that list `*.parquet` (DuckDB's `**/*.parquet`, Spark, which also
//! skips `_`- and `.`-prefixed names) never see the manifests or a file
//! being written.
//!
//! # Promises
//!
//! - Each event MUST appear once in the tree: the store holds each det_oid
//!   once, an hour is one file, and an hour written again replaces its file
//!   whole — a re-run or a crash in the middle never doubles or truncates.
//!   In a directory the file is written under a dot-name beside its place,
//!   fsync'd, then renamed over the old one (and the directory fsync'd); in
//!   an object store the object is put whole (single or multipart put),
//!   which replaces the old one atomically.
//! - An hour's manifest MUST be written only after its file is in place; it
//!   names the file, its rows and bytes. A reader that wants only finished
//!   hours reads the manifests.
//! - An hour MUST be exported whole, from one consistent view of the store,
//!   whatever part of it the requested range covers.
//! - An hour the store holds no events of is skipped: nothing written, and
//!   what an earlier export wrote for it stays (retention must not empty
//!   the archive).
//! - Events are joined with the Dataset B loaded when the hour is written.

pub mod cli;
pub mod follow;
pub mod parquet;
pub mod sink;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{enrich::Locations, store::Store};

pub use self::parquet::{ExportSchema, HourWriter, ROW_GROUP_ROWS};
pub use follow::ExportConfig;
pub use sink::Target;

/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;

/// Events read from the store at a time (their footage looked up together).
pub const READ_BATCH: usize = 4096;

/// What can go wrong in an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ExportError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ExportError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl From<&ExportError> for sightline_proto::ApiError {
    fn from(e: &ExportError) -> Self {
        use sightline_proto::Code;
        let code = match e {
            ExportError::Invalid { .. } => Code::InvalidArgument,
            ExportError::Store(s) => s.code(),
            _ => Code::Unavailable,
        };
        sightline_proto::ApiError::new(code, e.to_string())
    }
}

/// One hour of detection time, UTC: `[start_ms, start_ms + HOUR_MS)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hour(pub i64);

impl Hour {
    /// The hour holding `ts_ms`.
    pub fn of(ts_ms: i64) -> Self {
        Hour(ts_ms.div_euclid(HOUR_MS) * HOUR_MS)
    }

    pub fn start_ms(self) -> i64 {
        self.0
    }

    pub fn end_ms(self) -> i64 {
        self.0.saturating_add(HOUR_MS)
    }

    /// `(YYYY-MM-DD, HH)` in UTC.
    fn date_hour(self) -> (String, String) {
        let t = time::OffsetDateTime::from_unix_timestamp(self.0.div_euclid(1000))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        (
            format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
            format!("{:02}", t.hour()),
        )
    }

    /// The Hive partition: `date=YYYY-MM-DD/hour=HH`.
    pub fn partition(self) -> String {
        let (d, h) = self.date_hour();
        format!("date={d}/hour={h}")
    }

    /// `YYYY-MM-DDTHH`, the manifest's name.
    pub fn label(self) -> String {
        let (d, h) = self.date_hour();
        format!("{d}T{h}")
    }

    /// The hours overlapping `[from_ms, to_ms)`, oldest first.
    pub fn range(from_ms: i64, to_ms: i64) -> impl Iterator<Item = Hour> {
        let first = Hour::of(from_ms).0;
        let end = to_ms;
        (0..)
            .map(move |i: i64| Hour(first + i * HOUR_MS))
            .take_while(move |h| h.0 < end)
    }
}

/// The name of an hour's one file inside its partition.
pub const PART_FILE: &str = "part-00000.parquet";

/// What one written hour holds: its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourManifest {
    /// The hour's start, RFC 3339 (UTC).
    pub hour: String,
    /// The file, relative to the export's root.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// When it was written (epoch ms).
    pub exported_ms: i64,
    /// The columns, in file order.
    pub columns: Vec<String>,
}

/// What the export reads: the store, Dataset B (as loaded when an hour is
/// written), and the media store's URL
/// (in each file's key-value metadata, `sightline.media_url`, so a reader
/// can turn a `*_key` into the footage's location).
#[derive(Clone)]
pub struct Source {
    pub store: Arc<Store>,
    pub locations: Arc<Locations>,
    pub media_url: String,
}

/// The totals of an export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub hours: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// Writes one hour to `target` (replacing what it held for the hour), or
/// nothing when the store holds no events of it. Answers its manifest.
pub async fn export_hour(
    source: &Source,
    target: &Target,
    hour: Hour,
) -> Result<Option<HourManifest>, ExportError> {
    let staged = target.staging_file(hour);
    let (src, path) = (source.clone(), staged.clone());
    let written = tokio::task::spawn_blocking(move || {
        let r = write_hour_file(&src, hour, &path);
        if r.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        r
    })
    .await??;
    let Some((rows, bytes, columns)) = written else {
        return Ok(None);
    };
    let manifest = HourManifest {
        hour: humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(hour.start_ms().max(0) as u64),
        )
        .to_string(),
        file: format!("{}/{PART_FILE}", hour.partition()),
        rows,
        bytes,
        exported_ms: sightline_proto::now_ms(),
        columns,
    };
    target.publish(hour, &staged, &manifest).await?;
    Ok(Some(manifest))
}

/// Writes the hour's events into a new file at `path` (created only when
/// there is one): (rows, bytes, columns), or `None` for an empty hour.
fn write_hour_file(
    source: &Source,
    hour: Hour,
    path: &std::path::Path,
) -> Result<Option<(u64, u64, Vec<String>)>, ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let table = source.locations.current();
    let schema = ExportSchema::new(&table);
    let meta = vec![
        ("sightline.media_url".to_string(), source.media_url.clone()),
        ("sightline.hour".to_string(), hour.label()),
    ];
    let mut writer: Option<HourWriter<'_, std::io::BufWriter<std::fs::File>>> = None;
    let mut failed: Option<ExportError> = None;
    source
        .store
        .scan_detections(hour.start_ms(), hour.end_ms(), READ_BATCH, |events| {
            let w = match writer.as_mut() {
                Some(w) => w,
                None => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| stop(&mut failed, io(e)))?;
                    }
                    let f = std::fs::File::create(path).map_err(|e| stop(&mut failed, io(e)))?;
                    let w = HourWriter::new(
                        std::io::BufWriter::with_capacity(1 << 20, f),
                        &schema,
                        &table,
                        meta.clone(),
                    )
                    .map_err(|e| stop(&mut failed, e.into()))?;
                    writer.insert(w)
                }
            };
            for ev in events {
                w.push(ev).map_err(|e| stop(&mut failed, e.into()))?;
            }
            Ok(())
        })
        .map_err(|e| failed.take().unwrap_or(e.into()))?;
    let Some(w) = writer else {
        return Ok(None);
    };
    let (rows, out) = w.finish()?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    Ok(Some((rows, bytes, schema.column_names())))
}

/// Keeps `e` for the caller and stops the store's scan.
fn stop(slot: &mut Option<ExportError>, e: ExportError) -> crate::store::StoreError {
    let msg = e.to_string();
    *slot = Some(e);
    crate::store::StoreError::Unavailable(msg)
}

/// Exports every hour overlapping `[from_ms, to_ms)`, `jobs` hours at a
/// time; calls `done` with each hour written.
pub async fn export_range(
    source: &Source,
    target: &Target,
    from_ms: i64,
    to_ms: i64,
    jobs: usize,
    mut done: impl FnMut(&HourManifest),
) -> Result<Written, ExportError> {
    use futures::StreamExt as _;
    let mut total = Written::default();
    let mut hours = futures::stream::iter(Hour::range(from_ms, to_ms))
        .map(|h| export_hour(source, target, h))
        .buffered(jobs.max(1));
    while let Some(r) = hours.next().await {
        if let Some(m) = r? {
            total.hours += 1;
            total.rows += m.rows;
            total.bytes += m.bytes;
            done(&m);
        }
    }
    Ok(total)
}

/// An instant on the command line: a duration back from `now_ms` (`24h`,
/// `90m`), an RFC 3339 time (`2026-11-30T13:00:00Z`), a date (`2026-11-30`,
/// midnight UTC) or epoch milliseconds.
pub fn parse_instant(field: &'static str, s: &str, now_ms: i64) -> Result<i64, ExportError> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64));
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    match humantime::parse_rfc3339_weak(&full) {
        Ok(t) => Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)),
        Err(_) => Err(ExportError::invalid(
            field,
            format!(
                "{s:?} is not a duration back from now (24h), an RFC 3339 time, a date or epoch ms"
            ),
        )),
    }
}

/// S3 (or other object store) settings by object_store's key names.
pub type StoreOptions = BTreeMap<String, String>;

#[cfg(test)]
mod tests;
