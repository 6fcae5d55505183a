//! The Yjs bridge's side in the core: the Yjs state vector and updates of a document for a
//! bound JavaScript `Y.Doc`, the bound document's own updates applied as local edits, and the
//! tap that collects every other update of the document for it, without echo.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lattice_engine::{DocId, Document, EditError};

use super::{ClientCore, ClientError};

/// The Yjs updates a document made that a bound Yjs document has not seen yet (the Yjs bridge).
///
/// yrs reports every committed transaction's update to the observer; updates that came from the
/// bound document itself are muted. The driver drains the list after every input, so it holds
/// at most what one input produced.
pub(super) struct YjsTap {
    updates: Arc<Mutex<Vec<Vec<u8>>>>,
    muted: Arc<AtomicBool>,
}

/// The key of the bridge's observer on a document's `yrs::Doc`.
const YJS_TAP_KEY: &str = "lattice-yjs-bridge";

impl std::fmt::Debug for YjsTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YjsTap").finish_non_exhaustive()
    }
}

impl YjsTap {
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.updates.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The Yjs encoding of an empty state vector and of an update that changes nothing.
const EMPTY_STATE_VECTOR: &[u8] = &[0];
const EMPTY_UPDATE: &[u8] = &[0, 0];

impl ClientCore {
    /// The Yjs state vector (v1) of `doc`'s text content.
    pub fn yjs_state_vector(&self, doc: &DocId) -> Result<Vec<u8>, ClientError> {
        let d = self.open_document(doc)?;
        let sv = d.state().yjs;
        Ok(if sv.is_empty() {
            EMPTY_STATE_VECTOR.to_vec()
        } else {
            sv
        })
    }

    /// The Yjs update (v1) that brings a Yjs document whose state vector is `state_vector` up
    /// to `doc` (everything, for an empty state vector).
    pub fn yjs_update_since(
        &self,
        doc: &DocId,
        state_vector: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let d = self.open_document(doc)?;
        let known = lattice_engine::DocState {
            yjs: state_vector.to_vec(),
            ..lattice_engine::DocState::default()
        };
        let delta = d.diff_since(&known).map_err(EditError::Yjs)?;
        Ok(if delta.yjs.is_empty() {
            EMPTY_UPDATE.to_vec()
        } else {
            delta.yjs
        })
    }

