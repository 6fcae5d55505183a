//! The Lattice sync server: an axum/tokio driver for the engine.
//!
//! `run(config, listener, shutdown)` serves `/v1/sync` (the native protocol), the
//! authenticated HTTP surface (`/`, `/v1/docs/{doc}`, `/v1/admin/docs/{doc}`, the admin history
//! API `/api/admin/…` and its UI `/admin`), `/healthz`, `/readyz` and `/metrics`. [`history`]
//! holds what the history API and `lattice admin` share. One task owns each live document
//! (`rooms/`), one task each connection (`protocols/`, on the shared mechanics of
//! `transport/`); the store ([`store`]) commits deltas in groups. [`auth`] checks tokens for
//! every endpoint. [`client`] is the native Rust client used by tests and benchmarks.
//!
//! # Invariants
//! - A client's delta is acknowledged only after its transaction committed.
//! - Every queue is bounded by a named constant or a [`config::Config`] field; a connection
//!   whose outbox is full is closed (4008) and resyncs; nothing is dropped silently.
//! - Bytes from a peer never panic the server and never reach the store unless they applied.
//! - Nothing reaches a room without a [`auth::Principal`] that covers the document, and a
//!   refusal never depends on whether the document exists.

pub mod auth;
pub mod client;
mod clock;
pub mod cluster;
pub mod config;
pub mod grpc;
pub mod history;
mod http;
pub mod metrics;
mod protocols;
mod rooms;
mod server;
mod state;
pub mod store;
mod transport;

pub use server::{ServerError, run, run_then, run_with_grpc};
pub use transport::close::CloseCode;

/// The version of this server build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol version the server speaks (the engine's).
pub const PROTOCOL_VERSION: u32 = lattice_engine::protocol::PROTOCOL_VERSION;
