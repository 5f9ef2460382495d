//! How events leave the agent: one sender logic ([`sender`]) over thin
//! transport adapters ([`grpc`]; QUIC comes next). An adapter only opens a
//! [`Link`]: a pair of message streams to and from the core. Everything about
//! batches, windows, acks and resume lives in the sender.

pub mod grpc;
pub mod media;
pub mod sender;

use futures::{future::BoxFuture, stream::BoxStream};
use sightline_proto::v1::{AgentMessage, CoreMessage};
use tokio::sync::mpsc;

/// An open session with the core.
pub struct Link {
    /// Messages to the core, in order.
    pub tx: mpsc::Sender<AgentMessage>,
    /// Messages from the core, in order; an error or the end means the link is gone.
    pub rx: BoxStream<'static, Result<CoreMessage, LinkError>>,
    /// Human-readable description of the peer, for logs.
    pub peer: String,
}

/// Why a link could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the core refused the session: {0}")]
    Refused(String),
    #[error("link broken: {0}")]
    Broken(String),
}

/// Opens links to the core.
pub trait Transport: Send + Sync {
    fn connect(&self) -> BoxFuture<'_, Result<Link, LinkError>>;
}
