//! Several workers. Each serves a share of the connections on a thread of its own. A stop
//! drains the requests of every worker, or cuts them off at the deadline. The worker count
//! stays within what the open-file limit allows.

use gateway_tests::{
    ConfigFile, GatewayProcess, MockProcess, RawConnection, backend_state, binary,
};
use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKERS: usize = 3;

fn start(shutdown_timeout: &str) -> (MockProcess, GatewayProcess) {
    let mock = MockProcess::start("Shared");
    let gateway = GatewayProcess::start(&format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  workers: {WORKERS}
  shutdown_timeout: {shutdown_timeout}
request_log:
  database: "{{dir}}/gateway.db"
routes:
  - path: "/api/*rest"
    backends:
      - url: "{}"
"#,
        mock.url
    ));
    (mock, gateway)
}

/// Returns the CPU time, in nanoseconds, that each thread of process `pid` has run, by the
/// thread's name.
fn thread_times(pid: u32) -> HashMap<String, u64> {
    let mut times = HashMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads");
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("schedstat")),
        ) else {
            continue; // The thread ended meanwhile.
        };
        let ran: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .expect("schedstat's first field");
        *times.entry(name.trim().to_owned()).or_default() += ran;
    }
    times
}

/// Sends `GET path` to `gateway` on a new connection of its own and returns the connection
/// once the request is sent.
fn send_get(gateway: &GatewayProcess, path: &str) -> RawConnection {
    send_get_to(gateway.addr, path)
}

