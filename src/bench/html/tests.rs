//! Tests of the whole page: structure, escaping, odd input, and the golden
//! file that pins the output byte for byte.

use std::collections::BTreeMap;

use super::chart::{MARGIN_L, MARGIN_R, W};
use super::render;
use crate::bench::report::{fmt_micros, Report, StepSummary, Summary, TimelinePoint};
use crate::bench::stats::{Counters, Percentiles};

fn pct(count: u64, p50: u64, p99: u64) -> Percentiles {
    Percentiles {
        count,
        min: p50 / 2,
        mean: p50 as f64 * 1.2,
        stdev: p50 as f64 * 0.3,
        p50,
        p75: p50 + (p99 - p50) / 4,
        p90: p50 + (p99 - p50) / 2,
        p99,
        p999: p99 * 2,
        p9999: p99 * 3,
        max: p99 * 4,
    }
}

fn empty_summary() -> Summary {
    Summary {
        url: "ws://127.0.0.1:7000/v1?key=****".to_owned(),
        scenario: "ramp".to_owned(),
        threads: 1,
        procs: 1,
        connections: 0,
        duration_s: 0.0,
        peak_connected: 0,
        link_limit: None,
        counters: Counters::default(),
        latency: BTreeMap::new(),
        steps: Vec::new(),
        interrupted: None,
        push_requests: 0,
        push_errors: 0,
        push_recipients: 0,
        server_memory: None,
        ramp_s: None,
    }
}

fn point(t: f64) -> TimelinePoint {
    TimelinePoint {
        t,
        connected: 0,
        connects_per_s: 0.0,
        binds_per_s: 0.0,
        pings_per_s: 0.0,
        pushes_per_s: 0.0,
        errors: 0,
        timeouts: 0,
        latency: BTreeMap::new(),
        counters: Counters::default(),
    }
}

/// 120 seconds of a ramp to 50,000 sessions with some errors, latencies
/// growing with the load, and a 3-step concurrency run.
fn sample_report() -> Report {
    let mut timeline = Vec::new();
    for t in 1..=120u64 {
        let connected = (t * 500).min(50_000);
        let ramping = connected < 50_000 || t == 100;
        let mut p = point(t as f64);
        p.connected = connected;
        p.connects_per_s = if ramping { 500.0 } else { 0.0 };
        p.binds_per_s = if ramping { 498.0 } else { 0.0 };
        p.pings_per_s = connected as f64 / 30.0;
        p.errors = t.saturating_sub(80) * 3;
        p.timeouts = t.saturating_sub(90);
        if t > 2 {
            p.latency.insert(
                "ping".into(),
                pct(connected / 30, 400 + t * 20, 2_000 + t * 300),
            );
        }
        if ramping {
            p.latency
                .insert("bind".into(), pct(498, 900 + t * 30, 5_000 + t * 900));
        }
        p.latency.insert("push".into(), Percentiles::default());
        p.counters.connected = connected;
        p.counters.binds = connected;
        timeline.push(p);
    }
    let step = |target: u64, ping: (u64, u64), bind: (u64, u64), errors: u64| StepSummary {
        target,
        ramp_s: 10.0,
        ramp_latency: BTreeMap::new(),
        hold_started_s: 0.0,
        connected_min: target - target / 100,
        held_s: 30.0,
        latency: [
            ("ping".to_owned(), pct(target, ping.0, ping.1)),
            ("bind".to_owned(), pct(target, bind.0, bind.1)),
        ]
        .into_iter()
        .collect(),
        errors,
        timeouts: errors / 2,
    };
    let mut summary = empty_summary();
    summary.url = "ws://bench.example:7000/v1?key=****".to_owned();
    summary.scenario = "concurrency".to_owned();
    summary.threads = 8;
    summary.procs = 4;
    summary.connections = 50_000;
    summary.duration_s = 120.0;
    summary.peak_connected = 50_000;
    summary.counters = Counters {
        connected: 50_000,
        connects: 50_100,
        binds: 50_000,
        pings: 120_000,
        pongs: 119_900,
        pushes: 0,
        reconnects: 100,
        server_closes: 3,
        churned: 0,
        connect_errors: 50,
        bind_errors: 0,
        read_errors: 10,
        write_errors: 0,
        timeouts: 30,
        handshake_errors: 0,
    };
    summary.latency = [
        ("connect".to_owned(), pct(50_100, 150, 1_200)),
        ("bind".to_owned(), pct(50_000, 1_800, 70_000)),
        ("ping".to_owned(), pct(119_900, 900, 30_000)),
        ("push".to_owned(), Percentiles::default()),
    ]
    .into_iter()
    .collect();
    summary.steps = vec![
        step(10_000, (600, 3_000), (1_200, 9_000), 0),
        step(20_000, (900, 6_500), (1_900, 21_000), 4),
        step(50_000, (2_100, 31_000), (4_800, 95_000), 40),
    ];
    Report { summary, timeline }
}

