//! Many server processes (nodes) on one PostgreSQL database, fanning out through Redis
//! (docs/cluster.md).
//!
//! PostgreSQL decides order and durability: every node appends to the same log, and the
//! store numbers a document's entries densely inside the committing transaction, under the
//! document row's lock, whichever node commits. Redis only carries what is already committed:
//!
//! - **Streams** (`stream.rs`): after a commit, the room hands its entries to this node's
//!   publisher, which adds each to the document's stream (`lattice:{doc}:log`) with its seq as
//!   the entry id. One reader per node blocks on the streams of the documents that have a live
//!   room here (and only those), from each room's position, never from `$`.
//! - **Catch-up** (`check.rs` and the rooms): seqs are dense, so a room sees a gap at once and
//!   reads the missing range from the database; a position check compares every live room's
//!   head with the database's (every `check_interval`, at once after a Redis reconnect, and
//!   every `fallback_interval` while Redis is down, when it is the only cross-node path).
//! - **Pub/sub** (`pubsub.rs`): presence per document (`lattice:{doc}:presence`), and control
//!   messages to every node (`lattice:control`: a soft delete).
//!
//! A room joins when it loads ([`Cluster::join`]) and leaves when its [`Membership`] drops.
//! What arrives for it comes as [`Inbound`] through a bounded queue; when that is full the
//! entries are left to the room's catch-up from the database (counted), never waited for, so
//! one slow room cannot hold up the others.

mod check;
mod pubsub;
mod stream;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lattice_engine::{DocId, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::Metrics;
use crate::store::Store;

/// How a node joins a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// How often live rooms' heads are compared with the database's while Redis works
    /// (default 5 s): the backstop for an entry whose stream add failed.
    pub check_interval: Duration,
    /// The same while Redis is down (default 500 ms): then the only cross-node path.
    pub fallback_interval: Duration,
    /// Entries each stream keeps, at least (`XADD … MAXLEN ~`; default 10,000). A node further
    /// behind than this reads the rest from the database.
    pub stream_max_len: u64,
    /// How long a stream is kept after its last entry (default 1 h).
    pub stream_ttl: Duration,
}

impl ClusterConfig {
    /// The defaults for `redis_url`.
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            check_interval: Duration::from_secs(5),
            fallback_interval: Duration::from_millis(500),
            stream_max_len: 10_000,
            stream_ttl: Duration::from_secs(3600),
        }
    }
}

/// Why a node could not start its cluster connection.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "--redis-url needs a PostgreSQL database: SQLite lives on one host, so nodes could not share it"
    )]
    NeedsPostgres,
    #[error("invalid Redis URL {url}: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Capacity of each room's queue of what arrives for it from other nodes.
const ROOM_QUEUE: usize = 256;
/// Capacity of the publisher's queue, in entries and messages.
const PUBLISH_QUEUE: usize = 16_384;

/// An entry another node committed, as its stream (or the database) carries it.
#[derive(Debug, Clone)]
pub(crate) struct RemoteEntry {
    pub seq: u64,
    pub author: Option<String>,
    /// The delta, MessagePack as stored.
    pub delta_bytes: Vec<u8>,
}

/// A peer's presence, as one node tells the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RemotePresence {
    /// The node's number for the peer.
    pub peer: u64,
    /// `Value::Null`: it left.
    pub state: Value,
    pub typing: bool,
    /// Its identity in Yjs awareness (client id, clock).
    pub awareness: (u64, u32),
    pub author: Option<String>,
}

/// What a room's pub/sub channel carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum PresenceMsg {
    /// A node's peer set or renewed its presence, or left.
    Set { node: u64, presence: RemotePresence },
    /// A node joined the document: the others send their peers' presence again.
    Query { node: u64 },
}

/// What the control channel carries, to every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ControlMsg {
    /// The document was soft-deleted: close its room.
    Deleted { node: u64, doc: String },
}

/// What arrives for a live room from the cluster.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Entries of other nodes from the stream, in stream order (seqs increasing).
    Entries(Vec<RemoteEntry>),
    /// The database's log goes up to this seq: read what the room lacks.
    Behind(u64),
    /// Another node's peer's presence.
    Presence { node: u64, presence: RemotePresence },
    /// Another node joined: publish this node's presence again.
    PresenceQuery,
    /// The document was soft-deleted on another node.
    Deleted,
}

