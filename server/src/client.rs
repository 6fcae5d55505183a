//! A native async client on the engine's [`Session`]: the same sync logic as the browser client,
//! driven by tokio and tokio-tungstenite. Used by the end-to-end tests and the benchmarks.
//!
//! It reconnects with jittered exponential backoff and resyncs by state, so edits made while
//! offline reach the server on reconnect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lattice_engine::protocol::{ClientMsg, ServerMsg};
use lattice_engine::sync::{Session, SessionEvent, SessionOutput};
use lattice_engine::{
    ClockedHlc, DEFAULT_MAX_DRIFT, Delta, DocId, Document, EditError, ReplicaId, Value,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Capacity of the queue from the application to the socket task; `edit` waits when full.
pub const CLIENT_OUTBOX: usize = 1_024;
/// Capacity of the event broadcast; a subscriber that falls behind sees `Lagged`.
pub const CLIENT_EVENTS: usize = 4_096;

/// How to reach the server and how to behave.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `ws://host:port/v1/sync`.
    pub url: String,
    pub token: Option<String>,
    pub replica: ReplicaId,
    /// First reconnect delay; doubles per failure up to `backoff_max`, each with ±50 % jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often to send an application ping.
    pub ping_interval: Duration,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, replica: ReplicaId) -> Self {
        Self {
            url: url.into(),
            token: None,
            replica,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
        }
    }
}

/// Connection state, as the application sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Online,
    Offline,
}

struct Inner {
    session: Mutex<Session>,
    outbox: mpsc::Sender<ClientMsg>,
    events: broadcast::Sender<SessionEvent>,
    version: watch::Sender<u64>,
    status: watch::Sender<Status>,
    /// What the application wants: online, offline (simulated network loss) or stopped.
    mode: watch::Sender<Mode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Online,
    Offline,
    Stopped,
}

