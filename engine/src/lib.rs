//! The Lattice engine: CRDT documents, the wire protocol, and nothing else.
//!
//! A [`Document`] is one Yjs document (`yrs`) plus named grow-only counters ([`GCounter`]) and
//! named last-writer-wins registers ([`LwwRegister`] of [`Value`], stamped by a hybrid logical
//! clock, [`Hlc`]). Replicas exchange [`Delta`]s; a [`DocState`] summarises what a replica holds
//! so that [`Document::diff_since`] can send exactly what the other side lacks. The wire
//! messages are in [`protocol`]; the y-websocket protocol of stock Yjs clients is in [`yws`].
//! [`history`] diffs versions, summarises changes and (with [`Document::restore_delta`]) builds
//! the delta that brings a document back to an earlier version.
//!
//! # Invariants
//! - **No IO.** No sockets, files, clocks, randomness, threads or async runtime. Time comes in
//!   as an argument (the room's `now_ms`; the client session's clock reads a function the
//!   driver chooses), ids are passed in. The crate builds for
//!   `wasm32-unknown-unknown`; CI checks that its dependency tree has no tokio, sqlx, axum,
//!   hyper or web-sys.
//! - **Merges are CRDT merges:** commutative, associative, idempotent; proven by the property
//!   tests in `tests/laws.rs`.
//! - **Peer bytes never panic.** Every decoder returns a typed error; Yjs bytes are bounded by
//!   [`yjs::check_update_v1`] before `yrs` sees them.
//! - **32-bit Yjs client ids** (see [`ReplicaId`]), so stock Yjs clients can read every document.

mod counter;
mod document;
pub mod history;
mod hlc;
mod ids;
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
