//! Calls between cluster nodes on the query API (`sightline.v1.Query`).
//!
//! A node answering a query for partitions another node owns calls that
//! node's query port ([`super::view::NodeInfo::grpc`]) with the same request
//! messages and three pieces of metadata:
//! - `authorization: Bearer <[cluster] peer_token>`: the only credential a
//!   peer call is trusted with (an API token is not enough: a peer call skips
//!   the caller's checks, done by the node the caller called);
//! - [`PARTITIONS_HEADER`]: the partitions to answer for, e.g. `3,7,12`; the
//!   receiving node answers from its own stores for those only, and refuses a
//!   partition it does not hold with [`not_held`] (the caller reads the owner
//!   again and retries once);
//! - [`SCOPE_HEADER`]: the caller's scope (`*`: every location; else the
//!   location oids, comma separated; empty: none), which the owner filters by.
//!
//! The presence of [`PARTITIONS_HEADER`] makes a call a peer call; a request
//! without it is an ordinary client call, checked as on a single node.
//!
//! A node that serves TLS (`server.tls_cert`) announces `https://` addresses;
//! the others dial those over TLS and trust `cluster.peer_ca` only
//! ([`PeerTls`]), for the query port and for `/metrics` alike.

use std::{collections::HashMap, path::Path, sync::Arc, sync::Mutex, time::Duration};

use sightline_proto::v1::query_client::QueryClient;
use sightline_proto::{ApiError, Code};
use tonic::{metadata::MetadataValue, transport::Channel, Request, Status};

use crate::access::Scope;

/// Metadata naming the partitions a peer call asks about.
pub const PARTITIONS_HEADER: &str = "x-sightline-partitions";
/// Metadata carrying the original caller's scope on a peer call.
pub const SCOPE_HEADER: &str = "x-sightline-scope";
/// Longest [`PARTITIONS_HEADER`] or [`SCOPE_HEADER`] value accepted (bytes):
/// 10,000 scope locations of 20 digits and a comma fit.
pub const MAX_PEER_HEADER_BYTES: usize = 256 * 1024;
/// How long a node waits for one peer call (connect and answer) before the
/// query fails with UNAVAILABLE naming the peer.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Peer calls (and local partition reads) one query runs at once.
pub const MAX_FANOUT: usize = 8;
/// The start of the message a node refuses a partition it does not hold with
/// (FAILED_PRECONDITION): "partition 7 is not held by node core-b".
pub const NOT_HELD: &str = "partition ";
const NOT_HELD_TAIL: &str = " is not held by node ";

/// The named refusal of a peer call for a partition this node does not hold.
pub fn not_held(p: u16, node: &str) -> ApiError {
    ApiError::new(
        Code::FailedPrecondition,
        format!("{NOT_HELD}{p}{NOT_HELD_TAIL}{node}"),
    )
}

/// Whether `s` is a [`not_held`] refusal (the caller re-reads the owner).
pub fn is_not_held(s: &Status) -> bool {
    s.code() == tonic::Code::FailedPrecondition
        && s.message().starts_with(NOT_HELD)
        && s.message().contains(NOT_HELD_TAIL)
}

/// A trusted peer call: the partitions asked for and the caller's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCall {
    pub partitions: Vec<u16>,
    pub scope: Scope,
}

