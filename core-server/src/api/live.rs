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

/// Most events in one message of the hub. The hub keeps its last `capacity`
/// messages whether or not they were read, so a commit goes out in messages
/// of at most this many events and `capacity` bounds the memory it holds:
/// one message per commit let a backlog's commits of up to 20,000 events each
/// hold 1.7 GiB (BENCHMARKS.md, "The commit path").
pub const LIVE_CHUNK_EVENTS: usize = 256;

impl LiveHub {
    /// `capacity`: messages (of at most [`LIVE_CHUNK_EVENTS`] events) a
    /// subscriber may fall behind before it is cut off.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self { tx }
    }

    /// Whether anyone listens (the writer skips the join when nobody does).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn publish(&self, events: Vec<JoinedEvent>) {
        if events.len() <= LIVE_CHUNK_EVENTS {
            if !events.is_empty() {
                let _ = self.tx.send(Arc::new(events));
            }
            return;
        }
        let mut rest = events.into_iter();
        loop {
            let chunk: Vec<JoinedEvent> = rest.by_ref().take(LIVE_CHUNK_EVENTS).collect();
            if chunk.is_empty() {
                return;
            }
            let _ = self.tx.send(Arc::new(chunk));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<CommitEvents> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_commit_goes_out_in_bounded_messages_in_order() {
        let hub = LiveHub::new(64);
        let mut rx = hub.subscribe();
        let n = LIVE_CHUNK_EVENTS * 2 + 7;
        hub.publish(
            (0..n)
                .map(|i| JoinedEvent {
                    seq: i as u64,
                    ..Default::default()
                })
                .collect(),
        );
        let mut seqs = Vec::new();
        while let Ok(m) = rx.try_recv() {
            assert!(m.len() <= LIVE_CHUNK_EVENTS);
            seqs.extend(m.iter().map(|e| e.seq));
        }
        assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
    }

    #[test]
    fn the_hub_holds_at_most_its_capacity_for_a_subscriber_that_does_not_read() {
        let capacity = 4;
        let hub = LiveHub::new(capacity);
        let mut slow = hub.subscribe();
        let event = |seq| JoinedEvent {
            seq,
            ..Default::default()
        };
        let first: CommitEvents = Arc::new(vec![event(0)]);
        let _ = hub.tx.send(first.clone());
        for seq in 1..10 {
            hub.publish(vec![event(seq)]);
        }
        // The oldest message was let go (only this test still holds it).
        assert_eq!(Arc::strong_count(&first), 1);
        // The subscriber is told how far it fell behind, then gets the last
        // `capacity` messages and nothing more.
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 10 - capacity as u64),
            other => panic!("expected Lagged, got {other:?}"),
        }
        let mut seqs = Vec::new();
        while let Ok(m) = slow.try_recv() {
            seqs.extend(m.iter().map(|e| e.seq));
        }
        assert_eq!(seqs, (10 - capacity as u64..10).collect::<Vec<_>>());
    }
}
