//! Impaired links on 127.0.0.1 for the edge-link tests and benchmark: a UDP
//! proxy (for QUIC) and a TCP proxy (for gRPC) that add delay, loss and a
//! bandwidth limit, and can be cut; the UDP one can also move the client to a
//! new address (what a camera on a moving link looks like to the core).
//!
//! How loss is modelled: on UDP a lost datagram is dropped — QUIC recovers it
//! itself. On TCP the kernel under the proxy never loses anything, so a lost
//! segment is modelled by what it costs TCP: the bytes behind it wait one
//! more round trip (a fast retransmit; a timeout would cost more). Delay is
//! one way, per direction. The bandwidth limit is a bottleneck queue: bytes
//! leave at `rate`, and the queue holds at most `queue` of them (UDP drops
//! beyond it; TCP stops reading, pushing back into the sender's buffers).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use rand::Rng;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, watch},
    time::Instant,
};

/// What the link does to traffic, in each direction.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Share of packets (UDP) or segments (TCP) lost, 0..1.
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Bytes per second; `None`: unlimited.
    pub rate: Option<u64>,
    /// Most bytes queued at the bottleneck.
    pub queue: usize,
    /// TCP only: model TCP's own response to the loss. The kernel under the
    /// proxy sees no loss, so left alone it would keep sending at the full
    /// rate, which a real TCP over this link does not: with `true` the TCP
    /// proxy carries at most what the Mathis formula gives for this loss and
    /// round trip (1.22 * MSS / (RTT * sqrt(loss))), and holds the rest back
    /// in the sender's buffers, where a real TCP keeps it.
    pub tcp_loss_response: bool,
}

impl Impairment {
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        rate: None,
        queue: usize::MAX,
        tcp_loss_response: false,
    };

    /// The lossy link: 2% loss, 50 ms delay.
    pub fn lossy() -> Self {
        Self {
            loss: 0.02,
            delay: Duration::from_millis(50),
            rate: None,
            queue: usize::MAX,
            tcp_loss_response: false,
        }
    }

    /// The rate TCP itself sustains over this link (Mathis et al. 1997), or
    /// the link's rate if that is lower.
    pub fn tcp_rate(&self) -> Option<u64> {
        if !self.tcp_loss_response || self.loss <= 0.0 {
            return self.rate;
        }
        let rtt = (self.delay * 2).as_secs_f64().max(0.001);
        let mathis = (1.22 * MSS as f64 / (rtt * self.loss.sqrt())) as u64;
        Some(self.rate.map_or(mathis, |r| r.min(mathis)))
    }
}

/// When each byte leaves the bottleneck: a clock that advances by
/// size / rate for every packet.
struct Pacer {
    imp: Impairment,
    next_free: Instant,
}

impl Pacer {
    fn new(imp: Impairment) -> Self {
        Self {
            imp,
            next_free: Instant::now(),
        }
    }

    /// The time `len` bytes are delivered, or `None` if the queue is full.
    fn schedule(&mut self, len: usize) -> Option<Instant> {
        let now = Instant::now();
        let start = self.next_free.max(now);
        let tx = match self.imp.rate {
            Some(r) => Duration::from_secs_f64(len as f64 / r as f64),
            None => Duration::ZERO,
        };
        if let Some(r) = self.imp.rate {
            let queued = (start - now).as_secs_f64() * r as f64;
            if queued as usize + len > self.imp.queue {
                return None;
            }
        }
        self.next_free = start + tx;
        Some(self.next_free + self.imp.delay)
    }
}