/// `None`: not a peer call (no [`PARTITIONS_HEADER`]). Otherwise the call,
/// or its refusal: UNAUTHENTICATED without the peer token (or when this node
/// has none configured), INVALID_ARGUMENT naming the metadata when malformed
/// or naming a partition past `partitions`.
pub fn peer_call<T>(
    req: &Request<T>,
    peer_token: &str,
    partitions: u16,
) -> Option<Result<PeerCall, ApiError>> {
    let md = req.metadata();
    let parts = md.get(PARTITIONS_HEADER)?;
    Some((|| {
        let bearer = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match bearer {
            Some(b) if !peer_token.is_empty() && same_secret(b, peer_token) => {}
            _ => {
                return Err(ApiError::unauthenticated(format!(
                    "a call with `{PARTITIONS_HEADER}` is a peer call: it needs `authorization: Bearer <[cluster] peer_token>`"
                )))
            }
        }
        let text = |name: &str, v: &tonic::metadata::MetadataValue<_>| {
            v.to_str()
                .ok()
                .filter(|s| s.len() <= MAX_PEER_HEADER_BYTES)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::field(
                        name,
                        format!("not ASCII text of at most {MAX_PEER_HEADER_BYTES} bytes"),
                    )
                })
        };
        let list = text(PARTITIONS_HEADER, parts)?;
        let partitions = parse_partitions(&list, partitions)?;
        let scope = match md.get(SCOPE_HEADER) {
            None => {
                return Err(ApiError::field(
                    SCOPE_HEADER,
                    "missing: a peer call carries its caller's scope",
                ))
            }
            Some(v) => parse_scope(&text(SCOPE_HEADER, v)?)?,
        };
        Ok(PeerCall { partitions, scope })
    })())
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `3,7,12` (empty: no partition, as Fleet asks) → the partitions, each
/// below `partitions`, no repeats.
pub fn parse_partitions(list: &str, partitions: u16) -> Result<Vec<u16>, ApiError> {
    let mut out: Vec<u16> = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p: u16 = s.parse().map_err(|_| {
            ApiError::field(
                PARTITIONS_HEADER,
                format!("{s:?} is not a partition number"),
            )
        })?;
        if p >= partitions {
            return Err(ApiError::field(
                PARTITIONS_HEADER,
                format!("partition {p} does not exist (the cluster has {partitions})"),
            ));
        }
        if out.contains(&p) {
            return Err(ApiError::field(
                PARTITIONS_HEADER,
                format!("partition {p} named twice"),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// The [`SCOPE_HEADER`] value of `scope`.
pub fn scope_header(scope: &Scope) -> String {
    match &scope.locations {
        None => "*".into(),
        Some(s) => s.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
    }
}

/// A [`SCOPE_HEADER`] value back to the scope (at most
/// [`crate::access::MAX_SCOPE_LOCATIONS`] locations).
pub fn parse_scope(v: &str) -> Result<Scope, ApiError> {
    if v.trim() == "*" {
        return Ok(Scope::all());
    }
    let mut set = std::collections::BTreeSet::new();
    for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        set.insert(
            s.parse::<i64>().map_err(|_| {
                ApiError::field(SCOPE_HEADER, format!("{s:?} is not a location oid"))
            })?,
        );
        if set.len() > crate::access::MAX_SCOPE_LOCATIONS {
            return Err(ApiError::field_with(
                Code::TooLarge,
                SCOPE_HEADER,
                format!("more than {} locations", crate::access::MAX_SCOPE_LOCATIONS),
            ));
        }
    }
    Ok(Scope::locations(set))
}

/// The CA a node trusts when it dials another node over TLS
/// (`cluster.peer_ca`, or `SIGHTLINE_CA` for `cluster status`): that CA
/// only, not the system's roots.
#[derive(Clone)]
pub struct PeerTls {
    pem: Vec<u8>,
    rustls: Arc<rustls::ClientConfig>,
}

impl PeerTls {
    /// The CA certificate(s) of the PEM file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading the CA {}: {e}", path.display()))?;
        Self::from_pem(pem).map_err(|e| anyhow::anyhow!("the CA {}: {e}", path.display()))
    }

    /// The CA certificate(s) of `pem`; at least one.
    pub fn from_pem(pem: Vec<u8>) -> anyhow::Result<Self> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            roots
                .add(c.map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?)
                .map_err(|e| anyhow::anyhow!("not a CA certificate: {e}"))?;
        }
        anyhow::ensure!(!roots.is_empty(), "no certificate in it");
        let rustls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            pem,
            rustls: Arc::new(rustls),
        })
    }

    /// A TLS connection to `host` (its certificate must name it) over `tcp`.
    pub async fn connect(
        &self,
        host: &str,
        tcp: tokio::net::TcpStream,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| anyhow::anyhow!("{host:?} is not a host name: {e}"))?;
        Ok(tokio_rustls::TlsConnector::from(self.rustls.clone())
            .connect(name, tcp)
            .await?)
    }
}

