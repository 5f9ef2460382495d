//! The metrics endpoint's HTTP/1.1 server: `GET /metrics` and `GET /healthz`,
//! within the same kind of bounds as the core's HTTP listener (a deadline for
//! a request's headers, a cap on open connections, a bounded connection life).

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use super::Scrape;

/// Most connections open at once; one over it is closed at once. Prometheus
/// keeps one; a few more leave room for a person with curl.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send a request's headers (and, between
/// requests on a kept-alive connection, the next one's).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection; a scraper reconnects.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

fn router(scrape: Arc<Scrape>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(scrape)
}

async fn metrics(State(s): State<Arc<Scrape>>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || s.encode()).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{e}\n"),
        ),
    }
}

async fn healthz(State(s): State<Arc<Scrape>>) -> impl IntoResponse {
    match s.health() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Serves the endpoint on `listener` until `stop`; then asks each open
/// connection to finish its request and returns.
pub async fn serve(listener: TcpListener, scrape: Arc<Scrape>, stop: CancellationToken) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::conn::auto::Builder,
        service::TowerToHyperService,
    };

    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    let app = router(scrape);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (io, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, cap = MAX_CONNECTIONS, "metrics endpoint: connection over the cap closed");
            drop(io);
            continue;
        };
        let (builder, stop, svc) = (builder.clone(), stop.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
                }
            }
        });
    }
}
