//! `seed`: writes the seed corpus (`fuzz/corpus/<target>/`): small valid
//! examples of each format, plus a few near misses. Run it again after a
//! format changes; the files are checked in.

use std::sync::Arc;

use parquet::{
    basic::{Compression, ZstdLevel},
    data_type::{ByteArray, ByteArrayType, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::parser::parse_message_type,
};
use prost::Message;
use sightline_fuzz::{corpus_dir, targets};
use sightline_proto::v1::{
    agent_message::Msg, core_message, quic_reply::Reply, Ack, AgentMessage, Batch, BoundingBox,
    CoreMessage, Detection, EdgeEvent, Hello, PublishRequest, QuicCall, QuicReply, QuicStatus,
};

const TS: i64 = 1_764_000_000_000;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("the corpus dir");
    std::fs::write(dir.join(name), bytes).expect("writing a corpus file");
}

fn detection(oid: Option<i64>) -> Detection {
    Detection {
        geographical_location_oid: 3,
        video_camera_oid: 30,
        detection_oid: oid,
        item_name: "backpack".into(),
        timestamp_detected: TS,
        r#box: Some(BoundingBox {
            x: 1.0,
            y: 2.0,
            width: 30.0,
            height: 40.0,
        }),
        confidence: 0.9,
        attributes: [("model".to_string(), "yolo".to_string())].into(),
        media_expected: vec!["snapshot".into()],
        ..Default::default()
    }
}

enum Col {
    Ints(Vec<i64>),
    Texts(Vec<&'static str>),
}

fn parquet(schema: &str, cols: Vec<Col>, codec: Compression) -> Vec<u8> {
    let schema = Arc::new(parse_message_type(schema).expect("a schema"));
    let props = WriterProperties::builder().set_compression(codec).build();
    let mut out = Vec::new();
    {
        let mut w = SerializedFileWriter::new(&mut out, schema, Arc::new(props)).expect("writer");
        let mut rg = w.next_row_group().expect("row group");
        let mut i = 0;
        while let Some(mut c) = rg.next_column().expect("column") {
            match &cols[i] {
                Col::Ints(v) => {
                    c.typed::<Int64Type>()
                        .write_batch(v, None, None)
                        .expect("ints");
                }
                Col::Texts(v) => {
                    let v: Vec<ByteArray> = v.iter().map(|s| ByteArray::from(*s)).collect();
                    c.typed::<ByteArrayType>()
                        .write_batch(&v, None, None)
                        .expect("texts");
                }
            }
            c.close().expect("close column");
            i += 1;
        }
        rg.close().expect("close row group");
        w.close().expect("close file");
    }
    out
}

fn main() {
    let event = |seq: u64| {
        EdgeEvent {
            seq,
            detection: Some(detection(Some(100 + seq as i64))),
            accepted_ms: TS + 5,
        }
        .encode_to_vec()
    };
    // edge_messages
    let batch = AgentMessage {
        msg: Some(Msg::Batch(Batch {
            first_seq: 1,
            events: vec![event(1).into(), event(2).into()],
            ..Default::default()
        })),
    };
    put("edge_messages", "batch.pb", &batch.encode_to_vec());
    let hello = AgentMessage {
        msg: Some(Msg::Hello(Hello {
            agent_id: "agent-1".into(),
            epoch: 7,
            version: "0.1.0".into(),
            buffer_depth: 2,
            next_seq: 3,
            transport: "quic".into(),
        })),
    };
    put("edge_messages", "hello.pb", &hello.encode_to_vec());
    put("edge_messages", "event.pb", &event(1));
    let ack = CoreMessage {
        msg: Some(core_message::Msg::Ack(Ack {
            committed_through: 2,
            ..Default::default()
        })),
    };
    put("edge_messages", "ack.pb", &ack.encode_to_vec());
    let call = QuicCall {
        method: sightline_proto::edge::SESSION.into(),
    };
    put("edge_messages", "call.pb", &call.encode_to_vec());
    let reply = QuicReply {
        reply: Some(Reply::Status(QuicStatus {
            code: 14,
            message: "unavailable".into(),
        })),
    };
    put("edge_messages", "reply.pb", &reply.encode_to_vec());
    // Frames as on a QUIC stream: 4-byte big-endian length, then the message.
    let mut frames = Vec::new();
    for m in [
        call.encode_to_vec(),
        hello.encode_to_vec(),
        batch.encode_to_vec(),
    ] {
        frames.extend((m.len() as u32).to_be_bytes());
        frames.extend(m);
    }
    put("edge_messages", "frames.bin", &frames);

    // intake
    let req = PublishRequest {
        detections: vec![detection(None), detection(Some(5))],
    };
    put("intake", "publish.pb", &req.encode_to_vec());
    put("intake", "detection.pb", &detection(None).encode_to_vec());

    // replay
    let csv = "geographical_location_oid,video_camera_oid,detection_oid,item_name,timestamp_detected,confidence,box_x,box_y,box_width,box_height,lane\n\
               1,10,100,car,1764000000000,0.9,1,2,3,4,left\n\
               2,20,,\"person, adult\",1764000000100,,,,,,\n\
               3,30,102,bicycle,1764000000200,0.5,0,0,10,10,\"a \"\"quoted\"\" lane\"\n";
    put("replay_csv", "rows.csv", csv.as_bytes());
    put(
        "replay_csv",
        "minimal.csv",
        b"geographical_location_oid,video_camera_oid,item_name,timestamp_detected\n1,1,car,1764000000000\n",
    );
    let jsonl = r#"{"geographical_location_oid":1,"video_camera_oid":10,"detection_oid":100,"item_name":"car","timestamp_detected":1764000000000,"confidence":0.9,"box_x":1,"box_y":2,"box_width":3,"box_height":4,"lane":"left"}
{"geographical_location_oid":2,"video_camera_oid":20,"item_name":"person","timestamp_detected":1764000000100,"detection_oid":null}
{"geographical_location_oid":"3","video_camera_oid":30,"item_name":"bicycle","timestamp_detected":1.7640000002e12,"extra":{"nested":[1,2]}}
"#;
    put("replay_jsonl", "rows.jsonl", jsonl.as_bytes());
    let schema_a = "message dataset_a {
        required int64 geographical_location_oid;
        required int64 video_camera_oid;
        required int64 detection_oid;
        required binary item_name (UTF8);
        required int64 timestamp_detected;
        required binary lane (UTF8);
    }";
    let cols_a = || {
        vec![
            Col::Ints(vec![1, 2, 3]),
            Col::Ints(vec![10, 20, 30]),
            Col::Ints(vec![100, 101, 102]),
            Col::Texts(vec!["car", "person", "bicycle"]),
            Col::Ints(vec![TS, TS + 100, TS + 200]),
            Col::Texts(vec!["left", "right", ""]),
        ]
    };
    put(
        "replay_parquet",
        "plain.parquet",
        &parquet(schema_a, cols_a(), Compression::UNCOMPRESSED),
    );
    put(
        "replay_parquet",
        "snappy.parquet",
        &parquet(schema_a, cols_a(), Compression::SNAPPY),
    );
    put(
        "replay_parquet",
        "zstd.parquet",
        &parquet(schema_a, cols_a(), Compression::ZSTD(ZstdLevel::default())),
    );

