//! The one writer: a thread that owns the active segment, gives each record
//! its seq and hash, and makes a group of concurrent appends durable with one
//! `fdatasync` of the segment and one atomic replace of the head.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    files::{self, Anchor, Head},
    now_ms,
    record::{Action, Actor, Link, Record, GENESIS_HASH},
    AuditError, CutReport, Entry, MAX_DETAIL_BYTES,
};

/// Most appends made durable by one fsync. Bounds a group's buffer; under
/// load the queue drains in groups of this size.
pub const MAX_GROUP: usize = 1024;

pub(super) enum Job {
    Append(Entry, oneshot::Sender<Result<u64, AuditError>>),
    Cut(i64, oneshot::Sender<Result<CutReport, AuditError>>),
    /// Copies the folder's files into another folder between two appends
    /// (a consistent copy, for [`crate::backup`]).
    Copy(PathBuf, oneshot::Sender<Result<(), AuditError>>),
}

/// The state of the log's tail, owned by the writer thread.
pub(super) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    /// The active segment's length (complete lines only).
    file_len: u64,
    last_seq: u64,
    last_hash: String,
    last_time: i64,
    /// Set when a failed write or sync could not be undone: every append is
    /// refused until the store is opened again (which re-reads the tail).
    broken: Option<String>,
}

