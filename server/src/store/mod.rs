//! Durable storage of documents: an append-only update log per document, with checkpoints.
//!
//! A [`Store`] is opened from a URL (`sqlite://path.db`, created if missing, or `postgres://…`)
//! and dispatches at run time to one of two backends, [SQLite](sqlite) or [Postgres](postgres),
//! which implement one contract (`backend.rs`: what each guarantees), share the same SQL
//! (`sql.rs`: `$n` placeholders work in both) and pass one contract test suite
//! (`tests/tests/store_contract.rs`). Migrations come from `migrations/{sqlite,postgres}/` and
//! are applied when the store opens; a database whose schema is newer than this build is refused
//! with [`OpenError::SchemaTooNew`].
//!
//! # Invariants
//! - **Durable before acknowledged.** [`Store::append`] resolves only after the transaction
//!   holding the entry has committed. Appends from many tasks are batched into few transactions
//!   by the group committer (`group_commit.rs`); its queue is bounded
//!   ([`StoreConfig::queue_capacity`]), so a writer that outruns the disk waits.
//! - **Dense sequence numbers.** Every document's log is numbered 1, 2, 3, … with no gap; the
//!   store assigns numbers inside the committing transaction. Appends submitted from one task
//!   are numbered in submission order.
//! - **Append-only.** Log entries are never rewritten. Retention may drop a prefix of the log,
//!   and only down to a sequence number where a checkpoint is kept.
//! - **Loading never replays the whole log** when checkpoints are on: it starts from the newest
//!   checkpoint, which a background task writes every
//!   [`StoreConfig::checkpoint_every_updates`] updates or
//!   [`StoreConfig::checkpoint_every_bytes`] bytes.
//! - **Stored bytes never panic.** A delta or checkpoint that does not decode or apply is
//!   reported as [`ReadError::CorruptDelta`] / [`ReadError::CorruptCheckpoint`] naming the
//!   document and sequence number; other documents are unaffected.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_engine::{Delta, DocId, Document, ReplicaId};
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;

mod backend;
pub mod changes;
mod checkpoint;
mod compress;
mod error;
mod group_commit;
mod journal;
pub mod postgres;
mod runs;
mod sql;
pub mod sqlite;
pub(crate) mod webhooks;

pub use error::{AppendError, CheckpointDamage, DatabaseError, DeltaDamage, OpenError, ReadError};
pub use sqlite::SqliteSynchronous;

use backend::{AnyBackend, Backend as _, JournalDrain as _};
pub(crate) use backend::{DocCounters, Parts, StoredCheckpoint, TailEntry};
use checkpoint::{CheckpointQueue, checkpointer, rebuild_blocking};

/// The SQLite journal and log-run blob codecs, for the fuzz targets in `server/fuzz/` and their
/// replay in `server/tests/fuzz_regressions.rs` only. Not an API: the formats are private to the
/// store (see `journal.rs`, `runs.rs`) and may change in any release.
#[doc(hidden)]
pub mod fuzzing {
    /// One SQLite `journal` row: every entry of one group-commit transaction.
    pub mod journal {
        pub use crate::store::journal::{JournalEntry, begin, decode, push};
    }
    /// One SQLite `update_runs` row: consecutive log entries of one document.
    pub mod runs {
        pub use crate::store::compress::Packer;
        pub use crate::store::runs::{
            RUN_MAX_PACKED_BYTES, RunEntry, begin, decode, entries_of, push, seal,
        };
    }
}

/// Where a document's log ends ([`Store::heads`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocHead {
    pub doc: DocId,
    pub head_seq: u64,
    pub deleted: bool,
}

/// Default capacity of the group-commit queue, in append requests.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16_384;
/// Default upper bound on log entries committed in one transaction.
pub const DEFAULT_MAX_BATCH_ENTRIES: usize = 4_096;
/// Default upper bound on delta bytes committed in one transaction.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Capacity of the queue of documents waiting for a background checkpoint. A trigger that finds
/// it full is dropped harmlessly: the next commit to that document triggers again.
pub const CHECKPOINT_QUEUE_CAPACITY: usize = 1_024;

