//! Draining the journal: journaled entries move into the log (`update_runs`), in drain cycles
//! cut into slices between group commits, or all at once (open, close, tools).

use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt as _};
use lattice_engine::DocId;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Row as _, Sqlite};

use super::log::drop_runs_through;
use super::writer_state::{HEAD_CACHE_CAPACITY, JOURNAL_MAX_BYTES, Journaled};
use super::{BEGIN_DERIVED, SqliteBackend, begin_versioned};
use crate::store::DatabaseError;
use crate::store::backend::JournalDrain;
use crate::store::compress::Packer;
use crate::store::error::DrainError;
use crate::store::journal::{self, JournalEntry};
use crate::store::runs::{self, RUN_MAX_BYTES, RUN_MAX_ENTRIES, RunEntry};
use crate::store::sql::{
    DOCS_INSERT_PER_ROW, DOCS_INSERT_PREFIX, DRAIN_HEADS_SUFFIX, chunks, heads_sql, to_i64, to_u64,
    values_sql,
};

/// How long the group committer waits for more work before it drains a non-empty journal.
const JOURNAL_IDLE_DRAIN: Duration = Duration::from_millis(50);

impl JournalDrain for SqliteBackend {
    /// `None` with nothing journaled, zero during a drain cycle, else until the oldest entry
    /// is due or the committer has idled for [`JOURNAL_IDLE_DRAIN`].
    fn idle_wait(&self) -> Option<Duration> {
        let st = self.state();
        if !st.journal.cycle.is_empty() {
            return Some(Duration::ZERO);
        }
        let age = st.journal.oldest()?.elapsed();
        Some(JOURNAL_IDLE_DRAIN.min(self.journal_max_age.saturating_sub(age)))
    }

    /// A drain cycle is due when the journal is full or old, or the committer is `idle`.
    async fn step(&self, idle: bool) {
        {
            let mut st = self.state();
            let j = &mut st.journal;
            if j.cycle.is_empty() {
                let due = j.entries >= self.journal_max_entries
                    || j.bytes >= JOURNAL_MAX_BYTES
                    || j.oldest()
                        .is_some_and(|t| t.elapsed() >= self.journal_max_age)
                    || (idle && j.entries > 0);
                if !due {
                    return;
                }
                // Every document journaled now, in no particular order: a `journal` row is
                // deleted once all of its documents are drained, so by the end of the cycle
                // every row older than its start is gone.
                j.cycle = j.docs.keys().cloned().collect();
            }
        }
        let result = async {
            let mut conn = self.writer_connection().await?;
            self.drain_slice_locked(&mut conn).await
        }
        .await;
        if let Err(e) = result {
            // The cycle ends here: the next one starts only when a trigger fires again, so
            // a broken disk gets a retry per trigger, not a hot loop.
            self.state().journal.cycle.clear();
            tracing::error!(error = %e, "draining the journal failed; its entries stay journaled");
        }
    }

    async fn drain_all(&self) -> Result<(), DrainError> {
        let mut conn = self.writer_connection().await?;
        self.drain_locked(&mut conn).await
    }
}

