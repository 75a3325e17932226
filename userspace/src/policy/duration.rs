//! Durations as written in policies: a whole number and one unit,
//! `s`, `m`, `h` or `d` (`"90s"`, `"15m"`, `"3h"`, `"1d"`).

use std::time::Duration;

const EXAMPLES: &str = "\"90s\", \"15m\", \"3h\" or \"1d\"";

/// Parses `"3h"` and friends. Zero, negative, fractional and unit-less
/// values are errors.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("duration is empty; expected e.g. {EXAMPLES}"));
    }
    if t.starts_with('-') {
        return Err(format!(
            "duration `{text}` is negative; it must be greater than zero"
        ));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "duration `{text}` must start with a whole number (e.g. {EXAMPLES})"
        ));
    }
    let seconds_per: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => {
            return Err(format!(
                "duration `{text}` has no unit; write `{number}s`, `{number}m`, `{number}h` or `{number}d`"
            ));
        }
        _ => {
            return Err(format!(
                "duration `{text}`: expected a whole number and one unit (s, m, h, d), e.g. {EXAMPLES}"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration `{text}` is too large"))?;
    if n == 0 {
        return Err(format!(
            "duration `{text}` is zero; it must be greater than zero"
        ));
    }
    let secs = n
        .checked_mul(seconds_per)
        .ok_or_else(|| format!("duration `{text}` is too large"))?;
    Ok(Duration::from_secs(secs))
}

/// The shortest exact way to write `d` in policy syntax (`"3h"`, `"90s"`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("3h").unwrap(), Duration::from_secs(10_800));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
    }

    #[test]
    fn errors() {
        for (bad, why) in [
            ("", "empty"),
            ("0s", "zero"),
            ("0d", "zero"),
            ("-1h", "negative"),
            ("3", "no unit"),
            ("1.5h", "one unit"),
            ("3 h", "one unit"),
            ("3hours", "one unit"),
            ("1h30m", "one unit"),
            ("h", "whole number"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_secs(10_800)), "3h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(86_400 * 2)), "2d");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    proptest! {
        #[test]
        fn format_round_trips(secs in 1u64..10_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }

        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = parse_duration(&s);
        }
    }
}
