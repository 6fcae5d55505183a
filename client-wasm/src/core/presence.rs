//! Presence: the other peers' ([`PeerPresence`], kept per document from the server's
//! messages) and this client's own, which is renewed while online and published again after a
//! reconnect.

use std::collections::BTreeMap;

use lattice_engine::{DocId, Value};

use super::{ClientCore, ClientError, Link};

/// How long the typing flag of this client's presence stays set after `typing: true` (the
/// server expires it after 5 s without renewal; renewing it beyond this would keep a stale flag).
pub const TYPING_TTL_MS: u64 = 5_000;

/// The presence of another peer on a document.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerPresence {
    /// The server's number for the peer's connection.
    pub peer: u64,
    pub state: Value,
    pub typing: bool,
}

/// This client's own presence on a document, kept to renew it and to publish it again after a
/// reconnect.
#[derive(Clone, Debug)]
pub(super) struct MyPresence {
    state: Value,
    typing_until_ms: u64,
    pub(super) sent_at_ms: Option<u64>,
}

impl ClientCore {
    /// The presence of the other peers on `doc`, ordered by peer.
    pub fn others(&self, doc: &DocId) -> Vec<PeerPresence> {
        self.docs
            .get(doc)
            .map(|d| d.others.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Sets this client's presence on `doc` (`Value::Null` leaves) and publishes it when online;
    /// it is renewed every `presence_renew_ms` and published again after a reconnect. `typing`
    /// sets or clears the typing flag; `None` leaves it as it is (a cursor moving is not typing,
    /// nor the end of it).
    pub fn set_presence(
        &mut self,
        doc: &DocId,
        state: Value,
        typing: Option<bool>,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let d = self
            .docs
            .get_mut(doc)
            .ok_or_else(|| ClientError::NotOpen { doc: doc.clone() })?;
        if state == Value::Null {
            d.mine = None;
            let out = self.session.presence(doc, Value::Null, false);
            self.dispatch(out);
            return Ok(());
        }
        let typing_until_ms = match typing {
            Some(true) => now_ms.saturating_add(TYPING_TTL_MS),
            Some(false) => 0,
            None => d.mine.as_ref().map_or(0, |m| m.typing_until_ms),
        };
        d.mine = Some(MyPresence {
            state,
            typing_until_ms,
            sent_at_ms: None,
        });
        if self.session.is_synced(doc) {
            self.send_my_presence(doc, now_ms);
        }
        Ok(())
    }

    /// Sets or clears the typing flag of this client's presence on `doc` (an empty presence
    /// is created if there is none).
    pub fn set_typing(
        &mut self,
        doc: &DocId,
        typing: bool,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let state = self
            .docs
            .get(doc)
            .ok_or_else(|| ClientError::NotOpen { doc: doc.clone() })?
            .mine
            .as_ref()
            .map_or_else(|| Value::Map(BTreeMap::new()), |m| m.state.clone());
        self.set_presence(doc, state, Some(typing), now_ms)
    }

    pub(super) fn send_my_presence(&mut self, doc: &DocId, now_ms: u64) {
        let Some(mine) = self.docs.get_mut(doc).and_then(|d| d.mine.as_mut()) else {
            return;
        };
        if self.link != Link::Open {
            return;
        }
        mine.sent_at_ms = Some(now_ms);
        let state = mine.state.clone();
        let typing = now_ms < mine.typing_until_ms;
        let out = self.session.presence(doc, state, typing);
        self.dispatch(out);
    }
}

#[cfg(test)]
mod tests {
    use lattice_engine::protocol::{ClientMsg, ServerMsg};

    use super::*;
    use crate::core::testing::{core, doc, online, online_client, sent, server, statuses};
    use crate::core::{ClientEvent, Status};

    #[test]
    fn presence_of_others_is_tracked_and_forgotten_on_disconnect() {
        let (mut c, d) = online_client();
        c.take_events();
        let alice = Value::String("alice".into());
        server(
            &mut c,
            ServerMsg::Presence {
                doc: d.clone(),
                peer: 4,
                state: alice.clone(),
                typing: true,
            },
        );
        server(
            &mut c,
            ServerMsg::Presence {
                doc: d.clone(),
                peer: 2,
                state: Value::Int(1),
                typing: false,
            },
        );
        assert_eq!(
            c.others(&d),
            vec![
                PeerPresence {
                    peer: 2,
                    state: Value::Int(1),
                    typing: false
                },
                PeerPresence {
                    peer: 4,
                    state: alice,
                    typing: true
                }
            ]
        );
        assert_eq!(
            c.take_events(),
            vec![ClientEvent::Presence { doc: d.clone() }]
        );
        server(
            &mut c,
            ServerMsg::Presence {
                doc: d.clone(),
                peer: 4,
                state: Value::Null,
                typing: false,
            },
        );
        assert_eq!(c.others(&d).len(), 1);
        c.socket_closed();
        assert!(c.others(&d).is_empty());
        let events = c.take_events();
        assert!(events.contains(&ClientEvent::Presence { doc: d.clone() }));
        assert_eq!(statuses(&events), vec![(Status::Offline, 0)]);
    }

    #[test]
    fn my_presence_is_published_renewed_and_republished_after_reconnect() {
        let d = doc("notes");
        let mut c = core(7);
        c.open(d.clone(), Vec::new()).expect("open");
        // Set while offline: kept, sent once synced.
        c.set_presence(&d, Value::String("me".into()), Some(true), 0)
            .expect("presence");
        assert!(c.take_frames().frames.is_empty());
        online(&mut c, &d);
        let msgs = sent(&mut c);
        assert!(
            msgs.iter().any(|m| matches!(
                m,
                ClientMsg::Presence { typing: true, state: Value::String(s), .. } if s == "me"
            )),
            "{msgs:?}"
        );
        // Renewed after the interval, with the typing flag expired.
        c.tick(1_000 + c.options.presence_renew_ms);
        let msgs = sent(&mut c);
        assert!(
            msgs.iter()
                .any(|m| matches!(m, ClientMsg::Presence { typing: false, .. })),
            "{msgs:?}"
        );
        c.socket_closed();
        online(&mut c, &d);
        assert!(
            sent(&mut c)
                .iter()
                .any(|m| matches!(m, ClientMsg::Presence { .. }))
        );
        c.set_presence(&d, Value::Null, Some(false), 2_000)
            .expect("leave");
        assert!(sent(&mut c).iter().any(|m| matches!(
            m,
            ClientMsg::Presence {
                state: Value::Null,
                ..
            }
        )));
    }
}
