//! How the gateway reads what backends send: interim responses that restart the response
//! timeout, chunked bodies with extensions and trailers, and bodies that end with the
//! connection. Malformed heads, responses that come before the request body was read, and
//! keep-alive connections that backends close are covered too. What clients get of interim
//! responses is tested in `interim_responses.rs`.
//!
//! The backend here is a scripted server on a real socket, so that each test controls the
//! exact bytes the gateway receives.

use gateway_tests::{GatewayProcess, RawConnection};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// What the backend does with one request.
#[derive(Clone, Copy)]
enum Step {
    /// Reads the request and its body, then writes these bytes.
    Reply(&'static [u8]),
    /// Reads the request and its body, writes these bytes, waits a moment and closes.
    ReplyThenClose(&'static [u8]),
    /// Reads the request and its body, writes these bytes and closes at once, so that the
    /// gateway may read the bytes and the close together.
    ReplyAndClose(&'static [u8]),
    /// Reads the request head only, writes these bytes, then reads and discards the body and
    /// closes.
    ReplyBeforeBody(&'static [u8]),
    /// Reads the request and closes without a word.
    Close,
    /// Reads the request and sends nothing, keeping the connection open for a while.
    Stall,
    /// Reads the request head only and sends nothing, keeping the connection open for a
    /// while.
    StallBeforeBody,
    /// Reads the request and its body, then writes the first bytes this many times, 500 ms
    /// apart, then the second bytes.
    RepeatThenReply(&'static [u8], u32, &'static [u8]),
}

/// A backend that handles requests with the steps of its script, in order, across every
/// connection. Once the script is used up, it responds `200 ok`.
struct ScriptedBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed_by_gateway: Arc<AtomicUsize>,
    body_chunks: Arc<AtomicUsize>,
}

impl ScriptedBackend {
    fn start(script: &[Step]) -> ScriptedBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed_by_gateway = Arc::new(AtomicUsize::new(0));
        let body_chunks = Arc::new(AtomicUsize::new(0));
        let (counted, served, closed, chunks) = (
            Arc::clone(&connections),
            Arc::clone(&requests),
            Arc::clone(&closed_by_gateway),
            Arc::clone(&body_chunks),
        );
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let (script, served, closed, chunks) = (
                    Arc::clone(&script),
                    Arc::clone(&served),
                    Arc::clone(&closed),
                    Arc::clone(&chunks),
                );
                thread::spawn(move || {
                    if serve(stream, &script, &served, &chunks) == End::ClosedByPeer {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        ScriptedBackend {
            addr,
            connections,
            requests,
            closed_by_gateway,
            body_chunks,
        }
    }

    /// Chunks of data in the last chunked request body read.
    fn body_chunks(&self) -> usize {
        self.body_chunks.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections the gateway closed while the backend waited for a request.
    fn closed_by_gateway(&self) -> usize {
        self.closed_by_gateway.load(Ordering::SeqCst)
    }
}

/// How a backend connection ended.
#[derive(PartialEq, Eq)]
enum End {
    /// The gateway closed it while the backend waited for the next request.
    ClosedByPeer,
    /// The backend closed it, at a step of its script or after an error.
    ClosedHere,
}

fn serve(
    stream: TcpStream,
    script: &Mutex<VecDeque<Step>>,
    served: &AtomicUsize,
    body_chunks: &AtomicUsize,
) -> End {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = stream.try_clone().expect("clone backend socket");
    let mut reader = BufReader::new(stream);
    loop {
        let Some(body) = read_head(&mut reader) else {
            return End::ClosedByPeer;
        };
        served.fetch_add(1, Ordering::SeqCst);
        let step = script
            .lock()
            .expect("script lock")
            .pop_front()
            .unwrap_or(Step::Reply(OK));
        match step {
            Step::ReplyBeforeBody(bytes) => {
                let _ = writer.write_all(bytes);
                let _ = body.skip(&mut reader);
                return End::ClosedHere;
            }
            Step::StallBeforeBody => {
                thread::sleep(Duration::from_secs(5));
                return End::ClosedHere;
            }
            _ => match body.skip(&mut reader) {
                Ok(Some(chunks)) => body_chunks.store(chunks, Ordering::SeqCst),
                Ok(None) => {}
                Err(_) => return End::ClosedHere,
            },
        }
        match step {
            Step::ReplyBeforeBody(_) | Step::StallBeforeBody => {}
            Step::Reply(bytes) => {
                if writer.write_all(bytes).is_err() {
                    return End::ClosedHere;
                }
            }
            Step::ReplyThenClose(bytes) => {
                let _ = writer.write_all(bytes);
                thread::sleep(Duration::from_millis(100));
                return End::ClosedHere;
            }
            Step::ReplyAndClose(bytes) => {
                let _ = writer.write_all(bytes);
                return End::ClosedHere;
            }
            Step::Close => return End::ClosedHere,
            Step::Stall => {
                thread::sleep(Duration::from_secs(5));
                return End::ClosedHere;
            }
            Step::RepeatThenReply(repeated, times, bytes) => {
                for _ in 0..times {
                    if writer.write_all(repeated).is_err() {
                        return End::ClosedHere;
                    }
                    thread::sleep(Duration::from_millis(500));
                }
                if writer.write_all(bytes).is_err() {
                    return End::ClosedHere;
                }
            }
        }
    }
}

/// How a request's body is framed.
enum RequestBody {
    Length(usize),
    Chunked,
}

impl RequestBody {
    /// Reads the body and drops it. Returns the number of chunks of data in a chunked body.
    fn skip(self, reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<usize>> {
        match self {
            RequestBody::Length(length) => {
                let mut body = vec![0; length];
                reader.read_exact(&mut body)?;
                Ok(None)
            }
            RequestBody::Chunked => {
                let mut chunks = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line)?;
                    let size = usize::from_str_radix(line.trim(), 16)
                        .map_err(|_| std::io::Error::other("bad chunk size"))?;
                    let mut chunk = vec![0; size + 2];
                    reader.read_exact(&mut chunk)?;
                    if size == 0 {
                        return Ok(Some(chunks));
                    }
                    chunks += 1;
                }
            }
        }
    }
}

/// Reads one request head; `None` when the connection closed first.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<RequestBody> {
    let mut body = RequestBody::Length(0);
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return (!first).then_some(body);
        }
        first = false;
        let lower = line.to_ascii_lowercase();
        if let Some(length) = lower.strip_prefix("content-length:") {
            body = RequestBody::Length(length.trim().parse().ok()?);
        } else if lower.starts_with("transfer-encoding:") && lower.ends_with("chunked") {
            body = RequestBody::Chunked;
        }
    }
}

fn gateway_for(backend: &ScriptedBackend) -> GatewayProcess {
    gateway_with(backend, "")
}

fn gateway_with(backend: &ScriptedBackend, extra: &str) -> GatewayProcess {
    GatewayProcess::start(&format!(
        r#"
{extra}
server: {{host: 127.0.0.1, port: {{port}}, workers: 1}}
routes:
  - path: "/*rest"
    methods: [GET, POST, HEAD]
    backends:
      - url: "http://{}"
health_check: {{enabled: false}}
request_log: {{enabled: false}}
"#,
        backend.addr
    ))
}

fn get(gateway: &GatewayProcess, path: &str) -> gateway_tests::RawResponse {
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n");
    connection.exchange(request.as_bytes()).expect("response")
}

fn post(gateway: &GatewayProcess, body: &[u8]) -> gateway_tests::RawResponse {
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: gateway\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // A response that comes before the whole body was sent ends the exchange: the gateway
    // then closes the connection, and the rest of the upload fails to send. The response is
    // already on its way, so the write error is not the outcome.
    if let Err(error) = connection.send(&request) {
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "upload failed: {error}"
        );
    }
    connection.read_response().expect("response")
}

#[test]
fn chunked_body_with_trailers_arrives_whole() {
    let backend = ScriptedBackend::start(&[Step::Reply(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n\
          6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
    )]);
    let gateway = gateway_for(&backend);
    let response = get(&gateway, "/");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello world");
    assert_eq!(get(&gateway, "/again").body, b"ok");
    assert_eq!(backend.connections(), 1, "the connection was not reused");
}

/// Chunks of one byte each in [`TINY_CHUNKS`].
const TINY_CHUNK_COUNT: usize = 2000;

/// A chunked body of [`TINY_CHUNK_COUNT`] chunks of one letter each, and its data.
static TINY_CHUNKS: LazyLock<(Vec<u8>, Vec<u8>)> = LazyLock::new(|| {
    let data: Vec<u8> = (0..TINY_CHUNK_COUNT)
        .map(|index| b'a' + (index % 26) as u8)
        .collect();
    let mut body = Vec::new();
    for letter in &data {
        body.extend_from_slice(b"1\r\n");
        body.push(*letter);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    (body, data)
});

/// A response whose body is [`TINY_CHUNKS`].
static TINY_CHUNKS_RESPONSE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    response.extend_from_slice(&TINY_CHUNKS.0);
    response
});

