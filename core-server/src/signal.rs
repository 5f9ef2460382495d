//! The process signals the core answers: SIGTERM and SIGINT (Ctrl-C) start
//! its one shutdown path ([`crate::server::run`]'s drain); SIGHUP reloads
//! Dataset B and the agent registry.
//!
//! # Promises
//!
//! - [`cancel_on_terminate`] cancels its token on the first SIGTERM or
//!   SIGINT, and logs which one; a second one does not skip the drain (it is
//!   the drain's grace period, `server.shutdown_grace`, that bounds it).
//! - [`Hangups`] yields once per SIGHUP, and never if the handler cannot be
//!   installed (which is logged).

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT. The handlers are
/// installed before this returns, so a signal sent once it has returned is
/// never missed.
pub fn cancel_on_terminate(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            // Shut down by someone else: nothing left to listen for.
            _ = shutdown.cancelled() => return,
        };
        tracing::info!(signal = which, "signal received: shutting down");
        shutdown.cancel();
    });
    Ok(())
}

/// SIGHUPs, as they arrive.
pub struct Hangups(Option<Signal>);

impl Hangups {
    /// Installs the SIGHUP handler (a failure is logged; then [`Self::recv`]
    /// never returns).
    pub fn new() -> Self {
        match signal(SignalKind::hangup()) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP handler not installed: reloads only through the admin API");
                Self(None)
            }
        }
    }

    /// The next SIGHUP.
    pub async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                if s.recv().await.is_none() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Self::new()
    }
}
