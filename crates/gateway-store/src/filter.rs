//! The filters of [`LogReader::page`](crate::LogReader::page) and
//! [`LogReader::recent`](crate::LogReader::recent), and the cursor that pages through them.

use crate::StoreError;
use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The conditions on the rows that [`LogReader::page`](crate::LogReader::page) and
/// [`LogReader::recent`](crate::LogReader::recent) return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    /// Maximum rows returned, at most [`LogFilter::MAX_LIMIT`] (larger values are lowered to
    /// it). Default [`LogFilter::DEFAULT_LIMIT`].
    pub limit: u32,
    /// Only rows with this status code or status class. Default: any status.
    pub status: Option<StatusFilter>,
    /// Only rows of this route pattern, such as `/users/:id`. Default: any route.
    pub route: Option<String>,
    /// Only rows at or after this time, in microseconds since the Unix epoch. Default: any
    /// time.
    pub since_us: Option<i64>,
    /// Only rows that come after this cursor in the listing's order, newest first. Default:
    /// start at the newest row.
    pub before: Option<LogCursor>,
}

impl LogFilter {
    /// Rows returned when the caller does not set a limit.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// Maximum rows one call returns.
    pub const MAX_LIMIT: u32 = 10_000;
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter {
            limit: LogFilter::DEFAULT_LIMIT,
            status: None,
            route: None,
            since_us: None,
            before: None,
        }
    }
}

/// A row's position in the listing's order, newest first: by `ts_us`, then by `id`.
///
/// Its text form is `<ts_us>.<id>`, such as `1700000000000000.42`. The `id` breaks ties
/// between rows of one microsecond. It cannot be the cursor alone, because the writer inserts
/// rows as requests end, so `id` order is not `ts_us` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogCursor {
    /// Time the request started, in microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The row id.
    pub id: i64,
}

impl FromStr for LogCursor {
    type Err = StoreError;

    /// Parses `<ts_us>.<id>`: two integers of ASCII digits joined by a dot. Neither part is
    /// ever negative, so a sign is rejected.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || StoreError::InvalidCursor {
            value: text.to_owned(),
        };
        let (ts_us, id) = text.split_once('.').ok_or_else(invalid)?;
        Ok(LogCursor {
            ts_us: parse_integer(ts_us).ok_or_else(invalid)?,
            id: parse_integer(id).ok_or_else(invalid)?,
        })
    }
}

/// Parses a non-negative `i64` written as ASCII digits alone. Rust's integer parser also takes
/// a leading `+` or `-`, which the text form never contains.
fn parse_integer(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ts_us, self.id)
    }
}

impl Serialize for LogCursor {
    /// Serializes the text form, `<ts_us>.<id>`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A status code such as `404`, or a class such as `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// One status code, from 100 to 599.
    Code(u16),
    /// Every code of a class: 1 for `1xx` up to 5 for `5xx`.
    Class(u8),
}

impl StatusFilter {
    /// Returns the codes matched, as a half-open range `start..end`.
    pub fn codes(self) -> std::ops::Range<u16> {
        match self {
            StatusFilter::Code(code) => code..code + 1,
            StatusFilter::Class(class) => {
                let start = u16::from(class) * 100;
                start..start + 100
            }
        }
    }
}

impl FromStr for StatusFilter {
    type Err = StoreError;

    /// Parses `404` or `4xx` (also `4XX`). Codes run from 100 to 599 and classes from `1xx`
    /// to `5xx`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || StoreError::InvalidStatus {
            value: text.to_owned(),
        };
        let bytes = text.as_bytes();
        let [first, second, third] = bytes else {
            return Err(invalid());
        };
        if !(b'1'..=b'5').contains(first) {
            return Err(invalid());
        }
        let class = first - b'0';
        if second.eq_ignore_ascii_case(&b'x') && third.eq_ignore_ascii_case(&b'x') {
            return Ok(StatusFilter::Class(class));
        }
        if second.is_ascii_digit() && third.is_ascii_digit() {
            let code = u16::from(class) * 100 + u16::from(second - b'0') * 10;
            return Ok(StatusFilter::Code(code + u16::from(third - b'0')));
        }
        Err(invalid())
    }
}

