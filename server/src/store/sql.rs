//! The SQL both backends share. SQLite and Postgres both accept `$n` placeholders, `INSERT …
//! ON CONFLICT … DO UPDATE` and the column types used here (`i64`, text, bytes), so every
//! read, checkpoint and soft-delete statement is written once, as the provided methods of
//! [`SqlBackend`], generic over the backend's `sqlx::Database`. The multi-row batch statements
//! of the append path are built here too ([`values_sql`]; `?` placeholders on SQLite), but each
//! backend drives its own append: Postgres reserves sequence numbers with an upsert
//! `… RETURNING` (several server processes may share the database), SQLite from heads cached
//! in its single writer (`sqlite/append.rs`). What else differs (connection set-up, pragmas,
//! read isolation, migration folders) lives in `sqlite/mod.rs` and `postgres.rs`.
//!
//! The log itself is stored differently: one `updates` row per entry on Postgres, one
//! `update_runs` row per run of consecutive entries on SQLite (`runs.rs`). So each backend
//! reads and trims its own log ([`SqlBackend::read_tail`], [`SqlBackend::drop_log_through`]),
//! and reads whole entries (history, catch-up) on its own.

use lattice_engine::DocId;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row as _, Transaction,
    Type,
};

use super::compress::PackedCheckpoint;
use super::{
    DatabaseError, DocMeta, Page, Parts, ReadError, Retention, StoreConfig, StoredCheckpoint,
    TailEntry,
};

/// Rows per multi-row `INSERT`, largest first. A batch is cut into chunks of these sizes, so
/// only a handful of distinct statements exist and each stays in the prepared-statement cache.
pub(crate) const CHUNK_SIZES: [usize; 4] = [256, 32, 4, 1];

/// Splits `n` rows into chunk lengths drawn from [`CHUNK_SIZES`].
pub(crate) fn chunks(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for size in CHUNK_SIZES {
        while n >= size {
            out.push(size);
            n -= size;
        }
    }
    out
}

