//! What the load generator measures: counters and latency histograms.
//!
//! Each worker thread records into its own [`ThreadStats`]; once a second the
//! process takes a [`Snapshot`] (cumulative counters plus the histograms of the
//! last interval). Snapshots from threads and from worker processes merge by
//! adding counters and histograms, so a report over many processes is exact,
//! not an average of percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Cumulative event counts (except `connected`, a gauge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Sessions bound right now.
    pub connected: u64,
    pub connects: u64,
    pub binds: u64,
    pub pings: u64,
    pub pongs: u64,
    pub pushes: u64,
    pub reconnects: u64,
    /// Close frames from the server (kicks, drains, timeouts on its side).
    pub server_closes: u64,
    /// Connections closed on purpose by churn.
    pub churned: u64,
    pub connect_errors: u64,
    /// Binds refused with an Error frame (wrong key, ...).
    pub bind_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Binds or pings without a reply within --timeout.
    pub timeouts: u64,
    /// TLS handshakes or WebSocket upgrades that failed or did not finish
    /// within --timeout (miops://, ws://, wss://).
    #[serde(default)]
    pub handshake_errors: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.connected += o.connected;
        self.connects += o.connects;
        self.binds += o.binds;
        self.pings += o.pings;
        self.pongs += o.pongs;
        self.pushes += o.pushes;
        self.reconnects += o.reconnects;
        self.server_closes += o.server_closes;
        self.churned += o.churned;
        self.connect_errors += o.connect_errors;
        self.bind_errors += o.bind_errors;
        self.read_errors += o.read_errors;
        self.write_errors += o.write_errors;
        self.timeouts += o.timeouts;
        self.handshake_errors += o.handshake_errors;
    }

    pub fn errors(&self) -> u64 {
        self.connect_errors
            + self.handshake_errors
            + self.bind_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
    }
}

/// The latencies measured, each in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// TCP connect.
    Connect,
    /// Bind sent → BindAck received.
    Bind,
    /// Ping sent → Pong received (heartbeat round trip).
    Ping,
    /// Push send timestamp (in the payload) → received.
    Push,
    /// TCP connected → TLS handshake and/or WebSocket upgrade done
    /// (miops://, ws://, wss://).
    Handshake,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Connect,
        Metric::Bind,
        Metric::Ping,
        Metric::Push,
        Metric::Handshake,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Connect => "connect",
            Metric::Bind => "bind",
            Metric::Ping => "ping",
            Metric::Push => "push",
            Metric::Handshake => "handshake",
        }
    }
}

/// Microsecond histograms for every [`Metric`], 3 significant digits, up to an hour.
#[derive(Debug, Clone)]
pub struct Latencies {
    pub hists: [Histogram<u64>; 5],
}

const MAX_MICROS: u64 = 3_600_000_000;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            hists: std::array::from_fn(|_| new_hist()),
        }
    }
}

impl Latencies {
    pub fn get(&self, m: Metric) -> &Histogram<u64> {
        &self.hists[m as usize]
    }

