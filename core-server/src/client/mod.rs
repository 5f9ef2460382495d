//! The terminal client: the obvious questions from a shell.
//!
//! `top` (X items per location over a range), `tail` (live joined events),
//! `fleet`, `completeness`, `quarantine`, `stats`, `reload`, `grant`; accounts, API tokens and
//! sessions (`users`, `tokens`, `sessions`, see [`admin`]).
//!
//! Every call carries a credential: `SIGHTLINE_TOKEN` (an API token, or the
//! admin token itself), else the admin token read from
//! `SIGHTLINE_ADMIN_TOKEN_FILE` (default `data/core/admin.token`).

pub mod admin;
pub mod cluster;

use std::time::Duration;

use clap::Subcommand;
use futures::StreamExt;
use sightline_proto::v1::{
    admin_client::AdminClient, query_client::QueryClient, AgentGrant, EventFilter, FleetRequest,
    JoinedEvent, ListQuarantineRequest, ReloadLocationsRequest, StatsRequest, SubscribeRequest,
    TopItemsRequest,
};
use tonic::metadata::{Ascii, MetadataValue};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// The top X items per location over a time range.
    Top {
        /// Range ending now, e.g. 5m, 1h, 24h.
        #[arg(long, default_value = "1h")]
        last: humantime::Duration,
        /// Explicit range start (epoch ms); overrides --last.
        #[arg(long)]
        from_ms: Option<i64>,
        /// Explicit range end (epoch ms, default now).
        #[arg(long)]
        to_ms: Option<i64>,
        #[arg(short = 'x', long, default_value_t = 5)]
        x: u32,
        #[arg(long)]
        location: Option<i64>,
    },
    /// Live joined events, as they are committed.
    Tail {
        /// Replay stored events from this time (epoch ms) first.
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        #[arg(long)]
        location: Option<i64>,
        #[arg(long)]
        camera: Option<i64>,
        #[arg(long)]
        item: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Agents: connected, last seen, acked seq, lag.
    Fleet,
    /// Were any detections lost, where and when: per camera, the missing
    /// ranges of camera_seq with the agent's reason, or `complete` (admin).
    Completeness {
        /// Only gaps next to events detected this recently (e.g. 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
    },
    /// Events refused at the core.
    Quarantine {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Totals.
    Stats,
    /// Dashboard accounts (admin).
    Users {
        #[command(subcommand)]
        command: admin::UsersCommand,
    },
    /// API tokens for integrators (admin).
    Tokens {
        #[command(subcommand)]
        command: admin::TokensCommand,
    },
    /// Dashboard sessions (admin).
    Sessions {
        #[command(subcommand)]
        command: admin::SessionsCommand,
    },
    /// Reload Dataset B.
    Reload {
        /// Another file than the configured one.
        #[arg(long)]
        path: Option<String>,
        /// The core's admin token file (`server.admin_token_file`).
        #[arg(
            long,
            env = "SIGHTLINE_ADMIN_TOKEN_FILE",
            default_value = "data/core/admin.token"
        )]
        admin_token_file: std::path::PathBuf,
    },
    /// Grant an agent the cameras (and locations) it may publish for; a new
    /// agent is refused until granted. Lifts a revocation.
    Grant {
        /// The agent id (its certificate's common name).
        #[arg(long)]
        agent_id: String,
        /// Camera ids (video_camera_oid), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        cameras: Vec<i64>,
        /// Location ids (geographical_location_oid), comma-separated; none:
        /// any location.
        #[arg(long, value_delimiter = ',')]
        locations: Vec<i64>,
        /// The core's admin token file (`server.admin_token_file`).
        #[arg(
            long,
            env = "SIGHTLINE_ADMIN_TOKEN_FILE",
            default_value = "data/core/admin.token"
        )]
        admin_token_file: std::path::PathBuf,
    },
}

fn fmt_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

fn line(e: &JoinedEvent) -> String {
    let d = e.detection.clone().unwrap_or_default();
    let place = match &e.location {
        Some(l) => l.geographical_location.clone(),
        None => format!("(unmatched location {})", d.geographical_location_oid),
    };
    format!(
        "{}  {:<12} {:<24} camera {:<6} det_oid {}  agent {} seq {}",
        fmt_ms(d.timestamp_detected),
        d.item_name,
        place,
        d.video_camera_oid,
        d.detection_oid.unwrap_or_default(),
        e.agent_id,
        e.seq
    )
}

