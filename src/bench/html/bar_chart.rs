//! Bar charts: grouped bars over categories, for figures per concurrency
//! step rather than per second.

use std::fmt::Write as _;

use super::axis::linear_axis;
use super::chart::{
    c, chart_empty, chart_open, y_axis_svg, LegendItem, MARGIN_L, MARGIN_R, PLOT_H, W,
};
use super::text::{esc, fmt_us, fmt_us_short};

/// One group of bars: a value per category (non-finite values are left out).
pub(super) struct Bars<'a> {
    pub(super) name: String,
    pub(super) values: Vec<f64>,
    pub(super) color: &'a str,
}

/// Grouped bars over categories, on a linear y axis from zero.
pub(super) fn bar_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    categories: &[String],
    bars: &[Bars],
) -> String {
    let items: Vec<LegendItem> = bars
        .iter()
        .map(|b| (b.name.as_str(), b.color, false))
        .collect();
    let (mut o, top) = chart_open(title, &items);
    let ymax = bars
        .iter()
        .flat_map(|b| b.values.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(0.0f64, f64::max);
    if categories.is_empty() || bars.is_empty() || ymax <= 0.0 {
        chart_empty(&mut o, top);
        return o;
    }
    let ya = linear_axis(0.0, ymax, 5, false, true);
    let (x0, x1, y1) = (MARGIN_L, W - MARGIN_R, top + PLOT_H);
    y_axis_svg(&mut o, &ya, y_label, top);

    let n = categories.len() as f64;
    let group = (x1 - x0) / n;
    let inner = group * 0.72;
    let bw = inner / bars.len() as f64;
    let widest = categories
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(1) as f64;
    let label_every = ((7.0 * widest + 12.0) / group).ceil().max(1.0) as usize;
    for (i, cat) in categories.iter().enumerate() {
        let gx = x0 + group * i as f64;
        for (j, b) in bars.iter().enumerate() {
            let Some(v) = b
                .values
                .get(i)
                .copied()
                .filter(|v| v.is_finite() && *v > 0.0)
            else {
                continue;
            };
            let y = (y1 - ya.frac(v) * PLOT_H).min(y1 - 1.0);
            let bx = gx + (group - inner) / 2.0 + bw * j as f64;
            let _ = writeln!(
                o,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\">\
                 <title>{} at {}: {}</title></rect>",
                c(bx),
                c(y),
                c((bw - 1.0).max(1.0)),
                c(y1 - y),
                b.color,
                esc(&b.name),
                esc(cat),
                fmt_us(v * 1000.0)
            );
            // The value on top, where it fits over the bar.
            let value = fmt_us_short(v * 1000.0);
            if 6.5 * value.chars().count() as f64 <= bw + 2.0 {
                let _ = writeln!(
                    o,
                    "<text class=\"val\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    c(bx + (bw - 1.0) / 2.0),
                    c(y - 4.0),
                    esc(&value)
                );
            }
        }
        if i % label_every == 0 {
            let _ = writeln!(
                o,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                c(gx + group / 2.0),
                c(y1 + 19.0),
                esc(cat)
            );
        }
    }
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n</svg>",
        c(x0 + (x1 - x0) / 2.0),
        c(y1 + 40.0),
        esc(x_label)
    );
    o
}
