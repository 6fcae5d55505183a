//! Replays every input kept in `engine/fuzz/regressions/` through the calls the `decode` fuzz
//! target makes (see `engine/fuzz/fuzz_targets/decode.rs`), so a crasher once found stays fixed
//! without nightly or libFuzzer.

use std::path::PathBuf;

use lattice_engine::protocol::{ClientMsg, DEFAULT_MAX_FRAME_BYTES, ServerMsg};
use lattice_engine::{ApplyError, Delta, DocState, Document, ReplicaId};

fn replay(name: &str, bytes: &[u8]) {
    let _ = ClientMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = lattice_engine::yjs::check_update_v1(bytes);
    let _ = lattice_engine::yws::decode_frame(bytes, DEFAULT_MAX_FRAME_BYTES);
    if let Ok(doc) = Document::from_snapshot(ReplicaId::from_random(9), bytes) {
        let _ = doc.to_json();
    }

    let mut doc = Document::new(ReplicaId::from_random(7));
    doc.text_insert("body", 0, "hello").expect("insert");
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
            assert!(doc.is_poisoned(), "{name}");
            assert_eq!(doc.apply(&Delta::default()), Err(ApplyError::Poisoned));
        }
        Err(e) => assert!(
            before == (doc.to_json(), doc.state()),
            "{name}: refused ({e}) but changed"
        ),
    }
}

#[test]
fn kept_fuzz_inputs_do_not_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read regression input");
        replay(&path.display().to_string(), &bytes);
        replayed += 1;
    }
    // The folder always holds the seeds below, so an empty run means the path is wrong.
    assert!(replayed > 0, "no inputs found in {}", dir.display());
}
