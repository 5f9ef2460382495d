//! A congestion controller for edge links ("edge"): delay-based and
//! indifferent to random loss.
//!
//! Camera links lose packets for reasons other than congestion (radio,
//! interference); Cubic and NewReno halve their window at every loss, so at
//! 2% random loss over a 100 ms round trip they crawl (~100 KB/s, as the
//! Mathis formula predicts). quinn's BBR does not slow down when its
//! bandwidth estimate is wrong and fills the bottleneck until half the
//! packets drop. This one watches the queue instead: once per round trip it
//! takes the round's mean RTT sample (what packets sent in that round waited,
//! on average) less the path's base RTT — under `TARGET` (5 ms) the window
//! grows (doubling until the queue first builds, then by up to a sixteenth,
//! less as the queue nears `TARGET`, so it settles instead of overshooting;
//! rounds after rounds with the queue well under `TARGET` grow by up to a
//! quarter, so a window that fell far below the path recovers in about a
//! second, not a minute); over it, the window shrinks by the bytes the queue
//! holds beyond `TARGET` (window × queue / RTT), draining it in one round, as
//! Vegas and FAST TCP do. Startup ends on a queue that even the round's
//! fastest packet saw: a busy host delays some acks, and one such round must
//! not leave the window at its first few packets. Losses only count when they
//! are many (over a fifth of what a round trip carried, and more than two
//! packets) or persistent. The base RTT is the lowest of the last 10 s of
//! rounds' low RTTs; when no round has come within 1 ms of it for 5 s (the
//! queue held near `TARGET` the whole time), the window halves for two
//! rounds so the queue empties and the path is measured again — else the
//! base would drift up by the queue every 10 s and the queue with it. So the
//! link stays full while the bottleneck queue stays near `TARGET`, and events
//! sent behind a clip wait little at the bottleneck. Each round is logged at
//! trace level (`RUST_LOG=sightline_proto::congestion=trace`). `sim` keeps
//! these promises on a simulated bottleneck.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use quinn::congestion::{Controller, ControllerFactory};

/// The queueing delay the controller aims at.
const TARGET: Duration = Duration::from_millis(5);

/// How long a round's low RTT counts toward the path's base RTT.
const BASE_WINDOW: Duration = Duration::from_secs(10);

/// How long the controller goes without a round whose low RTT came within
/// `BASE_SLACK` of the base RTT before it drains the queue to measure the
/// base again. Under `BASE_WINDOW`, so the base is measured again before the
/// measurement it rests on expires.
const DRAIN_EVERY: Duration = Duration::from_secs(5);

/// How near the base RTT a round's low RTT must come to count as a fresh
/// measurement of it.
const BASE_SLACK: Duration = Duration::from_millis(1);

/// Rounds a drain lasts at half the window: one in which the queue empties
/// (the packets acknowledged were sent before the drain), one whose packets
/// were sent with the queue empty.
const DRAIN_ROUNDS: u32 = 2;

/// Growth after clear rounds: a sixteenth of the window, doubled for each
/// clear round before, up to this many doublings (a quarter per round).
const MAX_GROWTH_DOUBLINGS: u32 = 2;

#[derive(Debug, Clone, Default)]
pub struct EdgeConfig;

impl ControllerFactory for EdgeConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let mtu = u64::from(current_mtu);
        Box::new(Edge {
            mtu,
            window: 10 * mtu,
            startup: true,
            round_start: now,
            acked: 0,
            lost: 0,
            samples: Vec::new(),
            lows: std::collections::VecDeque::new(),
            clear_rounds: 0,
            rtt: Duration::ZERO,
            min_rtt: Duration::MAX,
            base_seen: now,
            drain: None,
        })
    }
}

