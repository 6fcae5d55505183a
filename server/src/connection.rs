//! One task per WebSocket connection, plus a writer task that drains its bounded outbox.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lattice_engine::protocol::{ClientMsg, DecodeError, ErrorCode, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::sync::{Access, PeerId};
use lattice_engine::{DocId, ReplicaId};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{AuthError, Principal};
use crate::close::CloseCode;
use crate::metrics::{CloseKind, Metrics};
use crate::peer::{Closer, PeerHandle, PeerKind, SyncBudget};
use crate::rooms::{RoomCmd, RoomSender};
use crate::state::ServerState;
use crate::transport::first_message::Tripped;
use crate::transport::outbox::{Message, Outbox, OutboxReceiver, SendError, outbox};
use crate::transport::upgrade::Socket;

pub(crate) fn close_kind(code: CloseCode) -> CloseKind {
    match code {
        CloseCode::Normal => CloseKind::Normal,
        CloseCode::GoingAway => CloseKind::Shutdown,
        CloseCode::SlowConsumer => CloseKind::SlowConsumer,
        CloseCode::IdleTimeout => CloseKind::IdleTimeout,
        CloseCode::RateLimited | CloseCode::TryAgainLater => CloseKind::RateLimited,
        CloseCode::FrameTooLarge => CloseKind::FrameTooLarge,
        CloseCode::DocumentUnavailable => CloseKind::DocumentUnavailable,
        CloseCode::UnsupportedData
        | CloseCode::Protocol
        | CloseCode::UnsupportedVersion
        | CloseCode::HelloTimeout => CloseKind::Protocol,
        CloseCode::Unauthorized | CloseCode::TokenExpired | CloseCode::Forbidden => CloseKind::Auth,
    }
}

pub(crate) fn close_message(code: CloseCode) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.code().into(),
        reason: code.reason().into(),
    }))
}

pub(crate) type Sink = SplitSink<Socket, Message>;
pub(crate) type Stream = SplitStream<Socket>;

/// Drains the outbox into the socket, one flush per batch of queued frames, and sends
/// WebSocket pings. Ends on a close frame, a closer request, or a dead socket.
pub(crate) async fn writer(
    mut sink: Sink,
    mut rx: OutboxReceiver,
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
                        Some(next) => msg = next,
                        None => break,
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

/// Counts a connection in one of the server's gauges for as long as it lives, including when
/// its task panics (the count goes down as the task unwinds).
pub(crate) struct Gauge {
    state: Arc<ServerState>,
    which: fn(&Metrics) -> &AtomicU64,
}

impl Gauge {
    pub(crate) fn up(state: &Arc<ServerState>, which: fn(&Metrics) -> &AtomicU64) -> Gauge {
        which(&state.metrics).fetch_add(1, Relaxed);
        Gauge {
            state: state.clone(),
            which,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.which)(&self.state.metrics).fetch_sub(1, Relaxed);
    }
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
    /// What the upgrade request's token (`Authorization: Bearer` or `?token=`) proved, if it
    /// carried one; a token in the hello wins over it.
    upgrade_auth: Option<Result<Principal, AuthError>>,
    /// Whether `slot` is an authenticated one already (a valid token on the upgrade).
    slot_authenticated: bool,
    /// Set when the first message was over the pre-authentication limit.
    tripped: Tripped,
    /// The slot this connection holds: an unauthenticated one until the hello authenticates,
    /// then an authenticated one.
    slot: Option<Slot>,
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
}

/// A connection slot and the gauge that counts it; both are given back when it drops.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    _gauge: Gauge,
}

impl Slot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> Slot {
        Slot {
            _permit: permit,
            _gauge: gauge,
        }
    }
}

/// How the main loop ended.
enum Exit {
    /// This connection decided to end: send a close frame with the code.
    SendClose(CloseCode),
    /// Another part already fired the closer (a room closing a slow consumer, a stopped
    /// room, a full outbox): the writer sends that close frame.
    ClosedElsewhere(CloseCode),
    /// The server is shutting down: flush the rooms, then close with 1001.
    Shutdown,
    /// The peer closed or the socket broke: nothing more to send.
    PeerGone,
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

/// Whether a frame of `len` bytes holding `messages` messages is within both rates; `false`
/// means close with 4029. Every frame counts, pings and pongs included, and a frame counts as
/// many messages as it carries: a limit that one frame could step around would be no limit.
pub(crate) fn within_rate(
    message_rate: &DefaultDirectRateLimiter,
    byte_rate: &DefaultDirectRateLimiter,
    messages: usize,
    len: usize,
) -> bool {
    let len = nz(u32::try_from(len.max(1)).unwrap_or(u32::MAX));
    let n = nz(u32::try_from(messages.max(1)).unwrap_or(u32::MAX));
    let bytes_ok = byte_rate.check_n(len).is_ok_and(|r| r.is_ok());
    let messages_ok = message_rate.check_n(n).is_ok_and(|r| r.is_ok());
    bytes_ok && messages_ok
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
            Err(tokio::sync::mpsc::error::SendError(back)) => {
                cmd = back;
                room = state.rooms.get_or_start(state, doc);
            }
        }
    }
    None
}

