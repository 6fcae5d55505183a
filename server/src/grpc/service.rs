//! The `lattice.v1.Documents` service: each call authenticates from its metadata, checks the
//! document against the principal, counts against the same rate limits as the HTTP API, and
//! then does what the HTTP endpoint does, through the same functions (`protocols::write`,
//! `protocols::feed`, `history`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use lattice_engine::{DocId, DocState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::proto::documents_server::Documents;
use super::proto::{
    ApplyUpdateRequest, ApplyUpdateResponse, DocumentEvent, DocumentSummary, GetDocumentRequest,
    GetDocumentResponse, ListDocumentsRequest, ListDocumentsResponse, SubscribeRequest,
    apply_update_request::Update, document_event::Kind,
};
use super::status::{from_api, from_feed_end};
use super::{Method, count};
use crate::auth::{Principal, Scope, authenticate_request};
use crate::history::{self, ListQuery};
use crate::http::{ApiError, Internal, with_rebuild_slot};
use crate::protocols::feed::{EventSink, Follower, check_after, closed_end, follow, rate_key};
use crate::protocols::write::{BodyKind, apply_update, idempotency_key};
use crate::state::ServerState;
use crate::transport::events::Event;
use crate::transport::writer::Closer;

/// Events a `Subscribe` stream may have queued towards tonic before its follower waits (each
/// at most twice `Limits::max_frame_bytes`: the update and its native frame). The
/// follower's own outbox (`Limits::outbox_frames`/`outbox_bytes`) is what the room sees: a
/// stream whose client does not read fills both, and the room drops it as a slow consumer.
pub(crate) const SUBSCRIBE_CHANNEL: usize = 16;

/// The service, on the server's shared state.
#[derive(Debug)]
pub(crate) struct DocumentsService {
    pub(crate) state: Arc<ServerState>,
}

/// An authenticated caller of one document.
struct Caller {
    principal: Principal,
    doc: DocId,
    remote: SocketAddr,
}

impl DocumentsService {
    /// The HTTP prologue (`http::extract::DocCall`) for gRPC: authenticate from the metadata,
    /// parse the document id, require `scope` on it, in that order (a refusal never depends on
    /// whether the document exists), then the request rate limit.
    fn caller<T>(&self, request: &Request<T>, doc: &str, scope: Scope) -> Result<Caller, ApiError> {
        let remote = remote(request);
        let headers = request.metadata().clone().into_headers();
        let principal = authenticate_request(&self.state.auth, &headers, None, remote.ip())?;
        let doc = DocId::new(doc)?;
        principal.require(&doc, scope)?;
        if !self.state.http_rate.request(&rate_key(&principal, remote)) {
            return Err(ApiError::RateLimited);
        }
        Ok(Caller {
            principal,
            doc,
            remote,
        })
    }
}

/// The peer's address (tonic's connect info over TCP); unspecified when it has none, which
/// only a server started without a TCP listener would see.
fn remote<T>(request: &Request<T>) -> SocketAddr {
    request
        .remote_addr()
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
}

/// Counts the call's outcome in `lattice_grpc_requests_total` and turns its error into a
/// status.
fn answer<T>(
    service: &DocumentsService,
    method: Method,
    result: Result<T, ApiError>,
) -> Result<Response<T>, Status> {
    let result = result.map(Response::new).map_err(from_api);
    count(&service.state.metrics, method, &result);
    result
}

#[tonic::async_trait]
impl Documents for DocumentsService {
    async fn apply_update(
        &self,
        request: Request<ApplyUpdateRequest>,
    ) -> Result<Response<ApplyUpdateResponse>, Status> {
        let result = async {
            let Caller {
                principal,
                doc,
                remote,
            } = self.caller(&request, &request.get_ref().doc, Scope::Write)?;
            let ApplyUpdateRequest {
                update,
                idempotency_key: key,
                ..
            } = request.into_inner();
            let (kind, body) = match update {
                Some(Update::Delta(body)) => (BodyKind::Lattice, body),
                Some(Update::YjsUpdate(body)) => (BodyKind::Yjs, body),
                None => {
                    return Err(ApiError::BadRequest {
                        code: "empty_body",
                        message: "set delta or yjs_update".into(),
                    });
                }
            };
            let key = match key.as_str() {
                "" => None,
                key => Some(idempotency_key(Some(key))?),
            };
            let applied =
                apply_update(&self.state, &principal, &doc, remote, kind, body, key).await?;
            Ok(ApplyUpdateResponse {
                seq: applied.seq,
                changed: applied.changed,
                replayed: applied.replayed,
            })
        }
        .await;
        answer(self, Method::ApplyUpdate, result)
    }

