//! `/hocuspocus`: `@hocuspocus/provider` (Tiptap's collaboration provider) on the same rooms as
//! native and Yjs clients, several documents on one socket (docs/hocuspocus.md).
//!
//! Each frame names its document ([`lattice_engine::hocuspocus`]). A document is nothing on
//! this connection until its auth message brings a token that covers it: then it gets
//! `authenticated` (scope `readonly` or `read-write`) and its messages are handled as on
//! `/yjs` (sync step 1 joins or resyncs its room, updates become deltas, awareness becomes
//! presence); a token that does not cover it gets `permission denied` for that document only,
//! and its other messages are ignored. The connection joins each room as a
//! [`PeerKind::Hocuspocus`] peer under one peer id, subscribed with [`Echo::AckEach`]
//! (`lattice_engine::sync::Echo`): every update is answered with its own `sync status` once it
//! is **committed** (Hocuspocus answers after an in-memory apply). A read-only document's
//! updates stop here with `sync status` false, as Hocuspocus answers them. Stateless messages
//! go to the document's other Hocuspocus peers through the room (`RoomCmd::Broadcast`),
//! bounded in size and rate.
//!
//! Limits and close codes are `/yjs`'s: frame size (1009), message and byte rates (4029),
//! malformed frames (4000), idle timeout (4009), a slow consumer (4008); before any document
//! authenticates, the first frame is held to `max_hello_bytes` and the connection to the hello
//! deadline (4002), and it holds an unauthenticated slot.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use futures_util::StreamExt;
use governor::DefaultDirectRateLimiter;
use lattice_engine::hocuspocus::{self as hp, HocusDecodeError, HocusFrame, HocusMessage};
use lattice_engine::protocol::{ErrorCode, ServerMsg};
use lattice_engine::sync::{Access, PeerId};
use lattice_engine::yws::{self, YDecodeError};
use lattice_engine::{Delta, DocId};
use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug, info_span, warn};

use crate::auth::{AuthError, Principal};
use crate::rooms::peer::{AwarenessId, Encoded, Encoder, PeerHandle, PeerKind, peer_handle};
use crate::rooms::{RoomCmd, RoomSender};
use crate::state::ServerState;
use crate::transport::close::CloseCode;
use crate::transport::first_message::Tripped;
use crate::transport::outbox::{Message, SendError};
use crate::transport::rate::{byte_limiter, limiter, message_limiter, within_rate};
use crate::transport::slots::{Gauge, Slot};
use crate::transport::upgrade::WsSocket;
use crate::transport::writer::{Outbound, Stream};

use super::lifecycle::{self, Deadlines, Due, Exit, Protocol, send_to_room};
use super::native::Admission;
use super::yjs::{awareness_entry, presence_from_awareness, subscribe_yjs};

/// The largest stateless payload relayed, in bytes; a larger one closes the connection (1009).
pub(crate) const MAX_STATELESS_BYTES: usize = 16 * 1024;
/// Stateless messages a connection may send per second (each reaches every other Hocuspocus
/// peer of its document), and in a burst; past it the connection closes (4029).
pub(crate) const STATELESS_PER_SECOND: u32 = 20;
/// See [`STATELESS_PER_SECOND`].
pub(crate) const STATELESS_BURST: u32 = 50;

/// One authenticated document of the connection.
struct HocusDoc {
    doc: DocId,
    access: Access,
    /// The connection's peer as this document's room sees it (its own token's subject).
    peer: PeerHandle,
    /// Its room, once joined (at its sync step 1, or its first other message).
    room: Option<RoomSender>,
    /// When its token expires; the document is then refused (`permission denied`).
    expires_at: Option<Instant>,
    /// The awareness client id it speaks for: the first one it sends.
    awareness_client: Option<u64>,
    next_seq: u64,
}

/// What a document's auth message led to.
enum AuthOutcome {
    Granted,
    /// `permission denied` for that document; the connection goes on.
    Refused,
    /// The connection ends (throttled, or no slot for it).
    Close(Exit),
}

