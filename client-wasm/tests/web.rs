//! Tests of the wasm glue in a real browser (headless Chromium, through `cargo xtask test`):
//! IndexedDB, the WebSocket driver, callbacks, and JS value conversions.
//!
//! The server side is a scripted stand-in: a `WebSocket` replacement installed on the page records
//! what the client sends and lets the test deliver frames built with the engine's `ServerMsg`, so
//! the whole driver runs (open, handshake, resync, acks, presence, reconnect) without a server.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use lattice_client::core::{
    COPY_REPLICA, PendingKey, StoreOp, StoredDelta, decode_record, encode_record,
};
use lattice_client::{
    LatticeClient, LatticeDocument, PendingStore, ValueError, value_from_js, value_to_js,
};
use lattice_engine::protocol::{ClientMsg, ServerMsg};
use lattice_engine::{DocId, Document, ReplicaId, Value};
use wasm_bindgen::convert::TryFromJsValue;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
export function install_mock() {
  if (globalThis.__latticeMock) return;
  class MockWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.binaryType = "blob";
      this.bufferedAmount = 0;
      this.sent = [];
      this.closed = false;
      MockWebSocket.sockets.push(this);
      setTimeout(() => {
        if (this.closed) return;
        this.readyState = 1;
        if (this.onopen) this.onopen(new Event("open"));
      }, 0);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(new Uint8Array(data));
    }
    close(code) {
      if (this.closed) return;
      this.closed = true;
      this.readyState = 3;
      setTimeout(() => {
        if (this.onclose) this.onclose(new CloseEvent("close", { code: code || 1005 }));
      }, 0);
    }
  }
  MockWebSocket.sockets = [];
  globalThis.__latticeMock = MockWebSocket;
  globalThis.WebSocket = MockWebSocket;
}
export function sockets() { return globalThis.__latticeMock.sockets.length; }
export function socket(i) { return globalThis.__latticeMock.sockets[i]; }
export function take_sent(sock) { const s = sock.sent; sock.sent = []; return s; }
export function is_open(sock) { return sock.readyState === 1 && !sock.closed; }
export function deliver(sock, bytes) {
  sock.onmessage(new MessageEvent("message", { data: bytes.slice().buffer }));
}
export function server_close(sock, code) {
  sock.closed = true;
  sock.readyState = 3;
  sock.onclose(new CloseEvent("close", { code }));
}
export function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }
export function unique(prefix) { return prefix + "-" + Math.random().toString(36).slice(2); }
"#)]
extern "C" {
    fn install_mock();
    fn sockets() -> u32;
    fn socket(i: u32) -> JsValue;
    fn take_sent(sock: &JsValue) -> Array;
    fn is_open(sock: &JsValue) -> bool;
    fn deliver(sock: &JsValue, bytes: &[u8]);
    fn server_close(sock: &JsValue, code: u16);
    fn sleep(ms: u32) -> Promise;
    fn unique(prefix: &str) -> String;
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        JsFuture::from(sleep(5)).await.expect("sleep");
    }
    panic!("timed out waiting until {what}");
}

fn options(fields: &[(&str, JsValue)]) -> JsValue {
    let object = Object::new();
    for (key, value) in fields {
        Reflect::set(&object, &JsValue::from_str(key), value).expect("set option");
    }
    object.into()
}

async fn open(client: &LatticeClient, doc: &str) -> LatticeDocument {
    let handle = JsFuture::from(client.open(doc.to_owned()))
        .await
        .expect("open resolves");
    LatticeDocument::try_from_js_value(handle).expect("a LatticeDocument")
}

fn sent(sock: &JsValue) -> Vec<ClientMsg> {
    take_sent(sock)
        .iter()
        .map(|frame| {
            let bytes = frame.dyn_into::<Uint8Array>().expect("bytes").to_vec();
            ClientMsg::decode(&bytes, usize::MAX).expect("client frame")
        })
        .collect()
}

/// Records what a callback receives, as JSON text.
#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Vec<String>>>);

impl Recorder {
    fn callback(&self) -> Function {
        let seen = self.0.clone();
        let closure = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |a: JsValue, b: JsValue| {
            let text = |v: &JsValue| {
                js_sys::JSON::stringify(v)
                    .ok()
                    .and_then(|s| s.as_string())
                    .unwrap_or_else(|| "undefined".into())
            };
            let entry = if b.is_undefined() {
                text(&a)
            } else {
                format!("{} {}", text(&a), text(&b))
            };
            seen.borrow_mut().push(entry);
        });
        closure.into_js_value().unchecked_into()
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.borrow_mut())
    }

    fn contains(&self, needle: &str) -> bool {
        self.0.borrow().iter().any(|e| e.contains(needle))
    }
}

