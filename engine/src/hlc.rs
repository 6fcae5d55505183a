//! Hybrid logical clocks. The engine never reads the time: the driver passes it in.
//!
//! [`Hlc`] takes the physical time as an argument, as milliseconds since the Unix epoch
//! (`now_ms`, the driver's wall time), like every other time in the engine; the server's
//! [`Room`](crate::sync::Room) passes it on from its driver. [`ClockedHlc`] is an `Hlc` that
//! reads a clock function (`fn() -> NTP64`) instead, for the client's
//! [`Session`](crate::sync::Session), whose edits stamp register writes without a time at
//! hand: the native client passes the system clock, the browser client `Date.now()`, and tests
//! [`manual_clock`], a per-thread clock they move by hand.
//!
//! The clock follows `uhlc` (whose `NTP64` it uses): times are NTP64 counted from the Unix
//! epoch, the lowest 4 bits are a logical counter (physical readings have them cleared), a
//! tick is the physical time if that is ahead of the last time, else the last time plus one,
//! and a remote timestamp further ahead of the physical time than the drift bound is refused.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use uhlc::NTP64;

use crate::ReplicaId;

/// Default bound on how far a remote timestamp may run ahead of the local clock.
pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_secs(60);

/// The lowest bits of an NTP64 time that hold the logical counter (`uhlc::CSIZE` bits).
const LOGICAL_MASK: u64 = (1 << uhlc::CSIZE) - 1;

/// A point in hybrid logical time, stamped by one replica.
///
/// **Invariant:** ordered by `time` and then by `replica`, so two stamps from different replicas
/// never compare equal and last-writer-wins never depends on arrival order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HlcTimestamp {
    /// 64-bit NTP-format time since the Unix epoch (upper 32 bits seconds, lower 32 bits
    /// fraction); the lowest bits carry the logical counter.
    pub time: u64,
    /// The replica that stamped it; breaks ties between equal times.
    pub replica: ReplicaId,
}

impl HlcTimestamp {
    /// A stamp at NTP64 time `time` (see [`HlcTimestamp::time`]) by `replica`.
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
    /// The replica that stamped the refused timestamp.
    pub replica: ReplicaId,
    /// How far the timestamp is ahead of the local clock, in milliseconds.
    pub ahead_ms: u64,
    /// The drift bound the clock was built with, in milliseconds.
    pub max_drift_ms: u64,
}

/// One replica's hybrid logical clock; the physical time is an argument of every call.
///
/// **Invariant:** every timestamp from [`Hlc::tick`] is greater than every timestamp this clock
/// produced or accepted through [`Hlc::observe`] before, whatever times it is given (they may
/// go backwards).
#[derive(Debug)]
pub struct Hlc {
    replica: ReplicaId,
    max_drift: Duration,
    /// The latest time this clock produced or accepted (NTP64; 0 before the first).
    last: u64,
}

impl Hlc {
    /// A clock for `replica` that refuses remote timestamps more than `max_drift` ahead of the
    /// physical time it is given.
    pub fn new(replica: ReplicaId, max_drift: Duration) -> Self {
        Self {
            replica,
            max_drift,
            last: 0,
        }
    }

    /// The replica whose stamps this clock makes.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// A new timestamp at wall time `now_ms`, greater than any seen so far.
    pub fn tick(&mut self, now_ms: u64) -> HlcTimestamp {
        self.tick_at(ntp64_from_unix_ms(now_ms))
    }

    /// Folds a remote timestamp into this clock at wall time `now_ms`, so later ticks order
    /// after it. A timestamp further ahead than the drift bound is refused and leaves the clock
    /// untouched.
    pub fn observe(&mut self, now_ms: u64, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        self.observe_at(ntp64_from_unix_ms(now_ms), ts)
    }

    /// Checks a remote timestamp against the drift bound at wall time `now_ms`, without moving
    /// the clock: what passes here, [`Hlc::observe`] at the same time accepts.
    pub fn check_drift(&self, now_ms: u64, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        self.check_drift_at(ntp64_from_unix_ms(now_ms), ts)
    }

