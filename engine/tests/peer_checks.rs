//! What a peer's delta must satisfy before a document takes it ([`Trust::Peer`]), and why: each
//! test is one attack class of issue 17 against the engine alone (the server tests repeat them
//! over real sockets).

use std::collections::BTreeMap;

use lattice_engine::yjs::MAX_TYPE_DEPTH;
use lattice_engine::{
    ApplyError, Delta, Document, GCounter, ReplicaId, SnapshotError, Source, Trust,
};
use yrs::encoding::write::Write;
use yrs::types::ToJson;
use yrs::{Array, ArrayPrelim, ArrayRef, Doc, ReadTxn, StateVector, Transact};

fn replica(n: u32) -> ReplicaId {
    ReplicaId::new(n).expect("non-zero")
}

fn yjs(bytes: Vec<u8>) -> Delta {
    Delta {
        yjs: bytes,
        ..Delta::default()
    }
}

/// A raw yrs document (what a stock Yjs client would hold) with `levels` arrays nested under the
/// root array "a", returned as one update per level.
fn nested_updates(client: u64, levels: usize) -> Vec<Vec<u8>> {
    let d = Doc::with_client_id(client);
    let mut current: ArrayRef = d.get_or_insert_array("a");
    let mut sv = StateVector::default();
    let mut out = Vec::new();
    for _ in 0..levels {
        {
            let mut txn = d.transact_mut();
            current = current.insert(&mut txn, 0, ArrayPrelim::default());
        }
        let txn = d.transact();
        out.push(txn.encode_state_as_update_v1(&sv));
        sv = txn.state_vector();
    }
    out
}

fn peer(author: &str) -> Source<'_> {
    Source::peer(Some(author))
}

/// Runs `f` on a thread with a small stack, so that a recursion the depth limit failed to bound
/// aborts the test process instead of passing by luck on a large main-thread stack.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

