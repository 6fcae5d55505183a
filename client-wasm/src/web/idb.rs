//! The pending-delta store in IndexedDB: one object store, `pending`, of records
//! `{doc, replica, seq, delta: Uint8Array}` keyed by `[doc, replica, seq]`. Replica 0, seq 0 is
//! the document's saved copy (`core::COPY_REPLICA`); every other record is an unacknowledged
//! local delta.
//!
//! Writes are fire-and-forget transactions, issued in the order the core produced them;
//! IndexedDB runs read-write transactions on the same store in creation order, so a delete never
//! overtakes the put it undoes. [`PendingStore::flushed`] waits for everything issued before it.

use js_sys::{Array, Function, Promise, Reflect, Uint8Array};
use lattice_engine::DocId;
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    IdbDatabase, IdbFactory, IdbKeyRange, IdbObjectStoreParameters, IdbOpenDbRequest, IdbRequest,
    IdbTransactionMode, IdbVersionChangeEvent,
};

use crate::core::{PendingKey, StoreOp, StoredDelta};

/// Name of the object store.
pub const STORE_NAME: &str = "pending";
/// Schema version of the database.
const DB_VERSION: u32 = 1;

/// An open pending-delta database.
#[derive(Clone, Debug)]
pub struct PendingStore {
    db: IdbDatabase,
}

fn factory() -> Result<IdbFactory, JsValue> {
    Reflect::get(&js_sys::global(), &JsValue::from_str("indexedDB"))?
        .dyn_into::<IdbFactory>()
        .map_err(|_| JsValue::from_str("IndexedDB is not available"))
}

/// Waits for a request and returns its result, or its error.
async fn done(req: &IdbRequest) -> Result<JsValue, JsValue> {
    let promise = Promise::new(&mut |resolve, reject| {
        req.set_onsuccess(Some(&resolve));
        req.set_onerror(Some(&reject));
    });
    let outcome = JsFuture::from(promise).await;
    req.set_onsuccess(None);
    req.set_onerror(None);
    match outcome {
        Ok(_) => req.result(),
        Err(_) => Err(req
            .error()
            .ok()
            .flatten()
            .map_or_else(|| JsValue::from_str("IndexedDB request failed"), Into::into)),
    }
}

fn key_array(key: &PendingKey) -> Array {
    let array = Array::new();
    array.push(&JsValue::from_str(key.doc.as_str()));
    array.push(&JsValue::from(key.replica));
    // Local sequence numbers stay far below 2^53.
    #[allow(clippy::cast_precision_loss)]
    array.push(&JsValue::from_f64(key.seq as f64));
    array
}

fn record(r: &StoredDelta) -> Result<JsValue, JsValue> {
    let object = js_sys::Object::new();
    Reflect::set(
        &object,
        &"doc".into(),
        &JsValue::from_str(r.key.doc.as_str()),
    )?;
    Reflect::set(&object, &"replica".into(), &JsValue::from(r.key.replica))?;
    #[allow(clippy::cast_precision_loss)]
    Reflect::set(&object, &"seq".into(), &JsValue::from_f64(r.key.seq as f64))?;
    Reflect::set(
        &object,
        &"delta".into(),
        &Uint8Array::from(r.bytes.as_slice()).into(),
    )?;
    Ok(object.into())
}

/// Reads a record back; `None` for one whose key fields are not ours (the delta bytes are
/// checked later, by the core).
fn parse_record(v: &JsValue, doc: &DocId) -> Option<StoredDelta> {
    let field = |name: &str| Reflect::get(v, &JsValue::from_str(name)).ok();
    let replica = field("replica")?.as_f64()?;
    let seq = field("seq")?.as_f64()?;
    // Replica 0 is the document's saved copy (`core::COPY_REPLICA`).
    if !(replica >= 0.0 && replica <= f64::from(u32::MAX) && seq >= 0.0) {
        return None;
    }
    let bytes = field("delta")?
        .dyn_into::<Uint8Array>()
        .map(|b| b.to_vec())
        .unwrap_or_default();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(StoredDelta {
        key: PendingKey {
            doc: doc.clone(),
            replica: replica as u32,
            seq: seq as u64,
        },
        bytes,
    })
}

impl PendingStore {
    /// Opens (and on first use creates) the database `name`.
    pub async fn open(name: &str) -> Result<PendingStore, JsValue> {
        let req: IdbOpenDbRequest = factory()?.open_with_u32(name, DB_VERSION)?;
        let upgrading = req.clone();
        let on_upgrade = Closure::once(move |event: IdbVersionChangeEvent| {
            if event.old_version() >= 1.0 {
                return;
            }
            let Ok(db) = upgrading.result().and_then(|r| r.dyn_into::<IdbDatabase>()) else {
                return;
            };
            let params = IdbObjectStoreParameters::new();
            let key_path: Array = ["doc", "replica", "seq"]
                .iter()
                .map(|k| JsValue::from_str(k))
                .collect();
            params.set_key_path(&key_path);
            // A failure here fails the open request, which `done` reports.
            let _ = db.create_object_store_with_optional_parameters(STORE_NAME, &params);
        });
        req.set_onupgradeneeded(Some(on_upgrade.as_ref().unchecked_ref()));
        let result = done(&req).await;
        req.set_onupgradeneeded(None);
        drop(on_upgrade);
        Ok(PendingStore {
            db: result?.dyn_into()?,
        })
    }

    /// Every record of `doc`, of any replica, in key order.
    pub async fn load(&self, doc: &DocId) -> Result<Vec<StoredDelta>, JsValue> {
        let tx = self.db.transaction_with_str(STORE_NAME)?;
        let store = tx.object_store(STORE_NAME)?;
        // Arrays sort after numbers, so `[doc, []]` is above every `[doc, replica, seq]`.
        let lower = Array::of1(&JsValue::from_str(doc.as_str()));
        let upper = Array::of2(&JsValue::from_str(doc.as_str()), &Array::new());
        let range = IdbKeyRange::bound(&lower, &upper)?;
        let values: Array = done(&store.get_all_with_key(&range)?).await?.dyn_into()?;
        Ok(values
            .iter()
            .filter_map(|v| parse_record(&v, doc))
            .collect())
    }

    /// Issues `ops` in one read-write transaction; `on_abort` hears about a failure.
    pub fn apply(&self, ops: &[StoreOp], on_abort: Option<&Function>) -> Result<(), JsValue> {
        if ops.is_empty() {
            return Ok(());
        }
        let tx = self
            .db
            .transaction_with_str_and_mode(STORE_NAME, IdbTransactionMode::Readwrite)?;
        tx.set_onabort(on_abort);
        let store = tx.object_store(STORE_NAME)?;
        for op in ops {
            match op {
                StoreOp::Put(r) => {
                    store.put(&record(r)?)?;
                }
                StoreOp::Delete(keys) => {
                    for key in keys {
                        store.delete(&key_array(key))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Resolves once every transaction issued before the call has committed.
    pub async fn flushed(&self) -> Result<(), JsValue> {
        // A transaction waits for every earlier read-write transaction on its store.
        let tx = self.db.transaction_with_str(STORE_NAME)?;
        let promise = Promise::new(&mut |resolve, reject| {
            tx.set_oncomplete(Some(&resolve));
            tx.set_onabort(Some(&reject));
            tx.set_onerror(Some(&reject));
        });
        // A request keeps the transaction from committing before the handlers are in place.
        tx.object_store(STORE_NAME)?.count()?;
        JsFuture::from(promise).await.map(|_| ())
    }

    /// Closes the connection to the database.
    pub fn close(&self) {
        self.db.close();
    }
}
