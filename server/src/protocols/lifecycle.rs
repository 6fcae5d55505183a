//! What every WebSocket protocol shares around its own message handling: one task per
//! connection that reads (the protocol's loop) and writes (the outbox's writer) at once; the
//! one timer of its read loop ([`Deadlines`]: idle timeout, pings, token expiry); how a
//! connection ends ([`Exit`]) and what follows (the close frame, flushing the rooms on
//! shutdown so the last acks go out, leaving the rooms, letting the writer finish). Each
//! protocol implements [`Protocol`] and hands its connection to [`serve`].
//!
//! An idle connection is what this task holds while it waits, so the waiting state is kept
//! small: whatever is rare or short-lived (the handshake, a subscription, a wait for a full
//! room inbox, the end) runs boxed, on the heap only while it runs.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tracing::debug;

use crate::rooms::peer::{PeerHandle, SyncTicket, sync_ticket};
use crate::rooms::{RoomCmd, RoomEnv, RoomSender};
use crate::state::ServerState;
use crate::transport::close::{CloseCode, close_kind, close_message};
use crate::transport::outbox::{Message, SendError};
use crate::transport::slots::Slot;
use crate::transport::upgrade::WsSocket;
use crate::transport::writer::{Outbound, Stream, Writer, finish};

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
    /// What the server shares with it.
    fn state(&self) -> &Arc<ServerState>;
    /// The connection as rooms see it.
    fn peer(&self) -> &PeerHandle;
    /// Reads and handles messages until the connection ends, and says how.
    fn run<S: WsSocket>(&mut self, stream: &mut Stream<S>) -> impl Future<Output = Exit> + Send;
    /// The rooms it joined.
    fn rooms(&self) -> Vec<RoomSender>;
    /// The connection slot it holds, if it holds its own (given back after the last frame).
    fn take_slot(&mut self) -> Option<Slot> {
        None
    }
}

/// Runs `conn` over `socket` to its end, on this one task: its read loop and the writer of
/// `outbound` side by side, then (still beside the writer) the close its exit calls for and
/// leaving its rooms, then the writer's finish (close frame and last acks out, the peer's
/// close read).
///
/// Not an `async fn`: one keeps each argument twice for as long as it runs (as an argument
/// and as a local), and this one runs as long as the connection. The block below uses what it
/// captures in place.
pub(crate) fn serve<P: Protocol, S: WsSocket>(
    mut conn: P,
    socket: S,
    outbound: Outbound,
) -> impl Future<Output = ()> + Send {
    let state = conn.state().clone();
    // The peer handles (this connection's and the rooms') hold the senders.
    let Outbound { outbox, closer, rx } = outbound;
    drop(outbox);
    let (sink, mut stream) = socket.split();
    let mut writer = Writer::new(sink, rx, closer);
    async move {
        let deadline = state.config.shutdown_deadline;
        // The socket may die (or a close go out) first: the connection still ends in order.
        let mut writer_done = false;
        let exit = match select(pin!(conn.run(&mut stream)), &mut writer).await {
            Either::Left((exit, _)) => exit,
            Either::Right(((), run)) => {
                writer_done = true;
                run.await
            }
        };
        let ending = Box::pin(end(conn, exit, deadline));
        let (code, slot) = if writer_done {
            ending.await
        } else {
            match select(ending, &mut writer).await {
                Either::Left((ended, _)) => ended,
                Either::Right(((), ending)) => {
                    writer_done = true;
                    ending.await
                }
            }
        };
        state.metrics.closed(close_kind(code));
        if writer_done {
            finish(std::future::ready(()), stream, deadline).await;
        } else {
            finish(&mut writer, stream, deadline).await;
        }
        debug!(code = code.code(), "connection closed");
        drop(slot);
    }
}

/// What follows a connection's loop: the close `exit` calls for, then leaving its rooms. The
/// connection (its peer handle holds an outbox sender) goes with it, so the writer ends once
/// the rooms have let go too. Returns the close code and the slot to give back last.
async fn end<P: Protocol>(
    mut conn: P,
    exit: Exit,
    deadline: Duration,
) -> (CloseCode, Option<Slot>) {
    let peer = conn.peer().clone();
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
    (code, conn.take_slot())
}

/// A room command on its way: a wait for a full inbox, boxed (rare, and kept inline it would
/// make every idle connection's future as large as the wait).
pub(crate) type RoomWait<'a> = Pin<Box<dyn Future<Output = Result<(), RoomGone>> + Send + 'a>>;

/// The room's inbox is closed: the room stopped.
#[derive(Debug)]
pub(crate) struct RoomGone;

/// Queues `cmd` in `room`'s inbox now if there is room (`Ok(None)`), else returns the wait for
/// a slot, which keeps the inbox's order (`Ok(Some(wait))`, backpressure: the connection reads
/// no more meanwhile).
pub(crate) fn to_room(room: &RoomSender, cmd: RoomCmd) -> Result<Option<RoomWait<'_>>, RoomGone> {
    match room.try_send(cmd) {
        Ok(()) => Ok(None),
        Err(TrySendError::Full(cmd)) => Ok(Some(Box::pin(async move {
            room.send(cmd).await.map_err(|_| RoomGone)
        }))),
        Err(TrySendError::Closed(_)) => Err(RoomGone),
    }
}

