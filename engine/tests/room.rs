//! The room state machine: acknowledgement after commit, echo to y-websocket peers, presence
//! queries.

use lattice_engine::protocol::{ErrorCode, ServerMsg};
use lattice_engine::sync::{Access, Echo, PeerId, Room, RoomConfig, SubscribeOptions};
use lattice_engine::{
    DEFAULT_MAX_DRIFT, DocId, DocState, Document, Hlc, HlcTimestamp, ReplicaId, Value,
    ntp64_from_unix_ms,
};

/// The driver's wall time in these tests (2023-11-14T22:13:20Z).
const NOW_MS: u64 = 1_700_000_000_000;

fn room() -> Room {
    let server = ReplicaId::new(1).expect("replica");
    Room::new(
        DocId::new("room/test").expect("doc"),
        Document::new(server),
        Hlc::new(server, DEFAULT_MAX_DRIFT),
        RoomConfig::default(),
    )
}

fn writer() -> SubscribeOptions {
    SubscribeOptions {
        access: Access::Write,
        echo: Echo::None,
    }
}

fn reader() -> SubscribeOptions {
    SubscribeOptions {
        access: Access::Read,
        echo: Echo::None,
    }
}

/// A y-websocket peer's subscription: its own deltas come back.
fn echoing() -> SubscribeOptions {
    SubscribeOptions {
        access: Access::Write,
        echo: Echo::OwnDeltas,
    }
}

fn edit(replica: u32, text: &str) -> lattice_engine::Delta {
    let mut doc = Document::new(ReplicaId::new(replica).expect("replica"));
    doc.text_insert("text", 0, text).expect("insert")
}

fn deltas_to(fx: &lattice_engine::sync::Effects, peer: PeerId) -> usize {
    fx.send
        .iter()
        .filter(|o| o.to.contains(&peer) && matches!(o.msg, ServerMsg::Delta { .. }))
        .count()
}

#[test]
fn echo_peers_get_their_own_delta_back_only_after_commit() {
    let mut room = room();
    let (native, yjs, other) = (PeerId(1), PeerId(2), PeerId(3));
    room.subscribe(native, writer(), &DocState::default());
    room.subscribe(yjs, echoing(), &DocState::default());
    room.subscribe(other, writer(), &DocState::default());

    let fx = room.client_delta(yjs, 1, edit(7, "from yjs"), None, NOW_MS);
    assert_eq!(fx.persist.len(), 1);
    assert!(fx.send.is_empty(), "nothing leaves before the commit");
    let fx = room.committed(fx.persist[0].token);
    assert_eq!(deltas_to(&fx, yjs), 1, "the echo");
    assert_eq!(deltas_to(&fx, native), 1);
    assert_eq!(deltas_to(&fx, other), 1);

    let fx = room.client_delta(native, 1, edit(8, "from native"), None, NOW_MS);
    let fx = room.committed(fx.persist[0].token);
    assert_eq!(
        deltas_to(&fx, native),
        0,
        "native peers get an ack, not an echo"
    );
    assert_eq!(deltas_to(&fx, yjs), 1);
    assert!(
        fx.send
            .iter()
            .any(|o| o.to == vec![native] && matches!(o.msg, ServerMsg::Ack { seq: 1, .. }))
    );
}

#[test]
fn query_presence_answers_with_everyone_else() {
    let mut room = room();
    let (a, b, c) = (PeerId(1), PeerId(2), PeerId(3));
    for p in [a, b, c] {
        room.subscribe(p, reader(), &DocState::default());
    }
    room.presence(a, Value::String("ann".into()), false, 0);
    room.presence(b, Value::String("bob".into()), false, 0);
    let fx = room.query_presence(c);
    let mut seen: Vec<u64> = fx
        .send
        .iter()
        .filter_map(|o| match &o.msg {
            ServerMsg::Presence { peer, .. } if o.to == vec![c] => Some(*peer),
            _ => None,
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2]);
    assert!(
        room.query_presence(PeerId(99)).send.is_empty(),
        "strangers get nothing"
    );
}

#[test]
fn a_server_delta_reaches_every_subscriber_after_its_commit_and_is_acked_to_no_one() {
    let mut room = room();
    let (a, b) = (PeerId(1), PeerId(2));
    room.subscribe(a, writer(), &DocState::default());
    room.subscribe(b, echoing(), &DocState::default());
    let fx = room
        .server_delta(edit(9, "restored"), Some("admin".into()), NOW_MS)
        .expect("applies");
    assert_eq!(fx.persist.len(), 1);
    assert_eq!(fx.persist[0].author.as_deref(), Some("admin"));
    assert_eq!(fx.persist[0].peer, lattice_engine::sync::SERVER_PEER);
    assert!(fx.send.is_empty(), "nothing leaves before the commit");
    let fx = room.committed(fx.persist[0].token);
    assert_eq!(deltas_to(&fx, a), 1);
    assert_eq!(deltas_to(&fx, b), 1);
    assert!(
        !fx.send
            .iter()
            .any(|o| matches!(o.msg, ServerMsg::Ack { .. })),
        "no one sent it, so no one is acknowledged"
    );
    assert_eq!(room.document().text("text"), "restored");
    // The same delta again changes nothing and persists nothing.
    let fx = room
        .server_delta(edit(9, "restored"), None, NOW_MS)
        .expect("applies");
    assert!(fx.persist.is_empty());
}

