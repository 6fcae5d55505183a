//! Every decoder that faces peer bytes, fed the same input: none may panic, and a document that
//! refuses a delta must be left as it was, unless it reports itself poisoned (yrs got
//! part-way, `ApplyError::Integrate`).
#![no_main]

use lattice_engine::protocol::{ClientMsg, DEFAULT_MAX_FRAME_BYTES, ServerMsg};
use lattice_engine::{ApplyError, Delta, DocState, Document, ReplicaId};
use libfuzzer_sys::fuzz_target;

/// libfuzzer-sys aborts on every panic, even one the engine catches (it turns yrs panics
/// into `ApplyError`s with `catch_unwind`); the default hook reports only those that escape.
/// Wasm builds abort on any panic, so caught ones still matter there (see README.md).
static DEFAULT_PANIC_HOOK: std::sync::Once = std::sync::Once::new();

fuzz_target!(|bytes: &[u8]| {
    DEFAULT_PANIC_HOOK.call_once(|| drop(std::panic::take_hook()));
    let _ = ClientMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = lattice_engine::yjs::check_update_v1(bytes);
    let _ = lattice_engine::yws::decode_frame(bytes, DEFAULT_MAX_FRAME_BYTES);
    if let Ok(doc) = Document::from_snapshot(ReplicaId::from_random(9), bytes) {
        let _ = doc.to_json();
    }

    let mut doc = Document::new(ReplicaId::from_random(7));
    let _ = doc.text_insert("body", 0, "hello");
    let _ = doc.diff_since(&DocState {
        yjs: bytes.to_vec(),
        ..DocState::default()
    });
    let before = (doc.to_json(), doc.state());
    match doc.apply(&Delta {
        yjs: bytes.to_vec(),
        ..Delta::default()
    }) {
        Ok(_) => {
            let _ = doc.to_json();
            let _ = doc.snapshot();
        }
        // yrs got part-way: the document says so and refuses all further work.
        Err(ApplyError::Integrate { .. }) => {
            assert!(doc.is_poisoned());
            assert_eq!(doc.apply(&Delta::default()), Err(ApplyError::Poisoned));
        }
        Err(_) => assert!(
            before == (doc.to_json(), doc.state()),
            "refused but changed"
        ),
    }
});
