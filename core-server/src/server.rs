//! Wires the core together — store, Dataset B, pipeline, ingest, query API,
//! live hub, HTTP — and runs it until shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use sightline_proto::{
    v1::{
        admin_server::AdminServer, ingest_server::IngestServer, media_server::MediaServer,
        query_server::QueryServer,
    },
    Limits,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{
        admin::AdminService,
        dashboard,
        http::{self, HttpState},
        limits::{self, ConnLimits, Gate},
        live::LiveHub,
        query::QueryService,
    },
    config::CoreConfig,
    dedup::{claims::Claims, Pipeline, WriterContext},
    edge::{self, registry::Registry, EdgeTls},
    enrich::Locations,
    fleet::Fleet,
    ingest::{grpc::IngestService, IngestCore},
    media::{grpc::MediaService, MediaStore},
    metrics::Metrics,
    search::SearchIndex,
    store::Store,
};

/// Where a running core listens.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The edge link (TCP for gRPC over TLS, UDP for QUIC), when TLS is set up.
    pub edge: Option<SocketAddr>,
}

/// Runs the core until `shutdown` is cancelled. `on_ready` is called once both
/// listeners are bound.
pub async fn run(
    config: CoreConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    config.validate()?;
    let path = config.storage.path.clone();
    let (sync, cache) = (config.storage.sync, config.storage.cache.as_u64() as usize);
    let store = tokio::task::spawn_blocking(move || Store::open(&path, sync, cache))
        .await?
        .with_context(|| format!("opening the store at {}", config.storage.path.display()))?;
    let store = Arc::new(store);
    let loc_path = config.locations.path.clone();
    let locations = Arc::new(tokio::task::spawn_blocking(move || Locations::new(loc_path)).await??);
    let metrics = Arc::new(Metrics::new());
    let media = {
        let (cfg, path, sync) = (
            config.media.clone(),
            config.storage.path.clone(),
            config.storage.sync,
        );
        let (s, m) = (store.clone(), metrics.clone());
        Arc::new(
            tokio::task::spawn_blocking(move || MediaStore::open(&cfg, &path, sync, s, m))
                .await??,
        )
    };
    let hub = LiveHub::new(config.live.buffer_commits);
    let caps = Caps::new(&config, &metrics);
    let feed =
        dashboard::LiveFeed::start(&hub, store.clone(), shutdown.clone(), caps.feeds.clone());
    let search = {
        let dir = config
            .search
            .path
            .clone()
            .unwrap_or_else(|| crate::search::default_path(&config.storage.path));
        let (s, l, h) = (store.clone(), locations.clone(), hub.clone());
        let (interval, stop) = (config.search.commit_interval, shutdown.clone());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _rt = handle.enter();
            SearchIndex::start(&dir, s, l, &h, interval, stop)
                .with_context(|| format!("opening the search index at {}", dir.display()))
        })
        .await??
    };
    let known = {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.watermarks()).await??
    };
    let fleet = Arc::new(Fleet::new(metrics.clone(), known));
    let registry = Arc::new(Registry::open(config.edge.registry.clone())?);
    if !registry.enforced() {
        tracing::warn!(
            "no agent registry (edge.registry): every agent may publish for every camera"
        );
    }
    let edge_tls = match &config.edge.tls_dir {
        Some(dir) => Some(Arc::new(EdgeTls::load(dir)?)),
        None => None,
    };
    let pipeline = Pipeline::start(
        Arc::new(WriterContext {
            store: store.clone(),
            locations: locations.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            claims: Claims::default(),
            max_group_events: config.pipeline.max_group_events,
        }),
        config.pipeline.partitions,
        config.pipeline.queue_batches,
    );
    let ingest_stop = CancellationToken::new();
    let ingest = Arc::new(IngestCore {
        pipeline,
        store: store.clone(),
        fleet: fleet.clone(),
        metrics: metrics.clone(),
        limits: Limits {
            max_future_skew_ms: config.ingest.max_future_skew.as_millis() as i64,
            ..Limits::default()
        },
        max_event_age: config.retention.events,
        hello_timeout: config.ingest.hello_timeout,
        registry: registry.clone(),
        shutdown: ingest_stop.clone(),
    });

    let admin_token = Arc::new(
        crate::api::admin_token::AdminToken::load_or_create(
            &config
                .server
                .admin_token_file
                .clone()
                .unwrap_or_else(|| config.storage.path.join("admin.token")),
        )
        .context("config `server.admin_token_file`")?,
    );

    let access = {
        let path = config.storage.path.join("access");
        let db =
            tokio::task::spawn_blocking(move || crate::access::AccessDb::open(&path)).await??;
        let audit_dir = config.audit.dir(&config.storage.path);
        let seg = config.audit.segment_bytes.as_u64();
        let audit =
            tokio::task::spawn_blocking(move || crate::audit::AuditLog::open(&audit_dir, seg))
                .await?
                .context("config `audit.path`: the audit log")?;
        tokio::spawn(crate::audit::retention_loop(
            audit.clone(),
            config.audit.retention,
            shutdown.clone(),
        ));
        crate::access::Access::new(Arc::new(db), &config.access, admin_token.clone(), audit)
    };

    let cases = {
        let (dir, s, m, l) = (
            config.storage.path.clone(),
            store.clone(),
            media.clone(),
            locations.clone(),
        );
        Arc::new(
            tokio::task::spawn_blocking(move || crate::cases::Cases::open(&dir, s, m, l)).await??,
        )
    };

    let grpc_listener = TcpListener::bind(config.server.grpc_listen)
        .await
        .with_context(|| {
            format!(
                "config `server.grpc_listen`: cannot bind {}",
                config.server.grpc_listen
            )
        })?;
    let http_listener = TcpListener::bind(config.server.http_listen)
        .await
        .with_context(|| {
            format!(
                "config `server.http_listen`: cannot bind {}",
                config.server.http_listen
            )
        })?;
    let edge_sockets = match &edge_tls {
        Some(_) => Some(bind_edge(config.edge.listen).await?),
        None => None,
    };
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        http: http_listener.local_addr()?,
        edge: match &edge_sockets {
            Some((tcp, _)) => Some(tcp.local_addr()?),
            None => None,
        },
    };

    let max_msg = config.ingest.max_message_bytes.as_u64() as usize;
    let query = QueryService {
        subscribers: caps.subscribers.clone(),
        replay_limit: config.live.replay_limit,
        search: search.clone(),
        store: store.clone(),
        locations: locations.clone(),
        fleet: fleet.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        access: access.clone(),
    };
    // Reflection lists what this port serves, nothing else: Ingest and Media
    // live on the edge port unless plaintext edge is on.
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sightline_proto::FILE_DESCRIPTOR_SET)
            .with_service_name("sightline.v1.Query")
            .with_service_name("sightline.v1.Admin")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        if config.edge.plaintext {
            b = b
                .with_service_name("sightline.v1.Ingest")
                .with_service_name("sightline.v1.Media");
        }
        b
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let grpc_stop = CancellationToken::new();
    let ingest_service = || {
        IngestServer::new(IngestService {
            core: ingest.clone(),
        })
        .max_decoding_message_size(max_msg)
    };
    // Chunks are at most 1 MiB; the same message limit as ingest.
    let media_service = || {
        MediaServer::new(MediaService {
            media: media.clone(),
            registry: registry.clone(),
        })
        .max_decoding_message_size(max_msg)
    };
    let grpc = {
        let stop = grpc_stop.clone();
        let plaintext = config.edge.plaintext;
        if plaintext {
            tracing::warn!(grpc = %bound.grpc, "edge.plaintext: agents may also connect WITHOUT TLS here, identified only by what they claim (local demos only)");
        }
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(GRPC_MAX_STREAMS)
            .add_optional_service(plaintext.then(ingest_service))
            .add_optional_service(plaintext.then(media_service))
            .add_service(QueryServer::new(query).max_encoding_message_size(64 * 1024 * 1024))
            .add_service(AdminServer::new(AdminService {
                locations: locations.clone(),
                registry: registry.clone(),
                fleet: fleet.clone(),
                access: access.clone(),
            }))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Own listener, so TCP_NODELAY is set by the accept loop (tonic
            // only does for its own): without it, Nagle + delayed ACK hold
            // acks and live events ~40 ms.
            .serve_with_incoming_shutdown(
                limits::grpc_incoming(grpc_listener, caps.grpc.clone(), stop.clone()),
                async move { stop.cancelled().await },
            )
    };
    let mut edge_tasks = Vec::new();
    let mut quic_endpoint = None;
    if let (Some(tls), Some((tcp, udp))) = (&edge_tls, edge_sockets) {
        let stop = grpc_stop.clone();
        let incoming = edge::tcp::incoming(
            tcp,
            tls.clone(),
            metrics.clone(),
            caps.edge.clone(),
            stop.clone(),
        );
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(2)))
            .http2_keepalive_timeout(Some(Duration::from_secs(6)))
            .max_concurrent_streams(GRPC_MAX_STREAMS)
            .add_service(ingest_service())
            .add_service(media_service())
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
        edge_tasks.push(tokio::spawn(server));
        quic_endpoint = Some(edge::quic::serve(
            udp,
            &config.edge.quic_congestion,
            Arc::new(edge::quic::QuicEdge {
                tls: tls.clone(),
                ingest: ingest.clone(),
                media: media.clone(),
                metrics: metrics.clone(),
                max_message: max_msg,
            }),
            grpc_stop.clone(),
        )?);
        tracing::info!(edge = ?bound.edge, "edge link: gRPC over TLS (TCP) and QUIC (UDP), client certificates required");
    }
    let grpc_task = tokio::spawn(grpc);
    let http_stop = CancellationToken::new();
    let http_task = {
        let stop = http_stop.clone();
        let app = http::router(HttpState {
            metrics: metrics.clone(),
            locations: locations.clone(),
            admin: admin_token.clone(),
        })
        .merge(
            crate::media::http::router(media.clone()).layer(axum::Extension(access.audit.clone())),
        )
        .merge(
            crate::cases::http::router(cases.clone())
                .layer(axum::middleware::map_request(crate::access::http::exporter))
                .layer(axum::Extension(access.audit.clone())),
        )
        .merge(dashboard::router(
            dashboard::backend::CoreBackend {
                store: store.clone(),
                locations: locations.clone(),
                fleet: fleet.clone(),
                cameras: feed.cameras.clone(),
                search: search.clone(),
                who: crate::access::Principal::admin_token(),
                csrf: None,
                audit: Some(access.audit.clone()),
            },
            feed.clone(),
            &config.dashboard.site_root(),
        ));
        // Every route behind the session/token check (see access::http).
        let app = crate::access::http::layer(
            app,
            crate::access::http::HttpAccess {
                access: access.clone(),
                tls: false,
            },
        );
        tokio::spawn(limits::serve_http(
            http_listener,
            app,
            caps.http.clone(),
            stop,
        ))
    };
    spawn_sighup_reload(
        locations.clone(),
        registry.clone(),
        fleet.clone(),
        shutdown.clone(),
    );
    spawn_retention(
        store.clone(),
        search.clone(),
        config.retention.clone(),
        shutdown.clone(),
    );
    spawn_media_retention(
        media.clone(),
        config.media.clone(),
        config.retention.clone(),
        shutdown.clone(),
    );
    tracing::info!(grpc = %bound.grpc, http = %bound.http, edge = ?bound.edge, "core ready");
    on_ready(bound);

    shutdown.cancelled().await;
    tracing::info!("shutting down: no new batches; finishing the commits in flight");
    ingest_stop.cancel();
    fleet.close_all();
    grpc_stop.cancel();
    http_stop.cancel();
    if let Some(ep) = &quic_endpoint {
        // The sessions have ended; let their last frames go out, then close.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while ep.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        ep.close(
            sightline_proto::edge::CLOSE_SHUTDOWN.into(),
            b"the core is shutting down",
        );
    }
    for t in edge_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if tokio::time::timeout(Duration::from_secs(10), grpc_task)
        .await
        .is_err()
    {
        tracing::warn!("gRPC connections did not close within 10 s");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    // Every commit that was acknowledged is durable already; joining the
    // writers only lets queued commits finish instead of being retried.
    match Arc::try_unwrap(ingest) {
        Ok(core) => {
            tokio::task::spawn_blocking(move || core.pipeline.shutdown()).await?;
        }
        Err(_) => tracing::warn!("sessions still hold the pipeline; queued batches will be resent"),
    }
    tracing::info!("core stopped");
    Ok(())
}

