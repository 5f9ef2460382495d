//! Timeline: events per minute (per hour over long ranges) by item or by
//! location, as a chart; refreshed every 10 s while open.

use leptos::prelude::*;

use super::{every, query_param, RangeForm};
use crate::{
    api::get_timeline,
    components::{error_view, LineChart},
    format,
};

#[component]
pub fn TimelinePage() -> impl IntoView {
    let (range, from, to, by) = (
        query_param("range", "1h"),
        query_param("from", ""),
        query_param("to", ""),
        query_param("by", "item"),
    );
    let data = Resource::new(
        move || (range.get(), from.get(), to.get(), by.get()),
        |(range, from, to, by)| get_timeline(range, from, to, by),
    );
    every(10, move || data.refetch());
    view! {
        <h1>"Timeline"</h1>
        <RangeForm action="/timeline" range from to>
            <label>"by "
                <select name="by">
                    <option value="item" selected=move || by.get() == "item">"item"</option>
                    <option value="location" selected=move || by.get() == "location">"location"</option>
                </select>
            </label>
        </RangeForm>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(t) => {
                        let end = t.from_ms + t.bucket_ms * t.buckets as i64;
                        view! {
                            <p class="muted">{format::time_ms(t.from_ms)}" → "{format::time_ms(end)}</p>
                            <LineChart series=t.series buckets=t.buckets from_ms=t.from_ms bucket_ms=t.bucket_ms/>
                        }.into_any()
                    }
                    Err(e) => error_view(e),
                }
            })}
        </Transition>
    }
}
