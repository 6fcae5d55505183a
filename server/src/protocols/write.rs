//! The HTTP writes and reads of a document for services (docs/http-api.md):
//! `POST /v1/updates/{doc}` (a delta, answered with its seq after commit, retry-safe with an
//! `Idempotency-Key`), `GET /v1/state/{doc}` (the document, or what a state lacks, as one Yjs
//! update) and `POST /v1/presence/{doc}` (an SSE reader's presence).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lattice_engine::protocol::{ErrorCode, ServerMsg};
use lattice_engine::sync::{Access, PeerId};
use lattice_engine::{Delta, DocId, Value};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::auth::{Principal, TokenQuery};
use crate::http::extract::{DocCall, NeedsRead, NeedsWrite};
use crate::http::{ApiError, Internal, with_rebuild_slot};
use crate::protocols::feed::{FeedQuery, rate_key, within_rate};
use crate::rooms::{PresenceOf, RoomCmd, WriteRefused, Written, join_room};
use crate::state::ServerState;
use crate::store::encode_delta;
use crate::transport::idempotency::WriteAnswer;

/// The longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

/// How the body of a write is encoded, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// A MessagePack Lattice `Delta`.
    Lattice,
    /// A raw Yjs v1 update.
    Yjs,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"))
        .unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
            Ok(BodyKind::Lattice)
        }
        "application/octet-stream" => Ok(BodyKind::Yjs),
        _ => Err(ApiError::UnsupportedType(value.chars().take(100).collect())),
    }
}

/// The body, at most `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })?;
    if bytes.is_empty() {
        return Err(bad("empty_body", "the body is empty; send a delta"));
    }
    Ok(bytes.to_vec())
}

/// The key a write is remembered by: the principal, the document and the client's key.
fn scoped_key(principal: &Principal, doc: &DocId, key: &str) -> String {
    format!(
        "{}\u{0}{}\u{0}{key}",
        principal.subject().unwrap_or(""),
        doc.as_str()
    )
}

fn digest(kind: BodyKind, body: &[u8]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x1a77_1ce5).build_hasher();
    // Stable within one process, which is as long as keys are remembered.
    h.write_u8(kind as u8);
    h.write(body);
    h.finish()
}

/// `POST /v1/updates/{doc}`: one delta, answered `{"seq": N, "changed": bool}` once committed.
pub(crate) async fn post_update(
    State(state): State<Arc<ServerState>>,
    call: DocCall<TokenQuery, NeedsWrite>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    within_rate(&state, &call)?;
    let DocCall {
        principal,
        doc,
        remote,
        ..
    } = call;
    let kind = body_kind(&headers)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(idempotency_key(v.to_str().ok())?),
    };
    let limit = state.config.limits.max_frame_bytes;
    let body = read_body(&headers, body, limit).await?;
    let applied = apply_update(&state, &principal, &doc, remote, kind, body, key).await?;
    let mut response =
        Json(json!({ "seq": applied.seq, "changed": applied.changed })).into_response();
    if applied.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A client's idempotency key, checked: 1 to [`MAX_KEY_LEN`] visible ASCII characters
/// (`None`: not text at all).
pub(crate) fn idempotency_key(key: Option<&str>) -> Result<&str, ApiError> {
    key.filter(|k| {
        // What `HeaderValue::to_str` lets through, so both APIs take the same keys.
        !k.is_empty()
            && k.len() <= MAX_KEY_LEN
            && k.bytes().all(|b| (b' '..=b'~').contains(&b) || b == b'\t')
    })
    .ok_or_else(|| {
        bad(
            "bad_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )
    })
}

/// A committed write, as its caller is answered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Applied {
    pub seq: u64,
    pub changed: bool,
    /// The answer of an earlier write with the same idempotency key.
    pub replayed: bool,
}

