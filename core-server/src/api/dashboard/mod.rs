//! The web dashboard (crate `sightline-web`), served by the core: pages
//! rendered here with Leptos and hydrated in the browser, the server
//! functions they call, the live feed (`GET /api/live`, server-sent events)
//! and the browser's code (`/pkg/*`, precompressed when `.gz` files exist).

pub mod backend;
pub mod feed;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, State},
    http::{header, HeaderValue, StatusCode},
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
    Extension, Router,
};
use leptos::prelude::{provide_context, use_context, LeptosOptions};
use leptos_axum::{generate_route_list, LeptosRoutes};
use sightline_web::{app, backend::SharedBackend};
use tokio_stream::{wrappers::BroadcastStream, Stream, StreamExt};
use tower_http::{services::ServeDir, set_header::SetResponseHeaderLayer};

pub use feed::LiveFeed;

use crate::access::{Credential, Principal, Role, Scope};
use backend::CoreBackend;

/// The name the browser's files are built under (`pkg/<name>.js`, `pkg/<name>_bg.wasm`).
pub const OUTPUT_NAME: &str = "sightline_web";

/// The dashboard's routes: pages, server functions, live feed, browser code.
pub fn router(backend: CoreBackend, feed: LiveFeed, site_root: &Path) -> Router {
    let js = site_root.join("pkg").join(format!("{OUTPUT_NAME}.js"));
    if !js.exists() {
        tracing::warn!(
            missing = %js.display(),
            "the dashboard's browser code is not built (deploy/build-web.sh): pages render but do not update by themselves"
        );
    }
    let options = LeptosOptions::builder()
        .output_name(OUTPUT_NAME)
        .site_root(site_root.display().to_string())
        .site_pkg_dir("pkg")
        .build();
    let routes = generate_route_list(app::App);
    let pages = {
        let shell_options = options.clone();
        Router::new()
            .leptos_routes_with_context(
                &options,
                routes,
                // Each request's backend reads as its principal (set by
                // access::http::authenticate); none: a principal that sees nothing.
                move || {
                    let parts = use_context::<axum::http::request::Parts>();
                    let csrf = parts.as_ref().and_then(|p| {
                        p.extensions
                            .get::<crate::access::Session>()
                            .map(|s| s.csrf.clone())
                    });
                    // Set by `api::limits::serve_http` on every request.
                    let peer = parts
                        .as_ref()
                        .and_then(|p| p.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0));
                    let who = parts
                        .and_then(|p| p.extensions.get::<Principal>().cloned())
                        .unwrap_or_else(|| Principal {
                            actor: "anonymous".into(),
                            role: Role::Viewer,
                            scope: Scope::locations([]),
                            credential: Credential::AdminToken,
                        });
                    let scoped: SharedBackend = Arc::new(CoreBackend {
                        who,
                        csrf,
                        peer,
                        ..backend.clone()
                    });
                    provide_context(scoped)
                },
                move || app::shell(shell_options.clone()),
            )
            .with_state(options)
    };
    let pkg = Router::new()
        .nest_service(
            "/pkg",
            ServeDir::new(site_root.join("pkg")).precompressed_gzip(),
        )
        // Not content-hashed: revalidate (ETag / Last-Modified answer 304).
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ));
    let live = Router::new().route("/api/live", get(live)).with_state(feed);
    pages.merge(pkg).merge(live)
}

/// `GET /api/live`: one [`sightline_web::model::LiveTick`] per tick as JSON,
/// limited to what the caller may see (its scope; no footage for a viewer);
/// `503` past `live.max_feeds` (or its per-client cap). The stream ends
/// when the caller's session ends.
async fn live(
    State(feed): State<LiveFeed>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    who: Option<Extension<Principal>>,
    session: Option<Extension<crate::access::Session>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, (StatusCode, String)> {
    let Some(Extension(who)) = who else {
        return Err((StatusCode::UNAUTHORIZED, "log in first\n".into()));
    };
    // Set by `api::limits::serve_http` on every request.
    let ip = client.map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip());
    // Subscribed before the scope is counted: no commit falls between the
    // two unseen; one counted and ticked again is corrected at the first
    // idle tick (see feed::TickView).
    let (rx, slot) = feed.subscribe(ip).map_err(|r| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many live feeds: {r}\n"),
        )
    })?;
    let stored = if who.scope.is_all() {
        0
    } else {
        scoped_count(&feed, &who.scope)
            .await
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e))?
    };
    let ended = session.map(|s| s.0.ended.clone());
    let view = feed::TickView {
        who,
        stored,
        unsure: true,
    };
    let ticks = futures::stream::unfold(
        (BroadcastStream::new(rx), view, slot, feed),
        |(mut rx, mut view, slot, feed)| async move {
            let t = loop {
                match rx.next().await? {
                    Ok(t) => break t,
                    // Behind: skips ticks; the next one has exact totals
                    // (a scoped count is read again when idle).
                    Err(_) => view.lagged(),
                }
            };
            if view.wants_recount(&t) {
                if let Ok(n) = scoped_count(&feed, &view.who.scope).await {
                    view.recounted(n);
                }
            }
            let event = Event::default().data(&*view.render(&t));
            Some((Ok(event), (rx, view, slot, feed)))
        },
    );
    let until = async move {
        match ended {
            Some(e) => e.cancelled_owned().await,
            None => std::future::pending().await,
        }
    };
    Ok(Sse::new(futures::StreamExt::take_until(ticks, until)).keep_alive(KeepAlive::default()))
}

/// The stored events of `scope`'s locations (this core's, or the cluster's).
async fn scoped_count(feed: &LiveFeed, scope: &Scope) -> Result<u64, String> {
    feed.scoped_stored(scope).await
}
