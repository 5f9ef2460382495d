//! The local intake: a gRPC endpoint on the camera host where the detector
//! publishes. A call returns only once its accepted detections are durable in
//! the buffer; invalid ones are answered one by one with the field and the
//! reason; a full buffer, or a full buffer disk, fails the call with a
//! retryable RESOURCE_EXHAUSTED that says which.

use sightline_proto::v1::{
    intake_server::Intake, publish_result, Accepted, Dropped, Invalid, PublishRequest,
    PublishResponse, PublishResult,
};
use sightline_proto::ApiError;
use tonic::{Request, Response, Status};

use super::{Kept, Publisher};
use crate::buffer::BufferError;

/// Most detections in one Publish call.
pub const MAX_DETECTIONS_PER_CALL: usize = 10_000;

pub struct IntakeService {
    pub publisher: Publisher,
}

#[tonic::async_trait]
impl Intake for IntakeService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let detections = request.into_inner().detections;
        if detections.len() > MAX_DETECTIONS_PER_CALL {
            return Err(ApiError::field(
                "detections",
                format!(
                    "{} in one call, more than the limit of {MAX_DETECTIONS_PER_CALL}",
                    detections.len()
                ),
            )
            .into());
        }
        let started = std::time::Instant::now();
        let n = detections.len();
        let results = self
            .publisher
            .publish(detections, None)
            .await
            .map_err(|e| match e {
                BufferError::Full { .. } | BufferError::DiskFull { .. } => {
                    Status::from(ApiError::exhausted(e.to_string()))
                }
                other => ApiError::unavailable(format!("agent buffer: {other}")).into(),
            })?;
        tracing::debug!(
            events = n,
            micros = started.elapsed().as_micros() as u64,
            "intake publish"
        );
        let results = results
            .into_iter()
            .map(|r| PublishResult {
                result: Some(match r {
                    Ok(Kept::Accepted { detection_oid, seq }) => {
                        publish_result::Result::Accepted(Accepted { detection_oid, seq })
                    }
                    Ok(Kept::Dropped(reason)) => {
                        publish_result::Result::Dropped(Dropped { reason })
                    }
                    Err(e) => publish_result::Result::Invalid(Invalid {
                        field: e.field.to_string(),
                        reason: e.reason,
                    }),
                }),
            })
            .collect();
        Ok(Response::new(PublishResponse { results }))
    }
}
