//! Accepting connections: hyper's HTTP/1.1 server under the axum router, with a deadline on
//! reading request headers and a bound on connections still in their HTTP phase.
//!
//! `axum::serve` sets no header-read deadline, so a client that sends half a request holds a
//! task and a socket for as long as it likes. Here every request's headers must arrive within
//! [`Limits::header_read_timeout`](crate::config::Limits::header_read_timeout) (an idle
//! keep-alive connection waiting for its next request is closed at the same deadline), and at
//! most [`Limits::max_http_connections`](crate::config::Limits::max_http_connections)
//! connections may be in their HTTP phase at once; past that, new connections are closed as
//! soon as they are accepted. A connection upgraded to a WebSocket leaves the HTTP phase (its
//! slot then comes from the WebSocket limits), but not the server: its task is tracked with the
//! HTTP connections' ([`ConnectionTasks`]), so [`serve`] returns only once every WebSocket has
//! ended too, and nothing a connection still sends to a room can outlive the store.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// The most a connection's HTTP read buffer may grow to (hyper's own default is about
/// 400 KiB): a request head larger than this is answered 431. It starts at 8 KiB (hyper's
/// smallest), so this bounds what a client can make one connection in its HTTP phase hold.
const MAX_READ_BUFFER_BYTES: usize = 16 * 1024;

/// How the HTTP phase of a connection is bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpBounds {
    pub header_read_timeout: Duration,
    pub max_http_connections: usize,
}

/// The tasks of a server's connections, handed to each request (as an extension) so that a
/// WebSocket upgrade runs its connection among them.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionTasks(pub TaskTracker);

/// Serves `router` on `listener` until `shutdown` fires, then lets each connection finish its
/// request in progress, and each WebSocket its close, and returns once every one has.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: HttpBounds,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(bounds.max_http_connections.max(1)));
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: give connections time to close.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.http_connections_refused.fetch_add(1, Relaxed);
            warn!(%remote, "too many connections in their HTTP phase; closing a new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        let tasks = ConnectionTasks(tracker.clone());
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                req.extensions_mut().insert(tasks.clone());
                let mut router = router.clone();
                async move {
                    let response =
                        tower_service::Service::call(&mut router, req.map(Body::new)).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read_timeout)
                .max_buf_size(MAX_READ_BUFFER_BYTES);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(%remote, error = %e, "HTTP connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    tracker.close();
    tracker.wait().await;
}
