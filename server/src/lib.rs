//! The Lattice sync server. Today: durable storage ([`store`]); the sync server arrives with the
//! sync-server issue.

/// The version of this server build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol version the server speaks (the engine's).
pub const PROTOCOL_VERSION: u32 = lattice_engine::protocol::PROTOCOL_VERSION;

pub mod store;
