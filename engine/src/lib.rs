//! The Lattice engine: CRDT documents, the wire protocol, and nothing else.
//!
//! A [`Document`] is one Yjs document (`yrs`) plus named grow-only counters ([`GCounter`]) and
//! named last-writer-wins registers ([`LwwRegister`] of [`Value`], stamped by a hybrid logical
//! clock, [`Hlc`]). Replicas exchange [`Delta`]s; a [`DocState`] summarises what a replica holds
//! so that [`Document::diff_since`] can send exactly what the other side lacks. The wire
//! messages are in [`protocol`]; the y-websocket protocol of stock Yjs clients is in [`yws`], and
//! Hocuspocus's (documents multiplexed on one socket) in [`hocuspocus`].
//! [`history`] diffs versions, summarises changes and (with [`Document::restore_delta`]) builds
//! the delta that brings a document back to an earlier version.
//!
//! The sync state machines are in [`sync`]: the server's [`Room`](sync::Room) and the client's
//! [`Session`](sync::Session) (its module opens with a two-peer example).
//!
//! # Invariants
//! - **No IO.** No sockets, files, clocks, randomness, threads or async runtime. Time comes in
//!   as an argument: the [`Room`](sync::Room) takes the driver's wall time (`now_ms`) in every
//!   call that needs it, and its [`Hlc`] reads nothing else; only the client
//!   [`Session`](sync::Session), whose edits stamp without a time at hand, has a
//!   [`ClockedHlc`] that reads a clock function the driver chooses. Replica ids are passed in.
//!   The crate builds for `wasm32-unknown-unknown`; CI checks that its normal dependency tree
//!   has no tokio, sqlx, axum, hyper, web-sys or mio.
//! - **Merges are CRDT merges:** commutative, associative and idempotent, for every CRDT and
//!   for whole documents; proven by the property tests in `tests/laws.rs`.
//! - **32-bit Yjs client ids.** A [`ReplicaId`] is the yrs client id, and wider ids in incoming
//!   updates are refused, so stock Yjs clients before v14 can read every document.
//! - **Nothing reaches yrs unplanned.** Every update is planned against the document's index of
//!   shared types first; shared types never nest deeper than [`yjs::MAX_TYPE_DEPTH`] (64), so
//!   no recursive walk, of yrs or of ours, can overflow the stack; and nothing is left pending
//!   inside yrs (it would be integrated later without a plan).
//! - **Bytes from peers never panic.** They enter through
//!   [`ClientMsg::decode`](protocol::ClientMsg::decode) and
//!   [`ServerMsg::decode`](protocol::ServerMsg::decode) (frame size checked first, typed
//!   [`DecodeError`](protocol::DecodeError)), [`Document::apply_from`] (Yjs bytes bounded by
//!   [`yjs::check_update_v1`] before `yrs` allocates anything, then planned; typed
//!   [`ApplyError`]), [`yws::decode_frame`] (typed [`YDecodeError`](yws::YDecodeError)) and
//!   [`hocuspocus::decode_frame`] (typed [`HocusDecodeError`](hocuspocus::HocusDecodeError)).

#![warn(missing_docs)]

mod counter;
mod document;
pub mod history;
mod hlc;
pub mod hocuspocus;
mod ids;
mod ordered;
pub mod protocol;
mod register;
pub mod sync;
mod value;
pub mod yjs;
pub mod yws;

pub use counter::{GCounter, PnCounter};
pub use document::{
    Applied, ApplyError, CounterNotRestored, Delta, DocState, Document, EditError, MAX_HELD_BYTES,
    MAX_NAME_BYTES, RestoreError, RestoreReport, SNAPSHOT_FORMAT, SnapshotError, Source, Trust,
};
pub use hlc::{
    ClockDriftError, ClockedHlc, DEFAULT_MAX_DRIFT, Hlc, HlcTimestamp, NTP64, manual_clock,
    ntp64_from_unix_ms, set_manual_clock_ms,
};
pub use ids::{DocId, DocIdError, MAX_DOC_ID_BYTES, ReplicaId};
pub use register::LwwRegister;
pub use value::Value;
