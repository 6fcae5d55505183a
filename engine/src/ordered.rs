//! Building B-trees by insertion. `FromIterator` for `BTreeMap` and `BTreeSet` collects into a
//! `Vec` and sorts it first, and each element type sorted is its own copy of the standard
//! library's stable sort in the wasm client (about 1 KB gzipped each, docs/client.md, Size).
//! Inserting gives the same tree (a later duplicate key wins, as with `collect`).

use std::collections::{BTreeMap, BTreeSet};

/// `items.collect::<BTreeMap<_, _>>()`, without the sort.
pub(crate) fn map<K: Ord, V>(items: impl IntoIterator<Item = (K, V)>) -> BTreeMap<K, V> {
    let mut out = BTreeMap::new();
    for (k, v) in items {
        out.insert(k, v);
    }
    out
}

/// `items.collect::<BTreeSet<_>>()`, without the sort.
pub(crate) fn set<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    let mut out = BTreeSet::new();
    for item in items {
        out.insert(item);
    }
    out
}
