//! The authenticated HTTP surface: the demo page (`/`, with its files at `/demo/{file}`, see
//! [`web`]), a document's JSON view (`GET /v1/docs/{doc}`), its stored metadata
//! (`GET /v1/admin/docs/{doc}`, admin only), and the admin history API and UI (`admin`:
//! `/api/admin/…`, `/admin`).
//!
//! Every handler authenticates first ([`authenticate_request`]: `Authorization: Bearer` or `?token=`), then
//! checks the document against the principal, and only then asks the store, so a refusal never
//! tells whether a document exists. [`ApiError`] is the one error type that becomes a response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lattice_engine::DocIdError;
use serde_json::json;
use tracing::{debug, error};

use crate::auth::TokenQuery;
use crate::auth::{AuthError, authenticate_request};
use crate::state::ServerState;
use crate::store::{AppendError, DatabaseError, ReadError};
use extract::{DocCall, NeedsAdmin, NeedsRead};

pub(crate) mod extract;
mod web;

/// The page behind the demo URL when the server has no web build (`Config::web_dir`): it says
/// how to build the demo and shows the document as JSON. Static: the token and document never
/// enter the HTML, the script reads them from the address.
const FALLBACK_DEMO_PAGE: &str = include_str!("demo.html");
/// What `/` answers without a valid token: how to get one.
const TOKEN_NEEDED_PAGE: &str = include_str!("token_needed.html");

mod admin;

pub(crate) fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/", get(demo_page))
        .route("/demo/{file}", get(demo_file))
        .route("/v1/docs/{*doc}", get(document_json))
        .route("/v1/admin/docs/{*doc}", get(admin_document))
        .merge(admin::routes())
}

