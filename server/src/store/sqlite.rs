//! The SQLite backend: the embedded default, one file, nothing else to install.
//!
//! One writer connection (SQLite has one writer at a time anyway; the group committer and the
//! checkpointer take turns on it) and a small pool of readers, all in WAL mode so that reads
//! never wait for the writer. `synchronous` is [`SqliteSynchronous::Full`] by default: see
//! `docs/storage.md` for what each level promises.
//!
//! # The journal
//! A group commit does not insert its entries into the log one row each: the log is
//! clustered by `(doc_id, seq)`, so a transaction touching a thousand documents would dirty a
//! thousand pages (and write and checksum each of them into the WAL). Instead it writes **one
//! `journal` row** holding every entry of the transaction ([`super::journal`] has the format),
//! plus a `documents` row for each document it creates. The entries are durable (and their
//! sequence numbers final) when that transaction commits. Later, in one large transaction, the
//! writer **drains** the journal: it moves the rows into the log, sorted by document and
//! sequence number, as one `update_runs` row per run of a document's consecutive entries
//! ([`super::runs`] has the format; a row costs about the same to insert whatever it holds, so
//! a drain costs per document, not per entry), adds their counters to `documents` and deletes
//! the journal rows. It drains
//! when the journal holds [`StoreConfig::journal_max_entries`] entries or 16 MiB, when its
//! oldest entry is [`StoreConfig::journal_max_age`] old, when the group committer has been idle
//! for a moment, when the store opens (which is crash recovery) and when it closes.
//!
//! Until then the writer keeps the journaled entries in memory (bounded by the same limits),
//! and reads in this process merge them in: [`SqliteBackend::parts_merged`] and its siblings
//! read the memory first and the database second, and keep every sequence number once, so an
//! entry drained in between is neither lost nor doubled. Another process reading the same file
//! sees an entry once it is drained.
//!
//! # The writer's cache
//! Because every write goes through that one connection, the group committer keeps each
//! document's counters (head sequence number, byte count, checkpoint position, deleted flag)
//! in a [`WriterState`] instead of reading them back in every transaction.
//!
//! **Invariants:**
//! - The cache and the in-memory journal are read and written only while the writer connection
//!   is held (readers take a copy under the mutex), and a write transaction that changes a
//!   `documents` row updates or drops the cached copy before its `COMMIT`.
//! - Every document with journaled entries is in the cache; the cache is only emptied right
//!   after a drain. So a document missing from the cache has its counters in `documents`.
//! - The in-memory journal holds exactly the entries of the `journal` table while the cache is
//!   valid. Writes by another process are caught by `PRAGMA data_version`, read under the write
//!   lock at the start of each group commit; if it moved, or a transaction failed, the cache is
//!   invalid and the next write drains the whole table and starts over from `documents`.

use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt as _};
use lattice_engine::DocId;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Connection as _, Row as _, Sqlite};

use super::journal::{self, JournalEntry};
use super::runs::{self, RUN_MAX_BYTES, RUN_MAX_ENTRIES, RunEntry};
use super::sql::{
    DOCS_INSERT_PER_ROW, DOCS_INSERT_PREFIX, DRAIN_HEADS_SUFFIX, chunks, heads_sql, to_i64, to_u64,
    values_sql,
};
use super::{DocCounters, DocMeta, LogEntry, NewEntry, Parts, StoreConfig, StoreError, TailEntry};

