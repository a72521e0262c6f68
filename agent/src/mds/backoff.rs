//! Exponential backoff with full jitter: after the n-th consecutive failure wait a uniformly
//! random time in `[0, min(max, base * 2^n)]`, but never less than `base / 2` so a service that
//! fails at once is not hammered. A success resets it.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let floor = self.base / 2;
        let span = ceiling.saturating_sub(floor).as_millis() as u64;
        floor + Duration::from_millis(fastrand::u64(0..=span))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        let mut b = Backoff::new(base, max);
        for n in 0..12u32 {
            let d = b.next_delay();
            let ceiling = (base * 2u32.pow(n)).min(max);
            assert!(
                d >= base / 2 && d <= ceiling,
                "attempt {n}: {d:?} outside [250ms, {ceiling:?}]"
            );
        }
        // Jitter: many draws at the cap are not all the same.
        let draws: std::collections::BTreeSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 5);
        b.reset();
        assert!(b.next_delay() <= base);
    }
}
