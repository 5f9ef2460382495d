//! Credentials on the HTTP port: the dashboard's login page and session
//! cookie, `Authorization: Bearer` for integrators, and the checks every
//! request passes before a handler runs ([`authenticate`]).
//!
//! - Open without a credential: `/login`, `/healthz`, `/metrics` and the
//!   browser's code under `/pkg/`. Everything else needs a session or a token:
//!   a page asked for by a browser is redirected to `/login`, anything else
//!   answers 401 naming what is missing.
//! - The session cookie is `HttpOnly`, `SameSite=Strict`, `Secure` when the
//!   port serves TLS, and lives no longer than `access.session_absolute`.
//! - Cross-site request forgery: a state-changing request (any method but
//!   GET, HEAD, OPTIONS) is refused (403) when the browser says it comes
//!   from another site (`Sec-Fetch-Site`, or an `Origin` whose host is not
//!   this one), and a cookie-authenticated one must carry either a matching
//!   `Origin` or the session's CSRF token (`x-csrf-token` header or a
//!   `csrf` form field checked by the handler). `SameSite=Strict` keeps the
//!   cookie off cross-site requests in the first place.
//! - Coarse role checks by path: footage (`/media/…`) needs investigator;
//!   the fleet and quarantine pages and their data, `/media-quarantine`,
//!   `/admin/…` (the audit page) and the audit page's server functions
//!   (`/api/get_audit…`) need admin. Scopes are applied by the handlers.
//! - Every refusal is recorded in the audit log (`access_refused`, outcome
//!   `denied`, with the path and the reason): a role too low, a bad token,
//!   no credential (the 401; a browser sent to the login form is not a
//!   refusal), a cross-site request. Refusals of anonymous requests are
//!   coalesced per source address and minute ([`crate::audit::refusals`]).

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::{get, post},
    Form, Router,
};
use serde::Deserialize;
use sightline_proto::{ApiError, Code};

use super::{Access, Principal, Role, Session};
use crate::audit::{Action, Actor, Entry};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sightline_session";
/// Longest `next` path a login carries back.
const MAX_NEXT_BYTES: usize = 512;

/// What the HTTP layer needs to authenticate.
#[derive(Clone)]
pub struct HttpAccess {
    pub access: Access,
    /// The port serves TLS: cookies are `Secure`.
    pub tls: bool,
}