/// The `authorization` value every call carries: `SIGHTLINE_TOKEN`, else
/// the admin token file (`SIGHTLINE_ADMIN_TOKEN_FILE`, default
/// `data/core/admin.token`).
pub(crate) fn credential(
    admin_token_file: Option<&std::path::Path>,
) -> anyhow::Result<MetadataValue<Ascii>> {
    let secret = match std::env::var("SIGHTLINE_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let path = admin_token_file
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| {
                    std::env::var_os("SIGHTLINE_ADMIN_TOKEN_FILE")
                        .map(Into::into)
                        .unwrap_or_else(|| "data/core/admin.token".into())
                });
            std::fs::read_to_string(&path)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "no credential: set SIGHTLINE_TOKEN to an API token (`sightline-core tokens create`), or SIGHTLINE_ADMIN_TOKEN_FILE to the core's admin token file ({}: {e})",
                        path.display()
                    )
                })?
                .trim()
                .to_string()
        }
    };
    format!("Bearer {secret}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the token is not valid header text"))
}

/// Adds the credential to every call.
#[derive(Clone)]
pub struct WithCredential(pub(crate) MetadataValue<Ascii>);

impl tonic::service::Interceptor for WithCredential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A channel to the core's gRPC port at `url` (over TLS for `https://`,
/// trusting `SIGHTLINE_CA`).
pub async fn channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        // The query port over TLS (`server.tls_cert`): trust the CA that
        // issued its certificate, and only that.
        let ca = std::env::var_os("SIGHTLINE_CA").ok_or_else(|| {
            anyhow::anyhow!(
                "SIGHTLINE_CORE is {url}: set SIGHTLINE_CA to the CA certificate that issued the core's (e.g. data/pki/ca.pem)"
            )
        })?;
        let pem = std::fs::read(&ca).map_err(|e| {
            anyhow::anyhow!(
                "reading SIGHTLINE_CA {}: {e}",
                std::path::Path::new(&ca).display()
            )
        })?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the core at {url}: {e}"))
}

