//! Golden bytes for the wire protocol, and the typed errors for bad frames.
//!
//! Every `ClientMsg` and `ServerMsg` variant has one fixture in `tests/fixtures/protocol/`, the
//! hex of its MessagePack encoding. A change that alters any of them changes the wire format:
//! if that is intended, rewrite them with `LATTICE_BLESS=1 cargo test -p lattice-engine --test
//! protocol` and review the diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lattice_engine::protocol::{
    ClientMsg, DEFAULT_MAX_FRAME_BYTES, DecodeError, ErrorCode, PROTOCOL_VERSION, ServerMsg,
};
use lattice_engine::yjs::{UpdateCheckError, check_update_v1};
use lattice_engine::{
    ApplyError, Delta, DocId, DocState, Document, GCounter, HlcTimestamp, LwwRegister, ReplicaId,
    Value,
};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, Text, Transact};

const AUTHOR: ReplicaId = ReplicaId::from_random(0x0A11_CE01);
/// 2023-11-14T22:13:20Z in NTP64, plus three logical ticks.
const STAMP_TIME: u64 = (1_700_000_000u64 << 32) + 3;

fn doc_id() -> DocId {
    DocId::new("team-a/notes").expect("valid id")
}

/// A document with text, a counter and a register, built the same way every time.
fn authored() -> (Document, Delta) {
    let mut doc = Document::new(AUTHOR);
    let mut delta = doc.text_insert("body", 0, "héllo").expect("insert");
    delta.counters = doc
        .counter_increment("likes", 2)
        .expect("increment")
        .counters;
    let value = Value::Map(BTreeMap::from([
        ("bytes".to_owned(), Value::Bytes(vec![0xde, 0xad])),
        ("n".to_owned(), Value::Int(-7)),
        ("x".to_owned(), Value::Float(f64::NAN)),
    ]));
    delta.registers = doc
        .register_set("meta", value, HlcTimestamp::new(STAMP_TIME, AUTHOR))
        .expect("set")
        .registers;
    (doc, delta)
}

/// A value with every [`Value`] kind at the edges of MessagePack's size classes (fixint, 8, 16,
/// 32 and 64 bits; fixstr and str8; bin8 and bin16; fixmap and map16), and the maps the
/// encoding wraps because their one key is `$bytes`, `$float` or `$map`.
fn every_kind() -> Value {
    let ints = [
        0,
        127,
        128,
        255,
        256,
        65_535,
        65_536,
        i64::from(u32::MAX),
        i64::from(u32::MAX) + 1,
        i64::MAX,
        -1,
        -32,
        -33,
        -128,
        -129,
        -32_768,
        -32_769,
        i64::from(i32::MIN),
        i64::from(i32::MIN) - 1,
        i64::MIN,
    ];
    let mut map: BTreeMap<String, Value> = (0..16)
        .map(|i| (format!("k{i:02}"), Value::Int(i)))
        .collect();
    map.insert("ints".into(), Value::List(ints.map(Value::Int).to_vec()));
    map.insert(
        "floats".into(),
        Value::List(
            [
                1.5,
                -0.0,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE,
            ]
            .map(Value::Float)
            .to_vec(),
        ),
    );
    map.insert(
        "strings".into(),
        Value::List(
            [0, 31, 32, 255, 256]
                .map(|n| Value::String("é".repeat(n / 2) + &"x".repeat(n % 2)))
                .to_vec(),
        ),
    );
    map.insert(
        "bytes".into(),
        Value::List([0, 255, 256].map(|n| Value::Bytes(vec![0xab; n])).to_vec()),
    );
    map.insert(
        "misc".into(),
        Value::List(vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::List(Vec::new()),
            Value::Map(BTreeMap::new()),
            Value::List((0..16).map(Value::Int).collect()),
        ]),
    );
    for tag in ["$bytes", "$float", "$map"] {
        map.insert(
            format!("wrapped{tag}"),
            Value::Map(BTreeMap::from([(
                tag.to_owned(),
                Value::String("zz".into()),
            )])),
        );
    }
    Value::Map(map)
}

