//! Who may see what: people (accounts and their sessions), integrators (API
//! tokens) and the bootstrap admin token, each resolved to a [`Principal`] —
//! a role and a scope — before a request does any work.
//!
//! - Roles, each a superset of the one before: [`Role::Viewer`] (events,
//!   live, top X, timeline, search — no footage), [`Role::Investigator`]
//!   (+ snapshots and clips, + cases), [`Role::Admin`] (+ fleet, quarantine,
//!   users, tokens, agent grants, Dataset B reload, audit).
//! - A [`Scope`] limits any role to a set of locations
//!   (`geographical_location_oid`): a scoped principal never sees an event,
//!   a count, a hit, a live row or a piece of footage from outside it.
//! - Accounts and tokens are kept in their own RocksDB (`<storage.path>/access`,
//!   see [`accounts`]); passwords are argon2id hashes, tokens SHA-256 hashes
//!   (a token is 32 random bytes: nothing to slow down a guess of).
//! - Sessions are kept in memory ([`sessions`]): a restart logs everyone out.
//!
//! The admin token (`server.admin_token_file`) stays the bootstrap
//! credential: it is an unscoped admin, and it is how the first account is
//! made (`sightline-core users add …`).

pub mod accounts;
pub mod grpc;
pub mod http;
pub mod sessions;

use std::{collections::BTreeSet, fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use sightline_proto::{ApiError, Code};

pub use accounts::{AccessDb, TokenRecord, UserRecord};
pub use sessions::{Session, Sessions};

use crate::api::admin_token::AdminToken;

/// What a principal may do; each role may do all the one before may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Events, live, top X, timeline, search — no footage.
    Viewer,
    /// + snapshots and clips, + cases.
    Investigator,
    /// + fleet, quarantine, users, tokens, agent grants, reloads, audit.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Investigator => "investigator",
            Role::Admin => "admin",
        }
    }

    /// "viewer", "investigator" or "admin".
    pub fn parse(field: &str, s: &str) -> Result<Self, ApiError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" => Ok(Role::Viewer),
            "investigator" => Ok(Role::Investigator),
            "admin" => Ok(Role::Admin),
            other => Err(ApiError::field(
                field,
                format!("{other:?} is not one of viewer, investigator, admin"),
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Most locations one account or token may be scoped to.
pub const MAX_SCOPE_LOCATIONS: usize = 10_000;

/// The locations a principal may see: all, or a set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// `None`: every location. `Some(set)`: only these (an empty set sees nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<BTreeSet<i64>>,
}

impl Scope {
    pub fn all() -> Self {
        Self { locations: None }
    }

    pub fn locations(set: impl IntoIterator<Item = i64>) -> Self {
        Self {
            locations: Some(set.into_iter().collect()),
        }
    }

    /// From a list as given on a command line; empty means every location.
    pub fn from_list(field: &str, list: &[i64]) -> Result<Self, ApiError> {
        if list.len() > MAX_SCOPE_LOCATIONS {
            return Err(ApiError::field_with(
                Code::TooLarge,
                field,
                format!("{} locations; at most {MAX_SCOPE_LOCATIONS}", list.len()),
            ));
        }
        Ok(if list.is_empty() {
            Self::all()
        } else {
            Self::locations(list.iter().copied())
        })
    }

    pub fn is_all(&self) -> bool {
        self.locations.is_none()
    }

    pub fn allows(&self, location: i64) -> bool {
        self.locations
            .as_ref()
            .is_none_or(|s| s.contains(&location))
    }

    /// The list as the API carries it (empty: every location).
    pub fn to_list(&self) -> Vec<i64> {
        self.locations
            .as_ref()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.locations {
            None => f.write_str("all locations"),
            Some(s) => {
                let v: Vec<String> = s.iter().map(|l| l.to_string()).collect();
                write!(f, "locations {}", v.join(","))
            }
        }
    }
}

/// Who is asking, resolved from a session cookie, an API token or the admin
/// token. Handlers check [`Principal::require`] and filter by [`Principal::scope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// As the audit log names it: `user:alice`, `token:ci-export`, `admin-token`.
    pub actor: String,
    pub role: Role,
    pub scope: Scope,
    /// The session (people) or token id (integrators) it came from, to end
    /// what it holds open when it is revoked.
    pub credential: Credential,
}