/// How the store behaves. Every field has a documented default ([`StoreConfig::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Write a checkpoint once this many updates have been appended since the last one
    /// (default 1,000). 0 turns this trigger off.
    pub checkpoint_every_updates: u64,
    /// Write a checkpoint once this many delta bytes have been appended since the last one
    /// (default 1 MiB). 0 turns this trigger off.
    pub checkpoint_every_bytes: u64,
    /// Checkpoints kept per document, newest first (default 4). The checkpoint at the retention
    /// cut is always kept in addition. Older checkpoints only speed up [`Store::state_at`].
    pub checkpoints_kept: usize,
    /// Besides the newest ones, keep the oldest checkpoint in every span of this many updates
    /// (default 5,000), so that [`Store::state_at`] at any version replays at most about this
    /// many updates plus one checkpoint interval (admins' history view). 0 keeps only the newest.
    pub history_checkpoint_every_updates: u64,
    /// Capacity of the group-commit queue, in append requests (default
    /// [`DEFAULT_QUEUE_CAPACITY`]). When it is full, [`Store::append`] waits.
    pub queue_capacity: usize,
    /// Most log entries per transaction (default [`DEFAULT_MAX_BATCH_ENTRIES`]). A single
    /// request larger than this is still committed whole, in its own transaction.
    pub max_batch_entries: usize,
    /// Most delta bytes per transaction (default [`DEFAULT_MAX_BATCH_BYTES`]), with the same
    /// exception.
    pub max_batch_bytes: usize,
    /// SQLite only: a drain cycle of the journal (see [`sqlite`]) starts once it holds this
    /// many entries (default 65,536), or 16 MiB of deltas. The more entries per document a
    /// drain moves, the fewer pages it writes per entry. The journaled entries are also kept in
    /// memory until drained; at twice this (drains fall behind or fail), appends wait for a
    /// full drain. 1 starts a drain cycle after every group commit.
    pub journal_max_entries: usize,
    /// SQLite only: entries one drain transaction moves (whole documents, so a little more;
    /// default 4,096). A drain cycle is cut into such slices, with group commits in between,
    /// so that appends wait for one slice at most (10–20 ms on the development VM), not for
    /// the whole cycle.
    pub journal_slice_entries: usize,
    /// SQLite only: the journal is drained once its oldest entry is this old (default 1 s), and
    /// whenever the group committer has been idle for 50 ms. Another process reading the same
    /// file sees an append once it is drained.
    pub journal_max_age: Duration,
    /// Which part of the log to keep (default [`Retention::KeepAll`]).
    pub retention: Retention,
    /// SQLite's `synchronous` setting (default [`SqliteSynchronous::Full`]); ignored by Postgres.
    /// See `docs/storage.md` for what each promises on a process kill and on power loss.
    pub sqlite_synchronous: SqliteSynchronous,
    /// Connections for reads: the SQLite reader pool, or the whole Postgres pool (default 4).
    pub pool_size: u32,
    /// How long a connection may wait for a lock (SQLite `busy_timeout`) or for a pooled
    /// connection (default 30 s).
    pub busy_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            checkpoint_every_updates: 1_000,
            checkpoint_every_bytes: 1024 * 1024,
            checkpoints_kept: 4,
            history_checkpoint_every_updates: 5_000,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_batch_entries: DEFAULT_MAX_BATCH_ENTRIES,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            journal_max_entries: 65_536,
            journal_slice_entries: 4_096,
            journal_max_age: Duration::from_secs(1),
            retention: Retention::KeepAll,
            sqlite_synchronous: SqliteSynchronous::Full,
            pool_size: 4,
            busy_timeout: Duration::from_secs(30),
        }
    }
}

