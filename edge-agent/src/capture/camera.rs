//! One camera: a thread that reads encoded packets into the ring, and cuts
//! snapshots and clips once their moment (plus post-roll) is in the ring.

use std::{
    collections::VecDeque,
    sync::{mpsc, Arc},
    time::Duration,
};

use ffmpeg_next::{format, media, Dictionary, Rational};

use super::{
    cut::{self, StreamInfo},
    ring::{Ring, RingPacket},
    spool::{MediaItem, Spool},
    synth::{Synth, SynthOptions},
    CameraBoard, CameraConfig, CaptureMode, Trigger,
};

/// A clip being collected: one or more detections sharing it.
#[derive(Debug)]
struct PendingClip {
    from_ms: i64,
    to_ms: i64,
    det_oids: Vec<i64>,
}

/// Footage a camera still owes.
struct Jobs {
    cfg: CameraConfig,
    max_clip_ms: i64,
    /// Pending snapshots, each decoding as its packets arrive.
    snapshots: Vec<(Trigger, Option<cut::SnapshotDecoder>)>,
    clips: VecDeque<PendingClip>,
    spool: Arc<Spool>,
    board: Arc<CameraBoard>,
    /// Host clock of the newest frame last reported to the board.
    reported_ms: i64,
}

impl Jobs {
    fn add(&mut self, t: Trigger) {
        let ts = t.timestamp_ms + self.cfg.clock_offset_ms;
        self.snapshots.push((
            Trigger {
                det_oid: t.det_oid,
                timestamp_ms: ts,
            },
            None,
        ));
        if self.cfg.mode != CaptureMode::Clip {
            return;
        }
        let (from, to) = (
            ts - self.cfg.pre.as_millis() as i64,
            ts + self.cfg.post.as_millis() as i64,
        );
        if let Some(c) = self.clips.back_mut() {
            if from <= c.to_ms && to.max(c.to_ms) - c.from_ms <= self.max_clip_ms {
                c.to_ms = c.to_ms.max(to);
                c.det_oids.push(t.det_oid);
                return;
            }
        }
        self.clips.push_back(PendingClip {
            from_ms: from,
            to_ms: to,
            det_oids: vec![t.det_oid],
        });
    }

    /// Cuts whatever the ring now covers.
    fn process(&mut self, ring: &mut Ring, info: &StreamInfo) {
        if let Some(newest) = ring.newest_ms() {
            // The board is read every few seconds; once a second is plenty.
            if newest - self.reported_ms >= 1_000 {
                self.reported_ms = newest;
                self.board.update(self.cfg.camera_oid, |s| {
                    s.state = "streaming".into();
                    s.detail.clear();
                    s.last_frame_ms = newest;
                });
            }
        }
        self.cut_ready(ring, info);
        ring.hold(self.clips.front().map(|c| c.from_ms));
    }

