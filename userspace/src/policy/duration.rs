//! Durations, one grammar for policies and the command line (`[run] ttl`,
//! `loop_breaker.window`, rate windows, `--ttl`, `--approval-timeout`,
//! `--since`, `--older-than`): the `humantime` crate's, numbers each followed
//! by a unit, such as `"90s"`, `"15m"`, `"3h"`, `"1d"`, `"2w"`, `"1h30m"`,
//! `"1.5h"`, `"45 minutes"` or `"500ms"`. Months and years are refused
//! (they have no fixed length, and `"10M"` would be ten months, not
//! minutes).

use std::time::Duration;

/// What the grammar looks like, for error messages.
pub const EXPECTED: &str = "a number and a unit (ms, s, m, h, d, w; combined as in \"1h30m\"), \
                            e.g. \"90s\", \"15m\", \"3h\" or \"1d\"";

/// Units humantime knows that a duration here may not use.
const CALENDAR_UNITS: &[&str] = &["M", "month", "months", "y", "yr", "yrs", "year", "years"];

/// Why a duration was refused. Every message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration is empty; expected {EXPECTED}")]
    Empty,
    #[error("duration `{0}` is negative; it must be greater than zero")]
    Negative(String),
    #[error("duration `{0}` is zero; it must be greater than zero")]
    Zero(String),
    #[error("duration `{text}` has no unit; write e.g. `{number}s`, `{number}m` or `{number}h`")]
    NoUnit { text: String, number: String },
    #[error("duration `{text}`: unknown unit `{unit}`; expected {EXPECTED}")]
    UnknownUnit { text: String, unit: String },
    #[error(
        "duration `{text}`: `{unit}` (months, years) has no fixed length; write days or weeks, e.g. \"30d\" or \"52w\""
    )]
    CalendarUnit { text: String, unit: String },
    #[error("duration `{0}` is too large (or finer than a nanosecond)")]
    TooLarge(String),
    #[error("duration `{text}`: {detail}; expected {EXPECTED}")]
    Invalid { text: String, detail: String },
}

/// Parses a duration that must be longer than zero (`[run] ttl`, windows,
/// timeouts).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let d = parse_duration_or_zero(text)?;
    if d.is_zero() {
        return Err(DurationError::Zero(text.to_string()));
    }
    Ok(d)
}

/// Parses a duration that may be zero (ages: `--since 0s` is "from now").
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    if t.starts_with('-') {
        return Err(DurationError::Negative(text.to_string()));
    }
    // Words made of letters, as humantime splits them into units.
    let units = t
        .split(|c: char| !(c.is_ascii_alphabetic() || c == 'µ'))
        .filter(|w| !w.is_empty());
    if let Some(unit) = units.into_iter().find(|u| CALENDAR_UNITS.contains(u)) {
        return Err(DurationError::CalendarUnit {
            text: text.to_string(),
            unit: unit.to_string(),
        });
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::Empty => DurationError::Empty,
        humantime::DurationError::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            DurationError::NoUnit {
                text: text.to_string(),
                number: value.to_string(),
            }
        }
        humantime::DurationError::UnknownUnit { unit, .. } => DurationError::UnknownUnit {
            text: text.to_string(),
            unit,
        },
        humantime::DurationError::NumberOverflow => DurationError::TooLarge(text.to_string()),
        humantime::DurationError::NumberExpected(at) => DurationError::Invalid {
            text: text.to_string(),
            detail: format!("character {} should be a number", at + 1),
        },
        humantime::DurationError::InvalidCharacter(at) => DurationError::Invalid {
            text: text.to_string(),
            detail: format!("character {} is not allowed there", at + 1),
        },
    })
}

/// The shortest exact way to write `d` in this grammar, in one unit
/// (`"3h"`, `"90s"`, `"1500ms"`); parses back to `d`.
pub fn format_duration(d: Duration) -> String {
    const UNITS: &[(&str, u128)] = &[
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return String::from("0s");
    }
    for (unit, size) in UNITS {
        if nanos.is_multiple_of(*size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Every spelling documented before the grammar was shared still works.
    #[test]
    fn documented_spellings() {
        for (text, want) in [
            // docs/policy.md (ttl, loop_breaker.window)
            ("90s", secs(90)),
            ("15m", secs(900)),
            ("3h", secs(10_800)),
            ("1d", secs(86_400)),
            ("60s", secs(60)),
            // --since / --older-than (docs/audit.md, --help)
            ("45s", secs(45)),
            ("90m", secs(5_400)),
            ("12h", secs(43_200)),
            ("30d", secs(30 * 86_400)),
            ("7d", secs(7 * 86_400)),
            ("2w", secs(14 * 86_400)),
            (" 2w ", secs(14 * 86_400)),
            ("30 d", secs(30 * 86_400)),
            ("10sec", secs(10)),
            ("5 mins", secs(300)),
            ("2 hours", secs(7_200)),
            ("3 days", secs(3 * 86_400)),
            ("1 week", secs(7 * 86_400)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    /// What the shared grammar adds: combinations, fractions, milliseconds.
    #[test]
    fn combined_fractional_and_fine_durations() {
        assert_eq!(parse_duration("1h30m"), Ok(secs(5_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(secs(5_400)));
        assert_eq!(parse_duration("1.5h"), Ok(secs(5_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3 hours"), Ok(secs(10_800)));
    }

    #[test]
    fn errors_say_what_was_expected() {
        for (bad, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("0s", "zero"),
            ("0d", "zero"),
            ("0h0m", "zero"),
            ("-1h", "negative"),
            ("3", "no unit"),
            ("3fortnights", "unknown unit `fortnights`"),
            ("3 h!", "character 4 is not allowed"),
            ("h", "character 1 should be a number"),
            ("soon", "character 1 should be a number"),
            ("10M", "no fixed length"),
            ("1 year", "no fixed length"),
            ("2months", "no fixed length"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
            ("３０d", "should be a number"),
        ] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        for bad in ["3fortnights", "soon", "3 h!", ""] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("e.g. \"90s\""), "{bad:?}: {err}");
        }
    }

    #[test]
    fn zero_is_an_age() {
        assert_eq!(parse_duration_or_zero("0d"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert!(parse_duration_or_zero("-1d").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(secs(10_800)), "3h");
        assert_eq!(format_duration(secs(90)), "90s");
        assert_eq!(format_duration(secs(86_400 * 2)), "2d");
        assert_eq!(format_duration(secs(120)), "2m");
        assert_eq!(format_duration(secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_round_trips(nanos in 1u64..u64::MAX) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn whole_seconds_round_trip(secs in 1u64..10_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn never_panics(s in "\\PC{0,16}") {
            let _ = parse_duration(&s);
        }
    }
}
