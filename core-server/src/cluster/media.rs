//! Footage in cluster mode (PROTOCOL.md rule 31): an attach travels to the
//! owners of its events' partitions through `SIGHTLINE_IN` (so it is kept
//! in the partition's store, checkpointed and moved with it), and the
//! footage checks of `/media/{sha}` read the event from its owner.

use std::sync::Arc;

use async_nats::{jetstream::message::PublishMessage, HeaderMap};
use prost::Message;
use sightline_proto::{v1::MediaRef, ApiError};

use super::{
    in_subject,
    nats::Nats,
    query::ClusterQuery,
    share::{AttachMsg, ATTACH_KIND, KIND_HEADER},
};
use crate::{
    access::Scope,
    media::{MediaCluster, MediaError},
    store::keys,
};

pub struct ClusterMedia {
    pub nats: Nats,
    pub query: Arc<ClusterQuery>,
}

#[tonic::async_trait]
impl MediaCluster for ClusterMedia {
    async fn attach(
        &self,
        det_oids: Vec<i64>,
        media: MediaRef,
        at_ms: i64,
        by: Option<String>,
    ) -> Result<(), MediaError> {
        publish_attach(&self.nats, det_oids, media, at_ms, by).await
    }

    async fn event(
        &self,
        scope: &Scope,
        det_oid: i64,
    ) -> Result<Option<sightline_proto::v1::JoinedEvent>, ApiError> {
        self.query.get_event(scope, det_oid).await.map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                ApiError::unavailable(s.message().to_string())
            } else {
                ApiError::internal(s.message().to_string())
            }
        })
    }
}

/// Publishes one [`AttachMsg`] per partition among `det_oids` to
/// `sightline.in.<p>` and waits for the stream's acks.
pub async fn publish_attach(
    nats: &Nats,
    det_oids: Vec<i64>,
    media: MediaRef,
    at_ms: i64,
    by: Option<String>,
) -> Result<(), MediaError> {
    let n = nats.partitions as usize;
    let mut by_partition: std::collections::BTreeMap<u16, Vec<i64>> = Default::default();
    for oid in det_oids {
        by_partition
            .entry(keys::partition_of(oid, n) as u16)
            .or_default()
            .push(oid);
    }
    let mut acks = Vec::with_capacity(by_partition.len());
    for (p, det_oids) in by_partition {
        let msg = AttachMsg {
            det_oids,
            media: Some(media.clone()),
            at_ms,
            by: by.clone(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(KIND_HEADER, ATTACH_KIND);
        let publish = PublishMessage::build()
            .payload(msg.encode_to_vec().into())
            .headers(headers);
        acks.push(
            nats.js
                .send_publish(in_subject(p), publish)
                .await
                .map_err(|e| MediaError::Cluster(e.to_string()))?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| MediaError::Cluster(e.to_string()))?;
    }
    Ok(())
}
