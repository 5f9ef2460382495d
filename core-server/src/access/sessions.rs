//! Dashboard sessions (in memory) and the login lockout.
//!
//! A session is 32 random bytes (hex) in an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` under TLS); the core keeps it with its account, role,
//! scope, a CSRF token, its login and last-use times. It ends after
//! `access.session_idle` unused or `access.session_absolute` after login,
//! at logout, when an admin revokes it, or when its account changes.
//!
//! Failed logins are counted per account and per source address within
//! `access.lockout_window`; past the thresholds the account (or address) is
//! refused for the rest of the window, with a message saying for how long.
//! Each failure is also slowed (a growing delay, at most
//! [`MAX_FAILURE_DELAY`]) before it is answered.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use sightline_proto::{ApiError, Code};
use tokio_util::sync::CancellationToken;

use super::{AccessConfig, Credential, Principal, Role, Scope};

/// The longest a failed login waits before it is answered.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(2);
/// Most sessions kept at once (all accounts); the oldest idle ends first.
pub const MAX_SESSIONS: usize = 10_000;
/// Most accounts and addresses whose failures are remembered at once.
const MAX_FAILURE_ENTRIES: usize = 100_000;

/// One logged-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user: String,
    pub role: Role,
    pub scope: Scope,
    /// Sent with every state-changing request from the dashboard.
    pub csrf: String,
    pub source: IpAddr,
    pub created_ms: i64,
    pub last_used_ms: i64,
    created: Instant,
    last_used: Instant,
    /// Cancelled when the session ends: what it holds open (a live feed) closes.
    pub ended: CancellationToken,
}

impl Session {
    /// Names the session for admins without being its secret: the first 16
    /// hex digits of the SHA-256 of its id.
    pub fn handle(&self) -> String {
        handle_of(&self.id)
    }

    pub fn principal(&self) -> Principal {
        Principal {
            actor: format!("user:{}", self.user),
            role: self.role,
            scope: self.scope.clone(),
            credential: Credential::Session(self.id.clone()),
        }
    }
}

#[derive(Default)]
struct Failures {
    count: u32,
    first: Option<Instant>,
}

/// The sessions and the failed-login counters.
pub struct Sessions {
    config: AccessConfig,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    by_account: HashMap<String, Failures>,
    by_address: HashMap<IpAddr, Failures>,
}

