//! `run(config, listener, shutdown)`: the HTTP routes and the shutdown sequence.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lattice_engine::DocId;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{TokenQuery, bearer_token};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocols::hocuspocus::serve_hocus_socket;
use crate::protocols::native::{Admission, serve_socket};
use crate::protocols::yjs::{YjsGrant, YjsRefusal, refuse, serve_yjs_socket};
use crate::rooms::RoomCmd;
use crate::state::ServerState;
use crate::store::{OpenError, Store};
use crate::transport::listen::{self, HttpBounds};
use crate::transport::slots::{Gauge, Slot};
use crate::transport::upgrade::WsUpgrade;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] OpenError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Runs a server on `listener` until `shutdown` resolves, then stops accepting, flushes every
/// room, closes sockets with 1001 and returns within `config.shutdown_deadline`. With
/// `config.grpc_bind`, the gRPC service listens there too.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let grpc = match config.grpc_bind {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    serve(config, listener, grpc, shutdown, || {}).await
}

/// [`run`] with the gRPC service on a listener of the caller's (`config.grpc_bind` is not
/// read): tests bind port 0 and need to know where it is.
pub async fn run_with_grpc(
    config: Config,
    listener: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve(config, listener, Some(grpc), shutdown, || {}).await
}

/// [`run`] on listeners of the caller's (gRPC's optional; `config.grpc_bind` is not read),
/// calling `ready` once the store is open and the server is about to serve: after it, requests
/// are answered (`lattice serve` prints its banner there, so a script that waits for the
/// banner never meets a server that then fails to open its database).
pub async fn run_then(
    config: Config,
    listener: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), ServerError> {
    serve(config, listener, grpc, shutdown, ready).await
}

async fn serve(
    config: Config,
    listener: TcpListener,
    grpc: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), ServerError> {
    let store = Store::open(&config.database_url, config.store.clone()).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(ServerState::new(config, store, Some(addr))?);
    ready();
    info!(%addr, backend = state.store.backend_name(), "lattice listening");
    if let Some(cluster) = &state.rooms.env().cluster {
        info!(node = %cluster.node_name(), "cluster node: fan-out through Redis");
    }
    if !state.auth.is_required() {
        warn!(
            "AUTHENTICATION IS DISABLED: anyone who can reach {addr} can read, change and \
             administer every document. Use this only for local experiments."
        );
    }
    let app = router(state.clone());
    let token = state.shutdown.clone();
    let graceful = {
        let token = token.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = token.cancelled() => {}
            }
            token.cancel();
        }
    };
    let bounds = HttpBounds {
        header_read_timeout: state.config.limits.header_read_timeout,
        max_http_connections: state.config.limits.max_http_connections,
    };
    let deadline = state.config.shutdown_deadline;
    let server = tokio::spawn(listen::serve(
        listener,
        app,
        bounds,
        state.metrics.clone(),
        token.clone(),
    ));
    let grpc = match grpc {
        Some(listener) => {
            info!(addr = %listener.local_addr()?, "gRPC listening");
            let stop = token.clone().cancelled_owned();
            Some(tokio::spawn(crate::grpc::serve(
                state.clone(),
                listener,
                stop,
            )))
        }
        None => None,
    };
    tokio::spawn(graceful);
    token.cancelled().await;
    info!("shutting down: flushing rooms and closing connections");
    // Connections see the token, stop reading, flush their rooms and close with 1001; the
    // listener returns once every one (WebSockets included) has ended. Only then are the rooms
    // flushed and the store closed: a connection still sending to a room after the store
    // closed would have its delta's commit fail, and be closed with 4011 instead of 1001.
    // gRPC calls in flight end the same way, under the same deadline (writes are committed
    // before they are answered, streams end as they see the token).
    let stop_at = tokio::time::Instant::now() + deadline;
    match tokio::time::timeout_at(stop_at, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "server task failed"),
        Err(_) => warn!("connections did not close within the shutdown deadline"),
    }
    if let Some(grpc) = grpc {
        match tokio::time::timeout_at(stop_at, grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server failed"),
            Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
            Err(_) => warn!("gRPC calls did not end within the shutdown deadline"),
        }
    }
    // Rooms not tied to a connection any more (HTTP writes, readers) are flushed here.
    let flush = async {
        for room in state.rooms.all() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            if room.send(RoomCmd::Flush { reply }).await.is_ok() {
                let _ = rx.await;
            }
        }
        let _ = state.store.flush().await;
    };
    if tokio::time::timeout(deadline, flush).await.is_err() {
        warn!("rooms did not flush within the shutdown deadline");
    }
    state.store.close().await;
    info!("stopped");
    Ok(())
}

fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/sync", get(sync_socket))
        .route("/yjs/{*doc}", get(yjs_socket))
        .route("/hocuspocus", get(hocuspocus_socket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::http::routes())
        .merge(crate::protocols::http_routes())
        .with_state(state)
}

/// A slot from `pool` for a WebSocket upgrade, counted in `gauge`, or why there is none
/// (answered with 503).
fn admit(
    state: &Arc<ServerState>,
    pool: &Arc<Semaphore>,
    gauge: fn(&Metrics) -> &std::sync::atomic::AtomicU64,
) -> Result<Slot, &'static str> {
    if state.shutdown.is_cancelled() {
        return Err("shutting down");
    }
    let permit = pool
        .clone()
        .try_acquire_owned()
        .map_err(|_| "too many connections")?;
    Ok(Slot::new(permit, Gauge::up(&state.metrics, gauge)))
}

/// The WebSocket library's read buffer: allocated with the connection and kept for its life,
/// so small (each read asks for at most this much; `transport::burst` reads ahead under it).
const WS_READ_CHUNK_BYTES: usize = 512;

/// Frames the WebSocket library gathers before it writes them out (the writer flushes every
/// batch anyway). Its write buffer keeps the largest size it reached, so this bounds what a
/// connection keeps after a burst of small frames.
const WS_WRITE_BATCH_BYTES: usize = 8 * 1024;

/// The WebSocket settings of every connection. tungstenite's own message limit is a backstop:
/// messages between the configured limit and twice that get a `frame_too_large` error before
/// the close.
fn ws_config(config: &Config) -> WebSocketConfig {
    let hard_limit = config.limits.max_frame_bytes.saturating_mul(2) + 1024;
    WebSocketConfig::default()
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit))
        .read_buffer_size(WS_READ_CHUNK_BYTES)
        .write_buffer_size(WS_WRITE_BATCH_BYTES)
}

/// The upgrade always succeeds (browsers cannot read an HTTP status of a failed upgrade); the
/// connection authenticates at `hello` and refuses with an error message and a close code.
///
/// A valid token on the upgrade request (`Authorization: Bearer` or `?token=`) admits the
/// connection to an authenticated slot at once. Without one, it holds an unauthenticated slot
/// until its `hello` authenticates, and its first message is limited to `max_hello_bytes` as
/// the bytes arrive: a flood of connections without a token can fill the unauthenticated
/// slots, never the authenticated ones.
async fn sync_socket(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WsUpgrade,
) -> Response {
    let (admission, first_message_limit) = match admit_upgrade(&state, remote, &headers, query) {
        Ok(admitted) => admitted,
        Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    };
    ws.accept(
        ws_config(&state.config),
        first_message_limit,
        move |socket, tripped| serve_socket(state, socket, tripped, admission, remote.ip()),
    )
}

/// `/yjs/{doc}`: the y-websocket protocol for stock Yjs clients. The document id is the rest of
/// the path, `/` included (`/yjs/team-a/notes` is `team-a/notes`). The token comes from the
/// `Authorization: Bearer` header or `?token=` (stock clients pass it through `params`). As on
/// `/v1/sync`, the upgrade succeeds and a refusal is a permission-denied message and a close
/// code, because browsers cannot read the status of a failed upgrade; a refused connection
/// holds an unauthenticated slot while it is told, an accepted one an authenticated slot.
async fn yjs_socket(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(doc): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WsUpgrade,
) -> Response {
    // Authenticate first, so a refusal reads the same whether or not the document (or even
    // the id) is valid.
    let grant = crate::auth::authenticate_request(
        &state.auth,
        &headers,
        query.token.as_deref(),
        remote.ip(),
    )
    .map_err(|e| YjsRefusal::from_auth(&e))
    .and_then(|principal| {
        // An id that cannot exist is refused like one the token does not cover.
        let doc = DocId::new(&doc).map_err(|_| YjsRefusal::forbidden())?;
        let access = principal.access(&doc).ok_or_else(YjsRefusal::forbidden)?;
        Ok(YjsGrant {
            doc,
            access,
            author: principal.subject().map(str::to_owned),
            expires_in: principal.time_left(),
        })
    });
    let config = ws_config(&state.config);
    match grant {
        Ok(grant) => {
            let slot = match admit(&state, &state.connections, |m| &m.connections) {
                Ok(slot) => slot,
                Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
            };
            ws.accept(config, None, move |socket, _| {
                serve_yjs_socket(state, socket, slot, grant)
            })
        }
        Err(refusal) => {
            debug!(ip = %remote.ip(), reason = %refusal.reason, "yjs connection refused");
            let slot = match admit(&state, &state.unauthenticated, |m| {
                &m.unauthenticated_connections
            }) {
                Ok(slot) => slot,
                Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
            };
            ws.accept(config, Some(0), move |socket, _| {
                refuse(state, socket, slot, refusal)
            })
        }
    }
}