/// Where a principal's authority comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    Session(String),
    Token(String),
    AdminToken,
}

impl Principal {
    /// The bootstrap admin: every role, every location.
    pub fn admin_token() -> Self {
        Self {
            actor: "admin-token".into(),
            role: Role::Admin,
            scope: Scope::all(),
            credential: Credential::AdminToken,
        }
    }

    /// Refuses (PERMISSION_DENIED, naming the role needed and the one held)
    /// unless this principal's role is at least `role`.
    pub fn require(&self, role: Role, what: &str) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "{what} needs the {role} role; {} has {}",
                self.actor, self.role
            )))
        }
    }

    /// As the audit log names it.
    pub fn audit_actor(&self) -> crate::audit::Actor {
        self.actor.parse().unwrap_or(crate::audit::Actor::Anonymous)
    }

    /// An audit entry of this principal doing `action`.
    pub fn entry(&self, action: crate::audit::Action) -> crate::audit::Entry {
        crate::audit::Entry::new(self.audit_actor(), action)
    }

    /// Refuses (PERMISSION_DENIED) a location outside the scope.
    pub fn require_location(&self, location: i64) -> Result<(), ApiError> {
        if self.scope.allows(location) {
            Ok(())
        } else {
            Err(ApiError::permission_denied(format!(
                "location {location} is outside the scope of {} ({})",
                self.actor, self.scope
            )))
        }
    }
}

/// Top X per location as [`crate::store::Store::top_items`], for the
/// locations `scope` allows only; `location` (if any) was checked already.
/// One read of the aggregates in the range, whatever the scope's size (a
/// read per location of a small scope cost that many times the unscoped
/// query: the aggregates are keyed by time first).
pub fn scoped_top_items(
    store: &crate::store::Store,
    scope: &Scope,
    from_ms: i64,
    to_ms: i64,
    x: usize,
    location: Option<i64>,
) -> Result<Vec<crate::store::LocationCounts>, crate::store::StoreError> {
    match (&scope.locations, location) {
        (None, l) | (Some(_), l @ Some(_)) => store.top_items(from_ms, to_ms, x, l),
        (Some(set), None) => store.top_items_in(from_ms, to_ms, x, |l| set.contains(&l)),
    }
}

/// `[access]`: sessions, lockout and tokens.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// A session not used for this long ends.
    #[serde(default = "default_idle", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub session_idle: Duration,
    /// A session ends this long after its login, used or not.
    #[serde(default = "default_absolute", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub session_absolute: Duration,
    /// Failed logins of one account within `lockout_window` that lock it
    /// for `lockout_window`.
    #[serde(default = "default_account_failures")]
    pub lockout_account_failures: u32,
    /// Failed logins from one address within `lockout_window` that lock
    /// the address out for `lockout_window`.
    #[serde(default = "default_address_failures")]
    pub lockout_address_failures: u32,
    /// How far back failed logins count, and how long a lockout lasts.
    #[serde(default = "default_window", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub lockout_window: Duration,
    /// Sessions one account may hold at once (the oldest ends first).
    #[serde(default = "default_sessions_per_user")]
    pub max_sessions_per_user: usize,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            session_idle: default_idle(),
            session_absolute: default_absolute(),
            lockout_account_failures: default_account_failures(),
            lockout_address_failures: default_address_failures(),
            lockout_window: default_window(),
            max_sessions_per_user: default_sessions_per_user(),
        }
    }
}

impl AccessConfig {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        let err = |key, reason: &str| ConfigError {
            key,
            reason: reason.into(),
        };
        if self.session_idle.is_zero() || self.session_absolute < self.session_idle {
            return Err(err(
                "access.session_idle",
                "must be above 0 and at most access.session_absolute",
            ));
        }
        if self.lockout_account_failures == 0 || self.lockout_address_failures == 0 {
            return Err(err(
                "access.lockout_account_failures",
                "the lockout thresholds must be at least 1",
            ));
        }
        if self.max_sessions_per_user == 0 {
            return Err(err("access.max_sessions_per_user", "must be at least 1"));
        }
        Ok(())
    }
}

