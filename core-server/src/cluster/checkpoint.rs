//! Partition checkpoints in object storage (`cluster.checkpoints`), reusing
//! the backup's destination ([`crate::backup::Dest`]: content-addressed
//! blobs, uploaded only when absent).
//!
//! ```text
//! <checkpoints>/pNNN/blobs/<sha256>                   a file's bytes
//! <checkpoints>/pNNN/checkpoints/<stream_seq>.json    one checkpoint: [`CheckpointManifest`]
//! ```
//!
//! A checkpoint is the partition store's RocksDB checkpoint (the search
//! index is rebuilt from it by the new owner) with the stream sequence it
//! covers, read from the copy itself; it becomes visible only complete
//! (blobs, then the manifest). Only then are the partition's IN messages at
//! or below that sequence purged. The newest checkpoint is the manifest with
//! the highest stream sequence, whoever wrote it last: an owner that lost
//! its lease while uploading (slow object store, paused) may finish after
//! the next owner checkpointed further and purged the stream behind it, and
//! its older checkpoint must not become the one the next owner restores
//! (the shares between the two would be gone from the stream).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{nats::Nats, IN_STREAM};
use crate::{
    backup::{manifest::FileEntry, Dest},
    store::Store,
};

/// One partition checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointManifest {
    pub partition: u16,
    /// Every share of the partition's IN subject up to this stream sequence
    /// is in it.
    pub stream_seq: u64,
    /// The lease revision of the owner that took it.
    pub lease_revision: u64,
    pub created_ms: i64,
    pub files: Vec<FileEntry>,
}

/// Partition `p`'s checkpoint destination under `url`.
pub fn dest(url: &str, p: u16) -> anyhow::Result<Dest> {
    let to = format!("{}/p{p:03}", url.trim_end_matches('/'));
    Dest::open("cluster.checkpoints", &to, true).map_err(|e| anyhow::anyhow!("{e}"))
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{:x}", h.finalize()), size))
}

/// The SHA-256 and size of the SST files of a partition's last checkpoint,
/// by file name. RocksDB never changes an SST file once written and never
/// reuses its name, so a checkpoint hashes only the SSTs that are new since
/// the one before (and the few small files that do change: MANIFEST, WAL,
/// OPTIONS) instead of the whole store every time.
pub type SstHashes = std::collections::HashMap<String, (u64, String)>;

/// Takes a checkpoint of `store` (partition `p`) in `staging` (a fresh
/// folder on the store's filesystem), uploads it, and returns its manifest.
pub async fn take(
    store: &std::sync::Arc<Store>,
    p: u16,
    lease_revision: u64,
    staging: &Path,
    dest: &Dest,
    hashed: &mut SstHashes,
    held: &mut Option<std::collections::HashMap<String, u64>>,
) -> anyhow::Result<CheckpointManifest> {
    let _ = std::fs::remove_dir_all(staging);
    if let Some(parent) = staging.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let (s, dir) = (store.clone(), staging.to_path_buf());
    let known = std::mem::take(hashed);
    let started = std::time::Instant::now();
    let (stream_seq, files, still) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        s.checkpoint(&dir)?;
        // The sequence the copy covers, read from the copy.
        let copy = Store::open(&dir, false, 1 << 20)?;
        let seq = copy.stream_seq()?;
        drop(copy);
        let mut files = Vec::new();
        let mut still = SstHashes::default();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            let len = entry.metadata()?.len();
            let (sha256, size) = match known.get(&name) {
                Some((size, sha)) if *size == len => (sha.clone(), *size),
                _ => sha256_file(&entry.path())?,
            };
            if name.ends_with(".sst") {
                still.insert(name.clone(), (size, sha256.clone()));
            }
            files.push(FileEntry {
                path: name,
                size,
                sha256,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((seq, files, still))
    })
    .await??;
    *hashed = still;
    // The blobs in the store: listed once per owner, then known — those of
    // this owner's previous checkpoint, which pruning keeps ([`prune`]) —
    // instead of listing the whole prefix for every checkpoint.
    let known = match held.take() {
        Some(h) => h,
        None => dest.blobs().await?,
    };
    let local_ms = started.elapsed().as_millis() as u64;
    // A few at a time: one object-store round trip per file, one after
    // another, was most of a checkpoint under load.
    let uploads: Vec<FileEntry> = crate::backup::manifest::to_upload(&files, &known)
        .into_iter()
        .cloned()
        .collect();
    let (count, bytes) = (uploads.len(), uploads.iter().map(|f| f.size).sum::<u64>());
    futures::stream::iter(uploads)
        .map(|f| {
            let path = staging.join(&f.path);
            async move {
                let bytes = tokio::fs::read(path).await?;
                dest.put(&crate::backup::blob_key(&f.sha256), bytes.into())
                    .await
            }
        })
        .buffer_unordered(UPLOADS)
        .try_collect::<Vec<()>>()
        .await?;
    tracing::debug!(
        partition = p,
        local_ms,
        upload_ms = started.elapsed().as_millis() as u64 - local_ms,
        uploaded_files = count,
        uploaded_bytes = bytes,
        "partition checkpoint uploaded"
    );
    let m = CheckpointManifest {
        partition: p,
        stream_seq,
        lease_revision,
        created_ms: sightline_proto::now_ms(),
        files,
    };
    let name = format!("checkpoints/{stream_seq:020}.json");
    dest.put(&name, serde_json::to_vec(&m)?.into()).await?;
    // Known from now on only once a manifest names them (pruning keeps the
    // blobs of the newest manifests, not blobs no manifest names).
    *held = Some(m.files.iter().map(|f| (f.sha256.clone(), f.size)).collect());
    let _ = std::fs::remove_dir_all(staging);
    Ok(m)
}

