//! Room tasks: one tokio task owns each live document, with a bounded inbox.
//!
//! The task carries out the engine `Room`'s effects: it commits persisted deltas in batches (a
//! new batch starts as soon as the previous commit returns, so commits group naturally under
//! load, and the store's group committer merges batches across rooms), then delivers acks and
//! relays. Each frame is encoded once and cloned (`Bytes`) into every recipient's outbox; a full
//! outbox closes that peer as a slow consumer. The room unloads itself after an idle TTL.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::{
    Access, Echo, Effects, PeerId, PendingDelta, Room, RoomConfig, SubscribeOptions,
};
use lattice_engine::{DEFAULT_MAX_DRIFT, Delta, DocId, DocState, Document, Hlc, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, error, info_span, warn};

use crate::clock::now_ms;
use crate::peer::{PeerHandle, PeerKind, SyncTicket};
use crate::state::ServerState;
use crate::store::{AppendError, NewEntry, ReadError};
use crate::transport::close::CloseCode;
use crate::transport::outbox::{Message, SendError};

/// How often a room expires presence and checks whether it is idle.
const ROOM_TICK: Duration = Duration::from_millis(500);

/// Where a presence entry came from, when it came from a Yjs client's awareness: its awareness
/// client id and clock, kept so other Yjs clients see the same entry the client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AwarenessOrigin {
    pub client: u64,
    pub clock: u32,
}

pub(crate) enum RoomCmd {
    /// Also used to resync an existing subscriber from a new state (y-websocket sync step 1).
    /// `ticket` is the peer's slot for a full-state computation; the room reports its cost.
    Subscribe {
        peer: PeerHandle,
        access: Access,
        state: DocState,
        ticket: SyncTicket,
    },
    Unsubscribe {
        peer: PeerId,
    },
    Delta {
        peer: PeerId,
        seq: u64,
        delta: Delta,
        author: Option<String>,
    },
    Presence {
        peer: PeerId,
        state: Value,
        typing: bool,
        awareness: Option<AwarenessOrigin>,
    },
    /// Send the peer everyone else's presence (y-websocket query awareness).
    QueryPresence {
        peer: PeerId,
    },
    /// Resolves once everything applied so far is committed and acknowledged.
    Flush {
        reply: oneshot::Sender<()>,
    },
    /// The document was soft-deleted: close every subscriber (4011; on reconnect their
    /// subscription is refused because the document cannot be loaded) and stop the room.
    Deleted,
    /// An admin's restore: bring texts and registers back to `target` (an earlier version) with
    /// one delta by `author`, committed and relayed like a client's.
    Restore {
        target: Box<Document>,
        author: Option<String>,
        reply: oneshot::Sender<Result<RestoreDone, RestoreFailed>>,
    },
}

/// A restore that went through: the new update's sequence number (`None` if nothing
/// differed) and what was and was not restored.
#[derive(Debug)]
pub(crate) struct RestoreDone {
    pub seq: Option<u64>,
    pub report: lattice_engine::RestoreReport,
}

/// Why a restore did not go through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreFailed {
    #[error("the document cannot be loaded: {0}")]
    Load(ReadError),
    #[error("the restore delta could not be built: {0}")]
    Build(#[from] lattice_engine::RestoreError),
    #[error("the restore delta was refused: {0}")]
    Apply(#[from] lattice_engine::ApplyError),
    #[error("the commit failed: {0}")]
    Commit(AppendError),
}

pub(crate) type RoomSender = mpsc::Sender<RoomCmd>;

/// The registry of live rooms.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    live: Mutex<HashMap<DocId, LiveRoom>>,
}

/// A live room as the registry keeps it: its inbox, and its subscriber count (written by the
/// room task, read by the admin API).
#[derive(Debug, Clone)]
struct LiveRoom {
    tx: RoomSender,
    subscribers: Arc<AtomicUsize>,
}

impl Rooms {
    /// The room for `doc`, started if it is not live.
    pub(crate) fn get_or_start(&self, state: &Arc<ServerState>, doc: &DocId) -> RoomSender {
        let mut live = self.registry();
        if let Some(room) = live.get(doc)
            && !room.tx.is_closed()
        {
            return room.tx.clone();
        }
        let subscribers = Arc::new(AtomicUsize::new(0));
        let tx = spawn_room(state.clone(), doc.clone(), subscribers.clone());
        live.insert(
            doc.clone(),
            LiveRoom {
                tx: tx.clone(),
                subscribers,
            },
        );
        tx
    }

