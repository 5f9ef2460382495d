//! Replay's promises, as tests: real files in a temp dir replayed into a real
//! buffer, asserting on what the buffer holds and what was reported.

use std::{path::Path, sync::Arc, time::Duration};

use parquet::{
    basic::{Compression, GzipLevel, ZstdLevel},
    data_type::{ByteArray, ByteArrayType, DataType, Int64Type},
    file::{
        properties::WriterProperties,
        reader::{FileReader, SerializedFileReader},
        writer::{SerializedColumnWriter, SerializedFileWriter},
    },
    schema::parser::parse_message_type,
};
use prost::Message;
use sightline_proto::{
    v1::{Detection, EdgeEvent},
    Limits,
};

use super::*;
use crate::{
    buffer::{Buffer, BufferOptions},
    config::WhenFull,
};

/// A replay may take this long at most in these tests (a loop fails by it).
const BOUND: Duration = Duration::from_secs(60);

const TS: i64 = 1_700_000_000_000;

fn publisher(dir: &Path) -> Publisher {
    let opts = BufferOptions {
        max_events: 100_000,
        max_bytes: 256 * 1024 * 1024,
        sync: false,
        keep_acked: 0,
    };
    Publisher {
        buffer: Arc::new(Buffer::open(&dir.join("buffer"), opts).unwrap()),
        when_full: WhenFull::Backpressure,
        block_timeout: Duration::from_secs(1),
        limits: Limits::default(),
        capture: None,
        metrics: Default::default(),
    }
}

/// What the buffer holds, in order.
fn published(p: &Publisher) -> Vec<Detection> {
    p.buffer
        .read(1, 1_000_000, usize::MAX)
        .unwrap()
        .iter()
        .map(|b| EdgeEvent::decode(b.as_ref()).unwrap().detection.unwrap())
        .collect()
}

fn oids(p: &Publisher) -> Vec<i64> {
    published(p)
        .iter()
        .map(|d| d.detection_oid.unwrap())
        .collect()
}

async fn run(p: &Publisher, path: &Path) -> anyhow::Result<ReplaySummary> {
    let opts = ReplayOptions {
        path: path.to_path_buf(),
        format: None,
        rate: None,
        from_start: false,
    };
    tokio::time::timeout(BOUND, replay(p.clone(), opts))
        .await
        .expect("the replay ends within the bound")
}

fn json(oid: i64) -> String {
    format!(
        r#"{{"geographical_location_oid":1,"video_camera_oid":2,"detection_oid":{oid},"item_name":"car","timestamp_detected":{}}}"#,
        TS + oid
    )
}

fn has(s: &ReplaySummary, needle: &str) -> bool {
    s.reported.iter().any(|l| l.contains(needle))
}

#[tokio::test]
async fn a_bad_utf8_line_is_reported_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut bytes = Vec::new();
    for line in [
        json(1).into_bytes(),
        json(2).into_bytes(),
        b"{\"item_name\":\"caf\xe9\"}".to_vec(),
        b"{not json".to_vec(),
        json(5)
            .replace("\"video_camera_oid\":2", "\"video_camera_oid\":\"two\"")
            .into_bytes(),
        json(6).replace("\"item_name\":\"car\",", "").into_bytes(),
        Vec::new(),
        vec![b'x'; MAX_RECORD_BYTES + 10],
        json(9).into_bytes(),
    ] {
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
    }
    std::fs::write(&path, &bytes).unwrap();
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![1, 2, 9]);
    assert_eq!((s.rows, s.accepted, s.invalid), (8, 3, 5), "{s:?}");
    for needle in [
        "line 3: not valid UTF-8 (byte 18 of the line)",
        "line 4: invalid JSON at column 2: key must be a string",
        "line 5: field `video_camera_oid`: not an integer: \"two\"",
        "line 6: field `item_name`: missing",
        "line 8: longer than 1048576 bytes",
    ] {
        assert!(has(&s, needle), "{needle:?} not in {:#?}", s.reported);
    }
    assert_eq!(
        s.reported.len(),
        5,
        "one line per bad row: {:#?}",
        s.reported
    );
}

