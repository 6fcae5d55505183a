//! Sans-IO sync state machines: the server's [`Room`] (one per live document) and the client's
//! [`Session`]. Both take messages and return what to send, persist or close, as plain data;
//! the server and the clients are drivers that carry those effects out.

mod room;
mod session;

pub use room::{
    Access, CloseReason, Echo, Effects, Outgoing, PeerId, PendingDelta, Room, RoomConfig,
    SERVER_PEER, SubscribeOptions,
};
pub use session::{Session, SessionEvent, SessionOutput};
