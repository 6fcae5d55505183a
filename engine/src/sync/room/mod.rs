//! The server side of one document.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Whether the subscriber may write; a read-only subscriber's deltas are refused
    /// (`forbidden`).
    pub access: Access,
    /// Whether its own committed deltas are relayed back to it.
    pub echo: Echo,
    /// The principal it acts for (a token's subject; `None` without authentication). Deltas of
    /// the same principal reach it before their commit ([`RelayOrder::AfterApply`]), others'
    /// after.
    pub author: Option<Arc<str>>,
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
    /// Its deltas are not relayed back, and each is acknowledged with an `ack` of its own, in
    /// order, rather than cumulatively (Hocuspocus clients count one sync status per update).
    AckEach,
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
    /// When a subscriber's delta is relayed to the others: once applied (the default) or once
    /// committed. Acknowledgements always wait for the commit.
    pub relay: RelayOrder,
}

/// When the room relays a subscriber's delta to the other subscribers.
///
/// Either way an acknowledgement means durable, and a y-websocket sender's echo of its own
/// update (its "saved" signal) waits for the commit too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelayOrder {
    /// To the subscribers of the sender's own principal (everyone, without authentication)
    /// as soon as the room has applied it, merged with the rest of the driver's batch
    /// ([`Room::flush_relays`]); to other principals' subscribers once committed. A reader
    /// may then hold a delta the store has not committed yet; if the server dies before the
    /// commit, the sender still holds it (pending until acknowledged) and so does every reader
    /// that got it: both give it back when they resync, and, being of the same principal, a
    /// reader may (a peer's delta adds content only under its own principal's client ids, see
    /// [`crate::Trust::Peer`]: another principal's reader could never give it back, and its
    /// resync would be refused for as long as it held it). If a commit fails, every
    /// subscriber is closed so that it resyncs ([`Effects::lost_relays`]).
    #[default]
    AfterApply,
    /// Only once it (and every delta applied before it) is committed: readers never hold
    /// anything the store may lose; relays wait for the fsync.
    AfterCommit,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            presence_ttl_ms: 30_000,
            typing_ttl_ms: 5_000,
            max_relay_bytes: 256 * 1024,
            relay: RelayOrder::AfterApply,
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
    /// Deltas relayed before their commit ([`RelayOrder::AfterApply`]) will never be committed
    /// (the commit failed, or the document is replaced): any subscriber may hold them, so the
    /// driver closes every connection on the room, which resyncs. The senders are in `close`.
    pub lost_relays: bool,
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
        self.send.is_empty()
            && self.persist.is_empty()
            && self.close.is_empty()
            && !self.reload
            && !self.lost_relays
    }
}

struct Subscriber {
    access: Access,
    echo: Echo,
    author: Option<Arc<str>>,
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
    /// What to relay once released: to the others, or, when `relayed`, to those of other
    /// principals and the sender's echo.
    relay: Option<Delta>,
    /// Relayed to the sender's principal's subscribers already, when applied
    /// ([`RelayOrder::AfterApply`]).
    relayed: bool,
    /// The sender's principal.
    author: Option<Arc<str>>,
    sync: Option<Box<ServerMsg>>,
    /// Changed the document and is not durable yet: released only once committed. A remote
    /// delta (committed elsewhere, [`Room::remote_delta`]) or one that changed nothing waits
    /// only for the slots before it.
    awaits_commit: bool,
}

/// Relays of one sender's deltas, merged into one delta (at most
/// [`RoomConfig::max_relay_bytes`]).
struct Run {
    sender: PeerId,
    author: Option<Arc<str>>,
    deltas: Vec<Delta>,
    bytes: usize,
    audience: Audience,
}

/// Who a run of relays goes to (besides the sender's echo, for release-time runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Audience {
    /// When applied: the other subscribers of the sender's principal.
    SamePrincipal,
    /// When committed, after an early relay: the subscribers of other principals.
    OtherPrincipals,
    /// When committed: every other subscriber.
    Everyone,
}