#[wasm_bindgen_test]
async fn pending_store_round_trips_records_of_every_replica() {
    let store = PendingStore::open(&unique("lattice-test-store"))
        .await
        .expect("IndexedDB opens");
    let notes = DocId::new("team/notes").expect("doc");
    let todo = DocId::new("team/todo").expect("doc");
    let record = |doc: &DocId, replica: u32, seq: u64, byte: u8| StoredDelta {
        key: PendingKey {
            doc: doc.clone(),
            replica,
            seq,
        },
        bytes: vec![byte; 3],
    };
    let records = [
        record(&notes, 9, 2, 1),
        record(&notes, 7, 10, 2),
        record(&todo, 7, 1, 3),
        record(&notes, 7, 9, 4),
    ];
    store
        .apply(&[StoreOp::Put(records[0].clone())], None)
        .expect("put");
    store
        .apply(
            &records[1..]
                .iter()
                .cloned()
                .map(StoreOp::Put)
                .collect::<Vec<_>>(),
            None,
        )
        .expect("put");
    store.flushed().await.expect("flushed");
    let loaded = store.load(&notes).await.expect("load");
    assert_eq!(
        loaded,
        vec![records[3].clone(), records[1].clone(), records[0].clone()],
        "all replicas' records of the document, in key order"
    );
    store
        .apply(
            &[StoreOp::Delete(vec![
                records[3].key.clone(),
                records[0].key.clone(),
            ])],
            None,
        )
        .expect("delete");
    store.flushed().await.expect("flushed");
    assert_eq!(
        store.load(&notes).await.expect("load"),
        vec![records[1].clone()]
    );
    assert_eq!(
        store.load(&todo).await.expect("load"),
        vec![records[2].clone()]
    );
    // The document's saved copy (replica 0) is a record like the others.
    let copy = record(&notes, COPY_REPLICA, 0, 5);
    store
        .apply(&[StoreOp::Put(copy.clone())], None)
        .expect("put");
    store.flushed().await.expect("flushed");
    assert_eq!(
        store.load(&notes).await.expect("load"),
        vec![copy, records[1].clone()]
    );
    store.close();
}

