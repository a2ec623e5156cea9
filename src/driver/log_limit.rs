//! Rate limiting for log lines a flood of bad clients could otherwise repeat
//! thousands of times a second (accept errors, protocol errors).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Lets one line through per `every`; counts the ones it holds back and hands
/// that count to the next line that goes through.
pub struct RateLimitedLog {
    every: Duration,
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> RateLimitedLog {
        RateLimitedLog {
            every,
            last: Cell::new(None),
            suppressed: Cell::new(0),
        }
    }

    /// Calls `log(suppressed_since_last)` if a line is due, else counts it.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        match self.last.get() {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed.set(self.suppressed.get() + 1);
            }
            _ => {
                self.last.set(Some(now));
                log(self.suppressed.replace(0));
            }
        }
    }
}
