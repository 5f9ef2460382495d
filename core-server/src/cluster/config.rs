//! `[cluster]`: cluster mode on NATS JetStream (issue 15). Absent or with no
//! `nats` URL, the core is the embedded single node, exactly as before.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Most partitions a cluster may have (`cluster.partitions`).
pub const MAX_PARTITIONS: u16 = 1024;
/// Shortest `cluster.lease_ms`: a lease is renewed every third of it, and a
/// renewal is one round trip to the JetStream quorum.
pub const MIN_LEASE_MS: u64 = 600;
/// Shortest `cluster.peer_token`.
pub const MIN_PEER_TOKEN_BYTES: usize = 16;
/// Most stream/KV replicas JetStream keeps.
pub const MAX_REPLICAS: usize = 5;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS servers (JetStream enabled) of the cluster, e.g.
    /// `["nats://127.0.0.1:4222"]`; `tls://host:port` for TLS. Empty: the
    /// embedded single node (no NATS at all). A `nats://` URL to a host that
    /// is not loopback is refused unless `server.insecure_plaintext`.
    #[serde(default)]
    pub nats: Vec<String>,
    /// This node's id, unique in the cluster (letters, digits, `-`, `_`).
    /// Unset: the host name.
    #[serde(default)]
    pub node_id: Option<String>,
    /// The number of partitions events are spread over by det_oid, fixed when
    /// the cluster is created (kept in the `sightline_meta` bucket: a node
    /// configured with another count refuses to start).
    #[serde(default = "default_partitions")]
    pub partitions: u16,
    /// Replicas of every stream and KV bucket (3 on a 3-server NATS cluster;
    /// 1 for a single nats-server).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// A partition lease's length in milliseconds; renewed every third of it.
    /// A node that could not renew in time stops applying the partition at once.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often a partition owner checkpoints its partition to `checkpoints`.
    /// A new owner replays the stream from the newest checkpoint: the shorter
    /// this is, the less it replays when a node dies (and the sooner the
    /// stream drops applied shares); a checkpoint uploads only the store's
    /// files that are new since the last one.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub checkpoint_interval: Duration,
    /// Where partition checkpoints go: `file:///abs/path` or
    /// `s3://bucket/prefix` (S3 settings from the `AWS_*` environment, as for
    /// `sightline-core backup`). Unset: no checkpoints (a new owner replays its
    /// partitions' streams from the start, and the IN stream is never purged).
    #[serde(default)]
    pub checkpoints: Option<String>,
    /// The query API address (`host:port`) other nodes and clients dial for
    /// this node. Unset: the bound `server.grpc_listen` address (refused when
    /// that is 0.0.0.0 or [::], which no other node can dial). Dialled over
    /// TLS when `server.tls_cert` is set; the certificate must name this host.
    #[serde(default)]
    pub advertise_grpc: Option<String>,
    /// The HTTP address (`host:port`: /metrics for `cluster status` and the
    /// Fleet page's cluster table) other nodes read. Unset: the bound
    /// `server.http_listen` address (refused when unspecified, as above).
    #[serde(default)]
    pub advertise_http: Option<String>,
    /// The CA certificate (PEM) that issued the other nodes'
    /// `server.tls_cert`: a node calls another's query and HTTP ports over
    /// TLS when that node serves TLS, and trusts this CA only. Required when
    /// `server.tls_cert` is set (e.g. `pki/ca.pem` of `sightline-core certs`).
    #[serde(default)]
    pub peer_ca: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) of the NATS servers' TLS (`tls://` URLs).
    /// Unset: the system's roots.
    #[serde(default)]
    pub nats_ca: Option<std::path::PathBuf>,
    /// The NATS token (`authorization { token }` of nats-server). Better set
    /// by the environment (`SIGHTLINE_CORE__CLUSTER__NATS_TOKEN`). A NATS
    /// server that is not on loopback needs a credential (this, or
    /// `nats_user`/`nats_password`) unless `server.insecure_plaintext`:
    /// whoever reaches it unauthenticated could write the cluster's streams.
    #[serde(default)]
    pub nats_token: Option<String>,
    /// The NATS user (with `nats_password`).
    #[serde(default)]
    pub nats_user: Option<String>,
    /// The NATS password of `nats_user`
    /// (`SIGHTLINE_CORE__CLUSTER__NATS_PASSWORD`).
    #[serde(default)]
    pub nats_password: Option<String>,
    /// The shared secret nodes present to each other (`authorization: Bearer`).
    /// Required in cluster mode, at least 16 bytes. Better set by the
    /// environment (`SIGHTLINE_CORE__CLUSTER__PEER_TOKEN`) than in the file.
    #[serde(default)]
    pub peer_token: Option<String>,
    /// How long JetStream remembers a share's `Nats-Msg-Id` to drop a
    /// republished copy (the streams' duplicate window).
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub duplicate_window: Duration,
}

