//! The feed of committed heads: after each group commit, the documents it changed and their new
//! heads, for a consumer in the same process (the webhook former, `webhooks/`). It is a hint,
//! never the record: the consumer reads the log itself, and rescans the database after a
//! restart or when the feed overflowed, so nothing here needs to be durable.
//!
//! **Invariant:** the group committer never waits here. Recording is one uncontended lock per
//! commit batch (and nothing at all while no consumer subscribed); the pending set is bounded
//! by [`MAX_PENDING_DOCS`], past which it records only that it overflowed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use lattice_engine::DocId;
use tokio::sync::Notify;

use super::backend::DocCounters;

/// Documents the feed holds before it stops recording them one by one and only marks that the
/// consumer must rescan.
pub const MAX_PENDING_DOCS: usize = 65_536;

/// What the feed gathered since the consumer last took it.
#[derive(Debug, Default)]
pub struct Committed {
    /// Each changed document and its newest committed head.
    pub heads: HashMap<DocId, u64>,
    /// More documents changed than [`MAX_PENDING_DOCS`]: the consumer must rescan every
    /// document.
    pub overflowed: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct CommitFeed {
    subscribed: AtomicBool,
    pending: Mutex<Committed>,
    notify: Notify,
}

impl CommitFeed {
    /// Starts recording (the feed records nothing until someone takes from it).
    pub fn subscribe(&self) {
        self.subscribed.store(true, Ordering::Release);
    }

    /// Called by the group committer after a commit.
    pub(crate) fn committed(&self, counters: &[DocCounters]) {
        if counters.is_empty() || !self.subscribed.load(Ordering::Acquire) {
            return;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for c in counters {
                if let Some(head) = pending.heads.get_mut(&c.doc) {
                    *head = (*head).max(c.head_seq);
                } else if pending.heads.len() < MAX_PENDING_DOCS {
                    pending.heads.insert(c.doc.clone(), c.head_seq);
                } else {
                    pending.overflowed = true;
                }
            }
        }
        self.notify.notify_one();
    }

    /// Everything recorded since the last call.
    pub fn take(&self) -> Committed {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves once something was recorded after the last [`CommitFeed::take`] (or right
    /// away if something was recorded and not yet waited for).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}
