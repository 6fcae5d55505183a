//! The awareness identities (client id and clock) of every peer's presence, which Yjs
//! clients need to see one entry per peer whatever protocol it speaks; the y-websocket
//! encoding itself is the Yjs protocol's (`protocols/yjs.rs`).

use std::sync::Arc;

use lattice_engine::Value;
use lattice_engine::sync::PeerId;

use crate::clock::now_ms;

use crate::rooms::peer::AwarenessId;

use super::RoomDriver;

/// A native peer's Yjs awareness client id: in `[2^52, 2^53)`, so it never collides with a Yjs
/// document's 32-bit client ids, and mixed with this server's random replica id, so a peer id
/// reused after a restart does not inherit an old entry's clock in long-lived Yjs clients.
fn native_awareness_client(replica: u64, peer: PeerId) -> u64 {
    let low = ((replica << 20) ^ peer.0) & ((1 << 52) - 1);
    (1 << 52) | low
}

/// How a peer's presence appears in Yjs awareness: a client id and a clock that only grows.
#[derive(Clone, Debug)]
pub(super) struct AwarenessMeta {
    pub(super) client: u64,
    pub(super) clock: u32,
    /// The entry came from a Yjs client, whose own clock is used as is.
    pub(super) from_yjs: bool,
    /// The Yjs client removed its own state with `clock`; the removal is relayed with it.
    pub(super) removed_by_client: bool,
    /// The principal that speaks for this client id.
    pub(super) author: Option<Arc<str>>,
    /// When the peer left: its client id stays reserved for its principal for a presence TTL,
    /// so that no one else takes it as it leaves or while it reconnects.
    pub(super) left_at_ms: Option<u64>,
}

impl RoomDriver {
    /// Whether `peer` may speak for awareness client `client`: yes unless another principal
    /// does, or did until less than a presence TTL ago. A peer of the same principal (the same
    /// client reconnecting, before or after its old connection timed out) takes the id over.
    pub(super) fn claim_awareness_client(&mut self, peer: PeerId, client: u64) -> bool {
        let author = self.peers.get(&peer).and_then(|h| h.author.clone());
        let holder = self
            .awareness
            .iter()
            .find(|(p, m)| **p != peer && m.from_yjs && m.client == client)
            .map(|(p, m)| (*p, m.author.clone()));
        let Some((holder, holder_author)) = holder else {
            return true;
        };
        if holder_author != author {
            return false;
        }
        self.awareness.remove(&holder);
        true
    }

    /// `peer` left: a Yjs client's id stays reserved for its principal a while
    /// ([`AwarenessMeta::left_at_ms`]); a native peer's entry goes.
    pub(super) fn awareness_left(&mut self, peer: PeerId) {
        self.publish_left(peer);
        match self.awareness.get_mut(&peer) {
            Some(meta) if meta.from_yjs => meta.left_at_ms = Some(now_ms()),
            Some(_) => {
                self.awareness.remove(&peer);
            }
            None => {}
        }
    }

    /// Frees the ids of Yjs clients that left more than `ttl_ms` ago.
    pub(super) fn expire_left_awareness(&mut self, ttl_ms: u64) {
        let now = now_ms();
        self.awareness.retain(|_, m| {
            m.left_at_ms
                .is_none_or(|at| now.saturating_sub(at) < ttl_ms)
        });
    }

    /// The awareness identity of `peer`'s presence, for a `presence` message about it (`state`
    /// `null`: it left). Entries from Yjs clients keep their client id and clock; native peers
    /// get a client id above the 32-bit range Yjs documents use, and a clock bumped on every
    /// change. Removals the server makes (leave, expiry) bump the clock.
    pub(super) fn awareness_id(&mut self, peer: PeerId, state: &Value) -> AwarenessId {
        let replica = u64::from(self.rooms.env().replica.get());
        let author = self.peers.get(&peer).and_then(|h| h.author.clone());
        let meta = self.awareness.entry(peer).or_insert_with(|| AwarenessMeta {
            client: native_awareness_client(replica, peer),
            clock: 0,
            from_yjs: false,
            removed_by_client: false,
            author,
            left_at_ms: None,
        });
        let removal = *state == Value::Null;
        if !meta.from_yjs || (removal && !meta.removed_by_client) {
            meta.clock = meta.clock.saturating_add(1);
        }
        if removal {
            meta.removed_by_client = true;
        }
        AwarenessId {
            client: meta.client,
            clock: meta.clock,
        }
    }
}
