//! How events and footage leave the agent: one sender logic ([`sender`]) and
//! one uploader ([`media`]) over thin transport adapters — gRPC over HTTP/2
//! ([`grpc`], with or without TLS) and QUIC ([`quic`]). An adapter only opens
//! a [`Link`] (a pair of message streams to and from the core) and carries
//! the media calls; everything about batches, windows, acks and resume lives
//! in the sender. [`open`] picks the adapter from each core URL's scheme and,
//! with several (`core_urls`), moves to the next core when a session with one
//! fails ([`Failover`]).

pub mod grpc;
pub mod media;
pub mod quic;
pub mod sender;

use std::{sync::Arc, time::Instant};

use futures::{future::BoxFuture, stream::BoxStream, FutureExt};
use sightline_proto::v1::{
    AgentMessage, AttachMediaRequest, Batch, CoreMessage, MediaChunk, MediaOffsetRequest,
    MediaOffsetResponse, MediaUploadResponse,
};
use tokio::sync::mpsc;
use tonic::Status;

use crate::config::AgentConfig;

/// An open session with the core.
pub struct Link {
    /// Messages to the core, in order.
    pub tx: mpsc::Sender<AgentMessage>,
    /// Messages to the core that go ahead of whatever waits in `tx` (the
    /// live lane's batches, PROTOCOL.md rule 6b): a live batch must not
    /// queue behind the backlog batches in flight.
    pub live_tx: mpsc::Sender<AgentMessage>,
    /// Messages from the core, in order; an error or the end means the link is gone.
    pub rx: BoxStream<'static, Result<CoreMessage, LinkError>>,
    /// Human-readable description of the peer, for logs.
    pub peer: String,
    /// Best-effort copies of a batch, apart from `tx` (QUIC: datagrams). The
    /// core commits whichever copy of each seq comes first, so a lost packet
    /// of the event stream does not hold events up a round trip.
    pub shadow: Option<Shadow>,
}

/// Messages a link's queue holds ([`Link::tx`]), and its live lane's
/// ([`Link::live_tx`]).
const QUEUE: usize = 64;
const LIVE_QUEUE: usize = 16;

/// A link's two queues and the stream of what goes out: a message waiting
/// in the live queue goes ahead of those waiting in the other; each queue
/// keeps its order. It ends when both senders are gone.
pub fn outgoing() -> (
    mpsc::Sender<AgentMessage>,
    mpsc::Sender<AgentMessage>,
    impl futures::Stream<Item = AgentMessage> + Send + Unpin + 'static,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
    let out = futures::stream::select_with_strategy(
        tokio_stream::wrappers::ReceiverStream::new(live_rx),
        tokio_stream::wrappers::ReceiverStream::new(rx),
        |_: &mut ()| futures::stream::PollNext::Left,
    );
    (tx, live_tx, out)
}

/// Sends best-effort copies of a batch (see [`Link::shadow`]).
pub type Shadow = Box<dyn Fn(&Batch) + Send + Sync>;

/// Why a link could not be opened or broke.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// No answer at all within the timeout (with QUIC: UDP may be blocked).
    #[error("no answer from {url} within {secs} s")]
    Unanswered { url: String, secs: u64 },
    #[error("the core refused the session: {0}")]
    Refused(String),
    #[error("link broken: {0}")]
    Broken(String),
}

/// Opens links to the core and carries the media calls.
pub trait Transport: Send + Sync {
    fn connect(&self) -> BoxFuture<'_, Result<Link, LinkError>>;
    /// How this transport reaches the core right now, for the Hello (the
    /// fleet view shows it): "quic", "grpc+tls", "grpc plaintext", ...
    fn describe(&self) -> String;
    fn media_offset(
        &self,
        req: MediaOffsetRequest,
    ) -> BoxFuture<'_, Result<MediaOffsetResponse, Status>>;
    fn media_upload(
        &self,
        chunks: BoxStream<'static, MediaChunk>,
    ) -> BoxFuture<'_, Result<MediaUploadResponse, Status>>;
    fn media_attach(&self, req: AttachMediaRequest) -> BoxFuture<'_, Result<(), Status>>;
    /// A session over this transport ended in an error (`why`): a transport
    /// with several cores moves to the next one.
    fn session_failed(&self, _why: &str) {}
    /// Every core this transport may reach, and whether it is the one it
    /// reaches now (for `/metrics`). Empty: a single, unnamed core.
    fn cores(&self) -> Vec<(String, bool)> {
        Vec::new()
    }
}

