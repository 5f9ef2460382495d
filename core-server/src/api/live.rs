//! Live fan-out: every commit's joined events go to every subscriber, from
//! memory, right after the commit is durable.
//!
//! The events carry `location_matched` but not their Dataset B row: a reader
//! joins the rows it uses from the table loaded then (as a replay does), so
//! the hub does not hold a copy of a row per event (8.6 MB of a burst's peak:
//! BENCHMARKS.md, "thirty-first session").

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use sightline_proto::v1::JoinedEvent;
use tokio::sync::broadcast;

/// One commit's events, shared by all subscribers.
pub type CommitEvents = Arc<Vec<JoinedEvent>>;

/// The hub subscribers attach to.
#[derive(Clone)]
pub struct LiveHub {
    tx: broadcast::Sender<CommitEvents>,
    /// The commit time of each message the channel may still hold, oldest
    /// first (as many as its capacity): how old the oldest unread one is.
    sent: Arc<Mutex<VecDeque<i64>>>,
    capacity: usize,
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
        // The channel holds a power of two of messages.
        let capacity = capacity.next_power_of_two();
        Self {
            tx,
            sent: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            capacity,
        }
    }

    /// How long ago (ms, from `now_ms`) the oldest message some subscriber
    /// has not read yet was committed; 0 when every subscriber has read
    /// everything.
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        let sent = self.sent.lock().unwrap();
        let unread = self.tx.len().min(sent.len());
        if unread == 0 {
            return 0;
        }
        (now_ms - sent[sent.len() - unread]).max(0)
    }

    fn send(&self, events: Vec<JoinedEvent>) {
        let committed_ms = events.first().map_or(0, |e| e.committed_ms);
        // Under the lock, so the ring and the channel keep the same order.
        let mut sent = self.sent.lock().unwrap();
        if self.tx.send(Arc::new(events)).is_ok() {
            if sent.len() == self.capacity {
                sent.pop_front();
            }
            sent.push_back(committed_ms);
        }
    }

    /// Whether anyone listens (the writer skips the join when nobody does).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn publish(&self, events: Vec<JoinedEvent>) {
        if events.len() <= LIVE_CHUNK_EVENTS {
            if !events.is_empty() {
                self.send(events);
            }
            return;
        }
        let mut rest = events.into_iter();
        loop {
            let chunk: Vec<JoinedEvent> = rest.by_ref().take(LIVE_CHUNK_EVENTS).collect();
            if chunk.is_empty() {
                return;
            }
            self.send(chunk);
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
    fn the_lag_is_the_age_of_the_oldest_commit_a_subscriber_has_not_read() {
        let hub = LiveHub::new(4);
        let at = |committed_ms| JoinedEvent {
            committed_ms,
            ..Default::default()
        };
        hub.publish(vec![at(50)]);
        assert_eq!(hub.lag_ms(1000), 0, "nobody listens: nobody is behind");
        let mut rx = hub.subscribe();
        hub.publish(vec![at(100)]);
        hub.publish(vec![at(300)]);
        assert_eq!(hub.lag_ms(1000), 900);
        rx.try_recv().unwrap();
        assert_eq!(hub.lag_ms(1000), 700);
        rx.try_recv().unwrap();
        assert_eq!(hub.lag_ms(1000), 0);
        // A subscriber that stops reading: its lag grows to the oldest the
        // hub still holds for it.
        for t in 400..410 {
            hub.publish(vec![at(t)]);
        }
        assert_eq!(hub.lag_ms(1000), 1000 - 406);
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
