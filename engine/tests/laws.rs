//! The engine's laws, as property tests.
//!
//! - Counter and register merges are commutative, associative and idempotent, and replicas
//!   converge whatever order (and however often) states are delivered.
//! - Whole documents converge when their deltas are delivered in any order with duplicates;
//!   `diff_since` sends everything the other side lacks; snapshots round-trip.
//! - Last-writer-wins ties break on (HLC time, replica id), never on arrival order.
//! - The hybrid logical clock is monotone and refuses timestamps beyond its drift bound.
//! - `decode(encode(m)) == m` for every wire message, and `Value` round-trips through
//!   MessagePack and JSON.
//! - Peer bytes (random, or valid encodings mutated) never panic a decoder, and a refused delta
//!   leaves the document as it was.
//!
//! Failures persist to `engine/proptest-regressions/laws.txt` (cargo runs integration tests
//! from the package root), which is committed so every shrunk counterexample is replayed.

use std::collections::BTreeMap;
use std::time::Duration;

use lattice_engine::protocol::{ClientMsg, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION, ServerMsg};
use lattice_engine::yjs::check_update_v1;
use lattice_engine::{
    ApplyError, ClockedHlc, DEFAULT_MAX_DRIFT, Delta, DocState, Document, GCounter, Hlc,
    HlcTimestamp, LwwRegister, NTP64, PnCounter, ReplicaId, Value, manual_clock,
    ntp64_from_unix_ms, set_manual_clock_ms,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use yrs::StateVector;
use yrs::updates::decoder::Decode;

use strategies::{Op, Script};

/// 256 cases a property, failures kept in a committed file.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/laws.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// Manual clock time at the start of every scenario (late 2023), in ms since the Unix epoch.
const EPOCH_MS: u64 = 1_700_000_000_000;

mod strategies {
    use super::*;
    use proptest::collection::{btree_map, btree_set, vec};

    pub(crate) const TEXTS: [&str; 2] = ["title", "body"];
    pub(crate) const COUNTERS: [&str; 2] = ["likes", "views"];
    pub(crate) const REGISTERS: [&str; 2] = ["color", "size"];

    /// Few distinct ids, so that counters and registers from different sources collide.
    pub(crate) fn small_replica() -> impl Strategy<Value = ReplicaId> {
        (1u32..=4).prop_map(ReplicaId::from_random)
    }

    pub(crate) fn replica() -> impl Strategy<Value = ReplicaId> {
        prop_oneof![
            small_replica(),
            any::<u32>().prop_map(ReplicaId::from_random),
            Just(ReplicaId::from_random(u32::MAX)),
        ]
    }

    /// Counts cluster on small values so replicas share entries, with the saturation edge.
    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![4 => 0u64..20, 1 => any::<u64>(), 1 => Just(u64::MAX)]
    }

    pub(crate) fn gcounter() -> impl Strategy<Value = GCounter> {
        btree_map(small_replica(), count(), 0..5).prop_map(|counts| {
            let mut c = GCounter::new();
            for (r, n) in counts {
                c.increment(r, n);
            }
            c
        })
    }

    pub(crate) fn pn_counter() -> impl Strategy<Value = PnCounter> {
        (
            btree_map(small_replica(), count(), 0..4),
            btree_map(small_replica(), count(), 0..4),
        )
            .prop_map(|(ups, downs)| {
                let mut c = PnCounter::new();
                for (r, n) in ups {
                    c.increment(r, n);
                }
                for (r, n) in downs {
                    c.decrement(r, n);
                }
                c
            })
    }

    /// Stamps from a tiny range of times and replicas, so ties are common.
    pub(crate) fn stamp() -> impl Strategy<Value = HlcTimestamp> {
        prop_oneof![
            4 => (0u64..4, small_replica()).prop_map(|(t, r)| HlcTimestamp::new(t, r)),
            1 => (any::<u64>(), replica()).prop_map(|(t, r)| HlcTimestamp::new(t, r)),
        ]
    }

    pub(crate) fn register() -> impl Strategy<Value = LwwRegister<Value>> {
        (value(), stamp()).prop_map(|(v, s)| LwwRegister::new(v, s))
    }

    fn float() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => any::<f64>(),
            1 => prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(-0.0),
                Just(0.0),
                Just(f64::MIN_POSITIVE),
                Just(f64::MAX),
            ],
        ]
    }

    /// Map keys, including the tags the JSON form gives meaning to.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z$]{0,4}",
            1 => prop_oneof![Just("$bytes"), Just("$float"), Just("$map")].prop_map(String::from),
        ]
    }

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "\\PC{0,8}",
            1 => prop_oneof![Just("NaN"), Just("inf"), Just("dead"), Just("zz")]
                .prop_map(String::from),
        ]
    }

    pub(crate) fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            float().prop_map(Value::Float),
            string().prop_map(Value::String),
            vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::List),
                btree_map(key(), inner, 0..4).prop_map(Value::Map),
            ]
        })
    }

    /// One step of a three-replica scenario. Positions are raw and reduced modulo the current
    /// text length when the step runs, so every generated step is a valid edit.
    #[derive(Clone, Debug)]
    pub(crate) enum Op {
        Insert {
            replica: usize,
            text: usize,
            at: u32,
            chunk: String,
        },
        Delete {
            replica: usize,
            text: usize,
            at: u32,
            len: u32,
        },
        Increment {
            replica: usize,
            counter: usize,
            by: u64,
        },
        Set {
            replica: usize,
            register: usize,
            value: Value,
        },
        /// Moves the shared manual clock, backwards too.
        Clock { delta_ms: i64 },
        /// `to` applies `from.diff_since(to.state())`.
        Sync { from: usize, to: usize },
    }

    pub(crate) fn op() -> impl Strategy<Value = Op> {
        let r = 0usize..3;
        prop_oneof![
            4 => (r.clone(), 0..TEXTS.len(), any::<u32>(), "[a-zé€😀 ]{1,4}").prop_map(
                |(replica, text, at, chunk)| Op::Insert { replica, text, at, chunk }
            ),
            2 => (r.clone(), 0..TEXTS.len(), any::<u32>(), any::<u32>()).prop_map(
                |(replica, text, at, len)| Op::Delete { replica, text, at, len }
            ),
            2 => (r.clone(), 0..COUNTERS.len(), 0u64..5).prop_map(
                |(replica, counter, by)| Op::Increment { replica, counter, by }
            ),
            2 => (r.clone(), 0..REGISTERS.len(), value()).prop_map(
                |(replica, register, value)| Op::Set { replica, register, value }
            ),
            1 => (-3_000i64..3_000).prop_map(|delta_ms| Op::Clock { delta_ms }),
            2 => (r.clone(), r).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// Three distinct replica ids and a list of steps.
    #[derive(Clone, Debug)]
    pub(crate) struct Script {
        pub ids: Vec<ReplicaId>,
        pub ops: Vec<Op>,
    }

    pub(crate) fn script() -> impl Strategy<Value = Script> {
        (
            btree_set(1u32..=u32::MAX, 3)
                .prop_map(|ids| {
                    ids.into_iter()
                        .map(ReplicaId::from_random)
                        .collect::<Vec<_>>()
                })
                .prop_shuffle(),
            vec(op(), 1..24),
        )
            .prop_map(|(ids, ops)| Script { ids, ops })
    }

    /// A delivery order: a permutation of every delta plus some duplicates.
    #[derive(Clone, Debug)]
    pub(crate) struct Delivery {
        pub keys: Vec<u64>,
        pub duplicates: Vec<(Index, Index)>,
    }

    pub(crate) fn delivery() -> impl Strategy<Value = Delivery> {
        (
            vec(any::<u64>(), 64),
            vec((any::<Index>(), any::<Index>()), 0..8),
        )
            .prop_map(|(keys, duplicates)| Delivery { keys, duplicates })
    }

    impl Delivery {
        /// Indices into a list of `n` deltas: each at least once, some twice or more.
        pub(crate) fn order(&self, n: usize) -> Vec<usize> {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|i| (self.keys[i % self.keys.len()], *i));
            if n > 0 {
                for (what, at) in &self.duplicates {
                    let pos = at.index(order.len() + 1);
                    order.insert(pos, what.index(n));
                }
            }
            order
        }
    }

    /// A byte-level edit of a valid encoding.
    #[derive(Clone, Debug)]
    pub(crate) enum Mutation {
        Flip(Index, u8),
        Set(Index, u8),
        Insert(Index, u8),
        Remove(Index),
        Truncate(Index),
        /// Overwrites four bytes with a large little-endian-agnostic pattern (a big varint).
        Bomb(Index),
    }

    pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
        let one = prop_oneof![
            (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<Index>().prop_map(Mutation::Remove),
            any::<Index>().prop_map(Mutation::Truncate),
            any::<Index>().prop_map(Mutation::Bomb),
        ];
        vec(one, 1..4)
    }

    pub(crate) fn mutate(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for m in mutations {
            let len = out.len();
            match m {
                Mutation::Flip(i, bit) if len > 0 => out[i.index(len)] ^= 1 << bit,
                Mutation::Set(i, b) if len > 0 => out[i.index(len)] = *b,
                Mutation::Insert(i, b) => out.insert(i.index(len + 1), *b),
                Mutation::Remove(i) if len > 0 => {
                    out.remove(i.index(len));
                }
                Mutation::Truncate(i) => out.truncate(i.index(len + 1)),
                Mutation::Bomb(i) if len > 0 => {
                    let at = i.index(len);
                    for (k, b) in [0x9f, 0x9e, 0x97, 0x31].into_iter().enumerate() {
                        if let Some(slot) = out.get_mut(at + k) {
                            *slot = b;
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    pub(crate) fn doc_id() -> impl Strategy<Value = lattice_engine::DocId> {
        "[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,8}(/[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,8}){0,2}"
            .prop_map(|s| lattice_engine::DocId::new(s).expect("strategy builds valid ids"))
    }

    /// A document with real Yjs content, counters and registers, built from a few edits.
    pub(crate) fn document() -> impl Strategy<Value = DocumentSeed> {
        (
            replica(),
            vec("\\PC{1,6}", 0..3),
            btree_map(0..COUNTERS.len(), 1u64..100, 0..2),
            btree_map(0..REGISTERS.len(), (value(), stamp()), 0..2),
            any::<bool>(),
        )
            .prop_map(
                |(replica, chunks, counters, registers, delete)| DocumentSeed {
                    replica,
                    chunks,
                    counters,
                    registers,
                    delete,
                },
            )
    }

    #[derive(Clone, Debug)]
    pub(crate) struct DocumentSeed {
        replica: ReplicaId,
        chunks: Vec<String>,
        counters: BTreeMap<usize, u64>,
        registers: BTreeMap<usize, (Value, HlcTimestamp)>,
        delete: bool,
    }

    impl DocumentSeed {
        pub(crate) fn build(&self) -> Document {
            let mut doc = Document::new(self.replica);
            for chunk in &self.chunks {
                doc.text_insert(TEXTS[1], 0, chunk).expect("insert at 0");
            }
            if self.delete && doc.text_len(TEXTS[1]) > 0 {
                doc.text_delete(TEXTS[1], 0, 1).expect("delete first unit");
            }
            for (c, by) in &self.counters {
                doc.counter_increment(COUNTERS[*c], *by).expect("increment");
            }
            for (r, (v, s)) in &self.registers {
                doc.register_set(REGISTERS[*r], v.clone(), *s).expect("set");
            }
            doc
        }
    }

    pub(crate) fn delta() -> impl Strategy<Value = Delta> {
        (
            document(),
            btree_map("[a-z]{1,6}", gcounter(), 0..3),
            btree_map("[a-z]{1,6}", register(), 0..3),
        )
            .prop_map(|(seed, counters, registers)| {
                let mut delta = seed
                    .build()
                    .diff_since(&DocState::default())
                    .expect("diff of a healthy document");
                delta.counters.extend(counters);
                delta.registers.extend(registers);
                delta
            })
    }

    pub(crate) fn doc_state() -> impl Strategy<Value = DocState> {
        (document(), btree_map("[a-z]{1,6}", stamp(), 0..3)).prop_map(|(seed, stamps)| {
            let mut state = seed.build().state();
            state.registers.extend(stamps);
            state
        })
    }

    pub(crate) fn client_msg() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (
                proptest::option::of("\\PC{0,12}"),
                proptest::option::of("\\PC{0,12}"),
                proptest::option::of(any::<u32>()),
            )
                .prop_map(|(token, agent, replica)| ClientMsg::Hello {
                    protocol: PROTOCOL_VERSION,
                    token,
                    agent,
                    replica,
                }),
            (doc_id(), doc_state()).prop_map(|(doc, state)| ClientMsg::Subscribe { doc, state }),
            doc_id().prop_map(|doc| ClientMsg::Unsubscribe { doc }),
            (doc_id(), any::<u64>(), delta()).prop_map(|(doc, seq, delta)| ClientMsg::Delta {
                doc,
                seq,
                delta
            }),
            (doc_id(), value(), any::<bool>())
                .prop_map(|(doc, state, typing)| ClientMsg::Presence { doc, state, typing }),
            any::<u64>().prop_map(|nonce| ClientMsg::Ping { nonce }),
        ]
    }

    pub(crate) fn error_code() -> impl Strategy<Value = lattice_engine::protocol::ErrorCode> {
        use lattice_engine::protocol::ErrorCode;
        let mut codes = ErrorCode::KNOWN.to_vec();
        codes.push(ErrorCode::Unknown);
        proptest::sample::select(codes)
    }

    pub(crate) fn server_msg() -> impl Strategy<Value = ServerMsg> {
        prop_oneof![
            (any::<u32>(), "\\PC{0,12}")
                .prop_map(|(protocol, server)| ServerMsg::Welcome { protocol, server }),
            (doc_id(), delta(), doc_state()).prop_map(|(doc, delta, state)| ServerMsg::Sync {
                doc,
                delta,
                state
            }),
            (doc_id(), delta()).prop_map(|(doc, delta)| ServerMsg::Delta { doc, delta }),
            (doc_id(), any::<u64>()).prop_map(|(doc, seq)| ServerMsg::Ack { doc, seq }),
            (
                error_code(),
                "\\PC{0,12}",
                proptest::option::of(doc_id()),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(code, message, doc, seq)| ServerMsg::Error {
                    code,
                    message,
                    doc,
                    seq,
                }),
            any::<u64>().prop_map(|nonce| ServerMsg::Pong { nonce }),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Merges states in the given order into an empty state, with `merge` and `empty` for the type.
fn fold<T: Clone>(states: &[T], order: &[usize], empty: T, merge: impl Fn(&mut T, &T)) -> T {
    let mut acc = empty;
    for i in order {
        merge(&mut acc, &states[*i]);
    }
    acc
}

/// What a document shows and what it says it holds; equal views mean converged replicas.
///
/// The state vector is compared as a map: yrs encodes it in hash-map order, so two replicas
/// holding the same clocks may encode them differently.
#[derive(Debug, PartialEq)]
struct View {
    json: serde_json::Value,
    clocks: BTreeMap<u64, u32>,
    counters: BTreeMap<String, GCounter>,
    registers: BTreeMap<String, HlcTimestamp>,
}

fn clocks(state_vector: &[u8]) -> BTreeMap<u64, u32> {
    if state_vector.is_empty() {
        return BTreeMap::new();
    }
    StateVector::decode_v1(state_vector)
        .expect("state vector from a document")
        .iter()
        .map(|(client, clock)| (client.get(), *clock))
        .collect()
}

fn view(doc: &Document) -> View {
    let DocState {
        yjs,
        counters,
        registers,
    } = doc.state();
    View {
        json: doc.to_json(),
        clocks: clocks(&yjs),
        counters,
        registers,
    }
}

fn fresh(n: u32) -> Document {
    Document::new(ReplicaId::from_random(0xF000_0000 | n))
}

/// Applies deltas in order to a fresh replica; every one of them must be accepted.
fn deliver(n: u32, deltas: &[Delta], order: &[usize]) -> Result<Document, TestCaseError> {
    let mut doc = fresh(n);
    for i in order {
        doc.apply(&deltas[*i])
            .map_err(|e| TestCaseError::fail(format!("delta {i} refused: {e}")))?;
    }
    Ok(doc)
}

/// Like [`deliver`], but holds back a delta whose Yjs part starts past the receiver's clock for
/// some client until the missing clocks have arrived, as Yjs itself does with pending structs.
/// yrs 0.28.1 instead integrates such a struct behind a skip and can then fail to converge (see
/// `documents_converge_under_any_delivery`).
fn deliver_held(n: u32, deltas: &[Delta], order: &[usize]) -> Result<Document, TestCaseError> {
    let (doc, held) = deliver_holding(n, deltas, order)?;
    prop_assert!(held.is_empty(), "deltas {:?} never became ready", held);
    Ok(doc)
}

/// [`deliver_held`] that also returns the deltas still held back at the end.
fn deliver_holding(
    n: u32,
    deltas: &[Delta],
    order: &[usize],
) -> Result<(Document, Vec<usize>), TestCaseError> {
    let mut doc = fresh(n);
    let mut held = Vec::new();
    feed_held(&mut doc, &mut held, deltas, order)?;
    Ok((doc, held))
}

/// Delivers deltas to `doc` in order, holding back those that are not ready yet in `held`.
fn feed_held(
    doc: &mut Document,
    held: &mut Vec<usize>,
    deltas: &[Delta],
    order: &[usize],
) -> Result<(), TestCaseError> {
    let ready = |doc: &Document, delta: &Delta| {
        if delta.yjs.is_empty() {
            return true;
        }
        let have = clocks(&doc.state().yjs);
        let needs = yrs::Update::decode_v1(&delta.yjs)
            .expect("deltas from documents decode")
            .state_vector_lower();
        needs
            .iter()
            .all(|(client, clock)| have.get(&client.get()).copied().unwrap_or(0) >= *clock)
    };
    for i in order {
        held.push(*i);
        while let Some(pos) = held.iter().position(|j| ready(doc, &deltas[*j])) {
            let j = held.remove(pos);
            doc.apply(&deltas[j])
                .map_err(|e| TestCaseError::fail(format!("delta {j} refused: {e}")))?;
        }
    }
    Ok(())
}

/// The three replicas of a script once it ran, and every delta they produced or exchanged.
struct Run {
    replicas: Vec<Document>,
    deltas: Vec<Delta>,
}

fn run(script: &Script) -> Run {
    use strategies::{COUNTERS, REGISTERS, TEXTS};
    let mut now_ms = EPOCH_MS;
    let mut replicas: Vec<Document> = script.ids.iter().map(|id| Document::new(*id)).collect();
    let mut clocks: Vec<Hlc> = script
        .ids
        .iter()
        .map(|id| Hlc::new(*id, DEFAULT_MAX_DRIFT))
        .collect();
    let mut deltas = Vec::new();
    for op in &script.ops {
        let delta = match op {
            Op::Insert {
                replica,
                text,
                at,
                chunk,
            } => {
                let doc = &mut replicas[*replica];
                let at = at % (doc.text_len(TEXTS[*text]) + 1);
                Some(doc.text_insert(TEXTS[*text], at, chunk).expect("insert"))
            }
            Op::Delete {
                replica,
                text,
                at,
                len,
            } => {
                let doc = &mut replicas[*replica];
                let have = doc.text_len(TEXTS[*text]);
                (have > 0).then(|| {
                    let at = at % have;
                    let len = 1 + len % (have - at);
                    doc.text_delete(TEXTS[*text], at, len).expect("delete")
                })
            }
            Op::Increment {
                replica,
                counter,
                by,
            } => Some(
                replicas[*replica]
                    .counter_increment(COUNTERS[*counter], *by)
                    .expect("increment"),
            ),
            Op::Set {
                replica,
                register,
                value,
            } => {
                let stamp = clocks[*replica].tick(now_ms);
                Some(
                    replicas[*replica]
                        .register_set(REGISTERS[*register], value.clone(), stamp)
                        .expect("set"),
                )
            }
            Op::Clock { delta_ms } => {
                now_ms = now_ms.saturating_add_signed(*delta_ms);
                None
            }
            Op::Sync { from, to } => {
                let diff = replicas[*from]
                    .diff_since(&replicas[*to].state())
                    .expect("diff");
                if let Some(stamp) = diff.max_stamp() {
                    // Clocks move ±3 s at a time, far inside the default drift bound.
                    clocks[*to].observe(now_ms, stamp).expect("within drift");
                }
                replicas[*to].apply(&diff).expect("sync delta applies");
                Some(diff)
            }
        };
        deltas.extend(delta.filter(|d| !d.is_empty()));
    }
    Run { replicas, deltas }
}

/// Brings every replica up to date with every other.
fn full_sync(replicas: &mut [Document]) {
    for _ in 0..2 {
        for from in 0..replicas.len() {
            for to in 0..replicas.len() {
                if from != to {
                    let diff = replicas[from]
                        .diff_since(&replicas[to].state())
                        .expect("diff");
                    replicas[to].apply(&diff).expect("apply");
                }
            }
        }
    }
}

/// Whether `have` holds at least everything `want` describes.
fn covers(have: &DocState, want: &DocState) -> bool {
    let have_clocks = clocks(&have.yjs);
    let yjs = clocks(&want.yjs)
        .iter()
        .all(|(c, clock)| have_clocks.get(c).is_some_and(|mine| mine >= clock));
    let counters = want
        .counters
        .iter()
        .all(|(n, c)| have.counters.get(n).is_some_and(|mine| mine.covers(c)));
    let registers = want
        .registers
        .iter()
        .all(|(n, s)| have.registers.get(n).is_some_and(|mine| mine >= s));
    yjs && counters && registers
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `bytes` to every decoder that faces peer bytes. None may panic; a document that
/// refuses them must be left as it was.
fn feed_peer_bytes(bytes: &[u8], doc: &mut Document) -> Result<(), TestCaseError> {
    let _ = ClientMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = ServerMsg::decode(bytes, DEFAULT_MAX_FRAME_BYTES);
    let _ = check_update_v1(bytes);
    // y-websocket frames: any update one carries has passed the guard, so yrs must take it
    // without failing part-way.
    if let Ok(messages) = lattice_engine::yws::decode_frame(bytes, DEFAULT_MAX_FRAME_BYTES) {
        for m in messages {
            if let lattice_engine::yws::YMessage::Update { update }
            | lattice_engine::yws::YMessage::SyncStep2 { update } = m
            {
                let mut scratch = Document::new(ReplicaId::from_random(11));
                let r = scratch.apply(&Delta {
                    yjs: update,
                    ..Delta::default()
                });
                prop_assert!(!matches!(r, Err(ApplyError::Integrate { .. })), "{:?}", r);
            }
        }
    }
    let _ = Document::from_snapshot(ReplicaId::from_random(9), bytes).map(|d| d.to_json());
    let _ = doc.diff_since(&DocState {
        yjs: bytes.to_vec(),
        ..DocState::default()
    });
    let before = view(doc);
    match doc.apply(&Delta {
        yjs: bytes.to_vec(),
        ..Delta::default()
    }) {
        Ok(_) => {
            // Accepted bytes must leave a document that can still be read and summarised.
            let _ = view(doc);
            let _ = doc.snapshot();
        }
        Err(ApplyError::Integrate { reason }) => {
            return Err(TestCaseError::fail(format!(
                "yrs failed integrating a checked update ({reason}); input: {}",
                hex(bytes)
            )));
        }
        Err(e) => prop_assert_eq!(view(doc), before, "refused ({}) but changed", e),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Counters and registers

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gcounter_merge_is_a_semilattice(a in strategies::gcounter(), b in strategies::gcounter(), c in strategies::gcounter()) {
        let merge = |x: &GCounter, y: &GCounter| { let mut m = x.clone(); m.merge(y); m };
        prop_assert_eq!(merge(&a, &b), merge(&b, &a));
        prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
        prop_assert_eq!(merge(&a, &a), a.clone());
        let mut again = merge(&a, &b);
        prop_assert!(!again.merge(&b), "merging what is already held reports a change");
        prop_assert!(merge(&a, &b).covers(&a) && merge(&a, &b).covers(&b));
        prop_assert!(merge(&a, &b).value() >= a.value().max(b.value()));
    }

    #[test]
    fn gcounter_missing_from_is_exactly_what_lacks(a in strategies::gcounter(), b in strategies::gcounter()) {
        match a.missing_from(&b) {
            None => prop_assert!(b.covers(&a)),
            Some(m) => {
                let mut patched = b.clone();
                // Zero entries carry nothing, so merging them may report no change.
                prop_assert_eq!(patched.merge(&m), m.value() > 0);
                prop_assert!(patched.covers(&a));
                let mut full = b.clone();
                full.merge(&a);
                prop_assert_eq!(patched, full);
            }
        }
    }

    #[test]
    fn gcounter_replicas_converge(
        states in proptest::collection::vec(strategies::gcounter(), 3..5),
        orders in proptest::collection::vec(strategies::delivery(), 4),
    ) {
        let results: Vec<GCounter> = orders
            .iter()
            .map(|o| fold(&states, &o.order(states.len()), GCounter::new(), |acc, s| { acc.merge(s); }))
            .collect();
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
        }
    }

    #[test]
    fn pn_counter_merge_is_a_semilattice(a in strategies::pn_counter(), b in strategies::pn_counter(), c in strategies::pn_counter()) {
        let merge = |x: &PnCounter, y: &PnCounter| { let mut m = x.clone(); m.merge(y); m };
        prop_assert_eq!(merge(&a, &b), merge(&b, &a));
        prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
        prop_assert_eq!(merge(&a, &a), a.clone());
        let mut again = merge(&a, &b);
        prop_assert!(!again.merge(&a));
    }

    #[test]
    fn pn_counter_replicas_converge(
        states in proptest::collection::vec(strategies::pn_counter(), 3..5),
        orders in proptest::collection::vec(strategies::delivery(), 4),
    ) {
        let results: Vec<PnCounter> = orders
            .iter()
            .map(|o| fold(&states, &o.order(states.len()), PnCounter::new(), |acc, s| { acc.merge(s); }))
            .collect();
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
            prop_assert_eq!(r.value(), results[0].value());
        }
    }

    #[test]
    fn lww_merge_is_a_semilattice(a in strategies::register(), b in strategies::register(), c in strategies::register()) {
        let merge = |x: &LwwRegister<Value>, y: &LwwRegister<Value>| { let mut m = x.clone(); m.merge(y); m };
        prop_assert_eq!(merge(&a, &b), merge(&b, &a));
        prop_assert_eq!(merge(&merge(&a, &b), &c), merge(&a, &merge(&b, &c)));
        prop_assert_eq!(merge(&a, &a), a.clone());
        let winner = merge(&a, &b);
        prop_assert!(winner == a || winner == b);
        prop_assert_eq!(winner.stamp(), a.stamp().max(b.stamp()));
    }

    #[test]
    fn lww_replicas_converge(
        states in proptest::collection::vec(strategies::register(), 3..5),
        orders in proptest::collection::vec(strategies::delivery(), 4),
    ) {
        let results: Vec<LwwRegister<Value>> = orders
            .iter()
            .map(|o| {
                let order = o.order(states.len());
                let first = states[order[0]].clone();
                fold(&states, &order, first, |acc, s| { acc.merge(s); })
            })
            .collect();
        for r in &results[1..] {
            prop_assert_eq!(r, &results[0]);
        }
    }

    /// Equal HLC times from different replicas: the higher replica id wins, in either order,
    /// in a bare register and in documents.
    #[test]
    fn lww_tie_on_time_goes_to_the_higher_replica(
        time in any::<u64>(),
        ids in proptest::collection::btree_set(1u32..=u32::MAX, 2),
        low_value in strategies::value(),
        high_value in strategies::value(),
    ) {
        let ids: Vec<ReplicaId> = ids.into_iter().map(ReplicaId::from_random).collect();
        let low = LwwRegister::new(low_value, HlcTimestamp::new(time, ids[0]));
        let high = LwwRegister::new(high_value.clone(), HlcTimestamp::new(time, ids[1]));
        for (first, second) in [(&low, &high), (&high, &low)] {
            let mut r = first.clone();
            r.merge(second);
            prop_assert_eq!(&r, &high);

            let mut doc = fresh(1);
            for w in [first, second] {
                doc.apply(&Delta {
                    registers: BTreeMap::from([("x".to_owned(), w.clone())]),
                    ..Delta::default()
                }).expect("register delta");
            }
            prop_assert_eq!(doc.register("x"), Some(&high_value));
        }
    }

    /// The very same stamp with different values (a misbehaving replica): still one answer.
    #[test]
    fn lww_full_tie_is_order_independent(stamp in strategies::stamp(), a in strategies::value(), b in strategies::value()) {
        let ra = LwwRegister::new(a.clone(), stamp);
        let rb = LwwRegister::new(b.clone(), stamp);
        let mut ab = ra.clone();
        ab.merge(&rb);
        let mut ba = rb.clone();
        ba.merge(&ra);
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(ab.value(), &a.max(b));
    }
}

// ---------------------------------------------------------------------------------------------
// Documents

proptest! {
    #![proptest_config(config())]

    /// Every delta of a scenario, delivered to fresh replicas in three different orders with
    /// duplicates, held back only until the clocks they build on have arrived, gives the same
    /// document as the fully synced originals and as the compacted delta.
    #[test]
    fn documents_converge_under_any_delivery_order(
        script in strategies::script(),
        orders in proptest::collection::vec(strategies::delivery(), 3),
    ) {
        let Run { mut replicas, deltas } = run(&script);
        full_sync(&mut replicas);
        for r in &replicas[1..] {
            prop_assert_eq!(view(r), view(&replicas[0]), "synced originals differ");
        }
        for (n, o) in (0u32..).zip(&orders) {
            let doc = deliver_held(n, &deltas, &o.order(deltas.len()))?;
            prop_assert_eq!(view(&doc), view(&replicas[0]), "delivery order {} diverged", n);
        }
        let merged = Delta::merge(&deltas).expect("merge of valid deltas");
        let doc = deliver(7, std::slice::from_ref(&merged), &[0])?;
        prop_assert_eq!(view(&doc), view(&replicas[0]), "the merged delta diverged");
    }

    /// The law as it should hold: deltas handed to `Document::apply` in any order. Fails with
    /// yrs 0.28.1, which integrates a struct that lies past a gap in its client's clocks behind
    /// a skip; the replica can then stay stuck with pending structs after every delta arrived.
    /// The shrunk counterexample is in `proptest-regressions/laws.txt`.
    #[test]
    fn documents_converge_under_any_delivery(
        script in strategies::script(),
        orders in proptest::collection::vec(strategies::delivery(), 3),
    ) {
        let Run { mut replicas, deltas } = run(&script);
        full_sync(&mut replicas);
        let reference = view(&replicas[0]);
        for r in &replicas[1..] {
            prop_assert_eq!(view(r), view(&replicas[0]), "synced originals differ");
        }
        for (n, o) in (0u32..).zip(&orders) {
            let doc = deliver(n, &deltas, &o.order(deltas.len()))?;
            prop_assert_eq!(view(&doc), view(&replicas[0]), "delivery order {} diverged", n);
        }
        let merged = Delta::merge(&deltas).expect("merge of valid deltas");
        let doc = deliver(7, std::slice::from_ref(&merged), &[0])?;
        prop_assert_eq!(view(&doc), reference, "the merged delta diverged");
    }

    /// apply(a); apply(b) == apply(b); apply(a), and applying twice == once.
    #[test]
    fn apply_is_commutative_and_idempotent(script in strategies::script(), a in any::<Index>(), b in any::<Index>()) {
        let Run { deltas, .. } = run(&script);
        prop_assume!(!deltas.is_empty());
        let (a, b) = (a.index(deltas.len()), b.index(deltas.len()));
        let ab = deliver(1, &deltas, &[a, b])?;
        let ba = deliver(2, &deltas, &[b, a])?;
        prop_assert_eq!(view(&ab), view(&ba));

        let mut twice = deliver(3, &deltas, &[a])?;
        let once = view(&twice);
        let again = twice.apply(&deltas[a]).expect("second apply");
        prop_assert!(!again.changed, "re-applying a delta reports a change");
        prop_assert_eq!(view(&twice), once);
    }

    /// merge(merge(a, b), c) and merge(a, merge(b, c)) have the same effect, as do merge(a, b)
    /// and merge(b, a), and both equal applying the three one by one.
    #[test]
    fn delta_merge_is_associative_and_commutative(
        script in strategies::script(),
        picks in proptest::collection::vec(any::<Index>(), 3),
    ) {
        let Run { deltas, .. } = run(&script);
        prop_assume!(!deltas.is_empty());
        let [a, b, c] = [0, 1, 2].map(|i| &deltas[picks[i].index(deltas.len())]);
        let merge = |xs: &[&Delta]| Delta::merge(xs.iter().copied()).expect("merge of valid deltas");
        let left = merge(&[&merge(&[a, b]), c]);
        let right = merge(&[a, &merge(&[b, c])]);
        prop_assert_eq!(view(&deliver(2, &[left], &[0])?), view(&deliver(3, &[right], &[0])?));
        // One by one equals merged when the three leave no gap in any client's clocks; with a
        // gap, yrs 0.28.1 integrates past it one by one but not merged (see
        // `documents_converge_under_any_delivery`).
        let (one_by_one, held) = deliver_holding(1, &[a.clone(), b.clone(), c.clone()], &[0, 1, 2])?;
        if held.is_empty() {
            prop_assert_eq!(view(&deliver(4, &[merge(&[a, b, c])], &[0])?), view(&one_by_one));
        }
        prop_assert_eq!(
            view(&deliver(5, &[merge(&[a, b])], &[0])?),
            view(&deliver(6, &[merge(&[b, a])], &[0])?)
        );
    }

    /// After A applies B.diff_since(A.state()), A holds everything B has; a second diff then
    /// brings nothing.
    #[test]
    fn diff_since_sends_what_is_missing(script in strategies::script(), a in 0usize..3, b in 0usize..3) {
        prop_assume!(a != b);
        let Run { mut replicas, .. } = run(&script);
        let diff = replicas[b].diff_since(&replicas[a].state()).expect("diff");
        replicas[a].apply(&diff).expect("apply diff");
        prop_assert!(covers(&replicas[a].state(), &replicas[b].state()));

        // Everything B has, applied to A, now changes nothing.
        let everything = replicas[b].diff_since(&DocState::default()).expect("full diff");
        let before = view(&replicas[a]);
        let applied = replicas[a].apply(&everything).expect("apply full");
        prop_assert!(!applied.changed, "A lacked something after the diff");
        prop_assert_eq!(view(&replicas[a]), before);

        let again = replicas[b].diff_since(&replicas[a].state()).expect("second diff");
        prop_assert!(again.counters.is_empty() && again.registers.is_empty(), "{:?}", again);
        if !again.yjs.is_empty() {
            let shape = check_update_v1(&again.yjs).expect("diff passes the check");
            prop_assert_eq!(shape.structs, 0, "second diff resends content");
        }
        let before = view(&replicas[a]);
        prop_assert!(!replicas[a].apply(&again).expect("apply").changed);
        prop_assert_eq!(view(&replicas[a]), before);

        // Both ways, and the two converge.
        let back = replicas[a].diff_since(&replicas[b].state()).expect("diff back");
        replicas[b].apply(&back).expect("apply back");
        prop_assert_eq!(view(&replicas[a]), view(&replicas[b]));
    }

    /// A snapshot restores the same document, for originals and for replicas that were fed
    /// deltas out of order, and the restored document goes on converging.
    #[test]
    fn snapshot_round_trips(script in strategies::script(), order in strategies::delivery(), cut in any::<Index>()) {
        let Run { replicas, deltas } = run(&script);
        for doc in &replicas {
            let restored = Document::from_snapshot(doc.replica(), &doc.snapshot()).expect("snapshot reads");
            prop_assert_eq!(view(&restored), view(doc));
        }
        let order = order.order(deltas.len());
        let everything = deliver_held(1, &deltas, &order)?;
        let restored = Document::from_snapshot(everything.replica(), &everything.snapshot()).expect("snapshot reads");
        prop_assert_eq!(view(&restored), view(&everything));

        // A replica that missed some deltas is snapshotted with whatever yrs holds pending, then
        // both receive the rest. Delivery holds deltas back until their clocks are ready, since
        // yrs 0.28.1 may never converge otherwise (see `documents_converge_under_any_delivery`).
        let cut = cut.index(order.len() + 1);
        let (mut partial, held) = deliver_holding(1, &deltas, &order[..cut])?;
        let mut restored = Document::from_snapshot(partial.replica(), &partial.snapshot()).expect("snapshot reads");
        prop_assert_eq!(view(&restored), view(&partial));
        let (mut held_p, mut held_r) = (held.clone(), held);
        feed_held(&mut partial, &mut held_p, &deltas, &order[cut..])?;
        feed_held(&mut restored, &mut held_r, &deltas, &order[cut..])?;
        prop_assert!(held_p.is_empty() && held_r.is_empty());
        prop_assert_eq!(view(&restored), view(&partial), "restored replica lost pending updates");
    }
}

/// Yjs keeps a struct pending until its client's earlier clocks have arrived; yrs 0.28.1
/// integrates one that lies past a gap, so two replicas holding the same deltas can show
/// different content until the gap is filled, and a snapshot taken meanwhile restores a
/// replica that does not show it. Found by `snapshot_round_trips`; upstream bug.
#[test]
fn yrs_waits_for_missing_clocks() {
    let mut author = Document::new(ReplicaId::from_random(1));
    let first = author.text_insert("title", 0, "a").expect("insert");
    let second = author.text_insert("body", 0, "b").expect("insert");
    let mut reader = fresh(1);
    reader.apply(&second).expect("apply");
    assert_eq!(
        reader.text("body"),
        "",
        "clock 1 shown before clock 0 arrived"
    );
    reader.apply(&first).expect("apply");
    assert_eq!(reader.text("body"), "b");
}

// ---------------------------------------------------------------------------------------------
// Hybrid logical clock

#[derive(Clone, Debug)]
enum ClockOp {
    Tick,
    /// Sets the physical clock to `EPOCH_MS + ms` (so it moves backwards as well as forwards).
    SetClock(u64),
    /// Observes a remote timestamp this many NTP64 units from `now + max_drift`.
    Observe(i64),
}

fn clock_op() -> impl Strategy<Value = ClockOp> {
    // One millisecond is about 4.3 million NTP64 units; one second 2^32.
    let offset = prop_oneof![
        -(1i64 << 36)..(1i64 << 36),
        -64i64..64,
        Just(0i64),
        -(1i64 << 40)..-(1i64 << 38),
    ];
    prop_oneof![
        3 => Just(ClockOp::Tick),
        2 => (0u64..200_000).prop_map(ClockOp::SetClock),
        3 => offset.prop_map(ClockOp::Observe),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Every tick is above every earlier tick and accepted timestamp; observe refuses exactly
    /// what lies beyond the drift bound, and a refusal leaves the clock as if it never happened.
    #[test]
    fn hlc_is_monotone_and_bounded(
        ops in proptest::collection::vec(clock_op(), 1..64),
        drift_ms in prop_oneof![Just(1_000u64), Just(60_000u64)],
        id in 1u32..=u32::MAX,
    ) {
        let replica = ReplicaId::from_random(id);
        let max_drift = Duration::from_millis(drift_ms);
        let drift = NTP64::from(max_drift).as_u64();
        set_manual_clock_ms(EPOCH_MS);
        let mut hlc = ClockedHlc::new(replica, manual_clock, max_drift);
        // Sees the same ticks and accepted timestamps, never the refused ones.
        let mut twin = ClockedHlc::new(replica, manual_clock, max_drift);
        let mut high: Option<HlcTimestamp> = None;
        // The highest physical time (logical bits cleared) the clock has folded in.
        let mut floor = 0u64;
        // How far past `high` the clock may have moved without a tick (see Observe below).
        let mut slack = 1u64;
        for op in ops {
            match op {
                ClockOp::Tick => {
                    let t = hlc.tick();
                    prop_assert_eq!(t, twin.tick(), "a refused timestamp moved the clock");
                    prop_assert_eq!(t.replica, replica);
                    if let Some(h) = high {
                        prop_assert!(t.time > h.time, "tick {:?} not above {:?}", t, h);
                    }
                    high = Some(t);
                    slack = 1;
                }
                ClockOp::SetClock(ms) => set_manual_clock_ms(EPOCH_MS + ms),
                ClockOp::Observe(offset) => {
                    let now = manual_clock().as_u64();
                    let time = (now + drift).saturating_add_signed(offset);
                    let ts = HlcTimestamp::new(time, ReplicaId::from_random(id.wrapping_add(1)));
                    let result = hlc.observe(ts);
                    // The clock compares against its physical time with the 4 logical bits
                    // cleared, as uhlc does.
                    let bound = (now & !0xF) + drift;
                    if time > now + drift {
                        let err = result.clone().expect_err("beyond the drift bound");
                        prop_assert_eq!(err.max_drift_ms, drift_ms);
                        prop_assert!(hlc.check_drift(ts).is_err());
                    }
                    if time <= bound {
                        prop_assert!(result.is_ok(), "within the bound but refused: {:?}", result);
                        prop_assert!(hlc.check_drift(ts).is_ok());
                    }
                    match result {
                        Ok(()) => {
                            twin.observe(ts).expect("twin accepts what the clock accepted");
                            if high.is_none_or(|h| ts.time > h.time) {
                                high = Some(ts);
                            }
                            // The clock may bump its last time by one per accepted observation, as
                            // uhlc does.
                            slack += 1;
                            // Observing also folds in the physical time.
                            floor = floor.max(now & !0xF);
                        }
                        Err(_) => {
                            let next = hlc.tick();
                            prop_assert_eq!(next, twin.tick(), "a refused timestamp moved the clock");
                            prop_assert!(high.is_none_or(|h| next.time > h.time));
                            let before = high.map_or(floor, |h| h.time.max(floor));
                            if ts.time > before.saturating_add(slack) {
                                prop_assert!(next < ts, "refused {:?} but ticked past it: {:?}", ts, next);
                            }
                            high = Some(next);
                            slack = 1;
                        }
                    }
                }
            }
        }
    }
}

/// One step of a clock given the time: `EPOCH_MS + ms`, which may go backwards.
#[derive(Clone, Debug)]
enum TimedOp {
    Tick(u64),
    /// Observes a remote timestamp this many NTP64 units from `now + max_drift`.
    Observe(u64, i64),
}

fn timed_op() -> impl Strategy<Value = TimedOp> {
    let offset = prop_oneof![-(1i64 << 36)..(1i64 << 36), -64i64..64, Just(0i64)];
    prop_oneof![
        3 => (0u64..200_000).prop_map(TimedOp::Tick),
        2 => (0u64..200_000, offset).prop_map(|(ms, o)| TimedOp::Observe(ms, o)),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// The room's form, time as an argument: every tick is above every earlier tick and
    /// accepted timestamp and never behind the time given, even when that time goes backwards;
    /// `check_drift` and `observe` agree; and it stamps exactly as a clock function reading the
    /// same times would.
    #[test]
    fn hlc_given_the_time_is_monotone(
        ops in proptest::collection::vec(timed_op(), 1..64),
        drift_ms in prop_oneof![Just(1_000u64), Just(60_000u64)],
        id in 1u32..=u32::MAX,
    ) {
        let replica = ReplicaId::from_random(id);
        let max_drift = Duration::from_millis(drift_ms);
        let drift = NTP64::from(max_drift).as_u64();
        let mut hlc = Hlc::new(replica, max_drift);
        let mut clocked = ClockedHlc::new(replica, manual_clock, max_drift);
        let mut high: Option<HlcTimestamp> = None;
        for op in ops {
            match op {
                TimedOp::Tick(ms) => {
                    let now_ms = EPOCH_MS + ms;
                    let t = hlc.tick(now_ms);
                    set_manual_clock_ms(now_ms);
                    prop_assert_eq!(t, clocked.tick(), "the two forms disagree");
                    prop_assert_eq!(t.replica, replica);
                    prop_assert!(t.time >= ntp64_from_unix_ms(now_ms).as_u64() & !0xF);
                    if let Some(h) = high {
                        prop_assert!(t.time > h.time, "tick {:?} not above {:?}", t, h);
                    }
                    high = Some(t);
                }
                TimedOp::Observe(ms, offset) => {
                    let now_ms = EPOCH_MS + ms;
                    let now = ntp64_from_unix_ms(now_ms).as_u64();
                    let time = (now + drift).saturating_add_signed(offset);
                    let ts = HlcTimestamp::new(time, ReplicaId::from_random(id.wrapping_add(1)));
                    let checked = hlc.check_drift(now_ms, ts);
                    let result = hlc.observe(now_ms, ts);
                    prop_assert_eq!(&checked, &result, "check_drift and observe disagree");
                    set_manual_clock_ms(now_ms);
                    prop_assert_eq!(&result, &clocked.observe(ts), "the two forms disagree");
                    if result.is_ok() && high.is_none_or(|h| ts.time > h.time) {
                        high = Some(ts);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_messages_round_trip(msg in strategies::client_msg()) {
        let bytes = msg.encode();
        prop_assert_eq!(ClientMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES), Ok(msg));
    }

    #[test]
    fn server_messages_round_trip(msg in strategies::server_msg()) {
        let bytes = msg.encode();
        prop_assert_eq!(ServerMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES), Ok(msg));
    }

    #[test]
    fn hello_with_another_version_is_refused(protocol in any::<u32>()) {
        prop_assume!(protocol != PROTOCOL_VERSION);
        let bytes = ClientMsg::Hello { protocol, token: None, agent: None, replica: None }.encode();
        prop_assert_eq!(
            ClientMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES),
            Err(lattice_engine::protocol::DecodeError::UnsupportedVersion {
                got: protocol,
                supported: PROTOCOL_VERSION,
            })
        );
    }

    #[test]
    fn values_round_trip_through_messagepack(v in strategies::value()) {
        let bytes = rmp_serde::to_vec_named(&v).expect("encode");
        let back: Value = rmp_serde::from_slice(&bytes).expect("decode");
        prop_assert_eq!(back, v);
    }

    #[test]
    fn values_round_trip_through_json(v in strategies::value()) {
        let text = serde_json::to_string(&v).expect("encode");
        let back: Value = serde_json::from_str(&text).expect("decode");
        prop_assert_eq!(back, v, "via {}", text);
    }
}

// ---------------------------------------------------------------------------------------------
// Peer bytes never panic

/// A document with some content to apply hostile bytes to.
fn target_document() -> Document {
    let mut doc = Document::new(ReplicaId::from_random(77));
    doc.text_insert("body", 0, "hello wörld").expect("insert");
    doc.text_delete("body", 1, 2).expect("delete");
    doc.counter_increment("likes", 3).expect("increment");
    doc
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        feed_peer_bytes(&bytes, &mut target_document())?;
    }

    #[test]
    fn mutated_messages_never_panic(
        msg in prop_oneof![
            strategies::client_msg().prop_map(|m| m.encode()),
            strategies::server_msg().prop_map(|m| m.encode()),
        ],
        mutations in strategies::mutations(),
    ) {
        let bytes = strategies::mutate(&msg, &mutations);
        if let Ok(m) = ClientMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES) {
            prop_assert_eq!(ClientMsg::decode(&m.encode(), DEFAULT_MAX_FRAME_BYTES), Ok(m));
        }
        if let Ok(m) = ServerMsg::decode(&bytes, DEFAULT_MAX_FRAME_BYTES) {
            prop_assert_eq!(ServerMsg::decode(&m.encode(), DEFAULT_MAX_FRAME_BYTES), Ok(m));
        }
    }

    /// Valid Yjs updates, state vectors and snapshots with a few bytes changed.
    #[test]
    fn mutated_yjs_bytes_never_panic(script in strategies::script(), pick in any::<Index>(), mutations in strategies::mutations()) {
        let Run { replicas, deltas } = run(&script);
        let doc = &replicas[0];
        let mut sources = vec![doc.snapshot(), doc.state().yjs];
        sources.extend(deltas.iter().map(|d| d.yjs.clone()).filter(|y| !y.is_empty()));
        let source = &sources[pick.index(sources.len())];
        let bytes = strategies::mutate(source, &mutations);
        feed_peer_bytes(&bytes, &mut target_document())?;
        let mut replica = deliver(1, &deltas, &(0..deltas.len()).collect::<Vec<_>>())?;
        feed_peer_bytes(&bytes, &mut replica)?;
    }
}
