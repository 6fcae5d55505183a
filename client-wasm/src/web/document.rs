//! The handles JavaScript holds on an open document: `LatticeDocument` (presence, the Yjs
//! bridge's calls, `close`) and its `LatticeText`, `LatticeCounter` and `LatticeRegister`.

use std::rc::Rc;

use js_sys::{Function, Uint8Array};
use lattice_engine::{DocId, Value};
use wasm_bindgen::JsValue;
use wasm_bindgen::prelude::*;

use super::{Shared, js_error, now_ms, peers_to_js, value_from_js, value_to_js};

/// One open document. Handles stay valid until `close()`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct LatticeDocument {
    pub(super) shared: Rc<Shared>,
    pub(super) doc: DocId,
}

#[wasm_bindgen]
impl LatticeDocument {
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> String {
        self.doc.as_str().to_owned()
    }

    /// The text `name` (created on first edit).
    pub fn text(&self, name: String) -> LatticeText {
        LatticeText {
            shared: self.shared.clone(),
            doc: self.doc.clone(),
            name,
        }
    }

    /// The grow-only counter `name`.
    pub fn counter(&self, name: String) -> LatticeCounter {
        LatticeCounter {
            shared: self.shared.clone(),
            doc: self.doc.clone(),
            name,
        }
    }

    /// The last-writer-wins register `name`.
    pub fn register(&self, name: String) -> LatticeRegister {
        LatticeRegister {
            shared: self.shared.clone(),
            doc: self.doc.clone(),
            name,
        }
    }

    /// Edits of this document the server has not acknowledged yet.
    #[wasm_bindgen(getter, js_name = pendingCount)]
    pub fn pending_count(&self) -> u32 {
        u32::try_from(self.shared.core.borrow().pending(&self.doc)).unwrap_or(u32::MAX)
    }

    /// Whether the document has caught up with the server on the current connection.
    #[wasm_bindgen(getter)]
    pub fn synced(&self) -> bool {
        self.shared.core.borrow().is_synced(&self.doc)
    }

    /// Whether the server has committed everything this client holds of the document: synced,
    /// no edit pending, and no resync (of other replicas' edits the server lost) unacknowledged.
    #[wasm_bindgen(getter)]
    pub fn saved(&self) -> bool {
        self.shared.core.borrow().is_saved(&self.doc)
    }

    /// Publishes this client's presence (name, colour, cursor…); `null` leaves. Renewed
    /// automatically, and published again after a reconnect. `typing` sets or clears the typing
    /// flag; omitted, the flag stays as it is.
    #[wasm_bindgen(js_name = setPresence)]
    pub fn set_presence(
        &self,
        #[wasm_bindgen(unchecked_param_type = "LatticeValue")] state: JsValue,
        typing: Option<bool>,
    ) -> Result<(), JsError> {
        let state = value_from_js(&state).map_err(js_error)?;
        self.shared
            .apply(|core| core.set_presence(&self.doc, state, typing, now_ms()))
    }

    /// Sets the typing flag of this client's presence; it clears itself after five seconds
    /// unless set again.
    #[wasm_bindgen(js_name = setTyping)]
    pub fn set_typing(&self, typing: bool) -> Result<(), JsError> {
        self.shared
            .apply(|core| core.set_typing(&self.doc, typing, now_ms()))
    }

    /// Calls `receiver` with the other peers' presence on this document (as `presence()`
    /// returns it) whenever it changes, next to the client's `onPresence`; `null` stops. The Yjs
    /// bridge's awareness is built on it.
    #[wasm_bindgen(js_name = onPresence)]
    pub fn on_presence(
        &self,
        #[wasm_bindgen(unchecked_param_type = "((peers: LatticePeer[]) => void) | null")]
        receiver: Option<Function>,
    ) {
        let mut callbacks = self.shared.callbacks.borrow_mut();
        match receiver {
            Some(receiver) => {
                callbacks.doc_presence.insert(self.doc.clone(), receiver);
            }
            None => {
                callbacks.doc_presence.remove(&self.doc);
            }
        }
    }

    /// The other peers' presence on this document.
    #[wasm_bindgen(unchecked_return_type = "LatticePeer[]")]
    pub fn presence(&self) -> JsValue {
        peers_to_js(&self.shared.core.borrow().others(&self.doc))
    }

    /// The Yjs state vector (v1) of the document's texts: with `yjsUpdate`, `applyYjsUpdate`
    /// and `onYjsUpdate`, what the Yjs bridge (`lattice-client/yjs`) is built from.
    #[wasm_bindgen(js_name = yjsStateVector)]
    pub fn yjs_state_vector(&self) -> Result<Uint8Array, JsError> {
        let sv = self
            .shared
            .core
            .borrow()
            .yjs_state_vector(&self.doc)
            .map_err(js_error)?;
        Ok(Uint8Array::from(sv.as_slice()))
    }

    /// The Yjs update (v1) that brings a Yjs document with state vector `stateVector` up to
    /// this one; everything when it is omitted.
    #[wasm_bindgen(js_name = yjsUpdate)]
    pub fn yjs_update(&self, state_vector: Option<Vec<u8>>) -> Result<Uint8Array, JsError> {
        let sv = state_vector.unwrap_or_else(|| vec![0]);
        let update = self
            .shared
            .core
            .borrow()
            .yjs_update_since(&self.doc, &sv)
            .map_err(js_error)?;
        Ok(Uint8Array::from(update.as_slice()))
    }

