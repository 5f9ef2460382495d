//! Bounds on what a client can hold open: connections per listener and per
//! IP address, header and idle timeouts, and the same counting for
//! long-lived streams (`Subscribe`, the dashboard's live feed).
//!
//! # Promises
//!
//! - A [`Gate`] never admits more than its total cap, nor more than its
//!   per-client cap from one IP address; a refusal names the config key of
//!   the cap it hit, is counted in `sightline_connections_refused{limit}` and
//!   logged at most once per [`LOG_INTERVAL`] per gate.
//! - A connection's [`Slot`] is held by its IO object ([`Guarded`]) and
//!   freed when the connection is dropped, however it ends.
//! - A [`Guarded`] connection whose peer sent nothing within the header
//!   timeout, or on which no byte moved either way for the idle timeout, is
//!   closed (its reads and writes fail with `TimedOut`).
//! - A refused connection is accepted and closed at once, so a flood costs
//!   one descriptor per connection for microseconds, not for its lifetime.
//! - [`raise_open_files_limit`] raises the soft descriptor limit to the hard
//!   one; [`per_listener_cap`] sizes the connection caps from it so that they
//!   bite before the store and the search index run out of descriptors.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Refusals are logged at most this often per gate (each is counted).
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Descriptors kept out of the connection caps derived from the open-file
/// limit: RocksDB's tables and logs, the search index's segments, footage
/// uploads, the QUIC socket, the runtime's own.
pub const RESERVED_DESCRIPTORS: u64 = 512;
/// The listeners that share what is left (HTTP, gRPC, edge) plus one share
/// kept free.
const LISTENER_SHARES: u64 = 4;
/// A derived per-listener cap is at least this (even at a tiny limit).
pub const MIN_PER_LISTENER: usize = 32;
/// A derived per-listener cap is at most this (a hard limit in the millions
/// does not mean the core can serve that many).
pub const MAX_DERIVED_PER_LISTENER: usize = 16_384;
/// How long an accept loop pauses after an accept error (e.g. out of
/// descriptors), instead of retrying at once in a hot loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why a [`Gate`] refused: the config key of the cap that was reached.
#[derive(Debug, Clone)]
pub struct Refused {
    pub key: &'static str,
    pub limit: usize,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "limit `{}` ({}) reached", self.key, self.limit)
    }
}

/// Counts what is open (connections, streams) against a total cap and a
/// per-client cap.
pub struct Gate {
    /// What is counted, for the log ("http connections", "Subscribe streams").
    what: &'static str,
    /// The config keys of the caps, named in refusals.
    total_key: &'static str,
    per_client_key: &'static str,
    total: usize,
    per_client: usize,
    open: Mutex<Open>,
    metrics: Arc<Metrics>,
    /// When a refusal was last logged, and how many since.
    logged: Mutex<(Option<Instant>, u64)>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One admitted connection or stream; frees its place when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Gate {
    pub fn new(
        what: &'static str,
        (total_key, total): (&'static str, usize),
        (per_client_key, per_client): (&'static str, usize),
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            what,
            total_key,
            per_client_key,
            total,
            per_client,
            open: Mutex::default(),
            metrics,
            logged: Mutex::default(),
        })
    }

    /// A place for one more from `ip`, or which cap it would exceed.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let refused = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let mine = open.by_client.get(&ip).copied().unwrap_or(0);
            if open.total >= self.total {
                Some(Refused {
                    key: self.total_key,
                    limit: self.total,
                })
            } else if mine >= self.per_client {
                Some(Refused {
                    key: self.per_client_key,
                    limit: self.per_client,
                })
            } else {
                open.total += 1;
                open.by_client.insert(ip, mine + 1);
                None
            }
        };
        match refused {
            None => Ok(Slot {
                gate: self.clone(),
                ip,
            }),
            Some(r) => {
                self.refused(&r, ip);
                Err(r)
            }
        }
    }

    /// How many are open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn refused(&self, r: &Refused, ip: IpAddr) {
        self.metrics.connection_refused(r.key);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        logged.1 += 1;
        if logged.0.is_none_or(|at| at.elapsed() >= LOG_INTERVAL) {
            tracing::warn!(
                what = self.what,
                limit = r.key,
                cap = r.limit,
                client = %ip,
                refused = logged.1,
                "refused: {} (counted in sightline_connections_refused; logged at most once a minute)",
                r
            );
            *logged = (Some(Instant::now()), 0);
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("what", &self.gate.what)
            .field("client", &self.ip)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.ip);
            }
        }
    }
}

