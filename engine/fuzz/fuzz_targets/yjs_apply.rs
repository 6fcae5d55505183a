//! The Yjs update guard, then `Document::apply`: see `lattice_engine_fuzz::yjs_apply`.
#![no_main]

/// libfuzzer-sys aborts on every panic, even one the engine catches on purpose (it turns yrs
/// panics into `ApplyError`s with `catch_unwind`); the default hook lets those through and
/// still reports, as a crash, every panic that escapes. Wasm builds abort on any panic, so the
/// caught ones are kept as fixtures too (see README.md).
static DEFAULT_PANIC_HOOK: std::sync::Once = std::sync::Once::new();

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));
    lattice_engine_fuzz::on_server_stack(|| lattice_engine_fuzz::yjs_apply(bytes));
});
