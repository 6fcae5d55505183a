//! The JSON view of a document ([`Document::to_json`]), for admins, history and tests.

use yrs::types::text::YChange;
use yrs::types::xml::XmlOut;
use yrs::{
    Any, Array, ArrayRef, GetString, Map as _, MapRef, Out, ReadTxn, Text as _, TextRef, Transact,
    Xml as _, XmlElementRef, XmlFragment as _, XmlTextRef,
};

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
                        maps.insert(name, map_to_json(&m, &txn));
                    }
                }
                Out::YArray(a) => {
                    if yrs::Array::len(&a, &txn) > 0 {
                        arrays.insert(name, array_to_json(&a, &txn));
                    }
                }
                Out::YXmlFragment(x) => {
                    let mut s = String::new();
                    xml_children(&mut s, x.children(&txn), &txn);
                    insert_xml(&mut xml, name, s);
                }
                Out::YXmlElement(x) => {
                    insert_xml(&mut xml, name, xml_string(XmlOut::Element(x), &txn));
                }
                Out::YXmlText(x) => {
                    insert_xml(&mut xml, name, xml_string(XmlOut::Text(x), &txn));
                }
                Out::UndefinedRef(branch) => {
                    let as_map = MapRef::from(branch);
                    if yrs::Map::len(&as_map, &txn) > 0 {
                        maps.insert(name, map_to_json(&as_map, &txn));
                        continue;
                    }
                    let as_text = TextRef::from(branch).get_string(&txn);
                    let as_array = ArrayRef::from(branch);
                    if !as_text.is_empty() {
                        texts.insert(name, J::String(as_text));
                    } else if yrs::Array::len(&as_array, &txn) > 0 {
                        arrays.insert(name, array_to_json(&as_array, &txn));
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

// The conversions below are yrs' `ToJson` and XML `get_string`, but deterministic: yrs writes
// map entries, XML attributes and formatting attributes in hash order, which differs between
// two loads of one document (a fuzz input showed a document and its own snapshot disagreeing).
// Keys are written sorted here.

fn array_to_json<T: ReadTxn>(a: &ArrayRef, txn: &T) -> serde_json::Value {
    serde_json::Value::Array(a.iter(txn).map(|v| out_to_json(&v, txn)).collect())
}

fn map_to_json<T: ReadTxn>(m: &MapRef, txn: &T) -> serde_json::Value {
    // serde_json's map keeps keys sorted.
    serde_json::Value::Object(
        m.iter(txn)
            .map(|(k, v)| (k.to_owned(), out_to_json(&v, txn)))
            .collect(),
    )
}

fn out_to_json<T: ReadTxn>(out: &Out, txn: &T) -> serde_json::Value {
    use serde_json::Value as J;
    match out {
        Out::Any(a) => any_to_json(a),
        Out::YText(t) => J::String(t.get_string(txn)),
        Out::YArray(a) => array_to_json(a, txn),
        Out::YMap(m) => map_to_json(m, txn),
        Out::YXmlElement(x) => J::String(xml_string(XmlOut::Element(x.clone()), txn)),
        Out::YXmlText(x) => J::String(xml_string(XmlOut::Text(x.clone()), txn)),
        Out::YXmlFragment(x) => J::String(xml_string(XmlOut::Fragment(x.clone()), txn)),
        Out::YDoc(doc) => serde_json::json!({ "guid": doc.guid().as_ref() }),
        Out::UndefinedRef(_) => J::Null,
    }
}

/// An XML node as text, attributes in key order.
fn xml_string<T: ReadTxn>(node: XmlOut, txn: &T) -> String {
    let mut s = String::new();
    write_xml(&mut s, node, txn);
    s
}

fn xml_children<T: ReadTxn>(s: &mut String, children: yrs::types::xml::XmlNodes<'_, T>, txn: &T) {
    for child in children {
        write_xml(s, child, txn);
    }
}

fn write_xml<T: ReadTxn>(s: &mut String, node: XmlOut, txn: &T) {
    match node {
        XmlOut::Element(e) => write_element(s, &e, txn),
        XmlOut::Fragment(f) => xml_children(s, f.children(txn), txn),
        XmlOut::Text(t) => write_text(s, &t, txn),
    }
}

fn write_element<T: ReadTxn>(s: &mut String, e: &XmlElementRef, txn: &T) {
    let tag = e.tag().to_string();
    s.push('<');
    s.push_str(&tag);
    let mut attrs: Vec<(String, String)> = e
        .attributes(txn)
        .map(|(k, v)| (k.to_owned(), out_text(&v, txn)))
        .collect();
    attrs.sort();
    for (k, v) in attrs {
        s.push_str(&format!(" {k}=\"{v}\""));
    }
    s.push('>');
    xml_children(s, e.children(txn), txn);
    s.push_str(&format!("</{tag}>"));
}

/// Rich text as yrs writes it (formatting attributes as tags around each run), in key order.
fn write_text<T: ReadTxn>(s: &mut String, t: &XmlTextRef, txn: &T) {
    for d in t.diff(txn, YChange::identity) {
        let mut attrs: Vec<(String, &Any)> = d
            .attributes
            .as_deref()
            .map(|a| a.iter().map(|(k, v)| (k.to_string(), v)).collect())
            .unwrap_or_default();
        attrs.sort_by(|x, y| x.0.cmp(&y.0));
        for (name, value) in &attrs {
            s.push('<');
            s.push_str(name);
            if let Any::Map(m) = value {
                let mut inner: Vec<(&String, &Any)> = m.iter().collect();
                inner.sort_by(|x, y| x.0.cmp(y.0));
                for (k, v) in inner {
                    s.push_str(&format!(" {k}=\"{}\"", any_text(v)));
                }
            }
            s.push('>');
        }
        if let Out::Any(any) = &d.insert {
            s.push_str(&any_text(any));
        }
        for (name, _) in attrs.iter().rev() {
            s.push_str(&format!("</{name}>"));
        }
    }
}

/// A value as text: a string as it is, anything else as JSON (keys sorted).
fn any_text(any: &Any) -> String {
    match any {
        Any::String(s) => s.to_string(),
        other => any_to_json(other).to_string(),
    }
}

fn out_text<T: ReadTxn>(out: &Out, txn: &T) -> String {
    match out {
        Out::Any(a) => any_text(a),
        other => match out_to_json(other, txn) {
            serde_json::Value::String(s) => s,
            json => json.to_string(),
        },
    }
}

/// An XML root's string, unless it is empty (see [`Document::to_json`]).
fn insert_xml(xml: &mut serde_json::Map<String, serde_json::Value>, name: String, s: String) {
    if !s.is_empty() {
        xml.insert(name, serde_json::Value::String(s));
    }
}
