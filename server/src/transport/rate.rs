//! Per-connection rate limits: token buckets over messages and bytes, checked per frame with
//! the number of messages the frame carries.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::Limits;

pub(crate) fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN)
}

/// The per-connection message rate (token bucket).
pub(crate) fn message_limiter(limits: &Limits) -> DefaultDirectRateLimiter {
    RateLimiter::direct(
        Quota::per_second(nz(limits.messages_per_second)).allow_burst(nz(limits.message_burst)),
    )
}

/// The per-connection byte rate. Its burst is at least one maximal frame, so `check_n` only
/// ever answers "not now", never "never".
pub(crate) fn byte_limiter(limits: &Limits) -> DefaultDirectRateLimiter {
    let burst = limits
        .byte_burst
        .max(u32::try_from(limits.max_frame_bytes).unwrap_or(u32::MAX));
    RateLimiter::direct(Quota::per_second(nz(limits.bytes_per_second)).allow_burst(nz(burst)))
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
