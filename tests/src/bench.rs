//! What the ingest benchmarks share: their arguments, the detection
//! generator (with upstream duplicates), percentiles, and the live-latency
//! probe (publish → `Subscribe`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sightline_proto::v1::{Detection, EventFilter, SubscribeRequest};

use crate::data::now_ms;

/// Minimal `--key value` parsing (the benches have a few knobs).
pub struct Args(Vec<String>);

impl Args {
    pub fn from_env() -> Self {
        Self(std::env::args().skip(1).collect())
    }
    pub fn flag(&self, key: &str) -> bool {
        self.0.iter().any(|a| a == key)
    }
    pub fn get(&self, key: &str, default: f64) -> f64 {
        self.0
            .iter()
            .position(|a| a == key)
            .and_then(|i| self.0.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{key} takes a number")))
            .unwrap_or(default)
    }
}

/// Locations 1..=LOCATIONS are in Dataset B; the generator also uses one
/// that is not.
pub const LOCATIONS: i64 = 12;

/// Detections for now, a fraction `dup` of them repeats of recent ones.
pub struct Gen {
    rng: StdRng,
    recent: Vec<Detection>,
    dup: f64,
    /// The item of new detections, instead of a random one (their repeats
    /// carry it too).
    pub item: Option<&'static str>,
}

impl Gen {
    pub fn new(seed: u64, dup: f64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            recent: Vec::new(),
            dup,
            item: None,
        }
    }

    /// The next detection, and whether it repeats an earlier one.
    pub fn detection(&mut self) -> (Detection, bool) {
        if !self.recent.is_empty() && self.rng.random::<f64>() < self.dup {
            let i = self.rng.random_range(0..self.recent.len());
            return (self.recent[i].clone(), true);
        }
        let loc = self.rng.random_range(1..=LOCATIONS + 1); // one location not in Dataset B
        let mut d = Detection {
            geographical_location_oid: loc,
            video_camera_oid: loc * 100 + self.rng.random_range(0..4),
            detection_oid: Some(self.rng.random_range(1..i64::MAX)),
            item_name: ["person", "car", "bicycle", "backpack", "truck", "dog"]
                [self.rng.random_range(0..6)]
            .into(),
            timestamp_detected: now_ms(),
            confidence: 0.9,
            ..Default::default()
        };
        if let Some(item) = self.item {
            d.item_name = item.into();
        }
        if self.recent.len() < 4096 {
            self.recent.push(d.clone());
        } else {
            let i = self.rng.random_range(0..4096);
            self.recent[i] = d.clone();
        }
        (d, false)
    }
}

/// The value at fraction `p` of `sorted` (NaN when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A Prometheus histogram of `texts` (several endpoints' `/metrics`, summed)
/// in one line: its count and the bucket bounds its p50 and p99 fall under.
/// `name`: the histogram's name (without `_bucket`); `labels`: a label
/// it must carry as exported (`hop="committed_to_live"`), or "" for any.
pub fn histogram_line(texts: &[String], name: &str, labels: &str) -> String {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for text in texts {
        for l in text.lines() {
            let Some(rest) = l
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix("_bucket{"))
            else {
                continue;
            };
            let Some((inner, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            if !labels.is_empty() && !inner.contains(labels) {
                continue;
            }
            let Some(le) = inner
                .split(',')
                .find_map(|kv| kv.strip_prefix("le=\""))
                .map(|v| v.trim_end_matches('"'))
            else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            let n: f64 = value.trim().parse().unwrap_or(0.0);
            match buckets.iter_mut().find(|b| b.0 == le) {
                Some(b) => b.1 += n,
                None => buckets.push((le, n)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return "none observed".into();
    }
    let under = |q: f64| {
        let b = buckets
            .iter()
            .find(|b| b.1 >= q * total)
            .expect("+Inf holds all");
        if b.0.is_finite() {
            format!("<= {:.1} ms", b.0 * 1000.0)
        } else {
            "beyond the last bucket".into()
        }
    };
    format!(
        "{total:.0} observed, p50 {}, p99 {}",
        under(0.5),
        under(0.99)
    )
}

/// What the benchmarks' subscribers decode of each event `Subscribe`
/// streams (a `JoinedEvent`: the same field numbers; prost skips the rest
/// unread). The benchmarks' subscribers share the machine's two CPUs with
/// the core and the agents, and decoding every field of ~100,000 events a
/// second (each Dataset B row's columns into a map) was the benchmark's
/// work, not the system's: a subscriber elsewhere pays it on its own CPU.
/// The core's work per subscriber is the same either way.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ThinEvent {
    #[prost(message, optional, tag = "1")]
    pub detection: Option<ThinDetection>,
    #[prost(int64, tag = "4")]
    pub accepted_ms: i64,
    #[prost(int64, tag = "5")]
    pub committed_ms: i64,
}

/// The det_oid of a `Detection` (field 3), nothing else.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ThinDetection {
    #[prost(int64, optional, tag = "3")]
    pub detection_oid: Option<i64>,
}

impl ThinEvent {
    pub fn det_oid(&self) -> i64 {
        self.detection
            .as_ref()
            .and_then(|d| d.detection_oid)
            .unwrap_or_default()
    }
}

/// `Subscribe` (live, with `filter`) on the core this process started at
/// `url`, as its admin, each event read as a [`ThinEvent`].
pub async fn subscribe_thin(
    url: &str,
    filter: Option<EventFilter>,
) -> Result<tonic::Streaming<ThinEvent>, tonic::Status> {
    let token = crate::query::admin_token(url);
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        crate::query::channel(url).await,
        crate::proc::Bearer::new(&token),
    ));
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let stream = grpc
        .server_streaming(
            tonic::Request::new(SubscribeRequest { from_ms: 0, filter }),
            tonic::codegen::http::uri::PathAndQuery::from_static("/sightline.v1.Query/Subscribe"),
            tonic_prost::ProstCodec::<SubscribeRequest, ThinEvent>::default(),
        )
        .await?;
    Ok(stream.into_inner())
}

