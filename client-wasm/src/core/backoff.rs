//! When to try again after a connection failed: [`Backoff`].

/// Reconnect delays: exponential from `min_ms` to `max_ms`, with jitter from an injected random
/// number so that clients cut off together do not return together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        Self {
            min_ms: min_ms.max(1),
            max_ms: max_ms.max(min_ms.max(1)),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: `base · (0.5 + random)` with `base = min · 2^attempt`,
    /// capped at `max`. `random` is uniform in `[0, 1)` (values outside are clamped).
    pub fn next_delay_ms(&mut self, random: f64) -> u64 {
        let base = self
            .min_ms
            .saturating_mul(1u64.checked_shl(self.attempt).unwrap_or(u64::MAX))
            .min(self.max_ms);
        if base < self.max_ms {
            self.attempt += 1;
        }
        let factor = 0.5 + random.clamp(0.0, 1.0);
        // The product is at most 1.5 · max_ms, far inside f64's exact integer range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let delay = (base as f64 * factor) as u64;
        delay.clamp(1, self.max_ms)
    }

    /// A connection succeeded: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::{core, doc, online};

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(100, 1_000);
        assert_eq!(b.next_delay_ms(0.0), 50);
        assert_eq!(b.next_delay_ms(0.5), 200);
        assert_eq!(b.next_delay_ms(0.999), 599);
        // Capped: base 800 → 1 200 with full jitter, clamped to the cap.
        assert_eq!(b.next_delay_ms(1.0), 1_000);
        for _ in 0..100 {
            let delay = b.next_delay_ms(0.25);
            assert_eq!(delay, 750);
        }
        b.reset();
        assert_eq!(b.next_delay_ms(0.5), 100);
        // Out-of-range randomness is clamped, never a zero or overflowing delay.
        assert_eq!(Backoff::new(0, 0).next_delay_ms(-3.0), 1);
    }

    #[test]
    fn welcome_resets_the_backoff() {
        let d = doc("notes");
        let mut c = core(7);
        for _ in 0..5 {
            c.next_reconnect_delay_ms(0.5);
        }
        online(&mut c, &d);
        assert_eq!(c.next_reconnect_delay_ms(0.5), c.options.backoff_min_ms);
    }
}
