//! What every chart shares: the SVG canvas and its geometry, the numbers
//! written into it, the title and legend, the y axis, and the frame that says
//! "no data". The chart families ([`super::line_chart`],
//! [`super::bar_chart`]) draw their plot area on top.

use std::fmt::Write as _;

use super::axis::Axis;
use super::text::esc;

/// Chart width in SVG units (the page scales the SVG to fit).
pub(super) const W: f64 = 1000.0;
/// Height of the plot area; the title and legend rows come on top.
pub(super) const PLOT_H: f64 = 250.0;
/// Margin left of the plot area, for the y tick labels and the y axis title.
pub(super) const MARGIN_L: f64 = 82.0;
/// Margin right of the plot area, so the last x tick label fits.
pub(super) const MARGIN_R: f64 = 28.0;
/// Margin under the plot area, for the x tick labels and the x axis title.
const MARGIN_B: f64 = 50.0;

/// The numbers written into the SVG: always finite, one decimal.
pub(super) fn c(v: f64) -> String {
    let v = if v.is_finite() {
        v.clamp(-1e6, 1e6)
    } else {
        0.0
    };
    format!("{v:.1}")
}

/// An entry of a legend: name, colour, dashed.
pub(super) type LegendItem<'a> = (&'a str, &'a str, bool);

/// The legend as one or more rows under the title; returns the SVG and the
/// number of rows.
fn legend(items: &[LegendItem], x0: f64, y0: f64, width: f64) -> (String, usize) {
    let mut o = String::new();
    if items.is_empty() {
        return (o, 0);
    }
    let (mut x, mut row) = (x0, 0usize);
    for (name, color, dashed) in items {
        let w = 24.0 + 7.0 * name.chars().count() as f64 + 22.0;
        if x > x0 && x + w > x0 + width {
            row += 1;
            x = x0;
        }
        let y = y0 + 18.0 * row as f64;
        let _ = writeln!(
            o,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"4\"{}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            c(x),
            c(y),
            c(x + 18.0),
            c(y),
            if *dashed {
                " stroke-dasharray=\"6 3\""
            } else {
                " stroke-linecap=\"round\""
            },
            c(x + 24.0),
            c(y + 4.0),
            esc(name)
        );
        x += w;
    }
    (o, row + 1)
}

/// Opens a chart: the `<svg>`, its title and legend. Returns the SVG so far
/// and the plot area's top.
pub(super) fn chart_open(title: &str, items: &[LegendItem]) -> (String, f64) {
    let (legend_svg, rows) = legend(items, MARGIN_L, 44.0, W - MARGIN_L - MARGIN_R);
    let top = if rows == 0 {
        44.0
    } else {
        44.0 + 18.0 * rows as f64 + 10.0
    };
    let h = top + PLOT_H + MARGIN_B;
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg class=\"chart\" viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"{}\">\n\
         <text class=\"title\" x=\"{}\" y=\"24\">{}</text>\n{legend_svg}",
        c(W),
        c(h),
        esc(title),
        c(MARGIN_L),
        esc(title)
    );
    (o, top)
}

/// Frame, "no data" message, closing tag.
pub(super) fn chart_empty(o: &mut String, top: f64) {
    let _ = writeln!(
        o,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" class=\"axis\"/>\n\
         <text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>\n</svg>",
        c(MARGIN_L),
        c(top),
        c(W - MARGIN_L - MARGIN_R),
        c(PLOT_H),
        c(MARGIN_L + (W - MARGIN_L - MARGIN_R) / 2.0),
        c(top + PLOT_H / 2.0)
    );
}

/// Horizontal gridlines with their labels, the y axis and its title.
pub(super) fn y_axis_svg(o: &mut String, ya: &Axis, y_label: &str, top: f64) {
    let (x0, x1, y1) = (MARGIN_L, W - MARGIN_R, top + PLOT_H);
    for (v, label) in &ya.ticks {
        let y = y1 - ya.frac(*v) * PLOT_H;
        let _ = writeln!(
            o,
            "<line class=\"grid\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            c(x0),
            c(y),
            c(x1),
            c(y),
            c(x0 - 8.0),
            c(y + 4.0),
            esc(label)
        );
    }
    let _ = writeln!(
        o,
        "<line class=\"axis\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\
         <line class=\"axis\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 {} {})\">{}</text>",
        c(x0),
        c(top),
        c(x0),
        c(y1),
        c(x0),
        c(y1),
        c(x1),
        c(y1),
        c(20.0),
        c(top + PLOT_H / 2.0),
        c(20.0),
        c(top + PLOT_H / 2.0),
        esc(y_label)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_numbers_are_finite() {
        assert_eq!(c(f64::INFINITY), "0.0");
    }
}