impl Writer {
    /// Opens the log in `dir` (made when missing), checks its tail against
    /// the head and drops a last line that was never finished.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Self, AuditError> {
        let fail = |what: String| AuditError::new(dir, what);
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("creating the folder: {e}")))?;
        let head: Option<Head> = files::read_json(&dir.join(files::HEAD_FILE)).map_err(fail)?;
        let anchor: Option<Anchor> =
            files::read_json(&dir.join(files::ANCHOR_FILE)).map_err(fail)?;
        let segments = files::list_segments(dir).map_err(|e| fail(format!("listing: {e}")))?;
        let (mut last_seq, mut last_hash, mut last_time) = match &anchor {
            Some(a) => (a.seq, a.hash.clone(), 0),
            None => (0, GENESIS_HASH.to_string(), 0),
        };
        let active = match segments.last() {
            Some(s) => s.path.clone(),
            None => {
                let p = files::segment_path(dir, last_seq + 1);
                File::create(&p).map_err(|e| fail(format!("creating {}: {e}", p.display())))?;
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| fail(format!("syncing the folder: {e}")))?;
                p
            }
        };
        // The last record: in the active segment, or (when it is still
        // empty) at the end of the one before.
        let mut complete_len = 0;
        for (i, s) in segments.iter().enumerate().rev() {
            let bytes = std::fs::read(&s.path)
                .map_err(|e| fail(format!("reading {}: {e}", s.path.display())))?;
            let (line, len) = files::last_line(&bytes);
            if i + 1 == segments.len() {
                complete_len = len as u64;
                if len < bytes.len() {
                    tracing::warn!(
                        file = %s.path.display(),
                        bytes = bytes.len() - len,
                        "audit: dropping a last line that was never finished (a crash while writing it)"
                    );
                }
            }
            if let Some(line) = line {
                let text = std::str::from_utf8(line)
                    .map_err(|_| fail(format!("{}: last line is not UTF-8", s.path.display())))?;
                let link: Link = serde_json::from_str(text).map_err(|e| {
                    fail(format!("{}: last line unreadable: {e}", s.path.display()))
                })?;
                let split = super::record::split_line(text)
                    .ok_or_else(|| fail(format!("{}: last line has no hash", s.path.display())))?;
                last_seq = link.seq;
                last_hash = split.stored_hash.to_string();
                last_time = link.time;
                break;
            }
        }
        match &head {
            Some(h) if h.seq > last_seq => {
                return Err(fail(format!(
                    "the head names record {} but the log ends at record {last_seq}: records were removed; run `sightline-core audit verify`",
                    h.seq
                )))
            }
            Some(h) if h.seq == last_seq && h.hash != last_hash => {
                return Err(fail(format!(
                    "the head's hash for record {} differs from the stored record's: run `sightline-core audit verify`",
                    h.seq
                )))
            }
            None if last_seq > anchor.as_ref().map_or(0, |a| a.seq) => {
                return Err(fail(
                    "head.json is missing but the log has records: run `sightline-core audit verify`".into(),
                ))
            }
            _ => {}
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&active)
            .map_err(|e| fail(format!("opening {}: {e}", active.display())))?;
        let on_disk = file.metadata().map(|m| m.len()).unwrap_or(complete_len);
        if on_disk != complete_len {
            file.set_len(complete_len)
                .and_then(|()| file.sync_data())
                .map_err(|e| fail(format!("dropping an unfinished line: {e}")))?;
        }
        let w = Writer {
            dir: dir.to_path_buf(),
            segment_bytes,
            file,
            file_len: complete_len,
            last_seq,
            last_hash,
            last_time,
            broken: None,
        };
        w.write_head()
            .map_err(|e| fail(format!("writing head.json: {e}")))?;
        Ok(w)
    }

    fn write_head(&self) -> std::io::Result<()> {
        let head = Head {
            seq: self.last_seq,
            hash: self.last_hash.clone(),
        };
        // No sync of the folder: a head lost in a crash is an older head,
        // which verify accepts (records after the head are not an error).
        files::write_json_atomic(&self.dir, files::HEAD_FILE, &head, false)
    }

    fn error(&self, what: impl Into<String>) -> AuditError {
        AuditError::new(&self.dir, what.into())
    }

    /// Seals the entries into lines after the current tail.
    fn seal(&self, entries: &[Entry]) -> (Vec<u8>, u64, String, i64) {
        let mut buf = Vec::with_capacity(entries.len() * 320);
        let (mut seq, mut prev, mut time) = (self.last_seq, self.last_hash.clone(), self.last_time);
        let now = now_ms();
        for e in entries {
            seq += 1;
            time = time.max(e.time.unwrap_or(now));
            let mut detail = e.detail.clone();
            let size = serde_json::to_vec(&detail).map_or(0, |v| v.len());
            if size > MAX_DETAIL_BYTES {
                detail = serde_json::Map::new();
                detail.insert("detail_too_large_bytes".into(), size.into());
            }
            let mut r = Record {
                seq,
                time,
                actor: e.actor.clone(),
                source: e.source,
                action: e.action,
                det_oid: e.det_oid,
                camera: e.camera,
                location: e.location,
                object: e.object.clone(),
                detail,
                outcome: e.outcome,
                prev_hash: prev,
                hash: String::new(),
            };
            buf.extend_from_slice(r.seal().as_bytes());
            buf.push(b'\n');
            prev = r.hash;
        }
        (buf, seq, prev, time)
    }

    /// Appends the entries durably; their seqs on success. On failure none of
    /// them is in the log (or the writer is marked broken).
    pub fn append(&mut self, entries: &[Entry]) -> Result<Vec<u64>, AuditError> {
        if let Some(why) = &self.broken {
            return Err(self.error(why.clone()));
        }
        if self.file_len >= self.segment_bytes {
            self.rotate()?;
        }
        let first = self.last_seq + 1;
        let (buf, seq, hash, time) = self.seal(entries);
        let before = (self.last_seq, self.last_hash.clone(), self.last_time);
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            self.undo(&e);
            return Err(self.error(format!("writing the active segment: {e}")));
        }
        (self.last_seq, self.last_hash, self.last_time) = (seq, hash, time);
        if let Err(e) = self.write_head() {
            // Not acknowledged, so not kept: the log stays what the head says.
            self.undo(&e);
            (self.last_seq, self.last_hash, self.last_time) = before;
            return Err(self.error(format!("writing head.json: {e}")));
        }
        self.file_len += buf.len() as u64;
        Ok((first..=seq).collect())
    }

    /// Cuts the active segment back to its last acknowledged line, so the
    /// next append starts on a line boundary; when that fails, refuses every
    /// append until the store is opened again.
    fn undo(&mut self, cause: &std::io::Error) {
        let undo = self
            .file
            .set_len(self.file_len)
            .and_then(|()| self.file.sync_data());
        if let Err(u) = undo {
            self.broken = Some(format!(
                "a failed write ({cause}) could not be undone ({u}); reopen the store"
            ));
        }
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let p = files::segment_path(&self.dir, self.last_seq + 1);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&p)
            .and_then(|f| File::open(&self.dir)?.sync_all().map(|()| f))
            .map_err(|e| self.error(format!("starting segment {}: {e}", p.display())))?;
        self.file = file;
        self.file_len = 0;
        Ok(())
    }

    /// Removes the oldest whole segments whose records are all older than
    /// `before` (never the active one), anchors the chain at the last record
    /// removed, and records the cut in the chain.
    pub fn cut(&mut self, before: i64) -> Result<CutReport, AuditError> {
        let segments = files::list_segments(&self.dir)
            .map_err(|e| self.error(format!("listing segments: {e}")))?;
        // Segment i may go when segment i+1 starts before `before`: times
        // never decrease, so all of segment i's records are older.
        let mut remove = 0;
        let mut anchor: Option<(u64, String)> = None;
        for next in segments.iter().skip(1) {
            let line = files::first_line(&next.path)
                .map_err(|e| self.error(format!("reading {}: {e}", next.path.display())))?;
            let Some(line) = line else { break };
            let link: Link = serde_json::from_str(&line)
                .map_err(|e| self.error(format!("{}: {e}", next.path.display())))?;
            if link.time >= before {
                break;
            }
            remove += 1;
            anchor = Some((link.seq - 1, link.prev_hash.into_owned()));
        }
        let Some((seq, hash)) = anchor else {
            return Ok(CutReport {
                segments_removed: 0,
                anchor_seq: None,
                cut_record: None,
            });
        };
        let mut detail = serde_json::Map::new();
        detail.insert("anchor_seq".into(), seq.into());
        detail.insert("anchor_hash".into(), hash.clone().into());
        detail.insert("before".into(), before.into());
        detail.insert("segments_removed".into(), remove.into());
        let entry = Entry::new(Actor::System, Action::AuditCut).detail(detail);
        let cut_seq = self.append(std::slice::from_ref(&entry))?[0];
        let a = Anchor {
            seq,
            hash,
            time: now_ms(),
        };
        files::write_json_atomic(&self.dir, files::ANCHOR_FILE, &a, true)
            .map_err(|e| self.error(format!("writing anchor.json: {e}")))?;
        for s in &segments[..remove] {
            std::fs::remove_file(&s.path)
                .map_err(|e| self.error(format!("removing {}: {e}", s.path.display())))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.error(format!("syncing the folder: {e}")))?;
        Ok(CutReport {
            segments_removed: remove,
            anchor_seq: Some(seq),
            cut_record: Some(cut_seq),
        })
    }
}

