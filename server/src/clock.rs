//! The wall clock, read in one place. The engine reads no clock: the server passes these
//! readings in (`Room` methods take `now_ms`; the native client's HLC reads [`system_clock`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lattice_engine::NTP64;

/// Time since the Unix epoch (zero if the system clock is set before it).
pub(crate) fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Seconds since the Unix epoch (token expiry is in seconds).
pub(crate) fn now_secs() -> u64 {
    since_epoch().as_secs()
}

/// The wall clock as the engine's `ClockedHlc` reads it.
pub(crate) fn system_clock() -> NTP64 {
    NTP64::from(since_epoch())
}
