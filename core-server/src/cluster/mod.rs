//! Cluster mode (issue 15): many core nodes on NATS JetStream and object
//! storage. The embedded single-node default does not use any of this.
//!
//! The shape (DESIGN.md, "Embedded default, real engines at scale"):
//! - every node is an edge front: an agent's batch is split by det_oid
//!   partition (`store::keys::partition_of`) into one share per partition,
//!   published to the replicated stream [`IN_STREAM`] (subject
//!   [`in_subject`]), and acknowledged to the agent once every share has its
//!   publish ack from the stream's quorum; the agent's watermark lives in the
//!   KV bucket [`WATERMARKS_BUCKET`], so it resumes exactly on any node;
//! - partitions are leased to nodes through the KV bucket [`LEASES_BUCKET`]
//!   (key [`lease_key`], compare-and-set on the revision; the revision is the
//!   fencing token); the owner applies its partitions' shares, in stream
//!   order, into one RocksDB store and tantivy index per partition
//!   ([`partition_dir`]), and publishes what it committed (the joined events)
//!   to [`OUT_STREAM`] (subject [`out_subject`]), fenced by the subject's
//!   expected last sequence;
//! - partition state is checkpointed to object storage with the stream
//!   sequence it covers; a new owner restores the newest checkpoint and
//!   replays the stream from there;
//! - queries on any node scatter to the partitions' owners and merge
//!   ([`view`]);
//! - accounts, API tokens and agent grants are the cluster's, in the KV
//!   bucket [`control::CONTROL_BUCKET`], each node answering from its copy
//!   ([`control`]).

pub mod checkpoint;
pub mod config;
pub mod control;
pub mod feed;
pub mod front;
pub mod lease;
pub mod media;
pub mod nats;
pub mod node;
pub mod owner;
pub mod peer;
pub mod query;
pub mod share;
pub mod status;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
pub mod view;

/// Stream of agents' batch shares, subjects [`in_subject`].
pub const IN_STREAM: &str = "SIGHTLINE_IN";
/// Stream of committed, joined events, subjects [`out_subject`]: what
/// `Subscribe` on any node delivers.
pub const OUT_STREAM: &str = "SIGHTLINE_OUT";
/// KV bucket: one entry per live node ([`view::NodeInfo`] as JSON), key =
/// node id, refreshed by the node while it runs.
pub const NODES_BUCKET: &str = "sightline_nodes";
/// KV bucket: one lease per partition, key [`lease_key`].
pub const LEASES_BUCKET: &str = "sightline_leases";
/// KV bucket: each agent's resume watermark per epoch.
pub const WATERMARKS_BUCKET: &str = "sightline_watermarks";
/// KV bucket: the cluster's fixed facts (the partition count, set at creation).
pub const META_BUCKET: &str = "sightline_meta";

/// The subject of partition `p`'s shares.
pub fn in_subject(p: u16) -> String {
    format!("sightline.in.{p}")
}

/// The subject of partition `p`'s committed events.
pub fn out_subject(p: u16) -> String {
    format!("sightline.out.{p}")
}

/// The (core NATS, not JetStream) subject an owner announces each new
/// checkpoint of partition `p` on ([`checkpoint::CheckpointManifest`] as
/// JSON): a hint for the nodes keeping warm copies, who would otherwise
/// poll the object store; never what a restore trusts.
pub fn checkpoint_subject(p: u16) -> String {
    format!("sightline.checkpoint.{p}")
}

/// The lease key of partition `p`.
pub fn lease_key(p: u16) -> String {
    format!("p.{p}")
}

/// Where a node keeps partition `p`'s store and index, under `storage.path`.
pub fn partition_dir(storage: &std::path::Path, p: u16) -> std::path::PathBuf {
    storage.join("partitions").join(format!("p{p:03}"))
}

/// Where a node keeps its warm copy of partition `p`'s newest checkpoint
/// (see `Node`'s warm round), under `storage.path`.
pub fn warm_dir(storage: &std::path::Path, p: u16) -> std::path::PathBuf {
    storage.join("warm").join(format!("p{p:03}"))
}
