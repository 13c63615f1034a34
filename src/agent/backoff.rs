//! Exponential backoff with full jitter: attempt `n` waits a uniformly random time in
//! `[0, min(cap, base * 2^n)]`, so many agents retrying one sink spread out instead of
//! hammering it in lockstep.

use std::time::Duration;

use rand::Rng;

/// Backoff settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first ceiling.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The ceiling for attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay for attempt `attempt`, drawn with `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        Duration::from_nanos(rng.random_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64))
    }

    /// A random delay for attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(200), Duration::from_secs(5));
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay_with(4, &mut rng)).collect();
        let ceiling = b.ceiling(4);
        assert!(delays.iter().all(|d| *d <= ceiling));
        assert!(
            delays.iter().any(|d| *d < ceiling / 10),
            "full jitter reaches near zero"
        );
        assert!(delays.iter().any(|d| *d > ceiling * 9 / 10), "and near the ceiling");
    }
}