/// One write of `body` (at most `Limits::max_frame_bytes`, already read) to `doc` by
/// `principal`, who holds `write` on it: the byte rate limit, decoding, the room, the commit,
/// and the idempotency key's memory. Shared by `POST /v1/updates/{doc}` and gRPC
/// `ApplyUpdate`; the request rate limit is the caller's.
pub(crate) async fn apply_update(
    state: &Arc<ServerState>,
    principal: &Principal,
    doc: &DocId,
    remote: std::net::SocketAddr,
    kind: BodyKind,
    body: Vec<u8>,
    key: Option<&str>,
) -> Result<Applied, ApiError> {
    let limit = state.config.limits.max_frame_bytes;
    if body.len() > limit {
        return Err(ApiError::TooLarge { limit });
    }
    if body.is_empty() {
        return Err(bad("empty_body", "the body is empty; send a delta"));
    }
    if !state
        .http_rate
        .bytes(&rate_key(principal, remote), body.len())
    {
        return Err(ApiError::RateLimited);
    }
    let digest = digest(kind, &body);
    let delta = match kind {
        BodyKind::Lattice => Delta::decode(&body, limit).map_err(|e| {
            bad(
                "malformed_delta",
                format!("the body is not a Lattice delta: {e}"),
            )
        })?,
        BodyKind::Yjs => Delta {
            yjs: body,
            ..Delta::default()
        },
    };
    let write = || write_delta(state, principal, doc, delta.clone(), digest);
    let (answer, replayed) = match key {
        None => (write().await?, false),
        Some(key) => {
            let cell = state.idempotency.cell(scoped_key(principal, doc, key));
            let mut ran = false;
            let answer = *cell
                .get_or_try_init(|| {
                    ran = true;
                    write()
                })
                .await?;
            (answer, !ran)
        }
    };
    if answer.digest != digest {
        return Err(ApiError::Conflict {
            code: "idempotency_key_reused",
            message: "this Idempotency-Key was used for another body".into(),
        });
    }
    if replayed {
        state.metrics.http_writes_replayed.fetch_add(1, Relaxed);
    }
    Ok(Applied {
        seq: answer.seq,
        changed: answer.changed,
        replayed,
    })
}

/// Sends the delta through the document's room and waits for its commit.
async fn write_delta(
    state: &Arc<ServerState>,
    principal: &Principal,
    doc: &DocId,
    delta: Delta,
    digest: u64,
) -> Result<WriteAnswer, ApiError> {
    let (reply, answer) = oneshot::channel();
    let cmd = RoomCmd::Write {
        peer: PeerId(state.next_peer.fetch_add(1, Relaxed)),
        access: Access::Write,
        author: principal.subject().map(str::to_owned),
        delta,
        reply,
    };
    join_room(&state.rooms, doc, cmd)
        .await
        .ok_or(Internal::RoomStopped)?;
    let Written { seq, changed } = match answer.await.map_err(|_| Internal::RoomStopped)? {
        Ok(written) => written,
        Err(WriteRefused::Delta { code, message }) => {
            state.metrics.deltas_refused.fetch_add(1, Relaxed);
            return Err(refused(code, message));
        }
        Err(WriteRefused::Load(e)) => return Err(e.into()),
        Err(WriteRefused::Commit(e)) => return Err(e.into()),
    };
    if changed {
        state.metrics.http_writes.fetch_add(1, Relaxed);
    }
    Ok(WriteAnswer {
        seq,
        changed,
        digest,
    })
}

/// A delta the room refused: 422 with the protocol's code (409 when it builds on content the
/// server does not have yet: send that first).
fn refused(code: ErrorCode, message: String) -> ApiError {
    match code {
        ErrorCode::MissingDependencies => ApiError::Conflict {
            code: code.as_str(),
            message,
        },
        _ => ApiError::Unprocessable {
            code: code.as_str(),
            message,
        },
    }
}

/// `GET /v1/state/{doc}[?state=…|?sv=…]`: the document, or what the given state lacks, as one
/// Yjs v1 update (`application/octet-stream`), or as a MessagePack Lattice `Delta` with
/// `Accept: application/msgpack`. `Lattice-Seq` names the log seq it is as of.
pub(crate) async fn get_state(
    State(state): State<Arc<ServerState>>,
    call: DocCall<FeedQuery, NeedsRead>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    within_rate(&state, &call)?;
    let known = call.params.known()?;
    let doc = call.doc;
    let lattice = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/msgpack"));
    let (store, replica) = (state.store.clone(), state.replica);
    let (bytes, seq) = with_rebuild_slot(&state, async move {
        let loaded = store.load(&doc, replica).await?.ok_or(ApiError::NotFound)?;
        tokio::task::spawn_blocking(move || {
            let delta = loaded
                .document
                .diff_since(&known)
                .map_err(|e| bad("bad_state", format!("state cannot be compared: {e}")))?;
            let bytes = match (lattice, delta.yjs.is_empty()) {
                (true, _) => encode_delta(&delta),
                // Nothing lacking is still a valid update: the empty one.
                (false, true) => vec![0, 0],
                (false, false) => delta.yjs,
            };
            Ok((bytes, loaded.head_seq))
        })
        .await
        .map_err(|source| {
            ApiError::from(Internal::Task {
                what: "the state",
                source,
            })
        })?
    })
    .await?;
    let content_type = if lattice {
        "application/msgpack"
    } else {
        "application/octet-stream"
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("lattice-seq", HeaderValue::from(seq));
    Ok(response)
}

/// The body of `POST /v1/presence/{doc}`: whose presence (`peer` or `session`) and what.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceBody {
    /// The SSE stream's `peer` (from its `sync` event).
    peer: Option<u64>,
    /// For a client without a stream (long polling): a name it chose, 1 to 128 characters.
    session: Option<String>,
    /// The presence state; `null` leaves.
    #[serde(default)]
    state: Value,
    #[serde(default)]
    typing: bool,
}

