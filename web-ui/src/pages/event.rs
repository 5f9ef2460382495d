//! One event: the joined fields, the snapshot, the clip (seekable: the core
//! serves byte ranges), and the other events on that camera around it.

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

use crate::{
    api::get_event,
    components::{error_view, EventTable},
    format,
    model::EventDetail,
};

#[component]
pub fn EventPage() -> impl IntoView {
    let params = use_params_map();
    let det = Memo::new(move |_| params.read().get("det_oid").unwrap_or_default());
    let detail = Resource::new(
        move || det.get(),
        |det| async move {
            let oid = det.parse::<i64>().map_err(|_| {
                ServerFnError::new(format!("field `det_oid`: {det:?} is not a number"))
            })?;
            get_event(oid).await
        },
    );
    view! {
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                match detail.await {
                    Ok(Some(d)) => view! { <Detail d/> }.into_any(),
                    Ok(None) => view! { <p class="error">"No event with det_oid "{det.get_untracked()}"."</p> }.into_any(),
                    Err(e) => error_view(e),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Detail(d: EventDetail) -> impl IntoView {
    let r = d.row.clone();
    let mut fields: Vec<(String, String)> = vec![
        ("det_oid".into(), r.det_oid.to_string()),
        ("item".into(), r.item.clone()),
        (
            "location".into(),
            format::location(&r.location, r.location_oid),
        ),
        (
            "geographical_location_oid".into(),
            r.location_oid.to_string(),
        ),
        ("video_camera_oid".into(), r.camera_oid.to_string()),
        ("detected (UTC)".into(), format::time_ms(r.detected_ms)),
        (
            "accepted by the agent".into(),
            format::time_ms(d.accepted_ms),
        ),
        (
            "committed at the core".into(),
            format::time_ms(r.committed_ms),
        ),
        ("agent · seq".into(), format!("{} · {}", r.agent_id, d.seq)),
        ("confidence".into(), format!("{:.2}", d.confidence)),
    ];
    fields.extend(
        d.location_columns
            .iter()
            .map(|(k, v)| (format!("B: {k}"), v.clone())),
    );
    fields.extend(d.attributes.iter().cloned());
    let pending = (!d.pending.is_empty()).then(|| {
        view! { <p class="pending">"Footage still uploading: "{d.pending.join(", ")}"."</p> }
    });
    let none = (d.footage_allowed && d.snapshot.is_none() && d.clip.is_none() && d.pending.is_empty())
        .then(|| view! { <p class="muted">"No footage for this event (capture off for this camera)."</p> });
    let hidden = (!d.footage_allowed)
        .then(|| view! { <p class="muted">"Footage needs the investigator role."</p> });
    let det = r.det_oid;
    let snapshot = d.snapshot.clone().map(|sha| {
        view! {
            <figure>
                <a href=format!("/media/{sha}?event={det}")><img class="snapshot" alt="snapshot" src=format!("/media/{sha}?event={det}")/></a>
                <figcaption>"Snapshot"</figcaption>
            </figure>
        }
    });
    let clip = d.clip.clone().map(|sha| {
        view! {
            <figure>
                <video id="clip" controls preload="auto" playsinline muted src=format!("/media/{sha}?event={det}")></video>
                <figcaption>"Clip (pre-roll before the detection, post-roll after)"</figcaption>
            </figure>
        }
    });
    let nearby = d.nearby.clone();
    view! {
        <h1>{r.item.clone()}" · "{format::location(&r.location, r.location_oid)}" · "{format::clock_ms(r.detected_ms)}</h1>
        <div class="event">
            <div class="footage">{pending}{none}{hidden}{snapshot}{clip}</div>
            <table class="fields">
                <tbody>
                    {fields.into_iter().map(|(k, v)| view! { <tr><th>{k}</th><td>{v}</td></tr> }).collect_view()}
                </tbody>
            </table>
        </div>
        <h2>"Around that moment on camera "{r.camera_oid}</h2>
        <EventTable rows=Signal::derive(move || nearby.clone())/>
    }
}
