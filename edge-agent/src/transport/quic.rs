//! The QUIC adapter (quinn): one connection to the core, mutual TLS, every
//! call on its own bidirectional stream (framing in
//! `proto/sightline/v1/edge.proto`). The event session's stream goes first
//! whenever it has data, so a clip upload on the same connection never holds
//! up events; losses on one stream do not stall the others; the connection
//! survives this host's address changing (QUIC migration). A small batch
//! also goes as a datagram, a copy the core may commit first (see [`Link`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream, FutureExt, SinkExt, StreamExt};
use prost::Message;
use quinn::{Connection, ConnectionError};
use sightline_proto::{
    edge::{self, codec},
    v1::{
        agent_message, quic_reply, AgentMessage, AttachMediaRequest, Batch, CoreMessage,
        MediaChunk, MediaOffsetRequest, MediaOffsetResponse, MediaUploadResponse, QuicCall,
        QuicReply,
    },
};
use tokio_util::codec::{FramedRead, FramedWrite};
use tonic::Status;

use super::{status_error, Link, LinkError, Transport};
use crate::tls::ClientTls;

pub struct QuicTransport {
    url: String,
    host: String,
    port: u16,
    server_name: String,
    client: quinn::ClientConfig,
    endpoint: std::sync::Mutex<Option<quinn::Endpoint>>,
    conn: tokio::sync::Mutex<Option<Connection>>,
    timeout: Duration,
}

impl QuicTransport {
    /// `url` is `quic://host:port`.
    pub fn new(
        url: &str,
        tls: &ClientTls,
        timeout: Duration,
        congestion: &str,
    ) -> anyhow::Result<Self> {
        let parsed =
            url::Url::parse(url).map_err(|e| anyhow::anyhow!("config `core_url`: {url:?}: {e}"))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("config `core_url`: {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed
            .port()
            .ok_or_else(|| anyhow::anyhow!("config `core_url`: {url:?} has no port"))?;
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls.rustls(edge::ALPN)?))
                .map_err(|e| anyhow::anyhow!("config `tls`: {e}"))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(edge::transport_config(congestion)));
        Ok(Self {
            url: url.to_string(),
            server_name: tls.server_name.clone().unwrap_or_else(|| host.clone()),
            host,
            port,
            client,
            endpoint: std::sync::Mutex::new(None),
            conn: tokio::sync::Mutex::new(None),
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn endpoint(&self, v6: bool) -> Result<quinn::Endpoint, LinkError> {
        let mut ep = self.endpoint.lock().unwrap();
        if let Some(e) = ep.as_ref() {
            return Ok(e.clone());
        }
        let bind: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
        let e = quinn::Endpoint::client(bind).map_err(|e| LinkError::Connect {
            url: self.url.clone(),
            reason: format!("cannot open a UDP socket: {e}"),
        })?;
        *ep = Some(e.clone());
        Ok(e)
    }

    /// The connection, opened if there is none (or it closed).
    async fn conn(&self) -> Result<Connection, LinkError> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connect_err = |reason: String| LinkError::Connect {
            url: self.url.clone(),
            reason,
        };
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .next()
            .ok_or_else(|| connect_err("the host has no address".into()))?;
        let connecting = self
            .endpoint(addr.is_ipv6())?
            .connect_with(self.client.clone(), addr, &self.server_name)
            .map_err(|e| connect_err(e.to_string()))?;
        let c = match tokio::time::timeout(self.timeout, connecting).await {
            Err(_) => {
                return Err(LinkError::Unanswered {
                    url: self.url.clone(),
                    secs: self.timeout.as_secs(),
                })
            }
            Ok(Err(ConnectionError::TimedOut)) => {
                return Err(LinkError::Unanswered {
                    url: self.url.clone(),
                    secs: self.timeout.as_secs(),
                })
            }
            Ok(Err(e)) => return Err(conn_error(&e)),
            Ok(Ok(c)) => c,
        };
        *held = Some(c.clone());
        Ok(c)
    }

    async fn open(&self) -> Result<Link, LinkError> {
        let conn = self.conn().await?;
        let (send, recv) = conn.open_bi().await.map_err(|e| conn_error(&e))?;
        // Events and their acks first, media after.
        let _ = send.set_priority(1);
        let mut wr = FramedWrite::new(send, codec());
        let call = QuicCall {
            method: edge::SESSION.into(),
        };
        wr.send(Bytes::from(call.encode_to_vec()))
            .await
            .map_err(|e| broken(&conn, e))?;
        let (tx, live_tx, mut out) = super::outgoing();
        tokio::spawn(async move {
            while let Some(m) = out.next().await {
                if wr.send(Bytes::from(m.encode_to_vec())).await.is_err() {
                    return;
                }
            }
            let _ = wr.get_mut().finish();
        });
        let c = conn.clone();
        let rx = FramedRead::new(recv, codec())
            .map(move |f| match f {
                Ok(b) => match reply::<CoreMessage>(b.freeze()) {
                    Ok(m) => Ok(m),
                    Err(s) => Err(status_error(&s)),
                },
                Err(e) => Err(broken(&c, e)),
            })
            .boxed();
        let copies = Copies {
            conn: conn.clone(),
            last: std::sync::Mutex::default(),
        };
        Ok(Link {
            tx,
            live_tx,
            rx,
            peer: format!("{} ({})", self.url, conn.remote_address()),
            shadow: Some(Box::new(move |b: &Batch| copies.send(b))),
        })
    }

    /// One media call: the call frame, the request frames, then the answer.
    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        requests: BoxStream<'static, Req>,
    ) -> Result<Resp, Status> {
        let conn = self
            .conn()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let unavailable = |e: &dyn std::fmt::Display| Status::unavailable(format!("{e}"));
        let (send, recv) = conn.open_bi().await.map_err(|e| unavailable(&e))?;
        let mut wr = FramedWrite::new(send, codec());
        let head = QuicCall {
            method: method.into(),
        };
        wr.send(Bytes::from(head.encode_to_vec()))
            .await
            .map_err(|e| unavailable(&broken(&conn, e)))?;
        let mut requests = requests;
        while let Some(r) = requests.next().await {
            wr.send(Bytes::from(r.encode_to_vec()))
                .await
                .map_err(|e| unavailable(&broken(&conn, e)))?;
        }
        let _ = wr.get_mut().finish();
        let mut rd = FramedRead::new(recv, codec());
        match rd.next().await {
            Some(Ok(b)) => reply::<Resp>(b.freeze()),
            Some(Err(e)) => Err(unavailable(&broken(&conn, e))),
            None => Err(Status::unavailable(
                "the core closed the call without an answer",
            )),
        }
    }
}

