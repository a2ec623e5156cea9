//! The reconnect schedule of [`Session`](super::Session): exponential backoff
//! with full jitter and a cap (PROTOCOL.md §10.10).
//!
//! Full jitter (a delay drawn uniformly from zero to the ceiling, rather than
//! the ceiling plus a little noise) is what spreads a fleet out again after a
//! gateway restart: every device loses its connection at the same instant,
//! and if they all waited the same 500 ms they would all come back at the
//! same instant too.

use std::time::Duration;

/// When to reconnect. The delay before reconnect `n` (1 for the first one
/// after a disconnect, 2 if that failed too, ...) is drawn uniformly from
/// `[0, ceiling(n)]`, `ceiling(n) = min(cap, base × 2^(n-1))`. The count
/// starts again at 1 once a session has stayed bound for `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first reconnect's delay.
    pub base: Duration,
    /// Largest ceiling; also the "long backoff" used after a protocol error
    /// or a rate limit, drawn from `[cap/2, cap]`.
    pub cap: Duration,
    /// A session bound at least this long counts as healthy: the reconnect
    /// after it is attempt 1 again. A session that binds and is dropped at
    /// once (a gateway that kicks it, a crash loop) keeps the count growing.
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// 500 ms doubling up to 60 s; reset after 30 s bound.
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The largest delay reconnect `attempt` may wait: `min(cap, base ×
    /// 2^(attempt-1))`; zero for attempt 0 (the first connection).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        // 2^31 × any base already exceeds every sensible cap.
        let factor = 1u32 << (attempt - 1).min(31);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before reconnect `attempt`, uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut Jitter) -> Duration {
        rng.between(Duration::ZERO, self.ceiling(attempt))
    }

    /// The long backoff (after `PROTOCOL_ERROR` or `RATE_LIMITED`, which a
    /// quick retry would only repeat): uniform in `[cap/2, cap]`.
    pub fn long_delay(&self, rng: &mut Jitter) -> Duration {
        rng.between(self.cap / 2, self.cap)
    }
}

/// The random source of the jitter. Seed it in tests to make a session's
/// delays reproducible: a [`Backoff`] and a `Jitter` with the same seed give
/// the same sequence of delays as the session that used them.
#[derive(Debug, Clone)]
pub struct Jitter(fastrand::Rng);

impl Jitter {
    /// Seeded from the OS (each session spreads differently).
    pub fn new() -> Jitter {
        Jitter(fastrand::Rng::new())
    }

    pub fn seeded(seed: u64) -> Jitter {
        Jitter(fastrand::Rng::with_seed(seed))
    }

    /// Uniform in `[lo, hi]`, at microsecond resolution.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(self.0.u64(lo..=hi.max(lo)))
    }
}

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn b(base_ms: u32, cap_ms: u32) -> Backoff {
        Backoff {
            base: MS * base_ms,
            cap: MS * cap_ms,
            reset_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = b(500, 60_000);
        let ceilings: Vec<u128> = (0..=10).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(
            ceilings,
            [0, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        // No overflow however long the outage.
        assert_eq!(b.ceiling(u32::MAX), b.cap);
        assert_eq!(b.ceiling(64), b.cap);
    }

    #[test]
    fn delays_stay_within_their_ceiling_and_use_the_whole_range() {
        let b = b(100, 5_000);
        let mut rng = Jitter::seeded(1);
        for attempt in 1..=12 {
            let ceiling = b.ceiling(attempt);
            let draws: Vec<Duration> = (0..500).map(|_| b.delay(attempt, &mut rng)).collect();
            assert!(draws.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: both ends of [0, ceiling] are reached, not just the top.
            assert!(draws.iter().any(|d| *d < ceiling / 10), "attempt {attempt}");
            assert!(
                draws.iter().any(|d| *d > ceiling * 9 / 10),
                "attempt {attempt}"
            );
        }
        for _ in 0..500 {
            let d = b.long_delay(&mut rng);
            assert!(d >= b.cap / 2 && d <= b.cap, "{d:?}");
        }
    }

    #[test]
    fn a_seed_reproduces_the_schedule() {
        let b = b(50, 2_000);
        let run = |seed| {
            let mut rng = Jitter::seeded(seed);
            (1..=8).map(|n| b.delay(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
