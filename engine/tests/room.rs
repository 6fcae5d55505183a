//! The room state machine: acknowledgement after commit, echo to y-websocket peers, presence
//! queries.

use lattice_engine::protocol::{ErrorCode, ServerMsg};
use std::sync::Arc;

use lattice_engine::sync::{Access, Echo, PeerId, RelayOrder, Room, RoomConfig, SubscribeOptions};
use lattice_engine::{
    DEFAULT_MAX_DRIFT, DocId, DocState, Document, Hlc, HlcTimestamp, ReplicaId, Value,
    ntp64_from_unix_ms,
};

/// The driver's wall time in these tests (2023-11-14T22:13:20Z).
const NOW_MS: u64 = 1_700_000_000_000;

fn room() -> Room {
    room_relaying(RelayOrder::default())
}

fn room_relaying(relay: RelayOrder) -> Room {
    let server = ReplicaId::new(1).expect("replica");
    Room::new(
        DocId::new("room/test").expect("doc"),
        Document::new(server),
        Hlc::new(server, DEFAULT_MAX_DRIFT),
        RoomConfig {
            relay,
            ..RoomConfig::default()
        },
    )
}

/// A writer acting for `principal`.
fn writer_of(principal: &str) -> SubscribeOptions {
    SubscribeOptions {
        author: Some(Arc::from(principal)),
        ..writer()
    }
}

fn writer() -> SubscribeOptions {
    SubscribeOptions {
        access: Access::Write,
        echo: Echo::None,
        author: None,
    }
}

fn reader() -> SubscribeOptions {
    SubscribeOptions {
        access: Access::Read,
        echo: Echo::None,
        author: None,
    }
}

