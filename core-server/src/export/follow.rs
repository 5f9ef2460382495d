//! The core's continuous export (config section `export`): every
//! `export.interval` it writes each hour of detection time that has closed,
//! and writes an hour again when events for it were committed after it was
//! written (agents deliver late: a camera offline for a day sends its day
//! when it is back). A user runs the core as a service already; the
//! exporter lives in it so there is one process to supervise, one config,
//! and its lag is on the core's `/metrics` beside the other consumers'.
//!
//! # Position
//!
//! The exporter follows the store's commit order (`by_commit`): its
//! position is a commit time, every event committed before it has its hour
//! either written since, or pending. Position and pending hours are kept in
//! the destination (`_sightline/position.json`), so they travel with the
//! data they describe and survive a restart; a core without one starts from
//! the beginning of the store (every hour it holds is written once).
//!
//! # Promises
//!
//! - An hour MUST be written only once it is closed: `export.grace` after
//!   its end. A later event for it marks it pending again; it is written
//!   again (replaced) at the first pass `export.grace` after that event's
//!   commit, with every event committed for it meanwhile.
//! - The position MUST be saved only after the hours it releases are
//!   written: a crash in between writes an hour again, never skips one.
//! - Commits are read up to [`COMMIT_SETTLE`] before now, so a partition
//!   writer whose commit stamp is older than its write is not passed over.
//! - `sightline_export_lag_seconds` is the age of the oldest commit not yet
//!   in the export (0 when everything committed before the settle time is
//!   written); it grows past an hour plus `export.grace` only when the
//!   exporter is stuck or failing (`sightline_export_failures_total`).

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{export_hour, ExportError, Hour, Source, StoreOptions, Target};
use crate::metrics::Metrics;

/// How far behind now commits are read: partition writers stamp a commit
/// before its write lands (the search indexer's catch-up allows as much).
pub const COMMIT_SETTLE: Duration = crate::search::CATCH_UP_SLACK;

/// The first retry after a failed pass; doubled up to `export.interval`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The continuous Parquet export (`[export]`); off unless `to` is set.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Where: `file:///abs/dir` or `s3://bucket/prefix`. Unset: no
    /// continuous export (`sightline-core export parquet` still works).
    #[serde(default)]
    pub to: Option<String>,
    /// Settings of the object store `to` names, by object_store's S3 key
    /// names (`endpoint`, `region`, `access_key_id`, ...), as `media.options`.
    #[serde(default)]
    pub options: StoreOptions,
    /// How long after an hour ends it is written (events detected in it are
    /// still arriving); also how long after a late event its hour is
    /// written again.
    #[serde(default = "default_grace", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub grace: Duration,
    /// How often the exporter looks for hours to write.
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub interval: Duration,
}

/// `export.grace`'s default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5 * 60);
/// `export.interval`'s default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The longest `export.grace`: an hour is written within a week.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

fn default_grace() -> Duration {
    DEFAULT_GRACE
}
fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            to: None,
            options: StoreOptions::new(),
            grace: DEFAULT_GRACE,
            interval: DEFAULT_INTERVAL,
        }
    }
}

impl ExportConfig {
    /// Checks the section; the error names the dotted key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.interval.is_zero() {
            return Err(("export.interval", "must be more than 0".into()));
        }
        if self.grace > MAX_GRACE {
            return Err(("export.grace", "must be at most 7 days".into()));
        }
        if let Some(to) = &self.to {
            let ok = !to.contains("://") || to.starts_with("file:///") || to.starts_with("s3://");
            if !ok {
                return Err((
                    "export.to",
                    format!("{to:?}: expected file:///abs/dir or s3://bucket/prefix"),
                ));
            }
        }
        Ok(())
    }
}

/// The exporter's durable position (`_sightline/position.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Every event committed before this (epoch ms) is written or pending.
    pub committed_before_ms: i64,
    /// Hours to write (start ms) → the commit time of their oldest event
    /// not yet written.
    pub pending: BTreeMap<i64, i64>,
}

const POSITION: &str = "position.json";

