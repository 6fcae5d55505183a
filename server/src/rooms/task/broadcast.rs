//! Frames a peer sends to the room's other peers of its protocol as they are, never stored
//! (Hocuspocus's stateless messages). The sender's connection bounds their size and rate.

use lattice_engine::sync::PeerId;
use tracing::warn;

use crate::transport::close::CloseCode;
use crate::transport::outbox::{Message, SendError};

use super::RoomDriver;

impl RoomDriver {
    /// `frame` to every other peer of `sender`'s protocol; a full outbox closes its peer as
    /// a slow consumer, as any frame would.
    pub(super) async fn broadcast(&mut self, sender: PeerId, frame: bytes::Bytes) {
        let Some(kind) = self.peers.get(&sender).map(|h| h.kind) else {
            return;
        };
        let mut dropped = Vec::new();
        for (id, handle) in &self.peers {
            if *id == sender || handle.kind != kind {
                continue;
            }
            match handle.outbox.try_send(Message::Binary(frame.clone())) {
                Ok(()) => {}
                Err(SendError::Full) => dropped.push((*id, CloseCode::SlowConsumer)),
                Err(SendError::Closed) => dropped.push((*id, CloseCode::Normal)),
            }
        }
        for (peer, code) in dropped {
            if let Some(handle) = self.peers.remove(&peer) {
                if code != CloseCode::Normal {
                    warn!(peer = peer.0, "outbox full: closing slow consumer");
                    handle.closer.close(code);
                }
                let more = self.room.unsubscribe(peer);
                self.apply(more).await;
                self.awareness_left(peer);
            }
        }
    }
}
