//! What every node must agree on about who may do what (issue 15): the
//! accounts, the API tokens and the agent grants, kept in the replicated KV
//! bucket [`CONTROL_BUCKET`]. A token made on one node works on every node;
//! a revocation made on one node (a token, an account disabled, an agent)
//! holds on every node, so a revoked agent cannot fail over to another node
//! and go on publishing.
//!
//! Each node keeps its own copy where the single-node core keeps these (the
//! access RocksDB, the agent registry file) and answers from it: a login or
//! a token check never waits for NATS. The copy is filled from the bucket
//! before the node serves anything ([`join`]) and kept current by a watch of
//! the bucket, so a change reaches the other nodes as fast as the watch
//! delivers it (milliseconds here). Should the watch stall without an error
//! (seen with a client that reconnected to another server), a check every
//! [`CHECK_EVERY`] compares the bucket's last revision with the last one
//! applied and watches again from there.
//!
//! A change is written to the bucket first — a creation (refused when the key
//! exists), or an update at the revision just read (compare-and-set, read
//! again and retried when another node changed the record in between) — and
//! to the node's copy after. The copy applies a record only at a revision
//! newer than the one it holds for that key ([`Control::newer`]), so a watch
//! that lags never puts back an older record over a newer one. Records are
//! never deleted (accounts are disabled, tokens and agents revoked; the bucket
//! denies deletes).
//!
//! Keys: `user.<hex of the name>`, `token.<hex of the id>`, `agent.<hex of
//! the agent id>` (hex: names may hold characters a key may not, such as
//! `@`); values: the records as JSON ([`UserRecord`], [`TokenRecord`],
//! [`Grant`]).
//!
//! Not shared, by design: a token's last use (each node keeps when it last
//! saw the token), dashboard sessions and the failed-login counters (each
//! node's own), the admin token (each node's bootstrap credential) and the
//! audit log (each node records what it served, hash-chained on its disk).
//! Records a node holds that the bucket does not (accounts made while it ran
//! alone) are added to the bucket when it joins; where both hold a record,
//! the bucket's wins.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use sightline_proto::ApiError;
use tokio_util::sync::CancellationToken;

use super::nats::ClusterError;
use crate::{
    access::{Access, AccessDb, TokenRecord, UserRecord},
    edge::registry::{Grant, Registry},
    fleet::Fleet,
};

/// KV bucket of accounts, API tokens and agent grants.
pub const CONTROL_BUCKET: &str = "sightline_control";
/// How often a node checks that its watch has not fallen behind the bucket.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Most tries of one compare-and-set change against concurrent writers.
const MAX_ATTEMPTS: u32 = 16;
/// Most tries of one create whose answer is lost (each may wait up to
/// twice [`super::nats::REQUEST_TIMEOUT`]: async-nats's write, then its
/// read back).
const CREATE_ATTEMPTS: u32 = 3;
/// How long a node waits for the bucket's records at start.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    User,
    Token,
    Agent,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Token => "token",
            Kind::Agent => "agent",
        }
    }
}

/// The key of `name`'s record.
pub fn key(kind: Kind, name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{}.{hex}", kind.prefix())
}

/// The kind and name a key holds; `None` for a key this core did not write.
pub fn parse_key(key: &str) -> Option<(Kind, String)> {
    let (prefix, hex) = key.split_once('.')?;
    let kind = [Kind::User, Kind::Token, Kind::Agent]
        .into_iter()
        .find(|k| k.prefix() == prefix)?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((kind, String::from_utf8(bytes).ok()?))
}

fn unavailable(key: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!(
        "the cluster's {CONTROL_BUCKET} bucket, key {key}: {e}; try again"
    ))
}

/// A node's handle on the bucket, and the revision its copy holds per key.
#[derive(Clone)]
pub struct Control {
    kv: kv::Store,
    applied: Arc<Mutex<HashMap<String, u64>>>,
}

impl Control {
    pub fn new(kv: kv::Store) -> Self {
        Self {
            kv,
            applied: Arc::default(),
        }
    }