/// What a call's failure means for the session: a refusal (retrying the same
/// thing will not help until someone acts), or a broken link.
fn status_error(s: &Status) -> LinkError {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition => {
            LinkError::Refused(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => {
            let mut text = format!("{:?}: {}", s.code(), s.message());
            if let Some(src) = std::error::Error::source(s) {
                text = format!("{text}: {}", grpc::explain(src));
            }
            match crate::tls::explain(&text) {
                Some(why) => LinkError::Refused(why),
                None => LinkError::Broken(text),
            }
        }
    }
}

/// The transport the config asks for: one per URL of `core_urls` (or the
/// one `core_url`), behind a [`Failover`].
pub fn open(config: &AgentConfig) -> anyhow::Result<Arc<dyn Transport>> {
    let cores = config
        .core_urls()
        .into_iter()
        .map(|url| Ok((url.clone(), open_one(config, &url)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(Failover::new(cores)))
}

/// The transport one core URL asks for (its scheme picks it).
fn open_one(config: &AgentConfig, url: &str) -> anyhow::Result<Arc<dyn Transport>> {
    let timeout = config.sender.connect_timeout;
    if url.starts_with("http://") {
        tracing::warn!(url, "PLAINTEXT link to the core: no TLS, the core cannot verify this agent (local demos only)");
        return Ok(Arc::new(grpc::GrpcTransport::new(url, None, timeout)?));
    }
    let tls = crate::tls::ClientTls::load(config)?;
    if url.starts_with("https://") {
        return Ok(Arc::new(grpc::GrpcTransport::new(url, Some(tls), timeout)?));
    }
    let quic = quic::QuicTransport::new(
        url,
        &tls,
        config.sender.quic_timeout,
        &config.sender.quic_congestion,
    )?;
    if !config.sender.quic_fallback {
        return Ok(Arc::new(quic));
    }
    // The core serves gRPC over TLS on the same port, over TCP.
    let fallback_url = format!("https://{}", &url["quic://".len()..]);
    let grpc = grpc::GrpcTransport::new(&fallback_url, Some(tls), timeout)?;
    Ok(Arc::new(Fallback {
        quic,
        grpc,
        retry: config.sender.quic_retry,
        state: std::sync::Mutex::new(None),
    }))
}

/// QUIC, or gRPC over TLS while UDP looks blocked.
struct Fallback {
    quic: quic::QuicTransport,
    grpc: grpc::GrpcTransport,
    retry: std::time::Duration,
    /// Since when and why the agent uses gRPC instead.
    state: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Fallback {
    fn on_grpc(&self) -> bool {
        self.state.lock().unwrap().is_some()
    }

    fn current(&self) -> &dyn Transport {
        if self.on_grpc() {
            &self.grpc
        } else {
            &self.quic
        }
    }

    async fn open(&self) -> Result<Link, LinkError> {
        let stale = self
            .state
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(since, _)| since.elapsed() >= self.retry);
        if self.on_grpc() && !stale {
            return self.grpc.connect().await;
        }
        match self.quic.connect().await {
            Ok(link) => {
                if self.state.lock().unwrap().take().is_some() {
                    tracing::info!(url = %self.quic.url(), "QUIC answers again: leaving the gRPC fallback");
                }
                Ok(link)
            }
            // Only silence means UDP is blocked (a refusal would be the same
            // on TCP), and only if TCP answers: else the core is just down.
            Err(e @ LinkError::Unanswered { .. }) => {
                let link = self.grpc.connect().await?;
                let why = e.to_string();
                tracing::warn!(quic = %self.quic.url(), grpc = %self.grpc.url(), reason = %why,
                    "QUIC unreachable (UDP blocked?): falling back to gRPC over TLS on TCP");
                *self.state.lock().unwrap() = Some((Instant::now(), why));
                Ok(link)
            }
            Err(e) => Err(e),
        }
    }
}

impl Transport for Fallback {
    fn connect(&self) -> BoxFuture<'_, Result<Link, LinkError>> {
        self.open().boxed()
    }
    fn describe(&self) -> String {
        match &*self.state.lock().unwrap() {
            Some((_, why)) => format!("{} (QUIC fallback: {why})", self.grpc.describe()),
            None => self.quic.describe(),
        }
    }
    fn media_offset(
        &self,
        req: MediaOffsetRequest,
    ) -> BoxFuture<'_, Result<MediaOffsetResponse, Status>> {
        self.current().media_offset(req)
    }
    fn media_upload(
        &self,
        chunks: BoxStream<'static, MediaChunk>,
    ) -> BoxFuture<'_, Result<MediaUploadResponse, Status>> {
        self.current().media_upload(chunks)
    }
    fn media_attach(&self, req: AttachMediaRequest) -> BoxFuture<'_, Result<(), Status>> {
        self.current().media_attach(req)
    }
}

/// Several cores of one cluster, tried in turn: every session goes to the
/// current one; when a session fails the next one becomes current (the
/// sender's backoff paces the attempts), and its Welcome says where to
/// resume (PROTOCOL.md: the watermark lives in the cluster, so any node
/// gives the same one). With one core it is that core's transport.
pub struct Failover {
    cores: Vec<(String, Arc<dyn Transport>)>,
    current: std::sync::atomic::AtomicUsize,
    /// Moves from one core to the next since the agent started.
    pub moves: std::sync::atomic::AtomicU64,
}

impl Failover {
    /// `cores`: (URL, its transport), at least one, in order of preference.
    pub fn new(cores: Vec<(String, Arc<dyn Transport>)>) -> Self {
        assert!(!cores.is_empty(), "a Failover needs at least one core");
        Self {
            cores,
            current: Default::default(),
            moves: Default::default(),
        }
    }

