//! The protocol's values in MessagePack, by hand: [`Value`], stamps, counters, registers,
//! [`Delta`], [`DocState`] and the fields of every message.
//!
//! The bytes are those `rmp_serde::to_vec_named` writes for the types' serde derives (structs as
//! maps with named fields in declaration order, fields that serde skips left out, byte payloads
//! as `bin`), and reading accepts what the derives accepted: fields in any order, unknown keys
//! skipped, defaults for missing optional fields, integers in any width that holds the value,
//! strings as `str` or `bin` (error codes as `str` only, like serde's enums), the last of a
//! repeated map key (a repeated field is refused). `tests/protocol_codec.rs` checks both against
//! rmp-serde.
//!
//! A message is read from a [`Frame`], whose walk over the map bounded the nesting of the whole
//! frame first; every value reader takes `depth`, the number of arrays and maps around the value
//! it reads, and bounds it again, so that none relies on the walk.

use std::collections::BTreeMap;

use super::msgpack::{
    Fault, Item, Reader, write_array_len, write_bin, write_bool, write_f64, write_int,
    write_map_len, write_nil, write_str, write_uint,
};
use super::{ClientMsg, ErrorCode, MAX_NESTING, ServerMsg};
use crate::value::hex_decode;
use crate::{Delta, DocId, DocState, GCounter, HlcTimestamp, LwwRegister, ReplicaId, Value};

/// The keys [`Value`]'s serde form gives meaning to: a map whose one key is one of them is
/// written inside a `$map` map, and a `$bytes` or `$float` map that arrives is read as bytes or
/// a float (the JSON forms, which `Value`'s serde reader accepts in every format).
const TAG_BYTES: &str = "$bytes";
const TAG_FLOAT: &str = "$float";
const TAG_MAP: &str = "$map";

fn is_tagged(map: &BTreeMap<String, Value>) -> bool {
    map.len() == 1
        && map
            .keys()
            .next()
            .is_some_and(|k| k == TAG_BYTES || k == TAG_FLOAT || k == TAG_MAP)
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => write_nil(out),
        Value::Bool(b) => write_bool(out, *b),
        Value::Int(i) => write_int(out, *i),
        Value::Float(f) => write_f64(out, *f),
        Value::String(s) => write_str(out, s),
        Value::Bytes(b) => write_bin(out, b),
        Value::List(items) => {
            write_array_len(out, items.len());
            for item in items {
                write_value(out, item);
            }
        }
        Value::Map(map) => {
            if is_tagged(map) {
                write_map_len(out, 1);
                write_str(out, TAG_MAP);
            }
            write_map_len(out, map.len());
            for (key, item) in map {
                write_str(out, key);
                write_value(out, item);
            }
        }
    }
}

fn write_stamp(out: &mut Vec<u8>, stamp: HlcTimestamp) {
    write_map_len(out, 2);
    write_str(out, "time");
    write_uint(out, stamp.time);
    write_str(out, "replica");
    write_uint(out, u64::from(stamp.replica.get()));
}

fn write_counters(out: &mut Vec<u8>, counters: &BTreeMap<String, GCounter>) {
    write_str(out, "counters");
    write_map_len(out, counters.len());
    for (name, counter) in counters {
        write_str(out, name);
        write_map_len(out, counter.replicas());
        for (replica, count) in counter.entries() {
            write_uint(out, u64::from(replica.get()));
            write_uint(out, count);
        }
    }
}

/// The fields of a delta or state: `yjs`, `counters` and `registers`, each left out when empty;
/// `register` writes one register's entry.
fn write_content<R>(
    out: &mut Vec<u8>,
    yjs: &[u8],
    counters: &BTreeMap<String, GCounter>,
    registers: &BTreeMap<String, R>,
    register: fn(&mut Vec<u8>, &R),
) {
    let present = [!yjs.is_empty(), !counters.is_empty(), !registers.is_empty()];
    write_map_len(out, present.iter().filter(|p| **p).count());
    if present[0] {
        write_str(out, "yjs");
        write_bin(out, yjs);
    }
    if present[1] {
        write_counters(out, counters);
    }
    if present[2] {
        write_str(out, "registers");
        write_map_len(out, registers.len());
        for (name, r) in registers {
            write_str(out, name);
            register(out, r);
        }
    }
}

