//! A simulated detector fleet on this host: N cameras producing detections at
//! a given total rate, with a share of upstream duplicates (the detector
//! re-sending a detection it already sent: same det_oid, same fields).
//!
//! Items follow a skewed (Zipf-like) distribution, so "top X items per
//! location" has a clear answer; each camera stands at one location.

use std::{collections::VecDeque, time::Duration};

use rand::{rngs::StdRng, Rng, SeedableRng};
use sightline_proto::v1::{BoundingBox, Detection};

use super::Publisher;

/// Items the simulated detectors report, most frequent first.
pub const ITEMS: &[&str] = &[
    "person",
    "car",
    "bicycle",
    "backpack",
    "truck",
    "handbag",
    "dog",
    "bus",
    "motorcycle",
    "suitcase",
    "umbrella",
    "cat",
    "skateboard",
    "stroller",
    "scooter",
];

/// The simulated fleet's shape.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Cameras on this host.
    pub cameras: u32,
    /// First camera oid; cameras are `camera_base .. camera_base + cameras`.
    pub camera_base: i64,
    /// Locations the cameras are spread over (round robin).
    pub locations: Vec<i64>,
    /// Events per second, all cameras together (duplicates included).
    pub rate: f64,
    /// Share of published events that re-send an earlier detection (0..1).
    pub duplicates: f64,
    /// Stop after this many published events (duplicates included).
    pub count: Option<u64>,
    /// Leave det_oid out, so the agent stamps it.
    pub omit_det_oid: bool,
    pub seed: u64,
}

/// What the simulation published.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimulateSummary {
    pub published: u64,
    pub duplicates: u64,
}

fn pick_item(rng: &mut StdRng) -> &'static str {
    // Weight 1/(i+1): "person" about 30%, the tail rare.
    let total: f64 = (1..=ITEMS.len()).map(|i| 1.0 / i as f64).sum();
    let mut x = rng.random::<f64>() * total;
    for (i, item) in ITEMS.iter().enumerate() {
        x -= 1.0 / (i + 1) as f64;
        if x <= 0.0 {
            return item;
        }
    }
    ITEMS[ITEMS.len() - 1]
}

/// Runs the simulation until `count` is reached (or forever).
pub async fn simulate(
    publisher: Publisher,
    opts: SimulateOptions,
) -> anyhow::Result<SimulateSummary> {
    anyhow::ensure!(opts.cameras > 0, "--cameras must be at least 1");
    anyhow::ensure!(
        !opts.locations.is_empty(),
        "--locations must name at least one location"
    );
    anyhow::ensure!(opts.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        (0.0..1.0).contains(&opts.duplicates),
        "--duplicates must be within 0..1"
    );
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut recent: VecDeque<Detection> = VecDeque::with_capacity(1024);
    let mut summary = SimulateSummary::default();
    let tick = Duration::from_millis(5);
    let started = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut camera = 0u32;
    loop {
        interval.tick().await;
        let due = (started.elapsed().as_secs_f64() * opts.rate) as u64;
        let mut n = due.saturating_sub(summary.published);
        if let Some(count) = opts.count {
            n = n.min(count - summary.published);
        }
        let mut batch = Vec::with_capacity(n as usize);
        for _ in 0..n {
            if !recent.is_empty() && rng.random::<f64>() < opts.duplicates {
                let i = rng.random_range(0..recent.len());
                batch.push(recent[i].clone());
                summary.duplicates += 1;
                continue;
            }
            let cam = opts.camera_base + camera as i64;
            let location = opts.locations[camera as usize % opts.locations.len()];
            camera = (camera + 1) % opts.cameras;
            let d = Detection {
                geographical_location_oid: location,
                video_camera_oid: cam,
                detection_oid: if opts.omit_det_oid {
                    None
                } else {
                    Some(rng.random_range(1..i64::MAX))
                },
                item_name: pick_item(&mut rng).to_string(),
                timestamp_detected: sightline_proto::now_ms(),
                r#box: Some(BoundingBox {
                    x: rng.random_range(0.0..1800.0),
                    y: rng.random_range(0.0..1000.0),
                    width: rng.random_range(20.0..200.0),
                    height: rng.random_range(20.0..300.0),
                }),
                confidence: rng.random_range(0.5..1.0),
                ..Default::default()
            };
            if recent.len() == 1024 {
                recent.pop_front();
            }
            recent.push_back(d.clone());
            batch.push(d);
        }
        summary.published += n;
        if !batch.is_empty() {
            publisher.publish_waiting(batch, None).await?;
        }
        if opts.count.is_some_and(|c| summary.published >= c) {
            return Ok(summary);
        }
    }
}
