//! The admin history API under `/api/admin/…` (docs/admin-api.md) and the admin UI at `/admin`.
//!
//! Every endpoint authenticates, then requires the `admin` scope on the document (the listing
//! requires the `admin` scope and reads only inside the token's patterns), and only then asks
//! the store. Soft-deleted documents
//! stay readable here. Restore goes through the document's room, so connected clients receive
//! it like any other change.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lattice_engine::DocId;
use serde::Deserialize;
use serde_json::json;

use super::extract::{DocCall, NeedsAdmin};
use super::{ApiError, Internal, no_store, with_rebuild_slot};
use crate::auth::{Scope, authenticate_request};
use crate::history::timeline::{self, TimelineQuery};
use crate::history::{self, HistoryError, HistoryQuery, ListQuery, RestoreOutcome};
use crate::rooms::{RestoreFailed, RoomCmd};
use crate::state::ServerState;
use crate::store::{DocMeta, ReadError};

/// The admin UI: static HTML, CSS and JS, no secrets inside (it asks for a token).
const ADMIN_PAGE: &str = include_str!("admin.html");

pub(crate) fn routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/admin", get(admin_page))
        .route("/api/admin/docs", get(list))
        .route("/api/admin/docs/{*doc}", get(document))
        .route("/api/admin/history/{*doc}", get(history_page))
        .route("/api/admin/timeline/{*doc}", get(timeline_page))
        .route("/api/admin/content/{*doc}", get(content))
        .route("/api/admin/diff/{*doc}", get(diff))
        .route("/api/admin/export/{*doc}", get(export))
        .route("/api/admin/restore/{*doc}", post(restore))
        .route("/api/admin/delete/{*doc}", post(soft_delete))
        .route("/api/admin/undelete/{*doc}", post(undelete))
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Store(e) => ApiError::Read(e),
            HistoryError::NotFound => ApiError::NotFound,
            HistoryError::BadVersion(message) => ApiError::BadRequest {
                code: "bad_version",
                message,
            },
            HistoryError::Task(source) => Internal::Task {
                what: "a history computation",
                source,
            }
            .into(),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest {
            code: "bad_query",
            message: e.body_text(),
        }
    }
}

async fn admin_page() -> Response {
    let mut response = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        ADMIN_PAGE,
    )
        .into_response();
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        // The page renders every document string as text (never as HTML). The policy limits
        // where it may send data and who may frame it; scripts are not restricted further so
        // that browser-automation tools can evaluate their own code in it.
        HeaderValue::from_static(
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    no_store(response)
}

crate::token_param!(
    Common,
    HistoryParams,
    TimelineParams,
    AtParams,
    DiffParams,
    RestoreParams
);

/// Only the token.
#[derive(Debug, Deserialize)]
struct Common {
    token: Option<String>,
}

/// The prologue of every per-document admin endpoint (see [`DocCall`]), `admin` required.
type AdminDoc<P> = DocCall<P, NeedsAdmin>;

/// The document's metadata, or 404.
async fn existing(state: &ServerState, doc: &DocId) -> Result<DocMeta, ApiError> {
    state.store.document(doc).await?.ok_or(ApiError::NotFound)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    token: Option<String>,
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    include_deleted: bool,
}

/// `GET /api/admin/docs?prefix=&after=&limit=&include_deleted=`: needs the `admin` scope, and
/// reads only inside the token's patterns, so no part of the answer (documents, cursor, an
/// empty page) depends on a document the token cannot administer.
async fn list(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let principal = authenticate_request(&state.auth, &headers, q.token.as_deref(), remote.ip())?;
    principal.require_scope(Scope::Admin)?;
    let after = q
        .after
        .filter(|a| !a.is_empty())
        .map(DocId::new)
        .transpose()?;
    let list = history::list_documents(
        &state.store,
        &ListQuery {
            prefix: q.prefix,
            after,
            limit: q.limit.unwrap_or(history::DEFAULT_LIST_LIMIT),
            include_deleted: q.include_deleted,
        },
        principal.patterns(),
        |doc| Some(state.rooms.subscribers(doc)),
    )
    .await?;
    Ok(no_store(Json(list).into_response()))
}

