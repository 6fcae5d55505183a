//! The SQLite backend: the embedded default, one file, nothing else to install.
//!
//! One writer connection (SQLite has one writer at a time anyway; the group committer and the
//! checkpointer take turns on it) and a small pool of readers, all in WAL mode so that reads
//! never wait for the writer. `synchronous` is [`SqliteSynchronous::Full`] by default: see
//! `docs/storage.md` for what each level promises.
//!
//! Because every write goes through that one connection, the group committer keeps each
//! document's counters (head sequence number, byte count, checkpoint position, deleted flag)
//! in a [`HeadCache`] instead of reading them back in every transaction.
//!
//! **Invariant:** the cache is read and written only while the writer connection is held, and
//! every other write transaction that changes a `documents` row drops that row from the cache
//! before its `COMMIT`. Writes by another process are caught by `PRAGMA data_version`, read
//! under the write lock at the start of each group commit: if it moved, the cache is dropped.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use lattice_engine::DocId;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Connection as _, Row as _, Sqlite};

use super::sql::{
    INSERT_PER_ROW, INSERT_PREFIX, SET_HEADS_SUFFIX, UPSERT_PER_ROW, UPSERT_PREFIX, chunks,
    heads_sql, hlc_to_i64, to_i64, to_u64, values_sql,
};
use super::{DocCounters, NewEntry, StoreConfig, StoreError};

/// Most documents whose counters the writer caches; past it the cache starts over (an entry
/// costs one indexed read to restore).
pub const HEAD_CACHE_CAPACITY: usize = 65_536;
/// Page cache of the writer connection, in KiB (`PRAGMA cache_size`). A group commit touching
/// a thousand documents dirties about a thousand pages; SQLite's 2 MiB default would re-read
/// them from the OS on every transaction.
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
    heads: Mutex<HeadCache>,
}

/// What the writer knows about a document's row in `documents`.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    head_seq: u64,
    byte_count: u64,
    checkpoint_seq: u64,
    checkpoint_byte_count: u64,
    deleted: bool,
}

/// The writer's copy of the `documents` counters, valid for one `data_version`.
#[derive(Debug, Default)]
struct HeadCache {
    data_version: Option<i64>,
    docs: HashMap<DocId, Head>,
}

