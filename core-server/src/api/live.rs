//! Live fan-out: every commit's joined events go to every subscriber, from
//! memory, right after the commit is durable.
//!
//! The events carry `location_matched` but not their Dataset B row: a reader
//! joins the rows it uses from the table loaded then (as a replay does), so
//! the hub does not hold a copy of a row per event (8.6 MB of a burst's peak:
//! BENCHMARKS.md, "thirty-first session").
//!
//! The hub holds the messages some subscriber has not read yet, up to
//! `live.buffer_events` events: its bound is in events, not messages. A
//! channel of messages (`tokio::sync::broadcast`, until the forty-seventh
//! session) had to be sized for the largest messages, and then held only a
//! few milliseconds of the small commits a burst of ingest makes: the
//! subscriber of everything was cut off at 128 messages behind, 255,080
//! events into a run of 2.48 M (BENCHMARKS.md, "forty-sixth session").
//! Written here, not taken from a crate: no channel crate bounds by the
//! size of what it holds.

use std::{
    collections::{HashMap, VecDeque},
    ops::Deref,
    sync::{Arc, Mutex, MutexGuard, OnceLock},
};

use bytes::{Bytes, BytesMut};
use prost::Message;
use sightline_proto::v1::JoinedEvent;
use tokio::sync::Notify;

/// One commit's events (or part of one), shared by all subscribers.
pub type CommitEvents = Arc<Commit>;

/// A message of the hub: events, and their wire encoding made once for
/// every `Subscribe` stream that sends them.
#[derive(Debug, Default)]
pub struct Commit {
    events: Vec<JoinedEvent>,
    encoded: OnceLock<Vec<Bytes>>,
}

impl Commit {
    pub fn new(events: Vec<JoinedEvent>) -> Self {
        Self {
            events,
            encoded: OnceLock::new(),
        }
    }

    /// [`Self::encoded`] if some caller made it already.
    pub fn encoded_if_made(&self) -> Option<&[Bytes]> {
        self.encoded.get().map(Vec::as_slice)
    }

    /// Each event's protobuf encoding as it is here (no Dataset B row: see
    /// the module's notes), in one buffer encoded by the first caller.
    pub fn encoded(&self) -> &[Bytes] {
        self.encoded.get_or_init(|| {
            let len = self.events.iter().map(Message::encoded_len).sum();
            let mut buf = BytesMut::with_capacity(len);
            let mut ends = Vec::with_capacity(self.events.len());
            for e in &self.events {
                e.encode_raw(&mut buf);
                ends.push(buf.len());
            }
            let all = buf.freeze();
            let mut start = 0;
            ends.into_iter()
                .map(|end| {
                    let one = all.slice(start..end);
                    start = end;
                    one
                })
                .collect()
        })
    }
}

/// Equal events (whether encoded yet or not).
impl PartialEq for Commit {
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events
    }
}

impl Deref for Commit {
    type Target = [JoinedEvent];

    fn deref(&self) -> &[JoinedEvent] {
        &self.events
    }
}

/// Most events in one message of the hub: a large commit goes out in
/// several, so that the hub lets go of what every subscriber read in steps
/// (one message per commit let a backlog's commits of up to 20,000 events
/// each hold 1.7 GiB: BENCHMARKS.md, "The commit path").
pub const LIVE_CHUNK_EVENTS: usize = 256;

/// Why [`LiveReceiver::recv`] returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// The subscriber fell behind by more than the hub holds: this many
    /// events went by unread. The next receive returns the oldest message
    /// the hub still holds.
    Lagged(u64),
    /// Every [`LiveHub`] is gone (the core is stopping).
    Closed,
}

/// The hub subscribers attach to (clones publish into the same one).
#[derive(Clone)]
pub struct LiveHub {
    shared: Arc<Shared>,
    /// The last clone dropped closes the hub for its subscribers.
    _open: Arc<Open>,
}

struct Shared {
    ring: Mutex<Ring>,
    /// Woken at each message and when the hub closes.
    arrived: Notify,
    /// Most events held.
    max_events: usize,
}

#[derive(Default)]
struct Ring {
    /// Messages some subscriber has not read, oldest first.
    held: VecDeque<Held>,
    /// The number of `held[0]` (messages are numbered from 0 in order).
    first: u64,
    /// Events in `held`.
    events: usize,
    /// Events published into the hub since it began (while anyone
    /// listened).
    published: u64,
    /// Each subscriber's next message number and the events before it.
    readers: HashMap<u64, Position>,
    next_reader: u64,
    closed: bool,
}

struct Held {
    events: CommitEvents,
    committed_ms: i64,
    /// Events published before this message.
    before: u64,
}

#[derive(Clone, Copy)]
struct Position {
    next: u64,
    before: u64,
}

impl Ring {
    fn end(&self) -> u64 {
        self.first + self.held.len() as u64
    }

