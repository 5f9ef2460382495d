//! What the read path (queries, `Subscribe`, status) needs of the write path
//! (leases, partition owners): which partitions exist, which this node holds
//! open, and who owns the others.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{search::SearchIndex, store::Store};

/// A node of the cluster, as it announces itself in
/// [`super::NODES_BUCKET`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    /// The gRPC address (query API) other nodes and clients reach it at.
    pub grpc: String,
    /// The HTTP address (dashboard, /metrics).
    pub http: String,
    /// The edge address agents connect to, when it has one.
    pub edge: Option<String>,
    /// Unix ms of its last refresh.
    pub heartbeat_ms: i64,
}

/// One partition this node owns and holds open.
#[derive(Clone)]
pub struct LocalPartition {
    pub partition: u16,
    pub store: Arc<Store>,
    pub search: Option<Arc<SearchIndex>>,
    /// The lease revision it is held under (the fencing token).
    pub lease_revision: u64,
    /// When its newest checkpoint was taken (epoch ms; 0: none known).
    pub checkpoint_ms: Arc<std::sync::atomic::AtomicI64>,
}

/// The cluster as this node sees it now. Implemented by the write path for
/// the running node; the read path only reads it.
pub trait ClusterView: Send + Sync {
    /// The fixed partition count.
    fn partitions(&self) -> u16;
    /// This node's id.
    fn node_id(&self) -> &str;
    /// The partitions this node owns, holds open and answers queries from
    /// now (caught up with their stream since they were opened).
    fn local(&self) -> Vec<LocalPartition>;
    /// The partitions this node holds open now, caught up or not (for
    /// their lag in `cluster status`).
    fn opened(&self) -> Vec<u16> {
        self.local().iter().map(|l| l.partition).collect()
    }
    /// The owner of partition `p` per the lease bucket, if any.
    fn owner(&self, p: u16) -> Option<NodeInfo>;
    /// Every live node.
    fn nodes(&self) -> Vec<NodeInfo>;
    /// The IN stream sequence partition `p` (held here) has applied
    /// through, when known (for its lag in `cluster status` and /metrics).
    fn applied_seq(&self, _p: u16) -> Option<u64> {
        None
    }
    /// When partition `p` (held here) was last checkpointed (epoch ms), when known.
    fn checkpoint_ms(&self, _p: u16) -> Option<i64> {
        None
    }
}
