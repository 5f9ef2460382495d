//! Key encodings of the core's RocksDB store. Every integer is big-endian,
//! and signed ones have their sign bit flipped, so byte order is numeric
//! order and a range of keys is a range of time.

/// Order-preserving encoding of an i64.
pub fn i64_key(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn i64_from_key(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1 << 63)) as i64
}

/// `events`: timestamp_detected ‖ det_oid.
pub fn event_key(ts: i64, det_oid: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i64_key(ts));
    k[8..].copy_from_slice(&i64_key(det_oid));
    k
}

/// `det`: det_oid.
pub fn det_key(det_oid: i64) -> [u8; 8] {
    i64_key(det_oid)
}

/// A `det` value: timestamp_detected ‖ video_camera_oid.
pub fn det_value(ts: i64, camera: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&i64_key(ts));
    v[8..].copy_from_slice(&camera.to_be_bytes());
    v
}

/// The `det` value of an event stored through the live lane (PROTOCOL.md
/// rule 6b): [`det_value`] ‖ the [`live_tag`] of the seq it came with, so
/// that the backlog's copy is known for the same event when it comes.
pub fn det_value_live(ts: i64, camera: i64, tag: u64) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..16].copy_from_slice(&det_value(ts, camera));
    v[16..].copy_from_slice(&tag.to_be_bytes());
    v
}

/// A decoded `det` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Det {
    pub ts: i64,
    /// The camera, when recorded (not by the oldest versions).
    pub camera: Option<i64>,
    /// Set when the event was stored through the live lane: the
    /// [`live_tag`] of its (agent, epoch, seq).
    pub live_tag: Option<u64>,
}

/// Decodes a `det` value (8, 16 or 24 bytes).
pub fn decode_det(v: &[u8]) -> Det {
    let word = |r: std::ops::Range<usize>| {
        v.get(r)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
    };
    Det {
        ts: i64_from_key(v),
        camera: word(8..16).map(|c| c as i64),
        live_tag: word(16..24),
    }
}

/// The tag a live-lane event's `det` value carries: the first 8 bytes of the
/// SHA-256 of agent id ‖ epoch ‖ seq. The backlog's copy of that event (same
/// det_oid, same camera) with the same tag is the event already delivered,
/// not a duplicate; a collision could only make a duplicate be counted as
/// delivered (the event is stored either way).
pub fn live_tag(agent: &str, epoch: u64, seq: u64) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(agent.as_bytes());
    h.update(epoch.to_be_bytes());
    h.update(seq.to_be_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// A `wm` value: the highest committed seq ‖ the digest of its event.
pub fn wm_value(seq: u64, digest: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(&digest.to_be_bytes());
    v
}

/// (seq, digest or 0) of a `wm` value (8 or 16 bytes).
pub fn decode_wm(v: &[u8]) -> (u64, u64) {
    let be = |b: &[u8]| {
        let mut a = [0u8; 8];
        let n = b.len().min(8);
        a[..n].copy_from_slice(&b[..n]);
        u64::from_be_bytes(a)
    };
    (be(v), v.get(8..16).map(be).unwrap_or(0))
}

/// `wm` (format 2): agent_id ‖ 0x00 ‖ epoch (u64 BE) ‖ partition (u16 BE).
pub fn wm_key(agent: &str, epoch: u64, partition: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent.len() + WM_KEY_TAIL);
    k.extend_from_slice(agent.as_bytes());
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Bytes of a format-2 `wm` key after the agent id.
pub const WM_KEY_TAIL: usize = 11;

/// (agent_id, epoch, partition) of a `wm` key; a format-1 key (no
/// partition) reads as partition 0. `None`: not a `wm` key.
pub fn decode_wm_key(k: &[u8], format: u32) -> Option<(&str, u64, u16)> {
    let tail = if format >= 2 { WM_KEY_TAIL } else { 9 };
    let split = k.len().checked_sub(tail)?;
    let (agent, rest) = k.split_at(split);
    if rest[0] != 0 {
        return None;
    }
    let agent = std::str::from_utf8(agent).ok()?;
    let epoch = u64::from_be_bytes(rest[1..9].try_into().ok()?);
    let partition = match rest.get(9..11) {
        Some(p) => u16::from_be_bytes(p.try_into().ok()?),
        None => 0,
    };
    Some((agent, epoch, partition))
}

/// The partition of a det_oid among `partitions`: a fixed mix of its bits
/// (SplitMix64's finaliser), so that det_oids that differ in a few low bits
/// land apart. Part of the store's format: a store's watermarks are kept per
/// partition, and `Store::use_partitions` re-keys them when the count changes.
pub fn partition_of(det_oid: i64, partitions: usize) -> usize {
    let mut z = det_oid as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % partitions.max(1) as u64) as usize
}