impl SqliteBackend {
    /// [`JournalDrain::drain_all`] on the held writer connection, in one transaction. The whole
    /// `journal` table is read (not the in-memory copy), so it also recovers rows this process
    /// does not know about: after a crash, or written by another process. Entries a drain
    /// slice already moved (at or below their document's `head_seq`) are skipped.
    pub(super) async fn drain_locked(&self, conn: &mut SqliteConnection) -> Result<(), DrainError> {
        let started = Instant::now();
        let result = async {
            let (mut tx, version) = begin_versioned(conn, BEGIN_DERIVED, OP).await?;
            let rows: Vec<(i64, i64, Vec<u8>)> =
                sqlx::query_as("SELECT id, committed_at_ms, payload FROM journal ORDER BY id")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(DatabaseError::during(OP))?;
            let mut drained = 0;
            if let Some(last) = rows.last().map(|r| r.0) {
                let mut entries: Vec<(JournalEntry<'_>, i64)> = Vec::new();
                for (id, at, payload) in &rows {
                    let decoded = journal::decode(payload)
                        .map_err(|reason| DrainError::CorruptJournal { row: *id, reason })?;
                    entries.extend(decoded.into_iter().map(|e| (e, *at)));
                }
                let drained_heads = drained_heads(&mut tx, &entries).await?;
                entries.retain(|(e, _)| drained_heads.get(e.doc).is_none_or(|head| e.seq > *head));
                drained = entries.len();
                entries.sort_unstable_by(|a, b| (a.0.doc, a.0.seq).cmp(&(b.0.doc, b.0.seq)));
                write_drained(&mut tx, &entries).await?;
                sqlx::query("DELETE FROM journal WHERE id <= ?")
                    .bind(last)
                    .execute(&mut *tx)
                    .await
                    .map_err(DatabaseError::during(OP))?;
            }
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok::<_, DrainError>((version, drained))
        }
        .await;
        let mut st = self.state();
        match result {
            Ok((version, drained)) => {
                // Dropped after the lock is released: readers need not wait for the frees.
                let old = std::mem::take(&mut st.journal);
                if st.data_version != Some(version) || st.docs.len() > HEAD_CACHE_CAPACITY {
                    st.docs.clear();
                    st.data_version = Some(version);
                }
                drop(st);
                drop(old);
                if drained > 0 {
                    tracing::debug!(
                        entries = drained,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "journal drained"
                    );
                }
                Ok(())
            }
            Err(e) => {
                // Nothing was drained (or, if the COMMIT's outcome is unknown, perhaps it
                // was): keep the in-memory copy and reload from the table next time.
                st.data_version = None;
                Err(e)
            }
        }
    }

    /// One slice of the drain cycle, on the held writer connection, in one transaction: the
    /// entries of a few documents (about [`StoreConfig::journal_slice_entries`]), from the
    /// in-memory copy, and the `journal` rows that leaves empty. With the cache not valid, or
    /// if another process wrote since (it may have drained these very entries), a full drain.
    async fn drain_slice_locked(&self, conn: &mut SqliteConnection) -> Result<(), DrainError> {
        let (mut tx, version) = begin_versioned(conn, BEGIN_DERIVED, OP).await?;
        let taken = {
            let mut st = self.state();
            (st.data_version == Some(version)).then(|| {
                let slice = st.journal.slice(self.journal_slice_entries);
                let emptied = st.journal.rows_emptied_by(&slice);
                (slice, emptied)
            })
        };
        let Some((slice, emptied)) = taken else {
            tx.rollback().await.map_err(DatabaseError::during(OP))?;
            return self.drain_locked(conn).await;
        };
        if slice.is_empty() {
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            return Ok(());
        }
        let result = async {
            // Each document's entries are in order already: sorting the documents sorts all.
            let mut order: Vec<&(DocId, Vec<Journaled>)> = slice.iter().collect();
            order.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let entries: Vec<(JournalEntry<'_>, i64)> = order
                .iter()
                .flat_map(|(doc, list)| {
                    list.iter().map(move |j| {
                        let e = &j.entry;
                        (
                            JournalEntry {
                                doc: doc.as_str(),
                                seq: e.seq,
                                hlc: e.hlc,
                                replica: e.replica,
                                author: e.author.as_deref(),
                                delta: &e.delta_bytes,
                            },
                            to_i64(e.committed_at_ms),
                        )
                    })
                })
                .collect();
            write_drained(&mut tx, &entries).await?;
            let mut at = 0;
            for n in chunks(emptied.len()) {
                let mut sql = String::from("DELETE FROM journal WHERE id IN (?");
                sql.push_str(&", ?".repeat(n - 1));
                sql.push(')');
                let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(sql));
                for id in &emptied[at..at + n] {
                    q = q.bind(*id);
                }
                at += n;
                q.execute(&mut *tx)
                    .await
                    .map_err(DatabaseError::during(OP))?;
            }
            tx.commit().await.map_err(DatabaseError::during("commit"))
        }
        .await;
        let mut st = self.state();
        match result {
            Ok(()) => {
                st.journal.remove(&slice);
                drop(st);
                drop(slice);
                Ok(())
            }
            Err(e) => {
                // The cycle lost this slice's documents; the full drain that an invalid cache
                // forces picks them up from the table.
                st.data_version = None;
                Err(e.into())
            }
        }
    }
}

/// `documents.head_seq` (what drains have moved so far) of every document in `entries` that
/// has a row.
async fn drained_heads<'e>(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    entries: &[(JournalEntry<'e>, i64)],
) -> Result<HashMap<&'e str, u64>, DatabaseError> {
    let mut docs: Vec<&'e str> = entries.iter().map(|(e, _)| e.doc).collect();
    docs.sort_unstable();
    docs.dedup();
    let mut heads = HashMap::with_capacity(docs.len());
    let mut at = 0;
    for n in chunks(docs.len()) {
        let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(heads_sql(n)));
        for doc in &docs[at..at + n] {
            q = q.bind(*doc);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?
        {
            let id: String = row.try_get(0).map_err(DatabaseError::during(OP))?;
            let head: i64 = row.try_get(1).map_err(DatabaseError::during(OP))?;
            if let Ok(i) = docs[at..at + n].binary_search(&id.as_str()) {
                heads.insert(docs[at + i], to_u64(head));
            }
        }
        at += n;
    }
    Ok(heads)
}

