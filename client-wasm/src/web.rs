//! The browser driver of [`ClientCore`]: `LatticeClient` and its document handles for
//! JavaScript, one WebSocket, two timers (reconnect, tick) and the IndexedDB pending store.
//!
//! After every input (a call from JavaScript, a socket event, a timer) the driver takes the
//! core's effects out at once ([`Shared::flush`]): frames go to the socket, store operations to
//! IndexedDB, events to the application's callbacks. No `RefCell` borrow is held while
//! JavaScript runs, so callbacks may call back into the client; events they cause are delivered
//! after the current ones, never nested.
//!
//! Event handlers and timers hold a `Weak` reference, so a client that JavaScript frees stops:
//! its socket closes and its timers are cleared.

mod convert;
mod document;
mod idb;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use js_sys::{Array, ArrayBuffer, Function, Object, Promise, Reflect, Uint8Array};
use lattice_engine::{DocId, NTP64, ReplicaId, ntp64_from_unix_ms};
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::future_to_promise;
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

pub use convert::{ValueError, value_from_js, value_to_js};
pub use document::{LatticeCounter, LatticeDocument, LatticeRegister, LatticeText};
pub use idb::{PendingStore, STORE_NAME};

use crate::core::{ClientCore, ClientError, ClientEvent, ClientOptions, Frames, StoreOp};

/// The IndexedDB database used when the options name none.
pub const DEFAULT_DB_NAME: &str = "lattice";

/// How often the core's timer input runs (pings, presence renewal, idle check).
const TICK_INTERVAL_MS: i32 = 1_000;

/// Most bytes the socket may hold unsent before the connection is dropped and reopened (the
/// resync then sends one compact delta instead of the backlog).
pub const MAX_SOCKET_BUFFERED_BYTES: u32 = 16 * 1024 * 1024;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `new LatticeClient(options)`. */
export interface LatticeClientOptions {
  /** The server's sync endpoint, e.g. `wss://example.com/v1/sync`. */
  url: string;
  /** Access token, sent in the `hello` message. */
  token?: string;
  /** IndexedDB database that keeps unacknowledged edits; `null` keeps them in memory only. Default `"lattice"`. */
  dbName?: string | null;
  /** First reconnect delay in ms (default 250); doubles per failure. */
  backoffMinMs?: number;
  /** Cap of the reconnect delay in ms, jitter included (default 30000). */
  backoffMaxMs?: number;
  /** Application ping interval in ms (default 10000). */
  pingIntervalMs?: number;
}

/** The connection: `synced` means online and every open document has caught up with the server. */
export type LatticeStatus = "connecting" | "online" | "synced" | "offline";

/** Where a change came from. */
export type LatticeOrigin = "local" | "remote";

export interface LatticeStatusEvent {
  status: LatticeStatus;
  /** Local edits the server has not acknowledged yet, over all open documents. */
  pending: number;
}

/** What registers and presence hold. Integers beyond 2^53 come back as `bigint`. */
export type LatticeValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | LatticeValue[]
  | { [key: string]: LatticeValue };

/** Another connection's presence on a document. */
export interface LatticePeer {
  peer: number;
  state: LatticeValue;
  typing: boolean;
}

export interface LatticeError {
  /** A protocol error code (`invalid_delta`, `unauthorized`, …), `invalid_record`, `store_failed` or `lagged`. */
  code: string;
  message: string;
  doc?: string;
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_name = setInterval)]
    fn set_interval(handler: &Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearInterval)]
    fn clear_interval(id: &JsValue);
}

fn now_ms() -> u64 {
    // Date.now() is a non-negative integer of milliseconds.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = js_sys::Date::now() as u64;
    ms
}

fn browser_clock() -> NTP64 {
    ntp64_from_unix_ms(now_ms())
}

/// A random non-zero replica id from `crypto.getRandomValues`.
fn random_replica() -> ReplicaId {
    let mut bytes = [0u8; 4];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No Web Crypto: Math.random still gives distinct tabs distinct ids in practice.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bits = (js_sys::Math::random() * f64::from(u32::MAX)) as u32;
        bytes = bits.to_le_bytes();
    }
    ReplicaId::from_random(u32::from_le_bytes(bytes))
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn doc_id(id: &str) -> Result<DocId, JsError> {
    DocId::new(id).map_err(js_error)
}

#[derive(Default)]
struct Callbacks {
    status: Option<Function>,
    change: Option<Function>,
    presence: Option<Function>,
    error: Option<Function>,
    /// Per document, the receiver of its Yjs updates (the Yjs bridge).
    yjs: std::collections::BTreeMap<DocId, Function>,
}

