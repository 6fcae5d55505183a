//! The HTTP transports as a socket (docs/http-api.md): Server-Sent Events or long polling to
//! read, `POST` to write. The core speaks its protocol as over a WebSocket; this link turns its
//! frames into HTTP requests and the server's events back into frames:
//!
//! - `hello` is answered here with a `welcome`, `ping` with a `pong`;
//! - `subscribe` opens a reader for the document (`?state=` carries what the client holds, so
//!   the `sync` event is what it lacks), `unsubscribe` closes it;
//! - `delta` becomes `POST /v1/updates/{doc}`, one at a time per document (acks stay in order),
//!   with `Idempotency-Key: <replica>:<seq>` so a retry is never applied twice; its `200` becomes
//!   the `ack`;
//! - `presence` becomes `POST /v1/presence/{doc}` for the document's SSE stream.
//!
//! A stream the server ends on purpose (its lifetime, a slow reader, a restart) is reopened
//! from its last seq (`?after=`) without the core noticing. Anything else (a refused request,
//! a stream that cannot open) fails the link: the core sees the socket close and resyncs on
//! the next one, as after a WebSocket drop.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use js_sys::{Function, JSON, Object, Promise, Reflect, Uint8Array};
use lattice_engine::protocol::{ClientMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::{DocId, DocState, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{EventSource, MessageEvent};

use super::{Shared, now_ms, value_from_js, value_to_js};
use crate::small_map::SmallMap;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = fetch)]
    fn fetch_with(input: &str, init: &JsValue) -> Promise;
    #[wasm_bindgen(js_name = btoa)]
    fn btoa(data: &str) -> String;
    #[wasm_bindgen(js_name = atob, catch)]
    fn atob(data: &str) -> Result<String, JsValue>;
    #[wasm_bindgen(js_name = encodeURIComponent)]
    fn encode_uri_component(s: &str) -> String;
    #[wasm_bindgen(js_name = encodeURI)]
    fn encode_uri(s: &str) -> String;
}

/// How an HTTP link reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// Server-Sent Events (`GET /v1/events/{doc}`).
    Sse,
    /// Long polling (`GET /v1/updates/{doc}`).
    LongPoll,
}

/// How long a long poll waits at the server.
const POLL_WAIT_MS: u32 = 25_000;

/// How often a long-polling client asks for the others' presence.
const PRESENCE_POLL_MS: i32 = 2_000;

