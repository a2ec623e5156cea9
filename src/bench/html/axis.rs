//! The scales of the charts: an axis maps its domain onto [0, 1] and carries
//! labelled ticks at round numbers (linear with SI suffixes, log-10, or clock
//! time), so a reader sees 10k, 20k or 5:00 rather than 9,873 or 0.30000000000000004.
//! Plain numbers only: drawing the axes is [`super::chart`]'s job.

use super::text::trim_zeros;

/// One axis: its domain and labelled ticks.
pub(super) struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    pub(super) ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Where `v` falls between `lo` (0) and `hi` (1).
    pub(super) fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

/// A range that is finite and not empty.
fn sane_range(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo.min(hi), lo.max(hi))
    } else {
        (0.0, 1.0)
    };
    if hi - lo > 0.0 && (hi - lo).is_finite() {
        (lo, hi)
    } else {
        (lo, lo + lo.abs().max(1.0))
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let nice = if n <= 1.0 + 1e-9 {
        1.0
    } else if n <= 2.0 + 1e-9 {
        2.0
    } else if n <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Multiples of `step` within [lo, hi].
fn ticks_within(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil();
    let last = (hi / step + 1e-9).floor();
    if !(first.is_finite() && last.is_finite()) || last < first {
        return Vec::new();
    }
    (0..=((last - first) as usize).min(200))
        .map(|i| (first + i as f64) * step)
        .collect()
}

/// A linear axis with about `target` ticks at round numbers; with `extend`
/// the domain grows to the ticks around it. `integral` data gets whole ticks.
pub(super) fn linear_axis(lo: f64, hi: f64, target: usize, integral: bool, extend: bool) -> Axis {
    let (mut lo, mut hi) = sane_range(lo, hi);
    let mut step = nice_step((hi - lo) / target.max(1) as f64);
    if integral {
        step = step.max(1.0);
    }
    if extend {
        let (l, h) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        if l.is_finite() && h.is_finite() && h > l {
            (lo, hi) = (l, h);
        }
    }
    let ticks = ticks_within(lo, hi, step);
    let max_abs = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    let (div, suffix) = si_unit(max_abs);
    let decimals = decimals_for(step / div);
    Axis {
        lo,
        hi,
        log: false,
        ticks: ticks
            .into_iter()
            .map(|t| (t, num_label(t, div, suffix, decimals)))
            .collect(),
    }
}

/// A log-10 axis over whole decades, with 2 and 5 in between when there is room.
pub(super) fn log_axis(lo: f64, hi: f64) -> Axis {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo > 0.0 && hi >= lo {
        (lo, hi)
    } else {
        (1.0, 10.0)
    };
    let a = lo.log10().floor().clamp(-300.0, 300.0);
    let mut b = hi.log10().ceil().clamp(-300.0, 300.0);
    if b <= a {
        b = a + 1.0;
    }
    let decades = (b - a) as usize;
    let mults: &[f64] = if decades <= 3 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let every = decades.div_ceil(8).max(1);
    let mut ticks = Vec::new();
    for d in (0..=decades).step_by(every) {
        let e = 10f64.powi((a as i32) + d as i32);
        for m in mults {
            if d == decades && *m > 1.0 {
                break;
            }
            let v = m * e;
            let (div, suffix) = si_unit(v);
            ticks.push((v, num_label(v, div, suffix, decimals_for(v / div))));
        }
    }
    Axis {
        lo: 10f64.powi(a as i32),
        hi: 10f64.powi(b as i32),
        log: true,
        ticks,
    }
}

/// The time axis (seconds) with steps a clock reader likes, and its title.
pub(super) fn time_axis(lo: f64, hi: f64) -> (Axis, &'static str) {
    const STEPS: [f64; 19] = [
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
        7200.0, 10800.0, 21600.0, 43200.0, 86400.0,
    ];
    let (lo, hi) = sane_range(lo, hi);
    let span = hi - lo;
    let step = if span < 5.0 {
        nice_step(span / 5.0)
    } else {
        STEPS
            .iter()
            .copied()
            .find(|s| span / s <= 10.0)
            .unwrap_or_else(|| nice_step(span / 10.0).max(86400.0))
    };
    let ticks = ticks_within(lo, hi, step);
    let clock = |t: f64, unit: f64| {
        let sign = if t < 0.0 { "-" } else { "" };
        let n = (t.abs() / unit).round() as u64;
        format!("{sign}{}:{:02}", n / 60, n % 60)
    };
    let (title, label): (&str, Box<dyn Fn(f64) -> String>) = if hi.abs().max(lo.abs()) <= 300.0 {
        let d = decimals_for(step);
        ("time (s)", Box::new(move |t| num_label(t, 1.0, "", d)))
    } else if hi.abs().max(lo.abs()) <= 3.0 * 3600.0 {
        ("time (min:s)", Box::new(move |t| clock(t, 1.0)))
    } else {
        ("time (h:min)", Box::new(move |t| clock(t, 60.0)))
    };
    let axis = Axis {
        lo,
        hi,
        log: false,
        ticks: ticks.into_iter().map(|t| (t, label(t))).collect(),
    };
    (axis, title)
}

/// The SI prefix that suits numbers up to `v`.
fn si_unit(v: f64) -> (f64, &'static str) {
    let v = v.abs();
    if v >= 1e12 {
        (1e12, "T")
    } else if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    }
}

/// Decimals needed to tell apart multiples of `step`.
fn decimals_for(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) || step >= 1.0 {
        return 0;
    }
    (-step.log10() - 1e-9).ceil().clamp(0.0, 9.0) as usize
}

/// A tick label: `v` in units of `div`, with `decimals`, trailing zeros cut.
fn num_label(v: f64, div: f64, suffix: &str, decimals: usize) -> String {
    let x = v / div;
    let x = if x.abs() < 1e-9 { 0.0 } else { x };
    let s = trim_zeros(format!("{x:.decimals$}"));
    if s == "0" {
        s
    } else {
        s + suffix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_pick_round_ticks() {
        let a = linear_axis(0.0, 50_000.0, 5, true, true);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "10k", "20k", "30k", "40k", "50k"]);

        let a = linear_axis(0.0, 2.3, 5, false, true);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "0.5", "1", "1.5", "2", "2.5"]);
        assert_eq!(a.hi, 2.5);

        // All zero, integral: [0, 1] with whole ticks.
        let a = linear_axis(0.0, 0.0, 5, true, true);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "1"]);

        let a = log_axis(0.4, 38.0);
        let labels: Vec<&str> = a.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50", "100"]
        );

        let (a, title) = time_axis(0.0, 120.0);
        assert_eq!(title, "time (s)");
        assert_eq!(a.ticks.last().unwrap().1, "120");
        let (a, title) = time_axis(0.0, 1_800.0);
        assert_eq!(title, "time (min:s)");
        assert_eq!(a.ticks[1].1, "5:00");
        let (a, title) = time_axis(0.0, 86_400.0);
        assert_eq!(title, "time (h:min)");
        assert_eq!(a.ticks.last().unwrap().1, "24:00");
    }
}
