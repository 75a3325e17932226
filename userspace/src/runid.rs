//! Run identifiers: sortable by start time, unique enough to name cgroups
//! and pin directories of concurrent runs (`20261122-101502-3fa9c1`).

use rand::Rng as _;

pub fn new_run_id() -> String {
    let now = time_parts();
    let suffix: u32 = rand::rng().random_range(0..0x0100_0000);
    format!("{now}-{suffix:06x}")
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn time_parts() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// True when `s` has exactly the shape [`new_run_id`] gives
/// (`YYYYMMDD-HHMMSS-xxxxxx`): what tells a run's pin directory from a
/// daemon's (`daemon-<slice>-<run id>`), and a run id from a unit name or a
/// label.
pub fn is_generated(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 22
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// True when `s` is safe to use as a path component of a run (what
/// `cleanup` accepts; [`is_generated`] for the exact shape).
pub fn is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_ids_have_the_generated_shape() {
        assert!(is_generated(&new_run_id()));
        assert!(is_generated("20261130-115720-aa8cde"));
        for not in [
            "daemon-enft-atk-13_dslice-20261130-115720-aa8cde",
            "20261130-115720-aa8cdE",
            "20261130-115720-aa8cd",
            "2026113a-115720-aa8cde",
            "billing-agent.service",
        ] {
            assert!(!is_generated(not), "{not}");
        }
    }

    #[test]
    fn ids_are_unique_and_path_safe() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(is_valid(&a), "{a}");
        assert!(!is_valid("../etc"));
        assert!(!is_valid(""));
    }

    #[test]
    fn calendar_conversion() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
