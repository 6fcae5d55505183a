//! The browser driver of [`ClientCore`]: `LatticeClient` and its document handles for
//! JavaScript, one link to the server (a WebSocket, or the HTTP transports: `http_link.rs`),
//! two timers (reconnect, tick) and the IndexedDB pending store.
//!
//! **Transport.** With `transport: "auto"` (the default) the client uses a WebSocket; when
//! two in a row end before the server's `welcome` (an upgrade a proxy refuses, a socket that
//! dies at once) it falls back to Server-Sent Events with `POST`, and from those to long
//! polling when a stream delivers nothing for 10 s (a buffering proxy). While on a fallback it
//! tries a WebSocket in the background every 30 s and moves back when one is welcomed.
//!
//! After every input (a call from JavaScript, a socket event, a timer) the driver takes the
//! core's effects out at once ([`Shared::flush`]): frames go to the socket, store operations to
//! IndexedDB, events to the application's callbacks. No `RefCell` borrow is held while
//! JavaScript runs, so callbacks may call back into the client; events they cause are delivered
//! after the current ones, never nested.
//!
//! Event handlers and timers hold a `Weak` reference, so a client that JavaScript frees stops:
//! its socket closes and its timers are cleared.
//!
//! `client.rs` is `LatticeClient`, `document.rs` the document handles, `idb.rs` the pending
//! store and `convert.rs` the JS ↔ `Value` conversions; this file is `Shared`, the state they
//! all hold, which owns the socket and the timers and carries out the core's effects.

mod client;
mod convert;
mod document;
mod http_link;
mod idb;

use std::cell::{Cell, RefCell};
use std::rc::Weak;

use js_sys::{Array, ArrayBuffer, Function, Object, Reflect, Uint8Array};
use lattice_engine::DocId;
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BinaryType, CloseEvent, Event, MessageEvent, WebSocket};

pub use client::{DEFAULT_DB_NAME, LatticeClient};
pub use convert::{ValueError, value_from_js, value_to_js};
pub use document::{LatticeCounter, LatticeDocument, LatticeRegister, LatticeText};
pub use idb::{PendingStore, STORE_NAME};

use crate::core::{ClientCore, ClientError, ClientEvent, Frames, StoreOp};
use http_link::{HttpLink, Reading, http_base};

/// How often the core's timer input runs (pings, presence renewal, idle check).
const TICK_INTERVAL_MS: i32 = 1_000;

/// Most bytes the socket may hold unsent before the connection is dropped and reopened (the
/// resync then sends one compact delta instead of the backlog).
pub const MAX_SOCKET_BUFFERED_BYTES: u32 = 16 * 1024 * 1024;

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

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[derive(Default)]
struct Callbacks {
    status: Option<Function>,
    change: Option<Function>,
    presence: Option<Function>,
    error: Option<Function>,
    /// Per document, the receiver of its Yjs updates (the Yjs bridge).
    yjs: crate::small_map::SmallMap<DocId, Function>,
    /// Per document, a receiver of its peers' presence (the Yjs bridge's awareness).
    doc_presence: crate::small_map::SmallMap<DocId, Function>,
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

/// How the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "long-poll",
        }
    }

    fn parse(name: &str) -> Option<Transport> {
        [Transport::WebSocket, Transport::Sse, Transport::LongPoll]
            .into_iter()
            .find(|t| t.as_str() == name)
    }
}

/// WebSockets in a row that end before `welcome` before `auto` falls back to SSE.
const WS_MISSES_BEFORE_FALLBACK: u32 = 2;
/// An SSE link that hears nothing for this long falls back to long polling (`auto`).
const SSE_SILENCE_MS: i32 = 10_000;
/// While on a fallback, how often `auto` tries a WebSocket in the background.
const WS_PROBE_INTERVAL_MS: u64 = 30_000;

/// The connection to the server.
enum Link {
    Ws(Socket),
    Http(std::rc::Rc<HttpLink>),
}

impl Link {
    fn close(self) {
        match self {
            Link::Ws(socket) => drop(socket),
            Link::Http(link) => link.close(),
        }
    }
}

/// A background WebSocket that checks whether WebSockets work again.
struct Probe {
    _socket: Socket,
}

