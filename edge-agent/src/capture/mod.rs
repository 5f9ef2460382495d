//! Footage at the edge: per camera, a ring of encoded packets (no decoding
//! in the steady state), and on a detection a snapshot (JPEG + thumbnail) and
//! a clip from `pre` before to `post` after, cut on keyframes by stream copy.
//! Finished footage goes to the [`spool`], from where the uploader sends it.
//!
//! Clocks: every packet is stamped with this host's clock when its frame is
//! taken (generated, for synthetic cameras) or arrives (live sources, paced
//! by their timestamps after the first packet). Detection timestamps come from
//! the same host clock (the detector runs on the camera host), so a detection
//! at `t` is matched to the frame stamped nearest `t`. A detector on another
//! clock is corrected with the camera's `clock_offset_ms`.
//!
//! Detections close together on one camera share one clip: a detection whose
//! pre-roll starts before the pending clip ends extends that clip (up to
//! `max_clip`) instead of cutting another, so no footage is stored twice.

#[cfg(feature = "footage")]
pub mod camera;
#[cfg(feature = "footage")]
pub mod cut;
pub mod ring;
pub mod spool;
#[cfg(feature = "footage")]
pub mod synth;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sightline_proto::v1::{CameraStatus, Detection};

use spool::Spool;

/// What a camera produces for a detection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    Off,
    Snapshot,
    #[default]
    Clip,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Off => "off",
            CaptureMode::Snapshot => "snapshot",
            CaptureMode::Clip => "clip",
        }
    }
}

/// What each camera is doing, for the agent's status reports (the core's
/// fleet view): mode, input state, newest frame, footage made.
#[derive(Debug, Default)]
pub struct CameraBoard(Mutex<BTreeMap<i64, CameraStatus>>);

impl CameraBoard {
    /// Changes one camera's entry.
    pub fn update(&self, camera_oid: i64, f: impl FnOnce(&mut CameraStatus)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(camera_oid).or_insert_with(|| CameraStatus {
            video_camera_oid: camera_oid,
            ..CameraStatus::default()
        }));
    }

    /// Every camera, by oid.
    pub fn all(&self) -> Vec<CameraStatus> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.values().cloned().collect()
    }
}

/// One camera's capture settings.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// The `video_camera_oid` its detections carry.
    pub camera_oid: i64,
    /// `synthetic://NAME?width=640&height=360&fps=25&gop=25`, a file path or
    /// `file:///path` (looped), `rtsp://…`, `http(s)://…`, or `/dev/videoN`.
    pub input: String,
    #[serde(default)]
    pub mode: CaptureMode,
    /// Footage kept before a detection (the ring's pre-roll).
    #[serde(default = "default_pre", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub pre: Duration,
    /// Footage after a detection.
    #[serde(default = "default_post", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub post: Duration,
    /// Added to detection timestamps before matching them to frames.
    #[serde(default)]
    pub clock_offset_ms: i64,
}

fn default_pre() -> Duration {
    Duration::from_secs(5)
}
fn default_post() -> Duration {
    Duration::from_secs(5)
}

/// Capture for every camera of this host.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// One `[[capture.cameras]]` table per camera on this host. None: the
    /// agent handles events only.
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
    /// Where finished footage waits for upload.
    #[serde(default = "default_spool")]
    pub spool_path: PathBuf,
    /// When the spool is over this, the oldest footage goes first (counted);
    /// events are never dropped for footage.
    #[serde(default = "default_spool_max", with = "bytesize_serde")]
    #[schemars(with = "sightline_proto::config_doc::ByteSize")]
    pub spool_max_bytes: u64,
    /// Longest shared clip.
    #[serde(default = "default_max_clip", with = "humantime_serde")]
    #[schemars(with = "sightline_proto::config_doc::Duration")]
    pub max_clip: Duration,
    /// Upload bandwidth cap, bytes per second (0: none).
    #[serde(default)]
    pub upload_bytes_per_s: u64,
}

mod bytesize_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(bytesize::ByteSize::deserialize(d)?.as_u64())
    }
    /// As `ByteSize` writes it (the config reference shows the default so).
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        bytesize::ByteSize::b(*v).serialize(s)
    }
}

fn default_spool() -> PathBuf {
    "data/agent-spool".into()
}
fn default_spool_max() -> u64 {
    1024 * 1024 * 1024
}
fn default_max_clip() -> Duration {
    Duration::from_secs(60)
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            cameras: Vec::new(),
            spool_path: default_spool(),
            spool_max_bytes: default_spool_max(),
            max_clip: default_max_clip(),
            upload_bytes_per_s: 0,
        }
    }
}

/// A detection a camera should produce footage for.
#[derive(Debug, Clone, Copy)]
pub struct Trigger {
    pub det_oid: i64,
    pub timestamp_ms: i64,
}

/// The running cameras; hands detections to them.
pub struct Capture {
    cameras: HashMap<i64, (CaptureMode, mpsc::Sender<Trigger>)>,
    pub spool: Arc<Spool>,
    pub board: Arc<CameraBoard>,
}

impl Capture {
    /// Starts a thread per camera whose mode is not `off`.
    #[cfg(not(feature = "footage"))]
    pub fn start(_cfg: &CaptureConfig) -> anyhow::Result<Self> {
        anyhow::bail!(
            "config `capture.cameras`: this agent was built without footage (cargo feature `footage`)"
        )
    }

    /// Starts a thread per camera whose mode is not `off`.
    #[cfg(feature = "footage")]
    pub fn start(cfg: &CaptureConfig) -> anyhow::Result<Self> {
        ffmpeg_next::init()?;
        ffmpeg_next::log::set_level(ffmpeg_next::log::Level::Error);
        let spool = Arc::new(Spool::open(cfg.spool_path.clone(), cfg.spool_max_bytes)?);
        let mut cameras = HashMap::new();
        let board = Arc::new(CameraBoard::default());
        for cam in &cfg.cameras {
            board.update(cam.camera_oid, |s| {
                s.mode = cam.mode.as_str().into();
                s.state = "off".into();
            });
            if cam.mode == CaptureMode::Off {
                continue;
            }
            let (tx, rx) = mpsc::channel();
            camera::spawn(cam.clone(), cfg.max_clip, spool.clone(), board.clone(), rx)?;
            cameras.insert(cam.camera_oid, (cam.mode, tx));
        }
        Ok(Self {
            cameras,
            spool,
            board,
        })
    }

    /// The footage kinds a detection from this camera will get.
    pub fn expected(&self, camera_oid: i64) -> &'static [&'static str] {
        match self.cameras.get(&camera_oid).map(|c| c.0) {
            Some(CaptureMode::Clip) => &["snapshot", "thumbnail", "clip"],
            Some(CaptureMode::Snapshot) => &["snapshot", "thumbnail"],
            _ => &[],
        }
    }

    /// Marks detections with the footage they will get (before they are buffered).
    pub fn mark(&self, d: &mut Detection) {
        d.media_expected = self
            .expected(d.video_camera_oid)
            .iter()
            .map(|s| s.to_string())
            .collect();
    }

    /// Asks the cameras for footage of these (buffered) detections.
    pub fn trigger(&self, detections: &[(i64, i64, i64)]) {
        for &(camera, det_oid, ts) in detections {
            if let Some((_, tx)) = self.cameras.get(&camera) {
                let _ = tx.send(Trigger {
                    det_oid,
                    timestamp_ms: ts,
                });
            }
        }
    }
}

#[cfg(all(test, feature = "footage"))]
mod tests;