#[derive(Debug, Clone)]
struct Edge {
    mtu: u64,
    window: u64,
    startup: bool,
    round_start: Instant,
    /// Bytes acknowledged and lost in the current round.
    acked: u64,
    lost: u64,
    /// The current round's RTT samples.
    samples: Vec<Duration>,
    /// Recent rounds' low RTT (their 5th percentile, at least the second
    /// lowest sample), for the base RTT.
    lows: std::collections::VecDeque<(Instant, Duration)>,
    /// Rounds in a row, before this one, whose queue was under half `TARGET`.
    clear_rounds: u32,
    /// The smoothed RTT (how long a round lasts).
    rtt: Duration,
    /// The path's RTT without a queue: the lowest of the recent rounds' low
    /// RTTs (see `lows`). Not the lowest sample ever: on a busy host a sample can
    /// come out below the path's RTT (quinn's lowest read 96.6 ms on a 100 ms
    /// path once, most likely a clock read late for a send or early for an
    /// ack), and kept for good it read as a standing queue and held the
    /// window at its floor for the rest of that run.
    min_rtt: Duration,
    /// When a round's low RTT last came within `BASE_SLACK` of `min_rtt`.
    base_seen: Instant,
    /// Draining the queue to measure the base RTT: the window to go back
    /// to, and the rounds left. While the controller holds its queue near
    /// `TARGET` no round sees the path without a queue, and the base RTT
    /// of the last `BASE_WINDOW` would read the base plus that queue: the
    /// controller would then aim `TARGET` above that, and the queue would
    /// grow by about `TARGET` every `BASE_WINDOW` without end (in the
    /// simulation, 20 ms at 4 MB/s: a 10 ms queue after 15 s, 65 ms after
    /// 145 s).
    drain: Option<(u64, u32)>,
}

impl Edge {
    fn floor(&self) -> u64 {
        4 * self.mtu
    }

    /// An RTT sample: a packet sent, its ack received.
    fn sample(&mut self, rtt: Duration) {
        self.samples.push(rtt);
    }

    /// A packet sent at `sent` acknowledged at `now`; `smoothed_rtt` is
    /// quinn's estimate (how long a round lasts). What `on_ack` does, apart
    /// so that the simulation (`sim`) can call it: quinn's `RttEstimator`
    /// cannot be built outside quinn.
    fn acked_packet(&mut self, now: Instant, sent: Instant, bytes: u64, smoothed_rtt: Duration) {
        self.acked += bytes;
        self.rtt = smoothed_rtt;
        self.sample(now.saturating_duration_since(sent));
    }

