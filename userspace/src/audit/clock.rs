//! Time as the audit log stores it (UTC text `YYYY-MM-DD HH:MM:SS.SSS`, so
//! `date(at)` and plain text comparison work in SQL) and ages such as `30d`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

use super::AuditError;

const EARLIEST: &str = "0000-01-01 00:00:00.000";
const LATEST: &str = "9999-12-31 23:59:59.999";

/// `2026-11-22 10:15:02.123` (UTC, millisecond precision). Never panics:
/// times outside years 0..=9999 are clamped to the first or last instant.
pub(crate) fn to_text(t: SystemTime) -> String {
    let nanos: i128 = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => i128::try_from(e.duration().as_nanos())
            .map(|n| -n)
            .unwrap_or(i128::MIN),
    };
    let Ok(dt) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return String::from(if nanos < 0 { EARLIEST } else { LATEST });
    };
    if dt.year() < 0 {
        return String::from(EARLIEST);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

pub(crate) fn now_text() -> String {
    to_text(SystemTime::now())
}

/// Parses an age such as `45s`, `90m`, `12h`, `30d`, `2w` or `1h30m` (for
/// `--since` and `--older-than`): the duration grammar of policies
/// ([`crate::policy::parse_duration`]), zero included.
pub fn parse_age(s: &str) -> Result<Duration, AuditError> {
    crate::policy::parse_duration_or_zero(s).map_err(|e| AuditError::InvalidAge {
        input: s.to_owned(),
        why: e.to_string(),
    })
}

/// The instant `age` before now (the Unix epoch if that is earlier).
pub fn ago(age: Duration) -> SystemTime {
    SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(to_text(t), "2026-11-18 11:06:40.123");
        assert_eq!(to_text(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(to_text(before), "1969-12-31 00:00:00.000");
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        assert_eq!(to_text(far), LATEST);
        if let Some(early) = UNIX_EPOCH.checked_sub(Duration::from_secs(u64::MAX / 4)) {
            assert_eq!(to_text(early), EARLIEST);
        }
    }

    #[test]
    fn parses_ages() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3_600));
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(90 * 60));
        assert_eq!(parse_age("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_age(" 2w ").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse_age("0d").unwrap(), Duration::ZERO);
        assert_eq!(parse_age("1h30m").unwrap(), Duration::from_secs(5_400));
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "-1d",
            "1 year",
            "99999999999999999999999d",
            "999999999999999999d",
            "３０d",
        ] {
            let e = parse_age(bad).unwrap_err();
            assert!(matches!(e, AuditError::InvalidAge { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad.trim()), "{e}");
        }
    }

    #[test]
    fn ago_saturates_at_the_epoch() {
        assert_eq!(ago(Duration::from_secs(u64::MAX)), UNIX_EPOCH);
        assert!(ago(Duration::from_secs(60)) < SystemTime::now());
    }
}