impl Position {
    pub async fn load(target: &Target) -> Result<Self, ExportError> {
        match target.read_meta(POSITION).await? {
            None => Ok(Self::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| {
                ExportError::invalid(
                    "export.to",
                    format!("{}/{POSITION} does not parse: {e}", super::sink::META_DIR),
                )
            }),
        }
    }

    pub async fn save(&self, target: &Target) -> Result<(), ExportError> {
        target
            .write_meta(
                POSITION,
                serde_json::to_vec_pretty(self).expect("serialisable"),
            )
            .await
    }

    /// Seconds since the oldest commit not yet written (0: none).
    pub fn lag_s(&self, now_ms: i64) -> i64 {
        self.pending
            .values()
            .min()
            .map_or(0, |&c| (now_ms - c).max(0) / 1000)
    }
}

/// One pass: reads the commits since the position (up to `now_ms` less
/// [`COMMIT_SETTLE`]), writes the hours closed by `grace`, saves the
/// position. Answers the hours written.
pub async fn pass(
    source: &Source,
    target: &Target,
    pos: &mut Position,
    grace: Duration,
    now_ms: i64,
    metrics: Option<&Metrics>,
) -> Result<u64, ExportError> {
    let upto = now_ms - COMMIT_SETTLE.as_millis() as i64;
    if upto > pos.committed_before_ms {
        let (store, from) = (source.store.clone(), pos.committed_before_ms);
        let mut pending = std::mem::take(&mut pos.pending);
        pending = tokio::task::spawn_blocking(move || {
            store
                .committed_detections(from, upto, |committed, ts| {
                    let e = pending.entry(Hour::of(ts).start_ms()).or_insert(committed);
                    *e = (*e).min(committed);
                })
                .map(|()| pending)
        })
        .await??;
        pos.pending = pending;
        pos.committed_before_ms = upto;
    }
    let grace_ms = grace.as_millis() as i64;
    // Due: the hour ended `grace` ago, and so did the commit of its oldest
    // event not yet written (late events arriving meanwhile go with it).
    let due: Vec<i64> = pos
        .pending
        .iter()
        .filter(|(&h, &c)| Hour(h).end_ms() + grace_ms <= now_ms && c + grace_ms <= now_ms)
        .map(|(&h, _)| h)
        .collect();
    let mut written = 0;
    for h in due {
        let m = export_hour(source, target, Hour(h)).await?;
        pos.pending.remove(&h);
        written += 1;
        if let (Some(m), Some(metrics)) = (m, metrics) {
            metrics.export_hours.inc();
            metrics.export_rows.inc_by(m.rows);
        }
        pos.save(target).await?;
    }
    pos.save(target).await?;
    if let Some(metrics) = metrics {
        metrics.export_lag.set(pos.lag_s(now_ms) as f64);
        metrics.export_pending.set(pos.pending.len() as i64);
    }
    Ok(written)
}

/// Runs the continuous export until `shutdown`: a pass every
/// `config.interval`; after a failure, retries from [`FIRST_RETRY`],
/// doubling up to the interval. The lag keeps growing while it fails.
pub async fn run(
    source: Source,
    target: Target,
    config: ExportConfig,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    tracing::info!(to = %target.describe(), grace = ?config.grace, "continuous Parquet export started");
    let mut pos: Option<Position> = None;
    let mut wait = Duration::ZERO;
    let mut retry = FIRST_RETRY;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = sightline_proto::now_ms();
        let r = async {
            if pos.is_none() {
                pos = Some(Position::load(&target).await?);
            }
            let p = pos.as_mut().expect("loaded");
            // The live sources change under it: Dataset B may have been reloaded.
            pass(&source, &target, p, config.grace, now, Some(&metrics)).await
        }
        .await;
        match r {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(hours = n, "Parquet export: hours written");
                }
                retry = FIRST_RETRY;
                wait = config.interval;
            }
            Err(e) => {
                metrics.export_failures.inc();
                if let Some(p) = &pos {
                    metrics.export_lag.set(p.lag_s(now) as f64);
                }
                tracing::warn!(error = %e, retry_in = ?retry, "Parquet export pass failed");
                wait = retry;
                retry = (retry * 2).min(config.interval);
            }
        }
    }
}