struct HocusConn {
    state: Arc<ServerState>,
    /// The connection as rooms see it; each document's handle is a copy with its author.
    peer: PeerHandle,
    /// Its authenticated documents (at most `Limits::max_docs_per_connection`).
    docs: Vec<HocusDoc>,
    ip: IpAddr,
    /// What the upgrade request's token proved, if it carried one: used for a document whose
    /// auth message brings an empty token.
    upgrade_auth: Option<Box<Result<Principal, AuthError>>>,
    /// Whether `slot` is an authenticated one (a document authenticated, or a valid token on
    /// the upgrade).
    slot_authenticated: bool,
    /// Whether any document has authenticated: until then the hello deadline applies.
    authenticated: bool,
    tripped: Tripped,
    slot: Option<Slot>,
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
    stateless: Option<Box<DefaultDirectRateLimiter>>,
}

/// `/hocuspocus`: one connection, admitted as `server.rs` decided, as the future that runs
/// it. Everything it holds is set up here, so that future keeps no second copy of it.
pub(crate) fn serve_hocus_socket<S: WsSocket>(
    state: Arc<ServerState>,
    socket: S,
    tripped: Tripped,
    admission: Admission,
    ip: IpAddr,
) -> impl Future<Output = ()> + Send {
    let id = PeerId(state.next_peer.fetch_add(1, Relaxed));
    let span = info_span!("hocuspocus", peer = id.0);
    let limits = &state.config.limits;
    let outbound = Outbound::new(limits);
    let (slot, upgrade_auth, slot_authenticated) = match admission {
        Admission::Unauthenticated { slot, upgrade_auth } => (slot, upgrade_auth, false),
        Admission::Authenticated { slot, principal } => (slot, Some(Ok(principal)), true),
    };
    let conn = HocusConn {
        peer: peer_handle(
            limits,
            id,
            (PeerKind::Hocuspocus, &HocusEncoder),
            None,
            &outbound,
        ),
        docs: Vec::new(),
        ip,
        upgrade_auth: upgrade_auth.map(Box::new),
        slot_authenticated,
        authenticated: false,
        tripped,
        slot: Some(slot),
        messages: message_limiter(limits),
        bytes: byte_limiter(limits),
        stateless: None,
        state: state.clone(),
    };
    lifecycle::serve(conn, socket, outbound).instrument(span)
}

/// The Hocuspocus encoding of room messages, each framed with its document's name: syncs and
/// relays as on `/yjs`; an ack becomes `sync status` true (one per update, as the room sends
/// them to these peers); a refused write `sync status` false; presence an awareness update.
/// Any other refusal closes the connection, as on `/yjs`, so the provider reconnects and
/// resyncs.
#[derive(Debug)]
pub(crate) struct HocusEncoder;

impl Encoder for HocusEncoder {
    fn encode(&self, msg: &ServerMsg, awareness: Option<AwarenessId>) -> Encoded {
        let frames = match msg {
            ServerMsg::Sync { doc, delta, state } => vec![
                hp::encode_sync_step2(doc.as_str(), &delta.yjs),
                hp::encode_sync_step1(doc.as_str(), &state.yjs),
            ],
            ServerMsg::Delta { doc, delta } if !delta.yjs.is_empty() => {
                vec![hp::encode_update(doc.as_str(), &delta.yjs)]
            }
            ServerMsg::Ack { doc, .. } => vec![hp::encode_sync_status(doc.as_str(), true)],
            ServerMsg::Presence { doc, state, .. } => match awareness_entry(state, awareness) {
                Some(entry) => vec![hp::encode_awareness(doc.as_str(), &[entry])],
                None => Vec::new(),
            },
            ServerMsg::Error { code, doc, .. } => {
                return match (code, doc) {
                    // The room follows a missing-dependencies refusal with a sync, whose step 1
                    // makes the provider send everything the room lacks.
                    (ErrorCode::Forbidden | ErrorCode::MissingDependencies, Some(doc)) => {
                        Encoded::frames(vec![Bytes::from(hp::encode_sync_status(
                            doc.as_str(),
                            false,
                        ))])
                    }
                    (ErrorCode::Internal, _) => Encoded {
                        frames: Vec::new(),
                        close: Some(CloseCode::DocumentUnavailable),
                    },
                    _ => Encoded {
                        frames: Vec::new(),
                        close: Some(CloseCode::Protocol),
                    },
                };
            }
            _ => Vec::new(),
        };
        Encoded::frames(frames.into_iter().map(Bytes::from).collect())
    }
}

