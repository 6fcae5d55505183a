//! How refusals and failures become gRPC statuses (the table in docs/grpc.md). Every status
//! also carries the HTTP API's error code in its `lattice-error` metadata entry, so a client
//! can act on the same codes over both APIs; internals are logged here and never shown.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tracing::{debug, error};

use crate::auth::AuthError;
use crate::http::ApiError;
use crate::protocols::feed::FeedEnd;
use crate::store::{AppendError, ReadError};

/// A status with the HTTP API's error `code` in its `lattice-error` metadata.
pub(crate) fn status(code: Code, error: &'static str, message: impl Into<String>) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert("lattice-error", MetadataValue::from_static(error));
    Status::with_metadata(code, message, metadata)
}

/// The status of an [`ApiError`]: the same refusal as the HTTP API's, in gRPC's words.
pub(crate) fn from_api(e: ApiError) -> Status {
    match e {
        ApiError::Auth(AuthError::Throttled { .. }) => status(
            Code::ResourceExhausted,
            "rate_limited",
            "too many failed authentication attempts; retry later",
        ),
        ApiError::Auth(e @ (AuthError::Forbidden { .. } | AuthError::ScopeTooLow { .. })) => {
            debug!(error = ?e, "gRPC call forbidden");
            status(Code::PermissionDenied, "forbidden", e.to_string())
        }
        ApiError::Auth(e) => status(Code::Unauthenticated, "unauthorized", e.to_string()),
        ApiError::BadDocId(e) => {
            status(Code::InvalidArgument, "invalid_document_id", e.to_string())
        }
        ApiError::NotFound
        | ApiError::Read(ReadError::DocumentDeleted { .. })
        | ApiError::Append(AppendError::DocumentDeleted { .. }) => {
            status(Code::NotFound, "not_found", "no such document")
        }
        ApiError::NotFoundCode { code, message } => status(Code::NotFound, code, message),
        ApiError::BadRequest { code, message } => status(Code::InvalidArgument, code, message),
        ApiError::Read(e @ (ReadError::SeqOutOfRange { .. } | ReadError::Truncated { .. })) => {
            status(Code::InvalidArgument, "bad_version", e.to_string())
        }
        ApiError::Conflict {
            code: code @ "idempotency_key_reused",
            message,
        } => status(Code::AlreadyExists, code, message),
        ApiError::Conflict { code, message } | ApiError::Gone { code, message } => {
            status(Code::FailedPrecondition, code, message)
        }
        ApiError::Unprocessable { code, message } => status(Code::InvalidArgument, code, message),
        ApiError::RateLimited => status(
            Code::ResourceExhausted,
            "rate_limited",
            "too many requests or bytes for this token; retry later",
        ),
        e @ ApiError::TooLarge { .. } => {
            status(Code::ResourceExhausted, "too_large", e.to_string())
        }
        e @ ApiError::UnsupportedType(_) => status(
            Code::InvalidArgument,
            "unsupported_content_type",
            e.to_string(),
        ),
        ApiError::Busy { .. } => status(
            Code::Unavailable,
            "busy",
            "too many documents are being read at once; retry later",
        ),
        ApiError::Internal(e) => {
            error!(error = %e, "internal error answering a gRPC call");
            status(Code::Internal, "internal", "internal error")
        }
        ApiError::Read(
            e @ (ReadError::CorruptDelta { .. }
            | ReadError::CorruptCheckpoint { .. }
            | ReadError::LogInconsistent { .. }),
        ) => {
            error!(error = %e, "damaged document answering a gRPC call");
            status(
                Code::Internal,
                "document_damaged",
                "the stored document is damaged; see the server log",
            )
        }
        ApiError::Read(e) => store_unavailable(&e),
        ApiError::Append(e) => store_unavailable(&e),
        ApiError::Database(e) => store_unavailable(&e),
    }
}

/// A store failure the client can only retry: logged here, never shown.
fn store_unavailable(e: &dyn std::error::Error) -> Status {
    error!(error = %e, "store error answering a gRPC call");
    status(Code::Unavailable, "unavailable", "storage is unavailable")
}

/// The status that ends a `Subscribe` stream. Every one but a refusal of the catch-up means:
/// subscribe again with `after_seq` = the last seq received, and nothing is missed or repeated.
pub(crate) fn from_feed_end(end: FeedEnd) -> Status {
    const RESUME: &str = "subscribe again with after_seq = the last seq received";
    match end {
        FeedEnd::Failed(e) => from_api(e),
        FeedEnd::SlowConsumer => status(
            Code::Aborted,
            "slow_consumer",
            format!("the stream fell behind; {RESUME}"),
        ),
        FeedEnd::DocumentUnavailable { .. } => status(
            Code::Unavailable,
            "document_unavailable",
            format!("the document's room stopped or the document was deleted; {RESUME}"),
        ),
        FeedEnd::Lifetime => status(
            Code::Unavailable,
            "lifetime",
            format!("the stream's lifetime is over; {RESUME}"),
        ),
        FeedEnd::Shutdown => status(
            Code::Unavailable,
            "shutdown",
            format!("the server is restarting; {RESUME}"),
        ),
    }
}