/// The newest complete checkpoint, if any.
pub async fn latest(dest: &Dest) -> anyhow::Result<Option<CheckpointManifest>> {
    // `<stream_seq:020>.json`: the highest sequence sorts last.
    let Some(name) = dest
        .names("checkpoints")
        .await?
        .into_iter()
        .filter(|n| {
            n.len() == 25 && n.ends_with(".json") && n[..20].bytes().all(|b| b.is_ascii_digit())
        })
        .max()
    else {
        return Ok(None);
    };
    let name = format!("checkpoints/{name}");
    let Some(bytes) = dest.get(&name).await? else {
        anyhow::bail!("{name} was listed but is missing in {}", dest.shown);
    };
    Ok(Some(
        serde_json::from_slice(&bytes).with_context(|| format!("{name} in {}", dest.shown))?,
    ))
}

/// Blobs of a checkpoint uploaded at once.
const UPLOADS: usize = 4;
/// Blobs of a checkpoint fetched at once while restoring it.
const RESTORE_FETCHES: usize = 8;
/// Blobs fetched at once for a warm copy (in the background: fewer, so as
/// not to crowd the owners' own checkpoints on the object store).
const WARM_FETCHES: usize = 2;
/// Checkpoint manifests a partition keeps (the newest); older ones are
/// deleted by the owner every few checkpoints, with the blobs only they use.
pub const KEEP_CHECKPOINTS: usize = 3;
/// A blob no kept manifest names is deleted only once it is this old: a
/// checkpoint being uploaded (its manifest not written yet) uses blobs no
/// manifest names yet.
pub const BLOB_GRACE_MS: i64 = 10 * 60 * 1000;

/// File `f` of a checkpoint: its blob, size and sha256 checked.
async fn fetch(dest: &Dest, f: &FileEntry) -> anyhow::Result<bytes::Bytes> {
    let bytes = dest
        .get(&crate::backup::blob_key(&f.sha256))
        .await?
        .with_context(|| format!("blob {} of {} is missing", f.sha256, f.path))?;
    verified(bytes, f).await
}

/// `bytes` when they are file `f` (size and sha256), else an error.
async fn verified(bytes: bytes::Bytes, f: &FileEntry) -> anyhow::Result<bytes::Bytes> {
    let (bytes, sha) = tokio::task::spawn_blocking(move || {
        let sha = format!("{:x}", Sha256::digest(&bytes));
        (bytes, sha)
    })
    .await?;
    if sha != f.sha256 || bytes.len() as u64 != f.size {
        anyhow::bail!("{}: its blob does not match the manifest (corrupt)", f.path);
    }
    Ok(bytes)
}

/// File `f` from the warm copy in `warm` (see [`warm_refresh`]), if it is
/// there and intact.
async fn from_warm(warm: Option<&Path>, f: &FileEntry) -> Option<bytes::Bytes> {
    if !crate::backup::valid_sha(&f.sha256) {
        return None;
    }
    let bytes = tokio::fs::read(warm?.join(&f.sha256)).await.ok()?;
    verified(bytes.into(), f).await.ok()
}

