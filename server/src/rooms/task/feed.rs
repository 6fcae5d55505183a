//! What the room does for the HTTP transports: readers that follow the log (SSE, long polling)
//! get each committed entry with its seq, encoded once for all of them; writes (`POST`) are
//! checked as a peer's delta, committed, and answered with their seq.
//!
//! A reader starts at the head the room holds when it arrives (`follow`); everything up to
//! that head is in the store, where the reader's handler reads what it lacks, so the store and
//! the room together give every entry exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::{Access, Echo, PeerId, PendingDelta, SubscribeOptions};
use lattice_engine::{Delta, Value};
use tokio::sync::oneshot;
use tracing::warn;

use crate::clock::now_ms;
use crate::rooms::peer::Encoder;
use crate::rooms::peer::{PeerHandle, PeerKind};
use crate::rooms::{Following, PresenceOf, WriteRefused, Written};
use crate::store::ReadError;
use crate::transport::close::CloseCode;
use crate::transport::outbox::{Message, SendError};

use super::RoomDriver;

/// One entry of the commit in flight, kept to give readers that follow the log (and, in a
/// cluster, the other nodes) once it has its seq.
#[derive(Debug)]
pub(super) struct Committing {
    pub(super) delta: Delta,
    pub(super) author: Option<String>,
    /// The entry as stored, for the other nodes of a cluster (`None` on a single server).
    pub(super) stored: Option<Vec<u8>>,
}

