//! Documents rebuilt from their newest checkpoint plus the log after it, and checkpoints
//! written in the background so that the tail stays short.
//!
//! After each group commit, a document past [`StoreConfig::checkpoint_every_updates`] updates
//! or [`StoreConfig::checkpoint_every_bytes`] bytes since its last checkpoint goes to a bounded,
//! deduplicated queue ([`CHECKPOINT_QUEUE_CAPACITY`](super::CHECKPOINT_QUEUE_CAPACITY)); one
//! task takes them one at a time, off the commit path. A replay that meets a bad delta or
//! checkpoint is a [`ReadError`] naming the document and sequence number, never a panic.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lattice_engine::{DocId, Document, ReplicaId, Source};
use tokio::sync::mpsc;

use super::backend::{AnyBackend, Backend as _, Parts};
use super::compress::{pack_checkpoint, unpack_checkpoint};
use super::{CheckpointDamage, DeltaDamage, DocMeta, ReadError, StoreConfig, decode_delta};
use crate::clock::now_ms;

/// Documents waiting for a background checkpoint, deduplicated.
#[derive(Debug)]
pub(crate) struct CheckpointQueue {
    pub(super) tx: mpsc::Sender<DocId>,
    pub(super) pending: Mutex<HashSet<DocId>>,
}

impl CheckpointQueue {
    pub(crate) fn trigger(&self, doc: &DocId) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.contains(doc) {
            return;
        }
        if self.tx.try_send(doc.clone()).is_ok() {
            pending.insert(doc.clone());
        }
    }

    fn done(&self, doc: &DocId) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(doc);
        }
    }
}

/// [`rebuild`] on tokio's blocking pool: replaying a long tail is CPU work that must not hold
/// an async worker (every other request and connection waits behind it). A panic inside goes on
/// in the caller, as it would have without the pool.
pub(super) async fn rebuild_blocking(
    doc: &DocId,
    replica: ReplicaId,
    parts: Parts,
) -> Result<(Document, DocMeta), ReadError> {
    let doc = doc.clone();
    blocking(move || rebuild(&doc, replica, parts)).await
}

/// `work` on tokio's blocking pool; a panic inside goes on in the caller.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
) -> Result<T, ReadError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down.
        Err(_) => Err(ReadError::Closed),
    }
}

/// Rebuilds a document from a checkpoint and the log after it.
fn rebuild(
    doc: &DocId,
    replica: ReplicaId,
    parts: Parts,
) -> Result<(Document, DocMeta), ReadError> {
    let (mut document, mut expected) = match &parts.checkpoint {
        Some(cp) => {
            let corrupt = |damage| ReadError::CorruptCheckpoint {
                doc: doc.clone(),
                seq: cp.seq,
                source: Arc::new(damage),
            };
            let snapshot = unpack_checkpoint(cp.encoding, &cp.stored, cp.byte_size)
                .map_err(|e| corrupt(CheckpointDamage::Stored(e)))?;
            let document = Document::from_snapshot(replica, &snapshot)
                .map_err(|e| corrupt(CheckpointDamage::Snapshot(e)))?;
            (document, cp.seq + 1)
        }
        None if parts.meta.log_start_seq > 0 => {
            return Err(ReadError::LogInconsistent {
                doc: doc.clone(),
                seq: parts.meta.log_start_seq,
                reason: "the checkpoint at the retention cut is missing".to_owned(),
            });
        }
        None => (Document::new(replica), 1),
    };
    for entry in &parts.tail {
        let seq = entry.seq;
        if seq != expected {
            return Err(ReadError::LogInconsistent {
                doc: doc.clone(),
                seq: expected,
                reason: format!("the log jumps to {seq}"),
            });
        }
        let delta = decode_delta(doc, seq, &entry.delta)?;
        // The log's own entries are trusted (they passed a peer's checks when appended), and
        // replaying them with their authors rebuilds who owns which client id.
        document
            .apply_from(&delta, Source::trusted(entry.author.as_deref()))
            .map_err(|e| ReadError::CorruptDelta {
                doc: doc.clone(),
                seq,
                damage: DeltaDamage::Apply(e),
            })?;
        expected += 1;
    }
    if expected != parts.upto + 1 {
        return Err(ReadError::LogInconsistent {
            doc: doc.clone(),
            seq: expected,
            reason: format!("the log ends before {}", parts.upto),
        });
    }
    Ok((document, parts.meta))
}

/// Writes a checkpoint for `doc` if one is due (or `force`), then applies retention.
pub(super) async fn take(
    backend: &AnyBackend,
    config: &StoreConfig,
    doc: &DocId,
    force: bool,
) -> Result<Option<u64>, ReadError> {
    let Some(parts) = backend.parts(doc, None).await? else {
        return Ok(None);
    };
    let meta = parts.meta.clone();
    if meta.head_seq == 0 || meta.head_seq == meta.checkpoint_seq {
        return Ok(None);
    }
    if !force
        && !checkpoint_due(
            config,
            meta.head_seq - meta.checkpoint_seq,
            meta.byte_count.saturating_sub(parts.checkpoint_byte_count),
        )
    {
        return Ok(None);
    }
    // Rebuilding, snapshotting and compressing are CPU work: on the blocking pool. A dummy
    // replica: the snapshot does not depend on which replica holds the document.
    let id = doc.clone();
    let (meta, snapshot) = blocking(move || {
        let (document, meta) = rebuild(&id, ReplicaId::from_random(1), parts)?;
        Ok((meta, pack_checkpoint(document.snapshot())))
    })
    .await?;
    backend
        .write_checkpoint(&meta, &snapshot, now_ms(), config)
        .await?;
    Ok(Some(meta.head_seq))
}

pub(crate) fn checkpoint_due(config: &StoreConfig, updates_since: u64, bytes_since: u64) -> bool {
    (config.checkpoint_every_updates > 0 && updates_since >= config.checkpoint_every_updates)
        || (config.checkpoint_every_bytes > 0 && bytes_since >= config.checkpoint_every_bytes)
}

/// The background checkpointer: one document at a time, off the commit path.
pub(super) async fn checkpointer(
    backend: Arc<AnyBackend>,
    config: StoreConfig,
    mut rx: mpsc::Receiver<DocId>,
    queue: std::sync::Weak<CheckpointQueue>,
) {
    while let Some(doc) = rx.recv().await {
        // Taken off the pending set first, so a commit during the checkpoint triggers again and
        // the document ends within one interval of a checkpoint once writes stop.
        match queue.upgrade() {
            Some(q) => q.done(&doc),
            None => break,
        }
        if let Err(e) = take(&backend, &config, &doc, false).await {
            tracing::warn!(doc = %doc, error = %e, "checkpoint failed");
        }
    }
}