/// How often, and why last, the core ended a subscription with an error.
#[derive(Clone, Default)]
pub struct Ends(Arc<Mutex<(u64, Option<String>)>>);

impl Ends {
    fn record(&self, status: &tonic::Status) {
        let mut ends = self.0.lock().unwrap();
        ends.0 += 1;
        ends.1 = Some(format!("{:?}: {}", status.code(), status.message()));
    }

    pub fn count(&self) -> u64 {
        self.0.lock().unwrap().0
    }

    pub fn last(&self) -> Option<String> {
        self.0.lock().unwrap().1.clone()
    }
}

/// Reads a live `Subscribe` (with `filter`, [`subscribe_thin`]) in a task,
/// calling `each` with every event. When the core ends the stream with an
/// error (a reader slower than a burst is cut off once it is
/// `live.buffer_events` behind), `ends` records it; with `again` it
/// subscribes again at once, so that the core fans out to it throughout
/// (what was committed meanwhile it does not see).
pub async fn read_live(
    url: &str,
    filter: Option<EventFilter>,
    again: bool,
    ends: Ends,
    mut each: impl FnMut(ThinEvent) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut live = subscribe_thin(url, filter.clone()).await.unwrap();
    let url = url.to_string();
    tokio::spawn(async move {
        loop {
            match live.next().await {
                Some(Ok(ev)) => each(ev),
                Some(Err(status)) => {
                    ends.record(&status);
                    if !again {
                        return;
                    }
                    live = match subscribe_thin(&url, filter.clone()).await {
                        Ok(live) => live,
                        Err(_) => return,
                    };
                }
                None => return,
            }
        }
    })
}

/// Publish → `Subscribe` latency of the det_oids it is told about: `sent`
/// records when each was published, the subscriber task the milliseconds
/// until it arrived.
#[derive(Clone, Default)]
pub struct LatencyProbe {
    /// det_oid -> when published (monotonic, and wall-clock ms to compare
    /// with the core's `committed_ms`).
    sent: Arc<Mutex<HashMap<i64, (Instant, i64)>>>,
    latencies: Arc<Mutex<Vec<f64>>>,
    /// The same latencies split in three: publish -> accepted by the agent,
    /// accepted -> committed by the core, committed -> Subscribe (wall
    /// clocks of one machine, ms resolution).
    hops: Arc<Mutex<[Vec<f64>; 3]>>,
    /// When and why the core ended its subscription with an error.
    ends: Ends,
}

impl LatencyProbe {
    /// Subscribes to the core at `url` (live, with `filter`) and records
    /// the latency of every event it was told about; the task ends with the
    /// stream ([`LatencyProbe::ended`] says why when it ended in an error).
    pub async fn subscribe(
        &self,
        url: &str,
        filter: Option<EventFilter>,
    ) -> tokio::task::JoinHandle<()> {
        self.read(url, filter, false).await
    }

