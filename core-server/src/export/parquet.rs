//! One hour of joined events as one Parquet file: the schema, and a writer
//! that buffers a row group's columns and writes them with the parquet
//! crate's column writers.
//!
//! # Schema (`sightline_event`)
//!
//! | column | Parquet type | from |
//! | --- | --- | --- |
//! | `detection_oid`, `geographical_location_oid`, `video_camera_oid` | required INT64 | Dataset A |
//! | `item_name` | required BYTE_ARRAY (STRING) | Dataset A |
//! | `timestamp_detected` | required INT64 (TIMESTAMP(MICROS, isAdjustedToUTC=true)) | Dataset A (ms × 1000) |
//! | `location_matched` | required BOOLEAN | whether Dataset B has the location |
//! | `geographical_location` | optional BYTE_ARRAY (STRING) | Dataset B (null when unmatched) |
//! | every other Dataset B column, sorted by name | optional BYTE_ARRAY (STRING) | Dataset B; a name taken by another column gets `location_` in front |
//! | `confidence` | optional FLOAT | the detector (null when not given) |
//! | `box_x`, `box_y`, `box_width`, `box_height` | optional FLOAT | the detector's box (null when none) |
//! | `attributes` | required MAP<STRING, STRING> | the detector's attributes |
//! | `agent_id` | required BYTE_ARRAY (STRING) | the agent that published it |
//! | `seq` | required INT64 | the agent's seq |
//! | `accepted_at`, `committed_at` | required INT64 (TIMESTAMP(MICROS, UTC)) | when the agent accepted it, the core committed it |
//! | `snapshot_key`, `thumbnail_key`, `clip_key` | optional BYTE_ARRAY (STRING) | footage attached so far: its object key in the media store (`media/<kind>/<sha[0..2]>/<sha>.<ext>`, see [`crate::media`]); null when none |
//!
//! Rows are in key order (detection time, then det_oid), in row groups of
//! [`ROW_GROUP_ROWS`], zstd-compressed, with page statistics (a reader
//! skips row groups and pages by time). The partition columns (`date`,
//! `hour`) are in the path, not in the file, as Hive lays them out.

use std::{
    collections::{BTreeSet, HashMap},
    io::Write,
    sync::Arc,
};

use parquet::{
    basic::{Compression, LogicalType, Repetition, TimeUnit, Type as Physical, ZstdLevel},
    data_type::{BoolType, ByteArray, ByteArrayType, DataType, FloatType, Int64Type},
    errors::ParquetError,
    file::{
        metadata::KeyValue,
        properties::WriterProperties,
        writer::{SerializedFileWriter, SerializedRowGroupWriter},
    },
    schema::types::{Type, TypePtr},
};
use sightline_proto::v1::JoinedEvent;

use crate::{enrich::LocationTable, media};

/// Rows in one row group: scans read whole row groups in parallel (DuckDB,
/// Spark split a file by row group), and statistics skip them by time. A
/// group is held in memory, column by column, until it is written: about
/// 100 bytes a row, so ~50 MiB for a full group.
pub const ROW_GROUP_ROWS: usize = 512 * 1024;

/// zstd level 1: about as fast as snappy here, and a third smaller.
const ZSTD_LEVEL: i32 = 1;

/// The fixed columns, before the Dataset B ones.
const HEAD: &[&str] = &[
    "detection_oid",
    "geographical_location_oid",
    "video_camera_oid",
    "item_name",
    "timestamp_detected",
    "location_matched",
    "geographical_location",
];
/// The fixed columns after the Dataset B ones.
const TAIL: &[&str] = &[
    "confidence",
    "box_x",
    "box_y",
    "box_width",
    "box_height",
    "attributes",
    "agent_id",
    "seq",
    "accepted_at",
    "committed_at",
    "snapshot_key",
    "thumbnail_key",
    "clip_key",
];

/// The footage kinds with a column, in column order.
const MEDIA_KINDS: [media::Kind; 3] = [
    media::Kind::Snapshot,
    media::Kind::Thumbnail,
    media::Kind::Clip,
];

/// The export's schema for one Dataset B: which extra columns it has.
#[derive(Debug, Clone)]
pub struct ExportSchema {
    /// Dataset B's other columns: (name in Dataset B, column name).
    extras: Vec<(String, String)>,
    schema: TypePtr,
}

