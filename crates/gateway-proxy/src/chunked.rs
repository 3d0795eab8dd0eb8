//! Decoding a chunked response body (RFC 9112 section 7.1) as it arrives, in pieces of any
//! size.

use crate::headers::is_allowed_in_trailers;
use bytes::BytesMut;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use std::ops::Range;

/// Maximum length of a chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer fields.
const MAX_TRAILER_FIELDS: usize = 64;
/// Largest chunk whose data [`ChunkedDecoder::decode_joined`] copies to join it with others.
/// Copying a few KiB costs less than the write that a chunk of its own would take.
const MAX_JOINED_CHUNK: u64 = 4096;

/// The result of one decoding step.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body data: this range of the input.
    Data(Range<usize>),
    /// Body data of several chunks, copied to the buffer given to
    /// [`ChunkedDecoder::decode_joined`].
    Joined,
    /// The trailer fields after the last chunk.
    Trailers(HeaderMap),
    /// The body ended.
    End,
}

/// The reason a chunked body was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ChunkError {
    #[error("invalid chunk size line")]
    SizeLine,
    #[error("chunk not followed by CRLF")]
    MissingCrlf,
    #[error("invalid trailer section")]
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size, before an extension or the line's end.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailers,
    TrailersReturned,
    End,
}

/// The decoder's position in a chunked body.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    // Bytes left in the current chunk, or the size being read.
    size: u64,
    digits: usize,
    line: usize,
    trailers: Vec<u8>,
    // Whether trailer fields may have whitespace before their colon, which is removed. Only
    // a response's may: RFC 9112 (section 5.1) has a proxy remove it from a response and a
    // server reject a request with it.
    space_before_colon: bool,
}

