//! The connection loop over real sockets on 127.0.0.1, with small services.

use super::*;
use http::Uri;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SETTINGS: ServerSettings = ServerSettings {
    max_head_bytes: 8 * 1024,
    confirm_writes: false,
};

/// Returns the method, the path and the request body, read whole.
async fn echo(request: Request<Inbound>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => Bytes::from(format!("error: {error}")),
    };
    let mut text = format!("{} {} ", parts.method, parts.uri.path()).into_bytes();
    text.extend_from_slice(&body);
    Response::new(Full::new(Bytes::from(text)))
}

/// Serves one connection at a time with `service` until the test ends; returns the address
/// and the sender that starts the drain.
async fn serve<S, F, B>(service: S) -> (SocketAddr, watch::Sender<bool>)
where
    S: FnMut(Request<Inbound>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(SETTINGS, service).await
}

/// Serves as [`serve`] does, with `settings`.
async fn serve_with<S, F, B>(
    settings: ServerSettings,
    service: S,
) -> (SocketAddr, watch::Sender<bool>)
where
    S: FnMut(Request<Inbound>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (address, start_drain, _rejections) = serve_reporting(settings, service).await;
    (address, start_drain)
}

/// Serves as [`serve_with`] does, and also returns the receiver of every rejection reported.
async fn serve_reporting<S, F, B>(
    settings: ServerSettings,
    service: S,
) -> (
    SocketAddr,
    watch::Sender<bool>,
    tokio::sync::mpsc::UnboundedReceiver<Rejection>,
)
where
    S: FnMut(Request<Inbound>) -> F + Clone + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (start_drain, drain) = watch::channel(false);
    let (report, rejections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service.clone();
            let drain = drain.clone();
            let report = report.clone();
            tokio::spawn(async move {
                let on_reject = move |rejection| {
                    let _ = report.send(rejection);
                };
                let _ = serve_connection(stream, service, on_reject, settings, drain).await;
            });
        }
    });
    (address, start_drain, rejections)
}

/// Connects to `address` and sends `bytes`.
async fn send(address: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until `ending` has arrived `count` times, or the connection closes.
async fn read_until(stream: &mut TcpStream, ending: &str, count: usize) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        while String::from_utf8_lossy(&received).matches(ending).count() < count {
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the response arrives");
    String::from_utf8_lossy(&received).into_owned()
}

/// Reads to the end of the stream.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the connection closes")
        .unwrap();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(
        address,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
              GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = read_to_close(&mut stream).await;
    let first = text.find("GET /one ").expect(&text);
    let second = text.find("POST /two abc").expect(&text);
    let third = text.find("GET /three ").expect(&text);
    assert!(first < second, "{text}");
    assert!(second < third, "{text}");
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    assert_eq!(text.matches("connection: close\r\n").count(), 1, "{text}");
}

/// A one-frame body that counts the polls it gets.
struct CountedPolls {
    data: Option<Bytes>,
    polls: Arc<AtomicUsize>,
}

impl Body for CountedPolls {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        std::task::Poll::Ready(
            self.data
                .take()
                .map(|data| Ok(http_body::Frame::data(data))),
        )
    }
}

#[tokio::test]
async fn extension_method_reaches_service() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(
        address,
        b"PURGE /cache/a HTTP/1.1\r\nHost: a\r\n\r\n\
          PROPFIND /dav HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\n<a/>",
    )
    .await;
    let text = read_to_close(&mut stream).await;
    let purge = text.find("PURGE /cache/a ").expect(&text);
    let propfind = text.find("PROPFIND /dav <a/>").expect(&text);
    assert!(purge < propfind, "{text}");
}

#[tokio::test]
async fn written_response_is_confirmed_by_one_more_poll() {
    for (confirm_writes, expected) in [(false, 2), (true, 3)] {
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&polls);
        let service = move |_: Request<Inbound>| {
            let body = CountedPolls {
                data: Some(Bytes::from_static(b"hello")),
                polls: Arc::clone(&counter),
            };
            async move { Response::new(body) }
        };
        let settings = ServerSettings {
            confirm_writes,
            ..SETTINGS
        };
        let (address, _drain) = serve_with(settings, service).await;
        let mut stream = send(
            address,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let text = read_to_close(&mut stream).await;
        assert!(
            text.ends_with("hello") || text.ends_with("0\r\n\r\n"),
            "{text}"
        );
        // The frame, the end, and with confirmation one poll after the last write.
        assert_eq!(
            polls.load(Ordering::SeqCst),
            expected,
            "confirm {confirm_writes}"
        );
    }
}

