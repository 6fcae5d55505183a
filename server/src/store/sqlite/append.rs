//! The group-commit transaction on SQLite: sequence numbers from the writer's cache, one
//! `journal` row for every entry, then the cache and the in-memory journal brought forward.

use std::sync::Arc;
use std::time::Instant;

use foldhash::{HashMap, HashMapExt as _};
use lattice_engine::DocId;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row as _, Sqlite};

use super::writer_state::{HEAD_CACHE_CAPACITY, Head, JOURNAL_MAX_BYTES, Journaled};
use super::{SqliteBackend, begin_versioned};
use crate::store::backend::BatchOutcome;
use crate::store::journal::{self, JournalEntry};
use crate::store::sql::{
    DOCS_INSERT_PER_ROW, DOCS_INSERT_PREFIX, chunks, heads_sql, to_i64, to_u64, values_sql,
};
use crate::store::{AppendError, DatabaseError, DocCounters, LogEntry, NewEntry};

/// A document touched by one group commit.
#[derive(Debug, Default)]
struct Slot {
    /// The counters before this transaction; meaningful once `known`.
    head: Head,
    known: bool,
    /// Whether its `documents` row exists (otherwise this transaction creates it).
    exists: bool,
    /// Entries and delta bytes this transaction appends.
    count: u64,
    bytes: u64,
}

impl SqliteBackend {
    /// One group-commit transaction. Sequence numbers come from the cached heads, so the
    /// transaction reads nothing but `data_version` (and the rows of documents not cached yet)
    /// and writes one journal row, plus a `documents` row per new document.
    pub(super) async fn append_group(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<BatchOutcome, AppendError> {
        let mut conn = self.writer_connection().await?;
        // A stale cache or a full journal: drain, then try again (once is enough: the drain
        // leaves the cache valid and the journal empty).
        for _ in 0..2 {
            match self.append_locked(&mut conn, requests, now_ms).await {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => self.drain_locked(&mut conn).await?,
                Err(e) => {
                    // The transaction may or may not have committed: trust nothing cached.
                    self.state().data_version = None;
                    return Err(e);
                }
            }
        }
        Err(AppendError::Inconsistent {
            doc: requests.iter().flatten().next().map(|e| e.doc.clone()),
            reason: "the writer's cache stayed stale after a drain",
        })
    }

    /// [`Self::append_group`] on the held writer connection; `Ok(None)` when the journal must
    /// be drained first (the transaction was rolled back). The phases, in order: begin and
    /// check the cache, gather the touched documents' heads, assign sequence numbers, write the
    /// journal, commit, publish to the cache.
    async fn append_locked(
        &self,
        conn: &mut SqliteConnection,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<Option<BatchOutcome>, AppendError> {
        let (mut tx, version) = begin_versioned(conn, self.begin_durable, OP).await?;
        let total: usize = requests.iter().map(Vec::len).sum();
        if self.must_drain_first(version, total) {
            tx.rollback().await.map_err(DatabaseError::during(OP))?;
            return Ok(None);
        }
        let mut docs = self.cached_heads(requests, total);
        read_uncached_heads(&mut tx, &mut docs).await?;
        let assigned = assign_seqs(requests, &mut docs);
        let row = write_journal(&mut tx, &docs, &assigned, now_ms).await?;
        tx.commit().await.map_err(DatabaseError::during("commit"))?;
        let counters = self.publish(row, &assigned, docs, now_ms);
        Ok(Some((assigned.results, counters)))
    }

    /// Whether the cache cannot be trusted (another process wrote, or a transaction failed),
    /// or the journal is too full to take `total` more entries. Drain cycles normally keep the
    /// journal below its limits; at twice them (the disk cannot keep up, or drains fail),
    /// appends wait for a full drain: the memory it takes stays bounded.
    fn must_drain_first(&self, version: i64, total: usize) -> bool {
        let st = self.state();
        st.data_version != Some(version)
            || st.docs.len() > HEAD_CACHE_CAPACITY
            || (st.journal.entries > 0
                && (st.journal.entries + total > 2 * self.journal_max_entries.max(1)
                    || st.journal.bytes >= 2 * JOURNAL_MAX_BYTES))
    }

    /// A slot for every document the requests touch, with its cached head where there is one.
    fn cached_heads<'r>(&self, requests: &'r [Vec<NewEntry>], total: usize) -> Slots<'r> {
        let mut docs: Slots<'r> = HashMap::with_capacity(total.min(4_096));
        let st = self.state();
        for e in requests.iter().flatten() {
            docs.entry(&e.doc)
                .or_insert_with(|| match st.docs.get(&e.doc) {
                    Some(head) => Slot {
                        head: *head,
                        known: true,
                        exists: true,
                        ..Slot::default()
                    },
                    None => Slot::default(),
                });
        }
        docs
    }

