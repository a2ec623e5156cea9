//! Helpers shared by the benchmarks: free ports, process handles, RSS, and
//! reading the gateway's admin API; the submodules hold the larger ones.
#![allow(dead_code)]

pub mod admin_http;
pub mod callgrind;
pub mod gateway_proc;
pub mod quiesce;
pub mod raw_session;
pub mod strace;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Child;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child process when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// `GET path` on an admin API; the body, if it answered.
/// The admin token the benches give miopd.
pub const ADMIN_TOKEN: &str = "bench-admin-token";

/// `GET path` on the admin API (with the bench admin token): the body.
pub fn get(admin: SocketAddr, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    // The benches start miopd with `--admin-token ADMIN_TOKEN` (for /v1 reads).
    write!(
        s,
        "GET {path} HTTP/1.0\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

pub fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    get(admin, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
