//! `sightline-core`: parses the command line, sets up logging, loads the
//! config and calls [`sightline_core::server::run`] — or runs a client command.

/// mimalloc instead of glibc's malloc: allocation and free were ~12 % of the
/// core's CPU draining a backlog (BENCHMARKS.md, "The commit path").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sightline_core::{client::ClientCommand, config::CoreConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sightline-core",
    version,
    about = "Sightline core server and terminal client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the core.
    Serve {
        /// Config file (TOML); see deploy/core.example.toml and docs/CONFIG.md.
        /// SIGHTLINE_CORE__<SECTION>__<KEY> variables override its keys.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `server.grpc_listen`.
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
        /// Overrides `server.http_listen`.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Overrides `storage.path`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Overrides `locations.path` (Dataset B).
        #[arg(long)]
        locations: Option<PathBuf>,
        /// Sets `storage.sync = false`.
        #[arg(long)]
        no_sync: bool,
        /// Overrides `pipeline.partitions`.
        #[arg(long)]
        partitions: Option<usize>,
        /// Overrides `edge.listen` (TCP and UDP, one port).
        #[arg(long)]
        edge_listen: Option<SocketAddr>,
        /// Overrides `edge.tls_dir` (ca.pem, core.pem, core.key).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Overrides `server.tls_cert`: the HTTP (dashboard) and query gRPC
        /// ports serve TLS with this certificate (PEM).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Overrides `server.tls_key` (PEM), the key of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Sets `server.insecure_plaintext`: HTTP and query gRPC without TLS
        /// even on an address that is not loopback (said in the log and the
        /// dashboard's footer).
        #[arg(long)]
        insecure_plaintext: bool,
        /// Overrides `cluster.nats` (comma-separated NATS URLs): runs as a
        /// node of a cluster on NATS JetStream (issue 15).
        #[arg(long, value_delimiter = ',')]
        cluster: Vec<String>,
        /// Sets `edge.plaintext`: agents may also connect without
        /// certificates on the gRPC port, identified only by what they
        /// claim. Loopback only; local demos.
        #[arg(long)]
        edge_plaintext: bool,
        /// Overrides `edge.registry` (the agent registry, TOML; default
        /// `<data dir>/agents.toml`).
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Sets `edge.registry_enforced = false`: every agent may publish for
        /// every camera, without a grant. Demos only; logged loudly.
        #[arg(long, conflicts_with = "registry")]
        no_registry: bool,
    },
    /// The edge link's certificate authority: create it, issue certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Evidence export: the site's signing key, checking a case, exporting one offline.
    Case {
        #[command(subcommand)]
        command: sightline_core::cases::cli::CaseCommand,
    },
    /// The audit log: verify its chain, export its records (read-only).
    Audit {
        #[command(subcommand)]
        command: sightline_core::audit::cli::AuditCommand,
    },
    /// Back the running core up to a folder or s3://bucket/prefix
    /// (incremental after the first; an admin call).
    Backup(sightline_core::backup::cli::BackupArgs),
    /// Restore a backup into an empty data directory (no core running on it).
    Restore(sightline_core::backup::cli::RestoreArgs),
    /// Print the reference of every config key (docs/CONFIG.md's core section).
    ConfigReference,
    /// Batch export: the store's events as Parquet (works while the core runs).
    Export {
        #[command(subcommand)]
        command: sightline_core::export::cli::ExportCommand,
    },
    /// Cluster mode: `cluster status` (nodes, partitions, owners, lag,
    /// checkpoint age).
    Cluster {
        #[command(subcommand)]
        command: sightline_core::client::cluster::ClusterCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the CA (`ca.pem`, `ca.key`) in a folder; never overwrites one.
    Init {
        #[arg(long, default_value = "data/pki")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue an agent's certificate: its agent id is the subject's common name.
    Agent {
        #[arg(long, default_value = "data/pki")]
        dir: PathBuf,
        #[arg(long)]
        agent_id: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue the core's certificate for its DNS names and IP addresses.
    Core {
        #[arg(long, default_value = "data/pki")]
        dir: PathBuf,
        /// A DNS name or IP address agents connect to (repeat for more).
        #[arg(long, required = true)]
        san: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// The allocators' settings the core runs with unless its environment names
/// them: mimalloc (the Rust heap) purges a freed page at once rather than
/// after its default second, which threads that then go idle (the blocking
/// pool, the search indexer) never reach; glibc (RocksDB's memtables, blocks
/// and buffers) keeps one arena rather than one per thread, each holding its
/// own freed memory. A burst's peak RSS went from ~370 to ~260–275 MiB for
/// no measured CPU (BENCHMARKS.md, thirtieth session). glibc also maps
/// blocks of 1 MiB and more on their own and gives them back when freed
/// (RocksDB's memtable arena blocks are 2 MiB), where by default it raises
/// that threshold to the largest block freed and then keeps such blocks in
/// its heap: the peak went from 249–260 to 238–243 MiB, for 0.4 µs more
/// CPU per event, within the noise (forty-sixth session, A/B'd over a core
/// with the det buffer's tables allocated once; at 128 KiB, 236–237 MiB for
/// 1.2 µs more). Set by the core executing itself again
/// ([`sightline_proto::allocator_env::run_with`]).
const ALLOCATOR_ENV: [(&str, &str); 3] = [
    ("MIMALLOC_PURGE_DELAY", "0"),
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "1048576"),
];

fn main() -> anyhow::Result<()> {
    sightline_proto::allocator_env::run_with("sightline-core", &ALLOCATOR_ENV);
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    // No transparent huge pages for this process: mimalloc's arenas were
    // backed by them, so a page freed and taken again (the search index
    // writers' arenas at each commit, one writer per partition in a
    // cluster) cost the kernel zeroing 2 MiB. That zeroing was 10 % of the
    // whole machine's CPU in the cluster benchmark; without it the cluster
    // took 1.4× the events on 0.67× the CPU per event (BENCHMARKS.md,
    // "Cluster", twelfth session). Best effort: a kernel without the
    // setting runs as before.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    // Two rustls providers are built in (object_store's S3 client brings
    // aws-lc-rs): the process default is ring, as everywhere Sightline
    // chooses one, for the libraries that ask for the default (async-nats
    // on `tls://` URLs).
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    match cli.command {
        Command::Certs { command } => {
            use sightline_core::certs::{init_ca, issue, Subject};
            let written = match &command {
                CertsCommand::Init { dir, days } => init_ca(dir, *days)?,
                CertsCommand::Agent {
                    dir,
                    agent_id,
                    days,
                } => issue(dir, Subject::Agent(agent_id), *days)?,
                CertsCommand::Core { dir, san, days } => issue(dir, Subject::Core(san), *days)?,
            };
            println!("{}", written.display());
            Ok(())
        }
        Command::Case { command } => {
            let status = sightline_core::cases::cli::run(command).await?;
            std::process::exit(status)
        }
        Command::Audit { command } => sightline_core::audit::cli::run(command),
        Command::Backup(args) => sightline_core::backup::cli::backup(args).await,
        Command::Restore(args) => sightline_core::backup::cli::restore(args).await,
        Command::ConfigReference => {
            let text = CoreConfig::reference().map_err(|keys| {
                anyhow::anyhow!("config keys without a doc comment: {}", keys.join(", "))
            })?;
            print!("{text}");
            Ok(())
        }
        Command::Export { command } => sightline_core::export::cli::run(command).await,
        Command::Cluster { command } => sightline_core::client::cluster::run(&command).await,
        Command::Client(cmd) => {
            let url =
                std::env::var("SIGHTLINE_CORE").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
            sightline_core::client::run(url, cmd).await
        }
        Command::Serve {
            config,
            grpc_listen,
            http_listen,
            data_dir,
            locations,
            no_sync,
            partitions,
            edge_listen,
            tls_dir,
            tls_cert,
            tls_key,
            insecure_plaintext,
            cluster,
            edge_plaintext,
            registry,
            no_registry,
        } => {
            // The file, then SIGHTLINE_CORE__* variables, then the flags below.
            let mut cfg = CoreConfig::load(config.as_deref(), std::env::vars_os())?;
            if let Some(a) = grpc_listen {
                cfg.server.grpc_listen = a;
            }
            if let Some(a) = http_listen {
                cfg.server.http_listen = a;
            }
            if let Some(d) = data_dir {
                cfg.storage.path = d;
            }
            if let Some(l) = locations {
                cfg.locations.path = Some(l);
            }
            if no_sync {
                cfg.storage.sync = false;
            }
            if let Some(p) = partitions {
                cfg.pipeline.partitions = p;
            }
            if let Some(a) = edge_listen {
                cfg.edge.listen = a;
            }
            if let Some(d) = tls_dir {
                cfg.edge.tls_dir = Some(d);
            }
            if let (Some(c), Some(k)) = (tls_cert, tls_key) {
                cfg.server.tls_cert = Some(c);
                cfg.server.tls_key = Some(k);
            }
            if insecure_plaintext {
                cfg.server.insecure_plaintext = true;
            }
            if !cluster.is_empty() {
                cfg.cluster.nats = cluster;
            }
            if edge_plaintext {
                cfg.edge.plaintext = true;
            }
            if let Some(r) = registry {
                cfg.edge.registry = Some(r);
            }
            if no_registry {
                cfg.edge.registry_enforced = false;
            }
            // Connections, RocksDB's files and the search index's segments
            // all need descriptors; the common soft limit of 1,024 is far
            // below what the hard limit allows. The connection caps are sized
            // from what this leaves (see `connections.max_per_listener`).
            let (before, now, hard) = sightline_core::api::limits::raise_open_files_limit();
            let show = |n: Option<u64>| n.map_or("unlimited".to_string(), |n| n.to_string());
            tracing::info!(
                before = show(before),
                now = show(now),
                hard = show(hard),
                "open-file limit (soft limit raised to the hard one)"
            );
            let shutdown = CancellationToken::new();
            sightline_core::signal::cancel_on_terminate(shutdown.clone())
                .context("installing the SIGTERM/SIGINT handlers")?;
            sightline_core::server::run(cfg, shutdown, |b| match b.edge {
                Some(e) => println!(
                    "sightline-core listening grpc={} http={} edge={e}",
                    b.grpc, b.http
                ),
                None => println!("sightline-core listening grpc={} http={}", b.grpc, b.http),
            })
            .await
        }
    }
}
