//! Footage over HTTP: `GET`/`HEAD /media/{sha256}` with single byte ranges
//! (what a browser's `<video>` asks for), and `GET /media-quarantine`.
//!
//! - 400 for a malformed sha256, 404 for an unknown (or expired) one.
//! - `Range: bytes=a-b | a- | -n` → 206 with `Content-Range: bytes a-b/total`;
//!   a range that starts past the end → 416 with `Content-Range: bytes */total`;
//!   no (or an unparsable, or a multi-) range → 200 with the whole object.
//! - Objects never change (content-addressed): `ETag: "<sha256>"`,
//!   `Cache-Control: private, max-age=31536000, immutable` (footage is behind
//!   a login: no shared cache keeps it), and `If-None-Match` → 304.
//! - Access: the caller is an investigator (checked by `access::http`); a
//!   caller scoped to some locations names the event the footage belongs to
//!   (`?event=<det_oid>`), and that event must be in its scope and carry
//!   this object — otherwise 403.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Extension, Json, Router,
};
use object_store::{GetOptions, GetRange, ObjectStore as _};
use serde::Deserialize;

use sightline_proto::ApiError;

use super::{object_key, valid_sha, Kind, MediaError, MediaStore};
use crate::access::Principal;

pub fn router(media: Arc<MediaStore>) -> Router {
    Router::new()
        .route("/media/{sha256}", get(serve))
        .route("/media-quarantine", get(quarantine))
        .with_state(media)
}

/// What a `Range` header asks of an object of `total` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: the whole object.
    Whole,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// Nothing of the object is in the range.
    Unsatisfiable,
}

/// Parses a single `bytes=` range against `total` (> 0) bytes.
pub fn parse_range(value: &str, total: u64) -> RangeAsk {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // bytes=-n: the last n bytes.
        (true, _, Some(0)) => RangeAsk::Unsatisfiable,
        (true, _, Some(n)) => RangeAsk::Part {
            start: total.saturating_sub(n),
            end: total - 1,
        },
        (false, Some(start), None) if b.trim().is_empty() => {
            if start >= total {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start,
                    end: total - 1,
                }
            }
        }
        (false, Some(start), Some(end)) if start <= end => {
            if start >= total {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part {
                    start,
                    end: end.min(total - 1),
                }
            }
        }
        _ => RangeAsk::Whole,
    }
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, format!("{msg}\n")).into_response()
}

#[derive(Debug, Deserialize)]
struct MediaQuery {
    /// The det_oid of the event the footage is asked for with.
    event: Option<i64>,
}