/// The writer thread: takes one job, then whatever else is queued (up to
/// [`MAX_GROUP`]), and makes the appends durable together.
pub(super) fn run(mut w: Writer, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.blocking_recv() {
        let mut entries = Vec::new();
        let mut replies = Vec::new();
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Append(e, reply) => {
                    entries.push(e);
                    replies.push(reply);
                }
                Job::Cut(before, reply) => {
                    flush(&mut w, &mut entries, &mut replies);
                    let _ = reply.send(w.cut(before));
                }
                Job::Copy(to, reply) => {
                    flush(&mut w, &mut entries, &mut replies);
                    let copied = copy_files(&w.dir, &to).map_err(|e| {
                        AuditError::new(&w.dir, format!("copying to {}: {e}", to.display()))
                    });
                    let _ = reply.send(copied);
                }
            }
            if entries.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        flush(&mut w, &mut entries, &mut replies);
    }
}

/// Copies the regular files of `from` (not `*.tmp`) into `to`, made here.
fn copy_files(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if e.file_type()?.is_file() && !name.to_string_lossy().ends_with(".tmp") {
            std::fs::copy(e.path(), to.join(&name))?;
        }
    }
    Ok(())
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;

fn flush(w: &mut Writer, entries: &mut Vec<Entry>, replies: &mut Vec<Reply>) {
    if entries.is_empty() {
        return;
    }
    match w.append(entries) {
        Ok(seqs) => {
            for (reply, seq) in replies.drain(..).zip(seqs) {
                let _ = reply.send(Ok(seq));
            }
        }
        Err(e) => {
            for reply in replies.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    entries.clear();
}