/// A live batch of more datagrams than this is a backlog draining: it goes by
/// the stream alone, the link's bytes being better spent there.
const MAX_COPY_DATAGRAMS: usize = 8;

/// How many times each copy goes: with its batch and with the next ones.
const COPY_SENDS: usize = 3;

/// Datagram copies of the session's live batches (PROTOCOL.md rule 6a): each
/// batch cut into datagram-sized runs of seqs, each run sent [`COPY_SENDS`]
/// times — at once and again with each of the next batches — so a lost
/// datagram costs a batch interval, not a round trip, and a lost stream
/// packet holds nothing up. Measured: with two sends, a batch lost all ways
/// about once a run held every event behind it ~300 ms (the stream's
/// retransmission), the whole 1% tail.
struct Copies {
    conn: Connection,
    /// The datagrams of the last batches, sent again with the next ones.
    last: std::sync::Mutex<std::collections::VecDeque<Vec<Bytes>>>,
}

impl Copies {
    fn send(&self, batch: &Batch) {
        let Some(max) = self.conn.max_datagram_size() else {
            return;
        };
        let fresh = datagrams(batch, max, MAX_COPY_DATAGRAMS);
        let mut last = self.last.lock().unwrap();
        for d in last.iter().flatten().chain(&fresh) {
            // Best effort: a copy that is dropped is fine.
            let _ = self.conn.send_datagram(d.clone());
        }
        last.push_back(fresh);
        while last.len() >= COPY_SENDS {
            last.pop_front();
        }
    }
}

/// `batch` as runs of consecutive seqs that each fit a datagram of `max`
/// bytes; none if that takes more than `most` datagrams or an event alone is
/// too large.
fn datagrams(batch: &Batch, max: usize, most: usize) -> Vec<Bytes> {
    // AgentMessage and Batch framing around the events, at most.
    const FRAMING: usize = 16;
    let mut out = Vec::new();
    let mut start = 0;
    while start < batch.events.len() {
        let (mut end, mut size) = (start, FRAMING);
        while let Some(ev) = batch.events.get(end) {
            let len = ev.len();
            let add = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            if size + add > max {
                break;
            }
            size += add;
            end += 1;
        }
        if end == start || out.len() == most {
            return Vec::new();
        }
        let piece = AgentMessage {
            msg: Some(agent_message::Msg::Batch(Batch {
                first_seq: batch.first_seq + start as u64,
                events: batch.events[start..end].to_vec(),
                ..Default::default()
            })),
        };
        out.push(Bytes::from(piece.encode_to_vec()));
        start = end;
    }
    out
}

/// A QuicReply frame: the message, or the call's failure.
fn reply<M: Message + Default>(frame: Bytes) -> Result<M, Status> {
    let r = QuicReply::decode(frame)
        .map_err(|e| Status::internal(format!("a reply does not decode: {e}")))?;
    match r.reply {
        Some(quic_reply::Reply::Message(b)) => M::decode(b)
            .map_err(|e| Status::internal(format!("a reply message does not decode: {e}"))),
        Some(quic_reply::Reply::Status(s)) => Err(edge::from_wire(s)),
        None => Err(Status::internal("an empty reply")),
    }
}

