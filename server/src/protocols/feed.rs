//! The HTTP readers of a document (docs/http-api.md): Server-Sent Events
//! (`GET /v1/events/{doc}`) and long polling (`GET /v1/updates/{doc}`).
//!
//! Both follow the log by seq. A reader joins the room first (`RoomCmd::Follow`), which
//! answers the head it holds and from then on queues every later committed entry in the
//! reader's outbox; what the reader lacks up to that head comes from the store (a `sync` of
//! the document, or the log entries after the reader's seq). Entries at or below the reader's
//! seq are skipped, so each arrives exactly once. The outbox is bounded: a reader that falls
//! behind is ended with a `close` event and resumes from its last seq.
//!
//! The gRPC `Subscribe` stream (`crate::grpc`) follows the same way through [`follow`], with
//! its own [`EventSink`]; only the way a stream ends ([`FeedEnd`]) is said differently.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::PeerId;
use lattice_engine::{Delta, DocId, DocState};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::http::extract::{DocCall, NeedsRead};
use crate::http::{ApiError, Internal, with_rebuild_slot};
use crate::rooms::peer::{AwarenessId, Encoded, Encoder, PeerHandle, PeerKind, SyncBudget};
use crate::rooms::{RoomCmd, RoomSender, join_room};
use crate::state::ServerState;
use crate::store::ReadError;
use crate::transport::close::CloseCode;
use crate::transport::events::{Event, KEEP_ALIVE};
use crate::transport::outbox::{Message, OutboxReceiver, outbox};
use crate::transport::slots::{Gauge, Slot};
use crate::transport::writer::Closer;

/// Chunks an SSE response may have queued towards the client before the pump waits.
const SSE_CHANNEL: usize = 64;

/// An SSE chunk is cut after this many bytes of events.
const SSE_CHUNK_BYTES: usize = 256 * 1024;

/// The query of both readers.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FeedQuery {
    token: Option<String>,
    /// Resume after this seq (SSE: like `Last-Event-ID`; long polling: required to wait).
    after: Option<String>,
    /// What the reader holds, as base64 MessagePack `DocState`: the `sync` carries only the rest.
    state: Option<String>,
    /// What the reader holds, as a base64 Yjs state vector (for Yjs-only readers).
    sv: Option<String>,
    /// Long polling: how long to wait for an entry, in milliseconds.
    wait_ms: Option<u64>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        code,
        message: message.into(),
    }
}

impl FeedQuery {
    /// What the reader holds, from `state` or `sv`.
    pub(crate) fn known(&self) -> Result<DocState, ApiError> {
        if let Some(state) = &self.state {
            let bytes = STANDARD
                .decode(state)
                .map_err(|e| bad("bad_state", format!("state is not base64: {e}")))?;
            return DocState::decode(&bytes, bytes.len())
                .map_err(|e| bad("bad_state", format!("state is not a DocState: {e}")));
        }
        if let Some(sv) = &self.sv {
            let yjs = STANDARD
                .decode(sv)
                .map_err(|e| bad("bad_state", format!("sv is not base64: {e}")))?;
            return Ok(DocState {
                yjs,
                ..DocState::default()
            });
        }
        Ok(DocState::default())
    }
}

/// A seq from a header or the query: a decimal number.
fn parse_seq(what: &str, text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        bad(
            "bad_seq",
            format!("{what} must be a log seq (a number), not {text:?}"),
        )
    })
}

crate::token_param!(FeedQuery);

/// Counts a request against its principal's rate limits (the token's subject, or the address
/// without authentication).
pub(crate) fn within_rate<P, N>(state: &ServerState, call: &DocCall<P, N>) -> Result<(), ApiError> {
    if state
        .http_rate
        .request(&rate_key(&call.principal, call.remote))
    {
        Ok(())
    } else {
        Err(ApiError::RateLimited)
    }
}

/// Whose budget an HTTP request spends.
pub(crate) fn rate_key(principal: &Principal, remote: SocketAddr) -> String {
    match principal.subject() {
        Some(subject) => format!("sub:{subject}"),
        None => format!("ip:{}", remote.ip()),
    }
}

/// The head of the document's log as the store has it, refusing a `after` beyond it and a
/// deleted document.
pub(crate) async fn check_after(
    state: &ServerState,
    doc: &DocId,
    after: u64,
) -> Result<(), ApiError> {
    let meta = state.store.document(doc).await?;
    if meta.as_ref().is_some_and(|m| m.deleted_at_ms.is_some()) {
        return Err(ApiError::NotFound);
    }
    let head = meta.map_or(0, |m| m.head_seq);
    if after > head {
        return Err(bad(
            "after_beyond_head",
            format!("after = {after} but the document's log ends at {head}"),
        ));
    }
    Ok(())
}

