//! The export's own promises, in process: hours and their partitions, the
//! file's types read back, an hour replaced whole, the continuous
//! exporter's position.

use std::{path::Path, sync::Arc};

use ::parquet::{
    basic::{LogicalType, TimeUnit},
    file::reader::{FileReader, SerializedFileReader},
    record::Field,
};
use sightline_proto::v1::{Detection, MediaRef};

use super::*;
use crate::store::Store;

const H: i64 = HOUR_MS;
/// 2026-11-30T13:00:00Z.
const T13: i64 = 1_796_043_600_000;

#[test]
fn hours_are_utc_hive_partitions() {
    assert_eq!(
        Hour::of(T13 + 59 * 60_000).partition(),
        "date=2026-11-30/hour=13"
    );
    assert_eq!(Hour::of(T13 + H).label(), "2026-11-30T14");
    assert_eq!(
        Hour::of(T13 + 11 * H).partition(),
        "date=2026-12-01/hour=00"
    );
    let hs: Vec<_> = Hour::range(T13 + 1, T13 + 2 * H + 1).collect();
    assert_eq!(hs, vec![Hour(T13), Hour(T13 + H), Hour(T13 + 2 * H)]);
    assert_eq!(Hour::range(T13, T13 + H).count(), 1, "until is exclusive");
}

#[test]
fn instants_parse_in_every_documented_form_and_a_bad_one_names_the_flag() {
    let now = T13 + 30 * 60_000;
    assert_eq!(parse_instant("--since", "30m", now).unwrap(), T13);
    assert_eq!(
        parse_instant("--since", "2026-11-30T13:00:00Z", now).unwrap(),
        T13
    );
    assert_eq!(
        parse_instant("--since", "2026-11-30", now).unwrap(),
        T13 - 13 * H
    );
    assert_eq!(
        parse_instant("--since", &T13.to_string(), now).unwrap(),
        T13
    );
    let e = parse_instant("--until", "yesterday-ish", now)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("field `--until`:"), "{e}");
}

fn event(oid: i64, ts: i64, loc: i64, item: &str) -> JoinedEventRow {
    JoinedEventRow {
        oid,
        ts,
        loc,
        item: item.into(),
    }
}

struct JoinedEventRow {
    oid: i64,
    ts: i64,
    loc: i64,
    item: String,
}

/// A store holding these events (one commit each), as the pipeline writes them.
fn store_with(dir: &Path, rows: &[JoinedEventRow]) -> Arc<Store> {
    let store = Store::open(&dir.join("core"), false, 8 << 20).unwrap();
    for r in rows {
        let mut c = store.begin(r.ts + 1000).unwrap();
        c.put_event(
            &sightline_proto::v1::JoinedEvent {
                detection: Some(Detection {
                    geographical_location_oid: r.loc,
                    video_camera_oid: r.loc * 100,
                    detection_oid: Some(r.oid),
                    item_name: r.item.clone(),
                    timestamp_detected: r.ts,
                    attributes: [("model".to_string(), "yolo".to_string())].into(),
                    ..Default::default()
                }),
                agent_id: "a1".into(),
                seq: r.oid as u64,
                accepted_ms: r.ts + 10,
                committed_ms: r.ts + 1000,
                ..Default::default()
            },
            None,
        );
        store.commit(c).unwrap();
    }
    Arc::new(store)
}

fn source(dir: &Path, store: Arc<Store>) -> Source {
    let b = dir.join("b.csv");
    std::fs::write(
        &b,
        "geographical_location_oid,geographical_location,region\n1,Gate 1,North\n",
    )
    .unwrap();
    Source {
        store,
        locations: Arc::new(Locations::new(Some(b)).unwrap()),
        media_url: "file:///media".into(),
    }
}

/// (det_oid, ts µs, location name, region, snapshot key) of a row.
type ReadRow = (i64, i64, Option<String>, Option<String>, Option<String>);

