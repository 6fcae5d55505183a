//! State-based counters: [`GCounter`] (grow-only) and [`PnCounter`] (increments and decrements).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ReplicaId;

/// A grow-only counter: one monotone count per replica.
///
/// **Invariants:** merge is the pointwise maximum, so it is commutative, associative and
/// idempotent; the value is the sum of the counts. A replica only ever raises its own entry.
/// Counts saturate at `u64::MAX` rather than wrap, which keeps merge monotone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GCounter {
    counts: BTreeMap<ReplicaId, u64>,
}

impl GCounter {
    /// A counter with no entries; its value is 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` to `replica`'s entry and returns the entry's new count.
    pub fn increment(&mut self, replica: ReplicaId, by: u64) -> u64 {
        let entry = self.counts.entry(replica).or_insert(0);
        *entry = entry.saturating_add(by);
        *entry
    }

    /// The counter's value: the sum of every replica's count (saturating).
    pub fn value(&self) -> u64 {
        self.counts
            .values()
            .fold(0u64, |acc, c| acc.saturating_add(*c))
    }

    /// The count contributed by one replica.
    pub fn get(&self, replica: ReplicaId) -> u64 {
        self.counts.get(&replica).copied().unwrap_or(0)
    }

    /// Pointwise maximum. Returns whether anything changed.
    pub fn merge(&mut self, other: &GCounter) -> bool {
        let mut changed = false;
        for (replica, count) in &other.counts {
            let entry = self.counts.entry(*replica).or_insert(0);
            if *count > *entry {
                *entry = *count;
                changed = true;
            }
        }
        changed
    }

    /// The entries of `self` that `known` lacks or holds lower: the smallest counter that brings
    /// `known` up to `self` when merged into it. `None` when `known` already holds `self`.
    ///
    /// An entry `known` lacks is sent even at zero, because merge keeps zero entries: without
    /// it, replicas synced by diff and replicas fed the original deltas would hold different
    /// counters.
    pub fn missing_from(&self, known: &GCounter) -> Option<GCounter> {
        let counts: BTreeMap<_, _> = crate::ordered::map(
            self.counts
                .iter()
                .filter(|(replica, count)| {
                    known
                        .counts
                        .get(*replica)
                        .is_none_or(|theirs| **count > *theirs)
                })
                .map(|(r, c)| (*r, *c)),
        );
        (!counts.is_empty()).then_some(GCounter { counts })
    }

    /// Whether `self` holds no less than `other` in every entry.
    pub fn covers(&self, other: &GCounter) -> bool {
        other.counts.iter().all(|(r, c)| self.get(*r) >= *c)
    }

    /// Per-replica counts, in replica order.
    pub fn entries(&self) -> impl Iterator<Item = (ReplicaId, u64)> + '_ {
        self.counts.iter().map(|(r, c)| (*r, *c))
    }

    /// Whether no replica has an entry (an entry at zero counts as one).
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Number of replicas with an entry.
    pub fn replicas(&self) -> usize {
        self.counts.len()
    }
}

/// A counter that goes up and down: two [`GCounter`]s, value = increments − decrements.
///
/// **Invariant:** merge merges both halves, so it inherits their laws.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    #[serde(rename = "p")]
    increments: GCounter,
    #[serde(rename = "n")]
    decrements: GCounter,
}

impl PnCounter {
    /// A counter with no entries; its value is 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `by` to `replica`'s increments (saturating at `u64::MAX`).
    pub fn increment(&mut self, replica: ReplicaId, by: u64) {
        self.increments.increment(replica, by);
    }

    /// Adds `by` to `replica`'s decrements (saturating at `u64::MAX`).
    pub fn decrement(&mut self, replica: ReplicaId, by: u64) {
        self.decrements.increment(replica, by);
    }

    /// Increments minus decrements, as `i128` so that no pair of `u64` sums can overflow it.
    pub fn value(&self) -> i128 {
        i128::from(self.increments.value()) - i128::from(self.decrements.value())
    }

    /// Merges both halves pointwise by maximum. Returns whether anything changed.
    pub fn merge(&mut self, other: &PnCounter) -> bool {
        let p = self.increments.merge(&other.increments);
        let n = self.decrements.merge(&other.decrements);
        p || n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u32) -> ReplicaId {
        ReplicaId::from_random(n)
    }

    #[test]
    fn gcounter_counts_per_replica() {
        let mut a = GCounter::new();
        a.increment(r(1), 2);
        a.increment(r(1), 3);
        let mut b = GCounter::new();
        b.increment(r(2), 10);
        assert!(a.merge(&b));
        assert!(!a.merge(&b));
        assert_eq!(a.value(), 15);
        assert_eq!(a.get(r(1)), 5);
        assert_eq!(b.missing_from(&a), None);
        assert_eq!(a.missing_from(&b).map(|m| m.value()), Some(5));
    }

    #[test]
    fn counts_saturate() {
        let mut a = GCounter::new();
        a.increment(r(1), u64::MAX);
        a.increment(r(1), 1);
        a.increment(r(2), 5);
        assert_eq!(a.get(r(1)), u64::MAX);
        assert_eq!(a.value(), u64::MAX);
    }

    #[test]
    fn pn_counter_goes_down() {
        let mut a = PnCounter::new();
        a.increment(r(1), 3);
        a.decrement(r(2), 5);
        assert_eq!(a.value(), -2);
    }
}