impl ChunkedDecoder {
    /// Creates a decoder for a request body, whose trailer fields must not have whitespace
    /// before their colon.
    pub(crate) fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: Vec::new(),
            space_before_colon: false,
        }
    }

    /// Creates a decoder for a response body, which removes whitespace before a trailer
    /// field's colon as the response head's parser does.
    pub(crate) fn for_response() -> ChunkedDecoder {
        ChunkedDecoder {
            space_before_colon: true,
            ..ChunkedDecoder::new()
        }
    }

    /// Decodes from the start of `input`. Returns the bytes consumed and what they held, or
    /// `None` when every byte was consumed and more input is needed. The gateway itself uses
    /// [`ChunkedDecoder::decode_joined`]; this is the plain step that the tests check.
    #[cfg(test)]
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Decoded>), ChunkError> {
        self.step(input, false)
    }

    /// Decodes like [`ChunkedDecoder::decode`], but when the data of a small chunk is followed
    /// in `input` by more small chunks, copies the data of them all to `joined` and returns
    /// [`Decoded::Joined`]. So a body sent in many small chunks is passed on in pieces as
    /// large as the reads that brought it, not one write per chunk. A write per chunk would let
    /// a peer that picks one-byte chunks cost the gateway a system call per byte. Chunks larger than
    /// [`MAX_JOINED_CHUNK`] are not copied, and the last chunk, the trailers and the end are
    /// left for the next call.
    pub(crate) fn decode_joined(
        &mut self,
        input: &[u8],
        joined: &mut BytesMut,
    ) -> Result<(usize, Option<Decoded>), ChunkError> {
        let (mut at, found) = self.step(input, false)?;
        let Some(Decoded::Data(first)) = found else {
            return Ok((at, found));
        };
        if first.len() as u64 > MAX_JOINED_CHUNK {
            return Ok((at, Some(Decoded::Data(first))));
        }
        let mut more = false;
        while at < input.len() {
            // A fault after data goes out with the next call, so that the data before it is
            // passed on first, as it is without joining. The step is undone for that.
            let before = (self.state, self.size, self.digits, self.line);
            let (used, found) = match self.step(&input[at..], true) {
                Ok(step) => step,
                Err(_) => {
                    (self.state, self.size, self.digits, self.line) = before;
                    break;
                }
            };
            let Some(Decoded::Data(range)) = found else {
                at += used;
                break;
            };
            if !more {
                more = true;
                joined.reserve(input.len() - first.start);
                joined.extend_from_slice(&input[first.clone()]);
            }
            joined.extend_from_slice(&input[at + range.start..at + range.end]);
            at += used;
        }
        if more {
            Ok((at, Some(Decoded::Joined)))
        } else {
            Ok((at, Some(Decoded::Data(first))))
        }
    }

    /// Decodes one step. With `joining`, returns `None` instead of going on to the data of a
    /// chunk larger than [`MAX_JOINED_CHUNK`], or past the last chunk's size line.
    fn step(
        &mut self,
        input: &[u8],
        joining: bool,
    ) -> Result<(usize, Option<Decoded>), ChunkError> {
        let mut at = 0;
        loop {
            match self.state {
                State::End => return Ok((at, Some(Decoded::End))),
                State::TrailersReturned => {
                    self.state = State::End;
                    return Ok((at, Some(Decoded::End)));
                }
                State::Data => {
                    if at == input.len() {
                        return Ok((at, None));
                    }
                    let available = (input.len() - at) as u64;
                    let take = available.min(self.size) as usize;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok((at + take, Some(Decoded::Data(at..at + take))));
                }
                _ => {}
            }
            let Some(&byte) = input.get(at) else {
                return Ok((at, None));
            };
            at += 1;
            match self.state {
                State::Size => {
                    self.count_line_byte()?;
                    match byte {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            // Leading zeros are allowed; a size that overflows a u64 is not.
                            if self.size > u64::MAX >> 4 {
                                return Err(ChunkError::SizeLine);
                            }
                            self.digits += 1;
                            self.size = self.size * 16 + hex_value(byte);
                        }
                        b' ' | b'\t' if self.digits > 0 => self.state = State::SizeSpace,
                        b';' if self.digits > 0 => self.state = State::Extension,
                        b'\r' if self.digits > 0 => self.state = State::SizeLf,
                        _ => return Err(ChunkError::SizeLine),
                    }
                }
                // RFC 9112 section 7.1.1 allows whitespace after the size only before an
                // extension. It is also accepted before the line's end, where it cannot change
                // the size. Anything else, such as a second number, is rejected, so that no
                // two readers of the line can disagree on the size.
                State::SizeSpace => {
                    self.count_line_byte()?;
                    match byte {
                        b' ' | b'\t' => {}
                        b';' => self.state = State::Extension,
                        b'\r' => self.state = State::SizeLf,
                        _ => return Err(ChunkError::SizeLine),
                    }
                }
                State::Extension => {
                    self.count_line_byte()?;
                    match byte {
                        b'\r' => self.state = State::SizeLf,
                        // Control characters other than tab have no place in an extension.
                        b'\t' => {}
                        0..0x20 | 0x7f => return Err(ChunkError::SizeLine),
                        _ => {}
                    }
                }
                State::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::SizeLine);
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::Trailers
                    } else {
                        State::Data
                    };
                    if joining && (self.size == 0 || self.size > MAX_JOINED_CHUNK) {
                        return Ok((at, None));
                    }
                }
                State::DataCr => {
                    if byte != b'\r' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    self.state = State::Size;
                }
                State::Trailers => {
                    if self.trailers.len() >= MAX_TRAILERS {
                        return Err(ChunkError::Trailers);
                    }
                    // Every trailer line ends in CRLF. A bare LF, which some readers take as a
                    // line end and others do not, would let the two disagree on where the
                    // body ends, and bytes of the next message be read as trailers.
                    if byte == b'\n' && self.trailers.last() != Some(&b'\r') {
                        return Err(ChunkError::Trailers);
                    }
                    self.trailers.push(byte);
                    if self.trailers == b"\r\n" {
                        self.state = State::End;
                        return Ok((at, Some(Decoded::End)));
                    }
                    if self.trailers.ends_with(b"\r\n\r\n") {
                        let fields = parse_trailers(&self.trailers, self.space_before_colon)?;
                        self.trailers = Vec::new();
                        self.state = State::TrailersReturned;
                        return Ok((at, Some(Decoded::Trailers(fields))));
                    }
                }
                State::Data | State::TrailersReturned | State::End => unreachable!(),
            }
        }
    }

    fn count_line_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_SIZE_LINE {
            return Err(ChunkError::SizeLine);
        }
        Ok(())
    }
}

