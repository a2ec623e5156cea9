//! CPU per message: user-space instructions and syscalls that miopd spends on
//! one heartbeat and on one push delivery.
//!
//! Wall-clock throughput on this shared 2-core machine is noisy and `perf
//! stat` has no hardware counters here, so the figures are counts:
//!
//! - **Instructions (Ir)**: miopd runs under callgrind (`--separate-threads`),
//!   the counters are zeroed right before a phase and dumped right after it;
//!   Ir per message = the phase's Ir / messages, for the I/O core thread and
//!   for the whole process. Callgrind counts exactly; what can vary between
//!   runs is the path miopd takes (how many event-loop turns a message costs
//!   depends on when it arrives), hence the quiescing below.
//! - **Syscalls**: a second miopd, not under valgrind, has strace attached
//!   (`strace -f -C -p PID`) for each phase only; calls per message by
//!   syscall and thread, and io_uring submissions (`to_submit` of
//!   `io_uring_enter`).
//!
//! The load comes from this process over loopback: K sessions bound with raw
//! sockets and the sans-io codec, then phases, each in lock-step so every
//! message is handled on its own (one read per Ping on the server). Each
//! message is sent only once every miopd thread is blocked waiting
//! (common/quiesce.rs): every message then pays the full wake-up path of an
//! otherwise quiet gateway, whatever the timing, which makes the counts
//! repeatable. `CPU_QUIESCE=0` sends back-to-back instead (cheaper per
//! message when the next one lands before the loop parks, but that race
//! varies from run to run).
//!
//! 1. idle: nothing sent for a few seconds; the background cost per second
//!    (timer ticks that scan the sessions), used to correct the other phases;
//! 2. heartbeats: N Pings round-robin over the sessions, each waiting for its Pong;
//! 3. pushes, ack=false: M broadcasts through `POST /v1/push`, each waiting
//!    until all K sessions got it (M×K deliveries);
//! 4. pushes, ack=true: the same, each session answering PushAck at once.
//!
//! It works against any miopd build: `MIOPD_BIN=/path/to/miopd` (default: the
//! one cargo builds). `MIOP_IO` (uring|epoll, for builds that have both I/O
//! drivers) is passed through the environment and printed; no `--io` flag is
//! ever given, so builds without it run unchanged.
//!
//! Run: `cargo bench --bench cpu_per_message [-- --json FILE]`. Environment:
//! `CPU_SESSIONS` (K, default 100), `CPU_HEARTBEATS` (N, 2000), `CPU_PUSHES`
//! (M, 200), `CPU_IDLE_SECS` (5), `CPU_TOOLS` (`callgrind,strace`),
//! `CPU_JSON` (like `--json`), `CPU_QUIESCE=0`, `CPU_KEEP=1` (keep the
//! callgrind dumps and strace logs and print where). Needs `valgrind` and
//! `strace` (Debian packages of those names); a missing tool's half is
//! skipped with a note.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::admin_http::AdminConn;
use common::callgrind::{self, Callgrind, Dump};
use common::free_port;
use common::gateway_proc::GatewayProc;
use common::quiesce;
use common::raw_session::RawSession;
use common::strace::{self, Strace, Syscalls};

const PUSH_TOKEN: &str = "T";
const APP_KEY: &str = "pk";
const PAYLOAD: &str = "0123456789abcdef";
/// Quiet time before zeroing and before dumping, so the tail of one phase
/// (the last reply's bookkeeping, an in-flight PushAck) lands in its own window.
const SETTLE: Duration = Duration::from_millis(300);
/// Function-name prefixes of the per-connection code (the current and the
/// rewritten I/O core). The core thread is the busiest thread that ran one.
const CORE_SYMBOLS: [&str; 4] = [
    "miop::gateway::",
    "miop::engine::",
    "miop::driver::",
    "miop::session::",
];

struct Config {
    bin: PathBuf,
    commit: String,
    miop_io: Option<String>,
    sessions: usize,
    heartbeats: usize,
    pushes: usize,
    idle: Duration,
    json: Option<PathBuf>,
    callgrind: bool,
    strace: bool,
    keep: bool,
    quiesce: bool,
}