fn handle_of(id: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(id.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_hex() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Sessions {
    pub fn new(config: AccessConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a login attempt for `account` from `source` while either is
    /// locked out (RESOURCE_EXHAUSTED, saying for how long).
    pub fn check_lockout(&self, account: &str, source: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let window = self.config.lockout_window;
        let g = self.lock();
        let locked = |f: Option<&Failures>, max: u32| {
            f.and_then(|f| {
                let first = f.first?;
                let left = window.checked_sub(now.duration_since(first))?;
                (f.count >= max).then_some(left)
            })
        };
        if let Some(left) = locked(
            g.by_account.get(account),
            self.config.lockout_account_failures,
        ) {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "too many failed logins for this account: locked for {} more minute(s)",
                    left.as_secs().div_ceil(60).max(1)
                ),
            ));
        }
        if let Some(left) = locked(
            g.by_address.get(&source),
            self.config.lockout_address_failures,
        ) {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "too many failed logins from {source}: locked for {} more minute(s)",
                    left.as_secs().div_ceil(60).max(1)
                ),
            ));
        }
        Ok(())
    }

    /// Counts a failed login; returns how long to wait before answering.
    pub fn failed(&self, account: &str, source: IpAddr) -> Duration {
        let now = Instant::now();
        let window = self.config.lockout_window;
        let mut g = self.lock();
        if g.by_account.len() >= MAX_FAILURE_ENTRIES {
            g.by_account
                .retain(|_, f| f.first.is_some_and(|t| now.duration_since(t) < window));
        }
        if g.by_address.len() >= MAX_FAILURE_ENTRIES {
            g.by_address
                .retain(|_, f| f.first.is_some_and(|t| now.duration_since(t) < window));
        }
        let bump = |f: &mut Failures| {
            if f.first.is_none_or(|t| now.duration_since(t) >= window) {
                *f = Failures {
                    count: 0,
                    first: Some(now),
                };
            }
            f.count += 1;
            f.count
        };
        let n = bump(g.by_account.entry(account.to_string()).or_default());
        bump(g.by_address.entry(source).or_default());
        (Duration::from_millis(250) * n).min(MAX_FAILURE_DELAY)
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, account: &str) {
        self.lock().by_account.remove(account);
    }

    /// Starts a session for an account that just logged in.
    pub fn start(
        &self,
        user: &str,
        role: Role,
        scope: Scope,
        source: IpAddr,
        now_ms: i64,
    ) -> Session {
        let now = Instant::now();
        let s = Session {
            id: random_hex(),
            user: user.to_string(),
            role,
            scope,
            csrf: random_hex(),
            source,
            created_ms: now_ms,
            last_used_ms: now_ms,
            created: now,
            last_used: now,
            ended: CancellationToken::new(),
        };
        let mut g = self.lock();
        self.expire(&mut g, now);
        // The account's oldest sessions end past its cap; the oldest idle
        // session of anyone past the global one.
        let mut mine: Vec<(Instant, String)> = g
            .sessions
            .values()
            .filter(|o| o.user == user)
            .map(|o| (o.created, o.id.clone()))
            .collect();
        if mine.len() >= self.config.max_sessions_per_user {
            mine.sort();
            for (_, id) in mine
                .iter()
                .take(mine.len() + 1 - self.config.max_sessions_per_user)
            {
                if let Some(o) = g.sessions.remove(id) {
                    o.ended.cancel();
                }
            }
        }
        if g.sessions.len() >= MAX_SESSIONS {
            if let Some(id) = g
                .sessions
                .values()
                .min_by_key(|o| o.last_used)
                .map(|o| o.id.clone())
            {
                if let Some(o) = g.sessions.remove(&id) {
                    o.ended.cancel();
                }
            }
        }
        g.sessions.insert(s.id.clone(), s.clone());
        s
    }

    fn expire(&self, g: &mut Inner, now: Instant) {
        let (idle, absolute) = (self.config.session_idle, self.config.session_absolute);
        g.sessions.retain(|_, s| {
            let keep =
                now.duration_since(s.last_used) < idle && now.duration_since(s.created) < absolute;
            if !keep {
                s.ended.cancel();
            }
            keep
        });
    }

    /// The session behind a cookie, if it is still valid; marks it used.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        if id.len() != 64 {
            return None;
        }
        let now = Instant::now();
        let mut g = self.lock();
        let s = g.sessions.get_mut(id)?;
        if now.duration_since(s.last_used) >= self.config.session_idle
            || now.duration_since(s.created) >= self.config.session_absolute
        {
            let s = g.sessions.remove(id)?;
            s.ended.cancel();
            return None;
        }
        s.last_used = now;
        s.last_used_ms = now_ms;
        Some(s.clone())
    }

    /// Ends a session (logout or an admin's revocation).
    pub fn end(&self, id: &str) -> Option<Session> {
        let s = self.lock().sessions.remove(id)?;
        s.ended.cancel();
        Some(s)
    }

    /// Ends the session an admin names by its handle.
    pub fn end_handle(&self, handle: &str) -> Option<Session> {
        let id = self
            .lock()
            .sessions
            .values()
            .find(|s| s.handle() == handle)
            .map(|s| s.id.clone())?;
        self.end(&id)
    }

    /// Ends every session of an account (disabled, role or scope changed,
    /// password reset); returns how many.
    pub fn end_user(&self, user: &str) -> usize {
        let mut g = self.lock();
        let ids: Vec<String> = g
            .sessions
            .values()
            .filter(|s| s.user == user)
            .map(|s| s.id.clone())
            .collect();
        for id in &ids {
            if let Some(s) = g.sessions.remove(id) {
                s.ended.cancel();
            }
        }
        ids.len()
    }

    /// Every live session, oldest login first.
    pub fn list(&self) -> Vec<Session> {
        let mut g = self.lock();
        self.expire(&mut g, Instant::now());
        let mut v: Vec<Session> = g.sessions.values().cloned().collect();
        v.sort_by_key(|s| s.created_ms);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AccessConfig {
        AccessConfig {
            session_idle: Duration::from_millis(200),
            session_absolute: Duration::from_secs(60),
            lockout_account_failures: 3,
            lockout_address_failures: 5,
            lockout_window: Duration::from_secs(60),
            max_sessions_per_user: 2,
        }
    }
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn an_idle_session_expires() {
        let s = Sessions::new(cfg());
        let a = s.start("alice", Role::Viewer, Scope::all(), IP, 0);
        assert!(s.get(&a.id, 1).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(s.get(&a.id, 2).is_none());
        assert!(a.ended.is_cancelled());
    }

    #[test]
    fn repeated_failures_lock_the_account_then_the_address() {
        let s = Sessions::new(cfg());
        for _ in 0..3 {
            s.check_lockout("alice", IP).unwrap();
            s.failed("alice", IP);
        }
        let e = s.check_lockout("alice", IP).unwrap_err();
        assert!(e.message.contains("this account"), "{e}");
        s.check_lockout("bob", IP).unwrap();
        s.failed("bob", IP);
        s.failed("carol", IP);
        let e = s.check_lockout("dave", IP).unwrap_err();
        assert!(e.message.contains("from 127.0.0.1"), "{e}");
    }

    #[test]
    fn an_account_holds_at_most_its_cap_of_sessions_and_ends_them_all_on_change() {
        let s = Sessions::new(cfg());
        let a = s.start("alice", Role::Viewer, Scope::all(), IP, 0);
        s.start("alice", Role::Viewer, Scope::all(), IP, 1);
        s.start("alice", Role::Viewer, Scope::all(), IP, 2);
        assert!(a.ended.is_cancelled(), "the oldest ended");
        assert_eq!(s.list().len(), 2);
        assert_eq!(s.end_user("alice"), 2);
        assert!(s.list().is_empty());
    }
}