    fn cut_ready(&mut self, ring: &Ring, info: &StreamInfo) {
        let Some(newest) = ring.newest_ms() else {
            return;
        };
        // Frames up to this long after the moment may be the nearest one.
        let frame_gap = 200;
        let mut waiting = Vec::new();
        for (t, dec) in std::mem::take(&mut self.snapshots) {
            let packets = ring.window(t.timestamp_ms, t.timestamp_ms + frame_gap);
            if packets.is_empty() {
                waiting.push((t, dec));
                continue;
            }
            // Started when the detection comes in: the frames from the
            // keyframe are decoded while the ones after the moment arrive.
            let mut dec = match dec {
                Some(d) => d,
                None => match cut::SnapshotDecoder::new(info, t.timestamp_ms, packets.len() > 8) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(camera = self.cfg.camera_oid, det_oid = t.det_oid, error = %e, "no snapshot");
                        continue;
                    }
                },
            };
            if let Err(e) = dec.feed(&packets) {
                tracing::warn!(camera = self.cfg.camera_oid, det_oid = t.det_oid, error = %e, "no snapshot");
                continue;
            }
            if !dec.done() && newest < t.timestamp_ms + frame_gap {
                waiting.push((t, Some(dec)));
                continue;
            }
            let started = std::time::Instant::now();
            match dec.finish() {
                Ok(s) => {
                    tracing::debug!(
                        camera = self.cfg.camera_oid,
                        det_oid = t.det_oid,
                        ms = started.elapsed().as_millis() as u64,
                        frame_ms = s.frame_ms,
                        "snapshot"
                    );
                    self.board.update(self.cfg.camera_oid, |s| s.snapshots += 1);
                    for (kind, bytes) in [("snapshot", s.jpeg), ("thumbnail", s.thumbnail)] {
                        self.put(MediaItem {
                            kind,
                            content_type: "image/jpeg",
                            bytes,
                            det_oids: vec![t.det_oid],
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(camera = self.cfg.camera_oid, det_oid = t.det_oid, error = %e, "no snapshot")
                }
            }
        }
        self.snapshots = waiting;
        while self.clips.front().is_some_and(|c| newest >= c.to_ms) {
            let c = self.clips.pop_front().expect("front exists");
            let started = std::time::Instant::now();
            let packets = ring.window(c.from_ms, c.to_ms);
            match cut::cut_clip(info, &packets, &self.spool.scratch_dir()) {
                Ok(bytes) => {
                    tracing::debug!(
                        camera = self.cfg.camera_oid,
                        dets = c.det_oids.len(),
                        ms = started.elapsed().as_millis() as u64,
                        bytes = bytes.len(),
                        "clip"
                    );
                    self.board.update(self.cfg.camera_oid, |s| s.clips += 1);
                    self.put(MediaItem {
                        kind: "clip",
                        content_type: "video/mp4",
                        bytes,
                        det_oids: c.det_oids,
                    });
                }
                Err(e) => tracing::warn!(camera = self.cfg.camera_oid, error = %e, "no clip"),
            }
        }
    }

    fn put(&self, item: MediaItem) {
        if let Err(e) = self.spool.put(item) {
            tracing::warn!(camera = self.cfg.camera_oid, error = %e, "footage could not be spooled");
        }
    }
}

/// Starts the camera's thread. It ends when the trigger channel closes.
pub fn spawn(
    cfg: CameraConfig,
    max_clip: Duration,
    spool: Arc<Spool>,
    board: Arc<CameraBoard>,
    triggers: mpsc::Receiver<Trigger>,
) -> anyhow::Result<()> {
    let name = format!("camera-{}", cfg.camera_oid);
    std::thread::Builder::new().name(name).spawn(move || {
        // The pre-roll plus a GOP or two; a pending clip holds more (Ring::hold).
        let keep_ms = cfg.pre.as_millis() as i64 + 2_000;
        let mut jobs = Jobs {
            max_clip_ms: max_clip.as_millis() as i64,
            snapshots: Vec::new(),
            clips: VecDeque::new(),
            spool,
            cfg: cfg.clone(),
            board,
            reported_ms: 0,
        };
        jobs.board
            .update(cfg.camera_oid, |s| s.state = "connecting".into());
        loop {
            match run_input(&cfg, keep_ms, &mut jobs, &triggers) {
                Ok(()) => return,
                Err(e) => {
                    jobs.reported_ms = 0;
                    jobs.board.update(cfg.camera_oid, |s| {
                        s.state = "reconnecting".into();
                        s.detail = format!("{e:#}");
                    });
                    tracing::warn!(camera = cfg.camera_oid, input = %cfg.input, error = %e, "camera input failed; retrying in 2 s");
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
    })?;
    Ok(())
}

/// Takes new triggers; false once the agent is shutting down.
fn drain(triggers: &mpsc::Receiver<Trigger>, jobs: &mut Jobs) -> bool {
    loop {
        match triggers.try_recv() {
            Ok(t) => jobs.add(t),
            Err(mpsc::TryRecvError::Empty) => return true,
            Err(mpsc::TryRecvError::Disconnected) => return false,
        }
    }
}

fn now_ms() -> i64 {
    sightline_proto::now_ms()
}

/// Parses `synthetic://NAME?width=..&height=..&fps=..&gop=..`.
pub fn parse_synthetic(input: &str) -> Option<SynthOptions> {
    let rest = input.strip_prefix("synthetic://")?;
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut o = SynthOptions {
        name: name.to_string(),
        width: 640,
        height: 360,
        fps: 25,
        gop: 25,
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=')?;
        let v: u32 = v.parse().ok()?;
        match k {
            "width" => o.width = v,
            "height" => o.height = v,
            "fps" => o.fps = v,
            "gop" => o.gop = v,
            _ => return None,
        }
    }
    Some(o)
}

fn run_input(
    cfg: &CameraConfig,
    keep_ms: i64,
    jobs: &mut Jobs,
    triggers: &mpsc::Receiver<Trigger>,
) -> anyhow::Result<()> {
    let mut ring = Ring::new(keep_ms, 256 * 1024 * 1024);
    if cfg.input.starts_with("synthetic://") {
        let opts = parse_synthetic(&cfg.input).ok_or_else(|| {
            anyhow::anyhow!(
                "camera {}: bad synthetic input {:?}",
                cfg.camera_oid,
                cfg.input
            )
        })?;
        let fps = opts.fps.max(1) as u64;
        let mut synth = Synth::new(opts)?;
        let info = StreamInfo {
            parameters: synth.parameters(),
            time_base: synth.time_base(),
        };
        let start = std::time::Instant::now();
        for frame in 0u64.. {
            let due = start + Duration::from_micros(frame * 1_000_000 / fps);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            for p in synth.next_frame(now_ms())? {
                ring.push(p);
            }
            if !drain(triggers, jobs) {
                return Ok(());
            }
            jobs.process(&mut ring, &info);
        }
        return Ok(());
    }
    let path = cfg
        .input
        .strip_prefix("file://")
        .unwrap_or(&cfg.input)
        .to_string();
    let live = path.contains("://") || path.starts_with("/dev/");
    let mut pts_offset = 0i64;
    loop {
        let mut opts = Dictionary::new();
        if path.starts_with("rtsp://") {
            opts.set("rtsp_transport", "tcp");
        }
        let mut ictx = if path.starts_with("/dev/video") {
            open_v4l2(&path, opts)?
        } else {
            format::input_with_dictionary(&path, opts)?
        };
        let stream = ictx
            .streams()
            .best(media::Type::Video)
            .ok_or_else(|| anyhow::anyhow!("{path}: no video stream"))?;
        let index = stream.index();
        let tb: Rational = stream.time_base();
        let info = StreamInfo {
            parameters: stream.parameters(),
            time_base: tb,
        };
        let ms_per_tick = f64::from(tb.numerator()) * 1000.0 / f64::from(tb.denominator().max(1));
        let mut anchor: Option<(i64, i64)> = None; // (wall ms, pts)
        let mut last_end = pts_offset;
        for (s, packet) in ictx.packets() {
            if s.index() != index {
                continue;
            }
            let pts = packet.pts().or(packet.dts()).unwrap_or(0) + pts_offset;
            let dts = packet.dts().unwrap_or(pts - pts_offset) + pts_offset;
            let (aw, ap) = *anchor.get_or_insert((now_ms(), pts));
            let mut wall = aw + ((pts - ap) as f64 * ms_per_tick) as i64;
            if live {
                // Follow the arrival clock; re-anchor when the stream drifts away.
                if (wall - now_ms()).abs() > 2_000 {
                    anchor = Some((now_ms(), pts));
                    wall = now_ms();
                }
            } else if let Some(wait) = wall.checked_sub(now_ms()).filter(|w| *w > 0) {
                // A file plays at its own pace, like a camera would.
                std::thread::sleep(Duration::from_millis(wait as u64));
            }
            last_end = last_end.max(pts + packet.duration().max(1));
            ring.push(RingPacket {
                data: bytes::Bytes::copy_from_slice(packet.data().unwrap_or_default()),
                pts,
                dts,
                duration: packet.duration().max(1),
                key: packet.is_key(),
                wall_ms: wall,
            });
            if !drain(triggers, jobs) {
                return Ok(());
            }
            jobs.process(&mut ring, &info);
        }
        if live {
            anyhow::bail!("{path}: stream ended");
        }
        // Loop the file, keeping timestamps continuous.
        pts_offset = last_end;
    }
}

/// A capture device is not probed: it is opened with FFmpeg's video4linux2
/// demuxer, which lives in libavdevice (built in with the `v4l2` feature).
#[cfg(feature = "v4l2")]
fn open_v4l2(path: &str, opts: Dictionary) -> anyhow::Result<format::context::Input> {
    let v4l2 = ffmpeg_next::device::input::video()
        .find(|f| f.name() == "video4linux2,v4l2" || f.name() == "video4linux2")
        .ok_or_else(|| anyhow::anyhow!("{path}: this FFmpeg has no video4linux2 input"))?;
    Ok(format::open_with(&path, &v4l2, opts)?.input())
}

#[cfg(not(feature = "v4l2"))]
fn open_v4l2(path: &str, _opts: Dictionary) -> anyhow::Result<format::context::Input> {
    anyhow::bail!("{path}: V4L2 cameras need an agent built with `--features v4l2` (libavdevice)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_inputs_parse() {
        let o = parse_synthetic("synthetic://gate-3?width=320&height=240&fps=10&gop=20").unwrap();
        assert_eq!(
            (o.name.as_str(), o.width, o.height, o.fps, o.gop),
            ("gate-3", 320, 240, 10, 20)
        );
        assert!(parse_synthetic("synthetic://x?size=big").is_none());
        let _ = ffmpeg_next::init();
    }
}
