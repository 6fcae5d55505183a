//! The Postgres backend, chosen with `--database-url postgres://…`.
//!
//! One pool ([`StoreConfig::pool_size`] connections) serves the group committer, the
//! checkpointer and the readers. Reads that span several statements (loading a document) run
//! in a `REPEATABLE READ` transaction so they see one snapshot. Commits are durable when
//! Postgres says so: with its default `synchronous_commit = on`, after the WAL is flushed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use lattice_engine::DocId;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row as _};

use super::backend::{Backend, BatchOutcome, DocCounters};
use super::sql::{
    INSERT_PER_ROW, INSERT_PREFIX, SqlBackend, UPSERT_PER_ROW, UPSERT_PREFIX, UPSERT_SUFFIX,
    chunks, hlc_to_i64, to_i64, to_u64, values_sql,
};
use super::{
    AppendError, DatabaseError, DocMeta, LogEntry, NewEntry, OpenError, Page, Parts, ReadError,
    StoreConfig,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug)]
pub(crate) struct PostgresBackend {
    pool: PgPool,
}

impl PostgresBackend {
    pub(crate) async fn open(url: &str, config: &StoreConfig) -> Result<Self, OpenError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| OpenError::BadUrl {
            url: super::redacted_url(url),
            source: Arc::new(e),
        })?;
        let pool = PgPoolOptions::new()
            // One more than the readers, so the group committer never waits behind them.
            .max_connections(config.pool_size.max(1) + 1)
            .acquire_timeout(config.busy_timeout)
            .connect_with(options)
            .await
            .map_err(DatabaseError::during("open"))?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    /// Whole entries from `from_seq` on, at most `limit` (history and catch-up).
    async fn read_stored_log(
        &self,
        doc: &lattice_engine::DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<crate::store::LogEntry>, DatabaseError> {
        use crate::store::sql::*;
        use sqlx::Row as _;
        let op = "read_log";
        let rows = sqlx::query::<Postgres>(
            "SELECT seq, hlc, replica, author, byte_size, committed_at_ms, delta \
                 FROM updates WHERE doc_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
        )
        .bind(doc.as_str())
        .bind(to_i64(from_seq))
        .bind(i64::from(limit))
        .fetch_all(self.read_pool())
        .await
        .map_err(DatabaseError::during(op))?;
        rows.iter()
            .map(|r| -> Result<crate::store::LogEntry, sqlx::Error> {
                let replica: i64 = r.try_get(2)?;
                Ok(crate::store::LogEntry {
                    seq: to_u64(r.try_get(0)?),
                    hlc: hlc_from_i64(r.try_get(1)?),
                    replica: u32::try_from(replica).unwrap_or(0),
                    author: r.try_get(3)?,
                    byte_size: to_u64(r.try_get(4)?),
                    committed_at_ms: to_u64(r.try_get(5)?),
                    delta_bytes: r.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(DatabaseError::during(op))
    }

    /// The head seq of each of `docs` that exists, and whether it is soft-deleted: one query
    /// for all (a cluster node's position check, `cluster/`).
    pub(crate) async fn heads(
        &self,
        docs: &[&str],
    ) -> Result<Vec<(String, u64, bool)>, DatabaseError> {
        const OP: &str = "read document heads";
        let rows = sqlx::query::<Postgres>(
            "SELECT id, head_seq, deleted_at_ms IS NOT NULL FROM documents WHERE id = ANY($1)",
        )
        .bind(docs)
        .fetch_all(self.read_pool())
        .await
        .map_err(DatabaseError::during(OP))?;
        rows.iter()
            .map(|r| -> Result<(String, u64, bool), sqlx::Error> {
                Ok((r.try_get(0)?, to_u64(r.try_get(1)?), r.try_get(2)?))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(DatabaseError::during(OP))
    }

    /// One group-commit transaction, in phases: count each document's entries, reserve their
    /// sequence numbers (an upsert on `documents` that returns the new heads; the row lock it
    /// takes serialises server processes writing the same document), assign them to the
    /// requests, insert the entries, commit. Requests touching a soft-deleted document are
    /// refused and the rest retried without them.
    async fn append_group(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<BatchOutcome, AppendError> {
        let mut rejected: HashSet<&DocId> = HashSet::new();
        loop {
            let active: Vec<bool> = requests
                .iter()
                .map(|r| r.iter().all(|e| !rejected.contains(&e.doc)))
                .collect();
            let per_doc = count_per_doc(requests, &active);
            let mut counters: HashMap<String, DocCounters> = HashMap::new();
            let mut tx = None;
            if !per_doc.is_empty() {
                let mut t = self.begin_write().await?;
                counters = reserve_seqs(&mut t, &per_doc, now_ms).await?;
                let missing: Vec<_> = per_doc
                    .keys()
                    .filter(|d| !counters.contains_key(d.as_str()))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    // Soft-deleted documents: drop the requests that touch them and
                    // try again without them.
                    t.rollback().await.map_err(DatabaseError::during(OP))?;
                    rejected.extend(missing);
                    continue;
                }
                tx = Some(t);
            }
            let (results, rows) = assign_seqs(requests, &active, &rejected, &per_doc, &counters)?;
            if let Some(mut t) = tx {
                insert_updates(&mut t, &rows, now_ms).await?;
                t.commit().await.map_err(DatabaseError::during("commit"))?;
            }
            return Ok((results, counters.into_values().collect()));
        }
    }
}

/// The store operation named in database errors of the append path.
const OP: &str = "append";

/// Per document: entries and delta bytes of the active requests. Sorted, so concurrent
/// writers to Postgres lock rows in one order.
fn count_per_doc<'r>(
    requests: &'r [Vec<NewEntry>],
    active: &[bool],
) -> BTreeMap<&'r DocId, (u64, u64)> {
    let mut per_doc: BTreeMap<&DocId, (u64, u64)> = BTreeMap::new();
    for (r, _) in requests.iter().zip(active).filter(|(_, a)| **a) {
        for e in r {
            let slot = per_doc.entry(&e.doc).or_default();
            slot.0 += 1;
            slot.1 += e.delta_bytes().len() as u64;
        }
    }
    per_doc
}

/// Reserves each document's range of sequence numbers: one upsert per chunk adds the counts
/// to `head_seq` and `byte_count` under the row lock and returns the new counters, keyed by
/// document id. A soft-deleted document returns no row.
async fn reserve_seqs(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    per_doc: &BTreeMap<&DocId, (u64, u64)>,
    now_ms: u64,
) -> Result<HashMap<String, DocCounters>, DatabaseError> {
    let now = to_i64(now_ms);
    let mut counters = HashMap::new();
    let docs: Vec<_> = per_doc.iter().collect();
    let mut at = 0;
    for n in chunks(docs.len()) {
        let sql = values_sql(UPSERT_PREFIX, UPSERT_PER_ROW, n, UPSERT_SUFFIX, true);
        let mut q = sqlx::query::<Postgres>(sqlx::AssertSqlSafe(sql));
        for (doc, (count, bytes)) in &docs[at..at + n] {
            q = q
                .bind(doc.as_str())
                .bind(now)
                .bind(now)
                .bind(to_i64(*count))
                .bind(to_i64(*bytes));
        }
        at += n;
        let rows = q
            .fetch_all(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?;
        for row in rows {
            let id: String = row.try_get(0).map_err(DatabaseError::during(OP))?;
            let get = |i: usize| -> Result<u64, DatabaseError> {
                row.try_get::<i64, _>(i)
                    .map(to_u64)
                    .map_err(DatabaseError::during(OP))
            };
            let c = DocCounters {
                doc: DocId::new(id.clone())
                    .map_err(|e| DatabaseError::during(OP)(sqlx::Error::Decode(Box::new(e))))?,
                head_seq: get(1)?,
                byte_count: get(2)?,
                checkpoint_seq: get(3)?,
                checkpoint_byte_count: get(4)?,
            };
            counters.insert(id, c);
        }
    }
    Ok(counters)
}

/// What [`assign_seqs`] answers: per request its sequence numbers or why it was refused, and
/// every entry to insert with its sequence number.
type Assigned<'r> = (Vec<Result<Vec<u64>, AppendError>>, Vec<(&'r NewEntry, u64)>);

/// Per request its sequence numbers (this batch's entries of a document follow its old head,
/// in request order) or why it was refused, and every entry to insert with its number.
fn assign_seqs<'r>(
    requests: &'r [Vec<NewEntry>],
    active: &[bool],
    rejected: &HashSet<&DocId>,
    per_doc: &BTreeMap<&DocId, (u64, u64)>,
    counters: &HashMap<String, DocCounters>,
) -> Result<Assigned<'r>, AppendError> {
    let mut next: HashMap<&str, u64> = per_doc
        .iter()
        .filter_map(|(doc, (count, _))| {
            counters
                .get(doc.as_str())
                .map(|c| (doc.as_str(), c.head_seq + 1 - count))
        })
        .collect();
    let mut results = Vec::with_capacity(requests.len());
    let mut rows: Vec<(&NewEntry, u64)> = Vec::new();
    for (r, a) in requests.iter().zip(active) {
        if !*a {
            let doc = r
                .iter()
                .find(|e| rejected.contains(&e.doc))
                .map(|e| e.doc.clone());
            results.push(Err(match doc {
                Some(doc) => AppendError::DocumentDeleted { doc },
                None => AppendError::Inconsistent {
                    doc: None,
                    reason: "a refused request names no deleted document",
                },
            }));
            continue;
        }
        let mut seqs = Vec::with_capacity(r.len());
        for e in r {
            let Some(slot) = next.get_mut(e.doc.as_str()) else {
                return Err(AppendError::Inconsistent {
                    doc: Some(e.doc.clone()),
                    reason: "no head returned for the document",
                });
            };
            seqs.push(*slot);
            rows.push((e, *slot));
            *slot += 1;
        }
        results.push(Ok(seqs));
    }
    Ok((results, rows))
}

/// Inserts the entries into `updates`, many rows per statement.
async fn insert_updates(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    rows: &[(&NewEntry, u64)],
    now_ms: u64,
) -> Result<(), DatabaseError> {
    let now = to_i64(now_ms);
    let mut at = 0;
    for n in chunks(rows.len()) {
        let sql = values_sql(INSERT_PREFIX, INSERT_PER_ROW, n, "", true);
        let mut q = sqlx::query::<Postgres>(sqlx::AssertSqlSafe(sql));
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
        q.execute(&mut **tx)
            .await
            .map_err(DatabaseError::during(OP))?;
    }
    Ok(())
}

impl Backend for PostgresBackend {
    async fn append_batch(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<BatchOutcome, AppendError> {
        self.append_group(requests, now_ms).await
    }

    async fn doc_meta(&self, doc: &DocId) -> Result<Option<DocMeta>, ReadError> {
        Ok(self.stored_meta(doc).await?)
    }

    async fn parts(&self, doc: &DocId, upto: Option<u64>) -> Result<Option<Parts>, ReadError> {
        self.stored_parts(doc, upto, 0).await
    }

    async fn read_log(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, ReadError> {
        Ok(self.read_stored_log(doc, from_seq, limit).await?)
    }

    async fn list(&self, prefix: &str, page: &Page) -> Result<Vec<DocMeta>, ReadError> {
        Ok(self.stored_list(prefix, page).await?)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

impl SqlBackend for PostgresBackend {
    type Db = Postgres;

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Postgres>, DatabaseError> {
        self.pool
            .begin()
            .await
            .map_err(DatabaseError::during("begin"))
    }

    async fn begin_read(&self) -> Result<sqlx::Transaction<'static, Postgres>, DatabaseError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(DatabaseError::during("begin"))
    }

    /// Postgres caches no heads: every append reads them under the row lock of its upsert.
    fn forget_head(&self, _doc: &lattice_engine::DocId) {}

    /// Checkpoints are written like everything else.
    async fn begin_write_derived(
        &self,
    ) -> Result<sqlx::Transaction<'static, Postgres>, DatabaseError> {
        self.begin_write().await
    }

    /// Nothing cached to bring forward either.
    fn checkpoint_written(&self, _doc: &lattice_engine::DocId, _seq: u64, _byte_count: u64) {}

    /// The deltas of `after+1 ..= upto` (a load's tail).
    async fn read_tail(
        conn: &mut sqlx::PgConnection,
        doc: &lattice_engine::DocId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<crate::store::TailEntry>, ReadError> {
        use crate::store::sql::{to_i64, to_u64};
        use sqlx::Row as _;
        let op = "load";
        let rows = sqlx::query::<Postgres>(
            "SELECT seq, author, delta FROM updates WHERE doc_id = $1 AND seq > $2 \
             AND seq <= $3 ORDER BY seq",
        )
        .bind(doc.as_str())
        .bind(to_i64(after))
        .bind(to_i64(upto))
        .fetch_all(&mut *conn)
        .await
        .map_err(DatabaseError::during(op))?;
        let tail = rows
            .iter()
            .map(|r| -> Result<crate::store::TailEntry, sqlx::Error> {
                Ok(crate::store::TailEntry {
                    seq: to_u64(r.try_get(0)?),
                    author: r.try_get(1)?,
                    delta: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(DatabaseError::during(op))?;
        Ok(tail)
    }

    /// Retention: drops the log entries at or below `cut`.
    async fn drop_log_through(
        conn: &mut sqlx::PgConnection,
        doc: &lattice_engine::DocId,
        cut: u64,
    ) -> Result<(), DatabaseError> {
        sqlx::query::<Postgres>("DELETE FROM updates WHERE doc_id = $1 AND seq <= $2")
            .bind(doc.as_str())
            .bind(crate::store::sql::to_i64(cut))
            .execute(&mut *conn)
            .await
            .map_err(DatabaseError::during("checkpoint"))?;
        Ok(())
    }
}

/// Refuses a schema newer than this build, then applies pending migrations (sqlx takes an
/// advisory lock, so servers starting together migrate once).
async fn migrate(pool: &PgPool) -> Result<(), OpenError> {
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(DatabaseError::during("migrate"))?;
    if exists {
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
