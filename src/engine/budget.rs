//! A session's inbound budget: frames and bytes per second, as two token
//! buckets in 12 bytes of the connection row.
//!
//! A flood of Pings or Subscribes costs the core far more than it costs the
//! client, so every read is charged. A connection over its budget is slowed
//! down first: the engine asks the driver to stop reading it until the
//! buckets have refilled (TCP flow control then holds the client back). One
//! that is still over its budget after `Limits::budget_grace` of that is
//! closed with RATE_LIMITED.

/// Token buckets for one connection. `last_ms` wraps after 49 days; a gap
/// that looks negative after a wrap refills nothing for one read.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    last_ms: u32,
    frames: f32,
    bytes: f32,
}

impl Budget {
    pub fn new(now_ms: u64, frames_burst: f32, bytes_burst: f32) -> Budget {
        Budget {
            last_ms: now_ms as u32,
            frames: frames_burst,
            bytes: bytes_burst,
        }
    }

    /// Refills for the time since the last charge, then charges `frames` and
    /// `bytes`. Returns how long (ms) reading must pause for the buckets to
    /// be back at zero: 0 when within the budget.
    pub fn charge(
        &mut self,
        now_ms: u64,
        frames: u32,
        bytes: u32,
        frames_per_sec: u32,
        bytes_per_sec: u32,
    ) -> u64 {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.last_ms);
        let elapsed = if elapsed > u32::MAX / 2 { 0 } else { elapsed };
        self.last_ms = now;
        let secs = elapsed as f32 / 1000.0;
        let (fr, br) = (frames_per_sec as f32, bytes_per_sec as f32);
        self.frames = (self.frames + secs * fr).min(2.0 * fr) - frames as f32;
        self.bytes = (self.bytes + secs * br).min(2.0 * br) - bytes as f32;
        let wait = |tokens: f32, rate: f32| {
            if tokens >= 0.0 {
                0.0
            } else {
                -tokens / rate * 1000.0
            }
        };
        wait(self.frames, fr).max(wait(self.bytes, br)).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_budget_reads_are_free_and_floods_pause() {
        let mut b = Budget::new(0, 20.0, 2000.0);
        // 10 frames/s, 1000 B/s, bursts of twice that.
        assert_eq!(b.charge(0, 20, 100, 10, 1000), 0, "the burst");
        assert_eq!(b.charge(0, 10, 100, 10, 1000), 1000, "10 frames over: 1 s");
        assert_eq!(b.charge(1000, 0, 0, 10, 1000), 0, "refilled to zero");
        assert_eq!(
            b.charge(1000, 1, 3000, 10, 1000),
            1000,
            "bytes over too (frames only 100 ms)"
        );
        assert_eq!(std::mem::size_of::<Budget>(), 12);
    }
}
