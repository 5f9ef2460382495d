//! The QUIC adapter (quinn): one connection per agent, mutual TLS, every call
//! on its own bidirectional stream (framing in `proto/sightline/v1/edge.proto`).
//! The event session's stream has priority over media streams in both
//! directions, so a clip upload never holds up events or their acks; the
//! connection survives the agent's address changing (migration).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use prost::Message;
use quinn::{Connection, RecvStream, SendStream};
use sightline_proto::{
    edge::{self, codec},
    v1::{
        quic_reply, AgentMessage, AttachMediaRequest, AttachMediaResponse, MediaChunk,
        MediaOffsetRequest, MediaOffsetResponse, QuicCall, QuicReply,
    },
    ApiError, Code,
};
use tokio::sync::mpsc;
use tokio_util::{
    codec::{FramedRead, FramedWrite, LengthDelimitedCodec},
    sync::CancellationToken,
};
use tonic::Status;

use super::{Peer, LINK_QUIC};
use crate::{ingest::IngestCore, media::MediaStore, metrics::Metrics};

/// What the QUIC calls need.
pub struct QuicEdge {
    pub tls: Arc<super::EdgeTls>,
    pub ingest: Arc<IngestCore>,
    pub media: Arc<MediaStore>,
    pub metrics: Arc<Metrics>,
    /// `ingest.max_message_bytes`: the largest frame a call may send (the
    /// same limit as the gRPC adapter's).
    pub max_message: usize,
}

/// Starts the QUIC endpoint on `socket`; returns it (closed on shutdown).
pub fn serve(
    socket: std::net::UdpSocket,
    congestion: &str,
    edge: Arc<QuicEdge>,
    stop: CancellationToken,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(edge.tls.quic.clone())
        .context("edge: the TLS config does not suit QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(edge::transport_config(congestion)));
    server.migration(true);
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .context("edge: starting QUIC")?;
    let ep = endpoint.clone();
    tokio::spawn(async move {
        loop {
            let incoming = tokio::select! {
                _ = stop.cancelled() => return,
                i = ep.accept() => match i { Some(i) => i, None => return },
            };
            let edge = edge.clone();
            tokio::spawn(async move {
                let addr = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => edge.connection(conn).await,
                    Err(e) => {
                        edge.metrics.edge_refused("tls");
                        tracing::warn!(peer = %addr, transport = "quic", reason = %explain(&e), "edge: connection refused");
                    }
                }
            });
        }
    });
    Ok(endpoint)
}

fn explain(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::TransportError(t) => super::explain_reason(&t.reason),
        other => other.to_string(),
    }
}

