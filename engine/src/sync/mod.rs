//! Sans-IO sync state machines: the server's [`Room`] (one per live document) and the client's
//! [`Session`]. Both take messages and return what to send, persist or close, as plain data;
//! the server and the clients are drivers that carry those effects out.
//!
//! # Example
//!
//! A room and two sessions, with the drivers' work done by hand: every message is encoded and
//! decoded as it would be on a socket, and the room's deltas are "committed" as soon as it asks.
//! Alice and Bob edit the same text at the same time; once everything is delivered, both hold
//! the same document as the room.
//!
//! ```
//! use lattice_engine::protocol::{ClientMsg, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, ServerMsg};
//! use lattice_engine::sync::{
//!     Access, Echo, Effects, PeerId, Room, RoomConfig, Session, SubscribeOptions,
//! };
//! use lattice_engine::{
//!     ClockedHlc, DEFAULT_MAX_DRIFT, DocId, Document, Hlc, ReplicaId, Value, manual_clock,
//! };
//!
//! /// Delivers frames until no one has anything left to say. `up` holds client frames on their
//! /// way to the room; the session of `PeerId(n)` is `sessions[n - 1]`.
//! fn deliver(room: &mut Room, sessions: &mut [Session], mut up: Vec<(PeerId, Vec<u8>)>) {
//!     // The server driver's wall time: the room reads no clock of its own.
//!     let now_ms = 1_700_000_000_000;
//!     while !up.is_empty() {
//!         let mut down = Vec::new();
//!         for (peer, frame) in up.drain(..) {
//!             let mut fx = match ClientMsg::decode(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap() {
//!                 // `hello` is the driver's business (authentication), not the room's.
//!                 ClientMsg::Hello { .. } => {
//!                     let welcome = ServerMsg::Welcome {
//!                         protocol: PROTOCOL_VERSION,
//!                         server: "example".into(),
//!                     };
//!                     down.push((peer, welcome.encode()));
//!                     continue;
//!                 }
//!                 ClientMsg::Subscribe { state, .. } => {
//!                     let options = SubscribeOptions { access: Access::Write, echo: Echo::None, author: None };
//!                     room.subscribe(peer, options, &state)
//!                 }
//!                 ClientMsg::Delta { seq, delta, .. } => {
//!                     room.client_delta(peer, seq, delta, None, now_ms)
//!                 }
//!                 _ => Effects::default(),
//!             };
//!             // A real driver commits these to its store first; acks and relays leave after.
//!             for pending in std::mem::take(&mut fx.persist) {
//!                 fx.send.extend(room.committed(pending.token).send);
//!             }
//!             for out in fx.send {
//!                 let frame = out.msg.encode();
//!                 down.extend(out.to.into_iter().map(|to| (to, frame.clone())));
//!             }
//!         }
//!         for (peer, frame) in down {
//!             let msg = ServerMsg::decode(&frame, DEFAULT_MAX_FRAME_BYTES).unwrap();
//!             let session = &mut sessions[usize::try_from(peer.0).unwrap() - 1];
//!             up.extend(session.handle(msg).send.iter().map(|m| (peer, m.encode())));
//!         }
//!     }
//! }
//!
//! let doc = DocId::new("notes").unwrap();
//! let server = ReplicaId::new(1).unwrap();
//! let hlc = Hlc::new(server, DEFAULT_MAX_DRIFT);
//! let mut room = Room::new(doc.clone(), Document::new(server), hlc, RoomConfig::default());
//!
//! let mut sessions: Vec<Session> = [2, 3]
//!     .map(|id| {
//!         let replica = ReplicaId::new(id).unwrap();
//!         Session::new(replica, ClockedHlc::new(replica, manual_clock, DEFAULT_MAX_DRIFT))
//!     })
//!     .into();
//! let (alice, bob) = (PeerId(1), PeerId(2));
//!
//! // Both open the document and connect: `hello`, then `subscribe`.
//! let mut up = Vec::new();
//! for (peer, session) in [alice, bob].into_iter().zip(&mut sessions) {
//!     session.open(doc.clone(), Vec::new()).unwrap();
//!     up.extend(session.connected().send.iter().map(|m| (peer, m.encode())));
//! }
//! deliver(&mut room, &mut sessions, up);
//! assert!(sessions.iter().all(|s| s.is_synced(&doc)));
//!
//! // Concurrent edits: neither has seen the other's when it makes its own.
//! let mut up = Vec::new();
//! let out = sessions[0].edit(&doc, |d, _| d.text_insert("body", 0, "Hello")).unwrap();
//! up.extend(out.send.iter().map(|m| (alice, m.encode())));
//! let out = sessions[1].edit(&doc, |d, _| d.text_insert("body", 0, "world")).unwrap();
//! up.extend(out.send.iter().map(|m| (bob, m.encode())));
//! // A register write is stamped by the session's hybrid logical clock.
//! let title = Value::String("Greeting".into());
//! let out = sessions[1].edit(&doc, |d, hlc| d.register_set("title", title, hlc.tick())).unwrap();
//! up.extend(out.send.iter().map(|m| (bob, m.encode())));
//! deliver(&mut room, &mut sessions, up);
//!
//! // Converged: both sessions hold what the room holds, and every edit is acknowledged.
//! let (a, b) = (sessions[0].document(&doc).unwrap(), sessions[1].document(&doc).unwrap());
//! assert_eq!(a.text("body"), b.text("body"));
//! assert_eq!(a.text("body").len(), "Helloworld".len());
//! assert_eq!(a.to_json(), b.to_json());
//! assert_eq!(a.to_json(), room.document().to_json());
//! assert_eq!(b.register("title"), Some(&Value::String("Greeting".into())));
//! assert!(sessions.iter().all(|s| s.pending(&doc) == 0));
//! ```

mod room;
mod session;

pub use room::{
    Access, CloseReason, Echo, Effects, Outgoing, PeerId, PendingDelta, RelayOrder, Room,
    RoomConfig, SERVER_PEER, SubscribeOptions,
};
pub use session::{Session, SessionEvent, SessionOutput};
