//! `sightline-core case key|verify|export`.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Subcommand;

use super::{key::SiteKey, verify, CaseRequest, Cases};
use crate::{
    config::CoreConfig, enrich::Locations, media::MediaStore, metrics::Metrics, store::Store,
};

#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// Print the site's public signing key (SPKI PEM), making the key on
    /// first use: publish it so a case can be checked with `--key`.
    Key {
        /// The core's data directory (`storage.path`).
        #[arg(long, default_value = "data/core")]
        data_dir: PathBuf,
    },
    /// Check a case (folder or zip): the manifest's signature, every file's
    /// length and SHA-256, files missing or added. One line per finding;
    /// exit status 0 only when the case is intact.
    Verify {
        /// The case folder or zip.
        path: PathBuf,
        /// The site's published public key (SPKI PEM) to check the signature
        /// with; without it the key inside the case is used (and said so).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Export a case from the data directory of a stopped core (a running
    /// core exports over `POST /api/cases`).
    Export {
        /// Config file (TOML), for `storage.path`, `media.*` and `locations.path`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `storage.path`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The events (repeat, or separate with commas).
        #[arg(long = "det-oid", required = true, value_delimiter = ',')]
        det_oids: Vec<i64>,
        /// Why the footage is exported (required).
        #[arg(long)]
        reason: String,
        /// Who exports it (recorded in the manifest).
        #[arg(long)]
        by: String,
        /// Where: a path ending in `.zip` gets a zip, any other a new folder.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs one command; answers the process's exit status.
pub async fn run(cmd: CaseCommand) -> anyhow::Result<i32> {
    match cmd {
        CaseCommand::Key { data_dir } => {
            let key =
                tokio::task::spawn_blocking(move || SiteKey::load_or_create(&data_dir)).await??;
            print!("{}", key.public_pem());
            eprintln!(
                "fingerprint (SHA-256 of the key's DER): {}",
                key.public().fingerprint()
            );
            Ok(0)
        }
        CaseCommand::Verify { path, key } => {
            let report = tokio::task::spawn_blocking(move || verify(&path, key.as_deref())).await?;
            for f in &report.findings {
                println!("{f}");
            }
            println!("{}", report.summary());
            Ok(if report.ok() { 0 } else { 1 })
        }
        CaseCommand::Export {
            config,
            data_dir,
            det_oids,
            reason,
            by,
            out,
        } => {
            let mut cfg = match &config {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    CoreConfig::from_toml(&text).with_context(|| format!("in {}", p.display()))?
                }
                None => CoreConfig::default(),
            };
            if let Some(d) = data_dir {
                cfg.storage.path = d;
            }
            anyhow::ensure!(
                !out.exists(),
                "{} exists: a case is written to a new path",
                out.display()
            );
            let cases = open(&cfg).await?;
            let req = CaseRequest {
                det_oids,
                reason,
                exported_by: by,
                now_ms: sightline_proto::now_ms(),
                locations: None,
            };
            let summary = if out.extension().is_some_and(|e| e == "zip") {
                let (summary, staged) = cases.export_zip(&req).await?;
                if let Err(e) = staged.persist_noclobber(&out) {
                    std::fs::copy(&e.path, &out)
                        .with_context(|| format!("writing {}", out.display()))?;
                }
                summary
            } else {
                cases.export_dir(&req, &out).await?
            };
            println!(
                "{} {} events, {} files, manifest sha256 {}: {}",
                summary.case_id,
                summary.det_oids.len(),
                summary.files,
                summary.manifest_sha256,
                out.display()
            );
            Ok(0)
        }
    }
}

/// The exporter over a stopped core's store.
async fn open(cfg: &CoreConfig) -> anyhow::Result<Cases> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let path = &cfg.storage.path;
        let store = Arc::new(
            Store::open(path, cfg.storage.sync, 64 << 20).with_context(|| {
                format!(
                "opening the store at {} (is the core running? it exports over POST /api/cases)",
                path.display()
            )
            })?,
        );
        let locations = Arc::new(Locations::new(cfg.locations.path.clone())?);
        let media = Arc::new(MediaStore::open(
            &cfg.media,
            path,
            cfg.storage.sync,
            store.clone(),
            Arc::new(Metrics::new()),
        )?);
        Cases::open(path, store, media, locations)
    })
    .await?
}