    /// Applies an update made by the bound Yjs document as a local edit: it is sent, stored
    /// until acknowledged, and not reported back through [`ClientCore::take_yjs_updates`].
    pub fn yjs_apply_local(&mut self, doc: &DocId, update: &[u8]) -> Result<(), ClientError> {
        let muted = self
            .docs
            .get(doc)
            .and_then(|d| d.tap.as_ref())
            .map(|t| Arc::clone(&t.muted));
        if let Some(m) = &muted {
            m.store(true, Ordering::Relaxed);
        }
        let result = self.edit(doc, |d, _| d.yjs_local_update(update));
        if let Some(m) = &muted {
            m.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Starts collecting `doc`'s Yjs updates for a bound Yjs document (idempotent).
    pub fn yjs_tap(&mut self, doc: &DocId) -> Result<(), ClientError> {
        if self.docs.get(doc).is_some_and(|d| d.tap.is_some()) {
            return Ok(());
        }
        let d = self.open_document(doc)?;
        let updates = Arc::new(Mutex::new(Vec::new()));
        let muted = Arc::new(AtomicBool::new(false));
        {
            let updates = Arc::clone(&updates);
            let muted = Arc::clone(&muted);
            d.ydoc()
                .observe_update_v1(YJS_TAP_KEY, move |_, event: &yrs::UpdateEvent| {
                    if !muted.load(Ordering::Relaxed) {
                        updates
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(event.update.clone());
                    }
                })
                .map_err(|_| EditError::Poisoned)?;
        }
        if let Some(extra) = self.docs.get_mut(doc) {
            extra.tap = Some(YjsTap { updates, muted });
        }
        Ok(())
    }

    /// Stops collecting `doc`'s Yjs updates.
    pub fn yjs_untap(&mut self, doc: &DocId) {
        if self.docs.get_mut(doc).and_then(|d| d.tap.take()).is_some()
            && let Some(d) = self.session.document(doc)
        {
            // Only fails inside another transaction, which cannot be running here.
            let _ = d.ydoc().unobserve_update_v1(YJS_TAP_KEY);
        }
    }

    /// The Yjs updates of tapped documents since the last call, oldest first.
    pub fn take_yjs_updates(&mut self) -> Vec<(DocId, Vec<u8>)> {
        let mut out = Vec::new();
        for (id, d) in &self.docs {
            if let Some(tap) = &d.tap {
                out.extend(tap.take().into_iter().map(|u| (id.clone(), u)));
            }
        }
        out
    }

    fn open_document(&self, doc: &DocId) -> Result<&Document, ClientError> {
        if !self.docs.contains_key(doc) {
            return Err(ClientError::NotOpen { doc: doc.clone() });
        }
        self.session
            .document(doc)
            .ok_or_else(|| ClientError::NotOpen { doc: doc.clone() })
    }
}

#[cfg(test)]
mod tests {
    use lattice_engine::protocol::{ClientMsg, ServerMsg};
    use lattice_engine::{Delta, ReplicaId};

    use super::*;
    use crate::core::testing::{doc, online_client, sent, server};
    use crate::core::{ClientEvent, Origin};

    /// A stand-in for the JavaScript `Y.Doc` of an editor binding: a plain yrs document.
    fn editor_doc(client: u64) -> yrs::Doc {
        yrs::Doc::with_options(yrs::Options {
            client_id: yrs::block::ClientID::new(client),
            offset_kind: yrs::OffsetKind::Utf16,
            ..yrs::Options::default()
        })
    }

    fn editor_text(editor: &yrs::Doc) -> String {
        use yrs::{GetString, ReadTxn, Transact};
        let txn = editor.transact();
        txn.get_text("body")
            .map(|t| t.get_string(&txn))
            .unwrap_or_default()
    }

    fn editor_apply(editor: &yrs::Doc, update: &[u8]) {
        use yrs::updates::decoder::Decode;
        use yrs::{Transact, Update};
        editor
            .transact_mut()
            .apply_update(Update::decode_v1(update).expect("update"))
            .expect("apply");
    }

    #[test]
    fn the_yjs_bridge_carries_edits_both_ways_without_echo() {
        use yrs::updates::decoder::Decode;
        use yrs::updates::encoder::Encode;
        use yrs::{ReadTxn, StateVector, Text, Transact};
        let (mut c, d) = online_client();
        c.text_insert(&d, "body", 0, "hello").expect("insert");
        sent(&mut c);
        c.take_events();

        // Initial sync: the editor receives what the document holds.
        let editor = editor_doc(4242);
        let sv = editor.transact().state_vector().encode_v1();
        editor_apply(&editor, &c.yjs_update_since(&d, &sv).expect("since"));
        assert_eq!(editor_text(&editor), "hello");
        c.yjs_tap(&d).expect("tap");
        let sv = c.yjs_state_vector(&d).expect("sv");
        assert!(StateVector::decode_v1(&sv).is_ok());

        // Editor → document: a local edit, sent, recorded, and not echoed back.
        let update = {
            let body = editor.get_or_insert_text("body");
            let mut txn = editor.transact_mut();
            body.insert(&mut txn, 5, " world");
            txn.encode_update_v1()
        };
        c.yjs_apply_local(&d, &update).expect("local");
        assert_eq!(c.document(&d).expect("open").text("body"), "hello world");
        assert_eq!(
            c.pending(&d),
            2,
            "\"hello\" and the editor's edit await their ack"
        );
        assert!(matches!(
            sent(&mut c).as_slice(),
            [ClientMsg::Delta { delta, .. }] if delta.yjs == update
        ));
        assert!(c.take_events().contains(&ClientEvent::Change {
            doc: d.clone(),
            origin: Origin::Local
        }));
        assert!(
            c.take_yjs_updates().is_empty(),
            "the editor's own update came back"
        );

        // Remote and wasm-side edits → the editor, exactly once.
        let mut other = Document::new(ReplicaId::from_random(9));
        other
            .apply(&Delta {
                yjs: c.yjs_update_since(&d, &[0]).expect("all"),
                ..Delta::default()
            })
            .expect("other catches up");
        let remote = other.text_insert("body", 0, ">> ").expect("remote");
        server(
            &mut c,
            ServerMsg::Delta {
                doc: d.clone(),
                delta: remote,
            },
        );
        c.text_insert(&d, "body", 14, "!").expect("wasm-side edit");
        let updates = c.take_yjs_updates();
        assert_eq!(updates.len(), 2);
        for (id, update) in &updates {
            assert_eq!(id, &d);
            editor_apply(&editor, update);
        }
        assert_eq!(editor_text(&editor), ">> hello world!");
        assert_eq!(
            c.document(&d).expect("open").text("body"),
            ">> hello world!"
        );

        // A refused update changes nothing; untapping stops the collection.
        assert!(matches!(
            c.yjs_apply_local(&d, &[0x9f, 0x9e, 0x97, 0x31]),
            Err(ClientError::Edit(EditError::Yjs(_)))
        ));
        assert_eq!(c.pending(&d), 3);
        c.yjs_untap(&d);
        c.text_insert(&d, "body", 0, "x").expect("insert");
        assert!(c.take_yjs_updates().is_empty());
        assert_eq!(
            c.yjs_state_vector(&doc("nope")),
            Err(ClientError::NotOpen { doc: doc("nope") })
        );
    }
}