/// How long a connection may stay silent.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The peer's first bytes must arrive within this.
    pub header: Duration,
    /// Closed when no byte moved either way for this long.
    pub idle: Duration,
}

/// A listener's caps and timeouts.
#[derive(Clone)]
pub struct ConnLimits {
    pub gate: Arc<Gate>,
    pub timeouts: Timeouts,
    /// Cancelled at the end of a shutdown's connection drain: every open
    /// connection is then cut (its reads and writes fail), whatever it was
    /// doing — an idle one, a `Subscribe` stream, a live feed.
    pub cut: CancellationToken,
}

impl ConnLimits {
    /// The connection caps of the listener `name` ("http", "grpc", "edge").
    pub fn new(
        name: &'static str,
        cfg: &crate::config::ConnectionsConfig,
        per_listener: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            gate: Gate::new(
                name,
                ("connections.max_per_listener", per_listener),
                ("connections.max_per_client", cfg.max_per_client),
                metrics,
            ),
            timeouts: Timeouts {
                header: cfg.header_timeout,
                idle: cfg.idle_timeout,
            },
            cut: CancellationToken::new(),
        }
    }

    /// `tcp` with its place held and its timeouts armed, or `tcp` back with
    /// why it is refused.
    pub fn admit<T>(&self, tcp: T, peer: SocketAddr) -> Result<Guarded<T>, (T, Refused)> {
        match self.gate.try_acquire(peer.ip()) {
            Ok(slot) => Ok(Guarded::new(tcp, slot, self.timeouts, self.cut.clone())),
            Err(r) => Err((tcp, r)),
        }
    }

    /// Accepts on `listener` until `stop`, handing each admitted connection
    /// to `serve` (nodelay set); a refused one gets `refusal`'s bytes (if
    /// they fit in the socket buffer at once) and is closed.
    pub async fn accept_loop(
        &self,
        listener: TcpListener,
        stop: CancellationToken,
        refusal: impl Fn(&Refused) -> Option<Vec<u8>>,
        mut serve: impl FnMut(Guarded<TcpStream>, SocketAddr),
    ) {
        let mut last_error_log: Option<Instant> = None;
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors (EMFILE) keeps failing until one
                        // is freed: pause rather than spin.
                        if last_error_log.is_none_or(|at| at.elapsed() >= LOG_INTERVAL) {
                            tracing::error!(listener = self.gate.what, error = %e, "accept failed (logged at most once a minute)");
                            last_error_log = Some(Instant::now());
                        }
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            match self.admit(tcp, peer) {
                Ok(io) => serve(io, peer),
                Err((tcp, r)) => {
                    if let Some(reply) = refusal(&r) {
                        self.say_and_close(tcp, reply);
                    }
                }
            }
        }
    }
}

