//! What the room adds for y-websocket peers: each room message translated once into their
//! frames, and the awareness identities (client id and clock) of every peer's presence.

use bytes::Bytes;
use lattice_engine::Value;
use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::PeerId;

use crate::transport::close::CloseCode;

use super::RoomDriver;

/// A native peer's Yjs awareness client id: in `[2^52, 2^53)`, so it never collides with a Yjs
/// document's 32-bit client ids, and mixed with this server's random replica id, so a peer id
/// reused after a restart does not inherit an old entry's clock in long-lived Yjs clients.
fn native_awareness_client(replica: u64, peer: PeerId) -> u64 {
    let low = ((replica << 20) ^ peer.0) & ((1 << 52) - 1);
    (1 << 52) | low
}

/// How a peer's presence appears in Yjs awareness: a client id and a clock that only grows.
#[derive(Clone, Copy, Debug)]
pub(super) struct AwarenessMeta {
    pub(super) client: u64,
    pub(super) clock: u32,
    /// The entry came from a Yjs client, whose own clock is used as is.
    pub(super) from_yjs: bool,
    /// The Yjs client removed its own state with `clock`; the removal is relayed with it.
    pub(super) removed_by_client: bool,
}

/// What one message becomes for a Yjs peer.
#[derive(Clone, Debug, Default)]
pub(super) struct YjsOut {
    pub(super) frames: Vec<Bytes>,
    /// Close the peer after the frames (it sent something the room refused).
    pub(super) close: Option<CloseCode>,
}

impl RoomDriver {
    /// Whether `peer` may speak for awareness client `client`: yes unless another peer of this
    /// room already does for another principal. A peer of the same principal (the same client
    /// reconnecting before its old connection timed out) takes the id over.
    pub(super) fn claim_awareness_client(&mut self, peer: PeerId, client: u64) -> bool {
        let author = |p: &PeerId| self.peers.get(p).and_then(|h| h.author.clone());
        let holder = self
            .awareness
            .iter()
            .find(|(p, m)| **p != peer && m.from_yjs && m.client == client)
            .map(|(p, _)| *p);
        let Some(holder) = holder else {
            return true;
        };
        if author(&holder) != author(&peer) {
            return false;
        }
        self.awareness.remove(&holder);
        true
    }

    /// Translates one room message for y-websocket peers. Acks become nothing (the sender's
    /// own update comes back as an echo instead), a refused write becomes "permission denied",
    /// any other refusal closes the peer so it reconnects and resyncs.
    pub(super) fn yjs_frames(&mut self, msg: &ServerMsg) -> YjsOut {
        use lattice_engine::protocol::ErrorCode;
        use lattice_engine::yws;
        let frames = match msg {
            ServerMsg::Sync { delta, state, .. } => vec![
                yws::encode_sync_step2(&delta.yjs),
                yws::encode_sync_step1(&state.yjs),
            ],
            ServerMsg::Delta { delta, .. } if !delta.yjs.is_empty() => {
                vec![yws::encode_update(&delta.yjs)]
            }
            ServerMsg::Presence { peer, state, .. } => {
                vec![yws::encode_awareness(&[
                    self.awareness_entry(PeerId(*peer), state)
                ])]
            }
            ServerMsg::Error { code, message, .. } => {
                return match code {
                    ErrorCode::Forbidden => YjsOut {
                        frames: vec![Bytes::from(yws::encode_permission_denied(message))],
                        close: None,
                    },
                    ErrorCode::Internal => YjsOut {
                        frames: Vec::new(),
                        close: Some(CloseCode::DocumentUnavailable),
                    },
                    // The room follows with a sync; its sync step 1 makes the client send
                    // everything the room lacks, what the update built on included.
                    ErrorCode::MissingDependencies => YjsOut::default(),
                    _ => YjsOut {
                        frames: Vec::new(),
                        close: Some(CloseCode::Protocol),
                    },
                };
            }
            _ => Vec::new(),
        };
        YjsOut {
            frames: frames.into_iter().map(Bytes::from).collect(),
            close: None,
        }
    }

    /// The awareness entry for `peer`'s presence. Entries from Yjs clients keep their client id
    /// and clock; native peers get a client id above the 32-bit range Yjs documents use, and a
    /// clock bumped on every change. Removals the server makes (leave, expiry) bump the clock.
    fn awareness_entry(
        &mut self,
        peer: PeerId,
        state: &Value,
    ) -> lattice_engine::yws::AwarenessEntry {
        let replica = u64::from(self.rooms.env().replica.get());
        let meta = self.awareness.entry(peer).or_insert_with(|| AwarenessMeta {
            client: native_awareness_client(replica, peer),
            clock: 0,
            from_yjs: false,
            removed_by_client: false,
        });
        let removal = *state == Value::Null;
        if !meta.from_yjs || (removal && !meta.removed_by_client) {
            meta.clock = meta.clock.saturating_add(1);
        }
        if removal {
            meta.removed_by_client = true;
        }
        let state_json = if removal {
            "null".to_owned()
        } else {
            serde_json::to_string(state).unwrap_or_else(|_| "null".to_owned())
        };
        lattice_engine::yws::AwarenessEntry {
            client: meta.client,
            clock: meta.clock,
            state_json,
        }
    }
}
