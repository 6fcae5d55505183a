//! The webhook tables (migration 0005; docs/webhooks.md): endpoints, per-endpoint cursors into
//! each document's log, and the outbox of events. The same SQL on both backends, run on the
//! backend's own pools: reads on the read pool, writes as derived writes (on SQLite the single
//! writer connection with `synchronous = NORMAL`, so they cost the commit path no fsync; a
//! power loss may roll the last of them back, and the former then forms those events again from
//! the log).
//!
//! **Invariant:** an event row and the cursor that covers its entries are written in one
//! transaction, so after any crash an entry is either in exactly one formed event or still after
//! the cursor.

use super::backend::AnyBackend;
use super::sql::{SqlBackend as _, to_i64, to_u64};
use super::{AppendError, DatabaseError, Store};

/// For `map_err`: a database error in the webhook tables.
fn db(e: sqlx::Error) -> DatabaseError {
    DatabaseError {
        op: "webhooks",
        source: std::sync::Arc::new(e),
    }
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointRow {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until_ms: Option<u64>,
    /// Comma-separated event types.
    pub event_types: String,
    pub doc_pattern: Option<String>,
    pub description: String,
    pub created_at_ms: u64,
    pub failing_since_ms: Option<u64>,
    pub disabled_at_ms: Option<u64>,
    pub disabled_reason: Option<String>,
}

/// An event as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventRow {
    pub id: String,
    pub endpoint_id: String,
    pub doc_id: String,
    pub event_type: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub payload: String,
    pub created_at_ms: u64,
    pub attempts: u64,
    pub next_attempt_at_ms: Option<u64>,
    pub delivered_at_ms: Option<u64>,
    pub failed_at_ms: Option<u64>,
    pub last_status: Option<u64>,
    pub last_error: Option<String>,
}

/// An event to put in the outbox, and the cursor it moves, as `(from, to)`: formed only if the
/// cursor is still at `from` (no row counts as 0), so a concurrent replay or another node
/// forming the same entries is never overwritten. `None` for events that do not come from the
/// log's entries (deletes, undeletes).
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub id: String,
    pub endpoint_id: String,
    pub doc_id: String,
    pub event_type: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub payload: String,
    pub created_at_ms: u64,
    pub cursor: Option<(u64, u64)>,
}

/// A due event with what its delivery needs of its endpoint.
#[derive(Debug, Clone)]
pub(crate) struct DueEvent {
    pub id: String,
    pub endpoint_id: String,
    pub payload: String,
    pub attempts: u64,
    pub url: String,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until_ms: Option<u64>,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub event_id: String,
    pub endpoint_id: String,
    pub at_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// `Some(t)`: failed, try again at `t`; `None` with `delivered`: done.
    pub next_attempt_at_ms: Option<u64>,
    pub delivered: bool,
    /// Disable the endpoint if it has been failing since before this time.
    pub disable_if_failing_since_before_ms: u64,
}

const ENDPOINT_COLUMNS: &str = "id, url, secret, previous_secret, previous_secret_until_ms, \
     event_types, doc_pattern, description, created_at_ms, failing_since_ms, disabled_at_ms, \
     disabled_reason";

const EVENT_COLUMNS: &str = "id, endpoint_id, doc_id, event_type, first_seq, last_seq, payload, \
     created_at_ms, attempts, next_attempt_at_ms, delivered_at_ms, failed_at_ms, last_status, \
     last_error";

