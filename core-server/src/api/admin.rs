//! `sightline.v1.Admin`: what changes the core — Dataset B, agent grants,
//! accounts, API tokens, sessions. Every call needs an admin: the admin token
//! (the bootstrap credential) or an API token with the admin role.

use std::{path::PathBuf, sync::Arc};

use sightline_proto::v1::{
    admin_server::Admin, revoke_session_request, AddUserRequest, AgentGrant, ApiToken,
    BackupRequest, BackupResponse, CreateTokenRequest, CreateTokenResponse, DashboardSession,
    ListGrantsRequest, ListGrantsResponse, ListSessionsRequest, ListSessionsResponse,
    ListTokensRequest, ListTokensResponse, ListUsersRequest, ListUsersResponse,
    ReloadLocationsRequest, ReloadLocationsResponse, RevokeAgentRequest, RevokeSessionRequest,
    RevokeSessionResponse, RevokeTokenRequest, Role as WireRole, UpdateUserRequest, User,
};
use sightline_proto::ApiError;
use tonic::{Request, Response, Status};

use super::query::blocking;
use crate::{
    access::{accounts, Access, Principal, Role, Scope, Session, TokenRecord, UserRecord},
    enrich::Locations,
};

pub struct AdminService {
    pub locations: Arc<Locations>,
    pub registry: Arc<crate::edge::registry::Registry>,
    pub fleet: Arc<crate::fleet::Fleet>,
    pub access: Access,
    pub backup: Arc<crate::backup::Sources>,
}

/// The wire's role; UNSPECIFIED is refused naming `field`.
pub fn role_from_wire(field: &str, r: i32) -> Result<Role, ApiError> {
    match WireRole::try_from(r) {
        Ok(WireRole::Viewer) => Ok(Role::Viewer),
        Ok(WireRole::Investigator) => Ok(Role::Investigator),
        Ok(WireRole::Admin) => Ok(Role::Admin),
        _ => Err(ApiError::field(
            field,
            "must be ROLE_VIEWER, ROLE_INVESTIGATOR or ROLE_ADMIN",
        )),
    }
}

pub fn role_to_wire(r: Role) -> i32 {
    match r {
        Role::Viewer => WireRole::Viewer as i32,
        Role::Investigator => WireRole::Investigator as i32,
        Role::Admin => WireRole::Admin as i32,
    }
}

fn user_to_wire(u: &UserRecord) -> User {
    User {
        name: u.name.clone(),
        role: role_to_wire(u.role),
        locations: u.scope.to_list(),
        disabled: u.disabled,
        created_ms: u.created_ms,
        changed_ms: u.changed_ms,
    }
}

