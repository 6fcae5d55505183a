//! The protocol's hand-written MessagePack codec against its reference: rmp-serde over the
//! types' serde derives, which is how every earlier build encoded and decoded frames (and how
//! the server still stores deltas).
//!
//! - Encoding: `encode` writes exactly the bytes `rmp_serde::to_vec_named` writes, for
//!   generated messages, deltas and states whose strings, byte strings, maps, lists and integers
//!   cross MessagePack's size classes.
//! - Decoding: on those encodings, on mutations of them (bytes changed, inserted, removed,
//!   truncated) and on hand-made frames, `decode` and the reference decoder (below, the code
//!   `decode` ran before) agree: the same message, or the same error with its kind, document
//!   and sequence number. Reasons are worded as serde worded them (checked word for word on
//!   frames with one fault); with several faults, the one reported may differ.
//!
//! The reference reads a few things no encoder writes that the codec refuses: integer map keys
//! (which serde took for field indices) and structs written as arrays or byte strings (which it
//! took for the fields in order). [`comparable`] leaves frames holding those out.

use std::collections::BTreeMap;

use lattice_engine::protocol::{
    ClientMsg, DEFAULT_MAX_FRAME_BYTES, DecodeError, ErrorCode, MAX_NESTING, PROTOCOL_VERSION,
    ServerMsg,
};
use lattice_engine::{
    Delta, DocId, DocState, GCounter, HlcTimestamp, LwwRegister, ReplicaId, Value,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

/// The decoder `ClientMsg::decode`, `ServerMsg::decode`, `Delta::decode` and `DocState::decode`
/// ran before the codec: rmp-serde over the serde derives.
mod reference {
    use std::borrow::Cow;
    use std::io::Cursor;

    use lattice_engine::protocol::{
        ClientMsg, DecodeError, MAX_NESTING, PROTOCOL_VERSION, ServerMsg,
    };
    use lattice_engine::{Delta, DocId, DocState};
    use serde::Deserialize;
    use serde::de::DeserializeOwned;

    const CLIENT_KINDS: &[&str] = &[
        "hello",
        "subscribe",
        "unsubscribe",
        "delta",
        "presence",
        "ping",
    ];
    const SERVER_KINDS: &[&str] = &[
        "welcome", "sync", "delta", "ack", "error", "presence", "pong",
    ];

    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<Cow<'a, str>>,
    }

    fn is_map_marker(b: u8) -> bool {
        matches!(b, 0x80..=0x8f | 0xde | 0xdf)
    }

    fn decode_frame<T: DeserializeOwned>(
        bytes: &[u8],
        max_frame_bytes: usize,
        kinds: &[&str],
    ) -> Result<T, DecodeError> {
        if bytes.len() > max_frame_bytes {
            return Err(DecodeError::FrameTooLarge {
                len: bytes.len(),
                max: max_frame_bytes,
            });
        }
        let first = *bytes.first().ok_or(DecodeError::Empty)?;
        if !is_map_marker(first) {
            return Err(DecodeError::NotAMap);
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(MAX_NESTING);
        let envelope = Envelope::deserialize(&mut de).map_err(|e| DecodeError::Malformed {
            kind: String::new(),
            reason: e.to_string(),
        })?;
        let kind = envelope.kind.ok_or(DecodeError::MissingKind)?;
        if !kinds.contains(&kind.as_ref()) {
            return Err(DecodeError::UnknownKind {
                kind: kind.chars().take(64).collect(),
            });
        }
        read_whole(bytes, &kind, "message")
    }

    fn read_whole<T: DeserializeOwned>(
        bytes: &[u8],
        kind: &str,
        what: &str,
    ) -> Result<T, DecodeError> {
        let malformed = |reason: String| DecodeError::Malformed {
            kind: kind.to_owned(),
            reason,
        };
        let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
        de.set_max_depth(MAX_NESTING);
        let value = T::deserialize(&mut de).map_err(|e| malformed(e.to_string()))?;
        let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
        if used != bytes.len() {
            return Err(malformed(format!(
                "{} trailing bytes after the {what}",
                bytes.len().saturating_sub(used)
            )));
        }
        Ok(value)
    }

    fn decode_exact<T: DeserializeOwned>(
        bytes: &[u8],
        max_bytes: usize,
        kind: &str,
    ) -> Result<T, DecodeError> {
        if bytes.len() > max_bytes {
            return Err(DecodeError::FrameTooLarge {
                len: bytes.len(),
                max: max_bytes,
            });
        }
        if !is_map_marker(*bytes.first().ok_or(DecodeError::Empty)?) {
            return Err(DecodeError::NotAMap);
        }
        read_whole(bytes, kind, kind)
    }

    fn delta_envelope(bytes: &[u8]) -> Option<(DocId, u64)> {
        #[derive(Deserialize)]
        struct Envelope {
            doc: DocId,
            seq: u64,
        }
        let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
        de.set_max_depth(MAX_NESTING);
        let envelope = Envelope::deserialize(&mut de).ok()?;
        (usize::try_from(de.position()).ok()? == bytes.len())
            .then_some((envelope.doc, envelope.seq))
    }

    pub(crate) fn client(bytes: &[u8], max_frame_bytes: usize) -> Result<ClientMsg, DecodeError> {
        let msg: ClientMsg = match decode_frame(bytes, max_frame_bytes, CLIENT_KINDS) {
            Ok(msg) => msg,
            Err(DecodeError::Malformed { kind, reason }) if kind == "delta" => {
                return Err(delta_envelope(bytes)
                    .map(|(doc, seq)| DecodeError::InvalidDelta {
                        doc,
                        seq,
                        reason: reason.clone(),
                    })
                    .unwrap_or(DecodeError::Malformed { kind, reason }));
            }
            Err(e) => return Err(e),
        };
        if let ClientMsg::Hello { protocol, .. } = &msg
            && *protocol != PROTOCOL_VERSION
        {
            return Err(DecodeError::UnsupportedVersion {
                got: *protocol,
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(msg)
    }

    pub(crate) fn server(bytes: &[u8], max_frame_bytes: usize) -> Result<ServerMsg, DecodeError> {
        decode_frame(bytes, max_frame_bytes, SERVER_KINDS)
    }

    pub(crate) fn delta(bytes: &[u8], max_bytes: usize) -> Result<Delta, DecodeError> {
        decode_exact(bytes, max_bytes, "delta")
    }

    pub(crate) fn state(bytes: &[u8], max_bytes: usize) -> Result<DocState, DecodeError> {
        decode_exact(bytes, max_bytes, "state")
    }
}

/// An error without its human-readable reason.
fn shape(e: &DecodeError) -> DecodeError {
    match e {
        DecodeError::Malformed { kind, .. } => DecodeError::Malformed {
            kind: kind.clone(),
            reason: String::new(),
        },
        DecodeError::InvalidDelta { doc, seq, .. } => DecodeError::InvalidDelta {
            doc: doc.clone(),
            seq: *seq,
            reason: String::new(),
        },
        other => other.clone(),
    }
}

fn same<T: PartialEq + std::fmt::Debug>(
    ours: Result<T, DecodeError>,
    theirs: Result<T, DecodeError>,
) -> Result<(), String> {
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (Err(a), Err(b)) if shape(a) == shape(b) => Ok(()),
        _ => Err(format!("codec: {ours:?}\nreference: {theirs:?}")),
    }
}

/// Where a value sits, as far as [`comparable`] needs to know.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    /// Where serde reads a struct: the message, a delta or state, a register, a stamp.
    Struct,
    /// The names of `counters`; their values are counters.
    CounterNames,
    /// The names of `registers`; their values are registers or stamps.
    RegisterNames,
    /// A counter: replica ids (integers) to counts.
    Counter,
    Other,
}

/// Whether the reference's reading of `bytes` is the protocol's: no integer key in a map where
/// serde reads a struct (it took one for a field index), no array or byte string where serde reads a
/// struct (it took one for the fields in order). The codec refuses those; no encoder writes
/// them. Conservative: a presence `state` counts as a struct here.
fn comparable(bytes: &[u8]) -> bool {
    fn len(r: &mut &[u8], width: usize) -> Option<usize> {
        let bytes = r.get(..width)?;
        let n = bytes
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        *r = &r[width..];
        Some(n)
    }
    fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let out = r.get(..n)?;
        *r = &r[n..];
        Some(out)
    }
    /// A string or byte string's bytes, or `None` for anything else (left unread).
    fn string<'a>(r: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
        let marker = *r.first()?;
        let n = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xc4 | 0xd9 => usize::from(*r.get(1)?),
            0xc5 | 0xda => usize::from(u16::from_be_bytes([*r.get(1)?, *r.get(2)?])),
            _ => return Some(None),
        };
        let head = match marker {
            0xa0..=0xbf => 1,
            0xc4 | 0xd9 => 2,
            _ => 3,
        };
        *r = r.get(head..)?;
        take(r, n).map(Some)
    }
    fn is_int(marker: u8) -> bool {
        matches!(marker, 0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff)
    }
    fn walk(r: &mut &[u8], at: At) -> Option<bool> {
        let marker = *r.first()?;
        let is_array = matches!(marker, 0x90..=0x9f | 0xdc | 0xdd);
        let is_bin = matches!(marker, 0xc4..=0xc6);
        if at == At::Struct && (is_array || is_bin) {
            return Some(false);
        }
        *r = &r[1..];
        match marker {
            0x80..=0x8f | 0xde | 0xdf => {
                let n = match marker {
                    0xde => len(r, 2)?,
                    0xdf => len(r, 4)?,
                    m => usize::from(m & 0x0f),
                };
                for _ in 0..n {
                    let key_marker = *r.first()?;
                    if is_int(key_marker) && at == At::Struct {
                        return Some(false);
                    }
                    let key = string(r)?;
                    // A key that is not a (short) string is left unread: walk it as a value.
                    if key.is_none() && !walk(r, At::Other)? {
                        return Some(false);
                    }
                    let child = match (at, key) {
                        (At::Struct, Some(b"delta" | b"state" | b"stamp")) => At::Struct,
                        (At::Struct, Some(b"counters")) => At::CounterNames,
                        (At::Struct, Some(b"registers")) => At::RegisterNames,
                        (At::CounterNames, _) => At::Counter,
                        (At::RegisterNames, _) => At::Struct,
                        _ => At::Other,
                    };
                    if !walk(r, child)? {
                        return Some(false);
                    }
                }
                Some(true)
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                let n = match marker {
                    0xdc => len(r, 2)?,
                    0xdd => len(r, 4)?,
                    m => usize::from(m & 0x0f),
                };
                for _ in 0..n {
                    if !walk(r, At::Other)? {
                        return Some(false);
                    }
                }
                Some(true)
            }
            0xa0..=0xbf => take(r, usize::from(marker & 0x1f)).map(|_| true),
            0xc4 | 0xd9 => len(r, 1).and_then(|n| take(r, n)).map(|_| true),
            0xc5 | 0xda => len(r, 2).and_then(|n| take(r, n)).map(|_| true),
            0xc6 | 0xdb => len(r, 4).and_then(|n| take(r, n)).map(|_| true),
            0xc7 => len(r, 1).and_then(|n| take(r, n + 1)).map(|_| true),
            0xc8 => len(r, 2).and_then(|n| take(r, n + 1)).map(|_| true),
            0xc9 => len(r, 4).and_then(|n| take(r, n + 1)).map(|_| true),
            0xcc | 0xd0 => take(r, 1).map(|_| true),
            0xcd | 0xd1 => take(r, 2).map(|_| true),
            0xca | 0xce | 0xd2 => take(r, 4).map(|_| true),
            0xcb | 0xcf | 0xd3 => take(r, 8).map(|_| true),
            0xd4..=0xd8 => take(r, (1 << (marker - 0xd4)) + 1).map(|_| true),
            _ => Some(true),
        }
    }
    let mut r = bytes;
    // Truncated input is comparable: both refuse it.
    walk(&mut r, At::Struct).unwrap_or(true)
}