/// One WebSocket and its handlers; dropping it detaches the handlers and closes the socket.
struct Socket {
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// A running `setInterval` and the closure it calls.
type Interval = (JsValue, Closure<dyn FnMut()>);

struct Shared {
    me: Weak<Shared>,
    core: RefCell<ClientCore>,
    url: String,
    db_name: Option<String>,
    store: RefCell<Option<PendingStore>>,
    socket: RefCell<Option<Socket>>,
    /// Counts sockets, so that events of a replaced socket are ignored.
    generation: Cell<u64>,
    want_online: Cell<bool>,
    reconnect_timer: RefCell<Option<JsValue>>,
    tick: RefCell<Option<Interval>>,
    on_store_abort: Closure<dyn FnMut(Event)>,
    callbacks: RefCell<Callbacks>,
    dispatching: Cell<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("core", &self.core)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(timer) = self.reconnect_timer.get_mut().take() {
            clear_timeout(&timer);
        }
        if let Some((timer, _)) = self.tick.get_mut().take() {
            clear_interval(&timer);
        }
        if let Some(store) = self.store.get_mut().take() {
            store.close();
        }
    }
}

impl Shared {
    /// Takes the core's effects out and carries them out.
    fn flush(&self) {
        let (frames, ops) = {
            let mut core = self.core.borrow_mut();
            (core.take_frames(), core.take_store_ops())
        };
        self.send(frames);
        self.persist(&ops);
        self.deliver_yjs_updates();
        self.dispatch_events();
    }

    /// Hands the Yjs updates of bound documents to their receivers, before the change events,
    /// so that an application reading a bound `Y.Doc` in `onChange` sees the change.
    fn deliver_yjs_updates(&self) {
        let updates = self.core.borrow_mut().take_yjs_updates();
        for (doc, update) in updates {
            let receiver = self.callbacks.borrow().yjs.get(&doc).cloned();
            if let Some(receiver) = receiver {
                let bytes = Uint8Array::from(update.as_slice());
                if let Err(thrown) = receiver.call1(&JsValue::UNDEFINED, &bytes) {
                    web_sys::console::error_2(
                        &"lattice: a Yjs update receiver threw".into(),
                        &thrown,
                    );
                }
            }
        }
    }

    fn send(&self, frames: Frames) {
        if frames.drop_connection.is_some() {
            self.reconnect_now();
            return;
        }
        let mut failed = false;
        if let Some(socket) = self.socket.borrow().as_ref() {
            for frame in &frames.frames {
                failed |= socket.ws.send_with_u8_array(frame).is_err();
            }
            failed |= socket.ws.buffered_amount() > MAX_SOCKET_BUFFERED_BYTES;
        }
        if failed {
            self.reconnect_now();
        }
    }

    fn persist(&self, ops: &[StoreOp]) {
        let store = self.store.borrow().clone();
        let Some(store) = store else {
            return;
        };
        if let Err(e) = store.apply(ops, Some(self.on_store_abort.as_ref().unchecked_ref())) {
            self.core.borrow_mut().report_error(
                "store_failed",
                format!("IndexedDB write failed: {e:?}"),
                None,
            );
        }
    }

    fn dispatch_events(&self) {
        if self.dispatching.replace(true) {
            // A callback called back into the client; the outer loop delivers its events.
            return;
        }
        loop {
            let events = self.core.borrow_mut().take_events();
            if events.is_empty() {
                break;
            }
            for event in events {
                self.deliver(event);
            }
        }
        self.dispatching.set(false);
    }

    fn deliver(&self, event: ClientEvent) {
        let callbacks = self.callbacks.borrow();
        let (callback, args): (Option<Function>, Vec<JsValue>) = match event {
            ClientEvent::Status { status, pending } => {
                let info = Object::new();
                let _ = Reflect::set(&info, &"status".into(), &status.as_str().into());
                #[allow(clippy::cast_precision_loss)]
                let _ = Reflect::set(&info, &"pending".into(), &(pending as f64).into());
                (callbacks.status.clone(), vec![info.into()])
            }
            ClientEvent::Change { doc, origin } => (
                callbacks.change.clone(),
                vec![doc.as_str().into(), origin.as_str().into()],
            ),
            ClientEvent::Presence { doc } => {
                let peers = peers_to_js(&self.core.borrow().others(&doc));
                (callbacks.presence.clone(), vec![doc.as_str().into(), peers])
            }
            ClientEvent::Error { code, message, doc } => (
                callbacks.error.clone(),
                vec![error_to_js(code, &message, doc.as_ref())],
            ),
            ClientEvent::Lagged => (
                callbacks.error.clone(),
                vec![error_to_js(
                    "lagged",
                    "events were lost; read every open document again",
                    None,
                )],
            ),
        };
        drop(callbacks);
        let Some(callback) = callback else {
            return;
        };
        let args: Array = args.into_iter().collect();
        if let Err(thrown) = callback.apply(&JsValue::UNDEFINED, &args) {
            // The application's exception is its own; report it where it can be seen and go on.
            web_sys::console::error_2(&"lattice: a callback threw".into(), &thrown);
        }
    }

