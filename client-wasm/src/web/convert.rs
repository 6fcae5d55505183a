//! Conversions between JavaScript values and [`Value`], written out by hand so that each JS type
//! has one obvious counterpart: integers stay integers, `Uint8Array` is bytes, plain objects are
//! maps with string keys.

use std::collections::BTreeMap;

use js_sys::{Array, ArrayBuffer, BigInt, Number, Object, Reflect, Uint8Array};
use lattice_engine::Value;
use lattice_engine::protocol::MAX_NESTING;
use wasm_bindgen::{JsCast, JsValue};

/// Largest integer a JS number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A JS value that has no [`Value`] counterpart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "{what} cannot be stored in a register or presence (use null, boolean, number, bigint, string, Uint8Array, array or plain object)"
    )]
    Unsupported { what: String },
    #[error("bigint {text} does not fit in 64 bits")]
    BigIntRange { text: String },
    #[error("value is nested deeper than {MAX_NESTING} levels")]
    TooDeep,
}

/// Converts a JS value into a [`Value`]. Numbers that are safe integers become `Int`, other
/// numbers `Float`; `undefined` is `null`.
pub fn value_from_js(v: &JsValue) -> Result<Value, ValueError> {
    from_js(v, 0)
}

fn from_js(v: &JsValue, depth: usize) -> Result<Value, ValueError> {
    if depth > MAX_NESTING {
        return Err(ValueError::TooDeep);
    }
    if v.is_null() || v.is_undefined() {
        return Ok(Value::Null);
    }
    if let Some(b) = v.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Some(f) = v.as_f64() {
        // A safe integer converts exactly.
        #[allow(clippy::cast_possible_truncation)]
        return Ok(if Number::is_safe_integer(v) {
            Value::Int(f as i64)
        } else {
            Value::Float(f)
        });
    }
    if let Some(s) = v.as_string() {
        return Ok(Value::String(s));
    }
    if v.is_bigint() {
        let text = v
            .unchecked_ref::<BigInt>()
            .to_string(10)
            .map(String::from)
            .unwrap_or_default();
        return text
            .parse()
            .map(Value::Int)
            .map_err(|_| ValueError::BigIntRange { text });
    }
    if let Some(bytes) = v.dyn_ref::<Uint8Array>() {
        return Ok(Value::Bytes(bytes.to_vec()));
    }
    if let Some(buffer) = v.dyn_ref::<ArrayBuffer>() {
        return Ok(Value::Bytes(Uint8Array::new(buffer).to_vec()));
    }
    if Array::is_array(v) {
        let array: &Array = v.unchecked_ref();
        return array
            .iter()
            .map(|item| from_js(&item, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::List);
    }
    if v.is_object() && !v.is_function() {
        let object: &Object = v.unchecked_ref();
        let proto = Object::get_prototype_of(v);
        let plain = Object::get_prototype_of(&Object::new().into());
        if proto.is_null() || proto == plain {
            let mut map = BTreeMap::new();
            for key in Object::keys(object).iter() {
                let Some(name) = key.as_string() else {
                    continue;
                };
                let item = Reflect::get(v, &key).unwrap_or(JsValue::UNDEFINED);
                map.insert(name, from_js(&item, depth + 1)?);
            }
            return Ok(Value::Map(map));
        }
    }
    Err(ValueError::Unsupported {
        what: v.js_typeof().as_string().unwrap_or_else(|| "value".into()),
    })
}

/// Converts a [`Value`] into a JS value: integers within the safe range are numbers, larger ones
/// `bigint`s; bytes are a `Uint8Array`; maps are plain objects.
pub fn value_to_js(v: &Value) -> JsValue {
    match v {
        Value::Null => JsValue::NULL,
        Value::Bool(b) => JsValue::from_bool(*b),
        #[allow(clippy::cast_precision_loss)]
        Value::Int(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => {
            JsValue::from_f64(*i as f64)
        }
        Value::Int(i) => BigInt::from(*i).into(),
        Value::Float(f) => JsValue::from_f64(*f),
        Value::String(s) => JsValue::from_str(s),
        Value::Bytes(b) => Uint8Array::from(b.as_slice()).into(),
        Value::List(items) => items.iter().map(value_to_js).collect::<Array>().into(),
        Value::Map(map) => {
            let object = Object::new();
            for (key, item) in map {
                // Setting a property on a fresh plain object cannot fail.
                let _ = Reflect::set(&object, &JsValue::from_str(key), &value_to_js(item));
            }
            object.into()
        }
    }
}