/// Which part of a document's update log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Keep every log entry, so admins can inspect the whole history (the default).
    #[default]
    KeepAll,
    /// After each checkpoint, drop log entries up to the newest checkpoint that still leaves at
    /// least `keep_updates` entries after it. The checkpoint at the cut is kept, so the state at
    /// every sequence number from the cut on can still be rebuilt.
    DropBeforeCheckpoint { keep_updates: u64 },
}

/// One update to append: a delta and who sent it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub doc: DocId,
    /// HLC time of the update (`HlcTimestamp::time`), 0 when it has none.
    pub hlc: u64,
    /// The replica (Yjs client id) that produced the update.
    pub replica: ReplicaId,
    /// The authenticated user, once authentication exists.
    pub author: Option<String>,
    delta_bytes: Vec<u8>,
}

impl fmt::Debug for NewEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEntry")
            .field("doc", &self.doc)
            .field("hlc", &self.hlc)
            .field("replica", &self.replica)
            .field("author", &self.author)
            .field("bytes", &self.delta_bytes.len())
            .finish()
    }
}

impl NewEntry {
    /// An entry for `delta`, encoded here (in the caller's task) with `rmp_serde::to_vec_named`.
    pub fn new(
        doc: DocId,
        delta: &Delta,
        hlc: u64,
        replica: ReplicaId,
        author: Option<String>,
    ) -> Self {
        Self {
            doc,
            hlc,
            replica,
            author,
            delta_bytes: encode_delta(delta),
        }
    }

    /// The encoded delta.
    pub fn delta_bytes(&self) -> &[u8] {
        &self.delta_bytes
    }
}

/// Encodes a delta the way the log stores it.
pub fn encode_delta(delta: &Delta) -> Vec<u8> {
    // Encoding plain owned data into a Vec cannot fail; an empty blob would be caught as
    // corrupt on load rather than silently lost.
    rmp_serde::to_vec_named(delta).unwrap_or_default()
}

/// One stored log entry.
#[derive(Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    pub hlc: u64,
    pub replica: u32,
    pub author: Option<String>,
    pub byte_size: u64,
    pub committed_at_ms: u64,
    pub delta_bytes: Vec<u8>,
}

impl fmt::Debug for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogEntry")
            .field("seq", &self.seq)
            .field("hlc", &self.hlc)
            .field("replica", &self.replica)
            .field("author", &self.author)
            .field("byte_size", &self.byte_size)
            .field("committed_at_ms", &self.committed_at_ms)
            .finish_non_exhaustive()
    }
}

impl LogEntry {
    /// Decodes the stored delta; `doc` names the document in the error.
    pub fn delta(&self, doc: &DocId) -> Result<Delta, ReadError> {
        decode_delta(doc, self.seq, &self.delta_bytes)
    }
}

pub(crate) fn decode_delta(doc: &DocId, seq: u64, bytes: &[u8]) -> Result<Delta, ReadError> {
    rmp_serde::from_slice(bytes).map_err(|e| ReadError::CorruptDelta {
        doc: doc.clone(),
        seq,
        damage: DeltaDamage::Decode(Arc::new(e)),
    })
}

/// What the store knows about a document, without its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    pub id: DocId,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// When it was soft-deleted; `None` while it is live.
    pub deleted_at_ms: Option<u64>,
    /// The last sequence number, which is also the number of updates ever appended.
    pub head_seq: u64,
    /// Total size of every delta ever appended, in bytes.
    pub byte_count: u64,
    /// Sequence number of the newest checkpoint (0 = none).
    pub checkpoint_seq: u64,
    /// Entries up to this sequence number were dropped by retention (0 = none dropped).
    pub log_start_seq: u64,
}

impl DocMeta {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at_ms.is_some()
    }
}