#[tokio::test]
async fn a_restarted_replay_resumes_after_the_last_row_bad_rows_included() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, format!("{}\n{}\n{{bad\n", json(1), json(2))).unwrap();
    let p = publisher(dir.path());
    let first = run(&p, &path).await.unwrap();
    assert_eq!((first.accepted, first.invalid), (2, 1));

    let mut more = std::fs::read(&path).unwrap();
    for line in [
        json(4).as_bytes(),
        &b"\xff"[..],
        json(6).as_bytes(),
        &b"\xff"[..],
        json(7).as_bytes(),
    ] {
        more.extend_from_slice(line);
        more.push(b'\n');
    }
    std::fs::write(&path, more).unwrap();
    let second = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![1, 2, 4, 6, 7]);
    assert_eq!(second.skipped, 3);
    assert_eq!((second.rows, second.accepted, second.invalid), (5, 3, 2));
    assert!(has(&second, "line 5: not valid UTF-8"), "{second:?}");
}

#[tokio::test]
async fn a_bad_csv_record_is_reported_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.csv");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(
        b"geographical_location_oid,video_camera_oid,detection_oid,item_name,timestamp_detected,note\n",
    );
    bytes.extend_from_slice(format!("1,2,2,car,{TS},\n").as_bytes());
    bytes.extend_from_slice(b"1,2,3,caf\xe9,");
    bytes.extend_from_slice(format!("{TS},\n").as_bytes());
    bytes.extend_from_slice(b"1,2,4\n");
    bytes.extend_from_slice(format!("1,2,5,car,{TS},\"two\nlines\"\n").as_bytes());
    bytes.extend_from_slice(b"1,2,7,car,yesterday,\n");
    bytes.extend_from_slice(format!("1,2,8,car,{},\n", TS + 8).as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![2, 5, 8]);
    assert_eq!(published(&p)[1].attributes["note"], "two\nlines");
    assert_eq!((s.rows, s.accepted, s.invalid), (6, 3, 3), "{s:?}");
    for needle in [
        "line 3: field `item_name`: not valid UTF-8 (byte 4 of the field)",
        "line 4: has 3 fields, the header has 6",
        "line 7: field `timestamp_detected`: not an integer: \"yesterday\"",
    ] {
        assert!(has(&s, needle), "{needle:?} not in {:#?}", s.reported);
    }
}

#[tokio::test]
async fn an_unclosed_csv_quote_is_reported_once_and_the_replay_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.csv");
    let mut text =
        "geographical_location_oid,video_camera_oid,detection_oid,item_name,timestamp_detected\n"
            .to_string();
    text.push_str(&format!("1,2,2,car,{TS}\n1,2,3,\"car,{TS}\n"));
    for i in 0..60_000 {
        text.push_str(&format!("1,2,{i},car,{TS}\n"));
    }
    std::fs::write(&path, text).unwrap();
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![2]);
    assert_eq!(s.unreadable, 1);
    assert_eq!(s.reported.len(), 1, "{:#?}", s.reported);
    assert!(has(&s, "line 3 on:") && has(&s, "unclosed quote"), "{s:?}");
}

#[tokio::test]
async fn a_file_without_a_required_column_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.csv");
    std::fs::write(&path, "geographical_location_oid,item_name\n1,car\n").unwrap();
    let e = run(&publisher(dir.path()), &path)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a.csv") && e.contains("no `video_camera_oid` column"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_rows_past_the_limit_are_counted_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let mut text = String::new();
    for _ in 0..1_000 {
        text.push_str("{bad\n");
    }
    text.push_str(&json(1));
    std::fs::write(&path, text).unwrap();
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![1]);
    assert_eq!(s.invalid, 1_000);
    assert_eq!(s.reported.len(), MAX_REPORTED_ROWS + 2, "{:#?}", s.reported);
    assert!(has(&s, "more than 100 bad lines"));
    assert!(s.reported.last().unwrap().contains("1000 bad lines"));
}