/// Granularity of an aggregate bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
}

impl Bucket {
    pub fn millis(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
        }
    }
    fn tag(self) -> u8 {
        match self {
            Bucket::Minute => b'm',
            Bucket::Hour => b'h',
        }
    }
    /// Start of the bucket holding `ts`.
    pub fn floor(self, ts: i64) -> i64 {
        ts.div_euclid(self.millis()).saturating_mul(self.millis())
    }
}

/// `agg`: tag ('m' | 'h') ‖ bucket start ms ‖ location oid ‖ item name.
pub fn agg_key(bucket: Bucket, start_ms: i64, location: i64, item: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(17 + item.len());
    agg_key_into(&mut k, bucket, start_ms, location, item);
    k
}

/// [`agg_key`] written over `k` (a buffer used again: a commit looks up
/// every event's aggregate keys and keeps only the new ones).
pub fn agg_key_into(k: &mut Vec<u8>, bucket: Bucket, start_ms: i64, location: i64, item: &str) {
    k.clear();
    k.push(bucket.tag());
    k.extend_from_slice(&i64_key(start_ms));
    k.extend_from_slice(&i64_key(location));
    k.extend_from_slice(item.as_bytes());
}

/// The first `agg` key of buckets starting at `start_ms`.
pub fn agg_prefix(bucket: Bucket, start_ms: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(bucket.tag());
    k.extend_from_slice(&i64_key(start_ms));
    k
}

/// Splits an `agg` key into (bucket start, location, item).
pub fn parse_agg_key(k: &[u8]) -> Option<(i64, i64, &str)> {
    if k.len() < 17 {
        return None;
    }
    Some((
        i64_from_key(&k[1..9]),
        i64_from_key(&k[9..17]),
        std::str::from_utf8(&k[17..]).ok()?,
    ))
}

/// `quarantine`: quarantined_ms ‖ agent_id ‖ 0x00 ‖ seq.
pub fn quarantine_key(at_ms: i64, agent: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent.len() + 17);
    k.extend_from_slice(&i64_key(at_ms));
    k.extend_from_slice(agent.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wm_keys_round_trip_in_both_formats() {
        let k = wm_key("cam-host-1", 42, 3);
        assert_eq!(decode_wm_key(&k, 2), Some(("cam-host-1", 42, 3)));
        let old = &k[..k.len() - 2];
        assert_eq!(decode_wm_key(old, 1), Some(("cam-host-1", 42, 0)));
        assert_eq!(decode_wm_key(b"short", 2), None);
    }

    #[test]
    fn det_values_of_every_length_decode() {
        let old = &det_value(-5, 0)[..8];
        assert_eq!(
            decode_det(old),
            Det {
                ts: -5,
                camera: None,
                live_tag: None
            }
        );
        assert_eq!(
            decode_det(&det_value(7, -3)),
            Det {
                ts: 7,
                camera: Some(-3),
                live_tag: None
            }
        );
        let tag = live_tag("agent", 9, 42);
        assert_eq!(
            decode_det(&det_value_live(7, 3, tag)),
            Det {
                ts: 7,
                camera: Some(3),
                live_tag: Some(tag)
            }
        );
        assert_ne!(tag, live_tag("agent", 9, 43));
        assert_ne!(tag, live_tag("agent", 8, 42));
        assert_ne!(tag, live_tag("agenu", 9, 42));
    }

    #[test]
    fn det_oids_spread_over_every_partition() {
        let mut seen = [0u32; 4];
        for oid in 0..4_000i64 {
            seen[partition_of(oid, 4)] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
        assert_eq!(partition_of(123, 1), 0);
        // Pinned: the partition is part of the store's format.
        let pinned: Vec<usize> = [1, 2, 3, 9].iter().map(|o| partition_of(*o, 4)).collect();
        assert_eq!(pinned, vec![1, 2, 0, 3]);
    }

    #[test]
    fn i64_keys_sort_like_numbers() {
        let vals = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in vals.windows(2) {
            assert!(i64_key(w[0]) < i64_key(w[1]));
            assert_eq!(i64_from_key(&i64_key(w[0])), w[0]);
        }
    }

    #[test]
    fn agg_keys_round_trip() {
        let k = agg_key(Bucket::Minute, 120_000, 9, "car");
        assert_eq!(parse_agg_key(&k), Some((120_000, 9, "car")));
        assert!(k.starts_with(&agg_prefix(Bucket::Minute, 120_000)));
        assert_eq!(Bucket::Hour.floor(3_600_001), 3_600_000);
        assert_eq!(Bucket::Minute.floor(-1), -60_000);
    }
}