    /// Lets go of the oldest message held.
    fn drop_oldest(&mut self) {
        if let Some(h) = self.held.pop_front() {
            self.events -= h.events.len();
            self.first += 1;
        }
    }

    /// Lets go of the messages every subscriber has read.
    fn trim_read(&mut self) {
        let read_by_all = self
            .readers
            .values()
            .map(|p| p.next)
            .min()
            .unwrap_or(u64::MAX);
        while self.first < read_by_all && !self.held.is_empty() {
            self.drop_oldest();
        }
    }

    /// Holds `events` as the newest message, letting go of the oldest while
    /// more than `max_events` are held (the newest always stays).
    fn push(&mut self, events: Vec<JoinedEvent>, max_events: usize) {
        let n = events.len();
        self.held.push_back(Held {
            committed_ms: events.first().map_or(0, |e| e.committed_ms),
            events: Arc::new(Commit::new(events)),
            before: self.published,
        });
        self.published += n as u64;
        self.events += n;
        while self.events > max_events && self.held.len() > 1 {
            self.drop_oldest();
        }
    }
}

struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.arrived.notify_waiters();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LiveHub {
    /// `max_events`: events (at least [`LIVE_CHUNK_EVENTS`]) the hub holds
    /// for subscribers that have not read them; one that falls further
    /// behind misses the oldest ([`Missed::Lagged`]).
    pub fn new(max_events: usize) -> Self {
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring::default()),
            arrived: Notify::new(),
            max_events: max_events.max(LIVE_CHUNK_EVENTS),
        });
        Self {
            _open: Arc::new(Open(shared.clone())),
            shared,
        }
    }

    /// How long ago (ms, from `now_ms`) the oldest message some subscriber
    /// has not read yet was committed; 0 when every subscriber has read
    /// everything.
    pub fn lag_ms(&self, now_ms: i64) -> i64 {
        let ring = self.shared.lock();
        ring.held
            .front()
            .map_or(0, |h| (now_ms - h.committed_ms).max(0))
    }

    /// Events the hub holds now (read by some subscribers, not all).
    pub fn held_events(&self) -> usize {
        self.shared.lock().events
    }

    /// Whether anyone listens (the writer skips the join when nobody does).
    pub fn has_subscribers(&self) -> bool {
        !self.shared.lock().readers.is_empty()
    }

    /// `events` to every subscriber, in messages of at most
    /// [`LIVE_CHUNK_EVENTS`]; dropped when nobody listens.
    pub fn publish(&self, events: Vec<JoinedEvent>) {
        if events.is_empty() {
            return;
        }
        let mut ring = self.shared.lock();
        if ring.readers.is_empty() {
            return;
        }
        let max = self.shared.max_events;
        if events.len() <= LIVE_CHUNK_EVENTS {
            ring.push(events, max);
        } else {
            let mut rest = events.into_iter();
            loop {
                let chunk: Vec<JoinedEvent> = rest.by_ref().take(LIVE_CHUNK_EVENTS).collect();
                if chunk.is_empty() {
                    break;
                }
                ring.push(chunk, max);
            }
        }
        drop(ring);
        self.shared.arrived.notify_waiters();
    }

    /// A subscriber of every message published from now on.
    pub fn subscribe(&self) -> LiveReceiver {
        let mut ring = self.shared.lock();
        let id = ring.next_reader;
        ring.next_reader += 1;
        let at = Position {
            next: ring.end(),
            before: ring.published,
        };
        ring.readers.insert(id, at);
        LiveReceiver {
            shared: self.shared.clone(),
            id,
        }
    }
}

/// One subscriber of a [`LiveHub`]; dropping it lets go of what it had not
/// read.
pub struct LiveReceiver {
    shared: Arc<Shared>,
    id: u64,
}

impl LiveReceiver {
    /// The next message, waiting for one. Cancel-safe: a message is taken
    /// only by a call that returns it.
    pub async fn recv(&mut self) -> Result<CommitEvents, Missed> {
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            // Registered before the look, so a message sent after it wakes
            // this call.
            arrived.as_mut().enable();
            if let Some(r) = self.try_recv() {
                return r;
            }
            arrived.await;
        }
    }

    /// The next message if one is there; `None`: none yet.
    pub fn try_recv(&self) -> Option<Result<CommitEvents, Missed>> {
        let mut ring = self.shared.lock();
        let ring = &mut *ring;
        let at = *ring.readers.get(&self.id).expect("registered");
        if at.next < ring.first {
            let front = ring.held.front().map_or(ring.published, |h| h.before);
            ring.readers.insert(
                self.id,
                Position {
                    next: ring.first,
                    before: front,
                },
            );
            return Some(Err(Missed::Lagged(front - at.before)));
        }
        let Some(h) = ring.held.get((at.next - ring.first) as usize) else {
            return ring.closed.then_some(Err(Missed::Closed));
        };
        let events = h.events.clone();
        ring.readers.insert(
            self.id,
            Position {
                next: at.next + 1,
                before: h.before + events.len() as u64,
            },
        );
        if at.next == ring.first {
            ring.trim_read();
        }
        Some(Ok(events))
    }
}

