//! The gRPC adapter of the media store (`sightline.v1.Media`).

use std::sync::Arc;

use sightline_proto::v1::{
    media_server::Media, AttachMediaRequest, AttachMediaResponse, MediaChunk, MediaOffsetRequest,
    MediaOffsetResponse, MediaUploadResponse,
};
use tonic::{Request, Response, Status, Streaming};

use super::MediaStore;

pub struct MediaService {
    pub media: Arc<MediaStore>,
    pub registry: Arc<crate::edge::registry::Registry>,
}

impl MediaService {
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        crate::edge::admit_media(&self.registry, &crate::edge::tcp::peer_of(req))
    }
}

#[tonic::async_trait]
impl Media for MediaService {
    async fn offset(
        &self,
        req: Request<MediaOffsetRequest>,
    ) -> Result<Response<MediaOffsetResponse>, Status> {
        self.admit(&req)?;
        let (received, complete) = self.media.offset(&req.into_inner().sha256).await?;
        Ok(Response::new(MediaOffsetResponse { received, complete }))
    }

    async fn upload(
        &self,
        req: Request<Streaming<MediaChunk>>,
    ) -> Result<Response<MediaUploadResponse>, Status> {
        self.admit(&req)?;
        Ok(Response::new(self.media.upload(req.into_inner()).await?))
    }

    async fn attach(
        &self,
        req: Request<AttachMediaRequest>,
    ) -> Result<Response<AttachMediaResponse>, Status> {
        self.admit(&req)?;
        let peer = crate::edge::tcp::peer_of(&req);
        let r = req.into_inner();
        self.media
            .attach(peer.agent_id(), r.detection_oids, r.media)
            .await?;
        Ok(Response::new(AttachMediaResponse {}))
    }
}
