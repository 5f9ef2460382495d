//! The one error vocabulary of Sightline's APIs.
//!
//! Every refusal the core or the agent gives an integrator, an agent or a
//! browser is an [`ApiError`]: a [`Code`] and a message. The code is mapped
//! to a gRPC status here, once ([`Code::grpc`]), and to an HTTP status here,
//! once ([`Code::http`]); services and handlers convert their own errors
//! into an `ApiError` and never pick a status themselves. A refusal about
//! one field of a request reads "field `x`: reason" ([`ApiError::field`]).
//!
//! | code | gRPC | HTTP | when |
//! | --- | --- | --- | --- |
//! | `InvalidArgument` | `INVALID_ARGUMENT` | 400 | a field is malformed or out of its documented bounds |
//! | `TooLarge` | `OUT_OF_RANGE` | 413 | a message, body or frame over its size limit |
//! | `OutOfRange` | `OUT_OF_RANGE` | 416 | a position past the end (a byte range, an event older than the store keeps) |
//! | `NotFound` | `NOT_FOUND` | 404 | what was asked for does not exist |
//! | `AlreadyExists` | `ALREADY_EXISTS` | 409 | it exists and belongs to someone else (a det_oid of another camera) |
//! | `Unauthenticated` | `UNAUTHENTICATED` | 401 | no credential, or not a valid one |
//! | `PermissionDenied` | `PERMISSION_DENIED` | 403 | a valid credential that may not do this |
//! | `ResourceExhausted` | `RESOURCE_EXHAUSTED` | 429 | a limit on connections, streams or buffer space; retry later |
//! | `FailedPrecondition` | `FAILED_PRECONDITION` | 409 | the server is not set up for this (e.g. no agent registry) |
//! | `ResumeFrom` | `FAILED_PRECONDITION` | 409 | the request must start again from a position the message names |
//! | `DeadlineExceeded` | `DEADLINE_EXCEEDED` | 408 | the caller did not send what was due in time (an agent's Hello) |
//! | `Aborted` | `ABORTED` | 409 | the work was replaced by newer work (a newer session of the same agent) |
//! | `Unavailable` | `UNAVAILABLE` | 503 | shutting down, a disk full or failing, a dependency away; retry later |
//! | `Unimplemented` | `UNIMPLEMENTED` | 501 | a call or method this server does not have |
//! | `Internal` | `INTERNAL` | 500 | a fault of the server (a bug or corrupt data); the message says which |

use std::fmt;

/// What kind of refusal an [`ApiError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidArgument,
    TooLarge,
    OutOfRange,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    ResumeFrom,
    DeadlineExceeded,
    Aborted,
    Unavailable,
    Unimplemented,
    Internal,
}

impl Code {
    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        match self {
            Code::InvalidArgument => tonic::Code::InvalidArgument,
            Code::TooLarge | Code::OutOfRange => tonic::Code::OutOfRange,
            Code::NotFound => tonic::Code::NotFound,
            Code::AlreadyExists => tonic::Code::AlreadyExists,
            Code::Unauthenticated => tonic::Code::Unauthenticated,
            Code::PermissionDenied => tonic::Code::PermissionDenied,
            Code::ResourceExhausted => tonic::Code::ResourceExhausted,
            Code::FailedPrecondition | Code::ResumeFrom => tonic::Code::FailedPrecondition,
            Code::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Code::Aborted => tonic::Code::Aborted,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::Unimplemented => tonic::Code::Unimplemented,
            Code::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status code.
    pub fn http(self) -> u16 {
        match self {
            Code::InvalidArgument => 400,
            Code::TooLarge => 413,
            Code::OutOfRange => 416,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::FailedPrecondition | Code::ResumeFrom | Code::Aborted => {
                409
            }
            Code::DeadlineExceeded => 408,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            Code::Unimplemented => 501,
            Code::Internal => 500,
        }
    }

    /// The gRPC code's name, as `Rejection.code` carries it.
    pub fn name(self) -> &'static str {
        match self.grpc() {
            tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
            tonic::Code::OutOfRange => "OUT_OF_RANGE",
            tonic::Code::NotFound => "NOT_FOUND",
            tonic::Code::AlreadyExists => "ALREADY_EXISTS",
            tonic::Code::Unauthenticated => "UNAUTHENTICATED",
            tonic::Code::PermissionDenied => "PERMISSION_DENIED",
            tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
            tonic::Code::Unavailable => "UNAVAILABLE",
            tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            tonic::Code::Aborted => "ABORTED",
            tonic::Code::Unimplemented => "UNIMPLEMENTED",
            _ => "INTERNAL",
        }
    }
}

/// A refusal: its code and what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// "field `name`: reason", as `InvalidArgument`.
    pub fn field(name: &str, reason: impl fmt::Display) -> Self {
        Self::field_with(Code::InvalidArgument, name, reason)
    }

    /// "field `name`: reason", with another code (e.g. `TooLarge`).
    pub fn field_with(code: Code, name: &str, reason: impl fmt::Display) -> Self {
        Self::new(code, format!("field `{name}`: {reason}"))
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(Code::NotFound, what)
    }

    pub fn unavailable(why: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, why)
    }

    pub fn internal(why: impl Into<String>) -> Self {
        Self::new(Code::Internal, why)
    }

    pub fn invalid(why: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, why)
    }

    pub fn permission_denied(why: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, why)
    }

    pub fn unauthenticated(why: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, why)
    }

    pub fn exhausted(why: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, why)
    }

    /// The HTTP status code.
    pub fn http_status(&self) -> u16 {
        self.code.http()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.code.grpc(), e.message)
    }
}

impl From<crate::FieldError> for ApiError {
    fn from(e: crate::FieldError) -> Self {
        ApiError::field(e.field, e.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_maps_to_one_grpc_and_one_http_status() {
        let all = [
            Code::InvalidArgument,
            Code::TooLarge,
            Code::OutOfRange,
            Code::NotFound,
            Code::AlreadyExists,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::ResumeFrom,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Unavailable,
            Code::Unimplemented,
            Code::Internal,
        ];
        for c in all {
            let s: tonic::Status = ApiError::new(c, "x").into();
            assert_eq!(s.code(), c.grpc());
            assert!((400..600).contains(&c.http()));
            // Only Internal is named INTERNAL.
            assert_eq!(c.name() == "INTERNAL", c == Code::Internal, "{c:?}");
        }
    }

    #[test]
    fn a_field_refusal_names_the_field() {
        let e = ApiError::field("page_size", "20000 is more than 10000");
        assert_eq!(e.message, "field `page_size`: 20000 is more than 10000");
        assert_eq!(e.http_status(), 400);
    }
}
