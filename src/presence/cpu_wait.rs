//! Time as Redis made it, not as the scheduler did. The control plane is
//! one thread; on a saturated machine it waits for a CPU between every
//! step of its Redis work, and wall time then blames Redis for the wait.
//! `/proc/thread-self/schedstat` says how long the thread waited on a run
//! queue, so that wait can be left out.

use std::time::{Duration, Instant};

/// How long something took as Redis made it: wall time less what this
/// thread waited for a CPU meanwhile. The health watch judges its PING
/// probes by it, so that a control plane starved by a saturated machine
/// (at 1,000,000 sessions on 2 cores) does not take Redis for hung and
/// reconnect and reconcile, the most expensive thing it could do then.
/// (The pace keeps wall time: commands time out by wall time, and at that
/// load rounds kept large by leaving the wait out timed out more and
/// starved the sessions' pings; measured in docs/BENCHMARKS.md.) Where the
/// kernel does not report run-queue waits, plain wall time.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoundTimer {
    started: Instant,
    waited: Option<Duration>,
}

impl RoundTimer {
    pub(super) fn start() -> RoundTimer {
        RoundTimer {
            started: Instant::now(),
            waited: run_queue_wait(),
        }
    }

    /// Wall time since `start`, less this thread's run-queue wait since.
    pub(super) fn took(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.waited())
    }

    /// How long this thread waited for a CPU since `start` (zero where the
    /// kernel does not say).
    pub(super) fn waited(&self) -> Duration {
        match (self.waited, run_queue_wait()) {
            (Some(before), Some(now)) => now.saturating_sub(before),
            _ => Duration::ZERO,
        }
    }
}

/// How long the calling thread has waited on a run queue in all: the second
/// field of `/proc/thread-self/schedstat` (ns), one small read.
fn run_queue_wait() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_timer_leaves_out_waiting_for_a_cpu() {
        // Sleeping is not run-queue wait: all of it counts.
        let t = RoundTimer::start();
        std::thread::sleep(Duration::from_millis(20));
        let took = t.took();
        assert!(took >= Duration::from_millis(20), "{took:?}");
        // Two threads spinning on one CPU: each waits for the other, and
        // that wait is left out of its rounds.
        if run_queue_wait().is_none() {
            return;
        }
        let me = nix::unistd::Pid::from_raw(0);
        let allowed = nix::sched::sched_getaffinity(me).unwrap();
        let first = (0..nix::sched::CpuSet::count())
            .find(|&c| allowed.is_set(c).unwrap_or(false))
            .unwrap();
        let mut one = nix::sched::CpuSet::new();
        one.set(first).unwrap();
        let spin = move || {
            nix::sched::sched_setaffinity(me, &one).unwrap();
            let t = RoundTimer::start();
            let wall = Instant::now();
            while wall.elapsed() < Duration::from_millis(200) {}
            (wall.elapsed(), t.took())
        };
        let other = std::thread::spawn(spin);
        let (wall, took) = spin();
        let (wall2, took2) = other.join().unwrap();
        assert!(
            took < wall || took2 < wall2,
            "no run-queue wait left out: {took:?} of {wall:?}, {took2:?} of {wall2:?}"
        );
    }
}
