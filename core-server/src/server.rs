//! Wires the core together — store, Dataset B, pipeline, ingest, query API,
//! live hub, HTTP — and runs it until shutdown.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::response::IntoResponse;
use sightline_proto::{
    v1::{admin_server::AdminServer, ingest_server::IngestServer, media_server::MediaServer},
    Limits,
};
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
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
    dedup::{Pipeline, WriterContext},
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

/// Runs the core until `shutdown` is cancelled, then drains it (see
/// [`Drain`]) and returns once every task has ended and the store is closed,
/// or once `server.shutdown_grace` has passed (what did not finish is
/// logged by name). `on_ready` is called once every listener is bound.
pub async fn run(
    config: CoreConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Bound),
) -> anyhow::Result<()> {
    config.validate()?;
    let mut drain = Drain::default();
    let core = match start(&config, &mut drain).await {
        Ok(core) => core,
        Err(e) => {
            // Whatever was started stops; nothing is waited for.
            drain.cancel_all();
            return Err(e);
        }
    };
    tracing::info!(grpc = %core.bound.grpc, http = %core.bound.http, edge = ?core.bound.edge, "core ready");
    on_ready(core.bound);
    shutdown.cancelled().await;
    let left = drain.run(core, config.server.shutdown_grace).await;
    if left.is_empty() {
        tracing::info!("core stopped");
    } else {
        tracing::warn!(unfinished = ?left, grace = ?config.server.shutdown_grace, "core stopped; these did not finish within server.shutdown_grace");
    }
    Ok(())
}

/// What the drain needs of a started core besides its tasks.
struct Started {
    bound: Bound,
    ingest: Arc<IngestCore>,
    fleet: Arc<Fleet>,
    quic: Option<quinn::Endpoint>,
    store: Arc<Store>,
    /// Cluster mode: the running node (its `ClusterView`).
    #[allow(dead_code)]
    cluster: Option<Arc<crate::cluster::node::Node>>,
}

/// The stages of the one shutdown path, in the order they are drained. Each
/// task belongs to one; a stage's tasks are told to stop (their token) and
/// waited for before the next stage begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Listeners: stop accepting connections.
    Accept,
    /// Open connections and agent sessions: closed (sessions stop taking
    /// batches; HTTP and gRPC connections finish their requests).
    Sessions,
    /// Background work: the live feed, the search indexer, retention,
    /// SIGHUP reloads.
    Background,
}

