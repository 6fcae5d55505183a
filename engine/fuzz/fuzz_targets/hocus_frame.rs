//! `hocuspocus::decode_frame`: see `lattice_engine_fuzz::hocus_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| lattice_engine_fuzz::hocus_frame(bytes));