impl QuicEdge {
    async fn connection(self: Arc<Self>, conn: Connection) {
        let addr = conn.remote_address();
        let certs = conn.peer_identity().and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let identity = match self.tls.identify(certs.as_deref().map(Vec::as_slice)) {
            Ok(id) => id,
            Err(why) => return self.refuse_conn(&conn, addr, why),
        };
        let agent_id = &identity.agent_id;
        tracing::debug!(agent = %agent_id, peer = %addr, "edge: QUIC connection");
        // Datagrams carry copies of the session's batches (see run_session).
        let (dg_tx, dg_rx) = mpsc::channel::<AgentMessage>(256);
        let shadow = Arc::new(std::sync::Mutex::new(Some(dg_rx)));
        {
            let conn = conn.clone();
            tokio::spawn(async move {
                while let Ok(d) = conn.read_datagram().await {
                    if let Ok(m) = AgentMessage::decode(d) {
                        let _ = dg_tx.try_send(m);
                    }
                }
            });
        }
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(agent = %agent_id, error = %e, "edge: QUIC connection ended");
                    return;
                }
            };
            let peer = Peer {
                // The address as of this call: it changes when the agent moves.
                addr: conn.remote_address().to_string(),
                identity: Some(identity.clone()),
                link: LINK_QUIC,
                refusal: None,
            };
            let (me, c, sh) = (self.clone(), conn.clone(), shadow.clone());
            tokio::spawn(async move { me.call(c, peer, send, recv, sh).await });
        }
    }

    fn refuse_conn(&self, conn: &Connection, addr: SocketAddr, why: String) {
        self.metrics.edge_refused("tls");
        tracing::warn!(peer = %addr, transport = "quic", reason = %why, "edge: connection refused");
        conn.close(edge::CLOSE_REFUSED.into(), why.as_bytes());
    }

    async fn call(
        &self,
        conn: Connection,
        peer: Peer,
        send: SendStream,
        recv: RecvStream,
        shadow: Arc<std::sync::Mutex<Option<Datagrams>>>,
    ) {
        let mut rd = FramedRead::new(recv, edge::codec_limited(self.max_message));
        let max = self.max_message;
        let mut wr = FramedWrite::new(send, codec());
        let method = match tokio::time::timeout(Duration::from_secs(10), rd.next()).await {
            Ok(Some(Ok(f))) => match QuicCall::decode(f.freeze()) {
                Ok(c) => c.method,
                Err(e) => {
                    let st = ApiError::field(
                        "method",
                        format!("the first frame is not a QuicCall: {e}"),
                    )
                    .into();
                    return finish(&mut wr, Err::<AttachMediaResponse, _>(st)).await;
                }
            },
            _ => return,
        };
        match method.as_str() {
            edge::SESSION => {
                let _ = wr.get_mut().set_priority(1);
                let inbound = decoded::<AgentMessage>(rd, max).boxed();
                let (tx, mut rx) = mpsc::channel(64);
                // One session per connection takes the datagrams.
                let shadow = shadow.lock().unwrap().take();
                tokio::spawn(self.ingest.clone().run_session(peer, inbound, shadow, tx));
                while let Some(m) = rx.recv().await {
                    match m {
                        Ok(msg) => {
                            if send_reply(&mut wr, &msg).await.is_err() {
                                return;
                            }
                        }
                        Err(st) => {
                            let revoked = st.code() == tonic::Code::PermissionDenied;
                            finish(&mut wr, Err::<AttachMediaResponse, _>(st.clone())).await;
                            if revoked {
                                // Revoked or refused: nothing more on this connection.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                conn.close(edge::CLOSE_REVOKED.into(), st.message().as_bytes());
                            }
                            return;
                        }
                    }
                }
                let _ = wr.get_mut().finish();
            }
            edge::MEDIA_OFFSET => {
                let r = async {
                    self.admit_media(&peer)?;
                    let req: MediaOffsetRequest = one(&mut rd, max).await?;
                    let (received, complete) = self.media.offset(&req.sha256).await?;
                    Ok(MediaOffsetResponse { received, complete })
                }
                .await;
                finish(&mut wr, r).await;
            }
            edge::MEDIA_UPLOAD => {
                let r = async {
                    self.admit_media(&peer)?;
                    Ok(self.media.upload(decoded::<MediaChunk>(rd, max)).await?)
                }
                .await;
                finish(&mut wr, r).await;
            }
            edge::MEDIA_ATTACH => {
                let r = async {
                    self.admit_media(&peer)?;
                    let req: AttachMediaRequest = one(&mut rd, max).await?;
                    self.media
                        .attach(peer.agent_id(), req.detection_oids, req.media)
                        .await?;
                    Ok(AttachMediaResponse {})
                }
                .await;
                finish(&mut wr, r).await;
            }
            other => {
                let st = ApiError::field_with(
                    Code::Unimplemented,
                    "method",
                    format!("no call {other:?}"),
                )
                .into();
                finish(&mut wr, Err::<AttachMediaResponse, _>(st)).await;
            }
        }
    }

    fn admit_media(&self, peer: &Peer) -> Result<(), Status> {
        super::admit_media(&self.ingest.registry, peer)
    }
}

type Reader = FramedRead<RecvStream, LengthDelimitedCodec>;
/// The connection's datagrams (batch copies), taken by its session.
type Datagrams = mpsc::Receiver<AgentMessage>;
type Writer = FramedWrite<SendStream, LengthDelimitedCodec>;

/// The call's request frames, decoded; a broken stream or a frame that does
/// not decode ends it with an error.
fn decoded<M: Message + Default>(
    rd: Reader,
    max: usize,
) -> impl Stream<Item = Result<M, Status>> + Unpin {
    rd.map(move |f| match f {
        Ok(b) => M::decode(b.freeze()).map_err(|e| {
            ApiError::invalid(format!(
                "a frame does not decode as {}: {e}",
                std::any::type_name::<M>()
            ))
            .into()
        }),
        Err(e) => Err(edge::read_error(&e, max)),
    })
}

async fn one<M: Message + Default>(rd: &mut Reader, max: usize) -> Result<M, Status> {
    match rd.next().await {
        Some(Ok(b)) => M::decode(b.freeze())
            .map_err(|e| ApiError::invalid(format!("the request does not decode: {e}")).into()),
        Some(Err(e)) => Err(edge::read_error(&e, max)),
        None => Err(ApiError::invalid("the stream ended before the request").into()),
    }
}

async fn send_reply<M: Message>(wr: &mut Writer, m: &M) -> Result<(), std::io::Error> {
    let reply = QuicReply {
        reply: Some(quic_reply::Reply::Message(Bytes::from(m.encode_to_vec()))),
    };
    wr.send(Bytes::from(reply.encode_to_vec())).await
}

/// Sends the call's answer or its failure and finishes the stream.
async fn finish<M: Message>(wr: &mut Writer, r: Result<M, Status>) {
    let sent = match r {
        Ok(m) => send_reply(wr, &m).await,
        Err(st) => {
            let reply = QuicReply {
                reply: Some(quic_reply::Reply::Status(edge::to_wire(&st))),
            };
            wr.send(Bytes::from(reply.encode_to_vec())).await
        }
    };
    if sent.is_ok() {
        let _ = wr.get_mut().finish();
    }
}