fn env_num(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The commit a binary was built from: a `COMMIT` file beside a given binary,
/// or this checkout's HEAD for the one cargo built.
fn commit_of(bin: &Path, given: bool) -> String {
    if given {
        return bin
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join("COMMIT")).ok())
            .and_then(|c| c.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}+dirty")
            } else {
                head
            }
        }
        None => "unknown".into(),
    }
}

impl Config {
    fn load() -> Config {
        let given = std::env::var_os("MIOPD_BIN").map(PathBuf::from);
        let bin = given
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_miopd")));
        // cargo bench appends `--bench`; other arguments are ignored.
        let args: Vec<String> = std::env::args().collect();
        let json = args
            .iter()
            .position(|a| a == "--json")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("CPU_JSON").map(PathBuf::from));
        let tools = std::env::var("CPU_TOOLS").unwrap_or_else(|_| "callgrind,strace".into());
        Config {
            commit: commit_of(&bin, given.is_some()),
            bin,
            miop_io: std::env::var("MIOP_IO").ok(),
            sessions: env_num("CPU_SESSIONS", 100),
            heartbeats: env_num("CPU_HEARTBEATS", 2000),
            pushes: env_num("CPU_PUSHES", 200),
            idle: Duration::from_secs(env_num("CPU_IDLE_SECS", 5) as u64),
            json,
            callgrind: tools.contains("callgrind"),
            strace: tools.contains("strace"),
            keep: std::env::var_os("CPU_KEEP").is_some_and(|v| v == "1"),
            quiesce: std::env::var_os("CPU_QUIESCE").is_none_or(|v| v != "0"),
        }
    }

    fn io_label(&self) -> String {
        match &self.miop_io {
            Some(v) => v.clone(),
            None => "(unset: the binary's default)".into(),
        }
    }

    /// miopd's arguments: one core, timers far beyond the run, free ports.
    fn miopd_args(&self) -> Vec<String> {
        [
            "--cores",
            "1",
            "--heartbeat",
            "600s",
            "--bind-timeout",
            "600s",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin",
            &format!("127.0.0.1:{}", free_port()),
            "--app-key",
            APP_KEY,
            "--push-token",
            PUSH_TOKEN,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Idle,
    Heartbeats,
    Push { ack: bool },
}

const PHASES: [Phase; 4] = [
    Phase::Idle,
    Phase::Heartbeats,
    Phase::Push { ack: false },
    Phase::Push { ack: true },
];

impl Phase {
    fn key(self) -> &'static str {
        match self {
            Phase::Idle => "idle_per_second",
            Phase::Heartbeats => "per_heartbeat",
            Phase::Push { ack: false } => "per_push_delivery_ack_false",
            Phase::Push { ack: true } => "per_push_delivery_ack_true",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Idle => "idle, per second",
            Phase::Heartbeats => "per heartbeat (Ping→Pong)",
            Phase::Push { ack: false } => "per push delivery, ack=false",
            Phase::Push { ack: true } => "per push delivery + PushAck",
        }
    }

    /// How long to leave miopd alone before the phase. Before the idle phase,
    /// as long as the phase and then some: periodic work that drains what
    /// the warm-up left behind (the current miopd's metrics upkeep every 5 s
    /// folds the histogram samples recorded per message) then falls before
    /// the window and not in it.
    fn quiet_before(self, cfg: &Config) -> Duration {
        match self {
            Phase::Idle => cfg.idle + Duration::from_secs(1),
            _ => SETTLE,
        }
    }

    /// Column heading in the syscall table.
    fn short(self) -> &'static str {
        match self {
            Phase::Idle => "idle /s",
            Phase::Heartbeats => "/heartbeat",
            Phase::Push { ack: false } => "/delivery ack=false",
            Phase::Push { ack: true } => "/delivery ack=true",
        }
    }

    /// What the phase's counts are divided by: messages, or seconds when idle.
    fn units(self, cfg: &Config, window: Duration) -> f64 {
        match self {
            Phase::Idle => window.as_secs_f64(),
            Phase::Heartbeats => cfg.heartbeats as f64,
            Phase::Push { .. } => (cfg.pushes * cfg.sessions) as f64,
        }
    }
}

