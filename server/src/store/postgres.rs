//! The Postgres backend, chosen with `--database-url postgres://…`.
//!
//! One pool ([`StoreConfig::pool_size`] connections) serves the group committer, the
//! checkpointer and the readers. Reads that span several statements (loading a document) run
//! in a `REPEATABLE READ` transaction so they see one snapshot. Commits are durable when
//! Postgres says so: with its default `synchronous_commit = on`, after the WAL is flushed.

use std::str::FromStr;

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{StoreConfig, StoreError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug)]
pub(crate) struct PostgresBackend {
    pool: PgPool,
}

impl PostgresBackend {
    pub(crate) async fn open(url: &str, config: &StoreConfig) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            // One more than the readers, so the group committer never waits behind them.
            .max_connections(config.pool_size.max(1) + 1)
            .acquire_timeout(config.busy_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::db("open"))?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(StoreError::db("begin"))
    }

    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(StoreError::db("begin"))
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

super::sql::shared_sql_impl!(PostgresBackend, Postgres, numbered = true);

/// Refuses a schema newer than this build, then applies pending migrations (sqlx takes an
/// advisory lock, so servers starting together migrate once).
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(StoreError::db("migrate"))?;
    if exists {
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
