//! The gRPC service `lattice.v1.Documents` (`proto/lattice/v1/documents.proto`,
//! docs/grpc.md), served by tonic on its own listener (`Config::grpc_bind`,
//! `lattice serve --grpc-bind`).
//!
//! It is another door to what the HTTP API does, never a second implementation: writes go
//! through `protocols::write::apply_update` (acknowledged after commit, idempotency keys),
//! `Subscribe` follows the log through `protocols::feed::follow` (the same catch-up, the same
//! bounded outbox a slow reader is dropped from, the same resume by seq), listings through
//! `history::list_documents`. The same bearer tokens (the `authorization` metadata entry) and
//! scopes; refusals become the statuses of [`status`].
//!
//! **Invariant:** a `Subscribe` stream never slows its document's room: the room queues into
//! the follower's bounded outbox and drops it when full; the stream then ends with `ABORTED`
//! and the client resumes from the last seq it received.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::metrics::Metrics;
use crate::state::ServerState;

mod service;
mod status;

/// The code generated from `proto/lattice/v1/documents.proto`: messages, the server trait and
/// a tonic client (`documents_client::DocumentsClient`), public for Rust clients and tests.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("lattice.v1");
}

/// Calls one HTTP/2 connection may have open at once (h2's `SETTINGS_MAX_CONCURRENT_STREAMS`);
/// every `Subscribe` stream also holds one of the server's connection slots.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// The methods, as `lattice_grpc_requests_total` labels them (`metrics::GRPC_METHODS`).
#[derive(Clone, Copy, Debug)]
enum Method {
    ApplyUpdate = 0,
    GetDocument = 1,
    Subscribe = 2,
    ListDocuments = 3,
}

/// Counts one call's answer.
fn count<T>(metrics: &Metrics, method: Method, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => 0,
        Err(status) => status.code() as usize,
    };
    if let Some(counter) = metrics.grpc_requests[method as usize].get(code) {
        counter.fetch_add(1, Relaxed);
    }
}

/// Serves the service on `listener` until `shutdown` resolves; then stops accepting and
/// returns once the calls in flight have ended (`Subscribe` streams end with `UNAVAILABLE`
/// as the server's shutdown token fires).
pub(crate) async fn serve(
    state: Arc<ServerState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limit = state.config.limits.max_frame_bytes;
    let ping = state.config.heartbeat.ping_interval;
    let service =
        proto::documents_server::DocumentsServer::new(service::DocumentsService { state })
            // The largest update the HTTP API takes, and some room for the message around it.
            .max_decoding_message_size(limit.saturating_add(64 * 1024));
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ping))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
