//! Replays every input kept in `server/fuzz/regressions/<target>/` (and the committed corpus)
//! through the checks of that fuzz target (`server/fuzz/src/lib.rs`, included below, is what
//! the targets call), so a crasher once found stays fixed in the normal test run, without
//! nightly or libFuzzer. Also checks that the committed corpus is what `seeds()` builds.

// Its items are `pub` for the fuzz targets; in this test nothing else reaches them.
#[allow(dead_code, unreachable_pub, clippy::unwrap_used)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Replays `<root>/<target>/*` through each target's checks; every sub-folder must name a target.
fn replay_all(root: &Path) -> usize {
    let Ok(folders) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut replayed = 0;
    for entry in folders {
        let dir = entry.expect("directory entry").path();
        if !dir.is_dir() {
            // Inputs live in a folder per target; one left beside them would never be replayed.
            assert!(
                dir.extension().is_some_and(|e| e == "md"),
                "{} is not in a target's folder",
                dir.display()
            );
            continue;
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let Some((_, check)) = fuzz::TARGETS.iter().find(|(t, _)| *t == name) else {
            panic!("{} names no fuzz target", dir.display());
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("read folder")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .collect();
        files.sort();
        for path in files {
            let bytes = std::fs::read(&path).expect("read kept input");
            eprintln!("replaying {}", path.display());
            check(&bytes);
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn kept_fuzz_inputs_pass_their_targets_checks() {
    replay_all(&fuzz_dir().join("regressions"));
}

/// The committed corpus must pass every check too: a seed that fails would make the fuzz smoke
/// fail at once.
#[test]
fn committed_corpus_passes_its_targets_checks() {
    let replayed = replay_all(&fuzz_dir().join("corpus"));
    assert!(replayed > 0, "no inputs found under fuzz/corpus");
}

/// Inputs in `fuzz/open/` still crash. Run this after a fix:
/// `cargo test -p lattice-server --test fuzz_regressions -- --ignored`; a folder that passes
/// moves to `fuzz/regressions/`.
#[test]
#[ignore = "known-open crashers; see server/fuzz/open/README.md"]
fn open_fuzz_inputs() {
    replay_all(&fuzz_dir().join("open"));
}

/// `corpus/<target>/*` named in `fuzz::seeds()` are written by it; rewrite them with
/// `LATTICE_BLESS=1` after changing it.
#[test]
fn generated_seeds_are_committed() {
    let bless = std::env::var_os("LATTICE_BLESS").is_some();
    let corpus = fuzz_dir().join("corpus");
    let mut stale = Vec::new();
    for (target, name, bytes) in fuzz::seeds() {
        let path = corpus.join(target).join(name);
        if bless {
            std::fs::create_dir_all(corpus.join(target)).expect("create corpus folder");
            std::fs::write(&path, &bytes).expect("write seed");
        } else if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "generated seeds missing or different (rewrite with LATTICE_BLESS=1): {stale:?}"
    );
}