/// `prefix VALUES (…), (…) suffix` with `rows` tuples of `per_row` placeholders: `$1, $2, …`
/// when `numbered` (Postgres), plain `?` otherwise (SQLite). SQLite looks a named parameter up
/// by a linear scan, once per bound value, which makes a statement with thousands of `$n`
/// quadratic; anonymous `?` parameters are bound by position at no cost.
pub(crate) fn values_sql(
    prefix: &str,
    per_row: usize,
    rows: usize,
    suffix: &str,
    numbered: bool,
) -> String {
    let mut sql = String::with_capacity(prefix.len() + suffix.len() + rows * per_row * 7);
    sql.push_str(prefix);
    sql.push_str(" VALUES ");
    let mut next = 1;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for i in 0..per_row {
            if i > 0 {
                sql.push_str(", ");
            }
            if numbered {
                sql.push('$');
                sql.push_str(&next.to_string());
                next += 1;
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(suffix);
    sql
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// HLC times use all 64 bits; they are stored bit for bit in a signed column.
pub(crate) fn hlc_to_i64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

pub(crate) fn hlc_from_i64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

pub(crate) const META_COLUMNS: &str = "id, created_at_ms, updated_at_ms, deleted_at_ms, head_seq, \
     byte_count, checkpoint_seq, log_start_seq, checkpoint_byte_count";

pub(crate) const UPSERT_PREFIX: &str =
    "INSERT INTO documents (id, created_at_ms, updated_at_ms, head_seq, byte_count)";
pub(crate) const UPSERT_PER_ROW: usize = 5;
pub(crate) const UPSERT_SUFFIX: &str = "ON CONFLICT (id) DO UPDATE SET \
     head_seq = documents.head_seq + excluded.head_seq, \
     byte_count = documents.byte_count + excluded.byte_count, \
     updated_at_ms = excluded.updated_at_ms \
     WHERE documents.deleted_at_ms IS NULL \
     RETURNING id, head_seq, byte_count, checkpoint_seq, checkpoint_byte_count";

/// `documents` rows written by the SQLite backend: the append path creates the rows of new
/// documents (counters 0, filled in when the journal is drained) with this and no suffix; the
/// journal drain adds each document's drained entries with [`DRAIN_HEADS_SUFFIX`].
pub(crate) const DOCS_INSERT_PREFIX: &str =
    "INSERT INTO documents (id, created_at_ms, updated_at_ms, head_seq, byte_count)";
pub(crate) const DOCS_INSERT_PER_ROW: usize = 5;
/// `head_seq` is the last drained sequence number, `byte_count` the drained entries' size; the
/// retention cut is returned so entries a checkpoint cut while they were journaled are dropped.
pub(crate) const DRAIN_HEADS_SUFFIX: &str = "ON CONFLICT (id) DO UPDATE SET \
     head_seq = MAX(documents.head_seq, excluded.head_seq), \
     byte_count = documents.byte_count + excluded.byte_count, \
     updated_at_ms = MAX(documents.updated_at_ms, excluded.updated_at_ms) \
     RETURNING id, log_start_seq";

/// `SELECT … WHERE id IN (?, …)` with `n` anonymous placeholders (SQLite only): the heads of
/// documents the SQLite writer has not cached yet.
pub(crate) fn heads_sql(n: usize) -> String {
    let mut sql = String::with_capacity(160 + n * 3);
    sql.push_str(
        "SELECT id, head_seq, byte_count, checkpoint_seq, checkpoint_byte_count, \
         deleted_at_ms IS NOT NULL FROM documents WHERE id IN (",
    );
    for i in 0..n {
        sql.push_str(if i == 0 { "?" } else { ", ?" });
    }
    sql.push(')');
    sql
}

/// Log rows written by the Postgres backend (one per entry).
pub(crate) const INSERT_PREFIX: &str = "INSERT INTO updates \
     (doc_id, seq, hlc, replica, author, byte_size, committed_at_ms, delta)";
pub(crate) const INSERT_PER_ROW: usize = 8;

/// What a backend gives the shared SQL, and the operations written once on top of it.
///
/// A backend implements the required items (its pools and transactions, its own log's tail
/// and retention, and the hooks that keep a cache of `documents` rows honest); the provided
/// methods are the statements both dialects accept.
pub(crate) trait SqlBackend: Sync
where
    for<'c> &'c mut <Self::Db as Database>::Connection: Executor<'c, Database = Self::Db>,
    for<'a> &'a str: Encode<'a, Self::Db> + Type<Self::Db>,
    for<'a> &'a [u8]: Encode<'a, Self::Db> + Type<Self::Db>,
    for<'a> i64: Encode<'a, Self::Db> + Decode<'a, Self::Db> + Type<Self::Db>,
    for<'a> String: Decode<'a, Self::Db> + Type<Self::Db>,
    for<'a> Vec<u8>: Decode<'a, Self::Db> + Type<Self::Db>,
    usize: ColumnIndex<<Self::Db as Database>::Row>,
    <Self::Db as Database>::Arguments: IntoArguments<Self::Db>,
{
    type Db: Database;

    /// The pool single-statement reads run on.
    fn read_pool(&self) -> &Pool<Self::Db>;
    /// A read transaction that sees one snapshot (a WAL snapshot, `REPEATABLE READ`).
    fn begin_read(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, DatabaseError>> + Send;
    /// A write transaction that is durable at `COMMIT`.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, DatabaseError>> + Send;
    /// A write transaction whose content can be derived again from what is already durable
    /// (a checkpoint): it may skip an fsync of its own.
    fn begin_write_derived(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, DatabaseError>> + Send;
    /// Called by a write transaction that changed `doc`'s `documents` row, before its
    /// `COMMIT`, so that no cached copy of the row outlives it.
    fn forget_head(&self, doc: &DocId);
    /// Called by the checkpoint writer before its `COMMIT`: `doc` has a checkpoint at `seq`,
    /// taken when its byte count was `byte_count`.
    fn checkpoint_written(&self, doc: &DocId, seq: u64, byte_count: u64);
    /// The deltas of `after+1 ..= upto` (a load's tail), ascending, read in `conn`'s snapshot.
    fn read_tail(
        conn: &mut <Self::Db as Database>::Connection,
        doc: &DocId,
        after: u64,
        upto: u64,
    ) -> impl Future<Output = Result<Vec<TailEntry>, ReadError>> + Send;
    /// Retention: drops the log entries at or below `cut`.
    fn drop_log_through(
        conn: &mut <Self::Db as Database>::Connection,
        doc: &DocId,
        cut: u64,
    ) -> impl Future<Output = Result<(), DatabaseError>> + Send;
    /// How many rows a statement changed (sqlx has no trait for it).
    fn rows_affected(result: &<Self::Db as Database>::QueryResult) -> u64;

    /// A `documents` row: the metadata and the byte count at the newest checkpoint.
    fn meta_from_row(row: &<Self::Db as Database>::Row) -> Result<(DocMeta, u64), sqlx::Error> {
        let id: String = row.try_get(0)?;
        let id = DocId::new(id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let deleted: Option<i64> = row.try_get(3)?;
        Ok((
            DocMeta {
                id,
                created_at_ms: to_u64(row.try_get(1)?),
                updated_at_ms: to_u64(row.try_get(2)?),
                deleted_at_ms: deleted.map(to_u64),
                head_seq: to_u64(row.try_get(4)?),
                byte_count: to_u64(row.try_get(5)?),
                checkpoint_seq: to_u64(row.try_get(6)?),
                log_start_seq: to_u64(row.try_get(7)?),
            },
            to_u64(row.try_get(8)?),
        ))
    }

    /// The `documents` row of `doc`, as stored.
    async fn stored_meta(&self, doc: &DocId) -> Result<Option<DocMeta>, DatabaseError> {
        let sql = format!("SELECT {META_COLUMNS} FROM documents WHERE id = $1");
        let row = sqlx::query::<Self::Db>(sqlx::AssertSqlSafe(sql))
            .bind(doc.as_str())
            .fetch_optional(self.read_pool())
            .await
            .map_err(DatabaseError::during("document"))?;
        row.map(|r| Self::meta_from_row(&r).map(|(m, _)| m))
            .transpose()
            .map_err(DatabaseError::during("document"))
    }

    /// What `doc` is rebuilt from, up to `upto` (default: the head), in one read transaction.
    /// `head_floor` counts entries the caller knows of beyond what `documents` holds (SQLite's
    /// journal).
    async fn stored_parts(
        &self,
        doc: &DocId,
        upto: Option<u64>,
        head_floor: u64,
    ) -> Result<Option<Parts>, ReadError> {
        let op = "load";
        let mut tx = self.begin_read().await?;
        let sql = format!("SELECT {META_COLUMNS} FROM documents WHERE id = $1");
        let Some(row) = sqlx::query::<Self::Db>(sqlx::AssertSqlSafe(sql))
            .bind(doc.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(DatabaseError::during(op))?
        else {
            return Ok(None);
        };
        let (mut meta, checkpoint_byte_count) =
            Self::meta_from_row(&row).map_err(DatabaseError::during(op))?;
        meta.head_seq = meta.head_seq.max(head_floor);
        let upto = upto.map_or(meta.head_seq, |u| u.min(meta.head_seq));
        let checkpoint = sqlx::query::<Self::Db>(
            "SELECT seq, snapshot, encoding, byte_size FROM checkpoints \
             WHERE doc_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(doc.as_str())
        .bind(to_i64(upto))
        .fetch_optional(&mut *tx)
        .await
        .map_err(DatabaseError::during(op))?
        .map(|r| -> Result<StoredCheckpoint, sqlx::Error> {
            Ok(StoredCheckpoint {
                seq: to_u64(r.try_get(0)?),
                stored: r.try_get(1)?,
                encoding: r.try_get(2)?,
                byte_size: to_u64(r.try_get(3)?),
            })
        })
        .transpose()
        .map_err(DatabaseError::during(op))?;
        let from = checkpoint.as_ref().map_or(0, |c| c.seq);
        let tail = Self::read_tail(&mut tx, doc, from, upto).await?;
        tx.rollback().await.map_err(DatabaseError::during(op))?;
        Ok(Some(Parts {
            meta,
            checkpoint,
            checkpoint_byte_count,
            tail,
            upto,
        }))
    }

    /// One page of `documents` rows whose id starts with `prefix`, as stored.
    async fn stored_list(&self, prefix: &str, page: &Page) -> Result<Vec<DocMeta>, DatabaseError> {
        let op = "list_documents";
        let sql = format!(
            "SELECT {META_COLUMNS} FROM documents \
             WHERE id >= $1 AND id < $2 AND id > $3 ORDER BY id LIMIT $4"
        );
        // Document ids are ASCII below 0x7f, so every id with the prefix sorts before
        // `prefix + "\x7f"`.
        let upper = format!("{prefix}\u{7f}");
        let after = page.after.as_ref().map_or("", |d| d.as_str());
        let rows = sqlx::query::<Self::Db>(sqlx::AssertSqlSafe(sql))
            .bind(prefix)
            .bind(upper.as_str())
            .bind(after)
            .bind(i64::from(page.limit))
            .fetch_all(self.read_pool())
            .await
            .map_err(DatabaseError::during(op))?;
        rows.iter()
            .map(|r| Self::meta_from_row(r).map(|(m, _)| m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(DatabaseError::during(op))
    }

    /// Soft delete (`Some(at_ms)`) or undelete (`None`); whether the row changed.
    async fn mark_deleted(&self, doc: &DocId, at_ms: Option<u64>) -> Result<bool, DatabaseError> {
        let mut tx = self.begin_write().await?;
        let done = match at_ms {
            Some(at) => sqlx::query::<Self::Db>(
                "UPDATE documents SET deleted_at_ms = $2, updated_at_ms = $2 \
                 WHERE id = $1 AND deleted_at_ms IS NULL",
            )
            .bind(doc.as_str())
            .bind(to_i64(at)),
            None => sqlx::query::<Self::Db>(
                "UPDATE documents SET deleted_at_ms = NULL \
                 WHERE id = $1 AND deleted_at_ms IS NOT NULL",
            )
            .bind(doc.as_str()),
        }
        .execute(&mut *tx)
        .await
        .map_err(DatabaseError::during("soft_delete"))?;
        self.forget_head(doc);
        tx.commit().await.map_err(DatabaseError::during("commit"))?;
        Ok(Self::rows_affected(&done) > 0)
    }

    /// Stores a checkpoint at `meta.head_seq`, applies retention and thins old checkpoints.
    async fn store_checkpoint(
        &self,
        meta: &DocMeta,
        snapshot: &PackedCheckpoint,
        now_ms: u64,
        config: &StoreConfig,
    ) -> Result<(), DatabaseError> {
        let op = "checkpoint";
        let doc = meta.id.as_str();
        let seq = to_i64(meta.head_seq);
        let mut tx = self.begin_write_derived().await?;
        sqlx::query::<Self::Db>(
            "INSERT INTO checkpoints (doc_id, seq, created_at_ms, byte_size, snapshot, encoding) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (doc_id, seq) DO NOTHING",
        )
        .bind(doc)
        .bind(seq)
        .bind(to_i64(now_ms))
        .bind(to_i64(snapshot.raw_len))
        .bind(snapshot.stored.as_slice())
        .bind(snapshot.encoding as i64)
        .execute(&mut *tx)
        .await
        .map_err(DatabaseError::during(op))?;
        sqlx::query::<Self::Db>(
            "UPDATE documents SET checkpoint_seq = $2, checkpoint_byte_count = $3 \
             WHERE id = $1 AND checkpoint_seq < $2",
        )
        .bind(doc)
        .bind(seq)
        .bind(to_i64(meta.byte_count))
        .execute(&mut *tx)
        .await
        .map_err(DatabaseError::during(op))?;
        let (log_start,): (i64,) =
            sqlx::query_as::<Self::Db, (i64,)>("SELECT log_start_seq FROM documents WHERE id = $1")
                .bind(doc)
                .fetch_one(&mut *tx)
                .await
                .map_err(DatabaseError::during(op))?;
        let mut log_start = log_start;
        if let Retention::DropBeforeCheckpoint { keep_updates } = config.retention {
            let limit = to_i64(meta.head_seq.saturating_sub(keep_updates));
            let (cut,): (Option<i64>,) = sqlx::query_as::<Self::Db, (Option<i64>,)>(
                "SELECT MAX(seq) FROM checkpoints WHERE doc_id = $1 AND seq <= $2",
            )
            .bind(doc)
            .bind(limit)
            .fetch_one(&mut *tx)
            .await
            .map_err(DatabaseError::during(op))?;
            if let Some(cut) = cut.filter(|c| *c > log_start) {
                Self::drop_log_through(&mut tx, &meta.id, to_u64(cut)).await?;
                sqlx::query::<Self::Db>("UPDATE documents SET log_start_seq = $2 WHERE id = $1")
                    .bind(doc)
                    .bind(cut)
                    .execute(&mut *tx)
                    .await
                    .map_err(DatabaseError::during(op))?;
                log_start = cut;
            }
        }
        // Keep the newest checkpoints, the one at the retention cut and (for history) the
        // oldest one in every span of `history_checkpoint_every_updates` updates; drop the rest.
        let keep = to_i64(config.checkpoints_kept.max(1) as u64);
        if config.history_checkpoint_every_updates == 0 {
            sqlx::query::<Self::Db>(
                "DELETE FROM checkpoints WHERE doc_id = $1 AND seq <> $2 AND (seq < $2 OR \
                 seq NOT IN (SELECT seq FROM checkpoints WHERE doc_id = $1 \
                 ORDER BY seq DESC LIMIT $3))",
            )
            .bind(doc)
            .bind(log_start)
            .bind(keep)
            .execute(&mut *tx)
            .await
            .map_err(DatabaseError::during(op))?;
        } else {
            sqlx::query::<Self::Db>(
                "DELETE FROM checkpoints WHERE doc_id = $1 AND seq <> $2 AND (seq < $2 OR \
                 (seq NOT IN (SELECT seq FROM checkpoints WHERE doc_id = $1 \
                 ORDER BY seq DESC LIMIT $3) AND seq NOT IN (SELECT MIN(seq) \
                 FROM checkpoints WHERE doc_id = $1 GROUP BY seq / $4)))",
            )
            .bind(doc)
            .bind(log_start)
            .bind(keep)
            .bind(to_i64(config.history_checkpoint_every_updates))
            .execute(&mut *tx)
            .await
            .map_err(DatabaseError::during(op))?;
        }
        self.checkpoint_written(&meta.id, meta.head_seq, meta.byte_count);
        tx.commit().await.map_err(DatabaseError::during("commit"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_every_row() {
        for n in [0, 1, 3, 4, 5, 31, 32, 33, 255, 256, 257, 1000, 4096] {
            let c = chunks(n);
            assert_eq!(c.iter().sum::<usize>(), n);
            assert!(c.iter().all(|s| CHUNK_SIZES.contains(s)));
        }
    }

    #[test]
    fn placeholders_per_dialect() {
        let pg = values_sql("INSERT INTO t (a, b)", 2, 2, "X", true);
        assert_eq!(pg, "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) X");
        let lite = values_sql("INSERT INTO t (a, b)", 2, 2, "X", false);
        assert_eq!(lite, "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) X");
    }

    #[test]
    fn hlc_survives_the_signed_column() {
        for v in [0, 1, u64::MAX, 1 << 63, 0xdead_beef_0000_0001] {
            assert_eq!(hlc_from_i64(hlc_to_i64(v)), v);
        }
    }
}
