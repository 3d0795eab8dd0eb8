//! Socket reads and writes made with direct system calls, and the backend connection's socket.
//!
//! The standard library and tokio call the C library's `recv` and `writev`. In a process
//! with more than one thread, glibc's wrappers also call `__pthread_enable_asynccancel` and
//! `__pthread_disable_asynccancel` around each call, as a profile of the gateway shows. The
//! gateway always has more than one thread, because stderr and the logs are written by
//! threads of their own. On the test machine the wrapper added about 60 ns to a `recv` that
//! found nothing to read, which took about 190 ns without it. `rustix` makes the system call
//! itself, without the wrapper.
//!
//! Readiness stays tokio's: a call that finds the socket not ready clears the readiness tokio
//! saw, and the caller waits for the next. A read or write that moved fewer bytes than it
//! offered also clears it, as tokio's own reads and writes do (`PollEvented` in tokio 1.54),
//! because on Linux that shows the socket is drained (or its send buffer full). The next call
//! then waits instead of making a system call that would only find the socket not ready.

use rustix::io::Errno;
use rustix::net::RecvFlags;
use std::io::{self, IoSlice};
use std::task::{Context, Poll, Waker, ready};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

/// Writes `bufs` to `stream`, waiting until it can take some of them. Returns how many bytes
/// were written.
///
/// Meant for a client connection, whose reads stay tokio's. A partial write keeps the
/// readiness, so the next call makes one system call to find the socket full.
pub fn poll_write_vectored(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(cx))?;
        let written = stream.try_io(Interest::WRITABLE, || {
            loop {
                match rustix::io::writev(stream, bufs) {
                    Err(Errno::INTR) => {}
                    result => return result.map_err(io::Error::from),
                }
            }
        });
        match written {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            result => return Poll::Ready(result),
        }
    }
}

/// A backend connection's socket, registered with the runtime for reads and writes.
#[derive(Debug)]
pub(crate) struct BackendSocket {
    fd: AsyncFd<std::net::TcpStream>,
}