/// `GET /api/admin/docs/{doc}`: one document's summary (deleted ones too).
async fn document(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, .. }: AdminDoc<Common>,
) -> Result<Response, ApiError> {
    let meta = existing(&state, &doc).await?;
    let summary = history::DocSummary::new(&meta, Some(state.rooms.subscribers(&doc)));
    Ok(no_store(Json(summary).into_response()))
}

#[derive(Debug, Deserialize)]
struct HistoryParams {
    token: Option<String>,
    #[serde(default)]
    after: u64,
    limit: Option<u32>,
    /// Seconds between two entries that end a session.
    session_gap_s: Option<u64>,
}

/// `GET /api/admin/history/{doc}?after=&limit=&session_gap_s=`.
async fn history_page(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, params: q, .. }: AdminDoc<HistoryParams>,
) -> Result<Response, ApiError> {
    let query = HistoryQuery {
        after: q.after,
        limit: q.limit.unwrap_or(history::DEFAULT_HISTORY_LIMIT),
        session_gap_ms: q
            .session_gap_s
            .map_or(history::DEFAULT_SESSION_GAP_MS, |s| s.saturating_mul(1_000)),
    };
    let (store, replica) = (state.store.clone(), state.replica);
    let page = with_rebuild_slot(&state, async move {
        Ok(history::history(&store, &doc, query, replica).await?)
    })
    .await?;
    Ok(no_store(Json(page).into_response()))
}

#[derive(Debug, Deserialize)]
struct TimelineParams {
    token: Option<String>,
    before: Option<u64>,
    limit: Option<u32>,
    /// Seconds between two entries that end a session.
    session_gap_s: Option<u64>,
}

/// `GET /api/admin/timeline/{doc}?before=&limit=&session_gap_s=`: author sessions, newest
/// first, from the log's metadata (no rebuild, so no rebuild slot).
async fn timeline_page(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, params: q, .. }: AdminDoc<TimelineParams>,
) -> Result<Response, ApiError> {
    let query = TimelineQuery {
        before: q.before,
        limit: q.limit.unwrap_or(timeline::DEFAULT_SESSIONS_LIMIT),
        session_gap_ms: q
            .session_gap_s
            .map_or(history::DEFAULT_SESSION_GAP_MS, |s| s.saturating_mul(1_000)),
    };
    let page = timeline::timeline(&state.store, &doc, query).await?;
    Ok(no_store(Json(page).into_response()))
}

#[derive(Debug, Deserialize)]
struct AtParams {
    token: Option<String>,
    at: Option<u64>,
    format: Option<String>,
}

/// `GET /api/admin/content/{doc}?at=SEQ` (default: the head).
async fn content(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, params: q, .. }: AdminDoc<AtParams>,
) -> Result<Response, ApiError> {
    let (store, replica) = (state.store.clone(), state.replica);
    let content = with_rebuild_slot(&state, async move {
        Ok(history::content(&store, &doc, q.at, replica).await?)
    })
    .await?;
    Ok(no_store(Json(content).into_response()))
}

#[derive(Debug, Deserialize)]
struct DiffParams {
    token: Option<String>,
    from: u64,
    to: Option<u64>,
}

/// `GET /api/admin/diff/{doc}?from=SEQ&to=SEQ` (`to` defaults to the head).
async fn diff(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, params: q, .. }: AdminDoc<DiffParams>,
) -> Result<Response, ApiError> {
    let to = match q.to {
        Some(to) => to,
        None => existing(&state, &doc).await?.head_seq,
    };
    let (store, replica) = (state.store.clone(), state.replica);
    let diff = with_rebuild_slot(&state, async move {
        Ok(history::diff(&store, &doc, q.from, to, replica).await?)
    })
    .await?;
    Ok(no_store(Json(diff).into_response()))
}

/// `GET /api/admin/export/{doc}?format=yjs|json&at=SEQ`: the Yjs update bytes (any Yjs client
/// can apply them) or the JSON view, as a download.
async fn export(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, params: q, .. }: AdminDoc<AtParams>,
) -> Result<Response, ApiError> {
    let file = doc.as_str().replace(['/', '"', '\\'], "_");
    let (store, replica, at) = (state.store.clone(), state.replica, q.at);
    let mut response = match q.format.as_deref().unwrap_or("json") {
        "yjs" => {
            let bytes = with_rebuild_slot(&state, async move {
                Ok(history::export_yjs(&store, &doc, at, replica).await?)
            })
            .await?;
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        "json" => {
            let content = with_rebuild_slot(&state, async move {
                Ok(history::content(&store, &doc, at, replica).await?)
            })
            .await?;
            Json(content).into_response()
        }
        other => {
            return Err(ApiError::BadRequest {
                code: "bad_query",
                message: format!("format must be yjs or json, not {other:?}"),
            });
        }
    };
    let ext = if q.format.as_deref() == Some("yjs") {
        "yjs"
    } else {
        "json"
    };
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}.{ext}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(no_store(response))
}

