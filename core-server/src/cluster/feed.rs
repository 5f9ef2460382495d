//! `Subscribe` in cluster mode: the committed, joined events every partition
//! owner publishes to [`super::OUT_STREAM`] (subject [`super::out_subject`]),
//! in batches ([`OutBatch`]: the events of one stretch of the partition's
//! outbox, at most [`OUT_BATCH_EVENTS`] and [`OUT_BATCH_BYTES`]), read with an
//! ordered consumer from the node the subscriber called.
//!
//! The resume point is the event's place in the stream: each event goes out
//! with `JoinedEvent.stream_seq` = its message's stream sequence ×
//! [`CURSOR_SPAN`] + its index in the message ([`cursor`]), and a subscriber
//! that comes back (to this node or any other, e.g. after the one it was
//! connected to died) with metadata [`AFTER_SEQ_HEADER`] = the last one it
//! received gets the next event on, nothing skipped or repeated: the stream
//! is one sequence for the cluster, kept replicated by JetStream, not by the
//! node.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use prost::Message;
use sightline_proto::v1::JoinedEvent;
use sightline_proto::{ApiError, Code};
use tonic::Status;

/// Metadata on a Subscribe call: resume after this `JoinedEvent.stream_seq`.
pub const AFTER_SEQ_HEADER: &str = "x-sightline-after-seq";
/// A replay from `from_ms` starts this much earlier in the stream than
/// `from_ms` (by publish time) and keeps the events detected at or after
/// `from_ms`: an event is published after it is detected, give or take the
/// agents' and nodes' clock differences, which this bounds.
pub const FROM_MS_CLOCK_SLACK: Duration = Duration::from_secs(60);
/// How long opening the ordered consumer may take before the Subscribe is
/// refused as UNAVAILABLE.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The payload of an [`super::OUT_STREAM`] message: consecutive committed
/// events of one partition.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutBatch {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<JoinedEvent>,
}

/// Events in one OUT message, at most (fewer than [`CURSOR_SPAN`]).
pub const OUT_BATCH_EVENTS: usize = 1024;
/// Encoded bytes of one OUT message, about at most (NATS refuses payloads
/// over its `max_payload`, 1 MiB by default).
pub const OUT_BATCH_BYTES: usize = 512 * 1024;
/// `JoinedEvent.stream_seq` = message sequence × this + index in the message.
pub const CURSOR_SPAN: u64 = 4096;

/// The resume cursor of the event at `index` of OUT message `seq`.
pub fn cursor(seq: u64, index: usize) -> u64 {
    seq.saturating_mul(CURSOR_SPAN) + index as u64
}

/// Where a cluster Subscribe starts in [`super::OUT_STREAM`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Events committed from now on.
    New,
    /// The events after this cursor (a `JoinedEvent.stream_seq`).
    AfterSeq(u64),
    /// Events detected at or after this time (epoch ms), by publish time
    /// from [`FROM_MS_CLOCK_SLACK`] before it.
    FromMs(i64),
}

impl Start {
    /// From a Subscribe's `from_ms` and its [`AFTER_SEQ_HEADER`] (which,
    /// when present, wins).
    pub fn of<T>(req: &tonic::Request<T>, from_ms: i64) -> Result<Self, ApiError> {
        if let Some(v) = req.metadata().get(AFTER_SEQ_HEADER) {
            let seq = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::field(
                        AFTER_SEQ_HEADER,
                        "not a resume point (a JoinedEvent.stream_seq)",
                    )
                })?;
            return Ok(Start::AfterSeq(seq));
        }
        Ok(if from_ms > 0 {
            Start::FromMs(from_ms)
        } else {
            Start::New
        })
    }

    fn policy(self) -> DeliverPolicy {
        match self {
            Start::New => DeliverPolicy::New,
            Start::AfterSeq(c) => DeliverPolicy::ByStartSequence {
                start_sequence: (c / CURSOR_SPAN).max(1),
            },
            Start::FromMs(ms) => {
                let at = ms
                    .saturating_sub(FROM_MS_CLOCK_SLACK.as_millis() as i64)
                    .max(0);
                DeliverPolicy::ByStartTime {
                    start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                        at as i128 * 1_000_000,
                    )
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                }
            }
        }
    }
}

/// Reads [`super::OUT_STREAM`] for Subscribe streams.
#[derive(Clone)]
pub struct Feed {
    js: jetstream::Context,
}

/// The events of a cluster Subscribe, each with its stream sequence set, in
/// stream order.
pub type Events = futures::stream::BoxStream<'static, Result<JoinedEvent, Status>>;