/// A peer that sends a body in one-byte chunks would otherwise cost a write, a system call,
/// per byte. The chunks that one read brings are passed on as one.
#[test]
fn tiny_response_chunks_are_joined() {
    let backend = ScriptedBackend::start(&[Step::Reply(&TINY_CHUNKS_RESPONSE)]);
    let gateway = gateway_for(&backend);
    let response = get(&gateway, "/");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, TINY_CHUNKS.1);
    // The backend wrote the 12 KB of the body at once; reads of any size a socket hands out
    // bring many chunks each.
    assert!(
        response.chunks <= TINY_CHUNK_COUNT / 20,
        "{} chunks reached the client",
        response.chunks
    );
}

#[test]
fn tiny_request_chunks_are_joined() {
    let backend = ScriptedBackend::start(&[]);
    let gateway = gateway_for(&backend);
    let mut request =
        b"POST /upload HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(&TINY_CHUNKS.0);
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let response = connection.exchange(&request).expect("response");
    assert_eq!(response.status, 200);
    let chunks = backend.body_chunks();
    assert!(
        (1..=TINY_CHUNK_COUNT / 20).contains(&chunks),
        "{chunks} chunks reached the backend"
    );
}

/// A client that leaves while its response waits for more of the backend's body is noticed at
/// once, and the backend connection closes with it, rather than one or two write timeouts
/// (30 s each here) later.
#[test]
fn client_leaving_mid_response_frees_backend() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    let (closed_after, closes) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone backend socket"));
        read_head(&mut reader).expect("request head");
        let mut writer = stream;
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .expect("write the start of the response");
        let started = Instant::now();
        writer
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        // Returns at the gateway's close, or after the read timeout.
        let _ = reader.read(&mut [0u8; 1]);
        let _ = closed_after.send(started.elapsed());
    });
    let gateway = GatewayProcess::start(&format!(
        r#"
server: {{host: 127.0.0.1, port: {{port}}, workers: 1, write_timeout: 30s}}
routes:
  - path: "/*rest"
    backends:
      - url: "http://{addr}"
health_check: {{enabled: false}}
request_log: {{enabled: false}}
"#
    ));

    let mut client = TcpStream::connect(gateway.addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: gateway\r\n\r\n")
        .expect("send request");
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    while !received.windows(5).any(|window| window == b"first") {
        let read = client
            .read(&mut buffer)
            .expect("read the start of the response");
        assert!(read > 0, "the gateway closed the connection early");
        received.extend_from_slice(&buffer[..read]);
    }
    drop(client);

    let elapsed = closes
        .recv_timeout(Duration::from_secs(25))
        .expect("the backend thread reports");
    assert!(
        elapsed < Duration::from_secs(5),
        "the backend connection stayed open {elapsed:?} after the client left"
    );
}