/// The HTTP readers' encoding of room messages: presence as a `presence` event, committed
/// entries (with their seqs) as `delta` events; nothing else (their catch-up comes from the
/// store, and they send nothing the room could refuse).
#[derive(Debug)]
pub(crate) struct FeedEncoder;

impl Encoder for FeedEncoder {
    fn encode(&self, msg: &ServerMsg, _awareness: Option<AwarenessId>) -> Encoded {
        match msg {
            ServerMsg::Presence {
                peer,
                state,
                typing,
                ..
            } => Encoded::frames(vec![Event::presence(*peer, state, *typing).frame().clone()]),
            _ => Encoded::default(),
        }
    }

    fn encode_entry(&self, doc: &DocId, seq: u64, delta: &Delta) -> Option<Bytes> {
        let frame = ServerMsg::Delta {
            doc: doc.clone(),
            delta: delta.clone(),
        }
        .encode();
        Some(Event::delta(seq, &frame, &delta.yjs).frame().clone())
    }
}

/// A reader in a room: its outbox, its closer, and how to leave.
pub(crate) struct Follower {
    id: PeerId,
    room: RoomSender,
    rx: OutboxReceiver,
    closer: Arc<Closer>,
    /// The room's head when the reader joined: every later entry comes through `rx`.
    head: u64,
    /// The entries after the reader's `after` up to `head`, if the room still held them.
    recent: Option<Vec<Bytes>>,
    _slot: Slot,
}

impl Follower {
    /// Joins the document's room as a reader (holding a connection slot), `presence` to get
    /// the others' presence too; `after` lets the room answer from its window of recent
    /// entries.
    pub(crate) async fn join(
        state: &Arc<ServerState>,
        principal: &Principal,
        doc: &DocId,
        presence: bool,
        after: Option<u64>,
    ) -> Result<Follower, ApiError> {
        if state.shutdown.is_cancelled() {
            return Err(ApiError::Busy {
                retry_after: Duration::from_secs(1),
            });
        }
        // HTTP readers hold a connection slot, like WebSockets.
        let permit = state
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy {
                retry_after: Duration::from_secs(1),
            })?;
        let slot = Slot::new(permit, Gauge::up(&state.metrics, |m| &m.http_readers));
        let limits = &state.config.limits;
        let (tx, rx) = outbox(limits.outbox_frames, limits.outbox_bytes);
        let closer = Arc::new(Closer::default());
        let id = PeerId(state.next_peer.fetch_add(1, Relaxed));
        let peer = PeerHandle {
            id,
            replica: None,
            kind: PeerKind::Feed,
            encoder: &FeedEncoder,
            author: principal.subject().map(Arc::from),
            outbox: tx,
            closer: closer.clone(),
            budget: SyncBudget::new(limits.sync_bytes_per_second, limits.sync_byte_burst),
        };
        let (reply, following) = oneshot::channel();
        let cmd = RoomCmd::Follow {
            peer,
            presence,
            after,
            reply,
        };
        let room = join_room(&state.rooms, doc, cmd)
            .await
            .ok_or(Internal::RoomStopped)?;
        let following = following.await.map_err(|_| Internal::RoomStopped)??;
        Ok(Follower {
            id,
            room,
            rx,
            closer,
            head: following.head,
            recent: following.recent,
            _slot: slot,
        })
    }

    /// Fires when the room drops this reader (a slow consumer's full outbox).
    pub(crate) fn closer(&self) -> Arc<Closer> {
        self.closer.clone()
    }

    pub(crate) async fn leave(self) {
        let _ = self.room.send(RoomCmd::Unsubscribe { peer: self.id }).await;
    }
}

/// The `sync` event: what a reader holding `known` lacks, as of the store's head.
async fn sync_event(
    state: &Arc<ServerState>,
    doc: &DocId,
    known: DocState,
    peer: Option<u64>,
) -> Result<(Event, u64), ApiError> {
    let (store, replica, doc) = (state.store.clone(), state.replica, doc.clone());
    with_rebuild_slot(state, async move {
        let loaded = store.load(&doc, replica).await?;
        tokio::task::spawn_blocking(move || {
            let (delta, state, seq) = match loaded {
                Some(l) => {
                    let delta = l
                        .document
                        .diff_since(&known)
                        .map_err(|e| bad("bad_state", format!("state cannot be compared: {e}")))?;
                    (delta, l.document.state(), l.head_seq)
                }
                None => (Delta::default(), DocState::default(), 0),
            };
            let update = delta.yjs.clone();
            let frame = ServerMsg::Sync {
                doc: doc.clone(),
                delta,
                state,
            }
            .encode();
            Ok((Event::sync(&doc, seq, &frame, &update, peer), seq))
        })
        .await
        .map_err(|source| {
            ApiError::from(Internal::Task {
                what: "the sync",
                source,
            })
        })?
    })
    .await
}