/// Writes checkpoint `m` into `into` (which must not exist), every file's
/// size and sha256 checked; written in `<into>.restoring` and renamed. A
/// file found in the warm copy `warm` (intact) is not fetched.
/// Returns how many files came from the warm copy.
pub async fn restore(
    dest: &Dest,
    m: &CheckpointManifest,
    into: &Path,
    warm: Option<&Path>,
) -> anyhow::Result<usize> {
    let tmp = PathBuf::from(format!("{}.restoring", into.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for f in &m.files {
        crate::backup::manifest::check_path(&f.path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.path))?;
    }
    // Fetched a few at a time: a new owner is waited for by the partition's
    // agents and subscribers, and one object-store round trip per file, one
    // after another, was most of a takeover.
    let warmed = futures::stream::iter(m.files.clone())
        .map(|f| {
            let tmp = tmp.clone();
            async move {
                let (bytes, warmed) = match from_warm(warm, &f).await {
                    Some(b) => (b, true),
                    None => (fetch(dest, &f).await?, false),
                };
                tokio::fs::write(tmp.join(&f.path), &bytes).await?;
                anyhow::Ok(warmed)
            }
        })
        .buffer_unordered(RESTORE_FETCHES)
        .try_collect::<Vec<bool>>()
        .await?;
    std::fs::rename(&tmp, into)?;
    Ok(warmed.into_iter().filter(|w| *w).count())
}

/// Brings the warm copy in `warm` (one file per blob, named by its sha256)
/// up to checkpoint `m` (the partition's newest the node knows of): fetches
/// what it lacks, deletes what that checkpoint does not use. Kept by the
/// node that would take the partition over if its owner died, so that the
/// takeover restores from local disk all but what the owner checkpointed
/// since. Returns (files, bytes) fetched.
pub async fn warm_refresh(
    dest: &Dest,
    m: &CheckpointManifest,
    warm: &Path,
) -> anyhow::Result<(usize, u64)> {
    // The manifest may come from a NATS announcement: its hashes become file
    // names here, so anything but a SHA-256 in hex is refused.
    if let Some(f) = m
        .files
        .iter()
        .find(|f| !crate::backup::valid_sha(&f.sha256))
    {
        anyhow::bail!("{}: {:?} is not a SHA-256", f.path, f.sha256);
    }
    tokio::fs::create_dir_all(warm).await?;
    let wanted: std::collections::HashSet<&str> =
        m.files.iter().map(|f| f.sha256.as_str()).collect();
    let mut have = std::collections::HashSet::new();
    let mut entries = tokio::fs::read_dir(warm).await?;
    while let Some(e) = entries.next_entry().await? {
        let name = e.file_name().to_string_lossy().to_string();
        if wanted.contains(name.as_str()) {
            have.insert(name);
        } else {
            let _ = tokio::fs::remove_file(e.path()).await;
        }
    }
    let mut missing: Vec<FileEntry> = m
        .files
        .iter()
        .filter(|f| !have.contains(&f.sha256))
        .cloned()
        .collect();
    missing.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    missing.dedup_by(|a, b| a.sha256 == b.sha256);
    let fetched = futures::stream::iter(missing)
        .map(|f| {
            let warm = warm.to_path_buf();
            async move {
                let bytes = fetch(dest, &f).await?;
                // Written aside and renamed: a file under its sha256 is whole.
                let tmp = warm.join(format!("{}.part", f.sha256));
                tokio::fs::write(&tmp, &bytes).await?;
                tokio::fs::rename(&tmp, warm.join(&f.sha256)).await?;
                anyhow::Ok(f.size)
            }
        })
        .buffer_unordered(WARM_FETCHES)
        .try_collect::<Vec<u64>>()
        .await?;
    Ok((fetched.len(), fetched.iter().sum()))
}

/// Deletes partition checkpoints older than the newest `keep` (the owner
/// passes [`KEEP_CHECKPOINTS`]), then the blobs none of the kept ones uses
/// that were written more than `grace_ms` ago ([`BLOB_GRACE_MS`]).
/// Returns (manifests, blobs) deleted.
pub async fn prune(dest: &Dest, keep: usize, grace_ms: i64) -> anyhow::Result<(usize, usize)> {
    let mut names: Vec<String> = dest
        .names("checkpoints")
        .await?
        .into_iter()
        .filter(|n| {
            n.len() == 25 && n.ends_with(".json") && n[..20].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    if names.is_empty() {
        return Ok((0, 0));
    }
    names.sort();
    let (old, kept) = names.split_at(names.len().saturating_sub(keep.max(1)));
    let mut used = std::collections::HashSet::new();
    for name in kept {
        let rel = format!("checkpoints/{name}");
        // A kept manifest that cannot be read: nothing is deleted (its blobs
        // are not known).
        let bytes = dest
            .get(&rel)
            .await?
            .with_context(|| format!("{rel} was listed but is missing in {}", dest.shown))?;
        let m: CheckpointManifest =
            serde_json::from_slice(&bytes).with_context(|| format!("{rel} in {}", dest.shown))?;
        used.extend(m.files.into_iter().map(|f| f.sha256));
    }
    for name in old {
        dest.delete(&format!("checkpoints/{name}")).await?;
    }
    let now = sightline_proto::now_ms();
    let mut blobs = 0;
    for (sha, (_, written_ms)) in dest.blobs_aged().await? {
        if !used.contains(&sha) && now - written_ms > grace_ms {
            dest.delete(&crate::backup::blob_key(&sha)).await?;
            blobs += 1;
        }
    }
    Ok((old.len(), blobs))
}

/// The IN stream sequences of the messages a partition's owner has dealt
/// with (applied, refused or skipped) and not yet deleted, oldest first,
/// each with the [`fingerprint`] of what the owner was delivered there:
/// what [`delete_applied`] deletes once a checkpoint covers them.
#[derive(Debug)]
pub struct Handled {
    seqs: std::collections::VecDeque<(u64, u64)>,
    /// The subject may hold messages before the oldest seq kept that this
    /// owner did not deal with (an earlier owner's, or seqs forgotten past
    /// [`HANDLED_MAX`]): [`delete_applied`] asks the stream's leader for them.
    unknown_before: bool,
    /// [`delete_applied`] checks the messages at and before this sequence
    /// against the leader's copy: those the stream held when this owner
    /// took the partition over ([`Handled::check_through`]), and every one
    /// once the owner saw a sign of a NATS fault ([`Handled::suspect`]).
    check_through: u64,
}

/// Seqs a [`Handled`] keeps at most (8 MiB) while no checkpoint is taken
/// (the object store down); past it they are forgotten and found again by
/// asking the stream's leader.
const HANDLED_MAX: usize = 1 << 19;

impl Default for Handled {
    fn default() -> Self {
        Handled {
            seqs: Default::default(),
            unknown_before: true,
            check_through: 0,
        }
    }
}

impl Handled {
    /// Records that the message at `seq`, whose payload has `fingerprint`,
    /// was dealt with (in stream order).
    pub fn push(&mut self, seq: u64, fingerprint: u64) {
        if self.seqs.len() >= HANDLED_MAX {
            self.seqs.clear();
            self.unknown_before = true;
        }
        self.seqs.push_back((seq, fingerprint));
    }

    /// The owner's consumer broke or was made again (a nats-server died, a
    /// stream leader moved), a share it was never delivered was found in
    /// the stream, or at a checkpoint the stream's leader had changed or a
    /// replica was down ([`Placement::watch`]): its replica may hold other
    /// messages than the leader (nats-server 2.9.10's were seen to after two
    /// of three servers were killed), so every message dealt with is checked
    /// against the leader's copy before it is deleted, for as long as this
    /// owner holds the partition. Not before: the check reads each message back from
    /// the leader, which took 10–30 % off the cluster bench's throughput
    /// (BENCHMARKS.md, fortieth session).
    pub fn suspect(&mut self) {
        self.check_through = u64::MAX;
    }

    /// The messages through `seq` are checked against the leader's copy
    /// before they are deleted. An owner taking a partition over calls it
    /// with the subject's last sequence then: those messages came through
    /// whatever faults there were before, which a previous owner may have
    /// seen and this one cannot (its consumer may be served by a replica
    /// that differs from the leader since).
    pub fn check_through(&mut self, seq: u64) {
        self.check_through = self.check_through.max(seq);
    }

    /// Whether [`delete_applied`] checks every message from now on.
    pub fn suspected(&self) -> bool {
        self.check_through == u64::MAX
    }
}

/// A replica of the IN stream its leader has not heard from for this long
/// is down or cut off (nats-server's RAFT heartbeats are every second; it
/// marks a server offline only a long while after a `kill -9`).
const UNSEEN: std::time::Duration = std::time::Duration::from_secs(10);

/// Who led the IN stream's RAFT group when an owner last looked, and since
/// when (`leader_since`, where the server reports it: Debian's 2.9.10
/// does not, so a leader that moved away and back between two looks goes
/// unseen).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    leader: Option<String>,
    since: Option<async_nats::datetime::DateTime>,
}

impl Placement {
    /// The server leading the stream (`None`: none, an election is on).
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Reads the IN stream's placement from the server: its leader and the
    /// replicas the group considers offline or has not heard from for
    /// [`UNSEEN`].
    pub async fn read(nats: &Nats) -> anyhow::Result<(Placement, Vec<String>)> {
        let stream = nats.js.get_stream(IN_STREAM).await?;
        Ok(match &stream.cached_info().cluster {
            Some(c) => (
                Placement {
                    leader: c.leader.clone(),
                    since: c.leader_since,
                },
                c.replicas
                    .iter()
                    .filter(|r| r.offline || r.active >= UNSEEN)
                    .map(|r| format!("{} (seen {:?} ago)", r.name, r.active))
                    .collect(),
            ),
            None => (
                Placement {
                    leader: None,
                    since: None,
                },
                Vec::new(),
            ),
        })
    }

    /// Looks at the IN stream's placement before an owner deletes what a
    /// checkpoint covers: if its leader is not the one `last` saw (or
    /// leads since another time), or a replica is offline or unheard from
    /// for [`UNSEEN`], a nats-server died or a leader moved since the last
    /// look — possibly without breaking this owner's consumer (its server
    /// lived on), whose replica may now differ from the new leader — so
    /// `handled` is [`Handled::suspect`]. Returns why, if so. `last` is the
    /// placement seen at the previous look (`None`: none yet, nothing
    /// compared).
    pub async fn watch(
        nats: &Nats,
        last: &mut Option<Placement>,
        handled: &std::sync::Mutex<Handled>,
    ) -> anyhow::Result<Option<String>> {
        let (now, down) = Placement::read(nats).await?;
        let why = match last.as_ref() {
            _ if !down.is_empty() => Some(format!(
                "the IN stream's replicas on {} are down or not heard from",
                down.join(", ")
            )),
            Some(was) if *was != now => Some(format!(
                "the IN stream's leader is {} (since {:?}), was {} (since {:?})",
                now.leader.as_deref().unwrap_or("none"),
                now.since,
                was.leader.as_deref().unwrap_or("none"),
                was.since
            )),
            _ => None,
        };
        *last = Some(now);
        if why.is_some() {
            handled.lock().unwrap().suspect();
        }
        Ok(why)
    }
}

/// What identifies a message's payload for [`delete_applied`] (SipHash with
/// fixed keys: the same in every process).
pub fn fingerprint(payload: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(payload);
    h.finish()
}

/// What [`delete_applied`] did.
#[derive(Debug, Default)]
pub struct Deleted {
    /// Messages deleted.
    pub count: u64,
    /// Messages the stream's leader holds at a sequence where this owner
    /// was delivered another one, kept in the stream: the owner never saw
    /// them (nats-server 2.9.10's replicas were seen to differ so after two
    /// of three were killed).
    pub diverged: Vec<async_nats::jetstream::message::StreamMessage>,
    /// Footage (attaches) before the first message this owner dealt with,
    /// kept in the stream: an earlier owner's, which that owner may not
    /// have applied — it left the partition with footage it was to try
    /// again (see [`Deleted::diverged`]) — and which this owner's
    /// checkpoints, restored from that owner's, may lack. Applying one
    /// again changes nothing.
    pub unseen_attaches: Vec<async_nats::jetstream::message::StreamMessage>,
}

/// What [`delete_applied`] knows of a message it may delete.
#[derive(Clone, Copy)]
enum Known {
    /// Dealt with by this owner: delivered with this fingerprint, checked
    /// against the leader's copy; or not checked (`None`).
    Dealt(Option<u64>),
    /// Named by the stream's leader before the first this owner dealt with.
    Unseen,
}

/// What [`delete_applied`] did with one message.
enum Outcome {
    /// Deleted (`false`: gone already).
    Deleted(bool),
    /// The leader holds another message than this owner was delivered.
    Diverged(Box<async_nats::jetstream::message::StreamMessage>),
    /// An attach this owner never saw.
    UnseenAttach(Box<async_nats::jetstream::message::StreamMessage>),
}

/// Deletes at a time (each a JetStream request).
const DELETES: usize = 16;

/// Deletes partition `p`'s IN messages below `keep_from` (those a checkpoint
/// holds), each on its own (`STREAM.MSG.DELETE`, not erased): the ones in
/// `handled` — of those it checks ([`Handled::check_through`],
/// [`Handled::suspect`]) only those whose copy at the stream's leader is
/// the message this owner was delivered (another one is kept and returned:
/// [`Deleted::diverged`]) — and, when it may not know them all, those the
/// stream's leader names before them, shares deleted and attaches kept
/// ([`Deleted::unseen_attaches`]).
///
/// Never a purge with a subject filter: nats-server 2.9 (Debian 12's)
/// replays one from its log after a restart as a purge of *every* subject
/// up to the stream's last sequence when it ran (nats-server#4196, fixed in
/// 2.9.18). Two servers of three back from `kill -9` dropped the other
/// partitions' unapplied shares, formed the majority, and acknowledged
/// events were gone (`two_nats_servers_down_acknowledge_nothing_and_lose_nothing_once_back`
/// failed so). A deleted message is replayed as itself.
pub async fn delete_applied(
    nats: &Nats,
    p: u16,
    keep_from: u64,
    handled: &std::sync::Mutex<Handled>,
) -> anyhow::Result<Deleted> {
    let (known, scan) = {
        let h = handled.lock().unwrap();
        let known: Vec<(u64, Known)> = h
            .seqs
            .iter()
            .take_while(|(s, _)| *s < keep_from)
            .map(|&(s, f)| (s, Known::Dealt((s <= h.check_through).then_some(f))))
            .collect();
        (known, h.unknown_before)
    };
    let mut unknown = Vec::new();
    if scan {
        let below = known.first().map_or(keep_from, |k| k.0).min(keep_from);
        let mut from = 1;
        while let Some(s) = super::owner::leader_next(nats, p, from).await? {
            if s >= below {
                break;
            }
            unknown.push((s, Known::Unseen));
            from = s + 1;
        }
    }
    let stream = nats.js.get_stream_no_info(IN_STREAM).await?;
    let seqs = unknown.into_iter().chain(known);
    let done = futures::stream::iter(seqs)
        .map(|(seq, known)| delete_if_dealt_with(nats, &stream, seq, known))
        .buffer_unordered(DELETES)
        .try_fold(Deleted::default(), |mut d, outcome| async move {
            match outcome {
                Outcome::Deleted(gone) => d.count += gone as u64,
                Outcome::Diverged(m) => d.diverged.push(*m),
                Outcome::UnseenAttach(m) => d.unseen_attaches.push(*m),
            }
            Ok(d)
        })
        .await?;
    let mut h = handled.lock().unwrap();
    while h.seqs.front().is_some_and(|(s, _)| *s < keep_from) {
        h.seqs.pop_front();
    }
    if scan {
        // (Seqs forgotten meanwhile stay in the stream until a later
        // owner's scan: space, never a message deleted too soon.)
        h.unknown_before = false;
    }
    Ok(done)
}

/// Deletes the IN message at `seq` if the stream's leader holds there the
/// message this owner was delivered (its fingerprint; not checked: deleted)
/// or, for a message this owner never saw, a share; otherwise returns the
/// leader's message, kept.
async fn delete_if_dealt_with<I>(
    nats: &Nats,
    stream: &async_nats::jetstream::stream::Stream<I>,
    seq: u64,
    known: Known,
) -> anyhow::Result<Outcome> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    if !matches!(known, Known::Dealt(None)) {
        let m = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
                return Ok(Outcome::Deleted(false))
            }
            Err(e) => return Err(e.into()),
        };
        match known {
            Known::Dealt(Some(f)) if self::fingerprint(&m.payload) != f => {
                return Ok(Outcome::Diverged(Box::new(m)))
            }
            Known::Unseen if super::share::is_attach(&m.headers) => {
                return Ok(Outcome::UnseenAttach(Box::new(m)))
            }
            _ => {}
        }
    }
    Ok(Outcome::Deleted(delete_message(nats, seq).await?))
}