impl Committing {
    pub(super) fn of(pending: &PendingDelta, stored: Option<Vec<u8>>) -> Committing {
        Committing {
            delta: pending.delta.clone(),
            author: pending.author.clone(),
            stored,
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
    /// Starts giving `peer` the entries committed after the current head, which it is told
    /// (with the recent entries after `after`, when the window holds them).
    pub(super) fn follow(
        &mut self,
        peer: PeerHandle,
        presence: bool,
        after: Option<u64>,
        reply: oneshot::Sender<Result<Following, ReadError>>,
    ) -> lattice_engine::sync::Effects {
        if peer.closer.is_closed() {
            return lattice_engine::sync::Effects::default();
        }
        let id = peer.id;
        self.recent.keep_for(peer.kind, peer.encoder);
        let recent = after.and_then(|after| self.recent.after(after, self.head_seq));
        self.peers.insert(id, peer);
        self.feeds.insert(id, self.head_seq);
        let _ = reply.send(Ok(Following {
            head: self.head_seq,
            recent,
        }));
        if !presence {
            return lattice_engine::sync::Effects::default();
        }
        // Subscribed with everything the room holds, so there is nothing to compute: it only
        // joins presence (the subscription's sync answer is not sent to HTTP readers).
        let known = self.room.document().state();
        let options = SubscribeOptions {
            access: Access::Read,
            echo: Echo::None,
            author: None,
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
            author: author.as_deref().map(Arc::from),
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
                            author: None,
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
    /// `entries` follow the head in order (`seq`, delta).
    pub(super) async fn feed_in_order(&mut self, entries: &[(u64, &Delta)]) {
        if let Some((kind, encoder)) = self.recent.wanted() {
            for (seq, delta) in entries {
                if let Some(frame) = encoder.encode_entry(&self.doc, *seq, delta) {
                    self.recent.push(kind, *seq, frame);
                }
            }
        }
        if self.feeds.is_empty() {
            return;
        }
        let mut dropped: HashSet<PeerId> = HashSet::new();
        for (seq, delta) in entries {
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
                        // The window may have encoded it already.
                        let frame = match self.recent.get(handle.kind, *seq) {
                            Some(frame) => Some(frame),
                            None => handle.encoder.encode_entry(&self.doc, *seq, delta),
                        };
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

/// The most entries the window keeps.
const RECENT_ENTRIES: usize = 4_096;
/// The most bytes of encoded entries the window keeps.
const RECENT_BYTES: usize = 8 * 1024 * 1024;
/// How long the window is kept up after the last reader came by.
const RECENT_FOR: Duration = Duration::from_secs(120);

/// The last committed entries, encoded for HTTP readers, so that a long poll or an SSE resume
/// that is only a little behind gets them from memory (encoded once) instead of from the
/// store (encoded again for each reader). Kept only while readers come by (`RECENT_FOR`), and
/// bounded in entries and bytes; contiguous, so it either holds all of a range or says so.
#[derive(Default)]
pub(super) struct Recent {
    entries: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The readers' protocol and encoder, and until when to keep encoding for them.
    wanted: Option<(PeerKind, &'static dyn Encoder, Instant)>,
    /// The protocol the entries are encoded for.
    kind: Option<PeerKind>,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("entries", &self.entries.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Recent {
    /// A reader of `kind` came by: keep encoding entries for it a while.
    pub(super) fn keep_for(&mut self, kind: PeerKind, encoder: &'static dyn Encoder) {
        self.wanted = Some((kind, encoder, Instant::now() + RECENT_FOR));
    }

    /// The encoder to fill the window with, while readers come by; the window is dropped
    /// once they stopped.
    pub(super) fn wanted(&mut self) -> Option<(PeerKind, &'static dyn Encoder)> {
        match self.wanted {
            Some((kind, encoder, until)) if Instant::now() < until => Some((kind, encoder)),
            Some(_) => {
                *self = Recent::default();
                None
            }
            None => None,
        }
    }

    pub(super) fn push(&mut self, kind: PeerKind, seq: u64, frame: Bytes) {
        // Contiguous and of one protocol: a gap (a commit made while no one wanted the
        // window) starts it anew.
        if self.kind != Some(kind)
            || self
                .entries
                .back()
                .is_some_and(|(last, _)| *last + 1 != seq)
        {
            self.entries.clear();
            self.bytes = 0;
            self.kind = Some(kind);
        }
        self.bytes += frame.len();
        self.entries.push_back((seq, frame));
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            if let Some((_, old)) = self.entries.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// The entries in `(after, head]`, if the window holds them all.
    pub(super) fn after(&self, after: u64, head: u64) -> Option<Vec<Bytes>> {
        if after >= head {
            return Some(Vec::new());
        }
        let (first, _) = self.entries.front()?;
        let (last, _) = self.entries.back()?;
        if *first > after + 1 || *last < head {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).ok()?;
        let take = usize::try_from(head - after).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take(take)
                .map(|(_, f)| f.clone())
                .collect(),
        )
    }

    /// `seq`'s encoding for `kind`, if the window holds it.
    pub(super) fn get(&self, kind: PeerKind, seq: u64) -> Option<Bytes> {
        if self.kind != Some(kind) {
            return None;
        }
        let (first, _) = self.entries.front()?;
        let at = usize::try_from(seq.checked_sub(*first)?).ok()?;
        self.entries.get(at).map(|(_, frame)| frame.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Plain;

    impl Encoder for Plain {
        fn encode(
            &self,
            _msg: &ServerMsg,
            _awareness: Option<crate::rooms::peer::AwarenessId>,
        ) -> crate::rooms::peer::Encoded {
            crate::rooms::peer::Encoded::default()
        }
    }

    fn frame(seq: u64) -> Bytes {
        Bytes::from(format!("e{seq}"))
    }

    #[test]
    fn the_window_answers_only_ranges_it_holds_whole() {
        let mut recent = Recent::default();
        assert!(
            recent.wanted().is_none(),
            "no reader came by: nothing is kept"
        );
        recent.keep_for(PeerKind::Feed, &Plain);
        assert!(recent.wanted().is_some());
        for seq in 5..=9 {
            recent.push(PeerKind::Feed, seq, frame(seq));
        }
        assert_eq!(recent.after(6, 9), Some(vec![frame(7), frame(8), frame(9)]));
        assert_eq!(recent.after(4, 9).map(|v| v.len()), Some(5));
        assert_eq!(recent.after(9, 9), Some(Vec::new()));
        assert_eq!(recent.after(3, 9), None, "seq 4 is not held");
        assert_eq!(recent.after(6, 10), None, "seq 10 is not held");
        assert_eq!(recent.get(PeerKind::Feed, 8), Some(frame(8)));
        assert_eq!(recent.get(PeerKind::Native, 8), None);
        // A gap starts the window anew: it stays contiguous.
        recent.push(PeerKind::Feed, 12, frame(12));
        assert_eq!(recent.after(9, 12), None);
        assert_eq!(recent.after(11, 12), Some(vec![frame(12)]));
        // Bounded in entries.
        for seq in 13..13 + RECENT_ENTRIES as u64 {
            recent.push(PeerKind::Feed, seq, frame(seq));
        }
        assert_eq!(recent.entries.len(), RECENT_ENTRIES);
    }
}
