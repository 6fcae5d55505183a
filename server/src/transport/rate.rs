//! Rate limits: token buckets over messages and bytes, per connection for WebSockets (checked
//! per frame with the number of messages the frame carries) and per principal for the HTTP
//! transports ([`HttpRate`]).

use std::num::NonZeroU32;
use std::sync::OnceLock;

use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Limits;

pub(crate) fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

/// One clock for every connection's limiters. A new governor clock calibrates itself (CPUID,
/// a trap to the hypervisor on a VM): two per connection were ≈ 5 % of the server's CPU under
/// the ingest bench's 10,000 connections.
fn clock() -> DefaultClock {
    static CLOCK: OnceLock<DefaultClock> = OnceLock::new();
    CLOCK.get_or_init(DefaultClock::default).clone()
}

/// The per-connection message rate (token bucket).
pub(crate) fn message_limiter(limits: &Limits) -> DefaultDirectRateLimiter {
    RateLimiter::direct_with_clock(
        Quota::per_second(nz(limits.messages_per_second)).allow_burst(nz(limits.message_burst)),
        clock(),
    )
}

/// A token bucket of `per_second` with a burst of `burst`, on the shared clock.
pub(crate) fn limiter(per_second: u32, burst: u32) -> DefaultDirectRateLimiter {
    RateLimiter::direct_with_clock(
        Quota::per_second(nz(per_second)).allow_burst(nz(burst)),
        clock(),
    )
}

/// The per-connection byte rate. Its burst is at least one maximal frame, so `check_n` only
/// ever answers "not now", never "never".
pub(crate) fn byte_limiter(limits: &Limits) -> DefaultDirectRateLimiter {
    let burst = limits
        .byte_burst
        .max(u32::try_from(limits.max_frame_bytes).unwrap_or(u32::MAX));
    RateLimiter::direct_with_clock(
        Quota::per_second(nz(limits.bytes_per_second)).allow_burst(nz(burst)),
        clock(),
    )
}

/// Whether a frame of `len` bytes holding `messages` messages is within both rates; `false`
/// means close with 4029. Every frame counts, pings and pongs included, and a frame counts as
/// many messages as it carries: a limit that one frame could step around would be no limit.
pub(crate) fn within_rate(
    message_rate: &DefaultDirectRateLimiter,
    byte_rate: &DefaultDirectRateLimiter,
    messages: usize,
    len: usize,
) -> bool {
    let len = nz(u32::try_from(len.max(1)).unwrap_or(u32::MAX));
    let n = nz(u32::try_from(messages.max(1)).unwrap_or(u32::MAX));
    let bytes_ok = byte_rate.check_n(len).is_ok_and(|r| r.is_ok());
    let messages_ok = message_rate.check_n(n).is_ok_and(|r| r.is_ok());
    bytes_ok && messages_ok
}

/// Keys a per-principal limiter remembers before it forgets those whose buckets are full again.
const MAX_HTTP_KEYS: usize = 10_000;

/// The same two rates for the HTTP transports, per principal (the token's subject, or the
/// address without authentication) instead of per connection: every request counts as one
/// message, and a write's body as its bytes. Memory is bounded: past `MAX_HTTP_KEYS` keys, the
/// keys whose buckets have refilled are forgotten (they would pass anyway).
#[derive(Debug)]
pub(crate) struct HttpRate {
    messages: governor::DefaultKeyedRateLimiter<String>,
    bytes: governor::DefaultKeyedRateLimiter<String>,
}

impl HttpRate {
    pub(crate) fn new(limits: &Limits) -> HttpRate {
        let burst = limits
            .byte_burst
            .max(u32::try_from(limits.max_frame_bytes).unwrap_or(u32::MAX));
        HttpRate {
            messages: RateLimiter::keyed(
                Quota::per_second(nz(limits.messages_per_second))
                    .allow_burst(nz(limits.message_burst)),
            ),
            bytes: RateLimiter::keyed(
                Quota::per_second(nz(limits.bytes_per_second)).allow_burst(nz(burst)),
            ),
        }
    }

    /// Whether `key` may make one more request now.
    pub(crate) fn request(&self, key: &str) -> bool {
        if self.messages.len() > MAX_HTTP_KEYS {
            self.messages.retain_recent();
            self.bytes.retain_recent();
        }
        self.messages.check_key(&key.to_owned()).is_ok()
    }

    /// Whether `key` may send a body of `len` bytes now.
    pub(crate) fn bytes(&self, key: &str, len: usize) -> bool {
        let len = nz(u32::try_from(len.max(1)).unwrap_or(u32::MAX));
        self.bytes
            .check_key_n(&key.to_owned(), len)
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_requests_of_one_principal_share_one_budget() {
        let limits = Limits {
            messages_per_second: 1,
            message_burst: 3,
            ..Limits::default()
        };
        let rate = HttpRate::new(&limits);
        assert!((0..3).all(|_| rate.request("ann")));
        assert!(!rate.request("ann"), "the burst is spent");
        assert!(rate.request("bob"), "another principal has its own");
        let burst = limits.byte_burst as usize;
        assert!(rate.bytes("bob", burst), "one burst of bytes passes");
        assert!(!rate.bytes("bob", 1_000), "then the bytes are spent");
    }
}
