//! The room task: it owns one document's engine `Room`, commits persisted deltas in batches
//! and carries out the room's effects (acks, relays, closes, restores) once they are committed.

mod awareness;
mod broadcast;
mod cluster;
mod feed;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::{
    Echo, Effects, PeerId, PendingDelta, Room, RoomConfig, SubscribeOptions,
};
use lattice_engine::{DEFAULT_MAX_DRIFT, DocId, Document, Hlc, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::clock::now_ms;
use crate::rooms::peer::{Encoded, PeerHandle, PeerKind};
use crate::store::{AppendError, NewEntry, ReadError};
use crate::transport::close::CloseCode;
use crate::transport::outbox::{Message, SendError};

use super::{RestoreDone, RestoreFailed, RoomCmd, RoomEnv, Rooms, WriteRefused};
use awareness::AwarenessMeta;
use feed::{Committing, WriteWaiter};

/// How often a room expires presence and checks whether it is idle.
const ROOM_TICK: Duration = Duration::from_millis(500);

type CommitFuture =
    Pin<Box<dyn Future<Output = (Vec<u64>, Result<Vec<u64>, AppendError>, Instant)> + Send>>;

/// A restore waiting for its commit.
struct RestoreWaiter {
    token: u64,
    report: lattice_engine::RestoreReport,
    reply: oneshot::Sender<Result<RestoreDone, RestoreFailed>>,
}

struct RoomDriver {
    rooms: Rooms,
    doc: DocId,
    room: Room,
    peers: HashMap<PeerId, PeerHandle>,
    pending: Vec<PendingDelta>,
    in_flight: Option<CommitFuture>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Awareness identity of each peer with presence, for Yjs recipients.
    awareness: HashMap<PeerId, AwarenessMeta>,
    restores: Vec<RestoreWaiter>,
    /// The seq up to which the room holds every log entry (committed through this room, by
    /// another node, or loaded); readers get entries in this order.
    head_seq: u64,
    /// Entries above the head, the cluster link and cross-node presence (`cluster.rs`).
    order: cluster::Order,
    /// HTTP readers following the log, with the seq of the last entry each was given.
    feeds: HashMap<PeerId, u64>,
    /// The entries of the commit in flight, kept to give HTTP readers once they have seqs.
    committing: Vec<Committing>,
    /// HTTP writes waiting for their commit.
    writes: Vec<WriteWaiter>,
    /// The last committed entries as HTTP readers get them, while readers come by.
    recent: feed::Recent,
    /// HTTP clients without a stream that publish presence, by (principal, name).
    sessions: HashMap<(Option<String>, String), PeerId>,
    /// Why the room has closed its peers and must stop: the document was deleted under it, or
    /// it could not be reloaded after a failed commit.
    stopped: Option<ReadError>,
}

/// The stored document and the seq of its last entry (a new document: empty, 0).
async fn load_document(env: &RoomEnv, doc: &DocId) -> Result<(Document, u64), ReadError> {
    Ok(match env.store.load(doc, env.replica).await? {
        Some(loaded) => (loaded.document, loaded.head_seq),
        None => (Document::new(env.replica), 0),
    })
}

pub(super) async fn room_task(
    rooms: Rooms,
    doc: DocId,
    mut rx: mpsc::Receiver<RoomCmd>,
    subscribers: Arc<AtomicUsize>,
) {
    let env = rooms.env();
    let (document, head_seq) = match load_document(env, &doc).await {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "cannot load document");
            rooms.forget(&doc);
            refuse_all(&mut rx, &doc, &e).await;
            return;
        }
    };
    env.metrics.live_documents.fetch_add(1, Relaxed);
    let config = RoomConfig {
        presence_ttl_ms: duration_ms(env.settings.presence_ttl),
        typing_ttl_ms: duration_ms(env.settings.typing_ttl),
        max_relay_bytes: env.settings.max_relay_bytes,
        relay: env.settings.relay,
    };
    let hlc = Hlc::new(env.replica, DEFAULT_MAX_DRIFT);
    let mut driver = RoomDriver {
        room: Room::new(doc.clone(), document, hlc, config),
        rooms: rooms.clone(),
        doc: doc.clone(),
        peers: HashMap::new(),
        pending: Vec::new(),
        in_flight: None,
        flush_waiters: Vec::new(),
        awareness: HashMap::new(),
        restores: Vec::new(),
        head_seq,
        order: cluster::Order::new(env.cluster.as_ref(), &doc, head_seq),
        feeds: HashMap::new(),
        committing: Vec::new(),
        writes: Vec::new(),
        sessions: HashMap::new(),
        recent: feed::Recent::default(),
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
            event = driver.order.next() => match event {
                cluster::OrderEvent::Inbound(what) => {
                    driver.inbound(what).await;
                    while let Some(what) = driver.order.try_inbound() {
                        driver.inbound(what).await;
                    }
                }
                cluster::OrderEvent::CaughtUp(read) => driver.caught_up(read).await,
            },
            _ = tick.tick() => {
                let fx = driver.room.tick(now_ms());
                driver.apply(fx).await;
                driver.end_expired_sessions().await;
                driver.expire_remote_peers().await;
                if driver.catch_up_due() {
                    driver.start_catch_up();
                }
                driver.expire_left_awareness(duration_ms(env.settings.presence_ttl));
            }
        }
        if let Some(why) = driver.stopped.take() {
            rooms.forget(&doc);
            for w in driver.restores.drain(..) {
                let _ = w.reply.send(Err(RestoreFailed::Load(why.clone())));
            }
            for w in driver.writes.drain(..) {
                let _ = w.reply.send(Err(WriteRefused::Load(why.clone())));
            }
            for reply in driver.flush_waiters.drain(..) {
                let _ = reply.send(());
            }
            refuse_all(&mut rx, &doc, &why).await;
            break;
        }
        // The relays of what this turn applied, merged per sender, before it waits again.
        let fx = driver.room.flush_relays();
        driver.apply(fx).await;
        driver.start_catch_up();
        driver.start_commit();
        driver.answer_flushes();
        driver.answer_unchanged_writes();
        // Other nodes' peers (their presence) are subscribers without a connection here: they
        // neither count nor keep the room loaded.
        let local = driver.room.subscriber_count() - driver.order.remote_peer_count();
        subscribers.store(local, Relaxed);
        if local == 0
            && !driver.room.has_pending()
            && driver.peers.is_empty()
            && driver.writes.is_empty()
            && driver.pending.is_empty()
            && driver.in_flight.is_none()
        {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= env.settings.idle_ttl && rooms.try_unload(&doc, &rx) {
                debug!("room unloaded after idle TTL");
                break;
            }
        } else {
            idle_since = None;
        }
    }
    subscribers.store(0, Relaxed);
    env.metrics.live_documents.fetch_sub(1, Relaxed);
}