    /// Whether revision `rev` of `key` is newer than what this node's copy
    /// holds. The caller holds its copy's write lock from this check until
    /// [`Control::applied`].
    pub fn newer(&self, key: &str, rev: u64) -> bool {
        self.applied
            .lock()
            .unwrap()
            .get(key)
            .is_none_or(|&held| rev > held)
    }

    /// Records that this node's copy holds revision `rev` of `key`.
    pub fn applied(&self, key: &str, rev: u64) {
        let mut a = self.applied.lock().unwrap();
        let held = a.entry(key.to_string()).or_default();
        *held = (*held).max(rev);
    }

    /// Creates `name`'s record; its revision, or `None` when the key exists
    /// (nothing written).
    pub async fn create<T: Serialize>(
        &self,
        kind: Kind,
        name: &str,
        value: &T,
    ) -> Result<Option<u64>, ApiError> {
        let k = key(kind, name);
        let v = serde_json::to_vec(value).map_err(|e| unavailable(&k, e))?;
        self.create_key(&k, v.into()).await
    }

    /// Creates `k` holding `v`: its revision, or `None` when the key holds
    /// another record. A create whose answer was lost (a timeout, a
    /// connection lost) may still have been written: async-nats then reads
    /// the key back and calls it `AlreadyExists`, which would refuse a
    /// record this very call made. So an existing key is read again, and a
    /// record equal to `v` is taken as this create's; a failed create that
    /// left nothing is tried again (at most [`CREATE_ATTEMPTS`] tries).
    async fn create_key(&self, k: &str, v: bytes::Bytes) -> Result<Option<u64>, ApiError> {
        let mut last = String::new();
        for attempt in 0..CREATE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            match self.kv.create(k, v.clone()).await {
                Ok(rev) => return Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    match self.kv.entry(k).await {
                        Ok(Some(e)) if e.operation == kv::Operation::Put => {
                            return Ok((e.value == v).then_some(e.revision));
                        }
                        // Deleted since: create it again.
                        Ok(_) => {}
                        Err(e) => last = format!("the key exists but cannot be read: {e}"),
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(unavailable(k, last))
    }

    /// Changes `name`'s record to what `f` makes of the one in the bucket
    /// (`None`: there is none), at the revision read; when another node
    /// changed it in between, reads it again and calls `f` again. Returns
    /// the record written and its revision; `f`'s error is returned as is,
    /// with nothing written.
    pub async fn modify<T: Serialize + DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
        mut f: impl FnMut(Option<T>) -> Result<T, ApiError>,
    ) -> Result<(T, u64), ApiError> {
        let k = key(kind, name);
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // A replica that answered the read may be a moment behind.
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
            }
            let entry = self.kv.entry(&k).await.map_err(|e| unavailable(&k, e))?;
            let (current, rev) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    Some(serde_json::from_slice::<T>(&e.value).map_err(|x| unavailable(&k, x))?),
                    e.revision,
                ),
                _ => (None, 0),
            };
            let next = f(current)?;
            let v = bytes::Bytes::from(serde_json::to_vec(&next).map_err(|e| unavailable(&k, e))?);
            let written = if rev == 0 {
                self.create_key(&k, v).await?
            } else {
                match self.kv.update(&k, v, rev).await {
                    Ok(rev) => Some(rev),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                    Err(e) => return Err(unavailable(&k, e)),
                }
            };
            if let Some(rev) = written {
                return Ok((next, rev));
            }
        }
        Err(ApiError::unavailable(format!(
            "the cluster's {CONTROL_BUCKET} bucket, key {k}: changed by other nodes {MAX_ATTEMPTS} times while this change was made; try again"
        )))
    }
}

/// Runs `fut` from a blocking thread (the access store's callers run on
/// `spawn_blocking`, where the runtime's handle is current).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(fut)
}

/// This node's copies, which the bucket's records are applied to.
#[derive(Clone)]
pub struct Mirrors {
    pub access: Access,
    pub registry: Arc<Registry>,
    pub fleet: Arc<Fleet>,
}

