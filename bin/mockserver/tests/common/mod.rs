//! Helpers shared by the integration tests: starting the real binary and speaking raw
//! HTTP/1.1 to it over loopback TCP.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for anything a test waits on, so that a broken server fails the test
/// instead of hanging it.
pub(crate) const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// One listener announced by the server's `NAME listening on http://IP:PORT` line.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
}

/// A running `mockserver` child process, killed when dropped.
pub(crate) struct MockServer {
    child: Child,
    pub(crate) listeners: Vec<Listener>,
}

impl MockServer {
    /// Starts the binary with `args` and waits for `listener_count` listening lines.
    pub(crate) fn start(args: &[&str], listener_count: usize) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mockserver"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();

        // A thread reads stdout so that the wait below can time out.
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });

        let mut server = Self {
            child,
            listeners: Vec::new(),
        };
        for _ in 0..listener_count {
            let line = receiver
                .recv_timeout(WAIT_LIMIT)
                .unwrap_or_else(|error| panic!("no listening line from {args:?}: {error}"));
            server.listeners.push(parse_listening_line(&line));
        }
        server
    }

    /// Starts one backend named `name` on a free port.
    pub(crate) fn start_single(name: &str) -> Self {
        Self::start(&["--port", "0", "--name", name], 1)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.listeners[0].addr
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit on its own, failing the test after [`WAIT_LIMIT`].
    pub(crate) fn wait_for_exit(&mut self) -> ExitStatus {
        wait_with_limit(&mut self.child)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Either call may fail because the process already exited, which is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `NAME listening on http://IP:PORT`, panicking on any other shape.
pub(crate) fn parse_listening_line(line: &str) -> Listener {
    let (name, url) = line
        .split_once(" listening on ")
        .unwrap_or_else(|| panic!("unexpected listening line {line:?}"));
    let addr = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("listening line {line:?} lacks http://"))
        .parse()
        .unwrap_or_else(|error| panic!("listening line {line:?} has a bad address: {error}"));
    Listener {
        name: name.to_owned(),
        addr,
    }
}

/// Polls `child` until it exits, killing it and failing the test after [`WAIT_LIMIT`].
pub(crate) fn wait_with_limit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > WAIT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {WAIT_LIMIT:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (a `kill` name such as `TERM`) to the process `pid`.
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// A response read off the wire.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// Header names are lowercase.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub(crate) fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT_LIMIT)).unwrap();
        stream.set_write_timeout(Some(WAIT_LIMIT)).unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    pub(crate) fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// Writes a request head with `Host` and, when `body_length` is not zero, `Content-Length`.
    pub(crate) fn write_head(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body_length: usize,
    ) {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: mock.test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if body_length > 0 {
            head.push_str(&format!("Content-Length: {body_length}\r\n"));
        }
        head.push_str("\r\n");
        self.stream().write_all(head.as_bytes()).unwrap();
    }

    /// Sends a request and reads the whole response.
    pub(crate) fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.write_head(method, target, headers, body.len());
        self.stream().write_all(body).unwrap();
        self.read_response(method == "HEAD")
    }

    pub(crate) fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// Reads a response, keeping its body.
    pub(crate) fn read_response(&mut self, head_request: bool) -> Response {
        let (status, headers) = self.read_head();
        let mut body = Vec::new();
        self.read_body(status, &headers, head_request, |data| {
            body.extend_from_slice(data)
        });
        Response {
            status,
            headers,
            body,
        }
    }

    /// Reads a response and returns its head and the body length, dropping the body bytes
    /// after handing each piece to `inspect`.
    pub(crate) fn read_response_streaming(
        &mut self,
        mut inspect: impl FnMut(&[u8]),
    ) -> (u16, Vec<(String, String)>, u64) {
        let (status, headers) = self.read_head();
        let mut length = 0u64;
        self.read_body(status, &headers, false, |data| {
            length += data.len() as u64;
            inspect(data);
        });
        (status, headers, length)
    }

    pub(crate) fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.read_line();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status = parts.next().unwrap().parse().unwrap();

        let mut headers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        (status, headers)
    }

    /// Reads one chunk of a chunked body and returns its data, or `None` at the last chunk.
    pub(crate) fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let size_line = self.read_line();
        let size_hex = size_line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16).unwrap();
        if size == 0 {
            // Skip trailers up to the empty line.
            while !self.read_line().is_empty() {}
            return None;
        }
        let mut data = vec![0; size];
        self.reader.read_exact(&mut data).unwrap();
        assert_eq!(self.read_line(), "", "chunk data not followed by CRLF");
        Some(data)
    }

    fn read_body(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        head_request: bool,
        mut sink: impl FnMut(&[u8]),
    ) {
        if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
            return;
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };

        if header("transfer-encoding").is_some_and(|value| value.contains("chunked")) {
            while let Some(data) = self.read_chunk() {
                sink(&data);
            }
        } else if let Some(length) = header("content-length") {
            let mut remaining: u64 = length.parse().unwrap();
            let mut buffer = vec![0; 64 * 1024];
            while remaining > 0 {
                let want = buffer.len().min(usize::try_from(remaining).unwrap());
                let read = self.reader.read(&mut buffer[..want]).unwrap();
                assert!(
                    read > 0,
                    "connection closed with {remaining} body bytes missing"
                );
                sink(&buffer[..read]);
                remaining -= read as u64;
            }
        } else {
            let mut rest = Vec::new();
            self.reader.read_to_end(&mut rest).unwrap();
            sink(&rest);
        }
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).unwrap();
        assert!(read > 0, "connection closed while reading a line");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }
}