    pub fn record(&mut self, m: Metric, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_MICROS);
        let _ = self.hists[m as usize].record(us);
    }

    /// Skips empty histograms: merging one walks all its buckets.
    pub fn add(&mut self, o: &Latencies) {
        for (a, b) in self.hists.iter_mut().zip(&o.hists) {
            if !b.is_empty() {
                let _ = a.add(b);
            }
        }
    }

    /// Zeroes the histograms that recorded something: most seconds record
    /// only pings, and zeroing the other four (~190 KB each) every second
    /// was a quarter of an idle load thread's instructions.
    pub fn reset(&mut self) {
        for h in &mut self.hists {
            if !h.is_empty() {
                h.reset();
            }
        }
    }

    /// Base64 of HdrHistogram's V2 encoding, per metric name (for JSON
    /// lines). Empty histograms are left out: most seconds have only pings,
    /// and every histogram decoded is a fresh ~190 KB allocation.
    pub fn encode(&self) -> Vec<(String, String)> {
        Metric::ALL
            .iter()
            .filter(|m| !self.get(**m).is_empty())
            .map(|m| {
                let mut buf = Vec::new();
                V2Serializer::new()
                    .serialize(self.get(*m), &mut buf)
                    .expect("histogram serializes");
                (
                    m.name().to_owned(),
                    base64::engine::general_purpose::STANDARD.encode(buf),
                )
            })
            .collect()
    }

    pub fn decode(encoded: &[(String, String)]) -> Result<Latencies, String> {
        let mut out = Latencies::default();
        out.add_encoded(encoded)?;
        Ok(out)
    }

    /// Adds [`Latencies::encode`]'s output to these histograms (no
    /// intermediate `Latencies`: the once-a-second merge of every worker's
    /// line allocates only the histograms it carries).
    pub fn add_encoded(&mut self, encoded: &[(String, String)]) -> Result<(), String> {
        for (name, b64) in encoded {
            let m = Metric::ALL
                .into_iter()
                .find(|m| m.name() == name)
                .ok_or_else(|| format!("unknown histogram {name}"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| e.to_string())?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| format!("{e:?}"))?;
            self.hists[m as usize].add(&h).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// One thread's live statistics. Counters are atomics so the reporting thread
/// can read them without stopping the workers; histograms sit behind a mutex
/// that only the owning thread and the once-a-second snapshot take.
#[derive(Default)]
pub struct ThreadStats {
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub binds: AtomicU64,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub pushes: AtomicU64,
    pub reconnects: AtomicU64,
    pub server_closes: AtomicU64,
    pub churned: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bind_errors: AtomicU64,
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub handshake_errors: AtomicU64,
    /// Since the last snapshot.
    interval: Mutex<Latencies>,
    /// Since the start.
    total: Mutex<Latencies>,
}

pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ThreadStats {
    pub fn record(&self, m: Metric, d: Duration) {
        self.interval.lock().unwrap().record(m, d);
    }

    pub fn counters(&self) -> Counters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            connected: g(&self.connected),
            connects: g(&self.connects),
            binds: g(&self.binds),
            pings: g(&self.pings),
            pongs: g(&self.pongs),
            pushes: g(&self.pushes),
            reconnects: g(&self.reconnects),
            server_closes: g(&self.server_closes),
            churned: g(&self.churned),
            connect_errors: g(&self.connect_errors),
            bind_errors: g(&self.bind_errors),
            read_errors: g(&self.read_errors),
            write_errors: g(&self.write_errors),
            timeouts: g(&self.timeouts),
            handshake_errors: g(&self.handshake_errors),
        }
    }

    /// Moves the interval histograms into `out` (and adds them to the
    /// totals), in place: a clone per thread per second was ~1 MB of fresh
    /// memory for the kernel to zero, 4% of the machine in a 1M-session ramp.
    pub fn take_interval_into(&self, out: &mut Latencies) {
        let mut iv = self.interval.lock().unwrap();
        out.add(&iv);
        self.total.lock().unwrap().add(&iv);
        iv.reset();
    }

    pub fn total(&self) -> Latencies {
        self.total.lock().unwrap().clone()
    }
}

/// A point-in-time view: cumulative counters and the last interval's latencies.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub counters: Counters,
    pub interval: Latencies,
}

impl Snapshot {
    /// Empty again, keeping the histograms' memory.
    pub fn clear(&mut self) {
        self.counters = Counters::default();
        self.interval.reset();
    }

    pub fn add(&mut self, o: &Snapshot) {
        self.counters.add(&o.counters);
        self.interval.add(&o.interval);
    }
}

/// Summary numbers of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: u64,
    pub p75: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            stdev: h.stdev(),
            p50: h.value_at_quantile(0.50),
            p75: h.value_at_quantile(0.75),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_merge_exactly() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        for i in 1..=1000u64 {
            a.record(Metric::Ping, Duration::from_micros(i));
            b.record(Metric::Ping, Duration::from_micros(1000 + i));
        }
        let decoded = Latencies::decode(&a.encode()).unwrap();
        assert_eq!(
            Percentiles::of(decoded.get(Metric::Ping)),
            Percentiles::of(a.get(Metric::Ping))
        );
        a.add(&b);
        let p = Percentiles::of(a.get(Metric::Ping));
        assert_eq!(p.count, 2000);
        assert_eq!(p.min, 1);
        assert!((p.p50 as i64 - 1000).abs() <= 1, "{p:?}");
        assert!((p.max as i64 - 2000).abs() <= 1, "{p:?}");
    }

    #[test]
    fn encoding_leaves_out_empty_histograms_and_adds_into_existing_ones() {
        let mut a = Latencies::default();
        a.record(Metric::Bind, Duration::from_micros(250));
        let encoded = a.encode();
        assert_eq!(
            encoded.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["bind"]
        );
        let mut into = Latencies::default();
        into.record(Metric::Bind, Duration::from_micros(750));
        into.record(Metric::Ping, Duration::from_micros(10));
        into.add_encoded(&encoded).unwrap();
        assert_eq!(into.get(Metric::Bind).len(), 2);
        assert_eq!(into.get(Metric::Ping).len(), 1);
        assert!(into.add_encoded(&[("nope".into(), String::new())]).is_err());
    }

    #[test]
    fn taking_an_interval_moves_it_into_the_snapshot_and_the_totals() {
        let t = ThreadStats::default();
        t.record(Metric::Ping, Duration::from_micros(100));
        let mut snap = Snapshot::default();
        snap.interval.record(Metric::Ping, Duration::from_micros(5));
        snap.clear();
        t.take_interval_into(&mut snap.interval);
        assert_eq!(snap.interval.get(Metric::Ping).len(), 1);
        // The interval is empty again; the totals kept it.
        t.take_interval_into(&mut snap.interval);
        assert_eq!(snap.interval.get(Metric::Ping).len(), 1);
        assert_eq!(t.total().get(Metric::Ping).len(), 1);
    }
}