impl Mirrors {
    /// Runs `f` on the access store from a blocking thread.
    async fn on_db<T: Send + 'static>(
        &self,
        control: &Control,
        f: impl FnOnce(&AccessDb, &Control) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (db, c) = (self.access.db.clone(), control.clone());
        tokio::task::spawn_blocking(move || f(&db, &c))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    }

    /// Applies one record of the bucket at revision `rev`.
    async fn apply(
        &self,
        control: &Control,
        kind: Kind,
        name: &str,
        value: &[u8],
        rev: u64,
    ) -> Result<(), String> {
        let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", key(kind, name));
        match kind {
            Kind::User => {
                let rec: UserRecord = serde_json::from_slice(value).map_err(|e| bad(&e))?;
                if rec.name != name {
                    return Err(bad(&format!("holds the account {:?}", rec.name)));
                }
                let changed = self
                    .on_db(control, move |db, c| db.mirror_user(c, rec, rev))
                    .await
                    .map_err(|e| bad(&e))?;
                if changed {
                    // As on the node that made the change: its sessions end
                    // and open streams check their credential again.
                    let ended = self.access.sessions.end_user(name);
                    self.access.revoked();
                    tracing::info!(
                        user = name,
                        sessions_ended = ended,
                        "cluster: account changed on another node"
                    );
                }
            }
            Kind::Token => {
                let rec: TokenRecord = serde_json::from_slice(value).map_err(|e| bad(&e))?;
                if rec.id != name {
                    return Err(bad(&format!("holds the token {:?}", rec.id)));
                }
                let changed = self
                    .on_db(control, move |db, c| db.mirror_token(c, rec, rev))
                    .await
                    .map_err(|e| bad(&e))?;
                if changed {
                    self.access.revoked();
                }
            }
            Kind::Agent => {
                let grant: Grant = serde_json::from_slice(value).map_err(|e| bad(&e))?;
                sightline_proto::validate_agent_id(name).map_err(|e| bad(&e.reason))?;
                let revoked = grant.revoked;
                if self
                    .registry
                    .mirror(control, name, grant, rev)
                    .await
                    .map_err(|e| bad(&e))?
                {
                    if revoked {
                        // Ends its session on this node at once.
                        self.fleet.revoke(name);
                        tracing::warn!(agent = name, "cluster: agent revoked on another node");
                    } else {
                        self.fleet.reinstate(name);
                        tracing::info!(agent = name, "cluster: agent granted on another node");
                    }
                }
            }
        }
        Ok(())
    }

    async fn apply_entry(&self, control: &Control, e: &kv::Entry) {
        if e.operation != kv::Operation::Put {
            return;
        }
        match parse_key(&e.key) {
            Some((kind, name)) => {
                if let Err(why) = self.apply(control, kind, &name, &e.value, e.revision).await {
                    tracing::error!(error = %why, "cluster: a control record was not applied; this node keeps the copy it had");
                }
            }
            None => {
                tracing::warn!(key = %e.key, "cluster: unknown key in {CONTROL_BUCKET}, ignored")
            }
        }
    }

    /// Every record this node holds, as (kind, name, JSON).
    async fn local_records(&self) -> Result<Vec<(Kind, String, serde_json::Value)>, ClusterError> {
        let db = self.access.db.clone();
        let (users, tokens) =
            tokio::task::spawn_blocking(move || Ok::<_, ApiError>((db.users()?, db.tokens()?)))
                .await
                .map_err(|e| ClusterError::js(CONTROL_BUCKET, e))?
                .map_err(|e| ClusterError::js(CONTROL_BUCKET, e))?;
        let json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| ClusterError::js(CONTROL_BUCKET, e))
        };
        let mut out = Vec::new();
        for u in &users {
            out.push((Kind::User, u.name.clone(), json(serde_json::to_value(u))?));
        }
        for t in &tokens {
            out.push((Kind::Token, t.id.clone(), json(serde_json::to_value(t))?));
        }
        for (agent, g) in self.registry.grants() {
            out.push((Kind::Agent, agent, json(serde_json::to_value(&*g))?));
        }
        Ok(out)
    }
}