impl ConnLimits {
    /// Writes `reply` to a refused connection (if it fits in the socket
    /// buffer at once), then closes it so that the peer reads it: the write
    /// side is shut, and what the peer already sent is read and dropped for
    /// up to [`REFUSAL_LINGER`] — closing with unread bytes would make the
    /// kernel reset the connection, and the peer would lose the reply. At
    /// most [`MAX_LINGERING`] refused connections linger at once; past that
    /// one is closed at once.
    fn say_and_close(&self, tcp: TcpStream, reply: Vec<u8>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static LINGERING: AtomicUsize = AtomicUsize::new(0);
        if tcp.try_write(&reply).is_err() {
            return;
        }
        if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tcp;
            let _ = tcp.shutdown().await;
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                let mut read = 0;
                while read < REFUSAL_MAX_DRAIN {
                    match tcp.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
            LINGERING.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// How long a refused connection is kept to let its reply reach the peer.
pub const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// Most bytes read (and dropped) from a refused connection while it lingers.
const REFUSAL_MAX_DRAIN: usize = 64 * 1024;
/// Most refused connections lingering at once (each holds a descriptor for
/// up to [`REFUSAL_LINGER`]).
pub const MAX_LINGERING: usize = 64;

/// A connection holding its [`Slot`], closed when silent too long (see
/// [`Timeouts`]).
pub struct Guarded<T> {
    inner: T,
    _slot: Slot,
    timeouts: Timeouts,
    /// Fires at `last + (header or idle timeout)`; re-armed lazily.
    deadline: Pin<Box<Sleep>>,
    /// When a byte last moved (once the peer has spoken).
    last: tokio::time::Instant,
    /// Whether the peer has sent anything yet (until then, the header
    /// timeout from the accept applies, whatever the core wrote).
    spoken: bool,
    /// Fires when the connection is cut at shutdown ([`ConnLimits::cut`]).
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl<T> Guarded<T> {
    fn new(inner: T, slot: Slot, timeouts: Timeouts, cut: CancellationToken) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            inner,
            _slot: slot,
            timeouts,
            deadline: Box::pin(tokio::time::sleep_until(now + timeouts.header)),
            last: now,
            spoken: false,
            cut: Box::pin(cut.cancelled_owned()),
        }
    }

    fn moved(&mut self, read: bool) {
        if read {
            self.spoken = true;
        }
        if self.spoken {
            self.last = tokio::time::Instant::now();
        }
    }

    /// Whether the connection has been silent too long or was cut (else a
    /// wake-up is registered for when it would be).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.cut.as_mut().poll(cx).is_ready() {
            return true;
        }
        let limit = if self.spoken {
            self.timeouts.idle
        } else {
            self.timeouts.header
        };
        let due = self.last + limit;
        if tokio::time::Instant::now() >= due {
            return true;
        }
        if self.deadline.deadline() != due {
            self.deadline.as_mut().reset(due);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            // Fired a hair early: wake up again just after.
            self.deadline.as_mut().reset(due + Duration::from_millis(1));
            let _ = self.deadline.as_mut().poll(cx);
        }
        false
    }

    fn timed_out(&mut self) -> std::io::Error {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.cut.as_mut().poll(&mut cx).is_ready() {
            return std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the core is shutting down: connection closed",
            );
        }
        let (what, after) = if self.spoken {
            ("no bytes moved", self.timeouts.idle)
        } else {
            ("the peer sent nothing", self.timeouts.header)
        };
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} for {after:?}: connection closed"),
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.moved(true);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(this.timed_out())),
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.moved(false);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(this.timed_out())),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.moved(false);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(this.timed_out())),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(this.timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The open-file limit before and after raising the soft limit to the hard
/// one: `(soft before, soft now, hard)` (`None`: unlimited).
pub fn raise_open_files_limit() -> (Option<u64>, Option<u64>, Option<u64>) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: before.maximum,
                maximum: before.maximum,
            },
        );
    }
    let after = getrlimit(Resource::Nofile);
    (before.current, after.current, after.maximum)
}

/// The soft open-file limit now (`None`: unlimited).
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The per-listener connection cap: `configured`, or (0) what the open-file
/// limit leaves after [`RESERVED_DESCRIPTORS`], shared by the listeners.
pub fn per_listener_cap(configured: usize, open_files: Option<u64>) -> usize {
    if configured != 0 {
        return configured;
    }
    let Some(limit) = open_files else {
        return MAX_DERIVED_PER_LISTENER;
    };
    let share = limit.saturating_sub(RESERVED_DESCRIPTORS) / LISTENER_SHARES;
    (share as usize).clamp(MIN_PER_LISTENER, MAX_DERIVED_PER_LISTENER)
}