/// A document touched by one group commit.
#[derive(Debug, Default)]
struct Slot {
    /// The counters before this transaction; meaningful once `known`.
    head: Head,
    known: bool,
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
            url: url.to_owned(),
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(config.busy_timeout)
            .connect_with(writer_options)
            .await
            .map_err(StoreError::db("open"))?;
        migrate(&writer).await?;
        // An in-memory database exists once per connection, so it is read through the writer.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
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
        Ok(Self {
            writer,
            reader,
            heads: Mutex::new(HeadCache::default()),
        })
    }

    fn heads(&self) -> MutexGuard<'_, HeadCache> {
        // The cache holds plain counters; a panic elsewhere cannot leave it half-updated in a
        // way that matters more than a stale entry, and stale entries are caught below.
        self.heads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops a document's cached counters; called with the writer connection held, inside a
    /// write transaction that changes its row, before `COMMIT`.
    fn forget_head(&self, doc: &DocId) {
        self.heads().docs.remove(doc);
    }

    /// One group-commit transaction. Sequence numbers come from the cached heads, so the
    /// transaction reads nothing but `data_version` (and the rows of documents not cached yet)
    /// and writes one `documents` row per document plus the log entries, in multi-row
    /// statements.
    pub(crate) async fn append_batch(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(StoreError::db("begin"))?;
        // A `documents` row that changed behind the cache (another process soft-deleted it
        // between its `data_version` check and ours, which cannot happen under the write lock,
        // or a bug) shows as a skipped row: start over from the database, once.
        for _ in 0..2 {
            match self.append_locked(&mut conn, requests, now_ms).await {
                Ok(Some(outcome)) => return Ok(outcome),
                Ok(None) => self.heads().docs.clear(),
                Err(e) => {
                    // The transaction may or may not have committed: trust nothing cached.
                    self.heads().docs.clear();
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
            reason: "the documents table changed during the append".to_owned(),
        })
    }

    /// [`Self::append_batch`] on the held writer connection; `Ok(None)` when the cache turned
    /// out stale and the transaction was rolled back.
    async fn append_locked(
        &self,
        conn: &mut SqliteConnection,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<Option<BatchOutcome>, StoreError> {
        let op = "append";
        let now = to_i64(now_ms);
        // IMMEDIATE takes the write lock up front (see `begin_write`).
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::db("begin"))?;
        let (version,): (i64,) = sqlx::query_as("PRAGMA data_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::db(op))?;

        let total: usize = requests.iter().map(Vec::len).sum();
        let mut docs: HashMap<&DocId, Slot> = HashMap::with_capacity(total.min(4_096));
        {
            let mut cache = self.heads();
            if cache.data_version != Some(version) || cache.docs.len() > HEAD_CACHE_CAPACITY {
                cache.docs.clear();
                cache.data_version = Some(version);
            }
            for e in requests.iter().flatten() {
                docs.entry(&e.doc)
                    .or_insert_with(|| match cache.docs.get(&e.doc) {
                        Some(head) => Slot {
                            head: *head,
                            known: true,
                            ..Slot::default()
                        },
                        None => Slot::default(),
                    });
            }
        }

        // Documents not cached: read their rows; those without one are new (all zero).
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
                let seq = slot.head.head_seq + slot.count;
                seqs.push(seq);
                rows.push((e, seq));
            }
            results.push(Ok(seqs));
        }

        let touched: Vec<(&DocId, &Slot)> = docs
            .iter()
            .filter(|(_, s)| s.count > 0)
            .map(|(d, s)| (*d, s))
            .collect();
        let mut at = 0;
        for n in chunks(touched.len()) {
            let sql = values_sql(UPSERT_PREFIX, UPSERT_PER_ROW, n, SET_HEADS_SUFFIX, false);
            let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(sql));
            for (doc, s) in &touched[at..at + n] {
                q = q
                    .bind(doc.as_str())
                    .bind(now)
                    .bind(now)
                    .bind(to_i64(s.head.head_seq + s.count))
                    .bind(to_i64(s.head.byte_count + s.bytes));
            }
            at += n;
            let done = q.execute(&mut *tx).await.map_err(StoreError::db(op))?;
            if done.rows_affected() != n as u64 {
                tx.rollback().await.map_err(StoreError::db(op))?;
                return Ok(None);
            }
        }
        let mut at = 0;
        for n in chunks(rows.len()) {
            let sql = values_sql(INSERT_PREFIX, INSERT_PER_ROW, n, "", false);
            let mut q = sqlx::query::<Sqlite>(sqlx::AssertSqlSafe(sql));
            for (e, seq) in &rows[at..at + n] {
                q = q
                    .bind(e.doc.as_str())
                    .bind(to_i64(*seq))
                    .bind(hlc_to_i64(e.hlc))
                    .bind(i64::from(e.replica.get()))
                    .bind(e.author.as_deref())
                    .bind(to_i64(e.delta_bytes().len() as u64))
                    .bind(now)
                    .bind(e.delta_bytes());
            }
            at += n;
            q.execute(&mut *tx).await.map_err(StoreError::db(op))?;
        }
        tx.commit().await.map_err(StoreError::db("commit"))?;

        // Committed, and the writer connection is still ours: bring the cache forward.
        let mut counters = Vec::with_capacity(touched.len());
        let mut cache = self.heads();
        for (doc, s) in docs {
            let head = Head {
                head_seq: s.head.head_seq + s.count,
                byte_count: s.head.byte_count + s.bytes,
                ..s.head
            };
            match cache.docs.get_mut(doc) {
                Some(cached) => *cached = head,
                None => {
                    cache.docs.insert(doc.clone(), head);
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

    fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        // IMMEDIATE takes the write lock up front, so a transaction never fails half-way on
        // SQLITE_BUSY when another process (an admin tool) holds the database.
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::db("begin"))
    }

    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        // A deferred transaction reads one WAL snapshot from its first SELECT on.
        self.reader.begin().await.map_err(StoreError::db("begin"))
    }

    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

super::sql::shared_sql_impl!(SqliteBackend, Sqlite, numbered = false);

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
