//! The deadlines of one core's connections: a binary heap with lazy deletion.
//!
//! A connection has at most one live entry, at the millisecond its connection
//! table row records (`Conn::timer_ms`). Moving a deadline later (every
//! heartbeat does) costs nothing: the old entry fires early, the engine sees
//! that the session's real deadline is later and pushes one new entry. Moving
//! it earlier pushes a new entry and leaves the old one to be discarded when
//! it pops. So the cost follows the deadlines that fire (about one entry per
//! connection per heartbeat timeout), never the number of connections per
//! tick: there is no periodic scan.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// "No entry" for `Conn::timer_ms`.
pub const NO_TIMER: u64 = u64::MAX;

pub struct Timers {
    /// Millisecond 0.
    epoch: Instant,
    /// (deadline ms, connection slot), earliest first. 16 bytes an entry.
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl Timers {
    pub fn new(epoch: Instant) -> Timers {
        Timers {
            epoch,
            heap: BinaryHeap::new(),
        }
    }

    /// `t` in whole milliseconds after the epoch, rounded up, so that an
    /// entry never pops before the instant it stands for.
    pub fn ms_ceil(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.epoch);
        let ms = d.as_millis() as u64;
        if d > Duration::from_millis(ms) {
            ms + 1
        } else {
            ms
        }
    }

    /// `t` in whole milliseconds after the epoch, rounded down ("now").
    pub fn ms_floor(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    pub fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    pub fn schedule(&mut self, at_ms: u64, slot: u32) {
        self.heap.push(Reverse((at_ms, slot)));
    }

    /// The earliest entry's deadline (it may be stale: firing it is cheap).
    pub fn next_ms(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((ms, _))| *ms)
    }

    /// Pops the earliest entry if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, u32)> {
        match self.heap.peek() {
            Some(Reverse((ms, _))) if *ms <= now_ms => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0);
        t.schedule(30, 1);
        t.schedule(10, 2);
        t.schedule(20, 3);
        assert_eq!(t.next_ms(), Some(10));
        assert_eq!(t.pop_due(9), None);
        assert_eq!(t.pop_due(25), Some((10, 2)));
        assert_eq!(t.pop_due(25), Some((20, 3)));
        assert_eq!(t.pop_due(25), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rounding_never_fires_early() {
        let t0 = Instant::now();
        let t = Timers::new(t0);
        let at = t0 + Duration::from_micros(1500);
        assert_eq!(t.ms_ceil(at), 2);
        assert_eq!(t.ms_floor(at), 1);
        assert_eq!(t.ms_ceil(t0 + Duration::from_millis(7)), 7);
        assert!(t.instant(t.ms_ceil(at)) >= at);
    }
}
