//! Room tasks: one tokio task owns each live document, with a bounded inbox.
//!
//! The task carries out the engine `Room`'s effects: it commits persisted deltas in batches (a
//! new batch starts as soon as the previous commit returns, so commits group naturally under
//! load, and the store's group committer merges batches across rooms), then delivers acks and
//! relays. Each frame is encoded once and cloned (`Bytes`) into every recipient's outbox; a full
//! outbox closes that peer as a slow consumer. The room unloads itself after an idle TTL.

pub(crate) mod peer;
mod task;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lattice_engine::ReplicaId;
use lattice_engine::sync::{Access, PeerId};
use lattice_engine::{Delta, DocId, DocState, Document, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::cluster::Cluster;
use crate::config::{Limits, RoomSettings};
use crate::metrics::Metrics;
use crate::rooms::peer::{PeerHandle, SyncTicket};
use crate::store::{AppendError, ReadError, Store};

use task::room_task;

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
    /// An HTTP reader (`peer`, of kind `Feed`) starts following the log: from now on it gets
    /// one `delta` event per committed entry whose seq is above the head the room answers on
    /// `reply` (everything up to it is in the store), and, with `presence`, the others'
    /// presence as a subscriber does. With `after`, the answer also carries the encoded entries
    /// after it, if the room still holds them all ([`Following::recent`]).
    Follow {
        peer: PeerHandle,
        presence: bool,
        after: Option<u64>,
        reply: oneshot::Sender<Result<Following, ReadError>>,
    },
    /// An HTTP write: `delta`, checked as a peer's with `access` and sent by `author`, is
    /// committed; `reply` gets its log seq, or why it was refused.
    Write {
        peer: PeerId,
        access: Access,
        author: Option<String>,
        delta: Delta,
        reply: oneshot::Sender<Result<Written, WriteRefused>>,
    },
    /// Presence from HTTP, for `of` (an SSE reader of `author`'s, or a session of `author`'s
    /// that polls); `reply` gets its peer number, or `None` if it was not taken.
    HttpPresence {
        of: PresenceOf,
        author: Option<String>,
        state: Value,
        typing: bool,
        reply: oneshot::Sender<Option<PeerId>>,
    },
    /// Everyone's current presence, as `presence` messages.
    PresenceSnapshot {
        reply: oneshot::Sender<Vec<lattice_engine::protocol::ServerMsg>>,
    },
    /// Send the peer everyone else's presence (y-websocket query awareness).
    QueryPresence {
        peer: PeerId,
    },
    /// A frame for the room's other peers of the sender's protocol, as is (Hocuspocus's
    /// stateless messages: bounded and rate-limited by the sender's connection, never stored).
    Broadcast {
        peer: PeerId,
        frame: bytes::Bytes,
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

/// What a reader that starts following the log is told.
#[derive(Debug)]
pub(crate) struct Following {
    /// The seq of the last committed entry; later ones come through the reader's outbox.
    pub head: u64,
    /// The entries after the reader's `after` up to `head`, encoded for it, when the room's
    /// window of recent entries holds them all (`None`: read them from the store).
    pub recent: Option<Vec<bytes::Bytes>>,
}

/// Whose presence an HTTP client sets.
#[derive(Debug)]
pub(crate) enum PresenceOf {
    /// The SSE stream with this peer number (from its `sync` event).
    Stream(PeerId),
    /// A client without a stream (long polling), by a name it chose: it is in the room while
    /// it renews its presence, and leaves when its presence expires. `new_peer` is its number
    /// if it is new.
    Session { name: String, new_peer: PeerId },
}

/// A write that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// The log seq of the write's entry; when it changed nothing, the head of the log once
    /// everything the document held when it arrived was committed.
    pub seq: u64,
    /// Whether the write changed the document (and took a seq of its own).
    pub changed: bool,
}

/// Why a write was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum WriteRefused {
    /// The delta was refused, as it would be on a WebSocket (`code` is the protocol's).
    #[error("{message}")]
    Delta {
        code: lattice_engine::protocol::ErrorCode,
        message: String,
    },
    /// The document cannot be loaded.
    #[error("the document cannot be loaded: {0}")]
    Load(ReadError),
    /// The commit failed; nothing was stored.
    #[error("the commit failed: {0}")]
    Commit(AppendError),
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

/// What rooms need from the server they run in. Rooms see only this, never the server's
/// whole state, so the layer below the protocols does not depend on the one that wires them.
#[derive(Debug)]
pub(crate) struct RoomEnv {
    pub settings: RoomSettings,
    pub limits: Limits,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// The server's replica id: the Yjs client id of the documents it creates.
    pub replica: ReplicaId,
    pub shutdown: CancellationToken,
    /// This node's part in a cluster (`None`: a single server).
    pub cluster: Option<Cluster>,
}

/// The registry of live rooms, and the environment they run in. Cloning shares it: each room
/// task holds a clone, to leave the registry when it stops.
#[derive(Debug, Clone)]
pub(crate) struct Rooms {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    env: RoomEnv,
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
    /// An empty registry whose rooms run in `env`.
    pub(crate) fn new(env: RoomEnv) -> Self {
        Self {
            shared: Arc::new(Shared {
                env,
                live: Mutex::default(),
            }),
        }
    }

    /// What the rooms run in.
    pub(crate) fn env(&self) -> &RoomEnv {
        &self.shared.env
    }

    /// The room for `doc`, started if it is not live.
    pub(crate) fn get_or_start(&self, doc: &DocId) -> RoomSender {
        let mut live = self.registry();
        if let Some(room) = live.get(doc)
            && !room.tx.is_closed()
        {
            return room.tx.clone();
        }
        let subscribers = Arc::new(AtomicUsize::new(0));
        let tx = self.spawn_room(doc.clone(), subscribers.clone());
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
        self.shared
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_room(&self, doc: DocId, subscribers: Arc<AtomicUsize>) -> RoomSender {
        let (tx, rx) = mpsc::channel(self.env().limits.room_inbox);
        let span = info_span!("room", doc = %doc);
        tokio::spawn(room_task(self.clone(), doc, rx, subscribers).instrument(span));
        tx
    }
}

/// Subscribes `cmd`'s peer to `doc`'s room, starting the room if needed. A room may be
/// unloading at this very moment; a second room starts if so. `None` if neither accepted.
pub(crate) async fn join_room(rooms: &Rooms, doc: &DocId, mut cmd: RoomCmd) -> Option<RoomSender> {
    let mut room = rooms.get_or_start(doc);
    for _ in 0..2 {
        match room.send(cmd).await {
            Ok(()) => return Some(room),
            Err(tokio::sync::mpsc::error::SendError(back)) => {
                cmd = back;
                room = rooms.get_or_start(doc);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_poisoned_registry_still_finds_the_live_room() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rooms.db").display());
        let store = Store::open(&url, crate::store::StoreConfig::default())
            .await
            .unwrap();
        let rooms = Rooms::new(RoomEnv {
            settings: crate::config::Config::default().rooms,
            limits: Limits::default(),
            store,
            metrics: Arc::default(),
            replica: ReplicaId::from_random(7),
            shutdown: CancellationToken::new(),
            cluster: None,
        });
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
            let _held = poisoner.shared.live.lock().unwrap();
            panic!("a panic while the registry is held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(rooms.shared.live.is_poisoned());
        // The same room, not a second one: get_or_start reads the registry the same way.
        assert!(rooms.live(&doc).unwrap().same_channel(&tx));
        assert_eq!(rooms.all().len(), 1);
        rooms.forget(&doc);
        assert!(rooms.live(&doc).is_none());
    }
}