/// Serves `app` over HTTP/1.1 (and HTTP/2 with prior knowledge) on
/// `listener` (over TLS when `tls` is set), within `limits`: each request
/// carries the client's address as
/// [`axum::extract::ConnectInfo`]; over a cap the client gets `503` naming
/// the cap and its config key, and the connection is closed. Accepts until
/// `accept` is cancelled; once `stop` is, each connection is asked to finish
/// its request and close (one that does not, e.g. a live feed's stream, ends
/// when [`ConnLimits::cut`] cuts it). Returns when every connection has
/// ended.
pub async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    accept: CancellationToken,
    stop: CancellationToken,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::conn::auto::Builder,
        service::TowerToHyperService,
    };
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeouts.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .keep_alive_interval(Some(HTTP2_KEEPALIVE))
        .keep_alive_timeout(HTTP2_KEEPALIVE);
    let builder = Arc::new(builder);
    // Every connection task holds a sender; all dropped = all ended.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    limits
        .accept_loop(
            listener,
            accept,
            plain_only(&tls, refusal_503),
            |io, peer| {
                let svc = app.clone().map_request(
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        req
                    },
                );
                let (builder, stop, done) = (builder.clone(), stop.clone(), done_tx.clone());
                let (tls, within) = (tls.clone(), limits.timeouts.header);
                tokio::spawn(async move {
                    let _done = done;
                    let Some(io) = MaybeTls::accept(io, tls.as_ref(), within, peer).await else {
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(io),
                        TowerToHyperService::new(svc),
                    );
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            },
        )
        .await;
    drop(done_tx);
    let _ = done_rx.recv().await;
}

/// Streams one HTTP/2 connection may have open at once.
const HTTP2_MAX_STREAMS: u32 = 64;
/// HTTP/2 keepalive ping interval, and how long its answer may take.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);

/// The answer to an HTTP connection over a cap: `503`, naming the cap and
/// its config key.
fn refusal_503(r: &Refused) -> Option<Vec<u8>> {
    let body = format!("too many connections: {r}\n");
    Some(format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ).into_bytes())
}

/// The answer to a gRPC (HTTP/2) connection over a cap: the server's
/// preface (an empty SETTINGS frame), then GOAWAY with `ENHANCE_YOUR_CALM`
/// and the cap and its config key as debug data, which HTTP/2 clients log.
fn refusal_goaway(r: &Refused) -> Option<Vec<u8>> {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let debug = format!("too many connections: {r}");
    let frame = |kind: u8, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    let mut goaway = Vec::with_capacity(8 + debug.len());
    goaway.extend_from_slice(&0u32.to_be_bytes()); // last stream id: none served
    goaway.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    goaway.extend_from_slice(debug.as_bytes());
    let mut out = frame(SETTINGS, &[]);
    out.extend(frame(GOAWAY, &goaway));
    Some(out)
}

/// Admitted gRPC connections waiting for tonic to take them.
const GRPC_ACCEPT_QUEUE: usize = 128;

/// Serves nothing itself: the gRPC listener's admitted connections (after
/// the TLS handshake when `tls` is set), as the stream `tonic`'s
/// `serve_with_incoming_shutdown` takes.
pub fn grpc_incoming(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<Result<MaybeTls, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(GRPC_ACCEPT_QUEUE);
    let within = limits.timeouts.header;
    tokio::spawn(async move {
        limits
            .accept_loop(
                listener,
                stop,
                plain_only(&tls, refusal_goaway),
                |io, peer| match &tls {
                    // Full only while tonic is busy taking the previous ones;
                    // a connection that does not fit is closed (counted as
                    // not served, like any refusal).
                    None => {
                        let _ = tx.try_send(Ok(MaybeTls::Plain(io)));
                    }
                    Some(acceptor) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            if let Some(io) =
                                MaybeTls::accept(io, Some(&acceptor), within, peer).await
                            {
                                let _ = tx.send(Ok(io)).await;
                            }
                        });
                    }
                },
            )
            .await
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// `refusal` on a plaintext listener; nothing on a TLS one (no byte may be
/// sent before the handshake: the refusal is logged and counted only).
fn plain_only(
    tls: &Option<TlsAcceptor>,
    refusal: fn(&Refused) -> Option<Vec<u8>>,
) -> impl Fn(&Refused) -> Option<Vec<u8>> {
    let plain = tls.is_none();
    move |r| if plain { refusal(r) } else { None }
}

