//! The writer's cache of each document's counters, and the in-memory copy of the journal
//! (see the invariants in [`super`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use foldhash::HashMap;
use lattice_engine::DocId;

use super::SqliteBackend;
use crate::store::LogEntry;

/// Most documents whose counters the writer caches; past it the cache starts over after the
/// next drain (an entry costs one indexed read to restore).
pub const HEAD_CACHE_CAPACITY: usize = 65_536;
/// Delta bytes the journal may hold before it is drained, whatever the entry count.
pub const JOURNAL_MAX_BYTES: usize = 16 * 1024 * 1024;

/// What the writer knows about a document's row in `documents`, journaled entries included.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Head {
    pub(super) head_seq: u64,
    pub(super) byte_count: u64,
    pub(super) checkpoint_seq: u64,
    pub(super) checkpoint_byte_count: u64,
    pub(super) deleted: bool,
}

/// The writer's cache and the in-memory copy of the journal.
#[derive(Debug, Default)]
pub(super) struct WriterState {
    /// The `data_version` the cache is valid for; `None` = not valid (start, failed
    /// transaction, a pending document's row changed): drain the table and reload first.
    pub(super) data_version: Option<i64>,
    pub(super) docs: HashMap<DocId, Head>,
    pub(super) journal: Journal,
}

/// The journaled entries, in memory: while the cache is valid, exactly what the `journal`
/// table holds and the log does not.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// Per document, ascending.
    pub(super) docs: HashMap<DocId, Vec<Journaled>>,
    /// Per `journal` row: its entries not drained yet, and when it was committed.
    pub(super) rows: BTreeMap<i64, (usize, Instant)>,
    pub(super) entries: usize,
    pub(super) bytes: usize,
    /// Documents the current drain cycle has still to drain, in order; empty = no cycle.
    pub(super) cycle: VecDeque<DocId>,
}

#[derive(Debug, Clone)]
pub(super) struct Journaled {
    /// The `journal` row holding it.
    pub(super) row: i64,
    pub(super) entry: Arc<LogEntry>,
}

/// One slice of a drain cycle: documents and every entry they had journaled.
pub(super) type Slice = Vec<(DocId, Vec<Journaled>)>;

impl Journal {
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.rows.first_key_value().map(|(_, (_, at))| *at)
    }

    /// Takes documents off the cycle until their entries reach `max_entries` (at least one
    /// document), and copies their entries. Nothing is removed until the slice has committed.
    pub(super) fn slice(&mut self, max_entries: usize) -> Slice {
        let mut out = Vec::new();
        let mut n = 0;
        while n < max_entries {
            let Some(doc) = self.cycle.pop_front() else {
                break;
            };
            if let Some(list) = self.docs.get(&doc) {
                n += list.len();
                out.push((doc, list.clone()));
            }
        }
        out
    }

    /// The rows whose every remaining entry is in `slice`: deleted with it.
    pub(super) fn rows_emptied_by(&self, slice: &Slice) -> Vec<i64> {
        let mut taken: BTreeMap<i64, usize> = BTreeMap::new();
        for j in slice.iter().flat_map(|(_, list)| list) {
            *taken.entry(j.row).or_default() += 1;
        }
        taken
            .into_iter()
            .filter(|(row, n)| self.rows.get(row).is_some_and(|(left, _)| left == n))
            .map(|(row, _)| row)
            .collect()
    }

    /// Forgets a committed slice. The writer connection was held from [`Self::slice`] on, so
    /// its documents gained no entries in between.
    pub(super) fn remove(&mut self, slice: &Slice) {
        for (doc, list) in slice {
            self.docs.remove(doc);
            for j in list {
                self.entries -= 1;
                self.bytes -= j.entry.delta_bytes.len();
                if let Some((left, _)) = self.rows.get_mut(&j.row) {
                    *left -= 1;
                    if *left == 0 {
                        self.rows.remove(&j.row);
                    }
                }
            }
        }
    }
}

/// A copy of one document's journaled entries and counters, taken by a reader.
pub(super) struct Pending {
    pub(super) head: Head,
    pub(super) entries: Vec<Arc<LogEntry>>,
}

impl SqliteBackend {
    /// Called by a write transaction that changed `doc`'s `documents` row, with the writer
    /// connection held, before its `COMMIT`. A document with journaled entries must stay
    /// cached, so the whole cache is invalidated instead (the next write drains first).
    pub(super) fn forget_cached_head(&self, doc: &DocId) {
        let mut st = self.state();
        if st.journal.docs.contains_key(doc) {
            st.data_version = None;
        } else {
            st.docs.remove(doc);
        }
    }

    /// Called by the checkpoint writer, with the writer connection held, before its `COMMIT`.
    pub(super) fn cached_checkpoint_written(&self, doc: &DocId, seq: u64, byte_count: u64) {
        if let Some(head) = self.state().docs.get_mut(doc)
            && head.checkpoint_seq < seq
        {
            head.checkpoint_seq = seq;
            head.checkpoint_byte_count = byte_count;
        }
    }
}