    fn tick_at(&mut self, now: NTP64) -> HlcTimestamp {
        let physical = now.as_u64() & !LOGICAL_MASK;
        self.last = if physical > self.last & !LOGICAL_MASK {
            physical
        } else {
            self.last.saturating_add(1)
        };
        HlcTimestamp::new(self.last, self.replica)
    }

    fn observe_at(&mut self, now: NTP64, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        self.check_drift_at(now, ts)?;
        let physical = now.as_u64() & !LOGICAL_MASK;
        let max = physical.max(ts.time).max(self.last);
        self.last = if max == physical {
            physical
        } else if max == ts.time {
            ts.time.saturating_add(1)
        } else {
            self.last.saturating_add(1)
        };
        Ok(())
    }

    fn check_drift_at(&self, now: NTP64, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        let physical = now.as_u64() & !LOGICAL_MASK;
        let max_drift = NTP64::from(self.max_drift).as_u64();
        if ts.time > physical && ts.time - physical > max_drift {
            let ahead = NTP64(ts.time.saturating_sub(now.as_u64())).to_duration();
            return Err(ClockDriftError {
                replica: ts.replica,
                ahead_ms: u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX),
                max_drift_ms: u64::try_from(self.max_drift.as_millis()).unwrap_or(u64::MAX),
            });
        }
        Ok(())
    }
}

/// An [`Hlc`] that reads its physical time from a clock function, for a driver that has no
/// wall time at hand when it stamps (the client [`Session`](crate::sync::Session)'s edits).
pub struct ClockedHlc {
    hlc: Hlc,
    clock: fn() -> NTP64,
}

impl fmt::Debug for ClockedHlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockedHlc")
            .field("hlc", &self.hlc)
            .finish_non_exhaustive()
    }
}

impl ClockedHlc {
    /// A clock for `replica` that reads physical time from `clock` and refuses remote timestamps
    /// more than `max_drift` ahead of it.
    pub fn new(replica: ReplicaId, clock: fn() -> NTP64, max_drift: Duration) -> Self {
        Self {
            hlc: Hlc::new(replica, max_drift),
            clock,
        }
    }

    /// The replica whose stamps this clock makes.
    pub fn replica(&self) -> ReplicaId {
        self.hlc.replica
    }

    /// [`Hlc::tick`] at the clock's time.
    pub fn tick(&mut self) -> HlcTimestamp {
        self.hlc.tick_at((self.clock)())
    }

    /// [`Hlc::observe`] at the clock's time.
    pub fn observe(&mut self, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        self.hlc.observe_at((self.clock)(), ts)
    }

    /// [`Hlc::check_drift`] at the clock's time.
    pub fn check_drift(&self, ts: HlcTimestamp) -> Result<(), ClockDriftError> {
        self.hlc.check_drift_at((self.clock)(), ts)
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
    fn ticks_are_monotone_when_the_time_goes_back() {
        let mut hlc = Hlc::new(ReplicaId::from_random(7), DEFAULT_MAX_DRIFT);
        let a = hlc.tick(10_000);
        let b = hlc.tick(5_000);
        assert!(b > a);
        assert_eq!(a.unix_ms(), 10_000);
    }

    #[test]
    fn a_clocked_hlc_ticks_at_its_clock() {
        set_manual_clock_ms(10_000);
        let mut hlc = ClockedHlc::new(ReplicaId::from_random(7), manual_clock, DEFAULT_MAX_DRIFT);
        let a = hlc.tick();
        set_manual_clock_ms(5_000);
        let b = hlc.tick();
        assert!(b > a);
        assert_eq!(a.unix_ms(), 10_000);
    }

    #[test]
    fn drift_is_refused() {
        let mut hlc = Hlc::new(ReplicaId::from_random(1), Duration::from_secs(1));
        let far = HlcTimestamp::new(
            ntp64_from_unix_ms(5_000).as_u64(),
            ReplicaId::from_random(2),
        );
        let err = hlc.observe(1_000, far).unwrap_err();
        assert_eq!(err.max_drift_ms, 1_000);
        assert_eq!(err.ahead_ms, 4_000);
        assert!(hlc.check_drift(1_000, far).is_err());
        assert!(hlc.tick(1_000) < far);
        assert!(hlc.check_drift(4_000, far).is_ok());
    }
}
