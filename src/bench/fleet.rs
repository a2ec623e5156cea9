//! The load threads of a run, in this process or spread over worker processes.
//!
//! One process may hold only as many sockets as RLIMIT_NOFILE allows (20,000
//! on the project's test machines), so large runs start worker processes (the
//! same binary with a hidden `--worker I/N`). A worker runs its threads and
//! writes one JSON line per second to stdout: cumulative counters and the
//! interval's histograms (HdrHistogram V2, base64). The parent sends `target N`
//! and `stop` lines on the worker's stdin. Histograms are merged, not averaged,
//! so percentiles over processes are exact.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cli::Plan;
use super::engine::{run_thread, Control, Share};
use super::stats::{Counters, Latencies, Snapshot, ThreadStats};

/// Threads in this process.
pub struct LocalFleet {
    control: Arc<Control>,
    stats: Vec<Arc<ThreadStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl LocalFleet {
    /// Starts `threads` load threads, this process being number `proc_index`
    /// of `procs` (each with the same number of threads).
    pub fn start(
        plan: Arc<Plan>,
        threads: usize,
        proc_index: usize,
        procs: usize,
        target: u64,
    ) -> LocalFleet {
        let control = Control::new(target);
        let total = (threads * procs) as u64;
        let mut stats = Vec::new();
        let mut handles = Vec::new();
        for t in 0..threads {
            let s = Arc::new(ThreadStats::default());
            stats.push(s.clone());
            let share = Share {
                global_thread: (proc_index * threads + t) as u64,
                total_threads: total,
            };
            let (plan, control, args) = (plan.clone(), control.clone(), plan.script_args.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("load-{t}"))
                    .spawn(move || run_thread(plan, share, s, control, args))
                    .expect("spawn load thread"),
            );
        }
        LocalFleet {
            control,
            stats,
            threads: handles,
        }
    }

    pub fn set_target(&self, n: u64) {
        self.control.set_target(n);
    }

    /// Connections up right now (cheap: no histograms are taken).
    pub fn connected(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| s.connected.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        self.snapshot_into(&mut snap);
        snap
    }

    /// [`LocalFleet::snapshot`] into a snapshot kept across seconds.
    pub fn snapshot_into(&self, snap: &mut Snapshot) {
        snap.clear();
        for s in &self.stats {
            snap.counters.add(&s.counters());
            s.take_interval_into(&mut snap.interval);
        }
    }

    /// Stops every thread (connections close cleanly) and returns the final
    /// counters and whole-run histograms.
    pub fn finish(self) -> (Counters, Latencies) {
        self.control.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        let mut counters = Counters::default();
        let mut total = Latencies::default();
        let mut scratch = Latencies::default();
        for s in &self.stats {
            s.take_interval_into(&mut scratch);
            counters.add(&s.counters());
            total.add(&s.total());
        }
        (counters, total)
    }
}

/// A line from a worker process.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerLine {
    counters: Counters,
    /// The interval's histograms (or, in the final line, the whole run's).
    hists: Vec<(String, String)>,
    #[serde(default)]
    last: bool,
}

#[derive(Default)]
struct WorkerState {
    counters: Counters,
    pending: Latencies,
    total: Option<Latencies>,
    error: Option<String>,
}

/// Worker processes, each running [`LocalFleet`] with its share.
pub struct ProcFleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    states: Vec<Arc<Mutex<WorkerState>>>,
    readers: Vec<JoinHandle<()>>,
}

