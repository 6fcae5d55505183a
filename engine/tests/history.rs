//! Laws of the history helpers:
//! - a text diff is a valid edit script: its `equal` + `delete` runs are the old text and its
//!   `equal` + `insert` runs the new one, whatever the texts (multi-byte characters included);
//! - a restore delta, applied to the current document, brings every text and register back to
//!   the earlier version and leaves counters as they are; another replica that applies the same
//!   delta ends in the same state.

use lattice_engine::history::{DiffOp, diff_text};
use lattice_engine::{Document, HlcTimestamp, ReplicaId, Value};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short texts over a small alphabet (so diffs find matches), with multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('a'), Just('b'), Just('\n'), Just('é'), Just('😀')],
        0..40,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// An edit: (position fraction, delete count, insert text).
fn edits() -> impl Strategy<Value = Vec<(u8, u8, String)>> {
    proptest::collection::vec((any::<u8>(), 0u8..4, text()), 0..12)
}

fn edit(
    doc: &mut Document,
    name: &str,
    (at, del, ins): &(u8, u8, String),
) -> lattice_engine::Delta {
    // Positions in UTF-16 units, on character boundaries.
    let s = doc.text(name);
    let chars: Vec<char> = s.chars().collect();
    let i = if chars.is_empty() {
        0
    } else {
        usize::from(*at) % (chars.len() + 1)
    };
    let d = usize::from(*del).min(chars.len() - i);
    let units = |cs: &[char]| cs.iter().map(|c| c.len_utf16() as u32).sum::<u32>();
    let pos = units(&chars[..i]);
    let len = units(&chars[i..i + d]);
    let mut delta = if len > 0 {
        doc.text_delete(name, pos, len).expect("delete")
    } else {
        lattice_engine::Delta::default()
    };
    if !ins.is_empty() {
        let more = doc.text_insert(name, pos, ins).expect("insert");
        delta = lattice_engine::Delta::merge([&delta, &more]).expect("merge");
    }
    delta
}

fn stamp(time: u64, replica: u32) -> HlcTimestamp {
    HlcTimestamp::new(time, ReplicaId::new(replica).expect("replica"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn diff_is_a_valid_edit_script(old in text(), new in text()) {
        let mut a = String::new();
        let mut b = String::new();
        for e in diff_text(&old, &new) {
            prop_assert!(!e.text.is_empty());
            match e.op {
                DiffOp::Equal => { a.push_str(&e.text); b.push_str(&e.text); }
                DiffOp::Delete => a.push_str(&e.text),
                DiffOp::Insert => b.push_str(&e.text),
            }
        }
        prop_assert_eq!(a, old);
        prop_assert_eq!(b, new);
    }

    #[test]
    fn restore_brings_texts_and_registers_back(before in edits(), after in edits(), bump in 1u64..5) {
        let mut writer = Document::new(ReplicaId::new(7).expect("replica"));
        let mut log = Vec::new();
        for e in &before {
            log.push(edit(&mut writer, "body", e));
        }
        log.push(writer.register_set("title", Value::String("old".into()), stamp(10, 7)).expect("set"));
        log.push(writer.counter_increment("likes", 1).expect("inc"));
        let version = log.len();
        for e in &after {
            log.push(edit(&mut writer, "body", e));
            log.push(edit(&mut writer, "notes", e));
        }
        log.push(writer.register_set("title", Value::String("new".into()), stamp(20, 7)).expect("set"));
        log.push(writer.register_set("later", Value::Int(1), stamp(21, 7)).expect("set"));
        log.push(writer.counter_increment("likes", bump).expect("inc"));

        // The server's view: the version, and the current document.
        let server = ReplicaId::new(99).expect("replica");
        let mut then = Document::new(server);
        for d in &log[..version] { then.apply(d).expect("apply"); }
        let mut now = Document::new(server);
        for d in &log { now.apply(d).expect("apply"); }

        // A clock behind the current writes (stamped 20 and 21): the restore must still win.
        let mut t = 0;
        let (delta, report) = now.restore_delta(&then, || { t += 1; stamp(t, 99) }).expect("restore");
        let mut other = Document::new(ReplicaId::new(5).expect("replica"));
        for d in &log { other.apply(d).expect("apply"); }
        now.apply(&delta).expect("apply restore");
        other.apply(&delta).expect("apply restore");

        for doc in [&now, &other] {
            prop_assert_eq!(doc.text("body"), then.text("body"));
            prop_assert_eq!(doc.text("notes"), "");
            prop_assert_eq!(doc.register("title"), Some(&Value::String("old".into())));
            prop_assert_eq!(doc.register("later"), Some(&Value::Null));
            prop_assert_eq!(doc.counter("likes"), 1 + bump);
        }
        prop_assert_eq!(now.to_json(), other.to_json());
        prop_assert_eq!(report.counters_not_restored.get("likes").map(|c| (c.current, c.at_version)), Some((1 + bump, 1)));
    }
}