fn read_rows(path: &Path) -> Vec<ReadRow> {
    let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    r.get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let get = |name: &str| {
                row.get_column_iter()
                    .find(|(n, _)| n.as_str() == name)
                    .map(|(_, f)| f.clone())
                    .unwrap()
            };
            let s = |f: Field| match f {
                Field::Str(s) => Some(s),
                Field::Null => None,
                other => panic!("{other:?}"),
            };
            let ts = match get("timestamp_detected") {
                Field::TimestampMicros(t) => t,
                other => panic!("{other:?}"),
            };
            let Field::Long(oid) = get("detection_oid") else {
                panic!()
            };
            (
                oid,
                ts,
                s(get("geographical_location")),
                s(get("region")),
                s(get("snapshot_key")),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_hour_is_one_file_of_native_types_with_its_manifest_and_a_rerun_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        &[
            event(7, T13 + 5, 1, "person"),
            event(3, T13 + 5, 2, "car"),
            event(9, T13 + H + 1, 1, "dog"),
        ],
    );
    let sha = "ab".repeat(32);
    store
        .attach_media(
            &[7],
            &MediaRef {
                kind: "snapshot".into(),
                sha256: sha.clone(),
                content_type: "image/jpeg".into(),
                size: 1,
            },
            1,
            Some("a1"),
        )
        .unwrap();
    let src = source(dir.path(), store.clone());
    let out = dir.path().join("out");
    let target = Target::open(
        "--to",
        &format!("file://{}", out.display()),
        &Default::default(),
    )
    .unwrap();
    let total = export_range(&src, &target, T13 + 10, T13 + 2 * H, 2, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (total.hours, total.rows),
        (2, 3),
        "whole hours, whatever the range covers"
    );
    let f13 = out.join("date=2026-11-30/hour=13").join(PART_FILE);
    let rows = read_rows(&f13);
    assert_eq!(
        rows,
        vec![
            (3, (T13 + 5) * 1000, None, None, None),
            (
                7,
                (T13 + 5) * 1000,
                Some("Gate 1".into()),
                Some("North".into()),
                Some(format!("media/snapshot/ab/{sha}.jpg"))
            ),
        ],
        "key order, joined, unmatched as null, footage by object key"
    );
    let meta = SerializedFileReader::new(std::fs::File::open(&f13).unwrap()).unwrap();
    let schema = meta.metadata().file_metadata().schema_descr();
    let ts = schema
        .columns()
        .iter()
        .find(|c| c.name() == "timestamp_detected")
        .unwrap();
    assert_eq!(
        ts.logical_type_ref(),
        Some(&LogicalType::timestamp(true, TimeUnit::MICROS))
    );
    let manifest: HourManifest = serde_json::from_slice(
        &std::fs::read(out.join("_sightline/hours/2026-11-30T13.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (manifest.rows, manifest.file.as_str()),
        (2, "date=2026-11-30/hour=13/part-00000.parquet")
    );
    assert_eq!(manifest.bytes, std::fs::metadata(&f13).unwrap().len());

    // Again, with one more event in hour 13: replaced, never doubled, and
    // nothing but the two files is left in the partitions.
    let mut c = store.begin(T13 + 2 * H).unwrap();
    c.put_event(
        &sightline_proto::v1::JoinedEvent {
            detection: Some(Detection {
                geographical_location_oid: 1,
                video_camera_oid: 100,
                detection_oid: Some(11),
                item_name: "cat".into(),
                timestamp_detected: T13 + 9,
                ..Default::default()
            }),
            ..Default::default()
        },
        None,
    );
    store.commit(c).unwrap();
    export_range(&src, &target, T13, T13 + 2 * H, 1, |_| {})
        .await
        .unwrap();
    let oids: Vec<i64> = read_rows(&f13).into_iter().map(|r| r.0).collect();
    assert_eq!(oids, vec![3, 7, 11]);
    let mut files: Vec<String> = walk(&out)
        .into_iter()
        .filter(|p| !p.contains("_sightline"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            "date=2026-11-30/hour=13/part-00000.parquet".to_string(),
            "date=2026-11-30/hour=14/part-00000.parquet".to_string()
        ]
    );
    // An hour without events writes nothing and keeps what was there.
    let t = export_range(&src, &target, T13 + 5 * H, T13 + 6 * H, 1, |_| {})
        .await
        .unwrap();
    assert_eq!(t, Written::default());
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_rename_over_the_old_file_replaces_it_whole_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("date=2026-11-30/hour=13").join(PART_FILE);
    sink::write_file_atomic(&dest, b"old").unwrap();
    let staged = dir.path().join("date=2026-11-30/hour=13/.staged.tmp");
    std::fs::write(&staged, b"new").unwrap();
    sink::rename_synced(&staged, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"new");
    assert_eq!(
        walk(dir.path()),
        vec![format!("date=2026-11-30/hour=13/{PART_FILE}")]
    );
}

#[tokio::test]
async fn the_continuous_exporter_writes_closed_hours_once_and_a_late_event_rewrites_its_hour() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(
        dir.path(),
        &[
            event(1, T13 + 1, 1, "person"),
            event(2, T13 + H + 1, 1, "car"),
        ],
    );
    let src = source(dir.path(), store.clone());
    let out = dir.path().join("out");
    let target = Target::open("export.to", out.to_str().unwrap(), &Default::default()).unwrap();
    let grace = Duration::from_secs(300);
    let mut pos = follow::Position::load(&target).await.unwrap();
    // 13:00's hour has closed (+ grace), 14:00's has not.
    let now = T13 + 2 * H + 10 * 60_000;
    let n = follow::pass(&src, &target, &mut pos, grace, now - H - 6 * 60_000, None)
        .await
        .unwrap();
    assert_eq!(n, 0, "13:00 closes at 14:05");
    let n = follow::pass(&src, &target, &mut pos, grace, now, None)
        .await
        .unwrap();
    assert_eq!(n, 2, "both hours are closed by now");
    assert!(pos.pending.is_empty());
    assert_eq!(pos.lag_s(now), 0);
    let n = follow::pass(&src, &target, &mut pos, grace, now + 60_000, None)
        .await
        .unwrap();
    assert_eq!(n, 0, "a closed hour is written once");
    // The position survives a restart.
    assert_eq!(follow::Position::load(&target).await.unwrap(), pos);
    // A late event for 13:00, committed now: its hour is pending, then
    // rewritten with it once the grace has passed.
    let mut c = store.begin(now + 60_000).unwrap();
    c.put_event(
        &sightline_proto::v1::JoinedEvent {
            detection: Some(Detection {
                geographical_location_oid: 1,
                video_camera_oid: 100,
                detection_oid: Some(5),
                item_name: "dog".into(),
                timestamp_detected: T13 + 7,
                ..Default::default()
            }),
            ..Default::default()
        },
        None,
    );
    store.commit(c).unwrap();
    let later = now + 60_000 + follow::COMMIT_SETTLE.as_millis() as i64 + 1;
    assert_eq!(
        follow::pass(&src, &target, &mut pos, grace, later, None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(pos.pending.len(), 1);
    assert!(pos.lag_s(later) >= 10);
    assert_eq!(
        follow::pass(&src, &target, &mut pos, grace, later + 300_000, None)
            .await
            .unwrap(),
        1
    );
    let oids: Vec<i64> = read_rows(&out.join("date=2026-11-30/hour=13").join(PART_FILE))
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(oids, vec![1, 5]);
}