impl ProcFleet {
    /// Starts `procs` copies of this executable with `args` plus `--worker I/N`.
    pub fn start(args: &[String], procs: usize) -> Result<ProcFleet, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
        let mut fleet = ProcFleet {
            children: Vec::new(),
            stdins: Vec::new(),
            states: Vec::new(),
            readers: Vec::new(),
        };
        for i in 0..procs {
            let mut child = Command::new(&exe)
                .args(args)
                .arg(format!("--worker={i}/{procs}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker process: {e}"))?;
            let stdout = child.stdout.take().expect("piped stdout");
            fleet.stdins.push(child.stdin.take().expect("piped stdin"));
            let state = Arc::new(Mutex::new(WorkerState::default()));
            fleet.states.push(state.clone());
            fleet.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let parsed: Result<WorkerLine, _> = serde_json::from_str(&line);
                    let mut st = state.lock().unwrap();
                    let merged = parsed.map_err(|e| e.to_string()).and_then(|l| {
                        st.counters = l.counters;
                        if l.last {
                            st.total = Some(Latencies::decode(&l.hists)?);
                            Ok(())
                        } else {
                            st.pending.add_encoded(&l.hists)
                        }
                    });
                    if let Err(e) = merged {
                        st.error = Some(format!("bad line from worker {i}: {e}"));
                    }
                }
            }));
            fleet.children.push(child);
        }
        Ok(fleet)
    }

    fn send(&mut self, line: &str) {
        for stdin in &mut self.stdins {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    pub fn set_target(&mut self, n: u64) {
        self.send(&format!("target {n}"));
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for s in &self.states {
            let mut st = s.lock().unwrap();
            snap.counters.add(&st.counters);
            snap.interval.add(&st.pending);
            st.pending.reset();
        }
        snap
    }

    /// A worker that exited early or sent garbage.
    pub fn failure(&mut self) -> Option<String> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Ok(Some(st)) = c.try_wait() {
                if !st.success() {
                    return Some(format!("worker process {i} exited with {st}"));
                }
            }
        }
        self.states
            .iter()
            .find_map(|s| s.lock().unwrap().error.clone())
    }

    pub fn finish(mut self) -> (Counters, Latencies) {
        self.send("stop");
        self.stdins.clear(); // EOF also means stop
        let deadline = Instant::now() + Duration::from_secs(20);
        for c in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers {
            let _ = r.join();
        }
        let mut counters = Counters::default();
        let mut total = Latencies::default();
        for s in &self.states {
            let st = s.lock().unwrap();
            counters.add(&st.counters);
            if let Some(t) = &st.total {
                total.add(t);
            }
        }
        (counters, total)
    }
}

/// The body of a worker process: run this process's share, report every
/// second on stdout, obey `target N` / `stop` on stdin.
pub fn run_worker(
    plan: Arc<Plan>,
    threads: usize,
    index: usize,
    procs: usize,
) -> Result<(), String> {
    // Ctrl-C in a terminal reaches the whole process group; the parent decides
    // when workers stop, so ignore SIGINT here.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let fleet = LocalFleet::start(plan.clone(), threads, index, procs, 0);
    let control = fleet.control.clone();
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stopped = stopped.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match line.split_whitespace().collect::<Vec<_>>()[..] {
                    ["target", n] => {
                        if let Ok(n) = n.parse() {
                            control.set_target(n);
                        }
                    }
                    ["stop"] => break,
                    _ => {}
                }
            }
            stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let out = std::io::stdout();
    let mut next = Instant::now() + Duration::from_secs(1);
    let mut snap = Snapshot::default();
    while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        if Instant::now() >= next {
            next += Duration::from_secs(1);
            fleet.snapshot_into(&mut snap);
            let line = WorkerLine {
                counters: snap.counters,
                hists: snap.interval.encode(),
                last: false,
            };
            let mut o = out.lock();
            if writeln!(o, "{}", serde_json::to_string(&line).unwrap()).is_err() {
                break; // parent gone
            }
            let _ = o.flush();
        }
    }
    let (counters, total) = fleet.finish();
    let line = WorkerLine {
        counters,
        hists: total.encode(),
        last: true,
    };
    let mut o = out.lock();
    let _ = writeln!(o, "{}", serde_json::to_string(&line).unwrap());
    let _ = o.flush();
    Ok(())
}