/// A y-websocket peer's subscription: its own deltas come back.
fn echoing() -> SubscribeOptions {
    SubscribeOptions {
        access: Access::Write,
        echo: Echo::OwnDeltas,
        author: None,
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
    let mut room = room_relaying(RelayOrder::AfterCommit);
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

fn acks_to(fx: &lattice_engine::sync::Effects, peer: PeerId) -> Vec<u64> {
    fx.send
        .iter()
        .filter(|o| o.to.contains(&peer))
        .filter_map(|o| match o.msg {
            ServerMsg::Ack { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

#[test]
fn a_delta_reaches_its_principals_subscribers_when_applied_and_others_when_committed() {
    let mut room = room();
    let (tab1, tab2, yjs_tab, bob) = (PeerId(1), PeerId(2), PeerId(3), PeerId(4));
    room.subscribe(tab1, writer_of("alice"), &DocState::default());
    room.subscribe(tab2, writer_of("alice"), &DocState::default());
    room.subscribe(
        yjs_tab,
        SubscribeOptions {
            author: Some(Arc::from("alice")),
            ..echoing()
        },
        &DocState::default(),
    );
    room.subscribe(bob, writer_of("bob"), &DocState::default());

    // A burst the driver handles in one batch: nothing leaves until it flushes, then one
    // merged frame per reader of the same principal; bob waits for the commit.
    let mut tokens = Vec::new();
    let mut typing = Document::new(ReplicaId::new(7).expect("replica"));
    for (seq, text) in [(1, "a"), (2, "b"), (3, "c")] {
        let delta = typing.text_insert("text", 0, text).expect("insert");
        let fx = room.client_delta(tab1, seq, delta, Some("alice".into()), NOW_MS);
        assert!(fx.send.is_empty(), "relays wait for the end of the batch");
        tokens.push(fx.persist[0].token);
    }
    let fx = room.flush_relays();
    assert_eq!(deltas_to(&fx, tab2), 1, "one merged frame");
    assert_eq!(deltas_to(&fx, yjs_tab), 1);
    assert_eq!(
        deltas_to(&fx, bob),
        0,
        "another principal waits for the commit"
    );
    assert_eq!(deltas_to(&fx, tab1), 0);
    assert!(
        acks_to(&fx, tab1).is_empty(),
        "an ack never precedes the commit"
    );
    assert!(room.flush_relays().is_empty());

    let fx = room.committed(*tokens.last().expect("tokens"));
    assert_eq!(acks_to(&fx, tab1), vec![3]);
    assert_eq!(deltas_to(&fx, bob), 1);
    assert_eq!(deltas_to(&fx, tab2), 0, "got it already");
    assert_eq!(deltas_to(&fx, yjs_tab), 0);

    // A y-websocket sender's echo (its "saved") waits for the commit.
    let fx = room.client_delta(yjs_tab, 1, edit(8, "y"), Some("alice".into()), NOW_MS);
    let token = fx.persist[0].token;
    let fx = room.flush_relays();
    assert_eq!(deltas_to(&fx, yjs_tab), 0);
    assert_eq!(deltas_to(&fx, tab1), 1);
    let fx = room.committed(token);
    assert_eq!(deltas_to(&fx, yjs_tab), 1, "the echo");
    assert_eq!(deltas_to(&fx, bob), 1);
    assert_eq!(deltas_to(&fx, tab1), 0);
}

#[test]
fn without_authentication_everyone_gets_a_delta_when_applied() {
    let mut room = room();
    let (a, b) = (PeerId(1), PeerId(2));
    room.subscribe(a, writer(), &DocState::default());
    room.subscribe(b, reader(), &DocState::default());
    let fx = room.client_delta(a, 1, edit(7, "x"), None, NOW_MS);
    let token = fx.persist[0].token;
    assert_eq!(deltas_to(&room.flush_relays(), b), 1);
    let fx = room.committed(token);
    assert_eq!(deltas_to(&fx, b), 0);
    assert_eq!(acks_to(&fx, a), vec![1]);
}

#[test]
fn a_sync_waits_only_for_other_principals_uncommitted_deltas() {
    let mut room = room();
    let (alice, alice2, bob) = (PeerId(1), PeerId(2), PeerId(3));
    room.subscribe(alice, writer_of("alice"), &DocState::default());
    let fx = room.client_delta(alice, 1, edit(7, "mine"), Some("alice".into()), NOW_MS);
    let token = fx.persist[0].token;
    // Alice's second tab could give her uncommitted delta back: its answer leaves now.
    let fx = room.subscribe(alice2, writer_of("alice"), &DocState::default());
    let syncs = syncs_to(&fx, alice2);
    assert_eq!(syncs.len(), 1);
    assert!(!syncs[0].is_empty());
    // Bob could not (alice's client id is hers): his waits for the commit.
    let fx = room.subscribe(bob, writer_of("bob"), &DocState::default());
    assert!(syncs_to(&fx, bob).is_empty());
    let fx = room.committed(token);
    assert_eq!(syncs_to(&fx, bob).len(), 1);
    assert_eq!(deltas_to(&fx, bob), 0, "the sync holds it");
    assert_eq!(deltas_to(&fx, alice2), 0, "the sync held it");
}

#[test]
fn a_failed_commit_after_an_early_relay_asks_every_subscriber_to_resync() {
    let mut room = room();
    let (alice, reader_peer) = (PeerId(1), PeerId(2));
    room.subscribe(alice, writer(), &DocState::default());
    room.subscribe(reader_peer, reader(), &DocState::default());
    room.client_delta(alice, 1, edit(7, "lost"), None, NOW_MS);
    assert_eq!(deltas_to(&room.flush_relays(), reader_peer), 1);
    let fx = room.commit_failed();
    assert!(fx.reload);
    assert!(fx.lost_relays, "the reader holds what the store refused");
    assert_eq!(
        fx.close.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![alice]
    );
    assert!(acks_to(&fx, alice).is_empty());

    // Relaying after commit, nobody else holds it.
    let mut room = room_relaying(RelayOrder::AfterCommit);
    room.subscribe(alice, writer(), &DocState::default());
    room.subscribe(reader_peer, reader(), &DocState::default());
    room.client_delta(alice, 1, edit(7, "lost"), None, NOW_MS);
    assert!(room.flush_relays().is_empty());
    assert!(!room.commit_failed().lost_relays);
}

#[test]
fn ack_each_peers_get_one_ack_per_delta_in_order_and_no_echo() {
    let mut room = room();
    let (hocus, native) = (PeerId(1), PeerId(2));
    let each = SubscribeOptions {
        echo: Echo::AckEach,
        ..writer()
    };
    room.subscribe(hocus, each, &DocState::default());
    room.subscribe(native, writer(), &DocState::default());
    // Three deltas from each, committed together.
    let mut tokens = Vec::new();
    for seq in 1..=3 {
        let fx = room.client_delta(hocus, seq, edit(7 + seq as u32, "h"), None, NOW_MS);
        tokens.extend(fx.persist.iter().map(|p| p.token));
        let fx = room.client_delta(native, seq, edit(20 + seq as u32, "n"), None, NOW_MS);
        tokens.extend(fx.persist.iter().map(|p| p.token));
    }
    let last = tokens.into_iter().max().expect("persisted");
    let fx = room.committed(last);
    assert_eq!(acks_to(&fx, hocus), vec![1, 2, 3], "one ack per delta");
    assert_eq!(acks_to(&fx, native), vec![3], "cumulative");
    assert_eq!(
        deltas_to(&fx, hocus),
        3,
        "the native peer's three deltas, none of its own"
    );
    // A delta that adds nothing is acknowledged too, once.
    let fx = room.client_delta(hocus, 4, edit(8, "h"), None, NOW_MS);
    assert_eq!(acks_to(&fx, hocus), vec![4]);
}
