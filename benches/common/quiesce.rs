//! Waiting until a process is idle: every thread blocked in a waiting syscall.
//!
//! An event loop's cost per message depends on what state the message finds it
//! in. If the next message arrives while the loop is still finishing the last
//! one, it is picked up without parking; if the loop has parked, it pays a
//! wake-up and one or more extra turns. Under valgrind, which slows the server
//! and not the client, that race goes either way from run to run and moved the
//! instructions per heartbeat by several percent. Sending each message only
//! once the gateway is idle makes every message pay the same, full wake-up
//! path: the per-message cost of a quiet gateway, and repeatable.
//!
//! Idle is read from /proc: a thread in state `S` whose `syscall` file names a
//! waiting call (epoll, io_uring_enter, poll, futex, sleep). Valgrind's own
//! scheduler lock is a pipe read, which is not in the list, so a guest thread
//! waiting for its turn under valgrind does not count as idle.

use std::time::{Duration, Instant};

fn waiting_syscalls() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_io_uring_enter,
        libc::SYS_ppoll,
        libc::SYS_pselect6,
        libc::SYS_futex,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_epoll_wait, libc::SYS_poll, libc::SYS_select]);
    v
}

/// Whether thread `tid` of `pid` is blocked in a waiting syscall.
fn thread_idle(pid: u32, tid: &str, waiting: &[i64]) -> bool {
    let base = format!("/proc/{pid}/task/{tid}");
    let Ok(stat) = std::fs::read_to_string(format!("{base}/stat")) else {
        return true; // exited
    };
    // The state follows the parenthesised name, which may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().next());
    if state != Some("S") {
        return false;
    }
    let Ok(sc) = std::fs::read_to_string(format!("{base}/syscall")) else {
        return false;
    };
    sc.split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        .is_some_and(|n| waiting.contains(&n))
}

/// Whether every thread of `pid` is idle right now.
pub fn is_idle(pid: u32) -> bool {
    let waiting = waiting_syscalls();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    dir.flatten()
        .all(|e| thread_idle(pid, &e.file_name().to_string_lossy(), &waiting))
}

/// Waits until `pid` has been seen idle twice in a row 1 ms apart (a thread
/// can block on a lock for a moment while busy). False after `timeout`.
pub async fn wait_idle(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    while Instant::now() < deadline {
        if is_idle(pid) {
            seen += 1;
            if seen == 2 {
                return true;
            }
        } else {
            seen = 0;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}
