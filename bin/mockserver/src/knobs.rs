//! The knobs that shape a response, read from the query string or `X-Mock-*` headers.
//!
//! A query parameter wins over the header of the same knob. Only the first occurrence of a
//! query parameter counts, and values are not percent-decoded because they are all numbers.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// One knob: its query parameter and its header.
struct Knob {
    query: &'static str,
    header: &'static str,
}

const DELAY: Knob = Knob {
    query: "delay",
    header: "X-Mock-Delay",
};
const STATUS: Knob = Knob {
    query: "status",
    header: "X-Mock-Status",
};
const SIZE: Knob = Knob {
    query: "size",
    header: "X-Mock-Size",
};
const CHUNKS: Knob = Knob {
    query: "chunks",
    header: "X-Mock-Chunks",
};
const CHUNK_DELAY: Knob = Knob {
    query: "chunk_delay",
    header: "X-Mock-Chunk-Delay",
};

/// The response shape requested by one request. Absent knobs are `None` or zero.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Knobs {
    /// Wait before responding.
    pub(crate) delay: Option<Duration>,
    /// Status code of the response instead of 200.
    pub(crate) status: Option<StatusCode>,
    /// Body length in bytes, sent instead of the JSON echo.
    pub(crate) size: Option<u64>,
    /// Number of `chunk i\n` chunks, sent instead of the JSON echo.
    pub(crate) chunks: Option<u64>,
    /// Wait between two chunks. Zero unless set.
    pub(crate) chunk_delay: Duration,
}

/// An invalid knob value, reported to the client as a 400 response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KnobError(String);

impl fmt::Display for KnobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Knobs {
    /// Reads every knob from the raw query string and the request headers.
    ///
    /// # Errors
    ///
    /// Returns a [`KnobError`] naming the knob, as the client spelled it, and its value when
    /// a value is not a whole number, a status is outside 200 to 599, or both `size` and
    /// `chunks` are set.
    pub(crate) fn from_request(
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Self, KnobError> {
        let delay = read_number(&DELAY, query, headers, "a whole number of milliseconds")?;
        let status = read_number(&STATUS, query, headers, "a status code from 200 to 599")?;
        let size = read_number(&SIZE, query, headers, "a whole number of bytes")?;
        let chunks = read_number(&CHUNKS, query, headers, "a whole number of chunks")?;
        let chunk_delay = read_number(
            &CHUNK_DELAY,
            query,
            headers,
            "a whole number of milliseconds",
        )?;

        let status = match status {
            None => None,
            Some((value, name)) => Some(parse_status(value, name)?),
        };
        if size.is_some() && chunks.is_some() {
            return Err(KnobError(
                "size and chunks cannot be combined, so set only one of them".to_owned(),
            ));
        }

        Ok(Self {
            delay: delay.map(|(ms, _)| Duration::from_millis(ms)),
            status,
            size: size.map(|(bytes, _)| bytes),
            chunks: chunks.map(|(count, _)| count),
            chunk_delay: chunk_delay.map_or(Duration::ZERO, |(ms, _)| Duration::from_millis(ms)),
        })
    }
}

/// Reads one knob as a `u64`, returning it with the name it was given under.
fn read_number(
    knob: &Knob,
    query: Option<&str>,
    headers: &HeaderMap,
    expected: &str,
) -> Result<Option<(u64, &'static str)>, KnobError> {
    let (raw, name) =
        if let Some(value) = query.and_then(|query| find_query_param(query, knob.query)) {
            (value, knob.query)
        } else if let Some(value) = headers.get(knob.header) {
            let text = value.to_str().map_err(|_| {
                KnobError(format!(
                    "invalid value for {}: expected {expected} in visible ASCII",
                    knob.header
                ))
            })?;
            (text, knob.header)
        } else {
            return Ok(None);
        };

    match raw.parse::<u64>() {
        Ok(number) => Ok(Some((number, name))),
        Err(_) => Err(KnobError(format!(
            "invalid value {raw:?} for {name}: expected {expected}"
        ))),
    }
}

/// Accepts 200 to 599. Informational (1xx) codes are rejected because hyper 1 cannot send
/// one as the final response and would replace it with a 500.
fn parse_status(value: u64, name: &str) -> Result<StatusCode, KnobError> {
    let invalid = || {
        KnobError(format!(
            "invalid value \"{value}\" for {name}: expected a status code from 200 to 599"
        ))
    };
    let code = u16::try_from(value).map_err(|_| invalid())?;
    if !(200..=599).contains(&code) {
        return Err(invalid());
    }
    StatusCode::from_u16(code).map_err(|_| invalid())
}

/// Returns the value of the first `name=value` pair in a raw query string. A bare `name`
/// yields an empty value.
fn find_query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn no_knobs_give_defaults() {
        let knobs = Knobs::from_request(Some("a=1"), &HeaderMap::new());
        assert_eq!(knobs, Ok(Knobs::default()));
    }

    #[test]
    fn query_wins_over_header() {
        let knobs = Knobs::from_request(
            Some("delay=5&status=201"),
            &headers(&[("x-mock-delay", "900"), ("x-mock-chunks", "3")]),
        )
        .unwrap();
        assert_eq!(knobs.delay, Some(Duration::from_millis(5)));
        assert_eq!(knobs.status, Some(StatusCode::CREATED));
        assert_eq!(knobs.chunks, Some(3));
    }

    #[test]
    fn first_query_param_counts() {
        assert_eq!(find_query_param("size=1&size=2", "size"), Some("1"));
        assert_eq!(
            find_query_param("chunk_delay=4&chunks=2", "chunks"),
            Some("2")
        );
        assert_eq!(find_query_param("size", "size"), Some(""));
        assert_eq!(find_query_param("sizes=3", "size"), None);
    }

    #[test]
    fn non_number_names_knob_and_value() {
        let error = Knobs::from_request(Some("delay=soon"), &HeaderMap::new()).unwrap_err();
        assert!(error.0.contains("delay"), "{error}");
        assert!(error.0.contains("\"soon\""), "{error}");

        let error = Knobs::from_request(None, &headers(&[("x-mock-size", "-1")])).unwrap_err();
        assert!(error.0.contains("X-Mock-Size"), "{error}");
        assert!(error.0.contains("\"-1\""), "{error}");
    }

    #[test]
    fn status_outside_range_is_rejected() {
        for bad in ["99", "100", "199", "600", "70000"] {
            let query = format!("status={bad}");
            let result = Knobs::from_request(Some(&query), &HeaderMap::new());
            assert!(result.is_err(), "status {bad} was accepted");
        }
        for good in ["200", "204", "418", "599"] {
            let query = format!("status={good}");
            let result = Knobs::from_request(Some(&query), &HeaderMap::new());
            assert!(result.is_ok(), "status {good} was rejected");
        }
    }

    #[test]
    fn size_with_chunks_is_rejected() {
        let result = Knobs::from_request(Some("size=10&chunks=2"), &HeaderMap::new());
        assert!(result.is_err());
    }
}