fn refuse(e: &ApiError) -> Response {
    (
        StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", e.message),
    )
        .into_response()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Origin`'s host[:port] equals `Host`.
fn same_origin(headers: &HeaderMap) -> Option<bool> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    if origin == "null" {
        return Some(false);
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok())?;
    let o = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    Some(o.trim_end_matches('/').eq_ignore_ascii_case(host))
}

/// The cross-site checks for a state-changing request (see the module doc).
fn csrf_check(headers: &HeaderMap, session: Option<&Session>) -> Result<(), ApiError> {
    let forged = || ApiError::permission_denied("cross-site request refused (CSRF protection)");
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site == "cross-site" || site == "same-site" {
            return Err(forged());
        }
    }
    match same_origin(headers) {
        Some(false) => Err(forged()),
        Some(true) => Ok(()),
        None => match session {
            // No Origin (an old browser, a script): the session's CSRF
            // token must come along.
            Some(s) => {
                let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
                if given == Some(s.csrf.as_str()) {
                    Ok(())
                } else {
                    Err(ApiError::permission_denied(
                        "a state-changing request needs an Origin header or the session's x-csrf-token",
                    ))
                }
            }
            None => Ok(()),
        },
    }
}

fn public(path: &str) -> bool {
    matches!(path, "/login" | "/healthz" | "/metrics") || path.starts_with("/pkg/")
}

/// The role a path needs before its handler runs.
fn role_for(path: &str) -> Role {
    if path.starts_with("/admin/")
        || path == "/media-quarantine"
        || path == "/fleet"
        || path == "/quarantine"
        || path.starts_with("/api/get_fleet")
        || path.starts_with("/api/get_cluster")
        || path.starts_with("/api/get_quarantine")
        || path.starts_with("/api/get_audit")
    {
        Role::Admin
    } else if path.starts_with("/media/") || path == "/api/cases" {
        Role::Investigator
    } else {
        Role::Viewer
    }
}

fn wants_html(req: &Request) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// The middleware: resolves the principal (a bearer token, else the
/// session cookie), checks CSRF and the path's role, and hands the
/// [`Principal`] (and the [`Session`], if any) to the handler as extensions.
pub async fn authenticate(State(h): State<HttpAccess>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let session = match &bearer {
        Some(_) => None,
        None => cookie(req.headers(), SESSION_COOKIE)
            .and_then(|id| h.access.sessions.get(&id, sightline_proto::now_ms())),
    };
    if !is_safe(req.method()) && bearer.is_none() {
        if let Err(e) = csrf_check(req.headers(), session.as_ref()) {
            tracing::warn!(%path, reason = %e, "request refused");
            let who = session
                .as_ref()
                .map_or(Actor::Anonymous, |s| s.principal().audit_actor());
            let detail = serde_json::json!({ "path": path, "method": req.method().as_str(), "reason": e.message });
            refused(
                &h,
                Entry::new(who, Action::AccessRefused)
                    .from(peer)
                    .detail(detail),
            )
            .await;
            return refuse(&e);
        }
    }
    if public(&path) {
        return next.run(req).await;
    }
    let principal: Principal = match (&bearer, &session) {
        (Some(b), _) => match h.access.bearer(Some(b)) {
            Ok(p) => p,
            Err(e) => {
                let detail = serde_json::json!({ "path": path, "reason": e.message });
                refused(
                    &h,
                    Entry::new(Actor::Anonymous, Action::AccessRefused)
                        .from(peer)
                        .detail(detail),
                )
                .await;
                return refuse(&e);
            }
        },
        (None, Some(s)) => s.principal(),
        (None, None) => {
            if wants_html(&req) {
                let next_path = req
                    .uri()
                    .path_and_query()
                    .map_or("/".to_string(), |p| p.as_str().to_string());
                let to = format!("/login?next={}", urlencode(&next_path));
                return Response::builder()
                    .status(StatusCode::SEE_OTHER)
                    .header(header::LOCATION, to)
                    .body(Body::empty())
                    .expect("valid response");
            }
            // A browser sent to the login form above is not recorded (it is
            // how every session starts); this answer is.
            let e = ApiError::unauthenticated(
                "log in (a session cookie from /login) or send `Authorization: Bearer <token>`",
            );
            let detail = serde_json::json!({ "path": path, "reason": e.message });
            refused(
                &h,
                Entry::new(Actor::Anonymous, Action::AccessRefused)
                    .from(peer)
                    .detail(detail),
            )
            .await;
            return refuse(&e);
        }
    };
    let need = role_for(&path);
    if let Err(e) = principal.require(need, &path) {
        tracing::info!(actor = %principal.actor, %path, "access refused: role");
        let detail = serde_json::json!({ "path": path, "reason": e.message });
        refused(
            &h,
            principal
                .entry(Action::AccessRefused)
                .from(peer)
                .detail(detail),
        )
        .await;
        return refuse(&e);
    }
    req.extensions_mut().insert(principal);
    if let Some(s) = session {
        req.extensions_mut().insert(s);
    }
    next.run(req).await
}

/// Records a refusal (outcome `denied`) before it is answered: always for a
/// principal, coalesced per source address and minute for an anonymous
/// request ([`crate::audit::refusals`]), so a flood without credentials
/// cannot grow the log without bound. The request is refused whether or not
/// the record could be written.
async fn refused(h: &HttpAccess, entry: Entry) {
    if let Err(e) = h.access.audit.refused(entry.denied()).await {
        tracing::warn!(error = %e, "audit: a refusal could not be recorded");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Only a local path (`/…`, not `//host`) is followed after a login.
fn safe_next(next: &str) -> &str {
    if next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= MAX_NEXT_BYTES
        && !next.starts_with("/login")
    {
        next
    } else {
        "/"
    }
}

fn login_page(status: StatusCode, message: Option<&str>, next: &str) -> Response {
    let msg = message
        .map(|m| format!(r#"<p class="error" role="alert">{}</p>"#, escape(m)))
        .unwrap_or_default();
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sightline — log in</title><link rel="icon" href="data:,">
<style>{css}
.login{{max-width:22rem;margin:4rem auto;display:flex;flex-direction:column;gap:.6rem}}
.login input{{padding:.4rem}}</style></head>
<body><main><form class="login" method="post" action="/login">
<h1>Sightline</h1>{msg}
<label>Name <input name="name" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">Log in</button>
</form></main></body></html>"#,
        css = sightline_web::style::CSS,
        next = escape(next),
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(axum::extract::Query(q): axum::extract::Query<NextQuery>) -> Response {
    login_page(
        StatusCode::OK,
        None,
        safe_next(q.next.as_deref().unwrap_or("/")),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

fn client_ip(req_ext: Option<&ConnectInfo<SocketAddr>>) -> std::net::IpAddr {
    req_ext.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

async fn login(
    State(h): State<HttpAccess>,
    client: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // A form without its fields (or not a form) gets the login page back,
    // saying what is missing, like any other failed login.
    let Ok(Form(f)) = form else {
        return login_page(
            StatusCode::BAD_REQUEST,
            Some("field `name` and field `password`: required (an urlencoded form)"),
            "/",
        );
    };
    let ip = client_ip(client.as_ref().map(|c| &c.0));
    let next = safe_next(&f.next).to_string();
    let sessions = &h.access.sessions;
    if let Err(e) = sessions.check_lockout(&f.name, ip) {
        tracing::warn!(user = %f.name, %ip, reason = %e, "login refused: locked out");
        // Anonymous: a locked-out address that keeps trying is coalesced.
        refused(
            &h,
            Entry::new(Actor::Anonymous, Action::LoginFailed)
                .from(client.as_ref().map(|c| c.0 .0))
                .detail(serde_json::json!({ "name": f.name.chars().take(64).collect::<String>(), "reason": e.message })),
        )
        .await;
        return login_page(StatusCode::TOO_MANY_REQUESTS, Some(&e.message), &next);
    }
    let db = h.access.db.clone();
    let (name, password) = (f.name.clone(), f.password);
    let outcome = tokio::task::spawn_blocking(move || db.login(&name, &password))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e.to_string())));
    match outcome {
        Ok(user) => {
            sessions.succeeded(&user.name);
            let s = sessions.start(
                &user.name,
                user.role,
                user.scope.clone(),
                ip,
                sightline_proto::now_ms(),
            );
            tracing::info!(user = %user.name, role = %user.role, %ip, session = %s.handle(), "login");
            let entry = Entry::new(Actor::User(user.name.clone()), Action::LoginSucceeded)
                .from(client.as_ref().map(|c| c.0 .0))
                .detail(serde_json::json!({ "session": s.handle(), "role": user.role }));
            if let Err(e) = h.access.audit.record(entry).await {
                // A login that cannot be recorded does not happen.
                sessions.end(&s.id);
                let e = ApiError::from(e);
                return login_page(StatusCode::SERVICE_UNAVAILABLE, Some(&e.message), &next);
            }
            let max_age = sessions.config().session_absolute.as_secs();
            let secure = if h.tls { "; Secure" } else { "" };
            Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, next)
                .header(
                    header::SET_COOKIE,
                    format!(
                        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
                        s.id
                    ),
                )
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::empty())
                .expect("valid response")
        }
        Err(e) if e.code == Code::Unauthenticated || e.code == Code::PermissionDenied => {
            let delay = sessions.failed(&f.name, ip);
            tracing::warn!(user = %f.name, %ip, reason = %e, "login failed");
            let who = if crate::access::accounts::validate_name("name", &f.name).is_ok() {
                Actor::User(f.name.clone())
            } else {
                Actor::Anonymous
            };
            let _ = h
                .access
                .audit
                .record(
                    Entry::new(who, Action::LoginFailed)
                        .from(client.as_ref().map(|c| c.0 .0))
                        .detail(serde_json::json!({ "reason": e.message }))
                        .denied(),
                )
                .await;
            tokio::time::sleep(delay.min(Duration::from_secs(2))).await;
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            login_page(status, Some(&e.message), &next)
        }
        Err(e) => {
            tracing::error!(reason = %e, "login could not be checked");
            login_page(StatusCode::SERVICE_UNAVAILABLE, Some(&e.message), &next)
        }
    }
}

async fn logout(State(h): State<HttpAccess>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        if let Some(s) = h.access.sessions.end(&id) {
            tracing::info!(user = %s.user, session = %s.handle(), "logout");
            let _ = h
                .access
                .audit
                .record(
                    Entry::new(Actor::User(s.user.clone()), Action::Logout)
                        .detail(serde_json::json!({ "session": s.handle() })),
                )
                .await;
        }
    }
    let secure = if h.tls { "; Secure" } else { "" };
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/login")
        .header(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
        )
        .body(Body::empty())
        .expect("valid response")
}

/// Hands the case export its exporter: the principal's name and scope.
pub async fn exporter(mut req: Request) -> Request {
    if let Some(p) = req.extensions().get::<Principal>().cloned() {
        req.extensions_mut().insert(crate::cases::http::Exporter {
            name: p.actor,
            locations: p.scope.locations,
        });
    }
    req
}

/// Who is logged in, for the dashboard's header.
async fn whoami(
    p: Option<axum::Extension<Principal>>,
    s: Option<axum::Extension<Session>>,
) -> Response {
    let Some(axum::Extension(p)) = p else {
        return refuse(&ApiError::unauthenticated("not logged in"));
    };
    axum::Json(serde_json::json!({
        "actor": p.actor,
        "role": p.role,
        "locations": p.scope.to_list(),
        "csrf": s.map(|s| s.0.csrf),
    }))
    .into_response()
}

/// `/login` (GET: the form, POST: the check), `POST /logout`, `GET /api/whoami`.
pub fn router(h: HttpAccess) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/api/whoami", get(whoami))
        .with_state(h)
}

