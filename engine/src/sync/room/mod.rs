//! The server side of one document.

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::{ErrorCode, ServerMsg};
use crate::{
    ApplyError, Delta, DocId, DocState, Document, Hlc, RestoreError, RestoreReport, Source,
};

mod presence;

use presence::Presence;

/// A connection, as the room knows it. Assigned by the driver, unique per server process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

/// The sender of changes the server makes itself ([`Room::server_delta`]). Drivers number
/// their peers from 1, so it is never a subscriber: its deltas are relayed to everyone and
/// acknowledged to no one.
pub const SERVER_PEER: PeerId = PeerId(0);

/// What a subscriber may do in this room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Receives changes and may publish presence; every write is refused.
    Read,
    /// Receives changes, may publish presence and send deltas.
    Write,
}

/// How a peer subscribes ([`Room::subscribe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Whether the subscriber may write; a read-only subscriber's deltas are refused
    /// (`forbidden`).
    pub access: Access,
    /// Whether its own committed deltas are relayed back to it.
    pub echo: Echo,
}

/// Whether a subscriber gets its own deltas back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Echo {
    /// Its deltas are acknowledged, not relayed back (native clients).
    #[default]
    None,
    /// Its own deltas are relayed back to it once committed, like everyone else's (y-websocket
    /// clients count the echo of an update as "saved").
    OwnDeltas,
}

/// Timings of a room, in milliseconds of the driver's clock.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    /// A presence entry not renewed for this long is removed.
    pub presence_ttl_ms: u64,
    /// A `typing` flag not renewed for this long is cleared.
    pub typing_ttl_ms: u64,
    /// Consecutive deltas from one sender released by the same commit are relayed as one
    /// merged delta of at most this many Yjs bytes, so a burst costs readers few frames.
    pub max_relay_bytes: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            presence_ttl_ms: 30_000,
            typing_ttl_ms: 5_000,
            max_relay_bytes: 256 * 1024,
        }
    }
}

/// Why the room wants a connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The store failed to commit this peer's deltas; it must resync.
    StoreFailure,
}

/// One message for a set of peers; the driver encodes it once.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The peers to send it to, never empty.
    pub to: Vec<PeerId>,
    /// The message.
    pub msg: ServerMsg,
}

/// A delta the room has applied and wants committed. The driver commits the batch in token
/// order and reports back with [`Room::committed`].
#[derive(Clone, Debug, PartialEq)]
pub struct PendingDelta {
    /// The room's number for this commit, increasing in the order deltas were applied (with
    /// gaps: a delta that changed nothing takes a token but is not persisted). Report it to
    /// [`Room::committed`] once the delta (and every one before it) is durable.
    pub token: u64,
    /// The sender, or [`SERVER_PEER`] for the server's own changes.
    pub peer: PeerId,
    /// The delta as applied, to store.
    pub delta: Delta,
    /// Latest HLC time in the delta (its newest register stamp), or the room's clock.
    pub hlc: u64,
    /// The principal that sent it (a token's subject), to record in history; `None` without
    /// authentication.
    pub author: Option<String>,
}

/// What the driver must do after one input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Messages to send, in order.
    pub send: Vec<Outgoing>,
    /// Deltas to commit to the store, in token order.
    pub persist: Vec<PendingDelta>,
    /// Connections to close, and why.
    pub close: Vec<(PeerId, CloseReason)>,
    /// The in-memory document can no longer be trusted (yrs failed half-way, or a commit
    /// failed); the driver reloads it from the store and resubscribes nobody: peers resync.
    pub reload: bool,
}

impl Effects {
    fn to(&mut self, peer: PeerId, msg: ServerMsg) {
        self.send.push(Outgoing {
            to: vec![peer],
            msg,
        });
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty() && self.persist.is_empty() && self.close.is_empty() && !self.reload
    }
}

struct Subscriber {
    access: Access,
    echo: Echo,
    /// The highest `seq` of a delta it sent that the room took (0: none yet).
    last_seq: u64,
    /// Its `sync` answer waits in the slots for the commits before it (see
    /// [`Room::subscribe`]); until it leaves, relays skip this peer, since the answer
    /// holds what they carry.
    awaiting_sync: bool,
}

/// A delta waiting for its commit (or for earlier commits, when it needed none), or a `sync`
/// answer waiting for the commits of what it holds.
struct Slot {
    token: u64,
    peer: PeerId,
    seq: u64,
    relay: Option<Delta>,
    sync: Option<Box<ServerMsg>>,
    /// Already durable (committed elsewhere: [`Room::remote_delta`]); waits only for the slots
    /// before it.
    durable: bool,
}