/// Streams one gRPC connection may have open at once (query and edge ports).
const GRPC_MAX_STREAMS: u32 = 256;

/// The caps on what clients hold open, per listener and per kind of stream.
struct Caps {
    http: ConnLimits,
    grpc: ConnLimits,
    edge: ConnLimits,
    subscribers: Arc<Gate>,
    feeds: Arc<Gate>,
}

impl Caps {
    /// From the config; a per-listener cap of 0 is derived from the
    /// open-file limit (see [`limits::per_listener_cap`]), and the start log
    /// says what each came to.
    fn new(config: &CoreConfig, metrics: &Arc<Metrics>) -> Self {
        let c = &config.connections;
        let open_files = limits::open_files_limit();
        let per_listener = limits::per_listener_cap(c.max_per_listener, open_files);
        let live = &config.live;
        tracing::info!(
            open_files = open_files.map_or("unlimited".to_string(), |n| n.to_string()),
            per_listener,
            per_client = c.max_per_client,
            header_timeout = ?c.header_timeout,
            idle_timeout = ?c.idle_timeout,
            subscribers = live.max_subscribers,
            live_feeds = live.max_feeds,
            "connection caps"
        );
        if let Some(n) = open_files {
            if (3 * per_listener) as u64 + limits::RESERVED_DESCRIPTORS > n {
                tracing::warn!(
                    open_files = n,
                    per_listener,
                    "config `connections.max_per_listener`: three listeners at this cap can use up the open-file limit the store and the search index need"
                );
            }
        }
        let conn = |name| ConnLimits::new(name, c, per_listener, metrics.clone());
        Self {
            http: conn("http connections"),
            grpc: conn("gRPC connections"),
            edge: conn("edge connections"),
            subscribers: Gate::new(
                "Subscribe streams",
                ("live.max_subscribers", live.max_subscribers),
                (
                    "live.max_subscribers_per_client",
                    live.max_subscribers_per_client,
                ),
                metrics.clone(),
            ),
            feeds: Gate::new(
                "live feeds",
                ("live.max_feeds", live.max_feeds),
                ("live.max_feeds_per_client", live.max_feeds_per_client),
                metrics.clone(),
            ),
        }
    }
}

