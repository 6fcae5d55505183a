//! History helpers, computed on document views: text diffs ([`diff_text`]), what one change
//! did ([`summarize`], [`ChangeSummary`]) and what differs between two versions
//! ([`compare`], [`VersionDiff`]). [`Document::restore_delta`](crate::Document::restore_delta)
//! builds on [`diff_text`].
//!
//! Everything here is pure and bounded: a diff never takes more than
//! [`MAX_EDIT_DISTANCE`] steps per level. Two texts that differ more than that in characters are
//! compared line by line; more than that in lines, the differing middle is reported as one
//! deletion and one insertion. The result is always a valid edit script (deleting the `delete`
//! runs and inserting the `insert` runs turns the old text into the new one), only not always the
//! shortest.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Most edit steps the diff explores per level (characters, then lines) before it falls back to
/// a coarser result. Bounds time to `O((n + m) · MAX_EDIT_DISTANCE)` and memory to
/// `O(MAX_EDIT_DISTANCE²)`.
pub const MAX_EDIT_DISTANCE: usize = 1_000;

/// One run of a text diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffOp {
    /// The run is in both versions.
    Equal,
    /// The run is only in the new version.
    Insert,
    /// The run is only in the old version.
    Delete,
}

/// A run of text that is equal in both versions, inserted, or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextEdit {
    /// Whether the run is kept, inserted or deleted.
    pub op: DiffOp,
    /// The run's text, never empty.
    pub text: String,
}

/// The edit script that turns `old` into `new`, as runs in order: `equal` and `delete` runs
/// concatenate to `old`, `equal` and `insert` runs to `new`. Adjacent runs have different ops.
pub fn diff_text(old: &str, new: &str) -> Vec<TextEdit> {
    let prefix = common_prefix(old, new);
    let suffix = common_suffix(&old[prefix..], &new[prefix..]);
    let old_mid = &old[prefix..old.len() - suffix];
    let new_mid = &new[prefix..new.len() - suffix];
    let mut out = Vec::new();
    push(&mut out, DiffOp::Equal, &old[..prefix]);
    diff_middle(old_mid, new_mid, &mut out);
    push(&mut out, DiffOp::Equal, &old[old.len() - suffix..]);
    out
}

/// Characters (Unicode scalar values) inserted and deleted by an edit script.
pub fn count_changes(edits: &[TextEdit]) -> (u64, u64) {
    let mut inserted = 0u64;
    let mut deleted = 0u64;
    for e in edits {
        let n = e.text.chars().count() as u64;
        match e.op {
            DiffOp::Insert => inserted += n,
            DiffOp::Delete => deleted += n,
            DiffOp::Equal => {}
        }
    }
    (inserted, deleted)
}

fn push(out: &mut Vec<TextEdit>, op: DiffOp, text: &str) {
    if text.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.op == op => last.text.push_str(text),
        _ => out.push(TextEdit {
            op,
            text: text.to_owned(),
        }),
    }
}

/// Length in bytes of the longest common prefix, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a
        .as_bytes()
        .iter()
        .zip(b.as_bytes())
        .take_while(|(x, y)| x == y)
        .count();
    while !a.is_char_boundary(n) || !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Length in bytes of the longest common suffix, on a character boundary.
