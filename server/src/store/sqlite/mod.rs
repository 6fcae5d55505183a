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
//! `journal` row** holding every entry of the transaction (`journal.rs` has the format),
//! plus a `documents` row for each document it creates. The entries are durable (and their
//! sequence numbers final) when that transaction commits. Later, in one large transaction, the
//! writer **drains** the journal: it moves the rows into the log, sorted by document and
//! sequence number, as one `update_runs` row per run of a document's consecutive entries
//! (`runs.rs` has the format; a row costs about the same to insert whatever it holds, so
//! a drain costs per document, not per entry), adds their counters to `documents` and deletes
//! the journal rows. It drains when the journal holds [`StoreConfig::journal_max_entries`] entries or 16 MiB, when its
//! oldest entry is [`StoreConfig::journal_max_age`] old, when the group committer has been idle
//! for a moment, when the store opens (which is crash recovery) and when it closes.
//!
//! Until then the writer keeps the journaled entries in memory (bounded by the same limits),
//! and reads in this process merge them in (`merged_reads.rs`): they read the memory first
//! and the database second, and keep every sequence number once, so an entry drained in between is neither lost nor doubled. Another process reading the same file
//! sees an entry once it is drained.
//!
//! # Files
//! - `mod.rs` (this file): the backend, opening and migrating, its connections and transactions.
//! - `writer_state.rs`: the writer's cache of document counters and the in-memory journal.
//! - `append.rs`: the group-commit transaction (sequence numbers, the `journal` row).
//! - `drain.rs`: moving journaled entries into the log, in drain cycles and slices.
//! - `log.rs`: the stored log, `update_runs`: reading runs, and retention's trimming of them.
//! - `merged_reads.rs`: reads that merge the in-memory journal into what the database holds.
//!
//! # The writer's cache
//! Because every write goes through that one connection, the group committer keeps each
//! document's counters (head sequence number, byte count, checkpoint position, deleted flag)
//! in a `WriterState` instead of reading them back in every transaction.
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

use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lattice_engine::DocId;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions,
};
use sqlx::{Connection as _, Sqlite};

use super::backend::{Backend, BatchOutcome, JournalDrain as _};
use super::sql::SqlBackend;
use super::{
    AppendError, DatabaseError, DocMeta, LogEntry, NewEntry, OpenError, Page, Parts, ReadError,
    StoreConfig, TailEntry,
};

mod append;
mod drain;
mod log;
mod merged_reads;
mod writer_state;

use writer_state::WriterState;
pub use writer_state::{HEAD_CACHE_CAPACITY, JOURNAL_MAX_BYTES};

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

impl SqliteBackend {
    pub(crate) async fn open(url: &str, config: &StoreConfig) -> Result<Self, OpenError> {
        let bad_url = |e: sqlx::Error| OpenError::BadUrl {
            url: super::redacted_url(url),
            source: Arc::new(e),
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
        // Only takes effect on a database that has no table yet (a new one), before the
        // migrations run; see `release_free_pages`.
        let writer_options = options
            .clone()
            .auto_vacuum(SqliteAutoVacuum::Incremental)
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
            .map_err(DatabaseError::during("open"))?;
        migrate(&writer).await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(config.pool_size.max(1))
                .acquire_timeout(config.busy_timeout)
                .connect_with(options)
                .await
                .map_err(DatabaseError::during("open"))?
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
        backend.drain_all().await?;
        Ok(backend)
    }

    /// Gives the pages the drained journal left free back to the file system (`PRAGMA
    /// incremental_vacuum`) when the store closes, once the journal is empty. While the store
    /// runs, the journal reuses them; a stopped one need not keep them. Databases created
    /// before schema 4 have `auto_vacuum` off, and there this does nothing (`VACUUM` once,
    /// offline, after `PRAGMA auto_vacuum = INCREMENTAL`, turns it on). A failure only costs
    /// disk space, so it is logged and otherwise ignored.
    async fn release_free_pages(&self) {
        let released = async {
            let mut conn = self.writer_connection().await?;
            sqlx::query("PRAGMA incremental_vacuum")
                .execute(&mut *conn)
                .await
                .map_err(DatabaseError::during("vacuum"))
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "returning free pages to the file system failed");
        }
    }

