//! Every decoder that faces peer or stored bytes, fed the same input: see
//! `lattice_engine_fuzz::decode`.
#![no_main]

/// As in `yjs_apply.rs`: let panics the engine catches on purpose through; report the rest.
static DEFAULT_PANIC_HOOK: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));
    lattice_engine_fuzz::on_server_stack(|| lattice_engine_fuzz::decode(bytes));
});
