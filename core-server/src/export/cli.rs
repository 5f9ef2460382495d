//! `sightline-core export parquet`: exports the hours of a range from the
//! store of a core, running or stopped. The store is opened as a RocksDB
//! secondary instance ([`crate::store::secondary`]): no lock is taken, the
//! running core is not disturbed, and the export reads one consistent view
//! of each hour.

use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{export_range, parse_instant, ExportError, Hour, Source, StoreOptions, Target};
use crate::{config::CoreConfig, enrich::Locations, store::Store};

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Write the events of whole hours as Parquet, Hive-partitioned by hour
    /// of `timestamp_detected` (UTC), each hour replacing its last copy.
    Parquet(ParquetArgs),
}

#[derive(Debug, Args)]
pub struct ParquetArgs {
    /// Config file (TOML), for `storage.path`, `locations.path`, `media.url`
    /// and `export.options`.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Overrides `storage.path` (the core's data directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `locations.path` (Dataset B, joined onto the events).
    #[arg(long)]
    pub locations: Option<PathBuf>,
    /// From (the hour holding it): `24h` (back from now), an RFC 3339 time,
    /// a date (midnight UTC) or epoch ms.
    #[arg(long)]
    pub since: String,
    /// Until (the hour holding it is included when the instant is past its
    /// start), same forms; default now.
    #[arg(long)]
    pub until: Option<String>,
    /// `file:///abs/dir` (or a path) or `s3://bucket/prefix`.
    #[arg(long)]
    pub to: String,
    /// An object-store setting, `key=value` by object_store's S3 names
    /// (repeat); added to `export.options` of the config.
    #[arg(long = "option", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// Hours written side by side.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
}

fn parse_option(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("field `--option`: {s:?} is not key=value"))
}

/// The most hours one run may write side by side.
pub const MAX_JOBS: usize = 16;

pub async fn run(cmd: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Parquet(a) = cmd;
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            CoreConfig::from_toml(&text).with_context(|| format!("in {}", p.display()))?
        }
        None => CoreConfig::default(),
    };
    if let Some(d) = a.data_dir {
        cfg.storage.path = d;
    }
    if let Some(l) = a.locations {
        cfg.locations.path = Some(l);
    }
    if a.jobs == 0 || a.jobs > MAX_JOBS {
        return Err(
            ExportError::invalid("--jobs", format!("must be within 1..={MAX_JOBS}")).into(),
        );
    }
    let now = sightline_proto::now_ms();
    let from = parse_instant("--since", &a.since, now)?;
    let to = match &a.until {
        Some(u) => parse_instant("--until", u, now)?,
        None => now,
    };
    if to <= from {
        return Err(ExportError::invalid("--until", "must be after --since").into());
    }
    let mut options: StoreOptions = cfg.export.options.clone();
    options.extend(a.options);
    let target = Target::open("--to", &a.to, &options)?;

    let scratch = tempfile::Builder::new()
        .prefix("sightline-export-secondary-")
        .tempdir()
        .context("creating the secondary instance's scratch directory")?;
    let (data, scratch_path) = (cfg.storage.path.clone(), scratch.path().to_path_buf());
    let t_open = Instant::now();
    let store = tokio::task::spawn_blocking(move || Store::open_secondary(&data, &scratch_path))
        .await?
        .with_context(|| format!("opening the store at {}", cfg.storage.path.display()))?;
    let loc_path = cfg.locations.path.clone();
    let locations = tokio::task::spawn_blocking(move || Locations::new(loc_path)).await??;
    let media_url = cfg.media.url.clone().unwrap_or_else(|| {
        cfg.media
            .local_root(&cfg.storage.path)
            .map(|p| format!("file://{}", std::path::absolute(&p).unwrap_or(p).display()))
            .unwrap_or_default()
    });
    let source = Source {
        store: Arc::new(store),
        locations: Arc::new(locations),
        media_url,
    };
    let open_s = t_open.elapsed().as_secs_f64();
    let (first, last) = (Hour::of(from), Hour::of(to - 1));
    eprintln!(
        "store opened (as a secondary) in {:.2} s; exporting {} .. {} (hours {} to {}) to {}",
        open_s,
        first.label(),
        last.label(),
        first.partition(),
        last.partition(),
        target.describe()
    );
    let t0 = Instant::now();
    let total = export_range(&source, &target, from, to, a.jobs, |m| {
        eprintln!("  {}: {} rows, {} bytes", m.file, m.rows, m.bytes);
    })
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "exported hours={} rows={} bytes={} seconds={secs:.3} events_per_s={:.0} open_s={open_s:.2} to={}",
        total.hours,
        total.rows,
        total.bytes,
        total.rows as f64 / secs.max(1e-9),
        target.describe()
    );
    Ok(())
}
