//! The Lattice browser client. Filled in by the wasm-client issue; today it proves that the
//! engine links into a `wasm32-unknown-unknown` cdylib.

use lattice_engine::{Document, ReplicaId};

/// Creates an empty document for `replica` and returns its snapshot size, so the wasm build
/// links the engine for real.
pub fn empty_snapshot_len(replica: u32) -> usize {
    Document::new(ReplicaId::from_random(replica))
        .snapshot()
        .len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn links_the_engine() {
        assert!(super::empty_snapshot_len(7) > 0);
    }
}
