//! A connection as rooms see it ([`PeerHandle`]): where its frames go, how to close it, who it
//! is, how to write to it ([`Encoder`], one per protocol) and its budget of full-state syncs
//! ([`SyncBudget`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lattice_engine::protocol::ServerMsg;
use lattice_engine::sync::PeerId;
use lattice_engine::{Delta, DocId, ReplicaId};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use crate::config::Limits;
use crate::rooms::RoomEnv;
use crate::transport::close::CloseCode;
use crate::transport::outbox::Outbox;
use crate::transport::writer::{Closer, Outbound};

/// How a protocol writes what a room sends: each protocol has one (`protocols/`), and the room
/// encodes each message once per encoder and knows no wire format.
pub(crate) trait Encoder: Send + Sync + std::fmt::Debug {
    /// What `msg` becomes on this protocol's wire. `awareness` is, for a `presence` message,
    /// the Yjs awareness identity the room keeps for that peer.
    fn encode(&self, msg: &ServerMsg, awareness: Option<AwarenessId>) -> Encoded;

    /// A committed log entry (`seq`, its delta) for readers that follow the log by seq; `None`
    /// for protocols that get deltas as the room relays them.
    fn encode_entry(&self, _doc: &DocId, _seq: u64, _delta: &Delta) -> Option<Bytes> {
        None
    }
}

/// What one message becomes for one protocol.
#[derive(Clone, Debug, Default)]
pub(crate) struct Encoded {
    pub frames: Vec<Bytes>,
    /// Close the peer after the frames (it sent something the room refused).
    pub close: Option<CloseCode>,
}

impl Encoded {
    /// Just these frames.
    pub(crate) fn frames(frames: Vec<Bytes>) -> Encoded {
        Encoded {
            frames,
            close: None,
        }
    }
}

/// A peer's presence as Yjs awareness sees it: a client id and a clock that only grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AwarenessId {
    pub client: u64,
    pub clock: u32,
}

/// Which wire protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// Lattice's MessagePack protocol (`/v1/sync`).
    Native,
    /// The y-websocket protocol of stock Yjs clients (`/yjs/{doc}`).
    Yjs,
    /// Hocuspocus's protocol (`/hocuspocus`): documents multiplexed on one socket.
    Hocuspocus,
    /// An HTTP reader (SSE, long polling): it gets the log's committed entries with their
    /// seqs, and presence, as JSON events (`transport::events`); nothing else the room sends.
    Feed,
}

/// A connection as rooms see it: where to put its frames, and how to close it.
#[derive(Clone, Debug)]
pub(crate) struct PeerHandle {
    pub id: PeerId,
    pub replica: Option<ReplicaId>,
    pub kind: PeerKind,
    /// How the room writes to it.
    pub encoder: &'static dyn Encoder,
    /// The token's subject (`None` without authentication): the principal it speaks for.
    pub author: Option<Arc<str>>,
    pub outbox: Outbox,
    pub closer: Arc<Closer>,
    pub budget: Arc<SyncBudget>,
}

/// One connection's budget of full-state computations: a token bucket counted in bytes of
/// `sync` answers, which may go into debt (the size of an answer is known only once it is
/// computed), and at most one computation in flight. The connection waits
/// ([`SyncBudget::begin`]) before it asks a room for a sync; the room reports what the
/// answer cost ([`SyncTicket::spent`]).
#[derive(Debug)]
pub(crate) struct SyncBudget {
    state: Mutex<BudgetState>,
    notify: Notify,
    bytes_per_second: f64,
    burst: f64,
}

#[derive(Debug)]
struct BudgetState {
    balance: f64,
    refilled_at: Instant,
    in_flight: bool,
}

impl SyncBudget {
    pub(crate) fn new(bytes_per_second: u64, burst: u64) -> Arc<SyncBudget> {
        Arc::new(SyncBudget {
            state: Mutex::new(BudgetState {
                balance: burst as f64,
                refilled_at: Instant::now(),
                in_flight: false,
            }),
            notify: Notify::new(),
            bytes_per_second: (bytes_per_second.max(1)) as f64,
            burst: burst as f64,
        })
    }

