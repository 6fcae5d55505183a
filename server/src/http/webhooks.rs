//! The webhook admin API under `/api/admin/webhooks` (docs/admin-api.md, docs/webhooks.md):
//! list, add, show (with recent deliveries), remove, replay, rotate the secret, enable again.
//!
//! An endpoint can receive events about any document its pattern covers, so every call needs
//! the `admin` scope on every document (a token for `*`), checked before anything is read.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lattice_engine::DocId;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, no_store};
use crate::auth::{AuthError, DocPattern, Scope, authenticate_request};
use crate::state::ServerState;
use crate::webhooks::{NewEndpoint, WebhookError};

/// Recent deliveries shown with an endpoint by default.
const DEFAULT_RECENT: u32 = 50;
/// The largest request body read here.
const MAX_BODY_BYTES: usize = 16 * 1024;

pub(crate) fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/admin/webhooks", get(list).post(add))
        .route("/api/admin/webhooks/{id}", get(show).delete(remove))
        .route("/api/admin/webhooks/{id}/replay", post(replay))
        .route("/api/admin/webhooks/{id}/rotate", post(rotate))
        .route("/api/admin/webhooks/{id}/enable", post(enable))
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Database(e) => ApiError::Database(e),
            WebhookError::NotFound => ApiError::NotFoundCode {
                code: "no_such_webhook",
                message: WebhookError::NotFound.to_string(),
            },
            other => ApiError::BadRequest {
                code: match &other {
                    WebhookError::Target(_) => "refused_target",
                    WebhookError::Secret(_) => "bad_secret",
                    WebhookError::EventType(_) => "bad_event_type",
                    WebhookError::Pattern(_) => "bad_pattern",
                    _ => "bad_body",
                },
                message: other.to_string(),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
struct Params {
    token: Option<String>,
    limit: Option<u32>,
}

/// Authenticates and requires `admin` on every document.
fn require_global_admin(
    state: &ServerState,
    remote: SocketAddr,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let principal = authenticate_request(&state.auth, headers, token, remote.ip())?;
    principal.require_scope(Scope::Admin)?;
    if !principal
        .patterns()
        .iter()
        .any(|p| matches!(p, DocPattern::All))
    {
        return Err(AuthError::ScopeTooLow {
            needed: Scope::Admin,
        }
        .into());
    }
    Ok(())
}

/// The JSON body, or a 400 naming what is wrong.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
        code: "bad_body",
        message: format!("the body does not read: {e}"),
    })
}

/// `GET /api/admin/webhooks`.
async fn list(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    require_global_admin(&state, remote, &headers, q.token.as_deref())?;
    let endpoints = state.webhooks.list().await?;
    Ok(no_store(
        Json(json!({ "endpoints": endpoints })).into_response(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    url: String,
    #[serde(default)]
    events: Vec<String>,
    doc_pattern: Option<String>,
    #[serde(default)]
    description: String,
    secret: Option<String>,
}

/// `POST /api/admin/webhooks` with `{"url", "events"?, "doc_pattern"?, "description"?,
/// "secret"?}`: 201 with the endpoint and its secret (shown only here and on rotation).
async fn add(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<Params>, QueryRejection>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    require_global_admin(&state, remote, &headers, q.token.as_deref())?;
    let b: AddBody = body(&bytes)?;
    if b.url.is_empty() {
        return Err(ApiError::BadRequest {
            code: "bad_body",
            message: "say where to send events: {\"url\": \"https://…\"}".into(),
        });
    }
    let (endpoint, secret) = state
        .webhooks
        .add(NewEndpoint {
            url: b.url,
            events: b.events,
            doc_pattern: b.doc_pattern,
            description: b.description,
            secret: b.secret,
        })
        .await?;
    let mut response = Json(json!({ "endpoint": endpoint, "secret": secret })).into_response();
    *response.status_mut() = StatusCode::CREATED;
    Ok(no_store(response))
}

/// `GET /api/admin/webhooks/{id}?limit=`: the endpoint and its newest deliveries.
async fn show(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    require_global_admin(&state, remote, &headers, q.token.as_deref())?;
    let (endpoint, deliveries) = state
        .webhooks
        .get(&id, q.limit.unwrap_or(DEFAULT_RECENT))
        .await?;
    Ok(no_store(
        Json(json!({ "endpoint": endpoint, "deliveries": deliveries })).into_response(),
    ))
}

/// `DELETE /api/admin/webhooks/{id}`: the endpoint, its cursors and its events.
async fn remove(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    require_global_admin(&state, remote, &headers, q.token.as_deref())?;
    state.webhooks.remove(&id).await?;
    Ok(no_store(
        Json(json!({ "id": id, "removed": true })).into_response(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    from_seq: Option<u64>,
    doc: Option<String>,
}

/// `POST /api/admin/webhooks/{id}/replay` with `{"from_seq": N, "doc"?: ID}`: entries from
/// `N` on are sent again (as new `document.changed` events; the same range gets the same id).
async fn replay(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Params>, QueryRejection>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    require_global_admin(&state, remote, &headers, q.token.as_deref())?;
    let b: ReplayBody = body(&bytes)?;
    let from_seq = b.from_seq.ok_or(ApiError::BadRequest {
        code: "bad_body",
        message: "say where to start: {\"from_seq\": N}".into(),
    })?;
    let doc = b.doc.map(DocId::new).transpose()?;
    let moved = state.webhooks.replay(&id, doc.as_ref(), from_seq).await?;
    Ok(no_store(
        Json(json!({ "id": id, "from_seq": from_seq, "cursors_moved": moved })).into_response(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    secret: Option<String>,
}

/// `POST /api/admin/webhooks/{id}/rotate` with `{"secret"?}`: a new secret (generated unless
/// given); the previous one keeps signing for the configured overlap.
async fn rotate(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Params>, QueryRejection>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    require_global_admin(&state, remote, &headers, q.token.as_deref())?;
    let b: RotateBody = body(&bytes)?;
    let secret = state.webhooks.rotate(&id, b.secret).await?;
    Ok(no_store(
        Json(json!({ "id": id, "secret": secret })).into_response(),
    ))
}

/// `POST /api/admin/webhooks/{id}/enable`: an endpoint disabled for failing gets its pending
/// events and everything since.
async fn enable(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    require_global_admin(&state, remote, &headers, q.token.as_deref())?;
    state.webhooks.enable(&id).await?;
    Ok(no_store(
        Json(json!({ "id": id, "enabled": true })).into_response(),
    ))
}
