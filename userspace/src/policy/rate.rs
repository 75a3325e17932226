//! Rate limits as written in policies: `"N/WINDOW"`, where the window is a
//! unit of the duration grammar (`"60/min"`, `"10/s"`, `"500/hour"`,
//! `"10000/day"`) or a whole duration (`"5/30s"`, `"100/1h30m"`).

use std::fmt;
use std::time::Duration;

use super::duration::{DurationError, format_duration, parse_duration};

const EXPECTED: &str =
    "expected e.g. \"10/s\", \"60/min\", \"500/hour\", \"10000/day\" or \"5/30s\"";

/// At most `count` calls per `per`. Enforced by a later module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls allowed per window (>= 1).
    pub count: u64,
    /// The window.
    pub per: Duration,
}

/// Why a rate was refused; every message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("rate `{0}`: {EXPECTED}")]
    NoSlash(String),
    #[error("rate `{text}`: `{count}` is not a whole number of calls; {EXPECTED}")]
    NotACount { text: String, count: String },
    #[error("rate `{0}` is too large")]
    TooLarge(String),
    #[error(
        "rate `{0}` allows no calls; it must be at least 1 (use a rule with action = \"deny\" to block calls)"
    )]
    Zero(String),
    #[error("rate `{text}`: the window `{window}` {}; {EXPECTED}", why_not(source))]
    Window {
        text: String,
        window: String,
        source: DurationError,
    },
}

/// Why a window is not a duration, in a few words.
fn why_not(e: &DurationError) -> String {
    match e {
        DurationError::UnknownUnit { unit, .. } => format!(
            "has an unknown unit `{unit}` (units are those of durations: ms, s, m or min, h, d, w)"
        ),
        DurationError::CalendarUnit { .. } => {
            String::from("has no fixed length (months and years); use days or weeks")
        }
        DurationError::Zero(_) => String::from("is zero"),
        DurationError::TooLarge(_) => String::from("is too large"),
        DurationError::Empty
        | DurationError::Negative(_)
        | DurationError::NoUnit { .. }
        | DurationError::Invalid { .. } => String::from("is not a unit or a duration"),
    }
}

impl Rate {
    pub fn parse(text: &str) -> Result<Self, RateError> {
        let Some((n, window)) = text.split_once('/') else {
            return Err(RateError::NoSlash(text.to_string()));
        };
        let (n, window) = (n.trim(), window.trim());
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RateError::NotACount {
                text: text.to_string(),
                count: n.to_string(),
            });
        }
        let count: u64 = n
            .parse()
            .map_err(|_| RateError::TooLarge(text.to_string()))?;
        if count == 0 {
            return Err(RateError::Zero(text.to_string()));
        }
        // `min` is one minute; `30s` is thirty seconds.
        let spelled = if window.starts_with(|c: char| c.is_ascii_digit()) {
            window.to_string()
        } else {
            format!("1{window}")
        };
        let per = parse_duration(&spelled).map_err(|source| RateError::Window {
            text: text.to_string(),
            window: window.to_string(),
            source,
        })?;
        Ok(Self { count, per })
    }
}

impl fmt::Display for Rate {
    /// Normalized policy syntax: `60/min`, `10/s`, `5/h`, `100/day`,
    /// otherwise the window as a duration (`5/30s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match (self.per.as_secs(), self.per.subsec_nanos()) {
            (1, 0) => "s",
            (60, 0) => "min",
            (3600, 0) => "h",
            (86_400, 0) => "day",
            _ => return write!(f, "{}/{}", self.count, format_duration(self.per)),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        for (text, count, secs, shown) in [
            ("60/min", 60, 60, "60/min"),
            ("10/s", 10, 1, "10/s"),
            ("10/sec", 10, 1, "10/s"),
            ("5/h", 5, 3600, "5/h"),
            ("5/hour", 5, 3600, "5/h"),
            ("100/day", 100, 86_400, "100/day"),
            (" 7 / min ", 7, 60, "7/min"),
            // The units durations accept, in every spelling.
            ("60/m", 60, 60, "60/min"),
            ("60/minute", 60, 60, "60/min"),
            ("5/hours", 5, 3600, "5/h"),
            ("100/d", 100, 86_400, "100/day"),
            ("100/days", 100, 86_400, "100/day"),
            ("1000/w", 1000, 7 * 86_400, "1000/7d"),
            ("1000/week", 1000, 7 * 86_400, "1000/7d"),
            // A whole duration as the window.
            ("5/30s", 5, 30, "5/30s"),
            ("100/1h30m", 100, 5_400, "100/90m"),
            ("2/2h", 2, 7_200, "2/2h"),
        ] {
            let r = Rate::parse(text).unwrap();
            assert_eq!((r.count, r.per.as_secs()), (count, secs), "{text}");
            assert_eq!(r.to_string(), shown);
            assert_eq!(Rate::parse(&r.to_string()), Ok(r), "{shown} round trips");
        }
        let r = Rate::parse("10/500ms").unwrap();
        assert_eq!(r.per, Duration::from_millis(500));
        assert_eq!(r.to_string(), "10/500ms");
    }

    #[test]
    fn errors() {
        for (bad, why) in [
            ("60", "expected e.g."),
            ("0/min", "at least 1"),
            ("-1/min", "whole number"),
            ("1.5/min", "whole number"),
            ("/min", "whole number"),
            ("60/week2", "is not a unit or a duration"),
            ("60/fortnight", "unknown unit `fortnight`"),
            ("60/", "is not a unit or a duration"),
            ("60/0s", "is zero"),
            ("60/M", "no fixed length"),
            ("99999999999999999999999/s", "too large"),
            ("1/99999999999999999999999s", "too large"),
        ] {
            let err = Rate::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(
                err.contains("expected") || err.contains("must be") || err.contains("too large"),
                "{bad:?}: {err}"
            );
        }
    }
}