fn assert_clean(html: &str) {
    for bad in ["NaN", "inf"] {
        assert!(!html.contains(bad), "{bad:?} in the page");
    }
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("http://") && !html.contains("https://"));
}

/// The `points` of every polyline of series `name`.
fn polylines<'a>(html: &'a str, name: &str) -> Vec<Vec<&'a str>> {
    let marker = format!("<polyline data-series=\"{name}\"");
    html.match_indices(&marker)
        .map(|(i, _)| {
            let rest = &html[i..];
            let start = rest.find("points=\"").expect("points") + "points=\"".len();
            let end = start + rest[start..].find('"').expect("closing quote");
            rest[start..end].split_whitespace().collect()
        })
        .collect()
}

#[test]
fn sample_report_renders_charts_and_tables() {
    let html = render(&sample_report());
    assert_clean(&html);
    // 4 timeline charts and the step chart.
    assert_eq!(html.matches("<svg").count(), 5, "{html}");
    for title in [
        "Connection growth",
        "Rates per second",
        "Errors and timeouts (cumulative)",
        "Latency percentiles over time",
        "Concurrency steps",
        "Latency per step",
    ] {
        assert!(html.contains(title), "{title}");
    }
    let connected = polylines(&html, "connected");
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0].len(), 120);
    // Every point is a pair of finite numbers inside the chart.
    for pt in &connected[0] {
        let (x, y) = pt.split_once(',').expect("x,y");
        let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
        assert!((MARGIN_L..=W - MARGIN_R).contains(&x), "{pt}");
        assert!(y > 0.0 && y < 500.0, "{pt}");
    }
    // Rates: pushes are all zero, so three series.
    assert_eq!(polylines(&html, "connects/s").len(), 1);
    assert_eq!(polylines(&html, "pings/s").len(), 1);
    assert!(polylines(&html, "pushes/s").is_empty());
    // binds/s runs right over connects/s: dashed, so both show.
    let dashed = |name: &str| {
        let i = html
            .find(&format!("<polyline data-series=\"{name}\""))
            .unwrap();
        html[i..i + html[i..].find('>').unwrap()].contains("stroke-dasharray")
    };
    assert!(dashed("binds/s"));
    assert!(!dashed("connects/s") && !dashed("pings/s") && !dashed("connected"));
    // Ping has no samples in the first two seconds: 118 points.
    let ping = polylines(&html, "ping p50");
    assert_eq!(ping.iter().map(Vec::len).sum::<usize>(), 118);
    // Bind latency only while ramping: one stretch of 100 seconds.
    let bind = polylines(&html, "bind p99");
    assert_eq!(bind.len(), 1);
    assert_eq!(bind[0].len(), 100);
    assert!(polylines(&html, "push p50").is_empty());
    // Latency spans 0.46 ms (ping p50) .. 95 ms (bind p99): a log axis.
    assert!(html.contains("Latency percentiles over time (log scale)"));
    // Tables.
    assert!(html.contains("<td>connect</td>"));
    assert!(!html.contains("<td>push</td>"), "push had no samples");
    assert!(html.contains("50,000"));
    assert!(html.contains("<td>20,000</td>"));
    assert!(html.contains(&fmt_micros(31_000.0)));
    // Latency on the step chart: 12 bars.
    assert_eq!(html.matches("<rect x=").count(), 12);
}

/// The page is pinned byte for byte, so a refactor of this module cannot
/// change it unnoticed. The input is [`sample_report`] cut to every tenth
/// second, which keeps the file small and still takes every path: a log
/// latency axis, a dashed series, point markers, broken lines and bars.
/// After a deliberate change to the page, rewrite the file with
/// `MIOP_BLESS=1 cargo test --lib html` and review the diff.
#[test]
fn sample_report_matches_the_golden_page() {
    let mut r = sample_report();
    r.timeline.retain(|p| (p.t as u64).is_multiple_of(10));
    let html = render(&r);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/bench/html/testdata/sample_report.html"
    );
    if std::env::var_os("MIOP_BLESS").is_some() {
        std::fs::write(path, &html).unwrap();
    }
    let golden = std::fs::read_to_string(path).unwrap();
    if html != golden {
        let line = html
            .lines()
            .zip(golden.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| html.lines().count().min(golden.lines().count()));
        panic!(
            "the page differs from {path} from line {}:\n  now:    {:?}\n  golden: {:?}",
            line + 1,
            html.lines().nth(line),
            golden.lines().nth(line)
        );
    }
}

