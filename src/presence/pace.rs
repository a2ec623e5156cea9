//! Pacing of the worker's bulk Redis work: the writer's batches and the
//! reconciliation's rounds of reads. Every node of a fleet sharing one Redis
//! reconnects, and so reconciles, at the same moment after an outage; if
//! each sent its rounds at full size the Redis would answer every one of
//! them after the command timeout, and nothing would ever complete.
//!
//! So the number of commands in one pipelined round (the window) adapts to
//! how long rounds take, as a TCP congestion window does: it grows while
//! rounds come back well within a quarter of the command timeout, halves
//! when a round is slower than that or fails, and a failed round also
//! pauses the work for a while (doubling, randomised) before the next one.
//! One round is in flight at a time, so at most `window` commands are.
//!
//! A reconciliation pass also waits a random delay before it starts, scaled
//! by the node's session count, so that the nodes' passes spread out.

use std::time::{Duration, Instant};

/// Fewest commands in one round.
pub(super) const MIN_WINDOW: usize = 50;
/// The window after a (re)connection: small, since every node may be
/// starting at once; it grows within a few fast rounds.
const START_WINDOW: usize = 100;
/// First pause after a failed round; it doubles with each failure in a row.
const MIN_BACKOFF: Duration = Duration::from_millis(200);

/// Start delay per local session of a reconciliation pass, and its cap.
const JITTER_PER_SESSION: Duration = Duration::from_micros(200);
const JITTER_MAX: Duration = Duration::from_secs(10);

/// The window and the pause after failures (one per worker, owned by the
/// writer task, which runs both the writer and the reconciliation).
#[derive(Debug)]
pub(super) struct Pace {
    window: usize,
    max: usize,
    /// A round slower than this is a sign of a loaded Redis.
    target: Duration,
    backoff: Duration,
    max_backoff: Duration,
    resume_at: Option<Instant>,
}

impl Pace {
    /// `max`: the largest round; `command_timeout`: the timeout of one command.
    pub(super) fn new(command_timeout: Duration, max: usize) -> Pace {
        let max = max.max(MIN_WINDOW);
        Pace {
            window: max,
            max,
            target: command_timeout / 4,
            backoff: Duration::ZERO,
            max_backoff: (command_timeout * 2).max(MIN_BACKOFF),
            resume_at: None,
        }
    }

    /// Commands to send in the next round.
    pub(super) fn window(&self) -> usize {
        self.window
    }

    /// A round of `sent` commands succeeded in `took`.
    pub(super) fn done(&mut self, sent: usize, took: Duration) {
        self.backoff = Duration::ZERO;
        self.resume_at = None;
        if took > self.target {
            self.window = (self.window / 2).max(MIN_WINDOW);
        } else if took <= self.target / 2 && sent * 2 >= self.window {
            // Only a round that used the window says it could be larger.
            self.window = (self.window + (self.window / 2).max(16)).min(self.max);
        }
    }

    /// A round failed (a timeout, or an error): smaller rounds, and a pause
    /// before the next one.
    pub(super) fn failed(&mut self, now: Instant) {
        self.window = (self.window / 2).max(MIN_WINDOW);
        self.backoff = (self.backoff * 2).clamp(MIN_BACKOFF, self.max_backoff);
        self.resume_at = Some(now + self.backoff.mul_f64(0.5 + fastrand::f64()));
    }

    /// After a (re)connection: start with small rounds.
    pub(super) fn restart(&mut self) {
        self.window = START_WINDOW.clamp(MIN_WINDOW, self.max);
    }

    /// Until when no Redis work should be sent, after a failure.
    pub(super) fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.resume_at.filter(|&t| t > now)
    }
}

/// Upper bound of the random delay before a reconciliation pass of a node
/// with `sessions` local sessions: 0.2 ms per session, at most 10 s.
pub(super) fn max_start_delay(sessions: usize) -> Duration {
    JITTER_PER_SESSION
        .saturating_mul(sessions.min(u32::MAX as usize) as u32)
        .min(JITTER_MAX)
}

/// A random delay in `0..=max_start_delay(sessions)`.
pub(super) fn start_delay(sessions: usize) -> Duration {
    max_start_delay(sessions).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn fast_full_rounds_grow_the_window_up_to_the_maximum() {
        let mut p = Pace::new(T, 1000);
        p.restart();
        assert_eq!(p.window(), START_WINDOW);
        for _ in 0..20 {
            let w = p.window();
            p.done(w, Duration::from_millis(10));
        }
        assert_eq!(p.window(), 1000);
    }

    #[test]
    fn a_small_round_does_not_grow_the_window() {
        let mut p = Pace::new(T, 1000);
        p.restart();
        p.done(3, Duration::from_millis(1));
        assert_eq!(p.window(), START_WINDOW);
    }

    #[test]
    fn slow_rounds_halve_the_window_down_to_the_minimum() {
        let mut p = Pace::new(T, 1000);
        p.done(1000, Duration::from_millis(600));
        assert_eq!(p.window(), 500);
        for _ in 0..10 {
            p.done(p.window(), Duration::from_millis(900));
        }
        assert_eq!(p.window(), MIN_WINDOW);
        // Between half the target and the target: held.
        p.done(MIN_WINDOW, Duration::from_millis(400));
        assert_eq!(p.window(), MIN_WINDOW);
    }

    #[test]
    fn failures_pause_for_longer_each_time_within_bounds_and_success_clears_it() {
        let mut p = Pace::new(T, 1000);
        let now = Instant::now();
        assert_eq!(p.paused_until(now), None);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            p.failed(now);
            let pause = p.paused_until(now).unwrap() - now;
            assert!(
                pause >= MIN_BACKOFF / 2 && pause <= T * 2 * 3 / 2,
                "{pause:?}"
            );
            last = last.max(pause);
        }
        assert!(last >= T, "the pause grows: {last:?}");
        assert_eq!(p.window(), MIN_WINDOW);
        p.done(MIN_WINDOW, Duration::from_millis(1));
        assert_eq!(p.paused_until(now), None);
        p.failed(now);
        assert!(p.paused_until(now).unwrap() - now <= MIN_BACKOFF * 3 / 2);
    }

    #[test]
    fn the_start_delay_scales_with_sessions_and_is_capped() {
        assert_eq!(max_start_delay(0), Duration::ZERO);
        assert_eq!(max_start_delay(5_000), Duration::from_secs(1));
        assert_eq!(max_start_delay(1_000_000), JITTER_MAX);
        assert_eq!(max_start_delay(usize::MAX), JITTER_MAX);
        for _ in 0..100 {
            assert!(start_delay(5_000) <= Duration::from_secs(1));
        }
        assert_eq!(start_delay(0), Duration::ZERO);
    }
}