/// A document as loaded from the store.
#[derive(Debug)]
pub struct LoadedDoc {
    pub document: Document,
    /// The sequence number of the last update the document includes.
    pub head_seq: u64,
    pub meta: DocMeta,
}

/// A page of [`Store::list_documents`]: ids strictly after `after`, at most `limit` of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub after: Option<DocId>,
    pub limit: u32,
}

/// A handle to the store. Cheap to clone; every clone shares the same pools and group committer.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    backend: Arc<AnyBackend>,
    config: StoreConfig,
    commits: mpsc::Sender<group_commit::Command>,
    feed: Arc<changes::CommitFeed>,
}

/// `url` fit to print: a password in the user info (`postgres://user:secret@host/db`) or in a
/// `password=` parameter becomes `***`; user, host, port, database and the other parameters
/// stay. Anything that is not a URL is redacted the same way, as well as it can be (a malformed
/// URL leans towards hiding too much).
pub fn redacted_url(url: &str) -> String {
    const MASK: &str = "***";
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    if let Some(scheme_end) = url.find("://").map(|i| i + 3) {
        // The user info ends at the last `@` before the query: a password may hold a raw `/`.
        let before_query = url[scheme_end..]
            .find(['?', '#'])
            .map_or(url.len(), |i| scheme_end + i);
        if let Some(at) = url[scheme_end..before_query]
            .rfind('@')
            .map(|i| scheme_end + i)
        {
            let user_info = &url[scheme_end..at];
            out.push_str(&url[..scheme_end]);
            match user_info.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(user_info),
            }
            rest = &url[at..];
        }
    }
    // `password=…` anywhere after that (query parameters, or a key=value string), up to the
    // next separator.
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(i) = lower.find("password=") else {
            out.push_str(rest);
            return out;
        };
        let value = i + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str(MASK);
        let end = rest[value..]
            .find(['&', ' ', '#', ';'])
            .map_or(rest.len(), |j| value + j);
        rest = &rest[end..];
    }
}

impl Store {
    /// Opens (and migrates) the store at `url`: `sqlite://path.db` (created if missing),
    /// `sqlite::memory:`, or `postgres://user:password@host/db`. Must be called inside a tokio
    /// runtime: it spawns the group committer and the checkpointer.
    pub async fn open(url: &str, config: StoreConfig) -> Result<Store, OpenError> {
        let backend = if url.starts_with("sqlite:") {
            AnyBackend::Sqlite(Box::new(sqlite::SqliteBackend::open(url, &config).await?))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            AnyBackend::Postgres(postgres::PostgresBackend::open(url, &config).await?)
        } else {
            return Err(OpenError::UnsupportedUrl {
                url: redacted_url(url),
            });
        };
        let backend = Arc::new(backend);
        let (cp_tx, cp_rx) = mpsc::channel(CHECKPOINT_QUEUE_CAPACITY);
        let checkpoints = Arc::new(CheckpointQueue {
            tx: cp_tx,
            pending: Mutex::new(HashSet::new()),
        });
        let feed = Arc::new(changes::CommitFeed::default());
        let commits = group_commit::spawn(
            backend.clone(),
            config.clone(),
            checkpoints.clone(),
            feed.clone(),
        );
        // The checkpointer holds the queue weakly: it stops when the group committer (and
        // with it the last strong handle) is gone.
        tokio::spawn(checkpointer(
            backend.clone(),
            config.clone(),
            cp_rx,
            Arc::downgrade(&checkpoints),
        ));
        Ok(Store {
            shared: Arc::new(Shared {
                backend,
                config,
                commits,
                feed,
            }),
        })
    }

