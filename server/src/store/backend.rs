//! The backend contract: what [`Store`](super::Store) needs from a database, and the two
//! backends behind it.
//!
//! [`Backend`] states the guarantees every backend gives (the contract test suite,
//! `tests/tests/store_contract.rs`, checks them on each); [`AnyBackend`] picks one at run
//! time and dispatches statically. Journal draining exists only on SQLite: the group committer
//! reaches it through [`AnyBackend::journal`], which is `None` on Postgres.
//!
//! Both futures and backends cross tokio tasks (the group committer, the checkpointer, every
//! room), so every method's future is `Send`.

use std::future::Future;
use std::time::Duration;

use lattice_engine::DocId;

use super::compress::PackedCheckpoint;
use super::error::DrainError;
use super::postgres::PostgresBackend;
use super::sql::SqlBackend;
use super::sqlite::SqliteBackend;
use super::{
    AppendError, DatabaseError, DocMeta, LogEntry, NewEntry, Page, ReadError, StoreConfig,
};

/// The result of one group commit: per request its sequence numbers or why it was refused,
/// and the new counters of every document written.
pub(crate) type BatchOutcome = (Vec<Result<Vec<u64>, AppendError>>, Vec<DocCounters>);

/// What a storage backend guarantees. The [`Store`](super::Store) adds the group committer,
/// the checkpointer and the rebuilding of documents on top.
pub(crate) trait Backend: Send + Sync {
    /// Commits one group-commit batch in one transaction and answers every request in it.
    ///
    /// - **Durable before resolve:** the future resolves only after `COMMIT` returned; a
    ///   request's `Ok` sequence numbers are committed.
    /// - **Dense seqs:** each document's entries get the next numbers after its head, with no
    ///   gap and no repeat, in request order, even when other processes append to the same
    ///   database (each backend serialises them: SQLite's write lock, Postgres's row lock).
    /// - A request touching a soft-deleted document is refused whole
    ///   ([`AppendError::DocumentDeleted`]); the rest of the batch commits.
    /// - `Err` means nothing of the batch is known to be committed.
    fn append_batch(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> impl Future<Output = Result<BatchOutcome, AppendError>> + Send;

    /// A document's metadata, `None` if it was never written. Sees every append committed
    /// before the call (on SQLite, journaled ones too).
    fn doc_meta(
        &self,
        doc: &DocId,
    ) -> impl Future<Output = Result<Option<DocMeta>, ReadError>> + Send;

    /// What `doc` is rebuilt from, up to `upto` (default: the head): its newest checkpoint at
    /// or before that and the log after it, read in one snapshot. Sees every append committed
    /// before the call, each sequence number once.
    fn parts(
        &self,
        doc: &DocId,
        upto: Option<u64>,
    ) -> impl Future<Output = Result<Option<Parts>, ReadError>> + Send;

    /// Up to `limit` whole entries from `from_seq` on, ascending, each sequence number once;
    /// sees every append committed before the call.
    fn read_log(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<LogEntry>, ReadError>> + Send;

    /// One page of documents whose id starts with `prefix`, in bytewise id order, deleted
    /// ones included, with every committed append counted.
    fn list(
        &self,
        prefix: &str,
        page: &Page,
    ) -> impl Future<Output = Result<Vec<DocMeta>, ReadError>> + Send;

    /// Closes the connections, after whatever the backend must finish (SQLite drains its
    /// journal). Later calls fail.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// A backend that journals appends and moves them into the log later, between group commits
/// (SQLite). The group committer drives it; nothing else needs to.
pub(crate) trait JournalDrain: Send + Sync {
    /// How long the group committer may wait for work before it calls [`Self::step`] idle:
    /// `None` with nothing journaled (wait as long as it takes), zero during a drain cycle.
    fn idle_wait(&self) -> Option<Duration>;

    /// A step of draining, between group commits: starts a drain cycle when one is due (or
    /// the committer is `idle` and something is journaled) and drains one slice of it. A
    /// failure is logged; the entries stay journaled and reads still see them.
    fn step(&self, idle: bool) -> impl Future<Output = ()> + Send;

    /// Moves every journaled entry into the log now, in one transaction.
    fn drain_all(&self) -> impl Future<Output = Result<(), DrainError>> + Send;
}

/// The backend a [`Store`](super::Store) was opened on.
#[derive(Debug)]
pub(crate) enum AnyBackend {
    Sqlite(Box<SqliteBackend>),
    Postgres(PostgresBackend),
}

impl AnyBackend {
    /// `"sqlite"` or `"postgres"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            AnyBackend::Sqlite(_) => "sqlite",
            AnyBackend::Postgres(_) => "postgres",
        }
    }

    /// The journal to drain between group commits; `None` on a backend without one.
    /// Soft-deletes (`Some(at_ms)`) or undeletes (`None`) a document, durably; whether it
    /// changed. Appends committed after it see the new state. The same SQL on both backends
    /// ([`SqlBackend::mark_deleted`]).
    pub(crate) async fn set_deleted(
        &self,
        doc: &DocId,
        at_ms: Option<u64>,
    ) -> Result<bool, DatabaseError> {
        match self {
            AnyBackend::Sqlite(b) => b.mark_deleted(doc, at_ms).await,
            AnyBackend::Postgres(b) => b.mark_deleted(doc, at_ms).await,
        }
    }

    /// Stores `snapshot` (packed, `compress.rs`) as the checkpoint at `meta.head_seq`, then
    /// applies retention and thins old checkpoints (`config`), in one transaction. The
    /// checkpoint at the retention cut is always kept. May commit without an fsync of its own: its content can be derived
    /// again from the log. The same SQL on both backends ([`SqlBackend::store_checkpoint`]).
    pub(crate) async fn write_checkpoint(
        &self,
        meta: &DocMeta,
        snapshot: &PackedCheckpoint,
        now_ms: u64,
        config: &StoreConfig,
    ) -> Result<(), DatabaseError> {
        match self {
            AnyBackend::Sqlite(b) => b.store_checkpoint(meta, snapshot, now_ms, config).await,
            AnyBackend::Postgres(b) => b.store_checkpoint(meta, snapshot, now_ms, config).await,
        }
    }

    pub(crate) fn journal(&self) -> Option<&impl JournalDrain> {
        match self {
            AnyBackend::Sqlite(b) => Some(&**b),
            AnyBackend::Postgres(_) => None,
        }
    }
}

impl Backend for AnyBackend {
    async fn append_batch(
        &self,
        requests: &[Vec<NewEntry>],
        now_ms: u64,
    ) -> Result<BatchOutcome, AppendError> {
        match self {
            AnyBackend::Sqlite(b) => b.append_batch(requests, now_ms).await,
            AnyBackend::Postgres(b) => b.append_batch(requests, now_ms).await,
        }
    }