#[test]
fn nesting_past_the_limit_is_refused_in_one_delta_and_across_many() {
    // One delta holding the whole deep tree.
    let levels = 5_000;
    let updates = nested_updates(7, levels);
    let whole = {
        let d = Doc::with_client_id(7);
        for u in &updates {
            let update = <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(u).expect("u");
            d.transact_mut().apply_update(update).expect("apply");
        }
        d.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let mut doc = Document::new(replica(1));
    let err = doc
        .apply_from(&yjs(whole), peer("mallory"))
        .expect_err("refused");
    assert!(matches!(err, ApplyError::TooDeep { .. }), "{err}");
    assert_eq!(doc.to_json()["arrays"], serde_json::json!({}));

    // The same tree built up one level per delta: every level up to the limit goes in, the
    // next is refused, and the document is unchanged by the refusal.
    let mut doc = Document::new(replica(1));
    let allowed = usize::from(MAX_TYPE_DEPTH) - 1;
    for (level, u) in updates.iter().enumerate().take(allowed) {
        doc.apply_from(&yjs(u.clone()), peer("mallory"))
            .unwrap_or_else(|e| panic!("level {}: {e}", level + 2));
    }
    let before = doc.state();
    let err = doc
        .apply_from(&yjs(updates[allowed].clone()), peer("mallory"))
        .expect_err("one level too deep");
    assert!(
        matches!(err, ApplyError::TooDeep { depth, .. } if depth == u32::from(MAX_TYPE_DEPTH) + 1),
        "{err}"
    );
    assert_eq!(doc.state(), before);
}

#[test]
fn a_tree_at_the_limit_is_safe_to_walk_delete_and_encode_on_a_small_stack() {
    on_small_stack(|| {
        let updates = nested_updates(9, usize::from(MAX_TYPE_DEPTH) - 1);
        let mut doc = Document::new(replica(1));
        for u in &updates {
            doc.apply_from(&yjs(u.clone()), peer("alice"))
                .expect("fits");
        }
        let json = doc.to_json();
        assert!(json["arrays"]["a"].is_array());
        let snapshot = doc.snapshot();
        let copy = Document::from_snapshot(replica(2), &snapshot).expect("loads");
        assert_eq!(copy.to_json(), json);
        // Delete the whole tree (yrs deletes and garbage-collects it recursively).
        let d = Doc::with_client_id(9);
        for u in &updates {
            let update = <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(u).expect("u");
            d.transact_mut().apply_update(update).expect("apply");
        }
        let sv = d.transact().state_vector();
        {
            let root = d.get_or_insert_array("a");
            let mut txn = d.transact_mut();
            root.remove(&mut txn, 0);
        }
        let delete = d.transact().encode_state_as_update_v1(&sv);
        doc.apply_from(&yjs(delete), peer("alice")).expect("delete");
        assert!(doc.to_json()["arrays"]["a"].is_null(), "{}", doc.to_json());
        let _ = doc.snapshot();
        let _ = d.get_or_insert_array("a").to_json(&d.transact());
    });
}

#[test]
fn a_stored_document_nested_too_deep_loads_as_an_error() {
    // A checkpoint written before the limit existed: the snapshot layout around a deep tree.
    let updates = nested_updates(5, 300);
    let d = Doc::with_client_id(5);
    for u in &updates {
        let update = <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(u).expect("u");
        d.transact_mut().apply_update(update).expect("apply");
    }
    let whole = d
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let mut doc = Document::new(replica(3));
    doc.apply(&Delta::default()).expect("empty");
    // `Document::snapshot` of an empty document gives the layout; put the deep tree in it.
    #[derive(serde::Serialize)]
    struct Snapshot {
        format: u32,
        content: Delta,
    }
    let bytes = rmp_serde::to_vec_named(&Snapshot {
        format: lattice_engine::SNAPSHOT_FORMAT,
        content: yjs(whole),
    })
    .expect("encode");
    let err = on_small_stack(move || Document::from_snapshot(replica(3), &bytes).map(|_| ()));
    assert!(
        matches!(err, Err(SnapshotError::Apply(ApplyError::TooDeep { .. }))),
        "{err:?}"
    );
}

#[test]
fn a_peer_update_with_missing_dependencies_is_refused_whole_and_a_trusted_one_is_held() {
    let updates = nested_updates(11, 3);
    let mut server = Document::new(replica(1));
    let err = server
        .apply_from(&yjs(updates[1].clone()), peer("alice"))
        .expect_err("builds on level 1");
    assert_eq!(
        err,
        ApplyError::MissingDependencies {
            client: 11,
            clock: 0
        }
    );
    assert_eq!(server.held_updates(), 0);
    assert!(server.state().yjs.is_empty());

    let mut client = Document::new(replica(2));
    client
        .apply_from(&yjs(updates[1].clone()), Source::trusted(None))
        .expect("held");
    assert_eq!(client.held_updates(), 1);
    client
        .apply_from(&yjs(updates[0].clone()), Source::trusted(None))
        .expect("integrates both");
    assert_eq!(client.held_updates(), 0);
    assert_eq!(client.to_json()["arrays"]["a"], serde_json::json!([[[]]]));
}

#[test]
fn a_peer_may_not_delete_what_the_document_does_not_hold() {
    // Client 9 deletes clocks 0..4 of client 5, which nothing holds yet: once client 5's text
    // arrived it would be deleted on arrival, after its author was told it was kept.
    let pre_delete = vec![0, 1, 5, 1, 0, 4];
    let mut doc = Document::new(replica(1));
    let err = doc
        .apply_from(&yjs(pre_delete), peer("mallory"))
        .expect_err("refused");
    assert!(
        matches!(err, ApplyError::MissingDependencies { client: 5, .. }),
        "{err}"
    );
}

#[test]
fn content_under_a_client_id_another_principal_introduced_is_refused() {
    let mut server = Document::new(replica(1));
    let mut alice = Document::new(replica(0x00A1_1CE0));
    let edit = alice.text_insert("body", 0, "hello").expect("edit");
    server
        .apply_from(&edit, peer("alice"))
        .expect("alice's own id");
    assert_eq!(server.owner_of(0x00A1_1CE0), Some("alice"));

    // Mallory claims the clocks Alice has not used yet with a GC range under her id: were it
    // taken, Alice's next edit would be "already known", acknowledged and never appear.
    let mut gc = vec![1, 1];
    gc.write_var(0x00A1_1CE0_u32);
    gc.extend([5, 0, 100, 0]);
    let err = server
        .apply_from(&yjs(gc), peer("mallory"))
        .expect_err("not mallory's id");
    assert_eq!(
        err,
        ApplyError::ClientIdTaken {
            client: 0x00A1_1CE0
        }
    );

    // Alice's next edit goes in and is visible.
    let next = alice.text_insert("body", 5, " world").expect("edit");
    server.apply_from(&next, peer("alice")).expect("still hers");
    assert_eq!(server.text("body"), "hello world");

    // Counter entries and register stamps are replica ids too.
    let mut counters = BTreeMap::new();
    let mut forged = GCounter::new();
    forged.increment(replica(0x00A1_1CE0), u64::MAX);
    counters.insert("likes".to_owned(), forged);
    let err = server
        .apply_from(
            &Delta {
                counters,
                ..Delta::default()
            },
            peer("mallory"),
        )
        .expect_err("not mallory's replica");
    assert_eq!(
        err,
        ApplyError::ClientIdTaken {
            client: 0x00A1_1CE0
        }
    );
    assert_eq!(server.counter("likes"), 0);

    // Ownership survives a checkpoint.
    let copy = Document::from_snapshot(replica(7), &server.snapshot()).expect("loads");
    assert_eq!(copy.owner_of(0x00A1_1CE0), Some("alice"));

    // Without authentication there is no principal, and nothing is checked.
    let mut open = Document::new(replica(1));
    open.apply_from(&edit, Source::peer(None)).expect("open");
    assert_eq!(open.owner_of(0x00A1_1CE0), None);
    assert_eq!(Source::peer(None).trust, Trust::Peer);
}

#[test]
fn trailing_bytes_after_an_update_are_refused() {
    let mut alice = Document::new(replica(3));
    let mut edit = alice.text_insert("body", 0, "x").expect("edit");
    edit.yjs.push(0);
    let mut server = Document::new(replica(1));
    let err = server
        .apply_from(&edit, peer("alice"))
        .expect_err("trailing byte");
    assert!(matches!(err, ApplyError::Check(_)), "{err}");
}

#[test]
fn held_updates_are_planned_again_only_when_what_they_wait_for_arrives() {
    // A trusted replica holding many updates that wait for one missing clock: applying
    // unrelated deltas leaves them alone (no re-walk per delta), and the missing clock
    // releases them all.
    let updates = nested_updates(21, 40);
    let mut doc = Document::new(replica(2));
    for u in &updates[1..] {
        doc.apply_from(&yjs(u.clone()), Source::trusted(None))
            .expect("held");
    }
    assert_eq!(doc.held_updates(), 39);
    let mut other = Document::new(replica(3));
    for i in 0..200 {
        let edit = other.text_insert("t", i, "y").expect("edit");
        doc.apply(&edit).expect("unrelated");
    }
    assert_eq!(doc.held_updates(), 39);
    assert_eq!(doc.held_replans(), 0, "held updates were planned again");
    doc.apply(&yjs(updates[0].clone()))
        .expect("the first level");
    assert_eq!(doc.held_updates(), 0);
    // Each held update waited for the level before it: each was planned once more.
    assert_eq!(doc.held_replans(), 39);
    assert_eq!(doc.text("t").len(), 200);
}

/// A client whose ack was lost resends its edits merged into one update: the first item now
/// starts in clocks the server holds and names its root outright. The server takes the part it
/// lacks, and its snapshot reloads to the same text (the rewrite of such straddling items is what
/// keeps a forged one, `fuzz/regressions/yjs_apply/snapshot-duplicates-text`, from loading to
/// other content).
#[test]
fn a_merged_resend_overlapping_acked_clocks_applies_and_snapshots_alike() {
    use yrs::{GetString, Text};
    let client = Doc::with_client_id(41);
    let text = client.get_or_insert_text("notes");
    let first = {
        let mut txn = client.transact_mut();
        text.insert(&mut txn, 0, "Hel");
        txn.encode_update_v1()
    };
    let second = {
        let mut txn = client.transact_mut();
        text.insert(&mut txn, 3, "lo wörld 👋");
        txn.encode_update_v1()
    };
    let merged = yrs::merge_updates_v1([first.as_slice(), second.as_slice()]).expect("merge");

    let mut server = Document::new(replica(1));
    server.apply_from(&yjs(first), peer("ada")).expect("first");
    server
        .apply_from(&yjs(merged), peer("ada"))
        .expect("merged resend");
    let json = server.to_json();
    assert_eq!(json["texts"]["notes"], "Hello wörld 👋");
    let loaded = Document::from_snapshot(replica(1), &server.snapshot()).expect("loads");
    assert_eq!(loaded.to_json(), json);
    assert_eq!(
        text.get_string(&client.transact()),
        "Hello wörld 👋",
        "the client holds what the server does"
    );
}
