//! The protocols a WebSocket speaks, each only its own message handling on the mechanics of
//! `transport/`: [`native`] is `/v1/sync` (the MessagePack protocol of docs/protocol.md),
//! [`yjs`] is `/yjs/{doc}` (the y-websocket protocol of stock Yjs clients). Both reach
//! documents only through rooms (`rooms::join_room`, `RoomCmd`).

pub(crate) mod native;
pub(crate) mod yjs;
