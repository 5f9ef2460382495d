//! One module per page; each fetches through the server functions in
//! [`crate::api`].

pub mod audit;
pub mod event;
pub mod fleet;
pub mod live;
pub mod quarantine;
pub mod search;
pub mod timeline;
pub mod top;

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

/// A query-string parameter, or `default`.
pub fn query_param(name: &'static str, default: &'static str) -> Memo<String> {
    let q = use_query_map();
    Memo::new(move |_| {
        q.read()
            .get(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    })
}

/// Re-runs `f` every `secs` seconds while the page is open (browser only).
pub fn every(secs: u64, f: impl Fn() + 'static) {
    #[cfg(feature = "hydrate")]
    {
        if let Ok(handle) = set_interval_with_handle(f, std::time::Duration::from_secs(secs)) {
            on_cleanup(move || handle.clear());
        }
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (secs, f);
}

/// The range picker shared by the top items and timeline pages: a GET form,
/// so a chosen range is a link that can be shared.
#[component]
pub fn RangeForm(
    action: &'static str,
    range: Memo<String>,
    from: Memo<String>,
    to: Memo<String>,
    children: Children,
) -> impl IntoView {
    let opts = [
        ("5m", "last 5 min"),
        ("15m", "last 15 min"),
        ("1h", "last hour"),
        ("24h", "last 24 h"),
        ("7d", "last 7 days"),
        ("custom", "custom (UTC)"),
    ];
    view! {
        <form class="controls" method="get" action=action>
            <label>"Range "
                <select name="range">
                    {opts.into_iter().map(|(v, label)| view! {
                        <option value=v selected=move || range.get() == v>{label}</option>
                    }).collect_view()}
                </select>
            </label>
            <label>"from " <input name="from" placeholder="2026-11-25 14:00:00" prop:value=move || from.get() size="19"/></label>
            <label>"to " <input name="to" placeholder="2026-11-25 15:00:00" prop:value=move || to.get() size="19"/></label>
            {children()}
            <button type="submit">"Show"</button>
        </form>
    }
}