fn common_suffix(a: &str, b: &str) -> usize {
    let mut n = a
        .as_bytes()
        .iter()
        .rev()
        .zip(b.as_bytes().iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    while !a.is_char_boundary(a.len() - n) || !b.is_char_boundary(b.len() - n) {
        n -= 1;
    }
    n
}

/// Diffs two texts that share no prefix or suffix: by characters, else by lines, else whole.
fn diff_middle(old: &str, new: &str, out: &mut Vec<TextEdit>) {
    if old.is_empty() || new.is_empty() {
        push(out, DiffOp::Delete, old);
        push(out, DiffOp::Insert, new);
        return;
    }
    let a: Vec<&str> = split_chars(old);
    let b: Vec<&str> = split_chars(new);
    if let Some(runs) = myers(&a, &b, MAX_EDIT_DISTANCE) {
        emit(&a, &b, &runs, out);
        return;
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    if let Some(runs) = myers(&a, &b, MAX_EDIT_DISTANCE) {
        emit(&a, &b, &runs, out);
        return;
    }
    push(out, DiffOp::Delete, old);
    push(out, DiffOp::Insert, new);
}

fn split_chars(s: &str) -> Vec<&str> {
    s.char_indices()
        .map(|(i, c)| &s[i..i + c.len_utf8()])
        .collect()
}

fn emit(a: &[&str], b: &[&str], runs: &[(DiffOp, usize)], out: &mut Vec<TextEdit>) {
    let (mut i, mut j) = (0, 0);
    for &(op, n) in runs {
        match op {
            DiffOp::Equal => {
                a[i..i + n].iter().for_each(|t| push(out, op, t));
                i += n;
                j += n;
            }
            DiffOp::Delete => {
                a[i..i + n].iter().for_each(|t| push(out, op, t));
                i += n;
            }
            DiffOp::Insert => {
                b[j..j + n].iter().for_each(|t| push(out, op, t));
                j += n;
            }
        }
    }
}

/// Myers' O((n + m)·D) greedy diff. Returns runs of (op, token count), or `None` when the edit
/// distance exceeds `max_d`.
fn myers<T: PartialEq>(a: &[T], b: &[T], max_d: usize) -> Option<Vec<(DiffOp, usize)>> {
    let n = a.len() as isize;
    let m = b.len() as isize;
    let max = (n + m).min(max_d as isize);
    let offset = max + 1;
    let width = (2 * max + 3) as usize;
    let mut v = vec![0isize; width];
    // The V array after each step d, restricted to diagonals -d..=d.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    let mut found = None;
    'outer: for d in 0..=max {
        let mut k = -d;
        while k <= d {
            let idx = (k + offset) as usize;
            let mut x = if k == -d || (k != d && v[idx - 1] < v[idx + 1]) {
                v[idx + 1]
            } else {
                v[idx - 1] + 1
            };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[idx] = x;
            if x >= n && y >= m {
                trace.push(v[(offset - d) as usize..=(offset + d) as usize].to_vec());
                found = Some(d);
                break 'outer;
            }
            k += 2;
        }
        trace.push(v[(offset - d) as usize..=(offset + d) as usize].to_vec());
    }
    let d_final = found?;
    // Walk back from (n, m), collecting single steps in reverse.
    let mut steps: Vec<DiffOp> = Vec::new();
    let (mut x, mut y) = (n, m);
    for d in (1..=d_final).rev() {
        let prev = &trace[(d - 1) as usize];
        let get = |k: isize| prev[(k + d - 1) as usize];
        let k = x - y;
        let prev_k = if k == -d || (k != d && get(k - 1) < get(k + 1)) {
            k + 1
        } else {
            k - 1
        };
        let prev_x = get(prev_k);
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            steps.push(DiffOp::Equal);
            x -= 1;
            y -= 1;
        }
        steps.push(if prev_k == k + 1 {
            DiffOp::Insert
        } else {
            DiffOp::Delete
        });
        x = prev_x;
        y = prev_y;
    }
    while x > 0 && y > 0 {
        steps.push(DiffOp::Equal);
        x -= 1;
        y -= 1;
    }
    let mut runs: Vec<(DiffOp, usize)> = Vec::new();
    for op in steps.into_iter().rev() {
        match runs.last_mut() {
            Some((last, n)) if *last == op => *n += 1,
            _ => runs.push((op, 1)),
        }
    }
    Some(runs)
}

/// What happened to one text.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextChange {
    /// Characters (Unicode scalar values) inserted.
    pub inserted: u64,
    /// Characters deleted.
    pub deleted: u64,
}