/// Every task the core starts, by stage, and the tokens that stop them.
///
/// The drain ([`Drain::run`]): stop accepting → close sessions → finish the
/// queued commits (the pipeline's writers are joined) → stop background
/// tasks → close the store (once nothing else holds it). One deadline (the
/// grace period) bounds all of it; whatever did not end by then is named in
/// the returned list and logged.
#[derive(Default)]
pub struct Drain {
    accept: CancellationToken,
    sessions: CancellationToken,
    /// Cuts the connections still open [`CONN_DRAIN`] into the sessions
    /// stage (see [`limits::ConnLimits::cut`]).
    cut: CancellationToken,
    background: CancellationToken,
    tasks: Vec<(Stage, &'static str, JoinHandle<()>)>,
}

impl Drain {
    /// The token that stops the tasks of `stage`.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        match stage {
            Stage::Accept => self.accept.clone(),
            Stage::Sessions => self.sessions.clone(),
            Stage::Background => self.background.clone(),
        }
    }

    /// Runs `task` until it ends; the drain waits for it in `stage`.
    pub fn spawn(
        &mut self,
        stage: Stage,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.tasks.push((stage, name, tokio::spawn(task)));
    }

    fn cancel_all(&self) {
        self.accept.cancel();
        self.sessions.cancel();
        self.cut.cancel();
        self.background.cancel();
    }

    /// Waits for the tasks of `stage` until `deadline`; those still running
    /// stay.
    async fn wait(&mut self, stage: Stage, deadline: Instant) {
        let (mine, mut rest) = std::mem::take(&mut self.tasks)
            .into_iter()
            .partition::<Vec<_>, _>(|(s, _, _)| *s == stage);
        for (s, name, mut task) in mine {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(task = name, error = %e, "shutdown: task failed"),
                Err(_) => rest.push((s, name, task)),
            }
        }
        self.tasks = rest;
    }

    /// Waits for the tasks of `stage` until `deadline`; those still running
    /// are aborted and named in `left`.
    async fn join(&mut self, stage: Stage, deadline: Instant, left: &mut Vec<&'static str>) {
        self.wait(stage, deadline).await;
        self.tasks.retain(|(s, name, task)| {
            if *s != stage {
                return true;
            }
            task.abort();
            left.push(name);
            false
        });
    }

    /// The drain, in the order of [`Stage`]; returns what did not finish
    /// within `grace`.
    async fn run(mut self, core: Started, grace: Duration) -> Vec<&'static str> {
        let deadline = Instant::now() + grace;
        let mut left = Vec::new();
        let Started {
            ingest,
            fleet,
            quic,
            store,
            ..
        } = core;
        tracing::info!(grace = ?grace, "shutting down: no new connections; closing sessions; finishing the commits in flight");
        self.accept.cancel();
        self.join(Stage::Accept, deadline, &mut left).await;

        self.sessions.cancel();
        fleet.close_all();
        drop(fleet);
        if let Some(ep) = &quic {
            // The sessions have ended; let their last frames go out, then close.
            let quic_deadline = deadline.min(Instant::now() + QUIC_CLOSE_WAIT);
            while ep.open_connections() > 0 && Instant::now() < quic_deadline {
                tokio::time::sleep(POLL).await;
            }
            ep.close(
                sightline_proto::edge::CLOSE_SHUTDOWN.into(),
                b"the core is shutting down",
            );
            // Let the close frames go out before the socket does: an agent
            // then hears "shutting down", not silence.
            let idle = deadline.min(Instant::now() + QUIC_CLOSE_WAIT);
            let _ = tokio::time::timeout_at(idle, ep.wait_idle()).await;
        }
        // Connections get CONN_DRAIN to finish what they are doing; then
        // the ones still open (idle, streaming) are cut.
        self.wait(Stage::Sessions, deadline.min(Instant::now() + CONN_DRAIN))
            .await;
        self.cut.cancel();
        self.join(Stage::Sessions, deadline, &mut left).await;

        // Every commit that was acknowledged is durable already; joining the
        // writers lets the queued ones finish instead of being resent.
        match last_owner(ingest, deadline).await {
            Ok(core) => {
                let joined = tokio::task::spawn_blocking(move || core.pipeline.shutdown());
                if tokio::time::timeout_at(deadline, joined).await.is_err() {
                    left.push("pipeline writers");
                }
            }
            Err(_) => left.push("ingest sessions (queued batches will be resent)"),
        }

        self.background.cancel();
        self.join(Stage::Background, deadline, &mut left).await;

        // The store closes (RocksDB's lock is released) when its last owner
        // drops it: the search indexer, the live feed and the connections
        // hold it until they end.
        if let Some(quic) = quic {
            // Closed above; its idle wait holds the QUIC socket open.
            drop(quic);
        }
        match last_owner(store, deadline).await {
            Ok(store) => {
                let closed = tokio::task::spawn_blocking(move || drop(store));
                if tokio::time::timeout_at(deadline, closed).await.is_err() {
                    left.push("store close");
                }
            }
            Err(_) => left.push("store (still held by a task that did not end)"),
        }
        left
    }
}

/// How long open connections may take to finish their requests at
/// shutdown before they are cut.
const CONN_DRAIN: Duration = Duration::from_secs(2);
/// How long the QUIC endpoint waits for its sessions' last frames.
const QUIC_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How often the drain looks whether a shared part has been let go.
const POLL: Duration = Duration::from_millis(10);

