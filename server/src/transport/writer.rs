//! The sending half of a WebSocket connection: [`Writer`] drains the bounded outbox into the
//! socket (one flush per batch) until a close, on the connection's own task (no task of its
//! own: an idle connection is one task), and [`finish`] lets a connection's close frame and
//! last acks reach the peer before the socket closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::task::AtomicWaker;
use futures_util::{Sink as _, StreamExt};
use tokio::sync::Notify;
use tokio::time::timeout;

use crate::config::Limits;
use crate::transport::close::{CloseCode, close_message};
use crate::transport::outbox::{Message, Outbox, OutboxReceiver, outbox};
use crate::transport::upgrade::WsSocket;

/// The sending half of a socket.
pub(crate) type Sink<S> = SplitSink<S, Message>;
/// The receiving half of a socket.
pub(crate) type Stream<S> = SplitStream<S>;

/// Drains the outbox into the socket, one flush per batch of queued frames (pings are queued
/// like any frame), until a close frame went out (queued, or asked for by the closer, which
/// goes before what is queued), every sender is gone, or the socket failed; then closes the
/// sending side. Written out by hand rather than as an `async` block: it is part of every
/// connection's state, and this way it holds only its fields.
#[derive(Debug)]
pub(crate) struct Writer<S: WsSocket> {
    sink: Sink<S>,
    rx: OutboxReceiver,
    closer: Arc<Closer>,
    /// The frame taken from the outbox (or the closer's close frame) and not written yet.
    next: Option<Message>,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writing frames as they come; `true` once some await a flush.
    Writing(bool),
    /// A close frame is written: flush it, then close.
    Closing,
    /// Closing the sending side (errors are of no interest any more).
    Ending,
    Done,
}

impl<S: WsSocket> Writer<S> {
    pub(crate) fn new(sink: Sink<S>, rx: OutboxReceiver, closer: Arc<Closer>) -> Writer<S> {
        Writer {
            sink,
            rx,
            closer,
            next: None,
            phase: Phase::Writing(false),
        }
    }
}

impl<S: WsSocket> Future for Writer<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this.phase {
                Phase::Writing(unflushed) => {
                    let asked = matches!(this.next, Some(Message::Close(_)));
                    if !asked && let Poll::Ready(code) = this.closer.poll_closed(cx) {
                        // The closer goes first: what is queued is no longer wanted.
                        this.next = Some(close_message(code));
                    }
                    if this.next.is_none() {
                        match this.rx.poll_recv(cx) {
                            Poll::Ready(Some(msg)) => this.next = Some(msg),
                            Poll::Ready(None) => {
                                this.phase = Phase::Ending;
                                continue;
                            }
                            Poll::Pending if unflushed => {
                                this.phase = match ready!(Pin::new(&mut this.sink).poll_flush(cx)) {
                                    Ok(()) => Phase::Writing(false),
                                    Err(_) => Phase::Ending,
                                };
                                continue;
                            }
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    if ready!(Pin::new(&mut this.sink).poll_ready(cx)).is_err() {
                        this.phase = Phase::Ending;
                        continue;
                    }
                    let Some(msg) = this.next.take() else {
                        continue;
                    };
                    let close = matches!(msg, Message::Close(_));
                    this.phase = match Pin::new(&mut this.sink).start_send(msg) {
                        Ok(()) if close => Phase::Closing,
                        Ok(()) => Phase::Writing(true),
                        Err(_) => Phase::Ending,
                    };
                }
                Phase::Closing => {
                    let _ = ready!(Pin::new(&mut this.sink).poll_flush(cx));
                    this.phase = Phase::Ending;
                }
                Phase::Ending => {
                    let _ = ready!(Pin::new(&mut this.sink).poll_close(cx));
                    this.phase = Phase::Done;
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Asks a connection to close, from outside its task (a room that found its outbox full).
#[derive(Debug, Default)]
pub(crate) struct Closer {
    code: Mutex<Option<CloseCode>>,
    notify: Notify,
    /// The connection's own task (its writer and read loop), polled rather than awaiting
    /// `notify`.
    task: AtomicWaker,
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
        self.task.wake();
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
            if let Some(code) = self.code() {
                return code;
            }
            notified.await;
        }
    }

    /// [`Closer::closed`] for the connection's own task (its read loop, its writer): it keeps
    /// one waker, that task's, where `closed` keeps a waiter per call.
    pub(crate) fn closed_here(&self) -> impl Future<Output = CloseCode> + '_ {
        std::future::poll_fn(|cx| self.poll_closed(cx))
    }

    /// [`Closer::closed_here`], polled.
    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<CloseCode> {
        // Registered before the code is read, as above.
        self.task.register(cx.waker());
        self.code().map_or(Poll::Pending, Poll::Ready)
    }
}

/// How long a closing connection keeps reading what its peer still sends, waiting for the
/// peer's close frame (see [`finish`]).
const CLOSE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// A connection's outbox before its writer runs: the sending side (for its peer handle), the
/// closer rooms use to close it, and the writer's side.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub outbox: Outbox,
    pub closer: Arc<Closer>,
    pub rx: OutboxReceiver,
}

impl Outbound {
    /// The outbox of a connection served under `limits`.
    pub(crate) fn new(limits: &Limits) -> Outbound {
        let (outbox, rx) = outbox(limits.outbox_frames, limits.outbox_bytes);
        Outbound {
            outbox,
            closer: Arc::new(Closer::default()),
            rx,
        }
    }
}

/// The end of a connection whose every outbox sender is gone: lets `writer` send what is
/// queued (within `deadline`), then reads what the peer still sends until its close (within
/// [`CLOSE_DRAIN`]).
///
/// Reading to the end matters: a socket closed with unread bytes in the kernel's receive
/// buffer is reset (RST), and the reset can destroy the close frame and acks just sent
/// before the peer reads them. The socket closes only when `stream` is dropped here.
pub(crate) async fn finish<S: WsSocket>(
    writer: impl std::future::Future<Output = ()>,
    mut stream: Stream<S>,
    deadline: std::time::Duration,
) {
    let _ = timeout(deadline, writer).await;
    let drain = async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = timeout(CLOSE_DRAIN.min(deadline), drain).await;
    drop(stream);
}