impl Protocol for HocusConn {
    fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    fn peer(&self) -> &PeerHandle {
        &self.peer
    }

    async fn run<S: WsSocket>(&mut self, stream: &mut Stream<S>) -> Exit {
        let state = self.state.clone();
        let (limits, heartbeat) = (&state.config.limits, &state.config.heartbeat);
        // Until a document authenticates, the hello deadline runs from the upgrade and frames
        // do not extend it.
        let mut deadlines = Deadlines::new(limits.hello_timeout, heartbeat.ping_interval, None);
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
                        Box::pin(self.expire()).await;
                        deadlines.expire_at(self.next_expiry());
                        continue;
                    }
                    Some(Due::Quiet) if !self.authenticated => {
                        return Exit::SendClose(CloseCode::HelloTimeout);
                    }
                    Some(Due::Quiet) => return Exit::SendClose(CloseCode::IdleTimeout),
                    Some(Due::Ping) => {
                        // The provider reconnects after 30 s without a message and answers
                        // this one with a pong.
                        lifecycle::ping(&self.peer);
                        self.send(hp::PING.to_vec());
                        continue;
                    }
                    None => continue,
                },
            };
            if self.authenticated {
                deadlines.heard(heartbeat.idle_timeout);
            }
            let frame = match read {
                Some(Err(_)) if self.tripped.is_set() => {
                    return Exit::SendClose(CloseCode::FrameTooLarge);
                }
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Exit::PeerGone,
                Some(Ok(Message::Ping(p) | Message::Pong(p))) => {
                    if !within_rate(&self.messages, &self.bytes, 1, p.len()) {
                        return Exit::SendClose(CloseCode::RateLimited);
                    }
                    continue;
                }
                Some(Ok(Message::Text(_) | Message::Frame(_))) => {
                    return Exit::SendClose(CloseCode::UnsupportedData);
                }
                Some(Ok(Message::Binary(b))) => b,
            };
            if frame.len() > limits.max_frame_bytes {
                warn!(len = frame.len(), "frame too large");
                return Exit::SendClose(CloseCode::FrameTooLarge);
            }
            // One message per frame.
            if !within_rate(&self.messages, &self.bytes, 1, frame.len()) {
                warn!("over the rate limit");
                return Exit::SendClose(CloseCode::RateLimited);
            }
            let decoded = match hp::decode_frame(&frame, limits.max_frame_bytes) {
                Ok(decoded) => decoded,
                Err(e) => {
                    warn!(error = %e, "malformed Hocuspocus frame");
                    return Exit::SendClose(match e {
                        HocusDecodeError::Frame(YDecodeError::FrameTooLarge { .. }) => {
                            CloseCode::FrameTooLarge
                        }
                        _ => CloseCode::Protocol,
                    });
                }
            };
            let was_authenticated = self.authenticated;
            // Boxed: its future is larger than the loop's wait, and would make every idle
            // connection hold that much.
            if let Some(exit) = Box::pin(self.handle(decoded)).await {
                return exit;
            }
            if self.authenticated && !was_authenticated {
                deadlines.heard(heartbeat.idle_timeout);
            }
            deadlines.expire_at(self.next_expiry());
        }
    }

    fn rooms(&self) -> Vec<RoomSender> {
        self.docs.iter().filter_map(|d| d.room.clone()).collect()
    }

    fn take_slot(&mut self) -> Option<Slot> {
        self.slot.take()
    }
}

/// Queues a frame for the connection; a full outbox closes it as a slow consumer.
fn send_frame(peer: &PeerHandle, frame: Vec<u8>) {
    if let Err(SendError::Full) = peer.outbox.try_send(Message::Binary(Bytes::from(frame))) {
        peer.closer.close(CloseCode::SlowConsumer);
    }
}

