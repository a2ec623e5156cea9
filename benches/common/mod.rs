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

/// RSS once it has stopped moving (right after a burst of connections it
/// still moves a little): two readings 250 ms apart within 64 KiB, or the
/// last of 20.
pub async fn settle_rss(pid: u32) -> u64 {
    let mut last = rss_bytes(pid);
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now = rss_bytes(pid);
        if now.abs_diff(last) < 64 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

/// CPU seconds (user + system, all threads) process `pid` has used so far,
/// from /proc/PID/stat (clock-tick resolution, 10 ms).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat name")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

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

/// A minimal MQTT 3.1.1 CONNECT (clean session, keep-alive 600 s): the
/// peer's half of a bind in the Mosquitto comparisons.
#[allow(dead_code)]
pub fn mqtt_connect(client_id: &str) -> Vec<u8> {
    let mut var = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58];
    var.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    var.extend_from_slice(client_id.as_bytes());
    let mut pkt = vec![0x10, var.len() as u8];
    pkt.extend(var);
    pkt
}
