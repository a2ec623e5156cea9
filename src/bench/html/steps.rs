//! The "Concurrency steps" section: a table and a bar chart of latency per
//! step, for the concurrency scenario (absent otherwise).

use std::fmt::Write as _;

use super::bar_chart::{bar_chart, Bars};
use super::style::metric_colors;
use super::text::{fmt_count, fmt_secs, fmt_us};
use crate::bench::report::StepSummary;
use crate::bench::stats::Percentiles;

/// The section; nothing for a run without steps.
pub(super) fn section(o: &mut String, steps: &[StepSummary]) {
    if steps.is_empty() {
        return;
    }
    o.push_str("<h2>Concurrency steps</h2>\n");
    o.push_str(
        "<table><thead><tr><th>Target</th><th>Held</th><th>Min connected</th>\
         <th>Ping p50</th><th>Ping p99</th><th>Bind p50</th><th>Bind p99</th>\
         <th>Errors</th><th>Timeouts</th></tr></thead><tbody>\n",
    );
    let q = |s: &StepSummary, metric: &str, f: fn(&Percentiles) -> u64| -> String {
        match s.percentiles(metric) {
            Some(p) if p.count > 0 => fmt_us(f(p) as f64),
            _ => "–".to_owned(),
        }
    };
    for s in steps {
        let bad = |v: u64| if v > 0 { " class=\"bad\"" } else { "" };
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td{}>{}</td></tr>",
            fmt_count(s.target),
            fmt_secs(s.held_s),
            fmt_count(s.connected_min),
            q(s, "ping", |p| p.p50),
            q(s, "ping", |p| p.p99),
            q(s, "bind", |p| p.p50),
            q(s, "bind", |p| p.p99),
            bad(s.errors),
            fmt_count(s.errors),
            bad(s.timeouts),
            fmt_count(s.timeouts),
        );
    }
    o.push_str("</tbody></table>\n");

    let categories: Vec<String> = steps.iter().map(|s| fmt_count(s.target)).collect();
    let mut bars = Vec::new();
    for metric in ["ping", "bind"] {
        if !steps
            .iter()
            .any(|s| s.latency.get(metric).is_some_and(|p| p.count > 0))
        {
            continue;
        }
        let (light, dark) = metric_colors(metric);
        for (q, color, f) in [
            (
                "p50",
                light,
                (|p: &Percentiles| p.p50) as fn(&Percentiles) -> u64,
            ),
            ("p99", dark, |p: &Percentiles| p.p99),
        ] {
            let values = steps
                .iter()
                .map(|s| match s.latency.get(metric) {
                    Some(p) if p.count > 0 => f(p) as f64 / 1000.0,
                    _ => f64::NAN,
                })
                .collect();
            bars.push(Bars {
                name: format!("{metric} {q}"),
                values,
                color,
            });
        }
    }
    o.push_str("<div style=\"height: 18px\"></div>\n");
    o.push_str(&bar_chart(
        "Latency per step",
        "target connections",
        "latency (ms)",
        &categories,
        &bars,
    ));
}