/// Runs a client command against the core at `url`.
pub async fn run(url: String, cmd: ClientCommand) -> anyhow::Result<()> {
    let channel = channel(&url).await?;
    let file = match &cmd {
        ClientCommand::Reload {
            admin_token_file, ..
        }
        | ClientCommand::Grant {
            admin_token_file, ..
        } => Some(admin_token_file.as_path()),
        _ => None,
    };
    let auth = WithCredential(credential(file)?);
    let mut q = QueryClient::with_interceptor(channel.clone(), auth.clone())
        .max_decoding_message_size(64 * 1024 * 1024);
    let admin_client = AdminClient::with_interceptor(channel.clone(), auth.clone());
    match cmd {
        ClientCommand::Users { command } => admin::users(admin_client, command).await?,
        ClientCommand::Tokens { command } => admin::tokens(admin_client, command).await?,
        ClientCommand::Sessions { command } => admin::sessions(admin_client, command).await?,
        ClientCommand::Top {
            last,
            from_ms,
            to_ms,
            x,
            location,
        } => {
            let to = to_ms.unwrap_or_else(|| sightline_proto::now_ms() + 60_000);
            let from = from_ms.unwrap_or(to - Duration::from(last).as_millis() as i64);
            let r = q
                .top_items(TopItemsRequest {
                    from_ms: from,
                    to_ms: to,
                    x,
                    geographical_location_oid: location,
                })
                .await?
                .into_inner();
            println!(
                "top {x} items per location, {} .. {}",
                fmt_ms(r.from_ms),
                fmt_ms(r.to_ms)
            );
            if r.locations.is_empty() {
                println!("(no events in this range)");
            }
            for l in r.locations {
                let name = if l.location_matched {
                    l.geographical_location
                } else {
                    "(not in Dataset B)".into()
                };
                println!(
                    "\n{} [{}] — {} events",
                    name, l.geographical_location_oid, l.total
                );
                for (i, it) in l.items.iter().enumerate() {
                    println!("  {:>2}. {:<16} {:>10}", i + 1, it.item_name, it.count);
                }
            }
        }
        ClientCommand::Tail {
            from_ms,
            location,
            camera,
            item,
            count,
        } => {
            let mut stream = q
                .subscribe(SubscribeRequest {
                    from_ms,
                    filter: Some(EventFilter {
                        geographical_location_oid: location,
                        video_camera_oid: camera,
                        item_name: item,
                    }),
                })
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(ev) = stream.next().await {
                println!("{}", line(&ev?));
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
        }
        ClientCommand::Completeness { since } => {
            let since_ms = sightline_proto::now_ms().saturating_sub(since.as_millis() as i64);
            let r = q
                .completeness(sightline_proto::v1::CompletenessRequest {
                    since_ms: since_ms.max(0),
                })
                .await?
                .into_inner();
            print!("{}", crate::completeness::format(&r, fmt_ms));
        }
        ClientCommand::Fleet => {
            let r = q.fleet(FleetRequest {}).await?.into_inner();
            println!(
                "{:<20} {:<9} {:<15} {:<24} {:>10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7}",
                "agent",
                "state",
                "link",
                "last seen",
                "acked seq",
                "lag",
                "buffer",
                "dup seq",
                "dup det",
                "rejected",
                "denied"
            );
            for a in r.agents {
                println!(
                    "{:<20} {:<9} {:<15} {:<24} {:>10} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7}",
                    a.agent_id,
                    if a.revoked {
                        "revoked"
                    } else if a.connected {
                        "connected"
                    } else {
                        "away"
                    },
                    if a.link.is_empty() { "-" } else { &a.link },
                    if a.last_seen_ms > 0 {
                        fmt_ms(a.last_seen_ms)
                    } else {
                        "-".into()
                    },
                    a.acked_seq,
                    a.lag,
                    a.buffer_depth,
                    a.duplicates_transport,
                    a.duplicates_semantic,
                    a.rejected,
                    a.denied
                );
                if !a.agent_transport.is_empty() && a.agent_transport != "quic" {
                    println!("{:<20} agent's link: {}", "", a.agent_transport);
                }
                if !a.last_refusal.is_empty() {
                    println!("{:<20} refused: {}", "", a.last_refusal);
                }
                if a.epochs_started > 0 {
                    println!(
                        "{:<20} new epochs: {} (last: {})",
                        "", a.epochs_started, a.last_new_epoch
                    );
                }
                if !a.buffer_disk_fault.is_empty() {
                    println!("{:<20} buffer disk: {}", "", a.buffer_disk_fault);
                }
                if a.buffer_depth > 0 && a.oldest_held_ms > 0 {
                    let age = (sightline_proto::now_ms() - a.oldest_held_ms).max(0);
                    println!(
                        "{:<20} backlog: {} events, the oldest accepted {:.1} s ago ({})",
                        "",
                        a.buffer_depth,
                        age as f64 / 1000.0,
                        fmt_ms(a.oldest_held_ms)
                    );
                }
            }
        }
        ClientCommand::Quarantine { limit } => {
            let r = q
                .list_quarantine(ListQuarantineRequest {
                    page_size: limit,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            println!("{} events in quarantine", r.total);
            for e in r.events {
                println!(
                    "{}  agent {} seq {}  field `{}`: {}",
                    fmt_ms(e.quarantined_ms),
                    e.agent_id,
                    e.seq,
                    e.field,
                    e.reason
                );
            }
        }
        ClientCommand::Stats => {
            let s = q.stats(StatsRequest {}).await?.into_inner();
            println!(
                "stored={} duplicates_transport={} duplicates_semantic={} rejected={} unmatched={} locations_loaded={}",
                s.stored, s.duplicates_transport, s.duplicates_semantic, s.rejected, s.unmatched, s.locations_loaded
            );
        }
        ClientCommand::Reload { path, .. } => {
            let r = admin_client
                .clone()
                .reload_locations(ReloadLocationsRequest {
                    path: path.unwrap_or_default(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            println!("loaded {} locations from {}", r.rows, r.path);
        }
        ClientCommand::Grant {
            agent_id,
            cameras,
            locations,
            ..
        } => {
            let g = admin_client
                .clone()
                .grant_agent(AgentGrant {
                    agent_id,
                    cameras,
                    locations,
                    revoked: false,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            println!(
                "granted agent {}: cameras {:?}, locations {}",
                g.agent_id,
                g.cameras,
                if g.locations.is_empty() {
                    "any".to_string()
                } else {
                    format!("{:?}", g.locations)
                }
            );
        }
    }
    Ok(())
}