    // Dataset B
    put(
        "dataset_b_csv",
        "locations.csv",
        b"geographical_location_oid,geographical_location,region\n1,Gate 1,North\n2,\"Gate 2, east\",South\n3,Hall,\n",
    );
    let schema_b = "message dataset_b {
        required int64 geographical_location_oid;
        required binary geographical_location (UTF8);
        required binary region (UTF8);
    }";
    let cols_b = || {
        vec![
            Col::Ints(vec![1, 2, 3]),
            Col::Texts(vec!["Gate 1", "Gate 2", "Hall"]),
            Col::Texts(vec!["North", "South", ""]),
        ]
    };
    put(
        "dataset_b_parquet",
        "plain.parquet",
        &parquet(schema_b, cols_b(), Compression::UNCOMPRESSED),
    );
    put(
        "dataset_b_parquet",
        "snappy.parquet",
        &parquet(schema_b, cols_b(), Compression::SNAPPY),
    );

    // search_query: query, page token, item, location, camera, from, to, page size
    for (name, text) in [
        ("all", "\n\n\n\n\n\n\n20"),
        ("words", "car OR person\n\n\n\n\n\n\n5"),
        (
            "fields",
            "location:gate AND camera:[10 TO 12]\n\ncar\n1\n10\n1764000000000\n1764003600000\n10",
        ),
        ("page", "*\n20\n\n\n\n\n\n10"),
        (
            "syntax",
            "item:\"back pack\"~2 -det_oid:1005 agent:agent-1^2\n\n\n\n\n\n\n100",
        ),
    ] {
        put("search_query", name, text.as_bytes());
    }

    // page tokens: a real one from the fixture, and near misses
    let core = targets::core();
    let (_, next) = core
        .store
        .list_events(0, 0, None, 10, "")
        .expect("the fixture's first page");
    put("page_tokens", "next", next.as_bytes());
    put("page_tokens", "empty", b"");
    put("page_tokens", "odd", b"abc");
    put("page_tokens", "short", b"00ff");

    // Range headers
    for (name, v) in [
        ("first", "bytes=0-99"),
        ("open", "bytes=100-"),
        ("suffix", "bytes=-50"),
        ("backwards", "bytes=5-1"),
        ("multi", "bytes=0-0,5-9"),
        ("huge", "bytes=18446744073709551615-"),
    ] {
        put("http_range", name, v.as_bytes());
    }

    // dashboard query strings
    for (name, v) in [
        ("top", "range=1h&x=10"),
        (
            "custom",
            "range=custom&from=2025-11-24+16%3A00%3A00&to=1764003600000&by=location&x=5",
        ),
        ("timeline", "range=7d&by=item"),
        (
            "search",
            "query=car&location_oid=1&camera_oid=10&item=car&from_ms=0&to_ms=0&page_token=20",
        ),
    ] {
        put("http_query", name, v.as_bytes());
    }

    // media: a small JPEG and a fast-start MP4's boxes
    let img = image::RgbImage::from_fn(16, 8, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 32) as u8, 90])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&img)
        .expect("encoding a JPEG");
    put("media_jpeg", "small.jpg", &jpeg);
    let bx = |kind: &[u8; 4], payload: &[u8]| {
        let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(payload);
        v
    };
    let mut moov = bx(b"mvhd", &[0; 100]);
    moov.extend(bx(b"trak", &bx(b"tkhd", &[0; 84])));
    let mut mp4 = bx(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41");
    mp4.extend(bx(b"moov", &moov));
    mp4.extend(bx(b"mdat", &[7; 64]));
    put("media_mp4", "faststart.mp4", &mp4);
    let mut wide = bx(b"ftyp", b"isom\0\0\x02\0");
    wide.extend(bx(b"moov", &moov));
    wide.extend([0, 0, 0, 1]);
    wide.extend(b"mdat");
    wide.extend(26u64.to_be_bytes());
    wide.extend([1; 10]);
    wide.extend([0, 0, 0, 0]);
    wide.extend(b"free");
    wide.extend([0; 5]);
    put("media_mp4", "largesize.mp4", &wide);
    println!("seed corpus written under {}", corpus_dir("").display());
}
