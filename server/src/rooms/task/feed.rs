//! What the room does for the HTTP transports: readers that follow the log (SSE, long polling)
//! get each committed entry with its seq, encoded once for all of them; writes (`POST`) are
//! checked as a peer's delta, committed, and answered with their seq.
//!
//! A reader starts at the head the room holds when it arrives (`follow`); everything up to
//! that head is in the store, where the reader's handler reads what it lacks, so the store and
//! the room together give every entry exactly once.

use std::collections::HashSet;

use bytes::Bytes;
use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::{Access, Echo, PeerId, PendingDelta, SubscribeOptions};
use lattice_engine::{Delta, Value};
use tokio::sync::oneshot;
use tracing::warn;

use crate::clock::now_ms;
use crate::rooms::peer::{PeerHandle, PeerKind};
use crate::rooms::{PresenceOf, WriteRefused, Written};
use crate::store::ReadError;
use crate::transport::close::CloseCode;
use crate::transport::outbox::{Message, SendError};

use super::RoomDriver;

/// One entry of the commit in flight, kept to give readers that follow the log once it has
/// its seq.
#[derive(Debug)]
pub(super) struct Committing {
    delta: Delta,
}

impl Committing {
    pub(super) fn of(pending: &PendingDelta) -> Committing {
        Committing {
            delta: pending.delta.clone(),
        }
    }
}

/// An HTTP write waiting for its commit: the room token of its entry, or `None` when it
/// changed nothing and waits only for what the document already held to be committed.
#[derive(Debug)]
pub(super) struct WriteWaiter {
    token: Option<u64>,
    pub(super) reply: oneshot::Sender<Result<Written, WriteRefused>>,
}

impl RoomDriver {
    /// Starts giving `peer` the entries committed after the current head, which it is told.
    pub(super) fn follow(
        &mut self,
        peer: PeerHandle,
        presence: bool,
        reply: oneshot::Sender<Result<u64, ReadError>>,
    ) -> lattice_engine::sync::Effects {
        if peer.closer.is_closed() {
            return lattice_engine::sync::Effects::default();
        }
        let id = peer.id;
        self.peers.insert(id, peer);
        self.feeds.insert(id, self.head_seq);
        let _ = reply.send(Ok(self.head_seq));
        if !presence {
            return lattice_engine::sync::Effects::default();
        }
        // Subscribed with everything the room holds, so there is nothing to compute: it only
        // joins presence (the subscription's sync answer is not sent to HTTP readers).
        let known = self.room.document().state();
        let options = SubscribeOptions {
            access: Access::Read,
            echo: Echo::None,
        };
        self.room.subscribe(id, options, &known)
    }

    /// An HTTP write: the delta is checked and applied as a peer's (by a peer that subscribes
    /// for this one delta), then waits for its commit.
    pub(super) async fn write(
        &mut self,
        peer: PeerId,
        access: Access,
        author: Option<String>,
        delta: Delta,
        reply: oneshot::Sender<Result<Written, WriteRefused>>,
    ) {
        let known = self.room.document().state();
        let options = SubscribeOptions {
            access,
            echo: Echo::None,
        };
        // The subscription's answers go nowhere: `peer` is not one of `self.peers`.
        let joined = self.room.subscribe(peer, options, &known);
        self.apply(joined).await;
        let fx = self.room.client_delta(peer, 1, delta, author, now_ms());
        let refusal = fx.send.iter().find_map(|out| match &out.msg {
            ServerMsg::Error { code, message, .. } if out.to.contains(&peer) => {
                Some(WriteRefused::Delta {
                    code: *code,
                    message: message.clone(),
                })
            }
            _ => None,
        });
        match refusal {
            Some(refused) => {
                let _ = reply.send(Err(refused));
            }
            None => self.writes.push(WriteWaiter {
                token: fx.persist.first().map(|p| p.token),
                reply,
            }),
        }
        self.apply(fx).await;
        // Its relay and ack stay queued in the room; the ack goes to no one.
        let left = self.room.unsubscribe(peer);
        self.apply(left).await;
    }

