//! The node's file-descriptor budget for device connections.
//!
//! Every device connection is one fd, and the admin API, Redis, listeners,
//! rings and logs need a few more. Accepting until `accept()` fails with
//! EMFILE leaves the admin port unreachable exactly when an operator needs
//! it, so the cores stop accepting above a high-water mark (the fd limit
//! less a reserve) and resume below a low-water mark: new connections wait in
//! the kernel's accept queue meanwhile. One atomic counter shared by the
//! cores, touched once per accept and once per close (never per message).

use std::sync::atomic::{AtomicU64, Ordering};

pub struct FdBudget {
    open: AtomicU64,
    high: u64,
    low: u64,
}

impl FdBudget {
    /// Stop at `fd_limit - reserve` open connections; resume a further
    /// `reserve / 2` (at least 16) below.
    pub fn new(fd_limit: u64, reserve: u64) -> FdBudget {
        let high = fd_limit.saturating_sub(reserve).max(1);
        FdBudget {
            open: AtomicU64::new(0),
            high,
            low: high.saturating_sub((reserve / 2).max(16)),
        }
    }

    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// At or above the high-water mark: stop accepting.
    pub fn exhausted(&self) -> bool {
        self.open() >= self.high
    }

    /// At or below the low-water mark: accepting may resume.
    pub fn recovered(&self) -> bool {
        self.open() <= self.low
    }

    pub fn marks(&self) -> (u64, u64) {
        (self.high, self.low)
    }
}

/// One core's side of the budget: whether it has stopped accepting.
#[derive(Default)]
pub struct AcceptGate {
    paused: bool,
}

impl AcceptGate {
    /// Whether the core may accept now; pauses above the high-water mark and
    /// resumes below the low-water mark (`on_pause` runs when it pauses).
    pub fn open(&mut self, budget: &FdBudget, on_pause: impl FnOnce()) -> bool {
        if self.paused {
            if budget.recovered() {
                self.paused = false;
            }
        } else if budget.exhausted() {
            self.paused = true;
            on_pause();
        }
        !self.paused
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_high_mark_and_resumes_at_the_low_one() {
        let b = FdBudget::new(256, 64);
        assert_eq!(b.marks(), (192, 160));
        let mut gate = AcceptGate::default();
        let mut pauses = 0;
        for _ in 0..192 {
            assert!(gate.open(&b, || pauses += 1));
            b.opened();
        }
        assert!(!gate.open(&b, || pauses += 1));
        assert_eq!(pauses, 1);
        for _ in 0..31 {
            b.closed();
        }
        assert!(!gate.open(&b, || pauses += 1), "161 open: still paused");
        b.closed();
        assert!(gate.open(&b, || pauses += 1), "160: resumed");
        assert_eq!(pauses, 1);
    }
}
