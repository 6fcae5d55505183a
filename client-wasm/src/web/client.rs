//! `LatticeClient`, the class JavaScript creates: its options, connecting and disconnecting,
//! `open`, and the application's callbacks; and the TypeScript types that the classes'
//! signatures name (`LatticeClientOptions`, `LatticeStatus`, `LatticeValue`, `LatticePeer`, …).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use js_sys::{Function, Promise, Reflect};
use lattice_engine::{DocId, NTP64, ReplicaId, ntp64_from_unix_ms};
use wasm_bindgen::JsValue;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use web_sys::Event;

use super::{Callbacks, LatticeDocument, Shared, Transport, js_error, now_ms};
use crate::core::{ClientCore, ClientEvent, ClientOptions};

/// The IndexedDB database used when the options name none.
pub const DEFAULT_DB_NAME: &str = "lattice";

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
  /**
   * How to reach the server (default `"auto"`): a WebSocket, falling back by itself to
   * Server-Sent Events + POST when WebSockets do not get through, and to long polling when
   * events do not arrive (a buffering proxy); it comes back to WebSockets when they work again.
   */
  transport?: LatticeTransportChoice;
}

/** The transport in use. */
export type LatticeTransport = "websocket" | "sse" | "long-poll";

/** The `transport` option. */
export type LatticeTransportChoice = "auto" | LatticeTransport;

/** The connection: `synced` means online and every open document has caught up with the server. */
export type LatticeStatus = "connecting" | "online" | "synced" | "offline";

/** Where a change came from. */
export type LatticeOrigin = "local" | "remote";

export interface LatticeStatusEvent {
  status: LatticeStatus;
  /** Local edits the server has not acknowledged yet, over all open documents. */
  pending: number;
  /**
   * Every open document is synced and the server has committed everything this client holds
   * of it (its edits, and what a resync sends back of other replicas' edits the server lost).
   */
  saved: boolean;
  /** The transport in use (or being tried). */
  transport: LatticeTransport;
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

fn doc_id(id: &str) -> Result<DocId, JsError> {
    DocId::new(id).map_err(js_error)
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
        let fixed_transport = match option(&options, "transport").as_string().as_deref() {
            None | Some("auto") => None,
            Some(name) => Some(Transport::parse(name).ok_or_else(|| {
                JsError::new(
                    "options.transport must be \"auto\", \"websocket\", \"sse\" or \"long-poll\"",
                )
            })?),
        };
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
        let core = ClientCore::new(random_replica(), browser_clock, token.clone(), core_options);
        let shared = Rc::new_cyclic(|me: &Weak<Shared>| {
            let on_abort_me = me.clone();
            Shared {
                me: me.clone(),
                core: RefCell::new(core),
                url,
                token,
                db_name,
                store: RefCell::new(None),
                link: RefCell::new(None),
                fixed_transport,
                transport: Cell::new(fixed_transport.unwrap_or(Transport::WebSocket)),
                ws_misses: Cell::new(0),
                probe: RefCell::new(None),
                last_probe_ms: Cell::new(0),
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

    /// The transport in use (or being tried): `"websocket"`, `"sse"` or `"long-poll"`.
    #[wasm_bindgen(getter, unchecked_return_type = "LatticeTransport")]
    pub fn transport(&self) -> String {
        self.shared.transport.get().as_str().to_owned()
    }

    /// Local edits the server has not acknowledged yet, over all open documents.
    #[wasm_bindgen(getter, js_name = pendingCount)]
    pub fn pending_count(&self) -> u32 {
        u32::try_from(self.shared.core.borrow().pending_total()).unwrap_or(u32::MAX)
    }

    /// Whether every open document is saved (see `LatticeStatusEvent.saved`).
    #[wasm_bindgen(getter)]
    pub fn saved(&self) -> bool {
        self.shared.core.borrow().all_saved()
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
        if self.shared.link.borrow().is_some() {
            self.shared.close_socket();
        }
        self.shared.probe.borrow_mut().take();
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
        let (status, pending, saved) = {
            let core = self.shared.core.borrow();
            (core.status(), core.pending_total(), core.all_saved())
        };
        self.shared.deliver(ClientEvent::Status {
            status,
            pending,
            saved,
        });
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
