//! What the core serves: the gRPC query and admin API ([`query`]), live
//! fan-out ([`live`]) and the HTTP endpoints ([`http`]: `/metrics`,
//! `/healthz`, admin) and the bounds on what clients hold open ([`limits`]).

pub mod admin;
pub mod admin_token;
pub mod dashboard;
pub mod http;
pub mod limits;
pub mod live;
pub mod query;
pub mod subscribe_wire;
