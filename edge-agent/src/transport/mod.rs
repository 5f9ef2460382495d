//! How events and footage leave the agent: one sender logic ([`sender`]) and
//! one uploader ([`media`]) over thin transport adapters — gRPC over HTTP/2
//! ([`grpc`], with or without TLS) and QUIC ([`quic`]). An adapter only opens
//! a [`Link`] (a pair of message streams to and from the core) and carries
//! the media calls; everything about batches, windows, acks and resume lives
//! in the sender. [`open`] picks the adapter from the core URL's scheme.

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
    /// Messages from the core, in order; an error or the end means the link is gone.
    pub rx: BoxStream<'static, Result<CoreMessage, LinkError>>,
    /// Human-readable description of the peer, for logs.
    pub peer: String,
    /// Best-effort copies of a batch, apart from `tx` (QUIC: datagrams). The
    /// core commits whichever copy of each seq comes first, so a lost packet
    /// of the event stream does not hold events up a round trip.
    pub shadow: Option<Shadow>,
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

/// The transport `config.core_url` asks for.
pub fn open(config: &AgentConfig) -> anyhow::Result<Arc<dyn Transport>> {
    let url = config.core_url.as_str();
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