/// Joins the cluster's control state: hands `control` to this node's copies
/// (their changes go to the bucket from now on), applies every record of
/// the bucket, adds to it what only this node holds, and returns the task
/// that keeps the copies current until `stop`. Called before the node
/// serves anything.
pub async fn join(
    control: Control,
    mirrors: Mirrors,
    stop: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, ClusterError> {
    mirrors.access.db.share(control.clone());
    mirrors.registry.share(control.clone());
    let err = |e: &dyn std::fmt::Display| ClusterError::js(format!("bucket {CONTROL_BUCKET}"), e);
    let mut watch = control
        .kv
        .watch_with_history(">")
        .await
        .map_err(|e| err(&e))?;
    let mut status = control.kv.status().await.map_err(|e| err(&e))?;
    let mut seen = HashSet::new();
    let mut delivered = 0;
    if status.values() > 0 {
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        loop {
            let e = match tokio::time::timeout_at(deadline, watch.next()).await {
                Err(_) => {
                    return Err(err(&format!(
                        "the bucket's {} records were not all read within {SYNC_TIMEOUT:?}",
                        status.values()
                    )))
                }
                Ok(None) => return Err(err(&"the watch ended while reading the bucket")),
                Ok(Some(Err(e))) => return Err(err(&e)),
                Ok(Some(Ok(e))) => e,
            };
            seen.insert(e.key.clone());
            delivered = e.revision;
            mirrors.apply_entry(&control, &e).await;
            if e.delta == 0 || e.seen_current {
                break;
            }
        }
    }
    let mut added = 0;
    for (kind, name, value) in mirrors.local_records().await? {
        let k = key(kind, &name);
        if seen.contains(&k) {
            continue;
        }
        if let Some(rev) = control
            .create(kind, &name, &value)
            .await
            .map_err(|e| err(&e))?
        {
            control.applied(&k, rev);
            added += 1;
        }
    }
    status = control.kv.status().await.map_err(|e| err(&e))?;
    tracing::info!(
        records = status.values(),
        added_from_this_node = added,
        "cluster: accounts, API tokens and agent grants read from {CONTROL_BUCKET}"
    );
    Ok(follow(control, mirrors, watch, delivered, stop))
}

/// Applies the bucket's changes as its watch delivers them; watches again
/// from the last revision applied when the watch breaks, ends, or has not
/// delivered what the bucket holds by the next check.
async fn follow(
    control: Control,
    mirrors: Mirrors,
    mut watch: kv::Watch,
    mut delivered: u64,
    stop: CancellationToken,
) {
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.tick().await;
    // The revision delivered when a check last found the watch behind.
    let mut behind_at: Option<u64> = None;
    loop {
        let rewatch = tokio::select! {
            _ = stop.cancelled() => return,
            e = watch.next() => match e {
                Some(Ok(e)) => {
                    delivered = delivered.max(e.revision);
                    mirrors.apply_entry(&control, &e).await;
                    false
                }
                Some(Err(e)) => {
                    tracing::warn!(bucket = CONTROL_BUCKET, error = %e, "the bucket's watch broke; watching again");
                    true
                }
                None => {
                    tracing::warn!(bucket = CONTROL_BUCKET, "the bucket's watch ended; watching again");
                    true
                }
            },
            _ = check.tick() => {
                let last = match control.kv.status().await {
                    Ok(s) => s.info.state.last_sequence,
                    Err(e) => {
                        tracing::warn!(bucket = CONTROL_BUCKET, error = %e, "cannot read the bucket's state");
                        continue;
                    }
                };
                // Behind at two checks in a row with nothing delivered in
                // between: the watch is stuck.
                let stuck = last > delivered && behind_at == Some(delivered);
                behind_at = (last > delivered).then_some(delivered);
                if stuck {
                    tracing::warn!(bucket = CONTROL_BUCKET, last, delivered, "the bucket's watch fell behind; watching again");
                }
                stuck
            }
        };
        if !rewatch {
            continue;
        }
        behind_at = None;
        loop {
            let from = delivered + 1;
            match control.kv.watch_all_from_revision(from).await {
                Ok(w) => {
                    watch = w;
                    break;
                }
                Err(e) => {
                    tracing::warn!(bucket = CONTROL_BUCKET, error = %e, "cannot watch the bucket; trying again")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Instant};

    use super::*;
    use crate::{
        access::{AccessConfig, AccessDb, Role, Scope},
        api::admin_token::AdminToken,
        cluster::testing::NatsServer,
        edge::registry::SessionRefusal,
        metrics::Metrics,
    };
    use sightline_proto::{v1::AgentGrant, Code};

    const PASSWORD: &str = "a long enough password";

    /// One node's copies (its own directory), joined to `nats`'s bucket.
    struct Node {
        dir: tempfile::TempDir,
        access: Access,
        registry: Arc<Registry>,
        stop: CancellationToken,
    }

    impl Node {
        fn open() -> Node {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let access = Access::new(
                Arc::new(AccessDb::open(&d.join("access")).unwrap()),
                &AccessConfig::default(),
                Arc::new(AdminToken::load_or_create(&d.join("admin.token")).unwrap()),
                crate::audit::AuditLog::open(&d.join("audit"), 1 << 20).unwrap(),
            );
            let registry = Arc::new(Registry::open_or_create(d.join("agents.toml")).unwrap());
            Node {
                dir,
                access,
                registry,
                stop: CancellationToken::new(),
            }
        }

        async fn join(&self, nats: &NatsServer, id: &str) {
            let n = nats.connect(id, 4).await;
            let follow = join(
                Control::new(n.control.clone()),
                Mirrors {
                    access: self.access.clone(),
                    registry: self.registry.clone(),
                    fleet: Arc::new(Fleet::new(Arc::new(Metrics::new()), Vec::new())),
                },
                self.stop.clone(),
            )
            .await
            .unwrap();
            tokio::spawn(follow);
        }

        /// Runs `f` on the access store from a blocking thread, as the
        /// admin API does.
        async fn db<T: Send + 'static>(
            &self,
            f: impl FnOnce(&AccessDb) -> Result<T, ApiError> + Send + 'static,
        ) -> Result<T, ApiError> {
            let db = self.access.db.clone();
            tokio::task::spawn_blocking(move || f(&db)).await.unwrap()
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    /// Waits (at most 10 s) until `check` holds.
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_create_whose_answer_was_lost_is_read_back_not_refused_or_made_twice() {
        let nats = NatsServer::start();
        let n = nats.connect("a", 4).await;
        let control = Control::new(n.control.clone());
        let value = serde_json::json!({"name": "carol"});
        // The server stops answering with the create in its socket, and goes
        // on after the client has given up waiting (REQUEST_TIMEOUT): the
        // create is written, its answer lost.
        nats.pause();
        let resume = async {
            tokio::time::sleep(crate::cluster::nats::REQUEST_TIMEOUT + Duration::from_millis(500))
                .await;
            nats.resume();
        };
        let (rev, ()) = tokio::join!(control.create(Kind::User, "carol", &value), resume);
        let rev = rev
            .expect("a create written but unanswered is taken as written")
            .expect("the record read back is this create's");
        let entry = n
            .control
            .entry(key(Kind::User, "carol"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.revision, rev, "the revision returned is the record's");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&entry.value).unwrap(),
            value
        );
        // Another record under the name is still refused as existing.
        let other = serde_json::json!({"name": "carol", "other": true});
        assert_eq!(
            control.create(Kind::User, "carol", &other).await.unwrap(),
            None
        );
    }

    #[test]
    fn keys_name_every_record_and_read_back() {
        for (kind, name) in [
            (Kind::User, "ann@example.org"),
            (Kind::Token, "0123456789abcdef"),
            (Kind::Agent, "gate-1"),
            (Kind::User, ".."),
        ] {
            let k = key(kind, name);
            assert!(
                k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'),
                "{k}"
            );
            assert_eq!(parse_key(&k), Some((kind, name.to_string())));
        }
        for bad in ["user", "user.", "user.6", "user.zz", "group.61", "agent.ff"] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accounts_tokens_and_grants_changed_on_one_node_hold_on_every_node() {
        let nats = NatsServer::start();
        let (a, b) = (Node::open(), Node::open());
        // An account node A had while it ran alone comes with it.
        a.db(|db| db.add_user("alice", Role::Viewer, Scope::all(), PASSWORD, 1))
            .await
            .unwrap();
        a.join(&nats, "a").await;
        b.join(&nats, "b").await;
        assert_eq!(
            b.db(|db| db.login("alice", PASSWORD)).await.unwrap().role,
            Role::Viewer,
            "an account A held before joining is in the cluster"
        );

        // An account and a token made on A work on B.
        a.db(|db| db.add_user("bob", Role::Investigator, Scope::all(), PASSWORD, 2))
            .await
            .unwrap();
        let (_, secret) = a
            .db(|db| db.create_token("ci", Role::Viewer, Scope::all(), 0, 2))
            .await
            .unwrap();
        let bdb = b.access.db.clone();
        eventually("B logs bob in", || bdb.login("bob", PASSWORD).is_ok()).await;
        let s = secret.clone();
        eventually("B takes A's token", || {
            bdb.authenticate_token(&s, 3).is_ok()
        })
        .await;
        // The name is the cluster's: B cannot make another bob.
        let e = b
            .db(|db| db.add_user("bob", Role::Admin, Scope::all(), PASSWORD, 4))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::AlreadyExists, "{e}");

        // Revoked on B: refused on A.
        b.db(|db| db.revoke_token("ci", 5)).await.unwrap();
        let adb = a.access.db.clone();
        let s = secret.clone();
        eventually("A refuses the token B revoked", || {
            adb.authenticate_token(&s, 6)
                .is_err_and(|e| e.message.contains("revoked"))
        })
        .await;

        // Disabled on B: A ends bob's sessions and refuses his login.
        let session = a.access.sessions.start(
            "bob",
            Role::Investigator,
            Scope::all(),
            IpAddr::from([127, 0, 0, 1]),
            sightline_proto::now_ms(),
        );
        b.db(|db| {
            db.update_user("bob", 7, |u| {
                u.disabled = true;
                Ok(())
            })
        })
        .await
        .unwrap();
        eventually("A refuses bob's login", || {
            adb.login("bob", PASSWORD)
                .is_err_and(|e| e.message.contains("disabled"))
        })
        .await;
        let sessions = a.access.sessions.clone();
        eventually("A ended bob's session", || {
            sessions
                .get(&session.id, sightline_proto::now_ms())
                .is_none()
        })
        .await;
        assert!(session.ended.is_cancelled());

        // An agent granted on A and revoked on B is refused by A, and A's
        // registry file says so (it is what A reads at its next start).
        a.registry
            .grant_agent(AgentGrant {
                agent_id: "gate-1".into(),
                cameras: vec![1, 2],
                ..Default::default()
            })
            .await
            .unwrap();
        let breg = b.registry.clone();
        eventually("B admits gate-1", || breg.admit("gate-1", None).is_ok()).await;
        b.registry.revoke("gate-1").await.unwrap();
        let areg = a.registry.clone();
        eventually("A refuses gate-1", || {
            areg.admit("gate-1", None) == Err(SessionRefusal::Revoked)
        })
        .await;
        let on_disk = Registry::open(Some(a.dir.path().join("agents.toml"))).unwrap();
        assert_eq!(on_disk.admit("gate-1", None), Err(SessionRefusal::Revoked));

        // A node that joins later has all of it before it serves anything.
        let c = Node::open();
        c.join(&nats, "c").await;
        let cdb = c.access.db.clone();
        assert!(cdb.login("alice", PASSWORD).is_ok());
        assert!(cdb
            .login("bob", PASSWORD)
            .is_err_and(|e| e.message.contains("disabled")));
        assert!(cdb
            .authenticate_token(&secret, 8)
            .is_err_and(|e| e.message.contains("revoked")));
        assert_eq!(
            c.registry.admit("gate-1", None),
            Err(SessionRefusal::Revoked)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_file_edited_by_hand_on_one_node_reaches_every_node() {
        let nats = NatsServer::start();
        let (a, b) = (Node::open(), Node::open());
        a.join(&nats, "a").await;
        b.join(&nats, "b").await;
        a.registry
            .grant_agent(AgentGrant {
                agent_id: "gate-1".into(),
                cameras: vec![1],
                ..Default::default()
            })
            .await
            .unwrap();
        let breg = b.registry.clone();
        eventually("B admits gate-1", || breg.admit("gate-1", None).is_ok()).await;
        // An operator edits A's file: gate-2 added, gate-1 left out, then
        // SIGHUP. gate-2 reaches B; gate-1 is kept (the cluster never forgets
        // an agent) and written back to A's file.
        let path = a.dir.path().join("agents.toml");
        std::fs::write(&path, "[agents.gate-2]\ncameras = [2]\n").unwrap();
        a.registry.reload().await.unwrap();
        eventually("B admits gate-2", || breg.admit("gate-2", None).is_ok()).await;
        assert!(b.registry.admit("gate-1", None).is_ok());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("gate-1") && text.contains("gate-2"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_made_after_the_nats_server_restarted_still_reaches_every_node() {
        let mut nats = NatsServer::start();
        let (a, b) = (Node::open(), Node::open());
        a.join(&nats, "a").await;
        b.join(&nats, "b").await;
        let (_, secret) = a
            .db(|db| db.create_token("ci", Role::Viewer, Scope::all(), 0, 1))
            .await
            .unwrap();
        let bdb = b.access.db.clone();
        let s = secret.clone();
        eventually("B takes A's token", || {
            bdb.authenticate_token(&s, 2).is_ok()
        })
        .await;
        // The server dies and comes back: B's watch breaks (or goes quiet)
        // and B watches again from the last revision it had.
        nats.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match a.db(|db| db.revoke_token("ci", 3)).await {
                Ok(_) => break,
                // The client reconnects first.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("revoke not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let deadline = Instant::now() + 3 * CHECK_EVERY;
        while bdb.authenticate_token(&secret, 4).is_ok() {
            assert!(
                Instant::now() < deadline,
                "B still takes the token A revoked after the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_made_at_once_on_two_nodes_are_all_kept() {
        let nats = NatsServer::start();
        let (a, b) = (Node::open(), Node::open());
        a.join(&nats, "a").await;
        b.join(&nats, "b").await;
        a.db(|db| db.add_user("carol", Role::Viewer, Scope::locations([]), PASSWORD, 1))
            .await
            .unwrap();
        let bdb = b.access.db.clone();
        eventually("B has carol", || bdb.user("carol").unwrap().is_some()).await;
        // Each node adds its own locations to carol's scope, one change at a
        // time, both at once: every change is made on the record the other
        // left (compare-and-set), none is lost.
        let add = |node: &Node, from: i64| {
            let db = node.access.db.clone();
            tokio::task::spawn_blocking(move || {
                for l in from..from + 5 {
                    db.update_user("carol", 2, |u| {
                        let mut locs = u.scope.to_list();
                        locs.push(l);
                        u.scope = Scope::locations(locs);
                        Ok(())
                    })
                    .unwrap();
                }
            })
        };
        let (x, y) = (add(&a, 100), add(&b, 200));
        x.await.unwrap();
        y.await.unwrap();
        let mut want: Vec<i64> = (100..105).chain(200..205).collect();
        want.sort();
        for node in [&a, &b] {
            let db = node.access.db.clone();
            let w = want.clone();
            eventually("every location on every node", || {
                let mut got = db.user("carol").unwrap().unwrap().scope.to_list();
                got.sort();
                got == w
            })
            .await;
        }
    }
}
