//! What every WebSocket protocol shares after its own message handling: how a connection
//! ends ([`Exit`]) and what follows (the close frame, flushing the rooms on shutdown so the
//! last acks go out, leaving the rooms, letting the writer finish). Each protocol implements
//! [`Protocol`] and hands its connection to [`serve`].

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::timeout;

use crate::rooms::peer::{PeerHandle, SyncTicket, sync_ticket};
use crate::rooms::{RoomCmd, RoomEnv, RoomSender};
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
    /// The rooms it joined.
    fn rooms(&self) -> Vec<RoomSender>;
    /// The connection slot it holds, if it holds its own (given back after the last frame).
    fn take_slot(&mut self) -> Option<Slot> {
        None
    }
}

/// Runs `conn` (`peer` in rooms) to its end: its loop, the close its exit calls for, leaving
/// its rooms, then the writer's finish (close frame and last acks out, the peer's close read) within `deadline`.
pub(crate) async fn serve<P: Protocol, S: WsSocket>(
    mut conn: P,
    peer: PeerHandle,
    mut stream: Stream<S>,
    outbound: Outbound,
    deadline: Duration,
) {
    let exit = conn.run(&mut stream).await;
    let code = match exit {
        Exit::SendClose(code) => {
            send_close(&peer, code, deadline).await;
            code
        }
        Exit::ClosedElsewhere(code) => code,
        Exit::Shutdown => {
            flush(&conn.rooms(), deadline).await;
            send_close(&peer, CloseCode::GoingAway, deadline).await;
            CloseCode::GoingAway
        }
        Exit::PeerGone => {
            peer.closer.close(CloseCode::Normal);
            CloseCode::Normal
        }
    };
    for room in conn.rooms() {
        let _ = room.send(RoomCmd::Unsubscribe { peer: peer.id }).await;
    }
    let slot = conn.take_slot();
    // Its outbox sender goes with it: the writer ends once every sender is gone.
    drop(peer);
    drop(conn);
    outbound.finish(code, stream).await;
    drop(slot);
}

/// Waits for the connection's turn at a full-state sync (its `SyncBudget`); the exit instead
/// when the connection is closed meanwhile or the server shuts down.
pub(crate) async fn sync_slot(env: &RoomEnv, peer: &PeerHandle) -> Result<SyncTicket, Exit> {
    sync_ticket(env, peer).await.map_err(|e| match e {
        Some(code) => Exit::ClosedElsewhere(code),
        None => Exit::Shutdown,
    })
}

/// Resolves when a token with `time_left` expires (never for a token without expiry): a
/// connection's session ends with its token, not only its handshake.
pub(crate) async fn token_expiry(time_left: Option<Duration>) {
    match time_left {
        Some(left) => tokio::time::sleep(left).await,
        None => std::future::pending().await,
    }
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
