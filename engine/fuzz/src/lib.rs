//! What the engine's fuzz targets check: one function per target, each taking the raw input.
//!
//! `fuzz_targets/<name>.rs` calls [`<name>`](self) under libFuzzer, and
//! `engine/tests/fuzz_regressions.rs` includes this file and calls the same function on every
//! input kept in `regressions/<name>/`, so a crash found once stays fixed in the normal test run
//! (stable toolchain, no libFuzzer). A property that does not hold panics; so does anything the
//! engine itself lets escape. Stack overflows abort and huge allocations fail, both of which
//! libFuzzer reports as crashes too.
//!
//! [`seeds`] builds the structure-aware part of the committed corpus (real Yjs updates written
//! by `yrs`); the regression test checks that `corpus/` holds exactly what it builds.

use std::panic::{AssertUnwindSafe, catch_unwind};

use lattice_engine::hocuspocus::{self, HocusFrame, HocusMessage};
use lattice_engine::protocol::{ClientMsg, DEFAULT_MAX_FRAME_BYTES, ServerMsg};
use lattice_engine::yws::{self, YMessage};
use lattice_engine::{
    ApplyError, Delta, DocState, Document, HlcTimestamp, ReplicaId, Source, Value, yjs,
};
use yrs::updates::decoder::Decode;
use yrs::{Options, ReadTxn, StateVector, Transact, Update};

/// Stack of the threads the server runs documents on (tokio's workers and blocking pool, 2 MiB
/// each). `yjs_apply` and `decode` run there, so input nested deep enough to overflow a server
/// thread aborts the fuzz target too, instead of passing on libFuzzer's 8 MiB main thread.
pub const SERVER_STACK_BYTES: usize = 2 * 1024 * 1024;

/// Runs `check` on a thread with [`SERVER_STACK_BYTES`] of stack; its panic goes on here.
pub fn on_server_stack<F: FnOnce() + Send>(check: F) {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("server-stack".into())
            .stack_size(SERVER_STACK_BYTES)
            .spawn_scoped(scope, check)
            .expect("spawn a checking thread");
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// The replica the documents under test belong to (the server's, in production).
const SERVER: ReplicaId = ReplicaId::from_random(7);
/// The Yjs client id of the peer that deletes content in [`yjs_apply`].
const DELETER: u64 = 0x5eed;

/// `fuzz_targets/client_msg.rs`: `ClientMsg::decode` and `ServerMsg::decode` never panic, and
/// whatever decodes survives encode → decode unchanged, with a stable encoding.
pub fn client_msg(bytes: &[u8]) {
    if let Ok(msg) = ClientMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES) {
        let encoded = msg.encode();
        // The re-encoding may be longer than the input (a peer may use shorter forms), so the
        // frame limit does not apply to it.
        let again = ClientMsg::decode(&encoded, usize::MAX)
            .unwrap_or_else(|e| panic!("re-encoded {} does not decode: {e}", msg.kind()));
        assert_eq!(again, msg, "a client message changed through encode/decode");
        assert_eq!(
            again.encode(),
            encoded,
            "a client message's encoding is not stable"
        );
    }
    if let Ok(msg) = ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES) {
        let encoded = msg.encode();
        let again = ServerMsg::decode(&encoded, usize::MAX)
            .unwrap_or_else(|e| panic!("re-encoded {} does not decode: {e}", msg.kind()));
        assert_eq!(again, msg, "a server message changed through encode/decode");
        assert_eq!(
            again.encode(),
            encoded,
            "a server message's encoding is not stable"
        );
    }
}

