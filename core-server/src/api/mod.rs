//! What the core serves: the gRPC query and admin API ([`query`]), live
//! fan-out ([`live`]) and the HTTP endpoints ([`http`]: `/metrics`,
//! `/healthz`, admin).

pub mod admin_token;
pub mod dashboard;
pub mod http;
pub mod live;
pub mod query;
