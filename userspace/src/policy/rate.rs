//! Rate limits as written in policies: `"N/unit"` with unit `s`, `sec`,
//! `min`, `h`, `hour` or `day` (`"60/min"`).

use std::fmt;
use std::time::Duration;

/// At most `count` calls per `per`. Enforced by a later module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Calls allowed per window (>= 1).
    pub count: u64,
    /// The window.
    pub per: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected e.g. \"10/s\", \"60/min\", \"500/hour\" or \"10000/day\"";
        let Some((n, unit)) = text.split_once('/') else {
            return Err(format!("rate `{text}`: {expected}"));
        };
        let (n, unit) = (n.trim(), unit.trim());
        let per = match unit {
            "s" | "sec" => 1,
            "min" => 60,
            "h" | "hour" => 3600,
            "day" => 86_400,
            "m" => {
                return Err(format!("rate `{text}`: write `{n}/min` (`m` is ambiguous)"));
            }
            _ => {
                return Err(format!(
                    "rate `{text}`: unknown unit `{unit}` (use s, sec, min, h, hour or day)"
                ));
            }
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "rate `{text}`: `{n}` is not a whole number of calls; {expected}"
            ));
        }
        let count: u64 = n
            .parse()
            .map_err(|_| format!("rate `{text}` is too large"))?;
        if count == 0 {
            return Err(format!(
                "rate `{text}` allows no calls; it must be at least 1 (use a rule with action = \"deny\" to block calls)"
            ));
        }
        Ok(Self {
            count,
            per: Duration::from_secs(per),
        })
    }
}

impl fmt::Display for Rate {
    /// Normalized policy syntax: `60/min`, `10/s`, `5/h`, `100/day`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            86_400 => "day",
            other => return write!(f, "{}/{other}s", self.count),
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
        ] {
            let r = Rate::parse(text).unwrap();
            assert_eq!((r.count, r.per.as_secs()), (count, secs), "{text}");
            assert_eq!(r.to_string(), shown);
        }
    }

    #[test]
    fn errors() {
        for (bad, why) in [
            ("60", "expected e.g."),
            ("0/min", "at least 1"),
            ("-1/min", "whole number"),
            ("1.5/min", "whole number"),
            ("/min", "whole number"),
            ("60/m", "`60/min`"),
            ("60/week", "unknown unit"),
            ("60/", "unknown unit"),
            ("99999999999999999999999/s", "too large"),
        ] {
            let err = Rate::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