impl HocusConn {
    fn send(&self, frame: Vec<u8>) {
        send_frame(&self.peer, frame);
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.docs.iter().position(|d| d.doc.as_str() == name)
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.docs.iter().filter_map(|d| d.expires_at).min()
    }

    /// Refuses every document whose token has expired: `permission denied` for it, and it
    /// leaves its room. The others go on.
    async fn expire(&mut self) {
        let now = Instant::now();
        while let Some(at) = self
            .docs
            .iter()
            .position(|d| d.expires_at.is_some_and(|t| t <= now))
        {
            let gone = self.docs.swap_remove(at);
            debug!(doc = %gone.doc, "token expired during the session");
            self.send(hp::encode_permission_denied(
                gone.doc.as_str(),
                "the token has expired",
            ));
            self.leave(gone).await;
        }
    }

    async fn leave(&self, gone: HocusDoc) {
        if let Some(room) = gone.room {
            let _ = send_to_room(&room, RoomCmd::Unsubscribe { peer: self.peer.id }).await;
        }
    }

    async fn handle(&mut self, frame: HocusFrame) -> Option<Exit> {
        let (name, message) = match frame {
            HocusFrame::Ping => {
                self.send(hp::PONG.to_vec());
                return None;
            }
            HocusFrame::Pong => return None,
            HocusFrame::Doc { name, message } => (name, message),
        };
        if let HocusMessage::Token { token, .. } = message {
            match self.authenticate(&name, token) {
                AuthOutcome::Granted => {}
                AuthOutcome::Refused => {
                    // A document this socket held under an earlier token leaves too.
                    if let Some(at) = self.find(&name) {
                        let gone = self.docs.swap_remove(at);
                        self.leave(gone).await;
                    }
                }
                AuthOutcome::Close(exit) => return Some(exit),
            }
            return None;
        }
        // Anything else for a document that has not authenticated is ignored, as the provider
        // sends its sync step 1 and awareness right after its token, whatever the answer.
        let at = self.find(&name)?;
        match message {
            HocusMessage::SyncStep1 { state_vector } => {
                return Box::pin(self.subscribe(at, state_vector)).await;
            }
            HocusMessage::Close { .. } => {
                let gone = self.docs.swap_remove(at);
                self.leave(gone).await;
                return None;
            }
            _ => {}
        }
        if self.docs[at].room.is_none()
            && let Some(exit) = Box::pin(self.subscribe(at, Vec::new())).await
        {
            return Some(exit);
        }
        let d = &mut self.docs[at];
        let room = d.room.clone()?;
        match message {
            HocusMessage::SyncStep2 { update } | HocusMessage::Update { update } => {
                let name = d.doc.as_str();
                if update == yws::EMPTY_UPDATE {
                    send_frame(&self.peer, hp::encode_sync_status(name, true));
                    return None;
                }
                if d.access == Access::Read {
                    // As Hocuspocus answers a read-only connection: applied only if there was
                    // nothing to apply.
                    let empty = lattice_engine::yjs::check_update_v1(&update)
                        .is_ok_and(|shape| shape.is_empty());
                    send_frame(&self.peer, hp::encode_sync_status(name, empty));
                    return None;
                }
                let seq = d.next_seq;
                d.next_seq += 1;
                let cmd = RoomCmd::Delta {
                    peer: self.peer.id,
                    seq,
                    delta: Delta {
                        yjs: update,
                        ..Delta::default()
                    },
                    author: d.peer.author.as_deref().map(str::to_owned),
                };
                if send_to_room(&room, cmd).await.is_err() {
                    return Some(Exit::SendClose(CloseCode::DocumentUnavailable));
                }
            }
            HocusMessage::Awareness { entries } => {
                let cmds =
                    match presence_from_awareness(self.peer.id, &mut d.awareness_client, entries) {
                        Ok(cmds) => cmds,
                        Err(e) => {
                            warn!(error = %e, "awareness state is not JSON");
                            return Some(Exit::SendClose(CloseCode::Protocol));
                        }
                    };
                for cmd in cmds {
                    let _ = send_to_room(&room, cmd).await;
                }
            }
            HocusMessage::QueryAwareness => {
                let _ = send_to_room(&room, RoomCmd::QueryPresence { peer: self.peer.id }).await;
            }
            HocusMessage::Stateless { payload } => {
                if payload.len() > MAX_STATELESS_BYTES {
                    warn!(len = payload.len(), "stateless payload too large");
                    return Some(Exit::SendClose(CloseCode::FrameTooLarge));
                }
                let rate = self.stateless.get_or_insert_with(|| {
                    Box::new(limiter(STATELESS_PER_SECOND, STATELESS_BURST))
                });
                if rate.check().is_err() {
                    warn!("over the stateless message rate");
                    return Some(Exit::SendClose(CloseCode::RateLimited));
                }
                let frame = Bytes::from(hp::encode_stateless(d.doc.as_str(), &payload));
                let cmd = RoomCmd::Broadcast {
                    peer: self.peer.id,
                    frame,
                };
                let _ = send_to_room(&room, cmd).await;
            }
            // Answers only a server sends; a client that sends them changes nothing.
            HocusMessage::PermissionDenied { .. }
            | HocusMessage::Authenticated { .. }
            | HocusMessage::SyncStatus { .. }
            | HocusMessage::SyncStep1 { .. }
            | HocusMessage::Close { .. }
            | HocusMessage::Token { .. } => {}
        }
        None
    }

