//! Sightline's wire contract: the generated gRPC code for `sightline.v1`, the
//! one definition of a valid event, and the field-error vocabulary that both
//! the agent and the core answer with.
//!
//! Layout:
//! - [`v1`]: prost/tonic code generated from `proto/sightline/v1/*.proto`.
//! - [`validate`]: what makes a [`v1::Detection`] acceptable, naming the field on refusal.
//! - [`FILE_DESCRIPTOR_SET`]: served by the core through gRPC reflection.
#![forbid(unsafe_code)]

pub mod allocator_env;
#[cfg(feature = "config")]
pub mod config_doc;
#[cfg(feature = "quic")]
pub mod congestion;
pub mod edge;
pub mod error;
pub mod parquet_guard;
pub mod validate;

/// Generated code for package `sightline.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("sightline.v1");
}

/// The encoded descriptor set of every `sightline.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sightline_descriptor");

pub use error::{ApiError, Code};
pub use validate::{validate_agent_id, validate_detection, FieldError, Limits};

/// Milliseconds since the Unix epoch, from the local clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The fingerprint of one buffered event (`Welcome.committed_digest`): the
/// first 8 bytes, big-endian, of SHA-256 over the event's bytes as the agent
/// sent them. Never 0 (0 means "none" on the wire).
pub fn event_digest(event_bytes: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(event_bytes);
    let mut a = [0u8; 8];
    a.copy_from_slice(&h[..8]);
    u64::from_be_bytes(a).max(1)
}
