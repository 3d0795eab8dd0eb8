//! Interim (1xx) responses from a backend, as clients receive them through the gateway. An
//! HTTP/1.1 client gets early hints ahead of the final response, and an HTTP/1.0 client gets
//! none. The backend's `100 Continue` stays on its hop, and a request takes a capped number of
//! interim responses.
//!
//! The backend is a small server on a real socket, so that each test controls the exact bytes
//! and the moment the gateway receives them.

use gateway_tests::{GatewayProcess, RawConnection, RawResponse};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\n\
    Link: </style.css>; rel=preload; as=style\r\n\
    Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n";
const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

/// A backend that responds to every request with its interim bytes, then `200 hello`.
struct Backend {
    addr: SocketAddr,
    /// Lets a held final response go, one per message.
    release: mpsc::Sender<()>,
}

impl Backend {
    /// Starts a backend that writes `interim` as soon as it has read a request. With `hold`, it
    /// then waits for [`Backend::release`] before the final response.
    fn start(interim: Vec<u8>, hold: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let (release, released) = mpsc::channel();
        let released = Arc::new(Mutex::new(released));
        let interim: Arc<[u8]> = interim.into();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (interim, released) = (Arc::clone(&interim), Arc::clone(&released));
                thread::spawn(move || {
                    let _ = serve(stream, &interim, hold.then_some(&*released));
                });
            }
        });
        Backend { addr, release }
    }

    /// Lets the final response of the request held first go.
    fn release(&self) {
        self.release.send(()).expect("backend is running");
    }
}

/// Serves requests on `stream` until the gateway closes it.
fn serve(
    stream: TcpStream,
    interim: &[u8],
    released: Option<&Mutex<mpsc::Receiver<()>>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        // The head, then a body of `Content-Length` bytes, if any.
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(value) = line.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        reader.read_exact(&mut vec![0; length])?;

        writer.write_all(interim)?;
        if let Some(released) = released {
            let _ = released
                .lock()
                .expect("release lock")
                .recv_timeout(Duration::from_secs(10));
        }
        writer.write_all(HELLO)?;
    }
}

fn gateway_for(backend: &Backend) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
server: {{host: 127.0.0.1, port: {{port}}, workers: 1}}
routes:
  - path: "/*rest"
    methods: [GET, POST]
    backends:
      - url: "http://{}"
health_check: {{enabled: false}}
request_log: {{enabled: false}}
"#,
        backend.addr
    ))
}

/// Sends `request` on a new connection and reads the interim responses and the final one.
fn exchange(gateway: &GatewayProcess, request: &[u8]) -> (Vec<RawResponse>, RawResponse) {
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection.send(request).expect("send request");
    connection.read_final_response().expect("response")
}

/// Returns the statuses of `responses`.
fn statuses(responses: &[RawResponse]) -> Vec<u16> {
    responses.iter().map(|response| response.status).collect()
}