pub(super) fn write_delta(out: &mut Vec<u8>, delta: &Delta) {
    write_content(
        out,
        &delta.yjs,
        &delta.counters,
        &delta.registers,
        |out, register| {
            write_map_len(out, 2);
            write_str(out, "value");
            write_value(out, register.value());
            write_str(out, "stamp");
            write_stamp(out, register.stamp());
        },
    );
}

pub(super) fn write_state(out: &mut Vec<u8>, state: &DocState) {
    write_content(
        out,
        &state.yjs,
        &state.counters,
        &state.registers,
        |out, stamp| write_stamp(out, *stamp),
    );
}

/// A frame's buffer, sized for its byte payloads so that a large delta is copied once.
pub(super) fn buffer(payload_bytes: usize) -> Vec<u8> {
    Vec::with_capacity(payload_bytes.saturating_add(96))
}

/// A message's map header, with `fields` fields besides `type`, and its `type`.
fn write_header(out: &mut Vec<u8>, fields: usize, kind: &str) {
    write_map_len(out, fields + 1);
    write_str(out, "type");
    write_str(out, kind);
}

fn write_doc(out: &mut Vec<u8>, doc: &DocId) {
    write_str(out, "doc");
    write_str(out, doc.as_str());
}

fn write_uint_field(out: &mut Vec<u8>, name: &str, v: u64) {
    write_str(out, name);
    write_uint(out, v);
}

fn write_presence(out: &mut Vec<u8>, state: &Value, typing: bool) {
    write_str(out, "state");
    write_value(out, state);
    write_str(out, "typing");
    write_bool(out, typing);
}

pub(super) fn write_client(out: &mut Vec<u8>, msg: &ClientMsg) {
    let kind = msg.kind();
    match msg {
        ClientMsg::Hello {
            protocol,
            token,
            agent,
            replica,
        } => {
            let present = [token.is_some(), agent.is_some(), replica.is_some()];
            write_header(out, 1 + present.iter().filter(|p| **p).count(), kind);
            write_uint_field(out, "protocol", u64::from(*protocol));
            if let Some(token) = token {
                write_str(out, "token");
                write_str(out, token);
            }
            if let Some(agent) = agent {
                write_str(out, "agent");
                write_str(out, agent);
            }
            if let Some(replica) = replica {
                write_uint_field(out, "replica", u64::from(*replica));
            }
        }
        ClientMsg::Subscribe { doc, state } => {
            write_header(out, 2, kind);
            write_doc(out, doc);
            write_str(out, "state");
            write_state(out, state);
        }
        ClientMsg::Unsubscribe { doc } => {
            write_header(out, 1, kind);
            write_doc(out, doc);
        }
        ClientMsg::Delta { doc, seq, delta } => {
            write_header(out, 3, kind);
            write_doc(out, doc);
            write_uint_field(out, "seq", *seq);
            write_str(out, "delta");
            write_delta(out, delta);
        }
        ClientMsg::Presence { doc, state, typing } => {
            write_header(out, 3, kind);
            write_doc(out, doc);
            write_presence(out, state, *typing);
        }
        ClientMsg::Ping { nonce } => {
            write_header(out, 1, kind);
            write_uint_field(out, "nonce", *nonce);
        }
    }
}