/// Most documents whose counters the writer caches; past it the cache starts over after the
/// next drain (an entry costs one indexed read to restore).
pub const HEAD_CACHE_CAPACITY: usize = 65_536;
/// Delta bytes the journal may hold before it is drained, whatever the entry count.
pub const JOURNAL_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How long the group committer waits for more work before it drains a non-empty journal.
const JOURNAL_IDLE_DRAIN: Duration = Duration::from_millis(50);
/// Page cache of the writer connection, in KiB (`PRAGMA cache_size`). A drain touching a
/// thousand documents dirties about a thousand pages; SQLite's 2 MiB default would re-read them
/// from the OS on every drain.
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// WAL frames after which a commit checkpoints the WAL into the database file (`PRAGMA
/// wal_autocheckpoint`; SQLite's default is 1,000). A checkpoint writes each page once
/// however many frames hold it, so checkpointing less often writes the hot pages fewer times.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// Size the WAL file is truncated back to after a checkpoint resets it (`PRAGMA
/// journal_size_limit`), in bytes.
const WAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
/// Rows a connection's worker thread may buffer for the task reading them (sqlx's default is
/// 50, which turns reading a log tail, for a load or a checkpoint, into a ping-pong between
/// two threads: one context switch per 50 rows).
const ROW_BUFFER: usize = 1_024;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// SQLite's `synchronous` setting, in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    /// fsync the WAL at every commit: a committed transaction survives a process kill and a
    /// power loss or OS crash (given a disk that honours fsync).
    #[default]
    Full,
    /// fsync only at WAL checkpoints: a committed transaction survives a process kill, but the
    /// last transactions before a power loss or OS crash may be rolled back (the database
    /// stays consistent).
    Normal,
}

#[derive(Debug)]
pub(crate) struct SqliteBackend {
    writer: SqlitePool,
    reader: SqlitePool,
    state: Mutex<WriterState>,
    /// `BEGIN` for transactions that must be durable at `COMMIT`: sets the configured
    /// `synchronous` level again (a derived write may have lowered it), then `BEGIN IMMEDIATE`.
    begin_durable: &'static str,
    journal_max_entries: usize,
    journal_slice_entries: usize,
    journal_max_age: Duration,
}

/// `BEGIN` for derived writes (see [`SqliteBackend::begin_write_derived`]).
const BEGIN_DERIVED: &str = "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE";

/// What the writer knows about a document's row in `documents`, journaled entries included.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    head_seq: u64,
    byte_count: u64,
    checkpoint_seq: u64,
    checkpoint_byte_count: u64,
    deleted: bool,
}

/// The writer's cache and the in-memory copy of the journal.
#[derive(Debug, Default)]
struct WriterState {
    /// The `data_version` the cache is valid for; `None` = not valid (start, failed
    /// transaction, a pending document's row changed): drain the table and reload first.
    data_version: Option<i64>,
    docs: HashMap<DocId, Head>,
    journal: Journal,
}

/// The journaled entries, in memory: while the cache is valid, exactly what the `journal`
/// table holds and the log does not.
#[derive(Debug, Default)]
struct Journal {
    /// Per document, ascending.
    docs: HashMap<DocId, Vec<Journaled>>,
    /// Per `journal` row: its entries not drained yet, and when it was committed.
    rows: BTreeMap<i64, (usize, Instant)>,
    entries: usize,
    bytes: usize,
    /// Documents the current drain cycle has still to drain, in order; empty = no cycle.
    cycle: VecDeque<DocId>,
}

#[derive(Debug, Clone)]
struct Journaled {
    /// The `journal` row holding it.
    row: i64,
    entry: Arc<LogEntry>,
}

/// One slice of a drain cycle: documents and every entry they had journaled.
type Slice = Vec<(DocId, Vec<Journaled>)>;

impl Journal {
    fn oldest(&self) -> Option<Instant> {
        self.rows.first_key_value().map(|(_, (_, at))| *at)
    }