    /// The documents each commit changed, for a consumer in this process (webhooks).
    pub fn commit_feed(&self) -> &changes::CommitFeed {
        &self.shared.feed
    }

    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// Which backend this store runs on: `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        self.shared.backend.name()
    }

    /// Appends one entry and resolves to its sequence number once it is committed.
    pub async fn append(&self, entry: NewEntry) -> Result<u64, AppendError> {
        let doc = entry.doc.clone();
        match self.append_batch(vec![entry]).await?[..] {
            [seq] => Ok(seq),
            _ => Err(AppendError::Inconsistent {
                doc: Some(doc),
                reason: "the group committer did not answer one sequence number per entry",
            }),
        }
    }

    /// Appends entries for one or many documents atomically (one transaction) and resolves to
    /// their sequence numbers, in order, once committed. Entries for a soft-deleted document
    /// fail the whole request with [`AppendError::DocumentDeleted`].
    pub async fn append_batch(&self, entries: Vec<NewEntry>) -> Result<Vec<u64>, AppendError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.shared
            .commits
            .send(group_commit::Command::Append { entries, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Resolves once every append submitted before it has committed (or failed).
    pub async fn flush(&self) -> Result<(), AppendError> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .commits
            .send(group_commit::Command::Flush { reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)
    }

    /// Moves every journaled append into the per-document log now (SQLite; nothing to do on
    /// Postgres). Reads through this store never need it: they merge the journal in. It is for
    /// tools and tests that read or edit the log tables (`update_runs`, `updates`) directly.
    pub async fn drain_journal(&self) -> Result<(), AppendError> {
        self.flush().await?;
        match self.shared.backend.journal() {
            Some(journal) => Ok(journal.drain_all().await?),
            None => Ok(()),
        }
    }

    /// Loads a document as replica `replica`: the newest checkpoint plus the log after it.
    /// `Ok(None)` if the document was never written; [`ReadError::DocumentDeleted`] if it is
    /// soft-deleted.
    pub async fn load(
        &self,
        doc: &DocId,
        replica: ReplicaId,
    ) -> Result<Option<LoadedDoc>, ReadError> {
        let Some(parts) = self.shared.backend.parts(doc, None).await? else {
            return Ok(None);
        };
        if parts.meta.is_deleted() {
            return Err(ReadError::DocumentDeleted { doc: doc.clone() });
        }
        let head_seq = parts.upto;
        let (document, meta) = rebuild_blocking(doc, replica, parts).await?;
        Ok(Some(LoadedDoc {
            document,
            head_seq,
            meta,
        }))
    }

    /// The document as it was right after update `seq` (0 = empty), rebuilt from the nearest
    /// checkpoint at or before `seq` plus replay. Works on soft-deleted documents too.
    pub async fn state_at(
        &self,
        doc: &DocId,
        seq: u64,
        replica: ReplicaId,
    ) -> Result<Document, ReadError> {
        let Some(parts) = self.shared.backend.parts(doc, Some(seq)).await? else {
            return Err(ReadError::NotFound { doc: doc.clone() });
        };
        if seq > parts.meta.head_seq {
            return Err(ReadError::SeqOutOfRange {
                doc: doc.clone(),
                seq,
                head: parts.meta.head_seq,
            });
        }
        if seq < parts.meta.log_start_seq {
            return Err(ReadError::Truncated {
                doc: doc.clone(),
                seq,
                log_start_seq: parts.meta.log_start_seq,
            });
        }
        rebuild_blocking(doc, replica, parts)
            .await
            .map(|(document, _)| document)
    }

    /// Up to `limit` log entries with `seq >= from_seq`, ascending, for history and for
    /// catching up a peer. [`ReadError::Truncated`] if retention dropped `from_seq`.
    pub async fn read_log(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let Some(meta) = self.shared.backend.doc_meta(doc).await? else {
            return Err(ReadError::NotFound { doc: doc.clone() });
        };
        let from_seq = from_seq.max(1);
        if from_seq <= meta.log_start_seq {
            return Err(ReadError::Truncated {
                doc: doc.clone(),
                seq: from_seq,
                log_start_seq: meta.log_start_seq,
            });
        }
        self.shared.backend.read_log(doc, from_seq, limit).await
    }

    /// The head seq of each of `docs` that was ever written, and whether it is soft-deleted
    /// (absent documents are left out). One query on PostgreSQL; on SQLite, one metadata read
    /// per document.
    pub async fn heads(&self, docs: &[DocId]) -> Result<Vec<DocHead>, ReadError> {
        if let AnyBackend::Postgres(pg) = &*self.shared.backend {
            let ids: Vec<&str> = docs.iter().map(DocId::as_str).collect();
            let rows = pg.heads(&ids).await?;
            return Ok(rows
                .into_iter()
                .filter_map(|(id, head_seq, deleted)| {
                    Some(DocHead {
                        doc: DocId::new(&id).ok()?,
                        head_seq,
                        deleted,
                    })
                })
                .collect());
        }
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs {
            if let Some(meta) = self.shared.backend.doc_meta(doc).await? {
                out.push(DocHead {
                    doc: doc.clone(),
                    head_seq: meta.head_seq,
                    deleted: meta.is_deleted(),
                });
            }
        }
        Ok(out)
    }

    /// Metadata of one document, deleted or not; `None` if it was never written.
    pub async fn document(&self, doc: &DocId) -> Result<Option<DocMeta>, ReadError> {
        self.shared.backend.doc_meta(doc).await
    }

    /// Documents whose id starts with `prefix` (empty = all), deleted ones included, in id
    /// order (bytewise), one page at a time.
    pub async fn list_documents(
        &self,
        prefix: &str,
        page: &Page,
    ) -> Result<Vec<DocMeta>, ReadError> {
        self.shared.backend.list(prefix, page).await
    }

    /// Marks a document deleted; its data stays. `false` if it does not exist or was already
    /// deleted.
    pub async fn soft_delete(&self, doc: &DocId) -> Result<bool, DatabaseError> {
        self.shared.backend.set_deleted(doc, Some(now_ms())).await
    }

    /// Reverses [`Store::soft_delete`]. `false` if it does not exist or was not deleted.
    pub async fn undelete(&self, doc: &DocId) -> Result<bool, DatabaseError> {
        self.shared.backend.set_deleted(doc, None).await
    }

    /// Writes a checkpoint at the document's head now, whatever the thresholds say, and applies
    /// retention. Returns the checkpoint's sequence number (`None` if the document is empty or
    /// does not exist).
    pub async fn checkpoint_now(&self, doc: &DocId) -> Result<Option<u64>, ReadError> {
        checkpoint::take(&self.shared.backend, &self.shared.config, doc, true).await
    }

    /// Waits for pending appends, then closes the connections. Later calls fail.
    pub async fn close(&self) {
        let _ = self.flush().await;
        self.shared.backend.close().await;
    }
}

/// The newest migration this build knows.
fn known_schema_version(migrator: &sqlx::migrate::Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// [`OpenError::SchemaTooNew`] if the database was migrated past what this build knows.
pub(crate) fn check_schema_version(
    found: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), OpenError> {
    let known = known_schema_version(migrator);
    match found {
        Some(found) if found > known => Err(OpenError::SchemaTooNew { found, known }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn printed_urls_have_no_password() {
        let cases = [
            (
                "postgres://lattice:s3cret@db.example:5433/app",
                "postgres://lattice:***@db.example:5433/app",
            ),
            (
                "postgresql://u:p%40ss/w@h/db?sslmode=require&password=again&application_name=x",
                "postgresql://u:***@h/db?sslmode=require&password=***&application_name=x",
            ),
            (
                "postgres://u@h/db?PassWord=x",
                "postgres://u@h/db?PassWord=***",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("sqlite://lattice.db", "sqlite://lattice.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("host=h password=x dbname=d", "host=h password=*** dbname=d"),
            ("mysql://root:x@h/d", "mysql://root:***@h/d"),
        ];
        for (url, printed) in cases {
            assert_eq!(redacted_url(url), printed, "{url}");
        }
    }
}
