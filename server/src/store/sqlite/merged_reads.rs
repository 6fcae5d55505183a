//! Reads that merge the in-memory journal into what the database holds: memory first,
//! database second, each sequence number once (see [`super`]).

use lattice_engine::DocId;

use super::SqliteBackend;
use super::writer_state::Pending;
use crate::store::sql::SqlBackend;
use crate::store::{DatabaseError, DocMeta, LogEntry, Page, Parts, ReadError, TailEntry};

impl SqliteBackend {
    /// A copy of `doc`'s journaled entries and counters, if it has any.
    fn pending(&self, doc: &DocId) -> Option<Pending> {
        let st = self.state();
        let entries = st
            .journal
            .docs
            .get(doc)?
            .iter()
            .map(|j| j.entry.clone())
            .collect();
        let head = st.docs.get(doc).copied().unwrap_or_default();
        Some(Pending { head, entries })
    }

    /// [`SqlBackend::stored_parts`] with the journaled entries merged in.
    pub(super) async fn parts_merged(
        &self,
        doc: &DocId,
        upto: Option<u64>,
    ) -> Result<Option<Parts>, ReadError> {
        // Memory first, database second (see the module comment).
        let pending = self.pending(doc);
        let floor = pending.as_ref().map_or(0, |p| p.head.head_seq);
        let Some(mut parts) = self.stored_parts(doc, upto, floor).await? else {
            return Ok(None);
        };
        if let Some(p) = pending {
            overlay(&mut parts.meta, &p);
            let from = parts.checkpoint.as_ref().map_or(0, |c| c.seq);
            let last = parts.tail.last().map_or(from, |t| t.seq);
            parts.tail.extend(
                p.entries
                    .iter()
                    .filter(|e| e.seq > last && e.seq <= parts.upto)
                    .map(|e| TailEntry {
                        seq: e.seq,
                        author: e.author.clone(),
                        delta: e.delta_bytes.clone(),
                    }),
            );
        }
        Ok(Some(parts))
    }

    /// [`Self::read_drained_log`] with the journaled entries merged in.
    pub(super) async fn read_log_merged(
        &self,
        doc: &DocId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let pending = self.pending(doc);
        let mut log = self.read_drained_log(doc, from_seq, limit).await?;
        if let Some(p) = pending {
            let after = log.last().map_or(from_seq.saturating_sub(1), |e| e.seq);
            let room = (limit as usize).saturating_sub(log.len());
            log.extend(
                p.entries
                    .iter()
                    .filter(|e| e.seq > after)
                    .take(room)
                    .map(|e| LogEntry::clone(e)),
            );
        }
        Ok(log)
    }

    /// [`SqlBackend::stored_meta`] with the journaled entries counted.
    pub(super) async fn doc_meta_merged(
        &self,
        doc: &DocId,
    ) -> Result<Option<DocMeta>, DatabaseError> {
        let pending = self.pending(doc);
        let mut meta = self.stored_meta(doc).await?;
        if let (Some(m), Some(p)) = (meta.as_mut(), pending) {
            overlay(m, &p);
        }
        Ok(meta)
    }

    /// [`SqlBackend::stored_list`] with the journaled entries counted.
    pub(super) async fn list_merged(
        &self,
        prefix: &str,
        page: &Page,
    ) -> Result<Vec<DocMeta>, DatabaseError> {
        let mut metas = self.stored_list(prefix, page).await?;
        let st = self.state();
        for m in &mut metas {
            if let (Some(list), Some(head)) = (st.journal.docs.get(&m.id), st.docs.get(&m.id)) {
                let last = list.last().map(|j| j.entry.clone()).into_iter().collect();
                overlay(
                    m,
                    &Pending {
                        head: *head,
                        entries: last,
                    },
                );
            }
        }
        Ok(metas)
    }
}

/// Counts a document's journaled entries into metadata read from `documents`. Both sides only
/// grow, so the larger value is the newer one.
fn overlay(meta: &mut DocMeta, p: &Pending) {
    meta.head_seq = meta.head_seq.max(p.head.head_seq);
    meta.byte_count = meta.byte_count.max(p.head.byte_count);
    if let Some(last) = p.entries.last() {
        meta.updated_at_ms = meta.updated_at_ms.max(last.committed_at_ms);
    }
}