#[test]
fn close_delimited_body_arrives_whole() {
    let backend = ScriptedBackend::start(&[Step::ReplyThenClose(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
    )]);
    let gateway = gateway_for(&backend);
    let response = get(&gateway, "/");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"until the end");
    assert_eq!(get(&gateway, "/again").body, b"ok");
    assert_eq!(backend.connections(), 2);
}

#[test]
fn head_response_keeps_its_length() {
    let backend = ScriptedBackend::start(&[Step::Reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n",
    )]);
    let gateway = gateway_for(&backend);
    // Two requests on one connection: a HEAD response has no body, so the second response
    // follows the first head directly.
    let text = gateway_tests::raw_request(
        gateway.addr,
        b"HEAD / HTTP/1.1\r\nhost: gateway\r\n\r\n\
          GET /next HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n",
    );
    let (first, second) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {text:?}"));
    assert!(first.starts_with("HTTP/1.1 200"), "{text}");
    assert!(first.contains("content-length: 1234"), "{text}");
    assert!(second.starts_with("HTTP/1.1 200"), "{text}");
    assert!(second.ends_with("\r\n\r\nok"), "{text}");
    assert_eq!(backend.connections(), 1);
}

#[test]
fn malformed_backend_responses_get_502() {
    let cases: [&'static [u8]; 6] = [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nnot gzip",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ];
    let script: Vec<Step> = cases
        .iter()
        .map(|&bytes| Step::ReplyThenClose(bytes))
        .collect();
    let backend = ScriptedBackend::start(&script);
    let gateway = gateway_for(&backend);
    for (index, case) in cases.iter().enumerate() {
        let mut connection = RawConnection::open(gateway.addr).expect("connect");
        let outcome = connection
            .exchange(b"GET / HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
            .map(|response| response.status);
        let text = String::from_utf8_lossy(case);
        if index == cases.len() - 1 {
            // The head was valid and went to the client; the broken body cuts the response
            // short, so the client never sees a complete one.
            assert!(outcome.is_err(), "{text}: {outcome:?}");
        } else {
            assert_eq!(outcome.ok(), Some(502), "{text}");
        }
    }
    assert_eq!(get(&gateway, "/after").body, b"ok");
    // The first failure is logged with its cause. The other four came within milliseconds of
    // it, so their lines are left out and counted in the next one. A second line is allowed
    // for a machine so slow that the five spanned more than a second.
    let backend_url = format!("backend=http://{}", backend.addr);
    let logged = gateway.wait_for_line(
        &["request to backend failed", &backend_url, "unlogged=0"],
        Duration::from_secs(5),
    );
    assert!(
        logged.is_some_and(|line| line.contains("error=")),
        "{:#?}",
        gateway.lines()
    );
    let failures = gateway
        .lines()
        .iter()
        .filter(|line| line.contains("request to backend failed"))
        .count();
    assert!(failures <= 2, "{:#?}", gateway.lines());
}

#[test]
fn oversized_response_head_gets_502() {
    let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    head.resize(70 * 1024, b'a');
    head.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    let head: &'static [u8] = Box::leak(head.into_boxed_slice());
    let backend = ScriptedBackend::start(&[Step::ReplyThenClose(head)]);
    let gateway = gateway_for(&backend);
    assert_eq!(get(&gateway, "/").status, 502);
}

#[test]
fn early_response_to_upload_reaches_client() {
    let backend = ScriptedBackend::start(&[Step::ReplyBeforeBody(
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!",
    )]);
    let gateway = gateway_for(&backend);
    let response = post(&gateway, &vec![b'x'; 4 * 1024 * 1024]);
    assert_eq!(response.status, 413);
    assert_eq!(response.body, b"too big!");
    assert_eq!(post(&gateway, b"small").body, b"ok");
}

#[test]
fn early_response_to_partial_upload_logged_whole() {
    let backend = ScriptedBackend::start(&[Step::ReplyBeforeBody(
        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!",
    )]);
    let gateway = gateway_for(&backend);
    // The client declares 2 MB, sends a part and waits for the response.
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let mut request =
        b"POST /upload HTTP/1.1\r\nhost: gateway\r\ncontent-length: 2000000\r\n\r\n".to_vec();
    request.resize(request.len() + 100_000, b'x');
    connection.send(&request).expect("send part of the upload");
    let response = connection.read_response().expect("response");
    assert_eq!(response.status, 413);
    assert_eq!(response.body, b"too big!");
    // The client got the whole response, and the access line reports it as complete.
    let line = gateway
        .wait_for_line(&["method=POST", "status=413"], Duration::from_secs(5))
        .expect("an access line for the upload");
    assert!(line.contains("completed=true"), "{line}");
    assert!(!line.contains("response_incomplete"), "{line}");
}

#[test]
fn closed_idle_connection_is_not_reused() {
    let backend = ScriptedBackend::start(&[Step::ReplyThenClose(OK)]);
    let gateway = gateway_for(&backend);
    assert_eq!(get(&gateway, "/").body, b"ok");
    // The backend closes its side 100 ms after its response.
    thread::sleep(Duration::from_millis(300));
    let response = get(&gateway, "/again");
    assert_eq!(response.status, 200);
    assert_eq!(backend.connections(), 2);
    assert_eq!(
        backend.requests(),
        2,
        "a request went to the closed connection"
    );
}

#[test]
fn silent_close_resends_get_not_post() {
    // The backend responds to the first request. It reads the second, on the same kept-alive
    // connection, and closes without a response, as when its idle timeout races a request.
    let backend = ScriptedBackend::start(&[Step::Reply(OK), Step::Close]);
    let gateway = gateway_for(&backend);
    assert_eq!(get(&gateway, "/").body, b"ok");
    let response = get(&gateway, "/again");
    assert_eq!(response.status, 200, "the GET was not sent again");
    assert_eq!(backend.connections(), 2);

    let backend = ScriptedBackend::start(&[Step::Reply(OK), Step::Close]);
    let gateway = gateway_for(&backend);
    assert_eq!(post(&gateway, b"first").body, b"ok");
    assert_eq!(post(&gateway, b"second").status, 502);
    assert_eq!(backend.requests(), 2, "the POST was sent twice");
}

#[test]
fn interim_responses_restart_response_timeout() {
    // Six `102 Processing` responses, 500 ms apart, then the final one: 3 s in all, three
    // times the response timeout, but never 1 s without a word from the backend.
    let backend = ScriptedBackend::start(&[Step::RepeatThenReply(
        b"HTTP/1.1 102 Processing\r\n\r\n",
        6,
        OK,
    )]);
    let gateway = gateway_with(&backend, "proxy: {response_timeout: 1s}");
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .send(b"GET /slow HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        .expect("send request");
    let (interim, response) = connection.read_final_response().expect("response");
    assert_eq!(
        interim.len(),
        6,
        "the interim responses were not all forwarded"
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"ok");

    // Without them, the same wait ends at the response timeout.
    let backend = ScriptedBackend::start(&[Step::Stall]);
    let gateway = gateway_with(&backend, "proxy: {response_timeout: 1s}");
    assert_eq!(get(&gateway, "/slow").status, 504);
}

#[test]
fn response_timeout_restarts_on_reused_connection() {
    let backend = ScriptedBackend::start(&[Step::Reply(OK), Step::Stall]);
    let gateway = gateway_with(&backend, "proxy: {response_timeout: 1s}");
    assert_eq!(get(&gateway, "/").body, b"ok");
    // The second request reuses the connection after 600 ms, so a timer still counting from
    // the first request would fire after 400 ms.
    thread::sleep(Duration::from_millis(600));
    let started = std::time::Instant::now();
    let response = get(&gateway, "/stalls");
    let waited = started.elapsed();
    assert_eq!(response.status, 504);
    assert_eq!(backend.connections(), 1);
    assert!(
        waited >= Duration::from_millis(950),
        "timed out after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );
}

#[test]
fn backend_not_reading_upload_gets_504() {
    let backend = ScriptedBackend::start(&[Step::StallBeforeBody]);
    let gateway = gateway_with(&backend, "proxy: {response_timeout: 1s}");
    let started = std::time::Instant::now();
    let response = post(&gateway, &vec![b'x'; 32 * 1024 * 1024]);
    let waited = started.elapsed();
    // The client sent all it could; the backend stopped taking the body.
    assert_eq!(
        response.status,
        504,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
}

#[test]
fn stalled_upload_gets_timely_408() {
    let backend = ScriptedBackend::start(&[]);
    let gateway = gateway_with(&backend, "proxy: {response_timeout: 1s}");
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    connection
        .send(b"POST /upload HTTP/1.1\r\nhost: gateway\r\ncontent-length: 100\r\n\r\n0123456789")
        .expect("send part of the body");
    let started = std::time::Instant::now();
    let response = connection.read_response().expect("response");
    let waited = started.elapsed();
    assert_eq!(response.status, 408);
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1800),
        "answered after {waited:?}"
    );
}

#[test]
fn idle_pooled_connections_close_after_idle_timeout() {
    let backend = ScriptedBackend::start(&[]);
    let gateway = gateway_with(&backend, "proxy: {pool_idle_timeout: 1s}");
    assert_eq!(get(&gateway, "/").body, b"ok");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.closed_by_gateway() == 0 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        backend.closed_by_gateway(),
        1,
        "the idle connection stayed open"
    );
}

#[test]
fn http_10_backend_does_not_downgrade_client() {
    let backend = ScriptedBackend::start(&[
        Step::ReplyThenClose(b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nfirst"),
        Step::ReplyThenClose(b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nsecond"),
    ]);
    let gateway = gateway_for(&backend);
    let text = gateway_tests::raw_request(
        gateway.addr,
        b"GET /a HTTP/1.1\r\nhost: gateway\r\n\r\n\
          GET /b HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.ends_with("second"), "{text}");
}

#[test]
fn trailers_reach_client_that_accepts_them() {
    let backend = ScriptedBackend::start(&[Step::Reply(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
    )]);
    let gateway = gateway_for(&backend);
    let text = gateway_tests::raw_request(
        gateway.addr,
        b"GET / HTTP/1.1\r\nhost: gateway\r\nte: trailers\r\nconnection: close\r\n\r\n",
    );
    assert!(text.contains("hello"), "{text}");
    assert!(text.contains("x-checksum: 42"), "{text}");
}

#[test]
fn space_before_colon_removed_in_head_and_trailers() {
    let backend = ScriptedBackend::start(&[Step::Reply(
        b"HTTP/1.1 200 OK\r\nx-a : b\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nx-checksum : 42\r\n\r\n",
    )]);
    let gateway = gateway_for(&backend);
    let text = gateway_tests::raw_request(
        gateway.addr,
        b"GET / HTTP/1.1\r\nhost: gateway\r\nte: trailers\r\nconnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("x-a: b\r\n"), "{text}");
    // The body ends with its last chunk and the trailer, not cut after the data.
    assert!(text.contains("hello\r\n0\r\n"), "{text}");
    assert!(text.contains("x-checksum: 42\r\n"), "{text}");
}

#[test]
fn request_with_unknown_transfer_coding_gets_501() {
    let backend = ScriptedBackend::start(&[]);
    let gateway = gateway_for(&backend);
    let text = gateway_tests::raw_request(
        gateway.addr,
        b"POST /upload HTTP/1.1\r\nhost: gateway\r\ntransfer-encoding: gzip, chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    assert_eq!(backend.requests(), 0);
}

#[test]
fn connection_naming_content_length_cannot_smuggle_a_request() {
    // Were the client's Content-Length dropped as a header its Connection names, the backend
    // would read the body as a second request of the client's making.
    let backend = ScriptedBackend::start(&[]);
    let gateway = gateway_for(&backend);
    let hidden = "GET /hidden HTTP/1.1\r\nhost: internal\r\n\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: gateway\r\nconnection: content-length\r\n\
         content-length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let response = connection.exchange(request.as_bytes()).expect("response");
    assert_eq!(response.status, 200);
    // A second request would reach the backend right after the first on the same connection.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(backend.requests(), 1);
}

#[test]
fn http_10_keep_alive_told_of_closing_body() {
    let backend = ScriptedBackend::start(&[
        Step::Reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        Step::Reply(OK),
    ]);
    let gateway = gateway_for(&backend);
    // A chunked body has no length an HTTP/1.0 client can read, so it ends with the
    // connection, and the response must not promise to keep it. The status line names
    // HTTP/1.1, the version the gateway speaks, as RFC 9110 section 6.2 recommends.
    let text = gateway_tests::raw_request(
        gateway.addr,
        b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{text}");
    assert!(head.contains("connection: close"), "{text}");
    assert!(!head.contains("keep-alive"), "{text}");
    assert_eq!(body, "hello");

    // A body of known length keeps the connection, as the client asked.
    let mut connection = RawConnection::open(gateway.addr).expect("connect");
    let response = connection
        .exchange(b"GET /b HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .expect("response");
    assert_eq!(response.body, b"ok");
    let keep = response
        .headers
        .iter()
        .any(|(name, value)| name == "connection" && value.eq_ignore_ascii_case("keep-alive"));
    assert!(keep, "{:?}", response.headers);
}

#[tokio::test]
async fn body_cut_short_counts_against_backend() {
    let backend = ScriptedBackend::start(&[Step::ReplyAndClose(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nthe first bytes",
    )]);
    let gateway = gateway_for(&backend);
    let text = gateway_tests::raw_request(
        gateway.addr,
        b"GET /short HTTP/1.1\r\nhost: gateway\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");

    // The failure shows in the backend's state and the log, but leaves it in rotation.
    let backend_url = format!("http://{}", backend.addr);
    let state = gateway_tests::backend_state(&gateway.url, &backend_url).await;
    assert_eq!(state["total_failures"], 1, "{state}");
    assert_eq!(state["consecutive_failures"], 0, "{state}");
    assert_eq!(state["healthy"], true, "{state}");
    let last_error = state["last_error"].as_str().unwrap_or_default();
    assert!(last_error.starts_with("response body failed: "), "{state}");
    let logged = gateway.wait_for_line(
        &["response body from backend failed", &backend_url],
        Duration::from_secs(5),
    );
    assert!(logged.is_some(), "{:#?}", gateway.lines());
}

#[test]
fn body_cut_short_still_delivers_head_and_start() {
    // Without the head, a client cannot tell a broken response from a gateway that failed.
    for round in 0..10 {
        let backend = ScriptedBackend::start(&[Step::ReplyAndClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nthe first bytes",
        )]);
        let gateway = gateway_for(&backend);
        let text = gateway_tests::raw_request(
            gateway.addr,
            b"GET /short HTTP/1.1\r\nhost: gateway\r\n\r\n",
        );
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text:?}");
        assert!(text.ends_with("the first bytes"), "round {round}: {text:?}");
    }
}