    /// Takes documents off the cycle until their entries reach `max_entries` (at least one
    /// document), and copies their entries. Nothing is removed until the slice has committed.
    fn slice(&mut self, max_entries: usize) -> Slice {
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
    fn rows_emptied_by(&self, slice: &Slice) -> Vec<i64> {
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
    fn remove(&mut self, slice: &Slice) {
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
struct Pending {
    head: Head,
    entries: Vec<Arc<LogEntry>>,
}

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

/// The result of one group commit: per request its sequence numbers or why it was refused,
/// and the new counters of every document written.
type BatchOutcome = (Vec<Result<Vec<u64>, StoreError>>, Vec<DocCounters>);

impl SqliteBackend {
    pub(crate) async fn open(url: &str, config: &StoreConfig) -> Result<Self, StoreError> {
        let bad_url = |e: sqlx::Error| StoreError::BadUrl {
            url: super::redacted_url(url),
            reason: e.to_string(),
        };
        let synchronous = match config.sqlite_synchronous {
            SqliteSynchronous::Full => sqlx::sqlite::SqliteSynchronous::Full,
            SqliteSynchronous::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(bad_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(config.busy_timeout)
            .foreign_keys(true)
            .row_buffer_size(ROW_BUFFER);
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
            .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string());
        // An in-memory database exists once per connection, so it is read through the writer.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let mut writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(config.busy_timeout);
        if !in_memory {
            writer = writer.after_release(|conn, _| Box::pin(keep_writer(conn)));
        }
        let writer = writer
            .connect_with(writer_options)
            .await
            .map_err(StoreError::db("open"))?;
        migrate(&writer).await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.pool_size.max(1))
                .acquire_timeout(config.busy_timeout)
                .connect_with(options)
                .await
                .map_err(StoreError::db("open"))?
        };
        let backend = Self {
            writer,
            reader,
            state: Mutex::new(WriterState::default()),
            begin_durable: match config.sqlite_synchronous {
                SqliteSynchronous::Full => "PRAGMA synchronous = FULL; BEGIN IMMEDIATE",
                SqliteSynchronous::Normal => "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE",
            },
            journal_max_entries: config.journal_max_entries,
            journal_slice_entries: config.journal_slice_entries.max(1),
            journal_max_age: config.journal_max_age,
        };
        // Crash recovery: what a killed process journaled goes into the log now.
        backend.drain_journal().await?;
        Ok(backend)
    }

    fn state(&self) -> MutexGuard<'_, WriterState> {
        // The state holds plain counters and entries; a panic elsewhere cannot leave it
        // half-updated in a way that matters more than a stale entry, and a writer that fails
        // mid-way marks it invalid before it returns.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a write transaction that changed `doc`'s `documents` row, with the writer
    /// connection held, before its `COMMIT`. A document with journaled entries must stay
    /// cached, so the whole cache is invalidated instead (the next write drains first).
    fn forget_head(&self, doc: &DocId) {
        let mut st = self.state();
        if st.journal.docs.contains_key(doc) {
            st.data_version = None;
        } else {
            st.docs.remove(doc);
        }
    }

    /// Called by the checkpoint writer, with the writer connection held, before its `COMMIT`.
    fn checkpoint_written(&self, doc: &DocId, seq: u64, byte_count: u64) {
        if let Some(head) = self.state().docs.get_mut(doc)
            && head.checkpoint_seq < seq
        {
            head.checkpoint_seq = seq;
            head.checkpoint_byte_count = byte_count;
        }
    }

    /// How long the group committer may wait for work before it calls
    /// [`Self::journal_step`] idle: `None` with nothing journaled, zero during a drain cycle.
    pub(crate) fn journal_idle_wait(&self) -> Option<Duration> {
        let st = self.state();
        if !st.journal.cycle.is_empty() {
            return Some(Duration::ZERO);
        }
        let age = st.journal.oldest()?.elapsed();
        Some(JOURNAL_IDLE_DRAIN.min(self.journal_max_age.saturating_sub(age)))
    }

    /// Drains a step of the journal, between group commits: starts a drain cycle when one is
    /// due (the journal is full or old, or the committer is `idle`), and drains one slice of
    /// the cycle in progress. A failure is logged; the entries stay journaled.
    pub(crate) async fn journal_step(&self, idle: bool) {
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

    /// Moves every journaled entry into the log now.
    pub(crate) async fn drain_journal(&self) -> Result<(), StoreError> {
        let mut conn = self.writer_connection().await?;
        self.drain_locked(&mut conn).await
    }

    /// The writer connection, for as long as the caller holds it (the pool has one).
    async fn writer_connection(&self) -> Result<sqlx::pool::PoolConnection<Sqlite>, StoreError> {
        self.writer.acquire().await.map_err(StoreError::db("begin"))
    }

    /// [`Self::drain_journal`] on the held writer connection, in one transaction. The whole
    /// `journal` table is read (not the in-memory copy), so it also recovers rows this process
    /// does not know about: after a crash, or written by another process. Entries a drain
    /// slice already moved (at or below their document's `head_seq`) are skipped.
    async fn drain_locked(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        let op = "drain_journal";
        let started = Instant::now();
        let result = async {
            let (mut tx, version) = begin_versioned(conn, BEGIN_DERIVED, op).await?;
            let rows: Vec<(i64, i64, Vec<u8>)> =
                sqlx::query_as("SELECT id, committed_at_ms, payload FROM journal ORDER BY id")
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(StoreError::db(op))?;
            let mut drained = 0;
            if let Some(last) = rows.last().map(|r| r.0) {
                let mut entries: Vec<(JournalEntry<'_>, i64)> = Vec::new();
                for (id, at, payload) in &rows {
                    let decoded = journal::decode(payload)
                        .map_err(|reason| StoreError::CorruptJournal { row: *id, reason })?;
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
                    .map_err(StoreError::db(op))?;
            }
            tx.commit().await.map_err(StoreError::db("commit"))?;
            Ok::<_, StoreError>((version, drained))
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
    async fn drain_slice_locked(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        let op = "drain_journal";
        let (mut tx, version) = begin_versioned(conn, BEGIN_DERIVED, op).await?;
        let taken = {
            let mut st = self.state();
            (st.data_version == Some(version)).then(|| {
                let slice = st.journal.slice(self.journal_slice_entries);
                let emptied = st.journal.rows_emptied_by(&slice);
                (slice, emptied)
            })
        };
        let Some((slice, emptied)) = taken else {
            tx.rollback().await.map_err(StoreError::db(op))?;
            return self.drain_locked(conn).await;
        };
        if slice.is_empty() {
            return tx.commit().await.map_err(StoreError::db("commit"));
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
                q.execute(&mut *tx).await.map_err(StoreError::db(op))?;
            }
            tx.commit().await.map_err(StoreError::db("commit"))
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
                Err(e)
            }
        }
    }

    /// One group-commit transaction. Sequence numbers come from the cached heads, so the
    /// transaction reads nothing but `data_version` (and the rows of documents not cached yet)
    /// and writes one journal row, plus a `documents` row per new document.
    pub(crate) async fn append_batch(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
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
        Err(StoreError::LogInconsistent {
            doc: requests
                .iter()
                .flatten()
                .next()
                .map(|e| e.doc.clone())
                .ok_or(StoreError::Closed)?,
            seq: 0,
            reason: "the writer's cache stayed stale after a drain".to_owned(),
        })
    }

    /// [`Self::append_batch`] on the held writer connection; `Ok(None)` when the journal must
    /// be drained first (the transaction was rolled back).
    async fn append_locked(
        &self,
        conn: &mut SqliteConnection,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<Option<BatchOutcome>, StoreError> {
        let op = "append";
        let now = to_i64(now_ms);
        let (mut tx, version) = begin_versioned(conn, self.begin_durable, op).await?;

        let total: usize = requests.iter().map(Vec::len).sum();
        let mut docs: HashMap<&DocId, Slot> = HashMap::with_capacity(total.min(4_096));
        // Drain cycles normally keep the journal below its limits; at twice them (the disk
        // cannot keep up, or drains fail), appends wait for a full drain: the memory it
        // takes stays bounded.
        let drain_first = {
            let st = self.state();
            st.data_version != Some(version)
                || st.docs.len() > HEAD_CACHE_CAPACITY
                || (st.journal.entries > 0
                    && (st.journal.entries + total > 2 * self.journal_max_entries.max(1)
                        || st.journal.bytes >= 2 * JOURNAL_MAX_BYTES))
        };
        if drain_first {
            tx.rollback().await.map_err(StoreError::db(op))?;
            return Ok(None);
        }
        {
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
        }

        // Documents not cached have nothing journaled: their rows are current. Those without
        // a row are new (all zero).
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
            for row in q.fetch_all(&mut *tx).await.map_err(StoreError::db(op))? {
                let id: String = row.try_get(0).map_err(StoreError::db(op))?;
                let doc = DocId::new(id)
                    .map_err(|e| StoreError::db(op)(sqlx::Error::Decode(Box::new(e))))?;
                let get = |i: usize| -> Result<u64, StoreError> {
                    row.try_get::<i64, _>(i)
                        .map(to_u64)
                        .map_err(StoreError::db(op))
                };
                if let Some(slot) = docs.get_mut(&doc) {
                    slot.head = Head {
                        head_seq: get(1)?,
                        byte_count: get(2)?,
                        checkpoint_seq: get(3)?,
                        checkpoint_byte_count: get(4)?,
                        deleted: row.try_get::<bool, _>(5).map_err(StoreError::db(op))?,
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

        // Sequence numbers: a document's entries follow its head, in request order. A request
        // touching a soft-deleted document is refused whole.
        let mut results = Vec::with_capacity(requests.len());
        let mut rows: Vec<(&NewEntry, u64)> = Vec::with_capacity(total);
        let mut bytes = 0usize;
        for r in requests {
            let deleted = r
                .iter()
                .find(|e| docs.get(&e.doc).is_some_and(|s| s.head.deleted));
            if let Some(e) = deleted {
                results.push(Err(StoreError::DocumentDeleted { doc: e.doc.clone() }));
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

        let mut row = 0;
        if !rows.is_empty() {
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
                q.execute(&mut *tx).await.map_err(StoreError::db(op))?;
            }
            let mut payload = journal::begin(bytes + rows.len() * 64);
            for (e, seq) in &rows {
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
            row = sqlx::query(
                "INSERT INTO journal (committed_at_ms, entry_count, payload) VALUES (?, ?, ?)",
            )
            .bind(now)
            .bind(to_i64(rows.len() as u64))
            .bind(payload)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::db(op))?
            .last_insert_rowid();
        }
        tx.commit().await.map_err(StoreError::db("commit"))?;

        // Committed, and the writer connection is still ours: bring the cache and the
        // in-memory journal forward.
        let mut counters = Vec::new();
        let mut st = self.state();
        for (e, seq) in &rows {
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
            st.journal.bytes += bytes;
            st.journal.rows.insert(row, (rows.len(), Instant::now()));
        }
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
        Ok(Some((results, counters)))
    }

    /// A copy of `doc`'s journaled entries and counters, if it has any.
    fn pending(&self, doc: &DocId) -> Option<Pending> {
        let st = self.state();
        let entries = st
            .journal
            .docs
            .get(doc)?
            .iter()
            .map(|j| j.entry.clone())
            .collect();
        let head = st.docs.get(doc).copied().unwrap_or_default();
        Some(Pending { head, entries })
    }

    /// [`Self::parts`] with the journaled entries merged in.
    pub(crate) async fn parts_merged(
        &self,
        doc: &DocId,
        upto: Option<u64>,
    ) -> Result<Option<Parts>, StoreError> {
        // Memory first, database second (see the module comment).
        let pending = self.pending(doc);
        let floor = pending.as_ref().map_or(0, |p| p.head.head_seq);
        let Some(mut parts) = self.parts(doc, upto, floor).await? else {
            return Ok(None);
        };
        if let Some(p) = pending {
            overlay(&mut parts.meta, &p);
            let from = parts.checkpoint.as_ref().map_or(0, |c| c.0);
            let last = parts.tail.last().map_or(from, |t| t.seq);
            parts.tail.extend(
                p.entries
                    .iter()
                    .filter(|e| e.seq > last && e.seq <= parts.upto)
                    .map(|e| TailEntry {
                        seq: e.seq,
                        author: e.author.clone(),
                        delta: e.delta_bytes.clone(),
                    }),
            );
        }
        Ok(Some(parts))
    }

    /// [`Self::read_log`] with the journaled entries merged in.
    pub(crate) async fn read_log_merged(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let pending = self.pending(doc);
        let mut log = self.read_log(doc, from_seq, limit).await?;
        if let Some(p) = pending {
            let after = log.last().map_or(from_seq.saturating_sub(1), |e| e.seq);
            let room = (limit as usize).saturating_sub(log.len());
            log.extend(
                p.entries
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(room)
                    .map(|e| LogEntry::clone(e)),
            );
        }
        Ok(log)
    }

    /// [`Self::doc_meta`] with the journaled entries counted.
    pub(crate) async fn doc_meta_merged(&self, doc: &DocId) -> Result<Option<DocMeta>, StoreError> {
        let pending = self.pending(doc);
        let mut meta = self.doc_meta(doc).await?;
        if let (Some(m), Some(p)) = (meta.as_mut(), pending) {
            overlay(m, &p);
        }
        Ok(meta)
    }

    /// [`Self::list`] with the journaled entries counted.
    pub(crate) async fn list_merged(
        &self,
        prefix: &str,
        page: &super::Page,
    ) -> Result<Vec<DocMeta>, StoreError> {
        let mut metas = self.list(prefix, page).await?;
        let st = self.state();
        for m in &mut metas {
            if let (Some(list), Some(head)) = (st.journal.docs.get(&m.id), st.docs.get(&m.id)) {
                let last = list.last().map(|j| j.entry.clone()).into_iter().collect();
                overlay(
                    m,
                    &Pending {
                        head: *head,
                        entries: last,
                    },
                );
            }
        }
        Ok(metas)
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front, so a transaction never fails half-way on
        // SQLITE_BUSY when another process (an admin tool) holds the database.
        self.writer
            .begin_with(self.begin_durable)
            .await
            .map_err(StoreError::db("begin"))
    }

    /// A write transaction whose content can be derived again from what is already durable
    /// (a checkpoint, or a drain of the journal): committed with `synchronous = NORMAL`, so it
    /// costs no fsync of its own. A power loss may roll it back, never tear it, and the next
    /// durable commit's fsync makes it durable too (the WAL is written in order).
    async fn begin_write_derived(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with(BEGIN_DERIVED)
            .await
            .map_err(StoreError::db("begin"))
    }

    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        // A deferred transaction reads one WAL snapshot from its first SELECT on.
        self.reader.begin().await.map_err(StoreError::db("begin"))
    }

    /// Drains the journal (so a clean shutdown leaves it empty), then closes the connections.
    pub(crate) async fn close(&self) {
        if let Err(e) = self.drain_journal().await {
            tracing::error!(error = %e, "draining the journal at close failed; the next start retries");
        }
        self.reader.close().await;
        self.writer.close().await;
    }
}

super::sql::shared_sql_impl!(SqliteBackend, Sqlite, numbered = false);

/// Whether the writer connection may go back to the pool: not while sqlx still counts a
/// transaction on it. A `COMMIT` that fails with a full disk (SQLITE_FULL) can make SQLite roll
/// the transaction back by itself; sqlx then keeps counting it as open, the `ROLLBACK` it sends
/// when the transaction is dropped fails ("no transaction is active"), and every later
/// `BEGIN IMMEDIATE` on the connection is refused ("non-zero transaction depth"), so nothing is
/// ever written again. Such a connection is closed instead (which ends anything SQLite still
/// holds open), and the pool opens a fresh one. The ping lets a rollback that is still queued
/// run first, so a transaction that merely failed and rolled back keeps its connection.
async fn keep_writer(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    let stuck = conn.is_in_transaction();
    if stuck {
        tracing::warn!(
            "the writer connection is stuck in a transaction SQLite already ended; reopening it"
        );
    }
    Ok(!stuck)
}

/// Begins a write transaction with `begin` (IMMEDIATE takes the write lock up front, see
/// `begin_write`) and reads `PRAGMA data_version`, which tells whether another connection
/// committed since this one last looked.
async fn begin_versioned<'c>(
    conn: &'c mut SqliteConnection,
    begin: &'static str,
    op: &'static str,
) -> Result<(sqlx::Transaction<'c, Sqlite>, i64), StoreError> {
    let mut tx = conn
        .begin_with(begin)
        .await
        .map_err(StoreError::db("begin"))?;
    let (version,): (i64,) = sqlx::query_as("PRAGMA data_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::db(op))?;
    Ok((tx, version))
}

/// Counts a document's journaled entries into metadata read from `documents`. Both sides only
/// grow, so the larger value is the newer one.
fn overlay(meta: &mut DocMeta, p: &Pending) {
    meta.head_seq = meta.head_seq.max(p.head.head_seq);
    meta.byte_count = meta.byte_count.max(p.head.byte_count);
    if let Some(last) = p.entries.last() {
        meta.updated_at_ms = meta.updated_at_ms.max(last.committed_at_ms);
    }
}

/// `documents.head_seq` (what drains have moved so far) of every document in `entries` that
/// has a row.
async fn drained_heads<'e>(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    entries: &[(JournalEntry<'e>, i64)],
) -> Result<HashMap<&'e str, u64>, StoreError> {
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
            .map_err(StoreError::db("drain_journal"))?
        {
            let id: String = row.try_get(0).map_err(StoreError::db("drain_journal"))?;
            let head: i64 = row.try_get(1).map_err(StoreError::db("drain_journal"))?;
            if let Ok(i) = docs[at..at + n].binary_search(&id.as_str()) {
                heads.insert(docs[at + i], to_u64(head));
            }
        }
        at += n;
    }
    Ok(heads)
}

/// The drain's writes: inserts the entries (sorted by `(doc_id, seq)`) into `update_runs`, one
/// row per run of a document's consecutive entries (see [`super::runs`]), adds them
/// to their `documents` rows, and drops again the entries at or below a retention cut that a
/// checkpoint set while they were journaled.
async fn write_drained(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    entries: &[(JournalEntry<'_>, i64)],
) -> Result<(), StoreError> {
    let op = "drain_journal";

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
    // One pass: each document's entries, cut into runs of bounded size.
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
        q.execute(&mut **tx).await.map_err(StoreError::db(op))?;
    }

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
            .map_err(StoreError::db(op))?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::db(op))?;
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

/// A stored run: its sequence range and blob.
type StoredRun = (u64, u64, Vec<u8>);

/// Up to `max_runs` of `doc`'s runs, in order, from the one holding `from` (or the first one, if
/// retention dropped `from`) to the last one starting at or before `upto`.
async fn fetch_runs(
    conn: &mut SqliteConnection,
    doc: &str,
    from: u64,
    upto: u64,
    max_runs: i64,
    op: &'static str,
) -> Result<Vec<StoredRun>, StoreError> {
    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT first_seq, last_seq, entries FROM update_runs \
         WHERE doc_id = $1 AND first_seq <= $3 AND last_seq >= $2 AND first_seq >= COALESCE(( \
             SELECT first_seq FROM update_runs WHERE doc_id = $1 AND first_seq <= $2 \
             ORDER BY first_seq DESC LIMIT 1), 0) \
         ORDER BY first_seq LIMIT $4",
    )
    .bind(doc)
    .bind(to_i64(from))
    .bind(to_i64(upto))
    .bind(max_runs)
    .fetch_all(&mut *conn)
    .await
    .map_err(StoreError::db(op))?;
    Ok(rows
        .into_iter()
        .map(|(first, last, blob)| (to_u64(first), to_u64(last), blob))
        .collect())
}

/// Decodes a stored run of `doc`; a run that does not decode is corrupt from its first entry.
fn decode_run<'a>(doc: &DocId, run: &'a StoredRun) -> Result<Vec<RunEntry<'a>>, StoreError> {
    let (first, last, blob) = run;
    runs::decode(*first, *last, blob).map_err(|reason| StoreError::CorruptDelta {
        doc: doc.clone(),
        seq: *first,
        reason: format!("the stored run of entries {first}..={last} does not decode: {reason}"),
    })
}

/// Retention on the SQLite log: drops the runs that end at or below `cut` and trims the one
/// that straddles it (rewritten to start at `cut + 1`).
async fn drop_runs_through(
    conn: &mut SqliteConnection,
    doc: &str,
    cut: u64,
) -> Result<(), StoreError> {
    let op = "checkpoint";
    sqlx::query("DELETE FROM update_runs WHERE doc_id = $1 AND first_seq <= $2 AND last_seq <= $2")
        .bind(doc)
        .bind(to_i64(cut))
        .execute(&mut *conn)
        .await
        .map_err(StoreError::db(op))?;
    let straddling: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT first_seq, last_seq, entries FROM update_runs \
         WHERE doc_id = $1 AND first_seq <= $2 ORDER BY first_seq LIMIT 1",
    )
    .bind(doc)
    .bind(to_i64(cut))
    .fetch_optional(&mut *conn)
    .await
    .map_err(StoreError::db(op))?;
    let Some((first, last, blob)) = straddling else {
        return Ok(());
    };
    let entries = match runs::decode(to_u64(first), to_u64(last), &blob) {
        Ok(entries) => entries,
        Err(reason) => {
            // Left whole: it is unreadable either way, and a reader gets the error.
            tracing::warn!(doc, first, last, %reason, "retention kept a run it cannot decode");
            return Ok(());
        }
    };
    let mut kept = runs::begin(blob.len());
    for e in entries.iter().filter(|e| e.seq > cut) {
        runs::push(&mut kept, e);
    }
    sqlx::query(
        "UPDATE update_runs SET first_seq = $3, entries = $4 WHERE doc_id = $1 AND first_seq = $2",
    )
    .bind(doc)
    .bind(first)
    .bind(to_i64(cut + 1))
    .bind(kept)
    .execute(&mut *conn)
    .await
    .map_err(StoreError::db(op))?;
    Ok(())
}

/// Runs read per round trip by [`SqliteBackend::read_log`].
const READ_LOG_RUNS: i64 = 8;

impl SqliteBackend {
    /// The deltas of `after+1 ..= upto` (a load's tail), from the runs that hold them.
    async fn read_tail(
        conn: &mut SqliteConnection,
        doc: &DocId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<TailEntry>, StoreError> {
        let stored = fetch_runs(conn, doc.as_str(), after + 1, upto, i64::MAX, "load").await?;
        let mut tail = Vec::new();
        for run in &stored {
            for e in decode_run(doc, run)? {
                if e.seq > after && e.seq <= upto {
                    tail.push(TailEntry {
                        seq: e.seq,
                        author: e.author.map(str::to_owned),
                        delta: e.delta.to_vec(),
                    });
                }
            }
        }
        Ok(tail)
    }

    /// Whole entries from `from_seq` on, at most `limit` (history and catch-up), read a few
    /// runs at a time in one snapshot.
    pub(crate) async fn read_log(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let op = "read_log";
        let mut tx = self.begin_read().await?;
        let mut log = Vec::new();
        let mut next = from_seq.max(1);
        while log.len() < limit as usize {
            let stored =
                fetch_runs(&mut tx, doc.as_str(), next, u64::MAX, READ_LOG_RUNS, op).await?;
            for run in &stored {
                if log.len() >= limit as usize {
                    break;
                }
                for e in decode_run(doc, run)? {
                    if e.seq >= next && log.len() < limit as usize {
                        log.push(LogEntry {
                            seq: e.seq,
                            hlc: e.hlc,
                            replica: e.replica,
                            author: e.author.map(str::to_owned),
                            byte_size: e.delta.len() as u64,
                            committed_at_ms: e.committed_at_ms,
                            delta_bytes: e.delta.to_vec(),
                        });
                    }
                }
            }
            match stored.last() {
                Some((_, last, _)) if stored.len() as i64 == READ_LOG_RUNS => next = last + 1,
                _ => break,
            }
        }
        tx.rollback().await.map_err(StoreError::db(op))?;
        Ok(log)
    }

    /// Retention: drops the log entries at or below `cut`.
    async fn drop_log_through(
        conn: &mut SqliteConnection,
        doc: &DocId,
        cut: u64,
    ) -> Result<(), StoreError> {
        drop_runs_through(conn, doc.as_str(), cut).await
    }
}

/// Refuses a schema newer than this build, then applies pending migrations.
async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let exists: Option<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::db("migrate"))?;
    if exists.is_some() {
        let (found,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
                .map_err(StoreError::db("migrate"))?;
        super::check_schema_version(found, &MIGRATOR)?;
    }
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| StoreError::Migrate(std::sync::Arc::new(e)))
}
