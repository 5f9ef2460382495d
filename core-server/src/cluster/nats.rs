//! The connection to NATS JetStream: the streams and KV buckets of
//! [`super`], created when absent and checked when present.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use super::{config::ClusterConfig, IN_STREAM, OUT_STREAM};

/// How long a JetStream request (a publish's ack, a KV update) may take
/// before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the committed events stay in [`OUT_STREAM`] for `Subscribe`
/// to resume from (older ones are dropped: it is a feed, not the store).
pub const OUT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The key of the partition count in [`super::META_BUCKET`].
pub const META_PARTITIONS_KEY: &str = "partitions";

/// Why the cluster cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("config `cluster.nats`: cannot connect to {urls:?}: {reason}")]
    Connect { urls: Vec<String>, reason: String },
    #[error("config `cluster.partitions`: this node is configured for {configured} partitions but the cluster was created with {cluster} (kept in the sightline_meta bucket); the partition count is fixed at creation")]
    PartitionMismatch { configured: u16, cluster: u16 },
    #[error("JetStream {what}: {reason}")]
    JetStream { what: String, reason: String },
}

impl ClusterError {
    pub fn js(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        ClusterError::JetStream {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}

/// A node's handles on the cluster's engine.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub nodes: kv::Store,
    pub leases: kv::Store,
    pub watermarks: kv::Store,
    pub meta: kv::Store,
    /// Accounts, API tokens and agent grants ([`super::control`]).
    pub control: kv::Store,
    pub partitions: u16,
}

impl Nats {
    /// Connects, creates or checks every stream and bucket, and checks the
    /// partition count against the cluster's.
    pub async fn connect(cfg: &ClusterConfig, node_id: &str) -> Result<Nats, ClusterError> {
        let addrs: Vec<async_nats::ServerAddr> = cfg
            .nats
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| ClusterError::Connect {
                urls: cfg.nats.clone(),
                reason: e.to_string(),
            })?;
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("sightline-core {node_id}"))
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT));
        if cfg.nats.iter().any(|u| u.starts_with("tls://")) {
            opts = opts.require_tls(true);
        }
        if let Some(ca) = &cfg.nats_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some(t) = &cfg.nats_token {
            opts = opts.token(t.clone());
        }
        if let (Some(u), Some(p)) = (&cfg.nats_user, &cfg.nats_password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        let client = opts
            .connect(addrs)
            .await
            .map_err(|e| ClusterError::Connect {
                urls: cfg.nats.clone(),
                reason: e.to_string(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        Self::setup(client, js, cfg).await
    }

    async fn setup(
        client: async_nats::Client,
        js: jetstream::Context,
        cfg: &ClusterConfig,
    ) -> Result<Nats, ClusterError> {
        let replicas = cfg.replicas;
        for (name, subjects, discard, max_age) in [
            // Nothing unapplied may be dropped: a full stream refuses new
            // shares (the agent keeps them and retries) instead of dropping old ones.
            (
                IN_STREAM,
                "sightline.in.*",
                stream::DiscardPolicy::New,
                Duration::ZERO,
            ),
            (
                OUT_STREAM,
                "sightline.out.*",
                stream::DiscardPolicy::Old,
                OUT_MAX_AGE,
            ),
        ] {
            let want = stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                discard,
                max_age,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: cfg.duplicate_window,
                ..Default::default()
            };
            let mut s = js
                .get_or_create_stream(want)
                .await
                .map_err(|e| ClusterError::js(format!("stream {name}"), e))?;
            let info = s
                .info()
                .await
                .map_err(|e| ClusterError::js(format!("stream {name}"), e))?;
            if info.config.discard != discard {
                return Err(ClusterError::js(
                    format!("stream {name}"),
                    format!(
                        "exists with discard {:?}, expected {discard:?}",
                        info.config.discard
                    ),
                ));
            }
        }
        // A bucket's stream, made here as the KV API lays it out: the
        // client's `create_key_value` first asks for the account's info,
        // which it cannot read from nats-server 2.9 (Debian 12's).
        let bucket = |name: &str| stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        let mut stores = Vec::new();
        for name in [
            super::NODES_BUCKET,
            super::LEASES_BUCKET,
            super::WATERMARKS_BUCKET,
            super::META_BUCKET,
            super::control::CONTROL_BUCKET,
        ] {
            js.get_or_create_stream(bucket(name))
                .await
                .map_err(|e| ClusterError::js(format!("bucket {name}"), e))?;
            let kv = js
                .get_key_value(name)
                .await
                .map_err(|e| ClusterError::js(format!("bucket {name}"), e))?;
            stores.push(kv);
        }
        let control = stores.pop().expect("5 buckets");
        let meta = stores.pop().expect("5 buckets");
        let watermarks = stores.pop().expect("5 buckets");
        let leases = stores.pop().expect("5 buckets");
        let nodes = stores.pop().expect("5 buckets");
        let partitions = Self::check_partitions(&meta, cfg.partitions).await?;
        Ok(Nats {
            client,
            js,
            nodes,
            leases,
            watermarks,
            meta,
            control,
            partitions,
        })
    }

    /// Records the partition count at creation; refuses another later.
    async fn check_partitions(meta: &kv::Store, configured: u16) -> Result<u16, ClusterError> {
        let value = bytes::Bytes::from(configured.to_string());
        if meta.create(META_PARTITIONS_KEY, value).await.is_ok() {
            return Ok(configured);
        }
        let got = meta
            .get(META_PARTITIONS_KEY)
            .await
            .map_err(|e| ClusterError::js("bucket sightline_meta", e))?
            .ok_or_else(|| ClusterError::js("bucket sightline_meta", "no partition count"))?;
        let cluster: u16 = std::str::from_utf8(&got)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                ClusterError::js(
                    "bucket sightline_meta",
                    "the partition count is not a number",
                )
            })?;
        if cluster != configured {
            return Err(ClusterError::PartitionMismatch {
                configured,
                cluster,
            });
        }
        Ok(cluster)
    }
}
