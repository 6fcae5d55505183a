//! Token verification, the claims check, `Principal` and `DocPattern::parse`: see
//! `lattice_server_fuzz::token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lattice_server_fuzz::token(bytes));