/// One row of the Parquet test files (`None` writes a null).
struct PqRow {
    oid: i64,
    camera: Option<i64>,
    item: Vec<u8>,
    lane: Option<&'static str>,
}

fn pq(oid: i64) -> PqRow {
    PqRow {
        oid,
        camera: Some(2),
        item: b"car".to_vec(),
        lane: Some("left"),
    }
}

fn write_col<T: DataType>(
    c: &mut SerializedColumnWriter<'_>,
    vals: Vec<Option<T::T>>,
    optional: bool,
) {
    let defs: Vec<i16> = vals.iter().map(|v| v.is_some() as i16).collect();
    let present: Vec<T::T> = vals.into_iter().flatten().collect();
    c.typed::<T>()
        .write_batch(&present, optional.then_some(&defs[..]), None)
        .unwrap();
}

/// Writes `groups` as row groups of a Parquet file compressed with `codec`.
fn write_parquet(path: &Path, codec: Compression, groups: &[Vec<PqRow>]) {
    let schema = Arc::new(
        parse_message_type(
            "message dataset_a {
                required int64 geographical_location_oid;
                optional int64 video_camera_oid;
                required int64 detection_oid;
                required binary item_name (UTF8);
                required int64 timestamp_detected;
                optional binary lane (UTF8);
            }",
        )
        .unwrap(),
    );
    let props = WriterProperties::builder().set_compression(codec).build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
    for rows in groups {
        let mut rg = w.next_row_group().unwrap();
        let mut col = 0;
        while let Some(mut c) = rg.next_column().unwrap() {
            let ints = |f: &dyn Fn(&PqRow) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
            let texts =
                |f: &dyn Fn(&PqRow) -> Option<ByteArray>| rows.iter().map(f).collect::<Vec<_>>();
            match col {
                0 => write_col::<Int64Type>(&mut c, ints(&|_| Some(1)), false),
                1 => write_col::<Int64Type>(&mut c, ints(&|r| r.camera), true),
                2 => write_col::<Int64Type>(&mut c, ints(&|r| Some(r.oid)), false),
                3 => write_col::<ByteArrayType>(
                    &mut c,
                    texts(&|r| Some(r.item.clone().into())),
                    false,
                ),
                4 => write_col::<Int64Type>(&mut c, ints(&|r| Some(TS + r.oid)), false),
                _ => write_col::<ByteArrayType>(
                    &mut c,
                    texts(&|r| r.lane.map(ByteArray::from)),
                    true,
                ),
            }
            c.close().unwrap();
            col += 1;
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn codecs() -> Vec<(&'static str, Compression)> {
    vec![
        ("uncompressed", Compression::UNCOMPRESSED),
        ("snappy", Compression::SNAPPY),
        ("gzip", Compression::GZIP(GzipLevel::default())),
        ("lz4", Compression::LZ4),
        ("lz4_raw", Compression::LZ4_RAW),
        ("zstd", Compression::ZSTD(ZstdLevel::default())),
    ]
}

#[tokio::test]
async fn compressed_parquet_replays_with_every_codec() {
    for (name, codec) in codecs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{name}.parquet"));
        let groups: Vec<Vec<PqRow>> = (0..2)
            .map(|g| (1..=1500).map(|i| pq(g * 1500 + i)).collect())
            .collect();
        write_parquet(&path, codec, &groups);
        let p = publisher(dir.path());

        let s = run(&p, &path).await.unwrap();

        assert_eq!(
            (s.rows, s.accepted, s.invalid),
            (3000, 3000, 0),
            "{name}: {s:?}"
        );
        assert_eq!(oids(&p), (1..=3000).collect::<Vec<_>>(), "{name}");
        let d = &published(&p)[1500];
        assert_eq!(
            (
                d.video_camera_oid,
                d.item_name.as_str(),
                d.timestamp_detected
            ),
            (2, "car", TS + 1501),
            "{name}"
        );
        assert_eq!(d.attributes["lane"], "left", "{name}");
    }
}

#[tokio::test]
async fn a_bad_parquet_value_is_reported_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    let mut rows: Vec<PqRow> = (1..=6).map(pq).collect();
    rows[1].item = b"caf\xe9".to_vec();
    rows[2].camera = None;
    rows[3].item = b"\xff\xfe".to_vec();
    rows[4].lane = None;
    write_parquet(&path, Compression::SNAPPY, &[rows]);
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![1, 5, 6]);
    assert!(!published(&p)[1].attributes.contains_key("lane"));
    assert_eq!((s.rows, s.accepted, s.invalid), (6, 3, 3), "{s:?}");
    for needle in [
        "row 2: field `item_name`: not valid UTF-8 (byte 4 of the value)",
        "row 3: field `video_camera_oid`: missing",
        "row 4: field `item_name`: not valid UTF-8 (byte 1 of the value)",
    ] {
        assert!(has(&s, needle), "{needle:?} not in {:#?}", s.reported);
    }
}

