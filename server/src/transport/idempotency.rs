//! The answers of HTTP writes by `Idempotency-Key`, so that a retried `POST` gets the first
//! answer instead of applying again. Bounded in keys and time; a key is remembered only once
//! its write succeeded (a failed write may be retried with the same key), and a second request
//! with the key while the first runs waits for the first's answer.
//!
//! Kept in memory: after a restart a retried write is applied again, which is harmless for the
//! document (deltas are idempotent: Yjs ids, absolute counter counts, stamped registers) and
//! costs one more log entry.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// What a write answered: its log seq, whether it changed the document, and a digest of the
/// request, to refuse the key's reuse for another body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteAnswer {
    pub seq: u64,
    pub changed: bool,
    pub digest: u64,
}

/// One key's answer, filled once.
pub(crate) type AnswerCell = Arc<OnceCell<WriteAnswer>>;

/// The remembered keys (see the module docs).
#[derive(Debug)]
pub(crate) struct Idempotency {
    inner: Mutex<Keys>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Keys {
    cells: HashMap<String, (AnswerCell, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl Idempotency {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Idempotency {
        Idempotency {
            inner: Mutex::default(),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The cell of `key` (scoped by the caller to its principal and document), new or
    /// remembered. Forgets expired keys and, past the capacity, the oldest.
    pub(crate) fn cell(&self, key: String) -> AnswerCell {
        let now = Instant::now();
        let mut keys = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((old, at)) = keys.order.front().cloned() {
            if now.duration_since(at) < self.ttl && keys.order.len() < self.capacity {
                break;
            }
            keys.order.pop_front();
            // Only if it is still that entry (a key re-added later has a newer time).
            if keys.cells.get(&old).is_some_and(|(_, t)| *t == at) {
                keys.cells.remove(&old);
            }
        }
        if let Some((cell, _)) = keys.cells.get(&key) {
            return cell.clone();
        }
        let cell = AnswerCell::default();
        keys.cells.insert(key.clone(), (cell.clone(), now));
        keys.order.push_back((key, now));
        cell
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_key_is_answered_once_and_the_oldest_keys_are_forgotten() {
        let keys = Idempotency::new(2, Duration::from_secs(60));
        let answer = WriteAnswer {
            seq: 7,
            changed: true,
            digest: 1,
        };
        let a = keys.cell("a".into());
        a.get_or_init(|| async { answer }).await;
        assert_eq!(keys.cell("a".into()).get(), Some(&answer));
        // A failed first attempt leaves the cell empty for a retry.
        let b = keys.cell("b".into());
        let failed: Result<&WriteAnswer, ()> = b.get_or_try_init(|| async { Err(()) }).await;
        assert!(failed.is_err());
        assert!(keys.cell("b".into()).get().is_none());
        keys.cell("c".into());
        assert!(
            keys.cell("a".into()).get().is_none(),
            "the oldest key was forgotten"
        );
    }
}
