//! The HTML shell, the router and the frame every page shares (navigation).

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Title};
use leptos_router::{
    components::{Route, Router, Routes, A},
    path, SsrMode,
};

use crate::pages::{
    audit::AuditPage, event::EventPage, fleet::FleetPage, live::LivePage,
    quarantine::QuarantinePage, search::SearchPage, timeline::TimelinePage, top::TopPage,
};

/// The whole document, rendered on the server; `options` say where the
/// browser finds the hydration script and the wasm.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="icon" href="data:,"/>
                <style>{crate::style::CSS}</style>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let who = Resource::new(|| (), |_| crate::api::get_whoami());
    view! {
        <Title text="Sightline"/>
        <Router>
            <header class="top">
                <a class="brand" href="/">"Sightline"</a>
                <nav>
                    <A href="/">"Live"</A>
                    <A href="/top">"Top items"</A>
                    <A href="/timeline">"Timeline"</A>
                    <A href="/search">"Search"</A>
                    <AdminLinks who/>
                </nav>
                <UserBox who/>
            </header>
            <main>
                // In order: every page arrives as complete HTML (its data
                // included), readable before and without the wasm.
                <Routes fallback=|| view! { <p class="error">"No such page."</p> }>
                    <Route path=path!("") view=LivePage ssr=SsrMode::InOrder/>
                    <Route path=path!("/top") view=TopPage ssr=SsrMode::InOrder/>
                    <Route path=path!("/timeline") view=TimelinePage ssr=SsrMode::InOrder/>
                    <Route path=path!("/search") view=SearchPage ssr=SsrMode::InOrder/>
                    <Route path=path!("/event/:det_oid") view=EventPage ssr=SsrMode::InOrder/>
                    <Route path=path!("/fleet") view=FleetPage ssr=SsrMode::InOrder/>
                    <Route path=path!("/quarantine") view=QuarantinePage ssr=SsrMode::InOrder/>
                    // Whole before the first byte: a bad filter's 400 is set
                    // while the query runs, after an in-order shell would
                    // have sent 200 (it did, now and then).
                    <Route path=path!("/admin/audit") view=AuditPage ssr=SsrMode::Async/>
                </Routes>
            </main>
        </Router>
    }
}

/// Who is asking, as the header needs it.
type Who = Resource<Result<crate::model::WhoAmI, ServerFnError>>;

/// The pages only an admin may open: shown to admins only (the core
/// refuses them to anyone else whatever the header shows).
#[component]
fn AdminLinks(who: Who) -> impl IntoView {
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match who.await {
                    Ok(w) if w.admin => view! {
                        <A href="/fleet">"Fleet"</A>
                        <A href="/quarantine">"Quarantine"</A>
                        <A href="/admin/audit">"Audit"</A>
                    }
                    .into_any(),
                    _ => ().into_any(),
                }
            })}
        </Suspense>
    }
}

/// Who is logged in, and the logout button.
#[component]
fn UserBox(who: Who) -> impl IntoView {
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match who.await {
                    Ok(w) => view! {
                        <form class="user" method="post" action="/logout">
                            <span class="who" title=w.scope.clone()>{w.actor.clone()}" ("{w.role.clone()}")"</span>
                            <input type="hidden" name="csrf" value=w.csrf.clone()/>
                            <button type="submit">"Log out"</button>
                        </form>
                    }
                    .into_any(),
                    Err(_) => ().into_any(),
                }
            })}
        </Suspense>
    }
}