/// A stream error: when the connection is closed, why.
fn broken(conn: &Connection, e: std::io::Error) -> LinkError {
    match conn.close_reason() {
        Some(reason) => conn_error(&reason),
        None => LinkError::Broken(e.to_string()),
    }
}

/// TLS alerts by number (RFC 8446), as QUIC carries them (0x100 + alert).
fn alert_name(n: u64) -> Option<&'static str> {
    Some(match n {
        42 => "BadCertificate",
        44 => "CertificateRevoked",
        45 => "CertificateExpired",
        46 => "CertificateUnknown",
        48 => "UnknownCA",
        116 => "CertificateRequired",
        _ => return None,
    })
}

fn conn_error(e: &ConnectionError) -> LinkError {
    if let ConnectionError::ApplicationClosed(c) = e {
        if c.error_code == edge::CLOSE_REVOKED.into() || c.error_code == edge::CLOSE_REFUSED.into()
        {
            return LinkError::Refused(String::from_utf8_lossy(&c.reason).into_owned());
        }
    }
    if let Some(n) = crypto_alert(e) {
        let text = format!("{} ({n}): {e}", alert_name(n).unwrap_or("TLS alert"));
        return LinkError::Refused(crate::tls::explain(&text).unwrap_or(text));
    }
    LinkError::Broken(e.to_string())
}

/// The TLS alert a connection was closed with, if any.
fn crypto_alert(e: &ConnectionError) -> Option<u64> {
    let code: u64 = match e {
        ConnectionError::ConnectionClosed(c) => c.error_code.into(),
        ConnectionError::TransportError(t) => t.code.into(),
        _ => return None,
    };
    // `then`, not `then_some`: `code - 0x100` must not be computed below 0x100.
    (0x100..0x200).contains(&code).then(|| code - 0x100)
}

impl Transport for QuicTransport {
    fn connect(&self) -> BoxFuture<'_, Result<Link, LinkError>> {
        self.open().boxed()
    }
    fn describe(&self) -> String {
        "quic".into()
    }
    fn media_offset(
        &self,
        req: MediaOffsetRequest,
    ) -> BoxFuture<'_, Result<MediaOffsetResponse, Status>> {
        self.call(
            edge::MEDIA_OFFSET,
            futures::stream::once(async { req }).boxed(),
        )
        .boxed()
    }
    fn media_upload(
        &self,
        chunks: BoxStream<'static, MediaChunk>,
    ) -> BoxFuture<'_, Result<MediaUploadResponse, Status>> {
        self.call(edge::MEDIA_UPLOAD, chunks).boxed()
    }
    fn media_attach(&self, req: AttachMediaRequest) -> BoxFuture<'_, Result<(), Status>> {
        async move {
            let _: sightline_proto::v1::AttachMediaResponse = self
                .call(
                    edge::MEDIA_ATTACH,
                    futures::stream::once(async { req }).boxed(),
                )
                .await?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_proto::v1::EdgeEvent;

    fn batch(n: usize, name_len: usize) -> Batch {
        Batch {
            first_seq: 41,
            events: (0..n)
                .map(|i| {
                    EdgeEvent {
                        seq: 41 + i as u64,
                        ..edge_event(name_len)
                    }
                    .encode_to_vec()
                    .into()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn edge_event(name_len: usize) -> EdgeEvent {
        EdgeEvent {
            detection: Some(sightline_proto::v1::Detection {
                item_name: "x".repeat(name_len),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn copies_cover_the_batch_in_runs_that_fit_a_datagram() {
        let b = batch(100, 40);
        let pieces = datagrams(&b, 1200, 8);
        assert!(pieces.len() > 1);
        let mut next = b.first_seq;
        for p in &pieces {
            assert!(p.len() <= 1200, "{} bytes", p.len());
            let Some(agent_message::Msg::Batch(part)) =
                AgentMessage::decode(p.clone()).unwrap().msg
            else {
                panic!("a copy is a batch")
            };
            assert_eq!(part.first_seq, next);
            for (i, e) in part.events.iter().enumerate() {
                let e = EdgeEvent::decode(e.clone()).unwrap();
                assert_eq!(e.seq, part.first_seq + i as u64);
            }
            next += part.events.len() as u64;
        }
        assert_eq!(next, b.first_seq + 100);
    }

    #[test]
    fn no_copies_for_a_backlog_or_an_event_larger_than_a_datagram() {
        assert!(datagrams(&batch(2000, 40), 1200, 8).is_empty());
        assert!(datagrams(&batch(3, 2000), 1200, 8).is_empty());
        assert_eq!(datagrams(&batch(5, 40), 1200, 8).len(), 1);
    }
}