/// What goes out to Redis.
#[derive(Debug)]
enum Outgoing {
    /// A committed entry, to its document's stream.
    Entry {
        doc: DocId,
        seq: u64,
        author: Option<String>,
        delta_bytes: Vec<u8>,
    },
    /// A message to a pub/sub channel.
    Publish { channel: String, payload: Vec<u8> },
    /// Wake the stream reader (a room joined): `CLIENT UNBLOCK` on its connection.
    Unblock,
}

/// A live room, as the cluster knows it.
#[derive(Debug)]
struct Member {
    /// Joins are numbered, so an old room's membership dropping late does not remove a new one.
    id: u64,
    tx: mpsc::Sender<Inbound>,
    /// The room's contiguous head: it holds every entry up to it.
    head: Arc<AtomicU64>,
}

/// This node's part in a cluster. Cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// This process's random number: entries and messages it sent come back tagged with it.
    node: u64,
    config: ClusterConfig,
    client: redis::Client,
    store: Store,
    metrics: Arc<Metrics>,
    members: Mutex<HashMap<DocId, Member>>,
    next_member: AtomicU64,
    /// Bumped whenever a room joins or leaves: the reader and the subscriber look again.
    joined: watch::Sender<u64>,
    /// Asks the position check to run now (after a Redis reconnect).
    check_now: tokio::sync::Notify,
    outgoing: mpsc::Sender<Outgoing>,
    /// The stream reader's Redis connection id, for `CLIENT UNBLOCK` (0: none).
    reader_id: AtomicU64,
    reader_up: AtomicBool,
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    shutdown: CancellationToken,
}

/// The key of `doc`'s stream; the hash tag keeps a document's keys on one Redis Cluster slot.
pub(crate) fn stream_key(doc: &DocId) -> String {
    format!("lattice:{{{doc}}}:log")
}

/// The pub/sub channel of `doc`'s presence.
pub(crate) fn presence_channel(doc: &DocId) -> String {
    format!("lattice:{{{doc}}}:presence")
}

/// The channel every node listens to.
pub(crate) const CONTROL_CHANNEL: &str = "lattice:control";

/// The document of a stream key or presence channel.
fn doc_of(key: &str) -> Option<DocId> {
    let inner = key.strip_prefix("lattice:{")?;
    let end = inner.rfind("}:")?;
    DocId::new(&inner[..end]).ok()
}

