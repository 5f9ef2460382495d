//! Search: full text over item, location and Dataset B's columns (tantivy
//! query syntax), with filters, paged, newest first.

use leptos::prelude::*;

use super::query_param;
use crate::{
    api::search_events,
    components::{error_view, EventTable},
    format,
    model::SearchQuery,
};

#[component]
pub fn SearchPage() -> impl IntoView {
    let (q, item, location, camera, page) = (
        query_param("q", ""),
        query_param("item", ""),
        query_param("location", ""),
        query_param("camera", ""),
        query_param("page", ""),
    );
    let results = Resource::new(
        move || {
            (
                q.get(),
                item.get(),
                location.get(),
                camera.get(),
                page.get(),
            )
        },
        |(q, item, location, camera, page)| async move {
            let num = |field: &str, v: &str| -> Result<Option<i64>, ServerFnError> {
                if v.is_empty() {
                    return Ok(None);
                }
                v.trim().parse::<i64>().map(Some).map_err(|_| {
                    ServerFnError::new(format!("field `{field}`: {v:?} is not a number"))
                })
            };
            let query = SearchQuery {
                query: q,
                item: (!item.is_empty()).then_some(item),
                location_oid: num("location", &location)?,
                camera_oid: num("camera", &camera)?,
                page_token: page,
                ..SearchQuery::default()
            };
            search_events(query).await
        },
    );
    let next_href = move |token: String| {
        let enc = |s: String| {
            s.replace('%', "%25")
                .replace('&', "%26")
                .replace('+', "%2B")
                .replace(' ', "+")
                .replace('#', "%23")
        };
        format!(
            "/search?q={}&item={}&location={}&camera={}&page={}",
            enc(q.get_untracked()),
            enc(item.get_untracked()),
            enc(location.get_untracked()),
            enc(camera.get_untracked()),
            enc(token)
        )
    };
    view! {
        <h1>"Search"</h1>
        <form class="controls" method="get" action="/search">
            <input class="q" name="q" type="search" placeholder="backpack, \"Gate 3\", det_oid:123, columns:north"
                prop:value=move || q.get()/>
            <label>"item " <input name="item" size="10" prop:value=move || item.get()/></label>
            <label>"location oid " <input name="location" size="6" prop:value=move || location.get()/></label>
            <label>"camera oid " <input name="camera" size="6" prop:value=move || camera.get()/></label>
            <button type="submit">"Search"</button>
        </form>
        <Transition fallback=|| view! { <p>"Searching…"</p> }>
            {move || Suspend::new(async move {
                match results.await {
                    Ok(p) => {
                        let next = (!p.next_page_token.is_empty()).then(|| {
                            view! { <a class="next" href=next_href(p.next_page_token.clone())>"Next page →"</a> }
                        });
                        view! {
                            <p class="muted" id="hits">{format::count(p.total_hits)}" matching events"</p>
                            <EventTable rows=Signal::derive(move || p.events.clone())/>
                            {next}
                        }.into_any()
                    }
                    Err(e) => error_view(e),
                }
            })}
        </Transition>
    }
}
