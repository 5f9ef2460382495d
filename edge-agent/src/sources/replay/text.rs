//! The text formats: CSV (header row) and JSON Lines. Lines are numbered from
//! 1 as an editor numbers them (for CSV the header is line 1; a record that
//! spans lines is reported at the line it starts on).
//!
//! Bytes are read, not `String`s, so a line of invalid UTF-8 is one bad row
//! (reported, skipped), not the end of the file. No line or record is held in
//! memory beyond [`MAX_RECORD_BYTES`].

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
    rc::Rc,
};

use super::{
    rows::{missing_column, short, Cell, Row},
    Read, MAX_RECORD_BYTES,
};

/// The CSV reader's buffer: it reads this far ahead of the record it parses,
/// so a record is cut off at about `MAX_RECORD_BYTES` plus this.
const CSV_BUFFER_BYTES: usize = 64 * 1024;

/// Reads `path` as CSV, handing each record to `emit` (which answers false
/// once the replay has stopped). Errors only when the file cannot be read at
/// all (no file, no usable header).
pub(super) fn read_csv(path: &Path, emit: &mut dyn FnMut(Read) -> bool) -> anyhow::Result<()> {
    let since_record = Rc::new(std::cell::Cell::new(0usize));
    let file = Bounded {
        inner: File::open(path)?,
        since_record: since_record.clone(),
    };
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(CSV_BUFFER_BYTES)
        .from_reader(file);
    let headers = rdr
        .byte_headers()
        .map_err(|e| anyhow::anyhow!("the header (line 1): {e}"))?
        .iter()
        .enumerate()
        .map(|(i, h)| match std::str::from_utf8(h) {
            Ok(h) => Ok(h.trim().to_string()),
            Err(_) => Err(anyhow::anyhow!(
                "the header (line 1): column {} is not valid UTF-8",
                i + 1
            )),
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    if let Some(reason) = missing_column(&headers) {
        anyhow::bail!("the header (line 1): {reason}");
    }
    let mut record = csv::ByteRecord::new();
    loop {
        since_record.set(0);
        let at = rdr.position().clone();
        match rdr.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = record.position().map_or(at.line(), |p| p.line());
                if !emit(Read::Row {
                    line,
                    row: csv_row(&headers, &record),
                }) {
                    return Ok(());
                }
            }
            Err(e) => {
                let line = e.position().map_or(at.line(), |p| p.line());
                let stuck = rdr.position().byte() == at.byte();
                if matches!(e.kind(), csv::ErrorKind::Io(_)) || stuck {
                    emit(Read::Unreadable(format!(
                        "line {line} on: {e}; the rest of the file is not read"
                    )));
                    return Ok(());
                }
                if !emit(Read::Row {
                    line,
                    row: Err(format!("unreadable CSV: {e}")),
                }) {
                    return Ok(());
                }
            }
        }
    }
}

fn csv_row(headers: &[String], record: &csv::ByteRecord) -> Result<Row, String> {
    if record.len() != headers.len() {
        return Err(format!(
            "has {} fields, the header has {}",
            record.len(),
            headers.len()
        ));
    }
    headers
        .iter()
        .zip(record.iter())
        .map(|(h, v)| match std::str::from_utf8(v) {
            Ok(s) => Ok((h.clone(), Cell::Str(s.to_string()))),
            Err(e) => Err(format!(
                "field `{h}`: not valid UTF-8 (byte {} of the field)",
                e.valid_up_to() + 1
            )),
        })
        .collect()
}

/// A reader that refuses to go on once more than [`MAX_RECORD_BYTES`] (and
/// the CSV reader's read-ahead) have been read since the last record ended —
/// an unclosed quote would otherwise make the rest of the file one record.
struct Bounded<R> {
    inner: R,
    /// Bytes handed out since the caller last reset it (at each record).
    since_record: Rc<std::cell::Cell<usize>>,
}

impl<R: io::Read> io::Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let so_far = self.since_record.get();
        if so_far > MAX_RECORD_BYTES + CSV_BUFFER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a record longer than {MAX_RECORD_BYTES} bytes (an unclosed quote?)"),
            ));
        }
        let n = self.inner.read(buf)?;
        self.since_record.set(so_far + n);
        Ok(n)
    }
}

/// Reads `path` as JSON Lines (one object per line; blank lines are skipped).
pub(super) fn read_jsonl(path: &Path, emit: &mut dyn FnMut(Read) -> bool) -> anyhow::Result<()> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        line += 1;
        let row = match read_line_bounded(&mut reader, &mut buf) {
            Ok(None) => return Ok(()),
            Ok(Some(false)) => Err(format!(
                "longer than {MAX_RECORD_BYTES} bytes; the line is skipped"
            )),
            Ok(Some(true)) => match std::str::from_utf8(&buf) {
                Err(e) => Err(format!(
                    "not valid UTF-8 (byte {} of the line)",
                    e.valid_up_to() + 1
                )),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => json_row(text),
            },
            Err(e) => {
                emit(Read::Unreadable(format!(
                    "line {line} on: {e}; the rest of the file is not read"
                )));
                return Ok(());
            }
        };
        if !emit(Read::Row { line, row }) {
            return Ok(());
        }
    }
}

fn json_row(text: &str) -> Result<Row, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map
            .into_iter()
            .map(|(k, v)| {
                let cell = match v {
                    serde_json::Value::Null => Cell::Null,
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => Cell::Int(i),
                        None => Cell::Float(n.as_f64().unwrap_or(f64::NAN)),
                    },
                    serde_json::Value::String(s) => Cell::Str(s),
                    other => Cell::Str(other.to_string()),
                };
                (k, cell)
            })
            .collect()),
        Ok(other) => Err(format!(
            "expected a JSON object, got {}",
            short(&other.to_string())
        )),
        // serde_json says "at line 1 column N"; the line is ours to give.
        Err(e) => Err(format!(
            "invalid JSON at column {}: {}",
            e.column(),
            e.to_string()
                .rsplit_once(" at line ")
                .map_or_else(|| e.to_string(), |(what, _)| what.to_string())
        )),
    }
}

/// Reads one line (without its `\n` or `\r\n`) into `buf`: `None` at the end
/// of the file, `Some(false)` when the line was longer than
/// [`MAX_RECORD_BYTES`] (it is read past, `buf` is left empty).
fn read_line_bounded(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if !too_long {
            if buf.len() + take > MAX_RECORD_BYTES + 2 {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..take]);
            }
        }
        reader.consume(take);
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(!too_long))
}