    /// Once per round trip: grow or shrink by the queue the RTT shows.
    fn end_round(&mut self, now: Instant, app_limited: bool) {
        self.samples.sort_unstable();
        let (rtt, round_min) = match self.samples.len() {
            0 => (Duration::MAX, Duration::MAX),
            n => (
                self.samples.iter().sum::<Duration>() / n as u32,
                self.samples[0],
            ),
        };
        let mut low = None;
        if self.samples.len() >= 4 {
            let l = self.samples[(self.samples.len() / 20).max(1)];
            self.lows.push_back((now, l));
            low = Some(l);
        }
        while self
            .lows
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > BASE_WINDOW)
            && self.lows.len() > 1
        {
            self.lows.pop_front();
        }
        if let Some(base) = self.lows.iter().map(|(_, l)| *l).min() {
            self.min_rtt = base;
        }
        if low.is_some_and(|l| l <= self.min_rtt + BASE_SLACK) {
            self.base_seen = now;
        }
        let queue = rtt.saturating_sub(self.min_rtt);
        if let Some((restore, left)) = self.drain {
            // The round's samples show the drain, not the path: neither grow
            // nor shrink on them.
            if left > 1 {
                self.drain = Some((restore, left - 1));
            } else {
                self.drain = None;
                self.window = restore.max(self.window);
            }
        } else {
            self.adjust(now, rtt, round_min, queue, app_limited);
        }
        tracing::trace!(
            rtt_ms = rtt.as_secs_f64() * 1e3,
            min_rtt_ms = self.min_rtt.as_secs_f64() * 1e3,
            samples = self.samples.len(),
            acked = self.acked,
            lost = self.lost,
            app_limited,
            window = self.window,
            draining = self.drain.is_some(),
            "round"
        );
        self.round_start = now;
        self.acked = 0;
        self.lost = 0;
        self.samples.clear();
    }

    /// Grow or shrink the window by the round's queue and losses; drain the
    /// queue when a busy link's base RTT has not been seen for `DRAIN_EVERY`.
    fn adjust(
        &mut self,
        now: Instant,
        rtt: Duration,
        round_min: Duration,
        queue: Duration,
        app_limited: bool,
    ) {
        // Over a fifth of the round lost, and more than two packets of it
        // (one loss among the first handful of packets is not congestion).
        let heavy_loss = self.lost * 5 > self.acked + self.lost && self.lost > 2 * self.mtu;
        if heavy_loss {
            self.startup = false;
            self.clear_rounds = 0;
            self.window = (self.window * 85 / 100).max(self.floor());
        } else if queue > TARGET && rtt != Duration::MAX {
            if self.startup && round_min.saturating_sub(self.min_rtt) <= TARGET {
                // Some samples were late, not the whole round: delayed acks
                // or a busy host, not yet a queue. Hold, keep starting up.
            } else {
                // The window's bytes beyond a TARGET-long queue sit in the queue.
                self.startup = false;
                self.clear_rounds = 0;
                let keep = (self.min_rtt + TARGET).as_secs_f64() / rtt.as_secs_f64();
                self.window = ((self.window as f64 * keep) as u64).max(self.floor());
            }
        } else if queue < TARGET && !app_limited {
            let clear = queue < TARGET / 2;
            self.window += if self.startup {
                self.window
            } else {
                let room = 1.0 - queue.as_secs_f64() / TARGET.as_secs_f64();
                let boost = if clear {
                    1u64 << self.clear_rounds.min(MAX_GROWTH_DOUBLINGS)
                } else {
                    1
                };
                ((self.window as f64 / 16.0 * room) as u64 * boost).max(self.mtu)
            };
            self.clear_rounds = if clear { self.clear_rounds + 1 } else { 0 };
        }
        // Only while the link is busy: an idle link's rounds (a keep-alive
        // each) have too few samples to see the base, and no queue.
        let busy = !app_limited && self.samples.len() >= 4;
        if busy && !self.startup && now.saturating_duration_since(self.base_seen) > DRAIN_EVERY {
            // Half the window is under the path's own (the queue is under
            // one RTT): the queue empties, and the next round measures the
            // path without it.
            self.base_seen = now;
            self.drain = Some((self.window, DRAIN_ROUNDS));
            self.window = (self.window / 2).max(self.floor());
        }
    }
}