/// A delta whose counters and registers sit at the edges of the integer encodings.
fn edge_delta() -> Delta {
    let mut counter = GCounter::new();
    counter.increment(ReplicaId::from_random(1), 0);
    counter.increment(ReplicaId::from_random(200), 128);
    counter.increment(ReplicaId::from_random(70_000), u64::from(u32::MAX) + 1);
    counter.increment(ReplicaId::from_random(u32::MAX), u64::MAX);
    let stamp = HlcTimestamp::new(5, ReplicaId::from_random(1));
    Delta {
        yjs: Vec::new(),
        counters: BTreeMap::from([("c".to_owned(), counter)]),
        registers: BTreeMap::from([
            ("all".to_owned(), LwwRegister::new(every_kind(), stamp)),
            (
                "x".repeat(40),
                LwwRegister::new(Value::Null, HlcTimestamp::new(u64::MAX, AUTHOR)),
            ),
        ]),
    }
}

fn client_fixtures() -> Vec<(&'static str, ClientMsg)> {
    let (doc, delta) = authored();
    vec![
        (
            "client_hello",
            ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                token: Some("secret".to_owned()),
                agent: Some("lattice-test/1".to_owned()),
                replica: Some(AUTHOR.get()),
            },
        ),
        (
            "client_subscribe",
            ClientMsg::Subscribe {
                doc: doc_id(),
                state: doc.state(),
            },
        ),
        (
            "client_unsubscribe",
            ClientMsg::Unsubscribe { doc: doc_id() },
        ),
        (
            "client_delta",
            ClientMsg::Delta {
                doc: doc_id(),
                seq: 42,
                delta,
            },
        ),
        (
            "client_presence",
            ClientMsg::Presence {
                doc: doc_id(),
                state: lattice_engine::Value::Map(
                    [(
                        "name".to_owned(),
                        lattice_engine::Value::String("Ada".to_owned()),
                    )]
                    .into(),
                ),
                typing: true,
            },
        ),
        ("client_ping", ClientMsg::Ping { nonce: 0xfeed }),
        (
            "client_hello_bare",
            ClientMsg::Hello {
                protocol: PROTOCOL_VERSION,
                token: None,
                agent: None,
                replica: None,
            },
        ),
        (
            "client_subscribe_empty",
            ClientMsg::Subscribe {
                doc: doc_id(),
                state: DocState::default(),
            },
        ),
        (
            "client_delta_edges",
            ClientMsg::Delta {
                doc: doc_id(),
                seq: u64::MAX,
                delta: edge_delta(),
            },
        ),
        (
            "client_presence_left",
            ClientMsg::Presence {
                doc: doc_id(),
                state: Value::Null,
                typing: false,
            },
        ),
    ]
}

fn server_fixtures() -> Vec<(&'static str, ServerMsg)> {
    let (doc, delta) = authored();
    vec![
        (
            "server_welcome",
            ServerMsg::Welcome {
                protocol: PROTOCOL_VERSION,
                server: "lattice/0.1.0".to_owned(),
            },
        ),
        (
            "server_sync",
            ServerMsg::Sync {
                doc: doc_id(),
                delta: delta.clone(),
                state: doc.state(),
            },
        ),
        (
            "server_delta",
            ServerMsg::Delta {
                doc: doc_id(),
                delta,
            },
        ),
        (
            "server_ack",
            ServerMsg::Ack {
                doc: doc_id(),
                seq: 42,
            },
        ),
        (
            "server_error",
            ServerMsg::Error {
                code: ErrorCode::InvalidDelta,
                message: "bad yjs".to_owned(),
                doc: Some(doc_id()),
                seq: Some(42),
            },
        ),
        (
            "server_presence",
            ServerMsg::Presence {
                doc: doc_id(),
                peer: 7,
                state: lattice_engine::Value::Null,
                typing: false,
            },
        ),
        ("server_pong", ServerMsg::Pong { nonce: 0xfeed }),
        (
            "server_sync_empty",
            ServerMsg::Sync {
                doc: doc_id(),
                delta: Delta::default(),
                state: DocState::default(),
            },
        ),
        (
            "server_error_bare",
            ServerMsg::Error {
                code: ErrorCode::Unknown,
                message: String::new(),
                doc: None,
                seq: None,
            },
        ),
        (
            "server_presence_edges",
            ServerMsg::Presence {
                doc: doc_id(),
                peer: u64::MAX,
                state: every_kind(),
                typing: true,
            },
        ),
    ]
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/protocol")
        .join(format!("{name}.hex"))
}