/// The document could not be loaded: every queued command gets an error, subscribers are closed.
async fn refuse_all(rx: &mut mpsc::Receiver<RoomCmd>, doc: &DocId, e: &ReadError) {
    rx.close();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            RoomCmd::Subscribe { peer, .. } => {
                let msg = ServerMsg::Error {
                    code: lattice_engine::protocol::ErrorCode::Internal,
                    message: format!("document cannot be loaded: {}", public_reason(e)),
                    doc: Some(doc.clone()),
                    seq: None,
                };
                let Encoded { frames, close } = peer.encoder.encode(&msg, None);
                for frame in &frames {
                    let _ = peer.outbox.try_send(Message::Binary(frame.clone()));
                }
                // A store that is down comes back: close (4011), so that the client
                // reconnects with backoff and subscribes again. A damaged or deleted document
                // does not: a connection that can read the error stays open for its other
                // documents; one that cannot (one document per connection) is closed.
                if is_unavailable(e) || close.is_some() || frames.is_empty() {
                    peer.closer.close(CloseCode::DocumentUnavailable);
                }
            }
            RoomCmd::Follow { peer, reply, .. } => {
                peer.closer.close(CloseCode::DocumentUnavailable);
                let _ = reply.send(Err(e.clone()));
            }
            RoomCmd::Write { reply, .. } => {
                let _ = reply.send(Err(WriteRefused::Load(e.clone())));
            }
            RoomCmd::HttpPresence { reply, .. } => {
                let _ = reply.send(None);
            }
            RoomCmd::PresenceSnapshot { reply } => {
                let _ = reply.send(Vec::new());
            }
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
                // In a cluster, the peer may come from another node (which died, say) with
                // entries this room has not had yet: take them first, so the answer covers
                // them and the peer's resync carries only its own changes.
                self.catch_up_now().await;
                // y-websocket clients count the echo of their update as "saved".
                let echo = match peer.kind {
                    PeerKind::Yjs => Echo::OwnDeltas,
                    // Hocuspocus clients count one sync status per update.
                    PeerKind::Hocuspocus => Echo::AckEach,
                    PeerKind::Native | PeerKind::Feed => Echo::None,
                };
                let author = peer.author.clone();
                self.peers.insert(id, peer);
                let options = SubscribeOptions {
                    access,
                    echo,
                    author,
                };
                let fx = self.room.subscribe(id, options, &state);
                // The answer is in `fx`, or waits in the room for commits (it is computed now).
                let queued = self.room.queued_sync(id).map_or(0, sync_msg_cost);
                ticket.spent(sync_cost(&fx) + queued);
                fx
            }
            RoomCmd::Unsubscribe { peer } => {
                self.peers.remove(&peer);
                self.feeds.remove(&peer);
                let fx = self.room.unsubscribe(peer);
                self.apply(fx).await;
                self.awareness_left(peer);
                return;
            }
            RoomCmd::Delta {
                peer,
                seq,
                delta,
                author,
            } => {
                self.rooms.env().metrics.deltas_in.fetch_add(1, Relaxed);
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
                    let author = self.peers.get(&peer).and_then(|h| h.author.clone());
                    self.awareness.insert(
                        peer,
                        AwarenessMeta {
                            client: origin.client,
                            clock: origin.clock,
                            from_yjs: true,
                            removed_by_client: state == Value::Null,
                            author,
                            left_at_ms: None,
                        },
                    );
                }
                let copy = self.order.is_linked().then(|| state.clone());
                let fx = self.room.presence(peer, state, typing, now_ms());
                if let Some(state) = copy
                    && (self.room.has_presence(peer) || state == Value::Null)
                {
                    self.publish_presence(peer, state, typing);
                }
                fx
            }
            RoomCmd::Follow {
                peer,
                presence,
                after,
                reply,
            } => self.follow(peer, presence, after, reply),
            RoomCmd::Write {
                peer,
                access,
                author,
                delta,
                reply,
            } => {
                self.rooms.env().metrics.deltas_in.fetch_add(1, Relaxed);
                self.write(peer, access, author, delta, reply).await;
                return;
            }
            RoomCmd::HttpPresence {
                of,
                author,
                state,
                typing,
                reply,
            } => {
                let copy = self.order.is_linked().then(|| state.clone());
                let taken = self.http_presence(of, author, state, typing);
                let _ = reply.send(taken.as_ref().map(|(peer, _)| *peer));
                if let (Some(state), Some((peer, _))) = (copy, &taken) {
                    self.publish_presence(*peer, state, typing);
                }
                taken.map(|(_, fx)| fx).unwrap_or_default()
            }
            RoomCmd::PresenceSnapshot { reply } => {
                let _ = reply.send(self.room.presence_snapshot());
                return;
            }
            RoomCmd::QueryPresence { peer } => self.room.query_presence(peer),
            RoomCmd::Broadcast { peer, frame } => {
                self.broadcast(peer, frame).await;
                return;
            }
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

    /// The room cannot go on with its document (`why`): close every peer so it resyncs (with
    /// a new room, which loads the document from the store, or is refused), then stop.
    fn stop(&mut self, why: ReadError) {
        for (_, handle) in self.peers.drain() {
            handle.closer.close(CloseCode::DocumentUnavailable);
        }
        self.feeds.clear();
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
            .min(self.rooms.env().settings.max_commit_batch);
        let batch: Vec<PendingDelta> = self.pending.drain(..take).collect();
        let tokens: Vec<u64> = batch.iter().map(|p| p.token).collect();
        let entries: Vec<NewEntry> = batch
            .iter()
            .map(|p| {
                let replica = self
                    .peers
                    .get(&p.peer)
                    .and_then(|h| h.replica)
                    .unwrap_or(self.rooms.env().replica);
                NewEntry::new(self.doc.clone(), &p.delta, p.hlc, replica, p.author.clone())
            })
            .collect();
        let clustered = self.rooms.env().cluster.is_some();
        self.committing = batch
            .iter()
            .zip(&entries)
            .map(|(p, e)| Committing::of(p, clustered.then(|| e.delta_bytes().to_vec())))
            .collect();
        let store = self.rooms.env().store.clone();
        let size = entries.len();
        self.rooms
            .env()
            .metrics
            .commit_batch_size
            .observe(size as f64);
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
        self.rooms
            .env()
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.rooms
            .env()
            .metrics
            .commit_batches
            .fetch_add(1, Relaxed);
        let committing = std::mem::take(&mut self.committing);
        let fx = match &result {
            Ok(_) => self.room.committed(token),
            Err(e) => {
                error!(error = %e, "commit failed; closing the senders so they resync");
                self.pending.clear();
                for w in self.restores.drain(..) {
                    let _ = w.reply.send(Err(RestoreFailed::Commit(e.clone())));
                }
                for w in self.writes.drain(..) {
                    let _ = w.reply.send(Err(WriteRefused::Commit(e.clone())));
                }
                self.room.commit_failed()
            }
        };
        let fanout = Instant::now();
        if let Ok(seqs) = &result {
            self.answer_writes(&tokens, seqs);
            self.local_committed(committing, seqs).await;
        }
        self.apply(fx).await;
        // After the relay is queued: when an admin's restore returns, every connected client
        // has it in its outbox.
        self.answer_restores(&tokens, &result);
        self.rooms
            .env()
            .metrics
            .fanout_seconds
            .observe(fanout.elapsed().as_secs_f64());
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
                let awareness = match &out.msg {
                    ServerMsg::Presence { peer, state, .. } => {
                        Some(self.awareness_id(PeerId(*peer), state))
                    }
                    _ => None,
                };
                // Encoded at most once per protocol (one encoder each), on first use. Keyed by
                // the kind, not the encoder's address: encoders are zero-sized, and distinct
                // zero-sized statics may share an address.
                let mut encoded: Vec<(PeerKind, Encoded)> = Vec::new();
                for peer in out.to {
                    let Some((kind, encoder)) = self.peers.get(&peer).map(|h| (h.kind, h.encoder))
                    else {
                        continue;
                    };
                    let at = match encoded.iter().position(|(k, _)| *k == kind) {
                        Some(at) => at,
                        None => {
                            encoded.push((kind, encoder.encode(&out.msg, awareness)));
                            encoded.len() - 1
                        }
                    };
                    let Encoded { frames, close } = encoded[at].1.clone();
                    let Some(handle) = self.peers.get(&peer) else {
                        continue;
                    };
                    for frame in frames {
                        match handle.outbox.try_send(Message::Binary(frame)) {
                            Ok(()) => {
                                if is_delta {
                                    self.rooms.env().metrics.deltas_out.fetch_add(1, Relaxed);
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
            if fx.lost_relays {
                // Relayed before a commit that failed: any connection may hold it, so every
                // one resyncs (HTTP readers get only committed entries).
                let streams: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, h)| h.kind != PeerKind::Feed)
                    .map(|(id, _)| *id)
                    .collect();
                for peer in streams {
                    if let Some(handle) = self.peers.remove(&peer) {
                        handle.closer.close(CloseCode::DocumentUnavailable);
                    }
                    let more = self.room.unsubscribe(peer);
                    self.apply(more).await;
                    self.awareness_left(peer);
                }
            }
            for (peer, code) in dropped {
                self.feeds.remove(&peer);
                if let Some(handle) = self.peers.remove(&peer) {
                    if code == CloseCode::SlowConsumer {
                        warn!(peer = peer.0, "outbox full: closing slow consumer");
                    }
                    if code != CloseCode::Normal {
                        handle.closer.close(code);
                    }
                    let more = self.room.unsubscribe(peer);
                    self.apply(more).await;
                    self.awareness_left(peer);
                }
            }
            if fx.reload {
                match load_document(self.rooms.env(), &self.doc).await {
                    Ok((doc, head_seq)) => {
                        self.reloaded(head_seq);
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