#[tokio::test]
async fn chunked_request_body_is_decoded() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(
        address,
        b"PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;ext=1\r\nabcd\r\n2\r\nef\r\n0\r\nx-sum: 6\r\n\r\n",
    )
    .await;
    let text = read_until(&mut stream, "PUT /up abcdef", 1).await;
    assert!(text.contains("content-length: 14\r\n"), "{text}");
}

#[tokio::test]
async fn broken_chunked_body_errors() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(
        address,
        b"PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    let text = read_to_close(&mut stream).await;
    assert!(
        text.contains("error: invalid chunked request body"),
        "{text}"
    );
    // The rest of the stream cannot be trusted as a next request.
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn continue_sent_when_body_read() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(
        address,
        b"POST /wait HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    let interim = read_until(&mut stream, "\r\n\r\n", 1).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hi").await.unwrap();
    let text = read_until(&mut stream, "POST /wait hi", 1).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    // A service that responds without reading never requests the body. The connection
    // closes after the response, because the body may still come.
    let (address, _drain) = serve(|_request: Request<Inbound>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"no")));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
    })
    .await;
    let mut stream = send(
        address,
        b"POST /wait HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    let text = read_to_close(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn large_unread_body_closes_the_connection() {
    let (address, _drain) = serve(|_request: Request<Inbound>| async {
        Response::new(Full::new(Bytes::from_static(b"early")))
    })
    .await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        10 * MAX_DISCARD
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 1000]).await.unwrap();
    let text = read_to_close(&mut stream).await;
    assert!(text.ends_with("early"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn small_unread_body_discarded() {
    let (address, _drain) = serve(|request: Request<Inbound>| async move {
        Response::new(Full::new(Bytes::from(request.uri().path().to_owned())))
    })
    .await;
    let mut stream = send(
        address,
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              GET /second HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let text = read_until(&mut stream, "/second", 1).await;
    assert!(text.contains("/first"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

#[tokio::test]
async fn body_rest_after_response_keeps_connection() {
    let (address, _drain) = serve(|request: Request<Inbound>| async move {
        Response::new(Full::new(Bytes::from(request.uri().path().to_owned())))
    })
    .await;
    let mut stream = send(
        address,
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
    )
    .await;
    let first = read_until(&mut stream, "/first", 1).await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");

    // The rest of the body comes after the response, then the next request.
    stream
        .write_all(b"worldGET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let second = read_until(&mut stream, "/second", 1).await;
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
}

#[tokio::test]
async fn body_rest_never_sent_closes_after_wait() {
    let (address, _drain) = serve(|_request: Request<Inbound>| async {
        Response::new(Full::new(Bytes::from_static(b"early")))
    })
    .await;
    let mut stream = send(
        address,
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
    )
    .await;
    let sent = Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(
        DISCARD_WAIT + Duration::from_secs(5),
        stream.read_to_end(&mut received),
    )
    .await
    .expect("the connection closes")
    .unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.ends_with("early"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    assert!(sent.elapsed() >= DISCARD_WAIT, "{:?}", sent.elapsed());
}

#[tokio::test]
async fn drain_ends_wait_for_body_rest() {
    let (address, start_drain) = serve(|_request: Request<Inbound>| async {
        Response::new(Full::new(Bytes::from_static(b"early")))
    })
    .await;
    let mut stream = send(
        address,
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
    )
    .await;
    read_until(&mut stream, "early", 1).await;

    // The connection waits for the body's rest; the drain ends the wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    start_drain.send(true).unwrap();
    let drained = Instant::now();
    assert_eq!(read_to_close(&mut stream).await, "");
    let waited = drained.elapsed();
    assert!(waited < Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn request_timeout_response_closes() {
    let (address, _drain) = serve(|_request: Request<Inbound>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"slow")));
        *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
        response
    })
    .await;
    let mut stream = send(
        address,
        b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
    )
    .await;
    let text = read_to_close(&mut stream).await;
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn client_leaving_cancels_request() {
    let dropped = Arc::new(AtomicUsize::new(0));
    /// Counts its drops.
    struct Probe(Arc<AtomicUsize>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let counter = Arc::clone(&dropped);
    let (address, _drain) = serve(move |_request: Request<Inbound>| {
        let probe = Probe(Arc::clone(&counter));
        async move {
            std::future::pending::<()>().await;
            drop(probe);
            Response::new(Full::new(Bytes::new()))
        }
    })
    .await;
    let stream = send(address, b"GET /forever HTTP/1.1\r\nHost: a\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(stream);
    let request_dropped = async {
        while dropped.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), request_dropped)
        .await
        .expect("the request is dropped after the client leaves");
}

/// Waits `delay`, as a forwarder connecting to a backend does, then echoes the request body.
async fn echo_after(delay: Duration, request: Request<Inbound>) -> Response<Full<Bytes>> {
    tokio::time::sleep(delay).await;
    echo(request).await
}

#[tokio::test]
async fn leaving_before_body_read_cancels() {
    let finished = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&finished);
    let (address, _drain) = serve(move |request: Request<Inbound>| {
        let counter = Arc::clone(&counter);
        async move {
            let response = echo_after(Duration::from_secs(3), request).await;
            counter.fetch_add(1, Ordering::SeqCst);
            response
        }
    })
    .await;
    let stream = send(
        address,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);

    // The request is dropped when the client leaves, long before the service would read the
    // body and respond.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the request ran to its end after the client left"
    );
}

#[tokio::test]
async fn body_read_ahead_reaches_service_whole() {
    let (address, _drain) =
        serve(|request: Request<Inbound>| echo_after(Duration::from_millis(300), request)).await;
    let body = vec![b'x'; 20_000];
    let mut request = format!(
        "POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut stream = send(address, &request).await;
    let text = read_to_close(&mut stream).await;
    let echoed = text.split("POST /late ").nth(1).expect(&text);
    assert_eq!(echoed.len(), body.len(), "{text}");
    assert!(echoed.bytes().all(|byte| byte == b'x'), "{text}");
}

#[tokio::test]
async fn request_just_after_drain_served_with_close() {
    let (address, start_drain) = serve(echo).await;
    let mut stream = send(address, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let first = read_until(&mut stream, "/first", 1).await;
    assert!(!first.contains("connection: close"), "{first}");

    // The client sends its next request on the idle connection just after the drain began.
    start_drain.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let second = read_to_close(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
    assert!(second.contains("connection: close\r\n"), "{second}");
    assert!(second.ends_with("GET /second "), "{second}");
}

#[tokio::test]
async fn idle_connection_closes_after_drain_grace() {
    let (address, start_drain) = serve(echo).await;
    let mut stream = send(address, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await;
    read_until(&mut stream, "/first", 1).await;

    start_drain.send(true).unwrap();
    let began = Instant::now();
    assert_eq!(read_to_close(&mut stream).await, "");
    let waited = began.elapsed();
    assert!(
        waited >= DRAIN_GRACE - Duration::from_millis(50),
        "{waited:?}"
    );
}

#[tokio::test]
async fn drain_closes_idle_then_busy() {
    let (release, released) = watch::channel(false);
    let (address, start_drain) = serve(move |request: Request<Inbound>| {
        let mut released = released.clone();
        async move {
            if request.uri().path() == "/slow" {
                let _ = released.wait_for(|released| *released).await;
            }
            Response::new(Full::new(Bytes::from_static(b"done")))
        }
    })
    .await;
    let mut idle = TcpStream::connect(address).await.unwrap();
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut idle, "done", 1).await;
    let mut busy = TcpStream::connect(address).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    start_drain.send(true).unwrap();
    assert_eq!(read_to_close(&mut idle).await, "");
    release.send(true).unwrap();
    let text = read_to_close(&mut busy).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("done"), "{text}");
}

#[tokio::test]
async fn unreadable_heads_rejected() {
    let (address, _drain) = serve(echo).await;
    for (request, status) in [
        (
            &b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"[..],
            "400 Bad Request",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400 Bad Request",
        ),
    ] {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let text = read_to_close(&mut stream).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{text}"
        );
    }
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut head = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', SETTINGS.max_head_bytes));
    // The server may stop reading and respond before the whole head is written.
    let _ = stream.write_all(&head).await;
    let text = read_to_close(&mut stream).await;
    assert!(
        text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn rejections_are_reported_before_response() {
    let (address, _drain, mut rejections) = serve_reporting(SETTINGS, echo).await;
    let cases: [(&[u8], &str, ErrorKind, Option<&str>); 6] = [
        (
            b"POST /cl HTTP/1.1\r\nUser-Agent: probe/1\r\nContent-Length: 1\r\n\
              Content-Length: 2\r\n\r\n",
            "400 Bad Request",
            ErrorKind::InvalidRequest,
            Some("/cl"),
        ),
        (
            b"POST /te HTTP/1.1\r\nUser-Agent: probe/1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "400 Bad Request",
            ErrorKind::UnsupportedTransferCoding,
            Some("/te"),
        ),
        (
            b"POST /both HTTP/1.1\r\nUser-Agent: probe/1\r\nContent-Length: 1\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
            "400 Bad Request",
            ErrorKind::InvalidRequest,
            Some("/both"),
        ),
        (
            b"GET /fold HTTP/1.1\r\nUser-Agent: probe/1\r\n folded\r\n\r\n",
            "400 Bad Request",
            ErrorKind::InvalidRequest,
            Some("/fold"),
        ),
        (
            b"GET /nul HTTP/1.1\r\nUser-Agent: a\0b\r\n\r\n",
            "400 Bad Request",
            ErrorKind::InvalidRequest,
            Some("/nul"),
        ),
        (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
            "400 Bad Request",
            ErrorKind::InvalidRequest,
            None,
        ),
    ];
    for (request, status, kind, path) in cases {
        let text = String::from_utf8_lossy(request);
        let mut stream = send(address, request).await;
        let response = read_to_close(&mut stream).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{text:?}: {response}"
        );
        let rejection = rejections
            .try_recv()
            .expect("a rejection reported before the response");
        assert_eq!(
            rejection.status.as_u16(),
            status[..3].parse::<u16>().unwrap()
        );
        assert_eq!(rejection.kind, kind, "{text:?}");
        assert_eq!(rejection.uri.as_ref().map(Uri::path), path, "{text:?}");
        assert_eq!(rejection.method.is_some(), path.is_some(), "{text:?}");
        assert_eq!(rejection.bytes_read, request.len(), "{text:?}");
        assert!(rejection.latency() < Duration::from_secs(1), "{text:?}");
        let user_agent = rejection
            .headers
            .as_ref()
            .and_then(|headers| headers.get("user-agent"));
        // Only heads whose every line parsed report their fields.
        let whole = text.contains("/cl") || text.contains("/te") || text.contains("/both");
        assert_eq!(user_agent.is_some(), whole, "{text:?}");
    }
}

#[tokio::test]
async fn rejection_latency_counts_from_first_bytes() {
    let (address, _drain, mut rejections) = serve_reporting(SETTINGS, echo).await;
    let mut stream = send(address, b"GET /slow HTTP/1.1\r\nUser-Agent: probe/1\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(b"Bad Header\r\n\r\n").await.unwrap();
    let response = read_to_close(&mut stream).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    let rejection = rejections.try_recv().unwrap();
    assert!(
        rejection.latency() >= Duration::from_millis(200),
        "{rejection:?}"
    );
    assert_eq!(rejection.method, Some(http::Method::GET));
    assert!(rejection.headers.is_none());

    // A head over the limit names its method and path when its request line ended.
    let mut head = b"GET /short HTTP/1.1\r\nX-Long: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', SETTINGS.max_head_bytes));
    let mut stream = TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(&head).await;
    let response = read_to_close(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    let rejection = rejections.try_recv().unwrap();
    assert_eq!(
        rejection.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(rejection.uri.as_ref().map(Uri::path), Some("/short"));

    let mut head = b"GET /".to_vec();
    head.extend(std::iter::repeat_n(b'a', SETTINGS.max_head_bytes));
    let mut stream = TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(&head).await;
    let response = read_to_close(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 414 "), "{response}");
    let rejection = rejections.try_recv().unwrap();
    assert_eq!(rejection.status, StatusCode::URI_TOO_LONG);
    assert!(rejection.method.is_none());
    assert!(rejection.uri.is_none());
}

/// A head that started before the drain and turns out bad after it reports its latency from
/// its first bytes, though the drain restarts its read.
#[tokio::test]
async fn rejection_latency_spans_drain() {
    let (address, drain, mut rejections) = serve_reporting(SETTINGS, echo).await;
    let mut stream = send(address, b"GET /slow HTTP/1.1\r\nHost: a\r\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain.send_replace(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(b"Bad Header\r\n\r\n").await.unwrap();
    let response = read_to_close(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    let rejection = rejections.try_recv().unwrap();
    assert!(
        rejection.latency() >= Duration::from_millis(400),
        "{rejection:?}"
    );
}

#[tokio::test]
async fn accepted_requests_report_no_rejection() {
    let (address, _drain, mut rejections) = serve_reporting(SETTINGS, echo).await;
    let mut stream = send(address, b"GET /a HTTP/1.1\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"Host: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_to_close(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(rejections.try_recv().is_err());
}

/// A body that does not tell its length.
struct Unsized(Option<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }
}

#[tokio::test]
async fn unknown_length_body_framing() {
    let (address, _drain) = serve(|_request: Request<Inbound>| async {
        Response::new(Unsized(Some(Bytes::from_static(b"streamed"))))
    })
    .await;
    let mut stream = send(address, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let text = read_until(&mut stream, "0\r\n\r\n", 1).await;
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n8\r\nstreamed\r\n0\r\n\r\n"),
        "{text}"
    );

    // HTTP/1.0 has no chunked coding: the body ends with the connection, even on a
    // connection the client asked to keep.
    let mut stream = send(address, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let text = read_to_close(&mut stream).await;
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(!text.contains("keep-alive"), "{text}");
    assert!(text.ends_with("\r\n\r\nstreamed"), "{text}");
}

#[tokio::test]
async fn head_over_limit_in_pieces_rejected() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(address, b"GET / HTTP/1.1\r\nX-Long: ").await;
    let piece = vec![b'a'; SETTINGS.max_head_bytes - 100];
    stream.write_all(&piece).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The rest may arrive in one read that completes the head past the limit.
    let mut rest = piece;
    rest.extend_from_slice(b"\r\n\r\n");
    let _ = stream.write_all(&rest).await;
    let text = read_to_close(&mut stream).await;
    assert!(
        text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn long_request_line_gets_414() {
    let (address, _drain) = serve(echo).await;
    let mut head = b"GET /".to_vec();
    head.extend(std::iter::repeat_n(b'a', SETTINGS.max_head_bytes));
    head.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The server may stop reading and respond before the whole head is written.
    let _ = stream.write_all(&head).await;
    let text = read_to_close(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{text}");

    // A target that fits leaves the fields to blame when the head as a whole is too large.
    let mut head = b"GET /short HTTP/1.1\r\nX-Long: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', SETTINGS.max_head_bytes));
    head.extend_from_slice(b"\r\n\r\n");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let _ = stream.write_all(&head).await;
    let text = read_to_close(&mut stream).await;
    assert!(
        text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{text}"
    );
}

#[test]
fn request_line_length_is_measured_after_empty_lines() {
    assert!(request_line_exceeds(b"GET /aaaaaaaa", 8));
    assert!(!request_line_exceeds(b"GET /\r\nX: aaaaaaaa", 8));
    assert!(!request_line_exceeds(b"\r\n\r\nGET /\r\n", 8));
    assert!(request_line_exceeds(b"\r\nGET /aaaaaaaa\r\n", 8));
}

#[tokio::test]
async fn bare_lf_after_trailers_never_hides_next_request() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(
        address,
        b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\n\n\
          GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let text = read_to_close(&mut stream).await;
    assert!(
        text.contains("error: invalid chunked request body"),
        "{text}"
    );
    assert!(!text.contains("/hidden"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn body_sent_before_continue_keeps_connection() {
    let (address, _drain) = serve(echo).await;
    let mut stream = send(
        address,
        b"POST /eager HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello\
          GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let text = read_until(&mut stream, "GET /after", 1).await;
    assert!(text.contains("POST /eager hello"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

#[tokio::test]
async fn unread_chunked_body_sets_connection_close() {
    let (address, _drain) = serve(|request: Request<Inbound>| async move {
        Response::new(Full::new(Bytes::from(request.uri().path().to_owned())))
    })
    .await;
    // A small chunked body that has arrived whole is discarded, and the connection kept.
    let mut stream = send(
        address,
        b"PUT /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n\
          GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let text = read_until(&mut stream, "/next", 1).await;
    assert!(text.contains("/small"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");

    // One whose end has not arrived says that the connection closes, before it does.
    let mut head = b"PUT /large HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    head.extend_from_slice(format!("{:x}\r\n", 4 * MAX_DISCARD).as_bytes());
    head.extend(std::iter::repeat_n(b'x', 1000));
    let mut stream = send(address, &head).await;
    let text = read_to_close(&mut stream).await;
    assert!(text.ends_with("/large"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

#[tokio::test]
async fn size_hint_counts_bytes_left() {
    let (address, _drain) = serve(|request: Request<Inbound>| async move {
        let mut body = request.into_body();
        let before = body.size_hint().exact();
        let first = body.frame().await.and_then(Result::ok);
        let read = first
            .and_then(|frame| frame.into_data().ok())
            .map_or(0, |data| data.len());
        let after = body.size_hint().exact();
        Response::new(Full::new(Bytes::from(format!(
            "before={before:?} read={read} after={after:?}"
        ))))
    })
    .await;
    let mut stream = send(
        address,
        b"POST /part HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabcd",
    )
    .await;
    let text = read_until(&mut stream, "after=", 1).await;
    assert!(
        text.ends_with("before=Some(10) read=4 after=Some(6)"),
        "{text}"
    );
}

/// Offers `103 Early Hints` with a `Link` field, as a forwarder does for a backend's.
fn offer_hints() -> bool {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::LINK,
        http::HeaderValue::from_static("</a.css>; rel=preload"),
    );
    interim::offer(StatusCode::EARLY_HINTS, &headers)
}

/// Offers early hints, waits a moment so that they are written on their own, then reads the
/// body and responds with it.
async fn hints_then_echo(request: Request<Inbound>) -> Response<Full<Bytes>> {
    offer_hints();
    tokio::time::sleep(Duration::from_millis(50)).await;
    echo(request).await
}

#[tokio::test]
async fn interim_responses_precede_final_one() {
    let (address, _drain) = serve(hints_then_echo).await;
    let mut stream = send(address, b"GET /hints HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let hints = read_until(&mut stream, "\r\n\r\n", 1).await;
    assert_eq!(
        hints,
        "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
    );
    let text = read_until(&mut stream, "GET /hints ", 1).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    // Offered in the poll that also returns the response, they go out in front of its head.
    let (address, _drain) = serve(|request: Request<Inbound>| async move {
        offer_hints();
        echo(request).await
    })
    .await;
    let mut stream = send(address, b"GET /same HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let text = read_until(&mut stream, "GET /same ", 1).await;
    assert!(
        text.starts_with(
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn http_10_client_gets_no_interim_response() {
    let offers_taken = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&offers_taken);
    let (address, _drain) = serve(move |request: Request<Inbound>| {
        let counted = Arc::clone(&counted);
        async move {
            if offer_hints() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            echo(request).await
        }
    })
    .await;
    let mut stream = send(address, b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n").await;
    let text = read_to_close(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("103"), "{text}");
    assert_eq!(
        offers_taken.load(Ordering::SeqCst),
        0,
        "the offer was taken"
    );
}

#[tokio::test]
async fn interim_and_continue_never_interleave() {
    // The hints come before the body is read, so before the gateway's own `100 Continue`.
    let (address, _drain) = serve(hints_then_echo).await;
    let mut stream = send(
        address,
        b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    let interim = read_until(&mut stream, "\r\n\r\n", 2).await;
    assert_eq!(
        interim,
        "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
         HTTP/1.1 100 Continue\r\n\r\n"
    );
    stream.write_all(b"hi").await.unwrap();
    let text = read_until(&mut stream, "POST /up hi", 1).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");

    // Hints offered after the body was read follow the one `100 Continue`.
    let (address, _drain) = serve(|request: Request<Inbound>| async move {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        offer_hints();
        tokio::time::sleep(Duration::from_millis(50)).await;
        echo(Request::from_parts(parts, Inbound::empty())).await;
        Response::new(Full::new(body))
    })
    .await;
    let mut stream = send(
        address,
        b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    let interim = read_until(&mut stream, "\r\n\r\n", 1).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hi").await.unwrap();
    let text = read_until(&mut stream, "hi", 1).await;
    assert!(
        text.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
}

#[tokio::test]
async fn failed_interim_write_drops_request() {
    /// Counts its drops. The service's future owns one.
    struct DropMark(Arc<AtomicUsize>);
    impl Drop for DropMark {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    // The client sends its request and goes away before anything is written to it.
    let (mut client, server) = tokio::io::duplex(1024);
    client
        .write_all(b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    drop(client);

    let dropped = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&dropped);
    let service = move |_request: Request<Inbound>| {
        let mark = DropMark(Arc::clone(&counted));
        async move {
            let _mark = mark;
            offer_hints();
            std::future::pending::<Response<Full<Bytes>>>().await
        }
    };
    let (_start_drain, drain) = watch::channel(false);
    let served = serve_connection(server, service, |_| {}, SETTINGS, drain);
    let result = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the connection ends");
    assert!(
        matches!(result, Err(ConnectionError::Io(ref error)) if error.kind() == io::ErrorKind::BrokenPipe),
        "{result:?}"
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the request was not dropped"
    );
}