/// `fuzz_targets/yws_frame.rs`: `yws::decode_frame` never panics; every update and state vector
/// it accepts passes the engine's guards and is what yrs reads; every message re-encodes (with
/// the encoders the server uses) to a frame that decodes to the same message.
pub fn yws_frame(bytes: &[u8]) {
    let Ok(messages) = yws::decode_frame(bytes, DEFAULT_MAX_FRAME_BYTES) else {
        return;
    };
    for msg in messages {
        match msg {
            YMessage::SyncStep1 { state_vector } => {
                yjs::check_state_vector_v1(&state_vector)
                    .expect("an accepted state vector passes the guard");
                let theirs = StateVector::decode_v1(&state_vector)
                    .expect("yrs reads a state vector the guard accepts");
                // What the server does with it: answer with what the peer lacks.
                content_document()
                    .diff_since(&DocState {
                        yjs: state_vector.clone(),
                        ..DocState::default()
                    })
                    .expect("an accepted state vector can be diffed against");
                match single(&yws::encode_sync_step1(&state_vector)) {
                    YMessage::SyncStep1 { state_vector } => assert_eq!(
                        StateVector::decode_v1(&state_vector).ok(),
                        Some(theirs),
                        "sync step 1 changed through encode/decode"
                    ),
                    other => panic!("sync step 1 re-decoded as {other:?}"),
                }
            }
            YMessage::SyncStep2 { update } => {
                yjs::check_update_v1(&update).expect("an accepted update passes the guard");
                assert_eq!(
                    single(&yws::encode_sync_step2(&update)),
                    YMessage::SyncStep2 { update }
                );
            }
            YMessage::Update { update } => {
                yjs::check_update_v1(&update).expect("an accepted update passes the guard");
                assert_eq!(
                    single(&yws::encode_update(&update)),
                    YMessage::Update { update }
                );
            }
            YMessage::Awareness { entries } => {
                // Re-encoding keeps one entry per client, the last one (as y-protocols does).
                let mut expected: Vec<yws::AwarenessEntry> = Vec::new();
                for e in entries.iter().rev() {
                    if !expected.iter().any(|x| x.client == e.client) {
                        expected.push(e.clone());
                    }
                }
                expected.sort_by_key(|e| e.client);
                match single(&yws::encode_awareness(&entries)) {
                    YMessage::Awareness { mut entries } => {
                        entries.sort_by_key(|e| e.client);
                        assert_eq!(entries, expected, "awareness changed through encode/decode");
                    }
                    other => panic!("awareness re-decoded as {other:?}"),
                }
            }
            YMessage::Auth {
                denied: Some(reason),
            } => assert_eq!(
                single(&yws::encode_permission_denied(&reason)),
                YMessage::Auth {
                    denied: Some(reason)
                }
            ),
            YMessage::Auth { denied: None } => {}
            YMessage::QueryAwareness => assert_eq!(
                single(&yws::encode_query_awareness()),
                YMessage::QueryAwareness
            ),
        }
    }
}

