//! The top of the page: what was run (URL, scenario, load, duration), the
//! counters (activity, average throughput, errors) and the whole-run latency
//! table.

use std::fmt::Write as _;

use super::text::{esc, fmt_count, fmt_rate, fmt_secs, fmt_us};
use crate::bench::report::Summary;
use crate::bench::stats::Percentiles;

/// Latency metrics in the order of the tables.
const METRICS: [&str; 5] = ["connect", "handshake", "bind", "ping", "push"];

/// One row of the run's description; `value_html` is already escaped.
fn meta_row(o: &mut String, label: &str, value_html: &str) {
    let _ = writeln!(o, "<tr><th>{label}</th><td>{value_html}</td></tr>");
}

/// The title, a warning if the run was stopped early, and what was run.
pub(super) fn header(o: &mut String, s: &Summary) {
    o.push_str("<h1>miop-bench report</h1>\n");
    if let Some(why) = &s.interrupted {
        let _ = writeln!(
            o,
            "<p class=\"warn\"><strong>Stopped early:</strong> {}. The numbers cover the run up to that point.</p>",
            esc(why.trim_end().trim_end_matches('.'))
        );
    }
    o.push_str("<table class=\"meta\">\n");
    let _ = writeln!(
        o,
        "<tr><th>URL</th><td class=\"url\">{}</td></tr>",
        esc(&s.url)
    );
    meta_row(o, "Scenario", &esc(&s.scenario));
    meta_row(
        o,
        "Load",
        &format!(
            "{} connections, {} thread{}, {} process{}",
            fmt_count(s.connections),
            s.threads,
            if s.threads == 1 { "" } else { "s" },
            s.procs,
            if s.procs == 1 { "" } else { "es" }
        ),
    );
    meta_row(o, "Duration", &fmt_secs(s.duration_s));
    meta_row(
        o,
        "Peak connected",
        &format!("{} sessions bound", fmt_count(s.peak_connected)),
    );
    if let Some(r) = s.ramp_s {
        meta_row(
            o,
            "Ramp",
            &format!(
                "{} connections up in {} ({}/s)",
                fmt_count(s.connections),
                fmt_secs(r),
                fmt_rate(s.connections as f64 / r.max(1e-3))
            ),
        );
    }
    if let Some(m) = &s.server_memory {
        meta_row(
            o,
            "Server memory",
            &format!(
                "RSS {:.1} MB before, {:.1} MB with {} connections: {:.0} bytes per connection",
                m.rss_before_bytes as f64 / 1e6,
                m.rss_end_bytes as f64 / 1e6,
                fmt_count(m.connections),
                m.bytes_per_connection
            ),
        );
    }
    if let Some(limit) = s.link_limit {
        meta_row(
            o,
            "Link limit",
            &format!(
                "errors crossed the threshold at {} bound sessions",
                fmt_count(limit)
            ),
        );
    }
    o.push_str("</table>\n");
}

/// Activity, average throughput and errors, side by side.
pub(super) fn counters(o: &mut String, s: &Summary) {
    let c = &s.counters;
    o.push_str("<h2>Summary</h2>\n<div class=\"cols\">\n");

    o.push_str("<div><h3>Activity</h3><table><tbody>\n");
    for (label, v) in [
        ("Connects", c.connects),
        ("Binds", c.binds),
        ("Pings sent", c.pings),
        ("Pongs received", c.pongs),
        ("Pushes received", c.pushes),
        ("Reconnects", c.reconnects),
        ("Server closes", c.server_closes),
        ("Churned", c.churned),
    ] {
        let _ = writeln!(o, "<tr><td>{label}</td><td>{}</td></tr>", fmt_count(v));
    }
    o.push_str("</tbody></table></div>\n");

    o.push_str("<div><h3>Throughput (average)</h3><table><tbody>\n");
    let secs = s.duration_s;
    let per_s = |n: u64| {
        if secs.is_finite() && secs > 0.0 {
            fmt_rate(n as f64 / secs)
        } else {
            "–".to_owned()
        }
    };
    for (label, v) in [
        ("Binds/s", c.binds),
        ("Pongs/s", c.pongs),
        ("Pushes/s", c.pushes),
    ] {
        let _ = writeln!(o, "<tr><td>{label}</td><td>{}</td></tr>", per_s(v));
    }
    o.push_str("</tbody></table></div>\n");

    o.push_str("<div><h3>Errors</h3><table><tbody>\n");
    // TLS and WebSocket runs (they time their handshakes) have a row more.
    let handshakes =
        c.handshake_errors > 0 || s.latency.get("handshake").is_some_and(|p| p.count > 0);
    for (label, v) in [
        ("Connect", Some(c.connect_errors)),
        ("Handshake", handshakes.then_some(c.handshake_errors)),
        ("Bind", Some(c.bind_errors)),
        ("Read", Some(c.read_errors)),
        ("Write", Some(c.write_errors)),
        ("Timeouts", Some(c.timeouts)),
        ("Total", Some(c.errors())),
    ] {
        let Some(v) = v else { continue };
        let class = if v > 0 { " class=\"bad\"" } else { "" };
        let _ = writeln!(
            o,
            "<tr><td>{label}</td><td{class}>{}</td></tr>",
            fmt_count(v)
        );
    }
    o.push_str("</tbody></table></div>\n</div>\n");
}

/// Whole-run latency of every metric that has samples.
pub(super) fn latency_table(o: &mut String, s: &Summary) {
    o.push_str("<h2>Latency</h2>\n");
    let rows: Vec<(&str, &Percentiles)> = METRICS
        .iter()
        .filter_map(|m| s.latency.get(*m).map(|p| (*m, p)))
        .filter(|(_, p)| p.count > 0)
        .collect();
    if rows.is_empty() {
        o.push_str("<p class=\"note\">No latency samples were recorded.</p>\n");
        return;
    }
    o.push_str(
        "<table><thead><tr><th>Metric</th><th>Count</th><th>Min</th><th>Mean</th><th>p50</th>\
         <th>p90</th><th>p99</th><th>p99.9</th><th>Max</th></tr></thead><tbody>\n",
    );
    for (name, p) in rows {
        let _ = writeln!(
            o,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt_count(p.count),
            fmt_us(p.min as f64),
            fmt_us(p.mean),
            fmt_us(p.p50 as f64),
            fmt_us(p.p90 as f64),
            fmt_us(p.p99 as f64),
            fmt_us(p.p999 as f64),
            fmt_us(p.max as f64),
        );
    }
    o.push_str("</tbody></table>\n");
}
