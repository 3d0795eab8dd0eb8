//! Header names as the head parsers meet them: the names that nearly every request and
//! response carries are recognized before the general conversion.
//!
//! [`HeaderName::from_bytes`] lowercases a name into a buffer a byte at a time, then looks the
//! buffer up among the standard names: about 110 instructions for a name of a common head.
//! Here a name of 4 to 16 bytes is read as two words, its first and its last 4 or 8 bytes,
//! with bit 0x20 set in every byte. The words are compared with those of the common names of
//! its length, in about 40 instructions.

use http::header::{self, HeaderName, InvalidHeaderName};

/// Bit 0x20 in every byte of a word.
///
/// Setting it lowercases an ASCII letter and keeps `-`. The only other byte it turns into a
/// letter or `-` is the carriage return, which becomes `-` and is not a token byte (RFC 9110
/// section 5.6.2). So two tokens of the same length have the same words exactly when they
/// spell the same name in any case.
const LOWER: u64 = u64::from_ne_bytes([0x20; 8]);

/// Returns the words of `name`, 4 to 16 bytes long: its first and last 4 bytes when it is
/// shorter than 8, else its first and last 8, which may overlap. It builds the table of
/// common names at compile time, and [`token_words`] reads a token the same way.
const fn words(name: &[u8]) -> [u64; 2] {
    let width = if name.len() < 8 { 4 } else { 8 };
    let mut first = [0u8; 8];
    let mut last = [0u8; 8];
    let mut i = 0;
    while i < width {
        first[i] = name[i];
        last[i] = name[name.len() - width + i];
        i += 1;
    }
    [
        u64::from_le_bytes(first) | LOWER,
        u64::from_le_bytes(last) | LOWER,
    ]
}

/// Returns the words of `token` as [`words`] does, or `None` outside 4 to 16 bytes.
fn token_words(token: &[u8]) -> Option<[u64; 2]> {
    let end = token.len();
    let [first, last] = match end {
        4..8 => [0, end - 4].map(|at| {
            let bytes = token.get(at..at + 4)?.try_into().ok()?;
            Some(u64::from(u32::from_le_bytes(bytes)))
        }),
        8..=16 => [0, end - 8].map(|at| {
            let bytes = token.get(at..at + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        }),
        _ => return None,
    };
    Some([first? | LOWER, last? | LOWER])
}

/// A common name: its words and the name.
struct Common {
    words: [u64; 2],
    name: HeaderName,
}

const fn common_name(lowercase: &[u8], name: HeaderName) -> Common {
    Common {
        words: words(lowercase),
        name,
    }
}

/// The common names, grouped by length.
static COMMON: [Common; 14] = [
    common_name(b"date", header::DATE),
    common_name(b"host", header::HOST),
    common_name(b"vary", header::VARY),
    common_name(b"etag", header::ETAG),
    common_name(b"accept", header::ACCEPT),
    common_name(b"server", header::SERVER),
    common_name(b"user-agent", header::USER_AGENT),
    common_name(b"connection", header::CONNECTION),
    common_name(b"content-type", header::CONTENT_TYPE),
    common_name(b"cache-control", header::CACHE_CONTROL),
    common_name(b"last-modified", header::LAST_MODIFIED),
    common_name(b"content-length", header::CONTENT_LENGTH),
    common_name(b"accept-encoding", header::ACCEPT_ENCODING),
    common_name(b"accept-language", header::ACCEPT_LANGUAGE),
];

/// Returns the header name that `token`, a field name a parser accepted as an HTTP token,
/// spells in any case.
///
/// # Errors
///
/// Returns the error of [`HeaderName::from_bytes`] for a name that is not valid.
pub(crate) fn from_token(token: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    match common(token) {
        Some(name) => Ok(name.clone()),
        None => HeaderName::from_bytes(token),
    }
}

/// Returns the common name that `token` spells, if it spells one.
fn common(token: &[u8]) -> Option<&'static HeaderName> {
    let candidates = match token.len() {
        4 => &COMMON[0..4],
        6 => &COMMON[4..6],
        10 => &COMMON[6..8],
        12 => &COMMON[8..9],
        13 => &COMMON[9..11],
        14 => &COMMON[11..12],
        15 => &COMMON[12..14],
        _ => return None,
    };
    let words = token_words(token)?;
    candidates
        .iter()
        .find(|candidate| candidate.words == words)
        .map(|candidate| &candidate.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_match_in_any_case() {
        for Common { name, .. } in &COMMON {
            let text = name.as_str();
            let upper = text.to_ascii_uppercase();
            let mixed: String = text
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            for spelling in [text, upper.as_str(), mixed.as_str()] {
                assert_eq!(
                    from_token(spelling.as_bytes()).unwrap(),
                    *name,
                    "{spelling}"
                );
            }
        }
    }

    #[test]
    fn table_groups_names_by_length() {
        for Common { name, .. } in &COMMON {
            assert_eq!(common(name.as_str().as_bytes()), Some(name));
        }
        for length in 0..=20 {
            assert_eq!(common(&vec![b'a'; length]), None, "{length}");
        }
    }

    #[test]
    fn other_names_use_general_conversion() {
        let names = [
            "X-Request-Id",
            "x-forwarded-for",
            "Content-Typf",
            "Hosu",
            "Dat3",
            "accept-encodinh",
            "Keep-Alive",
            "trailer",
            "content-lengtH",
            "a",
            "x-A.B_c~d!e#f$g%h&i'j*k+l^m`n|o",
        ];
        for text in names {
            assert_eq!(
                from_token(text.as_bytes()).unwrap(),
                HeaderName::from_bytes(text.as_bytes()).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn token_bytes_never_alias_a_common_name() {
        // Each non-letter token byte, and a wrong letter, breaks the match in every place.
        let others = b"!#$%&'*+.^_`|~0123456789";
        for Common { name, .. } in &COMMON {
            let lowercase = name.as_str().as_bytes();
            for place in 0..lowercase.len() {
                for &byte in others.iter().chain(b"zq-") {
                    let mut token = lowercase.to_vec();
                    if token[place].eq_ignore_ascii_case(&byte) {
                        continue;
                    }
                    token[place] = byte;
                    assert_eq!(common(&token), None, "{:?}", String::from_utf8(token));
                }
            }
        }
    }

    #[test]
    fn invalid_names_are_rejected() {
        assert!(from_token(b"").is_err());
        assert!(from_token(b"bad name").is_err());
        assert!(from_token(b"h\x00st").is_err());
    }
}