fn token_to_wire(t: &TokenRecord) -> ApiToken {
    ApiToken {
        id: t.id.clone(),
        name: t.name.clone(),
        role: role_to_wire(t.role),
        locations: t.scope.to_list(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        last_used_ms: t.last_used_ms,
        revoked_ms: t.revoked_ms,
    }
}

fn session_to_wire(s: &Session) -> DashboardSession {
    DashboardSession {
        handle: s.handle(),
        user: s.user.clone(),
        role: role_to_wire(s.role),
        locations: s.scope.to_list(),
        source: s.source.to_string(),
        created_ms: s.created_ms,
        last_used_ms: s.last_used_ms,
    }
}

impl AdminService {
    /// An admin (the admin token, or an API token with the admin role). A
    /// refusal is recorded in the audit log (in the background: the call is
    /// refused either way; anonymous ones coalesced, see
    /// [`crate::audit::refusals`]).
    fn authorize<T>(&self, req: &Request<T>, what: &str) -> Result<Principal, Status> {
        let refused = |entry: crate::audit::Entry, e: &sightline_proto::ApiError| {
            let entry = entry
                .from(req.remote_addr())
                .denied()
                .detail(serde_json::json!({ "method": what, "reason": e.message, "via": "grpc" }));
            let audit = self.access.audit.clone();
            tokio::spawn(async move {
                if let Err(e) = audit.refused(entry).await {
                    tracing::warn!(error = %e, "audit: a refusal could not be recorded");
                }
            });
        };
        let p = self.access.grpc_principal(req).inspect_err(|e| {
            tracing::warn!(peer = ?req.remote_addr(), reason = %e, "admin call refused");
            let anonymous = crate::audit::Actor::Anonymous;
            refused(
                crate::audit::Entry::new(anonymous, crate::audit::Action::AccessRefused),
                e,
            );
        })?;
        p.require(Role::Admin, what).inspect_err(|e| {
            tracing::warn!(actor = %p.actor, reason = %e, "admin call refused");
            refused(p.entry(crate::audit::Action::AccessRefused), e);
        })?;
        Ok(p)
    }

    /// Records an admin action (after it was done; a failure to record is
    /// logged and answered as UNAVAILABLE, the action stands).
    async fn audit(
        &self,
        who: &Principal,
        action: crate::audit::Action,
        detail: serde_json::Value,
    ) -> Result<(), Status> {
        self.access
            .audit
            .record(who.entry(action).detail(detail))
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(error = %e, "admin action done but not recorded");
                ApiError::from(e).into()
            })
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&accounts::AccessDb) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, Status> {
        let db = self.access.db.clone();
        blocking(move || f(&db).map_err(Status::from)).await
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_locations(
        &self,
        req: Request<ReloadLocationsRequest>,
    ) -> Result<Response<ReloadLocationsResponse>, Status> {
        let who = self.authorize(&req, "ReloadLocations")?;
        let path = req.into_inner().path;
        let locations = self.locations.clone();
        let path = (!path.is_empty()).then(|| PathBuf::from(path));
        let (rows, path) = blocking(move || {
            locations
                .reload(path)
                .map_err(|e| ApiError::invalid(e.to_string()).into())
        })
        .await?;
        tracing::info!(actor = %who.actor, rows, %path, "admin: Dataset B reloaded");
        self.audit(
            &who,
            crate::audit::Action::LocationsReloaded,
            serde_json::json!({ "rows": rows, "path": path }),
        )
        .await?;
        Ok(Response::new(ReloadLocationsResponse {
            rows: rows as u64,
            path,
        }))
    }

    async fn grant_agent(&self, req: Request<AgentGrant>) -> Result<Response<AgentGrant>, Status> {
        let who = self.authorize(&req, "GrantAgent")?;
        let g = self.registry.grant_agent(req.into_inner()).await?;
        self.fleet.reinstate(&g.agent_id);
        tracing::info!(actor = %who.actor, agent = %g.agent_id, cameras = ?g.cameras, locations = ?g.locations, "admin: agent granted");
        self.audit(&who, crate::audit::Action::AgentGranted, serde_json::json!({ "agent": g.agent_id, "cameras": g.cameras, "locations": g.locations })).await?;
        Ok(Response::new(g))
    }

    async fn revoke_agent(
        &self,
        req: Request<RevokeAgentRequest>,
    ) -> Result<Response<AgentGrant>, Status> {
        let who = self.authorize(&req, "RevokeAgent")?;
        let g = self.registry.revoke(&req.into_inner().agent_id).await?;
        // Ends its open session at once; the registry refuses the next one.
        self.fleet.revoke(&g.agent_id);
        tracing::warn!(actor = %who.actor, agent = %g.agent_id, "admin: agent revoked");
        self.audit(
            &who,
            crate::audit::Action::AgentRevoked,
            serde_json::json!({ "agent": g.agent_id }),
        )
        .await?;
        Ok(Response::new(g))
    }

    async fn list_grants(
        &self,
        req: Request<ListGrantsRequest>,
    ) -> Result<Response<ListGrantsResponse>, Status> {
        self.authorize(&req, "ListGrants")?;
        Ok(Response::new(ListGrantsResponse {
            enforced: self.registry.enforced(),
            agents: self.registry.list(),
        }))
    }

    async fn add_user(&self, req: Request<AddUserRequest>) -> Result<Response<User>, Status> {
        let who = self.authorize(&req, "AddUser")?;
        let r = req.into_inner();
        let role = role_from_wire("role", r.role)?;
        let scope = Scope::from_list("locations", &r.locations)?;
        let now = sightline_proto::now_ms();
        let u = self
            .db(move |db| db.add_user(&r.name, role, scope, &r.password, now))
            .await?;
        tracing::info!(actor = %who.actor, user = %u.name, role = %u.role, scope = %u.scope, "admin: account added");
        self.audit(
            &who,
            crate::audit::Action::UserAdded,
            serde_json::json!({ "user": u.name, "role": u.role, "locations": u.scope.to_list() }),
        )
        .await?;
        Ok(Response::new(user_to_wire(&u)))
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        let who = self.authorize(&req, "UpdateUser")?;
        let r = req.into_inner();
        let role = r.role.map(|x| role_from_wire("role", x)).transpose()?;
        let scope = r
            .set_locations
            .then(|| Scope::from_list("locations", &r.locations))
            .transpose()?;
        let hash = match &r.password {
            Some(p) => {
                accounts::validate_password(p)?;
                let p = p.clone();
                Some(blocking(move || accounts::hash_password(&p).map_err(Status::from)).await?)
            }
            None => None,
        };
        let now = sightline_proto::now_ms();
        let disabled = r.disabled;
        let name = r.name.clone();
        let u = self
            .db(move |db| {
                db.update_user(&name, now, |u| {
                    if let Some(role) = role {
                        u.role = role;
                    }
                    if let Some(scope) = &scope {
                        u.scope = scope.clone();
                    }
                    if let Some(d) = disabled {
                        u.disabled = d;
                    }
                    if let Some(h) = &hash {
                        u.password_hash = h.clone();
                    }
                    Ok(())
                })
            })
            .await?;
        // Whatever changed, its sessions end: the next login carries the new role.
        let ended = self.access.sessions.end_user(&u.name);
        self.access.revoked();
        tracing::info!(actor = %who.actor, user = %u.name, role = %u.role, scope = %u.scope, disabled = u.disabled, password_reset = r.password.is_some(), sessions_ended = ended, "admin: account changed");
        let action = if r.password.is_some() {
            crate::audit::Action::PasswordReset
        } else if r.disabled.is_some() {
            crate::audit::Action::UserDisabled
        } else {
            crate::audit::Action::RoleChanged
        };
        self.audit(&who, action, serde_json::json!({ "user": u.name, "role": u.role, "locations": u.scope.to_list(), "disabled": u.disabled, "sessions_ended": ended })).await?;
        Ok(Response::new(user_to_wire(&u)))
    }

    async fn list_users(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        self.authorize(&req, "ListUsers")?;
        let users = self.db(|db| db.users()).await?;
        Ok(Response::new(ListUsersResponse {
            users: users.iter().map(user_to_wire).collect(),
        }))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let who = self.authorize(&req, "CreateToken")?;
        let r = req.into_inner();
        let role = role_from_wire("role", r.role)?;
        let scope = Scope::from_list("locations", &r.locations)?;
        let now = sightline_proto::now_ms();
        let (t, secret) = self
            .db(move |db| db.create_token(&r.name, role, scope, r.expires_ms, now))
            .await?;
        tracing::info!(actor = %who.actor, token = %t.id, name = %t.name, role = %t.role, scope = %t.scope, expires_ms = t.expires_ms, "admin: API token created");
        self.audit(&who, crate::audit::Action::TokenCreated, serde_json::json!({ "token": t.id, "name": t.name, "role": t.role, "locations": t.scope.to_list(), "expires_ms": t.expires_ms })).await?;
        Ok(Response::new(CreateTokenResponse {
            token: Some(token_to_wire(&t)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.authorize(&req, "ListTokens")?;
        let tokens = self.db(|db| db.tokens()).await?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.iter().map(token_to_wire).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<ApiToken>, Status> {
        let who = self.authorize(&req, "RevokeToken")?;
        let name = req.into_inner().token;
        let now = sightline_proto::now_ms();
        let t = self.db(move |db| db.revoke_token(&name, now)).await?;
        // Open Subscribe streams of this token end now.
        self.access.revoked();
        tracing::warn!(actor = %who.actor, token = %t.id, name = %t.name, "admin: API token revoked");
        self.audit(
            &who,
            crate::audit::Action::TokenRevoked,
            serde_json::json!({ "token": t.id, "name": t.name }),
        )
        .await?;
        Ok(Response::new(token_to_wire(&t)))
    }

    async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        self.authorize(&req, "ListSessions")?;
        Ok(Response::new(ListSessionsResponse {
            sessions: self
                .access
                .sessions
                .list()
                .iter()
                .map(session_to_wire)
                .collect(),
        }))
    }

    async fn revoke_session(
        &self,
        req: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        let who = self.authorize(&req, "RevokeSession")?;
        let ended = match req.into_inner().target {
            Some(revoke_session_request::Target::Handle(h)) => {
                match self.access.sessions.end_handle(&h) {
                    Some(_) => 1,
                    None => {
                        return Err(
                            ApiError::not_found(format!("no session with handle {h:?}")).into()
                        )
                    }
                }
            }
            Some(revoke_session_request::Target::User(u)) => self.access.sessions.end_user(&u),
            None => return Err(ApiError::field("target", "give a handle or a user").into()),
        };
        self.access.revoked();
        tracing::warn!(actor = %who.actor, ended, "admin: sessions revoked");
        self.audit(
            &who,
            crate::audit::Action::SessionRevoked,
            serde_json::json!({ "ended": ended }),
        )
        .await?;
        Ok(Response::new(RevokeSessionResponse {
            ended: ended as u32,
        }))
    }

    async fn backup(
        &self,
        req: Request<BackupRequest>,
    ) -> Result<Response<BackupResponse>, Status> {
        let who = self.authorize(&req, "Backup")?;
        let to = req.into_inner().to;
        if to.is_empty() {
            return Err(ApiError::field("to", "give a folder or s3://bucket/prefix").into());
        }
        let r = self.backup.backup(&to).await?;
        tracing::info!(actor = %who.actor, id = %r.id, %to, "admin: backup made");
        self.audit(
            &who,
            crate::audit::Action::BackupMade,
            serde_json::json!({ "id": r.id, "to": to, "files": r.files, "uploaded_bytes": r.uploaded_bytes }),
        )
        .await?;
        Ok(Response::new(BackupResponse {
            id: r.id,
            files: r.files,
            bytes: r.bytes,
            uploaded_files: r.uploaded_files,
            uploaded_bytes: r.uploaded_bytes,
            duration_ms: r.duration_ms,
        }))
    }
}