// ---------------------------------------------------------------------------------------------
// Strategies: sizes at the edges of MessagePack's size classes.

/// Lengths around the fixed, 8-, 16- and 32-bit forms of strings, byte strings and containers.
fn edge_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..4,
        1 => prop::sample::select(vec![15usize, 16, 31, 32, 255, 256]),
        1 => prop::sample::select(vec![65_535usize, 65_536]),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "\\PC{0,6}",
        1 => (edge_len(), any::<bool>()).prop_map(|(n, wide)| if wide {
            // Two bytes a character: the byte length is what the encoding measures.
            "é".repeat(n / 2) + &"x".repeat(n % 2)
        } else {
            "x".repeat(n)
        }),
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => vec(any::<u8>(), 0..6),
        1 => edge_len().prop_map(|n| vec![0xab; n]),
    ]
}

fn int() -> impl Strategy<Value = i64> {
    let edges = [
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
    prop_oneof![
        2 => any::<i64>(),
        1 => prop::sample::select(edges.to_vec()),
    ]
}

fn uint() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        1 => int().prop_map(|i| i.unsigned_abs()),
        1 => 0u64..200,
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z$]{0,3}",
        1 => prop::sample::select(vec!["$bytes", "$float", "$map"]).prop_map(String::from),
        1 => text(),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        int().prop_map(Value::Int),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
        ]
        .prop_map(Value::Float),
        prop_oneof![
            3 => text(),
            1 => prop::sample::select(vec!["NaN", "inf", "-inf", "dead", "zz"]).prop_map(String::from),
        ]
        .prop_map(Value::String),
        bytes().prop_map(Value::Bytes),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 18, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..18).prop_map(Value::List),
            btree_map(key(), inner, 0..18).prop_map(Value::Map),
        ]
    })
}

