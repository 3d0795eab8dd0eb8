//! Timestamps: microseconds since the Unix epoch, parsed from and shown as RFC 3339 in UTC.

use crate::StoreError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Last microsecond that RFC 3339 output can show: 9999-12-31T23:59:59.999999Z.
const MAX_RFC3339_US: i64 = 253_402_300_799_999_999;

/// Returns the current time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    unix_micros(SystemTime::now())
}

/// Converts `time` to microseconds since the Unix epoch, negative before it.
pub fn unix_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// Formats `timestamp_us` as RFC 3339 in UTC with six fractional digits, such as
/// `2025-01-31T12:00:00.250000Z`. Times outside years 1970 to 9999 are clamped to that
/// range, because the formatter cannot show them.
pub fn format_rfc3339(timestamp_us: i64) -> String {
    let clamped = timestamp_us.clamp(0, MAX_RFC3339_US).unsigned_abs();
    let time = UNIX_EPOCH + Duration::from_micros(clamped);
    humantime::format_rfc3339_micros(time).to_string()
}

/// Parses the start of a time window: a duration back from `now_us` such as `5m`, `1h` or
/// `2days`, or a UTC timestamp such as `2025-01-31T12:00:00Z`. The timestamp may have a space
/// in place of the `T` and a fraction of a second, and it ends in `Z` or `+00:00`.
///
/// # Errors
///
/// Returns [`StoreError::InvalidSince`] naming `text` when it is neither, including
/// timestamps with an offset other than UTC.
pub fn parse_since(text: &str, now_us: i64) -> Result<i64, StoreError> {
    let text = text.trim();
    let invalid = || StoreError::InvalidSince {
        value: text.to_owned(),
    };

    if let Ok(duration) = humantime::parse_duration(text) {
        // A duration reaching back before 1970 means every row, and stops at the epoch so
        // that the start time prints as the time it is.
        let back = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        return Ok(now_us.saturating_sub(back).max(0));
    }
    if !has_utc_suffix(text) {
        return Err(invalid());
    }
    // humantime reads only an uppercase `T` and `Z`, which RFC 3339 allows in lowercase too.
    let upper = text.to_ascii_uppercase();
    humantime::parse_rfc3339_weak(&upper)
        .map(unix_micros)
        .map_err(|_| invalid())
}

/// Checks what follows the seconds of a timestamp, because humantime 2.4 ignores an offset such
/// as `+02:00` after a fraction instead of rejecting it.
fn has_utc_suffix(text: &str) -> bool {
    let Some(rest) = text.get(19..) else {
        return false;
    };
    let rest = match rest.strip_prefix('.') {
        Some(fraction) => {
            let after = fraction.trim_start_matches(|c: char| c.is_ascii_digit());
            // A fraction has at least one digit.
            if after.len() == fraction.len() {
                return false;
            }
            after
        }
        None => rest,
    };
    // RFC 3339 requires a zone, so a time without one is not read as UTC. It allows a
    // lowercase `z` (section 5.6).
    matches!(rest, "Z" | "z" | "+00:00")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW_US: i64 = 1_700_000_000_000_000;

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(parse_since("5m", NOW_US).unwrap(), NOW_US - 300_000_000);
        assert_eq!(parse_since("1h", NOW_US).unwrap(), NOW_US - 3_600_000_000);
        assert_eq!(parse_since(" 250ms ", NOW_US).unwrap(), NOW_US - 250_000);
        assert_eq!(parse_since("99999999999d", NOW_US).unwrap(), 0);
        assert_eq!(parse_since("60y", NOW_US).unwrap(), 0);
    }

    #[test]
    fn utc_timestamps_are_accepted() {
        let expected = 1_700_000_000_000_000;
        for text in [
            "2023-11-14T22:13:20Z",
            "2023-11-14T22:13:20+00:00",
            "2023-11-14T22:13:20.000000Z",
            "2023-11-14t22:13:20z",
        ] {
            assert_eq!(parse_since(text, 0).unwrap(), expected, "{text}");
        }
        assert_eq!(
            parse_since("2023-11-14T22:13:20.5Z", 0).unwrap(),
            expected + 500_000
        );
    }

    #[test]
    fn invalid_times_are_rejected_by_name() {
        for text in [
            "",
            "soon",
            "5 parsecs",
            "2023-11-14",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20+02:00",
            "2023-11-14T22:13:20.5+02:00",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14T22:13:20.Z",
            // Without a zone the time could be anyone's local time.
            "2023-11-14T22:13:20",
            "2023-11-14 22:13:20",
        ] {
            let error = parse_since(text, NOW_US).unwrap_err();
            assert!(error.to_string().contains(&format!("`{text}`")), "{error}");
        }
    }

    #[test]
    fn format_shows_microseconds_in_utc() {
        assert_eq!(
            format_rfc3339(1_700_000_000_000_001),
            "2023-11-14T22:13:20.000001Z"
        );
        assert_eq!(format_rfc3339(-5), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_rfc3339(i64::MAX), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn unix_micros_is_negative_before_epoch() {
        let before = UNIX_EPOCH - Duration::from_micros(7);
        assert_eq!(unix_micros(before), -7);
    }
}
