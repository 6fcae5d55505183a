//! End-to-end tests across crates live in `tests/tests/`. This library holds shared helpers:
//! [`store_support`] gives each store test a fresh database on either backend.

pub mod store_support;
