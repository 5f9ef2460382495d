//! Completeness, per camera: "were any detections lost, where and when"
//! (PROTOCOL.md, "Completeness"). Reads the camera_seq values the store
//! received (`store::received`) and what each agent last reported of its
//! intake (`AgentStatus.intake`, kept by the fleet), and names the holes:
//! lost (the agent settled those numbers: acknowledged, refused or dropped)
//! or pending (they may still be in the agent's buffer), with the agent's
//! reason where it gave one. Feeds the `Completeness` query, the CLI report,
//! the dashboard and the `sightline_completeness_*` metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sightline_proto::v1::{
    AgentInfo, CameraCompleteness, CameraIntake, CompletenessResponse, Gap, LossReason,
};

use crate::{
    metrics::{CameraLabel, Metrics},
    store::received::{Range, RangeSet},
};

/// Most gaps listed per camera (the newest); the counts cover all of them.
pub const MAX_GAPS_LISTED: usize = 100;

/// The report over every camera with received values or an intake report;
/// gaps whose neighbouring received events are all older than `since_ms`
/// are left out (0: none is).
pub fn report(
    received: Vec<(i64, RangeSet)>,
    agents: &[AgentInfo],
    since_ms: i64,
) -> CompletenessResponse {
    let mut intake: BTreeMap<i64, (&str, &CameraIntake)> = BTreeMap::new();
    for a in agents {
        for c in &a.intake {
            intake.insert(c.video_camera_oid, (a.agent_id.as_str(), c));
        }
    }
    let mut sets: BTreeMap<i64, RangeSet> = received.into_iter().collect();
    for cam in intake.keys() {
        sets.entry(*cam).or_default();
    }
    let cameras = sets
        .into_iter()
        .map(|(cam, set)| camera(cam, &set, intake.get(&cam).copied(), since_ms))
        .collect();
    CompletenessResponse { cameras }
}

fn camera(
    cam: i64,
    set: &RangeSet,
    intake: Option<(&str, &CameraIntake)>,
    since_ms: i64,
) -> CameraCompleteness {
    let ranges: Vec<Range> = set.ranges().copied().collect();
    let mut holes: Vec<Gap> = Vec::new();
    let hole = |first: u64, last: u64, after_ms: i64, before_ms: i64| Gap {
        first,
        last,
        after_ms,
        before_ms,
        ..Default::default()
    };
    let high = intake.map_or(0, |(_, i)| i.camera_seq_high);
    match (ranges.first(), ranges.last()) {
        (Some(_), Some(last)) => {
            for w in ranges.windows(2) {
                let (a, b) = (w[0], w[1]);
                if a.last_ms >= since_ms || b.first_ms >= since_ms {
                    holes.push(hole(a.last + 1, b.first - 1, a.last_ms, b.first_ms));
                }
            }
            if high > last.last {
                holes.push(hole(last.last + 1, high, last.last_ms, 0));
            }
        }
        // Nothing received: everything the agent numbered is missing.
        _ if high > 0 => holes.push(hole(1, high, 0, 0)),
        _ => {}
    }
    let mut gaps = Vec::new();
    for h in holes {
        split(h, intake.map(|(_, i)| i), &mut gaps);
    }
    let received = ranges
        .iter()
        .filter(|r| r.last_ms >= since_ms)
        .map(|r| r.last - r.first + 1)
        .sum();
    let size = |g: &Gap| g.last - g.first + 1;
    let missing = gaps.iter().filter(|g| !g.pending).map(size).sum();
    let pending = gaps.iter().filter(|g| g.pending).map(size).sum();
    if gaps.len() > MAX_GAPS_LISTED {
        gaps.drain(..gaps.len() - MAX_GAPS_LISTED);
    }
    CameraCompleteness {
        video_camera_oid: cam,
        agent_id: intake.map(|(a, _)| a.to_string()).unwrap_or_default(),
        received,
        missing,
        pending,
        gaps,
    }
}

