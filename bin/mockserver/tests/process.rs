//! The `mockserver` process: its command line, `--fleet`, bind failures, signals and
//! memory use under large bodies.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};

use common::{Connection, MockServer, send_signal, wait_with_limit};

/// Runs the binary with `args`, expecting it to exit by itself, and returns its exit code
/// and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mockserver"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_limit(&mut child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr)
}

#[test]
fn listening_line_names_server_and_bound_port() {
    let server = MockServer::start(&["--port", "0", "--name", "UserService-1"], 1);
    let listener = &server.listeners[0];
    assert_eq!(listener.name, "UserService-1");
    assert_eq!(listener.addr.ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(listener.addr.port(), 0);

    let echo = Connection::open(listener.addr).get("/").json();
    assert_eq!(echo["server"], "UserService-1");
}

#[test]
fn default_name_is_mock() {
    let server = MockServer::start(&["--port", "0"], 1);
    assert_eq!(server.listeners[0].name, "mock");
    let health = Connection::open(server.addr()).get("/health").json();
    assert_eq!(health["server"], "mock");
}

#[test]
fn ipv6_host_is_bracketed() {
    // Loopback IPv6 may be disabled on the test machine.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: [::1] cannot be bound here");
        return;
    }
    let server = MockServer::start(&["--host", "::1", "--port", "0"], 1);
    assert!(server.addr().is_ipv6());
    assert_eq!(Connection::open(server.addr()).get("/health").status, 200);
}

#[test]
fn fleet_starts_three_named_backends() {
    let server = MockServer::start(&["--fleet", "--fleet-base-port", "0"], 3);
    let names: Vec<&str> = server
        .listeners
        .iter()
        .map(|listener| listener.name.as_str())
        .collect();
    assert_eq!(names, ["UserService-1", "UserService-2", "OrderService"]);

    for listener in &server.listeners {
        let mut connection = Connection::open(listener.addr);
        let health = connection.get("/health").json();
        assert_eq!(health["server"], listener.name.as_str());

        let response = connection.get("/api/thing");
        assert_eq!(
            response.header("x-mock-server"),
            Some(listener.name.as_str())
        );
    }

    // Each backend keeps its own request count.
    Connection::open(server.listeners[0].addr).get("/one");
    let second = Connection::open(server.listeners[1].addr)
        .get("/_mock/stats")
        .json();
    assert_eq!(second["requests"], 1);
    let first = Connection::open(server.listeners[0].addr)
        .get("/_mock/stats")
        .json();
    assert_eq!(first["requests"], 2);
}