#[test]
fn text_from_the_run_is_escaped() {
    let mut r = sample_report();
    r.summary.url = "ws://h:1/v1?key=****&x=<script>alert(1)</script>".to_owned();
    r.summary.scenario = "a\"b'c".to_owned();
    r.summary.interrupted = Some("Ctrl-C <twice>".to_owned());
    let html = render(&r);
    assert_clean(&html);
    assert!(html.contains("key=****&amp;x=&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("a&quot;b&#39;c"));
    assert!(html.contains("Stopped early:</strong> Ctrl-C &lt;twice&gt;"));
}

#[test]
fn empty_report_renders() {
    let r = Report {
        summary: empty_summary(),
        timeline: Vec::new(),
    };
    let html = render(&r);
    assert_clean(&html);
    assert!(html.contains("miop-bench report"));
    assert!(html.contains("No per-second timeline"));
    assert!(html.contains("No latency samples"));
    assert!(!html.contains("<svg"));
    assert!(!html.contains("Concurrency steps"));
}

#[test]
fn ramp_and_server_memory_are_shown_when_measured() {
    let mut summary = empty_summary();
    summary.url = "mqtt://127.0.0.1:1883/".into();
    summary.connections = 5000;
    summary.ramp_s = Some(0.5);
    summary.server_memory = Some(crate::bench::server_memory::ServerMemory::new(
        8_000_000, 11_750_000, 5000,
    ));
    let html = render(&Report {
        summary,
        timeline: Vec::new(),
    });
    assert_clean(&html);
    assert!(html.contains("<th>Ramp</th>"), "{html}");
    assert!(html.contains("connections up in"), "{html}");
    assert!(
        html.contains(
            "RSS 8.0 MB before, 11.8 MB with 5,000 connections: 750 bytes per connection"
        ),
        "{html}"
    );
    // Not measured: no rows.
    let html = render(&Report {
        summary: empty_summary(),
        timeline: Vec::new(),
    });
    assert!(!html.contains("<th>Ramp</th>") && !html.contains("Server memory"));
}

#[test]
fn single_point_and_all_zero_series_render() {
    let mut r = Report {
        summary: empty_summary(),
        timeline: vec![point(1.0)],
    };
    let html = render(&r);
    assert_clean(&html);
    assert_eq!(html.matches("<svg").count(), 4);
    // The single point shows as a marker, all-zero rates and no latency as "no data".
    assert!(html.contains("<circle"));
    assert_eq!(html.matches(">no data<").count(), 2);

    r.timeline = (0..10).map(|t| point(t as f64)).collect();
    let html = render(&r);
    assert_clean(&html);
    assert_eq!(polylines(&html, "connected")[0].len(), 10);
}

#[test]
fn huge_and_odd_values_stay_finite() {
    let mut r = Report {
        summary: empty_summary(),
        timeline: Vec::new(),
    };
    r.summary.duration_s = f64::NAN;
    r.summary.peak_connected = u64::MAX;
    r.summary.latency.insert(
        "ping".to_owned(),
        Percentiles {
            mean: f64::INFINITY,
            ..pct(1, 1_000_000_000, 1_000_000_000)
        },
    );
    for t in 0..3 {
        let mut p = point(1e9 + t as f64);
        p.connected = 1_000_000_000;
        p.connects_per_s = 1e9;
        p.pings_per_s = if t == 1 { f64::NAN } else { f64::INFINITY };
        p.errors = u64::MAX;
        p.latency
            .insert("ping".into(), pct(1, 1, 1_000_000_000 * (t + 1)));
        r.timeline.push(p);
    }
    r.summary.steps.push(StepSummary {
        target: 1_000_000_000,
        ramp_s: f64::INFINITY,
        ramp_latency: BTreeMap::new(),
        hold_started_s: f64::NAN,
        connected_min: 0,
        held_s: f64::INFINITY,
        latency: [("ping".to_owned(), pct(1, 1, 1_000_000_000))]
            .into_iter()
            .collect(),
        errors: 0,
        timeouts: 0,
    });
    let html = render(&r);
    assert_clean(&html);
    // 1 µs .. 3,000 s: a log axis.
    assert!(html.contains("Latency percentiles over time (log scale)"));
}