impl Controller for Edge {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        _app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.acked_packet(now, sent, bytes, rtt.get());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        _in_flight: u64,
        app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        if !self.rtt.is_zero() && now.duration_since(self.round_start) >= self.rtt {
            self.end_round(now, app_limited);
        }
    }

    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            // These losses are answered here; counted toward the round's
            // heavy loss as well, they ended the startup this begins in the
            // same round, and the window crept back by a quarter per round
            // (in the simulation, a 3 s cut on 100 ms at 1 MB/s: the link
            // full again 3.8 s after it came back, not 2.2 s).
            self.lost = 0;
            // Nothing got through for several round trips (a cut link, a
            // stalled host): start over from the floor, doubling again until
            // a queue shows, as TCP does after a timeout, rather than
            // creeping up from four packets a round trip.
            tracing::debug!(window = self.window, "persistent congestion: starting over");
            self.window = self.floor();
            self.startup = true;
            self.clear_rounds = 0;
            self.drain = None;
        } else {
            self.lost += lost_bytes;
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.floor());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        10 * self.mtu
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(window_mtus: u64) -> Edge {
        let now = Instant::now();
        Edge {
            mtu: 1200,
            window: window_mtus * 1200,
            startup: false,
            round_start: now,
            acked: 0,
            lost: 0,
            samples: vec![Duration::from_millis(100)],
            lows: std::collections::VecDeque::from([(now, Duration::from_millis(100))]),
            clear_rounds: 0,
            rtt: Duration::from_millis(100),
            min_rtt: Duration::from_millis(100),
            base_seen: now,
            drain: None,
        }
    }

    #[test]
    fn grows_without_a_queue_and_ignores_random_loss() {
        let mut e = edge(100);
        e.acked = 98 * 1200;
        e.lost = 2 * 1200; // 2%
        e.end_round(Instant::now(), false);
        assert_eq!(e.window, 100 * 1200 + 100 * 1200 / 16);
        // Near the target, by less; at least a packet.
        let mut e = edge(100);
        e.samples = vec![Duration::from_millis(100) + TARGET / 2];
        e.end_round(Instant::now(), false);
        assert_eq!(e.window, 100 * 1200 + 100 * 1200 / 32);
        let mut e = edge(100);
        e.samples = vec![Duration::from_millis(100) + TARGET - Duration::from_micros(1)];
        e.end_round(Instant::now(), false);
        assert_eq!(e.window, 101 * 1200);
    }

    #[test]
    fn shrinks_when_a_queue_builds_or_loss_is_heavy() {
        // A queue of 3 TARGETs on average: the window keeps what fills the
        // path and a TARGET-long queue.
        let mut e = edge(100);
        e.samples = vec![Duration::from_millis(100) + 3 * TARGET];
        e.end_round(Instant::now(), false);
        let keep = (100 + TARGET.as_millis()) as f64 / (100 + 3 * TARGET.as_millis()) as f64;
        assert!(e.window.abs_diff((100.0 * 1200.0 * keep) as u64) <= 1);
        // The round's mean decides: one low sample among high ones (the
        // queue empty for a moment) does not hide the queue.
        let mut e = edge(100);
        e.samples.clear();
        for ms in [130, 100, 140] {
            e.sample(Duration::from_millis(ms));
        }
        e.end_round(Instant::now(), false);
        let want = (100.0 * 1200.0 * (100 + TARGET.as_millis()) as f64 / (370.0 / 3.0)) as u64;
        assert!(e.window.abs_diff(want) <= 1, "{} vs {want}", e.window);
        // A round without samples changes nothing.
        e.end_round(Instant::now(), false);
        assert!(e.window.abs_diff(want) <= 1);
        let mut e = edge(100);
        e.acked = 70 * 1200;
        e.lost = 30 * 1200;
        e.end_round(Instant::now(), false);
        assert_eq!(e.window, 85 * 1200);
        // One packet lost of a handful is chance, not congestion.
        let mut e = edge(5);
        e.acked = 4 * 1200;
        e.lost = 1200;
        e.end_round(Instant::now(), false);
        assert!(e.window > 5 * 1200);
        // Never below four packets.
        let mut e = edge(4);
        e.samples = vec![Duration::from_secs(1)];
        e.end_round(Instant::now(), false);
        assert_eq!(e.window, 4 * 1200);
    }

    /// One round whose samples are `ms` (RTT, milliseconds).
    fn round(e: &mut Edge, ms: &[u64]) {
        for m in ms {
            e.sample(Duration::from_millis(*m));
        }
        e.end_round(Instant::now(), false);
    }

    #[test]
    fn startup_ends_on_a_queue_the_whole_round_saw_not_on_late_acks() {
        let mut e = edge(10);
        e.startup = true;
        e.samples.clear();
        // The mean says 10 ms of queue, but the fastest packet saw none.
        round(&mut e, &[100, 130, 100]);
        assert!(e.startup);
        assert_eq!(e.window, 10 * 1200, "held, not doubled");
        round(&mut e, &[100, 100]);
        assert_eq!(e.window, 20 * 1200, "doubling again");
        // Every packet queued: startup ends and the window shrinks.
        round(&mut e, &[116, 117, 118]);
        assert!(!e.startup);
        assert!(e.window < 20 * 1200);
    }

    #[test]
    fn a_window_far_below_the_path_recovers_within_a_few_dozen_rounds() {
        // Ten packets left of a path that holds 170 (2 MB/s over 100 ms):
        // a sixteenth, then an eighth, then a quarter per clear round.
        let mut e = edge(10);
        e.samples.clear();
        let mut rounds = 0;
        while e.window < 170 * 1200 {
            round(&mut e, &[100, 101, 100]);
            rounds += 1;
        }
        assert!(rounds <= 16, "{rounds} rounds");
        // A queue past half the target ends the run of clear rounds: a
        // sixteenth again, scaled by the room left.
        let w = e.window;
        round(&mut e, &[103, 103]);
        assert_eq!(e.clear_rounds, 0);
        assert_eq!(e.window, w + (w as f64 / 16.0 * 0.4) as u64);
    }

    #[test]
    fn the_base_rtt_ignores_a_few_early_stamped_samples_and_expires() {
        let mut e = edge(100);
        e.samples.clear();
        // One sample of eight reads 95 ms on a 100 ms path (a clock read
        // early): the base stays 100 ms, a 4 ms queue is under the target.
        round(&mut e, &[95, 104, 104, 104, 104, 104, 104, 104]);
        assert_eq!(e.min_rtt, Duration::from_millis(100));
        let w = e.window;
        round(&mut e, &[104, 104, 104, 104]);
        assert!(e.window > w, "grew: no queue over the target");
        // A round's low RTT from more than 10 s ago no longer counts
        // (the newest one always does).
        let later = Instant::now() + BASE_WINDOW + Duration::from_secs(1);
        for ms in [103, 103, 103, 103] {
            e.sample(Duration::from_millis(ms));
        }
        e.end_round(later, false);
        assert_eq!(e.min_rtt, Duration::from_millis(103));
    }

    #[test]
    fn after_persistent_congestion_it_starts_over_and_doubles() {
        let mut e = edge(200);
        e.on_congestion_event(Instant::now(), Instant::now(), true, 1200);
        assert_eq!(e.window, 4 * 1200);
        e.lost = 0;
        e.samples.clear();
        for want in [8, 16, 32] {
            round(&mut e, &[100, 101]);
            assert_eq!(e.window, want * 1200);
        }
    }

    #[test]
    fn drains_the_queue_when_no_round_has_seen_the_base_rtt_for_a_while() {
        let mut e = edge(100);
        e.samples.clear();
        let start = e.base_seen;
        let mut now = start;
        // A 4 ms queue in every round: under the target, so the window
        // grows a little, but no round's low comes near the base.
        while now.duration_since(start) <= DRAIN_EVERY {
            now += Duration::from_millis(100);
            for _ in 0..8 {
                e.sample(Duration::from_millis(104));
            }
            e.end_round(now, false);
        }
        let (before, left) = e.drain.expect("draining");
        // An idle link (a keep-alive per round) is never drained.
        let mut idle = edge(100);
        idle.samples.clear();
        let mut t = idle.base_seen;
        for _ in 0..100 {
            t += Duration::from_millis(100);
            idle.sample(Duration::from_millis(104));
            idle.end_round(t, false);
        }
        assert_eq!(idle.drain, None);
        assert_eq!(left, DRAIN_ROUNDS);
        assert_eq!(e.window, before / 2);
        // The drain's rounds neither grow nor shrink; then the window is back.
        for ms in [110, 100] {
            now += Duration::from_millis(100);
            for _ in 0..8 {
                e.sample(Duration::from_millis(ms));
            }
            e.end_round(now, false);
        }
        assert_eq!(e.drain, None);
        assert_eq!(e.window, before);
        assert_eq!(e.base_seen, now, "the drain's last round saw the base");
    }

    #[test]
    fn doubles_in_startup_and_holds_when_the_application_is_the_limit() {
        let mut e = edge(10);
        e.startup = true;
        e.end_round(Instant::now(), false);
        assert_eq!(e.window, 20 * 1200);
        e.end_round(Instant::now(), true);
        assert_eq!(e.window, 20 * 1200);
    }
}