fn replica() -> impl Strategy<Value = ReplicaId> {
    prop_oneof![
        (1u32..300).prop_map(ReplicaId::from_random),
        any::<u32>().prop_map(ReplicaId::from_random),
    ]
}

fn stamp() -> impl Strategy<Value = HlcTimestamp> {
    (uint(), replica()).prop_map(|(t, r)| HlcTimestamp::new(t, r))
}

fn counter() -> impl Strategy<Value = GCounter> {
    btree_map(replica(), uint(), 0..18).prop_map(|counts| {
        let mut c = GCounter::new();
        for (r, n) in counts {
            c.increment(r, n);
        }
        c
    })
}

fn delta() -> impl Strategy<Value = Delta> {
    (
        bytes(),
        btree_map(text(), counter(), 0..3),
        btree_map(text(), (value(), stamp()), 0..3),
    )
        .prop_map(|(yjs, counters, registers)| Delta {
            yjs,
            counters,
            registers: registers
                .into_iter()
                .map(|(n, (v, s))| (n, LwwRegister::new(v, s)))
                .collect(),
        })
}

fn state() -> impl Strategy<Value = DocState> {
    (
        bytes(),
        btree_map(text(), counter(), 0..3),
        btree_map(text(), stamp(), 0..18),
    )
        .prop_map(|(yjs, counters, registers)| DocState {
            yjs,
            counters,
            registers,
        })
}