/// A counter's value before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterChange {
    /// The value in the first view (0 when the counter is not in it).
    pub from: u64,
    /// The value in the second view (0 when the counter is not in it). Lower than `from` only
    /// when comparing back in time: a grow-only counter never goes down.
    pub to: u64,
}

/// A register's value before and after (`null` when it did not exist).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisterChange {
    /// The value in the first view, as JSON.
    pub from: Json,
    /// The value in the second view, as JSON.
    pub to: Json,
}

/// What one change (or a range of changes) did to a document, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeSummary {
    /// Per text whose content differs: characters inserted and deleted.
    pub texts: BTreeMap<String, TextChange>,
    /// Per counter whose value differs: the value before and after.
    pub counters: BTreeMap<String, CounterChange>,
    /// Per register whose value differs: the value before and after.
    pub registers: BTreeMap<String, RegisterChange>,
    /// Maps, arrays and XML roots whose content changed (named `maps/<name>` and so on).
    pub other: Vec<String>,
}

fn section<'a>(view: &'a Json, key: &str) -> Option<&'a serde_json::Map<String, Json>> {
    view.get(key).and_then(Json::as_object)
}

fn names(before: &Json, after: &Json, key: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in [before, after] {
        if let Some(m) = section(v, key) {
            out.extend(m.keys().cloned());
        }
    }
    out
}

fn entry<'a>(view: &'a Json, key: &str, name: &str) -> Option<&'a Json> {
    section(view, key).and_then(|m| m.get(name))
}

fn text_of<'a>(view: &'a Json, name: &str) -> &'a str {
    entry(view, "texts", name)
        .and_then(Json::as_str)
        .unwrap_or("")
}

fn counter_of(view: &Json, name: &str) -> u64 {
    entry(view, "counters", name)
        .and_then(Json::as_u64)
        .unwrap_or(0)
}

/// What differs between two JSON views ([`Document::to_json`](crate::Document::to_json)),
/// counted: characters inserted and deleted per text, counter values, register values.
pub fn summarize(before: &Json, after: &Json) -> ChangeSummary {
    let mut out = ChangeSummary::default();
    for name in names(before, after, "texts") {
        let (old, new) = (text_of(before, &name), text_of(after, &name));
        if old != new {
            let (inserted, deleted) = count_changes(&diff_text(old, new));
            out.texts.insert(name, TextChange { inserted, deleted });
        }
    }
    for name in names(before, after, "counters") {
        let (from, to) = (counter_of(before, &name), counter_of(after, &name));
        if from != to {
            out.counters.insert(name, CounterChange { from, to });
        }
    }
    for name in names(before, after, "registers") {
        let from = entry(before, "registers", &name)
            .cloned()
            .unwrap_or(Json::Null);
        let to = entry(after, "registers", &name)
            .cloned()
            .unwrap_or(Json::Null);
        if from != to {
            out.registers.insert(name, RegisterChange { from, to });
        }
    }
    for key in ["maps", "arrays", "xml"] {
        for name in names(before, after, key) {
            if entry(before, key, &name) != entry(after, key, &name) {
                out.other.push(format!("{key}/{name}"));
            }
        }
    }
    out
}

/// Longest register value shown in a description, in characters.
const DESCRIBE_VALUE_CHARS: usize = 40;

fn short_json(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() <= DESCRIBE_VALUE_CHARS {
        s
    } else {
        let mut t: String = s.chars().take(DESCRIBE_VALUE_CHARS - 1).collect();
        t.push('…');
        t
    }
}

