//! The upload logic, whatever carries the chunks: resume at the held offset,
//! append and fsync, check size, hash and content, then store or quarantine.
//! Also `Attach`. The gRPC adapter is [`super::grpc`].

use std::{fmt::Display, path::Path};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::{path::Path as ObjectPath, ObjectStoreExt, PutPayload, WriteMultipart};
use sightline_proto::v1::{MediaChunk, MediaRef, MediaUploadResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{check, held, object_key, valid_sha, Kind, MediaError, MediaStore};
use crate::{
    metrics::Metrics,
    store::media::{MediaQuarantined, StoredMedia},
};

/// Objects up to this size are put in one request; larger ones in parts.
const SINGLE_PUT: u64 = 8 * 1024 * 1024;

/// What every chunk of one upload repeats, checked once.
#[derive(Debug, Clone)]
struct Header {
    sha256: String,
    kind: Kind,
    total_size: u64,
    agent_id: String,
}

impl Header {
    fn check(c: &MediaChunk, max_object_bytes: u64) -> Result<Self, MediaError> {
        if !valid_sha(&c.sha256) {
            return Err(MediaError::invalid(
                "sha256",
                format!("{:?} is not 64 lowercase hex digits", c.sha256),
            ));
        }
        let kind = Kind::parse(&c.kind).ok_or_else(|| {
            MediaError::invalid(
                "kind",
                format!(
                    "{:?} is not one of \"snapshot\", \"thumbnail\", \"clip\"",
                    c.kind
                ),
            )
        })?;
        if c.content_type != kind.content_type() {
            return Err(MediaError::invalid(
                "content_type",
                format!(
                    "{:?}: a {} must be {}",
                    c.content_type,
                    kind.as_str(),
                    kind.content_type()
                ),
            ));
        }
        if c.total_size == 0 || c.total_size > max_object_bytes {
            return Err(MediaError::invalid(
                "total_size",
                format!(
                    "{} is not within 1..={max_object_bytes} (media.max_object_bytes)",
                    c.total_size
                ),
            ));
        }
        Ok(Self {
            sha256: c.sha256.clone(),
            kind,
            total_size: c.total_size,
            agent_id: c.agent_id.clone(),
        })
    }

    /// Every chunk MUST repeat the first one's sha256, kind, type and size.
    fn same(&self, c: &MediaChunk) -> Result<(), MediaError> {
        let differs = |field| {
            Err(MediaError::invalid(
                field,
                "differs from the upload's first chunk",
            ))
        };
        if c.sha256 != self.sha256 {
            return differs("sha256");
        }
        if c.kind != self.kind.as_str() {
            return differs("kind");
        }
        if c.content_type != self.kind.content_type() {
            return differs("content_type");
        }
        if c.total_size != self.total_size {
            return differs("total_size");
        }
        Ok(())
    }

    fn media_ref(&self) -> MediaRef {
        MediaRef {
            kind: self.kind.as_str().into(),
            sha256: self.sha256.clone(),
            content_type: self.kind.content_type().into(),
            size: self.total_size,
        }
    }
}

/// Marks a sha busy while an upload of it runs.
struct BusyGuard<'a> {
    media: &'a MediaStore,
    sha: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.media
            .busy
            .lock()
            .expect("not poisoned")
            .remove(&self.sha);
    }
}

