//! Turning ring packets into footage: a clip by stream copy (no re-encode)
//! into an MP4 with its index in front, and a snapshot by decoding only the
//! frames from the keyframe before the moment up to it.

use std::path::Path;

use ffmpeg_next::{
    self as ffmpeg, codec, encoder, format, format::Pixel, frame, packet, software::scaling,
    Dictionary, Discard, Packet, Rational,
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
    let mut d = SnapshotDecoder::new(info, target_ms, packets.len() > 8)?;
    d.feed(packets)?;
    d.finish()
}

/// A snapshot being decoded while its packets arrive: a camera starts one
/// when the detection comes in and feeds it what the ring holds (from the
/// keyframe before the moment), then each new packet, so that when the
/// frames after the moment are in, only the last frames and the JPEG are
/// left to do.
pub struct SnapshotDecoder {
    decoder: ffmpeg::decoder::Video,
    target_ms: i64,
    /// pts → agent-clock time of the packets fed so far.
    walls: std::collections::HashMap<i64, i64>,
    /// Decode time stamp of the last packet fed.
    fed_dts: Option<i64>,
    skipping: bool,
    best: Option<(i64, frame::Video)>,
    decoded: frame::Video,
    done: bool,
}

/// Frames more than this before the target cannot be the snapshot: until
/// the packets reach it, frames no other frame refers to (most B-frames) are
/// not decoded at all. In decode order, a frame displayed near the target
/// comes after the reference frame displayed after it, so the switch happens
/// before any candidate.
const CANDIDATE_MS: i64 = 200;

impl SnapshotDecoder {
    /// `threads`: two frame threads, worth it when a run of frames must be
    /// decoded (mid-GOP); next to a keyframe starting threads costs more
    /// than it saves.
    pub fn new(info: &StreamInfo, target_ms: i64, threads: bool) -> Result<Self, CutError> {
        let mut ctx = codec::context::Context::from_parameters(info.parameters.clone())?;
        if threads {
            let mut t = codec::threading::Config::kind(codec::threading::Type::Frame);
            t.count = 2;
            ctx.set_threading(t);
        }
        let mut decoder = ctx.decoder().video()?;
        decoder.skip_frame(Discard::NonReference);
        Ok(Self {
            decoder,
            target_ms,
            walls: std::collections::HashMap::new(),
            fed_dts: None,
            skipping: true,
            best: None,
            decoded: frame::Video::empty(),
            done: false,
        })
    }

    /// Whether the nearest frame is known (a frame at or past the target
    /// came out).
    pub fn done(&self) -> bool {
        self.done
    }

    /// Feeds the packets after the last one fed (by decode time stamp);
    /// the first call must start on a keyframe.
    pub fn feed(&mut self, packets: &[RingPacket]) -> Result<(), CutError> {
        for p in packets {
            if self.done {
                break;
            }
            if self.fed_dts.is_some_and(|d| p.dts <= d) {
                continue;
            }
            self.fed_dts = Some(p.dts);
            self.walls.insert(p.pts, p.wall_ms);
            if self.skipping && p.wall_ms >= self.target_ms - CANDIDATE_MS {
                self.decoder.skip_frame(Discard::Default);
                self.skipping = false;
            }
            let mut pkt = Packet::copy(&p.data);
            pkt.set_pts(Some(p.pts));
            pkt.set_dts(Some(p.dts));
            if p.key {
                pkt.set_flags(packet::Flags::KEY);
            }
            self.decoder.send_packet(&pkt)?;
            while self.decoder.receive_frame(&mut self.decoded).is_ok() {
                self.consider();
            }
        }
        Ok(())
    }

    /// Moves the decoded frame into `best` when it is nearer (no copy of
    /// the pixels); past the target, the nearest is known.
    fn consider(&mut self) {
        let Some(wall) = self.decoded.pts().and_then(|p| self.walls.get(&p).copied()) else {
            return;
        };
        let t = self.target_ms;
        if self
            .best
            .as_ref()
            .is_none_or(|(b, _)| (wall - t).abs() < (b - t).abs())
        {
            self.best = Some((
                wall,
                std::mem::replace(&mut self.decoded, frame::Video::empty()),
            ));
        }
        if wall >= t {
            self.done = true;
        }
    }

    /// The frame nearest the target (flushing the decoder if no frame past
    /// it came out), as JPEG and thumbnail.
    pub fn finish(mut self) -> Result<Snapshot, CutError> {
        if self.walls.is_empty() {
            return Err(CutError::Empty);
        }
        if !self.done {
            self.decoder.send_eof()?;
            while self.decoder.receive_frame(&mut self.decoded).is_ok() {
                self.consider();
            }
        }
        // Frame threads still at work would compete with the encoder.
        let (best, decoder) = (self.best.take(), self.decoder);
        drop(decoder);
        let (frame_ms, f) = best.ok_or(CutError::NoFrame)?;
        encode_snapshot(frame_ms, f)
    }
}

