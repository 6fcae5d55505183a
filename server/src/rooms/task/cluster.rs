//! The room's part in a cluster (docs/cluster.md): entries reach readers in seq order,
//! whichever node committed them; other nodes' entries are applied and relayed; gaps are
//! read from the database; presence crosses nodes.
//!
//! The room's `head_seq` is contiguous: it holds every entry up to it. Entries above it wait
//! in `ahead` (this node's own commits, already applied and relayed to WebSocket peers, and
//! other nodes' entries, not yet applied) until the ones before them arrive, from the stream
//! or from a catch-up read. On a single server the room's own commits always follow its
//! head, so nothing waits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::{Access, Echo, Effects, PeerId, SubscribeOptions};
use lattice_engine::{Delta, Value};
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::clock::now_ms;
use crate::cluster::{Inbound, Membership, RemoteEntry, RemotePresence};
use crate::store::{LogEntry, ReadError};
use crate::transport::close::CloseCode;

use super::RoomDriver;
use super::awareness::AwarenessMeta;
use super::feed::Committing;

/// Most entries one catch-up read asks for.
const CATCH_UP_BATCH: u32 = 1_000;
/// Most other nodes' entries kept waiting for a gap to fill; more are read from the database.
const AHEAD_ENTRIES: usize = 4_096;
/// Wait before reading again after a failed catch-up read.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);
/// Peer numbers of other nodes' peers (their presence) in this room, far above the ones
/// connections get.
static NEXT_REMOTE_PEER: AtomicU64 = AtomicU64::new(1 << 62);

pub(super) type CatchUp = Pin<Box<dyn Future<Output = Result<Vec<LogEntry>, ReadError>> + Send>>;

/// What [`Order::next`] waited for.
pub(super) enum OrderEvent {
    Inbound(Inbound),
    CaughtUp(Result<Vec<LogEntry>, ReadError>),
}

/// An entry above the room's head.
#[derive(Debug)]
pub(super) enum Ahead {
    /// This node's, committed: applied, and relayed to WebSocket peers already.
    Local(Delta),
    /// Another node's, from its stream or the database: applied when its turn comes.
    Remote(RemoteEntry),
}

/// The room's link to the cluster, and its order of entries.
#[derive(Default)]
pub(super) struct Order {
    link: Option<(Membership, mpsc::Receiver<Inbound>)>,
    pub(super) ahead: BTreeMap<u64, Ahead>,
    /// The highest seq known to exist (from the stream, a position check, or own commits).
    known: u64,
    pub(super) catch_up: Option<CatchUp>,
    retry_at: Option<Instant>,
    /// Other nodes' peers with presence here: (node, their peer number) → our number.
    remote_peers: HashMap<(u64, u64), PeerId>,
    /// Local peers whose presence was told to the other nodes.
    published: HashSet<PeerId>,
}

impl std::fmt::Debug for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Order")
            .field("ahead", &self.ahead.len())
            .field("known", &self.known)
            .field("catching_up", &self.catch_up.is_some())
            .finish_non_exhaustive()
    }
}

impl Order {
    /// Joins the cluster (if any) with the room's head.
    pub(super) fn new(
        cluster: Option<&crate::cluster::Cluster>,
        doc: &lattice_engine::DocId,
        head: u64,
    ) -> Order {
        Order {
            link: cluster.map(|c| c.join(doc, head)),
            known: head,
            ..Order::default()
        }
    }

    /// What the cluster sent, or the end of a catch-up read, whichever comes first.
    pub(super) async fn next(&mut self) -> OrderEvent {
        let Order { link, catch_up, .. } = self;
        tokio::select! {
            what = async {
                match link.as_mut() {
                    Some((_, rx)) if !rx.is_closed() || !rx.is_empty() => rx.recv().await,
                    _ => None,
                }
            }, if link.as_ref().is_some_and(|(_, rx)| !rx.is_closed() || !rx.is_empty()) => match what {
                Some(what) => OrderEvent::Inbound(what),
                None => std::future::pending().await,
            },
            read = async {
                match catch_up.as_mut() {
                    Some(read) => read.await,
                    None => std::future::pending().await,
                }
            } => OrderEvent::CaughtUp(read),
        }
    }

    pub(super) fn try_inbound(&mut self) -> Option<Inbound> {
        self.link.as_mut().and_then(|(_, rx)| rx.try_recv().ok())
    }

    /// Whether the room is part of a cluster.
    pub(super) fn is_linked(&self) -> bool {
        self.link.is_some()
    }

    /// Other nodes' peers subscribed here for their presence.
    pub(super) fn remote_peer_count(&self) -> usize {
        self.remote_peers.len()
    }