    /// Committed, and the writer connection is still ours: brings the in-memory journal and
    /// the cached heads forward, and returns the new counters of every document written.
    fn publish(
        &self,
        row: i64,
        assigned: &Assigned<'_>,
        docs: Slots<'_>,
        now_ms: u64,
    ) -> Vec<DocCounters> {
        let mut st = self.state();
        let rows = &assigned.rows;
        for (e, seq) in rows {
            let entry = Arc::new(LogEntry {
                seq: *seq,
                hlc: e.hlc,
                replica: e.replica.get(),
                author: e.author.clone(),
                byte_size: e.delta_bytes().len() as u64,
                committed_at_ms: now_ms,
                delta_bytes: e.delta_bytes().to_vec(),
            });
            let journaled = Journaled { row, entry };
            match st.journal.docs.get_mut(&e.doc) {
                Some(list) => list.push(journaled),
                None => {
                    st.journal.docs.insert(e.doc.clone(), vec![journaled]);
                }
            }
        }
        if !rows.is_empty() {
            st.journal.entries += rows.len();
            st.journal.bytes += assigned.bytes;
            st.journal.rows.insert(row, (rows.len(), Instant::now()));
        }
        let mut counters = Vec::new();
        for (doc, s) in docs {
            let head = Head {
                head_seq: s.head.head_seq + s.count,
                byte_count: s.head.byte_count + s.bytes,
                ..s.head
            };
            match st.docs.get_mut(doc) {
                Some(cached) => *cached = head,
                None => {
                    st.docs.insert(doc.clone(), head);
                }
            }
            if s.count > 0 {
                counters.push(DocCounters {
                    doc: doc.clone(),
                    head_seq: head.head_seq,
                    byte_count: head.byte_count,
                    checkpoint_seq: head.checkpoint_seq,
                    checkpoint_byte_count: head.checkpoint_byte_count,
                });
            }
        }
        counters
    }
}

/// The store operation named in database errors.
const OP: &str = "append";

/// The documents one group commit touches.
type Slots<'r> = HashMap<&'r DocId, Slot>;

/// Reads the heads of the documents not cached. Those have nothing journaled, so their rows
/// are current; those without a row are new (all zero).
async fn read_uncached_heads(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    docs: &mut Slots<'_>,
) -> Result<(), DatabaseError> {
    let missing: Vec<&DocId> = docs
        .iter()
        .filter(|(_, s)| !s.known)
        .map(|(d, _)| *d)
        .collect();
    let mut at = 0;
    for n in chunks(missing.len()) {
        let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(heads_sql(n)));
        for doc in &missing[at..at + n] {
            q = q.bind(doc.as_str());
        }
        at += n;
        for row in q
            .fetch_all(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?
        {
            let id: String = row.try_get(0).map_err(DatabaseError::during(OP))?;
            let doc = DocId::new(id)
                .map_err(|e| DatabaseError::during(OP)(sqlx::Error::Decode(Box::new(e))))?;
            let get = |i: usize| -> Result<u64, DatabaseError> {
                row.try_get::<i64, _>(i)
                    .map(to_u64)
                    .map_err(DatabaseError::during(OP))
            };
            if let Some(slot) = docs.get_mut(&doc) {
                slot.head = Head {
                    head_seq: get(1)?,
                    byte_count: get(2)?,
                    checkpoint_seq: get(3)?,
                    checkpoint_byte_count: get(4)?,
                    deleted: row
                        .try_get::<bool, _>(5)
                        .map_err(DatabaseError::during(OP))?,
                };
                slot.exists = true;
            }
        }
    }
    for doc in missing {
        if let Some(slot) = docs.get_mut(doc) {
            slot.known = true;
        }
    }
    Ok(())
}

