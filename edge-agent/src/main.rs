//! `sightline-agent`: parses the command line, sets up logging, loads the
//! config and calls [`sightline_agent::run::run`].

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use sightline_agent::{
    config::AgentConfig,
    run::{run, Source},
    sources::{
        replay::{Format, ReplayOptions},
        simulate::SimulateOptions,
    },
};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "sightline-agent", version, about = "Sightline edge agent")]
struct Cli {
    /// Agent config file (TOML); see deploy/agent.example.toml and
    /// docs/CONFIG.md. SIGHTLINE_AGENT__<SECTION>__<KEY> variables override its keys.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `agent_id`.
    #[arg(long)]
    agent_id: Option<String>,
    /// Overrides `core_url`; several URLs, comma-separated, set `core_urls`
    /// (the agent fails over between them).
    #[arg(long)]
    core: Option<String>,
    /// Sets `tls.dir`: ca.pem, agent-<id>.pem, agent-<id>.key.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Sets `sender.quic_fallback = false`: with quic://, never fall back to gRPC.
    #[arg(long)]
    no_quic_fallback: bool,
    /// Overrides `buffer.path`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `intake.listen` (port 0 picks a free port; the address is printed).
    #[arg(long)]
    intake: Option<SocketAddr>,
    /// Overrides `metrics.listen` (`off` for none; port 0 picks a free port;
    /// the address is printed).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Overrides `buffer.max_events`.
    #[arg(long)]
    max_events: Option<u64>,
    /// Sets `buffer.sync = false`.
    #[arg(long)]
    no_sync: bool,
    /// Exit once the source is done and the core acknowledged everything.
    #[arg(long)]
    exit_when_drained: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Only the intake endpoint feeds the buffer (the default).
    Run,
    /// Synthetic cameras on this host.
    Simulate {
        #[arg(long, default_value_t = 4)]
        cameras: u32,
        #[arg(long, default_value_t = 1)]
        camera_base: i64,
        /// Comma-separated location oids the cameras stand at.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        locations: Vec<i64>,
        /// Events per second, all cameras together.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Share of upstream duplicates (0..1).
        #[arg(long, default_value_t = 0.05)]
        duplicates: f64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Let the agent stamp det_oids.
        #[arg(long)]
        omit_det_oid: bool,
        /// Seed of the generator (det_oids, items, boxes). Default: derived
        /// from the agent id, so two agents never publish the same det_oids.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Print the reference of every config key (docs/CONFIG.md's agent section).
    ConfigReference,
    /// Replay Dataset A from a CSV, JSON Lines or Parquet file.
    Replay {
        file: PathBuf,
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Events per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Ignore where an earlier replay of this file got to.
        #[arg(long)]
        from_start: bool,
    },
}

/// glibc's malloc settings the agent runs with unless its environment names
/// them (the agent's heap is RocksDB's memtables, blocks and file buffers
/// and its own encoded events): one arena rather than one per thread, each
/// holding its own freed memory, and blocks of 128 KiB and more mapped on
/// their own, so that a burst's buffers go back to the system once freed
/// rather than stay in an arena, fragmented. A burst's peak RSS went from
/// ~38 to ~31 MiB (BENCHMARKS.md, forty-second session). Set by the agent
/// executing itself again ([`sightline_proto::allocator_env::run_with`]).
const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
];

fn main() -> anyhow::Result<()> {
    sightline_proto::allocator_env::run_with("sightline-agent", &ALLOCATOR_ENV);
    agent_main()
}

#[tokio::main]
async fn agent_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr on a full disk) is lost,
        // not reported with eprintln!, which panics when stderr fails.
        .log_internal_errors(false)
        .init();
    let cli = Cli::parse();
    if let Some(Command::ConfigReference) = cli.command {
        let text = AgentConfig::reference().map_err(|keys| {
            anyhow::anyhow!("config keys without a doc comment: {}", keys.join(", "))
        })?;
        print!("{text}");
        return Ok(());
    }
    // The file, then SIGHTLINE_AGENT__* variables, then the flags below.
    let mut config = AgentConfig::load(
        cli.config.as_deref(),
        cli.agent_id.as_deref().unwrap_or("agent-1"),
        std::env::vars_os(),
    )?;
    if let Some(id) = cli.agent_id {
        config.agent_id = id;
    }
    if let Some(core) = cli.core {
        if core.contains(',') {
            config.core_url = AgentConfig::with_id("-").core_url;
            config.core_urls = core.split(',').map(|u| u.trim().to_string()).collect();
        } else {
            config.core_url = core;
            config.core_urls.clear();
        }
    }
    if let Some(dir) = cli.tls_dir {
        config.tls.dir = Some(dir);
    }
    if cli.no_quic_fallback {
        config.sender.quic_fallback = false;
    }
    if let Some(dir) = cli.data_dir {
        config.buffer.path = dir;
    }
    if let Some(addr) = cli.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    if let Some(addr) = cli.intake {
        config.intake.listen = Some(addr);
    }
    if let Some(n) = cli.max_events {
        config.buffer.max_events = n;
    }
    if cli.no_sync {
        config.buffer.sync = false;
    }
    let source = match cli.command.unwrap_or(Command::Run) {
        Command::Run | Command::ConfigReference => Source::None,
        Command::Simulate {
            cameras,
            camera_base,
            locations,
            rate,
            duplicates,
            count,
            omit_det_oid,
            seed,
        } => Source::Simulate(SimulateOptions {
            cameras,
            camera_base,
            locations,
            rate,
            duplicates,
            count,
            omit_det_oid,
            seed: seed.unwrap_or_else(|| {
                use sha2::{Digest, Sha256};
                let h = Sha256::digest(config.agent_id.as_bytes());
                u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
            }),
        }),
        Command::Replay {
            file,
            format,
            rate,
            from_start,
        } => Source::Replay(ReplayOptions {
            path: file,
            format,
            rate,
            from_start,
        }),
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down");
        signal.cancel();
    });
    run(config, source, cli.exit_when_drained, shutdown).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