/// The bench's side of the traffic: K bound sessions and one admin connection.
struct Load {
    sessions: Vec<RawSession>,
    admin: AdminConn,
    /// miopd's PID, to wait for it to be idle before each message.
    pid: u32,
    quiesce: bool,
    /// Messages sent without miopd having gone idle first (timed out waiting).
    not_idle: usize,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

impl Load {
    async fn connect(gw: &GatewayProc, k: usize, quiesce: bool) -> Res<Load> {
        let mut sessions = Vec::with_capacity(k);
        for i in 0..k {
            let (s, _ack) = RawSession::bind(gw.listen, &format!("cpu-{i}"), APP_KEY).await?;
            sessions.push(s);
        }
        Ok(Load {
            sessions,
            admin: AdminConn::connect(gw.admin).await?,
            pid: gw.pid(),
            quiesce,
            not_idle: 0,
        })
    }

    /// Waits until miopd is idle (see common/quiesce.rs), if asked to.
    async fn settle(&mut self) {
        if self.quiesce && !quiesce::wait_idle(self.pid, Duration::from_secs(2)).await {
            self.not_idle += 1;
        }
    }

    /// A note on messages sent before miopd went idle since the last call.
    fn take_not_idle(&mut self) -> String {
        match std::mem::take(&mut self.not_idle) {
            0 => String::new(),
            n => format!(" ({n} messages sent without miopd idle: waited 2 s each)"),
        }
    }

    async fn heartbeats(&mut self, n: usize) -> Res<()> {
        let k = self.sessions.len();
        for i in 0..n {
            self.settle().await;
            self.sessions[i % k].ping().await?;
        }
        Ok(())
    }