/// `fuzz_targets/hocus_frame.rs`: `hocuspocus::decode_frame` never panics; every update and
/// state vector it accepts passes the engine's guards and is what yrs reads; every frame
/// re-encodes (with the encoders the server uses) to bytes that decode to the same frame
/// (awareness: one entry per client, the last, as y-protocols keeps them).
pub fn hocus_frame(bytes: &[u8]) {
    let Ok(frame) = hocuspocus::decode_frame(bytes, DEFAULT_MAX_FRAME_BYTES) else {
        return;
    };
    let expected = match &frame {
        HocusFrame::Doc { name, message } => {
            let message = match message {
                HocusMessage::SyncStep1 { state_vector } => {
                    yjs::check_state_vector_v1(state_vector)
                        .expect("an accepted state vector passes the guard");
                    StateVector::decode_v1(state_vector)
                        .expect("yrs reads a state vector the guard accepts");
                    // yrs re-encodes a state vector in its own order: compare what it holds.
                    let again = hocuspocus::decode_frame(&frame.encode(), usize::MAX);
                    match again {
                        Ok(HocusFrame::Doc {
                            message: HocusMessage::SyncStep1 { state_vector: sv },
                            ..
                        }) => assert_eq!(
                            StateVector::decode_v1(&sv).ok(),
                            StateVector::decode_v1(state_vector).ok(),
                            "sync step 1 changed through encode/decode"
                        ),
                        other => panic!("sync step 1 re-decoded as {other:?}"),
                    }
                    return;
                }
                HocusMessage::SyncStep2 { update } | HocusMessage::Update { update } => {
                    yjs::check_update_v1(update).expect("an accepted update passes the guard");
                    message.clone()
                }
                HocusMessage::Awareness { entries } => {
                    let mut kept: Vec<yws::AwarenessEntry> = Vec::new();
                    for e in entries.iter().rev() {
                        if !kept.iter().any(|x| x.client == e.client) {
                            kept.push(e.clone());
                        }
                    }
                    kept.sort_by_key(|e| e.client);
                    HocusMessage::Awareness { entries: kept }
                }
                other => other.clone(),
            };
            HocusFrame::Doc {
                name: name.clone(),
                message,
            }
        }
        other => other.clone(),
    };
    let again = hocuspocus::decode_frame(&frame.encode(), usize::MAX)
        .unwrap_or_else(|e| panic!("a frame we encoded does not decode: {e}"));
    let again = match again {
        HocusFrame::Doc {
            name,
            message: HocusMessage::Awareness { mut entries },
        } => {
            entries.sort_by_key(|e| e.client);
            HocusFrame::Doc {
                name,
                message: HocusMessage::Awareness { entries },
            }
        }
        other => other,
    };
    assert_eq!(again, expected, "a frame changed through encode/decode");
}

fn single(frame: &[u8]) -> YMessage {
    match yws::decode_frame(frame, usize::MAX) {
        Ok(mut messages) if messages.len() == 1 => messages.remove(0),
        other => panic!("a frame we encoded decodes as {other:?}"),
    }
}

/// `fuzz_targets/yjs_apply.rs`, the differential target: the input is a Yjs v1 update.
///
/// - What `yjs::check_update_v1` refuses, `Document::apply` refuses too, changing nothing.
/// - What it accepts is applied to an empty document and to one with content (texts, a map,
///   nested arrays, counters, a register). yrs may refuse it (`Decode`), fail half-way
///   (`Integrate`, which poisons the document) or hold it for missing clocks, but never panic
///   past the engine, abort or allocate without bound.
/// - A document that took it is then encoded every way the server encodes one (`snapshot`,
///   `diff_since` an empty state, `to_json`, `encode_yjs`); the snapshot loads back to the same
///   content, and the full diff brings an empty replica to the same content.
/// - Finally a peer deletes everything the document holds, through `Document::apply` again,
///   and the document is encoded once more.
///
/// `Document::apply_from` with a peer source does not exist yet; once it does, it belongs here.
pub fn yjs_apply(bytes: &[u8]) {
    // An empty `yjs` field means "no Yjs part" (`Delta`'s contract), not an update.
    if bytes.is_empty() {
        return;
    }
    let guard = yjs::check_update_v1(bytes);
    // As a trusted replica applies it (holding what waits), and as the server takes a peer's.
    for source in [Source::trusted(None), Source::peer(Some("fuzz"))] {
        for doc in [Document::new(SERVER), content_document()] {
            apply_one(bytes, &guard, doc, source);
        }
    }
}

fn apply_one(
    bytes: &[u8],
    guard: &Result<yjs::UpdateShape, yjs::UpdateCheckError>,
    mut doc: Document,
    source: Source<'_>,
) {
    {
        let before = (doc.to_json(), doc.state());
        let delta = Delta {
            yjs: bytes.to_vec(),
            ..Delta::default()
        };
        match doc.apply_from(&delta, source) {
            Ok(_) => {
                assert!(guard.is_ok(), "applied an update the guard refuses");
                encode_every_way(&doc);
                if let Some(deletion) = delete_everything(&doc) {
                    let delta = Delta {
                        yjs: deletion,
                        ..Delta::default()
                    };
                    if doc.apply(&delta).is_ok() {
                        encode_every_way(&doc);
                    }
                }
            }
            Err(ApplyError::Check(e)) => {
                if let Err(g) = guard {
                    assert_eq!(g, &e, "apply and the guard disagree");
                }
                assert_unchanged(&doc, &before);
            }
            // yrs got part-way: the document says so and refuses all further work.
            Err(ApplyError::Integrate { .. }) => {
                assert!(doc.is_poisoned());
                assert_eq!(doc.apply(&Delta::default()), Err(ApplyError::Poisoned));
            }
            Err(_) => assert_unchanged(&doc, &before),
        }
    }
}

