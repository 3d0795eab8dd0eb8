//! Child processes of the project's binaries.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a child may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a binary of this workspace, built by `cargo test --workspace`.
///
/// # Panics
///
/// Panics with a hint when the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/test-binary -> target/debug/name
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target folder");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` or `cargo test --workspace`",
        path.display()
    );
    path
}

/// Returns a loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Collects a child's stdout lines and reports the first line that contains a marker.
struct Output {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Output {
    fn capture(child: &mut Child, marker: &'static str) -> (Output, mpsc::Receiver<String>) {
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (found_tx, found_rx) = mpsc::channel();
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.contains(marker) {
                    let _ = found_tx.send(line.clone());
                    sent = true;
                }
                collected.lock().expect("output lock").push(line);
            }
        });
        (Output { lines }, found_rx)
    }
}

/// A running `mockserver`.
pub struct MockProcess {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub name: String,
}

impl MockProcess {
    /// Starts a mock backend named `name` on a free port.
    pub fn start(name: &str) -> MockProcess {
        MockProcess::start_on(name, 0)
    }

    /// Starts a mock backend named `name` on `port` (0 for a free one).
    pub fn start_on(name: &str, port: u16) -> MockProcess {
        let mut child = Command::new(binary("mockserver"))
            .args(["--port", &port.to_string(), "--name", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mockserver");
        let (_output, found) = Output::capture(&mut child, "listening on http://");
        let line = match found.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("mockserver {name} did not print its listening line");
            }
        };
        let url = line
            .rsplit(' ')
            .next()
            .expect("url in listening line")
            .to_owned();
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .expect("address in listening line");
        MockProcess {
            child,
            addr,
            url,
            name: name.to_owned(),
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway configuration written to a temporary folder.
pub struct ConfigFile {
    /// The folder, removed when this is dropped.
    pub dir: tempfile::TempDir,
    /// The file, `gateway.yaml` in `dir`.
    pub path: PathBuf,
    /// The free port that replaced `{port}`.
    pub port: u16,
}

impl ConfigFile {
    /// Writes `config`, a YAML text in which `{port}` stands for a free port and `{dir}` for
    /// the temporary folder, to `gateway.yaml` in a new temporary folder.
    pub fn write(config: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("temporary folder");
        let port = free_port();
        let text = config
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, text).expect("write config");
        ConfigFile { dir, path, port }
    }
}

/// A running `apigateway`.
pub struct GatewayProcess {
    child: Child,
    output: Output,
    pub addr: SocketAddr,
    pub url: String,
    _dir: tempfile::TempDir,
    config_path: PathBuf,
}

impl GatewayProcess {
    /// Starts the gateway with `config`, a YAML text in which `{port}` stands for a free port
    /// and `{dir}` for a temporary folder that lives as long as the process.
    ///
    /// The free port is released before the gateway binds it, so another process can take it
    /// in between, an outgoing connection of a parallel test included. The gateway then exits
    /// with status 1, and the start is tried again on another port, up to three times.
    pub fn start(config: &str) -> GatewayProcess {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        let (dir, config_path, port, child, output) = loop {
            let ConfigFile {
                dir,
                path: config_path,
                port,
            } = ConfigFile::write(config);
            let mut child = Command::new(binary("apigateway"))
                .arg("--config")
                .arg(&config_path)
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start apigateway");
            let (output, found) = Output::capture(&mut child, "listening");
            let port_taken = match found.recv_timeout(START_TIMEOUT) {
                Ok(_) => break (dir, config_path, port, child, output),
                // The output ended without the line: the gateway exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    matches!(child.wait(), Ok(status) if status.code() == Some(1))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
            };
            if port_taken && attempt < ATTEMPTS {
                attempt += 1;
                continue;
            }
            let _ = child.kill();
            let lines = output.lines.lock().expect("output lock").join("\n");
            panic!("apigateway did not start; its output:\n{lines}");
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        GatewayProcess {
            child,
            output,
            url: format!("http://{addr}"),
            addr,
            _dir: dir,
            config_path,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary folder the gateway runs in.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Path of the configuration file written for this gateway.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.output.lines.lock().expect("output lock").clone()
    }

    /// Waits up to `timeout` for a stdout line containing every one of `parts`.
    pub fn wait_for_line(&self, parts: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .lines()
                .into_iter()
                .find(|line| parts.iter().all(|p| line.contains(p)))
            {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
