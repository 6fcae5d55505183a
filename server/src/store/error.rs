//! Why a storage operation failed: one error type per operation family, each with only the
//! variants its callers act on.
//!
//! - [`OpenError`]: [`Store::open`](super::Store::open) (URL, migrations, crash recovery).
//! - [`ReadError`]: loading, history, metadata and listings, and forced checkpoints.
//! - [`AppendError`]: appends and what waits for them (`flush`, `drain_journal`).
//! - [`DatabaseError`]: the database failed; on its own for soft delete and undelete, which
//!   can fail no other way, and inside each of the others.
//!
//! Every type is `Clone` (a failed group commit answers each request in it with the same
//! error), so sources that are not are held in an `Arc`.

use std::sync::Arc;

use lattice_engine::{ApplyError, DocId, SnapshotError};

/// The database failed (connection, IO, constraint). `op` names the store operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("database error during {op}: {source}")]
pub struct DatabaseError {
    pub op: &'static str,
    #[source]
    pub source: Arc<sqlx::Error>,
}

impl DatabaseError {
    /// For `map_err`: a database error during `op`.
    pub(crate) fn during(op: &'static str) -> impl FnOnce(sqlx::Error) -> DatabaseError {
        move |e| DatabaseError {
            op,
            source: Arc::new(e),
        }
    }
}

/// Why [`Store::open`](super::Store::open) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The URL is neither `sqlite:` nor `postgres:`/`postgresql:`. `url` is
    /// [`redacted_url`](super::redacted_url): no password.
    #[error("unsupported database URL {url:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl { url: String },
    /// The URL has a known scheme but does not parse. `url` is redacted.
    #[error("unsupported database URL {url:?}: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The database holds a schema newer than this build knows; refuse rather than guess.
    #[error(
        "database schema version {found} is newer than this build of Lattice knows ({known}); \
         upgrade Lattice or point it at another database"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// Applying migrations failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
    /// A SQLite journal row (appends not yet moved into the log) does not decode. The store
    /// refuses to open rather than drop committed appends; the row is left as it is.
    #[error("journal row {row} is corrupt: {reason}")]
    CorruptJournal { row: i64, reason: String },
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

/// Why a read (load, history, metadata, listing) or a forced checkpoint failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The document does not exist.
    #[error("document {doc} does not exist")]
    NotFound { doc: DocId },
    /// The document is soft-deleted: it cannot be loaded until undeleted.
    #[error("document {doc} is deleted")]
    DocumentDeleted { doc: DocId },
    /// The requested sequence number is past the document's head.
    #[error("document {doc}: sequence number {seq} is past the head ({head})")]
    SeqOutOfRange { doc: DocId, seq: u64, head: u64 },
    /// Retention dropped the requested part of the log.
    #[error(
        "document {doc}: entries up to {log_start_seq} were dropped by retention (asked for {seq})"
    )]
    Truncated {
        doc: DocId,
        seq: u64,
        log_start_seq: u64,
    },
    /// A stored delta does not decode or does not apply. The document cannot be loaded past
    /// `seq`; other documents are unaffected.
    #[error("document {doc}: log entry {seq} is corrupt: {damage}")]
    CorruptDelta {
        doc: DocId,
        seq: u64,
        #[source]
        damage: DeltaDamage,
    },
    /// A stored checkpoint does not decompress or does not decode.
    #[error("document {doc}: checkpoint at {seq} is corrupt: {source}")]
    CorruptCheckpoint {
        doc: DocId,
        seq: u64,
        #[source]
        source: Arc<CheckpointDamage>,
    },
    /// The log of a document is missing an entry it should hold.
    #[error("document {doc}: log entry {seq} is missing or invalid: {reason}")]
    LogInconsistent {
        doc: DocId,
        seq: u64,
        reason: String,
    },
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The runtime is shutting down: the blocking task rebuilding the document was cancelled.
    #[error("the store is shutting down")]
    Closed,
}

/// Why a stored delta cannot be replayed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeltaDamage {
    /// The bytes do not decode as a delta.
    #[error("{0}")]
    Decode(#[source] Arc<rmp_serde::decode::Error>),
    /// The delta decodes, but the document refuses it.
    #[error("{0}")]
    Apply(#[source] ApplyError),
    /// The stored run of entries holding it does not decode (SQLite), so no entry of it can
    /// be read.
    #[error("the stored run of entries {first}..={last} does not decode: {reason}")]
    Run {
        first: u64,
        last: u64,
        reason: String,
    },
}

/// Why a stored checkpoint cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointDamage {
    /// The stored bytes do not decompress to the recorded size (or name an unknown encoding).
    #[error("the stored checkpoint does not decompress: {0}")]
    Stored(String),
    /// The snapshot does not decode.
    #[error("{0}")]
    Snapshot(#[source] SnapshotError),
}

/// Why an append (or `flush`, `drain_journal`) failed. Nothing of a failed request is known
/// to be committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The document is soft-deleted: it cannot be appended to until undeleted.
    #[error("document {doc} is deleted")]
    DocumentDeleted { doc: DocId },
    /// A SQLite journal row does not decode, so the journal cannot be drained and the writer
    /// cannot go on; the row is left as it is.
    #[error("journal row {row} is corrupt: {reason}")]
    CorruptJournal { row: i64, reason: String },
    /// The store broke one of its own invariants (a bug), for example a document's head
    /// could not be read back, or the writer's cache stayed stale after a drain.
    #[error("the store broke an invariant: {reason}")]
    Inconsistent {
        doc: Option<DocId>,
        reason: &'static str,
    },
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The store was closed (its group committer is gone).
    #[error("the store is closed")]
    Closed,
}

/// Why draining the SQLite journal failed; becomes an [`OpenError`] or an [`AppendError`].
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DrainError {
    #[error("journal row {row} is corrupt: {reason}")]
    CorruptJournal { row: i64, reason: String },
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

impl From<DrainError> for OpenError {
    fn from(e: DrainError) -> Self {
        match e {
            DrainError::CorruptJournal { row, reason } => OpenError::CorruptJournal { row, reason },
            DrainError::Database(e) => OpenError::Database(e),
        }
    }
}

impl From<DrainError> for AppendError {
    fn from(e: DrainError) -> Self {
        match e {
            DrainError::CorruptJournal { row, reason } => {
                AppendError::CorruptJournal { row, reason }
            }
            DrainError::Database(e) => AppendError::Database(e),
        }
    }
}