impl ExportSchema {
    /// The schema for the Dataset B loaded now.
    pub fn new(locations: &LocationTable) -> Self {
        let names: BTreeSet<&String> = locations
            .rows
            .values()
            .flat_map(|l| l.extra.keys())
            .collect();
        let extras: Vec<(String, String)> = names
            .into_iter()
            .map(|n| {
                let col = if HEAD.contains(&n.as_str()) || TAIL.contains(&n.as_str()) {
                    format!("location_{n}")
                } else {
                    n.clone()
                };
                (n.clone(), col)
            })
            .collect();
        let i64_col = |name: &str, logical: Option<LogicalType>| {
            prim(name, Physical::INT64, Repetition::REQUIRED, logical)
        };
        let micros = || Some(LogicalType::timestamp(true, TimeUnit::MICROS));
        let string =
            |name: &str, rep| prim(name, Physical::BYTE_ARRAY, rep, Some(LogicalType::String));
        let float = |name: &str| prim(name, Physical::FLOAT, Repetition::OPTIONAL, None);
        let mut fields = vec![
            i64_col("detection_oid", None),
            i64_col("geographical_location_oid", None),
            i64_col("video_camera_oid", None),
            string("item_name", Repetition::REQUIRED),
            i64_col("timestamp_detected", micros()),
            prim(
                "location_matched",
                Physical::BOOLEAN,
                Repetition::REQUIRED,
                None,
            ),
            string("geographical_location", Repetition::OPTIONAL),
        ];
        fields.extend(extras.iter().map(|(_, c)| string(c, Repetition::OPTIONAL)));
        fields.extend([
            float("confidence"),
            float("box_x"),
            float("box_y"),
            float("box_width"),
            float("box_height"),
        ]);
        let key_value = Type::group_type_builder("key_value")
            .with_repetition(Repetition::REPEATED)
            .with_fields(vec![
                string("key", Repetition::REQUIRED),
                string("value", Repetition::REQUIRED),
            ])
            .build()
            .expect("a valid group");
        fields.push(Arc::new(
            Type::group_type_builder("attributes")
                .with_repetition(Repetition::REQUIRED)
                .with_logical_type(Some(LogicalType::Map))
                .with_fields(vec![Arc::new(key_value)])
                .build()
                .expect("a valid map"),
        ));
        fields.extend([
            string("agent_id", Repetition::REQUIRED),
            i64_col("seq", None),
            i64_col("accepted_at", micros()),
            i64_col("committed_at", micros()),
        ]);
        fields.extend(
            MEDIA_KINDS.map(|k| string(&format!("{}_key", k.as_str()), Repetition::OPTIONAL)),
        );
        let schema = Type::group_type_builder("sightline_event")
            .with_fields(fields)
            .build()
            .expect("a valid schema");
        Self {
            extras,
            schema: Arc::new(schema),
        }
    }

    /// Every column name, in file order (the map as one).
    pub fn column_names(&self) -> Vec<String> {
        self.schema
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }
}

fn prim(name: &str, physical: Physical, rep: Repetition, logical: Option<LogicalType>) -> TypePtr {
    Arc::new(
        Type::primitive_type_builder(name, physical)
            .with_repetition(rep)
            .with_logical_type(logical)
            .build()
            .expect("a valid column"),
    )
}

/// An optional column: the values present and a definition level a row.
#[derive(Default)]
struct Opt<T> {
    values: Vec<T>,
    def: Vec<i16>,
}

impl<T> Opt<T> {
    fn push(&mut self, v: Option<T>) {
        self.def.push(v.is_some() as i16);
        self.values.extend(v);
    }
    fn clear(&mut self) {
        self.values.clear();
        self.def.clear();
    }
}

/// Most distinct names (items, agents, attribute keys) [`Names`] keeps.
const MAX_NAMES: usize = 4096;

/// Names that repeat from row to row, each allocated once: a clone of a
/// `ByteArray` shares its bytes.
#[derive(Default)]
struct Names(HashMap<String, ByteArray>);

impl Names {
    fn get(&mut self, s: &str) -> ByteArray {
        if let Some(b) = self.0.get(s) {
            return b.clone();
        }
        let b = ByteArray::from(s);
        if self.0.len() < MAX_NAMES {
            self.0.insert(s.to_string(), b.clone());
        }
        b
    }
}

