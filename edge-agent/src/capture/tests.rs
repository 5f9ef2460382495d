//! Footage with real FFmpeg: a synthetic H.264 camera into the ring, then a
//! clip and a snapshot, checked by decoding them and reading the time code
//! drawn into each frame.

use ffmpeg_next::{self as ffmpeg, format, frame, media};

use super::{
    cut::{cut_clip, snapshot, StreamInfo},
    ring::Ring,
    synth::{read_time_code, Synth, SynthOptions},
};

const T0: i64 = 1_700_000_000_000;
const FRAME_MS: i64 = 40;

/// 12 s of a 25 fps camera with 1 s GOPs, frame i taken at T0 + 40 i.
fn camera() -> (Ring, StreamInfo) {
    let mut synth = Synth::new(SynthOptions {
        name: "cam-7".into(),
        width: 320,
        height: 240,
        fps: 25,
        gop: 25,
    })
    .unwrap();
    let mut ring = Ring::new(60_000, usize::MAX);
    for i in 0..300 {
        for p in synth.next_frame(T0 + i * FRAME_MS).unwrap() {
            ring.push(p);
        }
    }
    let info = StreamInfo {
        parameters: synth.parameters(),
        time_base: synth.time_base(),
    };
    (ring, info)
}

/// Top-level ISO-BMFF box types, in order.
fn boxes(mut b: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let size = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8_lossy(&b[4..8]).into_owned());
        if size < 8 || size > b.len() {
            break;
        }
        b = &b[size..];
    }
    out
}

/// Decodes a whole file; returns the time codes of its frames.
fn decode_codes(path: &std::path::Path) -> Vec<i64> {
    let mut ictx = format::input(path).unwrap();
    let stream = ictx.streams().best(media::Type::Video).unwrap();
    let index = stream.index();
    let mut dec = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .unwrap()
        .decoder()
        .video()
        .unwrap();
    let mut codes = Vec::new();
    let mut f = frame::Video::empty();
    let mut read = |dec: &mut ffmpeg::decoder::Video, codes: &mut Vec<i64>| {
        while dec.receive_frame(&mut f).is_ok() {
            let (w, h) = (f.width() as usize, f.height() as usize);
            codes.push(read_time_code(f.data(0), f.stride(0), w, h).unwrap());
        }
    };
    for (s, p) in ictx.packets() {
        if s.index() == index {
            dec.send_packet(&p).expect("every packet decodes");
            read(&mut dec, &mut codes);
        }
    }
    dec.send_eof().unwrap();
    read(&mut dec, &mut codes);
    codes
}

#[test]
fn a_clip_spans_pre_and_post_within_one_gop_starts_before_the_detection_and_decodes_to_the_end() {
    let (ring, info) = camera();
    let dir = tempfile::tempdir().unwrap();
    let t = T0 + 6_013;
    let (pre, post) = (2_000, 3_000);
    let clip = cut_clip(&info, &ring.window(t - pre, t + post), dir.path()).unwrap();
    let b = boxes(&clip);
    let moov = b.iter().position(|x| x == "moov").expect("moov");
    let mdat = b.iter().position(|x| x == "mdat").expect("mdat");
    assert_eq!(b[0], "ftyp");
    assert!(moov < mdat, "index first (faststart): {b:?}");
    let path = dir.path().join("clip.mp4");
    std::fs::write(&path, &clip).unwrap();
    let codes = decode_codes(&path);
    let (first, last) = (codes[0], *codes.last().unwrap());
    assert!(
        first <= t - pre,
        "starts at or before the pre-roll: {first} vs {}",
        t - pre
    );
    assert!(first > t - pre - 1_000, "at most one GOP earlier");
    assert!(first < t, "starts before the detection");
    assert!(
        last <= t + post && last > t + post - FRAME_MS,
        "ends at the post-roll: {last}"
    );
    assert_eq!(
        codes.len() as i64,
        (last - first) / FRAME_MS + 1,
        "no frame missing"
    );
    let duration = last - first + FRAME_MS;
    assert!(
        duration >= pre + post && duration <= pre + post + 1_000 + FRAME_MS,
        "{duration} ms"
    );
}

#[test]
fn a_snapshot_shows_the_frame_nearest_the_detection() {
    let (ring, info) = camera();
    let t = T0 + 5_017; // frames at 5000 and 5040: 5000 is nearer
    let s = snapshot(&info, &ring.window(t, t + 200), t).unwrap();
    assert_eq!(s.frame_ms, T0 + 5_000);
    let img = image::load_from_memory_with_format(&s.jpeg, image::ImageFormat::Jpeg).unwrap();
    let luma = img.to_luma8();
    let (w, h) = luma.dimensions();
    assert_eq!((w, h), (320, 240));
    assert_eq!(
        read_time_code(luma.as_raw(), w as usize, w as usize, h as usize),
        Some(T0 + 5_000)
    );
    let thumb =
        image::load_from_memory_with_format(&s.thumbnail, image::ImageFormat::Jpeg).unwrap();
    assert_eq!(thumb.width(), 320);
}
