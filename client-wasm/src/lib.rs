//! The Lattice browser client: the engine's client [`Session`](lattice_engine::sync::Session)
//! compiled to wasm, with a thin `#[wasm_bindgen]` facade.
//!
//! - [`core`]: everything that can be plain Rust — status, pending count, change and presence
//!   events, backoff, heartbeats, the records that keep unacknowledged deltas — unit-tested
//!   natively with `cargo test -p lattice-client`.
//! - `web` (wasm32 only): the driver. `LatticeClient` and its document handles for JavaScript,
//!   a WebSocket, timers, and IndexedDB for the pending deltas. It holds no sync logic.
//!
//! **Invariants:** a local edit is kept in IndexedDB until the server acknowledges a delta that
//! contains it, so it survives a reload or a closed tab; each client instance (each tab) is its
//! own replica with a random non-zero 32-bit id; every queue is bounded (see [`core`]).
//!
//! **Boundary:** JavaScript values enter through the facade's conversions (document ids are
//! validated as [`DocId`](lattice_engine::DocId)s, register and presence values become
//! [`Value`](lattice_engine::Value)s or are refused); server bytes enter through
//! [`ServerMsg::decode`](lattice_engine::protocol::ServerMsg::decode) and stored bytes through
//! [`core::decode_record`].

pub mod core;
mod small_map;

#[cfg(target_arch = "wasm32")]
mod web;

#[cfg(target_arch = "wasm32")]
pub use web::*;
