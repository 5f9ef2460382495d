//! `Query.Subscribe` on the wire: events go out as bytes encoded once, not as
//! a `JoinedEvent` cloned, joined and encoded per subscriber.
//!
//! A live event's encoding is made once per hub message for every stream
//! ([`super::live::Commit::encoded`]); its Dataset B row is appended as bytes
//! the table encoded once per row ([`crate::enrich::LocationTable::join_suffix`]).
//! A client decodes the same `JoinedEvent` as before: protobuf lets a field
//! come after the others, and the last `location_matched` wins. Cloning and
//! joining each event per subscriber (its strings, its row's `extra` map),
//! then encoding it, was a few per cent of the core's CPU with one
//! subscriber of everything (BENCHMARKS.md, "forty-seventh session").
//!
//! tonic's generated `QueryServer` fixes each method's message type, so
//! [`QueryRoutes`] serves `Subscribe` itself, with [`SubscribeCodec`], and
//! hands every other method to the generated server.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use sightline_proto::v1::{query_server::QueryServer, JoinedEvent, SubscribeRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{http, Body, BoxFuture, Service, StdError},
    server::{Grpc, NamedService, ServerStreamingService},
    Status,
};
use tonic_prost::ProstCodec;

use super::query::QueryService;

/// The largest message the query port sends (a page of events).
pub const MAX_ENCODING_MESSAGE: usize = 64 * 1024 * 1024;

const SUBSCRIBE_PATH: &str = "/sightline.v1.Query/Subscribe";

/// One `JoinedEvent` of a Subscribe stream, encoded: the event's fields and
/// the fields its join adds (empty when `event` has them already).
#[derive(Debug, Clone)]
pub struct Encoded {
    event: Bytes,
    join: Bytes,
}

impl Encoded {
    /// A live event: its encoding without a Dataset B row, and the join's
    /// fields ([`crate::enrich::LocationTable::join_suffix`]).
    pub fn live(event: Bytes, join: Bytes) -> Self {
        Self { event, join }
    }

    /// The event a client decodes from it.
    pub fn decode(self) -> Result<JoinedEvent, Status> {
        JoinedEvent::decode(self.event.chain(self.join))
            .map_err(|e| Status::internal(format!("decoding a Subscribe event: {e}")))
    }
}

/// An event joined already (a replay's, a cluster feed's).
impl From<JoinedEvent> for Encoded {
    fn from(e: JoinedEvent) -> Self {
        Self {
            event: e.encode_to_vec().into(),
            join: Bytes::new(),
        }
    }
}

/// Subscribe's codec: [`Encoded`] out as its bytes, the request in as
/// prost decodes it.
#[derive(Default)]
pub struct SubscribeCodec(ProstCodec<JoinedEvent, SubscribeRequest>);

impl Codec for SubscribeCodec {
    type Encode = Encoded;
    type Decode = SubscribeRequest;
    type Encoder = EncodedEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> EncodedEncoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder(self.0.decoder())
    }
}

pub struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.event);
        dst.put_slice(&item.join);
        Ok(())
    }
}

pub struct RequestDecoder(<ProstCodec<JoinedEvent, SubscribeRequest> as Codec>::Decoder);

impl Decoder for RequestDecoder {
    type Item = SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<SubscribeRequest>, Status> {
        self.0.decode(src)
    }
}

/// `sightline.v1.Query`: `Subscribe` served here, everything else by the
/// generated server.
#[derive(Clone)]
pub struct QueryRoutes {
    generated: QueryServer<QueryService>,
    query: QueryService,
}

impl QueryRoutes {
    pub fn new(query: QueryService) -> Self {
        Self {
            generated: QueryServer::new(query.clone())
                .max_encoding_message_size(MAX_ENCODING_MESSAGE),
            query,
        }
    }
}

impl NamedService for QueryRoutes {
    const NAME: &'static str = <QueryServer<QueryService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for QueryRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SUBSCRIBE_PATH {
            return self.generated.call(req);
        }
        let method = SubscribeMethod(self.query.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(SubscribeCodec::default())
                .apply_max_message_size_config(None, Some(MAX_ENCODING_MESSAGE));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}

struct SubscribeMethod(QueryService);

impl ServerStreamingService<SubscribeRequest> for SubscribeMethod {
    type Response = Encoded;
    type ResponseStream = ReceiverStream<Result<Encoded, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<SubscribeRequest>) -> Self::Future {
        let query = self.0.clone();
        Box::pin(async move { query.open_subscribe(request).await })
    }
}