/// A UDP proxy between a client and `target`.
pub struct UdpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    rebind: mpsc::UnboundedSender<()>,
    /// Datagrams dropped (loss, full queue or cut).
    pub dropped: Arc<AtomicU64>,
    pub forwarded: Arc<AtomicU64>,
    /// How long each datagram towards the core waited in the bottleneck
    /// queue, in ms (what the sender's congestion control left there).
    pub queued_ms: Arc<Mutex<Vec<f32>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UdpProxy {
    pub async fn start(target: SocketAddr, imp: Impairment) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (dropped, forwarded) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let queued_ms: Arc<Mutex<Vec<f32>>> = Arc::default();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (to_core_tx, to_core_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let (to_client_tx, to_client_rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let upstream = Arc::new(Mutex::new(Arc::new(new_upstream().await)));
        let mut tasks = Vec::new();
        // Client -> core: impair, queue.
        {
            let (front, up, dropped, client, queued_ms) = (
                front.clone(),
                up.clone(),
                dropped.clone(),
                client.clone(),
                queued_ms.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut pacer = Pacer::new(imp);
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, from)) = front.recv_from(&mut buf).await else {
                        return;
                    };
                    *client.lock().unwrap() = Some(from);
                    if !up.load(Ordering::SeqCst) || rand::rng().random_bool(imp.loss) {
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let now = Instant::now();
                    match pacer.schedule(n) {
                        Some(at) => {
                            let wait = (at - now).saturating_sub(imp.delay);
                            queued_ms.lock().unwrap().push(wait.as_secs_f32() * 1000.0);
                            let _ = to_core_tx.send((at, buf[..n].to_vec()));
                        }
                        None => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        // Deliver to the core from the current upstream socket.
        {
            let (upstream, forwarded) = (upstream.clone(), forwarded.clone());
            tasks.push(tokio::spawn(deliver(to_core_rx, move |p| {
                let s = upstream.lock().unwrap().clone();
                let _ = s.try_send_to(&p, target);
                forwarded.fetch_add(1, Ordering::Relaxed);
            })));
        }
        // Deliver to the client.
        {
            let (front, client) = (front.clone(), client.clone());
            tasks.push(tokio::spawn(deliver(to_client_rx, move |p| {
                if let Some(c) = *client.lock().unwrap() {
                    let _ = front.try_send_to(&p, c);
                }
            })));
        }
        // Core -> client, from every upstream socket there has been.
        let (rebind, mut rebinds) = mpsc::unbounded_channel::<()>();
        {
            let (up, dropped, upstream) = (up.clone(), dropped.clone(), upstream.clone());
            tasks.push(tokio::spawn(async move {
                let pacer = Arc::new(Mutex::new(Pacer::new(imp)));
                let mut sock = upstream.lock().unwrap().clone();
                loop {
                    let (pacer, up, dropped, tx, s) = (
                        pacer.clone(),
                        up.clone(),
                        dropped.clone(),
                        to_client_tx.clone(),
                        sock.clone(),
                    );
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = s.recv(&mut buf).await {
                            if !up.load(Ordering::SeqCst) || rand::rng().random_bool(imp.loss) {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let at = pacer.lock().unwrap().schedule(n);
                            match at {
                                Some(at) => {
                                    let _ = tx.send((at, buf[..n].to_vec()));
                                }
                                None => {
                                    dropped.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                    if rebinds.recv().await.is_none() {
                        return;
                    }
                    sock = Arc::new(new_upstream().await);
                    *upstream.lock().unwrap() = sock.clone();
                }
            }));
        }
        Self {
            addr,
            up,
            rebind,
            dropped,
            forwarded,
            queued_ms,
            tasks,
        }
    }

    /// Drops everything until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// From now on the core sees the client at a new address (a new source port).
    pub fn move_client(&self) {
        let _ = self.rebind.send(());
    }
}

async fn new_upstream() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Sends each packet at its time, in order.
async fn deliver(
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut send: impl FnMut(Vec<u8>),
) {
    while let Some((at, p)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        send(p);
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A TCP proxy with the same impairments; can cut the link (every open
/// connection closed, new ones refused until restored).
pub struct ImpairedTcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// TCP's segment size on a typical path.
const MSS: usize = 1448;

impl ImpairedTcpProxy {
    pub async fn start(target: SocketAddr, imp: Impairment) -> Self {
        Self::try_start_on("127.0.0.1:0".parse().unwrap(), target, imp)
            .await
            .expect("a TCP port on 127.0.0.1")
    }

    /// A [`UdpProxy`] and a TCP proxy listening on the same port, both to
    /// `target` (the core serves both transports on one port). The port the
    /// UDP proxy was given may be taken for TCP by anything else on the
    /// machine (a listener, an outgoing connection's local port): then both
    /// are tried again on another.
    pub async fn beside_udp(target: SocketAddr, imp: Impairment) -> (UdpProxy, Self) {
        let mut last = None;
        for _ in 0..50 {
            let udp = UdpProxy::start(target, imp).await;
            match Self::try_start_on(udp.addr, target, imp).await {
                Ok(tcp) => return (udp, tcp),
                Err(e) => last = Some(e),
            }
        }
        panic!("no port free for both UDP and TCP in 50 tries: {last:?}");
    }

    /// Listening on `at`.
    pub async fn try_start_on(
        at: SocketAddr,
        target: SocketAddr,
        imp: Impairment,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(at).await?;
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let (u, g, c) = (up.clone(), generation.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    continue;
                }
                c.fetch_add(1, Ordering::SeqCst);
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ri, wo, imp) => {}
                        _ = pump(ro, wi, imp) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            up,
            generation,
            connections,
            task,
        })
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Copies one direction through the bottleneck. A lost segment arrives one
/// round trip late (its fast retransmission) and the bytes behind it wait for
/// it (TCP delivers in order); losses within one round trip overlap, as with
/// selective acknowledgements.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    imp: Impairment,
) {
    // The bottleneck queue, in segments; reading stops while it is full.
    // When TCP's own rate is modelled, it keeps its backlog at the sender:
    // only a round trip's worth is in the network.
    let rate = imp.tcp_rate();
    let cap = if imp.tcp_loss_response {
        let bdp = rate.unwrap_or(u64::MAX) as f64 * (imp.delay * 2).as_secs_f64();
        (bdp as usize / MSS).clamp(4, 1 << 16)
    } else {
        (imp.queue / MSS).clamp(16, 1 << 16)
    };
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(cap);
    let writer = async move {
        while let Some((at, seg)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&seg).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut pacer = Pacer::new(Impairment {
            queue: usize::MAX,
            rate,
            ..imp
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
        let mut last = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend(buf[..n].chunks(MSS).map(<[u8]>::to_vec));
            while let Some(seg) = pending.pop_front() {
                let mut at = pacer
                    .schedule(seg.len())
                    .expect("the TCP queue is bounded by the channel");
                if rand::rng().random_bool(imp.loss) {
                    at += imp.delay * 2;
                }
                at = at.max(last);
                last = at;
                if tx.send((at, seg)).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::join!(writer, reader);
}

impl Drop for ImpairedTcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
