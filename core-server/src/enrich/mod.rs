//! Dataset B: the static table describing each location, joined onto events.
//!
//! Loaded from CSV (with a header row) or Parquet (uncompressed, snappy,
//! gzip, LZ4 or zstd) into an immutable in-memory table, swapped atomically
//! on reload (SIGHUP, `Admin.ReloadLocations`, `POST /admin/reload-locations`).
//! A bad file (invalid UTF-8, a damaged or truncated Parquet file included) is
//! refused with the line (CSV) or row (Parquet) and the reason, and the table
//! in use stays. Required columns: `geographical_location_oid` (positive
//! integer, unique) and `geographical_location` (non-empty name); every other
//! column is kept in `Location.extra`.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use sightline_proto::v1::{JoinedEvent, Location};

/// An immutable Dataset B.
#[derive(Debug, Default)]
pub struct LocationTable {
    pub rows: HashMap<i64, Location>,
    /// Where it came from (empty when none was configured).
    pub source: String,
    /// Each row's [`Self::join_suffix`], encoded at the first call (a live
    /// `Subscribe` sends it after every event of its location).
    suffixes: OnceLock<HashMap<i64, Bytes>>,
}

/// `JoinedEvent`'s field numbers of what a join sets.
const LOCATION_MATCHED_FIELD: u32 = 6;
const LOCATION_FIELD: u32 = 7;
/// `location_matched = false` on the wire: its key (field 6, varint) and 0.
const UNMATCHED: [u8; 2] = [(LOCATION_MATCHED_FIELD << 3) as u8, 0];

/// Why a Dataset B file was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Dataset B {path}{}: {reason}", .line.map(|l| format!(", {} {l}", .unit)).unwrap_or_default())]
pub struct LoadError {
    pub path: String,
    /// Line (CSV, header = line 1) or row (Parquet, first row = 1).
    pub line: Option<u64>,
    /// What `line` counts: "line" (CSV) or "row" (Parquet).
    pub unit: &'static str,
    pub reason: String,
}

/// The longest reason quoted from the Parquet reader (it can quote a whole
/// value's bytes).
const MAX_REASON_CHARS: usize = 300;

const OID: &str = "geographical_location_oid";
const NAME: &str = "geographical_location";

impl LocationTable {
    /// Loads a CSV or Parquet file (by extension).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let display = path.display().to_string();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let unit = if ext == "csv" { "line" } else { "row" };
        let err = |line: Option<u64>, reason: String| LoadError {
            path: display.clone(),
            line,
            unit,
            reason,
        };
        let rows: Vec<(u64, Vec<(String, String)>)> = match ext.as_str() {
            "csv" => read_csv(path).map_err(|(l, r)| err(l, r))?,
            "parquet" | "pq" => read_parquet(path).map_err(|(l, r)| err(l, r))?,
            other => {
                return Err(err(
                    None,
                    format!("unknown file type {other:?}: expected .csv or .parquet"),
                ))
            }
        };
        let mut table = HashMap::new();
        let mut first_line: HashMap<i64, u64> = HashMap::new();
        for (line, cells) in rows {
            let mut oid = None;
            let mut name = None;
            let mut extra = HashMap::new();
            for (k, v) in cells {
                match k.as_str() {
                    OID => oid = Some(v),
                    NAME => name = Some(v),
                    _ => {
                        extra.insert(k, v);
                    }
                }
            }
            let oid_text = oid.ok_or_else(|| err(Some(line), format!("`{OID}` is missing")))?;
            let oid: i64 = oid_text
                .trim()
                .parse()
                .map_err(|_| err(Some(line), format!("`{OID}`: not an integer: {oid_text:?}")))?;
            if oid <= 0 {
                return Err(err(
                    Some(line),
                    format!("`{OID}`: must be positive, got {oid}"),
                ));
            }
            let name = name.unwrap_or_default();
            if name.trim().is_empty() {
                return Err(err(Some(line), format!("`{NAME}`: must not be empty")));
            }
            if let Some(first) = first_line.insert(oid, line) {
                return Err(err(
                    Some(line),
                    format!("`{OID}` {oid} appears twice (first on {unit} {first})"),
                ));
            }
            table.insert(
                oid,
                Location {
                    geographical_location_oid: oid,
                    geographical_location: name,
                    extra,
                },
            );
        }
        if table.is_empty() {
            return Err(err(None, "has no rows".into()));
        }
        Ok(Self::new(table, display))
    }

    pub fn new(rows: HashMap<i64, Location>, source: String) -> Self {
        Self {
            rows,
            source,
            suffixes: OnceLock::new(),
        }
    }

    pub fn get(&self, oid: i64) -> Option<&Location> {
        self.rows.get(&oid)
    }

    /// Fills `location` and `location_matched` of an event from this table.
    pub fn join(&self, ev: &mut JoinedEvent) {
        let oid = ev
            .detection
            .as_ref()
            .map(|d| d.geographical_location_oid)
            .unwrap_or(0);
        ev.location = self.get(oid).cloned();
        ev.location_matched = ev.location.is_some();
    }

    /// What [`Self::join`] sets, as protobuf fields to append to an event's
    /// encoding: `location_matched` and, when matched, `location`. For a
    /// singular field the last one on the wire wins, so this overrides a
    /// `location_matched` the event already carries; the event must carry
    /// no `location` (the live hub's carry none).
    pub fn join_suffix(&self, geographical_location_oid: i64) -> Bytes {
        let suffixes = self.suffixes.get_or_init(|| {
            self.rows
                .iter()
                .map(|(oid, row)| {
                    let mut buf = Vec::with_capacity(prost::Message::encoded_len(row) + 16);
                    prost::encoding::bool::encode(LOCATION_MATCHED_FIELD, &true, &mut buf);
                    prost::encoding::message::encode(LOCATION_FIELD, row, &mut buf);
                    (*oid, Bytes::from(buf))
                })
                .collect()
        });
        suffixes
            .get(&geographical_location_oid)
            .cloned()
            .unwrap_or_else(|| Bytes::from_static(&UNMATCHED))
    }

    /// [`Self::join`] for each event.
    pub fn join_all(&self, events: &mut [JoinedEvent]) {
        for e in events {
            self.join(e);
        }
    }
}

