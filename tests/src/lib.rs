//! End-to-end tests across crates live in `tests/tests/`. This library holds shared helpers:
//! [`store_support`] gives each test a fresh database on either backend; [`server_support`]
//! runs servers and peers against it; [`hostile`] builds the malformed Yjs updates attacks send.

pub mod hostile;
pub mod server_support;
pub mod store_support;