impl Feed {
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            js: jetstream::new(client),
        }
    }

    /// The events from `start` on, every partition's (the caller filters by
    /// scope and filter). Ends with an error if the stream cannot be read.
    pub async fn open(&self, start: Start) -> Result<Events, Status> {
        let open = async {
            let stream = self
                .js
                .get_stream(super::OUT_STREAM)
                .await
                .map_err(|e| unavailable(format!("stream {}: {e}", super::OUT_STREAM)))?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: "sightline.out.>".into(),
                    deliver_policy: start.policy(),
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    unavailable(format!("an ordered consumer on {}: {e}", super::OUT_STREAM))
                })?;
            consumer
                .messages()
                .await
                .map_err(|e| unavailable(format!("reading {}: {e}", super::OUT_STREAM)))
        };
        let messages = tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| unavailable(format!("no answer within {OPEN_TIMEOUT:?}")))??;
        let from_ms = match start {
            Start::FromMs(ms) => ms,
            _ => i64::MIN,
        };
        // Resuming inside a message: its events up to the cursor were sent.
        let after = match start {
            Start::AfterSeq(c) => Some(c),
            _ => None,
        };
        Ok(messages
            .flat_map(move |m| {
                let out: Vec<Result<JoinedEvent, Status>> = match decode(m) {
                    Err(e) => vec![Err(e)],
                    Ok((seq, batch)) => batch
                        .events
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut ev)| {
                            ev.stream_seq = cursor(seq, i);
                            ev
                        })
                        .filter(|ev| after.is_none_or(|c| ev.stream_seq > c))
                        .filter(|ev| {
                            ev.detection.as_ref().map_or(0, |d| d.timestamp_detected) >= from_ms
                        })
                        .map(Ok)
                        .collect(),
                };
                futures::stream::iter(out)
            })
            .boxed())
    }
}

impl Feed {
    /// The newest committed events of every partition, newest first: the
    /// [`super::OUT_STREAM`] read backwards from its last message, at most
    /// `max_messages` messages, until `limit` events that `keep` accepts.
    /// What the dashboard shows as the latest events on any node.
    pub async fn latest(
        &self,
        limit: usize,
        max_messages: usize,
        keep: impl Fn(&JoinedEvent) -> bool,
    ) -> Result<Vec<JoinedEvent>, Status> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let mut stream = self
            .js
            .get_stream(super::OUT_STREAM)
            .await
            .map_err(|e| unavailable(format!("stream {}: {e}", super::OUT_STREAM)))?;
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable(format!("stream {}: {e}", super::OUT_STREAM)))?
            .state
            .clone();
        let mut out = Vec::new();
        let mut seq = state.last_sequence;
        let mut read = 0;
        while seq >= state.first_sequence.max(1) && read < max_messages && out.len() < limit {
            match stream.get_raw_message(seq).await {
                Ok(m) => {
                    let batch = batch_of(seq, &m.payload)?;
                    for (i, mut ev) in batch.events.into_iter().enumerate().rev() {
                        ev.stream_seq = cursor(seq, i);
                        if out.len() < limit && keep(&ev) {
                            out.push(ev);
                        }
                    }
                }
                // Purged or deleted meanwhile.
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => {
                    return Err(unavailable(format!(
                        "message {seq} of {}: {e}",
                        super::OUT_STREAM
                    )))
                }
            }
            seq -= 1;
            read += 1;
        }
        Ok(out)
    }
}

