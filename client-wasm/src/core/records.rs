//! The records that keep a document in this browser across a page reload: one per
//! unacknowledged local delta ([`PendingKey`] = document, replica, local sequence number) and
//! the document's saved copy (replica [`COPY_REPLICA`]); their encoding; and how the core keeps
//! them in step with the session (acknowledged deltas' records go once a saved copy holds them).

use lattice_engine::protocol::{ClientMsg, ServerMsg};
use lattice_engine::{ApplyError, Delta, DocId, DocState};

use super::ClientCore;

/// Least time between two saved copies of a document ([`COPY_REPLICA`]): a copy costs a full
/// encoding of the document, so busy documents are saved at most this often.
pub const COPY_INTERVAL_MS: u64 = 2_000;

/// The replica number of the record that holds a document's saved copy (`seq` 0). Real
/// replica ids are never zero, so it cannot collide with a pending delta's record.
pub const COPY_REPLICA: u32 = 0;

/// Identifies one persisted unacknowledged delta: the document, the replica that wrote it
/// (two tabs are two replicas and must not overwrite each other's records) and a local sequence
/// number of that replica, unrelated to the wire `seq`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PendingKey {
    pub doc: DocId,
    pub replica: u32,
    pub seq: u64,
}

/// A persisted record: its key and the encoded delta ([`encode_record`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDelta {
    pub key: PendingKey,
    pub bytes: Vec<u8>,
}

/// A change the driver must make to the pending-delta store, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Put(StoredDelta),
    Delete(Vec<PendingKey>),
}

/// A persisted record that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record does not decode: {reason}")]
    Decode { reason: String },
    #[error("record holds an invalid delta: {0}")]
    Invalid(#[from] ApplyError),
}

/// Encodes a record for the pending-delta store: the `delta` message of the wire protocol, as
/// the client sends it, with the record's local sequence number as `seq`.
///
/// Reusing the wire form keeps the browser build small: records are read back by
/// [`ServerMsg::decode`], whose `delta` message has the same `doc` and `delta` fields (readers
/// ignore the extra `seq`), so no second MessagePack decoder is compiled in.
pub fn encode_record(key: &PendingKey, delta: &Delta) -> Vec<u8> {
    ClientMsg::Delta {
        doc: key.doc.clone(),
        seq: key.seq,
        delta: delta.clone(),
    }
    .encode()
}

/// Decodes and validates a stored record of `doc`. Stored bytes are untrusted: another build or
/// a damaged profile may have written them.
pub fn decode_record(doc: &DocId, bytes: &[u8]) -> Result<Delta, RecordError> {
    match ServerMsg::decode(bytes, usize::MAX) {
        Ok(ServerMsg::Delta { doc: found, delta }) if found == *doc => {
            delta.validate()?;
            Ok(delta)
        }
        Ok(other) => Err(RecordError::Decode {
            reason: format!("a {:?} message for another document", other.kind()),
        }),
        Err(e) => Err(RecordError::Decode {
            reason: e.to_string(),
        }),
    }
}

/// The key of `doc`'s saved copy.
pub(super) fn copy_key(doc: &DocId) -> PendingKey {
    PendingKey {
        doc: doc.clone(),
        replica: COPY_REPLICA,
        seq: 0,
    }
}

impl ClientCore {
    /// Moves the records of acknowledged deltas to the list deleted with the next saved copy:
    /// until a copy holds their content, they are what keeps it in this browser.
    pub(super) fn reconcile_records(&mut self) {
        for (id, d) in &mut self.docs {
            let pending = self.session.pending(id);
            let acked = d.keys.len().saturating_sub(pending);
            if acked > 0 {
                d.delete_after_copy.extend(d.keys.drain(..acked));
                d.copy_dirty = true;
            }
        }
    }

