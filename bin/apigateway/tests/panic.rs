//! A panic inside the layer stack of a real server: the client gets a 500 that carries its
//! request id, the log gets the panic with a stack trace, and the connection keeps serving.
//!
//! The server runs in this process on a loopback port, with a test-only layer that panics on
//! `/panic` (in `call`) and `/panic-later` (in the response future).

use apigateway::{Gateway, Router, serve_with};
use bytes::Bytes;
use gateway_config::Config;
use gateway_proxy::ProxyBody;
use gateway_proxy::server::Inbound;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

const CONFIG: &str = r#"
server:
  host: 127.0.0.1
  port: 8080
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:1"
health_check:
  enabled: false
request_log:
  enabled: false
"#;

/// Layer that adds [`PanicOn`] around the router.
#[derive(Debug, Clone, Copy)]
struct PanicLayer;

impl Layer<Router> for PanicLayer {
    type Service = PanicOn;

    fn layer(&self, inner: Router) -> PanicOn {
        PanicOn { inner }
    }
}

/// Panics on `/panic` and `/panic-later`; passes every other request to the router.
#[derive(Debug, Clone)]
struct PanicOn {
    inner: Router,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

impl Service<Request<Inbound>> for PanicOn {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Inbound>) -> BoxFuture {
        match request.uri().path() {
            "/panic" => panic!("test layer panics in call"),
            "/panic-later" => Box::pin(async { panic!("test layer panics in its future") }),
            _ => Box::pin(self.inner.call(request)),
        }
    }
}

/// Log output shared between the subscriber and the test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        let bytes = self.0.lock().expect("log buffer lock");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log buffer lock")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs, once per process, the panic hook and a global subscriber that writes into a
/// buffer. The subscriber is global because server tasks run on runtime worker threads,
/// where a thread-local one would miss them.
fn log_buffer() -> LogBuffer {
    static BUFFER: OnceLock<LogBuffer> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            gateway_middleware::catch_panic::install_panic_hook();
            let buffer = LogBuffer::default();
            let writer = buffer.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("install subscriber");
            buffer
        })
        .clone()
}

/// Serves the gateway with [`PanicLayer`] on a loopback port while `client` runs against its
/// address, then stops it and checks that it drained cleanly.
///
/// The server future runs on the test's own task, joined with the client, because it is not
/// `Send` and so cannot go to `tokio::spawn`.
async fn with_server<F, Fut>(client: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
    let config = Config::from_yaml(CONFIG, "panic-test.yaml").expect("valid config");
    let gateway = Arc::new(Gateway::new(config).expect("gateway"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();

    let server = serve_with(listener, gateway, PanicLayer, async move {
        let _ = stopped.await;
    });
    let client = async move {
        client(addr).await;
        let _ = stop.send(());
    };
    let run = async { tokio::join!(server, client) };
    let (outcome, ()) = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("test finishes within 30 s");
    let outcome = outcome.expect("server result");
    assert!(outcome.is_clean(), "{outcome:?}");
}

/// Opens one HTTP/1.1 connection; every request sent with it uses that same connection.
async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    request_id: Option<&str>,
) -> (http::response::Parts, String) {
    sender.ready().await.expect("connection still usable");
    let mut builder = Request::get(path).header("host", "gateway.test");
    if let Some(id) = request_id {
        builder = builder.header("x-request-id", id);
    }
    let request = builder.body(Empty::new()).expect("request");
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts, String::from_utf8_lossy(&body).into_owned())
}

/// Waits up to 5 seconds for a log line that contains every one of `parts`.
async fn wait_for_log(buffer: &LogBuffer, parts: &[&str]) -> Option<String> {
    for _ in 0..100 {
        let text = buffer.text();
        // A logged event with a multi-line backtrace spans several lines, so events are split
        // where a line starts with the next timestamp ("20..").
        let found = text
            .split("\n20")
            .find(|event| parts.iter().all(|part| event.contains(part)));
        if let Some(event) = found {
            return Some(event.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_becomes_500_and_connection_survives() {
    let logs = log_buffer();
    with_server(|addr| async move {
        let mut sender = connect(addr).await;
        for (path, id) in [
            ("/panic", "panic-in-call-1"),
            ("/panic-later", "panic-in-future-2"),
        ] {
            let (parts, body) = send(&mut sender, path, Some(id)).await;
            assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            assert_eq!(parts.headers["x-request-id"], id, "{path}");
            let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
            assert_eq!(json["request_id"], id, "{path}: {body}");
            assert_eq!(json["status"], 500, "{path}: {body}");
            assert!(
                !body.contains("test layer"),
                "{path}: panic text leaked: {body}"
            );

            let event = wait_for_log(&logs, &["ERROR", "panicked", id])
                .await
                .unwrap_or_else(|| panic!("no panic log for {path}; log:\n{}", logs.text()));
            assert!(event.contains(path), "{path}: path not logged: {event}");
            assert!(
                event.contains("test layer panics"),
                "{path}: panic message not logged: {event}"
            );
            assert!(
                event.contains("tests/panic.rs"),
                "{path}: no stack frame from this file: {event}"
            );

            // The next request goes on the same connection.
            let (parts, body) = send(&mut sender, "/health", None).await;
            assert_eq!(parts.status, StatusCode::OK, "after {path}: {body}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_without_request_id_gets_generated_one() {
    let logs = log_buffer();
    with_server(|addr| async move {
        let mut sender = connect(addr).await;
        let (parts, body) = send(&mut sender, "/panic", None).await;
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        let id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(id.len(), 32, "generated id {id:?}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(json["request_id"], id.as_str(), "{body}");
        assert!(
            wait_for_log(&logs, &["panicked", &id]).await.is_some(),
            "generated id {id} not logged; log:\n{}",
            logs.text()
        );
    })
    .await;
}
