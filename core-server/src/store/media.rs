//! The media rows of the store: what is stored (`media`, `media_age`), which
//! events refer to what (`media_refs`) and what was refused
//! (`media_quarantine`). Layouts in the table of [`super`]; promises in
//! [`crate::media`].

use std::sync::atomic::Ordering;

use prost::Message;
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use sightline_proto::v1::{JoinedEvent, MediaRef};

use super::{
    cf, keys, Store, StoreError, CF_MEDIA, CF_MEDIA_AGE, CF_MEDIA_QUARANTINE, CF_MEDIA_REFS,
};

/// One stored object, as the `media` column family holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMedia {
    /// Kind, sha256, content type and size, as the first upload declared them
    /// (the size and sha checked).
    pub media: MediaRef,
    /// When the object was stored (epoch ms); retention counts from here.
    pub stored_ms: i64,
}

/// An upload refused for its content: the record kept in `media_quarantine`.
/// The bytes themselves are not kept (the agent still has them, and a
/// camera producing garbage must not be able to fill the core's disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaQuarantined {
    pub sha256: String,
    pub agent_id: String,
    pub kind: String,
    pub content_type: String,
    pub size: u64,
    /// Why the content was refused.
    pub reason: String,
    pub quarantined_ms: i64,
}

/// The `attached_ms` prefix of a `media_refs` value.
pub(super) fn attached_ms(value: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&value[..8]);
    i64::from_be_bytes(a)
}

fn ts_sha_key(ts: i64, sha: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + sha.len());
    k.extend_from_slice(&keys::i64_key(ts));
    k.extend_from_slice(sha.as_bytes());
    k
}

fn ref_key(det_oid: i64, kind: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + kind.len());
    k.extend_from_slice(&keys::det_key(det_oid));
    k.extend_from_slice(kind.as_bytes());
    k
}

/// Who attached a `media_refs` row: protobuf field 15 after the `MediaRef`
/// (a `MediaRef` decode skips it; rows written before it have none).
#[derive(Clone, PartialEq, prost::Message)]
struct AttachedBy {
    #[prost(string, tag = "15")]
    agent_id: String,
}

/// `ms (i64 BE) ‖ MediaRef`: the value of `media` and `media_refs`.
fn encode_timed_ref(ms: i64, r: &MediaRef) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + r.encoded_len());
    v.extend_from_slice(&ms.to_be_bytes());
    r.encode(&mut v).expect("a Vec grows");
    v
}

fn decode_timed_ref(v: &[u8], what: &str) -> Result<(i64, MediaRef), StoreError> {
    if v.len() < 8 {
        return Err(StoreError::Corrupt(format!("short {what} value")));
    }
    let r = MediaRef::decode(&v[8..])
        .map_err(|e| StoreError::Corrupt(format!("{what} value does not decode: {e}")))?;
    Ok((attached_ms(v), r))
}

