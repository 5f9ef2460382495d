//! One partition's share of an agent's batch, as it travels on
//! `sightline.in.<p>`: a prost message internal to the core (only cores
//! write and read it; a field is only ever added, with a new tag).

use bytes::Bytes;
use prost::Message;
use sightline_proto::v1::EdgeEvent;

use crate::dedup::{CommitError, CommitOutcome, CommitRequest, Incoming};

/// A share: the batch's seqs `first_seq ..= first_seq + count - 1`, and
/// those of its events whose det_oid hashes to this partition (invalid ones
/// included: the owner quarantines them).
#[derive(Clone, PartialEq, Message)]
pub struct ShareMsg {
    #[prost(string, tag = "1")]
    pub agent: String,
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    #[prost(uint64, tag = "3")]
    pub first_seq: u64,
    #[prost(uint64, tag = "4")]
    pub count: u64,
    #[prost(uint64, tag = "5")]
    pub last_digest: u64,
    #[prost(message, repeated, tag = "6")]
    pub events: Vec<ShareEvent>,
}

/// One event of a share: valid, or refused at the front with why.
#[derive(Clone, PartialEq, Message)]
pub struct ShareEvent {
    #[prost(message, optional, tag = "1")]
    pub event: Option<EdgeEvent>,
    /// Refused: the field, the reason and the gRPC code name; the raw bytes
    /// when it did not decode.
    #[prost(bool, tag = "2")]
    pub invalid: bool,
    #[prost(bytes = "bytes", tag = "3")]
    pub raw: Bytes,
    #[prost(string, tag = "4")]
    pub field: String,
    #[prost(string, tag = "5")]
    pub reason: String,
    #[prost(string, tag = "6")]
    pub code: String,
}

/// The `Rejection.code` names a front gives (`Incoming::Invalid::code` is
/// `&'static str`); an unknown one reads back as `INVALID_ARGUMENT`.
fn static_code(code: &str) -> &'static str {
    match code {
        "PERMISSION_DENIED" => "PERMISSION_DENIED",
        "OUT_OF_RANGE" => "OUT_OF_RANGE",
        crate::dedup::CONFLICT => crate::dedup::CONFLICT,
        _ => "INVALID_ARGUMENT",
    }
}

impl ShareEvent {
    pub fn from_incoming(ev: Incoming) -> Self {
        match ev {
            Incoming::Valid(e) => ShareEvent {
                event: Some(e),
                ..Default::default()
            },
            Incoming::Invalid {
                event,
                raw,
                field,
                reason,
                code,
            } => ShareEvent {
                event,
                invalid: true,
                raw,
                field,
                reason,
                code: code.to_string(),
            },
        }
    }

    pub fn into_incoming(self) -> Incoming {
        if self.invalid {
            Incoming::Invalid {
                event: self.event,
                raw: self.raw,
                field: self.field,
                reason: self.reason,
                code: static_code(&self.code),
            }
        } else {
            match self.event {
                Some(e) => Incoming::Valid(e),
                None => Incoming::Invalid {
                    event: None,
                    raw: self.raw,
                    field: "event".into(),
                    reason: "a share's event is missing".into(),
                    code: "INVALID_ARGUMENT",
                },
            }
        }
    }
}

/// The partition of an event (as the embedded pipeline splits a batch).
pub fn partition_of(ev: &Incoming, partitions: u16) -> u16 {
    crate::dedup::partition_of(ev, partitions as usize) as u16
}

impl ShareMsg {
    pub fn encode_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }

    /// The writer's request for this share, answered on `reply`.
    pub fn into_request(
        self,
        reply: tokio::sync::oneshot::Sender<Result<CommitOutcome, CommitError>>,
    ) -> CommitRequest {
        CommitRequest {
            agent: self.agent.as_str().into(),
            epoch: self.epoch,
            first_seq: self.first_seq,
            events: self.events.into_iter().map(|e| e.into_incoming()).collect(),
            last_digest: self.last_digest,
            reply,
        }
    }
}

/// The header that marks a message of `sightline.in.<p>` that is not a
/// share: its value names the kind ([`ATTACH_KIND`]).
pub const KIND_HEADER: &str = "Sightline-Kind";
/// [`KIND_HEADER`] of an [`AttachMsg`].
pub const ATTACH_KIND: &str = "attach";

/// Whether an IN message with these headers is an attach (not a share).
pub fn is_attach(headers: &async_nats::HeaderMap) -> bool {
    headers
        .get(KIND_HEADER)
        .is_some_and(|k| k.as_str() == ATTACH_KIND)
}

/// `Media.Attach` for the events of one partition, carried to its owner
/// (PROTOCOL.md rule 31). Applying it again changes nothing.
#[derive(Clone, PartialEq, Message)]
pub struct AttachMsg {
    #[prost(int64, repeated, tag = "1")]
    pub det_oids: Vec<i64>,
    #[prost(message, optional, tag = "2")]
    pub media: Option<sightline_proto::v1::MediaRef>,
    /// When the node received it (epoch ms).
    #[prost(int64, tag = "3")]
    pub at_ms: i64,
    /// The agent a certificate identified (none: unknown).
    #[prost(string, optional, tag = "4")]
    pub by: Option<String>,
}