/// Waits until `peer`'s budget allows a full-state sync and takes the slot. `Err` when the
/// wait ends otherwise: the closer fired (its code) or the server shuts down (`None`).
pub(crate) async fn sync_ticket(
    state: &ServerState,
    peer: &PeerHandle,
) -> Result<crate::peer::SyncTicket, Option<CloseCode>> {
    tokio::select! {
        (ticket, waited) = peer.budget.begin() => {
            if waited {
                state.metrics.sync_budget_waits.fetch_add(1, Relaxed);
            }
            Ok(ticket)
        }
        code = peer.closer.closed() => Err(Some(code)),
        _ = state.shutdown.cancelled() => Err(None),
    }
}

/// How long a closing connection keeps reading what its peer still sends, waiting for the
/// peer's close frame (see [`Outbound::finish`]).
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The sending half of a connection: a bounded outbox, the closer rooms use to close it, and
/// the writer task that drains both into the socket.
pub(crate) struct Outbound {
    pub outbox: Outbox,
    pub closer: Arc<Closer>,
    writer: tokio::task::JoinHandle<()>,
}

impl Outbound {
    pub(crate) fn start(state: &ServerState, sink: Sink) -> Outbound {
        let limits = &state.config.limits;
        let (outbox, rx) = outbox(limits.outbox_frames, limits.outbox_bytes);
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
    /// lets the writer send what is queued (within the shutdown deadline), and reads what the
    /// peer still sends until its close (within [`CLOSE_DRAIN`]).
    ///
    /// Reading to the end matters: a socket closed with unread bytes in the kernel's receive
    /// buffer is reset (RST), and the reset can destroy the close frame and acks just sent
    /// before the peer reads them. The socket closes only when `stream` is dropped here.
    pub(crate) async fn finish(self, state: &ServerState, code: CloseCode, mut stream: Stream) {
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
        debug!(code = code.code(), "connection closed");
    }
}

/// A new connection's peer handle, speaking `kind` for `author`.
pub(crate) fn peer_handle(
    state: &ServerState,
    id: PeerId,
    kind: PeerKind,
    author: Option<&str>,
    outbound: &Outbound,
) -> PeerHandle {
    let limits = &state.config.limits;
    PeerHandle {
        id,
        replica: None,
        kind,
        author: author.map(Arc::from),
        outbox: outbound.outbox.clone(),
        closer: outbound.closer.clone(),
        budget: SyncBudget::new(limits.sync_bytes_per_second, limits.sync_byte_burst),
    }
}

/// How a `/v1/sync` connection was admitted.
pub(crate) enum Admission {
    /// The upgrade request carried no token, or one that did not verify (the error is
    /// reported at the hello unless the hello brings a token of its own): an unauthenticated
    /// slot, traded for an authenticated one when the hello authenticates.
    Unauthenticated {
        slot: Slot,
        upgrade_auth: Option<Result<Principal, AuthError>>,
    },
    /// A valid token on the upgrade request (or no authentication at all): an authenticated
    /// slot from the start.
    Authenticated { slot: Slot, principal: Principal },
}

/// `/v1/sync`: runs one connection.
pub(crate) async fn serve_socket(
    state: Arc<ServerState>,
    socket: Socket,
    tripped: Tripped,
    admission: Admission,
    ip: IpAddr,
) {
    let id = PeerId(state.next_peer.fetch_add(1, Relaxed));
    let span = info_span!("conn", peer = id.0);
    async move {
        let limits = &state.config.limits;
        let (sink, mut stream) = socket.split();
        let outbound = Outbound::start(&state, sink);
        let closer = outbound.closer.clone();
        let (slot, upgrade_auth, slot_authenticated) = match admission {
            Admission::Unauthenticated { slot, upgrade_auth } => (slot, upgrade_auth, false),
            Admission::Authenticated { slot, principal } => (slot, Some(Ok(principal)), true),
        };
        let mut conn = Conn {
            peer: peer_handle(&state, id, PeerKind::Native, None, &outbound),
            subs: HashMap::new(),
            principal: Principal::open(),
            ip,
            upgrade_auth,
            slot_authenticated,
            tripped,
            slot: Some(slot),
            messages: message_limiter(limits),
            bytes: byte_limiter(limits),
            state: state.clone(),
        };
        let exit = conn.run(&mut stream).await;
        let code = match exit {
            Exit::SendClose(code) => {
                conn.send_close(code).await;
                code
            }
            Exit::ClosedElsewhere(code) => code,
            Exit::Shutdown => {
                conn.flush_rooms().await;
                conn.send_close(CloseCode::GoingAway).await;
                CloseCode::GoingAway
            }
            Exit::PeerGone => {
                closer.close(CloseCode::Normal);
                CloseCode::Normal
            }
        };
        conn.leave_all().await;
        let slot = conn.slot.take();
        drop(conn);
        outbound.finish(&state, code, stream).await;
        drop(slot);
    }
    .instrument(span)
    .await;
}

impl Conn {
    /// Queues a message for this connection. A full outbox closes it as a slow consumer.
    fn send(&self, msg: &ServerMsg) {
        let frame = Message::Binary(Bytes::from(msg.encode()));
        if let Err(SendError::Full) = self.peer.outbox.try_send(frame) {
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

    /// The first frame: a `hello` that authenticates, within the deadline and the size limit.
    async fn handshake(&mut self, stream: &mut Stream) -> Option<Exit> {
        let limits = self.state.config.limits.clone();
        let first = tokio::select! {
            r = timeout(limits.hello_timeout, stream.next()) => r,
            _ = self.state.shutdown.cancelled() => return Some(Exit::Shutdown),
        };
        let frame = match first {
            Err(_) => {
                self.error(
                    ErrorCode::HelloTimeout,
                    "no hello within the deadline",
                    None,
                    None,
                );
                return Some(Exit::SendClose(CloseCode::HelloTimeout));
            }
            Ok(Some(Err(_))) if self.tripped.is_set() => {
                self.error(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "the first message of a connection that has not authenticated may be \
                         at most {} bytes",
                        limits.max_hello_bytes
                    ),
                    None,
                    None,
                );
                return Some(Exit::SendClose(CloseCode::FrameTooLarge));
            }
            Ok(None) | Ok(Some(Err(_))) => return Some(Exit::PeerGone),
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(Message::Close(_)))) => return Some(Exit::PeerGone),
            Ok(Some(Ok(_))) => {
                self.error(
                    ErrorCode::MalformedMessage,
                    "binary MessagePack frames only",
                    None,
                    None,
                );
                return Some(Exit::SendClose(CloseCode::UnsupportedData));
            }
        };
        let hello_limit = limits.max_hello_bytes.min(limits.max_frame_bytes);
        match ClientMsg::decode(&frame, hello_limit) {
            Ok(ClientMsg::Hello { replica, token, .. }) => {
                let proved = match (token, self.upgrade_auth.take()) {
                    (Some(token), _) => self.state.auth.authenticate(Some(&token), self.ip),
                    (None, Some(upgrade)) => upgrade,
                    (None, None) => self.state.auth.authenticate(None, self.ip),
                };
                match proved {
                    Ok(principal) => self.principal = principal,
                    Err(e) => return Some(self.refuse(&e)),
                }
                if !self.slot_authenticated {
                    // Trade the unauthenticated slot for an authenticated one.
                    let Ok(permit) = self.state.connections.clone().try_acquire_owned() else {
                        self.error(
                            ErrorCode::RateLimited,
                            "the server has no room for another connection; retry later",
                            None,
                            None,
                        );
                        return Some(Exit::SendClose(CloseCode::TryAgainLater));
                    };
                    self.slot = Some(Slot::new(
                        permit,
                        Gauge::up(&self.state, |m| &m.connections),
                    ));
                    self.slot_authenticated = true;
                }
                self.peer.replica = replica.and_then(ReplicaId::new);
                self.peer.author = self.principal.subject().map(Arc::from);
                self.send(&ServerMsg::Welcome {
                    protocol: PROTOCOL_VERSION,
                    server: format!("lattice/{}", crate::VERSION),
                });
                None
            }
            Ok(_) => {
                self.error(
                    ErrorCode::HelloRequired,
                    "the first message must be hello",
                    None,
                    None,
                );
                Some(Exit::SendClose(CloseCode::Protocol))
            }
            Err(e) => {
                self.error(e.code(), e.to_string(), None, None);
                Some(Exit::SendClose(match e {
                    DecodeError::UnsupportedVersion { .. } => CloseCode::UnsupportedVersion,
                    DecodeError::FrameTooLarge { .. } => CloseCode::FrameTooLarge,
                    _ => CloseCode::Protocol,
                }))
            }
        }
    }