#[wasm_bindgen_test]
async fn edits_count_as_pending_fire_local_changes_and_survive_a_reload() {
    let db = unique("lattice-test-reload");
    let changes = Recorder::default();
    let statuses = Recorder::default();
    let first = LatticeClient::new(options(&[
        ("url", "ws://127.0.0.1:9/v1/sync".into()),
        ("dbName", db.as_str().into()),
    ]))
    .expect("client");
    first.on_change(changes.callback());
    first.on_status(statuses.callback());
    assert_eq!(
        statuses.take(),
        vec![r#"{"status":"offline","pending":0,"saved":true,"transport":"websocket"}"#]
    );
    let doc = open(&first, "notes/a").await;
    let body = doc.text("body".into());
    body.insert(0, "hello wörld").expect("insert");
    body.delete(5, 1).expect("delete");
    assert!(body.insert(100, "x").is_err(), "out of range is an error");
    doc.counter("likes".into())
        .increment(Some(2.0))
        .expect("increment");
    doc.counter("likes".into())
        .increment(None)
        .expect("increment");
    assert!(doc.counter("likes".into()).increment(Some(-1.0)).is_err());
    let title = options(&[("text", "Hi".into()), ("n", 3.into())]);
    doc.register("title".into()).set(title).expect("set");
    assert_eq!(body.to_string_js(), "hellowörld");
    assert_eq!(body.length(), 10);
    assert_eq!(doc.counter("likes".into()).value(), 3.0);
    assert_eq!(
        value_from_js(&doc.register("title".into()).get()).expect("value"),
        Value::Map(BTreeMap::from([
            ("n".into(), Value::Int(3)),
            ("text".into(), Value::String("Hi".into()))
        ]))
    );
    assert!(doc.register("missing".into()).get().is_undefined());
    assert_eq!(doc.pending_count(), 5);
    assert_eq!(first.pending_count(), 5);
    assert_eq!(first.status(), "offline");
    assert!(changes.take().iter().all(|c| c == r#""notes/a" "local""#));
    assert_eq!(
        statuses.take().last().map(String::as_str),
        Some(r#"{"status":"offline","pending":5,"saved":false,"transport":"websocket"}"#)
    );
    JsFuture::from(first.when_persisted())
        .await
        .expect("persisted");
    let first_replica = first.replica_id();
    drop(doc);
    drop(body);
    drop(first);

    // The page reloads: a new client (a new replica) on the same database.
    let second = LatticeClient::new(options(&[
        ("url", "ws://127.0.0.1:9/v1/sync".into()),
        ("dbName", db.as_str().into()),
    ]))
    .expect("client");
    assert_ne!(second.replica_id(), first_replica);
    assert_ne!(second.replica_id(), 0);
    let doc = open(&second, "notes/a").await;
    assert_eq!(doc.text("body".into()).to_string_js(), "hellowörld");
    assert_eq!(doc.counter("likes".into()).value(), 3.0);
    assert_eq!(doc.pending_count(), 5);
    // An invalid document id is refused.
    assert!(JsFuture::from(second.open("../etc".into())).await.is_err());
}

#[wasm_bindgen_test]
async fn syncs_through_the_socket_acks_presence_and_reconnects() {
    install_mock();
    let db = unique("lattice-test-sync");
    let changes = Recorder::default();
    let statuses = Recorder::default();
    let presence = Recorder::default();
    let client = LatticeClient::new(options(&[
        ("url", "ws://mock/v1/sync".into()),
        ("token", "t0ken".into()),
        ("dbName", db.as_str().into()),
        ("backoffMinMs", 20.into()),
        ("backoffMaxMs", 40.into()),
    ]))
    .expect("client");
    client.on_change(changes.callback());
    client.on_status(statuses.callback());
    client.on_presence(presence.callback());
    let doc = open(&client, "notes/b").await;
    doc.text("body".into())
        .insert(0, "offline")
        .expect("insert");
    doc.set_presence(options(&[("name", "me".into())]), Some(true))
        .expect("presence");

    let before = sockets();
    client.connect();
    assert_eq!(client.status(), "connecting");
    wait_until("a socket opens", || {
        sockets() > before && is_open(&socket(before))
    })
    .await;
    let sock = socket(before);
    let hello = sent(&sock);
    assert!(
        matches!(&hello[0], ClientMsg::Hello { token: Some(t), replica: Some(r), .. }
            if t == "t0ken" && *r == client.replica_id()),
        "{hello:?}"
    );
    let id = DocId::new("notes/b").expect("doc");
    assert!(matches!(&hello[1], ClientMsg::Subscribe { doc, .. } if *doc == id));

    deliver(
        &sock,
        &ServerMsg::Welcome {
            protocol: 1,
            server: "mock".into(),
        }
        .encode(),
    );
    assert_eq!(client.status(), "online");
    // The server holds another replica's text; the client lacks it and the server lacks ours.
    let mut other = Document::new(ReplicaId::from_random(4242));
    let theirs = other.text_insert("title", 0, "T").expect("insert");
    deliver(
        &sock,
        &ServerMsg::Sync {
            doc: id.clone(),
            delta: theirs,
            state: other.state(),
        }
        .encode(),
    );
    assert_eq!(client.status(), "synced");
    assert!(doc.synced());
    assert_eq!(doc.text("title".into()).to_string_js(), "T");
    assert!(changes.contains(r#""notes/b" "remote""#));
    let msgs = sent(&sock);
    let seq = msgs
        .iter()
        .find_map(|m| match m {
            ClientMsg::Delta { seq, delta, .. } => {
                let mut server = Document::new(ReplicaId::from_random(1));
                server.apply(delta).expect("apply");
                assert_eq!(server.text("body"), "offline");
                Some(*seq)
            }
            _ => None,
        })
        .expect("the resync sends the offline edit");
    assert!(
        msgs.iter()
            .any(|m| matches!(m, ClientMsg::Presence { typing: true, .. })),
        "presence is published once synced: {msgs:?}"
    );

    // Before the ack the edit is in IndexedDB; after it, it is gone.
    JsFuture::from(client.when_persisted())
        .await
        .expect("persisted");
    let store = PendingStore::open(&db).await.expect("open store");
    let pending_records = |records: &[StoredDelta]| {
        records
            .iter()
            .filter(|r| r.key.replica != COPY_REPLICA)
            .count()
    };
    assert_eq!(pending_records(&store.load(&id).await.expect("load")), 1);
    deliver(
        &sock,
        &ServerMsg::Ack {
            doc: id.clone(),
            seq,
        }
        .encode(),
    );
    assert_eq!(doc.pending_count(), 0);
    assert!(doc.saved());
    assert!(
        statuses
            .contains(r#"{"status":"synced","pending":0,"saved":true,"transport":"websocket"}"#)
    );
    // The acknowledged edit's record goes with the next saved copy (at most every
    // COPY_INTERVAL_MS; the client's one-second tick saves it), and then only the copy is left.
    let mut left = Vec::new();
    for _ in 0..40 {
        JsFuture::from(client.when_persisted())
            .await
            .expect("persisted");
        left = store.load(&id).await.expect("load");
        if pending_records(&left) == 0 {
            break;
        }
        JsFuture::from(sleep(100)).await.expect("sleep");
    }
    assert_eq!(pending_records(&left), 0, "{left:?}");
    assert_eq!(left.len(), 1, "{left:?}");

    // Edits while synced go out at once.
    doc.counter("n".into())
        .increment(Some(4.0))
        .expect("increment");
    assert!(matches!(&sent(&sock)[..], [ClientMsg::Delta { .. }]));

    // Presence of others.
    deliver(
        &sock,
        &ServerMsg::Presence {
            doc: id.clone(),
            peer: 5,
            state: Value::String("alice".into()),
            typing: true,
        }
        .encode(),
    );
    assert!(
        presence.contains(r#""notes/b" [{"peer":5,"state":"alice","typing":true}]"#),
        "{:?}",
        presence.0.borrow()
    );
    assert_eq!(Array::from(&doc.presence()).length(), 1);

    // A remote relay.
    let more = other.text_insert("title", 1, "!").expect("insert");
    deliver(
        &sock,
        &ServerMsg::Delta {
            doc: id.clone(),
            delta: more,
        }
        .encode(),
    );
    assert_eq!(doc.text("title".into()).to_string_js(), "T!");

    // The server goes away: offline, others' presence forgotten, then a new socket.
    changes.take();
    server_close(&sock, 1001);
    assert_eq!(client.status(), "offline");
    assert_eq!(Array::from(&doc.presence()).length(), 0);
    doc.text("body".into()).insert(0, "again ").expect("insert");
    assert_eq!(doc.pending_count(), 2);
    wait_until("the client reconnects", || {
        sockets() > before + 1 && is_open(&socket(before + 1))
    })
    .await;
    let again = sent(&socket(before + 1));
    assert!(matches!(&again[0], ClientMsg::Hello { .. }), "{again:?}");

    // Going offline on purpose stops reconnecting.
    client.disconnect();
    assert_eq!(client.status(), "offline");
    let count = sockets();
    JsFuture::from(sleep(120)).await.expect("sleep");
    assert_eq!(sockets(), count);
    store.close();
}

#[wasm_bindgen_test]
async fn a_callback_may_call_back_into_the_client() {
    let client = Rc::new(
        LatticeClient::new(options(&[
            ("url", "ws://127.0.0.1:9/v1/sync".into()),
            ("dbName", JsValue::NULL),
        ]))
        .expect("client"),
    );
    let doc = open(&client, "reentrant").await;
    let counter = doc.counter("echo".into());
    let calls = Rc::new(RefCell::new(0));
    let seen = calls.clone();
    let echo = Closure::<dyn FnMut(JsValue, JsValue)>::new(move |_: JsValue, _: JsValue| {
        *seen.borrow_mut() += 1;
        if *seen.borrow() < 3 {
            counter.increment(None).expect("nested increment");
        }
    });
    client.on_change(echo.as_ref().unchecked_ref::<Function>().clone());
    doc.text("t".into()).insert(0, "x").expect("insert");
    assert_eq!(*calls.borrow(), 3);
    assert_eq!(doc.counter("echo".into()).value(), 2.0);
    assert_eq!(doc.pending_count(), 3);
}

#[wasm_bindgen_test]
fn js_values_convert_both_ways() {
    let cases = [
        Value::Null,
        Value::Bool(true),
        Value::Int(-42),
        Value::Int(i64::MAX),
        Value::Float(1.5),
        Value::String("é".into()),
        Value::Bytes(vec![0, 1, 255]),
        Value::List(vec![Value::Int(1), Value::Null]),
        Value::Map(BTreeMap::from([(
            "k".into(),
            Value::List(vec![Value::Bytes(vec![7])]),
        )])),
    ];
    for value in cases {
        assert_eq!(value_from_js(&value_to_js(&value)), Ok(value.clone()));
    }
    assert_eq!(value_from_js(&JsValue::UNDEFINED), Ok(Value::Null));
    assert_eq!(value_from_js(&JsValue::from_f64(3.0)), Ok(Value::Int(3)));
    assert!(matches!(
        value_from_js(&js_sys::Date::new_0().into()),
        Err(ValueError::Unsupported { .. })
    ));
    assert!(value_to_js(&Value::Int(i64::MAX)).is_bigint());
    // Stored records decode in the browser build too.
    let mut d = Document::new(ReplicaId::from_random(3));
    let delta = d.counter_increment("c", 1).expect("increment");
    let key = PendingKey {
        doc: DocId::new("c").expect("doc"),
        replica: 3,
        seq: 1,
    };
    assert_eq!(
        decode_record(&key.doc, &encode_record(&key, &delta)),
        Ok(delta)
    );
}
