//! Parquet, read column chunk by column chunk with the typed column readers
//! (not the row API, which answers the same error forever once a value does
//! not convert, and panics on some types).
//!
//! Rows are numbered from 1 across the file. A value that does not convert
//! (a string that is not UTF-8) is one bad row; a row group or column chunk
//! that cannot be read (damaged, an unknown codec) is reported once and the
//! reader goes on with the next row group. Snappy, gzip, LZ4 and zstd pages
//! are read. Columns under a repeated field (lists, maps) are not read.
//!
//! Before a row group is decoded, the pages of each column chunk read are
//! walked by `sightline_proto::parquet_guard` (bounded: page headers read
//! once, no page decoded): a page claiming more values than the row group
//! has rows, a dictionary larger than its bytes, a page over the decoded cap
//! or a chunk that does not tile into pages makes the row group unreadable,
//! reported once like any other, instead of a multi-gigabyte allocation or a
//! minutes-long crawl inside the parquet crate (60.1), whose page headers are
//! not public and are acted on before a caller can look.

use std::{fs::File, os::unix::fs::FileExt, panic::AssertUnwindSafe, path::Path, sync::Arc};

use parquet::{
    basic::{ConvertedType, LogicalType, TimeUnit, Type as PhysicalType},
    column::reader::{ColumnReader, ColumnReaderImpl},
    data_type::{ByteArray, DataType},
    file::metadata::{ColumnChunkMetaData, RowGroupMetaData},
    file::reader::{FileReader, RowGroupReader, SerializedFileReader},
    schema::types::ColumnDescriptor,
};
use sightline_proto::parquet_guard::{check_column_chunk, ChunkFacts};

use super::{
    rows::{missing_column, Cell, Row},
    Read,
};

/// Rows decoded per step from every column of a row group: bounds the memory
/// a row group costs (its size on disk does not).
const BATCH_ROWS: usize = 1024;

