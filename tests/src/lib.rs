//! Harness for Sightline's end-to-end tests and benchmarks: starts the real
//! `sightline-core` and `sightline-agent` binaries on 127.0.0.1 (port 0),
//! UDP and TCP proxies that impair or cut the link (delay, loss, bandwidth),
//! generated Dataset A files with duplicates,
//! and the ground truth computed from them independently of the system.

pub mod bench;
pub mod cluster;
pub mod data;
pub mod footage;
pub mod http;
pub mod impair;
pub mod nats;
pub mod proc;
pub mod query;
pub mod s3;

pub use data::{Dataset, Row, Truth};
pub use impair::{ImpairedTcpProxy, Impairment, UdpProxy};
pub use proc::{bin_path, Agent, AgentArgs, Core, CoreArgs, Edge};

use std::time::Duration;

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what`
/// after `timeout`. (A bound against hanging, not a speed claim.)
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs each named `async fn name(edge: Edge)` once per transport of the edge
/// link, as the tests `name::grpc` and `name::quic`.
#[macro_export]
macro_rules! over_both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn grpc() {
                super::$name($crate::Edge::Grpc).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn quic() {
                super::$name($crate::Edge::Quic).await
            }
        }
    )*};
}
