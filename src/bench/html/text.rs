//! Numbers and text as the page shows them: counts with thousands
//! separators, rates, latencies and durations ("–" for anything that is not a
//! number, so a broken figure never reads as a real one), and HTML escaping.

use crate::bench::report::{fmt_duration_s, fmt_micros};

/// Escapes text for HTML element content and quoted attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// 1234567 → "1,234,567".
pub(super) fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut o = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

/// A rate with one decimal and thousands separators; "–" if not a number.
pub(super) fn fmt_rate(v: f64) -> String {
    if !(0.0..1e18).contains(&v) {
        return "–".to_owned();
    }
    let tenths = (v * 10.0).round() as u64;
    format!("{}.{}", fmt_count(tenths / 10), tenths % 10)
}

/// Microseconds, human-readable; "–" if not a number.
pub(super) fn fmt_us(us: f64) -> String {
    if us.is_finite() && us >= 0.0 {
        fmt_micros(us)
    } else {
        "–".to_owned()
    }
}

/// Like [`fmt_us`] without trailing zeros: "600us", "1.2ms", "31ms".
pub(super) fn fmt_us_short(us: f64) -> String {
    let s = fmt_us(us);
    let split = s
        .find(|ch: char| ch.is_ascii_alphabetic())
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    trim_zeros(num.to_owned()) + unit
}

/// Seconds, human-readable; "–" if not a number.
pub(super) fn fmt_secs(s: f64) -> String {
    if s.is_finite() && s >= 0.0 {
        fmt_duration_s(s)
    } else {
        "–".to_owned()
    }
}

/// Cuts trailing zeros (and a trailing point) off a formatted decimal.
pub(super) fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_000), "1,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
        assert_eq!(fmt_rate(1234.56), "1,234.6");
        assert_eq!(fmt_rate(f64::NAN), "–");
        assert_eq!(fmt_us_short(600.0), "600us");
        assert_eq!(fmt_us_short(1_200.0), "1.2ms");
        assert_eq!(fmt_us_short(31_000.0), "31ms");
        assert_eq!(fmt_us_short(f64::NAN), "–");
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
