//! Small JSON error responses made by the layers themselves.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Builds `{"error": reason, "status": code}` with an optional request id, as a response whose
/// body type is built from `Bytes`.
pub(crate) fn error_response<B: From<Bytes>>(
    status: StatusCode,
    reason: &str,
    request_id: Option<&str>,
) -> Response<B> {
    let mut text = format!(
        "{{\"error\":{},\"status\":{}",
        quote(reason),
        status.as_u16()
    );
    if let Some(id) = request_id {
        text.push_str(",\"request_id\":");
        text.push_str(&quote(id));
    }
    text.push('}');
    let mut response = Response::new(B::from(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Quotes `text` as a JSON string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_controls() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