/// A location's columns: its name, and each Dataset B column (in
/// [`ExportSchema`] order).
type LocationCells = (ByteArray, Vec<Option<ByteArray>>);

/// Dataset B as column values, each location's made once.
struct Join<'a> {
    table: &'a LocationTable,
    extras: &'a [(String, String)],
    cells: HashMap<i64, Option<LocationCells>>,
    names: Names,
}

impl Join<'_> {
    fn location(&mut self, oid: i64) -> Option<&LocationCells> {
        let (table, extras) = (self.table, self.extras);
        self.cells
            .entry(oid)
            .or_insert_with(|| {
                table.get(oid).map(|l| {
                    let cells = extras
                        .iter()
                        .map(|(name, _)| l.extra.get(name).map(|v| ByteArray::from(v.as_str())))
                        .collect();
                    (ByteArray::from(l.geographical_location.as_str()), cells)
                })
            })
            .as_ref()
    }
}

/// One row group's columns.
#[derive(Default)]
struct Columns {
    rows: usize,
    det_oid: Vec<i64>,
    location_oid: Vec<i64>,
    camera: Vec<i64>,
    item: Vec<ByteArray>,
    ts: Vec<i64>,
    matched: Vec<bool>,
    location: Opt<ByteArray>,
    extras: Vec<Opt<ByteArray>>,
    confidence: Opt<f32>,
    boxes: [Opt<f32>; 4],
    attr_keys: Vec<ByteArray>,
    attr_values: Vec<ByteArray>,
    attr_def: Vec<i16>,
    attr_rep: Vec<i16>,
    agent: Vec<ByteArray>,
    seq: Vec<i64>,
    accepted: Vec<i64>,
    committed: Vec<i64>,
    media: [Opt<ByteArray>; 3],
}

