//! Counting a live process's user-space instructions with callgrind.
//!
//! This machine has no hardware performance counters (`perf stat -e
//! instructions` fails), but callgrind counts executed guest instructions
//! (`Ir`) exactly, so the same work gives the same count on a busy or an idle
//! machine. A benchmark starts the program under
//! `valgrind --tool=callgrind --separate-threads=yes`, zeroes the counters with
//! `callgrind_control -z PID` just before a phase and dumps them with
//! `callgrind_control -d PID` just after: each dump writes one file per thread
//! (`OUT.<part>-<thread>`), whose `totals:` line is that thread's Ir since the
//! last zero. Only user space is counted: the kernel's share of a syscall or of
//! an io_uring operation is not.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A program under callgrind, controlled by PID.
pub struct Callgrind {
    pid: u32,
    dir: PathBuf,
    prefix: String,
    seen: HashSet<PathBuf>,
}

/// One thread's share of a dump.
pub struct ThreadCost {
    /// Valgrind's thread number (1 is the main thread, then in creation order).
    pub thread: u32,
    pub ir: u64,
    /// The dump file's text, to look for the functions that thread ran.
    text: String,
}

impl ThreadCost {
    /// Whether this thread ran a function whose (demangled) name contains `needle`.
    pub fn ran(&self, needle: &str) -> bool {
        self.text.contains(needle)
    }
}

/// The per-thread counts of one `callgrind_control -d`.
pub struct Dump {
    pub threads: Vec<ThreadCost>,
}

impl Dump {
    pub fn total(&self) -> u64 {
        self.threads.iter().map(|t| t.ir).sum()
    }

    /// Ir of valgrind thread `thread`; 0 if it ran nothing since the zero.
    pub fn thread(&self, thread: u32) -> u64 {
        self.threads
            .iter()
            .find(|t| t.thread == thread)
            .map_or(0, |t| t.ir)
    }
}

/// Whether `valgrind` and `callgrind_control` are on the PATH.
pub fn available() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// `valgrind --tool=callgrind ... PROGRAM`, writing its dumps to `out_file.*`.
/// The caller adds the program's arguments.
pub fn command(program: &Path, out_file: &Path) -> Command {
    let mut c = Command::new("valgrind");
    c.arg("--tool=callgrind")
        .arg("--separate-threads=yes")
        // Full function names in every dump file, so each file can be read
        // (and annotated) on its own.
        .arg("--compress-strings=no")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(program);
    c
}

impl Callgrind {
    /// Controls the process `pid` started by [`command`] with `out_file`.
    pub fn new(pid: u32, out_file: &Path) -> Callgrind {
        Callgrind {
            pid,
            dir: out_file
                .parent()
                .expect("out file in a directory")
                .to_owned(),
            prefix: format!("{}.", out_file.file_name().unwrap().to_string_lossy()),
            seen: HashSet::new(),
        }
    }

    fn control(&self, flag: &str) -> io::Result<()> {
        let out = Command::new("callgrind_control")
            .args([flag, &self.pid.to_string()])
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && said.contains("OK") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "callgrind_control {flag} {}: {said}{}",
                self.pid,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Zeroes every thread's counters.
    pub fn zero(&self) -> io::Result<()> {
        self.control("-z")
    }

    /// Dumps the counters since the last zero and reads the new per-thread files.
    pub fn dump(&mut self) -> io::Result<Dump> {
        self.control("-d")?;
        // The files are written by the target process; wait until every new
        // one is complete (its last line is `totals:`).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut threads = Vec::new();
            let mut complete = true;
            let mut fresh = Vec::new();
            for entry in std::fs::read_dir(&self.dir)? {
                let path = entry?.path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if !name.starts_with(&self.prefix) || self.seen.contains(&path) {
                    continue;
                }
                let text = std::fs::read_to_string(&path)?;
                match parse(&text) {
                    Some((thread, ir)) => threads.push(ThreadCost { thread, ir, text }),
                    None => complete = false,
                }
                fresh.push(path);
            }
            if complete && !threads.is_empty() {
                self.seen.extend(fresh);
                threads.sort_by_key(|t| t.thread);
                return Ok(Dump { threads });
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("callgrind dump files did not appear"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The thread number and total Ir of a complete dump file.
fn parse(text: &str) -> Option<(u32, u64)> {
    let thread = text
        .lines()
        .find_map(|l| l.strip_prefix("thread: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    let ir = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("totals: "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some((thread, ir))
}
