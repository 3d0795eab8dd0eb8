//! Tests of one probe: the probe URL, how failures are classified and worded, and timeouts
//! against real sockets on 127.0.0.1.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn joined(base: &'static str, path: &str) -> String {
    match probe_url(&Uri::from_static(base), path) {
        Ok(url) => url.to_string(),
        Err(error) => ProbeError::from(error).message(),
    }
}

#[test]
fn probe_url_joins_base_and_path() {
    assert_eq!(joined("http://h:1", "/health"), "http://h:1/health");
    assert_eq!(joined("http://h:1/", "/health"), "http://h:1/health");
    assert_eq!(joined("http://h:1/v1", "/health"), "http://h:1/v1/health");
    assert_eq!(joined("http://h:1/v1/", "/health"), "http://h:1/v1/health");
    assert_eq!(joined("http://h:1/v1", "health"), "http://h:1/v1/health");
    assert_eq!(joined("http://h:1", "/"), "http://h:1/");
    assert_eq!(
        joined("http://h:1", "/ready?full=1"),
        "http://h:1/ready?full=1"
    );
}

#[test]
fn probe_url_rejects_invalid_path() {
    let message = joined("http://h:1", "/health check");
    assert!(
        message.starts_with("invalid health check url \"http://h:1/health check\": "),
        "{message}"
    );
}

#[test]
fn probe_url_rejects_relative_base() {
    let message = joined("/v1", "/health");
    assert!(message.starts_with("invalid health check url"), "{message}");
}

/// An error that wraps an I/O error, as the HTTP client's connect errors do.
#[derive(Debug, thiserror::Error)]
#[error("tcp open error")]
struct Wrapped(#[source] io::Error);

#[test]
fn descriptor_shortage_found_in_chain() {
    use rustix::io::Errno;
    let shortages = [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOBUFS,
        Errno::NOMEM,
        Errno::ADDRNOTAVAIL,
    ];
    for errno in shortages {
        let wrapped = Wrapped(io::Error::from_raw_os_error(errno.raw_os_error()));
        assert_eq!(resource_shortage(&wrapped), Some(errno.raw_os_error()));
    }
    let rejected = Wrapped(io::Error::from(io::ErrorKind::ConnectionRefused));
    assert_eq!(resource_shortage(&rejected), None);
}

#[tokio::test]
async fn route_found_for_loopback_only() {
    assert!(has_route_to(&Uri::from_static("http://127.0.0.1:9/health")).await);
    assert!(has_route_to(&Uri::from_static("http://localhost:9/health")).await);
    // A broadcast address has no route for a socket that did not ask for broadcasts.
    assert!(!has_route_to(&Uri::from_static("http://255.255.255.255:9/health")).await);
}

#[test]
fn success_and_redirect_statuses_pass() {
    for code in [200, 204, 299, 300, 301, 302, 304, 307, 308, 399] {
        let status = StatusCode::from_u16(code).unwrap();
        assert!(status_passes(status), "{code} fails");
    }
    for code in [100, 101, 199, 400, 404, 429, 500, 503, 599] {
        let status = StatusCode::from_u16(code).unwrap();
        assert!(!status_passes(status), "{code} passes");
    }
}

#[test]
fn error_messages_are_short() {
    assert_eq!(
        ProbeError::ConnectionRefused.message(),
        "connection refused"
    );
    let connect = ProbeError::ConnectTimedOut(Duration::from_secs(2));
    assert_eq!(connect.message(), "connect timed out after 2s");
    let no_response = ProbeError::NoResponse(Duration::from_secs(2));
    assert_eq!(no_response.message(), "no response within 2s");
    let sub_second = ProbeError::NoResponse(Duration::from_millis(150));
    assert_eq!(sub_second.message(), "no response within 150ms");
    let body = ProbeError::BodyTimedOut(Duration::from_secs(2));
    assert_eq!(body.message(), "response body not complete within 2s");
    let status = ProbeError::Status(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status.message(), "status 503");
}

/// The health check timeout of the timeout tests. A SYN that a full accept queue drops is sent
/// again after about a second, so a connect to such a listener stays pending for longer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Returns the URL of `/health` on `listener`.
fn health_url(listener: &TcpListener) -> Uri {
    let address = listener.local_addr().unwrap();
    format!("http://{address}/health").parse().unwrap()
}

/// Binds a listener on 127.0.0.1 that never accepts, and fills its accept queue. The kernel
/// then drops every further SYN, so a connect to it stays pending. Returns the listener and
/// the connections that fill its queue, which must stay open.
async fn full_listener() -> (TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let address = listener.local_addr().unwrap();

    // The queue may take more connections than the backlog (Linux takes one more), so
    // connections are opened until one stays pending.
    let mut queued = Vec::new();
    for _ in 0..64 {
        let mut connect = Box::pin(TcpStream::connect(address));
        match tokio::time::timeout(Duration::from_millis(200), &mut connect).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(error)) => panic!("connect to {address} failed: {error}"),
            Err(_) => {
                // A connect that was only slow, on a loaded machine, still takes the last
                // place in the queue once it completes, so it is left to run.
                tokio::spawn(async move {
                    let stream = connect.await;
                    std::future::pending::<()>().await;
                    drop(stream);
                });
                return (listener, queued);
            }
        }
    }
    panic!("the accept queue of {address} never filled");
}

/// Accepts every connection to `listener`, reads the request head, writes `response` and
/// then keeps the connection open without writing more.
fn serve_then_stall(listener: TcpListener, response: &'static [u8]) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            stream.write_all(response).await.unwrap();
            open.push(stream);
        }
    })
}

#[tokio::test]
async fn pending_connect_times_out_as_connect() {
    let (listener, _queued) = full_listener().await;

    let error = probe(&client(), &health_url(&listener), PROBE_TIMEOUT)
        .await
        .unwrap_err();

    assert!(matches!(error, ProbeError::ConnectTimedOut(_)), "{error:?}");
    assert_eq!(error.message(), "connect timed out after 300ms");
}

#[tokio::test]
async fn silent_backend_times_out_as_no_response() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = health_url(&listener);
    let server = serve_then_stall(listener, b"");

    let error = probe(&client(), &url, PROBE_TIMEOUT).await.unwrap_err();

    assert!(matches!(error, ProbeError::NoResponse(_)), "{error:?}");
    assert_eq!(error.message(), "no response within 300ms");
    server.abort();
}

#[tokio::test]
async fn stalled_body_times_out_as_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = health_url(&listener);
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok";
    let server = serve_then_stall(listener, head);

    let error = probe(&client(), &url, PROBE_TIMEOUT).await.unwrap_err();

    assert!(matches!(error, ProbeError::BodyTimedOut(_)), "{error:?}");
    assert_eq!(error.message(), "response body not complete within 300ms");
    server.abort();
}

#[tokio::test]
async fn pooled_connection_times_out_as_no_response() {
    // The first probe passes and leaves its connection in the pool, and the second, on that
    // connection, gets no response: the backend responds only once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = health_url(&listener);
    let once = b"HTTP/1.1 204 No Content\r\n\r\n";
    let server = serve_then_stall(listener, once);
    let client = client();

    probe(&client, &url, PROBE_TIMEOUT).await.unwrap();
    let error = probe(&client, &url, PROBE_TIMEOUT).await.unwrap_err();

    assert!(matches!(error, ProbeError::NoResponse(_)), "{error:?}");
    server.abort();
}