/// Wraps the whole HTTP router with [`authenticate`].
pub fn layer(app: Router, h: HttpAccess) -> Router {
    app.merge(router(h.clone()))
        .layer(axum::middleware::from_fn_with_state(h, authenticate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next("/top?range=1h"), "/top?range=1h");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil.example"), "/");
    }

    #[test]
    fn a_cross_site_post_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "core.example:8080".parse().unwrap());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(csrf_check(&h, None).is_err());
        h.insert(header::ORIGIN, "https://core.example:8080".parse().unwrap());
        assert!(csrf_check(&h, None).is_ok());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(csrf_check(&h, None).is_err());
    }

    #[test]
    fn footage_needs_an_investigator_and_the_fleet_an_admin() {
        assert_eq!(role_for("/media/abc"), Role::Investigator);
        assert_eq!(role_for("/fleet"), Role::Admin);
        assert_eq!(role_for("/api/get_fleet123"), Role::Admin);
        assert_eq!(role_for("/admin/audit"), Role::Admin);
        assert_eq!(role_for("/top"), Role::Viewer);
    }

    #[test]
    fn the_audit_page_and_its_server_functions_need_an_admin() {
        for path in [
            "/admin/audit",
            "/api/get_audit",
            "/api/get_audit12345",
            "/api/get_audit_actions",
            "/api/get_audit_actions678",
        ] {
            assert_eq!(role_for(path), Role::Admin, "{path}");
        }
    }
}