/// Sends `cmd` to `room`, waiting for a slot if its inbox is full. The command is queued (or
/// its wait boxed) when this is called, so the future holds no command, only the wait.
pub(crate) fn send_to_room(
    room: &RoomSender,
    cmd: RoomCmd,
) -> impl Future<Output = Result<(), RoomGone>> + Send + '_ {
    let queued = to_room(room, cmd);
    async move {
        match queued {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => wait.await,
            Err(gone) => Err(gone),
        }
    }
}

/// The one timer of a connection's read loop: when it has been quiet too long (its idle or
/// hello deadline), when its next ping is due (every `Heartbeat::ping_interval`; pings go
/// through the outbox like any frame, and y-websocket adds its keep-alive), and when its
/// token expires. One timer rather than one per purpose: every connection holds it.
#[derive(Debug)]
pub(crate) struct Deadlines {
    quiet_at: Instant,
    ping_at: Instant,
    ping_every: Duration,
    expires_at: Option<Instant>,
}

/// What the timer says is due.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// The token expired.
    Expired,
    /// Nothing was received within the quiet deadline.
    Quiet,
    /// Time for a ping (the next one is scheduled).
    Ping,
}

impl Deadlines {
    /// Deadlines from now: quiet after `quiet`, pings every `ping_every`, and the token's
    /// expiry after `time_left` (never without one).
    pub(crate) fn new(quiet: Duration, ping_every: Duration, time_left: Option<Duration>) -> Self {
        let now = Instant::now();
        Deadlines {
            quiet_at: now + quiet,
            ping_at: now + ping_every,
            ping_every,
            expires_at: time_left.and_then(|left| now.checked_add(left)),
        }
    }

    /// When the timer fires next.
    pub(crate) fn next(&self) -> Instant {
        let next = self.quiet_at.min(self.ping_at);
        self.expires_at.map_or(next, |at| at.min(next))
    }

    /// Something was received: the connection may now stay quiet for `quiet`.
    pub(crate) fn heard(&mut self, quiet: Duration) {
        self.quiet_at = Instant::now() + quiet;
    }

    /// The token's expiry is now `at` (`None`: never); a connection that authenticates
    /// after it starts (Hocuspocus, per document) learns it late.
    pub(crate) fn expire_at(&mut self, at: Option<Instant>) {
        self.expires_at = at;
    }

    /// What is due now, the most final first; `None` if nothing is (yet).
    pub(crate) fn due(&mut self) -> Option<Due> {
        let now = Instant::now();
        if self.expires_at.is_some_and(|at| at <= now) {
            Some(Due::Expired)
        } else if self.quiet_at <= now {
            Some(Due::Quiet)
        } else if self.ping_at <= now {
            self.ping_at = now + self.ping_every;
            Some(Due::Ping)
        } else {
            None
        }
    }
}

/// A WebSocket ping, queued behind what the outbox holds. A full outbox closes the
/// connection as a slow consumer, as any frame would.
pub(crate) fn ping(peer: &PeerHandle) {
    if let Err(SendError::Full) = peer.outbox.try_send(Message::Ping(Default::default())) {
        peer.closer.close(CloseCode::SlowConsumer);
    }
}

/// Waits for the connection's turn at a full-state sync (its `SyncBudget`); the exit instead
/// when the connection is closed meanwhile or the server shuts down.
pub(crate) async fn sync_slot(env: &RoomEnv, peer: &PeerHandle) -> Result<SyncTicket, Exit> {
    sync_ticket(env, peer).await.map_err(|e| match e {
        Some(code) => Exit::ClosedElsewhere(code),
        None => Exit::Shutdown,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_timer_fires_for_pings_then_quiet_then_expiry_first() {
        let s = Duration::from_secs;
        let mut d = Deadlines::new(s(45), s(15), Some(s(100)));
        tokio::time::sleep_until(d.next()).await;
        assert_eq!(d.due(), Some(Due::Ping));
        d.heard(s(45));
        tokio::time::sleep_until(d.next()).await;
        assert_eq!(
            d.due(),
            Some(Due::Ping),
            "heard at 15 s: quiet only at 60 s"
        );
        tokio::time::sleep_until(d.next()).await;
        assert_eq!(d.due(), Some(Due::Ping));
        tokio::time::sleep_until(d.next()).await;
        assert_eq!(d.due(), Some(Due::Quiet), "60 s: quiet before the ping");
        tokio::time::sleep(s(60)).await;
        assert_eq!(d.due(), Some(Due::Expired), "expiry wins over the rest");
        let d = Deadlines::new(s(45), s(15), None);
        assert_eq!(d.next(), Instant::now() + s(15));
    }
}