    /// A document's token: `authenticated` with its scope, or `permission denied` for that
    /// document alone. Checked before anything else, so the answer is the same whether or not
    /// the document exists.
    fn authenticate(&mut self, name: &str, token: String) -> AuthOutcome {
        let proved = match (token.is_empty(), self.upgrade_auth.as_deref()) {
            (true, Some(upgrade)) => upgrade.clone(),
            (true, None) => self.state.auth.authenticate(None, self.ip),
            (false, _) => self.state.auth.authenticate(Some(&token), self.ip),
        };
        let principal = match proved {
            Ok(principal) => principal,
            Err(e @ AuthError::Throttled { .. }) => {
                debug!(ip = %self.ip, "auth refused: too many failed attempts");
                self.send(hp::encode_permission_denied(name, &e.to_string()));
                return AuthOutcome::Close(Exit::SendClose(CloseCode::RateLimited));
            }
            Err(e) => {
                debug!(ip = %self.ip, error = %e, "auth refused");
                self.send(hp::encode_permission_denied(name, &e.to_string()));
                return AuthOutcome::Refused;
            }
        };
        // An id that cannot exist is refused like one the token does not cover.
        let granted = DocId::new(name)
            .ok()
            .and_then(|doc| principal.access(&doc).map(|access| (doc, access)));
        let Some((doc, access)) = granted else {
            debug!(doc = name, "auth refused: not covered by the token");
            self.send(hp::encode_permission_denied(name, "not permitted"));
            return AuthOutcome::Refused;
        };
        let author = principal.subject().map(Arc::from);
        let expires_at = principal
            .time_left()
            .and_then(|left| Instant::now().checked_add(left));
        if let Some(at) = self.find(name) {
            // The same document again (a provider recreated on this socket): the new token
            // decides from now on; its room is kept (the new provider resyncs at its step 1).
            let d = &mut self.docs[at];
            d.access = access;
            d.expires_at = expires_at;
            d.peer.author = author;
        } else {
            let max = self.state.config.limits.max_docs_per_connection;
            if self.docs.len() >= max {
                self.send(hp::encode_permission_denied(
                    name,
                    &format!("at most {max} documents per connection"),
                ));
                return AuthOutcome::Refused;
            }
            if !self.slot_authenticated {
                // Trade the unauthenticated slot for an authenticated one.
                let Ok(permit) = self.state.connections.clone().try_acquire_owned() else {
                    self.send(hp::encode_permission_denied(
                        name,
                        "the server has no room for another connection; retry later",
                    ));
                    return AuthOutcome::Close(Exit::SendClose(CloseCode::TryAgainLater));
                };
                self.slot = Some(Slot::new(
                    permit,
                    Gauge::up(&self.state.metrics, |m| &m.connections),
                ));
                self.slot_authenticated = true;
            }
            self.docs.reserve_exact(1);
            self.docs.push(HocusDoc {
                doc,
                access,
                peer: PeerHandle {
                    author,
                    ..self.peer.clone()
                },
                room: None,
                expires_at,
                awareness_client: None,
                next_seq: 1,
            });
        }
        self.authenticated = true;
        self.send(hp::encode_authenticated(name, access == Access::Read));
        AuthOutcome::Granted
    }

