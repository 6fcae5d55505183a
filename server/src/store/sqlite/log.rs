//! The stored log on SQLite, `update_runs` (format in [`crate::store::runs`]): finding and
//! decoding the runs a read needs, and retention's trimming of them.

use std::borrow::Cow;

use lattice_engine::DocId;
use sqlx::sqlite::SqliteConnection;

use super::SqliteBackend;
use crate::store::compress::Packer;
use crate::store::runs::{self, RunEntry};
use crate::store::sql::SqlBackend as _;
use crate::store::sql::{to_i64, to_u64};
use crate::store::{DatabaseError, DeltaDamage, LogEntry, ReadError, TailEntry};

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
) -> Result<Vec<StoredRun>, DatabaseError> {
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
    .map_err(DatabaseError::during(op))?;
    Ok(rows
        .into_iter()
        .map(|(first, last, blob)| (to_u64(first), to_u64(last), blob))
        .collect())
}

/// The entries of a stored run of `doc` (decompressed if need be); a run that does not decode
/// is corrupt from its first entry.
fn run_entries<'a>(doc: &DocId, run: &'a StoredRun) -> Result<Cow<'a, [u8]>, ReadError> {
    runs::entries_of(&run.2).map_err(|reason| run_damage(doc, run, reason))
}

/// Decodes the entries of a stored run of `doc` ([`run_entries`]).
fn decode_run<'a>(
    doc: &DocId,
    run: &StoredRun,
    entries: &'a [u8],
) -> Result<Vec<RunEntry<'a>>, ReadError> {
    runs::decode(run.0, run.1, entries).map_err(|reason| run_damage(doc, run, reason))
}

fn run_damage(doc: &DocId, run: &StoredRun, reason: String) -> ReadError {
    let (first, last, _) = *run;
    ReadError::CorruptDelta {
        doc: doc.clone(),
        seq: first,
        damage: DeltaDamage::Run {
            first,
            last,
            reason,
        },
    }
}

/// Retention on the SQLite log: drops the runs that end at or below `cut` and trims the one
/// that straddles it (rewritten to start at `cut + 1`).
pub(super) async fn drop_runs_through(
    conn: &mut SqliteConnection,
    doc: &str,
    cut: u64,
) -> Result<(), DatabaseError> {
    let op = "checkpoint";
    sqlx::query("DELETE FROM update_runs WHERE doc_id = $1 AND first_seq <= $2 AND last_seq <= $2")
        .bind(doc)
        .bind(to_i64(cut))
        .execute(&mut *conn)
        .await
        .map_err(DatabaseError::during(op))?;
    let straddling: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT first_seq, last_seq, entries FROM update_runs \
         WHERE doc_id = $1 AND first_seq <= $2 ORDER BY first_seq LIMIT 1",
    )
    .bind(doc)
    .bind(to_i64(cut))
    .fetch_optional(&mut *conn)
    .await
    .map_err(DatabaseError::during(op))?;
    let Some((first, last, blob)) = straddling else {
        return Ok(());
    };
    let trimmed = runs::entries_of(&blob).and_then(|entries| {
        let mut kept = runs::begin(entries.len());
        for e in runs::decode(to_u64(first), to_u64(last), &entries)? {
            if e.seq > cut {
                runs::push(&mut kept, &e);
            }
        }
        Ok(kept)
    });
    let kept = match trimmed {
        Ok(kept) => runs::seal(&mut Packer::new(), kept),
        Err(reason) => {
            // Left whole: it is unreadable either way, and a reader gets the error.
            tracing::warn!(doc, first, last, %reason, "retention kept a run it cannot decode");
            return Ok(());
        }
    };
    sqlx::query(
        "UPDATE update_runs SET first_seq = $3, entries = $4 WHERE doc_id = $1 AND first_seq = $2",
    )
    .bind(doc)
    .bind(first)
    .bind(to_i64(cut + 1))
    .bind(kept)
    .execute(&mut *conn)
    .await
    .map_err(DatabaseError::during(op))?;
    Ok(())
}

/// Runs read per round trip by [`SqliteBackend::read_drained_log`].
const READ_LOG_RUNS: i64 = 8;

/// The deltas of `after+1 ..= upto` (a load's tail), from the runs that hold them.
pub(super) async fn read_tail(
    conn: &mut SqliteConnection,
    doc: &DocId,
    after: u64,
    upto: u64,
) -> Result<Vec<TailEntry>, ReadError> {
    let stored = fetch_runs(conn, doc.as_str(), after + 1, upto, i64::MAX, "load").await?;
    let mut tail = Vec::new();
    for run in &stored {
        let entries = run_entries(doc, run)?;
        for e in decode_run(doc, run, &entries)? {
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

impl SqliteBackend {
    /// Whole entries from `from_seq` on, at most `limit` (history and catch-up), read a few
    /// runs at a time in one snapshot.
    pub(super) async fn read_drained_log(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, ReadError> {
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
                let entries = run_entries(doc, run)?;
                for e in decode_run(doc, run, &entries)? {
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
        tx.rollback().await.map_err(DatabaseError::during(op))?;
        Ok(log)
    }
}
