//! The agent's durable event buffer, in RocksDB.
//!
//! Every event the agent accepts is appended here, with the next sequence
//! number, before the publisher hears "accepted"; it leaves only once the core
//! has acknowledged it. A crash of the agent (kill -9), of the core or of the
//! link loses nothing: on restart the buffer still holds every event the core
//! has not acknowledged, under the same seqs.
//!
//! # On-disk format (version 1)
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `events` | seq, u64 big-endian (8 bytes) | one encoded `sightline.v1.EdgeEvent` with that seq |
//! | `meta` | `epoch` | u64 BE: random, non-zero, written once when the buffer is created |
//! | `meta` | `next_seq` | u64 BE: the seq the next accepted event gets (starts at 1) |
//! | `meta` | `acked` | u64 BE: the highest seq the core acknowledged (starts at 0) |
//! | `meta` | `source/<name>` | u64 BE: how far a source (a replayed file) got |
//! | `meta` | `format` | u64 BE: 1 |
//!
//! # Promises
//!
//! - Seqs MUST be gap-free: one epoch's events carry 1, 2, 3, ... in the order
//!   they were accepted.
//! - An append MUST write its events, `next_seq` and its source position in one
//!   `WriteBatch`, so after any crash `events` holds exactly the seqs
//!   `acked + 1 ..= next_seq - 1` and a replay resumes after the rows it stored.
//! - An append MUST be durable (fsync'd, with `sync = true`) before it is
//!   answered.
//! - An append that does not fit MUST be refused whole ([`BufferError::Full`]):
//!   nothing of it is kept, nothing already held is dropped.
//! - An event MUST be deleted only by [`Buffer::ack_through`], i.e. after the
//!   core acknowledged its seq; the deletion and `acked` go in one `WriteBatch`.
//! - The epoch MUST be new when the buffer is created afresh (the directory was
//!   wiped) and MUST NOT change otherwise: the core keys its watermark by
//!   (agent, epoch), so a wiped buffer can never be mistaken for a resend.
//! - Reads SHOULD come from an in-memory cache of the newest events (bounded by
//!   `CACHE_BYTES`), falling back to RocksDB after a restart or a long outage.

#[cfg(test)]
mod tests;

use std::{
    collections::VecDeque,
    path::Path,
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
};

use bytes::Bytes;
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use sightline_proto::v1::{Detection, EdgeEvent};
use tokio::sync::{oneshot, watch, Notify};

const CF_EVENTS: &str = "events";
const CF_META: &str = "meta";
const FORMAT_VERSION: u64 = 1;
/// Most bytes of recent events kept in memory for the sender.
pub const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Most events one writer commit takes from its queue.
const MAX_GROUP_EVENTS: usize = 20_000;

/// Why the buffer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer full: {held_events} events / {held_bytes} bytes held, limits are {max_events} events / {max_bytes} bytes; nothing of this publish was kept, retry once the core has caught up")]
    Full {
        held_events: u64,
        held_bytes: u64,
        max_events: u64,
        max_bytes: u64,
    },
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("buffer is corrupt: {0}")]
    Corrupt(String),
    #[error("the core acknowledged seq {seq}, but the buffer only ever assigned up to {last}")]
    AckBeyond { seq: u64, last: u64 },
    #[error("seq {from} was already acknowledged and deleted (acked through {acked})")]
    Gone { from: u64, acked: u64 },
    #[error("buffer is closed")]
    Closed,
}

/// Limits and durability of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct BufferOptions {
    pub max_events: u64,
    pub max_bytes: u64,
    pub sync: bool,
}

impl Default for BufferOptions {
    fn default() -> Self {
        Self {
            max_events: 2_000_000,
            max_bytes: 512 * 1024 * 1024,
            sync: true,
        }
    }
}

/// What an append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The seq of the first event; the others follow without gaps.
    pub first_seq: u64,
    pub count: u64,
}

/// A position of a source to store along with its events.
#[derive(Debug, Clone)]
pub struct SourcePosition {
    pub name: String,
    pub position: u64,
}

struct AppendReq {
    events: Vec<Detection>,
    accepted_ms: i64,
    source: Option<SourcePosition>,
    reply: oneshot::Sender<Result<Appended, BufferError>>,
}

/// In-memory view of what the buffer holds.
struct State {
    next_seq: u64,
    acked: u64,
    /// Encoded size of each held event, seqs `acked + 1 ..`.
    sizes: VecDeque<u32>,
    held_bytes: u64,
    /// The newest encoded events, contiguous, ending at `next_seq - 1`.
    cache: VecDeque<Bytes>,
    /// Seq of `cache[0]`.
    cache_first: u64,
    cache_bytes: usize,
}