/// Starts `count` requests that the mock holds for `delay_ms`, each on its own connection,
/// and waits until the gateway counts them all in flight.
async fn start_slow_requests(
    gateway: &GatewayProcess,
    mock: &MockProcess,
    count: usize,
    delay_ms: u64,
) -> Vec<std::thread::JoinHandle<Option<u16>>> {
    let replies = (0..count)
        .map(|_| {
            let mut connection = send_get(gateway, &format!("/api/slow?delay={delay_ms}"));
            std::thread::spawn(move || connection.read_response().ok().map(|reply| reply.status))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let in_flight = backend_state(&gateway.url, &mock.url).await["in_flight"].clone();
        if in_flight == count {
            return replies;
        }
        assert!(
            Instant::now() < deadline,
            "{in_flight} of {count} requests in flight after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn every_worker_serves_connections() {
    let (_mock, gateway) = start("10s");
    // A thread names itself as it starts, so the names may come just after the start.
    let deadline = Instant::now() + Duration::from_secs(5);
    let before = loop {
        let times = thread_times(gateway.pid());
        if (1..WORKERS).all(|index| times.contains_key(&format!("worker-{index}"))) {
            break times;
        }
        assert!(
            Instant::now() < deadline,
            "no thread for each worker: {times:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };

    // 60 connections of 10 requests each. Connections come from ports of their own, which
    // the kernel hashes to pick a worker's listener.
    let mut connections: Vec<_> = (0..60)
        .map(|_| RawConnection::open(gateway.addr).expect("connect"))
        .collect();
    for round in 0..10 {
        for connection in &mut connections {
            let reply = connection
                .exchange(format!("GET /api/n{round} HTTP/1.1\r\nHost: gateway\r\n\r\n").as_bytes())
                .expect("exchange");
            assert_eq!(reply.status, 200);
            assert_eq!(reply.json()["path"], format!("/api/n{round}"));
        }
    }

    // A worker with no connections does not run at all, and each of the three gets about
    // 200 requests, which take tens of milliseconds in a debug build.
    let after = thread_times(gateway.pid());
    // The first worker is the main thread, named after the program.
    let names: Vec<String> = std::iter::once("apigateway".to_owned())
        .chain((1..WORKERS).map(|index| format!("worker-{index}")))
        .collect();
    for name in &names {
        let ran = after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
        assert!(
            ran > 2_000_000,
            "{name} ran {ran} ns for 600 requests: {after:?}"
        );
    }
}

#[tokio::test]
async fn stop_drains_every_worker() {
    let (mock, mut gateway) = start("10s");
    let replies = start_slow_requests(&gateway, &mock, 12, 1500).await;

    gateway.signal("TERM");
    for reply in replies {
        assert_eq!(reply.join().expect("reader thread"), Some(200));
    }
    let status = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("gateway exits after the drain");
    assert!(status.success(), "exit status {status}");
    let lines = gateway.lines();
    assert!(
        lines.iter().any(|line| line.contains("drained")),
        "no drained line; output:\n{}",
        lines.join("\n")
    );
    let served = lines
        .iter()
        .filter(|line| line.contains("/api/slow") && line.contains("status=200"))
        .count();
    assert_eq!(served, 12, "output:\n{}", lines.join("\n"));
}

#[tokio::test]
async fn shutdown_timeout_cuts_off_every_worker() {
    let (mock, mut gateway) = start("500ms");
    let replies = start_slow_requests(&gateway, &mock, 12, 5000).await;

    let signalled = Instant::now();
    gateway.signal("TERM");
    let status = gateway
        .wait_exit(Duration::from_secs(4))
        .expect("gateway exits soon after the 500 ms shutdown timeout");
    assert!(!status.success(), "exit status {status} after a cut-off");
    assert!(signalled.elapsed() >= Duration::from_millis(450));
    for reply in replies {
        assert_eq!(
            reply.join().expect("reader thread"),
            None,
            "a cut-off request got a reply"
        );
    }
    // The count takes in the admin endpoint's connection too, when it is still open.
    let lines = gateway.lines();
    let cut_off = lines
        .iter()
        .find(|line| line.contains("cutting off"))
        .and_then(|line| line.split("connections=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse::<usize>().ok());
    assert!(
        cut_off.is_some_and(|count| count >= 12),
        "no warning naming the 12 connections; output:\n{}",
        lines.join("\n")
    );
    // Each cut-off request still gets its access line.
    let logged = lines
        .iter()
        .filter(|line| line.contains("/api/slow"))
        .count();
    assert_eq!(logged, 12, "output:\n{}", lines.join("\n"));
}

/// Starts `apigateway` with `args` on `config` (with `{port}` and `{dir}` filled in) from a
/// shell that first sets the open-file limit with `ulimit ARGS`. The shell becomes the gateway,
/// so the child's id is the gateway's.
fn spawn_with_limit(ulimit: &str, config: &str, args: &[&str]) -> (Child, ConfigFile) {
    let file = ConfigFile::write(config);
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$@\""))
        .arg("sh")
        .arg(binary("apigateway"))
        .args(args)
        .arg("--config")
        .arg(&file.path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sh");
    (child, file)
}

/// Reads `child`'s stdout until a line contains `part`, and returns the lines read. The rest
/// of the output stays in `child`'s pipe, so that the gateway's writes do not fail.
fn read_until(child: &mut Child, part: &str) -> Vec<String> {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut lines = Vec::new();
    let mut line = Vec::new();
    let mut byte = [0];
    // Byte by byte, so that nothing after the line is read ahead and lost.
    while stdout.read(&mut byte).expect("read stdout") == 1 {
        if byte[0] != b'\n' {
            line.push(byte[0]);
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        let found = text.contains(part);
        lines.push(text);
        if found {
            break;
        }
    }
    lines
}

/// A gateway process that is killed when dropped, so that a failed assertion does not leave it
/// running.
struct Killed(Child);

impl std::ops::Deref for Killed {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the gateway as [`spawn_with_limit`] does, waits until it listens, and returns it with
/// its configuration file and address.
fn start_with_limit(ulimit: &str, config: &str) -> (Killed, ConfigFile, std::net::SocketAddr) {
    let (child, file) = spawn_with_limit(ulimit, config, &[]);
    let mut child = Killed(child);
    let started = read_until(&mut child, "listening");
    assert!(
        started
            .last()
            .is_some_and(|line| line.contains("listening")),
        "{started:#?}"
    );
    let address = format!("127.0.0.1:{}", file.port).parse().expect("address");
    (child, file, address)
}

const PLAIN: &str = r#"
server:
  host: 127.0.0.1
  port: {port}
request_log:
  enabled: false
routes:
  - path: "/api/*rest"
    backends:
      - url: "http://127.0.0.1:9"
"#;

/// Runs the gateway as [`spawn_with_limit`] does, checks that it exits with code 2, and
/// returns what it printed on stderr.
fn stderr_of_rejected_start(ulimit: &str, config: &str, args: &[&str]) -> String {
    let (child, _file) = spawn_with_limit(ulimit, config, args);
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    stderr
}

#[test]
fn workers_beyond_file_limit_rejected() {
    // 20 workers keep 120 descriptors open (5 each and an idle connection to the backend),
    // more than half of 100.
    let config = PLAIN.replace("port: {port}", "port: {port}\n  workers: 20");
    for args in [&["--check"][..], &[]] {
        let stderr = stderr_of_rejected_start("-n 100", &config, args);
        assert!(
            stderr.contains("server.workers: 20 workers"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("set server.workers to 8 or less"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("ulimit -Hn"), "{args:?}: {stderr}");
    }
}

#[test]
fn soft_file_limit_raised_to_hard() {
    // 8 workers need 40 descriptors, more than half of a soft limit of 64, but the hard limit
    // is what counts once the soft one is raised.
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .expect("read limits")
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4))
        .and_then(|hard| hard.parse().ok())
        .expect("hard limit on open files");
    let config = PLAIN.replace("port: {port}", "port: {port}\n  workers: 8");
    let (mut child, _file) = spawn_with_limit("-Sn 64", &config, &[]);
    let lines = read_until(&mut child, "listening");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()));
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        lines.last().is_some_and(|line| line.contains("workers=8")),
        "{lines:#?}"
    );
    let limits = limits.expect("read the gateway's limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("open-file line");
    let soft: u64 = open_files
        .split_whitespace()
        .nth(3)
        .and_then(|soft| soft.parse().ok())
        .expect("soft limit");
    assert_eq!(soft, hard, "{open_files}");
}

#[test]
fn file_limit_below_minimum_rejected() {
    for args in [&["--check"][..], &[]] {
        let stderr = stderr_of_rejected_start("-n 20", PLAIN, args);
        assert!(
            stderr.contains("the open-file limit is 20, below the 32"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("ulimit -Hn"), "{args:?}: {stderr}");
    }
}

#[test]
fn default_workers_fit_file_limit() {
    // With four backends each worker keeps 9 descriptors, so 32 allow one worker. The default
    // of one per core is lowered to it, with a warning when there is more than one core.
    let config = PLAIN.replace(
        "      - url: \"http://127.0.0.1:9\"",
        "      - url: \"http://127.0.0.1:9\"\n      - url: \"http://127.0.0.1:10\"\n      \
         - url: \"http://127.0.0.1:11\"\n      - url: \"http://127.0.0.1:12\"",
    );
    let (mut child, _file) = spawn_with_limit("-n 32", &config, &[]);
    let lines = read_until(&mut child, "listening");
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        lines.last().is_some_and(|line| line.contains("workers=1")),
        "{lines:#?}"
    );
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let warned = lines
        .iter()
        .any(|line| line.contains("WARN") && line.contains("fewer workers than CPU cores"));
    assert_eq!(warned, cores > 1, "{cores} cores: {lines:#?}");

    // `--check` prints the same warning and passes.
    let (child, _file) = spawn_with_limit("-n 32", &config, &["--check"]);
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let checked = stderr.contains("warning: fewer workers than CPU cores")
        && stderr.contains("workers=1 open_file_limit=32");
    assert_eq!(checked, cores > 1, "{cores} cores: {stderr}");
}

/// Returns a configuration of one worker without the request log, a route to `backend_url`,
/// and the `health_check` section given in flow style.
fn one_worker_config(backend_url: &str, health_check: &str) -> String {
    format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  workers: 1
request_log:
  enabled: false
health_check: {health_check}
routes:
  - path: "/api/*rest"
    backends:
      - url: "{backend_url}"
"#
    )
}

#[test]
fn descriptor_shortage_spares_backends() {
    let mock = MockProcess::start("Spared");
    let config = one_worker_config(&mock.url, "{interval: 100ms, timeout: 50ms}");
    let (mut child, _file, address) = start_with_limit("-n 40", &config);

    // More connections than the gateway has descriptors for: it accepts the first ones until
    // accepting fails, and the rest wait in the listener's queue.
    let mut connections: Vec<_> = (0..60)
        .map(|_| RawConnection::open(address).expect("connect"))
        .collect();
    // Long enough for several health checks, which cannot connect either.
    std::thread::sleep(Duration::from_millis(600));
    // No descriptor is left for a backend connection. Five failures in a row would take the
    // backend out if they counted against it (the threshold is 3).
    for connection in connections.iter_mut().take(5) {
        let reply = connection
            .exchange(b"GET /api/short HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .expect("exchange");
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.json()["error"], "gateway overloaded");
    }

    drop(connections);
    std::thread::sleep(Duration::from_millis(300));
    let mut after = RawConnection::open(address).expect("connect");
    let reply = after
        .exchange(b"GET /api/after HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .expect("exchange");
    // Killed first, so that reading the rest of its output ends. No line contains a line
    // break, so everything up to the end is read.
    let _ = child.kill();
    let _ = child.wait();
    let rest = read_until(&mut child, "\n");
    assert_eq!(
        reply.status,
        200,
        "the backend was taken out: {}",
        reply.json()
    );
    // Health checks that found no descriptor (those not served by a kept-alive connection)
    // do not count either.
    assert!(
        rest.iter().all(|line| !line.contains("unhealthy")),
        "{rest:#?}"
    );
    // The five failures within a second give one warning, not five.
    let warnings = rest
        .iter()
        .filter(|line| line.contains("WARN") && line.contains("left for a backend connection"))
        .count();
    assert_eq!(warnings, 1, "{rest:#?}");
}

#[test]
fn shortage_frees_idle_connections() {
    let first = MockProcess::start("First");
    let second = MockProcess::start("Second");
    let config = format!(
        r#"
server:
  host: 127.0.0.1
  port: {{port}}
  workers: 1
request_log:
  enabled: false
health_check:
  enabled: false
routes:
  - path: "/first/*rest"
    backends:
      - url: "{}"
  - path: "/second/*rest"
    backends:
      - url: "{}"
"#,
        first.url, second.url
    );
    let (mut child, _file, address) = start_with_limit("-n 60", &config);

    // Ten requests at once leave ten idle connections to the first backend in its pool.
    let mut busy: Vec<_> = (0..10)
        .map(|_| send_get_to(address, "/first/slow?delay=200"))
        .collect();
    for connection in &mut busy {
        assert_eq!(connection.read_response().expect("response").status, 200);
    }
    drop(busy);
    std::thread::sleep(Duration::from_millis(200));

    // Then every descriptor is taken by client connections.
    let mut connections: Vec<_> = (0..80)
        .map(|_| RawConnection::open(address).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let reply = connections[0]
        .exchange(b"GET /second/x HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .expect("exchange");
    drop(connections);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(reply.json()["server"], "Second");
}

/// Sends `GET path` to `address` on a new connection and returns the connection once the
/// request is sent.
fn send_get_to(address: std::net::SocketAddr, path: &str) -> RawConnection {
    let mut connection = RawConnection::open(address).expect("connect");
    connection
        .send(format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n").as_bytes())
        .expect("send");
    connection
}

/// Connections that never send a byte hold descriptors too. Once the gateway runs out, those
/// silent for half a second since their accept close, and a new client gets in long before
/// the read timeout (30 s by default) would have freed a descriptor.
#[test]
fn descriptor_shortage_closes_silent_connections() {
    let mock = MockProcess::start("Silent");
    let config = one_worker_config(&mock.url, "{enabled: false}");
    let (mut child, _file, address) = start_with_limit("-n 48", &config);

    // More than the descriptors left: the kernel queues the rest until the gateway accepts.
    let silent: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(address).expect("connect"))
        .collect();
    let started = Instant::now();
    for i in 0..5 {
        let mut connection = RawConnection::open(address).expect("connect");
        connection
            .set_read_timeout(Duration::from_secs(10))
            .expect("read timeout");
        let request = format!("GET /api/after-silent/{i} HTTP/1.1\r\nHost: gateway\r\n\r\n");
        let reply = connection.exchange(request.as_bytes());
        assert!(
            reply.as_ref().is_ok_and(|reply| reply.status == 200),
            "client {i} after {:?}: {reply:?}",
            started.elapsed()
        );
    }
    drop(silent);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn descriptor_shortage_closes_idle_connections() {
    let mock = MockProcess::start("Idle");
    let config = one_worker_config(&mock.url, "{enabled: false}");
    let (mut child, _file, address) = start_with_limit("-n 48", &config);

    // A kept-alive connection whose next head is partly sent, pipelined behind its first
    // request, is not idle: it must survive the closing.
    let mut pipelined = RawConnection::open(address).expect("connect");
    let first = pipelined
        .exchange(b"GET /api/first HTTP/1.1\r\nHost: gateway\r\n\r\nGET /api/second HTTP/1.1\r\nHo")
        .expect("first response");
    assert_eq!(first.status, 200);

    // A kept-alive connection that sent only an empty line, which comes before a request
    // line and is ignored, is as idle as one that sent nothing.
    let mut empty_line = RawConnection::open(address).expect("connect");
    let reply = empty_line
        .exchange(b"GET /api/empty HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .expect("response before the empty line");
    assert_eq!(reply.status, 200);
    empty_line.send(b"\r\n").expect("empty line");

    // Each connection serves one request and stays open, idle. Past the descriptors the
    // gateway has, a new connection waits in the listener's queue until idle ones close,
    // which the default read timeout would do only after 30 s.
    let mut connections = Vec::new();
    let started = Instant::now();
    for i in 0..80 {
        let mut connection = RawConnection::open(address).expect("connect");
        connection
            .set_read_timeout(Duration::from_secs(5))
            .expect("read timeout");
        let request = format!("GET /api/idle/{i} HTTP/1.1\r\nHost: gateway\r\n\r\n");
        let reply = connection.exchange(request.as_bytes());
        assert!(
            reply.as_ref().is_ok_and(|reply| reply.status == 200),
            "connection {i} after {:?}: {reply:?}",
            started.elapsed()
        );
        connections.push(connection);
    }
    pipelined
        .send(b"st: gateway\r\n\r\n")
        .expect("rest of the head");
    let second = pipelined.read_response();
    assert!(
        second.as_ref().is_ok_and(|reply| reply.status == 200),
        "the pipelined head was cut: {second:?}"
    );
    empty_line
        .set_read_timeout(Duration::from_secs(1))
        .expect("read timeout");
    assert!(
        empty_line.wait_closed(),
        "the connection that sent only an empty line stayed open"
    );
    let _ = child.kill();
    let _ = child.wait();
    let lines = read_until(&mut child, "\n");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("closing idle client connections to free file descriptors")),
        "{lines:#?}"
    );
}