    fn state(&self) -> MutexGuard<'_, WriterState> {
        // The state holds plain counters and entries; a panic elsewhere cannot leave it
        // half-updated in a way that matters more than a stale entry, and a writer that fails
        // mid-way marks it invalid before it returns.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer connection, for as long as the caller holds it (the pool has one).
    async fn writer_connection(&self) -> Result<sqlx::pool::PoolConnection<Sqlite>, DatabaseError> {
        self.writer
            .acquire()
            .await
            .map_err(DatabaseError::during("begin"))
    }
}

impl Backend for SqliteBackend {
    async fn append_batch(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<BatchOutcome, AppendError> {
        self.append_group(requests, now_ms).await
    }

    async fn doc_meta(&self, doc: &DocId) -> Result<Option<DocMeta>, ReadError> {
        Ok(self.doc_meta_merged(doc).await?)
    }

    async fn parts(&self, doc: &DocId, upto: Option<u64>) -> Result<Option<Parts>, ReadError> {
        self.parts_merged(doc, upto).await
    }

    async fn read_log(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, ReadError> {
        self.read_log_merged(doc, from_seq, limit).await
    }

    async fn list(&self, prefix: &str, page: &Page) -> Result<Vec<DocMeta>, ReadError> {
        Ok(self.list_merged(prefix, page).await?)
    }

    /// Drains the journal (so a clean shutdown leaves it empty), then closes the connections.
    async fn close(&self) {
        match self.drain_all().await {
            Ok(()) => self.release_free_pages().await,
            Err(e) => {
                tracing::error!(error = %e, "draining the journal at close failed; the next start retries");
            }
        }
        self.reader.close().await;
        self.writer.close().await;
    }
}

impl SqlBackend for SqliteBackend {
    type Db = Sqlite;

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, DatabaseError> {
        // IMMEDIATE takes the write lock up front, so a transaction never fails half-way on
        // SQLITE_BUSY when another process (an admin tool) holds the database.
        self.writer
            .begin_with(self.begin_durable)
            .await
            .map_err(DatabaseError::during("begin"))
    }

    /// A write transaction whose content can be derived again from what is already durable
    /// (a checkpoint, or a drain of the journal): committed with `synchronous = NORMAL`, so it
    /// costs no fsync of its own. A power loss may roll it back, never tear it, and the next
    /// durable commit's fsync makes it durable too (the WAL is written in order).
    async fn begin_write_derived(
        &self,
    ) -> Result<sqlx::Transaction<'static, Sqlite>, DatabaseError> {
        self.writer
            .begin_with(BEGIN_DERIVED)
            .await
            .map_err(DatabaseError::during("begin"))
    }

    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, Sqlite>, DatabaseError> {
        // A deferred transaction reads one WAL snapshot from its first SELECT on.
        self.reader
            .begin()
            .await
            .map_err(DatabaseError::during("begin"))
    }

    fn forget_head(&self, doc: &DocId) {
        self.forget_cached_head(doc);
    }

    fn checkpoint_written(&self, doc: &DocId, seq: u64, byte_count: u64) {
        self.cached_checkpoint_written(doc, seq, byte_count);
    }

    async fn read_tail(
        conn: &mut SqliteConnection,
        doc: &DocId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<TailEntry>, ReadError> {
        log::read_tail(conn, doc, after, upto).await
    }

    async fn drop_log_through(
        conn: &mut SqliteConnection,
        doc: &DocId,
        cut: u64,
    ) -> Result<(), DatabaseError> {
        log::drop_runs_through(conn, doc.as_str(), cut).await
    }
}

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
) -> Result<(sqlx::Transaction<'c, Sqlite>, i64), DatabaseError> {
    let mut tx = conn
        .begin_with(begin)
        .await
        .map_err(DatabaseError::during("begin"))?;
    let (version,): (i64,) = sqlx::query_as("PRAGMA data_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(DatabaseError::during(op))?;
    Ok((tx, version))
}

/// Refuses a schema newer than this build, then applies pending migrations.
async fn migrate(pool: &SqlitePool) -> Result<(), OpenError> {
    let exists: Option<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await
    .map_err(DatabaseError::during("migrate"))?;
    if exists.is_some() {
        let (found,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
                .map_err(DatabaseError::during("migrate"))?;
        super::check_schema_version(found, &MIGRATOR)?;
    }
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| OpenError::Migrate(Arc::new(e)))
}