/// `shared` once nobody else holds it, or it back at `deadline`.
async fn last_owner<T>(mut shared: Arc<T>, deadline: Instant) -> Result<T, Arc<T>> {
    loop {
        match Arc::try_unwrap(shared) {
            Ok(t) => return Ok(t),
            Err(s) if Instant::now() >= deadline => return Err(s),
            Err(s) => shared = s,
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Opens the store, builds every part and starts every task into `drain`.
async fn start(config: &CoreConfig, drain: &mut Drain) -> anyhow::Result<Started> {
    let path = config.storage.path.clone();
    let sync = config.storage.sync;
    let memory = crate::store::StoreMemory {
        cache_bytes: config.storage.cache.as_u64() as usize,
        memtable_bytes: config.storage.memtable.as_u64() as usize,
    };
    let store = tokio::task::spawn_blocking(move || Store::open_with(&path, sync, memory))
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
    let hub = LiveHub::new(config.live.buffer_events);
    let caps = Caps::new(config, &metrics, &drain.cut);
    // Cluster mode: this node commits nothing into `hub` (each partition's
    // owner has its own); the dashboard's feed reads a hub of its own, fed
    // with every partition's commits from the cluster (below).
    let dashboard_hub = if config.cluster.enabled() {
        LiveHub::new(config.live.buffer_events)
    } else {
        hub.clone()
    };
    let feed = dashboard::LiveFeed::start(
        &dashboard_hub,
        store.clone(),
        locations.clone(),
        drain.token(Stage::Background),
        caps.feeds.clone(),
    );
    let search = {
        let dir = config
            .search
            .path
            .clone()
            .unwrap_or_else(|| crate::search::default_path(&config.storage.path));
        let (s, l, h) = (store.clone(), locations.clone(), hub.clone());
        let (interval, stop) = (
            config.search.commit_interval,
            drain.token(Stage::Background),
        );
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
    let registry = Arc::new(match config.registry_path() {
        Some(path) => {
            let r = Registry::open_or_create(path.clone())
                .with_context(|| "config `edge.registry`".to_string())?;
            tracing::info!(
                registry = %path.display(),
                agents = r.list().len(),
                "agent registry enforced: an agent publishes only for the cameras granted to it (sightline-core grant)"
            );
            r
        }
        None => {
            tracing::warn!(
                "AGENT REGISTRY NOT ENFORCED (edge.registry_enforced = false): ANY agent may publish for ANY camera, without a grant. Demos only"
            );
            Registry::open(None)?
        }
    });
    let edge_tls = match &config.edge.tls_dir {
        Some(dir) => Some(Arc::new(EdgeTls::load(dir)?)),
        None => None,
    };
    observe(
        &metrics,
        &store,
        &hub,
        &search,
        edge_tls.as_deref(),
        &config.storage.path,
    );
    let pipeline = Pipeline::start(
        Arc::new(WriterContext {
            store: store.clone(),
            locations: locations.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            max_group_events: config.pipeline.max_group_events,
        }),
        config.pipeline.partitions,
        config.pipeline.queue_batches,
    )
    .with_context(|| {
        format!(
            "the store's watermarks for {} partitions (`pipeline.partitions`)",
            config.pipeline.partitions
        )
    })?;
    // Cluster mode (issue 15): connected before anything is served.
    let cluster_nats = if config.cluster.enabled() {
        let id = config.cluster.node_id();
        Some(crate::cluster::nats::Nats::connect(&config.cluster, &id).await?)
    } else {
        None
    };
    let ingest = Arc::new(IngestCore {
        front: cluster_nats.clone().map(crate::cluster::front::Front::new),
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
        shutdown: drain.token(Stage::Sessions),
        read_ahead: crate::ingest::ReadAhead::new(
            config.ingest.read_ahead_bytes.as_u64(),
            config.ingest.read_ahead_total_bytes.as_u64(),
        ),
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
        crate::access::Access::new(Arc::new(db), &config.access, admin_token.clone(), audit)
    };
    // Cluster mode: the accounts, API tokens and agent grants are the
    // cluster's, read before anything is served and followed from then on.
    if let Some(n) = &cluster_nats {
        use crate::cluster::control;
        let follow = control::join(
            control::Control::new(n.control.clone()),
            control::Mirrors {
                access: access.clone(),
                registry: registry.clone(),
                fleet: fleet.clone(),
            },
            drain.token(Stage::Background),
        )
        .await
        .context("cluster mode: the accounts, API tokens and agent grants")?;
        drain.spawn(Stage::Background, "cluster control", follow);
    }

    let backup = Arc::new(crate::backup::Sources {
        store: store.clone(),
        access: access.db.clone(),
        audit: access.audit.clone(),
        locations: locations.clone(),
        data_dir: config.storage.path.clone(),
        registry: config.registry_path(),
        admin_token: admin_token.path.clone(),
        staging: crate::backup::Sources::staging_for(&config.storage.path),
        busy: tokio::sync::Mutex::new(()),
    });

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

    // The CA other nodes' TLS is verified against, read before this node
    // joins (a bad file must not take partitions first).
    let peer_tls = match &config.cluster.peer_ca {
        Some(ca) if config.cluster.enabled() => Some(
            crate::cluster::peer::PeerTls::load(ca)
                .map_err(|e| anyhow::anyhow!("config `cluster.peer_ca`: {e}"))?,
        ),
        _ => None,
    };
    let cluster = match cluster_nats {
        Some(nats) => Some(
            start_cluster(
                config,
                nats,
                &bound,
                locations.clone(),
                metrics.clone(),
                drain,
            )
            .await?,
        ),
        None => None,
    };
    // Cluster mode: queries and Subscribe answered across the cluster's
    // partitions, and the cluster's gauges in /metrics.
    let cluster_query = match &cluster {
        Some(node) => {
            let view = node.clone() as Arc<dyn crate::cluster::view::ClusterView>;
            let peer_token = config.cluster.peer_token.clone().unwrap_or_default();
            let query = Arc::new(
                crate::cluster::query::ClusterQuery::new(view.clone(), peer_token)
                    .with_peer_tls(peer_tls)
                    .with_feed(crate::cluster::feed::Feed::new(node.nats().client.clone())),
            );
            let status = crate::cluster::status::spawn(
                view,
                Some(node.nats().js.clone()),
                metrics.clone(),
                query.own_status.clone(),
                drain.token(Stage::Background),
            );
            drain.spawn(Stage::Background, "cluster status", async move {
                let _ = status.await;
            });
            media.set_cluster(Arc::new(crate::cluster::media::ClusterMedia {
                nats: node.nats().clone(),
                query: query.clone(),
            }));
            // The dashboard: counts over every partition, and the live
            // feed from every partition's commits while someone watches.
            feed.set_cluster(query.clone(), drain.token(Stage::Background));
            let (watched, stop) = (feed.clone(), drain.token(Stage::Background));
            let out = crate::cluster::feed::Feed::new(node.nats().client.clone());
            drain.spawn(
                Stage::Background,
                "dashboard cluster feed",
                crate::cluster::feed::into_hub(out, dashboard_hub, move || watched.watched(), stop),
            );
            Some(query)
        }
        None => None,
    };

    let (http_tls, grpc_tls) = listener_tls(config)?;
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
        cluster: cluster_query.clone(),
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
        let close = drain.token(Stage::Sessions);
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
            .add_service(crate::api::subscribe_wire::QueryRoutes::new(query))
            .add_service(AdminServer::new(AdminService {
                locations: locations.clone(),
                registry: registry.clone(),
                fleet: fleet.clone(),
                access: access.clone(),
                backup: backup.clone(),
            }))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Own listener, so TCP_NODELAY is set by the accept loop (tonic
            // only does for its own): without it, Nagle + delayed ACK hold
            // acks and live events ~40 ms.
            .serve_with_incoming_shutdown(
                limits::grpc_incoming(
                    grpc_listener,
                    caps.grpc.clone(),
                    grpc_tls,
                    drain.token(Stage::Accept),
                ),
                async move { close.cancelled().await },
            )
    };
    drain.spawn(Stage::Sessions, "gRPC server", async move {
        if let Err(e) = grpc.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    let mut quic = None;
    if let (Some(tls), Some((tcp, udp))) = (&edge_tls, edge_sockets) {
        let close = drain.token(Stage::Sessions);
        let incoming = edge::tcp::incoming(
            tcp,
            tls.clone(),
            metrics.clone(),
            caps.edge.clone(),
            drain.token(Stage::Accept),
        );
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(2)))
            .http2_keepalive_timeout(Some(Duration::from_secs(6)))
            .max_concurrent_streams(GRPC_MAX_STREAMS)
            .add_service(ingest_service())
            .add_service(media_service())
            .serve_with_incoming_shutdown(incoming, async move { close.cancelled().await });
        drain.spawn(Stage::Sessions, "edge gRPC server", async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "edge gRPC server failed");
            }
        });
        quic = Some(edge::quic::serve(
            udp,
            &config.edge.quic_congestion,
            Arc::new(edge::quic::QuicEdge {
                tls: tls.clone(),
                ingest: ingest.clone(),
                media: media.clone(),
                metrics: metrics.clone(),
                max_message: max_msg,
            }),
            drain.token(Stage::Accept),
        )?);
        tracing::info!(edge = ?bound.edge, "edge link: gRPC over TLS (TCP) and QUIC (UDP), client certificates required");
    }
    let mut pages = dashboard::router(
        dashboard::backend::CoreBackend {
            store: store.clone(),
            locations: locations.clone(),
            fleet: fleet.clone(),
            cameras: feed.cameras.clone(),
            search: search.clone(),
            who: crate::access::Principal::admin_token(),
            csrf: None,
            audit: Some(access.audit.clone()),
            peer: None,
            cluster: cluster_query,
        },
        feed.clone(),
        &config.dashboard.site_root(),
    );
    if http_tls.is_none() && config.plaintext_exposed() {
        pages = pages.layer(axum::middleware::from_fn(plaintext_footer));
    }
    let app = http::router(HttpState {
        metrics: metrics.clone(),
        locations: locations.clone(),
        admin: admin_token.clone(),
        tls: http_tls.is_some(),
    })
    .merge(crate::media::http::router(media.clone()).layer(axum::Extension(access.audit.clone())))
    .merge(
        crate::cases::http::router(cases.clone())
            .layer(axum::middleware::map_request(crate::access::http::exporter))
            .layer(axum::Extension(access.audit.clone())),
    )
    .merge(pages);
    // Every route behind the session/token check (see access::http).
    let app = crate::access::http::layer(
        app,
        crate::access::http::HttpAccess {
            access: access.clone(),
            tls: http_tls.is_some(),
        },
    );
    drain.spawn(
        Stage::Sessions,
        "HTTP server",
        limits::serve_http(
            http_listener,
            app,
            caps.http.clone(),
            http_tls,
            drain.token(Stage::Accept),
            drain.token(Stage::Sessions),
        ),
    );
    drain.spawn(
        Stage::Background,
        "audit retention",
        crate::audit::retention_loop(
            access.audit.clone(),
            config.audit.retention,
            drain.token(Stage::Background),
        ),
    );
    drain.spawn(
        Stage::Background,
        "SIGHUP reload",
        sighup_reload(
            locations.clone(),
            registry.clone(),
            fleet.clone(),
            drain.token(Stage::Background),
        ),
    );
    drain.spawn(
        Stage::Background,
        "retention",
        retention(
            store.clone(),
            search.clone(),
            config.retention.clone(),
            drain.token(Stage::Background),
        ),
    );
    drain.spawn(
        Stage::Background,
        "completeness metrics",
        crate::completeness::refresh_metrics(
            store.clone(),
            fleet.clone(),
            metrics.clone(),
            drain.token(Stage::Background),
        ),
    );
    drain.spawn(
        Stage::Background,
        "media retention",
        media_retention(
            media.clone(),
            config.media.clone(),
            config.retention.clone(),
            drain.token(Stage::Background),
        ),
    );
    if let Some(to) = &config.export.to {
        let target = crate::export::Target::open("export.to", to, &config.export.options)?;
        let source = crate::export::Source {
            store: store.clone(),
            locations: locations.clone(),
            media_url: config.media.url.clone().unwrap_or_else(|| {
                let root = config
                    .media
                    .local_root(&config.storage.path)
                    .unwrap_or_default();
                format!(
                    "file://{}",
                    std::path::absolute(&root).unwrap_or(root).display()
                )
            }),
        };
        drain.spawn(
            Stage::Background,
            "Parquet export",
            crate::export::follow::run(
                source,
                target,
                config.export.clone(),
                metrics.clone(),
                drain.token(Stage::Background),
            ),
        );
    }
    Ok(Started {
        bound,
        ingest,
        fleet,
        quic,
        store,
        cluster,
    })
}

/// Cluster mode: joins the cluster as a node (announced with the bound
/// addresses) and keeps its partition leases until the background stage
/// of the drain.
async fn start_cluster(
    config: &CoreConfig,
    nats: crate::cluster::nats::Nats,
    bound: &Bound,
    locations: Arc<Locations>,
    metrics: Arc<Metrics>,
    drain: &mut Drain,
) -> anyhow::Result<Arc<crate::cluster::node::Node>> {
    use crate::cluster::{node::Node, owner::OwnerContext, view::NodeInfo};
    let c = &config.cluster;
    // A node that serves TLS is dialled over TLS: its addresses say so.
    let scheme = if config.server.tls_cert.is_some() {
        "https://"
    } else {
        ""
    };
    let info = NodeInfo {
        node_id: c.node_id(),
        grpc: format!(
            "{scheme}{}",
            c.advertise_grpc
                .clone()
                .unwrap_or_else(|| bound.grpc.to_string())
        ),
        http: format!(
            "{scheme}{}",
            c.advertise_http
                .clone()
                .unwrap_or_else(|| bound.http.to_string())
        ),
        edge: bound.edge.map(|a| a.to_string()),
        heartbeat_ms: sightline_proto::now_ms(),
    };
    let ctx = OwnerContext {
        nats: nats.clone(),
        storage: config.storage.path.clone(),
        locations,
        metrics,
        max_group_events: config.pipeline.max_group_events,
        queue_batches: config.pipeline.queue_batches,
        live_buffer: config.live.buffer_events,
        search_commit: config.search.commit_interval,
        cache_bytes: config.storage.cache.as_u64() as usize,
        checkpoints: c.checkpoints.clone(),
        checkpoint_interval: c.checkpoint_interval,
    };
    let stop = drain.token(Stage::Background);
    let node = Node::start(c, nats, info, ctx, stop.clone()).await?;
    drain.spawn(Stage::Background, "cluster node", node.clone().run(stop));
    Ok(node)
}

/// The TLS sides of the HTTP and query gRPC listeners (`server.tls_cert`),
/// or none; says at start how each is served.
fn listener_tls(
    config: &CoreConfig,
) -> anyhow::Result<(
    Option<tokio_rustls::TlsAcceptor>,
    Option<tokio_rustls::TlsAcceptor>,
)> {
    let s = &config.server;
    match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => {
            let http = limits::tls_acceptor(cert, key, &[b"h2", b"http/1.1"])?;
            let grpc = limits::tls_acceptor(cert, key, &[b"h2"])?;
            tracing::info!(cert = %cert.display(), "the dashboard (HTTP) and the query API (gRPC) are served over TLS");
            Ok((Some(http), Some(grpc)))
        }
        _ if config.plaintext_exposed() => {
            tracing::warn!(
                http = %s.http_listen,
                grpc = %s.grpc_listen,
                "INSECURE: the dashboard (HTTP) and the query API (gRPC) are served WITHOUT TLS on a non-loopback address (server.insecure_plaintext): anyone on the network can read them and the tokens sent to them"
            );
            Ok((None, None))
        }
        _ => {
            tracing::info!("the dashboard (HTTP) and the query API (gRPC) are served without TLS, on loopback only");
            Ok((None, None))
        }
    }
}

/// What every dashboard page says at its foot when it is served without TLS
/// on a non-loopback address (`server.insecure_plaintext`).
pub const PLAINTEXT_FOOTER: &str = "<footer class=\"transport-notice\" style=\"margin:2em 1em 1em;padding:.5em 1em;border:1px solid #c33;color:#c33;font-size:small\">\
This dashboard is served WITHOUT TLS on the network (server.insecure_plaintext): \
anyone on the way can read it. Set server.tls_cert and server.tls_key.</footer>";
/// The largest dashboard page the footer is added to (pages are far
/// smaller; a larger one is answered `500`, never cut).
const MAX_PAGE_BYTES: usize = 16 << 20;

/// Adds [`PLAINTEXT_FOOTER`] at the end of the body of every HTML page.
async fn plaintext_footer(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let res = next.run(req).await;
    let html = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !html {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PAGE_BYTES).await else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the page is larger than the plaintext footer may buffer",
        )
            .into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let page = match text.rfind("</body>") {
        Some(at) => format!("{}{PLAINTEXT_FOOTER}{}", &text[..at], &text[at..]),
        None => text.into_owned(),
    };
    parts.headers.remove(CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(page))
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
    fn new(config: &CoreConfig, metrics: &Arc<Metrics>, cut: &CancellationToken) -> Self {
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
        let conn = |name| ConnLimits {
            cut: cut.clone(),
            ..ConnLimits::new(name, c, per_listener, metrics.clone())
        };
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

/// Reloads Dataset B and the agent registry on each SIGHUP, until `shutdown`.
async fn sighup_reload(
    locations: Arc<Locations>,
    registry: Arc<Registry>,
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
) {
    let mut hup = crate::signal::Hangups::new();
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
}

/// Applies `retention.*` every `retention.interval`, until `shutdown`.
async fn retention(
    store: Arc<Store>,
    search: Arc<SearchIndex>,
    cfg: crate::config::RetentionConfig,
    shutdown: CancellationToken,
) {
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
}

/// Deletes footage past `media.retention` every `retention.interval`, until
/// `shutdown`.
async fn media_retention(
    media: Arc<MediaStore>,
    cfg: crate::config::MediaConfig,
    retention: crate::config::RetentionConfig,
    shutdown: CancellationToken,
) {
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
}

/// Wires the metrics that are read from elsewhere: the commit → searchable
/// hop, the live feed's and the search index's lag, the edge certificates'
/// expiry, the data directory's disk space and RocksDB's state (refreshed
/// at each scrape).
fn observe(
    metrics: &Arc<Metrics>,
    store: &Arc<Store>,
    hub: &LiveHub,
    search: &Arc<SearchIndex>,
    edge_tls: Option<&EdgeTls>,
    data_dir: &std::path::Path,
) {
    search.observe_hop(metrics.hop(crate::metrics::hop::COMMITTED_TO_SEARCHABLE));
    for (cert, at) in edge_tls.map(|t| t.expiry.clone()).unwrap_or_default() {
        metrics
            .cert_expiry
            .get_or_create(&crate::metrics::CertLabel { cert })
            .set(at);
    }
    let (hub, search, dir) = (hub.clone(), search.clone(), data_dir.to_path_buf());
    let engine = store.clone();
    // RocksDB's stall time restarts at 0 when the store is reopened after a
    // disk fault: the counter adds what it grew by since the last scrape.
    let stall_seen = std::sync::Mutex::new(0.0f64);
    // The same for each column family's table work: (bytes, CPU seconds).
    let work_seen =
        std::sync::Mutex::new(std::collections::HashMap::<&'static str, (u64, f64)>::new());
    metrics.on_scrape(move |m| {
        if let Ok(work) = engine.table_work() {
            let mut seen = work_seen.lock().unwrap_or_else(|p| p.into_inner());
            for (cf, w) in work {
                let (bytes, cpu) = seen
                    .insert(cf, (w.written_bytes, w.cpu_seconds))
                    .unwrap_or_default();
                let label = crate::metrics::CfLabel { cf };
                let g = &m.store;
                g.table_written_bytes
                    .get_or_create(&label)
                    .inc_by(grown_since(w.written_bytes, bytes));
                g.table_cpu_seconds
                    .get_or_create(&label)
                    .inc_by(grown_since(w.cpu_seconds, cpu));
            }
        }
        if let Ok(s) = engine.engine_stats() {
            let g = &m.store;
            g.write_stopped.set(s.write_stopped as i64);
            g.disk_fault.set(s.disk_fault as i64);
            let gauge = |v: u64| v.min(i64::MAX as u64) as i64;
            g.delayed_write_rate.set(gauge(s.delayed_write_rate));
            g.l0_files.set(gauge(s.l0_files_max));
            g.pending_compaction_bytes
                .set(gauge(s.pending_compaction_bytes));
            g.immutable_memtables.set(gauge(s.immutable_memtables));
            g.memtable_bytes.set(gauge(s.memtable_bytes));
            g.running_compactions.set(gauge(s.running_compactions));
            g.running_flushes.set(gauge(s.running_flushes));
            g.det_buffer_entries.set(gauge(s.det_buffer_entries));
            let mut seen = stall_seen.lock().unwrap_or_else(|p| p.into_inner());
            g.stall_seconds.inc_by(grown_since(s.stall_seconds, *seen));
            *seen = s.stall_seconds;
        }
        let now = sightline_proto::now_ms();
        m.live_feed_lag.set(hub.lag_ms(now) as f64 / 1000.0);
        m.live_held_events.set(hub.held_events() as i64);
        m.search_index_lag.set(search.lag_ms(now) as f64 / 1000.0);
        if let Ok(fs) = rustix::fs::statvfs(&dir) {
            let unit = fs.f_frsize.max(1);
            let bytes = |blocks: u64| blocks.saturating_mul(unit).min(i64::MAX as u64) as i64;
            m.disk_free_bytes.set(bytes(fs.f_bavail));
            m.disk_total_bytes.set(bytes(fs.f_blocks));
        }
    });
}

/// What a figure RocksDB keeps since the store was opened grew by since it
/// read `before`: all of it when it went down (the store was reopened and
/// counts from 0 again).
fn grown_since<T: PartialOrd + std::ops::Sub<Output = T>>(now: T, before: T) -> T {
    if now >= before {
        now - before
    } else {
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core on loopback, port 0 everywhere, in `dir`.
    fn config(dir: &std::path::Path) -> CoreConfig {
        let mut c = CoreConfig::default();
        c.storage.path = dir.join("core");
        c.storage.sync = false;
        c.search.path = Some(dir.join("search"));
        c.media.url = None;
        c.server.grpc_listen = "127.0.0.1:0".parse().unwrap();
        c.server.http_listen = "127.0.0.1:0".parse().unwrap();
        c.edge.plaintext = true;
        c.server.shutdown_grace = Duration::from_secs(10);
        c
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_waits_for_every_task_and_leaves_the_store_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let grace = cfg.server.shutdown_grace;
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let core = tokio::spawn(run(cfg.clone(), shutdown.clone(), move |b| {
            let _ = tx.send(b);
        }));
        let bound = rx.await.expect("the core starts");
        // A kept-alive HTTP connection and an idle gRPC connection are open
        // when the shutdown begins.
        let mut http = tokio::net::TcpStream::connect(bound.http).await.unwrap();
        http.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        http.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        let _grpc = tokio::net::TcpStream::connect(bound.grpc).await.unwrap();

        // The store is open: a second opening is refused (RocksDB's lock).
        assert!(Store::open(&cfg.storage.path, false, 1 << 20).is_err());

        let started = std::time::Instant::now();
        shutdown.cancel();
        tokio::time::timeout(grace, core)
            .await
            .expect("run returns within the grace period")
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        // Reopened at once: nothing holds the store any more.
        Store::open(&cfg.storage.path, false, 1 << 20).expect("the store was closed");
        // Nothing listens any more.
        assert!(tokio::net::TcpStream::connect(bound.grpc).await.is_err());
        assert!(tokio::net::TcpStream::connect(bound.http).await.is_err());
        assert!(took < grace, "shutdown took {took:?}");
    }
}