    async fn get_document(
        &self,
        request: Request<GetDocumentRequest>,
    ) -> Result<Response<GetDocumentResponse>, Status> {
        let result = async {
            let Caller { doc, .. } = self.caller(&request, &request.get_ref().doc, Scope::Read)?;
            let known = DocState {
                yjs: request.into_inner().state_vector,
                ..DocState::default()
            };
            let (store, replica) = (self.state.store.clone(), self.state.replica);
            with_rebuild_slot(&self.state, async move {
                let loaded = store.load(&doc, replica).await?.ok_or(ApiError::NotFound)?;
                tokio::task::spawn_blocking(move || {
                    let delta =
                        loaded
                            .document
                            .diff_since(&known)
                            .map_err(|e| ApiError::BadRequest {
                                code: "bad_state",
                                message: format!("state_vector cannot be compared: {e}"),
                            })?;
                    let json = loaded.document.to_json().to_string();
                    Ok(GetDocumentResponse {
                        seq: loaded.head_seq,
                        // Nothing lacking is still a valid update: the empty one.
                        yjs_update: if delta.yjs.is_empty() {
                            vec![0, 0]
                        } else {
                            delta.yjs
                        },
                        json,
                    })
                })
                .await
                .map_err(|source| {
                    ApiError::from(Internal::Task {
                        what: "the document",
                        source,
                    })
                })?
            })
            .await
        }
        .await;
        answer(self, Method::GetDocument, result)
    }

    type SubscribeStream = ReceiverStream<Result<DocumentEvent, Status>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let result = async {
            let Caller { principal, doc, .. } =
                self.caller(&request, &request.get_ref().doc, Scope::Read)?;
            let after = request.get_ref().after_seq;
            if let Some(after) = after {
                check_after(&self.state, &doc, after).await?;
            }
            let mut follower = Follower::join(&self.state, &principal, &doc, false, after).await?;
            let (tx, rx) = mpsc::channel(SUBSCRIBE_CHANNEL);
            let state = self.state.clone();
            tokio::spawn(async move {
                let closer = follower.closer();
                let mut sink = StreamSink {
                    tx: tx.clone(),
                    closer: closer.clone(),
                    dropped: false,
                };
                let end = follow(
                    &state,
                    &doc,
                    &mut follower,
                    after,
                    DocState::default(),
                    &mut sink,
                )
                .await;
                // A sink that stopped because the room dropped the follower ends with the
                // room's reason, like a follower that saw it itself.
                let end = match end {
                    None if sink.dropped => closer.code().map(closed_end),
                    end => end,
                };
                // Leave (and give back the connection slot) before the last word, which waits
                // for a client that may not be reading.
                follower.leave().await;
                if let Some(end) = end {
                    let _ = tx.send(Err(from_feed_end(end))).await;
                }
            });
            Ok(ReceiverStream::new(rx))
        }
        .await;
        answer(self, Method::Subscribe, result)
    }

    async fn list_documents(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let result = async {
            let remote = remote(&request);
            let headers = request.metadata().clone().into_headers();
            let principal = authenticate_request(&self.state.auth, &headers, None, remote.ip())?;
            principal.require_scope(Scope::Admin)?;
            let q = request.into_inner();
            let after = Some(q.after)
                .filter(|a| !a.is_empty())
                .map(DocId::new)
                .transpose()?;
            let limit = match q.limit {
                0 => history::DEFAULT_LIST_LIMIT,
                n => n,
            };
            let list = history::list_documents(
                &self.state.store,
                &ListQuery {
                    prefix: q.prefix,
                    after,
                    limit,
                    include_deleted: q.include_deleted,
                },
                principal.patterns(),
                |doc| Some(self.state.rooms.subscribers(doc)),
            )
            .await?;
            Ok(ListDocumentsResponse {
                documents: list
                    .documents
                    .into_iter()
                    .map(|d| DocumentSummary {
                        id: d.id,
                        size_bytes: d.size_bytes,
                        updates: d.updates,
                        first_change_ms: d.first_change_ms,
                        last_change_ms: d.last_change_ms,
                        deleted: d.deleted,
                        deleted_at_ms: d.deleted_at_ms,
                        live_subscribers: d.live_subscribers.unwrap_or(0) as u64,
                        log_start_seq: d.log_start_seq,
                    })
                    .collect(),
                next_after: list.next_after.unwrap_or_default(),
            })
        }
        .await;
        answer(self, Method::ListDocuments, result)
    }
}

/// A `Subscribe` stream as a follower's sink: `sync` and `delta` events become
/// [`DocumentEvent`]s. A send waits for room in the stream's channel, but never past the room
/// dropping the follower: then the sink stops (nothing after a skipped event is ever sent, so
/// a resume from the last seq received has no gap) and the stream ends with the room's reason.
struct StreamSink {
    tx: mpsc::Sender<Result<DocumentEvent, Status>>,
    closer: Arc<Closer>,
    /// The room dropped the follower while a send waited.
    dropped: bool,
}

impl EventSink for StreamSink {
    async fn send(&mut self, events: Vec<Event>) -> bool {
        for event in events {
            let Some(parts) = event.parts() else { continue };
            let message = DocumentEvent {
                kind: if parts.sync { Kind::Sync } else { Kind::Entry } as i32,
                seq: parts.seq,
                yjs_update: parts.update,
                frame: parts.frame,
            };
            let dropped = tokio::select! {
                sent = self.tx.send(Ok(message)) => {
                    if sent.is_err() {
                        return false;
                    }
                    false
                }
                _ = self.closer.closed() => true,
            };
            if dropped {
                self.dropped = true;
                return false;
            }
        }
        true
    }

    async fn keep_alive(&mut self) -> bool {
        // HTTP/2 pings keep the connection alive; a closed stream is noticed here.
        !self.tx.is_closed()
    }
}
