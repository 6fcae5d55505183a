//! What every WebSocket protocol shares after its own message handling: how a connection
//! ends ([`Exit`]) and what follows (the close frame, flushing the rooms on shutdown so the
//! last acks go out, leaving the rooms, letting the writer finish). Each protocol implements
//! [`Protocol`] and hands its connection to [`serve`].

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::timeout;

use crate::rooms::peer::PeerHandle;
use crate::rooms::{RoomCmd, RoomSender};
use crate::transport::close::{CloseCode, close_message};
use crate::transport::slots::Slot;
use crate::transport::upgrade::WsSocket;
use crate::transport::writer::{Outbound, Stream};

/// How a connection's main loop ended.
pub(crate) enum Exit {
    /// This connection decided to end: send a close frame with the code.
    SendClose(CloseCode),
    /// Another part already fired the closer (a room closing a slow consumer, a stopped
    /// room, a full outbox): the writer sends that close frame.
    ClosedElsewhere(CloseCode),
    /// The server is shutting down: flush the rooms, then close with 1001.
    Shutdown,
    /// The peer closed or the socket broke: nothing more to send.
    PeerGone,
}

/// A protocol's connection, as the shared lifecycle drives it.
pub(crate) trait Protocol: Send {
    /// Reads and handles messages until the connection ends, and says how.
    fn run<S: WsSocket>(&mut self, stream: &mut Stream<S>) -> impl Future<Output = Exit> + Send;
    /// The connection as rooms see it.
    fn peer(&self) -> &PeerHandle;
    /// The rooms it joined.
    fn rooms(&self) -> Vec<RoomSender>;
    /// The connection slot it holds, if it holds its own (given back after the last frame).
    fn take_slot(&mut self) -> Option<Slot> {
        None
    }
}

/// Runs `conn` to its end: its loop, the close its exit calls for, leaving its rooms, then the
/// writer's finish (close frame and last acks out, the peer's close read) within `deadline`.
pub(crate) async fn serve<P: Protocol, S: WsSocket>(
    mut conn: P,
    mut stream: Stream<S>,
    outbound: Outbound,
    deadline: Duration,
) {
    let exit = conn.run(&mut stream).await;
    let code = match exit {
        Exit::SendClose(code) => {
            send_close(conn.peer(), code, deadline).await;
            code
        }
        Exit::ClosedElsewhere(code) => code,
        Exit::Shutdown => {
            flush(&conn.rooms(), deadline).await;
            send_close(conn.peer(), CloseCode::GoingAway, deadline).await;
            CloseCode::GoingAway
        }
        Exit::PeerGone => {
            conn.peer().closer.close(CloseCode::Normal);
            CloseCode::Normal
        }
    };
    let id = conn.peer().id;
    for room in conn.rooms() {
        let _ = room.send(RoomCmd::Unsubscribe { peer: id }).await;
    }
    let slot = conn.take_slot();
    drop(conn);
    outbound.finish(code, stream).await;
    drop(slot);
}

/// Queues the close frame behind what is queued (waiting for a free slot, within `deadline`);
/// if it cannot be queued, the closer makes the writer send it.
pub(crate) async fn send_close(peer: &PeerHandle, code: CloseCode, deadline: Duration) {
    let queued = timeout(deadline, peer.outbox.send(close_message(code))).await;
    if !matches!(queued, Ok(Ok(()))) {
        peer.closer.close(code);
    }
}

/// Waits (within `deadline`) until every room has committed and acknowledged what it holds,
/// so the client gets its acks before the close.
async fn flush(rooms: &[RoomSender], deadline: Duration) {
    let mut waits = Vec::new();
    for room in rooms {
        let (reply, rx) = oneshot::channel();
        if room.send(RoomCmd::Flush { reply }).await.is_ok() {
            waits.push(rx);
        }
    }
    let _ = timeout(deadline, futures_util::future::join_all(waits)).await;
}
