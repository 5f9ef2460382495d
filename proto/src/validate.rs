//! The one definition of a valid event.
//!
//! The agent checks detections at its intake (so the detector hears at once
//! what is wrong) and the core checks every event again before it stores it
//! (so an event from an old or misbehaving agent is quarantined, never stored
//! half-valid). Both answer with a [`FieldError`] that names the Dataset A
//! field and the reason.

use crate::v1::Detection;

/// Longest accepted `item_name`, in bytes.
pub const MAX_ITEM_NAME_BYTES: usize = 128;
/// Longest accepted agent id, in bytes.
pub const MAX_AGENT_ID_BYTES: usize = 64;
/// Largest accepted detection, encoded, in bytes. Every bound below fits
/// well inside it, and a batch of the agent's (`sender.batch_max_bytes`, at
/// least one event) always fits the core's message limit
/// (`ingest.max_message_bytes`, at least 64 KiB): an event the intake takes
/// can always be delivered.
pub const MAX_DETECTION_BYTES: usize = 32 * 1024;
/// Most entries of `media` (one per kind; a few kinds exist).
pub const MAX_MEDIA_REFS: usize = 8;
/// Most entries of `media_expected`, and the longest entry in bytes.
pub const MAX_MEDIA_EXPECTED: usize = 8;
pub const MAX_MEDIA_KIND_BYTES: usize = 32;

/// A refusal: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    /// The field by its Dataset A name (or `attributes`, `box`, `agent_id`, ...).
    pub field: &'static str,
    /// Why it was refused, with the offending value where it helps.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl From<FieldError> for tonic::Status {
    fn from(e: FieldError) -> Self {
        crate::ApiError::from(e).into()
    }
}

/// Bounds that depend on the receiver's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far ahead of the receiver's clock `timestamp_detected` may be.
    pub max_future_skew_ms: i64,
    /// Largest total size of `attributes` (keys + values), in bytes.
    pub max_attributes_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_future_skew_ms: 5 * 60 * 1000,
            max_attributes_bytes: 16 * 1024,
        }
    }
}

/// Checks a detection. `require_det_oid` is true at the core (the agent must
/// have stamped one) and false at the agent's intake (it stamps missing ones).
pub fn validate_detection(
    d: &Detection,
    now_ms: i64,
    limits: &Limits,
    require_det_oid: bool,
) -> Result<(), FieldError> {
    if d.geographical_location_oid <= 0 {
        return Err(FieldError::new(
            "geographical_location_oid",
            format!("must be positive, got {}", d.geographical_location_oid),
        ));
    }
    if d.video_camera_oid <= 0 {
        return Err(FieldError::new(
            "video_camera_oid",
            format!("must be positive, got {}", d.video_camera_oid),
        ));
    }
    match d.detection_oid {
        Some(oid) if oid <= 0 => {
            return Err(FieldError::new(
                "detection_oid",
                format!("must be positive, got {oid}"),
            ))
        }
        None if require_det_oid => {
            return Err(FieldError::new(
                "detection_oid",
                "missing: the agent must stamp one before sending",
            ))
        }
        _ => {}
    }
    validate_item_name(&d.item_name)?;
    if d.timestamp_detected <= 0 {
        return Err(FieldError::new(
            "timestamp_detected",
            format!(
                "must be positive epoch milliseconds, got {}",
                d.timestamp_detected
            ),
        ));
    }
    let ahead = d.timestamp_detected.saturating_sub(now_ms);
    if ahead > limits.max_future_skew_ms {
        return Err(FieldError::new(
            "timestamp_detected",
            format!(
                "{} is {} ms in the future (more than the allowed {} ms)",
                d.timestamp_detected, ahead, limits.max_future_skew_ms
            ),
        ));
    }
    if !(0.0..=1.0).contains(&d.confidence) {
        return Err(FieldError::new(
            "confidence",
            format!("must be within 0..=1, got {}", d.confidence),
        ));
    }
    if let Some(b) = &d.r#box {
        let all = [b.x, b.y, b.width, b.height];
        if all.iter().any(|v| !v.is_finite()) || b.width < 0.0 || b.height < 0.0 {
            return Err(FieldError::new(
                "box",
                "coordinates must be finite and width/height not negative",
            ));
        }
    }
    let attr_bytes: usize = d.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    if attr_bytes > limits.max_attributes_bytes {
        return Err(FieldError::new(
            "attributes",
            format!(
                "{attr_bytes} bytes in total, more than the limit of {} bytes",
                limits.max_attributes_bytes
            ),
        ));
    }
    if d.media.len() > MAX_MEDIA_REFS {
        return Err(FieldError::new(
            "media",
            format!(
                "{} entries, more than the limit of {MAX_MEDIA_REFS}",
                d.media.len()
            ),
        ));
    }
    if d.media_expected.len() > MAX_MEDIA_EXPECTED {
        return Err(FieldError::new(
            "media_expected",
            format!(
                "{} entries, more than the limit of {MAX_MEDIA_EXPECTED}",
                d.media_expected.len()
            ),
        ));
    }
    if let Some(k) = d
        .media_expected
        .iter()
        .find(|k| k.len() > MAX_MEDIA_KIND_BYTES)
    {
        return Err(FieldError::new(
            "media_expected",
            format!(
                "an entry of {} bytes, more than the limit of {MAX_MEDIA_KIND_BYTES}",
                k.len()
            ),
        ));
    }
    for m in &d.media {
        if m.kind.len() > MAX_MEDIA_KIND_BYTES || m.content_type.len() > MAX_MEDIA_KIND_BYTES {
            return Err(FieldError::new(
                "media",
                format!("kind and content_type must be at most {MAX_MEDIA_KIND_BYTES} bytes"),
            ));
        }
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(FieldError::new(
                "media",
                format!("sha256 must be 64 hex digits, got {:?}", m.sha256),
            ));
        }
    }
    let size = prost::Message::encoded_len(d);
    if size > MAX_DETECTION_BYTES {
        return Err(FieldError::new(
            "detection",
            format!("{size} bytes encoded, more than the limit of {MAX_DETECTION_BYTES}"),
        ));
    }
    Ok(())
}