fn default_idle() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_absolute() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_account_failures() -> u32 {
    5
}
fn default_address_failures() -> u32 {
    20
}
fn default_window() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_sessions_per_user() -> usize {
    16
}

/// Everything that resolves credentials: the account/token store, the
/// sessions and the bootstrap admin token. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    pub db: Arc<AccessDb>,
    pub sessions: Arc<Sessions>,
    pub admin: Arc<AdminToken>,
    /// Bumped on every revocation: open streams check their credential again.
    pub revocations: Arc<tokio::sync::watch::Sender<u64>>,
    /// Where every access to footage, every query and every admin action
    /// is recorded (see [`crate::audit`]).
    pub audit: crate::audit::AuditLog,
}

impl Access {
    pub fn new(
        db: Arc<AccessDb>,
        config: &AccessConfig,
        admin: Arc<AdminToken>,
        audit: crate::audit::AuditLog,
    ) -> Self {
        Self {
            audit,
            db,
            sessions: Arc::new(Sessions::new(config.clone())),
            admin,
            revocations: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Resolves `Authorization: Bearer <secret>`: the admin token or an API
    /// token. UNAUTHENTICATED names what is wrong (missing, malformed,
    /// unknown, expired, revoked), never the secret.
    pub fn bearer(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let Some(h) = header else {
            return Err(ApiError::unauthenticated(
                "no credential: send `authorization: Bearer <token>` (an API token from `sightline-core tokens create`)",
            ));
        };
        let Some(secret) = h.strip_prefix("Bearer ").map(str::trim) else {
            return Err(ApiError::unauthenticated(
                "the authorization header is not `Bearer <token>`",
            ));
        };
        if self.admin.check(Some(h)).is_ok() {
            return Ok(Principal::admin_token());
        }
        self.db
            .authenticate_token(secret, sightline_proto::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        cf,
        keys::{self, Bucket},
        Store, CF_AGG,
    };

    #[test]
    fn a_scoped_top_x_counts_exactly_its_locations_whatever_the_scope_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), false, 8 << 20).unwrap();
        let hour = 3_600_000;
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % hour;
        // 40 locations, each counted in a minute bucket before the whole
        // hours, an hour bucket, and a minute bucket after them: location l
        // has 3l cars and 3 dogs.
        let db = s.db().unwrap();
        let mut b = rocksdb::WriteBatch::default();
        for l in 1..=40i64 {
            for (bucket, at) in [
                (Bucket::Minute, t0 + 5 * 60_000),
                (Bucket::Hour, t0 + 2 * hour),
                (Bucket::Minute, t0 + 3 * hour + 60_000),
            ] {
                for (item, n) in [("car", l as u64), ("dog", 1)] {
                    b.merge_cf(
                        cf(&db, CF_AGG),
                        keys::agg_key(bucket, bucket.floor(at), l, item),
                        n.to_le_bytes(),
                    );
                }
            }
        }
        drop(db);
        s.write(b).unwrap();
        let (from, to) = (t0 + 60_000, t0 + 3 * hour + 30 * 60_000);
        let all = s.top_items(from, to, 10, None).unwrap();
        assert_eq!(all.len(), 40);
        assert_eq!(all[6].location, 7);
        assert_eq!(all[6].total, 3 * 7 + 3);
        assert_eq!(
            scoped_top_items(&s, &Scope::all(), from, to, 10, None).unwrap(),
            all
        );
        for set in [
            vec![],
            vec![7],
            vec![1, 2, 3],
            (1..=20).collect::<Vec<_>>(),
            vec![39, 41],
        ] {
            let got =
                scoped_top_items(&s, &Scope::locations(set.clone()), from, to, 10, None).unwrap();
            let want: Vec<_> = all
                .iter()
                .filter(|c| set.contains(&c.location))
                .cloned()
                .collect();
            assert_eq!(got, want, "scope {set:?}");
        }
        // A location asked for (checked against the scope by the caller).
        let got = scoped_top_items(&s, &Scope::locations([2, 3]), from, to, 1, Some(3)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].location, 3);
        assert_eq!(got[0].items, vec![("car".to_string(), 9)]);
    }
}