    /// Applies a Yjs update (v1) made by a bound Yjs document as a local edit: it is sent,
    /// kept until acknowledged, and not handed back to `onYjsUpdate`.
    #[wasm_bindgen(js_name = applyYjsUpdate)]
    pub fn apply_yjs_update(&self, update: &[u8]) -> Result<(), JsError> {
        self.shared
            .apply(|core| core.yjs_apply_local(&self.doc, update))
    }

    /// Calls `receiver` with every Yjs update (v1) the document makes from now on, except those
    /// given to `applyYjsUpdate`; `null` stops.
    #[wasm_bindgen(js_name = onYjsUpdate)]
    pub fn on_yjs_update(
        &self,
        #[wasm_bindgen(unchecked_param_type = "((update: Uint8Array) => void) | null")]
        receiver: Option<Function>,
    ) -> Result<(), JsError> {
        match receiver {
            Some(receiver) => {
                self.shared
                    .core
                    .borrow_mut()
                    .yjs_tap(&self.doc)
                    .map_err(js_error)?;
                self.shared
                    .callbacks
                    .borrow_mut()
                    .yjs
                    .insert(self.doc.clone(), receiver);
            }
            None => {
                self.shared.core.borrow_mut().yjs_untap(&self.doc);
                self.shared.callbacks.borrow_mut().yjs.remove(&self.doc);
            }
        }
        Ok(())
    }

    /// Stops replicating the document. Unacknowledged edits stay in IndexedDB for the next
    /// `open`.
    pub fn close(&self) {
        self.shared.core.borrow_mut().close(&self.doc);
        let mut callbacks = self.shared.callbacks.borrow_mut();
        callbacks.yjs.remove(&self.doc);
        callbacks.doc_presence.remove(&self.doc);
        drop(callbacks);
        self.shared.flush();
    }
}

/// A collaborative text. Offsets count UTF-16 code units, like JavaScript strings.
#[wasm_bindgen]
#[derive(Debug)]
pub struct LatticeText {
    shared: Rc<Shared>,
    doc: DocId,
    name: String,
}

#[wasm_bindgen]
impl LatticeText {
    pub fn insert(&self, index: u32, text: &str) -> Result<(), JsError> {
        self.shared
            .apply(|core| core.text_insert(&self.doc, &self.name, index, text))
    }

    pub fn delete(&self, index: u32, length: u32) -> Result<(), JsError> {
        self.shared
            .apply(|core| core.text_delete(&self.doc, &self.name, index, length))
    }

    /// Length in UTF-16 code units.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> u32 {
        self.shared
            .core
            .borrow()
            .document(&self.doc)
            .map_or(0, |d| d.text_len(&self.name))
    }

    #[wasm_bindgen(js_name = toString)]
    pub fn to_string_js(&self) -> String {
        self.shared
            .core
            .borrow()
            .document(&self.doc)
            .map(|d| d.text(&self.name))
            .unwrap_or_default()
    }
}

/// A grow-only counter: every replica's increments add up.
#[wasm_bindgen]
#[derive(Debug)]
pub struct LatticeCounter {
    shared: Rc<Shared>,
    doc: DocId,
    name: String,
}

#[wasm_bindgen]
impl LatticeCounter {
    /// Adds `by` (a non-negative integer, default 1).
    pub fn increment(&self, by: Option<f64>) -> Result<(), JsError> {
        let by = by.unwrap_or(1.0);
        if !(by >= 0.0 && by.fract() == 0.0 && by <= 9_007_199_254_740_991.0) {
            return Err(JsError::new(
                "a counter grows by a non-negative safe integer",
            ));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let by = by as u64;
        self.shared
            .apply(|core| core.counter_increment(&self.doc, &self.name, by))
    }

    #[wasm_bindgen(getter)]
    pub fn value(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let value = self
            .shared
            .core
            .borrow()
            .document(&self.doc)
            .map_or(0, |d| d.counter(&self.name)) as f64;
        value
    }
}

/// A last-writer-wins register holding a `LatticeValue`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct LatticeRegister {
    shared: Rc<Shared>,
    doc: DocId,
    name: String,
}

#[wasm_bindgen]
impl LatticeRegister {
    pub fn set(
        &self,
        #[wasm_bindgen(unchecked_param_type = "LatticeValue")] value: JsValue,
    ) -> Result<(), JsError> {
        let value: Value = value_from_js(&value).map_err(js_error)?;
        self.shared
            .apply(|core| core.register_set(&self.doc, &self.name, value))
    }

    /// The current value, or `undefined` if the register was never written.
    #[wasm_bindgen(unchecked_return_type = "LatticeValue | undefined")]
    pub fn get(&self) -> JsValue {
        self.shared
            .core
            .borrow()
            .document(&self.doc)
            .and_then(|d| d.register(&self.name))
            .map_or(JsValue::UNDEFINED, value_to_js)
    }
}
