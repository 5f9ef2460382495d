//! The seam between the dashboard and the core (server side only): the core
//! implements [`Backend`] over its store, index and fleet, and provides it as
//! context; server functions call it on a blocking thread.

use std::sync::Arc;

use leptos::prelude::{use_context, ServerFnError};

use crate::model::{
    AgentRow, AuditFilter, AuditPage, EventDetail, QuarantinePage, SearchPage, SearchQuery,
    Timeline, TopItems, Totals,
};

/// What the dashboard asks of the core. Every method may block (RocksDB,
/// tantivy); errors are messages naming the field and the reason.
pub trait Backend: Send + Sync + 'static {
    fn totals(&self) -> Result<Totals, String>;
    /// The newest events by detection time, newest first.
    fn latest(&self, limit: usize) -> Result<Vec<crate::model::EventRow>, String>;
    fn top_items(&self, from_ms: i64, to_ms: i64, x: u32) -> Result<TopItems, String>;
    /// `by`: "item" or "location".
    fn timeline(&self, from_ms: i64, to_ms: i64, by: &str) -> Result<Timeline, String>;
    fn search(&self, query: &SearchQuery) -> Result<SearchPage, String>;
    fn event(&self, det_oid: i64) -> Result<Option<EventDetail>, String>;
    fn fleet(&self) -> Result<Vec<AgentRow>, String>;
    /// Cluster mode: the cluster's nodes and partitions; `None` on a core
    /// that runs alone.
    fn cluster(&self) -> Result<Option<crate::model::ClusterTable>, String> {
        Ok(None)
    }
    fn quarantine(&self, page_token: &str) -> Result<QuarantinePage, String>;
    /// A page of the audit log, newest first (admin only).
    fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, String>;
    /// The names of the audit actions, for the page's filter (admin only).
    fn audit_actions(&self) -> Result<Vec<String>, String>;
    /// The core's clock.
    fn now_ms(&self) -> i64;
    /// Who is asking.
    fn whoami(&self) -> crate::model::WhoAmI;
}

/// How the core hands its backend to the dashboard (as Leptos context).
pub type SharedBackend = Arc<dyn Backend>;

/// Runs `f` against the backend on a blocking thread.
pub async fn call<T: Send + 'static>(
    f: impl FnOnce(&dyn Backend) -> Result<T, String> + Send + 'static,
) -> Result<T, ServerFnError> {
    let backend = use_context::<SharedBackend>()
        .ok_or_else(|| ServerFnError::new("the dashboard has no backend (server misconfigured)"))?;
    // Taken before the await: the reactive context is not kept across it.
    let response = use_context::<leptos_axum::ResponseOptions>();
    tokio::task::spawn_blocking(move || f(backend.as_ref()))
        .await
        .map_err(|e| ServerFnError::new(format!("backend task failed: {e}")))?
        .map_err(|msg| {
            // "field `x`: reason" is the caller's to fix: 400, not 500.
            if msg.starts_with("field `") {
                if let Some(Ok(mut parts)) = response.as_ref().map(|r| r.0.write()) {
                    parts.status = 400u16.try_into().ok();
                }
            }
            ServerFnError::new(msg)
        })
}
