//! Entry point of the dashboard in the browser: hydrates the page the core
//! rendered. (`#[wasm_bindgen]` exports need unsafe glue, which is why this
//! crate, unlike the others, does not forbid unsafe code.)
//!
//! The recursion limit: the Fleet page's view type (with its completeness
//! column) is deeper than rustc's default 128 when hydration lays it out.
#![recursion_limit = "256"]

use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(sightline_web::app::App);
}
