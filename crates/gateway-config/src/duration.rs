//! Durations written as a number and a unit: `30s`, `500ms`, `1m`, `7d`.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// Parses a duration such as `30s`, `500ms`, `1m30s` or `7d`.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    use humantime::DurationError;
    let error = match humantime::parse_duration(text.trim()) {
        Ok(duration) => return Ok(duration),
        Err(error) => error,
    };
    let problem = match error {
        // humantime reports both a total above u64::MAX seconds and a fraction finer than
        // 1ns as an overflow.
        // The reader overflows on a count too large for its unit, which can be far below the
        // largest duration: `18446744073709551615ms` overflows though it is 584 million years.
        // So the message names no maximum; validation names each field's own.
        DurationError::NumberOverflow if text.contains('.') => {
            return Err(format!(
                "duration {text:?} is too large to read or finer than 1ns: write it with fewer digits, in a larger unit, in whole nanoseconds, like 30s or 7d"
            ));
        }
        DurationError::NumberOverflow => {
            return Err(format!(
                "duration {text:?} is too large to read: write it with fewer digits or in a larger unit, like 30s or 7d"
            ));
        }
        DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            "the unit is missing".to_owned()
        }
        DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
        DurationError::InvalidCharacter(at) => format!("unexpected character at byte {at}"),
        DurationError::NumberExpected(at) => format!("a whole number is expected at byte {at}"),
        DurationError::Empty => "it is empty".to_owned(),
    };
    Err(format!(
        "invalid duration {text:?} ({problem}): write a number with a unit, like 30s, 500ms or 1m"
    ))
}

/// Writes `duration` as the file would: a whole number of the largest unit that divides it
/// exactly, such as `7d`, `90s` or `500ms`.
pub(crate) fn format(duration: Duration) -> String {
    const UNITS: [(u128, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let (size, unit) = UNITS
        .into_iter()
        .find(|(size, _)| nanos.is_multiple_of(*size))
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / size)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// Reads a duration from a YAML scalar. Its `expecting` text is what an error shows when the
/// field contains a sequence or a mapping instead.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a duration with a unit, like 30s, 500ms or 1m")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }

    // A bare number is read as text, so that the error names the missing unit.
    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Duration, E> {
        self.visit_str(&number.to_string())
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Duration, E> {
        self.visit_str(&number.to_string())
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Duration, E> {
        self.visit_str(&number.to_string())
    }
}

pub(crate) mod option {
    use super::*;

    /// A duration inside an `Option`.
    struct Field(Duration);

    impl<'de> Deserialize<'de> for Field {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            super::deserialize(deserializer).map(Field)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Field>::deserialize(deserializer)?.map(|Field(duration)| duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_uses_largest_exact_unit() {
        for (text, shown) in [
            ("0s", "0s"),
            ("7d", "7d"),
            ("7d 1s", "604801s"),
            ("90m", "90m"),
            ("1500ms", "1500ms"),
            ("999us", "999us"),
            ("1ns", "1ns"),
            ("9999999999d", "9999999999d"),
        ] {
            assert_eq!(format(parse(text).unwrap()), shown, "{text}");
        }
    }

    #[test]
    fn parses_common_units() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn too_large_names_no_false_maximum() {
        for text in ["99999999999999999999s", "18446744073709551615ms"] {
            let error = parse(text).unwrap_err();
            assert!(error.contains("too large to read"), "{error}");
            assert!(error.contains("in a larger unit"), "{error}");
            // The reader's limit is not the largest duration, so none is named.
            assert!(!error.contains("maximum"), "{error}");
        }
    }

    #[test]
    fn maximum_is_accepted() {
        assert_eq!(
            parse("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn rejects_missing_unit() {
        let error = parse("30").unwrap_err();
        assert!(error.contains("30s, 500ms or 1m"), "{error}");
    }

    #[test]
    fn errors_name_the_problem() {
        for (text, problem) in [
            ("30", "(the unit is missing)"),
            ("5x", "(unknown unit \"x\")"),
            ("-5s", "(a whole number is expected at byte 0)"),
            ("5s!", "(unexpected character at byte 2)"),
            ("", "(it is empty)"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(problem), "{text:?}: {error}");
        }
    }
}
