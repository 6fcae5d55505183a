//! The server and the client are built against the same engine protocol.

#[test]
fn server_speaks_the_engine_protocol() {
    assert_eq!(
        lattice_server::PROTOCOL_VERSION,
        lattice_engine::protocol::PROTOCOL_VERSION
    );
    assert!(lattice_client::empty_snapshot_len(3) > 0);
}
