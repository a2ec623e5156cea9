//! The run's results: a summary, a per-second timeline, and the wrk-style text
//! report printed at the end. `--json` writes [`Report`] as is; `--report`
//! renders it as a self-contained HTML page (see `html/`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::server_memory::ServerMemory;
use super::stats::{Counters, Latencies, Metric, Percentiles};

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the start of the run.
    pub t: f64,
    /// Sessions bound at that moment.
    pub connected: u64,
    pub connects_per_s: f64,
    pub binds_per_s: f64,
    pub pings_per_s: f64,
    pub pushes_per_s: f64,
    /// Cumulative errors of every kind (connect, bind, read, write, timeout).
    pub errors: u64,
    pub timeouts: u64,
    /// Latency percentiles of this second only (microseconds).
    pub latency: BTreeMap<String, Percentiles>,
    /// Cumulative counters at that moment.
    pub counters: Counters,
}

/// Latency and counts of one step of the concurrency scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepSummary {
    pub target: u64,
    /// Seconds from the end of the previous step (or the start) until the
    /// step was reached (or the ramp stalled for 10 s).
    #[serde(default)]
    pub ramp_s: f64,
    /// Latencies of the ramp to the step: its binds and connects.
    #[serde(default)]
    pub ramp_latency: BTreeMap<String, Percentiles>,
    /// When the hold began, seconds from the start of the run (to line the
    /// step up with samples taken outside miop-bench).
    #[serde(default)]
    pub hold_started_s: f64,
    /// Lowest number of bound sessions seen while holding the step.
    pub connected_min: u64,
    pub held_s: f64,
    pub latency: BTreeMap<String, Percentiles>,
    pub errors: u64,
    pub timeouts: u64,
}

impl StepSummary {
    /// A metric's percentiles for the step: binds are the ramp's (those that
    /// reached the step; the hold's binds are only reconnects), everything
    /// else the hold's.
    pub fn percentiles(&self, metric: &str) -> Option<&Percentiles> {
        let ramp = (metric == "bind")
            .then(|| self.ramp_latency.get(metric))
            .flatten()
            .filter(|p| p.count > 0);
        ramp.or_else(|| self.latency.get(metric))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The URL with the app key masked.
    pub url: String,
    pub scenario: String,
    pub threads: usize,
    pub procs: usize,
    pub connections: u64,
    pub duration_s: f64,
    pub peak_connected: u64,
    /// Link-limit scenario: bound sessions when errors crossed the threshold.
    pub link_limit: Option<u64>,
    pub counters: Counters,
    /// Whole-run latency percentiles (microseconds), by metric name.
    pub latency: BTreeMap<String, Percentiles>,
    pub steps: Vec<StepSummary>,
    /// Set when the run was stopped early (Ctrl-C), with why.
    pub interrupted: Option<String>,
    /// Push load (--push-rate): API requests answered, failed, and the
    /// recipients the gateway reported delivered.
    #[serde(default)]
    pub push_requests: u64,
    #[serde(default)]
    pub push_errors: u64,
    #[serde(default)]
    pub push_recipients: u64,
    /// --server-pid: the server's resident memory before and after connecting.
    #[serde(default)]
    pub server_memory: Option<ServerMemory>,
    /// Seconds from the start until every connection was up (bound, and for
    /// mqtt:// subscribed): 10 ms resolution in one process, 1 s over worker
    /// processes. None if they never all were.
    #[serde(default)]
    pub ramp_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub summary: Summary,
    pub timeline: Vec<TimelinePoint>,
}

pub fn percentiles_by_name(l: &Latencies) -> BTreeMap<String, Percentiles> {
    Metric::ALL
        .iter()
        .map(|m| (m.name().to_owned(), Percentiles::of(l.get(*m))))
        .collect()
}

/// Formats microseconds the way wrk does (us, ms, s, m).
pub fn fmt_micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.2}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else if us < 60_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else {
        format!("{:.2}m", us / 60_000_000.0)
    }
}

pub fn fmt_duration_s(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.2}s")
    } else if s < 3600.0 {
        format!("{:.2}m", s / 60.0)
    } else {
        format!("{:.2}h", s / 3600.0)
    }
}