fn blessing() -> bool {
    std::env::var_os("LATTICE_BLESS").is_some_and(|v| v == "1")
}

/// The fixture's bytes, or in bless mode the freshly written `bytes`.
fn golden(name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = fixture_path(name);
    if blessing() {
        std::fs::create_dir_all(path.parent().expect("fixture dir")).expect("create fixture dir");
        std::fs::write(&path, format!("{}\n", hex::encode(bytes))).expect("write fixture");
        return bytes.to_vec();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with LATTICE_BLESS=1 to write it",
            path.display()
        )
    });
    hex::decode(text.trim()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn fixture_content_is_deterministic() {
    let (a, da) = authored();
    let (b, db) = authored();
    assert_eq!(da, db);
    assert_eq!(a.state(), b.state());
    assert_eq!(a.snapshot(), b.snapshot());
}

#[test]
fn client_messages_match_their_fixtures() {
    for (name, msg) in client_fixtures() {
        let bytes = golden(name, &msg.encode());
        assert_eq!(
            hex::encode(msg.encode()),
            hex::encode(&bytes),
            "{name}: encoding changed"
        );
        assert_eq!(
            ClientMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES),
            Ok(msg),
            "{name}"
        );
    }
}

#[test]
fn server_messages_match_their_fixtures() {
    for (name, msg) in server_fixtures() {
        let bytes = golden(name, &msg.encode());
        assert_eq!(
            hex::encode(msg.encode()),
            hex::encode(&bytes),
            "{name}: encoding changed"
        );
        assert_eq!(
            ServerMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES),
            Ok(msg),
            "{name}"
        );
    }
}

/// The bodies of HTTP writes and readers' `?state=`: a delta and a state on their own.
#[test]
fn bare_deltas_and_states_match_their_fixtures() {
    let (doc, delta) = authored();
    for (name, delta) in [
        ("delta", delta),
        ("delta_edges", edge_delta()),
        ("delta_empty", Delta::default()),
    ] {
        let bytes = golden(name, &delta.encode());
        assert_eq!(hex::encode(delta.encode()), hex::encode(&bytes), "{name}");
        assert_eq!(Delta::decode(&bytes, bytes.len()), Ok(delta), "{name}");
    }
    for (name, state) in [("state", doc.state()), ("state_empty", DocState::default())] {
        let bytes = golden(name, &state.encode());
        assert_eq!(hex::encode(state.encode()), hex::encode(&bytes), "{name}");
        assert_eq!(DocState::decode(&bytes, bytes.len()), Ok(state), "{name}");
    }
}

/// Every fixture's name, encoding, kind and side (client or server).
fn all_encodings() -> Vec<(&'static str, Vec<u8>, &'static str, bool)> {
    let clients = client_fixtures()
        .into_iter()
        .map(|(n, m)| (n, m.encode(), m.kind(), true));
    let servers = server_fixtures()
        .into_iter()
        .map(|(n, m)| (n, m.encode(), m.kind(), false));
    clients.chain(servers).collect()
}

fn decode(bytes: &[u8], client: bool) -> Result<(), DecodeError> {
    if client {
        ClientMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES).map(drop)
    } else {
        ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES).map(drop)
    }
}

