//! `/yjs/{doc}`: stock Yjs clients (`y-websocket`'s `WebsocketProvider`) on the same rooms as
//! native clients.
//!
//! The connection speaks the y-websocket protocol ([`lattice_engine::yws`]) and joins the
//! document's room as a [`PeerKind::Yjs`] peer; the room encodes what it sends in that protocol.
//! The mapping:
//!
//! - sync step 1 from the client subscribes (again) with its state vector; the room answers with
//!   sync step 2 (what the client lacks) and its own sync step 1 (so the client sends what the
//!   server lacks);
//! - sync step 2 and updates become deltas: the same group commit and update log as native
//!   deltas, and relayed to everyone, **the sender included**, only once committed;
//! - awareness entries become presence (state parsed from JSON), and presence becomes awareness;
//! - query awareness gets everyone's current presence;
//! - a refused write gets an auth "permission denied" message; any other refusal closes the
//!   connection (4000), which the client answers by reconnecting and resyncing.
//!
//! Every message goes in its own frame (the stable client decodes one message per frame), and
//! an empty awareness message is sent every ping interval, because the client reconnects after
//! 30 s without a message and browsers never surface WebSocket pings.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use governor::DefaultDirectRateLimiter;
use lattice_engine::protocol::{ErrorCode, ServerMsg};
use lattice_engine::sync::{Access, PeerId};
use lattice_engine::yws::{self, AwarenessEntry, YDecodeError, YMessage};
use lattice_engine::{Delta, DocId, DocState, Value};
use tokio::time::{timeout, timeout_at};
use tracing::{Instrument, debug, info_span, warn};

use crate::auth::AuthError;
use crate::rooms::join_room;
use crate::rooms::peer::{AwarenessId, Encoded, Encoder, PeerHandle, PeerKind, peer_handle};
use crate::rooms::{AwarenessOrigin, RoomCmd, RoomSender};
use crate::state::ServerState;
use crate::transport::close::CloseCode;
use crate::transport::close::{close_kind, close_message};
use crate::transport::outbox::{Message, SendError};
use crate::transport::rate::{byte_limiter, message_limiter, within_rate};
use crate::transport::slots::Slot;
use crate::transport::upgrade::WsSocket;
use crate::transport::writer::{Outbound, Stream};

use super::lifecycle::{self, Deadlines, Due, Exit, Protocol, send_to_room};

/// What a Yjs connection may do, decided from its token before the upgrade.
#[derive(Clone, Debug)]
pub(crate) struct YjsGrant {
    pub doc: DocId,
    pub access: Access,
    /// The token's subject, recorded as the author of this connection's updates.
    pub author: Option<String>,
    /// Until the token expires; the connection closes with 4401 then. `None`: never.
    pub expires_in: Option<Duration>,
}

/// Awareness client ids from here up (to 2^53) name native peers' presence (see `rooms/task/awareness.rs`).
pub(crate) const NATIVE_AWARENESS_CLIENTS: u64 = 1 << 52;

struct YjsConn {
    state: Arc<ServerState>,
    grant: YjsGrant,
    peer: PeerHandle,
    room: Option<RoomSender>,
    /// The awareness client id this connection speaks for: the first one it sends.
    awareness_client: Option<u64>,
    next_seq: u64,
    messages: DefaultDirectRateLimiter,
    bytes: DefaultDirectRateLimiter,
    /// The authenticated slot it holds, given back after its last frame.
    slot: Option<Slot>,
}

/// `/yjs/{doc}`: one connection that `grant` lets in, in the authenticated `slot`, as the
/// future that runs it (set up here, so that future keeps no second copy of anything).
pub(crate) fn serve_yjs_socket<S: WsSocket>(
    state: Arc<ServerState>,
    socket: S,
    slot: Slot,
    grant: YjsGrant,
) -> impl Future<Output = ()> + Send {
    let id = PeerId(state.next_peer.fetch_add(1, Relaxed));
    let span = info_span!("yjs", peer = id.0, doc = %grant.doc);
    let limits = &state.config.limits;
    let outbound = Outbound::new(limits);
    let conn = YjsConn {
        peer: peer_handle(
            limits,
            id,
            (PeerKind::Yjs, &YjsEncoder),
            grant.author.as_deref(),
            &outbound,
        ),
        state: state.clone(),
        grant,
        room: None,
        awareness_client: None,
        next_seq: 1,
        messages: message_limiter(limits),
        bytes: byte_limiter(limits),
        slot: Some(slot),
    };
    lifecycle::serve(conn, socket, outbound).instrument(span)
}