impl Drop for LiveReceiver {
    fn drop(&mut self) {
        let mut ring = self.shared.lock();
        ring.readers.remove(&self.id);
        ring.trim_read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> JoinedEvent {
        JoinedEvent {
            seq,
            ..Default::default()
        }
    }

    fn drain(rx: &LiveReceiver) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(Ok(m)) = rx.try_recv() {
            seqs.extend(m.iter().map(|e| e.seq));
        }
        seqs
    }

    #[test]
    fn a_large_commit_goes_out_in_bounded_messages_in_order() {
        let hub = LiveHub::new(4096);
        let rx = hub.subscribe();
        let n = LIVE_CHUNK_EVENTS * 2 + 7;
        hub.publish((0..n as u64).map(event).collect());
        let mut seqs = Vec::new();
        while let Some(Ok(m)) = rx.try_recv() {
            assert!(m.len() <= LIVE_CHUNK_EVENTS);
            seqs.extend(m.iter().map(|e| e.seq));
        }
        assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_commit_a_subscriber_has_not_read() {
        let hub = LiveHub::new(LIVE_CHUNK_EVENTS);
        let at = |committed_ms| JoinedEvent {
            committed_ms,
            ..Default::default()
        };
        hub.publish(vec![at(50)]);
        assert_eq!(hub.lag_ms(1000), 0, "nobody listens: nobody is behind");
        let rx = hub.subscribe();
        hub.publish(vec![at(100)]);
        hub.publish(vec![at(300)]);
        assert_eq!(hub.lag_ms(1000), 900);
        rx.try_recv().unwrap().unwrap();
        assert_eq!(hub.lag_ms(1000), 700);
        rx.try_recv().unwrap().unwrap();
        assert_eq!(hub.lag_ms(1000), 0);
        // A subscriber that stops reading: its lag grows to the oldest the
        // hub still holds for it.
        hub.publish(vec![at(400); LIVE_CHUNK_EVENTS - 1]);
        hub.publish(vec![at(410)]);
        hub.publish(vec![at(420)]);
        assert_eq!(hub.lag_ms(1000), 1000 - 410);
    }

    #[test]
    fn a_subscriber_behind_by_many_small_commits_is_not_cut_off_while_the_events_fit() {
        let hub = LiveHub::new(10_000);
        let rx = hub.subscribe();
        // 5,000 commits of one event: 40 times the 128 messages a channel
        // of messages held.
        for seq in 0..5_000 {
            hub.publish(vec![event(seq)]);
        }
        assert_eq!(drain(&rx), (0..5_000).collect::<Vec<_>>());
        assert_eq!(hub.held_events(), 0, "all read: nothing held");
    }

    #[test]
    fn the_hub_holds_at_most_its_events_for_a_subscriber_that_does_not_read() {
        let max = 1_000;
        let hub = LiveHub::new(max);
        let slow = hub.subscribe();
        let quick = hub.subscribe();
        hub.publish((0..100).map(event).collect());
        let first = quick.try_recv().unwrap().unwrap();
        let mut got: Vec<u64> = first.iter().map(|e| e.seq).collect();
        for seq in 100..3_000 {
            hub.publish(vec![event(seq)]);
            got.extend(drain(&quick));
            assert!(hub.held_events() <= max, "{}", hub.held_events());
        }
        assert_eq!(got, (0..3_000).collect::<Vec<_>>(), "the reader keeping up");
        // The first message was let go (only this test still holds it).
        assert_eq!(Arc::strong_count(&first), 1);
        // The slow one is told how many events it missed, then gets the
        // last `max` and nothing more.
        assert_eq!(
            slow.try_recv(),
            Some(Err(Missed::Lagged(3_000 - max as u64)))
        );
        assert_eq!(
            drain(&slow),
            (3_000 - max as u64..3_000).collect::<Vec<_>>()
        );
        assert_eq!(slow.try_recv(), None);
        // Gone: nothing is held for it.
        hub.publish(vec![event(3_000)]);
        drop(slow);
        drain(&quick);
        assert_eq!(hub.held_events(), 0);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_for_a_message_and_when_the_hub_closes() {
        let hub = LiveHub::new(LIVE_CHUNK_EVENTS);
        let mut rx = hub.subscribe();
        let publisher = hub.clone();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        publisher.publish(vec![event(7)]);
        drop(publisher);
        drop(hub);
        let (first, second) = waiting.await.unwrap();
        assert_eq!(first.unwrap()[0].seq, 7);
        assert_eq!(second, Err(Missed::Closed));
    }
}