fn hex_value(byte: u8) -> u64 {
    u64::from(match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        _ => byte - b'A' + 10,
    })
}

/// A status line put before a response's trailer section. httparse removes whitespace before
/// a field's colon only when it parses a response, so the section is parsed as one.
const STATUS_LINE: &[u8] = b"HTTP/1.1 200 OK\r\n";

/// Parses a trailer section and keeps the fields that may follow the content (see
/// [`is_allowed_in_trailers`]). With `space_before_colon`, whitespace between a field's name
/// and its colon is removed. Without it, such a field makes the section invalid.
fn parse_trailers(section: &[u8], space_before_colon: bool) -> Result<HeaderMap, ChunkError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let response_text;
    let (length, fields): (usize, &[httparse::Header<'_>]) = if space_before_colon {
        response_text = [STATUS_LINE, section].concat();
        let mut response = httparse::Response::new(&mut fields);
        let parsed = httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .parse_response(&mut response, &response_text);
        let Ok(httparse::Status::Complete(length)) = parsed else {
            return Err(ChunkError::Trailers);
        };
        (length - STATUS_LINE.len(), response.headers)
    } else {
        let Ok(httparse::Status::Complete(parsed)) = httparse::parse_headers(section, &mut fields)
        else {
            return Err(ChunkError::Trailers);
        };
        parsed
    };
    // The section must end where its first blank line does: nothing may follow.
    if length != section.len() {
        return Err(ChunkError::Trailers);
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ChunkError::Trailers)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| ChunkError::Trailers)?;
        if is_allowed_in_trailers(&name) {
            map.append(name, value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns the data, the trailers and
    /// whether the end was reached.
    fn decode_in_pieces(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, HeaderMap, bool), ChunkError> {
        let mut decoder = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut trailers = HeaderMap::new();
        let mut buffered: Vec<u8> = Vec::new();
        for piece in input.chunks(step) {
            buffered.extend_from_slice(piece);
            loop {
                let (used, found) = decoder.decode(&buffered)?;
                let found_something = found.is_some();
                match found {
                    Some(Decoded::Data(range)) => data.extend_from_slice(&buffered[range]),
                    Some(Decoded::Trailers(map)) => trailers = map,
                    Some(Decoded::End) => return Ok((data, trailers, true)),
                    Some(Decoded::Joined) => panic!("`decode` joined chunks"),
                    None => {}
                }
                buffered.drain(..used);
                if !found_something {
                    break;
                }
            }
        }
        Ok((data, trailers, false))
    }

    #[test]
    fn decodes_any_piece_size() {
        let body = b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            let (data, trailers, ended) = decode_in_pieces(body, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "step {step}");
            assert!(trailers.is_empty());
            assert!(ended);
        }
    }

    #[test]
    fn returns_trailers_then_the_end() {
        let body = b"3\r\nabc\r\n0\r\nx-checksum: 42\r\nx-other: a\r\n\r\n";
        for step in [1, 5, body.len()] {
            let (data, trailers, ended) = decode_in_pieces(body, step).unwrap();
            assert_eq!(data, b"abc");
            assert_eq!(trailers["x-checksum"], "42");
            assert_eq!(trailers["x-other"], "a");
            assert!(ended);
        }
    }

    #[test]
    fn space_before_trailer_colon() {
        let body = b"0\r\nx-checksum : 42\r\nx-other\t: a\r\n\r\n";
        let mut decoder = ChunkedDecoder::for_response();
        let Ok((_, Some(Decoded::Trailers(trailers)))) = decoder.decode(body) else {
            panic!("a response's trailers were rejected");
        };
        assert_eq!(trailers["x-checksum"], "42");
        assert_eq!(trailers["x-other"], "a");

        // A request's trailer section with such a field is invalid.
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(decoder.decode(body), Err(ChunkError::Trailers));

        // Other faults stay faults in a response, such as a space inside a name.
        let mut decoder = ChunkedDecoder::for_response();
        assert_eq!(
            decoder.decode(b"0\r\nx checksum: 42\r\n\r\n"),
            Err(ChunkError::Trailers)
        );
    }

    #[test]
    fn trailers_lose_fields_needed_before_content() {
        let body = b"0\r\nContent-Length: 100\r\nx-checksum: 42\r\nSet-Cookie: a=b\r\n\
                     Transfer-Encoding: gzip\r\nHost: evil\r\n\r\n";
        let (_, trailers, ended) = decode_in_pieces(body, body.len()).unwrap();
        assert!(ended);
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-checksum"], "42");
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut decoder = ChunkedDecoder::new();
        let input = b"0\r\n\r\nHTTP/1.1 200 OK";
        assert_eq!(decoder.decode(input).unwrap(), (5, Some(Decoded::End)));
        assert_eq!(
            decoder.decode(&input[5..]).unwrap(),
            (0, Some(Decoded::End))
        );
    }

    #[test]
    fn zero_padded_sizes_are_accepted() {
        let body = b"0000000000000005\r\nhello\r\n0\r\n\r\n";
        let (data, _, ended) = decode_in_pieces(body, 4).unwrap();
        assert_eq!(data, b"hello");
        assert!(ended);
    }

    #[test]
    fn incomplete_body_waits_for_more() {
        let (data, _, ended) = decode_in_pieces(b"5\r\nhel", 100).unwrap();
        assert_eq!(data, b"hel");
        assert!(!ended);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: [(&[u8], ChunkError); 12] = [
            (b"x\r\n", ChunkError::SizeLine),
            (b"3 5\r\nabc\r\n", ChunkError::SizeLine),
            (b"3;\x00\r\nabc\r\n", ChunkError::SizeLine),
            (b"3;a\x7f\r\nabc\r\n", ChunkError::SizeLine),
            (b"0\r\n\n", ChunkError::Trailers),
            (b"0\r\nx-t: 1\n\r\n", ChunkError::Trailers),
            (b"0\r\nx-t: 1\r\n\n", ChunkError::Trailers),
            (b"\r\n", ChunkError::SizeLine),
            (b"5\nhello", ChunkError::SizeLine),
            (b"3\r\nabcX\r\n", ChunkError::MissingCrlf),
            (b"10000000000000000\r\n", ChunkError::SizeLine),
            (b"0\r\nbad trailer\r\n\r\n", ChunkError::Trailers),
        ];
        for (input, expected) in cases {
            assert_eq!(
                decode_in_pieces(input, input.len()).unwrap_err(),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn whitespace_before_extension_or_line_end_is_accepted() {
        let body = b"3 ;a=b\r\nabc\r\n2\t \r\nde\r\n0\r\n\r\n";
        let (data, _, ended) = decode_in_pieces(body, 1).unwrap();
        assert_eq!(data, b"abcde");
        assert!(ended);
    }

    /// Decodes `input` fed in pieces of `step` bytes with [`ChunkedDecoder::decode_joined`];
    /// returns each piece of data it passed on, and whether the end was reached.
    fn decode_joined_in_pieces(input: &[u8], step: usize) -> (Vec<Vec<u8>>, bool) {
        let mut decoder = ChunkedDecoder::new();
        let mut pieces = Vec::new();
        let mut buffered: Vec<u8> = Vec::new();
        for piece in input.chunks(step) {
            buffered.extend_from_slice(piece);
            loop {
                let mut joined = BytesMut::new();
                let (used, found) = decoder.decode_joined(&buffered, &mut joined).unwrap();
                let found_something = found.is_some();
                match found {
                    Some(Decoded::Data(range)) => pieces.push(buffered[range].to_vec()),
                    Some(Decoded::Joined) => pieces.push(joined.to_vec()),
                    Some(Decoded::Trailers(_)) => {}
                    Some(Decoded::End) => return (pieces, true),
                    None => {}
                }
                buffered.drain(..used);
                if !found_something {
                    break;
                }
            }
        }
        (pieces, false)
    }

    fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for chunk in chunks {
            body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            body.extend_from_slice(chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\nx-checksum: 1\r\n\r\n");
        body
    }

    #[test]
    fn small_chunks_read_together_are_joined() {
        let letters: Vec<&[u8]> = (0..500).map(|_| &b"ab"[..]).collect();
        let body = chunked(&letters);
        let (pieces, ended) = decode_joined_in_pieces(&body, body.len());
        assert!(ended);
        assert_eq!(pieces, vec![b"ab".repeat(500)]);

        // Fed in pieces, each read's chunks come out together, and none is lost or repeated.
        for step in [1, 3, 64, 1000] {
            let (pieces, ended) = decode_joined_in_pieces(&body, step);
            assert!(ended, "step {step}");
            assert_eq!(pieces.concat(), b"ab".repeat(500), "step {step}");
            if step >= 64 {
                assert!(
                    pieces.len() <= body.len() / step + 1,
                    "step {step}: {}",
                    pieces.len()
                );
            }
        }
    }

    #[test]
    fn large_chunks_are_not_joined() {
        let large = vec![b'x'; MAX_JOINED_CHUNK as usize + 1];
        let body = chunked(&[b"a", b"b", &large, b"c", &large]);
        let (pieces, ended) = decode_joined_in_pieces(&body, body.len());
        assert!(ended);
        let lengths: Vec<usize> = pieces.iter().map(Vec::len).collect();
        assert_eq!(lengths, [2, large.len(), 1, large.len()]);
        assert_eq!(
            pieces.concat(),
            [b"ab", &large[..], b"c", &large[..]].concat()
        );
    }

    #[test]
    fn joining_stops_before_trailers_and_faults() {
        let body = chunked(&[b"abc", b"de"]);
        let mut decoder = ChunkedDecoder::new();
        let mut joined = BytesMut::new();
        let (used, found) = decoder.decode_joined(&body, &mut joined).unwrap();
        assert_eq!(found, Some(Decoded::Joined));
        assert_eq!(&joined[..], b"abcde");
        // The last chunk's size line was read; its trailers come next.
        assert_eq!(&body[used..], b"x-checksum: 1\r\n\r\n");
        let Ok((_, Some(Decoded::Trailers(trailers)))) = decoder.decode(&body[used..]) else {
            panic!("the trailers were lost");
        };
        assert_eq!(trailers["x-checksum"], "1");

        // The data before a fault is passed on, and the fault comes with the next call.
        let mut decoder = ChunkedDecoder::new();
        let input = b"1\r\na\r\n1\r\nb\r\n2\r\ncdX";
        let mut joined = BytesMut::new();
        let (used, found) = decoder.decode_joined(input, &mut joined).unwrap();
        assert_eq!(found, Some(Decoded::Joined));
        assert_eq!(&joined[..], b"abcd");
        let result = decoder.decode_joined(&input[used..], &mut BytesMut::new());
        assert_eq!(result, Err(ChunkError::MissingCrlf));
        // A fault in a size line, after some of its bytes were read, is found again there.
        let mut decoder = ChunkedDecoder::new();
        let input = b"1\r\na\r\n1\r\nb\r\n12x\r\n";
        let mut joined = BytesMut::new();
        let (used, found) = decoder.decode_joined(input, &mut joined).unwrap();
        assert_eq!(found, Some(Decoded::Joined));
        assert_eq!(&joined[..], b"ab");
        assert_eq!(&input[used..], b"\r\n12x\r\n");
        let result = decoder.decode_joined(&input[used..], &mut BytesMut::new());
        assert_eq!(result, Err(ChunkError::SizeLine));
    }

    #[test]
    fn long_size_line_is_rejected() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_SIZE_LINE + 10, b'a');
        assert_eq!(
            decode_in_pieces(&line, 64).unwrap_err(),
            ChunkError::SizeLine
        );
    }
}
