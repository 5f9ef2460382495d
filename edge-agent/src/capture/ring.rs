//! The per-camera ring of encoded packets: what the camera sent, as it sent
//! it (no decoding), each packet stamped with the agent host's clock, kept
//! for the configured pre-roll and trimmed a whole GOP at a time so the
//! oldest packet held is always a keyframe.

use std::collections::VecDeque;

use bytes::Bytes;

/// One encoded packet of the video stream.
#[derive(Debug, Clone)]
pub struct RingPacket {
    pub data: Bytes,
    /// In the stream's time base.
    pub pts: i64,
    pub dts: i64,
    pub duration: i64,
    pub key: bool,
    /// When this packet's frame was taken, on the agent host's clock (epoch ms).
    pub wall_ms: i64,
}

/// Packets of one camera, oldest first, starting at a keyframe.
#[derive(Debug)]
pub struct Ring {
    packets: VecDeque<RingPacket>,
    /// Keep at least this much history behind the newest packet.
    keep_ms: i64,
    bytes: usize,
    /// Hard bound; whole GOPs go first when it is passed.
    max_bytes: usize,
    /// While a clip is pending, the ring keeps everything from the keyframe
    /// at or before its start (beyond `keep_ms`, within `max_bytes`).
    hold_from_ms: Option<i64>,
}

impl Ring {
    pub fn new(keep_ms: i64, max_bytes: usize) -> Self {
        Self {
            packets: VecDeque::new(),
            keep_ms,
            bytes: 0,
            max_bytes,
            hold_from_ms: None,
        }
    }

    /// Keeps footage from `from_ms` on (a pending clip's start), or lets go.
    pub fn hold(&mut self, from_ms: Option<i64>) {
        self.hold_from_ms = from_ms;
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn newest_ms(&self) -> Option<i64> {
        self.packets.back().map(|p| p.wall_ms)
    }

    pub fn oldest_ms(&self) -> Option<i64> {
        self.packets.front().map(|p| p.wall_ms)
    }

    /// Adds a packet. Packets before the first keyframe are dropped (a clip
    /// cannot start on them).
    pub fn push(&mut self, p: RingPacket) {
        if self.packets.is_empty() && !p.key {
            return;
        }
        self.bytes += p.data.len();
        self.packets.push_back(p);
        self.trim();
    }

    /// Drops the oldest GOP while the next GOP still reaches back `keep_ms`,
    /// or while over the byte bound (keeping at least the newest GOP).
    fn trim(&mut self) {
        let newest = self.newest_ms().unwrap_or(0);
        loop {
            let Some(next_key) = self
                .packets
                .iter()
                .skip(1)
                .position(|p| p.key)
                .map(|i| i + 1)
            else {
                return;
            };
            let next_key_ms = self.packets[next_key].wall_ms;
            let too_old = next_key_ms <= newest - self.keep_ms
                && self.hold_from_ms.is_none_or(|h| next_key_ms <= h);
            let too_big = self.bytes > self.max_bytes;
            if !(too_old || too_big) {
                return;
            }
            for p in self.packets.drain(..next_key) {
                self.bytes -= p.data.len();
            }
        }
    }

    /// The packets of a clip covering `[from_ms, to_ms]`: from the last
    /// keyframe at or before `from_ms` (or the oldest held, when the ring does
    /// not reach back that far) through the last packet at or before `to_ms`.
    pub fn window(&self, from_ms: i64, to_ms: i64) -> Vec<RingPacket> {
        let start = self
            .packets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.key && p.wall_ms <= from_ms)
            .map(|(i, _)| i)
            .next_back()
            .unwrap_or(0);
        self.packets
            .iter()
            .skip(start)
            .take_while(|p| p.wall_ms <= to_ms)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(ring: &mut Ring, from_frame: i64, to_frame: i64, gop: i64) {
        for f in from_frame..to_frame {
            ring.push(RingPacket {
                data: Bytes::from(vec![0u8; 100]),
                pts: f,
                dts: f,
                duration: 1,
                key: f % gop == 0,
                wall_ms: f * 40,
            });
        }
    }

    #[test]
    fn the_ring_starts_on_a_keyframe_and_keeps_the_pre_roll() {
        let mut r = Ring::new(2_000, usize::MAX);
        feed(&mut r, 3, 500, 25); // 25 fps, 1 s GOPs; frames 3..24 come before a keyframe
        assert!(r.packets[0].key);
        let newest = r.newest_ms().unwrap();
        assert!(r.oldest_ms().unwrap() <= newest - 2_000, "pre-roll kept");
        assert!(
            r.oldest_ms().unwrap() > newest - 2_000 - 1_000,
            "at most one GOP more"
        );
    }

    #[test]
    fn a_window_begins_at_the_keyframe_before_it_and_ends_at_its_end() {
        let mut r = Ring::new(10_000, usize::MAX);
        feed(&mut r, 0, 500, 25);
        let w = r.window(10_100, 14_000);
        assert!(w[0].key);
        assert_eq!(w[0].wall_ms, 10_000);
        assert_eq!(w.last().unwrap().wall_ms, 14_000);
    }

    #[test]
    fn the_byte_bound_drops_whole_gops() {
        let mut r = Ring::new(1_000_000, 100 * 60);
        feed(&mut r, 0, 500, 25);
        assert!(r.packets[0].key);
        assert!(r.bytes() <= 100 * 60 + 100 * 25);
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    #[test]
    fn a_pending_clip_holds_its_start_in_the_ring() {
        let mut r = Ring::new(2_000, usize::MAX);
        let mut f = 0;
        let mut feed = |r: &mut Ring, until: i64| {
            while f * 40 <= until {
                r.push(RingPacket {
                    data: Bytes::from(vec![0u8; 10]),
                    pts: f,
                    dts: f,
                    duration: 1,
                    key: f % 25 == 0,
                    wall_ms: f * 40,
                });
                f += 1;
            }
        };
        feed(&mut r, 5_000);
        r.hold(Some(3_500));
        feed(&mut r, 20_000);
        assert!(r.oldest_ms().unwrap() <= 3_500, "held: {:?}", r.oldest_ms());
        r.hold(None);
        feed(&mut r, 20_040);
        assert!(r.oldest_ms().unwrap() >= 20_040 - 3_000);
    }
}