    /// Joins (or resyncs with) document `at`'s room from the client's state vector.
    async fn subscribe(&mut self, at: usize, state_vector: Vec<u8>) -> Option<Exit> {
        let d = &mut self.docs[at];
        subscribe_yjs(
            &self.state,
            &mut d.room,
            &d.doc,
            &d.peer,
            d.access,
            state_vector,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::SinkExt;
    use lattice_engine::{Document, ReplicaId};
    use tokio::time::timeout;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::config::Config;
    use crate::store::Store;

    type Client = WebSocketStream<tokio::io::DuplexStream>;

    /// The next document frame (pings skipped), or the close code.
    async fn next(client: &mut Client) -> Result<(String, HocusMessage), u16> {
        loop {
            match timeout(std::time::Duration::from_secs(10), client.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => match hp::decode_frame(&b, usize::MAX).unwrap()
                {
                    HocusFrame::Doc { name, message } => return Ok((name, message)),
                    _ => continue,
                },
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(frame.map_or(0, |f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("no frame: {other:?}"),
            }
        }
    }

    async fn send(client: &mut Client, frame: Vec<u8>) {
        client.send(Message::Binary(frame.into())).await.unwrap();
    }

    /// The handler over an in-memory pipe: two documents on one socket, an update answered
    /// with `sync status` only once the store holds it, and a malformed frame closing it.
    #[tokio::test]
    async fn two_documents_share_a_socket_and_an_update_is_answered_after_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("hocus.db").display());
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
        let conn = tokio::spawn(serve_hocus_socket(
            state.clone(),
            socket,
            Tripped::default(),
            admission,
            IpAddr::from([127, 0, 0, 1]),
        ));

        // Messages for a document that has not authenticated are ignored.
        send(&mut client, hp::encode_sync_step1("a", &[])).await;
        for name in ["a", "b"] {
            send(&mut client, hp::encode_token(name, "", Some("4.7.0"))).await;
            let authenticated = HocusMessage::Authenticated {
                scope: hp::SCOPE_READ_WRITE.into(),
            };
            assert_eq!(next(&mut client).await, Ok((name.into(), authenticated)));
        }
        for name in ["a", "b"] {
            send(&mut client, hp::encode_sync_step1(name, &[])).await;
            let (doc, step2) = next(&mut client).await.unwrap();
            assert_eq!(doc, name);
            assert!(matches!(step2, HocusMessage::SyncStep2 { .. }));
            let (doc, step1) = next(&mut client).await.unwrap();
            assert_eq!(doc, name);
            assert!(matches!(step1, HocusMessage::SyncStep1 { .. }));
        }
        let mut mine = Document::new(ReplicaId::new(7).unwrap());
        let delta = mine.text_insert("text", 0, "hi").unwrap();
        send(&mut client, hp::encode_update("b", &delta.yjs)).await;
        let status = HocusMessage::SyncStatus { applied: true };
        assert_eq!(next(&mut client).await, Ok(("b".into(), status)));
        // Answered after the commit: the store already holds it.
        let stored = state.store.document(&DocId::new("b").unwrap()).await;
        assert_eq!(stored.unwrap().unwrap().head_seq, 1);
        assert!(
            state
                .store
                .document(&DocId::new("a").unwrap())
                .await
                .unwrap()
                .is_none_or(|m| m.head_seq == 0)
        );

        // An unknown message type closes the connection with 4000.
        send(&mut client, vec![1, b'a', 99]).await;
        assert_eq!(next(&mut client).await, Err(4000));
        drop(client);
        timeout(std::time::Duration::from_secs(10), conn)
            .await
            .unwrap()
            .unwrap();
    }
}