/// Everything an HTTP handler can answer besides success. Internals never reach the body.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("invalid document id: {0}")]
    BadDocId(#[from] DocIdError),
    /// Only ever after the principal was found to cover the document.
    #[error("no such document")]
    NotFound,
    #[error("store: {0}")]
    Read(#[from] ReadError),
    #[error("store: {0}")]
    Append(#[from] AppendError),
    #[error("store: {0}")]
    Database(#[from] DatabaseError),
    /// The request is malformed: a query parameter, a body, a version out of range.
    #[error("{code}: {message}")]
    BadRequest { code: &'static str, message: String },
    /// The request cannot be done in the document's state (restore of a deleted document).
    #[error("{code}: {message}")]
    Conflict { code: &'static str, message: String },
    /// The request is well-formed but its content was refused (a delta the room would refuse on
    /// a WebSocket too).
    #[error("{code}: {message}")]
    Unprocessable { code: &'static str, message: String },
    /// Something the request names does not exist, with a code saying what.
    #[error("{code}: {message}")]
    NotFoundCode { code: &'static str, message: String },
    /// The principal's HTTP requests exceed the rate limits (`Limits::messages_per_second`,
    /// `Limits::bytes_per_second`); retry after a second.
    #[error("rate limited")]
    RateLimited,
    /// What the request names is gone for good (a log range retention dropped).
    #[error("{code}: {message}")]
    Gone { code: &'static str, message: String },
    /// The request body is larger than the limit.
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The request body's content type is not one the endpoint reads.
    #[error("unsupported content type {0:?}")]
    UnsupportedType(String),
    /// Every rebuild slot stayed taken for `Limits::rebuild_wait`; retry after that long.
    #[error("busy: too many documents are being rebuilt")]
    Busy { retry_after: Duration },
    /// Something failed inside the server; logged, never shown.
    #[error("internal error: {0}")]
    Internal(#[from] Internal),
}

/// What failed inside the server, with its source; [`ApiError::Internal`] logs it and answers
/// 500 without it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Internal {
    /// A task running part of the request (a rebuild, a rendering) panicked or was cancelled.
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The rebuild slots' semaphore was closed (the server is stopping).
    #[error("the rebuild slots are closed")]
    SlotsClosed(#[source] tokio::sync::AcquireError),
    /// The request carried no peer address (the server was not started with connect info).
    #[error("no peer address on the request")]
    NoPeerAddress,
    /// The document's room stopped before it answered.
    #[error("the document's room stopped")]
    RoomStopped,
    /// A restore failed for a reason the caller cannot act on.
    #[error(transparent)]
    Restore(#[from] crate::rooms::RestoreFailed),
}

fn error_body(status: StatusCode, code: &str, message: String) -> Response {
    let mut response = (status, Json(json!({ "error": code, "message": message }))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Auth(AuthError::Throttled { retry_after }) => {
                let mut r = error_body(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many failed authentication attempts; retry later".into(),
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
                r
            }
            ApiError::Auth(e @ (AuthError::Forbidden { .. } | AuthError::ScopeTooLow { .. })) => {
                debug!(error = ?e, "request forbidden");
                error_body(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
            ApiError::Auth(e) => {
                // RFC 6750: a challenge, with `invalid_token` when a token was presented.
                let challenge = if e == AuthError::Missing {
                    "Bearer realm=\"lattice\""
                } else {
                    "Bearer realm=\"lattice\", error=\"invalid_token\""
                };
                let mut r = error_body(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                r
            }
            ApiError::BadDocId(e) => error_body(
                StatusCode::BAD_REQUEST,
                "invalid_document_id",
                e.to_string(),
            ),
            ApiError::NotFound
            | ApiError::Read(ReadError::DocumentDeleted { .. })
            | ApiError::Append(AppendError::DocumentDeleted { .. }) => error_body(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such document".into(),
            ),
            ApiError::BadRequest { code, message } => {
                error_body(StatusCode::BAD_REQUEST, code, message)
            }
            ApiError::Read(e @ (ReadError::SeqOutOfRange { .. } | ReadError::Truncated { .. })) => {
                error_body(StatusCode::BAD_REQUEST, "bad_version", e.to_string())
            }
            ApiError::Conflict { code, message } => error_body(StatusCode::CONFLICT, code, message),
            ApiError::Gone { code, message } => error_body(StatusCode::GONE, code, message),
            ApiError::RateLimited => {
                let mut r = error_body(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests or bytes for this token; retry later".into(),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            ApiError::Unprocessable { code, message } => {
                error_body(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            ApiError::NotFoundCode { code, message } => {
                error_body(StatusCode::NOT_FOUND, code, message)
            }
            e @ ApiError::TooLarge { .. } => {
                error_body(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            e @ ApiError::UnsupportedType(_) => error_body(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                format!(
                    "{e}; send application/msgpack (a Lattice Delta) or application/octet-stream (a Yjs v1 update)"
                ),
            ),
            ApiError::Busy { retry_after } => {
                let mut r = error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many documents are being read at once; retry later".into(),
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
                r
            }
            ApiError::Internal(e) => {
                error!(error = %e, "internal error answering an HTTP request");
                error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".into(),
                )
            }
            ApiError::Read(
                e @ (ReadError::CorruptDelta { .. }
                | ReadError::CorruptCheckpoint { .. }
                | ReadError::LogInconsistent { .. }),
            ) => {
                error!(error = %e, "damaged document answering an HTTP request");
                error_body(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "document_damaged",
                    "the stored document is damaged; see the server log".into(),
                )
            }
            ApiError::Read(e) => store_unavailable(&e),
            ApiError::Append(e) => store_unavailable(&e),
            ApiError::Database(e) => store_unavailable(&e),
        }
    }
}

/// A store failure the client can only retry: logged here, never shown.
fn store_unavailable(e: &dyn std::error::Error) -> Response {
    error!(error = %e, "store error answering an HTTP request");
    error_body(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "storage is unavailable".into(),
    )
}

/// Runs `read`, an HTTP read that rebuilds a document (checkpoint and replay, rendering,
/// diffing), once one of the `Limits::max_concurrent_rebuilds` slots is free, or answers
/// [`ApiError::Busy`] if none frees within `Limits::rebuild_wait`.
///
/// The slot travels with the work into its own task: a client that hangs up does not free it
/// while its rebuild still runs, so at most that many rebuilds ever run at once. The CPU parts
/// inside run on the blocking pool (`Store::load`, `Store::state_at`, `history`), never on the
/// async workers that serve everyone else.
pub(crate) async fn with_rebuild_slot<T, F>(
    state: &Arc<ServerState>,
    read: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let wait = state.config.limits.rebuild_wait;
    let permit = match tokio::time::timeout(wait, state.rebuilds.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(e)) => return Err(Internal::SlotsClosed(e).into()),
        Err(_) => {
            state.metrics.rebuilds_busy.fetch_add(1, Relaxed);
            debug!(?wait, "read refused: no rebuild slot");
            return Err(ApiError::Busy { retry_after: wait });
        }
    };
    let slot = RebuildSlot::taken(state.clone(), permit);
    tokio::spawn(async move {
        let _slot = slot;
        read.await
    })
    .await
    .map_err(|source| Internal::Task {
        what: "the read task",
        source,
    })?
}

/// A taken rebuild slot, counted in the `lattice_rebuilds_in_flight` gauge until dropped.
struct RebuildSlot {
    state: Arc<ServerState>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl RebuildSlot {
    fn taken(state: Arc<ServerState>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        let now = state.metrics.rebuilds_in_flight.fetch_add(1, Relaxed) + 1;
        state
            .metrics
            .rebuilds_in_flight_peak
            .fetch_max(now, Relaxed);
        RebuildSlot {
            state,
            _permit: permit,
        }
    }
}

impl Drop for RebuildSlot {
    fn drop(&mut self) {
        self.state.metrics.rebuilds_in_flight.fetch_sub(1, Relaxed);
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The demo page: 200 with any valid token. Without one (or with one refused), 401 with a page
/// that says why and how to get a token; a throttled client gets the API's 429.
async fn demo_page(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    match authenticate_request(&state.auth, &headers, query.token.as_deref(), remote.ip()) {
        Ok(_) => {}
        Err(e @ AuthError::Throttled { .. }) => return Err(e.into()),
        Err(e) => return Ok(token_needed(e)),
    }
    let mut response = match &state.config.web_dir {
        Some(dir) => web::serve_file(dir, "index.html").await,
        None => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            FALLBACK_DEMO_PAGE,
        )
            .into_response(),
    };
    // The address carries a token: keep it out of other sites' logs.
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(no_store(response))
}

/// The 401 page of `/`: the API's refusal (status and `WWW-Authenticate` challenge), with a page
/// that gives the reason and says how to get a token instead of the JSON body.
fn token_needed(e: AuthError) -> Response {
    let reason = match &e {
        AuthError::Missing => "No token was given.".to_owned(),
        other => format!("The token was refused: {other}."),
    };
    let page = TOKEN_NEEDED_PAGE.replace("{{REASON}}", &html_escape(&reason));
    let (mut parts, _json) = ApiError::Auth(e).into_response().into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    no_store(Response::from_parts(parts, axum::body::Body::from(page)))
}

/// Text for HTML element content.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// `GET /demo/{file}`: the demo's scripts, styles and wasm. Public: they are the same for
/// everyone and hold no secret; the page and every document stay behind a token.
async fn demo_file(State(state): State<Arc<ServerState>>, Path(file): Path<String>) -> Response {
    match &state.config.web_dir {
        Some(dir) => web::serve_file(dir, &file).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /v1/docs/{doc}`: the document's JSON view; needs `read` on it.
async fn document_json(
    State(state): State<Arc<ServerState>>,
    DocCall { doc, .. }: DocCall<TokenQuery, NeedsRead>,
) -> Result<Response, ApiError> {
    let (store, replica) = (state.store.clone(), state.replica);
    let view = with_rebuild_slot(&state, async move {
        let loaded = store.load(&doc, replica).await?.ok_or(ApiError::NotFound)?;
        tokio::task::spawn_blocking(move || loaded.document.to_json())
            .await
            .map_err(|source| {
                Internal::Task {
                    what: "rendering",
                    source,
                }
                .into()
            })
    })
    .await?;
    Ok(no_store(Json(view).into_response()))
}

/// `GET /v1/admin/docs/{doc}`: what the store knows about the document (deleted ones too);
/// needs `admin` on it.
async fn admin_document(
    State(state): State<Arc<ServerState>>,
    DocCall { doc, .. }: DocCall<TokenQuery, NeedsAdmin>,
) -> Result<Response, ApiError> {
    let meta = state
        .store
        .document(&doc)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(no_store(
        Json(json!({
            "id": meta.id.as_str(),
            "created_at_ms": meta.created_at_ms,
            "updated_at_ms": meta.updated_at_ms,
            "deleted_at_ms": meta.deleted_at_ms,
            "head_seq": meta.head_seq,
            "byte_count": meta.byte_count,
            "checkpoint_seq": meta.checkpoint_seq,
            "log_start_seq": meta.log_start_seq,
        }))
        .into_response(),
    ))
}
