//! The JSON view of a document ([`Document::to_json`]), for admins, history and tests.

use yrs::{Any, ArrayRef, GetString, MapRef, Out, ReadTxn, TextRef, Transact};

use super::Document;

impl Document {
    /// A JSON view of the content, for admins and tests:
    /// `{"texts": {..}, "maps": {..}, "arrays": {..}, "xml": {..}, "counters": {..}, "registers": {..}}`.
    ///
    /// Yjs root types that no local code has declared (the usual case on the server) are
    /// classified by content: keyed entries make a map, string content a text, other sequence
    /// content an array. An empty root, declared or not, is left out: Yjs cannot tell a root
    /// that was emptied from one an update only named, and a snapshot keeps only the roots that
    /// hold items (and not whether they were declared), so showing it would make a document and
    /// its own snapshot differ.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value as J};
        let mut texts = Map::new();
        let mut maps = Map::new();
        let mut arrays = Map::new();
        let mut xml = Map::new();
        let txn = self.ydoc.transact();
        for (name, out) in txn.root_refs() {
            let name = name.to_owned();
            match out {
                Out::YText(t) => {
                    let text = t.get_string(&txn);
                    if !text.is_empty() {
                        texts.insert(name, J::String(text));
                    }
                }
                Out::YMap(m) => {
                    if yrs::Map::len(&m, &txn) > 0 {
                        maps.insert(name, any_to_json(&yrs::types::ToJson::to_json(&m, &txn)));
                    }
                }
                Out::YArray(a) => {
                    if yrs::Array::len(&a, &txn) > 0 {
                        arrays.insert(name, any_to_json(&yrs::types::ToJson::to_json(&a, &txn)));
                    }
                }
                Out::YXmlFragment(x) => {
                    insert_xml(&mut xml, name, x.get_string(&txn));
                }
                Out::YXmlElement(x) => {
                    insert_xml(&mut xml, name, x.get_string(&txn));
                }
                Out::YXmlText(x) => {
                    insert_xml(&mut xml, name, x.get_string(&txn));
                }
                Out::UndefinedRef(branch) => {
                    let as_map = MapRef::from(branch);
                    if yrs::Map::len(&as_map, &txn) > 0 {
                        maps.insert(
                            name,
                            any_to_json(&yrs::types::ToJson::to_json(&as_map, &txn)),
                        );
                        continue;
                    }
                    let as_text = TextRef::from(branch).get_string(&txn);
                    let as_array = ArrayRef::from(branch);
                    if !as_text.is_empty() {
                        texts.insert(name, J::String(as_text));
                    } else if yrs::Array::len(&as_array, &txn) > 0 {
                        arrays.insert(
                            name,
                            any_to_json(&yrs::types::ToJson::to_json(&as_array, &txn)),
                        );
                    }
                }
                Out::Any(_) | Out::YDoc(_) => {}
            }
        }
        let counters: Map<String, J> = self
            .counters
            .iter()
            .map(|(n, c)| (n.clone(), J::from(c.value())))
            .collect();
        let registers: Map<String, J> = self
            .registers
            .iter()
            .map(|(n, r)| {
                (
                    n.clone(),
                    serde_json::to_value(r.value()).unwrap_or(J::Null),
                )
            })
            .collect();
        serde_json::json!({
            "texts": texts,
            "maps": maps,
            "arrays": arrays,
            "xml": xml,
            "counters": counters,
            "registers": registers,
        })
    }
}

fn any_to_json(any: &Any) -> serde_json::Value {
    use serde_json::Value as J;
    match any {
        Any::Null | Any::Undefined => J::Null,
        Any::Bool(b) => J::Bool(*b),
        Any::Number(yrs::any::Number::Int(i)) => J::from(*i),
        Any::Number(yrs::any::Number::Float(f)) => {
            serde_json::Number::from_f64(*f).map_or(J::Null, J::Number)
        }
        Any::String(s) => J::String(s.to_string()),
        Any::Buffer(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
        Any::Array(items) => J::Array(items.iter().map(any_to_json).collect()),
        Any::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), any_to_json(v))).collect()),
    }
}

/// An XML root's string, unless it is empty (see [`Document::to_json`]).
fn insert_xml(xml: &mut serde_json::Map<String, serde_json::Value>, name: String, s: String) {
    if !s.is_empty() {
        xml.insert(name, serde_json::Value::String(s));
    }
}
