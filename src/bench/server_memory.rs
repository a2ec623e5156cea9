//! `--server-pid`: the resident memory of the server processes under test
//! (miopd, Mosquitto, ... on this machine), read from `/proc/PID/statm`
//! before the first connection and at the end of the run, so that one report
//! gives the server's user-space memory per idle connection for either
//! protocol. Kernel socket memory is not in RSS (see docs/BENCHMARKS.md).

use serde::{Deserialize, Serialize};

/// What the report says about the server's memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServerMemory {
    /// RSS summed over the processes, before the first connection.
    pub rss_before_bytes: u64,
    /// RSS summed over the processes at the last second of the run, with
    /// every connection still open.
    pub rss_end_bytes: u64,
    /// Connections open at that moment.
    pub connections: u64,
    /// (end - before) / connections.
    pub bytes_per_connection: f64,
}

impl ServerMemory {
    pub fn new(before: u64, end: u64, connections: u64) -> ServerMemory {
        ServerMemory {
            rss_before_bytes: before,
            rss_end_bytes: end,
            connections,
            bytes_per_connection: end.saturating_sub(before) as f64 / connections.max(1) as f64,
        }
    }
}

/// Total RSS of `pids` in bytes; an error names a process that is gone.
pub fn rss(pids: &[u32]) -> Result<u64, String> {
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/statm");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("--server-pid {pid}: {e}"))?;
        let pages: u64 = text
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("--server-pid {pid}: unexpected {path}: {text:?}"))?;
        total += pages * page;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_read_and_per_connection_is_the_growth_shared() {
        // A sleeping child: its RSS does not move between reads (this test
        // process's does, with other tests running beside it).
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until it has exec'd and is asleep, its memory still changes.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|st| st.contains("(sleep) S"))
        {
            assert!(std::time::Instant::now() < end, "sleep never slept");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let r = rss(&[pid]).unwrap();
        assert!(r > 0);
        assert_eq!(rss(&[pid, pid]).unwrap(), 2 * r);
        let _ = child.kill();
        let _ = child.wait();
        assert!(rss(&[u32::MAX]).unwrap_err().contains("--server-pid"));
        let m = ServerMemory::new(1_000_000, 1_750_000, 1000);
        assert_eq!(m.bytes_per_connection, 750.0);
        assert_eq!(ServerMemory::new(5, 3, 0).bytes_per_connection, 0.0);
    }
}
