//! Histograms kept where they are observed and rendered by us.
//!
//! Each I/O core keeps its own plain [`Histogram`]s (no atomics, no shared
//! cache lines, no registry lookup per observation); the control plane merges
//! the cores' copies when `/metrics` is scraped. Rendering them ourselves also
//! means every `_bucket` series exists at zero from the start, so a dashboard
//! panel never says "no data" on an idle gateway.

use std::fmt::Write;

/// Bucket bounds (seconds unless the name says otherwise) of each histogram.
pub const BIND_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
pub const READ_HANDLING_BUCKETS: &[f64] = &[
    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01,
];
pub const PUSH_ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
pub const PRESENCE_BATCH_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0];
pub const PRESENCE_BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram: counts per bucket (not cumulative), sum, count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for +Inf.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
        }
    }

    pub fn record(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Adds another histogram with the same buckets (another core's).
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Appends the Prometheus text exposition of this histogram.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_from_zero() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        let mut empty = String::new();
        h.render("x_seconds", "X.", &mut empty);
        assert!(empty.contains("x_seconds_bucket{le=\"0.1\"} 0\n"));
        assert!(empty.contains("x_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(empty.contains("x_seconds_count 0\n"));
        h.record(0.05);
        h.record(0.5);
        h.record(7.0);
        let mut other = Histogram::new(&[0.1, 1.0]);
        other.record(0.1);
        h.merge(&other);
        let mut s = String::new();
        h.render("x_seconds", "X.", &mut s);
        assert!(s.contains("x_seconds_bucket{le=\"0.1\"} 2\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"1\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_seconds_count 4\n"));
        assert_eq!(h.sum(), 0.05 + 0.5 + 7.0 + 0.1);
    }
}