struct Shared {
    db: Arc<DB>,
    opts: BufferOptions,
    state: Mutex<State>,
    /// Tells the sender that `next_seq` moved.
    next_seq_tx: watch::Sender<u64>,
    /// Tells blocked publishers that acks made room.
    room: Notify,
}

/// The durable buffer. Cheap to share (`Arc<Buffer>`); appends go through one
/// writer thread that commits every queued append in one fsync'd `WriteBatch`
/// (group commit), so many concurrent publishers cost one fsync.
pub struct Buffer {
    shared: Arc<Shared>,
    epoch: u64,
    tx: Option<mpsc::Sender<AppendReq>>,
    writer: Option<JoinHandle<()>>,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn be_u64(bytes: &[u8], what: &str) -> Result<u64, BufferError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        BufferError::Corrupt(format!("{what}: expected 8 bytes, got {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(arr))
}

impl Buffer {
    /// Opens (or creates) the buffer at `path`.
    pub fn open(path: &Path, opts: BufferOptions) -> Result<Self, BufferError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Small memory: the agent runs beside a detector on a camera host.
        db_opts.set_write_buffer_size(4 * 1024 * 1024);
        db_opts.set_max_write_buffer_number(2);
        db_opts.set_max_total_wal_size(32 * 1024 * 1024);
        db_opts.set_max_open_files(64);
        db_opts.set_keep_log_file_num(2);
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(2 * 1024 * 1024)?);
        let mut cf_opts = Options::default();
        cf_opts.set_write_buffer_size(4 * 1024 * 1024);
        cf_opts.set_max_write_buffer_number(2);
        cf_opts.set_block_based_table_factory(&table);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_EVENTS, cf_opts.clone()),
            ColumnFamilyDescriptor::new(CF_META, cf_opts),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&db_opts, path, cfs)?);
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let get = |k: &str| -> Result<Option<u64>, BufferError> {
            db.get_cf(&meta, k)?.map(|v| be_u64(&v, k)).transpose()
        };
        let epoch = match get("epoch")? {
            Some(e) => {
                if get("format")? != Some(FORMAT_VERSION) {
                    return Err(BufferError::Corrupt(format!(
                        "unknown buffer format {:?}, this agent reads {FORMAT_VERSION}",
                        get("format")?
                    )));
                }
                e
            }
            None => {
                let epoch = rand::random::<u64>().max(1);
                let mut batch = WriteBatch::default();
                batch.put_cf(&meta, "epoch", epoch.to_be_bytes());
                batch.put_cf(&meta, "format", FORMAT_VERSION.to_be_bytes());
                batch.put_cf(&meta, "next_seq", 1u64.to_be_bytes());
                batch.put_cf(&meta, "acked", 0u64.to_be_bytes());
                let mut w = WriteOptions::default();
                w.set_sync(true);
                db.write_opt(batch, &w)?;
                epoch
            }
        };
        let next_seq = get("next_seq")?.unwrap_or(1);
        let acked = get("acked")?.unwrap_or(0);
        if acked >= next_seq {
            return Err(BufferError::Corrupt(format!(
                "acked {acked} is not below next_seq {next_seq}"
            )));
        }
        // Check the promise: events hold exactly acked+1 ..= next_seq-1.
        let mut sizes = VecDeque::new();
        let mut held_bytes = 0;
        let mut expect = acked + 1;
        {
            let events = db.cf_handle(CF_EVENTS).expect("events cf");
            for item in db.iterator_cf(&events, rocksdb::IteratorMode::Start) {
                let (k, v) = item?;
                let seq = be_u64(&k, "event key")?;
                if seq != expect {
                    return Err(BufferError::Corrupt(format!(
                        "expected event seq {expect}, found {seq} (acked {acked}, next_seq {next_seq})"
                    )));
                }
                sizes.push_back(v.len() as u32);
                held_bytes += v.len() as u64;
                expect += 1;
            }
        }
        if expect != next_seq {
            return Err(BufferError::Corrupt(format!(
                "events end before seq {expect}, but next_seq is {next_seq}"
            )));
        }
        let (next_seq_tx, _) = watch::channel(next_seq);
        let shared = Arc::new(Shared {
            db,
            opts,
            state: Mutex::new(State {
                next_seq,
                acked,
                sizes,
                held_bytes,
                cache: VecDeque::new(),
                cache_first: next_seq,
                cache_bytes: 0,
            }),
            next_seq_tx,
            room: Notify::new(),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("buffer-writer".into())
            .spawn(move || writer_loop(&writer_shared, rx))
            .map_err(|e| BufferError::Corrupt(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            shared,
            epoch,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// This buffer's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The seq the next accepted event gets.
    pub fn next_seq(&self) -> u64 {
        self.shared.state.lock().unwrap().next_seq
    }

    /// The highest acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.shared.state.lock().unwrap().acked
    }

    /// Events held, not yet acknowledged.
    pub fn depth(&self) -> u64 {
        self.shared.state.lock().unwrap().sizes.len() as u64
    }

    /// Bytes held, not yet acknowledged.
    pub fn held_bytes(&self) -> u64 {
        self.shared.state.lock().unwrap().held_bytes
    }

    /// A receiver that changes whenever events are appended (holds `next_seq`).
    pub fn watch_appends(&self) -> watch::Receiver<u64> {
        self.shared.next_seq_tx.subscribe()
    }

    /// Resolves when an acknowledgement has made room.
    pub async fn room(&self) {
        self.shared.room.notified().await
    }

    /// How far the named source got, as stored with its last append.
    pub fn source_position(&self, name: &str) -> Result<Option<u64>, BufferError> {
        let db = &self.shared.db;
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let key = format!("source/{name}");
        db.get_cf(&meta, key.as_bytes())?
            .map(|v| be_u64(&v, &key))
            .transpose()
    }

    /// Appends `events` (each with `detection_oid` set) durably; resolves once
    /// they are on disk, with the seqs they got.
    pub async fn append(
        &self,
        events: Vec<Detection>,
        source: Option<SourcePosition>,
    ) -> Result<Appended, BufferError> {
        let rx = self.submit(events, source)?;
        rx.await.map_err(|_| BufferError::Closed)?
    }

    /// [`Buffer::append`] for synchronous callers.
    pub fn append_blocking(
        &self,
        events: Vec<Detection>,
        source: Option<SourcePosition>,
    ) -> Result<Appended, BufferError> {
        let rx = self.submit(events, source)?;
        rx.blocking_recv().map_err(|_| BufferError::Closed)?
    }

    fn submit(
        &self,
        events: Vec<Detection>,
        source: Option<SourcePosition>,
    ) -> Result<oneshot::Receiver<Result<Appended, BufferError>>, BufferError> {
        let (reply, rx) = oneshot::channel();
        let req = AppendReq {
            events,
            accepted_ms: sightline_proto::now_ms(),
            source,
            reply,
        };
        self.tx
            .as_ref()
            .ok_or(BufferError::Closed)?
            .send(req)
            .map_err(|_| BufferError::Closed)?;
        Ok(rx)
    }

    /// Up to `max_events` encoded events (and about `max_bytes`, at least
    /// one), starting at seq `from`, consecutive. Empty when `from` is not yet
    /// assigned.
    pub fn read(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, BufferError> {
        let end = {
            let st = self.shared.state.lock().unwrap();
            if from <= st.acked {
                return Err(BufferError::Gone {
                    from,
                    acked: st.acked,
                });
            }
            if from >= st.next_seq {
                return Ok(Vec::new());
            }
            if !st.cache.is_empty() && from >= st.cache_first {
                let mut out = Vec::new();
                let mut bytes = 0;
                for b in st.cache.iter().skip((from - st.cache_first) as usize) {
                    if out.len() >= max_events || (!out.is_empty() && bytes + b.len() > max_bytes) {
                        break;
                    }
                    bytes += b.len();
                    out.push(b.clone());
                }
                return Ok(out);
            }
            st.next_seq
        };
        let db = &self.shared.db;
        let cf = db.cf_handle(CF_EVENTS).expect("events cf");
        let mut out = Vec::new();
        let mut bytes = 0;
        let iter = db.iterator_cf(
            &cf,
            rocksdb::IteratorMode::From(&key(from), rocksdb::Direction::Forward),
        );
        for (expect, item) in (from..).zip(iter) {
            let (k, v) = item?;
            let seq = be_u64(&k, "event key")?;
            if seq >= end
                || out.len() >= max_events
                || (!out.is_empty() && bytes + v.len() > max_bytes)
            {
                break;
            }
            if seq != expect {
                return Err(BufferError::Corrupt(format!(
                    "expected seq {expect}, found {seq}"
                )));
            }
            bytes += v.len();
            out.push(Bytes::from(v.into_vec()));
        }
        if out.is_empty() {
            return Err(BufferError::Corrupt(format!("seq {from} is missing")));
        }
        Ok(out)
    }

    /// The core acknowledged everything through `seq`: delete it.
    pub fn ack_through(&self, seq: u64) -> Result<(), BufferError> {
        let db = &self.shared.db;
        let mut guard = self.shared.state.lock().unwrap();
        let st = &mut *guard;
        if seq <= st.acked {
            return Ok(());
        }
        if seq >= st.next_seq {
            return Err(BufferError::AckBeyond {
                seq,
                last: st.next_seq - 1,
            });
        }
        let events = db.cf_handle(CF_EVENTS).expect("events cf");
        let meta = db.cf_handle(CF_META).expect("meta cf");
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&events, key(st.acked + 1), key(seq + 1));
        batch.put_cf(&meta, "acked", seq.to_be_bytes());
        // Not fsync'd: losing an ack on power loss only means a resend, which
        // the core recognises by seq.
        db.write(batch)?;
        let n = (seq - st.acked) as usize;
        for size in st.sizes.drain(..n) {
            st.held_bytes -= size as u64;
        }
        while st.cache_first <= seq && !st.cache.is_empty() {
            let b = st.cache.pop_front().unwrap();
            st.cache_bytes -= b.len();
            st.cache_first += 1;
        }
        if st.cache.is_empty() {
            st.cache_first = st.next_seq;
        }
        st.acked = seq;
        drop(guard);
        self.shared.room.notify_waiters();
        Ok(())
    }

    /// Flushes RocksDB's memtables (used before measuring, and on shutdown).
    pub fn flush(&self) -> Result<(), BufferError> {
        Ok(self.shared.db.flush()?)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn writer_loop(shared: &Shared, rx: mpsc::Receiver<AppendReq>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut n: usize = group[0].events.len();
        while n < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(req) => {
                    n += req.events.len();
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        commit_group(shared, group);
    }
}

fn commit_group(shared: &Shared, group: Vec<AppendReq>) {
    let started = std::time::Instant::now();
    let requests = group.len();
    let db = &shared.db;
    let events_cf = db.cf_handle(CF_EVENTS).expect("events cf");
    let meta = db.cf_handle(CF_META).expect("meta cf");
    let (mut next, mut held_events, mut held_bytes) = {
        let st = shared.state.lock().unwrap();
        (st.next_seq, st.sizes.len() as u64, st.held_bytes)
    };
    let first_of_group = next;
    let mut batch = WriteBatch::default();
    let mut accepted = Vec::with_capacity(group.len());
    let mut encoded_all: Vec<Bytes> =
        Vec::with_capacity(group.iter().map(|r| r.events.len()).sum());
    for req in group {
        let encoded: Vec<Bytes> = req
            .events
            .into_iter()
            .enumerate()
            .map(|(i, detection)| {
                Bytes::from(
                    EdgeEvent {
                        seq: next + i as u64,
                        detection: Some(detection),
                        accepted_ms: req.accepted_ms,
                    }
                    .encode_to_vec(),
                )
            })
            .collect();
        let count = encoded.len() as u64;
        let bytes: u64 = encoded.iter().map(|b| b.len() as u64).sum();
        if held_events + count > shared.opts.max_events
            || held_bytes + bytes > shared.opts.max_bytes
        {
            let _ = req.reply.send(Err(BufferError::Full {
                held_events,
                held_bytes,
                max_events: shared.opts.max_events,
                max_bytes: shared.opts.max_bytes,
            }));
            continue;
        }
        for (i, b) in encoded.iter().enumerate() {
            batch.put_cf(&events_cf, key(next + i as u64), b);
        }
        if let Some(src) = &req.source {
            batch.put_cf(
                &meta,
                format!("source/{}", src.name),
                src.position.to_be_bytes(),
            );
        }
        accepted.push((
            req.reply,
            Appended {
                first_seq: next,
                count,
            },
        ));
        encoded_all.extend(encoded);
        next += count;
        held_events += count;
        held_bytes += bytes;
    }
    if accepted.is_empty() {
        return;
    }
    batch.put_cf(&meta, "next_seq", next.to_be_bytes());
    let mut w = WriteOptions::default();
    w.set_sync(shared.opts.sync);
    if let Err(e) = db.write_opt(batch, &w) {
        tracing::error!(error = %e, "buffer append failed");
        for (reply, _) in accepted {
            let _ = reply.send(Err(BufferError::Db(e.clone())));
        }
        return;
    }
    {
        let mut st = shared.state.lock().unwrap();
        debug_assert_eq!(st.next_seq, first_of_group);
        for b in encoded_all {
            st.sizes.push_back(b.len() as u32);
            st.held_bytes += b.len() as u64;
            st.cache_bytes += b.len();
            st.cache.push_back(b);
        }
        st.next_seq = next;
        while st.cache_bytes > CACHE_BYTES {
            let b = st.cache.pop_front().unwrap();
            st.cache_bytes -= b.len();
            st.cache_first += 1;
        }
    }
    shared.next_seq_tx.send_replace(next);
    for (reply, appended) in accepted {
        let _ = reply.send(Ok(appended));
    }
    tracing::trace!(
        requests,
        events = next - first_of_group,
        micros = started.elapsed().as_micros() as u64,
        "buffer group commit"
    );
}
