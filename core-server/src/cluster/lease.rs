//! Partition leases in [`super::LEASES_BUCKET`]: key [`super::lease_key`],
//! value [`Lease`]. Taken by creating the key when absent, or by updating it
//! at its revision once it expired or was released; renewed by updating it
//! at the revision the holder last wrote (compare-and-set: a holder whose
//! revision is stale has lost it). The revision is the fencing token.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::{lease_key, nats::ClusterError};

/// A lease as kept in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    /// Unix ms after which another node may take it.
    pub expires_ms: i64,
}

/// What became of an attempt to take a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Held, at this revision.
    Taken(u64),
    /// Another node holds it, until then.
    Held(Lease),
}

fn encode(l: &Lease) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(l).expect("json"))
}

/// The lease of partition `p` as the bucket has it now, with its revision.
pub async fn read(leases: &kv::Store, p: u16) -> Result<Option<(Lease, u64)>, ClusterError> {
    let entry = leases
        .entry(lease_key(p))
        .await
        .map_err(|e| ClusterError::js("bucket sightline_leases", e))?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => serde_json::from_slice(&e.value)
            .ok()
            .map(|l| (l, e.revision)),
        _ => None,
    })
}

/// Takes partition `p`'s lease for `node` for `lease_ms`, if nobody holds it.
pub async fn take(
    leases: &kv::Store,
    p: u16,
    node: &str,
    lease_ms: u64,
) -> Result<Take, ClusterError> {
    let key = lease_key(p);
    let now = sightline_proto::now_ms();
    let mine = Lease {
        node: node.into(),
        expires_ms: now + lease_ms as i64,
    };
    let entry = leases
        .entry(key.clone())
        .await
        .map_err(|e| ClusterError::js("bucket sightline_leases", e))?;
    let put = match entry {
        None => leases
            .create(&key, encode(&mine))
            .await
            .map_err(|e| e.to_string()),
        Some(e) => {
            if e.operation == kv::Operation::Put {
                if let Ok(l) = serde_json::from_slice::<Lease>(&e.value) {
                    if l.expires_ms >= now {
                        return Ok(Take::Held(l));
                    }
                }
            }
            leases
                .update(&key, encode(&mine), e.revision)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let rev = match put {
        Ok(rev) => rev,
        // Another node wrote it between our read and our write.
        Err(_) => return held_now(leases, p, now).await,
    };
    // Confirmed by a renewal at the revision written: nats-server 2.9
    // checks a compare-and-set before proposing the write, not when
    // applying it, so two nodes taking an expired lease at once can both be
    // told they have it (nats-server#4320; seen here, revisions 1328 and
    // 1329 of one partition). Once both writes are applied only the later
    // revision renews. (It narrows the race, it does not close it: the
    // node designated to take a lease first does, `node::designated_taker`.)
    match renew(leases, p, node, lease_ms, rev).await? {
        Some(rev) => Ok(Take::Taken(rev)),
        None => {
            tracing::warn!(
                partition = p,
                revision = rev,
                "lease taken by another node at the same time; left to it"
            );
            held_now(leases, p, now).await
        }
    }
}

/// [`Take::Held`] with the lease as the bucket has it now.
async fn held_now(leases: &kv::Store, p: u16, now: i64) -> Result<Take, ClusterError> {
    Ok(Take::Held(match read(leases, p).await? {
        Some((l, _)) => l,
        None => Lease {
            node: String::new(),
            expires_ms: now,
        },
    }))
}

/// Renews a held lease at `revision`; `None` when it was lost (another
/// revision is there: someone took it, or it was released).
pub async fn renew(
    leases: &kv::Store,
    p: u16,
    node: &str,
    lease_ms: u64,
    revision: u64,
) -> Result<Option<u64>, ClusterError> {
    let l = Lease {
        node: node.into(),
        expires_ms: sightline_proto::now_ms() + lease_ms as i64,
    };
    match leases.update(lease_key(p), encode(&l), revision).await {
        Ok(rev) => Ok(Some(rev)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(ClusterError::js("bucket sightline_leases", e)),
    }
}

/// Gives a held lease back (only if still at `revision`).
pub async fn release(leases: &kv::Store, p: u16, revision: u64) -> Result<(), ClusterError> {
    leases
        .delete_expect_revision(lease_key(p), Some(revision))
        .await
        .map_err(|e| ClusterError::js("bucket sightline_leases", e))
}