/// Why a Yjs connection is refused, and with which close code.
#[derive(Clone, Debug)]
pub(crate) struct YjsRefusal {
    pub code: CloseCode,
    /// Sent in the permission-denied message; never says whether a document exists.
    pub reason: String,
}

impl YjsRefusal {
    pub(crate) fn forbidden() -> YjsRefusal {
        YjsRefusal {
            code: CloseCode::Forbidden,
            reason: "not permitted".to_owned(),
        }
    }

    pub(crate) fn from_auth(e: &AuthError) -> YjsRefusal {
        match e {
            AuthError::Throttled { .. } => YjsRefusal {
                code: CloseCode::RateLimited,
                reason: e.to_string(),
            },
            AuthError::Forbidden { .. } => YjsRefusal::forbidden(),
            _ => YjsRefusal {
                code: CloseCode::Unauthorized,
                reason: e.to_string(),
            },
        }
    }
}

/// A connection whose token was refused: a permission-denied message (stock clients log its
/// reason), then the close. 4401 and 4403 are in the 4400–4499 range on which y-websocket
/// clients stop reconnecting; 4029 (throttled) lets them retry with backoff.
pub(crate) async fn refuse<S: WsSocket>(
    state: Arc<ServerState>,
    mut socket: S,
    slot: Slot,
    refusal: YjsRefusal,
) {
    let denied = Message::Binary(Bytes::from(yws::encode_permission_denied(&refusal.reason)));
    let _ = timeout(state.config.shutdown_deadline, async {
        socket.send(denied).await?;
        socket.send(close_message(refusal.code)).await
    })
    .await;
    state.metrics.closed(close_kind(refusal.code));
    drop(slot);
}

/// The y-websocket encoding of room messages. Acks become nothing (the sender's own update
/// comes back as an echo instead), a refused write becomes "permission denied", any other
/// refusal closes the peer so it reconnects and resyncs; presence becomes an awareness update
/// under the identity the room keeps for the peer.
#[derive(Debug)]
pub(crate) struct YjsEncoder;

