//! Counting a live process's syscalls with strace, per thread.
//!
//! `strace -f -C -p PID -o FILE` attaches to every thread of a running process
//! (ptrace, so the process itself is unchanged), writes one line per syscall
//! prefixed by the thread id and, with `-C`, the `-c` summary table at the end.
//! Counting the lines ourselves gives the split by thread (the I/O core versus
//! the control plane), which the `-c` table alone does not, and the number of
//! io_uring submissions: the second argument of each `io_uring_enter`
//! (`to_submit`), since the operations themselves are not syscalls. Stopped
//! with SIGINT to its own PID, strace detaches and writes the summary.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Syscalls of one thread during a phase.
#[derive(Debug, Default, Clone)]
pub struct ThreadCalls {
    /// Thread name from /proc (e.g. `miop-core-0`), or `tid N` if it exited.
    pub name: String,
    pub calls: BTreeMap<String, u64>,
    /// Sum of `to_submit` over this thread's `io_uring_enter` calls.
    pub uring_sqes: u64,
}

impl ThreadCalls {
    pub fn total(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// What one attach saw, by thread id.
#[derive(Debug, Default)]
pub struct Syscalls {
    pub threads: BTreeMap<u32, ThreadCalls>,
    /// The `total` row of strace's own `-c` table, as a cross-check.
    pub strace_total: Option<u64>,
}

impl Syscalls {
    /// Calls of one syscall summed over all threads.
    pub fn process(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for t in self.threads.values() {
            for (name, n) in &t.calls {
                *all.entry(name.clone()).or_default() += n;
            }
        }
        all
    }

    pub fn total(&self) -> u64 {
        self.threads.values().map(ThreadCalls::total).sum()
    }

    pub fn uring_sqes(&self) -> u64 {
        self.threads.values().map(|t| t.uring_sqes).sum()
    }
}

pub fn available() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// strace attached to a process until [`Strace::stop`].
pub struct Strace {
    child: Child,
    out: PathBuf,
    names: BTreeMap<u32, String>,
}

fn thread_names(pid: u32) -> BTreeMap<u32, String> {
    let mut names = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) {
                names.insert(tid, comm.trim().to_owned());
            }
        }
    }
    names
}

impl Strace {
    /// Attaches to every thread of `pid`, writing to `out` (and strace's own
    /// messages to `out.err`); returns once strace says it has attached.
    pub fn attach(pid: u32, out: &Path) -> io::Result<Strace> {
        let err = out.with_extension("err");
        let child = Command::new("strace")
            .args(["-f", "-C", "-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        let mut s = Strace {
            child,
            out: out.to_owned(),
            names: BTreeMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let said = std::fs::read_to_string(&err).unwrap_or_default();
            if said.contains("attached") {
                break;
            }
            if let Some(status) = s.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "strace exited ({status}): {said}"
                )));
            }
            if Instant::now() > deadline {
                let _ = s.stop();
                return Err(io::Error::other(format!("strace did not attach: {said}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s.names = thread_names(pid);
        Ok(s)
    }

    /// Detaches (SIGINT to strace's own PID) and counts what it saw.
    pub fn stop(mut self) -> io::Result<Syscalls> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).map_err(io::Error::from)?;
        self.child.wait()?;
        let text = std::fs::read_to_string(&self.out)?;
        Ok(parse(&text, &self.names))
    }
}

/// Counts the syscalls of `strace -f -C` output that completed while strace
/// was attached, as its `-c` table does. A call that blocks while another
/// thread runs shows as `TID name(... <unfinished ...>` and later as
/// `TID <... name resumed>... = RET`: it is counted once, when it returns. A
/// call still blocked at detach (`<detached ...>`) is not counted.
fn parse(text: &str, names: &BTreeMap<u32, String>) -> Syscalls {
    let mut out = Syscalls::default();
    // Per thread: the call it is blocked in, and that call's `to_submit`.
    let mut pending: BTreeMap<u32, (String, u64)> = BTreeMap::new();
    for line in text.lines() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.parse::<u32>() else {
            // The summary table: its `total` row is
            // "% time, seconds, usecs/call, calls, [errors,] total".
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.last() == Some(&"total") {
                out.strace_total = cols.get(3).and_then(|v| v.parse().ok());
            }
            continue;
        };
        let rest = rest.trim_start();
        let (name, to_submit) = if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, _)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let submitted = pending.remove(&tid).map_or(0, |(_, n)| n);
            (name.to_owned(), submitted)
        } else {
            let Some(open) = rest.find('(') else {
                continue; // "+++ exited ...", "--- SIGxxx ..."
            };
            let name = &rest[..open];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            let to_submit = if name == "io_uring_enter" {
                rest[open + 1..]
                    .split(',')
                    .nth(1)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            } else {
                0
            };
            if rest.ends_with("<unfinished ...>") {
                pending.insert(tid, (name.to_owned(), to_submit));
                continue;
            }
            if rest.ends_with("<detached ...>") {
                continue;
            }
            (name.to_owned(), to_submit)
        };
        let t = out.threads.entry(tid).or_insert_with(|| ThreadCalls {
            name: names
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| format!("tid {tid}")),
            ..Default::default()
        });
        *t.calls.entry(name).or_default() += 1;
        t.uring_sqes += to_submit;
    }
    out
}