    /// Presence from HTTP: for an SSE reader of `author`'s, or for a session of `author`'s
    /// (which joins the room, without a connection, on its first presence): its peer number
    /// and the effects. `None` if `of` is not `author`'s reader.
    pub(super) fn http_presence(
        &mut self,
        of: PresenceOf,
        author: Option<String>,
        state: Value,
        typing: bool,
    ) -> Option<(PeerId, lattice_engine::sync::Effects)> {
        let peer = match of {
            PresenceOf::Stream(peer) => {
                let reader = self.peers.get(&peer).is_some_and(|h| {
                    h.kind == PeerKind::Feed && h.author.as_deref() == author.as_deref()
                }) && self.room.is_subscribed(peer);
                if !reader {
                    return None;
                }
                peer
            }
            PresenceOf::Session { name, new_peer } => {
                let key = (author, name);
                match self.sessions.get(&key) {
                    Some(peer) => *peer,
                    None => {
                        if state == Value::Null {
                            return Some((new_peer, lattice_engine::sync::Effects::default()));
                        }
                        // Subscribed with everything the room holds: it only joins presence;
                        // what the room sends it goes nowhere (it is not one of `self.peers`).
                        let known = self.room.document().state();
                        let options = SubscribeOptions {
                            access: Access::Read,
                            echo: Echo::None,
                        };
                        let _ = self.room.subscribe(new_peer, options, &known);
                        self.sessions.insert(key, new_peer);
                        new_peer
                    }
                }
            }
        };
        Some((peer, self.room.presence(peer, state, typing, now_ms())))
    }

    /// Sessions whose presence expired (or that left) leave the room.
    pub(super) async fn end_expired_sessions(&mut self) {
        let gone: Vec<_> = self
            .sessions
            .iter()
            .filter(|(_, peer)| !self.room.has_presence(**peer))
            .map(|(key, peer)| (key.clone(), *peer))
            .collect();
        for (key, peer) in gone {
            self.sessions.remove(&key);
            let fx = self.room.unsubscribe(peer);
            self.apply(fx).await;
        }
    }

    /// Answers the writes whose entries are among `tokens`, committed as `seqs`.
    pub(super) fn answer_writes(&mut self, tokens: &[u64], seqs: &[u64]) {
        if self.writes.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.writes);
        for w in waiters {
            let at = w.token.and_then(|t| tokens.iter().position(|x| *x == t));
            match at.and_then(|i| seqs.get(i)) {
                Some(seq) => {
                    let _ = w.reply.send(Ok(Written {
                        seq: *seq,
                        changed: true,
                    }));
                }
                None => self.writes.push(w),
            }
        }
    }

    /// Answers the writes that changed nothing, once nothing waits for a commit.
    pub(super) fn answer_unchanged_writes(&mut self) {
        if self.in_flight.is_some() || !self.pending.is_empty() {
            return;
        }
        let head = self.head_seq;
        let (unchanged, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.writes)
            .into_iter()
            .partition(|w| w.token.is_none());
        self.writes = waiting;
        for w in unchanged {
            let _ = w.reply.send(Ok(Written {
                seq: head,
                changed: false,
            }));
        }
    }

    /// Gives every HTTP reader the committed entries it has not had, each encoded once. A
    /// reader whose outbox is full is closed as a slow consumer; it resumes from its last seq.
    pub(super) async fn feed_committed(&mut self, entries: &[Committing], seqs: &[u64]) {
        if self.feeds.is_empty() {
            return;
        }
        let mut dropped: HashSet<PeerId> = HashSet::new();
        for (entry, seq) in entries.iter().zip(seqs) {
            // Encoded at most once per protocol (see `apply`).
            let mut encoded: Vec<(PeerKind, Option<Bytes>)> = Vec::new();
            for (peer, cursor) in &mut self.feeds {
                if *cursor >= *seq || dropped.contains(peer) {
                    continue;
                }
                let Some(handle) = self.peers.get(peer) else {
                    dropped.insert(*peer);
                    continue;
                };
                let at = match encoded.iter().position(|(k, _)| *k == handle.kind) {
                    Some(at) => at,
                    None => {
                        let frame = handle.encoder.encode_entry(&self.doc, *seq, &entry.delta);
                        encoded.push((handle.kind, frame));
                        encoded.len() - 1
                    }
                };
                let Some(frame) = encoded[at].1.clone() else {
                    continue;
                };
                match handle.outbox.try_send(Message::Binary(frame)) {
                    Ok(()) => *cursor = *seq,
                    Err(SendError::Full) => {
                        warn!(peer = peer.0, "HTTP reader's queue full: closing it");
                        handle.closer.close(CloseCode::SlowConsumer);
                        dropped.insert(*peer);
                    }
                    Err(SendError::Closed) => {
                        dropped.insert(*peer);
                    }
                }
            }
        }
        for peer in dropped {
            self.feeds.remove(&peer);
            self.peers.remove(&peer);
            let more = self.room.unsubscribe(peer);
            self.apply(more).await;
        }
    }
}
