//! Line charts over time: the per-second timeline as one `<polyline>` per
//! unbroken stretch of each series, on a clock-time x axis.

use std::fmt::Write as _;

use super::axis::{linear_axis, log_axis, time_axis};
use super::chart::{
    c, chart_empty, chart_open, y_axis_svg, LegendItem, MARGIN_L, MARGIN_R, PLOT_H, W,
};
use super::style::PALETTE;
use super::text::esc;

/// A [`Series`] that owns its name and points: (name, points, colour).
pub(super) type OwnedSeries = (String, Vec<(f64, f64)>, &'static str);

/// One line of a chart. A point whose y is not finite (or, on a log axis, not
/// positive) is left out and breaks the line there.
pub(super) struct Series<'a> {
    pub(super) name: &'a str,
    pub(super) points: &'a [(f64, f64)],
    pub(super) color: &'a str,
}

/// A line chart over time with colours from [`PALETTE`], in series order.
pub(super) fn palette_line_chart(
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    log_y: bool,
) -> String {
    let styled: Vec<Series> = series
        .iter()
        .enumerate()
        .map(|(i, (name, points))| Series {
            name,
            points,
            color: PALETTE[i % PALETTE.len()],
        })
        .collect();
    line_chart(title, y_label, &styled, log_y)
}

/// A line chart over time: gridlines, tick labels, axis titles, legend and
/// one `<polyline>` per unbroken stretch of each series.
pub(super) fn line_chart(title: &str, y_label: &str, series: &[Series], log_y: bool) -> String {
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let all = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(usable)
    };
    let Some((xmin, xmax, ymin, ymax)) = all().fold(None, |acc, (x, y)| {
        let (x_lo, x_hi, y_lo, y_hi) = acc.unwrap_or((x, x, y, y));
        Some((x_lo.min(x), x_hi.max(x), y_lo.min(y), y_hi.max(y)))
    }) else {
        let items: Vec<LegendItem> = series.iter().map(|s| (s.name, s.color, false)).collect();
        let (mut o, top) = chart_open(title, &items);
        chart_empty(&mut o, top);
        return o;
    };
    let (xa, x_title) = time_axis(xmin.min(0.0), xmax);
    let ya = if log_y {
        log_axis(ymin, ymax)
    } else {
        let integral = all().all(|(_, y)| y.fract() == 0.0 && y.abs() < 1e15);
        linear_axis(ymin.min(0.0), ymax.max(0.0), 5, integral, true)
    };
    // A series that mostly runs under an earlier one (binds/s on top of
    // connects/s when every connect binds) is dashed, so both stay visible.
    let heights: Vec<Vec<Option<(f64, f64)>>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .map(|p| usable(p).then(|| (p.0, ya.frac(p.1) * PLOT_H)))
                .collect()
        })
        .collect();
    let dashed: Vec<bool> = (0..series.len())
        .map(|j| {
            let n = heights[j].iter().flatten().count();
            n > 0
                && (0..j).any(|i| {
                    let close = heights[i]
                        .iter()
                        .zip(&heights[j])
                        .filter(|(a, b)| match (a, b) {
                            (Some(a), Some(b)) => a.0 == b.0 && (a.1 - b.1).abs() < 2.0,
                            _ => false,
                        })
                        .count();
                    close * 2 > n
                })
        })
        .collect();
    let items: Vec<LegendItem> = series
        .iter()
        .zip(&dashed)
        .map(|(s, d)| (s.name, s.color, *d))
        .collect();
    let (mut o, top) = chart_open(title, &items);
    let (x0, x1, y1) = (MARGIN_L, W - MARGIN_R, top + PLOT_H);
    let px = |x: f64| x0 + xa.frac(x) * (x1 - x0);
    let py = |y: f64| y1 - ya.frac(y) * PLOT_H;

    y_axis_svg(&mut o, &ya, y_label, top);
    for (v, label) in &xa.ticks {
        let x = px(*v);
        let _ = writeln!(
            o,
            "<line class=\"grid\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\
             <line class=\"axis\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            c(x),
            c(top),
            c(x),
            c(y1),
            c(x),
            c(y1),
            c(x),
            c(y1 + 5.0),
            c(x),
            c(y1 + 19.0),
            esc(label)
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_title}</text>",
        c(x0 + (x1 - x0) / 2.0),
        c(y1 + 40.0)
    );

    let few = all().count() <= 60;
    for (s, dashed) in series.iter().zip(dashed) {
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for p in s.points {
            let (x, y) = (px(p.0), py(p.1));
            if usable(p) && x.is_finite() && y.is_finite() {
                segments.last_mut().expect("never empty").push((x, y));
            } else if !segments.last().expect("never empty").is_empty() {
                segments.push(Vec::new());
            }
        }
        for seg in segments.iter().filter(|s| !s.is_empty()) {
            if seg.len() > 1 {
                let pts: Vec<String> = seg
                    .iter()
                    .map(|(x, y)| format!("{},{}", c(*x), c(*y)))
                    .collect();
                let _ = writeln!(
                    o,
                    "<polyline data-series=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" \
                     stroke-linejoin=\"round\"{} points=\"{}\"><title>{}</title></polyline>",
                    esc(s.name),
                    s.color,
                    if dashed {
                        " stroke-dasharray=\"8 5\""
                    } else {
                        ""
                    },
                    pts.join(" "),
                    esc(s.name)
                );
            }
            if few || seg.len() == 1 {
                for (x, y) in seg {
                    let _ = writeln!(
                        o,
                        "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>",
                        c(*x),
                        c(*y),
                        s.color
                    );
                }
            }
        }
    }
    o.push_str("</svg>\n");
    o
}