impl ChangeSummary {
    /// Whether nothing differs (texts, counters, registers and other roots alike).
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
            && self.counters.is_empty()
            && self.registers.is_empty()
            && self.other.is_empty()
    }

    /// One line for people: `+12 −3 chars in "body"; counter likes +1; title := "Draft"`.
    /// A change that altered nothing visible reads `no visible change`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, t) in &self.texts {
            let mut s = String::new();
            if t.inserted > 0 {
                s.push_str(&format!("+{}", t.inserted));
            }
            if t.deleted > 0 {
                if !s.is_empty() {
                    s.push(' ');
                }
                s.push_str(&format!("\u{2212}{}", t.deleted));
            }
            parts.push(format!("{s} chars in {name:?}"));
        }
        for (name, c) in &self.counters {
            if c.to >= c.from {
                parts.push(format!("counter {name} +{}", c.to - c.from));
            } else {
                parts.push(format!("counter {name} {} \u{2192} {}", c.from, c.to));
            }
        }
        for (name, r) in &self.registers {
            parts.push(format!("{name} := {}", short_json(&r.to)));
        }
        for name in &self.other {
            parts.push(format!("{name} changed"));
        }
        if parts.is_empty() {
            "no visible change".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// Everything that differs between two versions, with the text diffs themselves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionDiff {
    /// Per text that differs: the edit script from the first version to the second.
    pub texts: BTreeMap<String, Vec<TextEdit>>,
    /// Per counter whose value differs: its value in each version.
    pub counters: BTreeMap<String, CounterChange>,
    /// Per register whose value differs: its value in each version.
    pub registers: BTreeMap<String, RegisterChange>,
    /// Maps, arrays and XML roots whose content differs.
    pub other: Vec<String>,
}

/// Compares two JSON views: text diffs per text, counters and registers from → to.
pub fn compare(from: &Json, to: &Json) -> VersionDiff {
    let summary = summarize(from, to);
    let texts = summary
        .texts
        .keys()
        .map(|name| {
            (
                name.clone(),
                diff_text(text_of(from, name), text_of(to, name)),
            )
        })
        .collect();
    VersionDiff {
        texts,
        counters: summary.counters,
        registers: summary.registers,
        other: summary.other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(edits: &[TextEdit]) -> (String, String) {
        let mut old = String::new();
        let mut new = String::new();
        for e in edits {
            match e.op {
                DiffOp::Equal => {
                    old.push_str(&e.text);
                    new.push_str(&e.text);
                }
                DiffOp::Delete => old.push_str(&e.text),
                DiffOp::Insert => new.push_str(&e.text),
            }
        }
        (old, new)
    }

    #[test]
    fn small_diffs_are_minimal() {
        let d = diff_text("hello world", "hello brave world");
        assert_eq!(count_changes(&d), (6, 0));
        let d = diff_text("abcdef", "abXdef");
        assert_eq!(count_changes(&d), (1, 1));
        let d = diff_text("kitten", "sitting");
        assert_eq!(count_changes(&d), (3, 2));
        assert_eq!(apply(&d), ("kitten".into(), "sitting".into()));
        assert!(diff_text("", "").is_empty());
    }

    #[test]
    fn multibyte_characters_split_cleanly() {
        let d = diff_text("héllo 😀 wörld", "héllo 😃 wörld");
        assert_eq!(count_changes(&d), (1, 1));
        assert_eq!(
            apply(&d),
            ("héllo 😀 wörld".into(), "héllo 😃 wörld".into())
        );
    }

    #[test]
    fn large_rewrites_fall_back_and_stay_valid() {
        let old: String = (0..5_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let new: String = (0..5_000)
            .map(|i| char::from(b'a' + ((i * 7 + 3) % 26) as u8))
            .collect();
        let d = diff_text(&old, &new);
        assert_eq!(apply(&d), (old, new));
    }

    #[test]
    fn summaries_read_well() {
        let before = serde_json::json!({"texts": {"body": "hello"}, "counters": {"likes": 1},
            "registers": {"title": "a"}});
        let after = serde_json::json!({"texts": {"body": "hello world"}, "counters": {"likes": 3},
            "registers": {"title": "b"}});
        let s = summarize(&before, &after);
        assert_eq!(
            s.describe(),
            "+6 chars in \"body\"; counter likes +2; title := \"b\""
        );
        assert_eq!(summarize(&after, &after).describe(), "no visible change");
    }
}