    fn open_socket(&self) {
        if self.socket.borrow().is_some() || !self.want_online.get() {
            return;
        }
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        self.core.borrow_mut().connecting();
        let ws = match WebSocket::new(&self.url) {
            Ok(ws) => ws,
            Err(e) => {
                web_sys::console::warn_2(&"lattice: cannot open a WebSocket".into(), &e);
                self.core.borrow_mut().socket_closed();
                self.schedule_reconnect();
                self.flush();
                return;
            }
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        let me = self.me.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            if let Some(shared) = me.upgrade().filter(|s| s.generation.get() == generation) {
                shared.core.borrow_mut().socket_open(now_ms());
                shared.flush();
            }
        });
        let me = self.me.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let Some(shared) = me.upgrade().filter(|s| s.generation.get() == generation) else {
                return;
            };
            let data = event.data();
            if let Some(buffer) = data.dyn_ref::<ArrayBuffer>() {
                let bytes = Uint8Array::new(buffer).to_vec();
                shared.core.borrow_mut().receive(&bytes, now_ms());
            } else {
                shared.core.borrow_mut().report_error(
                    "malformed_message",
                    "the server sent a text frame".into(),
                    None,
                );
            }
            shared.flush();
        });
        let me = self.me.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
            if let Some(shared) = me.upgrade().filter(|s| s.generation.get() == generation) {
                let closed = shared.socket.borrow_mut().take();
                shared.core.borrow_mut().socket_closed();
                shared.schedule_reconnect();
                shared.flush();
                drop(closed);
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *self.socket.borrow_mut() = Some(Socket {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        });
    }

    /// Closes the current socket at once (its close event is ignored) and reports offline.
    fn close_socket(&self) {
        self.generation.set(self.generation.get() + 1);
        let closed = self.socket.borrow_mut().take();
        drop(closed);
        self.core.borrow_mut().socket_closed();
    }

    /// Drops a connection that cannot go on and schedules the next one.
    fn reconnect_now(&self) {
        self.close_socket();
        self.schedule_reconnect();
        self.flush();
    }

    fn schedule_reconnect(&self) {
        if !self.want_online.get() || self.reconnect_timer.borrow().is_some() {
            return;
        }
        let delay = self
            .core
            .borrow_mut()
            .next_reconnect_delay_ms(js_sys::Math::random());
        let me = self.me.clone();
        let fire = Closure::once_into_js(move || {
            if let Some(shared) = me.upgrade() {
                shared.reconnect_timer.borrow_mut().take();
                shared.open_socket();
                shared.flush();
            }
        });
        let delay = i32::try_from(delay).unwrap_or(i32::MAX);
        *self.reconnect_timer.borrow_mut() = Some(set_timeout(fire.unchecked_ref(), delay));
    }

    fn cancel_reconnect(&self) {
        if let Some(timer) = self.reconnect_timer.borrow_mut().take() {
            clear_timeout(&timer);
        }
    }

    fn start_tick(&self) {
        if self.tick.borrow().is_some() {
            return;
        }
        let me = self.me.clone();
        let tick = Closure::<dyn FnMut()>::new(move || {
            if let Some(shared) = me.upgrade() {
                shared.core.borrow_mut().tick(now_ms());
                shared.flush();
            }
        });
        let timer = set_interval(tick.as_ref().unchecked_ref(), TICK_INTERVAL_MS);
        *self.tick.borrow_mut() = Some((timer, tick));
    }

    fn stop_tick(&self) {
        if let Some((timer, _)) = self.tick.borrow_mut().take() {
            clear_interval(&timer);
        }
    }

    /// The pending store, opened on first use; `None` when persistence is off.
    async fn store(&self) -> Result<Option<PendingStore>, JsValue> {
        let Some(name) = &self.db_name else {
            return Ok(None);
        };
        if let Some(store) = self.store.borrow().clone() {
            return Ok(Some(store));
        }
        let store = PendingStore::open(name).await?;
        // Another `open` may have raced this one; keep the first.
        let mut slot = self.store.borrow_mut();
        Ok(Some(slot.get_or_insert(store).clone()))
    }

    /// Runs a change on the core and carries out its effects.
    fn apply(
        &self,
        change: impl FnOnce(&mut ClientCore) -> Result<(), ClientError>,
    ) -> Result<(), JsError> {
        let result = change(&mut self.core.borrow_mut());
        self.flush();
        result.map_err(js_error)
    }
}