fn validate_item_name(name: &str) -> Result<(), FieldError> {
    if name.trim().is_empty() {
        return Err(FieldError::new("item_name", "must not be empty"));
    }
    if name.len() > MAX_ITEM_NAME_BYTES {
        return Err(FieldError::new(
            "item_name",
            format!(
                "{} bytes, more than the limit of {MAX_ITEM_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError::new(
            "item_name",
            format!("must not contain control characters, got {name:?}"),
        ));
    }
    Ok(())
}

/// Checks an agent id: 1..=64 bytes of letters, digits, `-`, `_` and `.`.
pub fn validate_agent_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() || id.len() > MAX_AGENT_ID_BYTES {
        return Err(FieldError::new(
            "agent_id",
            format!("must be 1..={MAX_AGENT_ID_BYTES} bytes, got {}", id.len()),
        ));
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err(FieldError::new(
            "agent_id",
            format!("only letters, digits, '-', '_' and '.' are allowed, got {id:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Detection {
        Detection {
            geographical_location_oid: 1,
            video_camera_oid: 2,
            detection_oid: Some(3),
            item_name: "person".into(),
            timestamp_detected: 1_700_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn a_complete_detection_is_valid() {
        assert_eq!(
            validate_detection(&good(), 1_700_000_000_000, &Limits::default(), true),
            Ok(())
        );
    }

    type Change = Box<dyn Fn(&mut Detection)>;

    #[test]
    fn each_refusal_names_its_field() {
        let now = 1_700_000_000_000;
        let cases: Vec<(&str, Change)> = vec![
            (
                "geographical_location_oid",
                Box::new(|d| d.geographical_location_oid = 0),
            ),
            ("video_camera_oid", Box::new(|d| d.video_camera_oid = -4)),
            ("detection_oid", Box::new(|d| d.detection_oid = None)),
            ("detection_oid", Box::new(|d| d.detection_oid = Some(-1))),
            ("item_name", Box::new(|d| d.item_name = " ".into())),
            ("item_name", Box::new(|d| d.item_name = "x".repeat(200))),
            ("item_name", Box::new(|d| d.item_name = "a\nb".into())),
            ("timestamp_detected", Box::new(|d| d.timestamp_detected = 0)),
            (
                "timestamp_detected",
                Box::new(move |d| d.timestamp_detected = now + 3_600_000),
            ),
            ("confidence", Box::new(|d| d.confidence = 1.5)),
            (
                "media_expected",
                Box::new(|d| d.media_expected = vec!["clip".into(); 100_000]),
            ),
            (
                "media_expected",
                Box::new(|d| d.media_expected = vec!["x".repeat(100)]),
            ),
            (
                "attributes",
                Box::new(|d| {
                    d.attributes.insert("k".into(), "v".repeat(20_000));
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut d = good();
            mutate(&mut d);
            let err = validate_detection(&d, now, &Limits::default(), true).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn missing_det_oid_is_fine_at_the_intake() {
        let mut d = good();
        d.detection_oid = None;
        assert!(validate_detection(&d, 1_700_000_000_000, &Limits::default(), false).is_ok());
    }

    #[test]
    fn agent_ids_are_checked() {
        assert!(validate_agent_id("cam-host_1.site").is_ok());
        assert_eq!(validate_agent_id("").unwrap_err().field, "agent_id");
        assert_eq!(validate_agent_id("a b").unwrap_err().field, "agent_id");
    }
}
