//! `ClientMsg::decode` / `ServerMsg::decode`: see `lattice_engine_fuzz::client_msg`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lattice_engine_fuzz::client_msg(bytes));
