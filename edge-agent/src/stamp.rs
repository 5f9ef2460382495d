//! The deterministic det_oid.
//!
//! When a detector leaves `detection_oid` out, the agent derives one from what
//! identifies the detection, so that a detector re-sending the same detection
//! gets the same det_oid and the core drops the copy:
//!
//! ```text
//! det_oid = first 8 bytes (big-endian) of
//!           SHA-256("sightline-det-v1" ‖ location ‖ camera ‖ timestamp ‖ len(item) ‖ item ‖ box)
//!           with the top bit cleared (0 becomes 1)
//! ```
//!
//! Integers are 8-byte little-endian; `box` is a presence byte followed by x,
//! y, width and height rounded to tenths of a pixel (so float noise in a
//! re-sent box does not change the id). Confidence, attributes and media are
//! not part of it: they may differ between two reports of one detection.
//! Collisions: 63 bits, so about 1 in 10^10 for a billion detections.

use sha2::{Digest, Sha256};
use sightline_proto::v1::Detection;

/// The det_oid the agent stamps on `d` when it comes without one.
pub fn derive_det_oid(d: &Detection) -> i64 {
    let mut h = Sha256::new();
    h.update(b"sightline-det-v1");
    h.update(d.geographical_location_oid.to_le_bytes());
    h.update(d.video_camera_oid.to_le_bytes());
    h.update(d.timestamp_detected.to_le_bytes());
    h.update((d.item_name.len() as u64).to_le_bytes());
    h.update(d.item_name.as_bytes());
    match &d.r#box {
        None => h.update([0u8]),
        Some(b) => {
            h.update([1u8]);
            for v in [b.x, b.y, b.width, b.height] {
                h.update(((v as f64 * 10.0).round() as i64).to_le_bytes());
            }
        }
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let v = (u64::from_be_bytes(first) & 0x7FFF_FFFF_FFFF_FFFF) as i64;
    v.max(1)
}

/// Sets `detection_oid` when it is missing; returns the det_oid.
pub fn stamp(d: &mut Detection) -> i64 {
    if let Some(oid) = d.detection_oid {
        return oid;
    }
    let oid = derive_det_oid(d);
    d.detection_oid = Some(oid);
    oid
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_proto::v1::BoundingBox;

    fn det() -> Detection {
        Detection {
            geographical_location_oid: 7,
            video_camera_oid: 70,
            item_name: "backpack".into(),
            timestamp_detected: 1_700_000_000_123,
            r#box: Some(BoundingBox {
                x: 10.0,
                y: 20.0,
                width: 30.0,
                height: 40.0,
            }),
            confidence: 0.9,
            ..Default::default()
        }
    }

    #[test]
    fn the_same_detection_gets_the_same_det_oid() {
        let mut other = det();
        other.confidence = 0.5;
        other.r#box.as_mut().unwrap().x = 10.000_01;
        assert_eq!(derive_det_oid(&det()), derive_det_oid(&other));
        assert!(derive_det_oid(&det()) > 0);
    }

    type Change = Box<dyn Fn(&mut Detection)>;

    #[test]
    fn what_identifies_a_detection_changes_the_det_oid() {
        let base = derive_det_oid(&det());
        let changes: Vec<Change> = vec![
            Box::new(|d| d.video_camera_oid += 1),
            Box::new(|d| d.geographical_location_oid += 1),
            Box::new(|d| d.timestamp_detected += 1),
            Box::new(|d| d.item_name.push('s')),
            Box::new(|d| d.r#box.as_mut().unwrap().width += 1.0),
            Box::new(|d| d.r#box = None),
        ];
        for change in changes {
            let mut d = det();
            change(&mut d);
            assert_ne!(derive_det_oid(&d), base);
        }
    }

    #[test]
    fn a_given_det_oid_is_kept() {
        let mut d = det();
        d.detection_oid = Some(42);
        assert_eq!(stamp(&mut d), 42);
    }

    #[test]
    fn the_derivation_is_stable_across_releases() {
        // Changing the derivation would let re-sent detections through as new ones.
        let d = Detection {
            geographical_location_oid: 1,
            video_camera_oid: 2,
            item_name: "person".into(),
            timestamp_detected: 3,
            ..Default::default()
        };
        assert_eq!(derive_det_oid(&d), derive_det_oid(&d.clone()));
        let mut h = Sha256::new();
        h.update(b"sightline-det-v1");
        h.update(1i64.to_le_bytes());
        h.update(2i64.to_le_bytes());
        h.update(3i64.to_le_bytes());
        h.update(6u64.to_le_bytes());
        h.update(b"person");
        h.update([0u8]);
        let digest = h.finalize();
        let expect = (u64::from_be_bytes(digest[..8].try_into().unwrap()) & (u64::MAX >> 1)) as i64;
        assert_eq!(derive_det_oid(&d), expect);
    }
}
