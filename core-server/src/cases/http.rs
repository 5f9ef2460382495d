//! `POST /api/cases`: export a case, answered as a zip download.
//!
//! Body (JSON): `{"det_oids": [..], "reason": "..."}`. The exporter is the
//! [`Exporter`] request extension the access layer puts on an
//! authenticated request (who, and the locations they may see); without
//! one the answer is 401, so the route is safe to mount only behind it.
//!
//! - 200 `application/zip`, `Content-Disposition: attachment;
//!   filename="<case_id>.zip"`, `X-Sightline-Case-Id`,
//!   `X-Sightline-Manifest-Sha256`: the zip, streamed from the staging file
//!   (already unlinked: nothing is left behind when the download breaks).
//! - Refusals in the one error vocabulary (400 a field out of bounds or a
//!   missing reason, 404 naming det_oids not stored or without footage, 413
//!   too much footage, 429 too many exports at once), as text.

use std::{collections::BTreeSet, sync::Arc};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Extension, Json, Router,
};
use serde::Deserialize;
use sightline_proto::{ApiError, Code};

use super::{CaseRequest, CaseSummary, Cases};

/// Who is exporting, as the access layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exporter {
    /// The name recorded in the manifest (`exported_by`).
    pub name: String,
    /// The locations they may see; `None`: every location.
    pub locations: Option<BTreeSet<i64>>,
}

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseBody {
    pub det_oids: Vec<i64>,
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/cases` alone, for the access layer to mount behind its checks.
pub fn router(cases: Arc<Cases>) -> Router {
    Router::new()
        .route("/api/cases", post(export))
        .with_state(cases)
}

/// The handler: mountable on any router whose state gives an `Arc<Cases>`.
pub async fn export(
    State(cases): State<Arc<Cases>>,
    exporter: Option<Extension<Exporter>>,
    audit: Option<Extension<crate::audit::AuditLog>>,
    body: Result<Json<CaseBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(Extension(who)) = exporter else {
        return refusal(&ApiError::new(
            Code::Unauthenticated,
            "a case export needs a signed-in investigator",
        ));
    };
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return refusal(&ApiError::field("body", e.body_text()));
        }
    };
    let req = CaseRequest {
        det_oids: body.det_oids,
        reason: body.reason,
        exported_by: who.name,
        now_ms: sightline_proto::now_ms(),
        locations: who.locations,
    };
    match cases.export_zip(&req).await {
        Ok((summary, path)) => {
            // The export is recorded before it is handed over.
            if let Some(Extension(a)) = &audit {
                let actor = summary
                    .exported_by
                    .parse()
                    .unwrap_or(crate::audit::Actor::Anonymous);
                let entry = crate::audit::Entry::new(actor, crate::audit::Action::CaseExported)
                    .detail(serde_json::json!({
                        "case_id": summary.case_id,
                        "det_oids": summary.det_oids,
                        "reason": summary.reason,
                        "manifest_sha256": summary.manifest_sha256,
                        "files": summary.files,
                    }));
                if let Err(e) = a.record(entry).await {
                    return refusal(&ApiError::from(e));
                }
            }
            match download(&summary, &path).await {
                Ok(r) => r,
                Err(e) => refusal(&ApiError::internal(format!("reading the case zip: {e}"))),
            }
        }
        Err(e) => refusal(&e),
    }
}

/// The zip at `path` as the download response (the caller drops `path`
/// after this returns: the open handle keeps streaming it). A layer that
/// must record the export before answering (the audit log) calls
/// [`Cases::export_zip`], writes its record, then this.
pub async fn download(summary: &CaseSummary, path: &std::path::Path) -> std::io::Result<Response> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let stream = futures::stream::unfold(file, |mut f| async move {
        let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
        match f.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok::<_, std::io::Error>(buf.freeze()), f)),
            Err(e) => Some((Err(e), f)),
        }
    });
    let disposition = format!("attachment; filename=\"{}.zip\"", summary.case_id);
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    for (name, value) in [
        (header::CONTENT_DISPOSITION, disposition.as_str()),
        (
            header::HeaderName::from_static("x-sightline-case-id"),
            summary.case_id.as_str(),
        ),
        (
            header::HeaderName::from_static("x-sightline-manifest-sha256"),
            summary.manifest_sha256.as_str(),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn refusal(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("{}\n", e.message)).into_response()
}
