//! Raw HTTP/1.1 on one kept-open TCP connection, for requests that a normal client will not
//! send (bad request lines, hop-by-hop headers) and for checks that need several requests on
//! the same connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a read may block before it fails, so that a server that hangs fails the test.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One response read from a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lowercase, with their values, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Chunks of data in a chunked body, the last chunk not counted; 0 for other bodies.
    pub chunks: usize,
}

impl RawResponse {
    /// Returns the first value of header `name` (any case), or `None` when absent.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Parses the body as JSON.
    ///
    /// # Panics
    ///
    /// Panics with the body text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A client connection that sends bytes as given and reads responses one at a time.
pub struct RawConnection {
    reader: BufReader<TcpStream>,
}

impl RawConnection {
    /// Connects to `addr`; reads fail after 10 seconds without data.
    ///
    /// # Errors
    ///
    /// Returns the connect error, such as `ConnectionRefused`.
    pub fn open(addr: SocketAddr) -> io::Result<RawConnection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(RawConnection {
            reader: BufReader::new(stream),
        })
    }

    /// Changes how long a read may block.
    ///
    /// # Errors
    ///
    /// Returns the socket error.
    pub fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))
    }

    /// Writes `bytes` as they are.
    ///
    /// # Errors
    ///
    /// Returns the write error.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Writes `bytes` and reads one response.
    ///
    /// # Errors
    ///
    /// Returns the I/O error, `UnexpectedEof` when the server closed the connection before a
    /// whole response, or `InvalidData` for a response that is not HTTP/1.1.
    pub fn exchange(&mut self, bytes: &[u8]) -> io::Result<RawResponse> {
        self.send(bytes)?;
        self.read_response()
    }

    /// Reads one response: its head, then a body framed by `Transfer-Encoding: chunked`,
    /// `Content-Length` or the end of the connection.
    ///
    /// # Errors
    ///
    /// As [`RawConnection::exchange`].
    pub fn read_response(&mut self) -> io::Result<RawResponse> {
        let status_line = self.read_line()?;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid(format!("invalid status line {status_line:?}")))?;

        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("invalid header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
            chunks: 0,
        };

        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|value| value.eq_ignore_ascii_case("chunked"));
        let length = response.header("content-length").map(str::to_owned);
        if chunked {
            (response.body, response.chunks) = self.read_chunked()?;
        } else if let Some(length) = length {
            let length: usize = length
                .parse()
                .map_err(|_| invalid(format!("invalid Content-Length {length:?}")))?;
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body)?;
            response.body = body;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }

    /// Reads the interim (1xx) responses that come first, then the final response. Returns
    /// the interim ones in the order received, and the final one.
    ///
    /// # Errors
    ///
    /// As [`RawConnection::exchange`].
    pub fn read_final_response(&mut self) -> io::Result<(Vec<RawResponse>, RawResponse)> {
        let mut interim = Vec::new();
        loop {
            let response = self.read_response()?;
            if !(100..200).contains(&response.status) {
                return Ok((interim, response));
            }
            interim.push(response);
        }
    }

    /// Waits up to the read timeout for the server to close the connection, discarding any
    /// bytes it sends first, and returns whether it closed (end of stream or reset).
    pub fn wait_closed(&mut self) -> bool {
        let mut buffer = [0u8; 4096];
        loop {
            match self.reader.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a whole response",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// Reads a chunked body; returns its data and the number of chunks that held it.
    fn read_chunked(&mut self) -> io::Result<(Vec<u8>, usize)> {
        let mut body = Vec::new();
        let mut chunks = 0;
        loop {
            let line = self.read_line()?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("invalid chunk size line {line:?}")))?;
            if size == 0 {
                // Trailer fields, if any, end with an empty line.
                while !self.read_line()?.is_empty() {}
                return Ok((body, chunks));
            }
            chunks += 1;
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            let end = self.read_line()?;
            if !end.is_empty() {
                return Err(invalid(format!("chunk not followed by CRLF: {end:?}")));
            }
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
