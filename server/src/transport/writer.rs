//! The sending half of a WebSocket connection: a writer task drains the bounded outbox into
//! the socket (one flush per batch, pings on an interval) until a close, and [`Outbound`]
//! finishes a connection so that its close frame and last acks reach the peer.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio::time::timeout;
use tracing::{Instrument, debug};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::transport::close::{CloseCode, close_kind, close_message};
use crate::transport::outbox::{Message, Outbox, OutboxReceiver, outbox};
use crate::transport::upgrade::WsSocket;

/// The sending half of a socket.
pub(crate) type Sink<S> = SplitSink<S, Message>;
/// The receiving half of a socket.
pub(crate) type Stream<S> = SplitStream<S>;

/// Drains the outbox into the socket, one flush per batch of queued frames, and sends
/// WebSocket pings. Ends on a close frame, a closer request, or a dead socket.
pub(crate) async fn writer<S: WsSocket>(
    mut sink: Sink<S>,
    mut rx: OutboxReceiver,
    closer: Arc<Closer>,
    ping_interval: std::time::Duration,
) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.reset();
    loop {
        tokio::select! {
            biased;
            code = closer.closed() => {
                let _ = sink.send(close_message(code)).await;
                break;
            }
            msg = rx.recv() => {
                let Some(mut msg) = msg else { break };
                let mut ok = true;
                loop {
                    let is_close = matches!(msg, Message::Close(_));
                    if sink.feed(msg).await.is_err() {
                        ok = false;
                        break;
                    }
                    if is_close {
                        ok = false;
                        break;
                    }
                    match rx.try_recv() {
                        Some(next) => msg = next,
                        None => break,
                    }
                }
                if sink.flush().await.is_err() || !ok {
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
}

/// Asks a connection to close, from outside its task (a room that found its outbox full).
#[derive(Debug, Default)]
pub(crate) struct Closer {
    code: Mutex<Option<CloseCode>>,
    notify: Notify,
}

impl Closer {
    pub(crate) fn close(&self, code: CloseCode) {
        if let Ok(mut slot) = self.code.lock()
            && slot.is_none()
        {
            *slot = Some(code);
        }
        // Every task waiting on it wakes (the writer and the connection's read loop both
        // do): with only one woken, the writer could end without the close code.
        self.notify.notify_waiters();
    }

    /// The code it was closed with, if it was.
    pub(crate) fn code(&self) -> Option<CloseCode> {
        self.code.lock().ok().and_then(|c| *c)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.code.lock().map_or(true, |c| c.is_some())
    }

    pub(crate) async fn closed(&self) -> CloseCode {
        loop {
            // Registered before the code is read, so a close between the two is not missed
            // (`notify_waiters` keeps no permit for later waiters).
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(code) = self.code.lock().ok().and_then(|c| *c) {
                return code;
            }
            notified.await;
        }
    }
}

/// How long a closing connection keeps reading what its peer still sends, waiting for the
/// peer's close frame (see [`Outbound::finish`]).
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The sending half of a connection: a bounded outbox, the closer rooms use to close it, and
/// the writer task that drains both into the socket.
pub(crate) struct Outbound {
    pub outbox: Outbox,
    pub closer: Arc<Closer>,
    writer: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    /// How long [`Outbound::finish`] waits for the writer (the server's shutdown deadline).
    deadline: std::time::Duration,
}

impl Outbound {
    /// Starts the writer of a connection served under `config`; its close is counted in
    /// `metrics`.
    pub(crate) fn start<S: WsSocket>(
        config: &Config,
        metrics: Arc<Metrics>,
        sink: Sink<S>,
    ) -> Outbound {
        let limits = &config.limits;
        let (outbox, rx) = outbox(limits.outbox_frames, limits.outbox_bytes);
        let closer = Arc::new(Closer::default());
        let writer = tokio::spawn(
            writer(sink, rx, closer.clone(), config.heartbeat.ping_interval).in_current_span(),
        );
        Outbound {
            outbox,
            closer,
            writer,
            metrics,
            deadline: config.shutdown_deadline,
        }
    }

    /// The connection is done (every other sender of its outbox dropped): counts the close,
    /// lets the writer send what is queued (within the shutdown deadline), and reads what the
    /// peer still sends until its close (within [`CLOSE_DRAIN`]).
    ///
    /// Reading to the end matters: a socket closed with unread bytes in the kernel's receive
    /// buffer is reset (RST), and the reset can destroy the close frame and acks just sent
    /// before the peer reads them. The socket closes only when `stream` is dropped here.
    pub(crate) async fn finish<S: WsSocket>(self, code: CloseCode, mut stream: Stream<S>) {
        self.metrics.closed(close_kind(code));
        drop(self.outbox);
        let _ = timeout(self.deadline, self.writer).await;
        let drain = async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = timeout(CLOSE_DRAIN.min(self.deadline), drain).await;
        drop(stream);
        debug!(code = code.code(), "connection closed");
    }
}
