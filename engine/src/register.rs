//! [`LwwRegister`]: last writer wins, by hybrid logical time.

use serde::{Deserialize, Serialize};

use crate::HlcTimestamp;

/// A register whose value is the one written at the highest (HLC timestamp, replica id).
///
/// **Invariants:** merge keeps the greater of the two writes, so it is commutative, associative
/// and idempotent. Stamps from different replicas never tie; two writes with the very same stamp
/// (only possible from a misbehaving replica) are ordered by value, so even then the result does
/// not depend on arrival order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwRegister<V> {
    value: V,
    stamp: HlcTimestamp,
}

impl<V: Ord + Clone> LwwRegister<V> {
    /// A register holding `value`, written at `stamp`.
    pub fn new(value: V, stamp: HlcTimestamp) -> Self {
        Self { value, stamp }
    }

    /// The value of the winning write.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The stamp of the winning write.
    pub fn stamp(&self) -> HlcTimestamp {
        self.stamp
    }

    fn wins_over(&self, other: &Self) -> bool {
        (self.stamp, &self.value) > (other.stamp, &other.value)
    }

    /// Writes `value` if `stamp` orders after the current write. Returns whether it did.
    pub fn set(&mut self, value: V, stamp: HlcTimestamp) -> bool {
        self.merge(&LwwRegister::new(value, stamp))
    }

    /// Keeps the winning write of the two. Returns whether `self` changed.
    pub fn merge(&mut self, other: &Self) -> bool {
        if other.wins_over(self) {
            self.value = other.value.clone();
            self.stamp = other.stamp;
            true
        } else {
            false
        }
    }
}
