//! Sightline edge agent: takes detections in on the camera host, stamps
//! det_oids, buffers events durably in RocksDB and ships them to the core
//! exactly once.
//!
//! Layout (the data path, left to right):
//! - [`sources`]: where detections come from — `intake` (a local gRPC endpoint
//!   for the detector), `replay` (Dataset A from CSV / JSON Lines / Parquet) and
//!   `simulate` (synthetic cameras, with upstream duplicates).
//! - [`capture`]: footage — per-camera rings of encoded packets, snapshots and
//!   clips cut by stream copy, the local media spool.
//! - [`stamp`]: the deterministic det_oid for detections that come without one.
//! - [`buffer`]: the RocksDB buffer — gap-free per-agent seq, epoch, size bound.
//!   Its on-disk format and promises are written down in its module docs.
//! - [`transport`]: the one sender logic (batches, window, resume, backoff,
//!   delete-after-ack) and the gRPC adapter it runs over.
//! - [`observe`]: the agent's own `/metrics` and `/healthz` (loopback by default).
//! - [`run`]: wires a configured agent together and runs it until shutdown.
#![forbid(unsafe_code)]

pub mod buffer;
pub mod capture;
pub mod config;
pub mod config_file;
pub mod observe;
pub mod run;
pub mod sources;
pub mod stamp;
pub mod tls;
pub mod transport;

/// The agent's version, reported to the core in every hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
