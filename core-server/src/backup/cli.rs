//! `sightline-core backup` (asks the running core) and `sightline-core
//! restore` (offline, into an empty data directory).

use std::path::PathBuf;

use anyhow::Context as _;
use sightline_proto::v1::{admin_client::AdminClient, BackupRequest};

/// `sightline-core backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Where to: a folder on the core's host (a relative one is taken from
    /// here) or s3://bucket/prefix (the core's `AWS_*` environment gives the
    /// endpoint, region and credentials).
    #[arg(long)]
    pub to: String,
    /// The core's gRPC address.
    #[arg(long, env = "SIGHTLINE_CORE", default_value = "http://127.0.0.1:50051")]
    pub core: String,
    /// The core's admin token file (`server.admin_token_file`); or set
    /// `SIGHTLINE_TOKEN` to an admin API token.
    #[arg(
        long,
        env = "SIGHTLINE_ADMIN_TOKEN_FILE",
        default_value = "data/core/admin.token"
    )]
    pub admin_token_file: PathBuf,
}

/// `sightline-core restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup destination: a folder or s3://bucket/prefix (`AWS_*`
    /// environment).
    #[arg(long)]
    pub from: String,
    /// The new data directory (`storage.path`): missing or empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Which backup (its id); default: the newest (`LATEST`).
    #[arg(long)]
    pub backup: Option<String>,
    /// The search index folder the restored core will use (`search.path`);
    /// default `<data dir>-search`. Must be missing or empty: the restored
    /// core rebuilds the index there from the store.
    #[arg(long)]
    pub search_dir: Option<PathBuf>,
}

fn absolute(to: &str) -> anyhow::Result<String> {
    if to.starts_with("s3://") || to.starts_with("file://") || to.starts_with('/') {
        return Ok(to.to_string());
    }
    Ok(std::env::current_dir()
        .context("the current folder")?
        .join(to)
        .display()
        .to_string())
}

/// Asks the core to back itself up; prints what it did.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let to = absolute(&args.to)?;
    let channel = crate::client::channel(&args.core).await?;
    let auth =
        crate::client::WithCredential(crate::client::credential(Some(&args.admin_token_file))?);
    let r = AdminClient::with_interceptor(channel, auth)
        .backup(BackupRequest { to: to.clone() })
        .await
        .map_err(|s| anyhow::anyhow!("backup refused: {}", s.message()))?
        .into_inner();
    println!(
        "backup {} to {to}: {} files, {} bytes; uploaded {} files, {} bytes; {} ms",
        r.id, r.files, r.bytes, r.uploaded_files, r.uploaded_bytes, r.duration_ms
    );
    Ok(())
}

/// Restores into an empty data directory; prints what to start.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let from = absolute(&args.from)?;
    let search = args
        .search_dir
        .clone()
        .unwrap_or_else(|| crate::search::default_path(&args.data_dir));
    let r = super::restore(&from, args.backup.as_deref(), &args.data_dir, &search).await?;
    let m = &r.manifest;
    println!(
        "restored backup {} ({} files, {} bytes, taken at {}) into {}",
        m.id,
        m.files.len(),
        m.bytes(),
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.created_ms.max(0) as u64)
        ),
        r.data_dir.display()
    );
    for w in &m.watermarks {
        println!(
            "  agent {} epoch {:016x}: resumes after seq {}",
            w.agent, w.epoch, w.seq
        );
    }
    println!(
        "  the search index is rebuilt from the store at the first start ({})",
        search.display()
    );
    if let Some(b) = &r.dataset_b {
        println!(
            "  Dataset B restored at {}: start with --locations {}",
            b.display(),
            b.display()
        );
    }
    Ok(())
}