impl Encoder for YjsEncoder {
    fn encode(&self, msg: &ServerMsg, awareness: Option<AwarenessId>) -> Encoded {
        let frames = match msg {
            ServerMsg::Sync { delta, state, .. } => vec![
                yws::encode_sync_step2(&delta.yjs),
                yws::encode_sync_step1(&state.yjs),
            ],
            ServerMsg::Delta { delta, .. } if !delta.yjs.is_empty() => {
                vec![yws::encode_update(&delta.yjs)]
            }
            ServerMsg::Presence { state, .. } => {
                let Some(entry) = awareness_entry(state, awareness) else {
                    return Encoded::default();
                };
                vec![yws::encode_awareness(&[entry])]
            }
            ServerMsg::Error { code, message, .. } => {
                return match code {
                    ErrorCode::Forbidden => {
                        Encoded::frames(vec![Bytes::from(yws::encode_permission_denied(message))])
                    }
                    ErrorCode::Internal => Encoded {
                        frames: Vec::new(),
                        close: Some(CloseCode::DocumentUnavailable),
                    },
                    // The room follows with a sync; its sync step 1 makes the client send
                    // everything the room lacks, what the update built on included.
                    ErrorCode::MissingDependencies => Encoded::default(),
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

/// A presence `state` as the awareness entry of the identity the room keeps for its peer
/// (`None` without one). Shared with Hocuspocus, whose awareness is y-websocket's.
pub(crate) fn awareness_entry(
    state: &Value,
    awareness: Option<AwarenessId>,
) -> Option<AwarenessEntry> {
    let AwarenessId { client, clock } = awareness?;
    let state_json = match state {
        Value::Null => "null".to_owned(),
        state => serde_json::to_string(state).unwrap_or_else(|_| "null".to_owned()),
    };
    Some(AwarenessEntry {
        client,
        clock,
        state_json,
    })
}

/// What a client's awareness `entries` become: presence commands for `peer`, from the one
/// awareness client id the connection speaks for (`mine`, the first it sends). Entries for
/// other clients (relayed ones are not trusted) and in the range of native peers' ids are
/// skipped; a state that is not JSON is an error (the caller closes with 4000).
pub(crate) fn presence_from_awareness(
    peer: PeerId,
    mine: &mut Option<u64>,
    entries: Vec<AwarenessEntry>,
) -> Result<Vec<RoomCmd>, serde_json::Error> {
    let mut cmds = Vec::new();
    for entry in entries {
        if entry.client >= NATIVE_AWARENESS_CLIENTS {
            // That range names native peers' presence; a Yjs client may not speak for them.
            continue;
        }
        if entry.client != *mine.get_or_insert(entry.client) {
            continue;
        }
        let state = if entry.is_removal() {
            Value::Null
        } else {
            serde_json::from_str::<Value>(&entry.state_json)?
        };
        cmds.push(RoomCmd::Presence {
            peer,
            state,
            typing: false,
            awareness: Some(AwarenessOrigin {
                client: entry.client,
                clock: entry.clock,
            }),
        });
    }
    Ok(cmds)
}

/// Joins `doc`'s room as `peer` (or resyncs with it, when `room` is joined already) from a Yjs
/// client's `state_vector`, once the connection's budget of full-state syncs allows: a sync
/// step 1 on `/yjs` and on `/hocuspocus`. A room that cannot be joined closes with 4011.
pub(crate) async fn subscribe_yjs(
    state: &ServerState,
    room: &mut Option<RoomSender>,
    doc: &DocId,
    peer: &PeerHandle,
    access: Access,
    state_vector: Vec<u8>,
) -> Option<Exit> {
    let ticket = match lifecycle::sync_slot(state.rooms.env(), peer).await {
        Ok(ticket) => ticket,
        Err(exit) => return Some(exit),
    };
    let cmd = RoomCmd::Subscribe {
        peer: peer.clone(),
        access,
        state: DocState {
            yjs: state_vector,
            ..DocState::default()
        },
        ticket,
    };
    match room {
        Some(room) => {
            if send_to_room(room, cmd).await.is_err() {
                return Some(Exit::SendClose(CloseCode::DocumentUnavailable));
            }
        }
        None => match join_room(&state.rooms, doc, cmd).await {
            Some(joined) => *room = Some(joined),
            None => return Some(Exit::SendClose(CloseCode::DocumentUnavailable)),
        },
    }
    None
}

impl Protocol for YjsConn {
    fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    fn peer(&self) -> &PeerHandle {
        &self.peer
    }

    async fn run<S: WsSocket>(&mut self, stream: &mut Stream<S>) -> Exit {
        let state = self.state.clone();
        let (limits, heartbeat) = (&state.config.limits, &state.config.heartbeat);
        // Until the client's sync step 1 arrives, it gets the hello deadline; a client that
        // sends something else first is subscribed from nothing. The token's expiry is
        // enforced during the session, not only at the upgrade.
        let quiet = |conn: &YjsConn| {
            if conn.room.is_some() {
                heartbeat.idle_timeout
            } else {
                limits.hello_timeout
            }
        };
        let mut deadlines =
            Deadlines::new(quiet(self), heartbeat.ping_interval, self.grant.expires_in);
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
                        self.send(yws::encode_permission_denied("the token has expired"));
                        return Exit::SendClose(CloseCode::TokenExpired);
                    }
                    Some(Due::Quiet) if self.room.is_none() => {
                        if let Some(exit) = Box::pin(self.subscribe(Vec::new())).await {
                            return exit;
                        }
                        deadlines.heard(quiet(self));
                        continue;
                    }
                    Some(Due::Quiet) => return Exit::SendClose(CloseCode::IdleTimeout),
                    Some(Due::Ping) => {
                        // Browsers never surface WebSocket pings: the keep-alive the client
                        // sees is an empty awareness message.
                        lifecycle::ping(&self.peer);
                        self.send(yws::encode_awareness(&[]));
                        continue;
                    }
                    None => continue,
                },
            };
            deadlines.heard(quiet(self));
            let frame = match read {
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
            let messages = match yws::decode_frame(&frame, limits.max_frame_bytes) {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "malformed y-websocket frame");
                    return Exit::SendClose(match e {
                        YDecodeError::FrameTooLarge { .. } => CloseCode::FrameTooLarge,
                        _ => CloseCode::Protocol,
                    });
                }
            };
            // Every message counts against the rate, not only the frame that carries it.
            if !within_rate(&self.messages, &self.bytes, messages.len(), frame.len()) {
                warn!(messages = messages.len(), "over the rate limit");
                return Exit::SendClose(CloseCode::RateLimited);
            }
            for msg in messages {
                // Boxed: its future is larger than the loop's wait, and would make every idle
                // connection hold that much.
                if let Some(exit) = Box::pin(self.handle(msg)).await {
                    return exit;
                }
                // A room that dropped this peer (a slow consumer) must not see it come back
                // through the rest of the frame.
                if self.peer.closer.is_closed() {
                    break;
                }
            }
            // Subscribed now, perhaps: from the hello deadline to the idle timeout.
            deadlines.heard(quiet(self));
        }
    }