    async fn run(&mut self, stream: &mut Stream) -> Exit {
        if let Some(exit) = self.handshake(stream).await {
            return exit;
        }
        let limits = self.state.config.limits.clone();
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
                code = self.peer.closer.closed() => return Exit::ClosedElsewhere(code),
                _ = self.state.shutdown.cancelled() => return Exit::Shutdown,
                () = &mut expiry => {
                    debug!("token expired during the session");
                    self.error(ErrorCode::Unauthorized, "the token has expired", None, None);
                    return Exit::SendClose(CloseCode::TokenExpired);
                }
                r = timeout(self.state.config.heartbeat.idle_timeout, stream.next()) => r,
            };
            let frame = match next {
                Err(_) => {
                    self.error(ErrorCode::IdleTimeout, "idle timeout", None, None);
                    return Exit::SendClose(CloseCode::IdleTimeout);
                }
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                    return Exit::PeerGone;
                }
                Ok(Some(Ok(Message::Ping(p) | Message::Pong(p)))) => {
                    if !within_rate(&self.messages, &self.bytes, 1, p.len()) {
                        return self.rate_limited();
                    }
                    continue;
                }
                Ok(Some(Ok(Message::Text(_) | Message::Frame(_)))) => {
                    self.error(
                        ErrorCode::MalformedMessage,
                        "binary MessagePack frames only",
                        None,
                        None,
                    );
                    return Exit::SendClose(CloseCode::UnsupportedData);
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
                return Exit::SendClose(CloseCode::FrameTooLarge);
            }
            if !within_rate(&self.messages, &self.bytes, 1, frame.len()) {
                return self.rate_limited();
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
                Err(DecodeError::InvalidDelta { doc, seq, reason }) => {
                    // One delta whose body does not read: refuse it alone, as if it had
                    // decoded and failed to apply.
                    self.error(ErrorCode::InvalidDelta, reason, Some(doc), Some(seq));
                }
                Err(e) => {
                    warn!(error = %e, "malformed frame");
                    self.error(e.code(), e.to_string(), None, None);
                    return Exit::SendClose(match e {
                        DecodeError::UnsupportedVersion { .. } => CloseCode::UnsupportedVersion,
                        _ => CloseCode::Protocol,
                    });
                }
            }
        }
    }

    fn rate_limited(&self) -> Exit {
        self.error(
            ErrorCode::RateLimited,
            "rate limit exceeded; reconnect with backoff",
            None,
            None,
        );
        Exit::SendClose(CloseCode::RateLimited)
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
            ClientMsg::Subscribe { doc, state } => return self.subscribe(doc, state).await,
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
                        return Some(Exit::SendClose(CloseCode::DocumentUnavailable));
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

    async fn subscribe(&mut self, doc: DocId, state: lattice_engine::DocState) -> Option<Exit> {
        // Checked before anything else, so the answer is the same whether or not the
        // document exists.
        let Some(access) = self.principal.access(&doc) else {
            debug!(doc = %doc, "subscribe refused: not covered by the token");
            self.error(ErrorCode::Forbidden, "not permitted", Some(doc), None);
            return None;
        };
        if self.subs.contains_key(&doc) {
            // A second full answer for a document the connection already receives would be
            // work and memory for nothing (and a way to make the server do both at will).
            self.error(
                ErrorCode::AlreadySubscribed,
                "already subscribed; unsubscribe first to start over",
                Some(doc),
                None,
            );
            return None;
        }
        if self.subs.len() >= self.state.config.limits.max_docs_per_connection {
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
        let ticket = match sync_ticket(&self.state, &self.peer).await {
            Ok(ticket) => ticket,
            Err(None) => return Some(Exit::Shutdown),
            Err(Some(code)) => return Some(Exit::ClosedElsewhere(code)),
        };
        let cmd = RoomCmd::Subscribe {
            peer: self.peer.clone(),
            access,
            state,
            ticket,
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
                Exit::SendClose(CloseCode::RateLimited)
            }
            AuthError::Forbidden { .. } => {
                self.error(ErrorCode::Forbidden, e.to_string(), None, None);
                Exit::SendClose(CloseCode::Forbidden)
            }
            _ => {
                info!(ip = %self.ip, error = %e, "hello refused: not authenticated");
                self.error(ErrorCode::Unauthorized, e.to_string(), None, None);
                Exit::SendClose(CloseCode::Unauthorized)
            }
        }
    }
}
