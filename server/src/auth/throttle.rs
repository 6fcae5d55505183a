//! The throttle of failed authentication attempts, per address, with bounded memory.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Per-address throttle of failed authentication attempts, with bounded memory.
///
/// A governor token bucket per address counts failures. It is consulted only after a token
/// failed to verify, so it never refuses a valid token: a blocked address is one whose *failing*
/// attempts get [`AuthError::Throttled`] (with the time until a cell frees) instead of the
/// reason. When `max_tracked` addresses are remembered and none can be forgotten, a failure from
/// a new address counts as over the limit (fail closed: only failing requests are affected).
pub(super) struct FailureLimiter {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    max_tracked: usize,
}

impl fmt::Debug for FailureLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureLimiter")
            .field("tracked", &self.buckets.len())
            .field("max_tracked", &self.max_tracked)
            .finish_non_exhaustive()
    }
}

/// How long a failure from an address the throttle has no room for is told to wait.
pub(super) const UNTRACKED_RETRY_AFTER: Duration = Duration::from_secs(60);

impl FailureLimiter {
    pub(super) fn new(per_minute: u32, max_tracked: usize) -> FailureLimiter {
        let n = std::num::NonZeroU32::new(per_minute).unwrap_or(std::num::NonZeroU32::MIN);
        FailureLimiter {
            buckets: RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)),
            max_tracked: max_tracked.max(1),
        }
    }

    /// Counts a failure from `ip`; `Some(retry_after)` if it is over the limit.
    pub(super) fn failed(&self, ip: IpAddr) -> Option<Duration> {
        if self.buckets.len() >= self.max_tracked {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        if self.buckets.len() >= self.max_tracked {
            // No room to remember another address, and checking a key inserts it.
            return Some(UNTRACKED_RETRY_AFTER);
        }
        match self.buckets.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(self.buckets.clock().now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_throttled_per_address_with_bounded_memory() {
        let limiter = FailureLimiter::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        for _ in 0..3 {
            assert!(limiter.failed(a).is_none());
        }
        let wait = limiter.failed(a).expect("over the limit");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.failed(b).is_none());
        // Two addresses tracked, both recently active: a third fails closed.
        assert_eq!(limiter.failed(c), Some(UNTRACKED_RETRY_AFTER));
        assert!(limiter.buckets.len() <= 2);
    }
}