#[test]
fn another_nodes_delta_is_relayed_to_everyone_after_the_local_ones_before_it_and_never_persisted() {
    let mut room = room();
    let (writer_peer, yjs) = (PeerId(1), PeerId(2));
    room.subscribe(writer_peer, writer(), &DocState::default());
    room.subscribe(yjs, echoing(), &DocState::default());
    // A local delta waits for its commit; the remote one, durable already, waits behind it.
    let local = room.client_delta(writer_peer, 1, edit(7, "local "), None, NOW_MS);
    let fx = room
        .remote_delta(edit(8, "remote"), Some("bob"), NOW_MS)
        .expect("applies");
    assert!(
        fx.persist.is_empty(),
        "committed elsewhere: not persisted again"
    );
    assert!(fx.send.is_empty(), "relays keep the order of application");
    let fx = room.committed(local.persist[0].token);
    assert_eq!(deltas_to(&fx, writer_peer), 1, "the remote delta only");
    assert_eq!(
        deltas_to(&fx, yjs),
        2,
        "the local delta, then the remote one"
    );
    assert!(room.document().text("text").contains("remote"));
    // With nothing waiting, it goes at once; content the room holds goes nowhere.
    let fx = room
        .remote_delta(edit(9, "more"), None, NOW_MS)
        .expect("applies");
    assert_eq!(deltas_to(&fx, writer_peer), 1);
    let fx = room
        .remote_delta(edit(9, "more"), None, NOW_MS)
        .expect("applies");
    assert!(fx.send.is_empty() && fx.persist.is_empty());
    assert!(!room.has_pending());
}