/// The log entries after `after` up to `until`, as `delta` events, at most `limit`.
/// `Ok(None)` when retention dropped some of them (the reader needs a `sync`).
async fn log_events(
    state: &ServerState,
    doc: &DocId,
    after: u64,
    until: u64,
    limit: u32,
) -> Result<Option<Vec<Event>>, ApiError> {
    if after >= until {
        return Ok(Some(Vec::new()));
    }
    let want = u32::try_from(until - after).unwrap_or(u32::MAX).min(limit);
    let entries = match state.store.read_log(doc, after + 1, want).await {
        Ok(entries) => entries,
        Err(ReadError::Truncated { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries.into_iter().filter(|e| e.seq <= until) {
        let delta = entry.delta(doc)?;
        let update = delta.yjs.clone();
        let frame = ServerMsg::Delta {
            doc: doc.clone(),
            delta,
        }
        .encode();
        events.push(Event::delta(entry.seq, &frame, &update));
    }
    Ok(Some(events))
}

/// `GET /v1/events/{doc}`: the document as Server-Sent Events.
pub(crate) async fn events(
    State(state): State<Arc<ServerState>>,
    call: DocCall<FeedQuery, NeedsRead>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    within_rate(&state, &call)?;
    let (principal, doc, query) = (call.principal, call.doc, call.params);
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let after = match (last_event_id, query.after.as_deref()) {
        (Some(id), _) => Some(parse_seq("Last-Event-ID", id)?),
        (None, Some(after)) => Some(parse_seq("after", after)?),
        (None, None) => None,
    };
    let known = query.known()?;
    if let Some(after) = after {
        check_after(&state, &doc, after).await?;
    }
    let follower = Follower::join(&state, &principal, &doc, true, after).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(SSE_CHANNEL);
    tokio::spawn(pump(state.clone(), doc, follower, after, known, tx));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Where a follower's events go: an SSE body here, a gRPC stream in `crate::grpc`.
pub(crate) trait EventSink {
    /// Sends `events` in order; `false` once the reader has gone.
    fn send(&mut self, events: Vec<Event>) -> impl Future<Output = bool> + Send;
    /// Nothing was sent for `Streams::keep_alive`; `false` once the reader has gone.
    fn keep_alive(&mut self) -> impl Future<Output = bool> + Send;
}

/// An SSE body: the events' frames, cut into chunks by the caller.
impl EventSink for mpsc::Sender<Bytes> {
    async fn send(&mut self, events: Vec<Event>) -> bool {
        let chunk = match events.as_slice() {
            [one] => one.frame().clone(),
            many => Bytes::from(
                many.iter()
                    .map(|e| &e.frame()[..])
                    .collect::<Vec<_>>()
                    .concat(),
            ),
        };
        mpsc::Sender::send(self, chunk).await.is_ok()
    }

    async fn keep_alive(&mut self) -> bool {
        mpsc::Sender::send(self, Bytes::from_static(KEEP_ALIVE))
            .await
            .is_ok()
    }
}

/// Why a followed stream ended (the reader leaving is `None` instead).
#[derive(Debug)]
pub(crate) enum FeedEnd {
    /// The catch-up could not be read (storage, rebuild slots).
    Failed(ApiError),
    /// The reader fell behind: its outbox filled and the room dropped it.
    SlowConsumer,
    /// The room stopped, or closed the reader for another reason (deleted, store failure).
    DocumentUnavailable { room_stopped: bool },
    /// `Streams::sse_lifetime` is over.
    Lifetime,
    /// The server is shutting down.
    Shutdown,
}

impl FeedEnd {
    /// The SSE `close` event that says so.
    fn event(&self) -> Event {
        match self {
            FeedEnd::Failed(e) => Event::close("unavailable", &e.to_string()),
            FeedEnd::SlowConsumer => Event::close(
                "slow_consumer",
                "the stream fell behind; reconnect with Last-Event-ID",
            ),
            FeedEnd::DocumentUnavailable { room_stopped: true } => Event::close(
                "document_unavailable",
                "the room stopped; reconnect with Last-Event-ID",
            ),
            FeedEnd::DocumentUnavailable {
                room_stopped: false,
            } => Event::close(
                "document_unavailable",
                "the document is unavailable (deleted, or the store failed); reconnect to find out",
            ),
            FeedEnd::Lifetime => Event::close(
                "lifetime",
                "the stream's lifetime is over; reconnect with Last-Event-ID",
            ),
            FeedEnd::Shutdown => Event::close(
                "shutdown",
                "the server is restarting; reconnect with Last-Event-ID",
            ),
        }
    }
}

/// Writes one SSE stream: the catch-up (a `sync`, or the log after `after`), then live
/// events, keep-alives, and a `close` event when it ends.
async fn pump(
    state: Arc<ServerState>,
    doc: DocId,
    mut follower: Follower,
    after: Option<u64>,
    known: DocState,
    mut tx: mpsc::Sender<Bytes>,
) {
    let end = follow(&state, &doc, &mut follower, after, known, &mut tx).await;
    if let Some(end) = end {
        let _ = tx.send(end.event().frame().clone()).await;
    }
    follower.leave().await;
}

/// Follows the document into `sink`: the catch-up (a `sync`, or the log after `after`), then
/// live entries, each seq once and in order; returns why it ended (`None`: the reader left).
pub(crate) async fn follow(
    state: &Arc<ServerState>,
    doc: &DocId,
    follower: &mut Follower,
    after: Option<u64>,
    known: DocState,
    sink: &mut impl EventSink,
) -> Option<FeedEnd> {
    let streams = &state.config.streams;
    let peer = Some(follower.id.0);
    let mut cursor = match after {
        None => match sync_event(state, doc, known, peer).await {
            Ok((event, seq)) => {
                sink.send(vec![event]).await.then_some(())?;
                seq
            }
            Err(e) => return Some(FeedEnd::Failed(e)),
        },
        // The room still held what the reader missed: as it was encoded for everyone.
        Some(after) if follower.recent.is_some() => {
            let recent = follower.recent.take().unwrap_or_default();
            for chunk in recent.chunks(64) {
                let events = chunk.iter().cloned().map(Event::from_frame).collect();
                sink.send(events).await.then_some(())?;
            }
            follower.head.max(after)
        }
        Some(after) => {
            let mut cursor = after;
            while cursor < follower.head {
                match log_events(
                    state,
                    doc,
                    cursor,
                    follower.head,
                    streams.max_entries_per_read,
                )
                .await
                {
                    Ok(Some(events)) if !events.is_empty() => {
                        for e in events {
                            cursor = e.seq().unwrap_or(cursor);
                            sink.send(vec![e]).await.then_some(())?;
                        }
                    }
                    Ok(Some(_)) => break,
                    // Retention dropped what the reader lacks: a full sync instead.
                    Ok(None) => match sync_event(state, doc, DocState::default(), peer).await {
                        Ok((event, seq)) => {
                            sink.send(vec![event]).await.then_some(())?;
                            cursor = seq;
                        }
                        Err(e) => return Some(FeedEnd::Failed(e)),
                    },
                    Err(e) => return Some(FeedEnd::Failed(e)),
                }
            }
            cursor.max(after)
        }
    };
    let deadline = Instant::now() + streams.sse_lifetime;
    let quiet = tokio::time::sleep(streams.keep_alive);
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            msg = follower.rx.recv() => {
                let Some(first) = msg else {
                    // The room dropped this reader: say why, if it said (a slow consumer's
                    // outbox goes with it, so both can be seen at once).
                    return Some(match follower.closer.code() {
                        Some(code) => closed_end(code),
                        None => FeedEnd::DocumentUnavailable { room_stopped: true },
                    });
                };
                // Everything queued goes out at once (one write for many events).
                let (mut events, mut bytes) = (Vec::new(), 0);
                let mut next = Some(first);
                while let Some(Message::Binary(frame)) = next {
                    let event = Event::from_frame(frame);
                    match event.seq() {
                        Some(seq) if seq <= cursor => {}
                        Some(seq) => {
                            cursor = seq;
                            bytes += event.frame().len();
                            events.push(event);
                        }
                        None => {
                            bytes += event.frame().len();
                            events.push(event);
                        }
                    }
                    if bytes >= SSE_CHUNK_BYTES {
                        break;
                    }
                    next = follower.rx.try_recv();
                }
                if !events.is_empty() {
                    sink.send(events).await.then_some(())?;
                    quiet.as_mut().reset(Instant::now() + streams.keep_alive);
                }
            }
            () = &mut quiet => {
                sink.keep_alive().await.then_some(())?;
                quiet.as_mut().reset(Instant::now() + streams.keep_alive);
            }
            () = tokio::time::sleep_until(deadline) => return Some(FeedEnd::Lifetime),
            code = follower.closer.closed() => return Some(closed_end(code)),
            () = state.shutdown.cancelled() => return Some(FeedEnd::Shutdown),
        }
    }
}

/// Why a stream its room closed with `code` ended.
pub(crate) fn closed_end(code: CloseCode) -> FeedEnd {
    match code {
        CloseCode::SlowConsumer => FeedEnd::SlowConsumer,
        _ => FeedEnd::DocumentUnavailable {
            room_stopped: false,
        },
    }
}

/// `GET /v1/updates/{doc}?after=<seq>&wait_ms=<n>`: long polling. Answers at once with the
/// entries after `after` if there are any, else waits for one up to `wait_ms` (capped) and
/// answers 204. Without `after`, answers a `sync` event.
pub(crate) async fn updates(
    State(state): State<Arc<ServerState>>,
    call: DocCall<FeedQuery, NeedsRead>,
) -> Result<Response, ApiError> {
    within_rate(&state, &call)?;
    let (principal, doc, query) = (call.principal, call.doc, call.params);
    let streams = &state.config.streams;
    let wait = query
        .wait_ms
        .map_or(streams.max_poll_wait, Duration::from_millis)
        .min(streams.max_poll_wait);
    let known = query.known()?;
    let Some(after) = query.after.as_deref() else {
        let (event, seq) = sync_event(&state, &doc, known, None).await?;
        return Ok(poll_answer(&[event], seq));
    };
    let after = parse_seq("after", after)?;
    check_after(&state, &doc, after).await?;
    let limit = streams.max_entries_per_read;
    let follower = Follower::join(&state, &principal, &doc, false, Some(after)).await?;
    poll(&state, &doc, follower, after, wait, limit).await
}

async fn poll(
    state: &Arc<ServerState>,
    doc: &DocId,
    mut follower: Follower,
    after: u64,
    wait: Duration,
    limit: u32,
) -> Result<Response, ApiError> {
    let head = follower.head;
    let result = async {
        if head > after {
            // From the room's window, as encoded once for every reader, when it holds them.
            if let Some(recent) = follower.recent.take() {
                let events: Vec<Event> = recent
                    .into_iter()
                    .take(limit as usize)
                    .map(Event::from_frame)
                    .collect();
                let next = events.last().and_then(Event::seq).unwrap_or(after);
                return Ok(poll_answer(&events, next));
            }
            return match log_events(state, doc, after, head, limit).await? {
                Some(events) => {
                    let next = events.last().and_then(Event::seq).unwrap_or(after);
                    Ok(poll_answer(&events, next))
                }
                None => Err(ApiError::Gone {
                    code: "resync",
                    message: format!(
                        "the log no longer holds the entries after {after}; poll without after for a sync"
                    ),
                }),
            };
        }
        let deadline = Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let msg = tokio::select! {
                msg = follower.rx.recv() => msg,
                () = tokio::time::sleep_until(deadline) => None,
                _ = follower.closer.closed() => None,
                () = state.shutdown.cancelled() => None,
            };
            let Some(Message::Binary(frame)) = msg else { break };
            let event = Event::from_frame(frame);
            if event.seq().is_some_and(|s| s > after) {
                events.push(event);
                // Take what else is already queued, then answer.
                while let Some(Message::Binary(frame)) = follower.rx.try_recv() {
                    if events.len() >= limit as usize {
                        break;
                    }
                    events.push(Event::from_frame(frame));
                }
                break;
            }
        }
        Ok(match events.last().and_then(Event::seq) {
            Some(next) => poll_answer(&events, next),
            None => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                r.headers_mut()
                    .insert("lattice-next-after", HeaderValue::from(after));
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
        })
    }
    .await;
    follower.leave().await;
    result
}

/// A long poll's answer: `{"events": [...], "next_after": seq}`.
fn poll_answer(events: &[Event], next_after: u64) -> Response {
    let mut body =
        Vec::with_capacity(64 + events.iter().map(|e| e.data().len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.data());
    }
    body.extend_from_slice(format!("],\"next_after\":{next_after}}}").as_bytes());
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("lattice-next-after", HeaderValue::from(next_after));
    r
}
