//! A row as the file readers hand it over (column name → [`Cell`]), and how
//! it becomes a [`Detection`].

use std::collections::HashMap;

use sightline_proto::{
    v1::{BoundingBox, Detection},
    FieldError,
};

/// A value read from a cell, before it is checked against its field.
#[derive(Debug, Clone)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
}

impl Cell {
    fn as_text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Str(s) => s.clone(),
        }
    }
}

pub(super) type Row = Vec<(String, Cell)>;

/// The columns without which no row can become a detection: a CSV header or
/// a Parquet schema without one of them is refused before any row is read.
pub(super) const REQUIRED: &[&str] = &[
    "geographical_location_oid",
    "video_camera_oid",
    "item_name",
    "timestamp_detected",
];

/// The columns read into a detection's own fields; any other is an attribute.
const KNOWN: &[&str] = &[
    "geographical_location_oid",
    "video_camera_oid",
    "detection_oid",
    "item_name",
    "timestamp_detected",
    "confidence",
    "box_x",
    "box_y",
    "box_width",
    "box_height",
];

/// The first required column missing from `columns`, as the refusal of the
/// whole file (every row would be refused for it).
pub(super) fn missing_column(columns: &[String]) -> Option<String> {
    REQUIRED
        .iter()
        .find(|r| !columns.iter().any(|c| c == *r))
        .map(|r| format!("no `{r}` column (found {columns:?})"))
}

fn int_field(
    field: &'static str,
    cell: Option<&Cell>,
    required: bool,
) -> Result<Option<i64>, FieldError> {
    match cell {
        None | Some(Cell::Null) => {
            if required {
                Err(FieldError::new(field, "missing"))
            } else {
                Ok(None)
            }
        }
        Some(Cell::Str(s)) if s.trim().is_empty() => {
            if required {
                Err(FieldError::new(field, "missing (empty)"))
            } else {
                Ok(None)
            }
        }
        Some(Cell::Int(i)) => Ok(Some(*i)),
        Some(Cell::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(*f as i64)),
        Some(other) => other
            .as_text()
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| {
                FieldError::new(
                    field,
                    format!("not an integer: {:?}", short(&other.as_text())),
                )
            }),
    }
}

fn float_field(field: &'static str, cell: Option<&Cell>) -> Result<Option<f32>, FieldError> {
    match cell {
        None | Some(Cell::Null) => Ok(None),
        Some(Cell::Str(s)) if s.trim().is_empty() => Ok(None),
        Some(Cell::Int(i)) => Ok(Some(*i as f32)),
        Some(Cell::Float(f)) => Ok(Some(*f as f32)),
        Some(Cell::Str(s)) => s
            .trim()
            .parse::<f32>()
            .map(Some)
            .map_err(|_| FieldError::new(field, format!("not a number: {:?}", short(s)))),
    }
}

/// Turns a row into a detection (validation proper happens in the publisher).
pub(super) fn detection_from_row(row: Row) -> Result<Detection, FieldError> {
    let cells: HashMap<&str, &Cell> = row.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let get = |k: &str| cells.get(k).copied();
    let mut d = Detection {
        geographical_location_oid: int_field(
            "geographical_location_oid",
            get("geographical_location_oid"),
            true,
        )?
        .unwrap_or_default(),
        video_camera_oid: int_field("video_camera_oid", get("video_camera_oid"), true)?
            .unwrap_or_default(),
        detection_oid: int_field("detection_oid", get("detection_oid"), false)?,
        item_name: match get("item_name") {
            None | Some(Cell::Null) => return Err(FieldError::new("item_name", "missing")),
            Some(c) => c.as_text(),
        },
        timestamp_detected: int_field("timestamp_detected", get("timestamp_detected"), true)?
            .unwrap_or_default(),
        confidence: float_field("confidence", get("confidence"))?.unwrap_or(0.0),
        ..Default::default()
    };
    let b = [
        float_field("box_x", get("box_x"))?,
        float_field("box_y", get("box_y"))?,
        float_field("box_width", get("box_width"))?,
        float_field("box_height", get("box_height"))?,
    ];
    if b.iter().any(Option::is_some) {
        d.r#box = Some(BoundingBox {
            x: b[0].unwrap_or(0.0),
            y: b[1].unwrap_or(0.0),
            width: b[2].unwrap_or(0.0),
            height: b[3].unwrap_or(0.0),
        });
    }
    for (k, v) in row {
        if !KNOWN.contains(&k.as_str()) && !matches!(v, Cell::Null) {
            d.attributes.insert(k, v.as_text());
        }
    }
    Ok(d)
}

/// The start of a value quoted in a report (a bad cell can be megabytes).
pub(super) fn short(s: &str) -> String {
    const MAX_CHARS: usize = 60;
    if s.chars().count() <= MAX_CHARS {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_CHARS).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Cell::Str(v.to_string())))
            .collect()
    }

    #[test]
    fn a_full_row_becomes_a_detection_with_extra_columns_as_attributes() {
        let d = detection_from_row(row(&[
            ("geographical_location_oid", "3"),
            ("video_camera_oid", "30"),
            ("detection_oid", ""),
            ("item_name", "car"),
            ("timestamp_detected", "1700000000000"),
            ("box_x", "1.5"),
            ("lane", "left"),
        ]))
        .unwrap();
        assert_eq!(d.geographical_location_oid, 3);
        assert_eq!(d.detection_oid, None);
        assert_eq!(d.r#box.unwrap().x, 1.5);
        assert_eq!(d.attributes["lane"], "left");
    }

    #[test]
    fn bad_cells_name_their_field() {
        let err = detection_from_row(row(&[
            ("geographical_location_oid", "3"),
            ("video_camera_oid", "thirty"),
            ("item_name", "car"),
            ("timestamp_detected", "1"),
        ]))
        .unwrap_err();
        assert_eq!(err.field, "video_camera_oid");
        assert!(err.reason.contains("thirty"));
        let err = detection_from_row(row(&[
            ("geographical_location_oid", "3"),
            ("video_camera_oid", "1"),
        ]))
        .unwrap_err();
        assert_eq!(err.field, "item_name");
    }
}