/// `localhost` or a loopback IP address.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_partitions() -> u16 {
    32
}
fn default_replicas() -> usize {
    3
}
fn default_lease_ms() -> u64 {
    3000
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: Vec::new(),
            node_id: None,
            partitions: default_partitions(),
            replicas: default_replicas(),
            lease_ms: default_lease_ms(),
            checkpoint_interval: default_checkpoint_interval(),
            checkpoints: None,
            advertise_grpc: None,
            advertise_http: None,
            peer_ca: None,
            nats_ca: None,
            nats_token: None,
            nats_user: None,
            nats_password: None,
            peer_token: None,
            duplicate_window: default_duplicate_window(),
        }
    }
}

impl ClusterConfig {
    /// Cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    /// This node's id: `node_id`, or the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "core".into())
        })
    }

    /// Checks the section against `server` (its TLS, listeners and
    /// `insecure_plaintext`).
    pub fn validate(&self, server: &crate::config::ServerConfig) -> Result<(), ConfigError> {
        let err = |key, reason: String| Err(ConfigError { key, reason });
        if !self.enabled() {
            return Ok(());
        }
        let insecure_plaintext = server.insecure_plaintext;
        let has_credential = self.nats_token.is_some() || self.nats_user.is_some();
        for u in &self.nats {
            let parsed = match url::Url::parse(u) {
                Ok(p) => p,
                Err(e) => return err("cluster.nats", format!("{u:?} is not a URL: {e}")),
            };
            let host = parsed.host_str().unwrap_or_default();
            match parsed.scheme() {
                "tls" => {}
                "nats" => {
                    if !is_loopback(host) && !insecure_plaintext {
                        return err(
                            "cluster.nats",
                            format!(
                                "{u:?} is not a loopback address and is not TLS: use tls://{host}:PORT, \
                                 or, knowingly, server.insecure_plaintext = true"
                            ),
                        );
                    }
                }
                s => {
                    return err(
                        "cluster.nats",
                        format!("{u:?}: scheme {s:?}, expected nats:// or tls://"),
                    )
                }
            }
            if host.is_empty() {
                return err("cluster.nats", format!("{u:?} has no host"));
            }
            if !is_loopback(host) && !has_credential && !insecure_plaintext {
                return err(
                    "cluster.nats_token",
                    format!(
                        "{u:?} is not a loopback address and no NATS credential is set \
                         (nats_token, or nats_user and nats_password): whoever reaches that server \
                         could write the cluster's streams. Set one, or, knowingly, \
                         server.insecure_plaintext = true"
                    ),
                );
            }
        }
        if self.nats_token.is_some() && self.nats_user.is_some() {
            return err(
                "cluster.nats_token",
                "set with cluster.nats_user: a NATS connection takes one credential".into(),
            );
        }
        match (&self.nats_user, &self.nats_password) {
            (Some(_), None) => {
                return err(
                    "cluster.nats_password",
                    "unset, but cluster.nats_user is set".into(),
                )
            }
            (None, Some(_)) => {
                return err(
                    "cluster.nats_user",
                    "unset, but cluster.nats_password is set".into(),
                )
            }
            _ => {}
        }
        if server.tls_cert.is_some() && self.peer_ca.is_none() {
            return err(
                "cluster.peer_ca",
                "unset, but server.tls_cert is set: the other nodes serve TLS too, and this node \
                 verifies them against this CA only (the CA that issued their certificates, \
                 e.g. pki/ca.pem)"
                    .into(),
            );
        }
        for (key, advertised, bound, listen) in [
            (
                "cluster.advertise_grpc",
                &self.advertise_grpc,
                server.grpc_listen,
                "server.grpc_listen",
            ),
            (
                "cluster.advertise_http",
                &self.advertise_http,
                server.http_listen,
                "server.http_listen",
            ),
        ] {
            match advertised {
                Some(a) if a.is_empty() || a.contains('/') || !a.contains(':') => {
                    return err(key, format!("{a:?}: expected host:port"))
                }
                None if bound.ip().is_unspecified() => {
                    return err(
                        key,
                        format!(
                            "unset, and {listen} is {bound}, which no other node can dial: \
                             set the host:port other nodes reach this node at"
                        ),
                    )
                }
                _ => {}
            }
        }
        if let Some(id) = &self.node_id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
            {
                return err(
                    "cluster.node_id",
                    format!("{id:?}: 1..=64 letters, digits, '-' or '_'"),
                );
            }
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return err(
                "cluster.partitions",
                format!("must be within 1..={MAX_PARTITIONS}"),
            );
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return err(
                "cluster.replicas",
                format!("must be within 1..={MAX_REPLICAS}"),
            );
        }
        if self.lease_ms < MIN_LEASE_MS {
            return err(
                "cluster.lease_ms",
                format!("must be at least {MIN_LEASE_MS}"),
            );
        }
        if self.checkpoint_interval.is_zero() {
            return err("cluster.checkpoint_interval", "must be more than 0".into());
        }
        if self.duplicate_window.is_zero() {
            return err("cluster.duplicate_window", "must be more than 0".into());
        }
        if let Some(u) = &self.checkpoints {
            let ok = url::Url::parse(u).is_ok_and(|p| match p.scheme() {
                "file" => p.to_file_path().is_ok(),
                "s3" => p.host_str().is_some_and(|b| !b.is_empty()),
                _ => false,
            });
            if !ok {
                return err(
                    "cluster.checkpoints",
                    format!("{u:?}: expected file:///absolute/path or s3://bucket/prefix"),
                );
            }
        }
        match &self.peer_token {
            Some(t) if t.len() >= MIN_PEER_TOKEN_BYTES => {}
            _ => {
                return err(
                    "cluster.peer_token",
                    format!(
                        "required in cluster mode, at least {MIN_PEER_TOKEN_BYTES} bytes \
                         (or SIGHTLINE_CORE__CLUSTER__PEER_TOKEN)"
                    ),
                )
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> ClusterConfig {
        ClusterConfig {
            nats: vec!["nats://127.0.0.1:4222".into()],
            peer_token: Some("0123456789abcdef".into()),
            ..Default::default()
        }
    }

    fn server() -> crate::config::ServerConfig {
        crate::config::CoreConfig::default().server
    }

    #[test]
    fn cluster_keys_that_cannot_work_are_refused_by_their_dotted_name() {
        let srv = server();
        assert!(ClusterConfig::default().validate(&srv).is_ok());
        assert!(on().validate(&srv).is_ok());
        let key = |c: ClusterConfig| c.validate(&server()).unwrap_err().key;
        let mut c = on();
        c.nats = vec!["nats://10.1.2.3:4222".into()];
        assert_eq!(key(c.clone()), "cluster.nats");
        let mut insecure = server();
        insecure.insecure_plaintext = true;
        assert!(
            c.validate(&insecure).is_ok(),
            "insecure_plaintext allows it"
        );
        c.nats = vec!["tls://10.1.2.3:4222".into()];
        assert_eq!(
            key(c.clone()),
            "cluster.nats_token",
            "TLS, but no credential"
        );
        c.nats_token = Some("t".into());
        assert!(c.validate(&srv).is_ok());
        c.nats_user = Some("u".into());
        assert_eq!(key(c.clone()), "cluster.nats_token", "two credentials");
        c.nats_token = None;
        assert_eq!(key(c.clone()), "cluster.nats_password");
        c.nats_password = Some("p".into());
        assert!(c.validate(&srv).is_ok());
        let mut c = on();
        c.partitions = 0;
        assert_eq!(key(c), "cluster.partitions");
        let mut c = on();
        c.replicas = 0;
        assert_eq!(key(c), "cluster.replicas");
        let mut c = on();
        c.lease_ms = 10;
        assert_eq!(key(c), "cluster.lease_ms");
        let mut c = on();
        c.peer_token = None;
        assert_eq!(key(c), "cluster.peer_token");
        let mut c = on();
        c.node_id = Some("a.b".into());
        assert_eq!(key(c), "cluster.node_id");
        let mut c = on();
        c.checkpoints = Some("http://x".into());
        assert_eq!(key(c), "cluster.checkpoints");
        let mut c = on();
        c.advertise_http = Some("https://x:1".into());
        assert_eq!(key(c), "cluster.advertise_http");
    }

    #[test]
    fn a_node_that_others_could_not_dial_or_verify_is_refused() {
        let mut tls = server();
        tls.tls_cert = Some("c.pem".into());
        tls.tls_key = Some("c.key".into());
        let e = on().validate(&tls).unwrap_err();
        assert_eq!(e.key, "cluster.peer_ca", "{e}");
        let mut c = on();
        c.peer_ca = Some("ca.pem".into());
        assert!(c.validate(&tls).is_ok());

        let mut any = server();
        any.grpc_listen = "0.0.0.0:50051".parse().unwrap();
        let e = on().validate(&any).unwrap_err();
        assert_eq!(e.key, "cluster.advertise_grpc");
        assert!(e.reason.contains("0.0.0.0:50051"), "{e}");
        let mut c = on();
        c.advertise_grpc = Some("core-a.example:50051".into());
        assert!(c.validate(&any).is_ok());
        any.http_listen = "[::]:8080".parse().unwrap();
        assert_eq!(c.validate(&any).unwrap_err().key, "cluster.advertise_http");
    }
}