/// Reads `path` as Parquet, handing each row to `emit` (which answers false
/// once the replay has stopped). Row groups that end at or before row
/// `skip_through` are not read. Errors only when the file cannot be read at
/// all (no file, no readable footer, a required column missing).
pub(super) fn read_parquet(
    path: &Path,
    skip_through: u64,
    emit: &mut dyn FnMut(Read) -> bool,
) -> anyhow::Result<()> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let reader = SerializedFileReader::new(file.try_clone()?)
        .map_err(|e| anyhow::anyhow!("not a readable Parquet file: {e}"))?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let mut columns = Vec::new();
    for i in 0..schema.num_columns() {
        let c = schema.column(i);
        if c.max_rep_level() > 0 {
            tracing::warn!(column = %c.path().string(), "replay: a repeated column is not read");
        } else {
            columns.push((i, c.path().string(), c));
        }
    }
    let names: Vec<String> = columns.iter().map(|(_, n, _)| n.clone()).collect();
    if let Some(reason) = missing_column(&names) {
        anyhow::bail!("{reason}");
    }
    let mut first_row = 1u64;
    for g in 0..meta.num_row_groups() {
        let rows = meta.row_group(g).num_rows().max(0) as u64;
        let group = Group {
            index: g,
            first_row,
            rows,
        };
        first_row += rows;
        if group.first_row + rows <= skip_through + 1 {
            continue;
        }
        let mut stopped = false;
        let read = std::panic::catch_unwind(AssertUnwindSafe(|| {
            check_group(&file, file_len, meta.row_group(g), &columns).map_err(|e| (0, e))?;
            let rg = reader.get_row_group(g).map_err(|e| (0, e.to_string()))?;
            read_group(&*rg, &columns, &group, &mut |r| {
                stopped = !emit(r);
                !stopped
            })
        }));
        let failure = match read {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(panic) => Some((
                0,
                format!("the Parquet reader failed: {}", panic_text(&*panic)),
            )),
        };
        if stopped {
            return Ok(());
        }
        if let Some((done, reason)) = failure {
            let last = group.first_row + rows.saturating_sub(1);
            let at = group.first_row + done;
            let report = format!(
                "row group {g} (rows {}–{last}), from row {at}: {reason}; {} rows not read",
                group.first_row,
                rows - done
            );
            if !emit(Read::Unreadable(report)) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Walks the pages of each column chunk of the row group that is read
/// (`sightline_proto::parquet_guard`): the first that claims more than it
/// can hold is the reason the row group is not read.
fn check_group(
    file: &File,
    file_len: u64,
    rg: &RowGroupMetaData,
    columns: &[(usize, String, Arc<ColumnDescriptor>)],
) -> Result<(), String> {
    for (i, name, descr) in columns {
        let chunk = rg.column(*i);
        chunk_facts(chunk, descr, rg.num_rows(), file_len)
            .and_then(|facts| check_column_chunk(&mut |at, buf| file.read_at(buf, at), &facts))
            .map_err(|e| format!("column chunk `{name}`: {e}"))?;
    }
    Ok(())
}

/// What bounds a column chunk's pages, from the footer: values per page at
/// most the row group's rows (a column not repeated has one value a row;
/// repeated columns are not read here).
fn chunk_facts(
    chunk: &ColumnChunkMetaData,
    descr: &ColumnDescriptor,
    rows: i64,
    file_len: u64,
) -> Result<ChunkFacts, String> {
    let start = chunk
        .dictionary_page_offset()
        .unwrap_or(chunk.data_page_offset());
    let (Ok(start), Ok(len)) = (u64::try_from(start), u64::try_from(chunk.compressed_size()))
    else {
        return Err(format!(
            "a negative offset ({start}) or size ({}) in the footer",
            chunk.compressed_size()
        ));
    };
    Ok(ChunkFacts {
        start,
        len,
        file_len,
        max_values_per_page: rows.max(0) as u64,
        min_value_bits: min_value_bits(descr),
        compressed: chunk.compression() != parquet::basic::Compression::UNCOMPRESSED,
    })
}

/// The fewest bits a PLAIN value of the column's type takes.
fn min_value_bits(descr: &ColumnDescriptor) -> u64 {
    match descr.physical_type() {
        PhysicalType::BOOLEAN => 1,
        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 32,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 64,
        PhysicalType::INT96 => 96,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => (descr.type_length().max(1) as u64) * 8,
    }
}

/// Where a row group sits in the file.
struct Group {
    /// 0-based, as Parquet tools number row groups.
    index: usize,
    /// Its first row's number in the file (1-based).
    first_row: u64,
    rows: u64,
}

/// Reads one row group in batches; on failure, how many of its rows were
/// handed on and why the rest cannot be read.
fn read_group(
    rg: &dyn RowGroupReader,
    columns: &[(usize, String, Arc<ColumnDescriptor>)],
    group: &Group,
    emit: &mut dyn FnMut(Read) -> bool,
) -> Result<(), (u64, String)> {
    let mut readers = Vec::with_capacity(columns.len());
    for (i, name, _) in columns {
        let r = rg
            .get_column_reader(*i)
            .map_err(|e| (0, format!("column chunk `{name}`: {e}")))?;
        readers.push(r);
    }
    let mut done = 0u64;
    while done < group.rows {
        let want = (group.rows - done).min(BATCH_ROWS as u64) as usize;
        let mut batch = Vec::with_capacity(columns.len());
        for (reader, (_, name, descr)) in readers.iter_mut().zip(columns) {
            let cells = read_cells(reader, descr, want)
                .map_err(|e| (done, format!("column chunk `{name}`: {e}")))?;
            if cells.len() != want {
                return Err((
                    done,
                    format!(
                        "column chunk `{name}`: ends after {} of row group {}'s {} rows",
                        done + cells.len() as u64,
                        group.index,
                        group.rows
                    ),
                ));
            }
            batch.push(cells.into_iter());
        }
        for k in 0..want as u64 {
            let mut row: Result<Row, String> = Ok(Vec::with_capacity(columns.len()));
            for (cells, (_, name, _)) in batch.iter_mut().zip(columns) {
                match (cells.next(), &mut row) {
                    (Some(Ok(cell)), Ok(row)) => row.push((name.clone(), cell)),
                    (Some(Err(reason)), Ok(_)) => row = Err(format!("field `{name}`: {reason}")),
                    _ => {}
                }
            }
            let line = group.first_row + done + k;
            if !emit(Read::Row { line, row }) {
                return Ok(());
            }
        }
        done += want as u64;
    }
    Ok(())
}

type Cells = Vec<Result<Cell, String>>;

/// The next `want` values of a column (fewer at its end), each as a cell or
/// the reason it does not convert.
fn read_cells(
    reader: &mut ColumnReader,
    descr: &ColumnDescriptor,
    want: usize,
) -> parquet::errors::Result<Cells> {
    let max_def = descr.max_def_level();
    match reader {
        ColumnReader::BoolColumnReader(r) => {
            read_typed(r, max_def, want, |v| Ok(Cell::Str(v.to_string())))
        }
        ColumnReader::Int32ColumnReader(r) => read_typed(r, max_def, want, |v| {
            Ok(match descr.converted_type() {
                ConvertedType::UINT_32 => Cell::Int(v as u32 as i64),
                _ => Cell::Int(v as i64),
            })
        }),
        ColumnReader::Int64ColumnReader(r) => {
            read_typed(r, max_def, want, |v| Ok(int64_cell(descr, v)))
        }
        ColumnReader::Int96ColumnReader(r) => {
            read_typed(r, max_def, want, |v| Ok(Cell::Int(v.to_millis())))
        }
        ColumnReader::FloatColumnReader(r) => {
            read_typed(r, max_def, want, |v| Ok(Cell::Float(v as f64)))
        }
        ColumnReader::DoubleColumnReader(r) => read_typed(r, max_def, want, |v| Ok(Cell::Float(v))),
        ColumnReader::ByteArrayColumnReader(r) => {
            read_typed(r, max_def, want, |v| bytes_cell(descr, v))
        }
        ColumnReader::FixedLenByteArrayColumnReader(r) => {
            read_typed(r, max_def, want, |v| bytes_cell(descr, v.into()))
        }
    }
}

fn read_typed<T: DataType>(
    r: &mut ColumnReaderImpl<T>,
    max_def: i16,
    want: usize,
    cell: impl Fn(T::T) -> Result<Cell, String>,
) -> parquet::errors::Result<Cells> {
    let mut defs = Vec::with_capacity(want);
    let mut values = Vec::with_capacity(want);
    let mut records = 0;
    while records < want {
        let (n, _, _) = r.read_records(want - records, Some(&mut defs), None, &mut values)?;
        if n == 0 {
            break;
        }
        records += n;
    }
    let mut values = values.into_iter();
    if max_def == 0 {
        return Ok(values.map(&cell).collect());
    }
    Ok(defs
        .iter()
        .map(|&d| {
            if d < max_def {
                Ok(Cell::Null)
            } else {
                values
                    .next()
                    .map_or_else(|| Err("a value is missing".into()), &cell)
            }
        })
        .collect())
}

/// INT64: timestamps in micro- or nanoseconds become milliseconds.
fn int64_cell(descr: &ColumnDescriptor, v: i64) -> Cell {
    match (descr.logical_type_ref(), descr.converted_type()) {
        (Some(LogicalType::Timestamp(t)), _) if matches!(t.unit, TimeUnit::NANOS) => {
            Cell::Int(v.div_euclid(1_000_000))
        }
        (_, ConvertedType::TIMESTAMP_MICROS) => Cell::Int(v.div_euclid(1_000)),
        (_, ConvertedType::UINT_64) if v < 0 => Cell::Str((v as u64).to_string()),
        _ => Cell::Int(v),
    }
}

/// BYTE_ARRAY and FIXED_LEN_BYTE_ARRAY: decimals as their text, anything
/// else as UTF-8 text (a value that is not UTF-8 is a bad row).
fn bytes_cell(descr: &ColumnDescriptor, v: ByteArray) -> Result<Cell, String> {
    if descr.converted_type() == ConvertedType::DECIMAL
        && matches!(
            descr.physical_type(),
            PhysicalType::BYTE_ARRAY | PhysicalType::FIXED_LEN_BYTE_ARRAY
        )
    {
        let d =
            parquet::data_type::Decimal::from_bytes(v, descr.type_precision(), descr.type_scale());
        return Ok(Cell::Str(parquet::record::Field::Decimal(d).to_string()));
    }
    match std::str::from_utf8(v.data()) {
        Ok(s) => Ok(Cell::Str(s.to_string())),
        Err(e) => Err(format!(
            "not valid UTF-8 (byte {} of the value)",
            e.valid_up_to() + 1
        )),
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}