    /// The room of `doc` if it is live (never starts one).
    pub(crate) fn live(&self, doc: &DocId) -> Option<RoomSender> {
        self.registry()
            .get(doc)
            .map(|r| r.tx.clone())
            .filter(|tx| !tx.is_closed())
    }

    /// Connections subscribed to `doc` right now (0 when its room is not live).
    pub(crate) fn subscribers(&self, doc: &DocId) -> usize {
        self.registry()
            .get(doc)
            .map_or(0, |r| r.subscribers.load(Relaxed))
    }

    /// Removes `doc` if `tx` is still its room and nothing is queued for it. Returns whether the
    /// room may stop.
    fn try_unload(&self, doc: &DocId, rx: &mpsc::Receiver<RoomCmd>) -> bool {
        let mut live = self.registry();
        if !rx.is_empty() {
            return false;
        }
        live.remove(doc);
        true
    }

    fn forget(&self, doc: &DocId) {
        self.registry().remove(doc);
    }

    /// Every live room, for shutdown.
    pub(crate) fn all(&self) -> Vec<RoomSender> {
        self.registry().values().map(|r| r.tx.clone()).collect()
    }

    /// The registry, locked. A panic while it was held cannot have left it half-changed (each
    /// critical section is one map operation), so a poisoned lock is taken as it is: a second,
    /// unregistered room for a document would break the single writer.
    fn registry(&self) -> MutexGuard<'_, HashMap<DocId, LiveRoom>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Subscribes `cmd`'s peer to `doc`'s room, starting the room if needed. A room may be
/// unloading at this very moment; a second room starts if so. `None` if neither accepted.
pub(crate) async fn join_room(
    state: &Arc<ServerState>,
    doc: &DocId,
    mut cmd: RoomCmd,
) -> Option<RoomSender> {
    let mut room = state.rooms.get_or_start(state, doc);
    for _ in 0..2 {
        match room.send(cmd).await {
            Ok(()) => return Some(room),
            Err(tokio::sync::mpsc::error::SendError(back)) => {
                cmd = back;
                room = state.rooms.get_or_start(state, doc);
            }
        }
    }
    None
}

fn spawn_room(state: Arc<ServerState>, doc: DocId, subscribers: Arc<AtomicUsize>) -> RoomSender {
    let (tx, rx) = mpsc::channel(state.config.limits.room_inbox);
    let span = info_span!("room", doc = %doc);
    tokio::spawn(room_task(state, doc, rx, subscribers).instrument(span));
    tx
}

/// A native peer's Yjs awareness client id: in `[2^52, 2^53)`, so it never collides with a Yjs
/// document's 32-bit client ids, and mixed with this server's random replica id, so a peer id
/// reused after a restart does not inherit an old entry's clock in long-lived Yjs clients.
fn native_awareness_client(replica: u64, peer: PeerId) -> u64 {
    let low = ((replica << 20) ^ peer.0) & ((1 << 52) - 1);
    (1 << 52) | low
}

type CommitFuture =
    Pin<Box<dyn Future<Output = (Vec<u64>, Result<Vec<u64>, AppendError>, Instant)> + Send>>;

/// A restore waiting for its commit.
struct RestoreWaiter {
    token: u64,
    report: lattice_engine::RestoreReport,
    reply: oneshot::Sender<Result<RestoreDone, RestoreFailed>>,
}

struct RoomDriver {
    state: Arc<ServerState>,
    doc: DocId,
    room: Room,
    peers: HashMap<PeerId, PeerHandle>,
    pending: Vec<PendingDelta>,
    in_flight: Option<CommitFuture>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Awareness identity of each peer with presence, for Yjs recipients.
    awareness: HashMap<PeerId, AwarenessMeta>,
    restores: Vec<RestoreWaiter>,
    /// Why the room has closed its peers and must stop: the document was deleted under it, or
    /// it could not be reloaded after a failed commit.
    stopped: Option<ReadError>,
}

/// How a peer's presence appears in Yjs awareness: a client id and a clock that only grows.
#[derive(Clone, Copy, Debug)]
struct AwarenessMeta {
    client: u64,
    clock: u32,
    /// The entry came from a Yjs client, whose own clock is used as is.
    from_yjs: bool,
    /// The Yjs client removed its own state with `clock`; the removal is relayed with it.
    removed_by_client: bool,
}

/// What one message becomes for a Yjs peer.
#[derive(Clone, Debug, Default)]
struct YjsOut {
    frames: Vec<Bytes>,
    /// Close the peer after the frames (it sent something the room refused).
    close: Option<CloseCode>,
}

async fn load_document(state: &ServerState, doc: &DocId) -> Result<Document, ReadError> {
    Ok(match state.store.load(doc, state.replica).await? {
        Some(loaded) => loaded.document,
        None => Document::new(state.replica),
    })
}

async fn room_task(
    state: Arc<ServerState>,
    doc: DocId,
    mut rx: mpsc::Receiver<RoomCmd>,
    subscribers: Arc<AtomicUsize>,
) {
    let document = match load_document(&state, &doc).await {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "cannot load document");
            state.rooms.forget(&doc);
            refuse_all(&mut rx, &doc, &e).await;
            return;
        }
    };
    state.metrics.live_documents.fetch_add(1, Relaxed);
    let config = RoomConfig {
        presence_ttl_ms: duration_ms(state.config.rooms.presence_ttl),
        typing_ttl_ms: duration_ms(state.config.rooms.typing_ttl),
        max_relay_bytes: state.config.rooms.max_relay_bytes,
    };
    let hlc = Hlc::new(state.replica, DEFAULT_MAX_DRIFT);
    let mut driver = RoomDriver {
        room: Room::new(doc.clone(), document, hlc, config),
        state: state.clone(),
        doc: doc.clone(),
        peers: HashMap::new(),
        pending: Vec::new(),
        in_flight: None,
        flush_waiters: Vec::new(),
        awareness: HashMap::new(),
        restores: Vec::new(),
        stopped: None,
    };
    let mut tick = tokio::time::interval(ROOM_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                driver.handle(cmd).await;
                // Take whatever else is queued before committing, so one commit covers it.
                while let Ok(cmd) = rx.try_recv() {
                    driver.handle(cmd).await;
                }
            }
            (tokens, result, started) = async {
                match driver.in_flight.as_mut() {
                    Some(commit) => commit.await,
                    None => std::future::pending().await,
                }
            } => {
                driver.in_flight = None;
                driver.commit_done(tokens, result, started).await;
            }
            _ = tick.tick() => {
                let fx = driver.room.tick(now_ms());
                driver.apply(fx).await;
            }
        }
        if let Some(why) = driver.stopped.take() {
            state.rooms.forget(&doc);
            for w in driver.restores.drain(..) {
                let _ = w.reply.send(Err(RestoreFailed::Load(why.clone())));
            }
            for reply in driver.flush_waiters.drain(..) {
                let _ = reply.send(());
            }
            refuse_all(&mut rx, &doc, &why).await;
            break;
        }
        driver.start_commit();
        driver.answer_flushes();
        subscribers.store(driver.room.subscriber_count(), Relaxed);
        if driver.room.is_idle() && driver.pending.is_empty() && driver.in_flight.is_none() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= state.config.rooms.idle_ttl && state.rooms.try_unload(&doc, &rx) {
                debug!("room unloaded after idle TTL");
                break;
            }
        } else {
            idle_since = None;
        }
    }
    subscribers.store(0, Relaxed);
    state.metrics.live_documents.fetch_sub(1, Relaxed);
}

