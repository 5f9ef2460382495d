//! `manifest.json`: what a case holds, as signed. Field names are part of
//! the case format ([`FORMAT`]); a reader MUST ignore fields it does not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The case format this core writes; `case verify` reads it.
pub const FORMAT: &str = "sightline-case/1";

/// The signed description of a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// `case-<UTC export time>-<8 random hex digits>`; also the zip's name.
    pub case_id: String,
    /// Who exported it, as the access layer named them.
    pub exported_by: String,
    /// When, RFC 3339 UTC with milliseconds, and as epoch milliseconds.
    pub exported_at: String,
    pub exported_at_ms: i64,
    /// Why: the free text the exporter had to give.
    pub reason: String,
    /// The key that signed `manifest.json` (the signature is `manifest.json.sig`).
    pub site_key: SiteKeyInfo,
    /// The earliest and latest detection time of the case's events.
    pub time_range: TimeRange,
    /// The events, in the order they were asked for.
    pub events: Vec<CaseEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteKeyInfo {
    /// "Ed25519".
    pub algorithm: String,
    /// SHA-256 of the public key's SubjectPublicKeyInfo DER, lowercase hex.
    pub fingerprint_sha256: String,
    /// The public key's file in the case ("site-signing.pub.pem").
    pub public_key_file: String,
    /// The signature's file ("manifest.json.sig", 64 raw bytes).
    pub signature_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeRange {
    pub from: String,
    pub to: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// One event, joined with Dataset B as the query API serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseEvent {
    pub det_oid: i64,
    /// `video_camera_oid`.
    pub camera: i64,
    pub location: CaseLocation,
    /// `item_name`.
    pub item: String,
    /// `timestamp_detected`, RFC 3339 UTC, and as epoch milliseconds.
    pub timestamp: String,
    pub timestamp_ms: i64,
    /// The detector's confidence (0 when it gave none).
    pub confidence: f32,
    /// The detector's box in pixels of the frame, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounding_box: Option<[f32; 4]>,
    /// Free-form detector attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The agent that published the event, its sequence number, when the
    /// agent accepted it and when the core committed it (epoch ms).
    pub agent_id: String,
    pub seq: u64,
    pub accepted_ms: i64,
    pub committed_ms: i64,
    /// The footage, as files of the case.
    pub files: Vec<CaseFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseLocation {
    pub geographical_location_oid: i64,
    /// False when the location is not in Dataset B (then the name is empty).
    pub matched: bool,
    pub geographical_location: String,
    /// Dataset B's other columns (region, coordinates, ...).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// One file of the case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFile {
    /// Relative, '/'-separated: `events/<det_oid>/<kind>.<jpg|mp4>`.
    pub path: String,
    /// "snapshot", "thumbnail" or "clip".
    pub kind: String,
    /// "image/jpeg" or "video/mp4".
    pub content_type: String,
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the bytes, lowercase hex (also the object's address in the core).
    pub sha256: String,
}

/// Whether a manifest path may be opened under a case's root: relative,
/// '/'-separated, under `events/`, and only plain names (no `.`, `..`, empty
/// or backslashed parts), so a forged manifest cannot make `verify` read
/// outside the case.
pub fn safe_path(path: &str) -> bool {
    path.starts_with("events/")
        && path.len() <= 255
        && path.split('/').all(|p| {
            !p.is_empty() && p != "." && p != ".." && !p.contains('\\') && !p.contains('\0')
        })
}