/// A handle to a running client; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the client; it connects in the background and keeps reconnecting.
    pub fn start(options: ClientOptions) -> Client {
        let hlc = ClockedHlc::new(
            options.replica,
            crate::clock::system_clock,
            DEFAULT_MAX_DRIFT,
        );
        let mut session = Session::new(options.replica, hlc);
        session.set_token(options.token.clone());
        session.set_agent(Some(format!("lattice-native/{}", crate::VERSION)));
        let (outbox, rx) = mpsc::channel(CLIENT_OUTBOX);
        let (events, _) = broadcast::channel(CLIENT_EVENTS);
        let inner = Arc::new(Inner {
            session: Mutex::new(session),
            outbox,
            events,
            version: watch::channel(0).0,
            status: watch::channel(Status::Connecting).0,
            mode: watch::channel(Mode::Online).0,
        });
        tokio::spawn(socket_task(inner.clone(), options, rx));
        Client { inner }
    }

    fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let mut guard = match self.inner.session.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    async fn dispatch(&self, out: SessionOutput) {
        for msg in out.send {
            // The socket task owns the receiver for the client's whole life.
            let _ = self.inner.outbox.send(msg).await;
        }
        for event in out.events {
            let _ = self.inner.events.send(event);
        }
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// Starts replicating `doc`, with local deltas a previous run did not get confirmed.
    pub async fn open(
        &self,
        doc: &DocId,
        restored: Vec<Delta>,
    ) -> Result<(), lattice_engine::ApplyError> {
        let out = self.with_session(|s| s.open(doc.clone(), restored))?;
        self.dispatch(out).await;
        Ok(())
    }

    /// Makes a local change; it is sent now if the document is synced, else on resync.
    pub async fn edit(
        &self,
        doc: &DocId,
        edit: impl FnOnce(&mut Document, &mut ClockedHlc) -> Result<Delta, EditError>,
    ) -> Result<(), EditError> {
        let out = self.with_session(|s| s.edit(doc, edit))?;
        self.dispatch(out).await;
        Ok(())
    }

    /// Publishes presence on `doc` (`Value::Null` leaves).
    pub async fn presence(&self, doc: &DocId, state: Value, typing: bool) {
        let out = self.with_session(|s| s.presence(doc, state, typing));
        self.dispatch(out).await;
    }

    /// Reads the replica of `doc`.
    pub fn read<T>(&self, doc: &DocId, f: impl FnOnce(&Document) -> T) -> Option<T> {
        self.with_session(|s| s.document(doc).map(f))
    }

    pub fn json(&self, doc: &DocId) -> Option<serde_json::Value> {
        self.read(doc, Document::to_json)
    }

    /// Local deltas of `doc` not yet acknowledged.
    pub fn pending(&self, doc: &DocId) -> usize {
        self.with_session(|s| s.pending(doc))
    }

    /// Whether everything this client holds of `doc` is committed on the server
    /// ([`Session::is_settled`]): synced, no local delta pending, no resync delta in flight.
    pub fn is_settled(&self, doc: &DocId) -> bool {
        self.with_session(|s| s.is_settled(doc))
    }

    pub fn pending_deltas(&self, doc: &DocId) -> Vec<Delta> {
        self.with_session(|s| s.pending_deltas(doc))
    }

    pub fn is_synced(&self, doc: &DocId) -> bool {
        self.with_session(|s| s.is_synced(doc))
    }

    pub fn status(&self) -> Status {
        *self.inner.status.borrow()
    }

    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    /// Waits until `pred` holds for the session, or `timeout` passes; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&Session) -> bool) -> bool {
        let mut version = self.inner.version.subscribe();
        let check = || self.with_session(|s| pred(s));
        tokio::time::timeout(timeout, async {
            loop {
                if check() {
                    return;
                }
                if version.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Simulates losing the network (`true`) or regaining it (`false`).
    pub fn set_offline(&self, offline: bool) {
        self.inner.mode.send_if_modified(|mode| {
            let want = if offline { Mode::Offline } else { Mode::Online };
            let change = *mode != Mode::Stopped && *mode != want;
            if change {
                *mode = want;
            }
            change
        });
    }

    /// Stops the client for good.
    pub fn stop(&self) {
        self.inner.mode.send_replace(Mode::Stopped);
    }
}

fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

async fn socket_task(inner: Arc<Inner>, options: ClientOptions, mut rx: mpsc::Receiver<ClientMsg>) {
    let client = Client {
        inner: inner.clone(),
    };
    let mut mode = inner.mode.subscribe();
    let mut backoff = options.backoff_min;
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Stopped => return,
            Mode::Offline => {
                let _ = inner.status.send(Status::Offline);
                // Edits while offline produce no messages; anything stale is covered by resync.
                while rx.try_recv().is_ok() {}
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Online => {}
        }
        let _ = inner.status.send(Status::Connecting);
        let ws = match tokio_tungstenite::connect_async(upgrade_request(&options)).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "connect failed; backing off");
                let _ = inner.status.send(Status::Offline);
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                    _ = mode.changed() => {}
                }
                backoff = (backoff * 2).min(options.backoff_max);
                continue;
            }
        };
        let (mut sink, mut stream) = ws.split();
        // Stale messages from the previous connection are covered by the resync.
        while rx.try_recv().is_ok() {}
        let hello = client.with_session(Session::connected);
        let mut alive = true;
        for msg in hello.send {
            if sink
                .feed(Message::Binary(msg.encode().into()))
                .await
                .is_err()
            {
                alive = false;
            }
        }
        alive &= sink.flush().await.is_ok();
        let mut ping = tokio::time::interval(options.ping_interval);
        ping.reset();
        let mut nonce = 0u64;
        while alive {
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(Message::Binary(bytes))) => {
                        match ServerMsg::decode(&bytes, usize::MAX) {
                            Ok(msg) => {
                                if matches!(msg, ServerMsg::Welcome { .. }) {
                                    backoff = options.backoff_min;
                                    let _ = inner.status.send(Status::Online);
                                }
                                let out = client.with_session(|s| s.handle(msg));
                                for m in out.send {
                                    if sink.feed(Message::Binary(m.encode().into())).await.is_err() {
                                        alive = false;
                                    }
                                }
                                alive &= sink.flush().await.is_ok();
                                for event in out.events {
                                    let _ = inner.events.send(event);
                                }
                                inner.version.send_modify(|v| *v += 1);
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable server frame"),
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => alive = false,
                    Some(Ok(_)) => {}
                },
                msg = rx.recv() => match msg {
                    Some(msg) => {
                        let mut ok = sink.feed(Message::Binary(msg.encode().into())).await.is_ok();
                        while let Ok(more) = rx.try_recv() {
                            ok &= sink.feed(Message::Binary(more.encode().into())).await.is_ok();
                        }
                        alive = ok && sink.flush().await.is_ok();
                    }
                    None => return,
                },
                _ = ping.tick() => {
                    nonce += 1;
                    alive = sink.send(Message::Binary(ClientMsg::Ping { nonce }.encode().into())).await.is_ok();
                }
                changed = mode.changed() => {
                    if changed.is_err() || *mode.borrow() != Mode::Online {
                        let _ = sink.close().await;
                        alive = false;
                    }
                }
            }
        }
        client.with_session(Session::disconnected);
        let _ = inner.status.send(Status::Offline);
        inner.version.send_modify(|v| *v += 1);
        if *mode.borrow() == Mode::Online {
            tokio::select! {
                _ = tokio::time::sleep(jitter(backoff)) => {}
                _ = mode.changed() => {}
            }
            backoff = (backoff * 2).min(options.backoff_max);
        }
    }
}

/// The upgrade request: the URL, and the token as `Authorization: Bearer` as well as in the
/// hello, so that the server admits the connection to an authenticated slot at once (a flood
/// of connections without a token cannot then keep this client out).
fn upgrade_request(
    options: &ClientOptions,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let Ok(mut request) = options.url.as_str().into_client_request() else {
        // An address that does not parse fails again, with its error, in connect_async.
        return tokio_tungstenite::tungstenite::handshake::client::Request::default();
    };
    if let Some(token) = &options.token
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        request.headers_mut().insert("authorization", value);
    }
    request
}