impl Cluster {
    /// Joins the cluster at `config.redis_url`: starts this node's publisher, stream reader,
    /// pub/sub subscriber and position check. Redis need not be up: the node starts degraded
    /// and connects when it can. Refused on a SQLite store.
    pub(crate) fn start(
        config: ClusterConfig,
        store: Store,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Cluster, ClusterError> {
        if store.backend_name() != "postgres" {
            return Err(ClusterError::NeedsPostgres);
        }
        let client = redis::Client::open(config.redis_url.as_str()).map_err(|source| {
            ClusterError::BadUrl {
                url: crate::store::redacted_url(&config.redis_url),
                source,
            }
        })?;
        let (outgoing, out_rx) = mpsc::channel(PUBLISH_QUEUE);
        let node = loop {
            let n: u64 = rand::random();
            if n != 0 {
                break n;
            }
        };
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node,
                config,
                client,
                store,
                metrics,
                members: Mutex::default(),
                next_member: AtomicU64::new(1),
                joined: watch::Sender::new(0),
                check_now: tokio::sync::Notify::new(),
                outgoing,
                reader_id: AtomicU64::new(0),
                reader_up: AtomicBool::new(false),
                publisher_up: AtomicBool::new(false),
                subscriber_up: AtomicBool::new(false),
                shutdown,
            }),
        };
        tokio::spawn(stream::publisher(cluster.clone(), out_rx));
        tokio::spawn(stream::reader(cluster.clone()));
        tokio::spawn(pubsub::subscriber(cluster.clone()));
        tokio::spawn(check::position_check(cluster.clone()));
        Ok(cluster)
    }

    /// This node's number, in hex, as the banner and the streams show it.
    pub(crate) fn node_name(&self) -> String {
        format!("{:016x}", self.inner.node)
    }

    /// Whether every Redis connection of this node works. While not, cross-node delivery
    /// comes from polling the database (`/readyz` says `degraded`).
    pub(crate) fn redis_up(&self) -> bool {
        let i = &self.inner;
        i.reader_up.load(Relaxed) && i.publisher_up.load(Relaxed) && i.subscriber_up.load(Relaxed)
    }

    /// The room of `doc` loaded with everything up to `head`: from now on it gets what other
    /// nodes commit after that, through the returned queue, until the membership drops.
    pub(crate) fn join(&self, doc: &DocId, head: u64) -> (Membership, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let head = Arc::new(AtomicU64::new(head));
        let id = self.inner.next_member.fetch_add(1, Relaxed);
        self.members().insert(
            doc.clone(),
            Member {
                id,
                tx,
                head: head.clone(),
            },
        );
        self.inner.joined.send_modify(|n| *n += 1);
        let _ = self.inner.outgoing.try_send(Outgoing::Unblock);
        // Whoever is there already sends their presence.
        self.publish(
            presence_channel(doc),
            &PresenceMsg::Query {
                node: self.inner.node,
            },
        );
        let membership = Membership {
            cluster: self.clone(),
            doc: doc.clone(),
            id,
            head,
        };
        (membership, rx)
    }

    /// A committed entry of this node's, for the other nodes.
    pub(crate) fn publish_entry(
        &self,
        doc: &DocId,
        seq: u64,
        author: Option<String>,
        delta_bytes: Vec<u8>,
    ) {
        let entry = Outgoing::Entry {
            doc: doc.clone(),
            seq,
            author,
            delta_bytes,
        };
        if self.inner.outgoing.try_send(entry).is_err() {
            // The others read it from the database (gap or position check).
            self.inner
                .metrics
                .cluster
                .publish_failures
                .fetch_add(1, Relaxed);
        }
    }

    /// A local peer's presence on `doc`, for the other nodes.
    pub(crate) fn publish_presence(&self, doc: &DocId, presence: RemotePresence) {
        let msg = PresenceMsg::Set {
            node: self.inner.node,
            presence,
        };
        self.publish(presence_channel(doc), &msg);
    }

    /// `doc` was soft-deleted here: every node closes its room.
    pub(crate) fn publish_deleted(&self, doc: &DocId) {
        let msg = ControlMsg::Deleted {
            node: self.inner.node,
            doc: doc.to_string(),
        };
        self.publish(CONTROL_CHANNEL.to_owned(), &msg);
    }

    fn publish<T: Serialize>(&self, channel: String, msg: &T) {
        let Ok(payload) = rmp_serde::to_vec_named(msg) else {
            return;
        };
        // Presence is renewed and soft deletes are also found by the position check: a
        // message that does not fit now is not worth waiting for.
        if self
            .inner
            .outgoing
            .try_send(Outgoing::Publish { channel, payload })
            .is_err()
        {
            warn!("cluster publisher queue full: a pub/sub message was not sent");
        }
    }

    fn members(&self) -> MutexGuard<'_, HashMap<DocId, Member>> {
        self.inner
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every live room's document, queue and head.
    fn snapshot(&self) -> Vec<(DocId, mpsc::Sender<Inbound>, u64)> {
        self.members()
            .iter()
            .map(|(doc, m)| (doc.clone(), m.tx.clone(), m.head.load(Relaxed)))
            .collect()
    }

    /// Hands `what` to `doc`'s room, if it is live here; `false` if its queue is full.
    fn deliver(&self, doc: &DocId, what: Inbound) -> bool {
        let tx = match self.members().get(doc) {
            Some(m) => m.tx.clone(),
            None => return true,
        };
        match tx.try_send(what) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }
}

/// A live room's place in the cluster; dropping it leaves.
#[derive(Debug)]
pub(crate) struct Membership {
    cluster: Cluster,
    doc: DocId,
    id: u64,
    head: Arc<AtomicU64>,
}

impl Membership {
    /// The room now holds every entry up to `seq`.
    pub(crate) fn advanced(&self, seq: u64) {
        self.head.fetch_max(seq, Relaxed);
    }

    /// The room went back to `seq` (it reloaded the document).
    pub(crate) fn reset(&self, seq: u64) {
        self.head.store(seq, Relaxed);
    }

    pub(crate) fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut members = self.cluster.members();
        if members.get(&self.doc).is_some_and(|m| m.id == self.id) {
            members.remove(&self.doc);
        }
        drop(members);
        self.cluster.inner.joined.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_and_channels_name_their_document() {
        let doc = DocId::new("notes/a.b~c").unwrap();
        assert_eq!(doc_of(&stream_key(&doc)), Some(doc.clone()));
        assert_eq!(doc_of(&presence_channel(&doc)), Some(doc));
        assert_eq!(doc_of(CONTROL_CHANNEL), None);
    }
}
