//! A connection's outbox: the frames queued for its writer, bounded in frames **and** bytes.
//!
//! Rooms and the connection's own task queue frames with [`Outbox::try_send`], which never
//! waits: a full outbox means the peer reads too slowly, and its connection is closed as a slow
//! consumer (4008) so that it resyncs; nothing is dropped silently. Counting bytes as well as
//! frames matters because one frame can be a whole document: 4,096 queued syncs of a 500 KB
//! document are 2 GB. A frame is always admitted into an empty outbox, so a document larger
//! than the byte bound can still be sent; the bound is then that one frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
pub(crate) use tokio_tungstenite::tungstenite::Message;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The outbox holds its limit of frames or bytes: the peer is a slow consumer.
    Full,
    /// The writer is gone: the connection is closing.
    Closed,
}

/// The sending side of a connection's outbox (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Message>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The writer's side of the outbox.
#[derive(Debug)]
pub(crate) struct OutboxReceiver {
    rx: mpsc::Receiver<Message>,
    queued_bytes: Arc<AtomicUsize>,
}

/// An outbox of at most `frames` frames and `max_bytes` bytes (see the module docs).
pub(crate) fn outbox(frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
        },
        OutboxReceiver { rx, queued_bytes },
    )
}

impl Outbox {
    /// Queues a frame without waiting.
    pub(crate) fn try_send(&self, msg: Message) -> Result<(), SendError> {
        let len = msg.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before.saturating_add(len) > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::Full);
        }
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => SendError::Full,
                    mpsc::error::TrySendError::Closed(_) => SendError::Closed,
                })
            }
        }
    }

    /// Queues a frame, waiting for a free slot (never for bytes): for the close frame that
    /// ends a connection, which must go out behind everything queued before it.
    pub(crate) async fn send(&self, msg: Message) -> Result<(), SendError> {
        let len = msg.len();
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        self.tx.send(msg).await.map_err(|_| {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            SendError::Closed
        })
    }

    /// Bytes queued and not yet taken by the writer.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }
}

impl OutboxReceiver {
    pub(crate) async fn recv(&mut self) -> Option<Message> {
        let msg = self.rx.recv().await?;
        self.queued_bytes.fetch_sub(msg.len(), Ordering::AcqRel);
        Some(msg)
    }

    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        let msg = self.rx.try_recv().ok()?;
        self.queued_bytes.fetch_sub(msg.len(), Ordering::AcqRel);
        Some(msg)
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
}
