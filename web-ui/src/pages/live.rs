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
                let shown_rows = Signal::derive(move || {
                    let live = rows.get();
                    if live.is_empty() { latest.clone() } else { live }
                });
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

/// Puts a tick's events on top of `rows`, newest first, without repeats.
pub fn merge(rows: &mut Vec<EventRow>, fresh: Vec<EventRow>) {
    let seen: std::collections::HashSet<i64> = fresh.iter().map(|r| r.det_oid).collect();
    rows.retain(|r| !seen.contains(&r.det_oid));
    let mut merged = fresh;
    merged.append(rows);
    merged.truncate(ROWS);
    *rows = merged;
}
