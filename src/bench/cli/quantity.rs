//! Counts, durations and rates the way wrk's flags take them (`60k`, `1M`,
//! `500ms`, `2m`, `5k/s`). Parsing is strict: a typo or a fraction of a
//! connection is an error that names the flag's value, never a different run.

use std::time::Duration;

/// SI counts as wrk takes them: 60000, 60k, 1M, 1.5k, 2G.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let n = parse_count_or_zero(s)?;
    if n == 0 {
        return Err(format!("{s:?} must be at least 1"));
    }
    Ok(n)
}

/// Like [`parse_count`], but 0 is allowed (`--start`, `--push-size`).
pub fn parse_count_or_zero(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a count (e.g. 500, 60k, 1M)"))?;
    let v = v * mult;
    if !v.is_finite() || !(0.0..=1e12).contains(&v) || v.fract() != 0.0 {
        return Err(format!("{s:?} is not a whole count between 0 and 10^12"));
    }
    Ok(v as u64)
}

/// wrk-style durations: 15 (seconds), 500ms, 30s, 2m, 2h, 1d; decimals allowed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 15, 500ms, 30s, 2m, 2h)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86400.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in duration {s:?} (use ms, s, m, h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Rates: 2000, 2000/s, 5k/s, 120/m.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, per) = match t.split_once('/') {
        Some((n, "s")) => (n, 1.0),
        Some((n, "m" | "min")) => (n, 60.0),
        Some((n, "h")) => (n, 3600.0),
        Some((_, u)) => return Err(format!("unknown rate unit /{u} in {s:?} (use /s, /m, /h)")),
        None => (t, 1.0),
    };
    let n = parse_count(num).map_err(|_| format!("{s:?} is not a rate (e.g. 2000, 5k/s)"))?;
    Ok(n as f64 / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_durations_and_rates() {
        assert_eq!(parse_count("60k"), Ok(60_000));
        assert_eq!(parse_count("1M"), Ok(1_000_000));
        assert_eq!(parse_count("1.5k"), Ok(1_500));
        assert!(parse_count("0").is_err());
        assert!(parse_count("-5").is_err());
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("lots").is_err());
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("2y").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_rate("5k/s"), Ok(5000.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert!(parse_rate("5/fortnight").is_err());
    }
}
