//! The "Over time" section: the per-second timeline as four charts
//! (connection growth, rates, cumulative errors, latency percentiles).

use super::line_chart::{line_chart, palette_line_chart, OwnedSeries, Series};
use super::style::metric_colors;
use crate::bench::report::TimelinePoint;
use crate::bench::stats::Percentiles;

/// The section, or a note if the run ended before its first sample.
pub(super) fn section(o: &mut String, tl: &[TimelinePoint]) {
    o.push_str("<h2>Over time</h2>\n");
    if tl.is_empty() {
        o.push_str(
            "<p class=\"note\">No per-second timeline was recorded (the run ended before its first sample).</p>\n",
        );
        return;
    }
    let series = |f: &dyn Fn(&TimelinePoint) -> f64| -> Vec<(f64, f64)> {
        tl.iter().map(|p| (p.t, f(p))).collect()
    };

    o.push_str(&palette_line_chart(
        "Connection growth",
        "bound sessions",
        &[("connected", series(&|p| p.connected as f64))],
        false,
    ));

    let rates: Vec<(&str, Vec<(f64, f64)>)> = [
        ("connects/s", series(&|p| p.connects_per_s)),
        ("binds/s", series(&|p| p.binds_per_s)),
        ("pings/s", series(&|p| p.pings_per_s)),
        ("pushes/s", series(&|p| p.pushes_per_s)),
    ]
    .into_iter()
    .filter(|(_, pts)| pts.iter().any(|(_, y)| y.is_finite() && *y != 0.0))
    .collect();
    o.push_str(&palette_line_chart(
        "Rates per second",
        "per second",
        &rates,
        false,
    ));

    let errors = series(&|p| p.errors as f64);
    let timeouts = series(&|p| p.timeouts as f64);
    o.push_str(&line_chart(
        "Errors and timeouts (cumulative)",
        "count",
        &[
            Series {
                name: "errors",
                points: &errors,
                color: "#d55e00",
            },
            Series {
                name: "timeouts",
                points: &timeouts,
                color: "#e69f00",
            },
        ],
        false,
    ));

    // p50 and p99 per metric, in ms; seconds without samples break the line.
    let mut lat: Vec<OwnedSeries> = Vec::new();
    for metric in ["ping", "bind", "push"] {
        let pick = |q: fn(&Percentiles) -> u64| -> Vec<(f64, f64)> {
            tl.iter()
                .map(|p| match p.latency.get(metric) {
                    Some(l) if l.count > 0 => (p.t, q(l) as f64 / 1000.0),
                    _ => (p.t, f64::NAN),
                })
                .collect()
        };
        let p50 = pick(|l| l.p50);
        if p50.iter().all(|(_, y)| y.is_nan()) {
            continue;
        }
        let (light, dark) = metric_colors(metric);
        lat.push((format!("{metric} p50"), p50, light));
        lat.push((format!("{metric} p99"), pick(|l| l.p99), dark));
    }
    let (lo, hi) = lat
        .iter()
        .flat_map(|(_, pts, _)| pts.iter().map(|(_, y)| *y))
        .filter(|y| y.is_finite() && *y > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let log_y = hi > 0.0 && hi / lo > 100.0;
    let lat_series: Vec<Series> = lat
        .iter()
        .map(|(name, points, color)| Series {
            name,
            points,
            color,
        })
        .collect();
    let title = if log_y {
        "Latency percentiles over time (log scale)"
    } else {
        "Latency percentiles over time"
    };
    o.push_str(&line_chart(title, "latency (ms)", &lat_series, log_y));
}
