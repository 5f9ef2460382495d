//! Generated Dataset A input with upstream duplicates, and its ground truth.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
    path::Path,
};

use rand::{rngs::StdRng, Rng, SeedableRng};

pub const ITEMS: &[&str] = &[
    "person", "car", "bicycle", "backpack", "truck", "handbag", "dog", "bus", "umbrella",
    "suitcase",
];

/// One Dataset A row. `detection_oid = None` leaves it to the agent to stamp.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub geographical_location_oid: i64,
    pub video_camera_oid: i64,
    pub detection_oid: Option<i64>,
    pub item_name: String,
    pub timestamp_detected: i64,
    pub box_x: f32,
}

/// A generated input: rows in publish order, duplicates included.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub rows: Vec<Row>,
}

impl Dataset {
    /// `unique` distinct detections over `locations` (4 cameras each), then a
    /// share `dup` of extra rows that repeat an earlier row exactly. A share
    /// `no_oid` of detections come without det_oid (the agent stamps them; a
    /// repeat must get the same stamp). Timestamps fall in the last 30 minutes.
    pub fn generate(seed: u64, unique: usize, dup: f64, no_oid: f64, locations: &[i64]) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let now = now_ms();
        let mut rows: Vec<Row> = Vec::with_capacity(unique + (unique as f64 * dup) as usize + 1);
        let mut used = HashSet::new();
        let mut made = 0;
        while made < unique {
            if !rows.is_empty() && rng.random::<f64>() < dup / (1.0 + dup) {
                let i = rng.random_range(0..rows.len());
                rows.push(rows[i].clone());
                continue;
            }
            let loc = locations[rng.random_range(0..locations.len())];
            let cam = loc * 100 + rng.random_range(0..4);
            // Skewed items so the top X is well defined.
            let item = ITEMS[(rng.random::<f64>().powi(2) * ITEMS.len() as f64) as usize];
            let oid = if rng.random::<f64>() < no_oid {
                None
            } else {
                let mut o = rng.random_range(1..i64::MAX);
                while !used.insert(o) {
                    o = rng.random_range(1..i64::MAX);
                }
                Some(o)
            };
            rows.push(Row {
                geographical_location_oid: loc,
                video_camera_oid: cam,
                detection_oid: oid,
                item_name: item.to_string(),
                // Distinct per detection, so stamped det_oids differ.
                timestamp_detected: now - 30 * 60_000
                    + made as i64 * 7 % (29 * 60_000)
                    + made as i64 / 1000,
                box_x: rng.random_range(0..1900) as f32,
            });
            made += 1;
        }
        Dataset { rows }
    }

    /// Writes the dataset as `a.csv` in `dir`; its path.
    pub fn csv_in(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("a.csv");
        self.write_csv(&path);
        path
    }

    pub fn write_csv(&self, path: &Path) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        writeln!(
            f,
            "geographical_location_oid,video_camera_oid,detection_oid,item_name,timestamp_detected,box_x"
        )
        .unwrap();
        for r in &self.rows {
            writeln!(
                f,
                "{},{},{},{},{},{}",
                r.geographical_location_oid,
                r.video_camera_oid,
                r.detection_oid.map(|o| o.to_string()).unwrap_or_default(),
                r.item_name,
                r.timestamp_detected,
                r.box_x
            )
            .unwrap();
        }
    }

    pub fn write_jsonl(&self, path: &Path) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        for r in &self.rows {
            let mut v = serde_json::json!({
                "geographical_location_oid": r.geographical_location_oid,
                "video_camera_oid": r.video_camera_oid,
                "item_name": r.item_name,
                "timestamp_detected": r.timestamp_detected,
                "box_x": r.box_x,
            });
            if let Some(o) = r.detection_oid {
                v["detection_oid"] = serde_json::json!(o);
            }
            writeln!(f, "{v}").unwrap();
        }
    }

    /// Writes the rows as Parquet (int64 columns, UTF-8 item_name, optional
    /// detection_oid), with the parquet crate's low-level writer.
    pub fn write_parquet(&self, path: &Path) {
        use parquet::{
            data_type::{ByteArray, ByteArrayType, FloatType, Int64Type},
            file::{properties::WriterProperties, writer::SerializedFileWriter},
            schema::parser::parse_message_type,
        };
        let schema = std::sync::Arc::new(
            parse_message_type(
                "message dataset_a {
                    required int64 geographical_location_oid;
                    required int64 video_camera_oid;
                    optional int64 detection_oid;
                    required binary item_name (UTF8);
                    required int64 timestamp_detected;
                    required float box_x;
                }",
            )
            .unwrap(),
        );
        let file = std::fs::File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(
            file,
            schema,
            std::sync::Arc::new(WriterProperties::default()),
        )
        .unwrap();
        let mut rg = w.next_row_group().unwrap();
        let ints = |f: fn(&Row) -> i64| self.rows.iter().map(f).collect::<Vec<i64>>();
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            match col {
                0 => c.typed::<Int64Type>().write_batch(
                    &ints(|r| r.geographical_location_oid),
                    None,
                    None,
                ),
                1 => c
                    .typed::<Int64Type>()
                    .write_batch(&ints(|r| r.video_camera_oid), None, None),
                2 => {
                    let vals: Vec<i64> = self.rows.iter().filter_map(|r| r.detection_oid).collect();
                    let defs: Vec<i16> = self
                        .rows
                        .iter()
                        .map(|r| r.detection_oid.is_some() as i16)
                        .collect();
                    c.typed::<Int64Type>().write_batch(&vals, Some(&defs), None)
                }
                3 => {
                    let vals: Vec<ByteArray> = self
                        .rows
                        .iter()
                        .map(|r| ByteArray::from(r.item_name.as_str()))
                        .collect();
                    c.typed::<ByteArrayType>().write_batch(&vals, None, None)
                }
                4 => {
                    c.typed::<Int64Type>()
                        .write_batch(&ints(|r| r.timestamp_detected), None, None)
                }
                _ => {
                    let vals: Vec<f32> = self.rows.iter().map(|r| r.box_x).collect();
                    c.typed::<FloatType>().write_batch(&vals, None, None)
                }
            }
            .unwrap();
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();
    }

    /// The ground truth, computed from the rows alone.
    pub fn truth(&self) -> Truth {
        let mut seen: HashSet<(i64, i64, Option<i64>, String, i64, u32)> = HashSet::new();
        let mut t = Truth::default();
        for r in &self.rows {
            // A detection is identified by its det_oid when it has one, by all
            // its fields when the agent stamps it.
            let key = (
                r.geographical_location_oid,
                r.video_camera_oid,
                r.detection_oid,
                r.item_name.clone(),
                r.timestamp_detected,
                r.box_x.to_bits(),
            );
            let unique = match r.detection_oid {
                Some(o) => t.det_oids.insert(o),
                None => seen.insert(key),
            };
            if unique {
                t.unique += 1;
                *t.counts
                    .entry(r.geographical_location_oid)
                    .or_default()
                    .entry(r.item_name.clone())
                    .or_default() += 1;
                t.min_ts = t.min_ts.min(r.timestamp_detected);
                t.max_ts = t.max_ts.max(r.timestamp_detected);
            }
        }
        t.published = self.rows.len() as u64;
        t
    }
}

