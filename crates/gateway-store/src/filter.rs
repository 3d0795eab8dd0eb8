//! The filters of [`LogReader::recent`](crate::LogReader::recent).

use crate::StoreError;
use std::fmt;
use std::str::FromStr;

/// The conditions on the rows that [`LogReader::recent`](crate::LogReader::recent) returns.
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
        }
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
}