/// Share of samples within one standard deviation of the mean (wrk's "+/- Stdev").
fn within_stdev(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    let (mean, sd) = (h.mean(), h.stdev());
    let (lo, hi) = ((mean - sd).max(0.0) as u64, (mean + sd) as u64);
    let inside: u64 = h
        .iter_recorded()
        .filter(|v| v.value_iterated_to() >= lo && v.value_iterated_to() <= hi)
        .map(|v| v.count_at_value())
        .sum();
    100.0 * inside as f64 / h.len() as f64
}

/// The wrk-style report printed at the end of a run.
pub fn text(summary: &Summary, total: &Latencies, latency_distribution: bool) -> String {
    let mut o = String::new();
    let c = &summary.counters;
    let _ = writeln!(o, "  Thread Stats   Avg      Stdev     Max   +/- Stdev");
    for m in Metric::ALL {
        let h = total.get(m);
        if h.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "    {:<9}{:>9} {:>9} {:>9} {:>8.2}%",
            capitalise(m.name()),
            fmt_micros(h.mean()),
            fmt_micros(h.stdev()),
            fmt_micros(h.max() as f64),
            within_stdev(h)
        );
    }
    if latency_distribution {
        for m in [
            Metric::Bind,
            Metric::Ping,
            Metric::Push,
            Metric::Connect,
            Metric::Handshake,
        ] {
            let h = total.get(m);
            if h.is_empty() {
                continue;
            }
            let _ = writeln!(o, "  Latency Distribution ({})", m.name());
            // Exact quantile constants: q / 100.0 rounds differently from the
            // JSON's p999 and can land one bucket higher.
            let p = Percentiles::of(h);
            for (label, v) in [
                ("50%", p.p50),
                ("75%", p.p75),
                ("90%", p.p90),
                ("99%", p.p99),
                ("99.9%", p.p999),
                ("99.99%", p.p9999),
                ("100%", p.max),
            ] {
                let _ = writeln!(o, "  {label:>7}  {:>9}", fmt_micros(v as f64));
            }
        }
    }
    for s in &summary.steps {
        let p = s.latency.get("ping").copied().unwrap_or_default();
        let b = s.percentiles("bind").copied().unwrap_or_default();
        let _ = writeln!(
            o,
            "  Step {:>8}: ramp {:>8}, held {:>8} (min {}), ping p50 {} p99 {}, bind p50 {} p99 {}, errors {}, timeouts {}",
            s.target,
            fmt_duration_s(s.ramp_s),
            fmt_duration_s(s.held_s),
            s.connected_min,
            fmt_micros(p.p50 as f64),
            fmt_micros(p.p99 as f64),
            fmt_micros(b.p50 as f64),
            fmt_micros(b.p99 as f64),
            s.errors,
            s.timeouts
        );
    }
    let _ = writeln!(
        o,
        "  {} binds, {} pings, {} pushes in {}; peak {} sessions bound",
        c.binds,
        c.pongs,
        c.pushes,
        fmt_duration_s(summary.duration_s),
        summary.peak_connected
    );
    if summary.push_requests + summary.push_errors > 0 {
        if summary.url.starts_with("mqtt://") {
            let _ = writeln!(
                o,
                "  Publish: {} messages ({} failed) to {} subscriber deliveries, {} received",
                summary.push_requests, summary.push_errors, summary.push_recipients, c.pushes
            );
        } else {
            let _ = writeln!(
                o,
                "  Push API: {} requests ({} failed), {} recipients delivered, {} pushes received",
                summary.push_requests, summary.push_errors, summary.push_recipients, c.pushes
            );
        }
        // With --push-count 1, the slowest delivery is the fan-out time.
        let push = total.get(Metric::Push);
        if !push.is_empty() {
            let _ = writeln!(
                o,
                "  Fan-out: {} of {} deliveries, last after {} (p50 {})",
                c.pushes,
                summary.push_recipients,
                fmt_micros(push.max() as f64),
                fmt_micros(push.value_at_quantile(0.5) as f64)
            );
        }
    }
    if let Some(r) = summary.ramp_s {
        let _ = writeln!(
            o,
            "  Ramp: {} connections up in {} ({:.0} connections/s)",
            summary.connections,
            fmt_duration_s(r),
            summary.connections as f64 / r.max(1e-3)
        );
    }
    if let Some(m) = &summary.server_memory {
        let _ = writeln!(
            o,
            "  Server memory: RSS {:.1} MB before, {:.1} MB with {} connections: {:.0} bytes per connection",
            m.rss_before_bytes as f64 / 1e6,
            m.rss_end_bytes as f64 / 1e6,
            m.connections,
            m.bytes_per_connection
        );
    }
    if let Some(limit) = summary.link_limit {
        let _ = writeln!(
            o,
            "  Link limit: errors crossed the threshold at {limit} bound sessions"
        );
    }
    if c.bind_errors + c.server_closes + c.reconnects + c.churned > 0 {
        let _ = writeln!(
            o,
            "  Bind errors {}, server closes {}, reconnects {}, churned {}",
            c.bind_errors, c.server_closes, c.reconnects, c.churned
        );
    }
    let _ = writeln!(
        o,
        "  Socket errors: connect {}, read {}, write {}, timeout {}",
        c.connect_errors, c.read_errors, c.write_errors, c.timeouts
    );
    // miops://, ws://, wss://: what the wrk line has no place for.
    if c.handshake_errors > 0 || !total.get(Metric::Handshake).is_empty() {
        let _ = writeln!(
            o,
            "  Handshake errors (TLS, WebSocket): {}",
            c.handshake_errors
        );
    }
    let secs = summary.duration_s.max(1e-9);
    let _ = writeln!(o, "Binds/sec: {:>10.2}", c.binds as f64 / secs);
    let _ = writeln!(o, "Pings/sec: {:>10.2}", c.pongs as f64 / secs);
    if let Some(why) = &summary.interrupted {
        let _ = writeln!(o, "  (stopped early: {why})");
    }
    o
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn summary(latency: &Latencies) -> Summary {
        Summary {
            url: "miop://d:***@127.0.0.1:7700/".into(),
            scenario: "stability".into(),
            threads: 2,
            procs: 1,
            connections: 1000,
            duration_s: 10.0,
            peak_connected: 1000,
            link_limit: None,
            counters: Counters {
                binds: 1000,
                pongs: 1000,
                timeouts: 3,
                ..Counters::default()
            },
            latency: percentiles_by_name(latency),
            steps: Vec::new(),
            interrupted: None,
            push_requests: 0,
            push_errors: 0,
            push_recipients: 0,
            server_memory: None,
            ramp_s: None,
        }
    }

    #[test]
    fn a_known_distribution_prints_known_percentiles() {
        // 1..=1000 µs, once each: below 2048 µs the histogram is exact.
        let mut l = Latencies::default();
        for us in 1..=1000 {
            l.record(Metric::Ping, Duration::from_micros(us));
        }
        let text = text(&summary(&l), &l, true);
        for (q, v) in [
            ("50%", "500.00us"),
            ("75%", "750.00us"),
            ("90%", "900.00us"),
            ("99%", "990.00us"),
            ("99.9%", "999.00us"),
            ("99.99%", "1.00ms"),
            ("100%", "1.00ms"),
        ] {
            assert!(
                text.contains(&format!("  {q:>7}  {v:>9}")),
                "{q} should be {v} in\n{text}"
            );
        }
        assert!(
            text.contains("Ping      500.50us  288.67us    1.00ms"),
            "{text}"
        );
        assert!(text.contains("Socket errors: connect 0, read 0, write 0, timeout 3"));
        assert!(text.contains("Pings/sec:     100.00"), "{text}");
        let p = percentiles_by_name(&l)["ping"];
        assert_eq!((p.count, p.p50, p.p99, p.max), (1000, 500, 990, 1000));
    }

    #[test]
    fn a_steps_bind_latency_is_its_ramps_and_its_ping_latency_its_holds() {
        let pct = |p50| Percentiles {
            count: 10,
            p50,
            ..Percentiles::default()
        };
        let mut step = StepSummary {
            target: 100,
            ramp_s: 1.0,
            ramp_latency: [("bind".to_owned(), pct(7)), ("ping".to_owned(), pct(8))].into(),
            hold_started_s: 1.0,
            connected_min: 100,
            held_s: 5.0,
            latency: [("bind".to_owned(), pct(1)), ("ping".to_owned(), pct(2))].into(),
            errors: 0,
            timeouts: 0,
        };
        assert_eq!(step.percentiles("bind").map(|p| p.p50), Some(7));
        assert_eq!(step.percentiles("ping").map(|p| p.p50), Some(2));
        // A summary from before ramps were recorded: the hold's binds.
        step.ramp_latency.clear();
        assert_eq!(step.percentiles("bind").map(|p| p.p50), Some(1));
    }
}