fn assert_unchanged(doc: &Document, before: &(serde_json::Value, DocState)) {
    assert!(
        *before == (doc.to_json(), doc.state()),
        "a refused update changed the document"
    );
}

/// Everything the server does to turn a document into bytes, with the round trips that must hold.
fn encode_every_way(doc: &Document) {
    let json = doc.to_json();
    let _ = doc.encode_yjs();
    let snapshot = doc.snapshot();
    let loaded = Document::from_snapshot(SERVER, &snapshot)
        .unwrap_or_else(|e| panic!("a document's own snapshot does not load: {e}"));
    assert_eq!(
        loaded.to_json(),
        json,
        "the snapshot loads to other content"
    );
    let full = doc
        .diff_since(&DocState::default())
        .unwrap_or_else(|e| panic!("a document cannot be diffed against nothing: {e}"));
    let mut replica = Document::new(ReplicaId::from_random(8));
    replica
        .apply(&full)
        .unwrap_or_else(|e| panic!("a document's full diff does not apply: {e}"));
    assert_eq!(
        replica.to_json(),
        json,
        "the full diff brings other content"
    );
}

/// An update by another peer that deletes every root's content (map entries and sequence
/// content alike), or `None` if the peer cannot load the document. The peer is plain yrs; a
/// panic there is not the engine's and only skips the deletion.
fn delete_everything(doc: &Document) -> Option<Vec<u8>> {
    let whole = doc.encode_yjs();
    catch_unwind(AssertUnwindSafe(|| {
        let peer = yrs::Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(DELETER),
            offset_kind: yrs::OffsetKind::Utf16,
            ..Options::default()
        });
        let mut txn = peer.transact_mut();
        txn.apply_update(Update::decode_v1(&whole).ok()?).ok()?;
        let roots: Vec<yrs::branch::BranchPtr> = txn
            .root_refs()
            .filter_map(|(_, out)| match out {
                yrs::Out::UndefinedRef(branch) => Some(branch),
                _ => None,
            })
            .collect();
        for branch in roots {
            yrs::Map::clear(&yrs::MapRef::from(branch), &mut txn);
            let seq = yrs::ArrayRef::from(branch);
            let len = yrs::Array::len(&seq, &txn);
            yrs::Array::remove_range(&seq, &mut txn, 0, len);
        }
        Some(txn.encode_update_v1())
    }))
    .ok()
    .flatten()
}

/// A document with some of everything: a text with a deletion, a map of every scalar kind,
/// arrays nested in maps nested in arrays, a counter and a register. Built afresh for every
/// input, the same each time.
pub fn content_document() -> Document {
    let mut doc = Document::new(SERVER);
    for update in [seed_text(1), seed_map(2), seed_nested(3, 4)] {
        doc.apply(&Delta {
            yjs: update,
            ..Delta::default()
        })
        .expect("seed updates apply");
    }
    doc.text_insert("body", 0, "hello").expect("text insert");
    doc.counter_increment("likes", 3).expect("counter");
    doc.register_set(
        "title",
        Value::String("notes".into()),
        HlcTimestamp::new(1 << 32, SERVER),
    )
    .expect("register");
    doc
}