type Rows = Vec<(u64, Vec<(String, String)>)>;

fn read_csv(path: &Path) -> Result<Rows, (Option<u64>, String)> {
    let mut rdr = csv::ReaderBuilder::new()
        .from_path(path)
        .map_err(|e| (None, format!("cannot open: {e}")))?;
    let headers: Vec<String> = rdr
        .byte_headers()
        .map_err(|e| (Some(1), format!("unreadable header: {e}")))?
        .iter()
        .enumerate()
        .map(|(i, h)| {
            std::str::from_utf8(h)
                .map(|h| h.trim().to_string())
                .map_err(|_| (Some(1), format!("header column {}: not valid UTF-8", i + 1)))
        })
        .collect::<Result<_, _>>()?;
    for required in [OID, NAME] {
        if !headers.iter().any(|h| h == required) {
            return Err((
                Some(1),
                format!("the header has no `{required}` column (found {headers:?})"),
            ));
        }
    }
    let mut out = Vec::new();
    for rec in rdr.byte_records() {
        let rec = rec.map_err(|e| {
            (
                e.position().map(|p| p.line()),
                format!("unreadable row: {e}"),
            )
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let cells = headers
            .iter()
            .zip(rec.iter())
            .map(|(h, v)| match std::str::from_utf8(v) {
                Ok(v) => Ok((h.clone(), v.to_string())),
                Err(e) => Err((
                    Some(line),
                    format!(
                        "`{h}`: not valid UTF-8 (byte {} of the field)",
                        e.valid_up_to() + 1
                    ),
                )),
            })
            .collect::<Result<_, _>>()?;
        out.push((line, cells));
    }
    Ok(out)
}

/// Reads a Parquet file (any of the codecs snappy, gzip, LZ4, zstd). A
/// damaged file is refused at the first row that does not read; a panic in
/// the Parquet reader (some damage and some types make it panic) is a refusal
/// too, never the end of the process.
fn read_parquet(path: &Path) -> Result<Rows, (Option<u64>, String)> {
    let read = std::panic::catch_unwind(|| read_parquet_rows(path));
    match read {
        Ok(rows) => rows.map_err(|(line, reason)| (line, shorten(reason))),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err((None, shorten(format!("the Parquet reader failed: {what}"))))
        }
    }
}

fn shorten(reason: String) -> String {
    if reason.chars().count() <= MAX_REASON_CHARS {
        return reason;
    }
    let mut out: String = reason.chars().take(MAX_REASON_CHARS).collect();
    out.push('…');
    out
}

fn read_parquet_rows(path: &Path) -> Result<Rows, (Option<u64>, String)> {
    use parquet::{
        file::reader::{FileReader, SerializedFileReader},
        record::Field,
    };
    let file = File::open(path).map_err(|e| (None, format!("cannot open: {e}")))?;
    let file_len = file
        .metadata()
        .map_err(|e| (None, format!("cannot open: {e}")))?
        .len();
    let reader = SerializedFileReader::new(
        file.try_clone()
            .map_err(|e| (None, format!("cannot open: {e}")))?,
    )
    .map_err(|e| (None, format!("not a Parquet file: {e}")))?;
    check_pages(&file, file_len, reader.metadata())?;
    let fields: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    for required in [OID, NAME] {
        if !fields.iter().any(|f| f == required) {
            return Err((None, format!("no `{required}` column (found {fields:?})")));
        }
    }
    let mut out = Vec::new();
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| (None, format!("unreadable: {e}")))?;
    for (i, row) in iter.enumerate() {
        let line = i as u64 + 1;
        let row = row.map_err(|e| (Some(line), format!("unreadable row: {e}")))?;
        out.push((
            line,
            row.get_column_iter()
                .map(|(k, v)| {
                    let text = match v {
                        Field::Str(s) => s.clone(),
                        Field::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect(),
        ));
    }
    Ok(out)
}

/// Walks the pages of every column chunk (`sightline_proto::parquet_guard`)
/// before the row reader decodes any: the parquet crate (60.1) sizes buffers
/// from page headers it keeps private (a dictionary page claiming a billion
/// values is a 30 GB allocation, which aborts the core past `catch_unwind`)
/// and crawls for seconds over a damaged chunk's headers. The first chunk that
/// claims more than it can hold refuses the file, naming it and the row group's
/// first row.
fn check_pages(
    file: &File,
    file_len: u64,
    meta: &parquet::file::metadata::ParquetMetaData,
) -> Result<(), (Option<u64>, String)> {
    use parquet::basic::{Compression, Type as PhysicalType};
    use sightline_proto::parquet_guard::{check_column_chunk, ChunkFacts};
    use std::os::unix::fs::FileExt;
    let mut first_row = 1u64;
    for (g, rg) in meta.row_groups().iter().enumerate() {
        let at = Some(first_row);
        first_row = first_row.saturating_add(rg.num_rows().max(0) as u64);
        for chunk in rg.columns() {
            let descr = chunk.column_descr();
            let name = descr.path().string();
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            let facts = match (u64::try_from(start), u64::try_from(chunk.compressed_size())) {
                (Ok(start), Ok(len)) => ChunkFacts {
                    start,
                    len,
                    file_len,
                    // A column that is not repeated has one value (maybe
                    // null) a row; a repeated one, its chunk's value count.
                    max_values_per_page: if descr.max_rep_level() == 0 {
                        rg.num_rows()
                    } else {
                        chunk.num_values()
                    }
                    .max(0) as u64,
                    // The fewest bits a PLAIN value of the type takes.
                    min_value_bits: match descr.physical_type() {
                        PhysicalType::BOOLEAN => 1,
                        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 32,
                        PhysicalType::INT64 | PhysicalType::DOUBLE => 64,
                        PhysicalType::INT96 => 96,
                        PhysicalType::FIXED_LEN_BYTE_ARRAY => {
                            (descr.type_length().max(1) as u64) * 8
                        }
                    },
                    compressed: chunk.compression() != Compression::UNCOMPRESSED,
                },
                _ => {
                    return Err((
                        at,
                        format!(
                            "row group {g}, column chunk `{name}`: a negative offset ({start}) \
                             or size ({}) in the footer",
                            chunk.compressed_size()
                        ),
                    ))
                }
            };
            check_column_chunk(&mut |off, buf| file.read_at(buf, off), &facts)
                .map_err(|e| (at, format!("row group {g}, column chunk `{name}`: {e}")))?;
        }
    }
    Ok(())
}

/// The table in use, swappable at run time.
pub struct Locations {
    table: ArcSwap<LocationTable>,
    path: Mutex<Option<PathBuf>>,
}

impl Locations {
    /// Loads `path` (when given) or starts with an empty table.
    pub fn new(path: Option<PathBuf>) -> Result<Self, LoadError> {
        let table = match &path {
            Some(p) => LocationTable::load(p)?,
            None => LocationTable::default(),
        };
        Ok(Self {
            table: ArcSwap::from_pointee(table),
            path: Mutex::new(path),
        })
    }

    /// The file the table in use was loaded from, if any.
    pub fn path(&self) -> Option<PathBuf> {
        self.path.lock().unwrap().clone()
    }

    /// The table in use now.
    pub fn current(&self) -> Arc<LocationTable> {
        self.table.load_full()
    }

    /// Loads `path` (or the configured file) and swaps it in; on error the
    /// table in use stays. Blocks: call from a blocking thread.
    pub fn reload(&self, path: Option<PathBuf>) -> Result<(usize, String), LoadError> {
        let path = match path.or_else(|| self.path.lock().unwrap().clone()) {
            Some(p) => p,
            None => {
                return Err(LoadError {
                    path: String::new(),
                    line: None,
                    unit: "line",
                    reason: "no file configured (`locations.path`) and none given".into(),
                })
            }
        };
        let table = LocationTable::load(&path)?;
        let n = table.rows.len();
        let source = table.source.clone();
        self.table.store(Arc::new(table));
        *self.path.lock().unwrap() = Some(path);
        tracing::info!(rows = n, path = %source, "Dataset B loaded");
        Ok((n, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_good_csv_loads_with_its_extra_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "b.csv", "geographical_location_oid,geographical_location,region\n1,Gate 1,North\n2,Gate 2,South\n");
        let t = LocationTable::load(&p).unwrap();
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.get(2).unwrap().extra["region"], "South");
    }

    #[test]
    fn an_event_encoded_without_its_row_then_its_join_suffix_decodes_as_the_joined_event() {
        use prost::Message;
        use sightline_proto::v1::Detection;
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "b.csv", "geographical_location_oid,geographical_location,region,lat\n1,Gate 1,North,51.5\n2,Gate 2,South,48.1\n");
        let t = LocationTable::load(&p).unwrap();
        for (loc, matched_at_commit) in [(1, true), (2, false), (9, true), (9, false)] {
            // As the hub holds it: `location_matched` from the table of its
            // commit (possibly another one), no row.
            let ev = JoinedEvent {
                detection: Some(Detection {
                    geographical_location_oid: loc,
                    item_name: "person".into(),
                    detection_oid: Some(77),
                    ..Default::default()
                }),
                agent_id: "a".into(),
                seq: 5,
                committed_ms: 1_700_000_000_000,
                location_matched: matched_at_commit,
                ..Default::default()
            };
            let mut wire = ev.encode_to_vec();
            wire.extend_from_slice(&t.join_suffix(loc));
            let mut joined = ev.clone();
            t.join(&mut joined);
            assert_eq!(
                JoinedEvent::decode(&wire[..]).unwrap(),
                joined,
                "location {loc}"
            );
        }
    }

    #[test]
    fn a_bad_file_is_refused_with_line_and_reason_and_the_old_table_stays() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            &dir,
            "good.csv",
            "geographical_location_oid,geographical_location\n1,Gate 1\n",
        );
        let locs = Locations::new(Some(good)).unwrap();
        let cases = [
            (
                "geographical_location_oid,geographical_location\n1,A\nx,B\n",
                "line 3",
                "not an integer",
            ),
            (
                "geographical_location_oid,geographical_location\n1,A\n1,B\n",
                "line 3",
                "appears twice",
            ),
            (
                "geographical_location_oid,geographical_location\n1,\n",
                "line 2",
                "must not be empty",
            ),
            (
                "oid,name\n1,A\n",
                "line 1",
                "no `geographical_location_oid` column",
            ),
            (
                "geographical_location_oid,geographical_location\n",
                "",
                "has no rows",
            ),
            (
                "geographical_location_oid,geographical_location\n1,A,extra\n",
                "line 2",
                "unreadable row",
            ),
        ];
        for (i, (text, line, reason)) in cases.iter().enumerate() {
            let p = write(&dir, &format!("bad{i}.csv"), text);
            let e = locs.reload(Some(p)).unwrap_err().to_string();
            assert!(e.contains(line) && e.contains(reason), "{e}");
            assert_eq!(
                locs.current().get(1).unwrap().geographical_location,
                "Gate 1"
            );
        }
    }

    /// Writes Dataset B rows (oid, name bytes) as Parquet in row groups of 2.
    fn write_parquet(path: &Path, codec: parquet::basic::Compression, rows: &[(i64, &[u8])]) {
        use parquet::{
            data_type::{ByteArray, ByteArrayType, Int64Type},
            file::{properties::WriterProperties, writer::SerializedFileWriter},
            schema::parser::parse_message_type,
        };
        let schema = Arc::new(
            parse_message_type(
                "message dataset_b {
                    required int64 geographical_location_oid;
                    required binary geographical_location (UTF8);
                }",
            )
            .unwrap(),
        );
        let props = Arc::new(WriterProperties::builder().set_compression(codec).build());
        let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
        for group in rows.chunks(2) {
            let mut rg = w.next_row_group().unwrap();
            let mut c = rg.next_column().unwrap().unwrap();
            let oids: Vec<i64> = group.iter().map(|r| r.0).collect();
            c.typed::<Int64Type>()
                .write_batch(&oids, None, None)
                .unwrap();
            c.close().unwrap();
            let mut c = rg.next_column().unwrap().unwrap();
            let names: Vec<ByteArray> = group.iter().map(|r| r.1.to_vec().into()).collect();
            c.typed::<ByteArrayType>()
                .write_batch(&names, None, None)
                .unwrap();
            c.close().unwrap();
            rg.close().unwrap();
        }
        w.close().unwrap();
    }

    const GATES: &[(i64, &[u8])] = &[(1, b"Gate 1"), (2, b"Gate 2"), (3, b"Gate 3")];

    #[test]
    fn compressed_dataset_b_parquet_loads_with_every_codec() {
        use parquet::basic::{Compression, GzipLevel, ZstdLevel};
        let dir = tempfile::tempdir().unwrap();
        for (name, codec) in [
            ("snappy", Compression::SNAPPY),
            ("gzip", Compression::GZIP(GzipLevel::default())),
            ("lz4", Compression::LZ4),
            ("lz4_raw", Compression::LZ4_RAW),
            ("zstd", Compression::ZSTD(ZstdLevel::default())),
        ] {
            let p = dir.path().join(format!("{name}.parquet"));
            write_parquet(&p, codec, GATES);
            let t = LocationTable::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.rows.len(), 3, "{name}");
            assert_eq!(t.get(3).unwrap().geographical_location, "Gate 3", "{name}");
        }
    }

    #[test]
    fn a_bad_dataset_b_parquet_is_refused_with_a_named_error_and_the_old_table_stays() {
        use parquet::{
            basic::{Compression, ZstdLevel},
            file::reader::{FileReader, SerializedFileReader},
        };
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            &dir,
            "good.csv",
            "geographical_location_oid,geographical_location\n1,Gate 1\n",
        );
        let locs = Locations::new(Some(good)).unwrap();
        let zstd = Compression::ZSTD(ZstdLevel::default());

        let bad_utf8 = dir.path().join("utf8.parquet");
        write_parquet(&bad_utf8, zstd, &[(1, b"A"), (2, b"caf\xe9")]);

        let damaged = dir.path().join("damaged.parquet");
        write_parquet(&damaged, zstd, GATES);
        let (start, end) = {
            let r = SerializedFileReader::new(File::open(&damaged).unwrap()).unwrap();
            let cols = r.metadata().row_group(1).columns();
            let start = cols.iter().map(|c| c.byte_range().0).min().unwrap();
            let end = cols
                .iter()
                .map(|c| c.byte_range().0 + c.byte_range().1)
                .max()
                .unwrap();
            (start as usize, end as usize)
        };
        let mut bytes = std::fs::read(&damaged).unwrap();
        bytes[start..end].fill(0xff);
        std::fs::write(&damaged, &bytes).unwrap();

        let cut = dir.path().join("cut.parquet");
        write_parquet(&cut, zstd, GATES);
        let bytes = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

        for (p, needle) in [
            (&bad_utf8, "utf8.parquet, row 2: unreadable row"),
            (
                &damaged,
                "damaged.parquet, row 3: row group 1, column chunk `geographical_location_oid`: page 0",
            ),
            (&cut, "cut.parquet: not a Parquet file"),
        ] {
            let e = locs.reload(Some(p.clone())).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
            assert!(e.chars().count() < MAX_REASON_CHARS + 100, "{e}");
            assert_eq!(
                locs.current().get(1).unwrap().geographical_location,
                "Gate 1"
            );
        }
    }

    /// Rewrites the one-byte `num_values` of column `col`'s dictionary page
    /// in row group `g` from `from` to `to` (both under 64), leaving every
    /// length as it was.
    fn claim_dictionary_values(path: &Path, g: usize, col: usize, from: u8, to: u8) {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let at = {
            let r = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
            let c = r.metadata().row_group(g).column(col).clone();
            c.dictionary_page_offset().expect("a dictionary page") as usize
        };
        let mut bytes = std::fs::read(path).unwrap();
        // Type and sizes (i32 fields: a field byte and a varint each), then
        // the dictionary page header, whose field 1 is `num_values`.
        let mut i = at;
        while bytes[i] & 0x0f == 5 {
            i += 1;
            while bytes[i] & 0x80 != 0 {
                i += 1;
            }
            i += 1;
        }
        assert_eq!(bytes[i] & 0x0f, 12, "the dictionary page header follows");
        assert_eq!(bytes[i + 1], 0x15, "num_values is its field 1, an i32");
        assert_eq!(bytes[i + 2], from * 2, "num_values is {from}");
        bytes[i + 2] = to * 2;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_dataset_b_file_claiming_a_huge_dictionary_is_refused_and_the_table_stays() {
        use parquet::basic::Compression;
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            &dir,
            "good.csv",
            "geographical_location_oid,geographical_location\n1,Gate 1\n",
        );
        let locs = Locations::new(Some(good)).unwrap();

        // Row group 1 holds one name, "Gate 3": a dictionary of 1 value in
        // 10 bytes, made to claim 63.
        let made = dir.path().join("made.parquet");
        write_parquet(&made, Compression::UNCOMPRESSED, GATES);
        claim_dictionary_values(&made, 1, 1, 1, 63);
        // Found by fuzzing: an 863-byte file whose dictionary page made the
        // parquet crate ask for 32 GB (the core aborted).
        let found = dir.path().join("found.parquet");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/regressions/dataset_b_parquet-huge-alloc"),
            &found,
        )
        .unwrap();

        for (p, needle) in [
            (
                &made,
                "made.parquet, row 3: row group 1, column chunk `geographical_location`: page 0 \
                 at byte",
            ),
            (&found, "found.parquet"),
        ] {
            let t = std::time::Instant::now();
            let e = locs.reload(Some(p.clone())).unwrap_err().to_string();
            assert!(t.elapsed() < std::time::Duration::from_secs(1), "{e}");
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
            assert_eq!(
                locs.current().get(1).unwrap().geographical_location,
                "Gate 1"
            );
        }
        let e = locs.reload(Some(made)).unwrap_err().to_string();
        assert!(
            e.contains("a dictionary of 63 values in 10 bytes (at most 2 fit)"),
            "{e}"
        );
    }

    #[test]
    fn a_dataset_b_csv_with_invalid_utf8_is_refused_with_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            &dir,
            "good.csv",
            "geographical_location_oid,geographical_location\n1,Gate 1\n",
        );
        let locs = Locations::new(Some(good)).unwrap();
        for (i, (bytes, needle)) in [
            (
                &b"geographical_location_oid,geographical_location\n1,A\n2,caf\xe9\n"[..],
                "line 3: `geographical_location`: not valid UTF-8 (byte 4 of the field)",
            ),
            (
                &b"geographical_location_oid,geographical_location,r\xe9gion\n1,A,N\n"[..],
                "line 1: header column 3: not valid UTF-8",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let p = dir.path().join(format!("bad{i}.csv"));
            std::fs::write(&p, bytes).unwrap();
            let e = locs.reload(Some(p)).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
            assert_eq!(
                locs.current().get(1).unwrap().geographical_location,
                "Gate 1"
            );
        }
    }
}