#[test]
fn early_hints_reach_client_before_response() {
    let backend = Backend::start(HINTS.to_vec(), true);
    let gateway = gateway_for(&backend);
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .send(b"GET /page HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .expect("send request");

    // The backend keeps its final response back until the hints have reached the client.
    let hints = connection.read_response().expect("early hints");
    assert_eq!(hints.status, 103);
    assert_eq!(
        hints.header("link"),
        Some("</style.css>; rel=preload; as=style")
    );
    assert_eq!(hints.header("x-hop"), None, "{:?}", hints.headers);
    assert_eq!(hints.header("keep-alive"), None, "{:?}", hints.headers);
    assert_eq!(hints.header("connection"), None, "{:?}", hints.headers);
    assert_eq!(hints.headers.len(), 1, "{:?}", hints.headers);
    backend.release();
    let response = connection.read_response().expect("final response");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");

    // The connection stays usable, and the next request gets its own hints.
    connection
        .send(b"GET /next HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        .expect("send second request");
    backend.release();
    let (interim, response) = connection.read_final_response().expect("second response");
    assert_eq!(statuses(&interim), [103]);
    assert_eq!(response.body, b"hello");

    // The access line records the final status, not the interim one.
    let line = gateway.wait_for_line(&["path=\"/page\""], Duration::from_secs(5));
    assert!(
        line.as_deref()
            .is_some_and(|line| line.contains("status=200")),
        "{line:?}"
    );
}

#[test]
fn http_10_client_gets_no_interim_response() {
    let backend = Backend::start(HINTS.to_vec(), false);
    let gateway = gateway_for(&backend);
    let (interim, response) = exchange(&gateway, b"GET /old HTTP/1.0\r\nhost: gateway\r\n\r\n");
    assert_eq!(statuses(&interim), [] as [u16; 0]);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");
}

#[test]
fn backend_continue_stays_on_its_hop() {
    let mut interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n".to_vec();
    interim.extend_from_slice(HINTS);
    let backend = Backend::start(interim, false);
    let gateway = gateway_for(&backend);

    // A client that sent no `Expect` gets no `100 Continue`.
    let (interim, response) = exchange(
        &gateway,
        b"GET / HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&interim), [102, 103]);
    assert_eq!(response.body, b"hello");

    // A client that did gets the gateway's own `100 Continue`, once, before it sends the body.
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .send(
            b"POST /upload HTTP/1.1\r\nhost: gateway\r\nexpect: 100-continue\r\n\
              content-length: 4\r\nconnection: close\r\n\r\n",
        )
        .expect("send head");
    let proceed = connection.read_response().expect("100 Continue");
    assert_eq!(proceed.status, 100);
    connection.send(b"data").expect("send body");
    let (interim, response) = connection.read_final_response().expect("response");
    assert_eq!(statuses(&interim), [102, 103]);
    assert_eq!(response.body, b"hello");
}

#[test]
fn interim_responses_capped_per_request() {
    let mut interim = Vec::new();
    for i in 0..25 {
        interim.extend_from_slice(
            format!("HTTP/1.1 103 Early Hints\r\nlink: </{i}.js>; rel=preload\r\n\r\n").as_bytes(),
        );
    }
    let backend = Backend::start(interim, false);
    let gateway = gateway_for(&backend);
    let (interim, response) = exchange(
        &gateway,
        b"GET / HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n",
    );
    // The first ten reach the client, in order, and the rest are dropped.
    let links: Vec<_> = interim
        .iter()
        .map(|hints| hints.header("link").unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<_> = (0..10).map(|i| format!("</{i}.js>; rel=preload")).collect();
    assert_eq!(links, expected);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");
}

/// Starts a backend that, for each connection, reads a request head and then sends
/// `102 Processing` every 100 ms for 5 s without reading the body or responding.
fn start_processing_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|read| read > 0) && line != "\r\n" {
                    line.clear();
                }
                let mut writer = reader.into_inner();
                for _ in 0..50 {
                    if writer
                        .write_all(b"HTTP/1.1 102 Processing\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            });
        }
    });
    addr
}

#[test]
fn stalled_upload_still_gets_408() {
    let backend = start_processing_backend();
    let gateway = GatewayProcess::start(&format!(
        r#"
server: {{host: 127.0.0.1, port: {{port}}, workers: 1}}
routes:
  - path: "/*rest"
    backends:
      - url: "http://{backend}"
proxy: {{response_timeout: 1s}}
health_check: {{enabled: false}}
request_log: {{enabled: false}}
"#
    ));
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let started = std::time::Instant::now();
    connection
        .send(b"POST /upload HTTP/1.1\r\nhost: gateway\r\ncontent-length: 1000\r\n\r\n0123456789")
        .expect("send part of the body");

    // The backend's progress does not excuse the client's stalled body: the wait for its next
    // bytes ends with 408 after one response timeout, long before the backend stops.
    let (interim, response) = connection.read_final_response().expect("response");
    assert_eq!(response.status, 408, "{response:?}");
    assert!(!interim.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