impl BackendSocket {
    /// Takes over a connected stream from tokio, which already made it non-blocking.
    #[expect(
        deprecated,
        reason = "the replacement is an unsafe function whose one condition is that the value \
                  keeps the same open descriptor for as long as it is registered. A standard \
                  TcpStream owns its descriptor and never changes it, so the condition holds, and \
                  the crate forbids unsafe code"
    )]
    pub(crate) fn new(stream: TcpStream) -> io::Result<BackendSocket> {
        let stream = stream.into_std()?;
        Ok(BackendSocket {
            fd: AsyncFd::with_interest(stream, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Reads into `buf`, waiting until bytes or the end of the stream arrive. Returns how many
    /// bytes were read; 0 at the end of the stream.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.fd.poll_read_ready(cx))?;
            match rustix::net::recv(self.fd.get_ref(), &mut *buf, RecvFlags::empty()) {
                Ok((read, _)) => {
                    // An end of stream stays readable: only a short read clears.
                    if read > 0 && read < buf.len() {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(read));
                }
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR) => {}
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }
    }

    /// Writes `bufs`, waiting until the socket can take some of them. Returns how many bytes
    /// were written.
    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.fd.poll_write_ready(cx))?;
            match rustix::io::writev(self.fd.get_ref(), bufs) {
                Ok(written) => {
                    let offered: usize = bufs.iter().map(|buf| buf.len()).sum();
                    if written < offered {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(written));
                }
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR) => {}
                Err(error) => return Poll::Ready(Err(error.into())),
            }
        }
    }

    /// Returns the socket's local address, which identifies a connection in tests.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Returns whether nothing arrived since the last read that drained the socket: no bytes,
    /// no end of stream and no reset. Makes no system call.
    pub(crate) fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.fd.poll_read_ready(&mut cx).is_pending()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Returns a backend socket connected to the returned peer stream.
    async fn pair() -> (BackendSocket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (connected, accepted) = tokio::join!(connect, listener.accept());
        (
            BackendSocket::new(connected.unwrap()).unwrap(),
            accepted.unwrap().0,
        )
    }

    async fn recv(socket: &BackendSocket, buf: &mut [u8]) -> usize {
        poll_fn(|cx| socket.poll_recv(cx, buf)).await.unwrap()
    }

    #[tokio::test]
    async fn short_read_clears_readiness() {
        let (socket, mut peer) = pair().await;
        assert!(socket.is_quiet(), "a new connection has nothing to read");

        peer.write_all(b"hello").await.unwrap();
        let mut buf = [0; 64];
        assert_eq!(recv(&socket, &mut buf).await, 5);
        assert_eq!(&buf[..5], b"hello");
        assert!(socket.is_quiet(), "a short read drained the socket");

        peer.write_all(b"again").await.unwrap();
        assert_eq!(recv(&socket, &mut buf).await, 5);
        assert_eq!(&buf[..5], b"again");
    }

    #[tokio::test]
    async fn full_read_leaves_the_rest_readable() {
        let (socket, mut peer) = pair().await;
        peer.write_all(b"0123456789").await.unwrap();
        let mut buf = [0; 4];
        // Wait until all ten bytes are in, so that the first read fills its buffer.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;

        assert_eq!(recv(&socket, &mut buf).await, 4);
        assert!(!socket.is_quiet(), "six bytes are still to read");
        assert_eq!(recv(&socket, &mut buf).await, 4);
        assert_eq!(recv(&socket, &mut buf).await, 2);
        assert_eq!(&buf[..2], b"89");
        assert!(socket.is_quiet());
    }

    #[tokio::test]
    async fn end_of_stream_stays_readable() {
        let (socket, peer) = pair().await;
        drop(peer);
        let mut buf = [0; 16];

        assert_eq!(recv(&socket, &mut buf).await, 0);
        assert!(
            !socket.is_quiet(),
            "a closed peer keeps the socket readable"
        );
        assert_eq!(recv(&socket, &mut buf).await, 0);
    }

    #[tokio::test]
    async fn reset_is_an_error() {
        let (socket, peer) = pair().await;
        // A close with unread bytes in the receive buffer resets the connection.
        poll_fn(|cx| socket.poll_write_vectored(cx, &[IoSlice::new(b"unread")]))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(peer);

        let mut buf = [0; 16];
        let error = poll_fn(|cx| socket.poll_recv(cx, &mut buf))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    }

    #[tokio::test]
    async fn write_waits_while_the_peer_does_not_read() {
        let (socket, mut peer) = pair().await;
        let chunk = vec![7u8; 256 * 1024];
        let mut sent = 0;
        let mut cx = Context::from_waker(Waker::noop());
        // Fill the socket's buffers until a write has to wait.
        while let Poll::Ready(written) =
            socket.poll_write_vectored(&mut cx, &[IoSlice::new(&chunk)])
        {
            sent += written.unwrap();
            assert!(sent < 256 * 1024 * 1024, "the kernel never pushed back");
        }

        // Reading on the peer side lets the rest through.
        let reader = tokio::spawn(async move {
            let mut received = 0;
            let mut buf = vec![0; 64 * 1024];
            while received < sent + 11 {
                received += peer.read(&mut buf).await.unwrap();
            }
            received
        });
        let mut offered: &[u8] = b"tail of it.";
        while !offered.is_empty() {
            let written = poll_fn(|cx| socket.poll_write_vectored(cx, &[IoSlice::new(offered)]))
                .await
                .unwrap();
            offered = &offered[written..];
        }
        assert_eq!(reader.await.unwrap(), sent + 11);
    }

    #[tokio::test]
    async fn client_write_sends_every_slice() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(connect, listener.accept());
        let (mut server, client) = (accepted.unwrap().0, client.unwrap());

        let slices = [
            IoSlice::new(b"head "),
            IoSlice::new(b""),
            IoSlice::new(b"body"),
        ];
        let written = poll_fn(|cx| poll_write_vectored(&server, cx, &slices))
            .await
            .unwrap();
        assert_eq!(written, 9);
        server.shutdown().await.unwrap();

        let mut received = Vec::new();
        let mut client = client;
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"head body");
    }
}