/// Clients for the other nodes' query ports, one channel per address,
/// the peer token the calls carry and the CA they trust.
pub struct Peers {
    token: String,
    tls: Option<PeerTls>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    pub fn new(peer_token: impl Into<String>) -> Self {
        Self {
            token: peer_token.into(),
            tls: None,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// Dials `https://` nodes trusting `tls` (without: refuses them).
    pub fn with_tls(mut self, tls: Option<PeerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// The CA calls to `https://` nodes trust, if any.
    pub fn tls(&self) -> Option<&PeerTls> {
        self.tls.as_ref()
    }

    /// The peer token this node sends and accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A client for the node at `addr` (`host:port`, or a URL), connected on
    /// first use, each call bounded by [`PEER_TIMEOUT`].
    pub fn client(&self, addr: &str) -> Result<QueryClient<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(QueryClient::new(c.clone()).max_decoding_message_size(usize::MAX));
        }
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| ApiError::internal(format!("peer address {addr:?}: {e}")))?
            .connect_timeout(PEER_TIMEOUT)
            .timeout(PEER_TIMEOUT);
        if url.starts_with("https://") {
            let tls = self.tls.as_ref().ok_or_else(|| {
                ApiError::unavailable(format!(
                    "node at {url} serves TLS, and this node has no cluster.peer_ca to verify it with"
                ))
            })?;
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&tls.pem)),
                )
                .map_err(|e| ApiError::internal(format!("peer address {addr:?}: TLS: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(QueryClient::new(channel).max_decoding_message_size(usize::MAX))
    }

    /// `msg` as a peer call for `partitions` on behalf of a caller with `scope`.
    pub fn request<T>(&self, msg: T, partitions: &[u16], scope: &Scope) -> Request<T> {
        let mut req = Request::new(msg);
        let list = partitions
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let md = req.metadata_mut();
        for (k, v) in [
            ("authorization", format!("Bearer {}", self.token)),
            (PARTITIONS_HEADER, list),
            (SCOPE_HEADER, scope_header(scope)),
        ] {
            if let Ok(v) = MetadataValue::try_from(v) {
                md.insert(k, v);
            }
        }
        req
    }
}

/// What [`peer_failed`] says of an owner that did not answer.
pub const NO_ANSWER: &str = "did not answer";

/// A failed peer call as the caller reports it: the peer's own refusal is
/// passed on; a transport failure is UNAVAILABLE naming the node.
pub fn peer_failed(node: &str, s: Status) -> Status {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            ApiError::unavailable(format!(
                "node {node} (owner of partitions this query needs) {NO_ANSWER}: {}",
                s.message()
            ))
            .into()
        }
        tonic::Code::DeadlineExceeded => ApiError::new(
            Code::DeadlineExceeded,
            format!(
                "node {node} did not answer within {PEER_TIMEOUT:?}: {}",
                s.message()
            ),
        )
        .into(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_headers_round_trip_and_bad_ones_are_refused_naming_the_header() {
        assert_eq!(parse_partitions("3, 7,12", 32).unwrap(), vec![3, 7, 12]);
        assert_eq!(parse_partitions("", 32).unwrap(), Vec::<u16>::new());
        for bad in ["32", "x", "1,1", "-1"] {
            let e = parse_partitions(bad, 32).unwrap_err();
            assert!(
                e.message.starts_with("field `x-sightline-partitions`"),
                "{e}"
            );
        }
        for s in [
            Scope::all(),
            Scope::locations([]),
            Scope::locations([1, -5]),
        ] {
            assert_eq!(parse_scope(&scope_header(&s)).unwrap(), s);
        }
        assert!(parse_scope("1,z").is_err());
    }

    #[test]
    fn a_peer_call_needs_the_peer_token() {
        let peers = Peers::new("s3cret");
        let ok = peers.request((), &[1], &Scope::locations([4]));
        let call = peer_call(&ok, "s3cret", 8).unwrap().unwrap();
        assert_eq!(call.partitions, vec![1]);
        assert_eq!(call.scope, Scope::locations([4]));
        let wrong = peer_call(&ok, "other", 8).unwrap().unwrap_err();
        assert_eq!(wrong.code, Code::Unauthenticated);
        // No peer token configured: no peer call is trusted.
        assert!(peer_call(&ok, "", 8).unwrap().is_err());
        // Not a peer call at all.
        assert!(peer_call(&Request::new(()), "s3cret", 8).is_none());
    }
}