/// The refs under one det_oid, read with `it`: those attached by
/// `publisher` (the agent that published the event) or by nobody known
/// (rows from before attachers were kept, plaintext demos). Footage another
/// agent attached before the event existed is never shown with it.
pub(super) fn refs_at(
    it: &mut rocksdb::DBRawIterator<'_>,
    det_oid: i64,
    publisher: &str,
) -> Result<Vec<MediaRef>, StoreError> {
    let prefix = keys::det_key(det_oid);
    let mut out = Vec::new();
    it.seek(prefix);
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if !k.starts_with(&prefix) {
            break;
        }
        let by = AttachedBy::decode(&v[8.min(v.len())..]).unwrap_or_default();
        if by.agent_id.is_empty() || by.agent_id == publisher {
            out.push(decode_timed_ref(v, "media_refs")?.1);
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}

impl Store {
    /// The stored object with this sha256, if any.
    pub fn get_media(&self, sha: &str) -> Result<Option<StoredMedia>, StoreError> {
        let db = self.db()?;
        let Some(v) = db.get_cf(cf(&db, CF_MEDIA), sha.as_bytes())? else {
            return Ok(None);
        };
        let (stored_ms, media) = decode_timed_ref(&v, "media")?;
        Ok(Some(StoredMedia { media, stored_ms }))
    }

    /// Records a stored object (its `media` row and retention entry, in one
    /// write). Call only once the object store holds the bytes.
    pub fn put_media(&self, m: &StoredMedia) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut b = WriteBatch::default();
        b.put_cf(
            cf(&db, CF_MEDIA),
            m.media.sha256.as_bytes(),
            encode_timed_ref(m.stored_ms, &m.media),
        );
        b.put_cf(
            cf(&db, CF_MEDIA_AGE),
            ts_sha_key(m.stored_ms, &m.media.sha256),
            [],
        );
        self.write(b)
    }

    /// Up to `limit` objects stored before `before_ms`, oldest first.
    pub fn expired_media(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredMedia>, StoreError> {
        let db = self.db()?;
        let end = keys::i64_key(before_ms);
        let mut out = Vec::new();
        for item in db.iterator_cf(cf(&db, CF_MEDIA_AGE), IteratorMode::Start) {
            let (k, _) = item?;
            if k.len() < 8 || k[..8] >= end[..] || out.len() >= limit {
                break;
            }
            let stored_ms = keys::i64_from_key(&k);
            let sha = std::str::from_utf8(&k[8..])
                .map_err(|_| StoreError::Corrupt("media_age key is not ASCII".into()))?;
            match self.get_media(sha)? {
                Some(m) => out.push(m),
                // The row went before its age entry: report it so it is removed.
                None => out.push(StoredMedia {
                    media: MediaRef {
                        sha256: sha.to_string(),
                        ..Default::default()
                    },
                    stored_ms,
                }),
            }
        }
        Ok(out)
    }

    /// Removes an object's `media` row and retention entry (after the object
    /// itself was deleted).
    pub fn forget_media(&self, sha: &str, stored_ms: i64) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut b = WriteBatch::default();
        b.delete_cf(cf(&db, CF_MEDIA), sha.as_bytes());
        b.delete_cf(cf(&db, CF_MEDIA_AGE), ts_sha_key(stored_ms, sha));
        self.write(b)
    }

    /// Links every event in `det_oids` to `media` (one per kind: a new
    /// attach of the same kind replaces the old one), as attached by `by`
    /// (the agent a certificate identified; `None`: unknown).
    pub fn attach_media(
        &self,
        det_oids: &[i64],
        media: &MediaRef,
        at_ms: i64,
        by: Option<&str>,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut b = WriteBatch::default();
        let mut v = encode_timed_ref(at_ms, media);
        if let Some(agent_id) = by {
            AttachedBy {
                agent_id: agent_id.to_string(),
            }
            .encode(&mut v)
            .expect("a Vec grows");
        }
        for &oid in det_oids {
            b.put_cf(cf(&db, CF_MEDIA_REFS), ref_key(oid, &media.kind), &v);
        }
        self.write(b)
    }

    /// The first stored event among `det_oids` that another agent than
    /// `agent` published: its det_oid and publisher (footage `agent` may
    /// not attach to it).
    pub fn published_by_other(
        &self,
        det_oids: &[i64],
        agent: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        for &oid in det_oids {
            if let Some(e) = self.get_event(oid)? {
                if e.agent_id != agent {
                    return Ok(Some((oid, e.agent_id)));
                }
            }
        }
        Ok(None)
    }

    /// The media attached to one event published by `publisher`, by kind.
    pub fn media_of(&self, det_oid: i64, publisher: &str) -> Result<Vec<MediaRef>, StoreError> {
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, CF_MEDIA_REFS));
        refs_at(&mut it, det_oid, publisher)
    }

    /// Sets `JoinedEvent.media` of each event from `media_refs` (one
    /// iterator, one seek per event).
    pub fn fill_media(&self, events: &mut [JoinedEvent]) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, CF_MEDIA_REFS));
        for e in events {
            if let Some(oid) = e.detection.as_ref().and_then(|d| d.detection_oid) {
                e.media = refs_at(&mut it, oid, &e.agent_id)?;
            }
        }
        Ok(())
    }

    /// Records an upload refused for its content.
    pub fn quarantine_media(&self, q: &MediaQuarantined) -> Result<(), StoreError> {
        let db = self.db()?;
        let v = serde_json::to_vec(q).expect("serialisable");
        let mut b = WriteBatch::default();
        b.put_cf(
            cf(&db, CF_MEDIA_QUARANTINE),
            ts_sha_key(q.quarantined_ms, &q.sha256),
            v,
        );
        self.write(b)
    }

    /// The media quarantine, newest first, at most `limit` entries.
    pub fn list_media_quarantine(&self, limit: usize) -> Result<Vec<MediaQuarantined>, StoreError> {
        let db = self.db()?;
        let mut out = Vec::new();
        for item in db
            .iterator_cf(cf(&db, CF_MEDIA_QUARANTINE), IteratorMode::End)
            .take(limit)
        {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|e| {
                StoreError::Corrupt(format!("media_quarantine value does not decode: {e}"))
            })?);
        }
        Ok(out)
    }

    /// Drops media quarantine entries before `quarantine_before`; refs
    /// attached before `refs_before` go at their next compaction.
    pub fn apply_media_retention(
        &self,
        quarantine_before: i64,
        refs_before: i64,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(
            cf(&db, CF_MEDIA_QUARANTINE),
            keys::i64_key(i64::MIN),
            keys::i64_key(quarantine_before),
        );
        drop(db);
        self.write(b)?;
        self.refs_cutoff.store(refs_before, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(sha: char, kind: &str) -> MediaRef {
        MediaRef {
            kind: kind.into(),
            sha256: sha.to_string().repeat(64),
            content_type: "image/jpeg".into(),
            size: 10,
        }
    }

    #[test]
    fn media_rows_round_trip_and_expire_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false, 1 << 20).unwrap();
        let (a, b) = (media('a', "snapshot"), media('b', "clip"));
        store
            .put_media(&StoredMedia {
                media: b.clone(),
                stored_ms: 2_000,
            })
            .unwrap();
        store
            .put_media(&StoredMedia {
                media: a.clone(),
                stored_ms: 1_000,
            })
            .unwrap();
        assert_eq!(store.get_media(&a.sha256).unwrap().unwrap().media, a);
        let old = store.expired_media(1_500, 10).unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].media, a);
        store.forget_media(&a.sha256, 1_000).unwrap();
        assert!(store.get_media(&a.sha256).unwrap().is_none());
        assert_eq!(store.expired_media(i64::MAX, 10).unwrap().len(), 1);
    }

    #[test]
    fn refs_are_kept_per_event_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false, 1 << 20).unwrap();
        store
            .attach_media(&[-3, 7], &media('a', "snapshot"), 1, None)
            .unwrap();
        store
            .attach_media(&[7], &media('b', "clip"), 1, None)
            .unwrap();
        store
            .attach_media(&[7], &media('c', "clip"), 2, None)
            .unwrap();
        let of7 = store.media_of(7, "any").unwrap();
        assert_eq!(of7.len(), 2);
        assert!(of7.contains(&media('c', "clip")));
        assert_eq!(
            store.media_of(-3, "any").unwrap(),
            vec![media('a', "snapshot")]
        );
        assert!(store.media_of(8, "any").unwrap().is_empty());
    }

    #[test]
    fn footage_attached_by_another_agent_before_the_event_is_never_shown_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false, 1 << 20).unwrap();
        // Agent "mallory" attaches to det_oid 9 before "alice" publishes it.
        store
            .attach_media(&[9], &media('a', "snapshot"), 1, Some("mallory"))
            .unwrap();
        assert!(store.media_of(9, "alice").unwrap().is_empty());
        // Alice's own footage shows.
        store
            .attach_media(&[9], &media('b', "clip"), 2, Some("alice"))
            .unwrap();
        assert_eq!(
            store.media_of(9, "alice").unwrap(),
            vec![media('b', "clip")]
        );
    }
}
