//! Top items: the X most detected items per location over a range, as bars
//! and a table; refreshed every 5 s while open.

use leptos::prelude::*;

use super::{every, query_param, RangeForm};
use crate::{
    api::get_top_items,
    components::{error_view, Bars},
    format,
    model::TopItems,
};

#[component]
pub fn TopPage() -> impl IntoView {
    let (range, from, to, x) = (
        query_param("range", "1h"),
        query_param("from", ""),
        query_param("to", ""),
        query_param("x", "5"),
    );
    let top = Resource::new(
        move || (range.get(), from.get(), to.get(), x.get()),
        |(range, from, to, x)| async move {
            let x = x
                .parse::<u32>()
                .map_err(|_| ServerFnError::new(format!("field `x`: {x:?} is not a number")))?;
            get_top_items(range, from, to, x).await
        },
    );
    every(5, move || top.refetch());
    view! {
        <h1>"Top items per location"</h1>
        <RangeForm action="/top" range from to>
            <label>"X " <input name="x" type="number" min="1" max="100" prop:value=move || x.get()/></label>
        </RangeForm>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match top.await {
                    Ok(t) => view! { <TopView t/> }.into_any(),
                    Err(e) => error_view(e),
                }
            })}
        </Transition>
    }
}

#[component]
fn TopView(t: TopItems) -> impl IntoView {
    let empty = t.locations.is_empty();
    view! {
        <p class="muted">
            {format::time_ms(t.from_ms)}" → "{format::time_ms(t.to_ms)}
            " · "{t.locations.len()}" locations"
        </p>
        {empty.then(|| view! { <p>"No events in this range."</p> })}
        <div class="cards">
            {t.locations.into_iter().map(|l| {
                let name = format::location(&l.location, l.location_oid);
                let rows = l.items.clone();
                view! {
                    <section class="card top" data-location=l.location_oid>
                        <h2>{name}<span class="muted">" · "{format::count(l.total)}" events"</span></h2>
                        <Bars items=l.items/>
                        <table class="topitems">
                            <thead><tr><th>"#"</th><th>"Item"</th><th class="num">"Count"</th></tr></thead>
                            <tbody>
                                {rows.into_iter().enumerate().map(|(i, (item, n))| {
                                    let label = item.clone();
                                    view! {
                                        <tr data-item=item data-count=n>
                                            <td>{i + 1}</td><td>{label}</td><td class="num">{format::count(n)}</td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    </section>
                }
            }).collect_view()}
        </div>
    }
}
