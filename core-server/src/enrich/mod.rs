//! Dataset B: the static table describing each location, joined onto events.
//!
//! Loaded from CSV (with a header row) or Parquet into an immutable
//! in-memory table, swapped atomically on reload (SIGHUP, `Admin.ReloadLocations`,
//! `POST /admin/reload-locations`). A bad file is refused with the line and the
//! reason, and the table in use stays. Required columns:
//! `geographical_location_oid` (positive integer, unique) and
//! `geographical_location` (non-empty name); every other column is kept in
//! `Location.extra`.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use sightline_proto::v1::{JoinedEvent, Location};

/// An immutable Dataset B.
#[derive(Debug, Default)]
pub struct LocationTable {
    pub rows: HashMap<i64, Location>,
    /// Where it came from (empty when none was configured).
    pub source: String,
}

/// Why a Dataset B file was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Dataset B {path}{}: {reason}", .line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct LoadError {
    pub path: String,
    /// Line (CSV, header = line 1) or row (Parquet, first row = 1).
    pub line: Option<u64>,
    pub reason: String,
}

const OID: &str = "geographical_location_oid";
const NAME: &str = "geographical_location";

impl LocationTable {
    /// Loads a CSV or Parquet file (by extension).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let display = path.display().to_string();
        let err = |line: Option<u64>, reason: String| LoadError {
            path: display.clone(),
            line,
            reason,
        };
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
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
                    format!("`{OID}` {oid} appears twice (first on line {first})"),
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
        Ok(Self {
            rows: table,
            source: display,
        })
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
        .headers()
        .map_err(|e| (Some(1), format!("unreadable header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    for required in [OID, NAME] {
        if !headers.iter().any(|h| h == required) {
            return Err((
                Some(1),
                format!("the header has no `{required}` column (found {headers:?})"),
            ));
        }
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            (
                e.position().map(|p| p.line()),
                format!("unreadable row: {e}"),
            )
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        out.push((
            line,
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.clone(), v.to_string()))
                .collect(),
        ));
    }
    Ok(out)
}

fn read_parquet(path: &Path) -> Result<Rows, (Option<u64>, String)> {
    use parquet::{
        file::reader::{FileReader, SerializedFileReader},
        record::Field,
    };
    let file = File::open(path).map_err(|e| (None, format!("cannot open: {e}")))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| (None, format!("not a Parquet file: {e}")))?;
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
}
