//! The SQLite backend: the embedded default, one file, nothing else to install.
//!
//! One writer connection (SQLite has one writer at a time anyway; the group committer and the
//! checkpointer take turns on it) and a small pool of readers, all in WAL mode so that reads
//! never wait for the writer. `synchronous` is [`SqliteSynchronous::Full`] by default: see
//! `docs/storage.md` for what each level promises.

use std::str::FromStr;

use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::{StoreConfig, StoreError};

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
}

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
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(config.busy_timeout)
            .connect_with(options.clone())
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
        Ok(Self { writer, reader })
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