/// Splits a hole at the agent's settled mark: at or below it the values are
/// lost, above it pending. Without a report from the agent, all pending.
fn split(h: Gap, intake: Option<&CameraIntake>, out: &mut Vec<Gap>) {
    let Some(i) = intake else {
        out.push(Gap {
            pending: true,
            reason: "no report from the camera's agent since the core started".into(),
            ..h
        });
        return;
    };
    let settled = i.camera_seq_settled;
    if h.first <= settled {
        let last = h.last.min(settled);
        out.push(Gap {
            last,
            reason: reason(h.first, last, i),
            pending: false,
            ..h.clone()
        });
    }
    if h.last > settled {
        out.push(Gap {
            first: h.first.max(settled + 1),
            pending: true,
            reason: "not yet sent: still in the agent's buffer or on the way".into(),
            ..h
        });
    }
}

/// What the agent said of `first..=last`: each reason with how many of the
/// values it covers, and how many it did not account for.
fn reason(first: u64, last: u64, i: &CameraIntake) -> String {
    let mut by: BTreeMap<i32, u64> = BTreeMap::new();
    for l in &i.losses {
        let (a, b) = (l.first.max(first), l.last.min(last));
        if a <= b {
            *by.entry(l.reason).or_default() += b - a + 1;
        }
    }
    let covered: u64 = by.values().sum();
    let mut parts: Vec<String> = by
        .into_iter()
        .map(|(r, n)| format!("{n} {}", describe(r)))
        .collect();
    let rest = (last - first + 1).saturating_sub(covered);
    if rest > 0 && !parts.is_empty() {
        parts.push(format!("{rest} without a reason from the agent"));
    }
    parts.join("; ")
}

fn describe(reason: i32) -> &'static str {
    match LossReason::try_from(reason) {
        Ok(LossReason::RefusedFull) => "refused at intake (buffer full)",
        Ok(LossReason::DroppedFull) => "dropped at the agent (buffer full, when_full = drop)",
        Ok(LossReason::Upstream) => "never reached the agent (the detector's counter jumped)",
        _ => "lost (reason not given)",
    }
}

/// Sets `sightline_completeness_missing_total` and `sightline_completeness_gaps`
/// per camera from a report over everything kept.
pub fn publish_metrics(metrics: &Metrics, r: &CompletenessResponse) {
    for c in &r.cameras {
        let l = CameraLabel {
            camera: c.video_camera_oid.to_string(),
        };
        metrics
            .completeness_missing
            .get_or_create(&l)
            .set(c.missing as i64);
        let gaps = c.gaps.iter().filter(|g| !g.pending).count();
        metrics.completeness_gaps.get_or_create(&l).set(gaps as i64);
    }
}

/// How often the completeness metrics are recomputed.
pub const METRICS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Recomputes the completeness metrics every [`METRICS_INTERVAL`], until
/// `shutdown`.
pub async fn refresh_metrics(
    store: std::sync::Arc<crate::store::Store>,
    fleet: std::sync::Arc<crate::fleet::Fleet>,
    metrics: std::sync::Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(METRICS_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.received_all()).await {
                    Ok(Ok(received)) => {
                        publish_metrics(&metrics, &report(received, &fleet.snapshot(), 0));
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "completeness metrics not refreshed"),
                    Err(e) => tracing::debug!(error = %e, "completeness metrics task failed"),
                }
            }
        }
    }
}

/// One camera: its verdict ("complete", or "N missing, M pending") and one
/// line per gap ("missing 101..250 (150) between … and …: why").
pub fn camera_lines(
    c: &CameraCompleteness,
    fmt_ms: impl Fn(i64) -> String,
) -> (String, Vec<String>) {
    let verdict = if c.missing == 0 && c.pending == 0 {
        "complete".to_string()
    } else {
        format!("{} missing, {} pending", c.missing, c.pending)
    };
    let gaps = c
        .gaps
        .iter()
        .map(|g| {
            let when = match (g.after_ms, g.before_ms) {
                (0, 0) => String::new(),
                (a, 0) => format!(" after {}", fmt_ms(a)),
                (0, b) => format!(" before {}", fmt_ms(b)),
                (a, b) => format!(" between {} and {}", fmt_ms(a), fmt_ms(b)),
            };
            let what = if g.pending { "pending" } else { "missing" };
            let why = if g.reason.is_empty() {
                "no reason reported by the agent (lost on the way?)"
            } else {
                g.reason.as_str()
            };
            format!(
                "{what} {}..{} ({}){when}: {why}",
                g.first,
                g.last,
                g.last - g.first + 1
            )
        })
        .collect();
    (verdict, gaps)
}

