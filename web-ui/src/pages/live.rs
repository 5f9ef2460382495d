//! Live: joined events as they are committed, pushed by the core over
//! server-sent events (`/api/live`), with exact totals and events per second.

use leptos::prelude::*;

use crate::{
    api::{get_latest, get_totals},
    components::EventTable,
    format,
    model::{EventRow, LiveTick, Totals},
};

/// Rows the page keeps on screen.
pub const ROWS: usize = 50;

#[component]
pub fn LivePage() -> impl IntoView {
    let initial = Resource::new(
        || (),
        |_| async { (get_totals().await, get_latest(ROWS as u32).await) },
    );
    let (tick, set_tick) = signal(None::<LiveTick>);
    let (rows, set_rows) = signal(Vec::<EventRow>::new());
    let (state, set_state) = signal("connecting");
    Effect::new(move |_| crate::live::connect(set_tick, set_rows, set_state));
    // Not every tick measures the rate: keep the last measured one.
    let (rate, set_rate) = signal(0.0f64);
    Effect::new(move |_| {
        if let Some(r) = tick.with(|t| t.as_ref().and_then(|t| t.per_s)) {
            set_rate.set(r);
        }
    });
    view! {
        <h1>"Live " <span class=move || format!("state {}", state.get())>{move || state.get()}</span></h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                let (totals, latest) = initial.await;
                let (totals, latest) = (totals.unwrap_or_default(), latest.unwrap_or_default());
                let shown: Signal<Totals> = Signal::derive(move || {
                    tick.with(|t| t.as_ref().map(|t| t.totals.clone()))
                        .unwrap_or_else(|| totals.clone())
                });
                let shown_rows = Signal::derive(move || on_screen(&latest, rows.get()));
                view! {
                    <section class="counters">
                        <Counter label="events/s" value=Signal::derive(move || format!("{:.0}", rate.get())) id="rate"/>
                        <Counter label="stored" value=Signal::derive(move || format::count(shown.get().stored)) id="stored"/>
                        <Counter label="duplicates dropped" value=Signal::derive(move || {
                            let t = shown.get();
                            format::count(t.dup_transport + t.dup_semantic)
                        }) id="dups"/>
                        <Counter label="unmatched location" value=Signal::derive(move || format::count(shown.get().unmatched)) id="unmatched"/>
                        <Counter label="rejected" value=Signal::derive(move || format::count(shown.get().rejected)) id="rejected"/>
                    </section>
                    <EventTable rows=shown_rows/>
                }
            })}
        </Suspense>
    }
}

#[component]
fn Counter(label: &'static str, value: Signal<String>, id: &'static str) -> impl IntoView {
    view! {
        <div class="counter">
            <div class="value" id=id>{move || value.get()}</div>
            <div class="label">{label}</div>
        </div>
    }
}

/// The rows on screen: the live ones on top of the first load's (which a
/// few live rows must not push off the page), newest first.
pub fn on_screen(first: &[EventRow], live: Vec<EventRow>) -> Vec<EventRow> {
    let mut rows = first.to_vec();
    merge(&mut rows, live);
    rows
}

/// Puts a tick's events on top of `rows`, newest first, without repeats.
pub fn merge(rows: &mut Vec<EventRow>, fresh: Vec<EventRow>) {
    let seen: std::collections::HashSet<i64> = fresh.iter().map(|r| r.det_oid).collect();
    rows.retain(|r| !seen.contains(&r.det_oid));
    let mut merged = fresh;
    merged.append(rows);
    merged.truncate(ROWS);
    *rows = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(dets: impl IntoIterator<Item = i64>) -> Vec<EventRow> {
        dets.into_iter()
            .map(|det_oid| EventRow {
                det_oid,
                location_oid: 1,
                location: None,
                camera_oid: 101,
                item: "car".into(),
                detected_ms: det_oid,
                committed_ms: det_oid,
                agent_id: "a".into(),
                thumbnail: None,
            })
            .collect()
    }

    fn dets(rows: &[EventRow]) -> Vec<i64> {
        rows.iter().map(|r| r.det_oid).collect()
    }

    #[test]
    fn live_rows_go_on_top_of_the_first_load_which_stays_beneath() {
        let first = rows(100..100 + ROWS as i64);
        // Nothing live yet: the first load.
        assert_eq!(dets(&on_screen(&first, vec![])), dets(&first));
        // Three live rows (one already on the page): on top, no repeat, the
        // page still full.
        let got = on_screen(&first, rows([7, 8, 100]));
        assert_eq!(got.len(), ROWS);
        assert_eq!(dets(&got[..4]), vec![7, 8, 100, 101]);
        // A page's worth of live rows: only those.
        let live = rows(1..=ROWS as i64);
        assert_eq!(dets(&on_screen(&first, live.clone())), dets(&live));
    }
}