fn error_to_js(code: &str, message: &str, doc: Option<&DocId>) -> JsValue {
    let error = Object::new();
    let _ = Reflect::set(&error, &"code".into(), &code.into());
    let _ = Reflect::set(&error, &"message".into(), &message.into());
    if let Some(doc) = doc {
        let _ = Reflect::set(&error, &"doc".into(), &doc.as_str().into());
    }
    error.into()
}

fn peers_to_js(peers: &[crate::core::PeerPresence]) -> JsValue {
    peers
        .iter()
        .map(|p| {
            let peer = Object::new();
            #[allow(clippy::cast_precision_loss)]
            let _ = Reflect::set(&peer, &"peer".into(), &(p.peer as f64).into());
            let _ = Reflect::set(&peer, &"state".into(), &value_to_js(&p.state));
            let _ = Reflect::set(&peer, &"typing".into(), &p.typing.into());
            JsValue::from(peer)
        })
        .collect::<Array>()
        .into()
}

/// Reads an optional field of the options object.
fn option(options: &JsValue, name: &str) -> JsValue {
    Reflect::get(options, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

fn option_ms(options: &JsValue, name: &str, default: u64) -> Result<u64, JsError> {
    let v = option(options, name);
    if v.is_undefined() || v.is_null() {
        return Ok(default);
    }
    match v.as_f64() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(ms) if ms.is_finite() && ms >= 0.0 => Ok(ms as u64),
        _ => Err(JsError::new(&format!(
            "option {name} must be a non-negative number of milliseconds"
        ))),
    }
}

/// A connection to a Lattice server and the documents this tab replicates. Each instance is
/// its own replica with a random id.
#[wasm_bindgen]
#[derive(Debug)]
pub struct LatticeClient {
    shared: Rc<Shared>,
}

#[wasm_bindgen]
impl LatticeClient {
    /// Creates a client; it does not connect until `connect()`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "LatticeClientOptions")] options: JsValue,
    ) -> Result<LatticeClient, JsError> {
        let url = option(&options, "url")
            .as_string()
            .ok_or_else(|| JsError::new("options.url must be the server's WebSocket URL"))?;
        let token = option(&options, "token").as_string();
        let db_name = match option(&options, "dbName") {
            v if v.is_undefined() => Some(DEFAULT_DB_NAME.to_owned()),
            v if v.is_null() => None,
            v => Some(
                v.as_string()
                    .ok_or_else(|| JsError::new("options.dbName must be a string or null"))?,
            ),
        };
        let defaults = ClientOptions::default();
        let core_options = ClientOptions {
            backoff_min_ms: option_ms(&options, "backoffMinMs", defaults.backoff_min_ms)?,
            backoff_max_ms: option_ms(&options, "backoffMaxMs", defaults.backoff_max_ms)?,
            ping_interval_ms: option_ms(&options, "pingIntervalMs", defaults.ping_interval_ms)?,
            ..defaults
        };
        let core_options = ClientOptions {
            idle_timeout_ms: core_options
                .idle_timeout_ms
                .max(core_options.ping_interval_ms.saturating_mul(3)),
            ..core_options
        };
        let core = ClientCore::new(random_replica(), browser_clock, token, core_options);
        let shared = Rc::new_cyclic(|me: &Weak<Shared>| {
            let on_abort_me = me.clone();
            Shared {
                me: me.clone(),
                core: RefCell::new(core),
                url,
                db_name,
                store: RefCell::new(None),
                socket: RefCell::new(None),
                generation: Cell::new(0),
                want_online: Cell::new(false),
                reconnect_timer: RefCell::new(None),
                tick: RefCell::new(None),
                on_store_abort: Closure::new(move |_: Event| {
                    if let Some(shared) = on_abort_me.upgrade() {
                        shared.core.borrow_mut().report_error(
                            "store_failed",
                            "an IndexedDB transaction was aborted; unacknowledged edits may \
                             not survive a reload"
                                .into(),
                            None,
                        );
                        shared.flush();
                    }
                }),
                callbacks: RefCell::new(Callbacks::default()),
                dispatching: Cell::new(false),
            }
        });
        // Status events start with the first callback registration; nothing is queued yet.
        shared.core.borrow_mut().take_events();
        Ok(LatticeClient { shared })
    }

    /// This tab's replica id (its Yjs client id).
    #[wasm_bindgen(getter, js_name = replicaId)]
    pub fn replica_id(&self) -> u32 {
        self.shared.core.borrow().replica().get()
    }

    #[wasm_bindgen(getter, unchecked_return_type = "LatticeStatus")]
    pub fn status(&self) -> String {
        self.shared.core.borrow().status().as_str().to_owned()
    }

    /// Local edits the server has not acknowledged yet, over all open documents.
    #[wasm_bindgen(getter, js_name = pendingCount)]
    pub fn pending_count(&self) -> u32 {
        u32::try_from(self.shared.core.borrow().pending_total()).unwrap_or(u32::MAX)
    }

    /// Connects, and keeps reconnecting with jittered exponential backoff until `disconnect()`.
    pub fn connect(&self) {
        self.shared.want_online.set(true);
        self.shared.start_tick();
        if self.shared.reconnect_timer.borrow().is_none() {
            self.shared.open_socket();
        }
        self.shared.flush();
    }

    /// Goes offline on purpose: closes the socket and stops reconnecting. Edits go on and are
    /// kept until the next `connect()`.
    pub fn disconnect(&self) {
        self.shared.want_online.set(false);
        self.shared.cancel_reconnect();
        self.shared.stop_tick();
        if self.shared.socket.borrow().is_some() {
            self.shared.close_socket();
        }
        self.shared.flush();
    }

    /// Opens document `doc`, restoring edits that a previous page (or a closed tab) made but
    /// the server had not acknowledged. Resolves to a handle once they are restored.
    #[wasm_bindgen(unchecked_return_type = "Promise<LatticeDocument>")]
    pub fn open(&self, doc: String) -> Promise {
        let shared = self.shared.clone();
        future_to_promise(async move {
            let id = doc_id(&doc)?;
            if !shared.core.borrow().is_open(&id) {
                let restored = match shared.store().await? {
                    Some(store) => store.load(&id).await?,
                    None => Vec::new(),
                };
                shared.apply(|core| core.open(id.clone(), restored))?;
            }
            Ok(LatticeDocument { shared, doc: id }.into())
        })
    }

    /// Resolves once every edit made so far is written to IndexedDB (at once without one).
    #[wasm_bindgen(js_name = whenPersisted, unchecked_return_type = "Promise<void>")]
    pub fn when_persisted(&self) -> Promise {
        let store = self.shared.store.borrow().clone();
        future_to_promise(async move {
            if let Some(store) = store {
                store.flushed().await?;
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Calls `callback` when the status or the number of unacknowledged edits changes, and once
    /// at once with the current values.
    #[wasm_bindgen(js_name = onStatus)]
    pub fn on_status(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: LatticeStatusEvent) => void")]
        callback: Function,
    ) {
        self.shared.callbacks.borrow_mut().status = Some(callback);
        let (status, pending) = {
            let core = self.shared.core.borrow();
            (core.status(), core.pending_total())
        };
        self.shared.deliver(ClientEvent::Status { status, pending });
    }

    /// Calls `callback(doc, origin)` after a document changed: `"local"` for this client's
    /// edits, `"remote"` for other replicas' changes.
    #[wasm_bindgen(js_name = onChange)]
    pub fn on_change(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(doc: string, origin: LatticeOrigin) => void")]
        callback: Function,
    ) {
        self.shared.callbacks.borrow_mut().change = Some(callback);
    }

    /// Calls `callback(doc, peers)` with the other peers' presence whenever it changes.
    #[wasm_bindgen(js_name = onPresence)]
    pub fn on_presence(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(doc: string, peers: LatticePeer[]) => void")]
        callback: Function,
    ) {
        self.shared.callbacks.borrow_mut().presence = Some(callback);
    }

    /// Calls `callback(error)` for refusals from the server and local storage failures.
    #[wasm_bindgen(js_name = onError)]
    pub fn on_error(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(error: LatticeError) => void")] callback: Function,
    ) {
        self.shared.callbacks.borrow_mut().error = Some(callback);
    }
}