/// What the store must hold after the rows went through.
#[derive(Debug, Clone)]
pub struct Truth {
    pub published: u64,
    pub unique: u64,
    /// Given det_oids (stamped ones are not known in advance).
    pub det_oids: HashSet<i64>,
    /// location → item → count.
    pub counts: BTreeMap<i64, HashMap<String, u64>>,
    pub min_ts: i64,
    pub max_ts: i64,
}

impl Default for Truth {
    fn default() -> Self {
        Self {
            published: 0,
            unique: 0,
            det_oids: HashSet::new(),
            counts: BTreeMap::new(),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }
}

impl Truth {
    /// Top `x` per location: count descending, then item name.
    pub fn top(&self, x: usize) -> BTreeMap<i64, Vec<(String, u64)>> {
        self.counts
            .iter()
            .map(|(loc, items)| {
                let mut v: Vec<(String, u64)> =
                    items.iter().map(|(k, c)| (k.clone(), *c)).collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                v.truncate(x);
                (*loc, v)
            })
            .collect()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Writes a Dataset B CSV for `locations` (named "Location <oid>").
pub fn write_locations(path: &Path, locations: &[i64]) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "geographical_location_oid,geographical_location,region").unwrap();
    for l in locations {
        writeln!(f, "{l},Location {l},Region {}", l % 3).unwrap();
    }
}
