//! The browser's end of the live feed: an `EventSource` on `/api/live` whose
//! ticks update the live page's signals. On the server this does nothing.

use leptos::prelude::*;

use crate::model::{EventRow, LiveTick};

#[cfg(feature = "hydrate")]
pub fn connect(
    set_tick: WriteSignal<Option<LiveTick>>,
    set_rows: WriteSignal<Vec<EventRow>>,
    set_state: WriteSignal<&'static str>,
) {
    use wasm_bindgen::{closure::Closure, JsCast};

    let Ok(source) = web_sys::EventSource::new("/api/live") else {
        set_state.set("unavailable");
        return;
    };
    let on_message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
            let Some(text) = ev.data().as_string() else {
                return;
            };
            let Ok(tick) = serde_json::from_str::<LiveTick>(&text) else {
                return;
            };
            set_state.try_set("live");
            let mut tick = tick;
            let fresh = std::mem::take(&mut tick.events);
            if !fresh.is_empty() {
                set_rows.try_update(|rows| crate::pages::live::merge(rows, fresh));
            }
            set_tick.try_set(Some(tick));
        });
    source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
        // EventSource reconnects by itself.
        set_state.try_set("reconnecting");
    });
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let held = send_wrapper::SendWrapper::new((source, on_message, on_error));
    on_cleanup(move || {
        let (source, _, _) = held.take();
        source.close();
    });
}

#[cfg(not(feature = "hydrate"))]
pub fn connect(
    _set_tick: WriteSignal<Option<LiveTick>>,
    _set_rows: WriteSignal<Vec<EventRow>>,
    _set_state: WriteSignal<&'static str>,
) {
}