    fn membership(&self) -> Option<&Membership> {
        self.link.as_ref().map(|(m, _)| m)
    }
}

/// Entries to apply, with each run of consecutive entries of one author merged into one delta
/// (a run whose merge fails stays as it was).
fn merge_runs(
    entries: impl IntoIterator<Item = (Delta, Option<String>)>,
) -> Vec<(Delta, Option<String>)> {
    let mut runs: Vec<(Vec<Delta>, Option<String>)> = Vec::new();
    for (delta, author) in entries {
        match runs.last_mut() {
            Some((deltas, a)) if *a == author => deltas.push(delta),
            _ => runs.push((vec![delta], author)),
        }
    }
    let mut out = Vec::with_capacity(runs.len());
    for (deltas, author) in runs {
        if deltas.len() > 1
            && let Ok(merged) = Delta::merge(&deltas)
        {
            out.push((merged, author));
            continue;
        }
        out.extend(deltas.into_iter().map(|d| (d, author.clone())));
    }
    out
}

impl RoomDriver {
    /// This node committed `committing` as `seqs`: tell the other nodes, and give readers
    /// what now follows the head.
    pub(super) async fn local_committed(&mut self, committing: Vec<Committing>, seqs: &[u64]) {
        let cluster = self.order.membership().map(|m| m.cluster().clone());
        for (entry, seq) in committing.into_iter().zip(seqs) {
            if let (Some(cluster), Some(stored)) = (&cluster, entry.stored) {
                cluster.publish_entry(&self.doc, *seq, entry.author, stored);
            }
            self.order.known = self.order.known.max(*seq);
            if *seq > self.head_seq {
                self.order.ahead.insert(*seq, Ahead::Local(entry.delta));
            }
        }
        self.advance().await;
    }

    /// Takes what the cluster sent.
    pub(super) async fn inbound(&mut self, what: Inbound) {
        match what {
            Inbound::Entries(entries) => {
                for entry in entries {
                    self.remote_entry(entry);
                }
                self.advance().await;
            }
            Inbound::Behind(head) => {
                self.order.known = self.order.known.max(head);
                self.advance().await;
            }
            Inbound::Presence { node, presence } => self.remote_presence(node, presence).await,
            Inbound::PresenceQuery => self.publish_all_presence(),
            Inbound::Deleted => self.stop(ReadError::DocumentDeleted {
                doc: self.doc.clone(),
            }),
        }
    }

    fn remote_entry(&mut self, entry: RemoteEntry) {
        self.order.known = self.order.known.max(entry.seq);
        if entry.seq <= self.head_seq || self.order.ahead.contains_key(&entry.seq) {
            return;
        }
        if self.order.ahead.len() < AHEAD_ENTRIES {
            self.order.ahead.insert(entry.seq, Ahead::Remote(entry));
        }
    }

    /// Gives readers (and, for other nodes' entries, the document and its subscribers) every
    /// entry that now follows the head, in order; then reads a gap from the database if
    /// there is one.
    pub(super) async fn advance(&mut self) {
        let start = self.head_seq;
        // (seq, delta, and for another node's entry its author).
        let mut ready: Vec<(u64, Delta, Option<Option<String>>)> = Vec::new();
        let mut undecodable = None;
        while let Some(entry) = self.order.ahead.remove(&(self.head_seq + 1)) {
            let seq = self.head_seq + 1;
            match entry {
                Ahead::Local(delta) => ready.push((seq, delta, None)),
                Ahead::Remote(entry) => {
                    match crate::store::decode_delta(&self.doc, seq, &entry.delta_bytes) {
                        Ok(delta) => ready.push((seq, delta, Some(entry.author))),
                        Err(e) => {
                            undecodable = Some(e);
                            break;
                        }
                    }
                }
            }
            self.head_seq = seq;
        }
        if self.head_seq != start {
            if let Some(m) = self.order.membership() {
                m.advanced(self.head_seq);
            }
            // Readers follow the log: they get each entry as committed, in order.
            let refs: Vec<(u64, &Delta)> = ready.iter().map(|(s, d, _)| (*s, d)).collect();
            self.feed_in_order(&refs).await;
            // Other nodes' entries are applied together, so their relays merge; consecutive
            // ones of one author are merged first and applied once (one integration instead
            // of one per entry: a burst typed on another node costs this node little more than
            // it cost that one).
            let remote = merge_runs(
                ready
                    .into_iter()
                    .filter_map(|(_, delta, author)| author.map(|a| (delta, a))),
            );
            let (fx, applied) = self.room.remote_deltas(remote, now_ms());
            self.apply(fx).await;
            if let Err(e) = applied {
                error!(error = %e, "another node's entry does not apply; reloading");
                self.reload_after_gap().await;
                return;
            }
        }
        if let Some(e) = undecodable {
            error!(error = %e, "another node's entry does not decode; reloading");
            self.reload_after_gap().await;
            return;
        }
        self.start_catch_up();
    }