#[test]
fn every_truncation_is_an_error() {
    for (name, bytes, _, client) in all_encodings() {
        for len in 0..bytes.len() {
            let result = decode(&bytes[..len], client);
            assert!(result.is_err(), "{name} truncated to {len} decoded");
        }
        assert_eq!(decode(&[], client), Err(DecodeError::Empty));
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    for (name, mut bytes, msg_kind, client) in all_encodings() {
        bytes.push(0xc0);
        match decode(&bytes, client) {
            Err(DecodeError::Malformed { kind, reason }) => {
                assert_eq!(kind, msg_kind, "{name}");
                assert!(reason.contains("trailing"), "{name}: {reason}");
            }
            other => panic!("{name} with a trailing byte: {other:?}"),
        }
    }
}

#[test]
fn empty_frame() {
    assert_eq!(
        ClientMsg::decode(&[], DEFAULT_MAX_FRAME_BYTES),
        Err(DecodeError::Empty)
    );
    assert_eq!(
        ServerMsg::decode(&[], DEFAULT_MAX_FRAME_BYTES),
        Err(DecodeError::Empty)
    );
}

#[test]
fn frame_size_is_checked_before_decoding() {
    // Not MessagePack at all: only the length can have produced this error.
    let garbage = vec![0xc1; 101];
    let expected = Some(DecodeError::FrameTooLarge { len: 101, max: 100 });
    assert_eq!(ClientMsg::decode(&garbage, 100).err(), expected);
    assert_eq!(ServerMsg::decode(&garbage, 100).err(), expected);
    let ping = ClientMsg::Ping { nonce: 1 }.encode();
    assert_eq!(
        ClientMsg::decode(&ping, ping.len() - 1),
        Err(DecodeError::FrameTooLarge {
            len: ping.len(),
            max: ping.len() - 1
        })
    );
    assert!(ClientMsg::decode(&ping, ping.len()).is_ok());
}

#[test]
fn non_map_frames() {
    let array = rmp_serde::to_vec(&[1u8, 2]).expect("encode");
    for frame in [
        array.as_slice(),
        &[0xc0],
        &[0x01],
        &[0xa3, b'a', b'b', b'c'],
    ] {
        assert_eq!(
            ClientMsg::decode(frame, DEFAULT_MAX_FRAME_BYTES),
            Err(DecodeError::NotAMap),
            "{frame:02x?}"
        );
        assert_eq!(
            ServerMsg::decode(frame, DEFAULT_MAX_FRAME_BYTES),
            Err(DecodeError::NotAMap),
            "{frame:02x?}"
        );
    }
}

#[test]
fn map_without_type() {
    let no_type = rmp_serde::to_vec_named(&BTreeMap::from([("nonce", 1u64)])).expect("encode map");
    for frame in [no_type.as_slice(), &[0x80]] {
        assert_eq!(
            ClientMsg::decode(frame, DEFAULT_MAX_FRAME_BYTES),
            Err(DecodeError::MissingKind)
        );
        assert_eq!(
            ServerMsg::decode(frame, DEFAULT_MAX_FRAME_BYTES),
            Err(DecodeError::MissingKind)
        );
    }
}

#[test]
fn unknown_kind() {
    let bogus = rmp_serde::to_vec_named(&BTreeMap::from([("type", "bogus")])).expect("encode");
    let unknown = |kind: &str| {
        Some(DecodeError::UnknownKind {
            kind: kind.to_owned(),
        })
    };
    assert_eq!(
        ClientMsg::decode(&bogus, DEFAULT_MAX_FRAME_BYTES).err(),
        unknown("bogus")
    );
    assert_eq!(
        ServerMsg::decode(&bogus, DEFAULT_MAX_FRAME_BYTES).err(),
        unknown("bogus")
    );
    // Each side's kinds are unknown to the other side's decoder.
    let welcome = ServerMsg::Welcome {
        protocol: PROTOCOL_VERSION,
        server: String::new(),
    }
    .encode();
    assert_eq!(
        ClientMsg::decode(&welcome, DEFAULT_MAX_FRAME_BYTES).err(),
        unknown("welcome")
    );
    let hello = ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        token: None,
        agent: None,
        replica: None,
    }
    .encode();
    assert_eq!(
        ServerMsg::decode(&hello, DEFAULT_MAX_FRAME_BYTES).err(),
        unknown("hello")
    );
}

