//! Accounts and API tokens, in their own RocksDB (`<storage.path>/access`).
//!
//! Key layout (format version 1, written to `meta/format` and checked at open):
//! - column family `users`: key = the user name (UTF-8, 1–64 of
//!   `[A-Za-z0-9._@-]`), value = [`UserRecord`] as JSON. The password is an
//!   argon2id PHC string (argon2 0.5 defaults: m = 19 MiB, t = 2, p = 1 —
//!   OWASP's recommended minimum), never the password.
//! - column family `tokens`: key = the token's id (16 hex digits, the public
//!   half of `slt_<id>_<secret>`), value = [`TokenRecord`] as JSON with the
//!   SHA-256 of the secret. The secret is printed once, at creation.
//!
//! Every write is synced: an account change or a revocation survives a crash
//! the moment the call returns.
//!
//! In cluster mode this store is the node's copy of the cluster's accounts
//! and tokens ([`crate::cluster::control`]): every change is made in the
//! cluster's bucket first (the methods that change something then run the
//! bucket's calls, so they are called from a blocking thread, as the admin
//! API does) and the other nodes' changes are applied with
//! [`AccessDb::mirror_user`] and [`AccessDb::mirror_token`].

use std::{
    path::Path,
    sync::{Mutex, OnceLock},
};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sightline_proto::{ApiError, Code};

use super::{Credential, Principal, Role, Scope};
use crate::cluster::control::{self, block_on, Control, Kind};

const USERS: &str = "users";
const TOKENS: &str = "tokens";
const META: &str = "meta";
const FORMAT_KEY: &[u8] = b"format";
/// The key layout above; a store written by another layout is refused at open.
pub const FORMAT_VERSION: u32 = 1;

/// Shortest password an account may have.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password hashed (argon2 reads all of it; bounded before work).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest user or token name.
pub const MAX_NAME_BYTES: usize = 64;
/// Most accounts and most tokens listed or kept.
pub const MAX_ACCOUNTS: usize = 10_000;
/// How often a token's `last_used_ms` is written back at most.
pub const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// One account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub scope: Scope,
    /// argon2id, PHC string format.
    pub password_hash: String,
    #[serde(default)]
    pub disabled: bool,
    pub created_ms: i64,
    #[serde(default)]
    pub changed_ms: i64,
}

/// One API token (the secret itself is not kept).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub scope: Scope,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    pub created_ms: i64,
    /// 0: never expires.
    #[serde(default)]
    pub expires_ms: i64,
    #[serde(default)]
    pub last_used_ms: i64,
    #[serde(default)]
    pub revoked_ms: i64,
}

/// The accounts and tokens store.
pub struct AccessDb {
    db: DB,
    sync: WriteOptions,
    /// Cluster mode: where every change is made first.
    shared: OnceLock<Control>,
    /// Held while a record is read and written back, so that a change from
    /// the cluster and a local write never interleave.
    mirror: Mutex<()>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("the access store: {e}"))
}

