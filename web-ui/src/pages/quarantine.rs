//! Quarantine: events the core refused, with the field and the reason; and
//! stored events whose location is not in Dataset B (kept, flagged).

use leptos::prelude::*;

use super::query_param;
use crate::{
    api::get_quarantine,
    components::{error_view, EventTable},
    format,
    model::QuarantineRow,
};

#[component]
pub fn QuarantinePage() -> impl IntoView {
    let page = query_param("page", "");
    let data = Resource::new(move || page.get(), get_quarantine);
    view! {
        <h1>"Quarantine"</h1>
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match data.await {
                    Ok(p) => {
                        let next = (!p.next_page_token.is_empty()).then(|| view! {
                            <a class="next" href=format!("/quarantine?page={}", p.next_page_token)>"Older →"</a>
                        });
                        let unmatched = p.unmatched.clone();
                        let n_unmatched = unmatched.len();
                        view! {
                            <p class="muted" id="rejected-total">{format::count(p.total)}" events refused"</p>
                            <table class="quarantine">
                                <thead><tr><th>"When (UTC)"</th><th>"Agent · seq"</th><th>"Field"</th><th>"Reason"</th><th>"Received"</th></tr></thead>
                                <tbody>
                                    {p.rows.into_iter().map(|q| view! { <Refused q/> }).collect_view()}
                                </tbody>
                            </table>
                            {next}
                            <h2>"Unmatched locations "<span class="muted">"(newest "{n_unmatched}")"</span></h2>
                            <EventTable rows=Signal::derive(move || unmatched.clone())/>
                        }.into_any()
                    }
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

/// One refused event; `data-field` names the field for tools.
#[component]
fn Refused(q: QuarantineRow) -> impl IntoView {
    let field = q.field.clone();
    view! {
        <tr data-field=field>
            <td>{format::time_ms(q.at_ms)}</td>
            <td>{q.agent_id}" · "{q.seq}</td>
            <td><code>{q.field}</code></td>
            <td>{q.reason}</td>
            <td><code class="raw">{q.received}</code></td>
        </tr>
    }
}
