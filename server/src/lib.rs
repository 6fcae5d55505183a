//! The Lattice sync server. It arrives with the sync-server issue; today it only names the
//! engine version it is built against.

/// The version of this server build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The protocol version the server speaks (the engine's).
pub const PROTOCOL_VERSION: u32 = lattice_engine::protocol::PROTOCOL_VERSION;