    fn rooms(&self) -> Vec<RoomSender> {
        self.room.iter().cloned().collect()
    }

    fn take_slot(&mut self) -> Option<Slot> {
        self.slot.take()
    }
}

impl YjsConn {
    fn send(&self, frame: Vec<u8>) {
        if let Err(SendError::Full) = self
            .peer
            .outbox
            .try_send(Message::Binary(Bytes::from(frame)))
        {
            self.peer.closer.close(CloseCode::SlowConsumer);
        }
    }

    /// Joins (or resyncs with) the room from the client's state vector, once this connection's
    /// budget of full-state syncs allows.
    async fn subscribe(&mut self, state_vector: Vec<u8>) -> Option<Exit> {
        let (doc, access) = (&self.grant.doc, self.grant.access);
        subscribe_yjs(
            &self.state,
            &mut self.room,
            doc,
            &self.peer,
            access,
            state_vector,
        )
        .await
    }

    async fn handle(&mut self, msg: YMessage) -> Option<Exit> {
        if self.room.is_none() {
            let sv = match &msg {
                YMessage::SyncStep1 { state_vector } => state_vector.clone(),
                _ => Vec::new(),
            };
            if let Some(exit) = Box::pin(self.subscribe(sv)).await {
                return Some(exit);
            }
            if matches!(msg, YMessage::SyncStep1 { .. }) {
                return None;
            }
        }
        let room = self.room.clone()?;
        match msg {
            YMessage::SyncStep1 { state_vector } => {
                return Box::pin(self.subscribe(state_vector)).await;
            }
            YMessage::SyncStep2 { update } | YMessage::Update { update } => {
                if update == yws::EMPTY_UPDATE {
                    return None;
                }
                if self.grant.access == Access::Read {
                    self.send(yws::encode_permission_denied(
                        "read-only access: the update was refused",
                    ));
                    return None;
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let cmd = RoomCmd::Delta {
                    peer: self.peer.id,
                    seq,
                    delta: Delta {
                        yjs: update,
                        ..Delta::default()
                    },
                    author: self.grant.author.clone(),
                };
                if send_to_room(&room, cmd).await.is_err() {
                    return Some(Exit::SendClose(CloseCode::DocumentUnavailable));
                }
            }
            YMessage::Awareness { entries } => {
                let cmds = match presence_from_awareness(
                    self.peer.id,
                    &mut self.awareness_client,
                    entries,
                ) {
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
            YMessage::QueryAwareness => {
                let cmd = RoomCmd::QueryPresence { peer: self.peer.id };
                let _ = send_to_room(&room, cmd).await;
            }
            // Clients do not send auth messages; one that does changes nothing.
            YMessage::Auth { .. } => {}
        }
        None
    }
}
