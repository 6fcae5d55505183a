//! The server and the clients are built against the same engine protocol.

use lattice_client::core::{ClientCore, ClientOptions};
use lattice_engine::protocol::ClientMsg;
use lattice_engine::{ReplicaId, manual_clock};

#[test]
fn server_speaks_the_engine_protocol() {
    assert_eq!(
        lattice_server::PROTOCOL_VERSION,
        lattice_engine::protocol::PROTOCOL_VERSION
    );
}

#[test]
fn the_browser_client_says_hello_in_the_servers_version() {
    let mut core = ClientCore::new(
        ReplicaId::from_random(3),
        manual_clock,
        None,
        ClientOptions::default(),
    );
    core.connecting();
    core.socket_open(0);
    let frames = core.take_frames().frames;
    let hello = ClientMsg::decode(&frames[0], usize::MAX).expect("hello decodes");
    assert!(matches!(
        hello,
        ClientMsg::Hello { protocol, replica: Some(3), .. }
            if protocol == lattice_server::PROTOCOL_VERSION
    ));
}