    /// Starts reading the entries between the head and the highest known seq, unless a read
    /// is under way, a commit is (its seqs may be the gap), or a failed read waits to retry.
    pub(super) fn start_catch_up(&mut self) {
        let order = &mut self.order;
        if order.catch_up.is_some() || self.in_flight.is_some() || order.known <= self.head_seq {
            return;
        }
        if order.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let from = self.head_seq + 1;
        let want = u32::try_from(order.known - self.head_seq).unwrap_or(u32::MAX);
        let limit = want.min(CATCH_UP_BATCH);
        let store = self.rooms.env().store.clone();
        let doc = self.doc.clone();
        self.rooms
            .env()
            .metrics
            .cluster
            .catchup_reads
            .fetch_add(1, Relaxed);
        order.catch_up = Some(Box::pin(
            async move { store.read_log(&doc, from, limit).await },
        ));
    }

    /// Brings the room up to the database's head now, before it answers a subscriber: a
    /// client that reconnects from another node holds what that node relayed, and must not
    /// send it back as its own (it is another author's). A read error leaves it to the
    /// background catch-up.
    pub(super) async fn catch_up_now(&mut self) {
        if !self.order.is_linked() {
            return;
        }
        let store = self.rooms.env().store.clone();
        match store.heads(std::slice::from_ref(&self.doc)).await {
            Ok(heads) => {
                if let Some(h) = heads.first() {
                    self.order.known = self.order.known.max(h.head_seq);
                }
            }
            Err(e) => {
                warn!(error = %e, "could not read the document's head before a subscription");
                return;
            }
        }
        // Bounded: each round reads up to CATCH_UP_BATCH entries, and a few rounds cover what
        // a node can fall behind in the time a reconnect takes; the rest comes in the
        // background.
        for _ in 0..8 {
            if self.order.known <= self.head_seq || self.stopped.is_some() {
                return;
            }
            let from = self.head_seq + 1;
            let limit = u32::try_from(self.order.known - self.head_seq)
                .unwrap_or(u32::MAX)
                .min(CATCH_UP_BATCH);
            self.rooms
                .env()
                .metrics
                .cluster
                .catchup_reads
                .fetch_add(1, Relaxed);
            let read = store.read_log(&self.doc, from, limit).await;
            let progressed = read.as_ref().is_ok_and(|e| !e.is_empty());
            // Whatever read is under way in the background covers the same range.
            let background = self.order.catch_up.take();
            self.caught_up(read).await;
            if self.order.catch_up.is_none() {
                self.order.catch_up = background;
            }
            if !progressed {
                return;
            }
        }
    }

    /// A catch-up read came back.
    pub(super) async fn caught_up(&mut self, read: Result<Vec<LogEntry>, ReadError>) {
        self.order.catch_up = None;
        match read {
            Ok(entries) => {
                self.order.retry_at = None;
                let count = entries.len() as u64;
                for e in entries {
                    self.remote_entry(RemoteEntry {
                        seq: e.seq,
                        author: e.author,
                        delta_bytes: e.delta_bytes,
                    });
                }
                self.rooms
                    .env()
                    .metrics
                    .cluster
                    .catchup_entries
                    .fetch_add(count, Relaxed);
                self.advance().await;
            }
            Err(ReadError::Truncated { .. }) => {
                // Retention dropped what the room lacks: start again from a checkpoint.
                self.reload_after_gap().await;
            }
            Err(e @ ReadError::DocumentDeleted { .. }) => self.stop(e),
            Err(e) => {
                warn!(error = %e, "catch-up read failed; retrying");
                self.order.retry_at = Some(Instant::now() + CATCH_UP_RETRY);
            }
        }
    }

    /// Whether a failed catch-up read is due again.
    pub(super) fn catch_up_due(&self) -> bool {
        self.order.catch_up.is_none()
            && self.order.known > self.head_seq
            && self.order.retry_at.is_some_and(|at| Instant::now() >= at)
    }

    /// Reloads the document from the store (what other nodes committed included) through the
    /// room's reload path.
    async fn reload_after_gap(&mut self) {
        let fx = Effects {
            reload: true,
            ..Effects::default()
        };
        self.apply(fx).await;
    }

