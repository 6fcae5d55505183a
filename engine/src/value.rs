//! [`Value`]: what a register holds.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A small dynamic value. It round-trips through MessagePack and through JSON.
///
/// In MessagePack every variant has its native form (`bin` for bytes). JSON lacks bytes and
/// non-finite floats, so those take a one-key object form: `{"$bytes": "<hex>"}` and
/// `{"$float": "NaN" | "inf" | "-inf"}`. A map that itself has exactly one key among `$bytes`,
/// `$float` and `$map` is wrapped as `{"$map": {...}}` so it is never mistaken for those, in
/// both formats: serde's internally tagged enums (our wire messages) buffer their fields and
/// then report every format as human-readable, so the reader must not depend on the flag.
///
/// **Invariant:** equality and ordering are total (floats compare by `f64::total_cmp`), so a
/// value can break a tie deterministically.
#[derive(Clone, Debug, Default)]
pub enum Value {
    /// No value: MessagePack `nil`, JSON `null`. The default; as a presence state, "left".
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer. Unsigned integers above `i64::MAX` are refused when read.
    /// Never equal to a [`Value::Float`] of the same number.
    Int(i64),
    /// A 64-bit float, NaN and infinities included (JSON: the `$float` form).
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// Raw bytes: MessagePack `bin`, JSON `{"$bytes": "<hex>"}`.
    Bytes(Vec<u8>),
    /// An ordered list of values (MessagePack and JSON arrays).
    List(Vec<Value>),
    /// A map with string keys, in key order.
    Map(BTreeMap<String, Value>),
}

const TAG_BYTES: &str = "$bytes";
const TAG_FLOAT: &str = "$float";
const TAG_MAP: &str = "$map";

impl Value {
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) => 2,
            Value::Float(_) => 3,
            Value::String(_) => 4,
            Value::Bytes(_) => 5,
            Value::List(_) => 6,
            Value::Map(_) => 7,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => a.cmp(b),
            (Value::Map(a), Value::Map(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Lower- or upper-case hex, as `$bytes` holds it in JSON; `None` for anything else.
pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let raw = s.as_bytes();
    if !raw.len().is_multiple_of(2) {
        return None;
    }
    raw.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

fn is_reserved_single_key(map: &BTreeMap<String, Value>) -> bool {
    map.len() == 1
        && map
            .keys()
            .next()
            .is_some_and(|k| k == TAG_BYTES || k == TAG_FLOAT || k == TAG_MAP)
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let human = s.is_human_readable();
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if human && !f.is_finite() => {
                let label = if f.is_nan() {
                    "NaN"
                } else if *f > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(TAG_FLOAT, label)?;
                m.end()
            }
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(b) if human => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(TAG_BYTES, &hex_encode(b))?;
                m.end()
            }
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::List(l) => l.serialize(s),
            Value::Map(map) if is_reserved_single_key(map) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(TAG_MAP, map)?;
                m.end()
            }
            Value::Map(map) => map.serialize(s),
        }
    }
}

/// Reads a value as the format presents it, without giving `$`-keys any meaning.
struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Lattice value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer does not fit in i64"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(RawSeed)? {
            out.push(v);
        }
        Ok(Value::List(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(k) = access.next_key::<String>()? {
            let v = access.next_value_seed(RawSeed)?;
            out.insert(k, v);
        }
        Ok(Value::Map(out))
    }
}

struct RawSeed;

impl<'de> de::DeserializeSeed<'de> for RawSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

/// Gives the JSON forms of bytes, non-finite floats and wrapped maps their meaning, top-down.
fn interpret(raw: Value) -> Result<Value, &'static str> {
    let interpret_entries = |m: BTreeMap<String, Value>| {
        m.into_iter()
            .map(|(k, v)| Ok((k, interpret(v)?)))
            .collect::<Result<BTreeMap<_, _>, _>>()
    };
    match raw {
        Value::List(items) => Ok(Value::List(
            items.into_iter().map(interpret).collect::<Result<_, _>>()?,
        )),
        Value::Map(map) if is_reserved_single_key(&map) => {
            let Some((key, inner)) = map.into_iter().next() else {
                return Ok(Value::Map(BTreeMap::new()));
            };
            match (key.as_str(), inner) {
                (TAG_BYTES, Value::String(h)) => {
                    hex_decode(&h).map(Value::Bytes).ok_or("bad hex in $bytes")
                }
                (TAG_FLOAT, Value::String(label)) => match label.as_str() {
                    "NaN" => Ok(Value::Float(f64::NAN)),
                    "inf" => Ok(Value::Float(f64::INFINITY)),
                    "-inf" => Ok(Value::Float(f64::NEG_INFINITY)),
                    _ => Err("bad $float label"),
                },
                (TAG_MAP, Value::Map(inner)) => Ok(Value::Map(interpret_entries(inner)?)),
                (_, inner) => Ok(Value::Map(BTreeMap::from([(key, interpret(inner)?)]))),
            }
        }
        Value::Map(map) => Ok(Value::Map(interpret_entries(map)?)),
        other => Ok(other),
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The tagged forms are interpreted whatever the format claims to be (see the type's
        // docs); in MessagePack they only occur as wrapped maps, since bytes and floats are native.
        let raw = d.deserialize_any(RawVisitor)?;
        interpret(raw).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms() {
        let v = Value::Map(BTreeMap::from([
            ("b".into(), Value::Bytes(vec![0xde, 0xad])),
            ("f".into(), Value::Float(f64::NEG_INFINITY)),
            ("i".into(), Value::Int(-3)),
        ]));
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(
            json,
            r#"{"b":{"$bytes":"dead"},"f":{"$float":"-inf"},"i":-3}"#
        );
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
    }

    #[test]
    fn reserved_keys_are_wrapped() {
        let v = Value::Map(BTreeMap::from([(
            "$bytes".into(),
            Value::String("zz".into()),
        )]));
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"{"$map":{"$bytes":"zz"}}"#);
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), v);
    }

    #[test]
    fn nan_equals_itself() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
    }
}