    /// Saves the copies that changed and were last saved [`COPY_INTERVAL_MS`] ago or more.
    pub(super) fn save_due_copies(&mut self, now_ms: u64) {
        let due: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(_, d)| {
                d.copy_dirty
                    && d.copy_saved_at_ms
                        .is_none_or(|at| now_ms.saturating_sub(at) >= COPY_INTERVAL_MS)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for doc in due {
            self.save_copy(&doc);
            if let Some(d) = self.docs.get_mut(&doc) {
                d.copy_saved_at_ms = Some(now_ms);
            }
        }
    }

    /// Saves `doc`'s copy if it changed, then deletes the records it made redundant (the same
    /// store transaction order: the put lands before the deletes).
    pub(super) fn save_copy(&mut self, doc: &DocId) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        if !d.copy_dirty {
            return;
        }
        let Some(full) = self
            .session
            .document(doc)
            .and_then(|document| document.diff_since(&DocState::default()).ok())
        else {
            return;
        };
        d.copy_dirty = false;
        let redundant = std::mem::take(&mut d.delete_after_copy);
        self.store_ops.push(StoreOp::Put(StoredDelta {
            key: copy_key(doc),
            bytes: encode_record(&copy_key(doc), &full),
        }));
        if !redundant.is_empty() {
            self.store_ops.push(StoreOp::Delete(redundant));
        }
    }
}

#[cfg(test)]
mod tests {
    use lattice_engine::{Document, ReplicaId};

    use super::*;
    use crate::core::testing::{core, doc, online_client, sent, server};
    use crate::core::{ClientEvent, Status};

    #[test]
    fn offline_edits_are_restored_by_another_replica_and_sent_on_resync() {
        let d = doc("notes");
        let mut first = core(7);
        first.open(d.clone(), Vec::new()).expect("open");
        first.text_insert(&d, "body", 0, "offline").expect("insert");
        first.counter_increment(&d, "n", 1).expect("increment");
        assert_eq!(first.status(), Status::Offline);
        assert!(first.take_frames().frames.is_empty());
        let records: Vec<StoredDelta> = first
            .take_store_ops()
            .into_iter()
            .filter_map(|op| match op {
                StoreOp::Put(r) => Some(r),
                StoreOp::Delete(_) => None,
            })
            .collect();
        drop(first);

        // The page reloads: a new replica adopts the records.
        let mut second = core(8);
        second.open(d.clone(), records.clone()).expect("open");
        assert_eq!(second.pending(&d), 2);
        assert_eq!(second.document(&d).expect("open").text("body"), "offline");
        second.connecting();
        second.socket_open(0);
        sent(&mut second);
        server(
            &mut second,
            ServerMsg::Welcome {
                protocol: 1,
                server: "t".into(),
            },
        );
        server(
            &mut second,
            ServerMsg::Sync {
                doc: d.clone(),
                delta: Delta::default(),
                state: DocState::default(),
            },
        );
        let msgs = sent(&mut second);
        let [ClientMsg::Delta { seq, delta, .. }] = msgs.as_slice() else {
            panic!("expected one resync delta, got {msgs:?}");
        };
        let mut server_doc = Document::new(ReplicaId::from_random(99));
        server_doc.apply(delta).expect("apply");
        assert_eq!(server_doc.text("body"), "offline");
        assert_eq!(server_doc.counter("n"), 1);
        second.take_store_ops();
        server(
            &mut second,
            ServerMsg::Ack {
                doc: d.clone(),
                seq: *seq,
            },
        );
        assert_eq!(second.pending(&d), 0);
        // A copy that holds the acknowledged content is saved before the records go.
        let ops = second.take_store_ops();
        assert!(
            matches!(&ops[..], [StoreOp::Put(copy), StoreOp::Delete(keys)]
                if copy.key == copy_key(&d)
                    && *keys == records.iter().map(|r| r.key.clone()).collect::<Vec<_>>()),
            "{ops:?}"
        );
        // New records of the adopting replica do not collide with the adopted ones.
        second.text_insert(&d, "body", 0, ">").expect("insert");
        let ops = second.take_store_ops();
        assert!(
            matches!(&ops[..], [StoreOp::Put(r)] if r.key.replica == 8 && r.key.seq == 1),
            "{ops:?}"
        );
    }