/// Binds TCP and UDP on the same port (`listen`'s, or one free for both).
async fn bind_edge(listen: SocketAddr) -> anyhow::Result<(TcpListener, std::net::UdpSocket)> {
    let mut last = None;
    for _ in 0..20 {
        let tcp = TcpListener::bind(listen)
            .await
            .with_context(|| format!("config `edge.listen`: cannot bind TCP {listen}"))?;
        let at = tcp.local_addr()?;
        match std::net::UdpSocket::bind(at) {
            Ok(udp) => return Ok((tcp, udp)),
            // Port 0 picked a TCP port whose UDP twin is taken: pick again.
            Err(e) if listen.port() == 0 => last = Some(e),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("config `edge.listen`: cannot bind UDP {at}"))
            }
        }
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no port")))
    .context("config `edge.listen`: no port free for both TCP and UDP")
}

fn spawn_sighup_reload(
    locations: Arc<Locations>,
    registry: Arc<Registry>,
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup.recv() => {
                    let l = locations.clone();
                    match tokio::task::spawn_blocking(move || l.reload(None)).await {
                        Ok(Ok((rows, path))) => tracing::info!(rows, %path, "SIGHUP: Dataset B reloaded"),
                        Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: Dataset B refused; the table in use stays"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
                    }
                    match registry.reload().await {
                        Ok(revoked) => {
                            for a in revoked {
                                fleet.revoke(&a);
                            }
                            if registry.enforced() {
                                tracing::info!("SIGHUP: agent registry reloaded");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "SIGHUP: agent registry refused; the one in use stays"),
                    }
                }
            }
        }
    });
}

fn spawn_retention(
    store: Arc<Store>,
    search: Arc<SearchIndex>,
    cfg: crate::config::RetentionConfig,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = sightline_proto::now_ms();
                    let ms = |d: Duration| now.saturating_sub(d.as_millis() as i64);
                    let (e, a, q, d) = (ms(cfg.events), ms(cfg.aggregates), ms(cfg.quarantine), ms(cfg.dedup_keys));
                    let s = store.clone();
                    match tokio::task::spawn_blocking(move || s.apply_retention(e, a, q, d)).await {
                        Ok(Ok(expired)) => {
                            if expired > 0 {
                                tracing::info!(events = expired, before_ms = e, "retention: events removed (retention.events)");
                            }
                            search.apply_retention(crate::store::keys::Bucket::Minute.floor(e))
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
                        Err(e) => tracing::error!(error = %e, "retention task failed"),
                    }
                }
            }
        }
    });
}

fn spawn_media_retention(
    media: Arc<MediaStore>,
    cfg: crate::config::MediaConfig,
    retention: crate::config::RetentionConfig,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(retention.interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => match media.sweep(&cfg, &retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "media retention"),
                    Err(e) => tracing::error!(error = %e, "media retention failed"),
                },
            }
        }
    });
}