type EndpointTuple = (
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

type EventTuple = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn endpoint(t: EndpointTuple) -> EndpointRow {
    EndpointRow {
        id: t.0,
        url: t.1,
        secret: t.2,
        previous_secret: t.3,
        previous_secret_until_ms: t.4.map(to_u64),
        event_types: t.5,
        doc_pattern: t.6,
        description: t.7,
        created_at_ms: to_u64(t.8),
        failing_since_ms: t.9.map(to_u64),
        disabled_at_ms: t.10.map(to_u64),
        disabled_reason: t.11,
    }
}

fn event(t: EventTuple) -> EventRow {
    EventRow {
        id: t.0,
        endpoint_id: t.1,
        doc_id: t.2,
        event_type: t.3,
        first_seq: to_u64(t.4),
        last_seq: to_u64(t.5),
        payload: t.6,
        created_at_ms: to_u64(t.7),
        attempts: to_u64(t.8),
        next_attempt_at_ms: t.9.map(to_u64),
        delivered_at_ms: t.10.map(to_u64),
        failed_at_ms: t.11.map(to_u64),
        last_status: t.12.map(to_u64),
        last_error: t.13,
    }
}

/// Runs `$body` with `$b` bound to the concrete backend (SQLite or Postgres): the statements
/// are the same text, sqlx needs the concrete database type.
macro_rules! on_backend {
    ($store:expr, $b:ident => $body:expr) => {
        match &*$store.shared.backend {
            AnyBackend::Sqlite(inner) => {
                let $b = &**inner;
                $body
            }
            AnyBackend::Postgres(inner) => {
                let $b = inner;
                $body
            }
        }
    };
}

impl Store {
    /// Stores a new endpoint and gives it a cursor at the head of every existing document, so
    /// it receives only what is committed after it was added.
    pub(crate) async fn webhook_insert_endpoint(
        &self,
        row: &EndpointRow,
    ) -> Result<(), DatabaseError> {
        // SQLite's `documents.head_seq` lags the journal until it is drained.
        self.drain_journal().await.map_err(|e| match e {
            AppendError::Database(e) => e,
            other => db(sqlx::Error::Protocol(other.to_string())),
        })?;
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            )))
            .bind(&row.id)
            .bind(&row.url)
            .bind(&row.secret)
            .bind(&row.previous_secret)
            .bind(row.previous_secret_until_ms.map(to_i64))
            .bind(&row.event_types)
            .bind(&row.doc_pattern)
            .bind(&row.description)
            .bind(to_i64(row.created_at_ms))
            .bind(row.failing_since_ms.map(to_i64))
            .bind(row.disabled_at_ms.map(to_i64))
            .bind(&row.disabled_reason)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            sqlx::query(
                "INSERT INTO webhook_cursors (endpoint_id, doc_id, seq) \
                 SELECT $1, id, head_seq FROM documents",
            )
            .bind(&row.id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(DatabaseError::during("commit"))
        })
    }

    /// Every endpoint, in id order.
    pub(crate) async fn webhook_endpoints(&self) -> Result<Vec<EndpointRow>, DatabaseError> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id");
        let rows: Vec<EndpointTuple> = on_backend!(self, b => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(b.read_pool())
                .await
                .map_err(db)?
        });
        Ok(rows.into_iter().map(endpoint).collect())
    }

    /// One endpoint.
    pub(crate) async fn webhook_endpoint(
        &self,
        id: &str,
    ) -> Result<Option<EndpointRow>, DatabaseError> {
        let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1");
        let row: Option<EndpointTuple> = on_backend!(self, b => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(b.read_pool())
                .await
                .map_err(db)?
        });
        Ok(row.map(endpoint))
    }

    /// Removes an endpoint with its cursors and events; whether it existed.
    pub(crate) async fn webhook_delete_endpoint(&self, id: &str) -> Result<bool, DatabaseError> {
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            for table in ["webhook_events", "webhook_cursors"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE endpoint_id = $1"
                )))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Rotation: `secret` becomes the signing secret, the old one stays valid until
    /// `previous_until_ms`. Whether the endpoint exists.
    pub(crate) async fn webhook_rotate_secret(
        &self,
        id: &str,
        secret: &str,
        previous_until_ms: u64,
    ) -> Result<bool, DatabaseError> {
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            let done = sqlx::query(
                "UPDATE webhook_endpoints SET previous_secret = secret, \
                 previous_secret_until_ms = $3, secret = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(secret)
            .bind(to_i64(previous_until_ms))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Enables an endpoint again (after it was disabled for failing); whether it exists.
    pub(crate) async fn webhook_enable(&self, id: &str) -> Result<bool, DatabaseError> {
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            let done = sqlx::query(
                "UPDATE webhook_endpoints SET disabled_at_ms = NULL, disabled_reason = NULL, \
                 failing_since_ms = NULL WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// The endpoint's cursor for every document it has one for.
    pub(crate) async fn webhook_cursors(
        &self,
        endpoint_id: &str,
    ) -> Result<Vec<(String, u64)>, DatabaseError> {
        let rows: Vec<(String, i64)> = on_backend!(self, b => {
            sqlx::query_as("SELECT doc_id, seq FROM webhook_cursors WHERE endpoint_id = $1")
                .bind(endpoint_id)
                .fetch_all(b.read_pool())
                .await
                .map_err(db)?
        });
        Ok(rows.into_iter().map(|(d, s)| (d, to_u64(s))).collect())
    }

    /// The endpoint's cursors in `docs` (one query per 256 documents); a document without
    /// one is newer than the endpoint, so everything in its log is after the cursor.
    pub(crate) async fn webhook_cursors_of(
        &self,
        endpoint_id: &str,
        docs: &[&str],
    ) -> Result<std::collections::HashMap<String, u64>, DatabaseError> {
        let mut out = std::collections::HashMap::with_capacity(docs.len());
        for chunk in docs.chunks(256) {
            let mut sql = String::from(
                "SELECT doc_id, seq FROM webhook_cursors WHERE endpoint_id = $1 AND doc_id IN (",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", i + 2));
            }
            sql.push(')');
            let rows: Vec<(String, i64)> = on_backend!(self, b => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(endpoint_id);
                for doc in chunk {
                    q = q.bind(*doc);
                }
                q.fetch_all(b.read_pool()).await.map_err(db)?
            });
            out.extend(rows.into_iter().map(|(d, s)| (d, to_u64(s))));
        }
        Ok(out)
    }

    /// Puts events in the outbox and moves their cursors, in one transaction; an event whose
    /// cursor moved meanwhile is left out. An event whose id is already there (a replay of the
    /// same range) is scheduled again under the same id. Returns how many events were written.
    pub(crate) async fn webhook_form(&self, events: &[NewEvent]) -> Result<usize, DatabaseError> {
        if events.is_empty() {
            return Ok(0);
        }
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            let mut written = 0;
            for e in events {
                if let Some((from, to)) = e.cursor {
                    let moved = sqlx::query(
                        "INSERT INTO webhook_cursors (endpoint_id, doc_id, seq) \
                         VALUES ($1, $2, $3) ON CONFLICT (endpoint_id, doc_id) \
                         DO UPDATE SET seq = excluded.seq WHERE webhook_cursors.seq = $4",
                    )
                    .bind(&e.endpoint_id)
                    .bind(&e.doc_id)
                    .bind(to_i64(to))
                    .bind(to_i64(from))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    if moved.rows_affected() == 0 {
                        continue;
                    }
                }
                sqlx::query(
                    "INSERT INTO webhook_events (id, endpoint_id, doc_id, event_type, first_seq, \
                     last_seq, payload, created_at_ms, attempts, next_attempt_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $8) \
                     ON CONFLICT (id) DO UPDATE SET attempts = 0, \
                     next_attempt_at_ms = excluded.next_attempt_at_ms, delivered_at_ms = NULL, \
                     failed_at_ms = NULL, last_status = NULL, last_error = NULL",
                )
                .bind(&e.id)
                .bind(&e.endpoint_id)
                .bind(&e.doc_id)
                .bind(&e.event_type)
                .bind(to_i64(e.first_seq))
                .bind(to_i64(e.last_seq))
                .bind(&e.payload)
                .bind(to_i64(e.created_at_ms))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                written += 1;
            }
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok(written)
        })
    }

    /// Up to `limit` events due at `now_ms` on enabled endpoints, the longest waiting first.
    pub(crate) async fn webhook_due(
        &self,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<DueEvent>, DatabaseError> {
        type Row = (
            String,
            String,
            String,
            i64,
            String,
            String,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = on_backend!(self, b => {
            sqlx::query_as(
                "SELECT e.id, e.endpoint_id, e.payload, e.attempts, p.url, p.secret, \
                 p.previous_secret, p.previous_secret_until_ms \
                 FROM webhook_events e JOIN webhook_endpoints p ON p.id = e.endpoint_id \
                 WHERE e.next_attempt_at_ms IS NOT NULL AND e.next_attempt_at_ms <= $1 \
                 AND p.disabled_at_ms IS NULL \
                 ORDER BY e.next_attempt_at_ms, e.id LIMIT $2",
            )
            .bind(to_i64(now_ms))
            .bind(i64::from(limit))
            .fetch_all(b.read_pool())
            .await
            .map_err(db)?
        });
        Ok(rows
            .into_iter()
            .map(|r| DueEvent {
                id: r.0,
                endpoint_id: r.1,
                payload: r.2,
                attempts: to_u64(r.3),
                url: r.4,
                secret: r.5,
                previous_secret: r.6,
                previous_secret_until_ms: r.7.map(to_u64),
            })
            .collect())
    }

    /// When the next event falls due on an enabled endpoint, if any is pending.
    pub(crate) async fn webhook_next_due(&self) -> Result<Option<u64>, DatabaseError> {
        let row: (Option<i64>,) = on_backend!(self, b => {
            sqlx::query_as(
                "SELECT MIN(e.next_attempt_at_ms) FROM webhook_events e \
                 JOIN webhook_endpoints p ON p.id = e.endpoint_id \
                 WHERE e.next_attempt_at_ms IS NOT NULL AND p.disabled_at_ms IS NULL",
            )
            .fetch_one(b.read_pool())
            .await
            .map_err(db)?
        });
        Ok(row.0.map(to_u64))
    }

    /// Records attempts, in one transaction: each event's state, and each endpoint's failure
    /// streak (cleared by a success; a streak older than the threshold disables it). Returns,
    /// per attempt, whether it disabled its endpoint.
    pub(crate) async fn webhook_attempted(
        &self,
        attempts: &[Attempt],
    ) -> Result<Vec<bool>, DatabaseError> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            let mut disabled = Vec::with_capacity(attempts.len());
            for a in attempts {
                let at = to_i64(a.at_ms);
                sqlx::query(
                    "UPDATE webhook_events SET attempts = attempts + 1, \
                     next_attempt_at_ms = $2, delivered_at_ms = $3, failed_at_ms = $4, \
                     last_status = $5, last_error = $6 WHERE id = $1",
                )
                .bind(&a.event_id)
                .bind(a.next_attempt_at_ms.map(to_i64))
                .bind(a.delivered.then_some(at))
                .bind((!a.delivered && a.next_attempt_at_ms.is_none()).then_some(at))
                .bind(a.status.map(i64::from))
                .bind(&a.error)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if a.delivered {
                    sqlx::query(
                        "UPDATE webhook_endpoints SET failing_since_ms = NULL WHERE id = $1",
                    )
                    .bind(&a.endpoint_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    disabled.push(false);
                    continue;
                }
                sqlx::query(
                    "UPDATE webhook_endpoints SET failing_since_ms = $2 \
                     WHERE id = $1 AND failing_since_ms IS NULL",
                )
                .bind(&a.endpoint_id)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                let done = sqlx::query(
                    "UPDATE webhook_endpoints SET disabled_at_ms = $2, disabled_reason = $3 \
                     WHERE id = $1 AND disabled_at_ms IS NULL AND failing_since_ms < $4",
                )
                .bind(&a.endpoint_id)
                .bind(at)
                .bind(format!(
                    "failing since more than the configured time; last error: {}",
                    a.error.as_deref().unwrap_or("unknown")
                ))
                .bind(to_i64(a.disable_if_failing_since_before_ms))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                disabled.push(done.rows_affected() > 0);
            }
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok(disabled)
        })
    }

    /// The endpoint's newest events, newest first.
    pub(crate) async fn webhook_recent(
        &self,
        endpoint_id: &str,
        limit: u32,
    ) -> Result<Vec<EventRow>, DatabaseError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE endpoint_id = $1 \
             ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        );
        let rows: Vec<EventTuple> = on_backend!(self, b => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(endpoint_id)
                .bind(i64::from(limit))
                .fetch_all(b.read_pool())
                .await
                .map_err(db)?
        });
        Ok(rows.into_iter().map(event).collect())
    }

    /// Manual replay: moves the endpoint's cursors back so that entries from `from_seq` on
    /// are formed into events again (one document, or every document it has a cursor for).
    /// Returns how many cursors moved.
    pub(crate) async fn webhook_replay(
        &self,
        endpoint_id: &str,
        doc: Option<&str>,
        from_seq: u64,
    ) -> Result<u64, DatabaseError> {
        let to = to_i64(from_seq.saturating_sub(1));
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            let moved = match doc {
                Some(doc) => sqlx::query(
                    "INSERT INTO webhook_cursors (endpoint_id, doc_id, seq) VALUES ($1, $2, $3) \
                     ON CONFLICT (endpoint_id, doc_id) DO UPDATE SET seq = excluded.seq \
                     WHERE webhook_cursors.seq > excluded.seq",
                )
                .bind(endpoint_id)
                .bind(doc)
                .bind(to)
                .execute(&mut *tx)
                .await
                .map_err(db)?,
                None => sqlx::query(
                    "UPDATE webhook_cursors SET seq = $2 WHERE endpoint_id = $1 AND seq > $2",
                )
                .bind(endpoint_id)
                .bind(to)
                .execute(&mut *tx)
                .await
                .map_err(db)?,
            };
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok(moved.rows_affected())
        })
    }

    /// Drops delivered and given-up events older than `before_ms`; how many.
    pub(crate) async fn webhook_prune(&self, before_ms: u64) -> Result<u64, DatabaseError> {
        on_backend!(self, b => {
            let mut tx = b.begin_write_derived().await?;
            let done = sqlx::query(
                "DELETE FROM webhook_events WHERE next_attempt_at_ms IS NULL \
                 AND created_at_ms < $1",
            )
            .bind(to_i64(before_ms))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            tx.commit().await.map_err(DatabaseError::during("commit"))?;
            Ok(done.rows_affected())
        })
    }
}
