//! Turning ring packets into footage: a clip by stream copy (no re-encode)
//! into an MP4 with its index in front, and a snapshot by decoding only the
//! frames from the keyframe before the moment up to it.

use std::path::Path;

use ffmpeg_next::{
    self as ffmpeg, codec, encoder, format, format::Pixel, frame, packet, software::scaling,
    Dictionary, Packet, Rational,
};

use super::ring::RingPacket;

/// What a camera's packets need to be muxed or decoded.
#[derive(Clone)]
pub struct StreamInfo {
    pub parameters: codec::Parameters,
    pub time_base: Rational,
}

#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error("ffmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
    #[error("no packets for the requested moment")]
    Empty,
    #[error("no frame decoded near the requested moment")]
    NoFrame,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("jpeg: {0}")]
    Jpeg(String),
}

/// Muxes `packets` (starting on a keyframe) into an MP4 by stream copy, with
/// `movflags=+faststart` so the index comes first. Timestamps are shifted so
/// the clip starts at 0.
pub fn cut_clip(
    info: &StreamInfo,
    packets: &[RingPacket],
    scratch: &Path,
) -> Result<Vec<u8>, CutError> {
    let first = packets.first().ok_or(CutError::Empty)?;
    let path = scratch.join(format!(
        "clip-{}-{}.mp4",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| -> Result<Vec<u8>, CutError> {
        let mut octx = format::output_as(&path, "mp4")?;
        {
            let mut ost = octx.add_stream(encoder::find(codec::Id::None))?;
            ost.set_parameters(info.parameters.clone());
            ost.set_time_base(info.time_base);
        }
        let mut opts = Dictionary::new();
        opts.set("movflags", "+faststart");
        octx.write_header_with(opts)?;
        let ost_tb = octx
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(info.time_base);
        let base = first.dts.min(first.pts);
        for p in packets {
            let mut pkt = Packet::copy(&p.data);
            pkt.set_pts(Some(p.pts - base));
            pkt.set_dts(Some(p.dts - base));
            pkt.set_duration(p.duration);
            if p.key {
                pkt.set_flags(packet::Flags::KEY);
            }
            pkt.set_stream(0);
            pkt.rescale_ts(info.time_base, ost_tb);
            pkt.write_interleaved(&mut octx)?;
        }
        octx.write_trailer()?;
        Ok(std::fs::read(&path)?)
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// A decoded moment: the frame nearest `target_ms`, as JPEG and thumbnail.
pub struct Snapshot {
    pub jpeg: Vec<u8>,
    pub thumbnail: Vec<u8>,
    /// The agent-clock time of the frame shown.
    pub frame_ms: i64,
}

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_PX: u32 = 320;

/// Decodes `packets` (starting on a keyframe) up to the frame nearest
/// `target_ms` and encodes it as JPEG (quality 85) plus a thumbnail.
pub fn snapshot(
    info: &StreamInfo,
    packets: &[RingPacket],
    target_ms: i64,
) -> Result<Snapshot, CutError> {
    if packets.is_empty() {
        return Err(CutError::Empty);
    }
    let mut ctx = codec::context::Context::from_parameters(info.parameters.clone())?;
    // Frame threads when there is a run of frames to decode (mid-GOP): that
    // decoding is the other half of a snapshot's cost (the JPEG is the
    // first); next to a keyframe starting threads costs more than it saves.
    if packets.len() > 8 {
        let mut threads = codec::threading::Config::kind(codec::threading::Type::Frame);
        threads.count = 2;
        ctx.set_threading(threads);
    }
    let mut decoder = ctx.decoder().video()?;
    let wall_of = |pts: i64| packets.iter().find(|p| p.pts == pts).map(|p| p.wall_ms);
    let mut best: Option<(i64, frame::Video)> = None;
    let mut decoded = frame::Video::empty();
    let mut done = false;
    let consider = |f: &frame::Video, best: &mut Option<(i64, frame::Video)>| -> bool {
        let Some(wall) = f.pts().and_then(wall_of) else {
            return false;
        };
        let better = best
            .as_ref()
            .is_none_or(|(b, _)| (wall - target_ms).abs() < (b - target_ms).abs());
        if better {
            *best = Some((wall, f.clone()));
        }
        // Frames come in time order: past the target, the nearest is known.
        wall >= target_ms
    };
    for p in packets {
        let mut pkt = Packet::copy(&p.data);
        pkt.set_pts(Some(p.pts));
        pkt.set_dts(Some(p.dts));
        if p.key {
            pkt.set_flags(packet::Flags::KEY);
        }
        decoder.send_packet(&pkt)?;
        while decoder.receive_frame(&mut decoded).is_ok() {
            if consider(&decoded, &mut best) {
                done = true;
            }
        }
        if done {
            break;
        }
    }
    if !done {
        decoder.send_eof()?;
        while decoder.receive_frame(&mut decoded).is_ok() {
            consider(&decoded, &mut best);
        }
    }
    let (frame_ms, f) = best.ok_or(CutError::NoFrame)?;
    let (w, h) = (f.width(), f.height());
    let t = std::time::Instant::now();
    let img = to_rgb(&f, w, h)?;
    let converted = t.elapsed();
    let jpeg = encode_jpeg(&img)?;
    let encoded = t.elapsed();
    // The thumbnail is scaled from the decoded frame by swscale (fast), not
    // from the full-size RGB image.
    let (tw, th) = if w >= h {
        (THUMBNAIL_PX.min(w), (THUMBNAIL_PX.min(w) * h / w).max(1))
    } else {
        ((THUMBNAIL_PX.min(h) * w / h).max(1), THUMBNAIL_PX.min(h))
    };
    let thumbnail = encode_jpeg(&to_rgb(&f, tw, th)?)?;
    tracing::debug!(
        convert_ms = converted.as_secs_f64() * 1e3,
        jpeg_ms = (encoded - converted).as_secs_f64() * 1e3,
        thumbnail_ms = (t.elapsed() - encoded).as_secs_f64() * 1e3,
        "snapshot encoded"
    );
    Ok(Snapshot {
        jpeg,
        thumbnail,
        frame_ms,
    })
}

/// The frame as RGB at `w` x `h` (scaled by swscale when smaller).
fn to_rgb(f: &frame::Video, w: u32, h: u32) -> Result<image::RgbImage, CutError> {
    let mut scaler = scaling::Context::get(
        f.format(),
        f.width(),
        f.height(),
        Pixel::RGB24,
        w,
        h,
        scaling::Flags::BILINEAR,
    )?;
    let mut rgb = frame::Video::empty();
    scaler.run(f, &mut rgb)?;
    let stride = rgb.stride(0);
    let data = rgb.data(0);
    let mut buf = Vec::with_capacity((w * h * 3) as usize);
    for row in 0..h as usize {
        buf.extend_from_slice(&data[row * stride..row * stride + w as usize * 3]);
    }
    image::RgbImage::from_raw(w, h, buf).ok_or(CutError::NoFrame)
}

fn encode_jpeg(img: &image::RgbImage) -> Result<Vec<u8>, CutError> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(img)
        .map_err(|e| CutError::Jpeg(e.to_string()))?;
    Ok(out)
}
