//! Live fan-out: every commit's joined events go to every subscriber, from
//! memory, right after the commit is durable.

use std::sync::Arc;

use sightline_proto::v1::JoinedEvent;
use tokio::sync::broadcast;

/// One commit's events, shared by all subscribers.
pub type CommitEvents = Arc<Vec<JoinedEvent>>;

/// The hub subscribers attach to.
#[derive(Clone)]
pub struct LiveHub {
    tx: broadcast::Sender<CommitEvents>,
}

impl LiveHub {
    /// `capacity`: commits a subscriber may fall behind before it is cut off.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self { tx }
    }

    /// Whether anyone listens (the writer skips the join when nobody does).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn publish(&self, events: Vec<JoinedEvent>) {
        if !events.is_empty() {
            let _ = self.tx.send(Arc::new(events));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<CommitEvents> {
        self.tx.subscribe()
    }
}