    /// [`Self::subscribe`], subscribing again each time the core ends the
    /// stream (see [`read_live`]); [`Self::cut_offs`] counts the ends.
    pub async fn subscribe_kept(
        &self,
        url: &str,
        filter: Option<EventFilter>,
    ) -> tokio::task::JoinHandle<()> {
        self.read(url, filter, true).await
    }

    /// Records what a [`read_live`] task reads (`again`: see there).
    async fn read(
        &self,
        url: &str,
        filter: Option<EventFilter>,
        again: bool,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        read_live(url, filter, again, self.ends.clone(), move |ev| {
            me.record(&ev)
        })
        .await
    }

    /// The latency of `ev`, if it is one this probe was told about.
    fn record(&self, ev: &ThinEvent) {
        let now = Instant::now();
        if let Some((t, wall)) = self.sent.lock().unwrap().remove(&ev.det_oid()) {
            self.latencies
                .lock()
                .unwrap()
                .push(now.duration_since(t).as_secs_f64() * 1000.0);
            let now_wall = sightline_proto::now_ms();
            let mut hops = self.hops.lock().unwrap();
            hops[0].push((ev.accepted_ms - wall) as f64);
            hops[1].push((ev.committed_ms - ev.accepted_ms) as f64);
            hops[2].push((now_wall - ev.committed_ms) as f64);
        }
    }

    /// The error the core ended the subscription with, if it did (the last
    /// one, for [`Self::subscribe_kept`]).
    pub fn ended(&self) -> Option<String> {
        self.ends.last()
    }

    /// How often the core ended a [`Self::subscribe_kept`] subscription.
    pub fn cut_offs(&self) -> u64 {
        self.ends.count()
    }

    /// Records that these det_oids were published now.
    pub fn sent(&self, oids: impl IntoIterator<Item = i64>) {
        let now = (Instant::now(), sightline_proto::now_ms());
        let mut m = self.sent.lock().unwrap();
        for o in oids {
            m.insert(o, now);
        }
    }

    /// The latencies so far, sorted, and how many sent were not (yet) seen;
    /// starts afresh.
    pub fn take(&self) -> (Vec<f64>, usize) {
        let mut lat = std::mem::take(&mut *self.latencies.lock().unwrap());
        let missing = std::mem::take(&mut *self.sent.lock().unwrap()).len();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (lat, missing)
    }

    /// The latencies so far split in three, each sorted: publish ->
    /// accepted, accepted -> committed, committed -> Subscribe; starts afresh.
    pub fn take_hops(&self) -> [Vec<f64>; 3] {
        let mut hops = std::mem::take(&mut *self.hops.lock().unwrap());
        for h in &mut hops {
            h.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        hops
    }

    /// `take_hops` as one line: p50 and p99 of each hop.
    pub fn hops_line(&self) -> String {
        let [a, b, c] = self.take_hops();
        let p = |v: &[f64]| {
            format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                percentile(v, 0.5),
                percentile(v, 0.99)
            )
        };
        format!(
            "publish -> agent accepted {}; accepted -> core committed {}; committed -> Subscribe {}",
            p(&a),
            p(&b),
            p(&c)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::histogram_line;

    #[test]
    fn a_histogram_line_sums_endpoints_and_reads_the_quantiles_bucket() {
        let a = "x_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 98\nx_bucket{le=\"+Inf\"} 100\n\
                 y_bucket{le=\"0.01\"} 7\n";
        let b = "x_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 99\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(
            histogram_line(&[a.into(), b.into()], "x", ""),
            "200 observed, p50 <= 10.0 ms, p99 beyond the last bucket"
        );
        let h = "h_bucket{hop=\"a\",le=\"1.0\"} 3\nh_bucket{hop=\"a\",le=\"+Inf\"} 3\n\
                 h_bucket{hop=\"b\",le=\"1.0\"} 0\nh_bucket{hop=\"b\",le=\"+Inf\"} 5\n";
        assert_eq!(
            histogram_line(&[h.into()], "h", "hop=\"a\""),
            "3 observed, p50 <= 1000.0 ms, p99 <= 1000.0 ms"
        );
        assert_eq!(
            histogram_line(&[h.into()], "h", "hop=\"c\""),
            "none observed"
        );
    }
}
