//! The media uploader: sends spooled footage to the core, apart from the
//! event stream — content-addressed, in chunks, resuming from what the core
//! already holds, under a bandwidth cap — then attaches it to its events and
//! deletes it from the spool.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use sightline_proto::v1::{AttachMediaRequest, MediaChunk, MediaOffsetRequest, MediaRef};
use tokio_util::sync::CancellationToken;

use super::{sender::Backoff, Transport};
use crate::capture::spool::{Spool, SpoolEntry};

/// Bytes per chunk.
pub const CHUNK: usize = 256 * 1024;

pub struct Uploader {
    pub spool: Arc<Spool>,
    /// The same transport (and connection) as the event stream.
    pub transport: Arc<dyn Transport>,
    pub agent_id: String,
    /// Bytes per second; 0 for no cap.
    pub bytes_per_s: u64,
}

impl Uploader {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let spool = self.spool.clone();
            let entries = tokio::task::spawn_blocking(move || spool.list())
                .await
                .unwrap_or_default();
            if entries.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.spool.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let mut failed = false;
            for e in entries {
                if shutdown.is_cancelled() {
                    return;
                }
                tracing::debug!(sha256 = %e.sha256, kind = %e.kind, size = e.size, dets = e.det_oids.len(), "media: uploading");
                match self.upload(&e).await {
                    Ok(()) => {
                        tracing::debug!(sha256 = %e.sha256, kind = %e.kind, "media: uploaded and attached");
                        backoff.reset();
                        self.spool.remove(&e.sha256, &e.kind);
                    }
                    Err(status) if status.code() == tonic::Code::InvalidArgument => {
                        // The core refused the content and keeps it in its quarantine.
                        tracing::warn!(sha256 = %e.sha256, reason = %status.message(), "media refused by the core");
                        self.spool.remove(&e.sha256, &e.kind);
                    }
                    Err(status) => {
                        tracing::debug!(sha256 = %e.sha256, status = %status, "media upload interrupted; will resume");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }

    async fn upload(&self, e: &SpoolEntry) -> Result<(), tonic::Status> {
        let t = &self.transport;
        let off = t
            .media_offset(MediaOffsetRequest {
                sha256: e.sha256.clone(),
            })
            .await?;
        if !off.complete {
            let path = self.spool.data_path(&e.sha256);
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|err| tonic::Status::internal(format!("spool: {err}")))?;
            let start = (off.received as usize).min(bytes.len());
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let (entry, agent, cap) = (e.clone(), self.agent_id.clone(), self.bytes_per_s);
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut offset = start;
                loop {
                    let end = (offset + CHUNK).min(bytes.len());
                    let chunk = MediaChunk {
                        sha256: entry.sha256.clone(),
                        offset: offset as u64,
                        data: bytes::Bytes::copy_from_slice(&bytes[offset..end]),
                        total_size: bytes.len() as u64,
                        kind: entry.kind.clone(),
                        content_type: entry.content_type.clone(),
                        last: end == bytes.len(),
                        agent_id: agent.clone(),
                    };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                    offset = end;
                    if offset >= bytes.len() {
                        return;
                    }
                    if cap > 0 {
                        let due =
                            started + Duration::from_secs_f64((offset - start) as f64 / cap as f64);
                        tokio::time::sleep_until(due).await;
                    }
                }
            });
            t.media_upload(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
                .await?;
        }
        t.media_attach(AttachMediaRequest {
            detection_oids: e.det_oids.clone(),
            media: Some(MediaRef {
                kind: e.kind.clone(),
                sha256: e.sha256.clone(),
                content_type: e.content_type.clone(),
                size: e.size,
            }),
        })
        .await?;
        Ok(())
    }
}
