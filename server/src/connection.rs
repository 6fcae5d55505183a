//! One task per WebSocket connection, plus a writer task that drains its bounded outbox.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lattice_engine::protocol::{ClientMsg, DecodeError, ErrorCode, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::sync::{Access, PeerId};
use lattice_engine::{DocId, ReplicaId};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::ServerState;
use crate::auth::{AuthError, Principal};
use crate::close::CloseCode;
use crate::metrics::CloseKind;
use crate::rooms::{Closer, PeerHandle, PeerKind, RoomCmd, RoomSender};

pub(crate) fn close_kind(code: CloseCode) -> CloseKind {
    match code {
        CloseCode::Normal => CloseKind::Normal,
        CloseCode::GoingAway => CloseKind::Shutdown,
        CloseCode::SlowConsumer => CloseKind::SlowConsumer,
        CloseCode::IdleTimeout => CloseKind::IdleTimeout,
        CloseCode::RateLimited => CloseKind::RateLimited,
        CloseCode::FrameTooLarge => CloseKind::FrameTooLarge,
        CloseCode::StoreFailure => CloseKind::StoreFailure,
        CloseCode::UnsupportedData
        | CloseCode::Protocol
        | CloseCode::UnsupportedVersion
        | CloseCode::HelloTimeout => CloseKind::Protocol,
        CloseCode::Unauthorized | CloseCode::TokenExpired | CloseCode::Forbidden => CloseKind::Auth,
    }
}

pub(crate) fn close_message(code: CloseCode) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.code(),
        reason: code.reason().into(),
    }))
}