/// `fuzz_targets/decode.rs`, the first target: the same bytes to every decoder that faces a
/// peer or the store (`ClientMsg`, `ServerMsg`, the Yjs guard, `yws::decode_frame`,
/// `Document::from_snapshot`, a state vector in `diff_since`, an update in `apply`); none may
/// panic, and a document that refuses a delta is left as it was unless it reports itself
/// poisoned.
pub fn decode(bytes: &[u8]) {
    let _ = ClientMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = yjs::check_update_v1(bytes);
    let _ = yws::decode_frame(bytes, DEFAULT_MAX_FRAME_BYTES);
    if let Ok(doc) = Document::from_snapshot(ReplicaId::from_random(9), bytes) {
        let _ = doc.to_json();
    }

    let mut doc = Document::new(SERVER);
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
        Err(ApplyError::Integrate { .. }) => {
            assert!(doc.is_poisoned());
            assert_eq!(doc.apply(&Delta::default()), Err(ApplyError::Poisoned));
        }
        Err(e) => assert!(
            before == (doc.to_json(), doc.state()),
            "refused ({e}) but changed"
        ),
    }
}

/// What a target checks, given one input.
pub type Check = fn(&[u8]);

/// Every fuzz target, by name, for the replay of kept inputs.
pub const TARGETS: &[(&str, Check)] = &[
    ("client_msg", client_msg),
    ("yws_frame", yws_frame),
    ("hocus_frame", hocus_frame),
    ("yjs_apply", yjs_apply),
    ("decode", decode),
];

fn peer(client: u64) -> yrs::Doc {
    yrs::Doc::with_options(Options {
        client_id: yrs::block::ClientID::new(client),
        offset_kind: yrs::OffsetKind::Utf16,
        ..Options::default()
    })
}

/// A text typed, partly deleted and formatted, with an embed.
fn seed_text(client: u64) -> Vec<u8> {
    use yrs::Text;
    let doc = peer(client);
    let text = doc.get_or_insert_text("notes");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, "Hello, wörld! 👋");
    text.remove_range(&mut txn, 5, 2);
    text.format(
        &mut txn,
        0,
        5,
        yrs::types::Attrs::from([("bold".into(), yrs::Any::Bool(true))]),
    );
    text.insert_embed(&mut txn, 3, yrs::Any::from("embed"));
    txn.encode_update_v1()
}

/// A map holding every scalar kind of `Any`, with one entry overwritten and one removed.
fn seed_map(client: u64) -> Vec<u8> {
    use yrs::Map;
    let doc = peer(client);
    let map = doc.get_or_insert_map("settings");
    let mut txn = doc.transact_mut();
    map.insert(&mut txn, "null", yrs::Any::Null);
    map.insert(&mut txn, "undefined", yrs::Any::Undefined);
    map.insert(&mut txn, "bool", true);
    map.insert(&mut txn, "int", -42i64);
    map.insert(&mut txn, "big", i64::MAX);
    map.insert(&mut txn, "float", 1.5f64);
    map.insert(&mut txn, "string", "value");
    map.insert(
        &mut txn,
        "bytes",
        yrs::Any::Buffer(vec![0u8, 1, 255].into()),
    );
    map.insert(
        &mut txn,
        "list",
        yrs::Any::Array(vec![yrs::Any::from(1i64), yrs::Any::from("two")].into()),
    );
    map.insert(&mut txn, "gone", "soon");
    map.insert(&mut txn, "int", 43i64);
    map.remove(&mut txn, "gone");
    txn.encode_update_v1()
}

/// Shared types `depth` levels deep: an array holding a map holding an array … with a text at
/// the bottom, some content at every level, and one deletion.
fn seed_nested(client: u64, depth: usize) -> Vec<u8> {
    use yrs::{Array, ArrayPrelim, Map, MapPrelim, Text, TextPrelim};
    let doc = peer(client);
    let root = doc.get_or_insert_array("tree");
    let mut txn = doc.transact_mut();
    root.push_back(&mut txn, "first");
    let mut array = root.push_back(&mut txn, ArrayPrelim::default());
    for level in 0..depth {
        array.push_back(&mut txn, i64::try_from(level).unwrap_or(0));
        let map = array.push_back(&mut txn, MapPrelim::default());
        map.insert(&mut txn, "level", i64::try_from(level).unwrap_or(0));
        if level + 1 == depth {
            let text = map.insert(&mut txn, "leaf", TextPrelim::new("leaf text"));
            text.remove_range(&mut txn, 0, 5);
        } else {
            array = map.insert(&mut txn, "child", ArrayPrelim::default());
        }
    }
    root.remove(&mut txn, 0);
    txn.encode_update_v1()
}

