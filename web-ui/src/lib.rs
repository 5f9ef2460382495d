//! Sightline's dashboard, in Leptos: rendered on the server by the core
//! (feature `ssr`) and hydrated in the browser (feature `hydrate`, built by
//! `web-ui/frontend` for wasm32).
//!
//! Layout:
//! - [`model`]: what the pages show, as serde types both sides share.
//! - [`api`]: server functions (in-process during server rendering, HTTP from
//!   the browser), over the [`backend`] the core provides.
//! - [`app`]: the HTML shell and the router; [`pages`]: one module per page;
//!   [`components`]: tables and charts; [`style`]: the one stylesheet.
//! - [`live`]: the browser's side of the live feed (server-sent events).

pub mod api;
pub mod app;
#[cfg(feature = "ssr")]
pub mod backend;
pub mod components;
pub mod format;
pub mod live;
pub mod model;
pub mod pages;
pub mod style;