    /// `m` broadcasts, each awaited on every session (and acked if `ack`).
    async fn pushes(&mut self, m: usize, ack: bool) -> Res<()> {
        let body = format!(r#"{{"to":"all","payload":"{PAYLOAD}","ack":{ack}}}"#);
        let k = self.sessions.len() as u64;
        for _ in 0..m {
            self.settle().await;
            let (status, reply) = self.admin.post_json("/v1/push", PUSH_TOKEN, &body).await?;
            let delivered = serde_json::from_str::<Value>(&reply)
                .ok()
                .and_then(|v| v["delivered"].as_u64());
            if status != 200 || delivered != Some(k) {
                return Err(
                    format!("POST /v1/push: {status} {reply} (expected delivered={k})").into(),
                );
            }
            for s in &mut self.sessions {
                let (push, wants_ack) = s.next_push().await?;
                if wants_ack != ack || &push.payload[..] != PAYLOAD.as_bytes() {
                    return Err(format!(
                        "unexpected push: ack flag {wants_ack}, payload {:?}",
                        push.payload
                    )
                    .into());
                }
                if wants_ack {
                    s.push_ack(push.message_id).await?;
                }
            }
        }
        Ok(())
    }

    /// Runs into every code path once so lazy set-up is not measured.
    async fn warm_up(&mut self) -> Res<()> {
        let k = self.sessions.len();
        self.heartbeats(k).await?;
        self.pushes(2, false).await?;
        self.pushes(2, true).await
    }

    async fn run(&mut self, phase: Phase, cfg: &Config) -> Res<()> {
        match phase {
            // Exactly the idle time: a whole number of seconds holds a whole
            // number of ticks of a once-a-second timer.
            Phase::Idle => {
                tokio::time::sleep(cfg.idle).await;
                return Ok(());
            }
            Phase::Heartbeats => self.heartbeats(cfg.heartbeats).await?,
            Phase::Push { ack } => self.pushes(cfg.pushes, ack).await?,
        }
        tokio::time::sleep(SETTLE).await;
        Ok(())
    }
}

fn miopd_command(cfg: &Config, under: Option<&Path>) -> Command {
    let mut cmd = match under {
        Some(out) => callgrind::command(&cfg.bin, out),
        None => Command::new(&cfg.bin),
    };
    cmd.args(cfg.miopd_args());
    if std::env::var_os("MIOP_LOG").is_none() {
        cmd.env("MIOP_LOG", "warn");
    }
    cmd
}

// ----- instructions ------------------------------------------------------------

struct IrPhase {
    dump: Dump,
    window: Duration,
}

struct IrRun {
    phases: BTreeMap<Phase, IrPhase>,
    core_thread: u32,
    core_rule: String,
}

/// The core thread, from the heartbeat phase, where it does all the work.
fn core_thread(dump: &Dump) -> (u32, String) {
    let ran_core = |t: &&callgrind::ThreadCost| CORE_SYMBOLS.iter().any(|s| t.ran(s));
    if let Some(t) = dump.threads.iter().filter(ran_core).max_by_key(|t| t.ir) {
        let symbols: Vec<&str> = CORE_SYMBOLS.iter().copied().filter(|s| t.ran(s)).collect();
        return (
            t.thread,
            format!(
                "the busiest thread in the heartbeat phase that ran {}",
                symbols.join(" / ")
            ),
        );
    }
    let t = dump.threads.iter().max_by_key(|t| t.ir).expect("a thread");
    (
        t.thread,
        "no thread ran miop's per-connection functions by name (stripped binary?): the busiest thread in the heartbeat phase".into(),
    )
}

async fn instructions(cfg: &Config, dir: &Path) -> Res<IrRun> {
    let out = dir.join("cg.out");
    let t = Instant::now();
    let gw = GatewayProc::start(
        miopd_command(cfg, Some(&out)),
        &dir.join("miopd-callgrind.stderr"),
        Duration::from_secs(120),
    )?;
    println!(
        "# callgrind: miopd pid {} ready in {:.1}s",
        gw.pid(),
        t.elapsed().as_secs_f64()
    );
    let mut cg = Callgrind::new(gw.pid(), &out);
    let mut load = Load::connect(&gw, cfg.sessions, cfg.quiesce).await?;
    load.warm_up().await?;
    let mut phases = BTreeMap::new();
    for phase in PHASES {
        tokio::time::sleep(phase.quiet_before(cfg)).await;
        cg.zero()?;
        let t = Instant::now();
        load.run(phase, cfg).await?;
        let window = t.elapsed();
        let dump = cg.dump()?;
        println!(
            "# callgrind: {} done in {:.1}s, {} Ir over {} threads{}",
            phase.label(),
            window.as_secs_f64(),
            dump.total(),
            dump.threads.len(),
            load.take_not_idle()
        );
        phases.insert(phase, IrPhase { dump, window });
    }
    let (core_thread, core_rule) = core_thread(&phases[&Phase::Heartbeats].dump);
    drop(load);
    drop(gw);
    Ok(IrRun {
        phases,
        core_thread,
        core_rule,
    })
}

// ----- syscalls ----------------------------------------------------------------

struct ScPhase {
    calls: Syscalls,
    window: Duration,
}

async fn syscalls(cfg: &Config, dir: &Path) -> Res<BTreeMap<Phase, ScPhase>> {
    let gw = GatewayProc::start(
        miopd_command(cfg, None),
        &dir.join("miopd-strace.stderr"),
        Duration::from_secs(30),
    )?;
    println!("# strace: miopd pid {} ready", gw.pid());
    let mut load = Load::connect(&gw, cfg.sessions, cfg.quiesce).await?;
    load.warm_up().await?;
    let mut phases = BTreeMap::new();
    for phase in PHASES {
        tokio::time::sleep(phase.quiet_before(cfg)).await;
        let st = Strace::attach(gw.pid(), &dir.join(format!("strace-{}.txt", phase.key())))?;
        let t = Instant::now();
        let ran = load.run(phase, cfg).await;
        let window = t.elapsed();
        let calls = st.stop()?;
        ran?;
        println!(
            "# strace: {} done in {:.1}s, {} syscalls{}",
            phase.label(),
            window.as_secs_f64(),
            calls.total(),
            load.take_not_idle()
        );
        phases.insert(phase, ScPhase { calls, window });
    }
    Ok(phases)
}

// ----- report ------------------------------------------------------------------

/// 1234567.8 → "1,234,568".
fn grouped(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn machine() -> (usize, String) {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    (nproc, kernel)
}

fn report_ir(cfg: &Config, run: &IrRun) -> Value {
    let idle = &run.phases[&Phase::Idle];
    let idle_secs = idle.window.as_secs_f64();
    let idle_core = idle.dump.thread(run.core_thread) as f64 / idle_secs;
    let idle_proc = idle.dump.total() as f64 / idle_secs;
    println!();
    println!("Instructions (callgrind Ir, user space)          core thread        process");
    let mut json = serde_json::Map::new();
    for (&phase, p) in &run.phases {
        let units = phase.units(cfg, p.window);
        let core = p.dump.thread(run.core_thread) as f64;
        let all = p.dump.total() as f64;
        println!(
            "  {:<44} {:>12} {:>14}",
            phase.label(),
            grouped(core / units),
            grouped(all / units)
        );
        let mut entry = json!({
            "core_thread": core / units,
            "process": all / units,
            "window_seconds": p.window.as_secs_f64(),
            "threads": p.dump.threads.iter().map(|t| (t.thread.to_string(), t.ir)).collect::<BTreeMap<_, _>>(),
        });
        if phase != Phase::Idle {
            // What the idle background (timer ticks) would add in this window.
            let secs = p.window.as_secs_f64();
            let core_net = (core - idle_core * secs) / units;
            let all_net = (all - idle_proc * secs) / units;
            println!(
                "    {:<42} {:>12} {:>14}",
                "  less the idle background",
                grouped(core_net),
                grouped(all_net)
            );
            entry["core_thread_less_idle"] = json!(core_net);
            entry["process_less_idle"] = json!(all_net);
        }
        json.insert(phase.key().into(), entry);
    }
    let threads: Vec<String> = run.phases[&Phase::Heartbeats]
        .dump
        .threads
        .iter()
        .map(|t| format!("{}: {}", t.thread, grouped(t.ir as f64)))
        .collect();
    println!(
        "  core thread = valgrind thread {} ({}); heartbeat-phase Ir by thread: {}",
        run.core_thread,
        run.core_rule,
        threads.join(", ")
    );
    json.insert("core_thread".into(), json!(run.core_thread));
    json.insert("core_thread_rule".into(), json!(run.core_rule));
    Value::Object(json)
}

fn report_syscalls(cfg: &Config, phases: &BTreeMap<Phase, ScPhase>) -> Value {
    // Rows: every syscall seen while messages flowed, busiest first.
    let mut order: BTreeMap<String, f64> = BTreeMap::new();
    for (&phase, p) in phases {
        for (name, n) in p.calls.process() {
            *order.entry(name).or_default() += n as f64 / phase.units(cfg, p.window);
        }
    }
    let mut rows: Vec<(String, f64)> = order.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    println!();
    println!("Syscalls (strace -f, miopd not under valgrind), whole process");
    print!("  {:<26}", "");
    for phase in PHASES {
        print!(" {:>20}", phase.short());
    }
    println!();
    let cell = |phase: Phase, v: u64| {
        let p = &phases[&phase];
        v as f64 / phase.units(cfg, p.window)
    };
    let mut json = serde_json::Map::new();
    let mut line = |label: &str, key: &str, get: &dyn Fn(&ScPhase) -> u64| {
        print!("  {label:<26}");
        let mut by_phase = serde_json::Map::new();
        for phase in PHASES {
            let v = cell(phase, get(&phases[&phase]));
            print!(" {v:>20.3}");
            by_phase.insert(phase.key().into(), json!(v));
        }
        println!();
        json.insert(key.into(), Value::Object(by_phase));
    };
    for (name, _) in &rows {
        line(name, name, &|p| {
            p.calls.process().get(name).copied().unwrap_or(0)
        });
    }
    line("total", "total", &|p| p.calls.total());
    line("  of which core thread(s)", "total_core_threads", &|p| {
        p.calls
            .threads
            .values()
            .filter(|t| t.name.starts_with("miop-core"))
            .map(|t| t.total())
            .sum()
    });
    line("io_uring SQEs submitted", "io_uring_sqes", &|p| {
        p.calls.uring_sqes()
    });
    for (&phase, p) in phases {
        if p.calls.strace_total != Some(p.calls.total()) {
            println!(
                "  note: {}: strace's own -c total {:?} differs from the {} lines counted",
                phase.label(),
                p.calls.strace_total,
                p.calls.total()
            );
        }
        let threads: Vec<String> = p
            .calls
            .threads
            .values()
            .map(|t| format!("{} {}", t.name, t.total()))
            .collect();
        println!(
            "  {} ({:.1}s): {}",
            phase.label(),
            p.window.as_secs_f64(),
            threads.join(", ")
        );
        // The raw counts, by thread name and syscall, for whoever digs further.
        let raw: BTreeMap<String, &BTreeMap<String, u64>> = p
            .calls
            .threads
            .iter()
            .map(|(tid, t)| (format!("{} ({tid})", t.name), &t.calls))
            .collect();
        json.insert(
            format!("raw_{}", phase.key()),
            json!({ "window_seconds": p.window.as_secs_f64(), "threads": raw }),
        );
    }
    Value::Object(json)
}

fn main() {
    let cfg = Config::load();
    let (nproc, kernel) = machine();
    println!(
        "cpu_per_message: binary={} commit={} MIOP_IO={}",
        cfg.bin.display(),
        cfg.commit,
        cfg.io_label()
    );
    println!(
        "  K={} sessions, N={} heartbeats, M={} pushes (M×K={} deliveries), idle {}s; nproc={nproc} kernel={kernel}",
        cfg.sessions,
        cfg.heartbeats,
        cfg.pushes,
        cfg.pushes * cfg.sessions,
        cfg.idle.as_secs()
    );
    println!(
        "  each Ping and each POST /v1/push sent {}",
        if cfg.quiesce {
            "once miopd is idle (all threads blocked waiting)"
        } else {
            "as soon as the previous one completed (CPU_QUIESCE=0)"
        }
    );
    let dir = std::env::temp_dir().join(format!("miop-cpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = json!({
        "binary": cfg.bin.display().to_string(),
        "commit": cfg.commit,
        "miop_io": cfg.miop_io,
        "sessions": cfg.sessions,
        "heartbeats": cfg.heartbeats,
        "pushes": cfg.pushes,
        "quiesce": cfg.quiesce,
        "idle_seconds": cfg.idle.as_secs(),
        "nproc": nproc,
        "kernel": kernel,
    });
    let mut failed = false;
    rt.block_on(async {
        if !cfg.callgrind {
            println!("# callgrind: skipped (CPU_TOOLS)");
        } else if !callgrind::available() {
            println!("# callgrind: valgrind is not installed (apt-get install valgrind): no instruction counts");
        } else {
            match instructions(&cfg, &dir).await {
                Ok(run) => out["instructions"] = report_ir(&cfg, &run),
                Err(e) => {
                    println!("# callgrind run failed: {e}");
                    failed = true;
                }
            }
        }
        if !cfg.strace {
            println!("# strace: skipped (CPU_TOOLS)");
        } else if !strace::available() {
            println!("# strace: not installed (apt-get install strace): no syscall counts");
        } else {
            match syscalls(&cfg, &dir).await {
                Ok(phases) => out["syscalls"] = report_syscalls(&cfg, &phases),
                Err(e) => {
                    println!("# strace run failed: {e}");
                    failed = true;
                }
            }
        }
    });
    if let Some(path) = &cfg.json {
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).expect("write JSON");
        println!("# JSON written to {}", path.display());
    }
    if cfg.keep {
        println!("# dumps and logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if failed {
        std::process::exit(1);
    }
}
