//! How long to wait before the next attempt: full-jitter exponential backoff.

use std::time::Duration;

/// Exponential backoff with full jitter: before retry `n` (1 for the first retry), wait a
/// uniformly random time in `[0, min(max, base * 2^(n-1))]`.
///
/// Full jitter spreads a crowd of clients that failed together across the whole window,
/// so they don't come back in step (see AWS's "Exponential Backoff and Jitter").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff from `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
        }
    }

    /// The ceiling of the wait before retry `retry` (1-based).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random wait before retry `retry` (1-based).
    pub fn wait(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let ceilings: Vec<u64> = (1..=7).map(|n| backoff.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff.ceiling(1000), Duration::from_secs(30));
        for n in 1..10 {
            assert!(backoff.wait(n) <= backoff.ceiling(n));
        }
    }
}