/// The document could not be loaded: every queued command gets an error, subscribers are closed.
async fn refuse_all(rx: &mut mpsc::Receiver<RoomCmd>, doc: &DocId, e: &ReadError) {
    rx.close();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            RoomCmd::Subscribe { peer, .. } => match peer.kind {
                PeerKind::Native => {
                    let msg = ServerMsg::Error {
                        code: lattice_engine::protocol::ErrorCode::Internal,
                        message: format!("document cannot be loaded: {}", public_reason(e)),
                        doc: Some(doc.clone()),
                        seq: None,
                    };
                    let _ = peer
                        .outbox
                        .try_send(Message::Binary(Bytes::from(msg.encode())));
                    // A store that is down comes back: close (4011), so that the client
                    // reconnects with backoff and subscribes again. A damaged or deleted
                    // document does not: the connection stays open for its other documents.
                    if is_unavailable(e) {
                        peer.closer.close(CloseCode::DocumentUnavailable);
                    }
                }
                // A y-websocket peer cannot read a MessagePack error; its one document is
                // gone, so the close says it all.
                PeerKind::Yjs => peer.closer.close(CloseCode::DocumentUnavailable),
            },
            RoomCmd::Flush { reply } => {
                let _ = reply.send(());
            }
            RoomCmd::Restore { reply, .. } => {
                let _ = reply.send(Err(RestoreFailed::Load(e.clone())));
            }
            _ => {}
        }
    }
}