    fn now(&self) -> &(String, Arc<dyn Transport>) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.cores[i % self.cores.len()]
    }

    /// The URL of the core sessions go to now.
    pub fn current_url(&self) -> &str {
        &self.now().0
    }
}

impl Transport for Failover {
    fn connect(&self) -> BoxFuture<'_, Result<Link, LinkError>> {
        self.now().1.connect()
    }
    fn describe(&self) -> String {
        self.now().1.describe()
    }
    fn media_offset(
        &self,
        req: MediaOffsetRequest,
    ) -> BoxFuture<'_, Result<MediaOffsetResponse, Status>> {
        self.now().1.media_offset(req)
    }
    fn media_upload(
        &self,
        chunks: BoxStream<'static, MediaChunk>,
    ) -> BoxFuture<'_, Result<MediaUploadResponse, Status>> {
        self.now().1.media_upload(chunks)
    }
    fn media_attach(&self, req: AttachMediaRequest) -> BoxFuture<'_, Result<(), Status>> {
        self.now().1.media_attach(req)
    }
    fn session_failed(&self, why: &str) {
        use std::sync::atomic::Ordering;
        let (from, transport) = self.now();
        transport.session_failed(why);
        if self.cores.len() < 2 {
            return;
        }
        let i = self.current.load(Ordering::Relaxed);
        let next = (i + 1) % self.cores.len();
        self.current.store(next, Ordering::Relaxed);
        self.moves.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(from = %from, to = %self.cores[next].0, reason = %why,
            "failing over to the next core of core_urls");
    }
    fn cores(&self) -> Vec<(String, bool)> {
        let now = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.cores.len();
        self.cores
            .iter()
            .enumerate()
            .map(|(i, (url, _))| (url.clone(), i == now))
            .collect()
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;

    fn cores(n: usize) -> (AgentConfig, Failover) {
        let mut cfg = AgentConfig::with_id("f");
        // Ports nothing listens on (discard, echo ...): every connect fails.
        cfg.core_urls = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 9 + i))
            .collect();
        let list = cfg
            .core_urls()
            .into_iter()
            .map(|u| (u.clone(), open_one(&cfg, &u).unwrap()))
            .collect();
        (cfg, Failover::new(list))
    }

    #[test]
    fn a_failed_session_moves_to_the_next_core_and_wraps_around() {
        let (_, f) = cores(3);
        let now = |f: &Failover| {
            f.cores()
                .into_iter()
                .filter(|(_, c)| *c)
                .map(|(u, _)| u)
                .collect::<Vec<_>>()
        };
        assert_eq!(now(&f), ["http://127.0.0.1:9"]);
        f.session_failed("refused");
        assert_eq!(f.current_url(), "http://127.0.0.1:10");
        f.session_failed("reset");
        f.session_failed("closed");
        assert_eq!(now(&f), ["http://127.0.0.1:9"], "back to the first");
        assert_eq!(f.moves.load(std::sync::atomic::Ordering::Relaxed), 3);
        // One core: nowhere to move.
        let (_, one) = cores(1);
        one.session_failed("refused");
        assert_eq!(one.current_url(), "http://127.0.0.1:9");
        assert_eq!(one.moves.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn connect_goes_to_the_current_core() {
        let (_, f) = cores(2);
        let e = f.connect().await.err().expect("nothing listens");
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
        f.session_failed(&e.to_string());
        let e = f.connect().await.err().expect("nothing listens");
        assert!(e.to_string().contains("127.0.0.1:10"), "{e}");
    }
}

#[cfg(test)]
mod outgoing_tests {
    use futures::StreamExt;
    use sightline_proto::v1::{agent_message::Msg, AgentStatus};

    use super::*;

    fn status(next_seq: u64) -> AgentMessage {
        AgentMessage {
            msg: Some(Msg::Status(AgentStatus {
                next_seq,
                ..Default::default()
            })),
        }
    }

    fn live(first_seq: u64) -> AgentMessage {
        AgentMessage {
            msg: Some(Msg::Live(Batch {
                first_seq,
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn a_live_batch_goes_out_ahead_of_the_messages_queued_before_it() {
        let (tx, live_tx, mut out) = outgoing();
        for s in 1..=3 {
            tx.send(status(s)).await.unwrap();
        }
        live_tx.send(live(7)).await.unwrap();
        live_tx.send(live(9)).await.unwrap();
        assert_eq!(out.next().await, Some(live(7)));
        assert_eq!(out.next().await, Some(live(9)));
        assert_eq!(out.next().await, Some(status(1)));
        tx.send(status(4)).await.unwrap();
        live_tx.send(live(11)).await.unwrap();
        assert_eq!(out.next().await, Some(live(11)));
        for s in 2..=4 {
            assert_eq!(out.next().await, Some(status(s)));
        }
        // Both senders gone: the stream ends (the session's end).
        drop((tx, live_tx));
        assert_eq!(out.next().await, None);
    }
}
