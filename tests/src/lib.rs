//! End-to-end tests across crates live in `tests/tests/`. This library holds shared helpers:
//! [`store_support`] gives each test a fresh database on either backend; [`server_support`]
//! runs servers and peers against it; [`hostile`] builds the malformed Yjs updates attacks send; [`http_support`] speaks raw HTTP and reads Server-Sent Events.

pub mod cluster_support;
pub mod hostile;
pub mod http_support;
pub mod proxy;
pub mod seq_reader;
pub mod server_support;
pub mod store_support;
