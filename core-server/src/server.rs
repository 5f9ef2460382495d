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
use tonic::transport::server::TcpIncoming;

use crate::{
    api::{
        dashboard,
        http::{self, HttpState},
        live::LiveHub,
        query::{AdminService, QueryService},
    },
    config::CoreConfig,
    dedup::{claims::Claims, Pipeline, WriterContext},
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
    let feed = dashboard::LiveFeed::start(&hub, store.clone(), shutdown.clone());
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
        hello_timeout: config.ingest.hello_timeout,
        shutdown: ingest_stop.clone(),
    });

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
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        http: http_listener.local_addr()?,
    };

    let max_msg = config.ingest.max_message_bytes.as_u64() as usize;
    let query = QueryService {
        search: search.clone(),
        store: store.clone(),
        locations: locations.clone(),
        fleet: fleet.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sightline_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sightline_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let grpc_stop = CancellationToken::new();
    let grpc = {
        let stop = grpc_stop.clone();
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(5)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(
                IngestServer::new(IngestService {
                    core: ingest.clone(),
                })
                .max_decoding_message_size(max_msg),
            )
            .add_service(
                // Chunks are at most 1 MiB; the same message limit as ingest.
                MediaServer::new(MediaService {
                    media: media.clone(),
                })
                .max_decoding_message_size(max_msg),
            )
            .add_service(QueryServer::new(query).max_encoding_message_size(64 * 1024 * 1024))
            .add_service(AdminServer::new(AdminService {
                locations: locations.clone(),
            }))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // Own listener, so set TCP_NODELAY here (tonic only does for its own):
            // without it, Nagle + delayed ACK hold acks and live events ~40 ms.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move { stop.cancelled().await },
            )
    };
    let grpc_task = tokio::spawn(grpc);
    let http_stop = CancellationToken::new();
    let http_task = {
        let stop = http_stop.clone();
        let app = http::router(HttpState {
            metrics: metrics.clone(),
            locations: locations.clone(),
        })
        .merge(crate::media::http::router(media.clone()))
        .merge(dashboard::router(
            Arc::new(dashboard::backend::CoreBackend {
                store: store.clone(),
                locations: locations.clone(),
                fleet: fleet.clone(),
                cameras: feed.cameras.clone(),
                search: search.clone(),
            }),
            feed.clone(),
            &config.dashboard.site_root(),
        ));
        tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    spawn_sighup_reload(locations.clone(), shutdown.clone());
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
    tracing::info!(grpc = %bound.grpc, http = %bound.http, "core ready");
    on_ready(bound);

    shutdown.cancelled().await;
    tracing::info!("shutting down: no new batches; finishing the commits in flight");
    ingest_stop.cancel();
    fleet.close_all();
    grpc_stop.cancel();
    http_stop.cancel();
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

fn spawn_sighup_reload(locations: Arc<Locations>, shutdown: CancellationToken) {
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
                        Ok(Ok(())) => search.apply_retention(e),
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