fn doc_id() -> impl Strategy<Value = DocId> {
    prop_oneof![
        "[a-z0-9][a-z0-9._~-]{0,8}(/[a-z0-9_~-]{1,8}){0,2}",
        Just("d".repeat(256)),
    ]
    .prop_map(|s| DocId::new(s).expect("valid id"))
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (
            prop_oneof![4 => Just(PROTOCOL_VERSION), 1 => any::<u32>()],
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(protocol, token, agent, replica)| ClientMsg::Hello {
                protocol,
                token,
                agent,
                replica,
            }),
        (doc_id(), state()).prop_map(|(doc, state)| ClientMsg::Subscribe { doc, state }),
        doc_id().prop_map(|doc| ClientMsg::Unsubscribe { doc }),
        (doc_id(), uint(), delta()).prop_map(|(doc, seq, delta)| ClientMsg::Delta {
            doc,
            seq,
            delta
        }),
        (doc_id(), value(), any::<bool>()).prop_map(|(doc, state, typing)| ClientMsg::Presence {
            doc,
            state,
            typing
        }),
        uint().prop_map(|nonce| ClientMsg::Ping { nonce }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    let mut codes = ErrorCode::KNOWN.to_vec();
    codes.push(ErrorCode::Unknown);
    prop::sample::select(codes)
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (any::<u32>(), text())
            .prop_map(|(protocol, server)| ServerMsg::Welcome { protocol, server }),
        (doc_id(), delta(), state()).prop_map(|(doc, delta, state)| ServerMsg::Sync {
            doc,
            delta,
            state
        }),
        (doc_id(), delta()).prop_map(|(doc, delta)| ServerMsg::Delta { doc, delta }),
        (doc_id(), uint()).prop_map(|(doc, seq)| ServerMsg::Ack { doc, seq }),
        (
            error_code(),
            text(),
            proptest::option::of(doc_id()),
            proptest::option::of(uint())
        )
            .prop_map(|(code, message, doc, seq)| ServerMsg::Error {
                code,
                message,
                doc,
                seq,
            }),
        (doc_id(), uint(), value(), any::<bool>()).prop_map(|(doc, peer, state, typing)| {
            ServerMsg::Presence {
                doc,
                peer,
                state,
                typing,
            }
        }),
        uint().prop_map(|nonce| ServerMsg::Pong { nonce }),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        // Markers and lengths the protocol's values use, so that shapes change, not only bytes.
        2 => (any::<prop::sample::Index>(), prop::sample::select(vec![
            0x00u8, 0x01, 0x7f, 0x80, 0x81, 0x90, 0x91, 0xa0, 0xa3, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4,
            0xca, 0xcb, 0xcc, 0xcf, 0xd0, 0xd3, 0xd4, 0xd9, 0xdc, 0xde, 0xff,
        ])).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ];
    vec(one, 1..4)
}

fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let len = out.len();
        match m {
            Mutation::Set(i, b) if len > 0 => out[i.index(len)] = *b,
            Mutation::Insert(i, b) => out.insert(i.index(len + 1), *b),
            Mutation::Remove(i) if len > 0 => {
                out.remove(i.index(len));
            }
            Mutation::Truncate(i) => out.truncate(i.index(len + 1)),
            _ => {}
        }
    }
    out
}

/// 512 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

fn check_client(bytes: &[u8]) -> Result<(), TestCaseError> {
    same(
        ClientMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES),
        reference::client(bytes, DEFAULT_MAX_FRAME_BYTES),
    )
    .map_err(TestCaseError::fail)
}

fn check_server(bytes: &[u8]) -> Result<(), TestCaseError> {
    same(
        ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES),
        reference::server(bytes, DEFAULT_MAX_FRAME_BYTES),
    )
    .map_err(TestCaseError::fail)
}

fn check_bare(bytes: &[u8]) -> Result<(), TestCaseError> {
    same(
        Delta::decode(bytes, DEFAULT_MAX_FRAME_BYTES),
        reference::delta(bytes, DEFAULT_MAX_FRAME_BYTES),
    )
    .map_err(TestCaseError::fail)?;
    same(
        DocState::decode(bytes, DEFAULT_MAX_FRAME_BYTES),
        reference::state(bytes, DEFAULT_MAX_FRAME_BYTES),
    )
    .map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_messages_encode_as_rmp_serde_did(msg in client_msg()) {
        let bytes = msg.encode();
        prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&msg).expect("encode"));
        check_client(&bytes)?;
        check_server(&bytes)?;
    }

    #[test]
    fn server_messages_encode_as_rmp_serde_did(msg in server_msg()) {
        let bytes = msg.encode();
        prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&msg).expect("encode"));
        check_server(&bytes)?;
        check_client(&bytes)?;
    }

    #[test]
    fn bare_deltas_and_states_encode_as_rmp_serde_did(delta in delta(), state in state()) {
        let bytes = delta.encode();
        prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&delta).expect("encode"));
        check_bare(&bytes)?;
        let bytes = state.encode();
        prop_assert_eq!(&bytes, &rmp_serde::to_vec_named(&state).expect("encode"));
        check_bare(&bytes)?;
    }

    #[test]
    fn mutated_frames_decode_as_the_reference_did(
        msg in prop_oneof![
            client_msg().prop_map(|m| m.encode()),
            server_msg().prop_map(|m| m.encode()),
            delta().prop_map(|d| d.encode()),
        ],
        mutations in mutations(),
    ) {
        let bytes = mutate(&msg, &mutations);
        if !comparable(&bytes) {
            return Ok(());
        }
        check_client(&bytes)?;
        check_server(&bytes)?;
        check_bare(&bytes)?;
    }

    #[test]
    fn random_bytes_decode_as_the_reference_did(bytes in vec(any::<u8>(), 0..64)) {
        if !comparable(&bytes) {
            return Ok(());
        }
        check_client(&bytes)?;
        check_server(&bytes)?;
        check_bare(&bytes)?;
    }
}

/// A map of `entries` (keys and values already encoded).
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0x80 | u8::try_from(entries.len()).expect("a few entries")];
    for (key, value) in entries {
        out.extend(rmp_serde::to_vec(key).expect("key"));
        out.extend(value);
    }
    out
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("encode")
}

