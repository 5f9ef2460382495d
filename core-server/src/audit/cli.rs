//! `sightline-core audit verify|export`: work on the files directly,
//! read-only, also while the core runs.

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::{now_ms, Action, Actor, Filter};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the chain from its anchor to its head; name the first record that
    /// does not match. Exit status 1 when it does not verify.
    Verify {
        #[command(flatten)]
        at: Location,
    },
    /// Write records (oldest first) exactly as stored, one JSON line each.
    Export {
        #[command(flatten)]
        at: Location,
        /// From: a duration ago (`24h`, `7days`), an RFC 3339 time or Unix ms.
        #[arg(long)]
        since: Option<String>,
        /// Until (exclusive), in the same forms; unset: now and later.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        /// Only this actor (`user:alice`, `token:ci`, `admin-token`, …).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (`clip_viewed`, `search`, …).
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        camera: Option<i64>,
        #[arg(long)]
        location: Option<i64>,
    },
}

/// Where the audit folder is.
#[derive(Debug, Args)]
pub struct Location {
    /// The core's data folder (`storage.path`, as `serve --data-dir`); the
    /// audit log is its `audit/` folder.
    #[arg(long, default_value = "data/core")]
    data_dir: PathBuf,
    /// The audit folder itself, when `audit.path` is set.
    #[arg(long)]
    audit_dir: Option<PathBuf>,
}

impl Location {
    fn dir(&self) -> PathBuf {
        self.audit_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit"))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON record per line, as stored (each line's hash checkable).
    Jsonl,
}

/// A time argument: `24h` (ago), RFC 3339, or Unix ms.
fn parse_time(arg: &str, flag: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = arg.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = humantime::parse_duration(arg) {
        return Ok(now_ms() - d.as_millis() as i64);
    }
    let t = humantime::parse_rfc3339_weak(arg).with_context(|| {
        format!("--{flag} {arg:?}: expected a duration ago (24h), an RFC 3339 time or Unix ms")
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

/// Runs a command; `Err` (exit status 1) when the chain does not verify.
pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { at } => {
            let dir = at.dir();
            anyhow::ensure!(dir.is_dir(), "{}: no audit folder", dir.display());
            let report =
                super::verify(&dir).with_context(|| format!("reading {}", dir.display()))?;
            println!("{report}");
            anyhow::ensure!(report.problem.is_none(), "the audit log does not verify");
            Ok(())
        }
        AuditCommand::Export {
            at,
            since,
            until,
            format: Format::Jsonl,
            actor,
            action,
            camera,
            location,
        } => {
            let dir = at.dir();
            anyhow::ensure!(dir.is_dir(), "{}: no audit folder", dir.display());
            let filter = Filter {
                actor: actor
                    .map(|a| a.parse::<Actor>())
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--actor {e}"))?,
                action: action
                    .map(|a| a.parse::<Action>())
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--action {e}"))?,
                camera,
                location,
                since: since.map(|s| parse_time(&s, "since")).transpose()?,
                until: until.map(|s| parse_time(&s, "until")).transpose()?,
            };
            let stdout = std::io::stdout().lock();
            let mut out = std::io::BufWriter::new(stdout);
            let n = super::export(&dir, &filter, &mut out).map_err(|e| anyhow::anyhow!(e))?;
            out.flush()?;
            eprintln!("audit export: {n} records");
            Ok(())
        }
    }
}
