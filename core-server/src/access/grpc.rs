//! Credentials on the gRPC query API: every `sightline.v1.Query` call and
//! `Subscribe` carries `authorization: Bearer <token>` — an API token
//! (`slt_…`) or the admin token — resolved to a [`Principal`] before the call
//! does any work.

use sightline_proto::ApiError;
use tonic::Request;

use super::{Access, Credential, Principal};

impl Access {
    /// The principal behind a gRPC request (UNAUTHENTICATED names what is
    /// missing or wrong).
    pub fn grpc_principal<T>(&self, req: &Request<T>) -> Result<Principal, ApiError> {
        let header = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        self.bearer(header).inspect_err(|e| {
            tracing::info!(peer = ?req.remote_addr(), reason = %e, "query call refused");
        })
    }

    /// Whether the credential a principal came from still holds (not
    /// revoked, not expired, session not ended).
    pub fn still_valid(&self, p: &Principal) -> Result<(), ApiError> {
        match &p.credential {
            Credential::AdminToken => Ok(()),
            Credential::Session(id) => self
                .sessions
                .get(id, sightline_proto::now_ms())
                .map(|_| ())
                .ok_or_else(|| ApiError::unauthenticated("the session ended")),
            Credential::Token(id) => self.db.token_still_valid(id, sightline_proto::now_ms()),
        }
    }

    /// Resolves when `p`'s credential is revoked or expires (checked on
    /// every revocation and once a minute for expiry).
    pub async fn until_invalid(&self, p: &Principal) -> ApiError {
        let mut changes = self.revocations.subscribe();
        loop {
            if let Err(e) = self.still_valid(p) {
                return e;
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(60), changes.changed()).await;
        }
    }

    /// Tells open streams to check their credentials again (after a
    /// revocation or an account change).
    pub fn revoked(&self) {
        self.revocations.send_modify(|n| *n += 1);
    }
}