    /// The document was reloaded with everything up to `head`: entries up to it are in it.
    /// HTTP readers that had not got them all resume from the store.
    pub(super) fn reloaded(&mut self, head: u64) {
        if head > self.head_seq {
            let behind: Vec<PeerId> = self
                .feeds
                .iter()
                .filter(|(_, cursor)| **cursor < head)
                .map(|(peer, _)| *peer)
                .collect();
            for peer in behind {
                self.feeds.remove(&peer);
                if let Some(handle) = self.peers.remove(&peer) {
                    handle.closer.close(CloseCode::DocumentUnavailable);
                }
            }
        }
        self.head_seq = head;
        self.order.ahead = self.order.ahead.split_off(&(head + 1));
        self.order.known = self.order.known.max(head);
        if let Some(m) = self.order.membership() {
            m.reset(head);
        }
    }

    /// Another node's peer's presence: it is a subscriber here without a connection (like an
    /// HTTP session), in the room while its presence lives.
    async fn remote_presence(&mut self, node: u64, p: RemotePresence) {
        let key = (node, p.peer);
        let leaving = p.state == Value::Null;
        let peer = match self.order.remote_peers.get(&key) {
            Some(peer) => *peer,
            None if leaving => return,
            None => {
                let peer = PeerId(NEXT_REMOTE_PEER.fetch_add(1, Relaxed));
                let known = self.room.document().state();
                let options = SubscribeOptions {
                    access: Access::Read,
                    echo: Echo::None,
                    author: None,
                };
                // What the room sends it goes nowhere: it is not one of `self.peers`.
                let _ = self.room.subscribe(peer, options, &known);
                self.order.remote_peers.insert(key, peer);
                peer
            }
        };
        // Yjs clients see the entry under the identity its node gave it.
        self.awareness.insert(
            peer,
            AwarenessMeta {
                client: p.awareness.0,
                clock: p.awareness.1,
                from_yjs: true,
                removed_by_client: leaving,
                author: p.author.map(Into::into),
                left_at_ms: None,
            },
        );
        if leaving {
            self.order.remote_peers.remove(&key);
            let fx = self.room.unsubscribe(peer);
            self.apply(fx).await;
            self.awareness.remove(&peer);
            return;
        }
        let fx = self.room.presence(peer, p.state, p.typing, now_ms());
        self.apply(fx).await;
    }

    /// Other nodes' peers whose presence expired here (their node stopped renewing it) leave.
    pub(super) async fn expire_remote_peers(&mut self) {
        let gone: Vec<((u64, u64), PeerId)> = self
            .order
            .remote_peers
            .iter()
            .filter(|(_, peer)| !self.room.has_presence(**peer))
            .map(|(k, p)| (*k, *p))
            .collect();
        for (key, peer) in gone {
            self.order.remote_peers.remove(&key);
            let fx = self.room.unsubscribe(peer);
            self.apply(fx).await;
            self.awareness.remove(&peer);
        }
    }

    /// Tells the other nodes `peer`'s presence (a local peer's, just set).
    pub(super) fn publish_presence(&mut self, peer: PeerId, state: Value, typing: bool) {
        let Some(cluster) = self.order.membership().map(|m| m.cluster().clone()) else {
            return;
        };
        let leaving = state == Value::Null;
        if leaving && !self.order.published.remove(&peer) {
            return;
        }
        let id = self.awareness_id(peer, &state);
        let author = self
            .peers
            .get(&peer)
            .and_then(|h| h.author.as_deref().map(str::to_owned));
        if !leaving {
            self.order.published.insert(peer);
        }
        cluster.publish_presence(
            &self.doc,
            RemotePresence {
                peer: peer.0,
                state,
                typing,
                awareness: (id.client, id.clock),
                author,
            },
        );
    }

    /// A local peer left: the other nodes drop its presence now rather than after its TTL.
    pub(super) fn publish_left(&mut self, peer: PeerId) {
        if self.order.published.contains(&peer) {
            self.publish_presence(peer, Value::Null, false);
        }
    }

    /// Another node joined the document: it gets every local peer's presence.
    fn publish_all_presence(&mut self) {
        let local: Vec<(PeerId, Value, bool)> = self
            .room
            .presence_snapshot()
            .into_iter()
            .filter_map(|msg| match msg {
                ServerMsg::Presence {
                    peer,
                    state,
                    typing,
                    ..
                } => Some((PeerId(peer), state, typing)),
                _ => None,
            })
            .filter(|(peer, _, _)| self.order.published.contains(peer))
            .collect();
        for (peer, state, typing) in local {
            self.publish_presence(peer, state, typing);
        }
    }
}