#[test]
fn hello_with_protocol_2_is_unsupported() {
    let hello = ClientMsg::Hello {
        protocol: 2,
        token: None,
        agent: None,
        replica: None,
    }
    .encode();
    assert_eq!(
        ClientMsg::decode(&hello, DEFAULT_MAX_FRAME_BYTES),
        Err(DecodeError::UnsupportedVersion {
            got: 2,
            supported: 1
        })
    );
}

#[test]
fn allocation_bomb_decodes_as_a_message_but_does_not_apply() {
    let bomb = vec![0x9f, 0x9e, 0x97, 0x31];
    let msg = ClientMsg::Delta {
        doc: doc_id(),
        seq: 1,
        delta: Delta {
            yjs: bomb.clone(),
            ..Delta::default()
        },
    };
    let decoded = ClientMsg::decode(&msg.encode(), DEFAULT_MAX_FRAME_BYTES).expect("decodes");
    let ClientMsg::Delta { delta, .. } = decoded else {
        panic!("not a delta: {decoded:?}");
    };
    assert_eq!(delta.yjs, bomb);

    let (mut doc, _) = authored();
    let (json, state) = (doc.to_json(), doc.state());
    let err = doc.apply(&delta).expect_err("the bomb is refused");
    assert!(
        matches!(
            err,
            ApplyError::Check(UpdateCheckError::CountTooLarge { .. })
        ),
        "{err:?}"
    );
    assert_eq!(doc.to_json(), json);
    assert_eq!(doc.state(), state);
    assert!(!doc.is_poisoned());
}

#[test]
fn wide_client_ids_are_refused() {
    let wide = 1u64 << 40;
    let ydoc = yrs::Doc::with_client_id(wide);
    let text = ydoc.get_or_insert_text("body");
    let update = {
        let mut txn = ydoc.transact_mut();
        text.insert(&mut txn, 0, "hi");
        txn.encode_update_v1()
    };
    assert_eq!(
        check_update_v1(&update),
        Err(UpdateCheckError::ClientIdTooWide { client: wide })
    );
    let (mut doc, _) = authored();
    let json = doc.to_json();
    assert_eq!(
        doc.apply(&Delta {
            yjs: update,
            ..Delta::default()
        }),
        Err(ApplyError::Check(UpdateCheckError::ClientIdTooWide {
            client: wide
        }))
    );
    assert_eq!(doc.to_json(), json);
}

#[test]
fn our_updates_carry_the_32_bit_replica_id() {
    let replica = ReplicaId::from_random(u32::MAX);
    let mut doc = Document::new(replica);
    let first = doc.text_insert("body", 0, "a").expect("insert");
    let second = doc.text_delete("body", 0, 1).expect("delete");
    for delta in [&first, &second] {
        check_update_v1(&delta.yjs).expect("passes the check");
    }
    let update = yrs::Update::decode_v1(&first.yjs).expect("decodes");
    let clients: Vec<u64> = update
        .state_vector()
        .iter()
        .map(|(client, _)| client.get())
        .collect();
    assert_eq!(clients, vec![u64::from(replica.get())]);
    let ydoc = doc.ydoc();
    assert_eq!(ydoc.client_id().get(), u64::from(replica.get()));
    let sv = ydoc.transact().state_vector();
    assert_eq!(sv.get(&ydoc.client_id()), 1);
}

/// `ErrorCode::KNOWN` and `ErrorCode::as_str` agree with the wire: each known code encodes as
/// its `as_str` name and decodes back to itself, and no two share a name.
#[test]
fn every_known_error_code_has_its_wire_name() {
    let mut names = std::collections::HashSet::new();
    for code in ErrorCode::KNOWN {
        let bytes = rmp_serde::to_vec_named(&code).expect("encode");
        let name: String = rmp_serde::from_slice(&bytes).expect("a string");
        assert_eq!(name, code.as_str());
        assert_eq!(
            rmp_serde::from_slice::<ErrorCode>(&bytes).expect("decode"),
            code
        );
        assert!(names.insert(name), "{code:?} shares its name");
    }
    let newer = rmp_serde::to_vec_named("a_code_from_a_newer_server").expect("encode");
    assert_eq!(
        rmp_serde::from_slice::<ErrorCode>(&newer).expect("decode"),
        ErrorCode::Unknown
    );
}
