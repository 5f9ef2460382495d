//! gRPC over TLS on TCP: accepts connections, runs the TLS handshake with
//! client certificates, logs every refusal with its reason, and hands the
//! connections to tonic with the agent's identity attached (tonic puts it in
//! each request's extensions as an [`EdgeConnInfo`]).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::{explain_tls, EdgeTls, Peer, LINK_GRPC_TLS};
use crate::{
    api::limits::{ConnLimits, Guarded},
    metrics::Metrics,
};

/// A TLS connection from an agent whose certificate verified.
pub struct EdgeStream {
    inner: tokio_rustls::server::TlsStream<Guarded<TcpStream>>,
    info: EdgeConnInfo,
}

/// What tonic attaches to every request on an [`EdgeStream`].
#[derive(Debug, Clone)]
pub struct EdgeConnInfo {
    pub peer: Peer,
}

impl Connected for EdgeStream {
    type ConnectInfo = EdgeConnInfo;
    fn connect_info(&self) -> EdgeConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for EdgeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TLS connections on `listener` until `stop`, within `limits`
/// (over a cap: closed at once); the stream of verified connections is what
/// `serve_with_incoming` takes.
pub fn incoming(
    listener: TcpListener,
    edge: Arc<EdgeTls>,
    metrics: Arc<Metrics>,
    limits: ConnLimits,
    stop: CancellationToken,
) -> ReceiverStream<Result<EdgeStream, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(edge.grpc.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "edge: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let Ok(tcp) = limits.admit(tcp, addr) else {
                continue;
            };
            let (acceptor, tx, metrics, edge) =
                (acceptor.clone(), tx.clone(), metrics.clone(), edge.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let why = explain_tls(&e);
                        metrics.edge_refused("tls");
                        tracing::warn!(peer = %addr, transport = "grpc", reason = %why, "edge: connection refused");
                        return;
                    }
                    Err(_) => {
                        metrics.edge_refused("tls");
                        tracing::warn!(peer = %addr, transport = "grpc", "edge: connection refused: no TLS handshake within 10 s");
                        return;
                    }
                };
                let (identity, refusal) = match edge.identify(tls.get_ref().1.peer_certificates()) {
                    Ok(id) => (Some(id), None),
                    Err(why) => {
                        // Kept open only to tell the agent why (see `Deferred`).
                        metrics.edge_refused("tls");
                        tracing::warn!(peer = %addr, transport = "grpc", reason = %why, "edge: connection refused");
                        (None, Some(why))
                    }
                };
                let info = EdgeConnInfo {
                    peer: Peer {
                        addr: addr.to_string(),
                        identity,
                        link: LINK_GRPC_TLS,
                        refusal,
                    },
                };
                let _ = tx.send(Ok(EdgeStream { inner: tls, info })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Who sent `request`: the verified agent on a TLS connection, else whoever
/// is at the other end of a plaintext one (`edge.plaintext`).
pub fn peer_of<T>(request: &tonic::Request<T>) -> Peer {
    match request.extensions().get::<EdgeConnInfo>() {
        Some(i) => i.peer.clone(),
        None => Peer::plaintext(
            request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown".into()),
        ),
    }
}
