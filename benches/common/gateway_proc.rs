//! A miopd process started by a benchmark, possibly under a tool (valgrind),
//! ready once it prints `miopd ready listen=ADDR admin=ADDR` on stdout.
//!
//! Waiting for that line rather than polling a port works the same for any
//! miopd build and under valgrind, where start-up takes seconds, and gives the
//! addresses actually bound.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::Killed;

pub struct GatewayProc {
    /// The process (killed, by its own PID, when this is dropped).
    pub child: Killed,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// The whole ready line (it also names `tls=`, `ws=`, `wss=` listeners).
    pub ready: String,
}

impl GatewayProc {
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The address of the `kind` listener (`tls`, `ws`, `wss`) the ready
    /// line names; None when this miopd has no such listener.
    pub fn listener(&self, kind: &str) -> Option<SocketAddr> {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(kind)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    }

    /// Spawns `cmd` (program and arguments already set) with stdout piped and
    /// stderr to `stderr_file`, and waits up to `timeout` for the ready line.
    pub fn start(
        mut cmd: Command,
        stderr_file: &Path,
        timeout: Duration,
    ) -> io::Result<GatewayProc> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr_file)?)
            .spawn()?;
        let mut child = Killed(child);
        let stdout = child.0.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout after the ready line so miopd never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("miopd ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx.recv_timeout(timeout).map_err(|_| {
            let err = std::fs::read_to_string(stderr_file).unwrap_or_default();
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            io::Error::other(format!(
                "miopd did not print its ready line within {timeout:?}; stderr ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        })?;
        let addr = |key: &str| -> io::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other(format!("no {key} in {line:?}")))
        };
        Ok(GatewayProc {
            listen: addr("listen=")?,
            admin: addr("admin=")?,
            ready: line,
            child,
        })
    }
}