/// Overwrites every column chunk of row group `g` with 0xFF bytes.
fn damage_row_group(path: &Path, g: usize) {
    let (start, end) = {
        let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let rg = r.metadata().row_group(g);
        let ranges: Vec<(u64, u64)> = rg.columns().iter().map(|c| c.byte_range()).collect();
        let start = ranges.iter().map(|r| r.0).min().unwrap();
        let end = ranges.iter().map(|r| r.0 + r.1).max().unwrap();
        (start as usize, end as usize)
    };
    let mut bytes = std::fs::read(path).unwrap();
    bytes[start..end].fill(0xff);
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_damaged_parquet_file_is_reported_once_and_the_replay_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    let groups: Vec<Vec<PqRow>> = (0..3)
        .map(|g| (1..=3).map(|i| pq(g * 3 + i)).collect())
        .collect();
    write_parquet(&path, Compression::ZSTD(ZstdLevel::default()), &groups);
    damage_row_group(&path, 1);
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![1, 2, 3, 7, 8, 9]);
    assert_eq!((s.rows, s.accepted, s.unreadable), (6, 6, 1), "{s:?}");
    assert_eq!(s.reported.len(), 1, "reported once: {:#?}", s.reported);
    assert!(
        has(
            &s,
            "a.parquet: unreadable: row group 1 (rows 4–6), from row 4:"
        ) && has(&s, "3 rows not read"),
        "{:#?}",
        s.reported
    );

    // A restart goes on after row 9: nothing is read or reported again.
    let again = run(&p, &path).await.unwrap();
    assert_eq!((again.rows, again.unreadable, again.skipped), (0, 0, 9));
    assert!(again.reported.is_empty());

    // A truncated file has no footer: refused once, naming the file.
    let cut = dir.path().join("cut.parquet");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = run(&p, &cut).await.unwrap_err().to_string();
    assert!(
        e.contains("cut.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
}

/// Rewrites the one-byte `num_values` of the first page of column `col` in
/// row group `g` (its dictionary page, or its first data page) from `from` to
/// `to` (both under 64: one zigzag byte each), leaving every length as it was.
fn claim_values(path: &Path, g: usize, col: usize, dictionary: bool, from: u8, to: u8) {
    let at = {
        let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let c = r.metadata().row_group(g).column(col).clone();
        if dictionary {
            c.dictionary_page_offset().expect("a dictionary page")
        } else {
            c.data_page_offset()
        }
    } as usize;
    let mut bytes = std::fs::read(path).unwrap();
    // type, uncompressed size, compressed size (and a crc when present): a
    // field byte and a varint each; then the page's own header, whose field
    // 1 is `num_values`.
    let mut i = at;
    while bytes[i] & 0x0f == 5 {
        i += 1;
        while bytes[i] & 0x80 != 0 {
            i += 1;
        }
        i += 1;
    }
    assert_eq!(bytes[i] & 0x0f, 12, "the page's own header follows");
    assert_eq!(bytes[i + 1], 0x15, "num_values is its field 1, an i32");
    assert_eq!(bytes[i + 2], from * 2, "num_values is {from}");
    bytes[i + 2] = to * 2;
    std::fs::write(path, bytes).unwrap();
}

/// The fuzz inputs kept in `fuzz/regressions/`.
fn regression(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(name)
}

#[tokio::test]
async fn a_parquet_file_claiming_a_huge_dictionary_is_refused_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    let groups: Vec<Vec<PqRow>> = (0..3)
        .map(|g| (1..=3).map(|i| pq(g * 3 + i)).collect())
        .collect();
    write_parquet(&path, Compression::UNCOMPRESSED, &groups);
    // `item_name` is "car" in every row: a dictionary of 1 value, 7 bytes.
    claim_values(&path, 1, 3, true, 1, 63);
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![1, 2, 3, 7, 8, 9]);
    assert_eq!((s.rows, s.unreadable, s.reported.len()), (6, 1, 1), "{s:?}");
    assert!(
        has(
            &s,
            "row group 1 (rows 4–6), from row 4: column chunk `item_name`: page 0 at byte"
        ) && has(&s, "a dictionary of 63 values in 7 bytes (at most 1 fit)"),
        "{:#?}",
        s.reported
    );

    // Found by fuzzing: a 1,475-byte file whose dictionary page claims
    // enough values for a 7.9 GB buffer in the parquet crate. Refused, the
    // rest read.
    let found = dir.path().join("found.parquet");
    std::fs::copy(regression("replay_parquet-huge-page-alloc"), &found).unwrap();
    let s = read_rows(&found, Format::Parquet).unwrap();
    assert!(s.unreadable >= 1, "{s:?}");
}

