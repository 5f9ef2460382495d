//! One audit record: its fields, its line in a segment file, and its hash.
//!
//! The encoding is written down in the module doc ([`super`]); this file is
//! the only code that makes or reads a line.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Length of a hash in hex.
pub const HASH_HEX_LEN: usize = 64;

/// The `prev_hash` of the first record of a log that was never cut.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a line ends with: `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + HASH_HEX_LEN + 2;

/// What was done. A closed set: a new kind of action is a new variant here
/// (and in the README's table), never a free string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    LoginSucceeded,
    LoginFailed,
    Logout,
    SnapshotViewed,
    ClipViewed,
    ClipDownloaded,
    Search,
    TopItems,
    ListEvents,
    GetEvent,
    Timeline,
    Subscribe,
    CaseExported,
    UserAdded,
    UserDisabled,
    RoleChanged,
    PasswordReset,
    TokenCreated,
    TokenRevoked,
    SessionRevoked,
    AgentGranted,
    AgentRevoked,
    LocationsReloaded,
    QuarantineViewed,
    AuditViewed,
    AuditExported,
    AccessRefused,
    AuditCut,
    BackupMade,
}

impl Action {
    /// The name as stored (`snake_case`), e.g. `clip_viewed`.
    pub fn name(self) -> &'static str {
        ACTIONS
            .iter()
            .find(|(a, _)| *a == self)
            .map_or("unknown", |(_, n)| *n)
    }
}

/// Every action with its stored name (for parsing filters and the README).
pub const ACTIONS: &[(Action, &str)] = &[
    (Action::LoginSucceeded, "login_succeeded"),
    (Action::LoginFailed, "login_failed"),
    (Action::Logout, "logout"),
    (Action::SnapshotViewed, "snapshot_viewed"),
    (Action::ClipViewed, "clip_viewed"),
    (Action::ClipDownloaded, "clip_downloaded"),
    (Action::Search, "search"),
    (Action::TopItems, "top_items"),
    (Action::ListEvents, "list_events"),
    (Action::GetEvent, "get_event"),
    (Action::Timeline, "timeline"),
    (Action::Subscribe, "subscribe"),
    (Action::CaseExported, "case_exported"),
    (Action::UserAdded, "user_added"),
    (Action::UserDisabled, "user_disabled"),
    (Action::RoleChanged, "role_changed"),
    (Action::PasswordReset, "password_reset"),
    (Action::TokenCreated, "token_created"),
    (Action::TokenRevoked, "token_revoked"),
    (Action::SessionRevoked, "session_revoked"),
    (Action::AgentGranted, "agent_granted"),
    (Action::AgentRevoked, "agent_revoked"),
    (Action::LocationsReloaded, "locations_reloaded"),
    (Action::QuarantineViewed, "quarantine_viewed"),
    (Action::AuditViewed, "audit_viewed"),
    (Action::AuditExported, "audit_exported"),
    (Action::AccessRefused, "access_refused"),
    (Action::AuditCut, "audit_cut"),
    (Action::BackupMade, "backup_made"),
];

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ACTIONS
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(a, _)| *a)
            .ok_or_else(|| format!("{s:?} is not an audit action"))
    }
}

/// Who acted, stored as a string: `user:NAME`, `token:NAME`, `agent:ID`,
/// `admin-token`, `anonymous`, `system` (the core itself, e.g. a retention cut).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    User(String),
    Token(String),
    Agent(String),
    AdminToken,
    Anonymous,
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(n) => write!(f, "user:{n}"),
            Actor::Token(n) => write!(f, "token:{n}"),
            Actor::Agent(n) => write!(f, "agent:{n}"),
            Actor::AdminToken => f.write_str("admin-token"),
            Actor::Anonymous => f.write_str("anonymous"),
            Actor::System => f.write_str("system"),
        }
    }
}

impl FromStr for Actor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let named = |n: &str, f: fn(String) -> Actor| {
            if n.is_empty() {
                Err(format!("{s:?}: the name after the colon is empty"))
            } else {
                Ok(f(n.to_string()))
            }
        };
        match s.split_once(':') {
            Some(("user", n)) => named(n, Actor::User),
            Some(("token", n)) => named(n, Actor::Token),
            Some(("agent", n)) => named(n, Actor::Agent),
            None if s == "admin-token" => Ok(Actor::AdminToken),
            None if s == "anonymous" => Ok(Actor::Anonymous),
            None if s == "system" => Ok(Actor::System),
            _ => Err(format!(
                "{s:?}: expected user:NAME, token:NAME, agent:ID, admin-token, anonymous or system"
            )),
        }
    }
}

impl Serialize for Actor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done (footage served, user added, ...).
    #[default]
    Ok,
    /// Refused: no credential, a wrong one, or one that may not do this.
    Denied,
    /// Tried and failed on the server's side.
    Error,
}

