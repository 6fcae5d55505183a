//! `run(config, listener, shutdown)`: the HTTP routes and the shutdown sequence.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lattice_engine::{DocId, ReplicaId};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::{Auth, bearer_token};
use crate::config::Config;
use crate::connection::serve_socket;
use crate::metrics::Metrics;
use crate::rooms::{RoomCmd, Rooms};
use crate::store::{Store, StoreError};
use crate::yjs_socket::{YjsGrant, YjsRefusal, serve_yjs_socket};

/// Shared by every task of one server.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub config: Config,
    pub store: Store,
    pub rooms: Rooms,
    pub metrics: Metrics,
    pub auth: Auth,
    pub connections: Arc<Semaphore>,
    /// Slots for HTTP reads that rebuild a document (`Limits::max_concurrent_rebuilds`).
    pub rebuilds: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub next_peer: AtomicU64,
    /// The server's own replica id: the Yjs client id of its documents, and the replica of
    /// changes it makes itself.
    pub replica: ReplicaId,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A random replica id for this server process, from the OS's randomness via `RandomState`.
fn random_replica() -> ReplicaId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    ReplicaId::from_random(h.finish() as u32)
}

/// Runs a server on `listener` until `shutdown` resolves, then stops accepting, flushes every
/// room, closes sockets with 1001 and returns within `config.shutdown_deadline`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = Store::open(&config.database_url, config.store.clone()).await?;
    let state = Arc::new(ServerState {
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        rebuilds: Arc::new(Semaphore::new(config.limits.max_concurrent_rebuilds.max(1))),
        auth: Auth::new(&config.auth),
        config,
        store,
        rooms: Rooms::default(),
        metrics: Metrics::default(),
        shutdown: CancellationToken::new(),
        next_peer: AtomicU64::new(1),
        replica: random_replica(),
    });
    let addr = listener.local_addr()?;
    info!(%addr, backend = state.store.backend_name(), "lattice listening");
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
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(graceful);
    let deadline = state.config.shutdown_deadline;
    let server = tokio::spawn(async move { served.await });
    token.cancelled().await;
    info!("shutting down: flushing rooms and closing connections");
    // Connections see the token, flush their rooms and close with 1001. Rooms not tied to a
    // connection any more still get flushed here.
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
    match tokio::time::timeout(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "server error during shutdown"),
        Ok(Err(e)) => warn!(error = %e, "server task failed"),
        Err(_) => warn!("connections did not close within the shutdown deadline"),
    }
    state.store.close().await;
    info!("stopped");
    Ok(())
}

fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/sync", get(sync_socket))
        .route("/yjs/{*doc}", get(yjs_socket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::http::routes())
        .with_state(state)
}

/// A connection slot for a WebSocket upgrade, or why there is none (answered with 503).
fn admit(state: &ServerState) -> Result<tokio::sync::OwnedSemaphorePermit, &'static str> {
    if state.shutdown.is_cancelled() {
        return Err("shutting down");
    }
    state
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| "too many connections")
}

/// tungstenite's own frame limit is a backstop: frames between the configured limit and twice
/// that get a `frame_too_large` error before the close.
fn with_frame_limit(ws: WebSocketUpgrade, config: &Config) -> WebSocketUpgrade {
    let hard_limit = config.limits.max_frame_bytes.saturating_mul(2) + 1024;
    ws.max_message_size(hard_limit).max_frame_size(hard_limit)
}

/// The `?token=` query parameter, for clients that cannot set headers (browsers' WebSocket).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenQuery {
    pub token: Option<String>,
}

/// The upgrade always succeeds (browsers cannot read an HTTP status of a failed upgrade); the
/// connection authenticates at `hello` and refuses with an error message and a close code.
async fn sync_socket(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let permit = match admit(&state) {
        Ok(p) => p,
        Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    };
    let token = bearer_token(&headers)
        .map(str::to_string)
        .or(query.token)
        .filter(|t| !t.is_empty());
    with_frame_limit(ws, &state.config)
        .on_upgrade(move |socket| serve_socket(state, socket, permit, remote.ip(), token))
}

/// `/yjs/{doc}`: the y-websocket protocol for stock Yjs clients. The document id is the rest of
/// the path, `/` included (`/yjs/team-a/notes` is `team-a/notes`). The token comes from the
/// `Authorization: Bearer` header or `?token=` (stock clients pass it through `params`). As on
/// `/v1/sync`, the upgrade succeeds and a refusal is a permission-denied message and a close
/// code, because browsers cannot read the status of a failed upgrade.
async fn yjs_socket(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path(doc): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let permit = match admit(&state) {
        Ok(p) => p,
        Err(why) => return (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    };
    // Authenticate first, so a refusal reads the same whether or not the document (or even
    // the id) is valid.
    let grant = crate::auth::authorize(&state, &headers, query.token.as_deref(), remote.ip())
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
    if let Err(refusal) = &grant {
        debug!(ip = %remote.ip(), reason = %refusal.reason, "yjs connection refused");
    }
    with_frame_limit(ws, &state.config)
        .on_upgrade(move |socket| serve_yjs_socket(state, socket, permit, grant))
}

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    // A metadata lookup is the cheapest query that proves the database answers.
    let probe = lattice_engine::DocId::new("lattice-readyz-probe").map_err(|_| ());
    let answered = match probe {
        Ok(doc) => state.store.document(&doc).await.map(|_| ()),
        Err(()) => Ok(()),
    };
    match answered {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            warn!(error = %e, "readiness check failed");
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