/// `/hocuspocus`: the upgrade always succeeds (browsers cannot read a failed upgrade's
/// status); tokens come in each document's auth message. A valid token on the upgrade
/// (`Authorization: Bearer` or `?token=`), or `--no-auth`, admits it to an authenticated slot
/// at once; otherwise it holds an unauthenticated one until a document authenticates.
async fn hocuspocus_socket(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WsUpgrade,
) -> Response {
    let (admission, first_message_limit) = match admit_upgrade(&state, remote, &headers, query) {
        Ok(admitted) => admitted,
        Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    };
    ws.accept(
        ws_config(&state.config),
        first_message_limit,
        move |socket, tripped| serve_hocus_socket(state, socket, tripped, admission, remote.ip()),
    )
}

/// The slot a WebSocket upgrade of `/v1/sync` or `/hocuspocus` takes: an authenticated one at
/// once with a valid token on the upgrade (`Authorization: Bearer` or `?token=`) or under
/// `--no-auth`, else an unauthenticated one whose first message is limited to
/// `max_hello_bytes`. `Err` (the caller's 503) when no slot of that kind is left.
fn admit_upgrade(
    state: &Arc<ServerState>,
    remote: SocketAddr,
    headers: &HeaderMap,
    query: TokenQuery,
) -> Result<(Admission, Option<usize>), &'static str> {
    let token = bearer_token(headers)
        .map(str::to_string)
        .or(query.token)
        .filter(|t| !t.is_empty());
    let upgrade_auth = if state.auth.is_required() {
        token
            .as_deref()
            .map(|t| state.auth.authenticate(Some(t), remote.ip()))
    } else {
        Some(state.auth.authenticate(None, remote.ip()))
    };
    let limits = &state.config.limits;
    let hello_limit = limits.max_hello_bytes.min(limits.max_frame_bytes);
    match upgrade_auth {
        Some(Ok(principal)) => admit(state, &state.connections, |m| &m.connections)
            .map(|slot| (Admission::Authenticated { slot, principal }, None)),
        upgrade_auth => admit(state, &state.unauthenticated, |m| {
            &m.unauthenticated_connections
        })
        .map(|slot| {
            (
                Admission::Unauthenticated { slot, upgrade_auth },
                Some(hello_limit),
            )
        }),
    }
}

/// How long `/readyz` waits for the store. A store that does not answer is not ready: without
/// a bound the probe would wait as long as a write does for a connection (`busy_timeout`, 30 s)
/// while PostgreSQL is down.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // A metadata lookup is the cheapest query that proves the database answers.
    let probe = lattice_engine::DocId::new("lattice-readyz-probe").map_err(|_| ());
    let answered = match probe {
        Ok(doc) => tokio::time::timeout(READY_PROBE_TIMEOUT, state.store.document(&doc))
            .await
            .map(|r| r.map(|_| ())),
        Err(()) => Ok(Ok(())),
    };
    match answered {
        Ok(Ok(())) => match &state.rooms.env().cluster {
            // Still serving and acknowledging: PostgreSQL is the truth, and other nodes' entries
            // come from polling it. A load balancer keeps the node; an operator sees why.
            Some(cluster) if !cluster.redis_up() => {
                "degraded: Redis unavailable; cross-node delivery is polling the database"
                    .into_response()
            }
            _ => "ready".into_response(),
        },
        Ok(Err(e)) => {
            warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
        Err(_) => {
            warn!(
                timeout_ms = READY_PROBE_TIMEOUT.as_millis() as u64,
                "readiness check failed: the store did not answer in time"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