/// One record as stored. Fields are serialized in this order; the optional
/// ones are left out when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 1, 2, 3, ... without gaps over the whole life of the log.
    pub seq: u64,
    /// When, in Unix milliseconds (never less than the record before).
    pub time: i64,
    pub actor: Actor,
    /// The client's address, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SocketAddr>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub det_oid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<i64>,
    /// A footage object's key (its content address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Small JSON object: a search's filters, a role given, a refusal's reason.
    #[serde(default, skip_serializing_if = "is_empty_object")]
    pub detail: serde_json::Map<String, serde_json::Value>,
    pub outcome: Outcome,
    /// The `hash` of the record before (or of the anchor, or [`GENESIS_HASH`]).
    pub prev_hash: String,
    /// SHA-256, in lower-case hex, of this line without its `hash` field.
    pub hash: String,
}

fn is_empty_object(m: &serde_json::Map<String, serde_json::Value>) -> bool {
    m.is_empty()
}

/// The record without `hash`, as hashed: serialized in the same field order.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: i64,
    actor: &'a Actor,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<SocketAddr>,
    action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    det_oid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    camera: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'a str>,
    #[serde(skip_serializing_if = "is_empty_object")]
    detail: &'a serde_json::Map<String, serde_json::Value>,
    outcome: Outcome,
    prev_hash: &'a str,
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Record {
    /// Sets `hash` from the other fields and returns the line to store
    /// (without its `\n`).
    pub fn seal(&mut self) -> String {
        let body = Body {
            seq: self.seq,
            time: self.time,
            actor: &self.actor,
            source: self.source,
            action: self.action,
            det_oid: self.det_oid,
            camera: self.camera,
            location: self.location,
            object: self.object.as_deref(),
            detail: &self.detail,
            outcome: self.outcome,
            prev_hash: &self.prev_hash,
        };
        let mut line = serde_json::to_string(&body).expect("a record serializes");
        self.hash = sha256_hex(line.as_bytes());
        line.pop(); // the closing brace
        line.push_str(",\"hash\":\"");
        line.push_str(&self.hash);
        line.push_str("\"}");
        line
    }
}

/// A stored line split into what was hashed and the hash it claims.
#[derive(Debug)]
pub struct Split<'a> {
    /// The line without `,"hash":"…"` (what the hash is over, once its `}` is put back).
    pub body_open: &'a str,
    pub stored_hash: &'a str,
}

/// Splits a line (without `\n`) at its trailing `hash` field.
pub fn split_line(line: &str) -> Option<Split<'_>> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.is_char_boundary(line.len() - HASH_SUFFIX_LEN) {
        return None;
    }
    let (body_open, tail) = line.split_at(line.len() - HASH_SUFFIX_LEN);
    let hash = tail.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    if !hash
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    Some(Split {
        body_open,
        stored_hash: hash,
    })
}

/// The SHA-256 (hex) of a line's body: the line up to its `hash` field, then `}`.
pub fn body_hash(body_open: &str) -> String {
    let mut h = Sha256::new();
    h.update(body_open.as_bytes());
    h.update(b"}");
    hex(&h.finalize())
}

/// Lower-case hex of a digest (a table, not a `write!` per byte: `verify`
/// does this once per record).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The fields the chain check needs, read without building a whole [`Record`].
#[derive(Debug, Deserialize, PartialEq)]
pub struct Link<'a> {
    pub seq: u64,
    pub time: i64,
    #[serde(borrow)]
    pub prev_hash: std::borrow::Cow<'a, str>,
}

impl<'a> Link<'a> {
    /// Reads seq, time and prev_hash from where the writer puts them (the
    /// line starts `{"seq":N,"time":T,` and its body ends
    /// `,"prev_hash":"…"`), without parsing the rest: `verify`'s fast path.
    /// `None` when the line is laid out otherwise (then parse it as JSON).
    pub fn from_layout(body_open: &'a str) -> Option<Self> {
        let rest = body_open.strip_prefix("{\"seq\":")?;
        let (seq, rest) = rest.split_once(',')?;
        let (time, _) = rest.strip_prefix("\"time\":")?.split_once(',')?;
        let prev_start = body_open.len().checked_sub(HASH_HEX_LEN + 1)?;
        let prev = body_open.get(prev_start..body_open.len() - 1)?;
        let key = body_open.get(..prev_start)?;
        if !key.ends_with(",\"prev_hash\":\"") || !body_open.ends_with('"') {
            return None;
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(seq) || !digits(time.trim_start_matches('-')) {
            return None;
        }
        Some(Link {
            seq: seq.parse().ok()?,
            time: time.parse().ok()?,
            prev_hash: std::borrow::Cow::Borrowed(prev),
        })
    }
}