fn encode_snapshot(frame_ms: i64, f: frame::Video) -> Result<Snapshot, CutError> {
    let (w, h) = (f.width(), f.height());
    let t = std::time::Instant::now();
    // The JPEG is encoded straight from the decoded 4:2:0 planes; other
    // pixel formats are converted to 4:2:0 first.
    let full = match f.format() {
        Pixel::YUV420P | Pixel::YUVJ420P => None,
        _ => Some(scale_420(&f, w, h)?),
    };
    let converted = t.elapsed();
    let jpeg = encode_jpeg(full.as_ref().unwrap_or(&f), 85)?;
    let encoded = t.elapsed();
    // The thumbnail is scaled from the decoded frame by swscale.
    let (tw, th) = if w >= h {
        (THUMBNAIL_PX.min(w), (THUMBNAIL_PX.min(w) * h / w).max(2))
    } else {
        ((THUMBNAIL_PX.min(h) * w / h).max(2), THUMBNAIL_PX.min(h))
    };
    let thumbnail = encode_jpeg(&scale_420(&f, tw, th)?, 80)?;
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

/// The frame as planar 4:2:0 at `w` x `h`, scaled and converted by swscale.
fn scale_420(f: &frame::Video, w: u32, h: u32) -> Result<frame::Video, CutError> {
    let mut scaler = scaling::Context::get(
        f.format(),
        f.width(),
        f.height(),
        Pixel::YUV420P,
        w,
        h,
        scaling::Flags::BILINEAR,
    )?;
    let mut out = frame::Video::empty();
    scaler.run(f, &mut out)?;
    // swscale keeps the source's range; carry it so the levels are read right.
    out.set_color_range(f.color_range());
    Ok(out)
}

/// Encodes a 4:2:0 frame as a baseline JPEG (4:2:0 below quality 90).
///
/// This is the `jpeg-encoder` crate rather than `image`'s encoder: for a
/// 1080p frame `image` took 32-33 ms and needed an RGB copy first (1-5 ms),
/// which alone was most of the 50 ms a snapshot may take.
fn encode_jpeg(f: &frame::Video, quality: u8) -> Result<Vec<u8>, CutError> {
    let (Ok(_), Ok(_)) = (u16::try_from(f.width()), u16::try_from(f.height())) else {
        return Err(CutError::Jpeg(format!(
            "{}x{} is larger than JPEG allows (65535)",
            f.width(),
            f.height()
        )));
    };
    let mut out = Vec::with_capacity((f.width() * f.height() / 4) as usize);
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode_image(Planes::new(f))
        .map_err(|e| CutError::Jpeg(e.to_string()))?;
    Ok(out)
}

/// A decoded 4:2:0 frame as the JPEG encoder's input, read row by row from
/// its planes. JPEG (JFIF) wants full-range levels; video is usually
/// limited range (Y 16-235, Cb/Cr 16-240), so those are stretched by a
/// lookup table. The colour matrix is left as it is (BT.709 for HD video,
/// where JFIF assumes BT.601): a slight hue shift, no change in brightness.
struct Planes<'a> {
    frame: &'a frame::Video,
    luma: [u8; 256],
    chroma: [u8; 256],
}

impl<'a> Planes<'a> {
    fn new(frame: &'a frame::Video) -> Self {
        let full = frame.format() == Pixel::YUVJ420P
            || frame.color_range() == ffmpeg::util::color::Range::JPEG;
        let mut luma = [0u8; 256];
        let mut chroma = [0u8; 256];
        for v in 0..256usize {
            if full {
                luma[v] = v as u8;
                chroma[v] = v as u8;
            } else {
                let y = ((v as f32 - 16.0) * 255.0 / 219.0).round();
                let c = ((v as f32 - 128.0) * 255.0 / 224.0 + 128.0).round();
                luma[v] = y.clamp(0.0, 255.0) as u8;
                chroma[v] = c.clamp(0.0, 255.0) as u8;
            }
        }
        Self {
            frame,
            luma,
            chroma,
        }
    }

    fn row(&self, plane: usize, row: usize, len: usize) -> &[u8] {
        let stride = self.frame.stride(plane);
        &self.frame.data(plane)[row * stride..row * stride + len]
    }
}

impl jpeg_encoder::ImageBuffer for Planes<'_> {
    fn get_jpeg_color_type(&self) -> jpeg_encoder::JpegColorType {
        jpeg_encoder::JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.frame.width() as u16
    }

    fn height(&self) -> u16 {
        self.frame.height() as u16
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let (y, w) = (y as usize, self.frame.width() as usize);
        let cw = w.div_ceil(2);
        let (luma, cb, cr) = (
            self.row(0, y, w),
            self.row(1, y / 2, cw),
            self.row(2, y / 2, cw),
        );
        buffers[0].extend(luma.iter().map(|&v| self.luma[v as usize]));
        for x in 0..w {
            buffers[1].push(self.chroma[cb[x / 2] as usize]);
            buffers[2].push(self.chroma[cr[x / 2] as usize]);
        }
    }
}