/// Frames no encoder writes, each decoded as the reference decoded it.
#[test]
fn hand_made_frames_decode_as_the_reference_did() {
    let doc = enc(&"team/notes");
    let delta = enc(&Delta::default());
    let frames: Vec<(&str, Vec<u8>)> = vec![
        // `type` last, and fields in any order.
        (
            "type last",
            map(&[("nonce", enc(&7u64)), ("type", enc(&"ping"))]),
        ),
        // `type` as a byte string, and `nil`.
        (
            "type as bin",
            map(&[
                ("type", enc(&serde_bytes::Bytes::new(b"ping"))),
                ("nonce", enc(&1u8)),
            ]),
        ),
        (
            "type nil",
            map(&[("type", vec![0xc0]), ("nonce", enc(&1u8))]),
        ),
        (
            "type twice",
            map(&[
                ("type", enc(&"ping")),
                ("type", enc(&"ping")),
                ("nonce", enc(&1u8)),
            ]),
        ),
        ("type not a string", map(&[("type", enc(&1u8))])),
        // Integers in wider encodings, signed encodings of positive numbers, negatives.
        (
            "wide nonce",
            map(&[
                ("type", enc(&"ping")),
                ("nonce", vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 5]),
            ]),
        ),
        (
            "signed nonce",
            map(&[("type", enc(&"ping")), ("nonce", vec![0xd0, 5])]),
        ),
        (
            "negative nonce",
            map(&[("type", enc(&"ping")), ("nonce", vec![0xff])]),
        ),
        (
            "float nonce",
            map(&[("type", enc(&"ping")), ("nonce", enc(&1.0f64))]),
        ),
        (
            "wide protocol",
            map(&[("type", enc(&"hello")), ("protocol", vec![0xcd, 0, 1])]),
        ),
        (
            "protocol over u32",
            map(&[("type", enc(&"hello")), ("protocol", enc(&(1u64 << 32)))]),
        ),
        // Optional fields: `nil`, absent, repeated.
        (
            "nil token",
            map(&[
                ("type", enc(&"hello")),
                ("protocol", enc(&1u8)),
                ("token", vec![0xc0]),
            ]),
        ),
        (
            "token twice",
            map(&[
                ("type", enc(&"hello")),
                ("protocol", enc(&1u8)),
                ("token", vec![0xc0]),
                ("token", enc(&"t")),
            ]),
        ),
        (
            "doc as bin",
            map(&[
                ("type", enc(&"unsubscribe")),
                ("doc", enc(&serde_bytes::Bytes::new(b"team/notes"))),
            ]),
        ),
        (
            "bad doc",
            map(&[("type", enc(&"unsubscribe")), ("doc", enc(&"../x"))]),
        ),
        ("no doc", map(&[("type", enc(&"unsubscribe"))])),
        (
            "unknown keys",
            map(&[
                ("type", enc(&"unsubscribe")),
                ("doc", doc.clone()),
                ("x", enc(&vec![1, 2])),
                ("y", vec![0xd4, 1, 2]),
            ]),
        ),
        (
            "state nil",
            map(&[
                ("type", enc(&"subscribe")),
                ("doc", doc.clone()),
                ("state", vec![0xc0]),
            ]),
        ),
        (
            "typing nil",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("typing", vec![0xc0]),
            ]),
        ),
        (
            "presence state nil",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("state", vec![0xc0]),
            ]),
        ),
        // A delta message whose delta does not read: refused alone, or with the message.
        (
            "delta missing",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
            ]),
        ),
        (
            "delta twice",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("delta", delta.clone()),
                ("delta", delta.clone()),
            ]),
        ),
        (
            "delta not a map",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("delta", enc(&5u8)),
            ]),
        ),
        (
            "delta and doc bad",
            map(&[
                ("type", enc(&"delta")),
                ("doc", enc(&"")),
                ("seq", enc(&3u8)),
                ("delta", enc(&5u8)),
            ]),
        ),
        (
            "delta without seq",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("delta", enc(&5u8)),
            ]),
        ),
        (
            "seq twice",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("seq", enc(&3u8)),
                ("delta", delta.clone()),
            ]),
        ),
        ("delta with trailing byte", {
            let mut f = map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("delta", enc(&5u8)),
            ]);
            f.push(0xc0);
            f
        }),
        // Deltas: bytes as a string or an array, a zero replica, a register without a stamp,
        // a counter keyed by a string.
        (
            "yjs as str",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("delta", map(&[("yjs", enc(&"abc"))])),
            ]),
        ),
        (
            "yjs as array",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("delta", map(&[("yjs", enc(&vec![1u8, 2, 255]))])),
            ]),
        ),
        (
            "yjs array over a byte",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("delta", map(&[("yjs", enc(&vec![1u16, 256]))])),
            ]),
        ),
        (
            "yjs nil",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                ("delta", map(&[("yjs", vec![0xc0])])),
            ]),
        ),
        (
            "zero replica",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                (
                    "delta",
                    map(&[("counters", map(&[("c", vec![0x81, 0x00, 0x01])]))]),
                ),
            ]),
        ),
        (
            "counter by string",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                (
                    "delta",
                    map(&[("counters", map(&[("c", map(&[("a", enc(&1u8))]))]))]),
                ),
            ]),
        ),
        (
            "replica twice",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                (
                    "delta",
                    map(&[(
                        "counters",
                        map(&[("c", vec![0x82, 0x01, 0x05, 0x01, 0x02])]),
                    )]),
                ),
            ]),
        ),
        (
            "register without stamp",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("seq", enc(&3u8)),
                (
                    "delta",
                    map(&[("registers", map(&[("r", map(&[("value", enc(&1u8))]))]))]),
                ),
            ]),
        ),
        // Values: the JSON forms, strings that are not UTF-8, floats in 32 bits, big integers,
        // extension values, keys that are not strings.
        (
            "value forms",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                (
                    "state",
                    map(&[
                        ("b", map(&[("$bytes", enc(&"dead"))])),
                        ("f", map(&[("$float", enc(&"-inf"))])),
                        ("m", map(&[("$map", map(&[("$bytes", enc(&"zz"))]))])),
                        ("x", map(&[("$bytes", enc(&1u8))])),
                        ("s", vec![0xa2, 0xff, 0xfe]),
                        ("h", vec![0xca, 0x3f, 0xc0, 0, 0]),
                        (
                            "k",
                            map(&[("$map", map(&[("n", map(&[("$float", enc(&"NaN"))]))]))]),
                        ),
                    ]),
                ),
            ]),
        ),
        (
            "bad hex",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("state", map(&[("$bytes", enc(&"zzz"))])),
            ]),
        ),
        (
            "bad float label",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("state", map(&[("$float", enc(&"nan"))])),
            ]),
        ),
        (
            "integer over i64",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("state", enc(&u64::MAX)),
            ]),
        ),
        (
            "ext value",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("state", vec![0xd4, 1, 2]),
            ]),
        ),
        (
            "value key not a string",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("state", map(&[("v", vec![0x81, 0x01, 0x01])])),
            ]),
        ),
        (
            "value key not UTF-8",
            map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                ("state", map(&[("v", vec![0x81, 0xa1, 0xff, 0x01])])),
            ]),
        ),
        // Error codes: unknown names, bytes.
        (
            "newer code",
            map(&[
                ("type", enc(&"error")),
                ("code", enc(&"from_the_future")),
                ("message", enc(&"")),
            ]),
        ),
        (
            "code as bin",
            map(&[
                ("type", enc(&"error")),
                ("code", enc(&serde_bytes::Bytes::new(b"internal"))),
                ("message", enc(&"")),
            ]),
        ),
        (
            "code not a string",
            map(&[
                ("type", enc(&"error")),
                ("code", enc(&1u8)),
                ("message", enc(&"")),
            ]),
        ),
        // Server messages with fields of the other kinds.
        (
            "delta with a state",
            map(&[
                ("type", enc(&"delta")),
                ("doc", doc.clone()),
                ("delta", delta.clone()),
                ("state", enc(&7u8)),
            ]),
        ),
        (
            "sync without state",
            map(&[
                ("type", enc(&"sync")),
                ("doc", doc.clone()),
                ("delta", delta.clone()),
            ]),
        ),
        (
            "reserved marker",
            map(&[("type", enc(&"ping")), ("nonce", vec![0xc1])]),
        ),
    ];
    // Frames with one fault: the reason is serde's, word for word (peers see it).
    let worded_alike = [
        "type twice",
        "type not a string",
        "negative nonce",
        "protocol over u32",
        "token twice",
        "bad doc",
        "no doc",
        "state nil",
        "delta missing",
        "delta twice",
        "delta not a map",
        "yjs array over a byte",
        "yjs nil",
        "zero replica",
        "counter by string",
        "register without stamp",
        "bad hex",
        "bad float label",
        "integer over i64",
        "ext value",
        "value key not a string",
        "value key not UTF-8",
        "code not a string",
        "sync without state",
    ];
    for name in worded_alike {
        let frame = &frames
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a frame of the list")
            .1;
        let client = (
            ClientMsg::decode(frame, DEFAULT_MAX_FRAME_BYTES).err(),
            reference::client(frame, DEFAULT_MAX_FRAME_BYTES).err(),
        );
        let server = (
            ServerMsg::decode(frame, DEFAULT_MAX_FRAME_BYTES).err(),
            reference::server(frame, DEFAULT_MAX_FRAME_BYTES).err(),
        );
        assert!(
            [&client, &server]
                .iter()
                .any(|(ours, theirs)| ours.is_some() && ours == theirs),
            "{name}: {client:?}; {server:?}"
        );
    }
    for (name, frame) in frames {
        assert!(comparable(&frame), "{name}");
        for (side, result) in [
            (
                "client",
                same(
                    ClientMsg::decode(&frame, DEFAULT_MAX_FRAME_BYTES),
                    reference::client(&frame, DEFAULT_MAX_FRAME_BYTES),
                ),
            ),
            (
                "server",
                same(
                    ServerMsg::decode(&frame, DEFAULT_MAX_FRAME_BYTES),
                    reference::server(&frame, DEFAULT_MAX_FRAME_BYTES),
                ),
            ),
        ] {
            if let Err(e) = result {
                panic!("{name} ({side}):\n{e}");
            }
        }
    }
}