#[tokio::test]
async fn a_page_claiming_more_values_than_its_row_group_has_rows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.parquet");
    let groups: Vec<Vec<PqRow>> = (0..3)
        .map(|g| (1..=3).map(|i| pq(g * 3 + i)).collect())
        .collect();
    write_parquet(&path, Compression::SNAPPY, &groups);
    // `detection_oid`'s data page holds 3 values; make it claim 63 in a row
    // group of 3 rows.
    claim_values(&path, 1, 2, false, 3, 63);
    let p = publisher(dir.path());

    let s = run(&p, &path).await.unwrap();

    assert_eq!(oids(&p), vec![1, 2, 3, 7, 8, 9]);
    assert_eq!((s.unreadable, s.reported.len()), (1, 1), "{s:?}");
    assert!(
        has(
            &s,
            "row group 1 (rows 4–6), from row 4: column chunk `detection_oid`: page"
        ) && has(&s, "63 values, more than the 3 the column chunk can hold"),
        "{:#?}",
        s.reported
    );
}

#[tokio::test]
async fn a_damaged_column_chunk_is_reported_within_a_second() {
    // Found by fuzzing: files of 1.5 and 7 KB whose damaged column chunks
    // kept the parquet crate reading page headers for 38 s and over 60 s.
    for name in [
        "replay_parquet-slow-page-headers",
        "replay_parquet-over-60s",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{name}.parquet"));
        std::fs::copy(regression(name), &path).unwrap();
        let p = publisher(dir.path());
        let t = std::time::Instant::now();

        let s = run(&p, &path).await;

        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "{name}: {took:?}");
        match s {
            Ok(s) => assert!(s.unreadable >= 1 && !s.reported.is_empty(), "{name}: {s:?}"),
            Err(e) => assert!(e.to_string().contains(name), "{name}: {e}"),
        }
    }
}