/// Drains the outbox into the socket, one flush per batch of queued frames, and sends
/// WebSocket pings. Ends on a close frame, a closer request, or a dead socket.
pub(crate) async fn writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    closer: Arc<Closer>,
    ping_interval: std::time::Duration,
) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.reset();
    loop {
        tokio::select! {
            biased;
            code = closer.closed() => {
                let _ = sink.send(close_message(code)).await;
                break;
            }
            msg = rx.recv() => {
                let Some(mut msg) = msg else { break };
                let mut ok = true;
                loop {
                    let is_close = matches!(msg, Message::Close(_));
                    if sink.feed(msg).await.is_err() {
                        ok = false;
                        break;
                    }
                    if is_close {
                        ok = false;
                        break;
                    }
                    match rx.try_recv() {
                        Ok(next) => msg = next,
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() || !ok {
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
}

/// One subscription: the document's room and what this connection may do there.
struct Sub {
    room: RoomSender,
    access: Access,
}

struct Conn {
    state: Arc<ServerState>,
    peer: PeerHandle,
    subs: HashMap<DocId, Sub>,
    /// Who this connection is; [`Principal::open`] until the hello authenticates (nothing but
    /// the hello is read before that).
    principal: Principal,
    /// The peer's address, for the failed-authentication throttle.
    ip: IpAddr,
    /// A token from the upgrade request (`Authorization: Bearer` or `?token=`); a token in the
    /// hello wins over it.
    upgrade_token: Option<String>,
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
}

/// How the main loop ended.
enum Exit {
    Close(CloseCode),
    /// The closer already fired (slow consumer, store failure): the writer sends the frame.
    Closed(CloseCode),
    Shutdown,
    Gone,
}

pub(crate) fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

/// The per-connection message rate (token bucket).
pub(crate) fn message_limiter(limits: &crate::config::Limits) -> DefaultDirectRateLimiter {
    RateLimiter::direct(
        Quota::per_second(nz(limits.messages_per_second)).allow_burst(nz(limits.message_burst)),
    )
}

/// The per-connection byte rate. Its burst is at least one maximal frame, so `check_n` only
/// ever answers "not now", never "never".
pub(crate) fn byte_limiter(limits: &crate::config::Limits) -> DefaultDirectRateLimiter {
    let burst = limits
        .byte_burst
        .max(u32::try_from(limits.max_frame_bytes).unwrap_or(u32::MAX));
    RateLimiter::direct(Quota::per_second(nz(limits.bytes_per_second)).allow_burst(nz(burst)))
}

/// Whether a frame of `len` bytes is within both rates; `false` means close with 4029.
pub(crate) fn within_rate(
    messages: &DefaultDirectRateLimiter,
    bytes: &DefaultDirectRateLimiter,
    len: usize,
) -> bool {
    let len = nz(u32::try_from(len).unwrap_or(u32::MAX));
    let bytes_ok = bytes.check_n(len).is_ok_and(|r| r.is_ok());
    messages.check().is_ok() && bytes_ok
}

/// Subscribes `cmd`'s peer to `doc`'s room, starting the room if needed. A room may be
/// unloading at this very moment; a second room starts if so. `None` if neither accepted.
pub(crate) async fn join_room(
    state: &Arc<ServerState>,
    doc: &DocId,
    mut cmd: RoomCmd,
) -> Option<RoomSender> {
    let mut room = state.rooms.get_or_start(state, doc);
    for _ in 0..2 {
        match room.send(cmd).await {
            Ok(()) => return Some(room),
            Err(mpsc::error::SendError(back)) => {
                cmd = back;
                room = state.rooms.get_or_start(state, doc);
            }
        }
    }
    None
}

/// How long a closing connection keeps reading what its peer still sends, waiting for the
/// peer's close frame (see [`Outbound::finish`]).
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The sending half of a connection: a bounded outbox, the closer rooms use to close it, and
/// the writer task that drains both into the socket.
pub(crate) struct Outbound {
    pub outbox: mpsc::Sender<Message>,
    pub closer: Arc<Closer>,
    writer: tokio::task::JoinHandle<()>,
}

impl Outbound {
    pub(crate) fn start(state: &ServerState, sink: SplitSink<WebSocket, Message>) -> Outbound {
        let (outbox, rx) = mpsc::channel(state.config.limits.outbox_frames);
        let closer = Arc::new(Closer::default());
        let writer = tokio::spawn(
            writer(
                sink,
                rx,
                closer.clone(),
                state.config.heartbeat.ping_interval,
            )
            .in_current_span(),
        );
        Outbound {
            outbox,
            closer,
            writer,
        }
    }

    /// The connection is done (every other sender of its outbox dropped): counts the close,
    /// lets the writer send what is queued (within the shutdown deadline), reads what the peer
    /// still sends until its close (within [`CLOSE_DRAIN`]), and frees the slot.
    ///
    /// Reading to the end matters: a socket closed with unread bytes in the kernel's receive
    /// buffer is reset (RST), and the reset can destroy the close frame and acks just sent
    /// before the peer reads them. The socket closes only when `stream` is dropped here.
    pub(crate) async fn finish(
        self,
        state: &ServerState,
        code: CloseCode,
        permit: OwnedSemaphorePermit,
        mut stream: SplitStream<WebSocket>,
    ) {
        state.metrics.closed(close_kind(code));
        drop(self.outbox);
        let _ = timeout(state.config.shutdown_deadline, self.writer).await;
        let drain = async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = timeout(CLOSE_DRAIN.min(state.config.shutdown_deadline), drain).await;
        drop(stream);
        state.metrics.connections.fetch_sub(1, Relaxed);
        drop(permit);
        debug!(code = code.code(), "connection closed");
    }
}

pub(crate) async fn serve_socket(
    state: Arc<ServerState>,
    socket: WebSocket,
    permit: OwnedSemaphorePermit,
    ip: IpAddr,
    upgrade_token: Option<String>,
) {
    let id = PeerId(state.next_peer.fetch_add(1, Relaxed));
    let span = info_span!("conn", peer = id.0);
    async move {
        state.metrics.connections.fetch_add(1, Relaxed);
        let limits = &state.config.limits;
        let (sink, mut stream) = socket.split();
        let outbound = Outbound::start(&state, sink);
        let (outbox, closer) = (outbound.outbox.clone(), outbound.closer.clone());
        let mut conn = Conn {
            peer: PeerHandle {
                id,
                replica: None,
                kind: PeerKind::Native,
                outbox,
                closer: closer.clone(),
            },
            subs: HashMap::new(),
            principal: Principal::open(),
            ip,
            upgrade_token,
            messages: message_limiter(limits),
            bytes: byte_limiter(limits),
            state: state.clone(),
        };
        let exit = conn.run(&mut stream).await;
        let code = match exit {
            Exit::Close(code) => {
                conn.send_close(code).await;
                code
            }
            Exit::Closed(code) => code,
            Exit::Shutdown => {
                conn.flush_rooms().await;
                conn.send_close(CloseCode::GoingAway).await;
                CloseCode::GoingAway
            }
            Exit::Gone => {
                closer.close(CloseCode::Normal);
                CloseCode::Normal
            }
        };
        conn.leave_all().await;
        drop(conn);
        outbound.finish(&state, code, permit, stream).await;
    }
    .instrument(span)
    .await;
}

impl Conn {
    /// Queues a message for this connection. A full outbox closes it as a slow consumer.
    fn send(&self, msg: &ServerMsg) {
        let frame = Message::Binary(Bytes::from(msg.encode()));
        if let Err(mpsc::error::TrySendError::Full(_)) = self.peer.outbox.try_send(frame) {
            self.peer.closer.close(CloseCode::SlowConsumer);
        }
    }

    fn error(
        &self,
        code: ErrorCode,
        message: impl Into<String>,
        doc: Option<DocId>,
        seq: Option<u64>,
    ) {
        self.send(&ServerMsg::Error {
            code,
            message: message.into(),
            doc,
            seq,
        });
    }

    /// Queues a close frame behind everything already queued, so errors and acks go first.
    async fn send_close(&self, code: CloseCode) {
        let queued = timeout(
            self.state.config.shutdown_deadline,
            self.peer.outbox.send(close_message(code)),
        )
        .await;
        if !matches!(queued, Ok(Ok(()))) {
            self.peer.closer.close(code);
        }
    }

    async fn run(&mut self, stream: &mut SplitStream<WebSocket>) -> Exit {
        let limits = self.state.config.limits.clone();
        // Handshake: the first frame must be `hello`, within the deadline.
        let first = tokio::select! {
            r = timeout(limits.hello_timeout, stream.next()) => r,
            _ = self.state.shutdown.cancelled() => return Exit::Shutdown,
        };
        let frame = match first {
            Err(_) => {
                self.error(
                    ErrorCode::MalformedMessage,
                    "no hello within the deadline",
                    None,
                    None,
                );
                return Exit::Close(CloseCode::HelloTimeout);
            }
            Ok(None) | Ok(Some(Err(_))) => return Exit::Gone,
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(Message::Close(_)))) => return Exit::Gone,
            Ok(Some(Ok(_))) => {
                self.error(
                    ErrorCode::MalformedMessage,
                    "binary MessagePack frames only",
                    None,
                    None,
                );
                return Exit::Close(CloseCode::UnsupportedData);
            }
        };
        // Until the hello authenticates, only a small first frame is read.
        let hello_limit = limits.max_hello_bytes.min(limits.max_frame_bytes);
        match ClientMsg::decode(&frame, hello_limit) {
            Ok(ClientMsg::Hello { replica, token, .. }) => {
                let token = token.or_else(|| self.upgrade_token.take());
                match self.state.auth.authenticate(token.as_deref(), self.ip) {
                    Ok(principal) => self.principal = principal,
                    Err(e) => return self.refuse(&e),
                }
                self.peer.replica = replica.and_then(ReplicaId::new);
                self.send(&ServerMsg::Welcome {
                    protocol: PROTOCOL_VERSION,
                    server: format!("lattice/{}", crate::VERSION),
                });
            }
            Ok(_) => {
                self.error(
                    ErrorCode::MalformedMessage,
                    "the first message must be hello",
                    None,
                    None,
                );
                return Exit::Close(CloseCode::Protocol);
            }
            Err(e) => {
                self.error(e.code(), e.to_string(), None, None);
                return Exit::Close(match e {
                    DecodeError::UnsupportedVersion { .. } => CloseCode::UnsupportedVersion,
                    DecodeError::FrameTooLarge { .. } => CloseCode::FrameTooLarge,
                    _ => CloseCode::Protocol,
                });
            }
        }

        // The token's expiry is enforced during the session, not only at the handshake.
        let time_left = self.principal.time_left();
        let expiry = async move {
            match time_left {
                Some(left) => tokio::time::sleep(left).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            let next = tokio::select! {
                biased;
                code = self.peer.closer.closed() => return Exit::Closed(code),
                _ = self.state.shutdown.cancelled() => return Exit::Shutdown,
                () = &mut expiry => {
                    debug!("token expired during the session");
                    self.error(ErrorCode::Unauthorized, "the token has expired", None, None);
                    return Exit::Close(CloseCode::TokenExpired);
                }
                r = timeout(self.state.config.heartbeat.idle_timeout, stream.next()) => r,
            };
            let frame = match next {
                Err(_) => {
                    self.error(ErrorCode::MalformedMessage, "idle timeout", None, None);
                    return Exit::Close(CloseCode::IdleTimeout);
                }
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Exit::Gone,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Text(_)))) => {
                    self.error(
                        ErrorCode::MalformedMessage,
                        "binary MessagePack frames only",
                        None,
                        None,
                    );
                    return Exit::Close(CloseCode::UnsupportedData);
                }
                Ok(Some(Ok(Message::Binary(b)))) => b,
            };
            if frame.len() > limits.max_frame_bytes {
                self.error(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame is {} bytes, the limit is {}",
                        frame.len(),
                        limits.max_frame_bytes
                    ),
                    None,
                    None,
                );
                return Exit::Close(CloseCode::FrameTooLarge);
            }
            if !within_rate(&self.messages, &self.bytes, frame.len()) {
                self.error(
                    ErrorCode::RateLimited,
                    "rate limit exceeded; reconnect with backoff",
                    None,
                    None,
                );
                return Exit::Close(CloseCode::RateLimited);
            }
            match ClientMsg::decode(&frame, limits.max_frame_bytes) {
                Ok(msg) => {
                    if let Some(exit) = self.handle(msg).await {
                        return exit;
                    }
                }
                Err(e @ DecodeError::UnknownKind { .. }) => {
                    // Forward compatibility: a newer client's message is refused, not fatal.
                    self.error(e.code(), e.to_string(), None, None);
                }
                Err(e) => {
                    warn!(error = %e, "malformed frame");
                    self.error(e.code(), e.to_string(), None, None);
                    return Exit::Close(match e {
                        DecodeError::UnsupportedVersion { .. } => CloseCode::UnsupportedVersion,
                        _ => CloseCode::Protocol,
                    });
                }
            }
        }
    }

    async fn handle(&mut self, msg: ClientMsg) -> Option<Exit> {
        match msg {
            ClientMsg::Hello { .. } => {
                self.error(
                    ErrorCode::MalformedMessage,
                    "hello was already received",
                    None,
                    None,
                );
            }
            ClientMsg::Ping { nonce } => self.send(&ServerMsg::Pong { nonce }),
            ClientMsg::Subscribe { doc, state } => {
                // Checked before anything else, so the answer is the same whether or not the
                // document exists.
                let Some(access) = self.principal.access(&doc) else {
                    debug!(doc = %doc, "subscribe refused: not covered by the token");
                    self.error(ErrorCode::Forbidden, "not permitted", Some(doc), None);
                    return None;
                };
                if !self.subs.contains_key(&doc)
                    && self.subs.len() >= self.state.config.limits.max_docs_per_connection
                {
                    self.error(
                        ErrorCode::TooManyDocuments,
                        format!(
                            "at most {} documents per connection",
                            self.state.config.limits.max_docs_per_connection
                        ),
                        Some(doc),
                        None,
                    );
                    return None;
                }
                let cmd = RoomCmd::Subscribe {
                    peer: self.peer.clone(),
                    access,
                    state,
                };
                if let Some(room) = join_room(&self.state, &doc, cmd).await {
                    self.subs.insert(doc, Sub { room, access });
                    return None;
                }
                self.error(
                    ErrorCode::Internal,
                    "document unavailable, retry",
                    Some(doc),
                    None,
                );
            }
            ClientMsg::Unsubscribe { doc } => {
                if let Some(sub) = self.subs.remove(&doc) {
                    let _ = sub
                        .room
                        .send(RoomCmd::Unsubscribe { peer: self.peer.id })
                        .await;
                }
            }
            ClientMsg::Delta { doc, seq, delta } => match self.subs.get(&doc) {
                // Read-only writes stop here; the room refuses them too (defence in depth).
                Some(sub) if sub.access == Access::Read => self.error(
                    ErrorCode::Forbidden,
                    "read-only access: the delta was refused",
                    Some(doc),
                    Some(seq),
                ),
                Some(sub) => {
                    let cmd = RoomCmd::Delta {
                        peer: self.peer.id,
                        seq,
                        delta,
                        author: self.principal.subject().map(str::to_string),
                    };
                    if sub.room.send(cmd).await.is_err() {
                        return Some(Exit::Close(CloseCode::StoreFailure));
                    }
                }
                None => self.error(
                    ErrorCode::NotSubscribed,
                    "subscribe before sending deltas",
                    Some(doc),
                    Some(seq),
                ),
            },
            // Presence is allowed on read-only subscriptions: it is ephemeral, never stored,
            // and lets readers show up as viewers (docs/security.md).
            ClientMsg::Presence { doc, state, typing } => match self.subs.get(&doc) {
                Some(sub) => {
                    let cmd = RoomCmd::Presence {
                        peer: self.peer.id,
                        state,
                        typing,
                        awareness: None,
                    };
                    let _ = sub.room.send(cmd).await;
                }
                None => self.error(
                    ErrorCode::NotSubscribed,
                    "subscribe before publishing presence",
                    Some(doc),
                    None,
                ),
            },
        }
        None
    }

    /// Waits (within the shutdown deadline) until every subscribed room has committed and
    /// acknowledged what it holds, so the client gets its acks before the close.
    async fn flush_rooms(&self) {
        let mut waits = Vec::new();
        for sub in self.subs.values() {
            let (reply, rx) = oneshot::channel();
            if sub.room.send(RoomCmd::Flush { reply }).await.is_ok() {
                waits.push(rx);
            }
        }
        let _ = timeout(
            self.state.config.shutdown_deadline,
            futures_util::future::join_all(waits),
        )
        .await;
    }

    async fn leave_all(&mut self) {
        for (_, sub) in self.subs.drain() {
            let _ = sub
                .room
                .send(RoomCmd::Unsubscribe { peer: self.peer.id })
                .await;
        }
    }

    /// A hello that did not authenticate: an error message, then a close.
    fn refuse(&self, e: &AuthError) -> Exit {
        match e {
            AuthError::Throttled { .. } => {
                debug!(ip = %self.ip, "hello refused: too many failed attempts");
                self.error(ErrorCode::RateLimited, e.to_string(), None, None);
                Exit::Close(CloseCode::RateLimited)
            }
            AuthError::Forbidden { .. } => {
                self.error(ErrorCode::Forbidden, e.to_string(), None, None);
                Exit::Close(CloseCode::Forbidden)
            }
            _ => {
                info!(ip = %self.ip, error = %e, "hello refused: not authenticated");
                self.error(ErrorCode::Unauthorized, e.to_string(), None, None);
                Exit::Close(CloseCode::Unauthorized)
            }
        }
    }
}