fn errors_to(fx: &lattice_engine::sync::Effects, peer: PeerId) -> Vec<(ErrorCode, Option<u64>)> {
    fx.send
        .iter()
        .filter(|o| o.to.contains(&peer))
        .filter_map(|o| match &o.msg {
            ServerMsg::Error { code, seq, .. } => Some((*code, *seq)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_seq_that_does_not_increase_is_refused_and_never_acknowledged() {
    let mut room = room();
    let peer = PeerId(1);
    room.subscribe(peer, writer(), &DocState::default());
    let fx = room.client_delta(peer, 5, edit(7, "a"), None, NOW_MS);
    room.committed(fx.persist[0].token);
    for seq in [5, 4] {
        let fx = room.client_delta(peer, seq, edit(8, "b"), None, NOW_MS);
        assert!(fx.persist.is_empty());
        assert_eq!(
            errors_to(&fx, peer),
            vec![(ErrorCode::InvalidSeq, Some(seq))]
        );
    }
    let fx = room.client_delta(peer, 6, edit(8, "b"), None, NOW_MS);
    assert_eq!(fx.persist.len(), 1);
}

/// The room's clock reads only the time it is given: a register write stamped beyond the drift
/// bound of `now_ms` is refused, and the same write is taken once the driver's time catches up.
#[test]
fn a_register_write_ahead_of_the_drift_bound_is_refused_at_the_time_given() {
    let mut room = room();
    let peer = PeerId(1);
    room.subscribe(peer, writer(), &DocState::default());
    let ahead_ms = DEFAULT_MAX_DRIFT.as_secs() * 1_000 + 1_000;
    let mut author = Document::new(ReplicaId::new(9).expect("replica"));
    let stamp = HlcTimestamp::new(
        ntp64_from_unix_ms(NOW_MS + ahead_ms).as_u64(),
        author.replica(),
    );
    let write = author
        .register_set("title", Value::String("later".into()), stamp)
        .expect("set");
    let fx = room.client_delta(peer, 1, write.clone(), None, NOW_MS);
    assert_eq!(
        errors_to(&fx, peer),
        vec![(ErrorCode::InvalidDelta, Some(1))]
    );
    let fx = room.client_delta(peer, 2, write, None, NOW_MS + ahead_ms);
    assert_eq!(fx.persist.len(), 1);
    assert_eq!(fx.persist[0].hlc, stamp.time);
}

#[test]
fn missing_dependencies_get_an_error_then_the_room_state_to_resync_from() {
    let mut room = room();
    let peer = PeerId(1);
    room.subscribe(peer, writer(), &DocState::default());
    let mut author = Document::new(ReplicaId::new(9).expect("replica"));
    let _first = author.text_insert("text", 0, "ab").expect("insert");
    let second = author.text_insert("text", 2, "cd").expect("insert");
    let fx = room.client_delta(peer, 1, second, Some("alice".into()), NOW_MS);
    assert!(fx.persist.is_empty(), "nothing is stored");
    assert_eq!(
        errors_to(&fx, peer),
        vec![(ErrorCode::MissingDependencies, Some(1))]
    );
    let sync = fx
        .send
        .iter()
        .find_map(|o| match &o.msg {
            ServerMsg::Sync { delta, state, .. } if o.to == vec![peer] => Some((delta, state)),
            _ => None,
        })
        .expect("a sync follows the refusal");
    assert!(sync.0.is_empty(), "the sync carries only the room's state");
    // What the peer sends back from that state holds what the refused delta built on.
    let resync = author.diff_since(sync.1).expect("diff");
    let fx = room.client_delta(peer, 2, resync, Some("alice".into()), NOW_MS);
    let fx = room.committed(fx.persist[0].token);
    assert!(
        fx.send
            .iter()
            .any(|o| matches!(o.msg, ServerMsg::Ack { seq: 2, .. }))
    );
    assert_eq!(room.document().text("text"), "abcd");
}

fn syncs_to(fx: &lattice_engine::sync::Effects, peer: PeerId) -> Vec<&lattice_engine::Delta> {
    fx.send
        .iter()
        .filter(|o| o.to.contains(&peer))
        .filter_map(|o| match &o.msg {
            ServerMsg::Sync { delta, .. } => Some(delta),
            _ => None,
        })
        .collect()
}

/// Found by `cargo xtask chaos` (PostgreSQL down longer than the store's `busy_timeout`, a full
/// disk): a subscribe answered while a delta waited for its commit got that delta in its
/// `sync`. When the commit then failed and the room reloaded the document from the store, the
/// subscriber held content the server did not, under another user's client id; its resync
/// carried it along with its own edits and was refused (`invalid_delta`, client id taken) for
/// as long as it held it, so two writers that got each other's edits this way could never sync
/// again. Now the answer waits behind the commit, like a relay.
#[test]
fn a_sync_answer_leaves_only_once_what_it_holds_is_committed() {
    let mut room = room();
    let (alice, bob, carol) = (PeerId(1), PeerId(2), PeerId(3));
    room.subscribe(alice, writer(), &DocState::default());
    room.subscribe(carol, writer(), &DocState::default());
    let fx = room.client_delta(alice, 1, edit(7, "alice"), Some("alice".into()), NOW_MS);
    let token = fx.persist[0].token;
    // Bob subscribes while Alice's delta is being committed: nothing yet.
    let fx = room.subscribe(bob, writer(), &DocState::default());
    assert!(
        syncs_to(&fx, bob).is_empty(),
        "bob's sync left before the commit"
    );
    assert!(room.queued_sync(bob).is_some());
    // The commit: Alice's ack, Carol's relay, Bob's sync with Alice's text (and no relay of it).
    let fx = room.committed(token);
    let syncs = syncs_to(&fx, bob);
    assert_eq!(syncs.len(), 1);
    assert!(
        !syncs[0].is_empty(),
        "the sync holds alice's committed delta"
    );
    assert_eq!(deltas_to(&fx, bob), 0, "the sync already holds it");
    assert_eq!(deltas_to(&fx, carol), 1);
    // Later deltas reach Bob as relays.
    let fx = room.client_delta(alice, 2, edit(8, "more"), Some("alice".into()), NOW_MS);
    let fx = room.committed(fx.persist[0].token);
    assert_eq!(deltas_to(&fx, bob), 1);
}

/// The other half: when the commit fails, the waiting subscriber is closed with the sender
/// (it resyncs with the reloaded document) and never gets the refused content.
#[test]
fn a_waiting_sync_is_dropped_with_a_failed_commit() {
    let mut room = room();
    let (alice, bob) = (PeerId(1), PeerId(2));
    room.subscribe(alice, writer(), &DocState::default());
    room.client_delta(alice, 1, edit(7, "alice"), Some("alice".into()), NOW_MS);
    room.subscribe(bob, writer(), &DocState::default());
    let fx = room.commit_failed();
    assert!(fx.reload);
    let mut closed: Vec<PeerId> = fx.close.iter().map(|(p, _)| *p).collect();
    closed.sort();
    assert_eq!(closed, vec![alice, bob]);
    assert!(syncs_to(&fx, bob).is_empty());
    assert!(!room.is_subscribed(bob));
}
