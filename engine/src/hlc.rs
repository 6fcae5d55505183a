//! Hybrid logical clocks, built on `uhlc`, with the physical clock injected by the driver.
//!
//! The engine never reads the time itself: [`Hlc::new`] takes a `fn() -> NTP64` (the form
//! `uhlc::HLCBuilder::with_clock` accepts). The server passes the system clock, the browser
//! client passes `Date.now()`, and tests pass [`manual_clock`], a per-thread clock they move by
//! hand. `NTP64` here counts from the Unix epoch, as `uhlc` does.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use uhlc::NTP64;

use crate::ReplicaId;

/// Default bound on how far a remote timestamp may run ahead of the local clock.
pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_secs(60);

/// A point in hybrid logical time, stamped by one replica.
///
/// **Invariant:** ordered by `time` and then by `replica`, so two stamps from different replicas
/// never compare equal and last-writer-wins never depends on arrival order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HlcTimestamp {
    /// 64-bit NTP-format time since the Unix epoch (upper 32 bits seconds, lower 32 bits
    /// fraction); the lowest bits carry the logical counter.
    pub time: u64,
    pub replica: ReplicaId,
}

impl HlcTimestamp {
    pub const fn new(time: u64, replica: ReplicaId) -> Self {
        Self { time, replica }
    }

    /// Milliseconds since the Unix epoch, for display (the logical part is dropped).
    pub fn unix_ms(&self) -> u64 {
        u64::try_from(NTP64(self.time).to_duration().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Ord for HlcTimestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.replica).cmp(&(other.time, other.replica))
    }
}

impl PartialOrd for HlcTimestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", NTP64(self.time), self.replica)
    }
}

/// A remote timestamp ran further ahead of the local clock than the configured drift allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp from replica {replica} is {ahead_ms} ms ahead of the local clock (limit {max_drift_ms} ms)"
)]
pub struct ClockDriftError {
    pub replica: ReplicaId,
    pub ahead_ms: u64,
    pub max_drift_ms: u64,
}

/// One replica's hybrid logical clock.
///
/// **Invariant:** every timestamp from [`Hlc::tick`] is greater than every timestamp this clock
/// produced or accepted through [`Hlc::observe`] before, whatever the physical clock does.
pub struct Hlc {
    inner: uhlc::HLC,
    replica: ReplicaId,
    clock: fn() -> NTP64,
    max_drift: Duration,
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc")
            .field("replica", &self.replica)
            .field("max_drift", &self.max_drift)
            .finish_non_exhaustive()
    }
}

impl Hlc {
    /// A clock for `replica` that reads physical time from `clock` and refuses remote timestamps
    /// more than `max_drift` ahead of it.
    pub fn new(replica: ReplicaId, clock: fn() -> NTP64, max_drift: Duration) -> Self {
        let id = uhlc::ID::from(
            std::num::NonZeroU128::new(u128::from(replica.get()))
                .unwrap_or(std::num::NonZeroU128::MIN),
        );
        let inner = uhlc::HLCBuilder::new()
            .with_id(id)
            .with_clock(clock)
            .with_max_delta(max_drift)
            .build();
        Self {
            inner,
            replica,
            clock,
            max_drift,
        }
    }

    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// A new timestamp, greater than any seen so far.
    pub fn tick(&self) -> HlcTimestamp {
        let ts = self.inner.new_timestamp();
        HlcTimestamp::new(ts.get_time().as_u64(), self.replica)
    }

    /// Folds a remote timestamp into this clock so later ticks order after it. A timestamp
    /// further ahead than the drift bound is refused and leaves the clock untouched.
    pub fn observe(&self, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        let remote = uhlc::Timestamp::new(NTP64(ts.time), *self.inner.get_id());
        self.inner.update_with_timestamp(&remote).map_err(|_| {
            let now = (self.clock)();
            let ahead = NTP64(ts.time.saturating_sub(now.as_u64())).to_duration();
            ClockDriftError {
                replica: ts.replica,
                ahead_ms: u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX),
                max_drift_ms: u64::try_from(self.max_drift.as_millis()).unwrap_or(u64::MAX),
            }
        })
    }

    /// Checks a remote timestamp against the drift bound without moving the clock.
    pub fn check_drift(&self, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        let now = (self.clock)().as_u64();
        let bound = now.saturating_add(NTP64::from(self.max_drift).as_u64());
        if ts.time > bound {
            let ahead = NTP64(ts.time - now).to_duration();
            return Err(ClockDriftError {
                replica: ts.replica,
                ahead_ms: u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX),
                max_drift_ms: u64::try_from(self.max_drift.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }
}

/// Converts milliseconds since the Unix epoch to `NTP64`, for drivers whose clock speaks
/// milliseconds (the browser's `Date.now()`).
pub fn ntp64_from_unix_ms(ms: u64) -> NTP64 {
    NTP64::from(Duration::from_millis(ms))
}

std::thread_local! {
    static MANUAL_NOW_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A clock for tests and simulations: reads the current thread's manual time, moved with
/// [`set_manual_clock_ms`]. Each test thread has its own.
pub fn manual_clock() -> NTP64 {
    ntp64_from_unix_ms(MANUAL_NOW_MS.with(|c| c.get()))
}

/// Sets the time [`manual_clock`] returns on this thread.
pub fn set_manual_clock_ms(ms: u64) {
    MANUAL_NOW_MS.with(|c| c.set(ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_monotone_when_the_clock_goes_back() {
        set_manual_clock_ms(10_000);
        let hlc = Hlc::new(ReplicaId::from_random(7), manual_clock, DEFAULT_MAX_DRIFT);
        let a = hlc.tick();
        set_manual_clock_ms(5_000);
        let b = hlc.tick();
        assert!(b > a);
        assert_eq!(a.unix_ms(), 10_000);
    }

    #[test]
    fn drift_is_refused() {
        set_manual_clock_ms(1_000);
        let hlc = Hlc::new(
            ReplicaId::from_random(1),
            manual_clock,
            Duration::from_secs(1),
        );
        let far = HlcTimestamp::new(
            ntp64_from_unix_ms(5_000).as_u64(),
            ReplicaId::from_random(2),
        );
        let err = hlc.observe(far).unwrap_err();
        assert_eq!(err.max_drift_ms, 1_000);
        assert_eq!(err.ahead_ms, 4_000);
        assert!(hlc.check_drift(far).is_err());
        assert!(hlc.tick() < far);
    }
}
