//! `/v1/sync`: one task per native WebSocket connection (hello and authentication,
//! subscriptions, deltas, presence), on the shared mechanics of `transport/`.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use futures_util::StreamExt;
use governor::DefaultDirectRateLimiter;
use lattice_engine::protocol::{ClientMsg, DecodeError, ErrorCode, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::sync::{Access, PeerId};
use lattice_engine::{DocId, ReplicaId};
use tokio::time::{timeout, timeout_at};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::{AuthError, Principal};
use crate::rooms::peer::{AwarenessId, Encoded, Encoder, PeerHandle, PeerKind, peer_handle};
use crate::rooms::{RoomCmd, RoomSender, join_room};
use crate::state::ServerState;
use crate::transport::close::CloseCode;
use crate::transport::first_message::Tripped;
use crate::transport::outbox::{Message, SendError};
use crate::transport::rate::{byte_limiter, message_limiter, within_rate};
use crate::transport::slots::{Gauge, Slot};
use crate::transport::upgrade::WsSocket;
use crate::transport::writer::{Outbound, Stream};

use super::lifecycle::{self, Deadlines, Due, Exit, Protocol, send_to_room};

/// One subscription: the document's room and what this connection may do there.
struct Sub {
    room: RoomSender,
    access: Access,
}

struct Conn {
    state: Arc<ServerState>,
    peer: PeerHandle,
    /// Its subscriptions (at most `Limits::max_docs_per_connection`; usually one or a few, so a
    /// list, which takes less memory than a map).
    subs: Vec<(DocId, Sub)>,
    /// Who this connection is; [`Principal::open`] until the hello authenticates (nothing but
    /// the hello is read before that).
    principal: Principal,
    /// The peer's address, for the failed-authentication throttle.
    ip: IpAddr,
    /// What the upgrade request's token (`Authorization: Bearer` or `?token=`) proved, if it
    /// carried one; a token in the hello wins over it. Boxed: it is read once, at the hello.
    upgrade_auth: Option<Box<Result<Principal, AuthError>>>,
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

/// `/v1/sync`: one connection, as the future that runs it. Everything it holds is set up
/// here, before that future starts, so the future keeps no second copy of it.
pub(crate) fn serve_socket<S: WsSocket>(
    state: Arc<ServerState>,
    socket: S,
    tripped: Tripped,
    admission: Admission,
    ip: IpAddr,
) -> impl Future<Output = ()> + Send {
    let id = PeerId(state.next_peer.fetch_add(1, Relaxed));
    let span = info_span!("conn", peer = id.0);
    let limits = &state.config.limits;
    let outbound = Outbound::new(limits);
    let (slot, upgrade_auth, slot_authenticated) = match admission {
        Admission::Unauthenticated { slot, upgrade_auth } => (slot, upgrade_auth, false),
        Admission::Authenticated { slot, principal } => (slot, Some(Ok(principal)), true),
    };
    let conn = Conn {
        peer: peer_handle(
            limits,
            id,
            (PeerKind::Native, &NativeEncoder),
            None,
            &outbound,
        ),
        subs: Vec::new(),
        principal: Principal::open(),
        ip,
        upgrade_auth: upgrade_auth.map(Box::new),
        slot_authenticated,
        tripped,
        slot: Some(slot),
        messages: message_limiter(limits),
        bytes: byte_limiter(limits),
        state: state.clone(),
    };
    lifecycle::serve(conn, socket, outbound).instrument(span)
}

/// The native protocol's encoding of room messages: each one a MessagePack frame.
#[derive(Debug)]
pub(crate) struct NativeEncoder;

impl Encoder for NativeEncoder {
    fn encode(&self, msg: &ServerMsg, _awareness: Option<AwarenessId>) -> Encoded {
        Encoded::frames(vec![Bytes::from(msg.encode())])
    }
}

impl Protocol for Conn {
    fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    fn peer(&self) -> &PeerHandle {
        &self.peer
    }

    async fn run<S: WsSocket>(&mut self, stream: &mut Stream<S>) -> Exit {
        // Boxed, as everything rare or short-lived here: the loop's state is what an idle
        // connection holds.
        if let Some(exit) = Box::pin(self.handshake(stream)).await {
            return exit;
        }
        let state = self.state.clone();
        let (limits, heartbeat) = (&state.config.limits, &state.config.heartbeat);
        // The token's expiry is enforced during the session, not only at the handshake.
        let mut deadlines = Deadlines::new(
            heartbeat.idle_timeout,
            heartbeat.ping_interval,
            self.principal.time_left(),
        );
        loop {
            let next = tokio::select! {
                biased;
                code = self.peer.closer.closed_here() => return Exit::ClosedElsewhere(code),
                _ = self.state.shutdown.cancelled() => return Exit::Shutdown,
                r = timeout_at(deadlines.next(), stream.next()) => r,
            };
            let read = match next {
                Ok(read) => read,
                Err(_) => match deadlines.due() {
                    Some(Due::Expired) => {
                        debug!("token expired during the session");
                        self.error(ErrorCode::Unauthorized, "the token has expired", None, None);
                        return Exit::SendClose(CloseCode::TokenExpired);
                    }
                    Some(Due::Quiet) => {
                        self.error(ErrorCode::IdleTimeout, "idle timeout", None, None);
                        return Exit::SendClose(CloseCode::IdleTimeout);
                    }
                    Some(Due::Ping) => {
                        lifecycle::ping(&self.peer);
                        continue;
                    }
                    None => continue,
                },
            };
            deadlines.heard(heartbeat.idle_timeout);
            let frame = match read {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Exit::PeerGone,
                Some(Ok(Message::Ping(p) | Message::Pong(p))) => {
                    if !within_rate(&self.messages, &self.bytes, 1, p.len()) {
                        return self.rate_limited();
                    }
                    continue;
                }
                Some(Ok(Message::Text(_) | Message::Frame(_))) => {
                    self.error(
                        ErrorCode::MalformedMessage,
                        "binary MessagePack frames only",
                        None,
                        None,
                    );
                    return Exit::SendClose(CloseCode::UnsupportedData);
                }
                Some(Ok(Message::Binary(b))) => b,
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
                    // Boxed: its future is larger than the loop's wait, and would make every
                    // idle connection hold that much.
                    if let Some(exit) = Box::pin(self.handle(msg)).await {
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

    fn rooms(&self) -> Vec<RoomSender> {
        self.subs.iter().map(|(_, sub)| sub.room.clone()).collect()
    }

    fn take_slot(&mut self) -> Option<Slot> {
        self.slot.take()
    }
}

impl Conn {
    /// This connection's subscription to `doc`, if it has one.
    fn sub(&self, doc: &DocId) -> Option<&Sub> {
        self.subs.iter().find(|(d, _)| d == doc).map(|(_, sub)| sub)
    }

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
    /// The first frame: a `hello` that authenticates, within the deadline and the size limit.
    async fn handshake<S: WsSocket>(&mut self, stream: &mut Stream<S>) -> Option<Exit> {
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
                    (None, Some(upgrade)) => *upgrade,
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
                        Gauge::up(&self.state.metrics, |m| &m.connections),
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
            ClientMsg::Subscribe { doc, state } => {
                return Box::pin(self.subscribe(doc, state)).await;
            }
            ClientMsg::Unsubscribe { doc } => {
                if let Some(at) = self.subs.iter().position(|(d, _)| *d == doc) {
                    let (_, sub) = self.subs.swap_remove(at);
                    let cmd = RoomCmd::Unsubscribe { peer: self.peer.id };
                    let _ = send_to_room(&sub.room, cmd).await;
                }
            }
            ClientMsg::Delta { doc, seq, delta } => match self.sub(&doc) {
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
                    if send_to_room(&sub.room, cmd).await.is_err() {
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
            ClientMsg::Presence { doc, state, typing } => match self.sub(&doc) {
                Some(sub) => {
                    let cmd = RoomCmd::Presence {
                        peer: self.peer.id,
                        state,
                        typing,
                        awareness: None,
                    };
                    let _ = send_to_room(&sub.room, cmd).await;
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
        if self.sub(&doc).is_some() {
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
        let ticket = match lifecycle::sync_slot(self.state.rooms.env(), &self.peer).await {
            Ok(ticket) => ticket,
            Err(exit) => return Some(exit),
        };
        let cmd = RoomCmd::Subscribe {
            peer: self.peer.clone(),
            access,
            state,
            ticket,
        };
        if let Some(room) = join_room(&self.state.rooms, &doc, cmd).await {
            // One more, not room for four: most connections hold one or two.
            self.subs.reserve_exact(1);
            self.subs.push((doc, Sub { room, access }));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::SinkExt;
    use lattice_engine::Document;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::config::Config;
    use crate::store::Store;

    type Client = WebSocketStream<tokio::io::DuplexStream>;

    async fn next(client: &mut Client) -> ServerMsg {
        loop {
            match timeout(std::time::Duration::from_secs(10), client.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    return ServerMsg::decode(&b, usize::MAX).unwrap();
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("no message: {other:?}"),
            }
        }
    }

    async fn send(client: &mut Client, msg: ClientMsg) {
        client
            .send(Message::Binary(msg.encode().into()))
            .await
            .unwrap();
    }

    /// The handler runs over any socket: here an in-memory pipe, no TCP, no HTTP.
    #[tokio::test]
    async fn a_connection_says_hello_subscribes_and_is_acked_over_an_in_memory_socket() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("native.db").display());
        let config = Config {
            database_url: url.clone(),
            ..Config::default()
        };
        let store = Store::open(&url, config.store.clone()).await.unwrap();
        let state = Arc::new(ServerState::new(config, store, None).unwrap());
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let socket = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let permit = state.connections.clone().try_acquire_owned().unwrap();
        let slot = Slot::new(permit, Gauge::up(&state.metrics, |m| &m.connections));
        let admission = Admission::Authenticated {
            slot,
            principal: Principal::open(),
        };
        let ip = IpAddr::from([127, 0, 0, 1]);
        let conn = tokio::spawn(serve_socket(
            state.clone(),
            socket,
            Tripped::default(),
            admission,
            ip,
        ));

        let hello = ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            token: None,
            agent: None,
            replica: Some(7),
        };
        send(&mut client, hello).await;
        assert!(matches!(next(&mut client).await, ServerMsg::Welcome { .. }));
        let doc = DocId::new("pipe").unwrap();
        let subscribe = ClientMsg::Subscribe {
            doc: doc.clone(),
            state: Default::default(),
        };
        send(&mut client, subscribe).await;
        assert!(matches!(next(&mut client).await, ServerMsg::Sync { .. }));
        let mut mine = Document::new(ReplicaId::new(7).unwrap());
        let delta = mine.text_insert("t", 0, "hi").unwrap();
        send(&mut client, ClientMsg::Delta { doc, seq: 1, delta }).await;
        assert!(matches!(
            next(&mut client).await,
            ServerMsg::Ack { seq: 1, .. }
        ));
        assert_eq!(
            state
                .store
                .document(&DocId::new("pipe").unwrap())
                .await
                .unwrap()
                .unwrap()
                .head_seq,
            1
        );
        drop(client);
        timeout(std::time::Duration::from_secs(10), conn)
            .await
            .unwrap()
            .unwrap();
    }
}