    async fn doc_meta(&self, doc: &DocId) -> Result<Option<DocMeta>, ReadError> {
        match self {
            AnyBackend::Sqlite(b) => b.doc_meta(doc).await,
            AnyBackend::Postgres(b) => b.doc_meta(doc).await,
        }
    }

    async fn parts(&self, doc: &DocId, upto: Option<u64>) -> Result<Option<Parts>, ReadError> {
        match self {
            AnyBackend::Sqlite(b) => b.parts(doc, upto).await,
            AnyBackend::Postgres(b) => b.parts(doc, upto).await,
        }
    }

    async fn read_log(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, ReadError> {
        match self {
            AnyBackend::Sqlite(b) => b.read_log(doc, from_seq, limit).await,
            AnyBackend::Postgres(b) => b.read_log(doc, from_seq, limit).await,
        }
    }

    async fn list(&self, prefix: &str, page: &Page) -> Result<Vec<DocMeta>, ReadError> {
        match self {
            AnyBackend::Sqlite(b) => b.list(prefix, page).await,
            AnyBackend::Postgres(b) => b.list(prefix, page).await,
        }
    }

    async fn close(&self) {
        match self {
            AnyBackend::Sqlite(b) => b.close().await,
            AnyBackend::Postgres(b) => b.close().await,
        }
    }
}

/// The stored parts a document is rebuilt from: a checkpoint and the log after it.
pub(crate) struct Parts {
    pub meta: DocMeta,
    pub checkpoint: Option<StoredCheckpoint>,
    /// The document's byte count when its newest checkpoint was written.
    pub checkpoint_byte_count: u64,
    /// The log after the checkpoint, ascending.
    pub tail: Vec<TailEntry>,
    /// The sequence number the parts were read up to.
    pub upto: u64,
}

/// A `checkpoints` row as stored: the snapshot possibly compressed (see `compress.rs`).
pub(crate) struct StoredCheckpoint {
    pub seq: u64,
    /// The `encoding` column: how `stored` holds the snapshot.
    pub encoding: i64,
    /// The snapshot's length (`byte_size`), which decompression must produce exactly.
    pub byte_size: u64,
    pub stored: Vec<u8>,
}

/// One log entry of a load's tail: what a rebuild replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TailEntry {
    pub seq: u64,
    /// Who sent it: the owner recorded for the client ids it introduced.
    pub author: Option<String>,
    pub delta: Vec<u8>,
}

/// One group-commit transaction's outcome for one document, used to trigger checkpoints.
#[derive(Debug, Clone)]
pub(crate) struct DocCounters {
    pub doc: DocId,
    pub head_seq: u64,
    pub byte_count: u64,
    pub checkpoint_seq: u64,
    pub checkpoint_byte_count: u64,
}