/// Deletes the IN stream's message at `seq` (`false`: it was gone already).
/// Not async-nats' `Stream::delete_message`, which asks the server to erase
/// (overwrite) the message's bytes first: `no_erase` only drops it.
pub(crate) async fn delete_message(nats: &Nats, seq: u64) -> anyhow::Result<bool> {
    use async_nats::jetstream::{response::Response, stream::DeleteStatus, ErrorCode};
    let r: Response<DeleteStatus> = nats
        .js
        .request(
            format!("STREAM.MSG.DELETE.{IN_STREAM}"),
            &serde_json::json!({ "seq": seq, "no_erase": true }),
        )
        .await?;
    match r {
        Response::Ok(s) => Ok(s.success),
        // "sequence not found" (10043; "no message found", 10037, in other versions).
        Response::Err { error }
            if matches!(
                error.error_code(),
                ErrorCode::SEQUENCE_NOT_FOUND | ErrorCode::NO_MESSAGE_FOUND
            ) =>
        {
            Ok(false)
        }
        Response::Err { error } => Err(anyhow::anyhow!("deleting IN message {seq}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(stream_seq: u64) -> bytes::Bytes {
        serde_json::to_vec(&CheckpointManifest {
            partition: 0,
            stream_seq,
            lease_revision: 1,
            created_ms: 0,
            files: Vec::new(),
        })
        .unwrap()
        .into()
    }

    #[tokio::test]
    async fn the_newest_checkpoint_is_the_highest_sequence_even_when_an_older_one_lands_last() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dest(dir.path().to_str().unwrap(), 0).unwrap();
        assert!(latest(&dest).await.unwrap().is_none());
        dest.put(&format!("checkpoints/{:020}.json", 900), manifest(900))
            .await
            .unwrap();
        // A stale owner finishing its upload after the next owner's.
        dest.put(&format!("checkpoints/{:020}.json", 85), manifest(85))
            .await
            .unwrap();
        dest.put("checkpoints/notes.txt", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(latest(&dest).await.unwrap().unwrap().stream_seq, 900);
    }

    /// Puts `files` (name, content) as blobs and a manifest at `stream_seq`
    /// naming them.
    async fn put_checkpoint(
        dest: &Dest,
        stream_seq: u64,
        files: &[(&str, &[u8])],
    ) -> CheckpointManifest {
        let mut entries = Vec::new();
        for (name, bytes) in files {
            let sha = format!("{:x}", Sha256::digest(bytes));
            dest.put(&crate::backup::blob_key(&sha), bytes.to_vec().into())
                .await
                .unwrap();
            entries.push(FileEntry {
                path: name.to_string(),
                size: bytes.len() as u64,
                sha256: sha,
            });
        }
        let m = CheckpointManifest {
            partition: 0,
            stream_seq,
            lease_revision: 1,
            created_ms: 0,
            files: entries,
        };
        dest.put(
            &format!("checkpoints/{stream_seq:020}.json"),
            serde_json::to_vec(&m).unwrap().into(),
        )
        .await
        .unwrap();
        m
    }

    #[tokio::test]
    async fn a_takeover_restores_from_the_warm_copy_and_fetches_only_what_it_lacks_or_what_is_corrupt(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dest(dir.path().join("objects").to_str().unwrap(), 0).unwrap();
        let warm = dir.path().join("warm");
        put_checkpoint(&dest, 10, &[("000010.sst", b"ten"), ("CURRENT", b"M1\n")]).await;
        assert_eq!(
            warm_refresh(&dest, &latest(&dest).await.unwrap().unwrap(), &warm)
                .await
                .unwrap(),
            (2, 6)
        );
        assert_eq!(
            warm_refresh(&dest, &latest(&dest).await.unwrap().unwrap(), &warm)
                .await
                .unwrap(),
            (0, 0),
            "nothing new"
        );
        // The owner checkpoints further (one SST kept, one new, CURRENT
        // changed) and dies before the next warm round.
        let m = put_checkpoint(
            &dest,
            20,
            &[
                ("000010.sst", b"ten"),
                ("000020.sst", b"twenty"),
                ("CURRENT", b"M2\n"),
            ],
        )
        .await;
        let into = dir.path().join("store1");
        assert_eq!(restore(&dest, &m, &into, Some(&warm)).await.unwrap(), 1);
        assert_eq!(std::fs::read(into.join("000010.sst")).unwrap(), b"ten");
        assert_eq!(std::fs::read(into.join("CURRENT")).unwrap(), b"M2\n");
        // A warm file that does not match the manifest is fetched instead.
        let ten = m.files[0].sha256.clone();
        std::fs::write(warm.join(&ten), b"TEN").unwrap();
        let into = dir.path().join("store2");
        assert_eq!(restore(&dest, &m, &into, Some(&warm)).await.unwrap(), 0);
        assert_eq!(std::fs::read(into.join("000010.sst")).unwrap(), b"ten");
        // The next warm round fetches what is new and drops what the newest
        // checkpoint no longer uses (the old CURRENT); then a takeover needs
        // nothing from the store at all.
        std::fs::write(warm.join(&ten), b"ten").unwrap();
        assert_eq!(
            warm_refresh(&dest, &latest(&dest).await.unwrap().unwrap(), &warm)
                .await
                .unwrap(),
            (2, 9)
        );
        assert_eq!(std::fs::read_dir(&warm).unwrap().count(), 3);
        for f in &m.files {
            dest.delete(&crate::backup::blob_key(&f.sha256))
                .await
                .unwrap();
        }
        let into = dir.path().join("store3");
        assert_eq!(restore(&dest, &m, &into, Some(&warm)).await.unwrap(), 3);
        assert_eq!(std::fs::read(into.join("000020.sst")).unwrap(), b"twenty");
    }

    #[tokio::test]
    async fn a_warm_copy_refuses_a_manifest_whose_hashes_are_not_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dest(dir.path().join("objects").to_str().unwrap(), 0).unwrap();
        let mut m = put_checkpoint(&dest, 10, &[("000010.sst", b"ten")]).await;
        m.files[0].sha256 = "../../escaped".into();
        let warm = dir.path().join("warm");
        assert!(warm_refresh(&dest, &m, &warm).await.is_err());
        assert!(!dir.path().join("escaped").exists());
    }

    #[tokio::test]
    async fn old_checkpoints_are_deleted_with_the_blobs_only_they_use_once_past_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dest(dir.path().to_str().unwrap(), 0).unwrap();
        put_checkpoint(&dest, 1, &[("a.sst", b"a"), ("CURRENT", b"1")]).await;
        put_checkpoint(
            &dest,
            2,
            &[("a.sst", b"a"), ("b.sst", b"b"), ("CURRENT", b"2")],
        )
        .await;
        put_checkpoint(&dest, 3, &[("b.sst", b"b"), ("CURRENT", b"3")]).await;
        put_checkpoint(
            &dest,
            4,
            &[("b.sst", b"b"), ("c.sst", b"c"), ("CURRENT", b"4")],
        )
        .await;
        assert_eq!(
            prune(&dest, 4, 60_000).await.unwrap(),
            (0, 0),
            "nothing beyond 4"
        );
        // Blobs written just now are kept within the grace (an upload in
        // progress uses blobs no manifest names yet).
        assert_eq!(prune(&dest, 2, 60_000).await.unwrap(), (2, 0));
        let mut names = dest.names("checkpoints").await.unwrap();
        names.sort();
        assert_eq!(
            names,
            [format!("{:020}.json", 3), format!("{:020}.json", 4)]
        );
        assert_eq!(latest(&dest).await.unwrap().unwrap().stream_seq, 4);
        // Past the grace: "a", "1" and "2" are used by no kept checkpoint.
        assert_eq!(prune(&dest, 2, -1).await.unwrap(), (0, 3));
        let left: std::collections::HashSet<String> =
            dest.blobs().await.unwrap().into_keys().collect();
        let sha = |b: &[u8]| format!("{:x}", Sha256::digest(b));
        let want: std::collections::HashSet<String> = [sha(b"b"), sha(b"c"), sha(b"3"), sha(b"4")]
            .into_iter()
            .collect();
        assert_eq!(left, want);
        // What is kept restores.
        let m = latest(&dest).await.unwrap().unwrap();
        restore(&dest, &m, &dir.path().join("r"), None)
            .await
            .unwrap();
    }
}