/// An XML fragment with an element, attributes and text.
fn seed_xml(client: u64) -> Vec<u8> {
    use yrs::{Text, Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim};
    let doc = peer(client);
    let fragment = doc.get_or_insert_xml_fragment("prosemirror");
    let mut txn = doc.transact_mut();
    let paragraph = fragment.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
    paragraph.insert_attribute(&mut txn, "align", "left");
    let text = paragraph.push_back(&mut txn, XmlTextPrelim::new("some text"));
    text.insert(&mut txn, 4, " more");
    txn.encode_update_v1()
}

/// Two peers editing the same text concurrently, merged into one update.
fn seed_concurrent() -> Vec<u8> {
    use yrs::Text;
    let a = peer(11);
    let b = peer(12);
    // Root types are taken before a transaction: `Doc::get_or_insert_*` opens one itself.
    let text_a = a.get_or_insert_text("notes");
    let text_b = b.get_or_insert_text("notes");
    text_a.insert(&mut a.transact_mut(), 0, "abc");
    let base = a
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    if let Ok(update) = Update::decode_v1(&base) {
        let _ = b.transact_mut().apply_update(update);
    }
    text_a.insert(&mut a.transact_mut(), 1, "AAA");
    {
        let mut txn = b.transact_mut();
        text_b.insert(&mut txn, 1, "BBB");
        text_b.remove_range(&mut txn, 0, 1);
    }
    let ua = a
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let ub = b
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    yrs::merge_updates_v1([ua.as_slice(), ub.as_slice()]).unwrap_or(ua)
}

/// The second edit of a peer without its first: it starts at a clock the receiver lacks, so the
/// engine holds it back until the gap fills.
fn seed_gap() -> Vec<u8> {
    use yrs::Text;
    let doc = peer(21);
    let text = doc.get_or_insert_text("notes");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "first");
    }
    let sv = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 5, " second");
    }
    doc.transact().encode_state_as_update_v1(&sv)
}

/// An update holding only a deletion (of text another update wrote).
fn seed_delete_only() -> Vec<u8> {
    use yrs::Text;
    let doc = peer(31);
    let text = doc.get_or_insert_text("notes");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "to be deleted");
    }
    let mut txn = doc.transact_mut();
    text.remove_range(&mut txn, 0, 6);
    txn.encode_update_v1()
}

/// Edits by a peer that loaded [`content_document`]: they build on its content, so they
/// integrate there and wait for missing dependencies in an empty document.
fn seed_on_content() -> Vec<u8> {
    use yrs::{Array, Map, Text, WriteTxn};
    let doc = peer(41);
    let base = content_document().encode_yjs();
    let mut txn = doc.transact_mut();
    if let Ok(update) = Update::decode_v1(&base) {
        let _ = txn.apply_update(update);
    }
    let body = txn.get_or_insert_text("body");
    body.insert(&mut txn, 2, "XY");
    body.remove_range(&mut txn, 0, 1);
    let settings = txn.get_or_insert_map("settings");
    settings.insert(&mut txn, "bool", false);
    settings.remove(&mut txn, "string");
    let tree = txn.get_or_insert_array("tree");
    tree.insert(&mut txn, 0, "zeroth");
    txn.encode_update_v1()
}