struct Shared {
    me: Weak<Shared>,
    core: RefCell<ClientCore>,
    url: String,
    token: Option<String>,
    db_name: Option<String>,
    store: RefCell<Option<PendingStore>>,
    link: RefCell<Option<Link>>,
    /// `None` for `auto`: fall back and come back by itself.
    fixed_transport: Option<Transport>,
    transport: Cell<Transport>,
    /// WebSockets in a row that ended before `welcome`.
    ws_misses: Cell<u32>,
    probe: RefCell<Option<Probe>>,
    last_probe_ms: Cell<u64>,
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
        let http = match self.link.borrow().as_ref() {
            Some(Link::Http(link)) => Some(link.clone()),
            _ => None,
        };
        if let Some(link) = http {
            // The HTTP link takes messages, not frames, and may call back into the client.
            let (messages, ops) = {
                let mut core = self.core.borrow_mut();
                (core.take_messages(), core.take_store_ops())
            };
            if messages.drop_connection.is_some() {
                self.reconnect_now();
            } else {
                for msg in messages.messages {
                    link.send(msg);
                }
            }
            self.persist(&ops);
            self.deliver_yjs_updates();
            self.dispatch_events();
            return;
        }
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
        if let Some(Link::Ws(socket)) = self.link.borrow().as_ref() {
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
            ClientEvent::Status {
                status,
                pending,
                saved,
            } => {
                let info = Object::new();
                let _ = Reflect::set(&info, &"status".into(), &status.as_str().into());
                #[allow(clippy::cast_precision_loss)]
                let _ = Reflect::set(&info, &"pending".into(), &(pending as f64).into());
                let _ = Reflect::set(&info, &"saved".into(), &saved.into());
                let _ = Reflect::set(
                    &info,
                    &"transport".into(),
                    &self.transport.get().as_str().into(),
                );
                (callbacks.status.clone(), vec![info.into()])
            }
            ClientEvent::Change { doc, origin } => (
                callbacks.change.clone(),
                vec![doc.as_str().into(), origin.as_str().into()],
            ),
            ClientEvent::Presence { doc } => {
                let peers = peers_to_js(&self.core.borrow().others(&doc));
                if let Some(receiver) = callbacks.doc_presence.get(&doc).cloned() {
                    drop(callbacks);
                    call(&receiver, std::slice::from_ref(&peers));
                    let callbacks = self.callbacks.borrow();
                    let client = callbacks.presence.clone();
                    drop(callbacks);
                    if let Some(client) = client {
                        call(&client, &[doc.as_str().into(), peers]);
                    }
                    return;
                }
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
        call(&callback, &args);
    }

    fn open_socket(&self) {
        if self.link.borrow().is_some() || !self.want_online.get() {
            return;
        }
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        self.core.borrow_mut().connecting();
        let reading = match self.transport.get() {
            Transport::WebSocket => return self.open_websocket(generation),
            Transport::Sse => Reading::Sse,
            Transport::LongPoll => Reading::LongPoll,
        };
        let replica = self.core.borrow().replica().get();
        let link = HttpLink::new(
            self.me.clone(),
            generation,
            reading,
            http_base(&self.url),
            self.token.clone(),
            replica,
        );
        link.open();
        if reading == Reading::Sse && self.fixed_transport.is_none() {
            self.watch_silence(generation, &link);
        }
        *self.link.borrow_mut() = Some(Link::Http(link));
    }

    /// `auto`: an SSE link that hears nothing for a while is behind a buffering proxy; use
    /// long polling instead.
    fn watch_silence(&self, generation: u64, link: &std::rc::Rc<HttpLink>) {
        let (me, link) = (self.me.clone(), std::rc::Rc::downgrade(link));
        let check = Closure::once_into_js(move || {
            let (Some(shared), Some(link)) = (me.upgrade(), link.upgrade()) else {
                return;
            };
            if shared.generation.get() == generation
                && !link.heard()
                && link.reading() == Reading::Sse
                && shared.core.borrow().has_open_docs()
            {
                web_sys::console::warn_1(
                    &"lattice: Server-Sent Events deliver nothing; using long polling".into(),
                );
                shared.switch_transport(Transport::LongPoll);
            }
        });
        let _ = set_timeout(check.unchecked_ref(), SSE_SILENCE_MS);
    }

    /// Moves to `transport` at once (the current link closes; the core resyncs on the new one).
    fn switch_transport(&self, transport: Transport) {
        if self.transport.replace(transport) != transport {
            self.core.borrow_mut().announce_status();
        }
        self.close_socket();
        self.cancel_reconnect();
        self.open_socket();
        self.flush();
    }

    /// The HTTP link cannot go on: as a socket closing.
    fn link_failed(&self) {
        let closed = self.link.borrow_mut().take();
        // `auto`: event streams that fail before a single event (refused, cut by a proxy)
        // are as good as silent: long polling instead.
        if let Some(Link::Http(link)) = &closed
            && link.reading() == Reading::Sse
            && !link.heard()
            && self.fixed_transport.is_none()
            && self.core.borrow().has_open_docs()
        {
            web_sys::console::warn_1(
                &"lattice: Server-Sent Events do not get through; using long polling".into(),
            );
            self.transport.set(Transport::LongPoll);
            self.core.borrow_mut().announce_status();
        }
        self.generation.set(self.generation.get() + 1);
        self.core.borrow_mut().socket_closed();
        self.schedule_reconnect();
        self.flush();
        if let Some(link) = closed {
            link.close();
        }
    }

    /// A WebSocket that ended before `welcome`: after enough in a row, `auto` falls back.
    fn websocket_missed(&self) {
        let misses = self.ws_misses.get() + 1;
        self.ws_misses.set(misses);
        if self.fixed_transport.is_none() && misses >= WS_MISSES_BEFORE_FALLBACK {
            web_sys::console::warn_1(
                &"lattice: WebSockets do not get through; using Server-Sent Events".into(),
            );
            self.transport.set(Transport::Sse);
            self.last_probe_ms.set(now_ms());
            self.core.borrow_mut().announce_status();
        }
    }

    fn open_websocket(&self, generation: u64) {
        let ws = match WebSocket::new(&self.url) {
            Ok(ws) => ws,
            Err(e) => {
                web_sys::console::warn_2(&"lattice: cannot open a WebSocket".into(), &e);
                self.core.borrow_mut().socket_closed();
                self.websocket_missed();
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
                if shared.core.borrow().welcomed() {
                    shared.ws_misses.set(0);
                }
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
                let closed = shared.link.borrow_mut().take();
                if !shared.core.borrow().welcomed() {
                    shared.websocket_missed();
                }
                shared.core.borrow_mut().socket_closed();
                shared.schedule_reconnect();
                shared.flush();
                if let Some(link) = closed {
                    link.close();
                }
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *self.link.borrow_mut() = Some(Link::Ws(Socket {
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        }));
    }

    /// `auto` on a fallback: every `WS_PROBE_INTERVAL_MS`, a WebSocket that says `hello`; a
    /// `welcome` on it moves the client back to WebSockets.
    fn probe_websocket(&self) {
        if self.fixed_transport.is_some()
            || self.transport.get() == Transport::WebSocket
            || self.probe.borrow().is_some()
            || now_ms().saturating_sub(self.last_probe_ms.get()) < WS_PROBE_INTERVAL_MS
        {
            return;
        }
        self.last_probe_ms.set(now_ms());
        let Ok(ws) = WebSocket::new(&self.url) else {
            return;
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        let hello = lattice_engine::protocol::ClientMsg::Hello {
            protocol: lattice_engine::protocol::PROTOCOL_VERSION,
            token: self.token.clone(),
            agent: Some("lattice-client probe".into()),
            replica: None,
        }
        .encode();
        let socket = ws.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_: Event| {
            let _ = socket.send_with_u8_array(&hello);
        });
        let me = self.me.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let Some(shared) = me.upgrade() else { return };
            let welcomed = event.data().dyn_ref::<ArrayBuffer>().is_some_and(|b| {
                matches!(
                    lattice_engine::protocol::ServerMsg::decode(
                        &Uint8Array::new(b).to_vec(),
                        usize::MAX
                    ),
                    Ok(lattice_engine::protocol::ServerMsg::Welcome { .. })
                )
            });
            let probe = shared.probe.borrow_mut().take();
            if welcomed && shared.transport.get() != Transport::WebSocket {
                shared.ws_misses.set(0);
                shared.switch_transport(Transport::WebSocket);
            }
            drop(probe);
        });
        let me = self.me.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
            if let Some(shared) = me.upgrade() {
                let probe = shared.probe.borrow_mut().take();
                drop(probe);
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        *self.probe.borrow_mut() = Some(Probe {
            _socket: Socket {
                ws,
                _on_open: on_open,
                _on_message: on_message,
                _on_close: on_close,
            },
        });
    }

    /// Closes the current socket at once (its close event is ignored) and reports offline.
    fn close_socket(&self) {
        self.generation.set(self.generation.get() + 1);
        let closed = self.link.borrow_mut().take();
        if let Some(link) = closed {
            link.close();
        }
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
                shared.probe_websocket();
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

/// Calls an application callback; its exception is its own: reported where it can be seen, and
/// the client goes on.
fn call(callback: &Function, args: &[JsValue]) {
    let args: Array = args.iter().collect();
    if let Err(thrown) = callback.apply(&JsValue::UNDEFINED, &args) {
        web_sys::console::error_2(&"lattice: a callback threw".into(), &thrown);
    }
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
