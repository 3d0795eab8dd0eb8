//! The routes: `GET /health`, `GET /_mock/stats`, and the JSON echo for everything else.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::body::MockBody;
use crate::knobs::Knobs;

/// Header that names the backend on every response.
const SERVER_HEADER: HeaderName = HeaderName::from_static("x-mock-server");

/// One mock backend: its name and how many requests it has echoed.
#[derive(Debug)]
pub(crate) struct Backend {
    name: String,
    name_header: HeaderValue,
    requests: AtomicU64,
}

impl Backend {
    /// Creates a backend that has served no requests.
    ///
    /// `name` should be valid as a header value. Otherwise the `X-Mock-Server` header falls
    /// back to `mock` while the JSON bodies keep `name`.
    pub(crate) fn new(name: String) -> Self {
        let name_header =
            HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("mock"));
        Self {
            name,
            name_header,
            requests: AtomicU64::new(0),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Routes one request and adds the `X-Mock-Server` header to the response.
pub(crate) async fn handle(request: Request<Incoming>, backend: &Backend) -> Response<MockBody> {
    let mut response = route(request, backend).await;
    response
        .headers_mut()
        .insert(SERVER_HEADER, backend.name_header.clone());
    response
}

async fn route(request: Request<Incoming>, backend: &Backend) -> Response<MockBody> {
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);

    match request.uri().path() {
        "/health" if is_read => json_response(
            StatusCode::OK,
            &json!({ "status": "ok", "server": backend.name }),
        ),
        "/_mock/stats" if is_read => json_response(
            StatusCode::OK,
            &json!({
                "server": backend.name,
                "requests": backend.requests.load(Ordering::Relaxed),
            }),
        ),
        _ => {
            backend.requests.fetch_add(1, Ordering::Relaxed);
            echo(request, backend).await
        }
    }
}

/// Reads the whole request body, then responds with the shape its knobs request: filler
/// bytes, timed chunks, or the JSON echo of the request.
async fn echo(request: Request<Incoming>, backend: &Backend) -> Response<MockBody> {
    let knobs = match Knobs::from_request(request.uri().query(), request.headers()) {
        Ok(knobs) => knobs,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, &error.to_string()),
    };

    let (parts, body) = request.into_parts();
    let body_length = match count_body_bytes(body).await {
        Ok(length) => length,
        Err(error) => {
            let message = format!("failed to read the request body: {error}");
            eprintln!("mockserver: {}: {message}", backend.name);
            return error_response(StatusCode::BAD_REQUEST, &message);
        }
    };

    if let Some(delay) = knobs.delay {
        tokio::time::sleep(delay).await;
    }
    let status = knobs.status.unwrap_or(StatusCode::OK);

    if let Some(size) = knobs.size {
        let mut response = text_response(status, MockBody::Filler { remaining: size });
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(size));
        return response;
    }
    if let Some(count) = knobs.chunks {
        return text_response(status, MockBody::chunks(count, knobs.chunk_delay));
    }

    let echo = json!({
        "server": backend.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers_to_json(&parts.headers),
        "body_length": body_length,
    });
    json_response(status, &echo)
}

/// Counts the bytes of a request body frame by frame, keeping no more than one frame.
async fn count_body_bytes(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            length += data.len() as u64;
        }
    }
    Ok(length)
}

/// Maps each header name to its value, joining repeated headers with `", "`. Bytes that are
/// not UTF-8 become U+FFFD.
fn headers_to_json(headers: &HeaderMap) -> Value {
    let mut object = Map::new();
    for name in headers.keys() {
        let values: Vec<_> = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()))
            .collect();
        object.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    Value::Object(object)
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut response = Response::new(MockBody::from(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text_response(status: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Builds `{"error": message, "status": code}` with that status.
fn error_response(status: StatusCode, message: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({ "error": message, "status": status.as_u16() }),
    )
}