/// The longest presence session name.
const MAX_SESSION_LEN: usize = 128;

/// `POST /v1/presence/{doc}`: sets the presence of the caller's SSE stream (`peer`) or of a
/// session of the caller's (`session`, for long polling), with the same TTLs as a WebSocket
/// peer's: renew it before `presence_ttl`. A session leaves when its presence expires.
/// Answers `{"peer": N}`, the number the others see it under.
pub(crate) async fn post_presence(
    State(state): State<Arc<ServerState>>,
    call: DocCall<TokenQuery, NeedsRead>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    within_rate(&state, &call)?;
    let DocCall { principal, doc, .. } = call;
    let limit = state.config.limits.max_frame_bytes;
    let bytes = read_body(&headers, body, limit).await?;
    let body: PresenceBody = serde_json::from_slice(&bytes).map_err(|e| {
        bad(
            "malformed_presence",
            format!("the body is not presence JSON: {e}"),
        )
    })?;
    let of = match (body.peer, body.session) {
        (Some(peer), None) => PresenceOf::Stream(PeerId(peer)),
        (None, Some(name)) if (1..=MAX_SESSION_LEN).contains(&name.chars().count()) => {
            PresenceOf::Session {
                name,
                new_peer: PeerId(state.next_peer.fetch_add(1, Relaxed)),
            }
        }
        _ => {
            return Err(bad(
                "malformed_presence",
                format!(
                    "name either your stream's peer or a session of 1 to {MAX_SESSION_LEN} characters"
                ),
            ));
        }
    };
    let room = match of {
        // A stream's room is live while the stream is open.
        PresenceOf::Stream(_) => state.rooms.live(&doc).ok_or_else(unknown_peer)?,
        PresenceOf::Session { .. } => state.rooms.get_or_start(&doc),
    };
    let (reply, done) = oneshot::channel();
    let cmd = RoomCmd::HttpPresence {
        of,
        author: principal.subject().map(str::to_owned),
        state: body.state,
        typing: body.typing,
        reply,
    };
    room.send(cmd).await.map_err(|_| Internal::RoomStopped)?;
    let peer = done.await.ok().flatten().ok_or_else(unknown_peer)?;
    let mut response = Json(json!({ "peer": peer.0 })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/presence/{doc}`: everyone's current presence on the document, for clients that
/// poll: `{"peers": [{"peer", "state", "typing"}]}` (empty when no one is there).
pub(crate) async fn get_presence(
    State(state): State<Arc<ServerState>>,
    call: DocCall<TokenQuery, NeedsRead>,
) -> Result<Response, ApiError> {
    within_rate(&state, &call)?;
    let mut peers = Vec::new();
    if let Some(room) = state.rooms.live(&call.doc) {
        let (reply, snapshot) = oneshot::channel();
        if room.send(RoomCmd::PresenceSnapshot { reply }).await.is_ok() {
            for msg in snapshot.await.unwrap_or_default() {
                if let ServerMsg::Presence {
                    peer,
                    state,
                    typing,
                    ..
                } = msg
                {
                    peers.push(json!({ "peer": peer, "state": state, "typing": typing }));
                }
            }
        }
    }
    let mut response = Json(json!({ "peers": peers })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn unknown_peer() -> ApiError {
    ApiError::NotFoundCode {
        code: "unknown_peer",
        message: "no SSE stream of yours with that peer is open on this document".into(),
    }
}
