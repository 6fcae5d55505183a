//! A connection's outbox: the frames queued for its writer, bounded in frames **and** bytes.
//!
//! Rooms and the connection's own task queue frames with [`Outbox::try_send`], which never
//! waits: a full outbox means the peer reads too slowly, and its connection is closed as a slow
//! consumer (4008) so that it resyncs; nothing is dropped silently. Counting bytes as well as
//! frames matters because one frame can be a whole document: 4,096 queued syncs of a 500 KB
//! document are 2 GB. A frame is always admitted into an empty outbox, so a document larger
//! than the byte bound can still be sent; the bound is then that one frame.
//!
//! Memory follows the traffic, not the bounds: the queue is allocated by the first frame, grows
//! with what is queued, and is given back once the writer has taken everything, so an idle
//! connection's outbox holds no buffer at all (a channel sized for its bound would hold one
//! from the start).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
pub(crate) use tokio_tungstenite::tungstenite::Message;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The outbox holds its limit of frames or bytes: the peer is a slow consumer.
    Full,
    /// The writer is gone: the connection is closing.
    Closed,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (the one receiver): a frame was queued, or the last sender left.
    queued: AtomicWaker,
    /// Wakes a sender waiting for a free slot ([`Outbox::send`]): the writer took a frame or
    /// went away.
    taken: Notify,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Message>,
    bytes: usize,
    senders: usize,
    writer_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section leaves the state whole, so a panic elsewhere cannot have left
        // it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side of a connection's outbox (cheap to clone).
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

/// The writer's side of the outbox.
#[derive(Debug)]
pub(crate) struct OutboxReceiver {
    shared: Arc<Shared>,
}

/// An outbox of at most `frames` frames and `max_bytes` bytes (see the module docs).
pub(crate) fn outbox(frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            senders: 1,
            ..State::default()
        }),
        queued: AtomicWaker::new(),
        taken: Notify::new(),
        max_frames: frames.max(1),
        max_bytes,
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver { shared },
    )
}

impl Clone for Outbox {
    fn clone(&self) -> Outbox {
        self.shared.lock().senders += 1;
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.queued.wake();
        }
    }
}

impl Outbox {
    /// Queues a frame without waiting.
    pub(crate) fn try_send(&self, msg: Message) -> Result<(), SendError> {
        let len = msg.len();
        {
            let mut state = self.shared.lock();
            if state.writer_gone {
                return Err(SendError::Closed);
            }
            let over_bytes =
                state.bytes > 0 && state.bytes.saturating_add(len) > self.shared.max_bytes;
            if state.queue.len() >= self.shared.max_frames || over_bytes {
                return Err(SendError::Full);
            }
            state.queue.push_back(msg);
            state.bytes += len;
        }
        self.shared.queued.wake();
        Ok(())
    }

    /// Queues a frame, waiting for a free slot (never for bytes): for the close frame that
    /// ends a connection, which must go out behind everything queued before it.
    pub(crate) async fn send(&self, msg: Message) -> Result<(), SendError> {
        loop {
            // Registered before the queue is looked at, so a slot freed in between is seen.
            let taken = self.shared.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if state.writer_gone {
                    return Err(SendError::Closed);
                }
                if state.queue.len() < self.shared.max_frames {
                    state.bytes += msg.len();
                    state.queue.push_back(msg);
                    drop(state);
                    self.shared.queued.wake();
                    return Ok(());
                }
            }
            taken.await;
        }
    }

    /// Bytes queued and not yet taken by the writer.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

impl OutboxReceiver {
    /// The next frame, once there is one; `None` once every sender is gone and the queue is
    /// empty. Cancel-safe: a frame is taken only when it is returned.
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`OutboxReceiver::recv`], polled.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        // Registered before the queue is looked at, so a frame queued in between wakes it.
        self.shared.queued.register(cx.waker());
        match self.take() {
            Taken::Frame(msg) => Poll::Ready(Some(msg)),
            Taken::Done => Poll::Ready(None),
            Taken::Empty => Poll::Pending,
        }
    }

    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        match self.take() {
            Taken::Frame(msg) => Some(msg),
            Taken::Done | Taken::Empty => None,
        }
    }

    fn take(&self) -> Taken {
        let mut state = self.shared.lock();
        let was_full = state.queue.len() >= self.shared.max_frames;
        let Some(msg) = state.queue.pop_front() else {
            return if state.senders == 0 {
                Taken::Done
            } else {
                Taken::Empty
            };
        };
        state.bytes -= msg.len();
        if state.queue.is_empty() {
            // Drained: the next frame allocates again (a few frames' worth), so an idle
            // connection keeps none.
            state.queue = VecDeque::new();
        }
        drop(state);
        if was_full {
            self.shared.taken.notify_waiters();
        }
        Taken::Frame(msg)
    }
}

enum Taken {
    Frame(Message),
    Empty,
    Done,
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.shared.lock();
            state.writer_gone = true;
            state.bytes = 0;
            std::mem::take(&mut state.queue)
        };
        drop(dropped);
        self.shared.taken.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn frame(len: usize) -> Message {
        Message::Binary(vec![0u8; len].into())
    }

    #[test]
    fn bytes_bound_the_queue_but_one_frame_always_fits() {
        let (tx, mut rx) = outbox(100, 1_000);
        tx.try_send(frame(5_000)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(SendError::Full));
        assert_eq!(rx.try_recv().map(|m| m.len()), Some(5_000));
        assert_eq!(tx.queued_bytes(), 0);
        for _ in 0..10 {
            tx.try_send(frame(100)).unwrap();
        }
        assert_eq!(tx.try_send(frame(1)), Err(SendError::Full));
        assert_eq!(tx.queued_bytes(), 1_000);
    }

    #[test]
    fn frames_bound_the_queue_too() {
        let (tx, _rx) = outbox(2, 1_000_000);
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(SendError::Full));
        assert_eq!(tx.queued_bytes(), 2);
    }

    #[test]
    fn a_closed_writer_is_reported() {
        let (tx, rx) = outbox(2, 10);
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(SendError::Closed));
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn the_writer_gets_everything_queued_then_none_once_every_sender_left() {
        let (tx, mut rx) = outbox(4, 1_000);
        let other = tx.clone();
        tx.try_send(frame(1)).unwrap();
        other.try_send(frame(2)).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.map(|m| m.len()), Some(1));
        assert_eq!(rx.recv().await.map(|m| m.len()), Some(2));
        let waiting = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::task::yield_now().await;
        drop(other);
        assert!(waiting.await.unwrap(), "no sender left: the writer ends");
    }

    #[tokio::test]
    async fn send_waits_for_a_free_slot_and_keeps_the_order() {
        let (tx, mut rx) = outbox(1, 10);
        tx.try_send(frame(1)).unwrap();
        let close = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(frame(20)).await }
        });
        tokio::task::yield_now().await;
        assert!(!close.is_finished(), "the outbox is full: it waits");
        assert_eq!(rx.recv().await.map(|m| m.len()), Some(1));
        close.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.map(|m| m.len()), Some(20));
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let (tx, mut rx) = outbox(1_000, 1_000_000);
        for _ in 0..100 {
            tx.try_send(frame(1)).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(tx.shared.lock().queue.capacity(), 0);
    }
}