/// The committed, generated corpus: `(target, file name, bytes)`. The regression test writes it
/// with `LATTICE_BLESS=1` and otherwise checks that `corpus/` holds exactly these bytes.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let updates = [
        ("yrs-text", seed_text(1)),
        ("yrs-map", seed_map(2)),
        ("yrs-nested-4", seed_nested(3, 4)),
        ("yrs-nested-16", seed_nested(5, 16)),
        ("yrs-xml", seed_xml(6)),
        ("yrs-concurrent", seed_concurrent()),
        ("yrs-gap", seed_gap()),
        ("yrs-delete-only", seed_delete_only()),
        ("yrs-on-content", seed_on_content()),
    ];
    let mut out = Vec::new();
    for (name, update) in &updates {
        out.push(("yjs_apply", *name, update.clone()));
    }
    let frames = [
        ("yrs-update-text", yws::encode_update(&updates[0].1)),
        ("yrs-update-nested", yws::encode_update(&updates[2].1)),
        ("yrs-step2-xml", yws::encode_sync_step2(&updates[4].1)),
        (
            "yrs-step1",
            yws::encode_sync_step1(&content_document().state().yjs),
        ),
        ("yrs-step1-empty", yws::encode_sync_step1(&[])),
        (
            "yrs-awareness",
            yws::encode_awareness(&[yws::AwarenessEntry {
                client: 42,
                clock: 3,
                state_json: r##"{"user":{"name":"ann","color":"#f00"},"cursor":null}"##.into(),
            }]),
        ),
        ("yrs-query-awareness", yws::encode_query_awareness()),
        ("yrs-denied", yws::encode_permission_denied("read-only")),
        (
            "yrs-two-messages",
            [
                yws::encode_sync_step1(&[]),
                yws::encode_update(&updates[1].1),
            ]
            .concat(),
        ),
    ];
    for (name, frame) in frames {
        out.push(("yws_frame", name, frame));
    }
    let hocus = [
        (
            "yrs-token",
            hocuspocus::encode_token("team-a/notes", "a.jwt.token", Some("4.7.0")),
        ),
        (
            "yrs-step1",
            hocuspocus::encode_sync_step1("team-a/notes", &content_document().state().yjs),
        ),
        (
            "yrs-step2-text",
            hocuspocus::encode_sync_step2("notes", &updates[0].1),
        ),
        (
            "yrs-update-nested",
            hocuspocus::encode_update("notes", &updates[2].1),
        ),
        (
            "yrs-awareness",
            hocuspocus::encode_awareness(
                "notes",
                &[yws::AwarenessEntry {
                    client: 42,
                    clock: 3,
                    state_json: r##"{"user":{"name":"ann","color":"#f00"}}"##.into(),
                }],
            ),
        ),
        (
            "yrs-query-awareness",
            hocuspocus::encode_query_awareness("n"),
        ),
        (
            "yrs-stateless",
            hocuspocus::encode_stateless("notes", r#"{"event":"saved"}"#),
        ),
        ("yrs-close", hocuspocus::encode_close("notes", "")),
        (
            "yrs-sync-status",
            hocuspocus::encode_sync_status("notes", true),
        ),
        (
            "yrs-authenticated",
            hocuspocus::encode_authenticated("notes", true),
        ),
        ("yrs-ping", hocuspocus::PING.to_vec()),
    ];
    for (name, frame) in hocus {
        out.push(("hocus_frame", name, frame));
    }
    out.push((
        "client_msg",
        "yrs-delta-nested",
        ClientMsg::Delta {
            doc: lattice_engine::DocId::new("team-a/notes").expect("doc id"),
            seq: 7,
            delta: Delta {
                yjs: updates[2].1.clone(),
                ..content_document()
                    .diff_since(&DocState::default())
                    .expect("diff")
            },
        }
        .encode(),
    ));
    out.push((
        "client_msg",
        "yrs-subscribe-state",
        ClientMsg::Subscribe {
            doc: lattice_engine::DocId::new("team-a/notes").expect("doc id"),
            state: content_document().state(),
        }
        .encode(),
    ));
    out.push(("decode", "yrs-snapshot", content_document().snapshot()));
    out
}
