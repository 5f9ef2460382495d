//! Pieces several pages use: the event table, bars, the timeline chart, and
//! how a failed request is shown.

use leptos::prelude::*;

use crate::{format, model::EventRow, model::Series};

/// Joined events as a table; each row links to its event page and carries
/// `data-det` and `data-committed` (commit time, epoch ms) for tools.
#[component]
pub fn EventTable(#[prop(into)] rows: Signal<Vec<EventRow>>) -> impl IntoView {
    view! {
        <table class="events">
            <thead>
                <tr>
                    <th></th>
                    <th>"Detected (UTC)"</th>
                    <th>"Item"</th>
                    <th>"Location"</th>
                    <th>"Camera"</th>
                    <th class="num">"det_oid"</th>
                </tr>
            </thead>
            <tbody>
                <For each=move || rows.get() key=|r| r.det_oid let:r>
                    <EventLine r/>
                </For>
            </tbody>
        </table>
    }
}

#[component]
fn EventLine(r: EventRow) -> impl IntoView {
    let href = format!("/event/{}", r.det_oid);
    let unmatched = r.location.is_none();
    let det = r.det_oid;
    let thumb = r.thumbnail.clone().map(|sha| {
        view! { <img class="thumb" loading="lazy" alt="" src=format!("/media/{sha}?event={det}")/> }
    });
    view! {
        <tr data-det=r.det_oid data-committed=r.committed_ms class:unmatched=unmatched>
            <td class="thumbcell">{thumb}</td>
            <td>{format::time_ms(r.detected_ms)}</td>
            <td><a href=href.clone()>{r.item.clone()}</a></td>
            <td>{format::location(&r.location, r.location_oid)}</td>
            <td>{r.camera_oid}</td>
            <td class="num"><a href=href>{r.det_oid}</a></td>
        </tr>
    }
}

/// Horizontal bars, longest first: (label, value).
#[component]
pub fn Bars(items: Vec<(String, u64)>) -> impl IntoView {
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    view! {
        <div class="bars">
            {items
                .into_iter()
                .map(|(label, n)| {
                    let pct = format!("width:{:.1}%", n as f64 * 100.0 / max as f64);
                    view! {
                        <div class="bar">
                            <span class="label">{label}</span>
                            <span class="track"><span class="fill" style=pct></span></span>
                            <span class="value">{format::count(n)}</span>
                        </div>
                    }
                })
                .collect_view()}
        </div>
    }
}

/// Colours of chart series, in order.
pub const PALETTE: [&str; 8] = [
    "#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#6b7280",
];

/// One line per series over equal buckets from `from_ms`, with a time axis
/// and a legend.
#[component]
pub fn LineChart(
    series: Vec<Series>,
    buckets: usize,
    from_ms: i64,
    bucket_ms: i64,
) -> impl IntoView {
    let max = series
        .iter()
        .flat_map(|s| s.counts.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let w = buckets.max(2) - 1;
    let lines = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let points = s
                .counts
                .iter()
                .enumerate()
                .map(|(x, n)| format!("{x},{:.2}", 100.0 - *n as f64 * 100.0 / max as f64))
                .collect::<Vec<_>>()
                .join(" ");
            view! {
                <polyline points=points fill="none" stroke=PALETTE[i % PALETTE.len()]
                    stroke-width="2" vector-effect="non-scaling-stroke"/>
            }
        })
        .collect_view();
    let legend = series
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let dot = format!("background:{}", PALETTE[i % PALETTE.len()]);
            view! {
                <span class="key"><span class="dot" style=dot></span>{s.name}" "{format::count(s.total)}</span>
            }
        })
        .collect_view();
    let per = if bucket_ms >= 3_600_000 {
        "hour"
    } else {
        "minute"
    };
    let ticks = (0..5)
        .map(|i| {
            let at = from_ms + (w as i64 * bucket_ms) * i / 4;
            view! { <span>{format::clock_ms(at)}</span> }
        })
        .collect_view();
    view! {
        <figure class="chart">
            <div class="ymax">{format::count(max)}" per "{per}</div>
            <svg viewBox=format!("0 0 {w} 100") preserveAspectRatio="none" role="img">
                {lines}
            </svg>
            <div class="xaxis">{ticks}</div>
            <figcaption class="legend">{legend}</figcaption>
        </figure>
    }
}

/// A failed request, said plainly.
pub fn error_view(e: ServerFnError) -> AnyView {
    view! { <p class="error">{e.to_string()}</p> }.into_any()
}