/// The single owner of a live document on the server.
///
/// **Time** comes in as an argument: every method that needs it takes `now_ms`, the driver's
/// wall time in milliseconds since the Unix epoch. The room's [`Hlc`] reads nothing else, so
/// the drift check of incoming register writes, the stamps of the server's own writes and the
/// expiry of presence all follow the one time the driver passes.
///
/// **Invariants:** a delta is acknowledged to its sender and relayed to the others only after it
/// (and every delta applied before it) is committed, and a `sync` answer leaves only once
/// everything it holds is committed; a refused delta changes nothing; presence is never
/// persisted.
pub struct Room {
    doc_id: DocId,
    doc: Document,
    hlc: Hlc,
    config: RoomConfig,
    subscribers: BTreeMap<PeerId, Subscriber>,
    presence: BTreeMap<PeerId, Presence>,
    slots: VecDeque<Slot>,
    next_token: u64,
    committed_token: u64,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("doc", &self.doc_id)
            .field("subscribers", &self.subscribers.len())
            .field("pending", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Room {
    /// A room for `doc`, which holds everything committed so far. `hlc` bounds the clock drift
    /// of incoming register writes and stamps the server's own.
    pub fn new(doc_id: DocId, doc: Document, hlc: Hlc, config: RoomConfig) -> Self {
        Self {
            doc_id,
            doc,
            hlc,
            config,
            subscribers: BTreeMap::new(),
            presence: BTreeMap::new(),
            slots: VecDeque::new(),
            next_token: 1,
            committed_token: 0,
        }
    }

    /// The document's id.
    pub fn doc_id(&self) -> &DocId {
        &self.doc_id
    }

    /// The live document: everything applied, including deltas still waiting for their commit.
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// Number of subscribed peers.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Whether `peer` is subscribed.
    pub fn is_subscribed(&self, peer: PeerId) -> bool {
        self.subscribers.contains_key(&peer)
    }

    /// Whether anything waits for a commit (a delta's ack and relay, or a `sync` answer).
    pub fn has_pending(&self) -> bool {
        !self.slots.is_empty()
    }

    /// No subscribers and nothing waiting for a commit: the room may be unloaded.
    pub fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.slots.is_empty()
    }

    fn error(&self, code: ErrorCode, message: String, seq: Option<u64>) -> ServerMsg {
        ServerMsg::Error {
            code,
            message,
            doc: Some(self.doc_id.clone()),
            seq,
        }
    }

    /// The subscribers other than `peer` that relays go to (not those whose `sync` is still
    /// waiting: it holds what the relays carry).
    fn others(&self, peer: PeerId) -> Vec<PeerId> {
        self.subscribers
            .iter()
            .filter(|(p, s)| **p != peer && !s.awaiting_sync)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The `sync` answer of `peer` that waits for commits, if there is one (its size is what
    /// the subscription cost).
    pub fn queued_sync(&self, peer: PeerId) -> Option<&ServerMsg> {
        self.slots
            .iter()
            .rev()
            .filter(|s| s.peer == peer)
            .find_map(|s| s.sync.as_deref())
    }

    /// A peer subscribes with what it holds; it gets what it lacks, the room's state, and the
    /// current presence of the others. `options` say what it may do and whether its own
    /// committed deltas are relayed back to it. Subscribing again (a new state vector) is
    /// allowed and answers with what the peer lacks now.
    ///
    /// The answer is computed now, from everything applied, but leaves only once all of it is
    /// committed: while deltas wait for their commit it waits behind them in the slots, like
    /// their relays. A subscriber must never hold content the store may still refuse: if the
    /// commit failed and the room reloaded, that subscriber would hold another user's content
    /// the server does not, and its resync, which carries it, would be refused for good.
    pub fn subscribe(
        &mut self,
        peer: PeerId,
        options: SubscribeOptions,
        known: &DocState,
    ) -> Effects {
        let SubscribeOptions { access, echo } = options;
        let mut fx = Effects::default();
        let delta = match self.doc.diff_since(known) {
            Ok(d) => d,
            Err(e) => {
                let code = match e {
                    ApplyError::Poisoned => ErrorCode::Internal,
                    _ => ErrorCode::MalformedMessage,
                };
                fx.to(
                    peer,
                    self.error(code, format!("bad subscribe state: {e}"), None),
                );
                fx.reload = matches!(e, ApplyError::Poisoned);
                return fx;
            }
        };
        let last_seq = self.subscribers.get(&peer).map_or(0, |s| s.last_seq);
        let sync = ServerMsg::Sync {
            doc: self.doc_id.clone(),
            delta,
            state: self.doc.state(),
        };
        let uncommitted = self.slots.iter().any(|s| s.relay.is_some());
        self.subscribers.insert(
            peer,
            Subscriber {
                access,
                echo,
                last_seq,
                awaiting_sync: uncommitted,
            },
        );
        if uncommitted {
            self.slots.push_back(Slot {
                token: self.next_token.saturating_sub(1),
                peer,
                seq: 0,
                relay: None,
                sync: Some(Box::new(sync)),
                durable: false,
            });
        } else {
            fx.to(peer, sync);
        }
        for (other, p) in &self.presence {
            if *other != peer {
                fx.to(peer, self.presence_msg(*other, Some(p)));
            }
        }
        fx
    }

    /// A peer leaves (unsubscribe or disconnect): its presence goes at once.
    pub fn unsubscribe(&mut self, peer: PeerId) -> Effects {
        let mut fx = Effects::default();
        self.subscribers.remove(&peer);
        self.drop_presence(peer, &mut fx);
        fx
    }

    /// A delta from a subscriber, sent by `author` (its token's subject). Checked as a peer's
    /// ([`crate::Trust::Peer`]): applied at once and whole (so later subscribers see it),
    /// persisted by the driver, acknowledged and relayed on [`Room::committed`]. A refused
    /// delta changes nothing and gets an error with its `seq`, never an ack, and does not count
    /// as taken: a later delta's `seq` must be greater than the last one *taken*. Its newest
    /// register stamp may run at most the clock's drift bound ahead of `now_ms`.
    pub fn client_delta(
        &mut self,
        peer: PeerId,
        seq: u64,
        delta: Delta,
        author: Option<String>,
        now_ms: u64,
    ) -> Effects {
        let mut fx = Effects::default();
        let last_seq = match self.subscribers.get(&peer) {
            None => {
                fx.to(
                    peer,
                    self.error(
                        ErrorCode::NotSubscribed,
                        "subscribe before sending deltas".into(),
                        Some(seq),
                    ),
                );
                return fx;
            }
            Some(sub) if sub.access == Access::Read => {
                fx.to(
                    peer,
                    self.error(
                        ErrorCode::Forbidden,
                        "read-only access: the delta was refused".into(),
                        Some(seq),
                    ),
                );
                return fx;
            }
            Some(sub) => sub.last_seq,
        };
        if seq <= last_seq {
            fx.to(
                peer,
                self.error(
                    ErrorCode::InvalidSeq,
                    format!("seq {seq} is not greater than the last one taken ({last_seq})"),
                    Some(seq),
                ),
            );
            return fx;
        }
        if let Some(stamp) = delta.max_stamp()
            && let Err(e) = self.hlc.check_drift(now_ms, stamp)
        {
            fx.to(
                peer,
                self.error(ErrorCode::InvalidDelta, e.to_string(), Some(seq)),
            );
            return fx;
        }
        let applied = match self.doc.apply_from(&delta, Source::peer(author.as_deref())) {
            Ok(a) => a,
            Err(e) => {
                fx.reload = matches!(e, ApplyError::Integrate { .. } | ApplyError::Poisoned);
                let code = match e {
                    _ if fx.reload => ErrorCode::Internal,
                    ApplyError::MissingDependencies { .. } => ErrorCode::MissingDependencies,
                    _ => ErrorCode::InvalidDelta,
                };
                fx.to(peer, self.error(code, e.to_string(), Some(seq)));
                if code == ErrorCode::MissingDependencies {
                    // Ask for a resync: the peer answers with everything the room lacks, the
                    // clocks this delta builds on included.
                    fx.to(
                        peer,
                        ServerMsg::Sync {
                            doc: self.doc_id.clone(),
                            delta: Delta::default(),
                            state: self.doc.state(),
                        },
                    );
                }
                return fx;
            }
        };
        if let Some(sub) = self.subscribers.get_mut(&peer) {
            sub.last_seq = seq;
        }
        let (hlc, token) = self.stamp_and_token(&delta, now_ms);
        if applied.changed {
            fx.persist.push(PendingDelta {
                token,
                peer,
                delta: delta.clone(),
                hlc,
                author,
            });
            self.slots.push_back(Slot {
                token,
                peer,
                seq,
                relay: Some(delta),
                sync: None,
                durable: false,
            });
        } else {
            // Nothing new, but what it duplicates may still be uncommitted: acknowledge it in
            // order with everything before it.
            self.slots.push_back(Slot {
                token,
                peer,
                seq,
                relay: None,
                sync: None,
                durable: false,
            });
            self.release(&mut fx);
        }
        fx
    }

    /// The HLC time a delta is logged under (its newest register stamp, observed so the clock
    /// orders the server's own later writes after it; else a fresh tick) and its commit token.
    /// A client's delta passed the drift check at the same `now_ms`, so observing cannot fail.
    fn stamp_and_token(&mut self, delta: &Delta, now_ms: u64) -> (u64, u64) {
        let hlc = match delta.max_stamp() {
            Some(stamp) => {
                let _ = self.hlc.observe(now_ms, stamp);
                stamp.time
            }
            None => self.hlc.tick(now_ms).time,
        };
        let token = self.next_token;
        self.next_token += 1;
        (hlc, token)
    }

    /// A change the server makes itself (an admin's restore), attributed to `author`. It goes
    /// the way of a client's delta, as if from [`SERVER_PEER`]: applied, persisted (the
    /// returned [`PendingDelta`] carries its token), and relayed to every subscriber once
    /// committed. `persist` is empty when the delta changed nothing. A refused delta changes
    /// nothing (see [`ApplyError`]).
    pub fn server_delta(
        &mut self,
        delta: Delta,
        author: Option<String>,
        now_ms: u64,
    ) -> Result<Effects, ApplyError> {
        let mut fx = Effects::default();
        let applied = self
            .doc
            .apply_from(&delta, Source::trusted(author.as_deref()))?;
        let (hlc, token) = self.stamp_and_token(&delta, now_ms);
        if applied.changed {
            fx.persist.push(PendingDelta {
                token,
                peer: SERVER_PEER,
                delta: delta.clone(),
                hlc,
                author,
            });
            self.slots.push_back(Slot {
                token,
                peer: SERVER_PEER,
                seq: 0,
                relay: Some(delta),
                sync: None,
                durable: false,
            });
        }
        Ok(fx)
    }

    /// A delta another server committed to the shared log (a cluster's other node), applied
    /// as the store's own content ([`crate::Trust::Trusted`], owners recorded for `author`)
    /// and relayed to every subscriber, after the relays of the deltas applied before it. It
    /// is not persisted again: it is durable already. `changed` is false (and nothing is
    /// relayed) when the document held it all.
    pub fn remote_delta(
        &mut self,
        delta: Delta,
        author: Option<&str>,
        now_ms: u64,
    ) -> Result<Effects, ApplyError> {
        let (fx, applied) = self.remote_deltas([(delta, author.map(str::to_owned))], now_ms);
        applied.map(|()| fx)
    }

    /// [`Room::remote_delta`] for consecutive entries (`delta`, `author`), applied in order:
    /// their relays go out together, so consecutive ones are merged (up to
    /// [`RoomConfig::max_relay_bytes`]) as a burst of one sender's are. Stops at the first
    /// that does not apply and returns its error with the effects of the ones before it.
    pub fn remote_deltas(
        &mut self,
        deltas: impl IntoIterator<Item = (Delta, Option<String>)>,
        now_ms: u64,
    ) -> (Effects, Result<(), ApplyError>) {
        let mut fx = Effects::default();
        let mut result = Ok(());
        for (delta, author) in deltas {
            match self
                .doc
                .apply_from(&delta, Source::trusted(author.as_deref()))
            {
                Ok(applied) if applied.changed => {
                    let (_, token) = self.stamp_and_token(&delta, now_ms);
                    self.slots.push_back(Slot {
                        token,
                        peer: SERVER_PEER,
                        seq: 0,
                        relay: Some(delta),
                        sync: None,
                        durable: true,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.release(&mut fx);
        (fx, result)
    }

    /// Every [`PendingDelta`] with a token up to `token` is committed.
    pub fn committed(&mut self, token: u64) -> Effects {
        let mut fx = Effects::default();
        self.committed_token = self.committed_token.max(token);
        self.release(&mut fx);
        fx
    }

    /// Acknowledges and relays every slot whose commit (and every earlier commit) is done, and
    /// sends the `sync` answers waiting behind them.
    fn release(&mut self, fx: &mut Effects) {
        let mut acks: BTreeMap<PeerId, u64> = BTreeMap::new();
        // Runs of relays from one sender, merged into one delta each.
        let mut runs: Vec<(PeerId, Vec<Delta>, usize)> = Vec::new();
        while let Some(front) = self.slots.front() {
            if front.relay.is_some() && !front.durable && front.token > self.committed_token {
                break;
            }
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            if let Some(sync) = slot.sync {
                // Everything before it goes first; the relays of what it holds skip it.
                self.send_runs(std::mem::take(&mut runs), fx);
                if let Some(sub) = self.subscribers.get_mut(&slot.peer) {
                    sub.awaiting_sync = false;
                    fx.to(slot.peer, *sync);
                }
                continue;
            }
            let seq = acks.entry(slot.peer).or_insert(0);
            *seq = (*seq).max(slot.seq);
            if let Some(delta) = slot.relay {
                let size = delta.yjs.len();
                match runs.last_mut() {
                    Some((peer, deltas, bytes))
                        if *peer == slot.peer && *bytes + size <= self.config.max_relay_bytes =>
                    {
                        deltas.push(delta);
                        *bytes += size;
                    }
                    _ => runs.push((slot.peer, vec![delta], size)),
                }
            }
        }
        self.send_runs(runs, fx);
        for (peer, seq) in acks {
            if self.subscribers.contains_key(&peer) {
                fx.to(
                    peer,
                    ServerMsg::Ack {
                        doc: self.doc_id.clone(),
                        seq,
                    },
                );
            }
        }
    }

    /// Relays runs of one sender's committed deltas, each run merged into one delta.
    fn send_runs(&self, runs: Vec<(PeerId, Vec<Delta>, usize)>, fx: &mut Effects) {
        for (sender, deltas, _) in runs {
            let mut to = self.others(sender);
            if self
                .subscribers
                .get(&sender)
                .is_some_and(|s| s.echo == Echo::OwnDeltas && !s.awaiting_sync)
            {
                to.push(sender);
            }
            if to.is_empty() {
                continue;
            }
            // Every delta here was applied, so merging cannot fail on its bytes; should it fail
            // anyway, they go out one by one rather than not at all.
            let frames = match deltas.len() {
                1 => deltas,
                _ => match Delta::merge(&deltas) {
                    Ok(merged) => vec![merged],
                    Err(_) => deltas,
                },
            };
            for delta in frames {
                fx.send.push(Outgoing {
                    to: to.clone(),
                    msg: ServerMsg::Delta {
                        doc: self.doc_id.clone(),
                        delta,
                    },
                });
            }
        }
    }

    /// The store refused the batch holding tokens up to `token`. The document now holds changes
    /// the store does not, so it must be reloaded; the senders are closed so they resync (their
    /// edits are still in their replicas and come back through the resync).
    pub fn commit_failed(&mut self) -> Effects {
        let mut fx = self.close_waiting();
        fx.reload = true;
        fx
    }

    /// Closes every peer with a slot (a delta waiting for its commit or its ack, or a `sync`
    /// waiting for commits) and drops the slots.
    fn close_waiting(&mut self) -> Effects {
        let mut fx = Effects::default();
        let mut peers: Vec<PeerId> = self.slots.iter().map(|s| s.peer).collect();
        peers.sort_unstable();
        peers.dedup();
        self.slots.clear();
        for peer in peers {
            self.subscribers.remove(&peer);
            self.presence.remove(&peer);
            fx.close.push((peer, CloseReason::StoreFailure));
        }
        fx
    }

    /// Replaces the document after a reload from the store. Subscribers stay, except those
    /// that were waiting for something of the old document (an ack, or their `sync`): they are
    /// closed (returned in `close`) and resync; anything they sent that was lost comes back
    /// then.
    pub fn replace_document(&mut self, doc: Document) -> Effects {
        self.doc = doc;
        self.close_waiting()
    }

    /// The delta that brings the document back to `target` (see [`Document::restore_delta`]),
    /// its register writes stamped by the room's clock at `now_ms`. Apply it with
    /// [`Room::server_delta`].
    pub fn restore_delta(
        &mut self,
        target: &Document,
        now_ms: u64,
    ) -> Result<(Delta, RestoreReport), RestoreError> {
        let hlc = &mut self.hlc;
        self.doc.restore_delta(target, || hlc.tick(now_ms))
    }
}