/// Whether `who` may see object `sha` (asked for with `event`): any object
/// for an unscoped caller; for a scoped one, only through an event in its
/// scope that carries the object.
async fn may_see(
    media: &MediaStore,
    who: Option<&Principal>,
    sha: &str,
    event: Option<i64>,
) -> Result<(), ApiError> {
    let Some(who) = who else {
        return Err(ApiError::unauthenticated(
            "footage needs a login or a token",
        ));
    };
    if who.scope.is_all() {
        return Ok(());
    }
    let Some(det_oid) = event else {
        return Err(ApiError::permission_denied(format!(
            "{} is scoped to {}: ask for footage with its event (`?event=<det_oid>`)",
            who.actor, who.scope
        )));
    };
    let refused = move || {
        ApiError::permission_denied(format!(
            "event {det_oid} is not in your scope or does not carry this footage"
        ))
    };
    if let Some(cluster) = media.cluster() {
        // The event and its media live with its partition's owner.
        let ev = cluster
            .event(&who.scope, det_oid)
            .await?
            .ok_or_else(refused)?;
        return if ev.media.iter().any(|m| m.sha256 == sha) {
            Ok(())
        } else {
            Err(refused())
        };
    }
    let store = media.store.clone();
    let sha = sha.to_string();
    let scope = who.scope.clone();
    tokio::task::spawn_blocking(move || {
        let ev = store
            .get_event(det_oid)
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .ok_or_else(refused)?;
        let d = ev.detection.as_ref().ok_or_else(refused)?;
        if !scope.allows(d.geographical_location_oid) {
            return Err(refused());
        }
        let refs = store
            .media_of(det_oid, &ev.agent_id)
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if refs.iter().any(|m| m.sha256 == sha) {
            Ok(())
        } else {
            Err(refused())
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

async fn serve(
    State(media): State<Arc<MediaStore>>,
    Path(sha): Path<String>,
    Query(q): Query<MediaQuery>,
    who: Option<Extension<Principal>>,
    audit: Option<Extension<crate::audit::AuditLog>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if !valid_sha(&sha) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{sha:?} is not a sha256 (64 lowercase hex digits)"),
        );
    }
    if let Err(e) = may_see(&media, who.as_ref().map(|w| &w.0), &sha, q.event).await {
        if let Some(w) = &who {
            tracing::info!(actor = %w.actor, %sha, event = ?q.event, reason = %e, "footage refused");
            if let Some(Extension(a)) = &audit {
                let _ = a
                    .record(
                        w.entry(crate::audit::Action::AccessRefused)
                            .object(sha.clone())
                            .detail(serde_json::json!({ "event": q.event, "reason": e.message }))
                            .denied(),
                    )
                    .await;
            }
        }
        return error(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN),
            e.message,
        );
    }
    let row = match media.find(&sha).await {
        Ok(Some(r)) => r,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no media {sha}")),
        Err(e) => return error(e.http_status(), e.to_string()),
    };
    let Some(kind) = Kind::parse(&row.kind) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("media {sha} has an unknown kind"),
        );
    };
    // Writing the audit record is part of serving the footage: no record,
    // no footage. Range requests of one playback are recorded once.
    if let (Some(Extension(w)), Some(Extension(a))) = (&who, &audit) {
        let action = match kind {
            Kind::Clip => crate::audit::Action::ClipViewed,
            _ => crate::audit::Action::SnapshotViewed,
        };
        let key = match &w.credential {
            crate::access::Credential::Session(s) => s.clone(),
            crate::access::Credential::Token(t) => t.clone(),
            crate::access::Credential::AdminToken => "admin-token".into(),
        };
        let entry = w
            .entry(action)
            .object(sha.clone())
            .detail(serde_json::json!({ "event": q.event }));
        if let Err(e) = a.footage_viewed(&key, entry).await {
            let e = ApiError::from(e);
            tracing::error!(reason = %e, "footage refused: the audit log cannot be written");
            return error(StatusCode::SERVICE_UNAVAILABLE, e.message);
        }
    }
    let etag = format!("\"{sha}\"");
    let total = row.size;
    let base = || {
        Response::builder()
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::ETAG, &etag)
            .header(
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            )
    };
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t == etag || t.strip_prefix("W/") == Some(&etag)
        }) {
            return base()
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .expect("valid response");
        }
    }
    let ask = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(RangeAsk::Whole, |v| parse_range(v, total));
    let (status, start, end) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, total - 1),
        RangeAsk::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeAsk::Unsatisfiable => {
            return base()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{total}"))
                .body(Body::empty())
                .expect("valid response");
        }
    };
    let mut resp = base()
        .status(status)
        .header(header::CONTENT_TYPE, &row.content_type)
        .header(header::CONTENT_LENGTH, end - start + 1);
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{total}"),
        );
    }
    if method == Method::HEAD {
        return resp.body(Body::empty()).expect("valid response");
    }
    let opts = GetOptions {
        range: Some(GetRange::Bounded(start..end + 1)),
        ..Default::default()
    };
    match media.objects.get_opts(&object_key(kind, &sha), opts).await {
        Ok(got) => resp
            .body(Body::from_stream(got.into_stream()))
            .expect("valid response"),
        Err(e) => {
            let e = MediaError::from(e);
            error(e.http_status(), e.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
struct QuarantineQuery {
    limit: Option<usize>,
}

/// `GET /media-quarantine[?limit=n]`: refused uploads, newest first (at
/// most 1000 unless `limit` says otherwise, at most 10000).
async fn quarantine(
    State(media): State<Arc<MediaStore>>,
    Query(q): Query<QuarantineQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let store = media.store.clone();
    match tokio::task::spawn_blocking(move || store.list_media_quarantine(limit)).await {
        Ok(Ok(entries)) => Json(serde_json::json!({
            "count": entries.len(),
            "entries": entries,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        use RangeAsk::*;
        let p = |v| parse_range(v, 100);
        assert_eq!(p("bytes=0-9"), Part { start: 0, end: 9 });
        assert_eq!(p("bytes=90-200"), Part { start: 90, end: 99 });
        assert_eq!(p("bytes=95-"), Part { start: 95, end: 99 });
        assert_eq!(p("bytes=-10"), Part { start: 90, end: 99 });
        assert_eq!(p("bytes=-500"), Part { start: 0, end: 99 });
        assert_eq!(p("bytes=100-"), Unsatisfiable);
        assert_eq!(p("bytes=100-150"), Unsatisfiable);
        assert_eq!(p("bytes=-0"), Unsatisfiable);
        assert_eq!(p("bytes=9-3"), Whole);
        assert_eq!(p("bytes=0-1,5-6"), Whole);
        assert_eq!(p("items=0-1"), Whole);
        assert_eq!(p("bytes=a-b"), Whole);
        assert_eq!(p("bytes=+1-2"), Whole);
    }
}