impl MediaStore {
    async fn claim(&self, sha: &str) -> Result<BusyGuard<'_>, MediaError> {
        let deadline = tokio::time::Instant::now() + super::BUSY_WAIT;
        loop {
            if self
                .busy
                .lock()
                .expect("not poisoned")
                .insert(sha.to_string())
            {
                return Ok(BusyGuard {
                    media: self,
                    sha: sha.to_string(),
                });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(MediaError::Busy(sha.to_string()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Takes one upload's chunks (see the module promises) and answers once
    /// the object is stored, or why not.
    pub async fn upload<S, E>(&self, mut chunks: S) -> Result<MediaUploadResponse, MediaError>
    where
        S: Stream<Item = Result<MediaChunk, E>> + Unpin,
        E: Display,
    {
        let first = match chunks.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(MediaError::Interrupted {
                    reason: format!("the stream broke before its first chunk: {e}"),
                    held: 0,
                })
            }
            None => return Err(MediaError::invalid("chunks", "the upload sent no chunk")),
        };
        let head = Header::check(&first, self.max_object_bytes)?;
        if let Some(stored) = self.lookup(&head.sha256).await? {
            drain(first.last, chunks).await;
            return Ok(MediaUploadResponse {
                sha256: head.sha256,
                size: stored.size,
                newly_stored: false,
            });
        }
        let _busy = self.claim(&head.sha256).await?;
        // Another upload may have finished it while this one waited.
        if let Some(stored) = self.lookup(&head.sha256).await? {
            drain(first.last, chunks).await;
            return Ok(MediaUploadResponse {
                sha256: head.sha256,
                size: stored.size,
                newly_stored: false,
            });
        }
        let path = self.staging_file(&head.sha256);
        let mut pos = held(&path).await?;
        if pos > head.total_size {
            // Left by an upload that claimed another size: it can never
            // complete, so start over.
            tokio::fs::remove_file(&path).await?;
            pos = 0;
        }
        if first.offset != pos {
            return Err(MediaError::Resume {
                reason: format!(
                    "field `offset`: {} but the core holds {pos} bytes of {}",
                    first.offset, head.sha256
                ),
                held: pos,
            });
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let appended = append(&head, &mut file, first, &mut chunks, &mut pos).await;
        // Whatever happened, what was written is on disk before the next
        // upload of this sha reads the staging file's length.
        file.flush().await?;
        if self.sync || appended.is_ok() {
            file.sync_all().await?;
        }
        drop(file);
        appended?;
        if pos != head.total_size {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(MediaError::invalid(
                "total_size",
                format!(
                    "{} but the last chunk ended at {pos}; the partial upload was dropped",
                    head.total_size
                ),
            ));
        }
        self.complete(&head, &path).await
    }

    /// The last chunk arrived: hash, check, store (or quarantine).
    async fn complete(
        &self,
        head: &Header,
        path: &Path,
    ) -> Result<MediaUploadResponse, MediaError> {
        let p = path.to_path_buf();
        let ct = head.kind.content_type();
        let (digest, content) = tokio::task::spawn_blocking(move || {
            let digest = check::sha256_file(&p)?;
            let content = check::check_file(ct, &p)?;
            Ok::<_, std::io::Error>((digest, content))
        })
        .await??;
        if digest != head.sha256 {
            tokio::fs::remove_file(path).await?;
            return Err(MediaError::invalid(
                "sha256",
                format!(
                    "the {} bytes received hash to {digest}; the upload was dropped, send it again from 0",
                    head.total_size
                ),
            ));
        }
        if let Err(reason) = content {
            self.quarantine(head, &reason).await?;
            tokio::fs::remove_file(path).await?;
            return Err(MediaError::Content(reason));
        }
        let key = object_key(head.kind, &head.sha256);
        self.put_object(&key, path, head.total_size).await?;
        let row = StoredMedia {
            media: head.media_ref(),
            stored_ms: sightline_proto::now_ms(),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_media(&row)).await??;
        tokio::fs::remove_file(path).await?;
        let kind = Metrics::kind(head.kind.as_str());
        self.metrics.media_stored.get_or_create(&kind).inc();
        self.metrics.media_stored_bytes.inc_by(head.total_size);
        tracing::info!(sha256 = %head.sha256, kind = head.kind.as_str(), size = head.total_size, agent = %head.agent_id, "media stored");
        Ok(MediaUploadResponse {
            sha256: head.sha256.clone(),
            size: head.total_size,
            newly_stored: true,
        })
    }

    async fn quarantine(&self, head: &Header, reason: &str) -> Result<(), MediaError> {
        tracing::warn!(sha256 = %head.sha256, kind = head.kind.as_str(), agent = %head.agent_id, reason, "media quarantined");
        self.metrics
            .media_rejected
            .get_or_create(&Metrics::kind(head.kind.as_str()))
            .inc();
        let q = MediaQuarantined {
            sha256: head.sha256.clone(),
            agent_id: head.agent_id.clone(),
            kind: head.kind.as_str().into(),
            content_type: head.kind.content_type().into(),
            size: head.total_size,
            reason: reason.to_string(),
            quarantined_ms: sightline_proto::now_ms(),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.quarantine_media(&q)).await??;
        Ok(())
    }

    /// Copies the staged file into the object store, then (local directory,
    /// `storage.sync`) fsyncs it there.
    async fn put_object(&self, key: &ObjectPath, path: &Path, size: u64) -> Result<(), MediaError> {
        if size <= SINGLE_PUT {
            let bytes = Bytes::from(tokio::fs::read(path).await?);
            self.objects.put(key, PutPayload::from(bytes)).await?;
        } else {
            let upload = self.objects.put_multipart(key).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, SINGLE_PUT as usize);
            let mut f = tokio::fs::File::open(path).await?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4).await?;
                w.write(&buf[..n]);
            }
            w.finish().await?;
        }
        if let (Some(root), true) = (&self.local_root, self.sync) {
            let file = root.join(key.as_ref());
            tokio::task::spawn_blocking(move || {
                std::fs::File::open(&file)?.sync_all()?;
                if let Some(dir) = file.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await??;
        }
        Ok(())
    }

    /// Links events to an object (stored or not yet). When the object is
    /// stored, its row's type and size win over the request's. With
    /// `publisher` (the agent a certificate identified), every stored event
    /// among `det_oids` must be that agent's.
    pub async fn attach(
        &self,
        publisher: Option<&str>,
        det_oids: Vec<i64>,
        media: Option<MediaRef>,
    ) -> Result<(), MediaError> {
        let Some(mut media) = media else {
            return Err(MediaError::invalid("media", "is missing"));
        };
        if det_oids.is_empty() || det_oids.len() > 10_000 {
            return Err(MediaError::invalid(
                "detection_oids",
                format!("{} given, must be 1..=10000", det_oids.len()),
            ));
        }
        if !valid_sha(&media.sha256) {
            return Err(MediaError::invalid(
                "media.sha256",
                format!("{:?} is not 64 lowercase hex digits", media.sha256),
            ));
        }
        let Some(kind) = Kind::parse(&media.kind) else {
            return Err(MediaError::invalid(
                "media.kind",
                format!(
                    "{:?} is not one of \"snapshot\", \"thumbnail\", \"clip\"",
                    media.kind
                ),
            ));
        };
        if media.content_type != kind.content_type() {
            return Err(MediaError::invalid(
                "media.content_type",
                format!(
                    "{:?}: a {} must be {}",
                    media.content_type,
                    kind.as_str(),
                    kind.content_type()
                ),
            ));
        }
        if let Some(stored) = self.lookup(&media.sha256).await? {
            media.size = stored.size;
        }
        let (store, publisher) = (self.store.clone(), publisher.map(str::to_string));
        let now = sightline_proto::now_ms();
        if let Some(cluster) = self.cluster() {
            // The events' partitions' owners check the publisher and keep
            // the link (PROTOCOL.md rule 31).
            return cluster.attach(det_oids, media, now, publisher).await;
        }
        tokio::task::spawn_blocking(move || -> Result<(), MediaError> {
            if let Some(agent) = publisher.as_deref() {
                if let Some((oid, other)) = store.published_by_other(&det_oids, agent)? {
                    // Invalid, not PERMISSION_DENIED: that means a revoked
                    // agent, which keeps its footage to retry later.
                    return Err(MediaError::invalid(
                        "detection_oids",
                        format!(
                            "detection {oid} was published by agent {other:?}, not {agent:?}: its footage is not this agent's to attach"
                        ),
                    ));
                }
            }
            // An event not stored yet may still come: the footage is kept
            // as this agent's and shown only with an event it publishes.
            Ok(store.attach_media(&det_oids, &media, now, publisher.as_deref())?)
        })
        .await??;
        Ok(())
    }
}

/// Appends chunks to the staging file from `*pos` on, until the last one
/// (`Ok`) or a refusal or the stream's end (`Err`, `*pos` = bytes held).
async fn append<S, E>(
    head: &Header,
    file: &mut tokio::fs::File,
    first: MediaChunk,
    chunks: &mut S,
    pos: &mut u64,
) -> Result<(), MediaError>
where
    S: Stream<Item = Result<MediaChunk, E>> + Unpin,
    E: Display,
{
    let mut chunk = first;
    loop {
        head.same(&chunk)?;
        if chunk.offset != *pos {
            return Err(MediaError::Resume {
                reason: format!(
                    "field `offset`: {} is not where the last chunk ended",
                    chunk.offset
                ),
                held: *pos,
            });
        }
        let len = chunk.data.len() as u64;
        if *pos + len > head.total_size {
            return Err(MediaError::invalid(
                "data",
                format!(
                    "the chunk at {pos} of {len} bytes runs past total_size {}",
                    head.total_size
                ),
            ));
        }
        file.write_all(&chunk.data).await?;
        *pos += len;
        if chunk.last {
            return Ok(());
        }
        chunk = match chunks.next().await {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(MediaError::Interrupted {
                    reason: format!("the stream broke before the last chunk: {e}"),
                    held: *pos,
                })
            }
            None => {
                return Err(MediaError::Interrupted {
                    reason: "the stream ended before the last chunk".into(),
                    held: *pos,
                })
            }
        };
    }
}

/// Reads and drops the rest of an upload (of an object already stored).
async fn drain<S, E>(last_seen: bool, mut chunks: S)
where
    S: Stream<Item = Result<MediaChunk, E>> + Unpin,
{
    if last_seen {
        return;
    }
    while let Some(Ok(c)) = chunks.next().await {
        if c.last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::{
        config::{MediaConfig, RetentionConfig},
        store::Store,
    };

    fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(payload);
        v
    }

    /// A structurally valid fast-start MP4 with `mdat` bytes of payload.
    fn clip(mdat: usize) -> Vec<u8> {
        let mut moov = bx(b"mvhd", &[0; 100]);
        moov.extend(bx(b"trak", &[0; 20]));
        let mut f = bx(b"ftyp", b"isom\0\0\x02\0");
        f.extend(bx(b"moov", &moov));
        f.extend(bx(
            b"mdat",
            &(0..mdat).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        ));
        f
    }

    fn chunks(bytes: &[u8], size: usize) -> Vec<Result<MediaChunk, String>> {
        let sha: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        bytes
            .chunks(size)
            .enumerate()
            .map(|(i, d)| {
                Ok(MediaChunk {
                    sha256: sha.clone(),
                    offset: (i * size) as u64,
                    data: Bytes::copy_from_slice(d),
                    total_size: bytes.len() as u64,
                    kind: "clip".into(),
                    content_type: "video/mp4".into(),
                    last: (i + 1) * size >= bytes.len(),
                    agent_id: "a".into(),
                })
            })
            .collect()
    }

    fn open(dir: &Path) -> (MediaStore, MediaConfig) {
        let store = Arc::new(Store::open(&dir.join("core"), false, 1 << 20).unwrap());
        let cfg = MediaConfig::default();
        let m = MediaStore::open(
            &cfg,
            &dir.join("core"),
            true,
            store,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        (m, cfg)
    }

    #[tokio::test]
    async fn a_large_clip_goes_up_in_parts_and_expires_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (media, mut cfg) = open(dir.path());
        let bytes = clip(SINGLE_PUT as usize + 3 * 1024 * 1024 + 17);
        let up = chunks(&bytes, 1 << 20);
        let sha = up[0].as_ref().unwrap().sha256.clone();
        let r = media.upload(futures::stream::iter(up)).await.unwrap();
        assert!(r.newly_stored);
        let file = dir
            .path()
            .join("core-media")
            .join(object_key(Kind::Clip, &sha).as_ref());
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
        let parts = std::fs::read_dir(file.parent().unwrap()).unwrap().count();
        assert_eq!(parts, 1, "no part files are left beside the object");
        assert_eq!(
            media.offset(&sha).await.unwrap(),
            (bytes.len() as u64, true)
        );

        // Retention: nothing is old enough yet; then everything is.
        let retention = RetentionConfig::default();
        assert_eq!(media.sweep(&cfg, &retention).await.unwrap(), 0);
        cfg.retention = Duration::from_millis(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(media.sweep(&cfg, &retention).await.unwrap(), 1);
        assert!(!file.exists());
        assert_eq!(media.offset(&sha).await.unwrap(), (0, false));
    }

    #[tokio::test]
    async fn every_byte_held_but_no_last_chunk_completes_with_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let (media, _) = open(dir.path());
        let bytes = clip(5000);
        let mut up = chunks(&bytes, 1000);
        let mut end = up.pop().unwrap().unwrap();
        let head = end.clone();
        end.last = false;
        up.push(Ok(end));
        let err = media.upload(futures::stream::iter(up)).await.unwrap_err();
        assert!(
            err.to_string()
                .ends_with(&format!("resume from {}", bytes.len())),
            "{err}"
        );
        let done = MediaChunk {
            offset: bytes.len() as u64,
            data: Bytes::new(),
            last: true,
            ..head
        };
        let r = media
            .upload(futures::stream::iter([Ok::<_, String>(done)]))
            .await
            .unwrap();
        assert!(r.newly_stored);
    }
}
