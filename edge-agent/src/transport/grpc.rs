//! The gRPC (HTTP/2, tonic) adapter: one bidirectional `Ingest.Session` call
//! per link.

use std::time::Duration;

use futures::{future::BoxFuture, FutureExt, StreamExt};
use sightline_proto::v1::ingest_client::IngestClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::{Link, LinkError, Transport};

/// gRPC transport to `url` (`http://host:port`).
pub struct GrpcTransport {
    url: String,
    connect_timeout: Duration,
}

impl GrpcTransport {
    pub fn new(url: impl Into<String>, connect_timeout: Duration) -> Self {
        Self {
            url: url.into(),
            connect_timeout,
        }
    }

    async fn open(&self) -> Result<Link, LinkError> {
        let connect_err = |reason: String| LinkError::Connect {
            url: self.url.clone(),
            reason,
        };
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Notice a dead link (a cut cable does not close a TCP connection).
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(4))
            .keep_alive_while_idle(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_err(format!("{e}: {}", source_chain(&e))))?;
        let mut client = IngestClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(64);
        let response = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| status_error(&s))?;
        let rx = response
            .into_inner()
            .map(|r| r.map_err(|s| status_error(&s)))
            .boxed();
        Ok(Link {
            tx,
            rx,
            peer: self.url.clone(),
        })
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn status_error(s: &tonic::Status) -> LinkError {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition => {
            LinkError::Refused(format!("{:?}: {}", s.code(), s.message()))
        }
        _ => LinkError::Broken(format!("{:?}: {}", s.code(), s.message())),
    }
}

impl Transport for GrpcTransport {
    fn connect(&self) -> BoxFuture<'_, Result<Link, LinkError>> {
        self.open().boxed()
    }
}