impl fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusFilter::Code(code) => write!(f, "{code}"),
            StatusFilter::Class(class) => write!(f, "{class}xx"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn codes_and_classes_parse() {
        assert_eq!(
            "404".parse::<StatusFilter>().unwrap(),
            StatusFilter::Code(404)
        );
        assert_eq!(
            "100".parse::<StatusFilter>().unwrap(),
            StatusFilter::Code(100)
        );
        assert_eq!(
            "599".parse::<StatusFilter>().unwrap(),
            StatusFilter::Code(599)
        );
        assert_eq!(
            "4xx".parse::<StatusFilter>().unwrap(),
            StatusFilter::Class(4)
        );
        assert_eq!(
            "5XX".parse::<StatusFilter>().unwrap(),
            StatusFilter::Class(5)
        );
    }

    #[test]
    fn invalid_status_is_rejected_by_name() {
        for text in [
            "", "4", "40", "4040", "099", "600", "6xx", "4x", "4x4", "x04", "+40", " 404",
        ] {
            let error = text.parse::<StatusFilter>().unwrap_err();
            assert!(error.to_string().contains(&format!("`{text}`")), "{error}");
        }
    }

    #[test]
    fn codes_cover_the_class() {
        assert_eq!(StatusFilter::Class(4).codes(), 400..500);
        assert_eq!(StatusFilter::Code(404).codes(), 404..405);
    }

    #[test]
    fn display_round_trips() {
        for text in ["404", "2xx"] {
            assert_eq!(text.parse::<StatusFilter>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn cursor_parses_time_and_id() {
        let cursor = "1700000000000000.42".parse::<LogCursor>().unwrap();
        assert_eq!(cursor.ts_us, 1_700_000_000_000_000);
        assert_eq!(cursor.id, 42);

        let zero = "0.0".parse::<LogCursor>().unwrap();
        assert_eq!(zero, LogCursor { ts_us: 0, id: 0 });
        let leading_zeros = "007.0042".parse::<LogCursor>().unwrap();
        assert_eq!(leading_zeros, LogCursor { ts_us: 7, id: 42 });
    }

    #[test]
    fn cursor_display_round_trips() {
        for cursor in [
            LogCursor { ts_us: 0, id: 1 },
            LogCursor {
                ts_us: 1_700_000_000_000_000,
                id: 42,
            },
            LogCursor {
                ts_us: i64::MAX,
                id: i64::MAX,
            },
        ] {
            let text = cursor.to_string();
            assert_eq!(text.parse::<LogCursor>().unwrap(), cursor, "{text}");
        }
    }

    #[test]
    fn invalid_cursor_is_rejected_by_name() {
        for text in [
            "",
            ".",
            "42",
            "1700000000000000",
            "1700000000000000.",
            ".42",
            "1700000000000000.42.1",
            "1700000000000000,42",
            "+1700000000000000.42",
            "1700000000000000.+42",
            " 1700000000000000.42",
            "1700000000000000.42 ",
            "--5.42",
            "-.42",
            "-1.5",
            "1.-5",
            "-5.-7",
            "-0.0",
            "0.-0",
            "1.5e3",
            "0x10.42",
            "abc.def",
            "9223372036854775808.1",
            "1.9223372036854775808",
        ] {
            let error = text.parse::<LogCursor>().unwrap_err();
            let message = error.to_string();
            assert!(message.contains(&format!("`{text}`")), "{message}");
            assert!(message.contains("<ts_us>.<id>"), "{message}");
        }
    }

    #[test]
    fn cursor_serializes_as_text() {
        let cursor = LogCursor {
            ts_us: 1_700_000_000_000_000,
            id: 42,
        };
        let json = serde_json::to_value(cursor).unwrap();
        assert_eq!(json, serde_json::json!("1700000000000000.42"));
    }

    #[test]
    fn cursors_order_by_time_then_id() {
        let earlier = LogCursor { ts_us: 5, id: 9 };
        let same_time = LogCursor { ts_us: 6, id: 1 };
        let later_id = LogCursor { ts_us: 6, id: 2 };
        assert!(earlier < same_time);
        assert!(same_time < later_id);
    }
}
