//! Header values that the layers make for each request, such as a generated request id or a
//! `RateLimit` field, copied into a per-thread buffer rather than memory of their own.
//!
//! Each value is split off the thread's buffer and shares it. Once every value of a buffer is
//! dropped, the buffer's memory is reused, so a value costs no allocation of its own.

use bytes::BytesMut;
use http::HeaderValue;
use http::header::InvalidHeaderValue;
use std::cell::RefCell;

/// Size of each thread's buffer: 128 request ids of 32 bytes.
const STORE_BYTES: usize = 4096;

thread_local! {
    static STORE: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Copies `bytes` into the thread's buffer and returns them as a header value. A value larger
/// than the buffer gets memory of its own.
///
/// # Errors
///
/// Returns the error of [`HeaderValue::from_maybe_shared`] for bytes that are not a valid
/// header value.
pub(crate) fn header_value(bytes: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
    if bytes.len() > STORE_BYTES {
        return HeaderValue::from_bytes(bytes);
    }
    let copy = STORE.with_borrow_mut(|store| {
        if store.capacity() < bytes.len() {
            store.reserve(STORE_BYTES);
        }
        store.extend_from_slice(bytes);
        store.split().freeze()
    });
    HeaderValue::from_maybe_shared(copy)
}

/// Writes `value` in decimal into the end of `digits`, and returns the digits written.
pub(crate) fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &digits[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_intact() {
        // Enough values to fill several buffers, all alive at once.
        let values: Vec<HeaderValue> = (0..2000)
            .map(|i| header_value(format!("value-{i}").as_bytes()).unwrap())
            .collect();
        for (i, value) in values.iter().enumerate() {
            assert_eq!(value, format!("value-{i}").as_str());
        }
    }

    #[test]
    fn large_value_is_copied() {
        let text = vec![b'a'; STORE_BYTES + 1];
        assert_eq!(header_value(&text).unwrap().as_bytes(), &text[..]);
    }

    #[test]
    fn invalid_value_is_rejected() {
        assert!(header_value(b"a\r\nb").is_err());
    }

    #[test]
    fn decimals_are_written() {
        for value in [0, 7, 10, 99, 12_345, u64::MAX] {
            let mut digits = [0; 20];
            assert_eq!(decimal(value, &mut digits), value.to_string().as_bytes());
        }
    }
}
