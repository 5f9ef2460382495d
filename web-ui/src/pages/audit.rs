//! Audit (admins only): the audit log, newest first, filtered by who, what,
//! camera, location and time, paged by seq (older / newer links stay the
//! same pages while records are appended). A plain GET form: works without
//! the browser's code, and every view is a link that can be shared.

use leptos::prelude::*;

use super::query_param;
use crate::{
    api::{get_audit, get_audit_actions},
    components::error_view,
    format,
    model::{AuditQuery, AuditRow},
};

/// The query-string keys of the form, in order.
const KEYS: [&str; 7] = [
    "actor", "action", "camera", "location", "from", "to", "limit",
];

#[component]
pub fn AuditPage() -> impl IntoView {
    let limit = query_param("limit", "");
    let (actor, action, camera, location, from, to, before, after) = (
        query_param("actor", ""),
        query_param("action", ""),
        query_param("camera", ""),
        query_param("location", ""),
        query_param("from", ""),
        query_param("to", ""),
        query_param("before", ""),
        query_param("after", ""),
    );
    let query = Memo::new(move |_| AuditQuery {
        actor: actor.get(),
        action: action.get(),
        camera: camera.get(),
        location: location.get(),
        from: from.get(),
        to: to.get(),
        before: before.get(),
        after: after.get(),
        limit: limit.get(),
    });
    let page = Resource::new(move || query.get(), get_audit);
    let actions = Resource::new(|| (), |_| get_audit_actions());
    // A link to another page of the same filters: ("before"|"after", seq).
    let href = move |cursor: &str, seq: u64| {
        let q = query.get_untracked();
        let values = [
            q.actor, q.action, q.camera, q.location, q.from, q.to, q.limit,
        ];
        let mut parts: Vec<String> = KEYS
            .iter()
            .zip(values)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect();
        parts.push(format!("{cursor}={seq}"));
        format!("/admin/audit?{}", parts.join("&"))
    };
    view! {
        <h1>"Audit"</h1>
        <form class="controls" method="get" action="/admin/audit">
            <label>"who " <input name="actor" size="14" placeholder="user:alice" prop:value=move || actor.get()/></label>
            <label>"action "
                <Suspense fallback=|| view! { <select name="action"><option value="">"any"</option></select> }>
                    {move || Suspend::new(async move {
                        let names = actions.await.unwrap_or_default();
                        view! {
                            <select name="action">
                                <option value="">"any"</option>
                                {names.into_iter().map(|a| {
                                    let (v, label) = (a.clone(), a.clone());
                                    view! { <option value=a selected=move || action.get() == v>{label}</option> }
                                }).collect_view()}
                            </select>
                        }
                    })}
                </Suspense>
            </label>
            <label>"camera oid " <input name="camera" size="6" prop:value=move || camera.get()/></label>
            <label>"location oid " <input name="location" size="6" prop:value=move || location.get()/></label>
            <label>"from " <input name="from" size="19" placeholder="2026-11-25 14:00:00" prop:value=move || from.get()/></label>
            <label>"to " <input name="to" size="19" placeholder="2026-11-25 15:00:00" prop:value=move || to.get()/></label>
            {move || (!limit.get().is_empty()).then(|| view! { <input type="hidden" name="limit" value=limit.get()/> })}
            <button type="submit">"Show"</button>
        </form>
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match page.await {
                    Ok(p) => {
                        let newer = p.newer_after.map(|s| view! {
                            <a class="newer" href=href("after", s)>"← Newer"</a>
                        });
                        let older = p.older_before.map(|s| view! {
                            <a class="older" href=href("before", s)>"Older →"</a>
                        });
                        let empty = p.rows.is_empty().then(|| view! { <p id="audit-empty">"No records match."</p> });
                        view! {
                            <table class="audit">
                                <thead><tr>
                                    <th class="num">"Seq"</th><th>"When (UTC)"</th><th>"Who"</th><th>"Action"</th>
                                    <th>"Target"</th><th>"Outcome"</th><th>"Detail"</th>
                                </tr></thead>
                                <tbody>
                                    {p.rows.into_iter().map(|r| view! { <Record r/> }).collect_view()}
                                </tbody>
                            </table>
                            {empty}
                            <nav class="pager">{newer}" "{older}</nav>
                        }.into_any()
                    }
                    Err(e) => error_view(e),
                }
            })}
        </Transition>
    }
}

/// One record; `data-*` attributes carry its fields for tools.
#[component]
fn Record(r: AuditRow) -> impl IntoView {
    let mut target: Vec<AnyView> = Vec::new();
    if let Some(d) = r.det_oid {
        target.push(view! { <a href=format!("/event/{d}")>"event "{d}</a> }.into_any());
    }
    if let Some(c) = r.camera {
        target.push(view! { <span>" camera "{c}</span> }.into_any());
    }
    if let Some(l) = r.location {
        target.push(view! { <span>" location "{l}</span> }.into_any());
    }
    if let Some(o) = r.object.clone() {
        let short: String = o.chars().take(12).collect();
        target.push(view! { <code title=o>" "{short}"…"</code> }.into_any());
    }
    let source = r
        .source
        .clone()
        .map(|s| view! { <div class="muted">{s}</div> });
    view! {
        <tr data-seq=r.seq data-actor=r.actor.clone() data-action=r.action.clone() data-outcome=r.outcome.clone()>
            <td class="num">{r.seq}</td>
            <td>{format::time_ms(r.time_ms)}</td>
            <td>{r.actor.clone()}{source}</td>
            <td><code>{r.action.clone()}</code></td>
            <td>{target}</td>
            <td class=format!("outcome {}", r.outcome)>{r.outcome.clone()}</td>
            <td><code class="raw">{r.detail}</code></td>
        </tr>
    }
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