    #[test]
    fn unreadable_records_are_reported_and_deleted() {
        let d = doc("notes");
        let key = PendingKey {
            doc: d.clone(),
            replica: 3,
            seq: 1,
        };
        let mut c = core(7);
        c.open(
            d.clone(),
            vec![StoredDelta {
                key: key.clone(),
                bytes: vec![0xc1, 0xff],
            }],
        )
        .expect("open");
        assert_eq!(c.pending(&d), 0);
        assert_eq!(c.take_store_ops(), vec![StoreOp::Delete(vec![key])]);
        assert!(c.take_events().iter().any(|e| matches!(
            e,
            ClientEvent::Error {
                code: "invalid_record",
                ..
            }
        )));
    }

    #[test]
    fn a_saved_copy_shows_acknowledged_content_offline_and_is_not_pending() {
        let (mut c, d) = online_client();
        c.text_insert(&d, "body", 0, "acked").expect("insert");
        c.counter_increment(&d, "n", 2).expect("increment");
        let seq = match sent(&mut c).last() {
            Some(ClientMsg::Delta { seq, .. }) => *seq,
            other => panic!("expected a delta, got {other:?}"),
        };
        c.take_store_ops();
        server(
            &mut c,
            ServerMsg::Ack {
                doc: d.clone(),
                seq,
            },
        );
        let ops = c.take_store_ops();
        let [StoreOp::Put(copy), StoreOp::Delete(deleted)] = &ops[..] else {
            panic!("expected the copy then the deletes, got {ops:?}");
        };
        assert_eq!(deleted.len(), 2);

        // Throttled: another acknowledged edit within COPY_INTERVAL_MS keeps its record...
        c.text_insert(&d, "body", 5, "!").expect("insert");
        let seq = match sent(&mut c).last() {
            Some(ClientMsg::Delta { seq, .. }) => *seq,
            other => panic!("expected a delta, got {other:?}"),
        };
        c.take_store_ops();
        c.receive(
            &ServerMsg::Ack {
                doc: d.clone(),
                seq,
            }
            .encode(),
            1_500,
        );
        assert!(c.take_store_ops().is_empty());
        // ...until the next copy is due.
        c.tick(1_000 + COPY_INTERVAL_MS);
        assert!(matches!(
            &c.take_store_ops()[..],
            [StoreOp::Put(_), StoreOp::Delete(keys)] if keys.len() == 1
        ));

        // Another replica opening offline with the first copy shows its content, nothing pending.
        let mut other = core(8);
        other.open(d.clone(), vec![copy.clone()]).expect("open");
        let document = other.document(&d).expect("open");
        assert_eq!(document.text("body"), "acked");
        assert_eq!(document.counter("n"), 2);
        assert_eq!(other.pending(&d), 0);

        // A damaged copy is reported and deleted; the document still opens.
        let mut third = core(9);
        let damaged = StoredDelta {
            key: copy_key(&d),
            bytes: vec![0xc1],
        };
        third.open(d.clone(), vec![damaged]).expect("open");
        assert!(third.take_events().iter().any(|e| matches!(
            e,
            ClientEvent::Error {
                code: "invalid_record",
                ..
            }
        )));
        assert_eq!(
            third.take_store_ops(),
            vec![StoreOp::Delete(vec![copy_key(&d)])]
        );
    }

    #[test]
    fn records_round_trip_and_refuse_what_is_not_theirs() {
        let d = doc("notes");
        let key = PendingKey {
            doc: d.clone(),
            replica: 5,
            seq: 12,
        };
        let mut document = Document::new(ReplicaId::from_random(5));
        let delta = document.text_insert("t", 0, "héllo").expect("insert");
        let bytes = encode_record(&key, &delta);
        assert_eq!(decode_record(&d, &bytes), Ok(delta));
        assert!(matches!(
            decode_record(&doc("other"), &bytes),
            Err(RecordError::Decode { .. })
        ));
        let bad = ClientMsg::Delta {
            doc: d.clone(),
            seq: 1,
            delta: Delta {
                yjs: vec![0xff, 0xff],
                ..Delta::default()
            },
        }
        .encode();
        assert!(matches!(
            decode_record(&d, &bad),
            Err(RecordError::Invalid(_))
        ));
    }
}
