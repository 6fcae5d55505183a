//! Presence in a room: who is here and whether they are typing. Never persisted; entries and
//! typing flags expire after the room's TTLs, measured in the driver's time (`now_ms`).

use super::{Effects, Outgoing, PeerId, Room};
use crate::Value;
use crate::protocol::{ErrorCode, ServerMsg};

/// What one peer published, and until when it holds.
pub(super) struct Presence {
    state: Value,
    typing: bool,
    expires_at_ms: u64,
    typing_until_ms: u64,
}

impl Room {
    /// Removes `peer`'s presence, if it had one, and tells the others it left.
    pub(super) fn drop_presence(&mut self, peer: PeerId, fx: &mut Effects) {
        if self.presence.remove(&peer).is_some() {
            let to = self.others(peer);
            if !to.is_empty() {
                fx.send.push(Outgoing {
                    to,
                    msg: self.presence_msg(peer, None),
                });
            }
        }
    }

    /// The presence of `peer` as the others see it (`None`: it left, `Value::Null`).
    pub(super) fn presence_msg(&self, peer: PeerId, p: Option<&Presence>) -> ServerMsg {
        ServerMsg::Presence {
            doc: self.doc_id.clone(),
            peer: peer.0,
            state: p.map_or(Value::Null, |p| p.state.clone()),
            typing: p.is_some_and(|p| p.typing),
        }
    }

    /// Everyone's current presence, as `presence` messages (for a reader that polls for it).
    pub fn presence_snapshot(&self) -> Vec<ServerMsg> {
        self.presence
            .iter()
            .map(|(peer, p)| self.presence_msg(*peer, Some(p)))
            .collect()
    }

    /// Whether `peer` has a presence entry (it expires after the presence TTL).
    pub fn has_presence(&self, peer: PeerId) -> bool {
        self.presence.contains_key(&peer)
    }

    /// A peer publishes its presence (any subscriber, read-only included). `Value::Null`
    /// leaves.
    pub fn presence(&mut self, peer: PeerId, state: Value, typing: bool, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        if !self.subscribers.contains_key(&peer) {
            fx.to(
                peer,
                self.error(
                    ErrorCode::NotSubscribed,
                    "subscribe before publishing presence".into(),
                    None,
                ),
            );
            return fx;
        }
        match state {
            Value::Null => {
                self.drop_presence(peer, &mut fx);
            }
            state => {
                let entry = Presence {
                    state,
                    typing,
                    expires_at_ms: now_ms.saturating_add(self.config.presence_ttl_ms),
                    typing_until_ms: if typing {
                        now_ms.saturating_add(self.config.typing_ttl_ms)
                    } else {
                        0
                    },
                };
                let msg = self.presence_msg(peer, Some(&entry));
                self.presence.insert(peer, entry);
                let to = self.others(peer);
                if !to.is_empty() {
                    fx.send.push(Outgoing { to, msg });
                }
            }
        }
        fx
    }

    /// Everyone else's current presence, for a peer that asks (y-websocket's query awareness).
    pub fn query_presence(&self, peer: PeerId) -> Effects {
        let mut fx = Effects::default();
        if !self.subscribers.contains_key(&peer) {
            return fx;
        }
        for (other, p) in &self.presence {
            if *other != peer {
                fx.to(peer, self.presence_msg(*other, Some(p)));
            }
        }
        fx
    }

    /// Expires presence entries and typing flags. The driver calls it periodically.
    pub fn tick(&mut self, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        let expired: Vec<PeerId> = self
            .presence
            .iter()
            .filter(|(_, p)| p.expires_at_ms <= now_ms)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            self.presence.remove(&peer);
            let to = self.others(peer);
            if !to.is_empty() {
                fx.send.push(Outgoing {
                    to,
                    msg: self.presence_msg(peer, None),
                });
            }
        }
        let stopped: Vec<PeerId> = self
            .presence
            .iter()
            .filter(|(_, p)| p.typing && p.typing_until_ms <= now_ms)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in stopped {
            if let Some(p) = self.presence.get_mut(&peer) {
                p.typing = false;
            }
            let msg = self.presence_msg(peer, self.presence.get(&peer));
            let to = self.others(peer);
            if !to.is_empty() {
                fx.send.push(Outgoing { to, msg });
            }
        }
        fx
    }
}
