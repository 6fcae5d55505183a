//! `lattice`: the server binary.

fn main() {
    println!(
        "lattice {} (protocol {}): the sync server arrives with the sync-server issue; \
         the engine is ready and tested (`cargo xtask test`).",
        lattice_server::VERSION,
        lattice_server::PROTOCOL_VERSION
    );
}