/// The report as text: `complete` alone on the first line when nothing is
/// missing nor pending, then one line per camera and one per gap.
pub fn format(r: &CompletenessResponse, fmt_ms: impl Fn(i64) -> String) -> String {
    let missing: u64 = r.cameras.iter().map(|c| c.missing).sum();
    let pending: u64 = r.cameras.iter().map(|c| c.pending).sum();
    let mut out = String::new();
    if missing == 0 && pending == 0 {
        out.push_str("complete\n");
    } else {
        let _ = writeln!(out, "incomplete: {missing} missing, {pending} pending");
    }
    for c in &r.cameras {
        let agent = if c.agent_id.is_empty() {
            String::new()
        } else {
            format!(" (agent {})", c.agent_id)
        };
        let (verdict, gaps) = camera_lines(c, &fmt_ms);
        let _ = writeln!(
            out,
            "camera {}{agent}: {verdict}; {} received",
            c.video_camera_oid, c.received
        );
        for g in gaps {
            let _ = writeln!(out, "  {g}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_proto::v1::LossRange;

    fn set(values: impl IntoIterator<Item = u64>) -> RangeSet {
        let mut s = RangeSet::default();
        for v in values {
            s.insert(v, 1_700_000_000_000 + v as i64 * 1000);
        }
        s
    }

    fn agent(cam: i64, high: u64, settled: u64, losses: Vec<LossRange>) -> AgentInfo {
        AgentInfo {
            agent_id: "edge-1".into(),
            intake: vec![CameraIntake {
                video_camera_oid: cam,
                camera_seq_high: high,
                camera_seq_settled: settled,
                losses,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ms(v: i64) -> String {
        v.to_string()
    }

    #[test]
    fn nothing_missing_reads_complete_alone_on_the_first_line() {
        let r = report(vec![(7, set(1..=50))], &[agent(7, 50, 50, vec![])], 0);
        let text = format(&r, ms);
        assert_eq!(text.lines().next(), Some("complete"));
        assert!(
            text.contains("camera 7 (agent edge-1): complete; 50 received"),
            "{text}"
        );
    }

    #[test]
    fn a_hole_names_its_range_its_neighbours_times_and_the_agents_reason() {
        let received = set((1..=10).chain(31..=40));
        let losses = vec![LossRange {
            first: 11,
            last: 30,
            reason: LossReason::DroppedFull as i32,
        }];
        let r = report(vec![(7, received)], &[agent(7, 40, 40, losses)], 0);
        let c = &r.cameras[0];
        assert_eq!((c.missing, c.pending, c.received), (20, 0, 20));
        assert_eq!((c.gaps[0].first, c.gaps[0].last), (11, 30));
        assert_eq!(c.gaps[0].after_ms, 1_700_000_010_000);
        assert_eq!(c.gaps[0].before_ms, 1_700_000_031_000);
        let text = format(&r, ms);
        assert!(
            text.starts_with("incomplete: 20 missing, 0 pending\n"),
            "{text}"
        );
        assert!(
            text.contains("  missing 11..30 (20) between 1700000010000 and 1700000031000: 20 dropped at the agent (buffer full, when_full = drop)"),
            "{text}"
        );
    }

    #[test]
    fn a_hole_the_agent_has_not_settled_is_pending_not_lost() {
        // The live lane stored 41..=50 ahead of a backlog 21..=40 not sent yet.
        let received = set((1..=20).chain(41..=50));
        let r = report(vec![(7, received)], &[agent(7, 60, 25, vec![])], 0);
        let c = &r.cameras[0];
        assert_eq!((c.missing, c.pending), (5, 15 + 10));
        assert!(!c.gaps[0].pending && c.gaps[0].first == 21 && c.gaps[0].last == 25);
        assert!(c.gaps[1].pending && c.gaps[1].first == 26 && c.gaps[1].last == 40);
        // The tail the agent numbered and has not sent.
        assert!(c.gaps[2].pending && c.gaps[2].first == 51 && c.gaps[2].last == 60);
    }

    #[test]
    fn without_a_report_from_the_agent_a_hole_is_pending() {
        let r = report(vec![(7, set([1, 2, 5]))], &[], 0);
        assert_eq!((r.cameras[0].missing, r.cameras[0].pending), (0, 2));
    }
}