/// Checks a user or token name.
pub fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(ApiError::field(
            field,
            format!("must be 1 to {MAX_NAME_BYTES} bytes"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(ApiError::field(
            field,
            format!("{name:?} may only hold letters, digits and . _ - @"),
        ));
    }
    Ok(())
}

/// Checks a new password's length before hashing it.
pub fn validate_password(password: &str) -> Result<(), ApiError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::field_with(
            Code::TooLarge,
            "password",
            format!("longer than {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::field(
            "password",
            format!("shorter than {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

/// argon2id with the crate's defaults (see the module doc).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(internal)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(internal)
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the account does not exist, so that an
/// unknown name takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AccessDb {
    /// Writes a consistent copy of the accounts and tokens into `dir` (a
    /// RocksDB checkpoint; `dir` must not exist), for [`crate::backup`].
    pub fn checkpoint(&self, dir: &Path) -> anyhow::Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?
            .create_checkpoint(dir)
            .map_err(|e| {
                anyhow::anyhow!("checkpoint of the access store into {}: {e}", dir.display())
            })
    }

    /// Opens (or makes) the store at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_log_level(rocksdb::LogLevel::Fatal);
        opts.set_keep_log_file_num(2);
        let cfs = [USERS, TOKENS, META]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|e| anyhow::anyhow!("opening the access store {}: {e}", path.display()))?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let meta = db.cf_handle(META).expect("meta cf");
        match db.get_cf(meta, FORMAT_KEY)? {
            None => db.put_cf_opt(meta, FORMAT_KEY, FORMAT_VERSION.to_be_bytes(), &sync)?,
            Some(v) if v.as_slice() == FORMAT_VERSION.to_be_bytes() => {}
            Some(v) => anyhow::bail!(
                "the access store {} has format {v:?}; this core reads format {FORMAT_VERSION}",
                path.display()
            ),
        }
        Ok(Self {
            db,
            sync,
            shared: OnceLock::new(),
            mirror: Mutex::new(()),
        })
    }

    /// Cluster mode: from now on every change is made in `control`'s bucket
    /// first.
    pub fn share(&self, control: Control) {
        let _ = self.shared.set(control);
    }

    fn lock_mirror(&self) -> std::sync::MutexGuard<'_, ()> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies an account from the cluster's bucket at revision `rev` (one
    /// this node just wrote there, or another node's), unless this copy
    /// holds a newer one.
    /// Returns whether an account this node had changed (its sessions end).
    pub fn mirror_user(&self, c: &Control, rec: UserRecord, rev: u64) -> Result<bool, ApiError> {
        let _m = self.lock_mirror();
        let k = control::key(Kind::User, &rec.name);
        if !c.newer(&k, rev) {
            return Ok(false);
        }
        let old = self.user(&rec.name)?;
        let changed = old.as_ref() != Some(&rec);
        if changed {
            self.put(USERS, &rec.name, &rec)?;
        }
        c.applied(&k, rev);
        Ok(changed && old.is_some())
    }

    /// Applies a token from the cluster's bucket at revision `rev`, as
    /// [`AccessDb::mirror_user`] does an account (its
    /// last use stays the later of this node's and the record's). Returns
    /// whether a token this node had changed (revoked: open streams check
    /// their credential again).
    pub fn mirror_token(
        &self,
        c: &Control,
        mut rec: TokenRecord,
        rev: u64,
    ) -> Result<bool, ApiError> {
        let _m = self.lock_mirror();
        let k = control::key(Kind::Token, &rec.id);
        if !c.newer(&k, rev) {
            return Ok(false);
        }
        let old = self.get::<TokenRecord>(TOKENS, &rec.id)?;
        if let Some(o) = &old {
            rec.last_used_ms = rec.last_used_ms.max(o.last_used_ms);
        }
        let changed = old.as_ref() != Some(&rec);
        if changed {
            self.put(TOKENS, &rec.id, &rec)?;
        }
        c.applied(&k, rev);
        Ok(changed && old.is_some())
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        cf: &str,
        key: &str,
    ) -> Result<Option<T>, ApiError> {
        let h = self.db.cf_handle(cf).expect("cf");
        match self.db.get_cf(h, key.as_bytes()).map_err(internal)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(internal),
        }
    }

    fn put<T: Serialize>(&self, cf: &str, key: &str, value: &T) -> Result<(), ApiError> {
        let h = self.db.cf_handle(cf).expect("cf");
        let v = serde_json::to_vec(value).map_err(internal)?;
        self.db
            .put_cf_opt(h, key.as_bytes(), v, &self.sync)
            .map_err(internal)
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, cf: &str) -> Result<Vec<T>, ApiError> {
        let h = self.db.cf_handle(cf).expect("cf");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(h, rocksdb::IteratorMode::Start) {
            let (_, v) = item.map_err(internal)?;
            out.push(serde_json::from_slice(&v).map_err(internal)?);
            if out.len() >= MAX_ACCOUNTS {
                break;
            }
        }
        Ok(out)
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, ApiError> {
        self.get(USERS, name)
    }

    pub fn users(&self) -> Result<Vec<UserRecord>, ApiError> {
        self.all(USERS)
    }

    /// Makes an account; ALREADY_EXISTS if the name is taken.
    pub fn add_user(
        &self,
        name: &str,
        role: Role,
        scope: Scope,
        password: &str,
        now_ms: i64,
    ) -> Result<UserRecord, ApiError> {
        validate_name("name", name)?;
        validate_password(password)?;
        if self.user(name)?.is_some() {
            return Err(ApiError::new(
                Code::AlreadyExists,
                format!("field `name`: an account {name:?} exists"),
            ));
        }
        if self.all::<serde_json::Value>(USERS)?.len() >= MAX_ACCOUNTS {
            return Err(ApiError::exhausted(format!(
                "at most {MAX_ACCOUNTS} accounts"
            )));
        }
        let rec = UserRecord {
            name: name.into(),
            role,
            scope,
            password_hash: hash_password(password)?,
            disabled: false,
            created_ms: now_ms,
            changed_ms: now_ms,
        };
        match self.shared.get() {
            Some(c) => match block_on(c.create(Kind::User, name, &rec))? {
                Some(rev) => {
                    self.mirror_user(c, rec.clone(), rev)?;
                }
                None => {
                    return Err(ApiError::new(
                        Code::AlreadyExists,
                        format!("field `name`: an account {name:?} exists in the cluster"),
                    ))
                }
            },
            None => self.put(USERS, name, &rec)?,
        }
        Ok(rec)
    }

    /// Changes an account with `f` (in cluster mode `f` may run again, on
    /// the record another node changed meanwhile); NOT_FOUND names it.
    pub fn update_user(
        &self,
        name: &str,
        now_ms: i64,
        f: impl Fn(&mut UserRecord) -> Result<(), ApiError>,
    ) -> Result<UserRecord, ApiError> {
        let change = |rec: Option<UserRecord>| {
            let mut rec = rec.ok_or_else(|| ApiError::not_found(format!("no account {name:?}")))?;
            f(&mut rec)?;
            rec.changed_ms = now_ms;
            Ok(rec)
        };
        match self.shared.get() {
            Some(c) => {
                let (rec, rev) = block_on(c.modify(Kind::User, name, change))?;
                self.mirror_user(c, rec.clone(), rev)?;
                Ok(rec)
            }
            None => {
                let rec = change(self.user(name)?)?;
                self.put(USERS, name, &rec)?;
                Ok(rec)
            }
        }
    }

    /// Checks a name and password. The same error for an unknown name and a
    /// wrong password (and the same time taken); a disabled account is
    /// named as such only after its password matched.
    pub fn login(&self, name: &str, password: &str) -> Result<UserRecord, ApiError> {
        let bad = || ApiError::unauthenticated("wrong name or password");
        if name.len() > MAX_NAME_BYTES || password.len() > MAX_PASSWORD_BYTES {
            return Err(bad());
        }
        let rec = self.user(name)?;
        let hash = rec
            .as_ref()
            .map_or(decoy_hash(), |r| r.password_hash.as_str());
        let ok = verify_password(password, hash);
        match rec {
            Some(r) if ok && r.disabled => Err(ApiError::permission_denied(format!(
                "the account {name:?} is disabled; an admin can enable it"
            ))),
            Some(r) if ok => Ok(r),
            _ => Err(bad()),
        }
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, ApiError> {
        self.all(TOKENS)
    }

    /// Makes a token; returns its record and the secret (`slt_<id>_<secret>`),
    /// shown once.
    pub fn create_token(
        &self,
        name: &str,
        role: Role,
        scope: Scope,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(TokenRecord, String), ApiError> {
        validate_name("name", name)?;
        if expires_ms != 0 && expires_ms <= now_ms {
            return Err(ApiError::field("expires", "is not in the future"));
        }
        if self.all::<serde_json::Value>(TOKENS)?.len() >= MAX_ACCOUNTS {
            return Err(ApiError::exhausted(format!(
                "at most {MAX_ACCOUNTS} tokens"
            )));
        }
        let id = hex(&rand::random::<[u8; 8]>());
        let secret = hex(&rand::random::<[u8; 32]>());
        let rec = TokenRecord {
            id: id.clone(),
            name: name.into(),
            role,
            scope,
            secret_sha256: sha256_hex(secret.as_bytes()),
            created_ms: now_ms,
            expires_ms,
            last_used_ms: 0,
            revoked_ms: 0,
        };
        match self.shared.get() {
            Some(c) => match block_on(c.create(Kind::Token, &id, &rec))? {
                Some(rev) => {
                    self.mirror_token(c, rec.clone(), rev)?;
                }
                None => {
                    return Err(ApiError::unavailable(
                        "a token id was drawn twice; try again",
                    ))
                }
            },
            None => self.put(TOKENS, &id, &rec)?,
        }
        Ok((rec, format!("slt_{id}_{secret}")))
    }

    /// Revokes a token by id or name; NOT_FOUND names it.
    pub fn revoke_token(&self, id_or_name: &str, now_ms: i64) -> Result<TokenRecord, ApiError> {
        let mut rec = match self.get::<TokenRecord>(TOKENS, id_or_name)? {
            Some(r) => r,
            None => {
                let mut by_name: Vec<TokenRecord> = self
                    .tokens()?
                    .into_iter()
                    .filter(|t| t.name == id_or_name && t.revoked_ms == 0)
                    .collect();
                match by_name.len() {
                    0 => {
                        return Err(ApiError::not_found(format!(
                            "no token with id or name {id_or_name:?}"
                        )))
                    }
                    1 => by_name.remove(0),
                    n => {
                        return Err(ApiError::invalid(format!(
                            "{n} tokens are named {id_or_name:?}; revoke by id"
                        )))
                    }
                }
            }
        };
        if let Some(c) = self.shared.get() {
            let (t, rev) = block_on(c.modify(Kind::Token, &rec.id, |cur: Option<TokenRecord>| {
                let mut t = cur.unwrap_or_else(|| rec.clone());
                if t.revoked_ms == 0 {
                    t.revoked_ms = now_ms;
                }
                Ok(t)
            }))?;
            self.mirror_token(c, t.clone(), rev)?;
            return Ok(t);
        }
        if rec.revoked_ms == 0 {
            rec.revoked_ms = now_ms;
            self.put(TOKENS, &rec.id.clone(), &rec)?;
        }
        Ok(rec)
    }

    /// Whether the token `id` is neither revoked nor expired.
    pub fn token_still_valid(&self, id: &str, now_ms: i64) -> Result<(), ApiError> {
        match self.get::<TokenRecord>(TOKENS, id)? {
            None => Err(ApiError::unauthenticated(format!("no API token {id}"))),
            Some(r) if r.revoked_ms != 0 => Err(ApiError::unauthenticated(format!(
                "API token {id} ({}) was revoked",
                r.name
            ))),
            Some(r) if r.expires_ms != 0 && r.expires_ms <= now_ms => Err(
                ApiError::unauthenticated(format!("API token {id} ({}) expired", r.name)),
            ),
            Some(_) => Ok(()),
        }
    }

    /// Resolves a token's secret to its principal.
    pub fn authenticate_token(&self, given: &str, now_ms: i64) -> Result<Principal, ApiError> {
        let mut parts = given.splitn(3, '_');
        let (Some("slt"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ApiError::unauthenticated(
                "the bearer token is neither the admin token nor an API token (slt_…)",
            ));
        };
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::unauthenticated("the API token is malformed"));
        }
        let Some(rec) = self.get::<TokenRecord>(TOKENS, id)? else {
            return Err(ApiError::unauthenticated(format!("no API token {id}")));
        };
        if !same(
            sha256_hex(secret.as_bytes()).as_bytes(),
            rec.secret_sha256.as_bytes(),
        ) {
            return Err(ApiError::unauthenticated(format!(
                "the secret of API token {id} does not match"
            )));
        }
        if rec.revoked_ms != 0 {
            return Err(ApiError::unauthenticated(format!(
                "API token {id} ({}) was revoked",
                rec.name
            )));
        }
        if rec.expires_ms != 0 && rec.expires_ms <= now_ms {
            return Err(ApiError::unauthenticated(format!(
                "API token {id} ({}) expired",
                rec.name
            )));
        }
        if now_ms - rec.last_used_ms >= LAST_USED_RESOLUTION_MS {
            // Read again under the lock, so that a revocation applied from
            // the cluster meanwhile is not written over.
            let _m = self.lock_mirror();
            if let Ok(Some(mut fresh)) = self.get::<TokenRecord>(TOKENS, id) {
                fresh.last_used_ms = now_ms;
                // Not synced: a lost last-use time after a crash is harmless.
                let h = self.db.cf_handle(TOKENS).expect("cf");
                if let Ok(v) = serde_json::to_vec(&fresh) {
                    let _ = self.db.put_cf(h, id.as_bytes(), v);
                }
            }
        }
        Ok(Principal {
            actor: format!("token:{}", rec.name),
            role: rec.role,
            scope: rec.scope,
            credential: Credential::Token(rec.id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, AccessDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = AccessDb::open(&dir.path().join("access")).unwrap();
        (dir, db)
    }

    #[test]
    fn a_password_is_kept_as_an_argon2id_hash_and_checked() {
        let (_d, db) = db();
        let rec = db
            .add_user(
                "alice",
                Role::Viewer,
                Scope::all(),
                "correct horse battery",
                1,
            )
            .unwrap();
        assert!(
            rec.password_hash.starts_with("$argon2id$"),
            "{}",
            rec.password_hash
        );
        assert!(!rec.password_hash.contains("correct horse"));
        assert_eq!(
            db.login("alice", "correct horse battery").unwrap().name,
            "alice"
        );
        let wrong = db.login("alice", "wrong horse battery").unwrap_err();
        let unknown = db.login("bob", "correct horse battery").unwrap_err();
        assert_eq!(
            wrong, unknown,
            "an unknown name reads like a wrong password"
        );
        assert_eq!(wrong.code, Code::Unauthenticated);
    }

    #[test]
    fn a_short_password_or_odd_name_is_refused_before_hashing() {
        let (_d, db) = db();
        let e = db
            .add_user("alice", Role::Viewer, Scope::all(), "short", 1)
            .unwrap_err();
        assert!(e.message.contains("field `password`"), "{e}");
        let e = db
            .add_user(
                "al ice",
                Role::Viewer,
                Scope::all(),
                "long enough password",
                1,
            )
            .unwrap_err();
        assert!(e.message.contains("field `name`"), "{e}");
    }

    #[test]
    fn a_disabled_account_cannot_log_in() {
        let (_d, db) = db();
        db.add_user(
            "alice",
            Role::Admin,
            Scope::all(),
            "correct horse battery",
            1,
        )
        .unwrap();
        db.update_user("alice", 2, |u| {
            u.disabled = true;
            Ok(())
        })
        .unwrap();
        let e = db.login("alice", "correct horse battery").unwrap_err();
        assert_eq!(e.code, Code::PermissionDenied);
        assert!(e.message.contains("disabled"), "{e}");
    }

    #[test]
    fn a_token_is_shown_once_kept_as_a_hash_and_ends_when_revoked_or_expired() {
        let (dir, db) = db();
        let (rec, secret) = db
            .create_token("ci", Role::Viewer, Scope::locations([3]), 10_000, 1)
            .unwrap();
        assert!(secret.starts_with(&format!("slt_{}_", rec.id)));
        let stored = std::fs::read_dir(dir.path().join("access"))
            .unwrap()
            .count();
        assert!(stored > 0);
        let p = db.authenticate_token(&secret, 2).unwrap();
        assert_eq!(p.actor, "token:ci");
        assert_eq!(p.scope, Scope::locations([3]));
        let e = db.authenticate_token(&secret, 10_000).unwrap_err();
        assert!(e.message.contains("expired"), "{e}");
        // Change the last hex digit to a different one (a fixed '0' matched
        // one secret in sixteen).
        let last = if secret.ends_with('0') { '1' } else { '0' };
        let wrong = format!("{}{last}", &secret[..secret.len() - 1]);
        let e = db.authenticate_token(&wrong, 2).unwrap_err();
        assert!(e.message.contains("does not match"), "{e}");
        db.revoke_token("ci", 3).unwrap();
        let e = db.authenticate_token(&secret, 4).unwrap_err();
        assert!(e.message.contains("revoked"), "{e}");
        assert_eq!(e.code, Code::Unauthenticated);
        for t in db.tokens().unwrap() {
            assert!(!secret.contains(&t.secret_sha256));
        }
    }

    #[test]
    fn accounts_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access");
        {
            let db = AccessDb::open(&path).unwrap();
            db.add_user(
                "alice",
                Role::Investigator,
                Scope::locations([1, 2]),
                "correct horse battery",
                1,
            )
            .unwrap();
        }
        let db = AccessDb::open(&path).unwrap();
        let u = db.user("alice").unwrap().unwrap();
        assert_eq!(u.role, Role::Investigator);
        assert_eq!(u.scope, Scope::locations([1, 2]));
    }
}