#[test]
fn fleet_uses_consecutive_ports_from_base() {
    // A free run of three ports can be taken by another process between the probe and the
    // start, so a failed start is retried with a new probe.
    for attempt in 0..50 {
        let Some(base) = probe_free_port_run(attempt, 3) else {
            continue;
        };
        let base_arg = base.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mockserver"))
            .args(["--fleet", "--fleet-base-port", &base_arg])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();

        let mut stdout = String::new();
        let mut reader = child.stdout.take().unwrap();
        let mut buffer = [0u8; 512];
        while stdout.lines().count() < 3 {
            let read = reader.read(&mut buffer).unwrap();
            if read == 0 {
                break;
            }
            stdout.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
        let _ = child.kill();
        let _ = child.wait();

        let lines: Vec<&str> = stdout.lines().collect();
        if lines.len() < 3 {
            continue;
        }
        assert_eq!(
            lines,
            [
                format!("UserService-1 listening on http://127.0.0.1:{base}"),
                format!("UserService-2 listening on http://127.0.0.1:{}", base + 1),
                format!("OrderService listening on http://127.0.0.1:{}", base + 2),
            ]
        );
        return;
    }
    panic!("found no free run of three ports in 50 attempts");
}

/// Returns a port `p` such that `p`, `p + 1` and so on up to `count` ports could be bound a
/// moment ago. Candidates lie below the usual ephemeral range (32768 and up on Linux), where
/// busy client sockets would often take a neighbour of a port the kernel handed out.
fn probe_free_port_run(attempt: u16, count: u16) -> Option<u16> {
    let base = 20_000 + (std::process::id() as u16 % 97 + attempt * 211) % 12_000;
    // The listeners close when this function returns, which frees the ports again.
    let mut bound_listeners = Vec::new();
    for offset in 0..count {
        bound_listeners.push(TcpListener::bind((Ipv4Addr::LOCALHOST, base + offset)).ok()?);
    }
    Some(base)
}

#[test]
fn fleet_rejects_port_and_name() {
    for args in [
        &["--fleet", "--port", "9100"][..],
        &["--fleet", "--name", "Other"][..],
    ] {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--fleet"), "{args:?}: {stderr}");
    }
}

#[test]
fn port_is_required_without_fleet() {
    let (code, stderr) = run_to_exit(&["--name", "NoPort"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--port"), "{stderr}");
}

#[test]
fn fleet_base_port_requires_fleet() {
    for args in [
        &["--fleet-base-port", "0"][..],
        &["--port", "0", "--fleet-base-port", "0"][..],
    ] {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--fleet"), "{args:?}: {stderr}");
    }
}

#[test]
fn port_in_use_fails_with_address() {
    let occupied = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = occupied.local_addr().unwrap().port().to_string();

    let (code, stderr) = run_to_exit(&["--port", &port, "--name", "Late"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn fleet_fails_when_one_port_is_taken() {
    let occupied = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = occupied.local_addr().unwrap().port();
    // The occupied port is the fleet's second member when the base is one below it.
    let Some(base) = port.checked_sub(1).filter(|&base| base > 0) else {
        return;
    };

    let (code, stderr) = run_to_exit(&["--fleet", "--fleet-base-port", &base.to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("failed to bind"), "{stderr}");
}

#[test]
fn sigterm_exits_zero() {
    let mut server = MockServer::start_single("Term");
    // Hold a connection open with a request in flight, which must not delay the exit.
    let mut connection = Connection::open(server.addr());
    connection.write_head("GET", "/slow?delay=3600000", &[], 0);
    connection.stream().flush().unwrap();
    assert_eq!(Connection::open(server.addr()).get("/health").status, 200);

    send_signal(server.pid(), "TERM");
    let status = server.wait_for_exit();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_exits_zero() {
    let mut server = MockServer::start_single("Int");
    send_signal(server.pid(), "INT");
    let status = server.wait_for_exit();
    assert_eq!(status.code(), Some(0));
}

/// Reads the peak resident set size of process `pid` in KiB from `/proc`.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn large_bodies_are_streamed() {
    const BODY_SIZE: u64 = 100 * 1024 * 1024;
    // Far below the body size, so buffering either body whole would exceed it.
    const PEAK_LIMIT_KIB: u64 = 48 * 1024;

    let server = MockServer::start_single("Big");
    let mut connection = Connection::open(server.addr());

    // Download: count the bytes without keeping them.
    connection.write_head("GET", &format!("/blob?size={BODY_SIZE}"), &[], 0);
    let mut all_x = true;
    let (status, _, length) = connection.read_response_streaming(|data| {
        all_x &= data.iter().all(|&byte| byte == b'x');
    });
    assert_eq!(status, 200);
    assert_eq!(length, BODY_SIZE);
    assert!(all_x);

    // Upload: write the body from one small buffer.
    connection.write_head("POST", "/upload", &[], usize::try_from(BODY_SIZE).unwrap());
    let block = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < BODY_SIZE {
        connection.stream().write_all(&block).unwrap();
        sent += block.len() as u64;
    }
    let echo = connection.read_response(false).json();
    assert_eq!(echo["body_length"], BODY_SIZE);

    let peak = peak_rss_kib(server.pid());
    assert!(
        peak < PEAK_LIMIT_KIB,
        "peak RSS {peak} KiB is not below {PEAK_LIMIT_KIB} KiB"
    );
}