/// Nesting: containers up to [`MAX_NESTING`] deep counting the message's own map decode, one
/// more does not, whether it is in a field the message reads or one it skips; as a bare
/// delta too.
#[test]
fn nesting_is_bounded_where_the_reference_bounded_it() {
    let doc = enc(&"team/notes");
    for depth in [
        MAX_NESTING - 3,
        MAX_NESTING - 2,
        MAX_NESTING - 1,
        MAX_NESTING,
        MAX_NESTING + 1,
    ] {
        // `depth` nested arrays.
        let mut nested = vec![0x91; depth - 1];
        nested.push(0x90);
        for field in ["state", "skipped"] {
            let frame = map(&[
                ("type", enc(&"presence")),
                ("doc", doc.clone()),
                (field, nested.clone()),
            ]);
            check_client(&frame).unwrap_or_else(|e| panic!("{depth} in {field}: {e}"));
            check_server(&frame).unwrap_or_else(|e| panic!("{depth} in {field}: {e}"));
        }
        let register = map(&[
            ("value", nested.clone()),
            ("stamp", map(&[("time", enc(&1u8)), ("replica", enc(&1u8))])),
        ]);
        let bare = map(&[("registers", map(&[("r", register)]))]);
        check_bare(&bare).unwrap_or_else(|e| panic!("{depth} in a bare delta: {e}"));
    }
    let ok = {
        let mut nested = vec![0x91; MAX_NESTING - 3];
        nested.push(0x90);
        map(&[
            ("type", enc(&"presence")),
            ("doc", doc.clone()),
            ("state", nested),
        ])
    };
    assert!(ClientMsg::decode(&ok, DEFAULT_MAX_FRAME_BYTES).is_ok());
}

/// A value that came through JSON keeps its meaning: encode writes the `$map` wrapper that
/// `decode` takes off.
#[test]
fn maps_with_a_reserved_key_are_wrapped() {
    for tag in ["$bytes", "$float", "$map"] {
        let state = Value::Map(BTreeMap::from([(
            tag.to_owned(),
            Value::String("zz".into()),
        )]));
        let msg = ClientMsg::Presence {
            doc: DocId::new("d").expect("id"),
            state,
            typing: false,
        };
        let bytes = msg.encode();
        assert_eq!(bytes, enc(&msg));
        assert_eq!(ClientMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES), Ok(msg));
    }
}