#[derive(Debug, Default, Deserialize)]
struct RestoreBody {
    to: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RestoreParams {
    token: Option<String>,
    to: Option<u64>,
}

/// `POST /api/admin/restore/{doc}` with `{"to": SEQ}` (or `?to=SEQ`): one new update, by the
/// admin, that brings texts and registers back to version `SEQ`; applied through the room.
async fn restore(
    State(state): State<Arc<ServerState>>,
    AdminDoc {
        principal,
        doc,
        params: q,
        ..
    }: AdminDoc<RestoreParams>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: RestoreBody = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
            code: "bad_body",
            message: format!("the body is not {{\"to\": SEQ}}: {e}"),
        })?
    };
    let to = body.to.or(q.to).ok_or(ApiError::BadRequest {
        code: "bad_body",
        message: "say which version to restore: {\"to\": SEQ}".into(),
    })?;
    let meta = existing(&state, &doc).await?;
    if meta.is_deleted() {
        return Err(ApiError::Conflict {
            code: "document_deleted",
            message: "the document is deleted; undelete it before restoring".into(),
        });
    }
    let (store, replica, target_doc) = (state.store.clone(), state.replica, doc.clone());
    let (_, _, target) = with_rebuild_slot(&state, async move {
        Ok(history::document_at(&store, &target_doc, Some(to), replica).await?)
    })
    .await?;
    let author = principal.subject().map(str::to_owned);
    let (reply, rx) = tokio::sync::oneshot::channel();
    let room = state.rooms.get_or_start(&doc);
    room.send(RoomCmd::Restore {
        target: Box::new(target),
        author: author.clone(),
        reply,
    })
    .await
    .map_err(|_| Internal::RoomStopped)?;
    let done = rx
        .await
        .map_err(|_| Internal::RoomStopped)?
        .map_err(|e| match e {
            RestoreFailed::Load(ReadError::DocumentDeleted { .. }) => ApiError::Conflict {
                code: "document_deleted",
                message: "the document is deleted; undelete it before restoring".into(),
            },
            RestoreFailed::Load(e) => ApiError::Read(e),
            RestoreFailed::Commit(e) => ApiError::Append(e),
            other => Internal::Restore(other).into(),
        })?;
    tracing::info!(doc = %doc, to, seq = ?done.seq, author = ?author, "document restored");
    Ok(no_store(
        Json(RestoreOutcome {
            doc: doc.as_str().to_owned(),
            restored_to: to,
            seq: done.seq,
            author,
            report: done.report,
        })
        .into_response(),
    ))
}

/// `POST /api/admin/delete/{doc}`: soft delete (the data stays; history stays readable here).
async fn soft_delete(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, .. }: AdminDoc<Common>,
) -> Result<Response, ApiError> {
    set_deleted(&state, &doc, true).await
}

/// `POST /api/admin/undelete/{doc}`.
async fn undelete(
    State(state): State<Arc<ServerState>>,
    AdminDoc { doc, .. }: AdminDoc<Common>,
) -> Result<Response, ApiError> {
    set_deleted(&state, &doc, false).await
}

async fn set_deleted(
    state: &ServerState,
    doc: &DocId,
    deleted: bool,
) -> Result<Response, ApiError> {
    existing(state, doc).await?;
    let changed = if deleted {
        let changed = state.store.soft_delete(doc).await?;
        // A live room would go on serving its in-memory copy: stop it and close its subscribers.
        if let Some(room) = state.rooms.live(doc) {
            let _ = room.send(RoomCmd::Deleted).await;
        }
        if changed && let Some(cluster) = &state.rooms.env().cluster {
            cluster.publish_deleted(doc);
        }
        changed
    } else {
        state.store.undelete(doc).await?
    };
    Ok(no_store(
        Json(json!({ "doc": doc.as_str(), "deleted": deleted, "changed": changed }))
            .into_response(),
    ))
}