/// Cluster mode: every partition's commits, read from
/// [`super::OUT_STREAM`] as the owners publish them, handed to `hub` (which
/// the dashboard's live feed reads) while `wanted` says someone watches,
/// until `stop`. A read that breaks is opened again after the last event
/// handed on; one that stops being wanted is dropped (the stream is read
/// again from new events when it is wanted again).
pub async fn into_hub(
    feed: Feed,
    hub: crate::api::live::LiveHub,
    wanted: impl Fn() -> bool,
    stop: tokio_util::sync::CancellationToken,
) {
    const WAIT: Duration = Duration::from_secs(1);
    let mut start = Start::New;
    loop {
        if wanted() {
            let opened = tokio::select! {
                _ = stop.cancelled() => return,
                r = feed.open(start) => r,
            };
            match opened {
                Ok(events) => {
                    let mut chunks = events.ready_chunks(crate::api::live::LIVE_CHUNK_EVENTS);
                    let mut check = tokio::time::interval(WAIT);
                    loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = check.tick() => {
                                if wanted() { continue }
                                start = Start::New;
                                break;
                            }
                            n = chunks.next() => n,
                        };
                        let Some(chunk) = next else {
                            tracing::debug!("the dashboard's cluster feed ended; reading again");
                            break;
                        };
                        let mut batch = Vec::with_capacity(chunk.len());
                        let mut failed = None;
                        for r in chunk {
                            match r {
                                Ok(e) => batch.push(e),
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        if let Some(last) = batch.last() {
                            start = Start::AfterSeq(last.stream_seq);
                        }
                        hub.publish(batch);
                        if let Some(e) = failed {
                            tracing::debug!(error = %e, "the dashboard's cluster feed broke; reading again");
                            break;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "the dashboard's cluster feed"),
            }
        } else {
            start = Start::New;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WAIT) => {}
        }
    }
}

/// An OUT message's stream sequence and events.
fn decode(
    m: Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>,
) -> Result<(u64, OutBatch), Status> {
    let m = m.map_err(|e| unavailable(format!("reading {}: {e}", super::OUT_STREAM)))?;
    let seq = m
        .info()
        .map_err(|e| {
            Status::from(ApiError::internal(format!(
                "a message of {} without its sequence: {e}",
                super::OUT_STREAM
            )))
        })?
        .stream_sequence;
    Ok((seq, batch_of(seq, &m.payload)?))
}

/// The events of message `seq` of [`super::OUT_STREAM`].
fn batch_of(seq: u64, payload: &[u8]) -> Result<OutBatch, Status> {
    OutBatch::decode(payload).map_err(|e| {
        Status::from(ApiError::internal(format!(
            "message {seq} of {} is not an event batch: {e}",
            super::OUT_STREAM
        )))
    })
}

fn unavailable(why: String) -> Status {
    ApiError::new(Code::Unavailable, format!("cluster Subscribe: {why}")).into()
}

/// Sends the `events` that `keep` accepts to a Subscribe's client until it
/// goes away (`Ok`) or the stream fails (the error, with where to resume:
/// the client has the stream_seq of the last event it got).
pub async fn forward<T: From<JoinedEvent>>(
    mut events: Events,
    keep: impl Fn(&JoinedEvent) -> bool,
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
) -> Result<(), Status> {
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return Ok(()),
            next = events.next() => next,
        };
        match next {
            None => {
                return Err(unavailable(
                    "the stream ended; resubscribe with the last stream_seq".into(),
                ))
            }
            Some(Err(s)) => return Err(s),
            Some(Ok(e)) if keep(&e) => {
                if tx.send(Ok(e.into())).await.is_err() {
                    return Ok(());
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::{out_subject, OUT_STREAM};
    use sightline_proto::v1::Detection;

    /// A real single `nats-server -js` on 127.0.0.1, stopped on drop.
    pub(crate) struct Nats {
        child: std::process::Child,
        pub url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) async fn nats() -> (Nats, async_nats::Client) {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (deploy/install-deps.sh installs it)");
        let n = Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = async_nats::connect(&n.url).await {
                return (n, c);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes event `det` (at location `loc`) as an owner does.
    pub(crate) async fn publish(js: &jetstream::Context, det: i64, loc: i64) {
        let ev = JoinedEvent {
            detection: Some(Detection {
                detection_oid: Some(det),
                geographical_location_oid: loc,
                timestamp_detected: sightline_proto::now_ms(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", det.to_string().as_str());
        let p = crate::store::keys::partition_of(det, 4) as u16;
        let batch = OutBatch { events: vec![ev] };
        js.publish_with_headers(out_subject(p), headers, batch.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn take(events: &mut Events, n: usize) -> Vec<JoinedEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            out.push(e);
        }
        out
    }

    fn det(e: &JoinedEvent) -> i64 {
        e.detection.as_ref().unwrap().detection_oid.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribe_from_the_out_stream_resumes_after_a_reconnect_with_no_gap_or_repeat() {
        let (n, client) = nats().await;
        let js = jetstream::new(client.clone());
        js.create_stream(jetstream::stream::Config {
            name: OUT_STREAM.into(),
            subjects: vec!["sightline.out.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for d in 1..=30 {
            publish(&js, d, 1 + d % 2).await;
        }
        // A repeated publish (an owner retrying) is one message.
        publish(&js, 7, 2).await;
        let feed = Feed::new(client.clone());
        let mut first = feed.open(Start::AfterSeq(0)).await.unwrap();
        let got = take(&mut first, 12).await;
        let resume = got.last().unwrap().stream_seq;
        // The subscriber's node goes away; it comes back on another
        // connection (another node) with the last stream_seq it has.
        drop(first);
        let other = Feed::new(async_nats::connect(&n.url).await.unwrap());
        let mut second = other.open(Start::AfterSeq(resume)).await.unwrap();
        let live = tokio::spawn({
            let js = js.clone();
            async move {
                for d in 31..=40 {
                    publish(&js, d, 1 + d % 2).await;
                }
            }
        });
        let rest = take(&mut second, 28).await;
        live.await.unwrap();
        let all: Vec<i64> = got.iter().chain(&rest).map(det).collect();
        assert_eq!(all, (1..=40).collect::<Vec<i64>>());
        let seqs: Vec<u64> = got.iter().chain(&rest).map(|e| e.stream_seq).collect();
        assert_eq!(seqs, (1..=40).map(|s| cursor(s, 0)).collect::<Vec<u64>>());
        // Nothing more (no repeat) within a moment.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), second.next())
                .await
                .is_err()
        );

        // Scope-filtered as the live feed is: only location 2 reaches the client.
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let events = feed.open(Start::AfterSeq(0)).await.unwrap();
        let fwd = tokio::spawn(async move {
            forward(
                events,
                |e| e.detection.as_ref().unwrap().geographical_location_oid == 2,
                &tx,
            )
            .await
        });
        let mut seen = Vec::new();
        while seen.len() < 20 {
            seen.push(det(&rx.recv().await.unwrap().unwrap()));
        }
        assert!(seen.iter().all(|d| d % 2 == 1), "{seen:?}");
        drop(rx);
        fwd.await.unwrap().unwrap();

        // From now on: only what is published after the call.
        let mut new = feed.open(Start::New).await.unwrap();
        publish(&js, 41, 1).await;
        assert_eq!(det(&take(&mut new, 1).await[0]), 41);
    }
}