/// The single owner of a live document on the server.
///
/// **Time** comes in as an argument: every method that needs it takes `now_ms`, the driver's
/// wall time in milliseconds since the Unix epoch. The room's [`Hlc`] reads nothing else, so
/// the drift check of incoming register writes, the stamps of the server's own writes and the
/// expiry of presence all follow the one time the driver passes.
///
/// **Invariants:** a delta is acknowledged to its sender only after it (and every delta applied
/// before it) is committed; it is relayed to the others once applied or once committed
/// ([`RelayOrder`]), and with [`RelayOrder::AfterCommit`] a `sync` answer leaves only once
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
    /// Relays applied but not sent yet ([`RelayOrder::AfterApply`]), until
    /// [`Room::flush_relays`].
    early: Vec<Run>,
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
            early: Vec::new(),
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

    /// Whether anything waits for a commit (a delta's ack and relay, or a `sync` answer) or
    /// for [`Room::flush_relays`].
    pub fn has_pending(&self) -> bool {
        !self.slots.is_empty() || !self.early.is_empty()
    }

    /// No subscribers and nothing waiting for a commit: the room may be unloaded.
    pub fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && !self.has_pending()
    }

    fn error(&self, code: ErrorCode, message: String, seq: Option<u64>) -> ServerMsg {
        ServerMsg::Error {
            code,
            message,
            doc: Some(self.doc_id.clone()),
            seq,
        }
    }

    /// The subscribers other than `peer` that presence goes to (not those whose `sync` is
    /// still waiting).
    fn others(&self, peer: PeerId) -> Vec<PeerId> {
        self.audience(peer, None, Audience::Everyone)
    }

    /// The subscribers other than `sender` that a run goes to. Release-time runs skip those
    /// whose `sync` is still waiting: it holds what they carry. Early relays do not: a waiting
    /// `sync` was computed before them.
    fn audience(
        &self,
        sender: PeerId,
        author: Option<&Arc<str>>,
        audience: Audience,
    ) -> Vec<PeerId> {
        self.subscribers
            .iter()
            .filter(|(p, s)| {
                **p != sender
                    && match audience {
                        Audience::SamePrincipal => s.author.as_ref() == author,
                        Audience::OtherPrincipals => {
                            !s.awaiting_sync && s.author.as_ref() != author
                        }
                        Audience::Everyone => !s.awaiting_sync,
                    }
            })
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
        let SubscribeOptions {
            access,
            echo,
            author,
        } = options;
        let mut fx = Effects::default();
        // Relays of what the answer holds go to the others first, not to this peer.
        self.flush_early(&mut fx);
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
        // Relays that will reach this peer only once committed carry what the answer holds:
        // it waits behind them. Deltas of its own principal already relayed when applied do
        // not hold it back (this peer could give them back if they were lost).
        let uncommitted = self
            .slots
            .iter()
            .any(|s| s.relay.is_some() && !(s.relayed && s.author == author));
        self.subscribers.insert(
            peer,
            Subscriber {
                access,
                echo,
                author,
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
                relayed: false,
                author: None,
                sync: Some(Box::new(sync)),
                awaits_commit: false,
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
            let early = self.config.relay == RelayOrder::AfterApply;
            let principal: Option<Arc<str>> = author.as_deref().map(Arc::from);
            // Early, its principal's subscribers get it with the rest of the batch; the others
            // and the sender's echo (if it wants one) wait for the commit.
            if early {
                self.push_early(peer, principal.clone(), delta.clone());
            }
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
                relayed: early,
                author: principal,
                sync: None,
                awaits_commit: true,
            });
        } else {
            // Nothing new, but what it duplicates may still be uncommitted: acknowledge it in
            // order with everything before it.
            self.slots.push_back(Slot {
                token,
                peer,
                seq,
                relay: None,
                relayed: false,
                author: None,
                sync: None,
                awaits_commit: false,
            });
            self.release(&mut fx);
        }
        fx
    }

    /// Queues an applied delta's relay to the others until [`Room::flush_relays`], merged
    /// into the sender's run when it follows it.
    fn push_early(&mut self, sender: PeerId, author: Option<Arc<str>>, delta: Delta) {
        let size = delta.yjs.len();
        match self.early.last_mut() {
            Some(run)
                if run.sender == sender && run.bytes + size <= self.config.max_relay_bytes =>
            {
                run.deltas.push(delta);
                run.bytes += size;
            }
            _ => self.early.push(Run {
                sender,
                author,
                deltas: vec![delta],
                bytes: size,
                audience: Audience::SamePrincipal,
            }),
        }
    }

    /// Sends the relays of deltas applied since the last call ([`RelayOrder::AfterApply`]):
    /// the driver calls it once it has handled what was queued, so a burst of one sender's
    /// deltas goes out as few merged frames. Nothing to do with [`RelayOrder::AfterCommit`].
    pub fn flush_relays(&mut self) -> Effects {
        let mut fx = Effects::default();
        self.flush_early(&mut fx);
        fx
    }

    fn flush_early(&mut self, fx: &mut Effects) {
        if !self.early.is_empty() {
            let runs = std::mem::take(&mut self.early);
            self.send_runs(runs, fx);
        }
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
                relayed: false,
                author: None,
                sync: None,
                awaits_commit: true,
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
                        relayed: false,
                        author: None,
                        sync: None,
                        awaits_commit: false,
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
        // Relays sent when applied go before anything released after them.
        self.flush_early(fx);
        // Per peer, the seqs to acknowledge: only the highest, or each one (`Echo::AckEach`).
        let mut acks: BTreeMap<PeerId, Vec<u64>> = BTreeMap::new();
        // Runs of relays from one sender, merged into one delta each.
        let mut runs: Vec<Run> = Vec::new();
        while let Some(front) = self.slots.front() {
            if front.awaits_commit && front.token > self.committed_token {
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
            let each = self
                .subscribers
                .get(&slot.peer)
                .is_some_and(|s| s.echo == Echo::AckEach);
            let seqs = acks.entry(slot.peer).or_default();
            match seqs.last_mut() {
                Some(last) if !each => *last = (*last).max(slot.seq),
                _ => seqs.push(slot.seq),
            }
            if let Some(delta) = slot.relay {
                let size = delta.yjs.len();
                let audience = if slot.relayed {
                    Audience::OtherPrincipals
                } else {
                    Audience::Everyone
                };
                match runs.last_mut() {
                    Some(run)
                        if run.sender == slot.peer
                            && run.audience == audience
                            && run.bytes + size <= self.config.max_relay_bytes =>
                    {
                        run.deltas.push(delta);
                        run.bytes += size;
                    }
                    _ => runs.push(Run {
                        sender: slot.peer,
                        author: slot.author,
                        deltas: vec![delta],
                        bytes: size,
                        audience,
                    }),
                }
            }
        }
        self.send_runs(runs, fx);
        for (peer, seqs) in acks {
            if self.subscribers.contains_key(&peer) {
                for seq in seqs {
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
    }

    /// Relays runs of one sender's deltas, each run merged into one delta.
    fn send_runs(&self, runs: Vec<Run>, fx: &mut Effects) {
        for Run {
            sender,
            author,
            deltas,
            audience,
            ..
        } in runs
        {
            let mut to = self.audience(sender, author.as_ref(), audience);
            if audience != Audience::SamePrincipal
                && self
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
    /// With [`RelayOrder::AfterApply`], the others may hold what was lost too
    /// ([`Effects::lost_relays`]).
    pub fn commit_failed(&mut self) -> Effects {
        let mut fx = self.close_waiting();
        fx.reload = true;
        fx
    }

    /// Closes every peer with a slot (a delta waiting for its commit or its ack, or a `sync`
    /// waiting for commits) and drops the slots. When a delta still waiting for its commit
    /// was relayed already, every subscriber may hold it: `lost_relays` tells the driver.
    fn close_waiting(&mut self) -> Effects {
        let mut fx = Effects {
            lost_relays: self.slots.iter().any(|s| s.relayed && s.awaits_commit),
            ..Effects::default()
        };
        // Not sent yet, so nobody holds them.
        self.early.clear();
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
