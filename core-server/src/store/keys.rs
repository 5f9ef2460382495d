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

/// (timestamp_detected, camera if recorded) of a `det` value (8 or 16 bytes).
pub fn decode_det(v: &[u8]) -> (i64, Option<i64>) {
    let ts = i64_from_key(v);
    let camera = v
        .get(8..16)
        .map(|c| i64::from_be_bytes(c.try_into().expect("8 bytes")));
    (ts, camera)
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

/// `wm`: agent_id ‖ 0x00 ‖ epoch.
pub fn wm_key(agent: &str, epoch: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(agent.len() + 9);
    k.extend_from_slice(agent.as_bytes());
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
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
    k.push(bucket.tag());
    k.extend_from_slice(&i64_key(start_ms));
    k.extend_from_slice(&i64_key(location));
    k.extend_from_slice(item.as_bytes());
    k
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