fn micros(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

impl Columns {
    /// Adds a row; `false` (nothing added) for an event without its
    /// detection, which the store never holds.
    fn push(&mut self, ev: &JoinedEvent, join: &mut Join<'_>) -> bool {
        let Some(d) = ev.detection.as_ref() else {
            return false;
        };
        self.rows += 1;
        self.det_oid.push(d.detection_oid.unwrap_or_default());
        self.location_oid.push(d.geographical_location_oid);
        self.camera.push(d.video_camera_oid);
        self.item.push(join.names.get(&d.item_name));
        self.ts.push(micros(d.timestamp_detected));
        let n_extras = join.extras.len();
        let loc = join.location(d.geographical_location_oid);
        self.matched.push(loc.is_some());
        self.location.push(loc.map(|l| l.0.clone()));
        if self.extras.len() != n_extras {
            self.extras.resize_with(n_extras, Opt::default);
        }
        for (i, col) in self.extras.iter_mut().enumerate() {
            col.push(loc.and_then(|l| l.1[i].clone()));
        }
        self.confidence
            .push((d.confidence != 0.0).then_some(d.confidence));
        let b = d.r#box.map(|b| [b.x, b.y, b.width, b.height]);
        for (i, col) in self.boxes.iter_mut().enumerate() {
            col.push(b.map(|b| b[i]));
        }
        if d.attributes.is_empty() {
            self.attr_def.push(0);
            self.attr_rep.push(0);
        } else {
            let mut attrs: Vec<_> = d.attributes.iter().collect();
            attrs.sort();
            for (i, (k, v)) in attrs.into_iter().enumerate() {
                self.attr_def.push(1);
                self.attr_rep.push((i > 0) as i16);
                self.attr_keys.push(join.names.get(k));
                self.attr_values.push(ByteArray::from(v.as_str()));
            }
        }
        self.agent.push(join.names.get(&ev.agent_id));
        self.seq.push(ev.seq as i64);
        self.accepted.push(micros(ev.accepted_ms));
        self.committed.push(micros(ev.committed_ms));
        for (kind, col) in MEDIA_KINDS.iter().zip(&mut self.media) {
            let key = ev
                .media
                .iter()
                .find(|m| m.kind == kind.as_str() && media::valid_sha(&m.sha256))
                .map(|m| {
                    ByteArray::from(media::object_key(*kind, &m.sha256).to_string().into_bytes())
                });
            col.push(key);
        }
        true
    }

    fn clear(&mut self) {
        let extras = std::mem::take(&mut self.extras);
        *self = Columns::default();
        self.extras = extras;
        self.extras.iter_mut().for_each(Opt::clear);
    }

    fn write<W: Write + Send>(
        &self,
        rg: &mut SerializedRowGroupWriter<'_, W>,
    ) -> Result<(), ParquetError> {
        col::<Int64Type, W>(rg, &self.det_oid, None, None)?;
        col::<Int64Type, W>(rg, &self.location_oid, None, None)?;
        col::<Int64Type, W>(rg, &self.camera, None, None)?;
        col::<ByteArrayType, W>(rg, &self.item, None, None)?;
        col::<Int64Type, W>(rg, &self.ts, None, None)?;
        col::<BoolType, W>(rg, &self.matched, None, None)?;
        col::<ByteArrayType, W>(rg, &self.location.values, Some(&self.location.def), None)?;
        for e in &self.extras {
            col::<ByteArrayType, W>(rg, &e.values, Some(&e.def), None)?;
        }
        col::<FloatType, W>(
            rg,
            &self.confidence.values,
            Some(&self.confidence.def),
            None,
        )?;
        for b in &self.boxes {
            col::<FloatType, W>(rg, &b.values, Some(&b.def), None)?;
        }
        col::<ByteArrayType, W>(
            rg,
            &self.attr_keys,
            Some(&self.attr_def),
            Some(&self.attr_rep),
        )?;
        col::<ByteArrayType, W>(
            rg,
            &self.attr_values,
            Some(&self.attr_def),
            Some(&self.attr_rep),
        )?;
        col::<ByteArrayType, W>(rg, &self.agent, None, None)?;
        col::<Int64Type, W>(rg, &self.seq, None, None)?;
        col::<Int64Type, W>(rg, &self.accepted, None, None)?;
        col::<Int64Type, W>(rg, &self.committed, None, None)?;
        for m in &self.media {
            col::<ByteArrayType, W>(rg, &m.values, Some(&m.def), None)?;
        }
        Ok(())
    }
}

/// Writes the next column of a row group.
fn col<T: DataType, W: Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    values: &[T::T],
    def: Option<&[i16]>,
    rep: Option<&[i16]>,
) -> Result<(), ParquetError> {
    let mut c = rg
        .next_column()?
        .ok_or_else(|| ParquetError::General("the schema has fewer columns than written".into()))?;
    c.typed::<T>().write_batch(values, def, rep)?;
    c.close()
}

/// Writes one file: events pushed in order, a row group every
/// [`ROW_GROUP_ROWS`].
pub struct HourWriter<'a, W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Columns,
    join: Join<'a>,
    rows: u64,
}

impl<'a, W: Write + Send> HourWriter<'a, W> {
    /// A new file in `out`, its key-value metadata `meta` (e.g. the media
    /// store's URL).
    pub fn new(
        out: W,
        schema: &'a ExportSchema,
        locations: &'a LocationTable,
        meta: Vec<(String, String)>,
    ) -> Result<Self, ParquetError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("sightline-core {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(
                meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect(),
            ))
            .build();
        Ok(Self {
            writer: SerializedFileWriter::new(out, schema.schema.clone(), Arc::new(props))?,
            columns: Columns::default(),
            join: Join {
                table: locations,
                extras: &schema.extras,
                cells: HashMap::new(),
                names: Names::default(),
            },
            rows: 0,
        })
    }

    pub fn push(&mut self, ev: &JoinedEvent) -> Result<(), ParquetError> {
        if self.columns.push(ev, &mut self.join) {
            self.rows += 1;
        }
        if self.columns.rows >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.columns.rows == 0 {
            return Ok(());
        }
        let mut rg = self.writer.next_row_group()?;
        self.columns.write(&mut rg)?;
        rg.close()?;
        self.columns.clear();
        Ok(())
    }

    /// Writes the last row group and the footer; answers the rows written
    /// and gives back the output.
    pub fn finish(mut self) -> Result<(u64, W), ParquetError> {
        self.flush()?;
        let rows = self.rows;
        Ok((rows, self.writer.into_inner()?))
    }
}