/// Resolves after `ms` milliseconds.
async fn sleep_ms(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        if let Some(window) = web_sys::window() {
            let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(promise).await;
}

/// Stream restarts in a row without an event before the link fails.
const MAX_SILENT_RESTARTS: u32 = 3;

fn to_base64(bytes: &[u8]) -> String {
    let binary: String = bytes.iter().map(|b| char::from(*b)).collect();
    btoa(&binary)
}

fn from_base64(text: &str) -> Option<Vec<u8>> {
    let binary = atob(text).ok()?;
    binary
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

fn field(obj: &JsValue, name: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(name)).unwrap_or(JsValue::UNDEFINED)
}

fn bytes_field(obj: &JsValue, name: &str) -> Option<Vec<u8>> {
    from_base64(&field(obj, name).as_string()?)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn u64_field(obj: &JsValue, name: &str) -> Option<u64> {
    field(obj, name)
        .as_f64()
        .filter(|n| *n >= 0.0)
        .map(|n| n as u64)
}

/// An open SSE stream and its listener.
type Stream = (EventSource, Closure<dyn FnMut(MessageEvent)>);

/// One document's reader and writer.
struct DocLink {
    /// The open SSE stream (closed when dropped from here).
    stream: Option<Stream>,
    /// Set to stop this document's long-poll loop or stream restarts.
    stopped: Rc<Cell<bool>>,
    /// The seq of the last entry read (for `?after=`).
    after: Option<u64>,
    /// The SSE stream's peer number (for presence).
    peer: Option<u64>,
    /// Restarts since the last event.
    silent_restarts: u32,
    /// Deltas to POST, in order, and whether one is on its way.
    posts: VecDeque<(u64, Vec<u8>)>,
    posting: bool,
    /// What the client held when it subscribed.
    known: Vec<u8>,
}

/// The HTTP transports as one socket of [`Shared`].
pub(super) struct HttpLink {
    me: Weak<HttpLink>,
    shared: Weak<Shared>,
    generation: u64,
    reading: Reading,
    /// `http(s)://host[:port]` and the path before `/v1/sync`.
    base: String,
    token: Option<String>,
    replica: u32,
    docs: RefCell<SmallMap<DocId, DocLink>>,
    /// Whether any event came from the server on this link.
    heard: Cell<bool>,
}

impl std::fmt::Debug for HttpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLink")
            .field("reading", &self.reading)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The HTTP base of a WebSocket sync URL: `wss://h/p/v1/sync` → `https://h/p`.
pub(super) fn http_base(ws_url: &str) -> String {
    let url = ws_url
        .strip_prefix("wss://")
        .map(|rest| format!("https://{rest}"))
        .or_else(|| {
            ws_url
                .strip_prefix("ws://")
                .map(|rest| format!("http://{rest}"))
        })
        .unwrap_or_else(|| ws_url.to_owned());
    let url = url.split(['?', '#']).next().unwrap_or("").to_owned();
    url.strip_suffix("/v1/sync")
        .map_or_else(|| url.trim_end_matches('/').to_owned(), str::to_owned)
}

impl HttpLink {
    pub(super) fn new(
        shared: Weak<Shared>,
        generation: u64,
        reading: Reading,
        base: String,
        token: Option<String>,
        replica: u32,
    ) -> Rc<HttpLink> {
        Rc::new_cyclic(|me| HttpLink {
            me: me.clone(),
            shared,
            generation,
            reading,
            base,
            token,
            replica,
            docs: RefCell::new(SmallMap::new()),
            heard: Cell::new(false),
        })
    }

    pub(super) fn reading(&self) -> Reading {
        self.reading
    }

    /// Whether the server has sent anything on this link.
    pub(super) fn heard(&self) -> bool {
        self.heard.get()
    }

    /// Opens the link: the core sees the socket open (and sends `hello`).
    pub(super) fn open(&self) {
        self.later(|shared| shared.core.borrow_mut().socket_open(now_ms()));
    }

    /// Runs `f` on the client after the current call returns (never nested in a flush), if
    /// this link is still the client's.
    fn later(&self, f: impl FnOnce(&Shared) + 'static) {
        let (shared, generation) = (self.shared.clone(), self.generation);
        spawn_local(async move {
            if let Some(shared) = shared
                .upgrade()
                .filter(|s| s.generation.get() == generation)
            {
                f(&shared);
                shared.flush();
            }
        });
    }

    /// Hands a message from the server to the core.
    fn deliver(&self, msg: ServerMsg) {
        if let Some(shared) = self.live() {
            shared.core.borrow_mut().receive_msg(msg, now_ms());
            shared.flush();
        }
    }

    fn live(&self) -> Option<Rc<Shared>> {
        self.shared
            .upgrade()
            .filter(|s| s.generation.get() == self.generation)
    }

    /// The link cannot go on: the core sees the socket close, and reconnects with backoff.
    fn fail(&self, why: &str) {
        web_sys::console::warn_1(&format!("lattice: HTTP link failed: {why}").into());
        if let Some(shared) = self.live() {
            shared.link_failed();
        }
    }

    /// Stops every reader (the link is being dropped).
    pub(super) fn close(&self) {
        for (_, d) in std::mem::take(&mut *self.docs.borrow_mut()) {
            d.stopped.set(true);
            if let Some((source, _)) = d.stream {
                source.close();
            }
        }
    }

    /// One message from the core.
    pub(super) fn send(&self, msg: ClientMsg) {
        match msg {
            ClientMsg::Hello { .. } => {
                let welcome = ServerMsg::Welcome {
                    protocol: PROTOCOL_VERSION,
                    server: format!("lattice over HTTP ({:?})", self.reading),
                };
                let me = self.me.clone();
                spawn_local(async move {
                    if let Some(link) = me.upgrade() {
                        link.deliver(welcome);
                    }
                });
            }
            ClientMsg::Ping { nonce } => {
                let me = self.me.clone();
                spawn_local(async move {
                    if let Some(link) = me.upgrade() {
                        link.deliver(ServerMsg::Pong { nonce });
                    }
                });
            }
            ClientMsg::Subscribe { doc, state } => self.subscribe(doc, &state),
            ClientMsg::Unsubscribe { doc } => {
                if let Some(d) = self.docs.borrow_mut().remove(&doc) {
                    d.stopped.set(true);
                    if let Some((source, _)) = d.stream {
                        source.close();
                    }
                }
            }
            ClientMsg::Delta { doc, seq, delta } => {
                if let Some(d) = self.docs.borrow_mut().get_mut(&doc) {
                    d.posts.push_back((seq, delta.encode()));
                }
                self.post_next(doc);
            }
            ClientMsg::Presence { doc, state, typing } => self.presence(&doc, &state, typing),
        }
    }

    fn subscribe(&self, doc: DocId, state: &DocState) {
        let known = state.encode();
        let link = DocLink {
            stream: None,
            stopped: Rc::new(Cell::new(false)),
            after: None,
            peer: None,
            silent_restarts: 0,
            posts: VecDeque::new(),
            posting: false,
            known,
        };
        if let Some(old) = self.docs.borrow_mut().insert(doc.clone(), link) {
            old.stopped.set(true);
            if let Some((source, _)) = old.stream {
                source.close();
            }
        }
        match self.reading {
            Reading::Sse => self.open_stream(&doc),
            Reading::LongPoll => {
                self.start_presence_polling(doc.clone());
                self.start_polling(doc);
            }
        }
    }

    fn path(&self, what: &str, doc: &DocId) -> String {
        format!("{}/v1/{what}/{}", self.base, encode_uri(doc.as_str()))
    }

    fn token_query(&self) -> String {
        self.token.as_deref().map_or_else(String::new, |t| {
            format!("token={}&", encode_uri_component(t))
        })
    }

    /// The document's reader URL: from `after`, or a `sync` of what `known` lacks.
    fn reader_url(&self, what: &str, doc: &DocId) -> Option<String> {
        let docs = self.docs.borrow();
        let d = docs.get(doc)?;
        let from = match d.after {
            Some(after) => format!("after={after}"),
            None => format!("state={}", encode_uri_component(&to_base64(&d.known))),
        };
        Some(format!(
            "{}?{}{from}",
            self.path(what, doc),
            self.token_query()
        ))
    }

    // --- Server-Sent Events ------------------------------------------------------------------

    fn open_stream(&self, doc: &DocId) {
        let Some(url) = self.reader_url("events", doc) else {
            return;
        };
        let source = match EventSource::new(&url) {
            Ok(s) => s,
            Err(_) => return self.fail("EventSource cannot open"),
        };
        let (me, id) = (self.me.clone(), doc.clone());
        let on_event = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            if let Some(link) = me.upgrade() {
                link.on_stream_event(&id, &event);
            }
        });
        for kind in ["sync", "delta", "presence", "close", "error"] {
            let _ =
                source.add_event_listener_with_callback(kind, on_event.as_ref().unchecked_ref());
        }
        if let Some(d) = self.docs.borrow_mut().get_mut(doc) {
            d.stream = Some((source, on_event));
        } else {
            source.close();
        }
    }

    fn on_stream_event(&self, doc: &DocId, event: &MessageEvent) {
        let kind = event.type_();
        if kind == "error" {
            // The stream broke (network, a proxy) or could not open (a refusal): EventSource
            // would retry on its own, but from the URL it was given; restart it from our seq.
            return self.restart_stream(doc);
        }
        let Some(data) = event.data().as_string() else {
            return;
        };
        let Ok(obj) = JSON::parse(&data) else {
            return self.fail("an event that is not JSON");
        };
        self.heard.set(true);
        if let Some(d) = self.docs.borrow_mut().get_mut(doc) {
            d.silent_restarts = 0;
        }
        if kind == "close" {
            let reason = field(&obj, "reason").as_string().unwrap_or_default();
            return match reason.as_str() {
                "lifetime" | "slow_consumer" | "shutdown" => self.restart_stream(doc),
                _ => self.fail(&format!("the stream ended: {reason}")),
            };
        }
        self.on_event(doc, &kind, &obj);
    }

    fn restart_stream(&self, doc: &DocId) {
        let restart = {
            let mut docs = self.docs.borrow_mut();
            let Some(d) = docs.get_mut(doc) else { return };
            if let Some((source, _)) = d.stream.take() {
                source.close();
            }
            d.silent_restarts += 1;
            d.silent_restarts <= MAX_SILENT_RESTARTS
        };
        if !restart {
            return self.fail("the event stream keeps failing");
        }
        let (me, id) = (self.me.clone(), doc.clone());
        let retry = Closure::once_into_js(move || {
            if let Some(link) = me.upgrade()
                && link.live().is_some()
            {
                link.open_stream(&id);
            }
        });
        if let Some(window) = web_sys::window() {
            let _ = window
                .set_timeout_with_callback_and_timeout_and_arguments_0(retry.unchecked_ref(), 500);
        }
    }

    /// A `sync`, `delta` or `presence` event of either reader.
    fn on_event(&self, doc: &DocId, kind: &str, obj: &JsValue) {
        match kind {
            "sync" | "delta" => {
                // The protocol's own message, as a WebSocket would carry it.
                let Some(frame) = bytes_field(obj, "frame") else {
                    return self.fail("an event without its frame");
                };
                if let Some(d) = self.docs.borrow_mut().get_mut(doc) {
                    d.after = u64_field(obj, "seq").or(d.after);
                    if kind == "sync" {
                        d.peer = u64_field(obj, "peer");
                    }
                }
                if let Some(shared) = self.live() {
                    shared.core.borrow_mut().receive(&frame, now_ms());
                    shared.flush();
                }
            }
            "presence" => {
                let state = value_from_js(&field(obj, "state")).unwrap_or(Value::Null);
                self.deliver(ServerMsg::Presence {
                    doc: doc.clone(),
                    peer: u64_field(obj, "peer").unwrap_or(0),
                    state,
                    typing: field(obj, "typing").as_bool().unwrap_or(false),
                });
            }
            _ => {}
        }
    }

    // --- long polling ------------------------------------------------------------------------

    fn start_polling(&self, doc: DocId) {
        let me = self.me.clone();
        spawn_local(async move {
            loop {
                let Some(link) = me.upgrade() else { return };
                let Some(stopped) = link.docs.borrow().get(&doc).map(|d| d.stopped.clone()) else {
                    return;
                };
                if stopped.get() || link.live().is_none() {
                    return;
                }
                let Some(mut url) = link.reader_url("updates", &doc) else {
                    return;
                };
                if link
                    .docs
                    .borrow()
                    .get(&doc)
                    .is_some_and(|d| d.after.is_some())
                {
                    url.push_str(&format!("&wait_ms={POLL_WAIT_MS}"));
                }
                let answer = link.request("GET", &url, None, &[]);
                drop(link);
                let answer = answer.await;
                let Some(link) = me.upgrade() else { return };
                if stopped.get() || link.live().is_none() {
                    return;
                }
                match answer {
                    Ok((200, body)) => {
                        link.heard.set(true);
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let Ok(obj) = JSON::parse(&text) else {
                            return link.fail("a poll answer that is not JSON");
                        };
                        let events = js_sys::Array::from(&field(&obj, "events"));
                        for event in events.iter() {
                            let kind = field(&event, "type").as_string().unwrap_or_default();
                            link.on_event(&doc, &kind, &event);
                        }
                        if let Some(next) = u64_field(&obj, "next_after")
                            && let Some(d) = link.docs.borrow_mut().get_mut(&doc)
                        {
                            d.after = Some(next);
                        }
                    }
                    Ok((204, _)) => link.heard.set(true),
                    Ok((status, _)) => return link.fail(&format!("a poll answered {status}")),
                    Err(e) => return link.fail(&e),
                }
            }
        });
    }

    // --- writes ------------------------------------------------------------------------------

    /// POSTs the document's next delta if none is on its way; its answer becomes the ack.
    fn post_next(&self, doc: DocId) {
        let next = {
            let mut docs = self.docs.borrow_mut();
            let Some(d) = docs.get_mut(&doc) else { return };
            if d.posting {
                return;
            }
            let Some(next) = d.posts.pop_front() else {
                return;
            };
            d.posting = true;
            next
        };
        let (seq, body) = next;
        let url = format!("{}?{}", self.path("updates", &doc), self.token_query());
        let key = format!("{}:{seq}", self.replica);
        let answer = self.request(
            "POST",
            &url,
            Some(&body),
            &[
                ("Content-Type", "application/msgpack"),
                ("Idempotency-Key", &key),
            ],
        );
        let me = self.me.clone();
        spawn_local(async move {
            let answer = answer.await;
            let Some(link) = me.upgrade() else { return };
            if let Some(d) = link.docs.borrow_mut().get_mut(&doc) {
                d.posting = false;
            }
            match answer {
                Ok((200, _)) => {
                    link.deliver(ServerMsg::Ack {
                        doc: doc.clone(),
                        seq,
                    });
                    link.post_next(doc);
                }
                Ok((status, body)) if (400..500).contains(&status) && status != 409 => {
                    // Refused for good, as a WebSocket would refuse it: say why, go on.
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let obj = JSON::parse(&text).unwrap_or(JsValue::NULL);
                    let name = field(&obj, "error").as_string().unwrap_or_default();
                    let code = ErrorCode::from_name(&name).unwrap_or(ErrorCode::InvalidDelta);
                    link.deliver(ServerMsg::Error {
                        code,
                        message: field(&obj, "message").as_string().unwrap_or(text),
                        doc: Some(doc.clone()),
                        seq: Some(seq),
                    });
                    link.post_next(doc);
                }
                // Missing history, a server error, no network: resync on a new link.
                Ok((status, _)) => link.fail(&format!("a write answered {status}")),
                Err(e) => link.fail(&e),
            }
        });
    }

    /// Publishes this client's presence: for its SSE stream, or (long polling) as a session
    /// named by the replica id, which the server keeps while it is renewed.
    fn presence(&self, doc: &DocId, state: &Value, typing: bool) {
        let body = Object::new();
        match self.docs.borrow().get(doc).and_then(|d| d.peer) {
            #[allow(clippy::cast_precision_loss)]
            Some(peer) if self.reading == Reading::Sse => {
                let _ = Reflect::set(&body, &"peer".into(), &(peer as f64).into());
            }
            _ => {
                let session = self.replica.to_string();
                let _ = Reflect::set(&body, &"session".into(), &session.into());
            }
        }
        let _ = Reflect::set(&body, &"state".into(), &value_to_js(state));
        let _ = Reflect::set(&body, &"typing".into(), &typing.into());
        let Ok(json) = JSON::stringify(&body) else {
            return;
        };
        let json = String::from(json);
        let url = format!("{}?{}", self.path("presence", doc), self.token_query());
        let answer = self.request(
            "POST",
            &url,
            Some(json.as_bytes()),
            &[("Content-Type", "application/json")],
        );
        let (me, doc) = (self.me.clone(), doc.clone());
        spawn_local(async move {
            let Ok((200, body)) = answer.await else {
                return;
            };
            let Some(link) = me.upgrade() else { return };
            let text = String::from_utf8_lossy(&body).into_owned();
            let peer = JSON::parse(&text).ok().and_then(|o| u64_field(&o, "peer"));
            if link.reading == Reading::LongPoll
                && let Some(d) = link.docs.borrow_mut().get_mut(&doc)
            {
                d.peer = peer;
            }
        });
    }

    /// Long polling: the others' presence, polled every `PRESENCE_POLL_MS` and handed to the
    /// core as the joins, changes and leaves since the last poll.
    fn start_presence_polling(&self, doc: DocId) {
        let me = self.me.clone();
        spawn_local(async move {
            let mut known: SmallMap<u64, String> = SmallMap::new();
            loop {
                let Some(link) = me.upgrade() else { return };
                let Some(stopped) = link.docs.borrow().get(&doc).map(|d| d.stopped.clone()) else {
                    return;
                };
                if stopped.get() || link.live().is_none() {
                    return;
                }
                let url = format!("{}?{}", link.path("presence", &doc), link.token_query());
                let answer = link.request("GET", &url, None, &[]);
                drop(link);
                if let Ok((200, body)) = answer.await
                    && let Some(link) = me.upgrade()
                    && !stopped.get()
                {
                    let mine = link.docs.borrow().get(&doc).and_then(|d| d.peer);
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let peers = JSON::parse(&text)
                        .map(|o| field(&o, "peers"))
                        .unwrap_or(JsValue::NULL);
                    let mut now: SmallMap<u64, String> = SmallMap::new();
                    for p in js_sys::Array::from(&peers).iter() {
                        let Some(peer) = u64_field(&p, "peer").filter(|peer| Some(*peer) != mine)
                        else {
                            continue;
                        };
                        let seen = JSON::stringify(&p).map(String::from).unwrap_or_default();
                        if known.get(&peer) != Some(&seen) {
                            link.on_event(&doc, "presence", &p);
                        }
                        now.insert(peer, seen);
                    }
                    for gone in known.keys().filter(|peer| !now.contains_key(peer)) {
                        let left = Object::new();
                        #[allow(clippy::cast_precision_loss)]
                        let _ = Reflect::set(&left, &"peer".into(), &(*gone as f64).into());
                        let _ = Reflect::set(&left, &"state".into(), &JsValue::NULL);
                        link.on_event(&doc, "presence", &left);
                    }
                    known = now;
                }
                sleep_ms(PRESENCE_POLL_MS).await;
            }
        });
    }

    /// One request; its status and body, or why there is none.
    fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> impl std::future::Future<Output = Result<(u16, Vec<u8>), String>> + 'static {
        let init = Object::new();
        let _ = Reflect::set(&init, &"method".into(), &method.into());
        let h = Object::new();
        for (name, value) in headers {
            let _ = Reflect::set(&h, &(*name).into(), &(*value).into());
        }
        let _ = Reflect::set(&init, &"headers".into(), &h);
        if let Some(body) = body {
            let _ = Reflect::set(&init, &"body".into(), &Uint8Array::from(body));
        }
        let promise = fetch_with(url, &init);
        async move {
            let response = JsFuture::from(promise)
                .await
                .map_err(|e| format!("fetch failed: {e:?}"))?;
            let status = field(&response, "status").as_f64().unwrap_or(0.0);
            let read: Function = field(&response, "arrayBuffer").unchecked_into();
            let buffer = read
                .call0(&response)
                .map_err(|e| format!("reading the body failed: {e:?}"))?;
            let buffer = JsFuture::from(Promise::from(buffer))
                .await
                .map_err(|e| format!("reading the body failed: {e:?}"))?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok((status as u16, Uint8Array::new(&buffer).to_vec()))
        }
    }
}
