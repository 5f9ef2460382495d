//! Simulated cameras: a synthetic H.264 stream made with FFmpeg's libx264 —
//! a test pattern with the camera's name and a running clock drawn in (the
//! agent host's time of each frame), and the same time as a machine-readable
//! strip of 48 black/white blocks along the bottom, so a test (or a person)
//! can tell exactly which moment a snapshot or a clip shows.

use ffmpeg_next::{
    self as ffmpeg, codec, encoder, format::Pixel, frame, Dictionary, Packet, Rational,
};

use super::ring::RingPacket;

/// Bits of the time code strip (epoch ms fits in 48 bits until the year 10889).
const CODE_BITS: u32 = 48;

/// Shape of a synthetic camera.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Frames per GOP (keyframe interval).
    pub gop: u32,
}

/// A synthetic camera's encoder.
pub struct Synth {
    opts: SynthOptions,
    encoder: encoder::video::Encoder,
    frame: frame::Video,
    index: i64,
}

impl Synth {
    pub fn new(opts: SynthOptions) -> Result<Self, ffmpeg::Error> {
        ffmpeg::init()?;
        ffmpeg::log::set_level(ffmpeg::log::Level::Error);
        let codec = encoder::find(codec::Id::H264).ok_or(ffmpeg::Error::EncoderNotFound)?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()?;
        enc.set_width(opts.width);
        enc.set_height(opts.height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(Rational(1, opts.fps as i32));
        enc.set_frame_rate(Some(Rational(opts.fps as i32, 1)));
        enc.set_gop(opts.gop);
        enc.set_max_b_frames(0);
        // Extradata (SPS/PPS) out of band, as MP4 wants it.
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
        let mut o = Dictionary::new();
        o.set("preset", "ultrafast");
        o.set("tune", "zerolatency");
        o.set(
            "x264-params",
            &format!(
                "keyint={g}:min-keyint={g}:scenecut=0:threads=1",
                g = opts.gop
            ),
        );
        let encoder = enc.open_with(o)?;
        let frame = frame::Video::new(Pixel::YUV420P, opts.width, opts.height);
        Ok(Self {
            opts,
            encoder,
            frame,
            index: 0,
        })
    }

    /// The stream's codec parameters (with SPS/PPS), for muxing and decoding.
    pub fn parameters(&self) -> codec::Parameters {
        codec::Parameters::from(&self.encoder)
    }

    pub fn time_base(&self) -> Rational {
        Rational(1, self.opts.fps as i32)
    }

    /// Draws and encodes the next frame, taken at `wall_ms`; returns the
    /// packets the encoder gives back (one per frame with these settings).
    pub fn next_frame(&mut self, wall_ms: i64) -> Result<Vec<RingPacket>, ffmpeg::Error> {
        draw(&mut self.frame, &self.opts.name, wall_ms, self.index);
        self.frame.set_pts(Some(self.index));
        self.encoder.send_frame(&self.frame)?;
        self.index += 1;
        let mut out = Vec::new();
        let mut p = Packet::empty();
        while self.encoder.receive_packet(&mut p).is_ok() {
            out.push(RingPacket {
                data: bytes::Bytes::copy_from_slice(p.data().unwrap_or_default()),
                pts: p.pts().unwrap_or(0),
                dts: p.dts().unwrap_or(0),
                duration: p.duration().max(1),
                key: p.is_key(),
                wall_ms,
            });
        }
        Ok(out)
    }
}

fn draw(f: &mut frame::Video, name: &str, wall_ms: i64, index: i64) {
    let (w, h) = (f.width() as usize, f.height() as usize);
    let ys = f.stride(0);
    {
        let y = f.data_mut(0);
        // Eight gray bars, and a block sliding across so the picture moves.
        for row in 0..h {
            for col in 0..w {
                y[row * ys + col] = 40 + (col * 8 / w) as u8 * 25;
            }
        }
        let bx = (index as usize * 8) % w.saturating_sub(h / 6).max(1);
        for row in h / 3..h / 3 + h / 6 {
            for col in bx..(bx + h / 6).min(w) {
                y[row * ys + col] = 235;
            }
        }
        let scale = (h / 90).max(2);
        let clock = humantime_like(wall_ms);
        draw_text(y, ys, w, h, 8, 8, scale, name);
        draw_text(y, ys, w, h, 8, 8 + 9 * scale, scale, &clock);
        // The time code strip: a white border row, then 48 blocks, MSB first.
        let cell = w / (CODE_BITS as usize + 4);
        let top = h - cell - 2;
        for bit in 0..CODE_BITS as usize {
            let on = (wall_ms as u64 >> (CODE_BITS as usize - 1 - bit)) & 1 == 1;
            let x0 = (bit + 2) * cell;
            for row in top..top + cell {
                for col in x0..x0 + cell {
                    y[row * ys + col] = if on { 235 } else { 16 };
                }
            }
        }
    }
    for plane in [1, 2] {
        let s = f.stride(plane);
        let d = f.data_mut(plane);
        for row in 0..h / 2 {
            for col in 0..w / 2 {
                d[row * s + col] = if plane == 1 {
                    128 + (col * 4 / w) as u8 * 20
                } else {
                    128
                };
            }
        }
    }
}

/// Reads the time code strip from a luma plane (or any 8-bit gray image).
pub fn read_time_code(luma: &[u8], stride: usize, width: usize, height: usize) -> Option<i64> {
    let cell = width / (CODE_BITS as usize + 4);
    if cell < 2 {
        return None;
    }
    let top = height - cell - 2;
    let mut v: u64 = 0;
    for bit in 0..CODE_BITS as usize {
        let (cx, cy) = ((bit + 2) * cell + cell / 2, top + cell / 2);
        let on = luma[cy * stride + cx] > 128;
        v = (v << 1) | on as u64;
    }
    Some(v as i64)
}

fn humantime_like(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    let (h, m, sec) = ((s / 3600) % 24, (s / 60) % 60, s % 60);
    format!("{h:02}:{m:02}:{sec:02}.{:03} UTC", ms.rem_euclid(1000))
}

#[allow(clippy::too_many_arguments)]
fn draw_text(
    y: &mut [u8],
    stride: usize,
    w: usize,
    h: usize,
    x: usize,
    top: usize,
    scale: usize,
    text: &str,
) {
    let mut cx = x;
    for ch in text.chars() {
        let glyph = glyph(ch.to_ascii_uppercase());
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..5 {
                let on = bits >> (4 - col) & 1 == 1;
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (cx + col * scale + dx, top + row * scale + dy);
                        if px < w && py < h {
                            y[py * stride + px] = if on { 235 } else { 16 };
                        }
                    }
                }
            }
        }
        cx += 6 * scale;
    }
}

/// A 5x7 bitmap font: digits, capitals and a little punctuation.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        _ => [0; 7],
    }
}