/// The TLS side of a listener (the dashboard/HTTP port, the query gRPC
/// port): the certificate chain in `cert` (PEM, the server's first) and its
/// key in `key` (PEM), offering `alpn`. rustls with the ring provider, TLS
/// 1.2 and 1.3, no client certificate.
pub fn tls_acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context as _;
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("config `server.tls_cert`: reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("config `server.tls_cert`: {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "config `server.tls_cert`: {} holds no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("config `server.tls_key`: reading {}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::edge::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("config `server.tls_key`: does not match server.tls_cert")?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// An admitted connection, in the clear or over TLS.
pub enum MaybeTls {
    Plain(Guarded<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<Guarded<TcpStream>>>),
}

impl MaybeTls {
    /// `io` as it is, or after its TLS handshake (within `within`, else it
    /// is closed; a failed handshake is logged at debug level).
    pub async fn accept(
        io: Guarded<TcpStream>,
        tls: Option<&TlsAcceptor>,
        within: Duration,
        peer: SocketAddr,
    ) -> Option<Self> {
        let Some(acceptor) = tls else {
            return Some(Self::Plain(io));
        };
        match tokio::time::timeout(within, acceptor.accept(io)).await {
            Ok(Ok(s)) => Some(Self::Tls(Box::new(s))),
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "no TLS handshake within connections.header_timeout");
                None
            }
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for MaybeTls {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Plain(io) => io.connect_info(),
            Self::Tls(io) => io.get_ref().0.connect_info(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_client: usize) -> Arc<Gate> {
        Gate::new(
            "test",
            ("t.total", total),
            ("t.per_client", per_client),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn a_gate_refuses_past_each_cap_by_name_and_frees_on_drop() {
        let g = gate(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = g.try_acquire(a).unwrap();
        let _a2 = g.try_acquire(a).unwrap();
        assert_eq!(g.try_acquire(a).unwrap_err().key, "t.per_client");
        let _b1 = g.try_acquire(b).unwrap();
        assert_eq!(g.try_acquire(b).unwrap_err().key, "t.total");
        assert_eq!(g.open(), 3);
        drop(a1);
        assert_eq!(g.open(), 2);
        let _a3 = g.try_acquire(a).unwrap();
    }

    #[test]
    fn the_derived_cap_leaves_descriptors_for_the_store() {
        assert_eq!(per_listener_cap(0, Some(1024)), 128);
        assert_eq!(per_listener_cap(0, Some(256)), MIN_PER_LISTENER);
        assert_eq!(per_listener_cap(0, Some(1 << 30)), MAX_DERIVED_PER_LISTENER);
        assert_eq!(per_listener_cap(0, None), MAX_DERIVED_PER_LISTENER);
        assert_eq!(per_listener_cap(77, Some(1024)), 77);
        // Three listeners at the derived cap fit in the limit with the reserve.
        let cap = per_listener_cap(0, Some(1024)) as u64;
        assert!(3 * cap + RESERVED_DESCRIPTORS <= 1024);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let limits = ConnLimits {
            gate: gate(10, 10),
            timeouts: Timeouts {
                header: Duration::from_millis(200),
                idle: Duration::from_secs(60),
            },
            cut: CancellationToken::new(),
        };
        let mut io = limits.admit(server, peer).ok().unwrap();
        assert_eq!(limits.gate.open(), 1);
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let err = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf))
            .await
            .expect("the header timeout fires")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));
        drop(io);
        assert_eq!(limits.gate.open(), 0);
    }
}