/// Whether `e` says the store is unavailable (it may come back), rather than that the document
/// is damaged or deleted.
fn is_unavailable(e: &ReadError) -> bool {
    matches!(e, ReadError::Database(_) | ReadError::Closed)
}

/// What a client may learn about a store failure: never internals.
fn public_reason(e: &ReadError) -> &'static str {
    match e {
        ReadError::DocumentDeleted { .. } => "the document is deleted",
        ReadError::CorruptDelta { .. }
        | ReadError::CorruptCheckpoint { .. }
        | ReadError::LogInconsistent { .. } => {
            "the stored document is damaged; an admin has been told"
        }
        _ => "storage is unavailable",
    }
}

/// What the `sync` answers in `fx` cost, in bytes: the measure of a connection's budget of
/// full-state computations.
fn sync_cost(fx: &Effects) -> usize {
    fx.send.iter().map(|out| sync_msg_cost(&out.msg)).sum()
}

/// What one `sync` answer cost (0 for any other message).
fn sync_msg_cost(msg: &ServerMsg) -> usize {
    match msg {
        ServerMsg::Sync { delta, state, .. } => {
            delta.yjs.len()
                + state.yjs.len()
                + 64 * (delta.counters.len() + delta.registers.len() + state.counters.len())
        }
        _ => 0,
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RoomDriver {
    async fn handle(&mut self, cmd: RoomCmd) {
        let fx = match cmd {
            RoomCmd::Subscribe {
                peer,
                access,
                state,
                ticket,
            } => {
                if peer.closer.is_closed() {
                    // Queued before the room dropped this peer (a slow consumer): it is gone,
                    // and must not come back through its own backlog.
                    return;
                }
                let id = peer.id;
                // y-websocket clients count the echo of their update as "saved".
                let echo = match peer.kind {
                    PeerKind::Yjs => Echo::OwnDeltas,
                    PeerKind::Native => Echo::None,
                };
                self.peers.insert(id, peer);
                let fx = self
                    .room
                    .subscribe(id, SubscribeOptions { access, echo }, &state);
                // The answer is in `fx`, or waits in the room for commits (it is computed now).
                let queued = self.room.queued_sync(id).map_or(0, sync_msg_cost);
                ticket.spent(sync_cost(&fx) + queued);
                fx
            }
            RoomCmd::Unsubscribe { peer } => {
                self.peers.remove(&peer);
                let fx = self.room.unsubscribe(peer);
                self.apply(fx).await;
                self.awareness.remove(&peer);
                return;
            }
            RoomCmd::Delta {
                peer,
                seq,
                delta,
                author,
            } => {
                self.state.metrics.deltas_in.fetch_add(1, Relaxed);
                self.room.client_delta(peer, seq, delta, author, now_ms())
            }
            RoomCmd::Presence {
                peer,
                state,
                typing,
                awareness,
            } => {
                if let Some(origin) = awareness
                    && self.room.is_subscribed(peer)
                {
                    if !self.claim_awareness_client(peer, origin.client) {
                        warn!(
                            peer = peer.0,
                            client = origin.client,
                            "awareness refused: another user's client id"
                        );
                        return;
                    }
                    self.awareness.insert(
                        peer,
                        AwarenessMeta {
                            client: origin.client,
                            clock: origin.clock,
                            from_yjs: true,
                            removed_by_client: state == Value::Null,
                        },
                    );
                }
                self.room.presence(peer, state, typing, now_ms())
            }
            RoomCmd::QueryPresence { peer } => self.room.query_presence(peer),
            RoomCmd::Flush { reply } => {
                self.flush_waiters.push(reply);
                Effects::default()
            }
            RoomCmd::Deleted => {
                self.stop(ReadError::DocumentDeleted {
                    doc: self.doc.clone(),
                });
                return;
            }
            RoomCmd::Restore {
                target,
                author,
                reply,
            } => match self.restore(&target, author) {
                Ok((fx, report)) => {
                    match fx.persist.first().map(|p| p.token) {
                        Some(token) => self.restores.push(RestoreWaiter {
                            token,
                            report,
                            reply,
                        }),
                        None => {
                            let _ = reply.send(Ok(RestoreDone { seq: None, report }));
                        }
                    }
                    fx
                }
                Err(e) => {
                    error!(error = %e, "restore failed");
                    let _ = reply.send(Err(e));
                    Effects::default()
                }
            },
        };
        self.apply(fx).await;
    }

    /// Whether `peer` may speak for awareness client `client`: yes unless another peer of this
    /// room already does for another principal. A peer of the same principal (the same client
    /// reconnecting before its old connection timed out) takes the id over.
    fn claim_awareness_client(&mut self, peer: PeerId, client: u64) -> bool {
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

    /// The room cannot go on with its document (`why`): close every peer so it resyncs (with
    /// a new room, which loads the document from the store, or is refused), then stop.
    fn stop(&mut self, why: ReadError) {
        for (_, handle) in self.peers.drain() {
            handle.closer.close(CloseCode::DocumentUnavailable);
        }
        self.pending.clear();
        self.stopped = Some(why);
    }

    /// Builds the restore delta from the live document and applies it as the server's change.
    fn restore(
        &mut self,
        target: &Document,
        author: Option<String>,
    ) -> Result<(Effects, lattice_engine::RestoreReport), RestoreFailed> {
        let (delta, report) = self.room.restore_delta(target, now_ms())?;
        if delta.is_empty() {
            return Ok((Effects::default(), report));
        }
        let fx = self.room.server_delta(delta, author, now_ms())?;
        Ok((fx, report))
    }

    fn start_commit(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return;
        }
        let take = self
            .pending
            .len()
            .min(self.state.config.rooms.max_commit_batch);
        let batch: Vec<PendingDelta> = self.pending.drain(..take).collect();
        let tokens: Vec<u64> = batch.iter().map(|p| p.token).collect();
        let entries: Vec<NewEntry> = batch
            .iter()
            .map(|p| {
                let replica = self
                    .peers
                    .get(&p.peer)
                    .and_then(|h| h.replica)
                    .unwrap_or(self.state.replica);
                NewEntry::new(self.doc.clone(), &p.delta, p.hlc, replica, p.author.clone())
            })
            .collect();
        let store = self.state.store.clone();
        let size = entries.len();
        self.state.metrics.commit_batch_size.observe(size as f64);
        self.in_flight = Some(Box::pin(async move {
            let started = Instant::now();
            let result = store.append_batch(entries).await;
            (tokens, result, started)
        }));
    }

    async fn commit_done(
        &mut self,
        tokens: Vec<u64>,
        result: Result<Vec<u64>, AppendError>,
        started: Instant,
    ) {
        let token = tokens.last().copied().unwrap_or(0);
        self.state
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.state.metrics.commit_batches.fetch_add(1, Relaxed);
        let fx = match &result {
            Ok(_) => self.room.committed(token),
            Err(e) => {
                error!(error = %e, "commit failed; closing the senders so they resync");
                self.pending.clear();
                for w in self.restores.drain(..) {
                    let _ = w.reply.send(Err(RestoreFailed::Commit(e.clone())));
                }
                self.room.commit_failed()
            }
        };
        let fanout = Instant::now();
        self.apply(fx).await;
        // After the relay is queued: when an admin's restore returns, every connected client
        // has it in its outbox.
        self.answer_restores(&tokens, &result);
        self.state
            .metrics
            .fanout_seconds
            .observe(fanout.elapsed().as_secs_f64());
    }

    /// Translates one room message for y-websocket peers. Acks become nothing (the sender's
    /// own update comes back as an echo instead), a refused write becomes "permission denied",
    /// any other refusal closes the peer so it reconnects and resyncs.
    fn yjs_frames(&mut self, msg: &ServerMsg) -> YjsOut {
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
        let replica = u64::from(self.state.replica.get());
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

    /// Tells each restore in the batch its sequence number (or the commit's failure).
    fn answer_restores(&mut self, tokens: &[u64], result: &Result<Vec<u64>, AppendError>) {
        if self.restores.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.restores);
        for w in waiters {
            let Some(i) = tokens.iter().position(|t| *t == w.token) else {
                self.restores.push(w);
                continue;
            };
            let answer = match result {
                Ok(seqs) => Ok(RestoreDone {
                    seq: seqs.get(i).copied(),
                    report: w.report,
                }),
                Err(e) => Err(RestoreFailed::Commit(e.clone())),
            };
            let _ = w.reply.send(answer);
        }
    }

    fn answer_flushes(&mut self) {
        if self.in_flight.is_none() && self.pending.is_empty() {
            for reply in self.flush_waiters.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    /// Carries out a room's effects. Boxed because dropping a slow peer can produce more effects.
    fn apply(&mut self, fx: Effects) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.pending.extend(fx.persist);
            let mut dropped: Vec<(PeerId, CloseCode)> = Vec::new();
            for out in fx.send {
                let is_delta = matches!(out.msg, ServerMsg::Delta { .. });
                // Encoded at most once per protocol, on first use.
                let mut native: Option<Bytes> = None;
                let mut yjs: Option<YjsOut> = None;
                for peer in out.to {
                    let Some(kind) = self.peers.get(&peer).map(|h| h.kind) else {
                        continue;
                    };
                    let (frames, close) = match kind {
                        PeerKind::Native => (
                            vec![
                                native
                                    .get_or_insert_with(|| Bytes::from(out.msg.encode()))
                                    .clone(),
                            ],
                            None,
                        ),
                        PeerKind::Yjs => {
                            if yjs.is_none() {
                                yjs = Some(self.yjs_frames(&out.msg));
                            }
                            let y = yjs.as_ref().map(|y| (y.frames.clone(), y.close));
                            y.unwrap_or_default()
                        }
                    };
                    let Some(handle) = self.peers.get(&peer) else {
                        continue;
                    };
                    for frame in frames {
                        match handle.outbox.try_send(Message::Binary(frame)) {
                            Ok(()) => {
                                if is_delta {
                                    self.state.metrics.deltas_out.fetch_add(1, Relaxed);
                                }
                            }
                            Err(SendError::Full) => {
                                dropped.push((peer, CloseCode::SlowConsumer));
                                break;
                            }
                            Err(SendError::Closed) => {
                                dropped.push((peer, CloseCode::Normal));
                                break;
                            }
                        }
                    }
                    if let Some(code) = close {
                        dropped.push((peer, code));
                    }
                }
            }
            for (peer, _) in &fx.close {
                if let Some(handle) = self.peers.remove(peer) {
                    handle.closer.close(CloseCode::DocumentUnavailable);
                }
            }
            for (peer, code) in dropped {
                if let Some(handle) = self.peers.remove(&peer) {
                    if code == CloseCode::SlowConsumer {
                        warn!(peer = peer.0, "outbox full: closing slow consumer");
                    }
                    if code != CloseCode::Normal {
                        handle.closer.close(code);
                    }
                    let more = self.room.unsubscribe(peer);
                    self.apply(more).await;
                    self.awareness.remove(&peer);
                }
            }
            if fx.reload {
                match load_document(&self.state, &self.doc).await {
                    Ok(doc) => {
                        let more = self.room.replace_document(doc);
                        self.apply(more).await;
                    }
                    Err(e @ ReadError::DocumentDeleted { .. }) => self.stop(e),
                    // The document still holds what the store refused. Kept, it would be
                    // served to subscribers and built on by later deltas, whose commits would
                    // then depend on content the store never got (acknowledged, yet not
                    // visible after a reload). Stop instead: the next subscriber starts a new
                    // room from the store.
                    Err(e) => {
                        error!(error = %e, "reload after a failed commit failed; closing every subscriber and stopping the room");
                        self.stop(e);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_poisoned_registry_still_finds_the_live_room() {
        let rooms = Arc::new(Rooms::default());
        let doc = DocId::new("d").unwrap();
        let (tx, _rx) = mpsc::channel(1);
        rooms.registry().insert(
            doc.clone(),
            LiveRoom {
                tx: tx.clone(),
                subscribers: Arc::default(),
            },
        );
        let poisoner = rooms.clone();
        let panicked = std::thread::spawn(move || {
            let _held = poisoner.live.lock().unwrap();
            panic!("a panic while the registry is held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(rooms.live.is_poisoned());
        // The same room, not a second one: get_or_start reads the registry the same way.
        assert!(rooms.live(&doc).unwrap().same_channel(&tx));
        assert_eq!(rooms.all().len(), 1);
        rooms.forget(&doc);
        assert!(rooms.live(&doc).is_none());
    }
}