pub(super) fn write_server(out: &mut Vec<u8>, msg: &ServerMsg) {
    let kind = msg.kind();
    match msg {
        ServerMsg::Welcome { protocol, server } => {
            write_header(out, 2, kind);
            write_uint_field(out, "protocol", u64::from(*protocol));
            write_str(out, "server");
            write_str(out, server);
        }
        ServerMsg::Sync { doc, delta, state } => {
            write_header(out, 3, kind);
            write_doc(out, doc);
            write_str(out, "delta");
            write_delta(out, delta);
            write_str(out, "state");
            write_state(out, state);
        }
        ServerMsg::Delta { doc, delta } => {
            write_header(out, 2, kind);
            write_doc(out, doc);
            write_str(out, "delta");
            write_delta(out, delta);
        }
        ServerMsg::Ack { doc, seq } => {
            write_header(out, 2, kind);
            write_doc(out, doc);
            write_uint_field(out, "seq", *seq);
        }
        ServerMsg::Error {
            code,
            message,
            doc,
            seq,
        } => {
            write_header(
                out,
                2 + usize::from(doc.is_some()) + usize::from(seq.is_some()),
                kind,
            );
            write_str(out, "code");
            write_str(out, code.as_str());
            write_str(out, "message");
            write_str(out, message);
            if let Some(doc) = doc {
                write_doc(out, doc);
            }
            if let Some(seq) = seq {
                write_uint_field(out, "seq", *seq);
            }
        }
        ServerMsg::Presence {
            doc,
            peer,
            state,
            typing,
        } => {
            write_header(out, 4, kind);
            write_doc(out, doc);
            write_uint_field(out, "peer", *peer);
            write_presence(out, state, *typing);
        }
        ServerMsg::Pong { nonce } => {
            write_header(out, 1, kind);
            write_uint_field(out, "nonce", *nonce);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads the `entries` entries of a map whose header was read: a key among `names` has its
/// value read by `field`, with the key's index; any other key's value is skipped. A key that
/// comes twice is refused, as serde's derives do. `depth` is the depth of the values.
fn read_fields<'a>(
    r: &mut Reader<'a>,
    entries: u32,
    depth: usize,
    names: &[&'static str],
    field: &mut dyn FnMut(&mut Reader<'a>, usize) -> Result<(), Fault>,
) -> Result<(), Fault> {
    let mut seen = 0u32;
    for _ in 0..entries {
        let key = r.key()?;
        let Some(i) = names.iter().position(|name| name.as_bytes() == key) else {
            r.skip(depth)?;
            continue;
        };
        let bit = 1 << i;
        if seen & bit != 0 {
            return Err(Fault::Duplicate(names[i]));
        }
        seen |= bit;
        field(r, i)?;
    }
    Ok(())
}

fn required<T>(slot: Option<T>, name: &'static str) -> Result<T, Fault> {
    slot.ok_or(Fault::Missing(name))
}

fn read_string(r: &mut Reader<'_>) -> Result<String, Fault> {
    r.str().map(str::to_owned)
}

fn read_doc(r: &mut Reader<'_>) -> Result<DocId, Fault> {
    Ok(DocId::new(r.str()?)?)
}

fn read_replica(r: &mut Reader<'_>) -> Result<ReplicaId, Fault> {
    ReplicaId::new(r.u32()?).ok_or(Fault::Bad("replica id must not be zero"))
}

fn enter(depth: usize) -> Result<usize, Fault> {
    if depth + 1 >= MAX_NESTING {
        return Err(Fault::TooDeep);
    }
    Ok(depth + 1)
}

/// A value as MessagePack has it, before the tagged maps are given their meaning.
fn read_raw_value(r: &mut Reader<'_>, depth: usize) -> Result<Value, Fault> {
    Ok(match r.item()? {
        Item::Nil => Value::Null,
        Item::Bool(b) => Value::Bool(b),
        Item::Uint(v) => {
            Value::Int(i64::try_from(v).map_err(|_| Fault::Bad("integer does not fit in i64"))?)
        }
        Item::Int(v) => Value::Int(v),
        Item::F32(v) => Value::Float(f64::from(v)),
        Item::F64(v) => Value::Float(v),
        // A string that is not UTF-8 is taken as bytes, as rmp-serde hands it to a reader.
        Item::Str(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => Value::Bytes(b.to_vec()),
        },
        Item::Bin(b) => Value::Bytes(b.to_vec()),
        Item::Array(n) => {
            let depth = enter(depth)?;
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(read_raw_value(r, depth)?);
            }
            Value::List(items)
        }
        Item::Map(n) => {
            let depth = enter(depth)?;
            let mut map = BTreeMap::new();
            for _ in 0..n {
                let key = read_string(r)?;
                map.insert(key, read_raw_value(r, depth)?);
            }
            Value::Map(map)
        }
        item @ Item::Ext => return Err(Fault::unexpected(item, "a Lattice value")),
    })
}

/// Gives the tagged maps their meaning, top-down, in place (what `Value`'s serde reader does).
fn interpret(value: &mut Value) -> Result<(), Fault> {
    let map = match value {
        Value::List(items) => return items.iter_mut().try_for_each(interpret),
        Value::Map(map) => map,
        _ => return Ok(()),
    };
    if !is_tagged(map) {
        return map.values_mut().try_for_each(interpret);
    }
    let Some((tag, mut inner)) = std::mem::take(map).into_iter().next() else {
        return Ok(());
    };
    let special = match (tag.as_str(), &mut inner) {
        (TAG_BYTES, Value::String(hex)) => {
            Value::Bytes(hex_decode(hex).ok_or(Fault::Bad("bad hex in $bytes"))?)
        }
        (TAG_FLOAT, Value::String(label)) => Value::Float(match label.as_str() {
            "NaN" => f64::NAN,
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            _ => return Err(Fault::Bad("bad $float label")),
        }),
        (TAG_MAP, Value::Map(entries)) => {
            entries.values_mut().try_for_each(interpret)?;
            Value::Map(std::mem::take(entries))
        }
        _ => {
            interpret(&mut inner)?;
            map.insert(tag, inner);
            return Ok(());
        }
    };
    *value = special;
    Ok(())
}

fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<Value, Fault> {
    let mut value = read_raw_value(r, depth)?;
    interpret(&mut value)?;
    Ok(value)
}

fn read_stamp(r: &mut Reader<'_>, depth: usize) -> Result<HlcTimestamp, Fault> {
    let entries = r.map("struct HlcTimestamp")?;
    let (mut time, mut replica) = (None, None);
    read_fields(
        r,
        entries,
        enter(depth)?,
        &["time", "replica"],
        &mut |r, i| {
            match i {
                0 => time = Some(r.u64()?),
                _ => replica = Some(read_replica(r)?),
            }
            Ok(())
        },
    )?;
    Ok(HlcTimestamp::new(
        required(time, "time")?,
        required(replica, "replica")?,
    ))
}

fn read_register(r: &mut Reader<'_>, depth: usize) -> Result<LwwRegister<Value>, Fault> {
    let entries = r.map("struct LwwRegister")?;
    let depth = enter(depth)?;
    let (mut value, mut stamp) = (None, None);
    read_fields(r, entries, depth, &["value", "stamp"], &mut |r, i| {
        match i {
            0 => value = Some(read_value(r, depth)?),
            _ => stamp = Some(read_stamp(r, depth)?),
        }
        Ok(())
    })?;
    Ok(LwwRegister::new(
        required(value, "value")?,
        required(stamp, "stamp")?,
    ))
}

fn read_counter(r: &mut Reader<'_>, depth: usize) -> Result<GCounter, Fault> {
    let entries = r.map("a map")?;
    enter(depth)?;
    // A replica listed twice keeps its last count, as when serde filled a map.
    let mut counts = BTreeMap::new();
    for _ in 0..entries {
        let replica = read_replica(r)?;
        *counts.entry(replica).or_default() = r.u64()?;
    }
    let mut counter = GCounter::new();
    for (replica, count) in counts {
        counter.increment(replica, count);
    }
    Ok(counter)
}

/// A map from names to what `read` reads.
fn read_named<T>(
    r: &mut Reader<'_>,
    depth: usize,
    read: fn(&mut Reader<'_>, usize) -> Result<T, Fault>,
) -> Result<BTreeMap<String, T>, Fault> {
    let entries = r.map("a map")?;
    let depth = enter(depth)?;
    let mut out = BTreeMap::new();
    for _ in 0..entries {
        let name = read_string(r)?;
        out.insert(name, read(r, depth)?);
    }
    Ok(out)
}

/// The fields of a delta or a state (`expected` names it): `yjs` and `counters` into place,
/// and the value of `registers` handed to `registers` (compiled once for both).
fn read_content(
    r: &mut Reader<'_>,
    depth: usize,
    expected: &'static str,
    (yjs, counters): (&mut Vec<u8>, &mut BTreeMap<String, GCounter>),
    registers: &mut dyn FnMut(&mut Reader<'_>, usize) -> Result<(), Fault>,
) -> Result<(), Fault> {
    let entries = r.map(expected)?;
    let depth = enter(depth)?;
    read_fields(
        r,
        entries,
        depth,
        &["yjs", "counters", "registers"],
        &mut |r, i| match i {
            0 => {
                *yjs = r.bytes()?;
                Ok(())
            }
            1 => {
                *counters = read_named(r, depth, read_counter)?;
                Ok(())
            }
            _ => registers(r, depth),
        },
    )
}

pub(super) fn read_delta(r: &mut Reader<'_>, depth: usize) -> Result<Delta, Fault> {
    let mut delta = Delta::default();
    let parts = (&mut delta.yjs, &mut delta.counters);
    read_content(r, depth, "struct Delta", parts, &mut |r, depth| {
        delta.registers = read_named(r, depth, read_register)?;
        Ok(())
    })?;
    Ok(delta)
}

pub(super) fn read_state(r: &mut Reader<'_>, depth: usize) -> Result<DocState, Fault> {
    let mut state = DocState::default();
    let parts = (&mut state.yjs, &mut state.counters);
    read_content(r, depth, "struct DocState", parts, &mut |r, depth| {
        state.registers = read_named(r, depth, read_stamp)?;
        Ok(())
    })?;
    Ok(state)
}

/// A code this build does not know reads as [`ErrorCode::Unknown`]; the name must be a UTF-8
/// string (serde's enums take no byte string).
fn read_error_code(r: &mut Reader<'_>) -> Result<ErrorCode, Fault> {
    let item = r.item()?;
    let name = match item {
        Item::Str(name) if std::str::from_utf8(name).is_ok() => name,
        other => return Err(Fault::unexpected(other, "string or map")),
    };
    Ok(ErrorCode::KNOWN
        .into_iter()
        .find(|c| c.as_str().as_bytes() == name)
        .unwrap_or(ErrorCode::Unknown))
}

/// Every field name of either side's messages, so that one walk over a frame finds them all.
const FIELDS: [&str; 15] = [
    "type", "protocol", "token", "agent", "replica", "doc", "state", "seq", "delta", "typing",
    "nonce", "server", "code", "message", "peer",
];
const TYPE: usize = 0;
const PROTOCOL: usize = 1;
const TOKEN: usize = 2;
const AGENT: usize = 3;
const REPLICA: usize = 4;
const DOC: usize = 5;
const STATE: usize = 6;
const SEQ: usize = 7;
const DELTA: usize = 8;
const TYPING: usize = 9;
const NONCE: usize = 10;
const SERVER: usize = 11;
const CODE: usize = 12;
const MESSAGE: usize = 13;
const PEER: usize = 14;

/// A frame whose map was walked once: complete, nesting bounded, and where the value of each
/// field in [`FIELDS`] starts, so that a message's fields are read straight from there.
#[derive(Debug)]
pub(super) struct Frame<'a> {
    bytes: &'a [u8],
    /// Where each field's value starts; 0 (the map's header) when the field is absent.
    at: [usize; FIELDS.len()],
    /// The fields that came more than once, one bit each.
    repeated: u32,
    /// The message's `type`; `None` when missing or `nil`.
    pub(super) kind: Option<&'a str>,
    /// Where the map ends.
    pub(super) end: usize,
}

impl<'a> Frame<'a> {
    /// Walks the map at the start of `bytes`: every value is skipped (so checked complete and
    /// bounded) except `type`, which must be a string or `nil`, and come once.
    pub(super) fn open(bytes: &'a [u8]) -> Result<Self, Fault> {
        let mut r = Reader::new(bytes);
        let entries = r.map("a map")?;
        let mut frame = Frame {
            bytes,
            at: [0; FIELDS.len()],
            repeated: 0,
            kind: None,
            end: 0,
        };
        for _ in 0..entries {
            let key = r.key()?;
            let field = FIELDS.iter().position(|name| name.as_bytes() == key);
            if let Some(i) = field {
                if frame.at[i] == 0 {
                    frame.at[i] = r.position();
                } else {
                    frame.repeated |= 1 << i;
                }
            }
            if field != Some(TYPE) {
                r.skip(1)?;
            } else if frame.repeated & (1 << TYPE) != 0 {
                return Err(Fault::Duplicate("type"));
            } else if !r.nil()? {
                frame.kind = Some(r.str()?);
            }
        }
        frame.end = r.position();
        Ok(frame)
    }

    /// A reader at field `i`'s value, `None` when the field is absent; a field that came
    /// twice is refused.
    fn field(&self, i: usize) -> Result<Option<Reader<'a>>, Fault> {
        if self.repeated & (1 << i) != 0 {
            return Err(Fault::Duplicate(FIELDS[i]));
        }
        Ok((self.at[i] != 0).then(|| Reader::at(self.bytes, self.at[i])))
    }

    /// A reader at field `i`'s value, which must be there.
    fn required(&self, i: usize) -> Result<Reader<'a>, Fault> {
        self.field(i)?.ok_or(Fault::Missing(FIELDS[i]))
    }

    /// A reader at optional field `i`'s value; `None` when absent or `nil`.
    fn optional(&self, i: usize) -> Result<Option<Reader<'a>>, Fault> {
        let Some(mut r) = self.field(i)? else {
            return Ok(None);
        };
        Ok((!r.nil()?).then_some(r))
    }
}

/// Why a message's fields did not read.
#[derive(Debug)]
pub(super) enum Refusal {
    Malformed(Fault),
    /// A `delta` message whose `doc` and `seq` read but whose `delta` did not.
    InvalidDelta {
        doc: DocId,
        seq: u64,
        reason: Fault,
    },
}

impl From<Fault> for Refusal {
    fn from(fault: Fault) -> Self {
        Refusal::Malformed(fault)
    }
}

/// A client message of kind `kind`, one of the client's kinds.
pub(super) fn read_client(f: &Frame<'_>, kind: &str) -> Result<ClientMsg, Refusal> {
    let doc = || read_doc(&mut f.required(DOC)?);
    Ok(match kind {
        "hello" => ClientMsg::Hello {
            protocol: f.required(PROTOCOL)?.u32()?,
            token: f
                .optional(TOKEN)?
                .map(|mut r| read_string(&mut r))
                .transpose()?,
            agent: f
                .optional(AGENT)?
                .map(|mut r| read_string(&mut r))
                .transpose()?,
            replica: f.optional(REPLICA)?.map(|mut r| r.u32()).transpose()?,
        },
        "subscribe" => ClientMsg::Subscribe {
            doc: doc()?,
            state: match f.field(STATE)? {
                Some(mut r) => read_state(&mut r, 1)?,
                None => DocState::default(),
            },
        },
        "unsubscribe" => ClientMsg::Unsubscribe { doc: doc()? },
        "delta" => {
            // A `delta` that does not read (or comes twice) refuses that delta alone when the
            // rest of the message reads.
            let (doc, seq) = (doc()?, f.required(SEQ)?.u64()?);
            match f.required(DELTA).and_then(|mut r| read_delta(&mut r, 1)) {
                Ok(delta) => ClientMsg::Delta { doc, seq, delta },
                Err(reason) => return Err(Refusal::InvalidDelta { doc, seq, reason }),
            }
        }
        "presence" => {
            let doc = doc()?;
            let (state, typing) = read_presence(f)?;
            ClientMsg::Presence { doc, state, typing }
        }
        _ => ClientMsg::Ping {
            nonce: f.required(NONCE)?.u64()?,
        },
    })
}

/// The `state` and `typing` of a presence message, both optional.
fn read_presence(f: &Frame<'_>) -> Result<(Value, bool), Fault> {
    let state = match f.field(STATE)? {
        Some(mut r) => read_value(&mut r, 1)?,
        None => Value::Null,
    };
    let typing = match f.field(TYPING)? {
        Some(mut r) => r.bool()?,
        None => false,
    };
    Ok((state, typing))
}

/// A server message of kind `kind`, one of the server's kinds.
pub(super) fn read_server(f: &Frame<'_>, kind: &str) -> Result<ServerMsg, Fault> {
    let doc = || read_doc(&mut f.required(DOC)?);
    let delta = || read_delta(&mut f.required(DELTA)?, 1);
    Ok(match kind {
        "welcome" => ServerMsg::Welcome {
            protocol: f.required(PROTOCOL)?.u32()?,
            server: read_string(&mut f.required(SERVER)?)?,
        },
        "sync" => ServerMsg::Sync {
            doc: doc()?,
            delta: delta()?,
            state: read_state(&mut f.required(STATE)?, 1)?,
        },
        "delta" => ServerMsg::Delta {
            doc: doc()?,
            delta: delta()?,
        },
        "ack" => ServerMsg::Ack {
            doc: doc()?,
            seq: f.required(SEQ)?.u64()?,
        },
        "error" => ServerMsg::Error {
            code: read_error_code(&mut f.required(CODE)?)?,
            message: read_string(&mut f.required(MESSAGE)?)?,
            doc: f.optional(DOC)?.map(|mut r| read_doc(&mut r)).transpose()?,
            seq: f.optional(SEQ)?.map(|mut r| r.u64()).transpose()?,
        },
        "presence" => {
            let (doc, peer) = (doc()?, f.required(PEER)?.u64()?);
            let (state, typing) = read_presence(f)?;
            ServerMsg::Presence {
                doc,
                peer,
                state,
                typing,
            }
        }
        _ => ServerMsg::Pong {
            nonce: f.required(NONCE)?.u64()?,
        },
    })
}
