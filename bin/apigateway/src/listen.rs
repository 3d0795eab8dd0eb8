//! Binding the listen address: one listener for each worker, all on one port.
//!
//! With several workers, every listener sets `SO_REUSEPORT`, and the kernel spreads new
//! connections over them by a hash of the client's address and port. Each worker then accepts
//! from its own queue, and no accept wakes more than one worker.

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpSocket;

/// Length of each listener's queue of connections not yet accepted.
const BACKLOG: u32 = 1024;

/// Binds `workers` listeners (at least one) to the first of `addresses` that binds, and
/// returns them in non-blocking mode. Must be called from within a tokio runtime, which each
/// listener is registered with to listen and deregistered from before it is returned.
///
/// # Errors
///
/// Returns the error of the last address tried, such as [`io::ErrorKind::AddrInUse`] when
/// another process listens on the port.
pub fn bind(addresses: &[SocketAddr], workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut last_error = None;
    for &address in addresses {
        match bind_address(address, workers) {
            Ok(listeners) => return Ok(listeners),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind")))
}

fn bind_address(address: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if workers <= 1 {
        return Ok(vec![listen(address, false)?]);
    }
    // `SO_REUSEPORT` lets any socket of the same user join the port, so a second gateway
    // started on it would quietly take a share of the connections. The first listener binds
    // without the option, so it fails on a port that is in use, as a single listener does,
    // and on port 0 it picks the port that the workers then share. It sets the option after
    // the bind and before it listens, so the others can join it. The port is held from that
    // first bind on: a second gateway started at the same moment fails its own first bind.
    let first = new_socket(address)?;
    first.bind(address)?;
    first.set_reuseport(true)?;
    let address = first.local_addr()?;
    let mut listeners = Vec::with_capacity(workers);
    listeners.push(first.listen(BACKLOG)?.into_std()?);
    for _ in 1..workers {
        listeners.push(listen(address, true)?);
    }
    Ok(listeners)
}

fn new_socket(address: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restart can bind while the last run's connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

fn listen(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = new_socket(address)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(address)?;
    socket.listen(BACKLOG)?.into_std()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::{Read, Write};

    const LOOPBACK: &str = "127.0.0.1:0";

    #[tokio::test]
    async fn workers_share_one_port() {
        let listeners = bind(&[LOOPBACK.parse().unwrap()], 3).unwrap();
        assert_eq!(listeners.len(), 3);
        let port = listeners[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr().unwrap().port(), port);
        }
    }

    #[tokio::test]
    async fn connections_spread_over_listeners() {
        let listeners = bind(&[LOOPBACK.parse().unwrap()], 2).unwrap();
        let address = listeners[0].local_addr().unwrap();
        // Each connection comes from a new port, and the kernel picks a listener by a hash
        // of it: 64 connections all on one of two listeners would take a 1 in 2^63 chance.
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        let mut accepted = [0; 2];
        for (count, listener) in accepted.iter_mut().zip(&listeners) {
            while listener.accept().is_ok() {
                *count += 1;
            }
        }
        assert_eq!(accepted[0] + accepted[1], clients.len(), "{accepted:?}");
        assert!(accepted.iter().all(|&count| count > 0), "{accepted:?}");
    }

    #[tokio::test]
    async fn port_in_use_fails_bind() {
        let other = std::net::TcpListener::bind(LOOPBACK).unwrap();
        let address = other.local_addr().unwrap();
        for workers in [1, 2] {
            let error = bind(&[address], workers).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{workers} workers");
        }
    }

    #[tokio::test]
    async fn shared_port_of_another_process_fails_bind() {
        // A listener that set SO_REUSEPORT itself, as another program may.
        let other = TcpSocket::new_v4().unwrap();
        other.set_reuseport(true).unwrap();
        other.bind(LOOPBACK.parse().unwrap()).unwrap();
        let address = other.local_addr().unwrap();
        let _listening = other.listen(16).unwrap();
        for workers in [1, 2] {
            let error = bind(&[address], workers).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{workers} workers");
        }
    }

    #[tokio::test]
    async fn second_gateway_cannot_join_port() {
        let first = bind(&[LOOPBACK.parse().unwrap()], 2).unwrap();
        let address = first[0].local_addr().unwrap();
        let error = bind(&[address], 2).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn listeners_are_non_blocking() {
        let listeners = bind(&[LOOPBACK.parse().unwrap()], 1).unwrap();
        let error = listeners[0].accept().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        // And a connection made afterwards is accepted and works.
        let address = listeners[0].local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(address).unwrap();
        let (mut server, _) = loop {
            match listeners[0].accept() {
                Ok(accepted) => break accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(error) => panic!("{error}"),
            }
        };
        server.set_nonblocking(false).unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0];
        server.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
