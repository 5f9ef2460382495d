//! The gRPC adapter of the ingest session (`sightline.v1.Ingest/Session`).

use std::sync::Arc;

use sightline_proto::v1::{ingest_server::Ingest, AgentMessage, CoreMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::IngestCore;

pub struct IngestService {
    pub core: Arc<IngestCore>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type SessionStream = ReceiverStream<Result<CoreMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.core.shutdown.is_cancelled() {
            return Err(sightline_proto::ApiError::unavailable("the core is shutting down").into());
        }
        let peer = crate::edge::tcp::peer_of(&request);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.core.clone().run_session(peer, inbound, None, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