/// The sequence numbers one group commit assigns.
struct Assigned<'r> {
    /// Per request, its sequence numbers or why it was refused.
    results: Vec<Result<Vec<u64>, AppendError>>,
    /// Every entry written, with its sequence number, in request order.
    rows: Vec<(&'r NewEntry, u64)>,
    /// Their delta bytes.
    bytes: usize,
}

/// A document's entries follow its head, in request order. A request touching a soft-deleted
/// document is refused whole.
fn assign_seqs<'r>(requests: &'r [Vec<NewEntry>], docs: &mut Slots<'r>) -> Assigned<'r> {
    let total: usize = requests.iter().map(Vec::len).sum();
    let mut results = Vec::with_capacity(requests.len());
    let mut rows: Vec<(&NewEntry, u64)> = Vec::with_capacity(total);
    let mut bytes = 0usize;
    for r in requests {
        let deleted = r
            .iter()
            .find(|e| docs.get(&e.doc).is_some_and(|s| s.head.deleted));
        if let Some(e) = deleted {
            results.push(Err(AppendError::DocumentDeleted { doc: e.doc.clone() }));
            continue;
        }
        let mut seqs = Vec::with_capacity(r.len());
        for e in r {
            let Some(slot) = docs.get_mut(&e.doc) else {
                continue;
            };
            slot.count += 1;
            slot.bytes += e.delta_bytes().len() as u64;
            bytes += e.delta_bytes().len();
            let seq = slot.head.head_seq + slot.count;
            seqs.push(seq);
            rows.push((e, seq));
        }
        results.push(Ok(seqs));
    }
    Assigned {
        results,
        rows,
        bytes,
    }
}

/// The transaction's writes: a `documents` row (counters 0) for each new document, then one
/// `journal` row holding every entry. Returns the journal row's id (0 when nothing is written).
async fn write_journal(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    docs: &Slots<'_>,
    assigned: &Assigned<'_>,
    now_ms: u64,
) -> Result<i64, DatabaseError> {
    let rows = &assigned.rows;
    if rows.is_empty() {
        return Ok(0);
    }
    let now = to_i64(now_ms);
    let new_docs: Vec<&DocId> = docs
        .iter()
        .filter(|(_, s)| s.count > 0 && !s.exists)
        .map(|(d, _)| *d)
        .collect();
    let mut at = 0;
    for n in chunks(new_docs.len()) {
        let sql = values_sql(DOCS_INSERT_PREFIX, DOCS_INSERT_PER_ROW, n, "", false);
        let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(sql));
        for doc in &new_docs[at..at + n] {
            q = q
                .bind(doc.as_str())
                .bind(now)
                .bind(now)
                .bind(0i64)
                .bind(0i64);
        }
        at += n;
        q.execute(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?;
    }
    let mut payload = journal::begin(assigned.bytes + rows.len() * 64);
    for (e, seq) in rows {
        journal::push(
            &mut payload,
            &JournalEntry {
                doc: e.doc.as_str(),
                seq: *seq,
                hlc: e.hlc,
                replica: e.replica.get(),
                author: e.author.as_deref(),
                delta: e.delta_bytes(),
            },
        );
    }
    let row =
        sqlx::query("INSERT INTO journal (committed_at_ms, entry_count, payload) VALUES (?, ?, ?)")
            .bind(now)
            .bind(to_i64(rows.len() as u64))
            .bind(payload)
            .execute(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?
            .last_insert_rowid();
    Ok(row)
}
