//! HTTP endpoints: `GET /metrics` (Prometheus text), `GET /healthz`, and
//! `POST /admin/reload-locations` (reload Dataset B; the admin token).

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Router,
};

use crate::{api::admin_token::AdminToken, enrich::Locations, metrics::Metrics};

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub locations: Arc<Locations>,
    pub admin: Arc<AdminToken>,
    /// Whether this port serves TLS (`server.tls_cert`): cookies may then be
    /// `Secure`.
    pub tls: bool,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/admin/reload-locations", post(reload))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn reload(State(s): State<HttpState>, headers: HeaderMap) -> impl IntoResponse {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(why) = s.admin.check(auth) {
        return (StatusCode::UNAUTHORIZED, format!("{why}\n"));
    }
    let locations = s.locations.clone();
    match tokio::task::spawn_blocking(move || locations.reload(None)).await {
        Ok(Ok((rows, path))) => (
            StatusCode::OK,
            format!("loaded {rows} locations from {path}\n"),
        ),
        Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
