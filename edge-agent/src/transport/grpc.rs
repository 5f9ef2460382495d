//! The gRPC (HTTP/2, tonic) adapter: one bidirectional `Ingest.Session` call
//! per link, and the `Media` calls, all on one HTTP/2 connection — over TLS
//! with this agent's certificate (`https://`), or without (`http://`, demos).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use sightline_proto::v1::{
    ingest_client::IngestClient, media_client::MediaClient, AttachMediaRequest, MediaChunk,
    MediaOffsetRequest, MediaOffsetResponse, MediaUploadResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Status,
};

use super::{outgoing, status_error, Link, LinkError, Transport};
use crate::tls::ClientTls;

/// gRPC transport to `url` (`https://host:port` or `http://host:port`).
pub struct GrpcTransport {
    url: String,
    endpoint: Endpoint,
    tls: bool,
    /// The connection the session and the uploads share; dropped when it breaks.
    channel: Arc<Mutex<Option<Channel>>>,
}

impl GrpcTransport {
    pub fn new(
        url: &str,
        tls: Option<ClientTls>,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| anyhow::anyhow!("config `core_url`: {url:?}: {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // Notice a dead link (a cut cable does not close a TCP connection).
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(4))
            .keep_alive_while_idle(true);
        let has_tls = tls.is_some();
        if let Some(t) = tls {
            let mut cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&t.ca_pem))
                .identity(Identity::from_pem(&t.cert_pem, &t.key_pem));
            if let Some(name) = &t.server_name {
                cfg = cfg.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| anyhow::anyhow!("config `tls`: {e}"))?;
        }
        Ok(Self {
            url: url.to_string(),
            endpoint,
            tls: has_tls,
            channel: Arc::new(Mutex::new(None)),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn channel(&self) -> Result<Channel, LinkError> {
        if let Some(c) = self.channel.lock().unwrap().clone() {
            return Ok(c);
        }
        let c = self
            .endpoint
            .connect()
            .await
            .map_err(|e| LinkError::Connect {
                url: self.url.clone(),
                reason: explain(&e),
            })?;
        *self.channel.lock().unwrap() = Some(c.clone());
        Ok(c)
    }

    /// Forgets a connection that broke; the next call makes a new one.
    fn reset(&self) {
        self.channel.lock().unwrap().take();
    }

    async fn open(&self) -> Result<Link, LinkError> {
        let channel = self.channel().await?;
        let mut client = IngestClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, live_tx, out) = outgoing();
        let response = match client.session(out).await {
            Ok(r) => r,
            Err(s) => {
                self.reset();
                return Err(status_error(&s));
            }
        };
        let shared = self.channel.clone();
        let rx = response
            .into_inner()
            .map(move |r| {
                r.map_err(|s| {
                    // The next session starts on a fresh connection.
                    shared.lock().unwrap().take();
                    status_error(&s)
                })
            })
            .boxed();
        Ok(Link {
            tx,
            live_tx,
            rx,
            peer: self.url.clone(),
            shadow: None,
        })
    }

    async fn media(&self) -> Result<MediaClient<Channel>, Status> {
        let c = self
            .channel()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(MediaClient::new(c).max_encoding_message_size(4 * 1024 * 1024))
    }

    fn after<T>(&self, r: Result<T, Status>) -> Result<T, Status> {
        if let Err(s) = &r {
            if s.code() == tonic::Code::Unavailable {
                self.reset();
            }
        }
        r
    }
}

/// An error and its causes, with TLS failures in words.
pub(super) fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    let text = parts.join(": ");
    crate::tls::explain(&text).unwrap_or(text)
}

impl Transport for GrpcTransport {
    fn connect(&self) -> BoxFuture<'_, Result<Link, LinkError>> {
        self.open().boxed()
    }
    fn describe(&self) -> String {
        if self.tls {
            "grpc+tls"
        } else {
            "grpc plaintext"
        }
        .into()
    }
    fn media_offset(
        &self,
        req: MediaOffsetRequest,
    ) -> BoxFuture<'_, Result<MediaOffsetResponse, Status>> {
        async move {
            let r = match self.media().await {
                Ok(mut c) => c.offset(req).await.map(|r| r.into_inner()),
                Err(s) => Err(s),
            };
            self.after(r)
        }
        .boxed()
    }
    fn media_upload(
        &self,
        chunks: BoxStream<'static, MediaChunk>,
    ) -> BoxFuture<'_, Result<MediaUploadResponse, Status>> {
        // Through a channel: tonic's client future is not Send with a boxed
        // stream inside (a known higher-ranked lifetime limitation).
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut chunks = chunks;
            while let Some(c) = chunks.next().await {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        });
        async move {
            let r = match self.media().await {
                Ok(mut c) => c
                    .upload(ReceiverStream::new(rx))
                    .await
                    .map(|r| r.into_inner()),
                Err(s) => Err(s),
            };
            self.after(r)
        }
        .boxed()
    }
    fn media_attach(&self, req: AttachMediaRequest) -> BoxFuture<'_, Result<(), Status>> {
        async move {
            let r = match self.media().await {
                Ok(mut c) => c.attach(req).await.map(|_| ()),
                Err(s) => Err(s),
            };
            self.after(r)
        }
        .boxed()
    }
}