/// The drain's writes: inserts the entries (sorted by `(doc_id, seq)`) into `update_runs`, one
/// row per run of a document's consecutive entries, compressed (see [`crate::store::runs`]),
/// adds them to their `documents` rows, and drops again the entries at or below a retention
/// cut that a checkpoint set while they were journaled.
async fn write_drained(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    entries: &[(JournalEntry<'_>, i64)],
) -> Result<(), DatabaseError> {
    let (mut log_runs, drained) = cut_into_runs(entries);
    let mut packer = Packer::new();
    for run in &mut log_runs {
        run.blob = runs::seal(&mut packer, std::mem::take(&mut run.blob));
    }
    insert_runs(tx, &log_runs).await?;
    add_to_documents(tx, &drained).await
}

/// The store operation named in database errors.
const OP: &str = "drain_journal";

/// One `update_runs` row to write.
struct LogRun<'a> {
    doc: &'a str,
    first: u64,
    last: u64,
    bytes: usize,
    blob: Vec<u8>,
}

/// One document's drained entries: first and last seq, bytes, first and last commit time.
struct Drained<'a> {
    doc: &'a str,
    first: u64,
    last: u64,
    bytes: u64,
    created: i64,
    updated: i64,
}

/// One pass over the sorted entries: each document's entries, cut into runs of bounded size,
/// and what each document gains.
fn cut_into_runs<'a>(entries: &[(JournalEntry<'a>, i64)]) -> (Vec<LogRun<'a>>, Vec<Drained<'a>>) {
    let mut log_runs: Vec<LogRun<'_>> = Vec::new();
    let mut drained: Vec<Drained<'_>> = Vec::new();
    for (e, committed) in entries {
        let len = e.delta.len();
        match drained.last_mut() {
            Some(d) if d.doc == e.doc => {
                d.last = e.seq;
                d.bytes += len as u64;
                d.created = d.created.min(*committed);
                d.updated = d.updated.max(*committed);
            }
            _ => drained.push(Drained {
                doc: e.doc,
                first: e.seq,
                last: e.seq,
                bytes: len as u64,
                created: *committed,
                updated: *committed,
            }),
        }
        let extends = log_runs.last().is_some_and(|r| {
            r.doc == e.doc
                && e.seq == r.last + 1
                && ((r.last - r.first + 1) as usize) < RUN_MAX_ENTRIES
                && r.bytes + len <= RUN_MAX_BYTES
        });
        let entry = RunEntry {
            seq: e.seq,
            hlc: e.hlc,
            replica: e.replica,
            committed_at_ms: to_u64(*committed),
            author: e.author,
            delta: e.delta,
        };
        match log_runs.last_mut() {
            Some(r) if extends => {
                r.last = e.seq;
                r.bytes += len;
                runs::push(&mut r.blob, &entry);
            }
            _ => {
                let mut blob = runs::begin(RUN_START_CAPACITY.max(len + 64));
                runs::push(&mut blob, &entry);
                log_runs.push(LogRun {
                    doc: e.doc,
                    first: e.seq,
                    last: e.seq,
                    bytes: len,
                    blob,
                });
            }
        }
    }

    (log_runs, drained)
}

/// Inserts the runs into `update_runs`, many rows per statement.
async fn insert_runs(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    log_runs: &[LogRun<'_>],
) -> Result<(), DatabaseError> {
    let mut at = 0;
    for n in chunks(log_runs.len()) {
        let sql = values_sql(RUNS_INSERT_PREFIX, 4, n, "", false);
        let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(sql));
        for r in &log_runs[at..at + n] {
            q = q
                .bind(r.doc)
                .bind(to_i64(r.first))
                .bind(to_i64(r.last))
                .bind(r.blob.as_slice());
        }
        at += n;
        q.execute(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?;
    }

    Ok(())
}

/// Adds each document's drained entries to its `documents` row (creating it if needed), and
/// drops again the entries at or below the retention cut the row returns.
async fn add_to_documents(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    drained: &[Drained<'_>],
) -> Result<(), DatabaseError> {
    let mut at = 0;
    for n in chunks(drained.len()) {
        let chunk = &drained[at..at + n];
        at += n;
        let sql = values_sql(
            DOCS_INSERT_PREFIX,
            DOCS_INSERT_PER_ROW,
            n,
            DRAIN_HEADS_SUFFIX,
            false,
        );
        let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.doc)
                .bind(r.created)
                .bind(r.updated)
                .bind(to_i64(r.last))
                .bind(to_i64(r.bytes));
        }
        let cuts: Vec<(String, i64)> = q
            .fetch_all(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DatabaseError::during(OP))?;
        for (doc, cut) in cuts {
            let first = chunk
                .iter()
                .find(|r| r.doc == doc)
                .map_or(u64::MAX, |r| r.first);
            if to_u64(cut) >= first {
                drop_runs_through(tx, &doc, to_u64(cut)).await?;
            }
        }
    }
    Ok(())
}

/// First bytes reserved for a run's blob (it grows as entries are pushed).
const RUN_START_CAPACITY: usize = 256;

const RUNS_INSERT_PREFIX: &str = "INSERT INTO update_runs (doc_id, first_seq, last_seq, entries)";
