//! What the core's unit tests share: a client, a scripted server and readers of what the client
//! sent and reported.

use lattice_engine::protocol::{ClientMsg, ServerMsg};
use lattice_engine::{Delta, DocId, DocState, ReplicaId, manual_clock};

use super::{ClientCore, ClientEvent, ClientOptions, Status};

pub(super) fn doc(name: &str) -> DocId {
    DocId::new(name).expect("doc id")
}

pub(super) fn core(replica: u32) -> ClientCore {
    ClientCore::new(
        ReplicaId::from_random(replica),
        manual_clock,
        Some("secret".into()),
        ClientOptions::default(),
    )
}

pub(super) fn sent(core: &mut ClientCore) -> Vec<ClientMsg> {
    core.take_frames()
        .frames
        .iter()
        .map(|f| ClientMsg::decode(f, usize::MAX).expect("client frame"))
        .collect()
}

pub(super) fn server(core: &mut ClientCore, msg: ServerMsg) {
    core.receive(&msg.encode(), 1_000);
}

/// A client (replica 7) with the document `notes` open, online after the handshake.
pub(super) fn online_client() -> (ClientCore, DocId) {
    let d = doc("notes");
    let mut c = core(7);
    online(&mut c, &d);
    (c, d)
}

/// Opens `d`, connects and completes the handshake with an empty server.
pub(super) fn online(core: &mut ClientCore, d: &DocId) {
    core.open(d.clone(), Vec::new()).expect("open");
    reconnect(core, d);
}

/// Connects (`d` already open) and completes the handshake with a server that holds nothing.
pub(super) fn reconnect(core: &mut ClientCore, d: &DocId) {
    core.connecting();
    core.socket_open(0);
    server(
        core,
        ServerMsg::Welcome {
            protocol: 1,
            server: "test".into(),
        },
    );
    server(
        core,
        ServerMsg::Sync {
            doc: d.clone(),
            delta: Delta::default(),
            state: DocState::default(),
        },
    );
}

pub(super) fn statuses(events: &[ClientEvent]) -> Vec<(Status, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Status {
                status, pending, ..
            } => Some((*status, *pending)),
            _ => None,
        })
        .collect()
}

/// `saved` of each status event.
pub(super) fn saved(events: &[ClientEvent]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Status { saved, .. } => Some(*saved),
            _ => None,
        })
        .collect()
}