    /// Waits until this connection may start a full-state computation, and takes the slot.
    /// Returns whether it had to wait.
    pub(crate) async fn begin(self: &Arc<Self>) -> (SyncTicket, bool) {
        let mut waited = false;
        loop {
            let notified = self.notify.notified();
            let wait = {
                let Ok(mut s) = self.state.lock() else {
                    // A poisoned budget means a panic elsewhere; do not hold the peer forever.
                    return (self.ticket(), waited);
                };
                let now = Instant::now();
                let elapsed = now.duration_since(s.refilled_at).as_secs_f64();
                s.balance = (s.balance + elapsed * self.bytes_per_second).min(self.burst);
                s.refilled_at = now;
                if !s.in_flight && s.balance >= 0.0 {
                    s.in_flight = true;
                    return (self.ticket(), waited);
                }
                (!s.in_flight).then(|| Duration::from_secs_f64(-s.balance / self.bytes_per_second))
            };
            waited = true;
            match wait {
                Some(debt) => tokio::time::sleep(debt).await,
                None => notified.await,
            }
        }
    }

    fn ticket(self: &Arc<Self>) -> SyncTicket {
        SyncTicket {
            budget: Some(self.clone()),
        }
    }

    fn finish(&self, bytes: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.balance -= bytes as f64;
            s.in_flight = false;
        }
        self.notify.notify_waiters();
    }
}

/// A full-state computation in flight. Dropping it unspent (the room never got to it) frees
/// the slot at no cost.
#[derive(Debug)]
pub(crate) struct SyncTicket {
    budget: Option<Arc<SyncBudget>>,
}

impl SyncTicket {
    /// The answer cost `bytes`.
    pub(crate) fn spent(mut self, bytes: usize) {
        if let Some(budget) = self.budget.take() {
            budget.finish(bytes);
        }
    }
}

impl Drop for SyncTicket {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.finish(0);
        }
    }
}

/// A new connection's peer handle, speaking `kind` for `author`.
pub(crate) fn peer_handle(
    limits: &Limits,
    id: PeerId,
    (kind, encoder): (PeerKind, &'static dyn Encoder),
    author: Option<&str>,
    outbound: &Outbound,
) -> PeerHandle {
    PeerHandle {
        id,
        replica: None,
        kind,
        encoder,
        author: author.map(Arc::from),
        outbox: outbound.outbox.clone(),
        closer: outbound.closer.clone(),
        budget: SyncBudget::new(limits.sync_bytes_per_second, limits.sync_byte_burst),
    }
}

/// Waits until `peer`'s budget allows a full-state sync and takes the slot. `Err` when the
/// wait ends otherwise: the closer fired (its code) or the server shuts down (`None`).
pub(crate) async fn sync_ticket(
    env: &RoomEnv,
    peer: &PeerHandle,
) -> Result<crate::rooms::peer::SyncTicket, Option<CloseCode>> {
    tokio::select! {
        (ticket, waited) = peer.budget.begin() => {
            if waited {
                env.metrics.sync_budget_waits.fetch_add(1, Relaxed);
            }
            Ok(ticket)
        }
        code = peer.closer.closed() => Err(Some(code)),
        _ = env.shutdown.cancelled() => Err(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn debt_makes_the_next_sync_wait_and_one_runs_at_a_time() {
        let budget = SyncBudget::new(1_000, 1_000);
        let (ticket, waited) = budget.begin().await;
        assert!(!waited);
        // A second computation waits for the first one.
        let second = tokio::spawn({
            let budget = budget.clone();
            async move { budget.begin().await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        // The first cost 3,000 bytes: 2,000 in debt, two seconds at 1,000 bytes/s.
        let start = Instant::now();
        ticket.spent(3_000);
        let (_ticket, waited) = second.await.expect("join");
        assert!(waited);
        assert_eq!(start.elapsed().as_secs(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unspent_ticket_frees_the_slot() {
        let budget = SyncBudget::new(1_000, 1_000);
        let (ticket, _) = budget.begin().await;
        drop(ticket);
        let (_ticket, waited) = budget.begin().await;
        assert!(!waited);
    }
}
