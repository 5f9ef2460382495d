//! The QUIC adapter's contract, shared by agent and core (framing in
//! `sightline/v1/edge.proto`): the ALPN, the call names, the frame limit and
//! the mapping between a [`tonic::Status`] and its wire form.

use crate::v1::QuicStatus;

/// The ALPN of the edge link over QUIC.
pub const ALPN: &[u8] = b"sightline/1";

pub const SESSION: &str = "sightline.v1.Ingest/Session";
pub const MEDIA_OFFSET: &str = "sightline.v1.Media/Offset";
pub const MEDIA_UPLOAD: &str = "sightline.v1.Media/Upload";
pub const MEDIA_ATTACH: &str = "sightline.v1.Media/Attach";

/// The largest frame either side accepts (a batch or a media chunk fits well
/// under it).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// QUIC application error codes for closing a connection.
/// The core closed the connection because the agent was revoked.
pub const CLOSE_REVOKED: u32 = 1;
/// The core is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 2;
/// The core refused the agent's certificate; the reason says why.
pub const CLOSE_REFUSED: u32 = 3;

/// A length-delimited codec for frames of this contract.
pub fn codec() -> tokio_util::codec::LengthDelimitedCodec {
    codec_limited(MAX_FRAME)
}

/// The codec, refusing frames longer than `max` bytes (the receiver's
/// message limit, e.g. the core's `ingest.max_message_bytes`).
pub fn codec_limited(max: usize) -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max.min(MAX_FRAME))
        .new_codec()
}

/// The status for a frame the codec refused or a stream that broke: a frame
/// over the limit is `OUT_OF_RANGE` naming the limit (as gRPC answers a
/// message over its limit), anything else a broken link.
pub fn read_error(e: &std::io::Error, max: usize) -> tonic::Status {
    if e.kind() == std::io::ErrorKind::InvalidData {
        crate::ApiError::new(
            crate::Code::TooLarge,
            format!("a frame is larger than this receiver's message limit of {max} bytes: {e}"),
        )
        .into()
    } else {
        crate::ApiError::unavailable(format!("link broken: {e}")).into()
    }
}

pub fn to_wire(s: &tonic::Status) -> QuicStatus {
    QuicStatus {
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}

pub fn from_wire(s: QuicStatus) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(s.code), s.message)
}

/// The QUIC congestion controllers a config may name: "edge" (see
/// `crate::congestion`), quinn's "cubic" and "bbr".
pub const CONGESTION_CONTROLLERS: [&str; 3] = ["edge", "cubic", "bbr"];

/// Whether `name` is one of [`CONGESTION_CONTROLLERS`]; the reason if not.
pub fn check_congestion(name: &str) -> Result<(), String> {
    if CONGESTION_CONTROLLERS.contains(&name) {
        Ok(())
    } else {
        Err("must be \"edge\", \"cubic\" or \"bbr\"".into())
    }
}

/// The QUIC transport settings of the edge link; both ends use the same.
/// `congestion`: one of [`CONGESTION_CONTROLLERS`].
#[cfg(feature = "quic")]
pub fn transport_config(congestion: &str) -> quinn::TransportConfig {
    use std::{sync::Arc, time::Duration};
    let mut t = quinn::TransportConfig::default();
    // A cut link is noticed within 6 s; keep-alives hold NAT bindings open.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(6)).expect("6 s is a valid idle timeout"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_concurrent_bidi_streams(256u32.into());
    t.stream_receive_window((4u32 * 1024 * 1024).into());
    t.receive_window((16u32 * 1024 * 1024).into());
    t.send_window(16 * 1024 * 1024);
    // Every packet acknowledged at once (the ACK frequency extension; both
    // ends run quinn), not every other one: the "edge" controller reads the
    // bottleneck's queue from RTT samples, and with the window small and
    // packets sparse a delayed ack looks like a queue that is not there.
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(0u32.into());
    t.ack_frequency_config(Some(acks));
    match congestion {
        "bbr" => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        "edge" => {
            t.congestion_controller_factory(Arc::new(crate::congestion::EdgeConfig));
        }
        _ => {}
    }
    t
}
