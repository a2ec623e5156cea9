//! The main process of a run: plans, starts the fleet, schedules the scenario,
//! prints a progress line every second, and writes the reports at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cli::{BenchArgs, BenchUrl, Plan, Scenario};
use super::fleet::{run_worker, LocalFleet, ProcFleet};
use super::report::{
    self, fmt_duration_s, fmt_micros, percentiles_by_name, Report, StepSummary, Summary,
    TimelinePoint,
};
use super::script::Script;
use super::server_memory::{self, ServerMemory};
use super::stats::{Counters, Latencies, Metric, Percentiles, Snapshot};

/// File descriptors a process keeps for itself besides connections.
const FD_RESERVE: u64 = 128;

enum Fleet {
    Local(LocalFleet),
    Procs(ProcFleet),
}

impl Fleet {
    fn set_target(&mut self, n: u64) {
        match self {
            Fleet::Local(f) => f.set_target(n),
            Fleet::Procs(f) => f.set_target(n),
        }
    }
    fn snapshot(&mut self) -> Snapshot {
        match self {
            Fleet::Local(f) => f.snapshot(),
            Fleet::Procs(f) => f.snapshot(),
        }
    }
    /// Connections up right now, where that is cheap to know (one process).
    fn connected_now(&self) -> Option<u64> {
        match self {
            Fleet::Local(f) => Some(f.connected()),
            Fleet::Procs(_) => None,
        }
    }
    fn failure(&mut self) -> Option<String> {
        match self {
            Fleet::Local(_) => None,
            Fleet::Procs(f) => f.failure(),
        }
    }
    fn finish(self) -> (Counters, Latencies) {
        match self {
            Fleet::Local(f) => f.finish(),
            Fleet::Procs(f) => f.finish(),
        }
    }
}

/// Entry point of the `miop-bench` binary. `raw` is argv without the program
/// name (forwarded to worker processes). Returns the exit code.
pub fn main(args: BenchArgs, raw: Vec<String>) -> i32 {
    let plan = match Plan::from_args(&args) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("miop-bench: {e}");
            return 2;
        }
    };
    let fd_limit = crate::driver::raise_fd_limit().max(64);
    let per_proc = fd_limit.saturating_sub(FD_RESERVE).max(16);

    if let Some(w) = &args.worker {
        let parsed = w
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .filter(|(i, n)| i < n);
        let Some((index, procs)) = parsed else {
            eprintln!("miop-bench: bad --worker {w}");
            return 2;
        };
        let threads = (plan.threads).div_ceil(procs).max(1);
        return match run_worker(plan, threads, index, procs) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("miop-bench worker {index}: {e}");
                1
            }
        };
    }

    for w in &plan.warnings {
        eprintln!("miop-bench: warning: {w}");
    }
    if args.sources.is_none() && plan.sources.len() > 1 {
        eprintln!(
            "miop-bench: {} connections from {} loopback source addresses ({}-{}), at most {} each",
            plan.connections,
            plan.sources.len(),
            plan.sources[0],
            plan.sources[plan.sources.len() - 1],
            plan.connections.div_ceil(plan.sources.len() as u64)
        );
    }
    let procs = match args.procs {
        Some(p) => p as usize,
        None => plan.connections.div_ceil(per_proc) as usize,
    }
    .max(1);
    if plan.connections.div_ceil(procs as u64) > per_proc {
        eprintln!(
            "miop-bench: {} connections over {procs} process(es) need {} fds each, but the limit is {fd_limit}; use more --procs",
            plan.connections,
            plan.connections.div_ceil(procs as u64)
        );
        return 2;
    }
    let script = match &plan.script {
        Some(path) => match Script::load(path, &plan.script_args) {
            Ok(s) => {
                for w in s.warnings() {
                    eprintln!("miop-bench: {w}");
                }
                Some(s)
            }
            Err(e) => {
                eprintln!("miop-bench: {e}");
                return 2;
            }
        },
        None => None,
    };
    if let Err(e) = preflight(&plan) {
        eprintln!("miop-bench: {e}");
        return 1;
    }
    let threads_per_proc = plan.threads.div_ceil(procs).max(1);
    let threads = threads_per_proc * procs;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = rt.block_on(drive(
        plan.clone(),
        &raw,
        procs,
        threads_per_proc,
        args.progress,
        &args.server_pids,
    ));
    let o = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("miop-bench: {e}");
            return 1;
        }
    };
    let summary = Summary {
        url: plan.url.to_string(),
        scenario: plan.scenario.name().into(),
        threads,
        procs,
        connections: plan.connections,
        duration_s: o.elapsed,
        peak_connected: o.peak,
        link_limit: o.link_limit,
        counters: o.counters,
        latency: percentiles_by_name(&o.total),
        steps: o.steps,
        interrupted: o.interrupted,
        push_requests: o.push.requests.load(std::sync::atomic::Ordering::Relaxed),
        push_errors: o.push.errors.load(std::sync::atomic::Ordering::Relaxed),
        push_recipients: o.push.recipients.load(std::sync::atomic::Ordering::Relaxed),
        server_memory: o.server_memory,
        ramp_s: o.ramp_s,
    };
    print!("{}", report::text(&summary, &o.total, args.latency));
    let report = Report {
        summary,
        timeline: o.timeline,
    };
    let mut code = 0;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).expect("report serializes");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("miop-bench: cannot write {}: {e}", path.display());
            code = 1;
        }
    }
    if let Some(path) = &args.report {
        if let Err(e) = std::fs::write(path, super::html::render(&report)) {
            eprintln!("miop-bench: cannot write {}: {e}", path.display());
            code = 1;
        }
    }
    if let Some(s) = &script {
        if let Err(e) = s.done(&report.summary, &o.total) {
            eprintln!("miop-bench: script done(): {e}");
            code = 1;
        }
    }
    if report.summary.counters.binds == 0 {
        eprintln!("miop-bench: no session could be bound (see the error counts above)");
        code = 1;
    }
    code
}

/// One plain TCP connect to every target, so that an unreachable server is
/// one clear line instead of a run full of connect errors; over TLS or
/// WebSocket, the first target's handshakes too, so that an untrusted
/// certificate or a wrong WebSocket path is one clear line as well.
fn preflight(plan: &Plan) -> Result<(), String> {
    let limit = plan.timeout.min(Duration::from_secs(5));
    let mut seen = std::collections::HashSet::new();
    for t in &plan.targets {
        if !seen.insert(*t) {
            continue;
        }
        std::net::TcpStream::connect_timeout(t, limit)
            .map_err(|e| format!("cannot connect to {t}: {e}"))?;
    }
    let (Some(connector), Some(first)) = (&plan.connector, plan.targets.first()) else {
        return Ok(());
    };
    if connector.is_plain() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect(first))
            .await
            .map_err(|_| format!("cannot connect to {first}: no answer within {limit:?}"))?
            .map_err(|e| format!("cannot connect to {first}: {e}"))?;
        let mut stream = tokio::time::timeout(limit, connector.handshake(tcp))
            .await
            .map_err(|_| {
                format!(
                    "{first}: no {} handshake within {limit:?}",
                    connector.scheme()
                )
            })?
            .map_err(|e| e.to_string())?;
        // Leave politely (close_notify, the WebSocket close).
        let _ = tokio::time::timeout(limit, tokio::io::AsyncWriteExt::shutdown(&mut stream)).await;
        Ok(())
    })
}

struct Outcome {
    timeline: Vec<TimelinePoint>,
    steps: Vec<StepSummary>,
    link_limit: Option<u64>,
    interrupted: Option<String>,
    elapsed: f64,
    push: Arc<super::pusher::PushStats>,
    counters: Counters,
    total: Latencies,
    peak: u64,
    server_memory: Option<ServerMemory>,
    ramp_s: Option<f64>,
}

/// State of the concurrency scenario.
enum Step {
    Ramp {
        since: Instant,
        best: u64,
        best_at: Instant,
        /// The ramp's latencies: the binds that reach the step.
        hist: Box<Latencies>,
    },
    Hold {
        /// How long the ramp to this step took, and its latencies.
        ramp_s: f64,
        ramp_latency: BTreeMap<String, Percentiles>,
        since: Instant,
        min: u64,
        hist: Box<Latencies>,
        errors0: u64,
        timeouts0: u64,
    },
}

async fn drive(
    plan: Arc<Plan>,
    raw: &[String],
    procs: usize,
    threads_per_proc: usize,
    progress: Duration,
    server_pids: &[u32],
) -> Result<Outcome, String> {
    let rss_before = if server_pids.is_empty() {
        None
    } else {
        Some(server_memory::rss(server_pids)?)
    };
    // The last second's RSS and connections (sampled while the run goes on,
    // before any connection closes).
    let mut rss_end = None;
    let first_target = match plan.scenario {
        Scenario::Concurrency => plan.steps[0],
        _ => plan.connections,
    };
    let duration_text = plan
        .duration
        .map_or("open-ended".into(), |d| fmt_duration_s(d.as_secs_f64()));
    println!(
        "Running {duration_text} {} test @ {}",
        plan.scenario.name(),
        plan.url
    );
    println!(
        "  {} threads and {} connections over {} process{} to {} target{}",
        threads_per_proc * procs,
        plan.connections,
        procs,
        if procs == 1 { "" } else { "es" },
        plan.targets.len(),
        if plan.targets.len() == 1 { "" } else { "s" }
    );
    let mut fleet = if procs == 1 {
        Fleet::Local(LocalFleet::start(
            plan.clone(),
            threads_per_proc,
            0,
            1,
            first_target,
        ))
    } else {
        let mut f = ProcFleet::start(raw, procs)?;
        f.set_target(first_target);
        Fleet::Procs(f)
    };
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut prev = Counters::default();
    let mut prev_t = 0.0;
    let mut last_progress = 0.0;
    let mut timeline = Vec::new();
    let mut steps = Vec::new();
    let mut step_idx = 0usize;
    let mut step = Step::Ramp {
        since: start,
        best: 0,
        best_at: start,
        hist: Box::default(),
    };
    let mut link_limit = None;
    let mut interrupted = None;
    let mut peak = 0;
    // Push load, once every connection is bound.
    let push_go = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let push_stats = Arc::new(super::pusher::PushStats::default());
    let (push_stop, push_stop_rx) = tokio::sync::watch::channel(false);
    let mut pusher = None;
    if let Some(push) = plan.push.clone() {
        pusher = Some(match &plan.url {
            BenchUrl::Miop(_) => tokio::spawn(super::pusher::run(
                plan.clone(),
                push,
                push_go.clone(),
                push_stats.clone(),
                push_stop_rx,
            )),
            BenchUrl::Mqtt(m) => tokio::spawn(super::mqtt::publisher(
                plan.clone(),
                m.clone(),
                push,
                push_go.clone(),
                push_stats.clone(),
                push_stop_rx,
            )),
        });
    }
    // The ramp's end, to 10 ms where the fleet is in this process.
    let mut ramp_s: Option<f64> = None;
    let mut ramp_poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ramp_poll.tick(), if ramp_s.is_none() => {
                if fleet.connected_now().is_some_and(|n| n >= plan.connections) {
                    ramp_s = Some(start.elapsed().as_secs_f64());
                }
                continue;
            }
            _ = tokio::signal::ctrl_c() => { interrupted = Some("interrupted (SIGINT)".to_string()); }
            _ = sigterm.recv() => { interrupted = Some("terminated (SIGTERM)".to_string()); }
        }
        let now = Instant::now();
        let t = now.duration_since(start).as_secs_f64();
        let snap = fleet.snapshot();
        let c = snap.counters;
        let dt = (t - prev_t).max(1e-3);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        peak = peak.max(c.connected);
        if ramp_s.is_none() && c.connected >= plan.connections {
            ramp_s = Some(t);
        }
        if rss_before.is_some() {
            rss_end = server_memory::rss(server_pids)
                .ok()
                .map(|r| (r, c.connected));
        }
        if c.connected >= plan.connections {
            push_go.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let point = TimelinePoint {
            t,
            connected: c.connected,
            connects_per_s: rate(c.connects, prev.connects),
            binds_per_s: rate(c.binds, prev.binds),
            pings_per_s: rate(c.pongs, prev.pongs),
            pushes_per_s: rate(c.pushes, prev.pushes),
            errors: c.errors(),
            timeouts: c.timeouts,
            latency: percentiles_by_name(&snap.interval),
            counters: c,
        };
        if progress > Duration::ZERO && t - last_progress >= progress.as_secs_f64() - 0.05 {
            last_progress = t;
            let p99 = |m: Metric| point.latency.get(m.name()).copied().unwrap_or_default();
            let ping = p99(Metric::Ping);
            println!(
                "{:>7.1}s  connected {:>8} ({:+.0}/s)  binds/s {:>8.0}  pings/s {:>8.0}  errors {}  timeouts {}{}",
                t,
                c.connected,
                (c.connected as f64 - prev.connected as f64) / dt,
                point.binds_per_s,
                point.pings_per_s,
                c.errors(),
                c.timeouts,
                if ping.count > 0 { format!("  ping p99 {}", fmt_micros(ping.p99 as f64)) } else { String::new() }
            );
        }
        let attempts =
            (c.connects + c.connect_errors).saturating_sub(prev.connects + prev.connect_errors);
        let new_errors = c.errors().saturating_sub(prev.errors());
        timeline.push(point);
        prev = c;
        prev_t = t;

        if interrupted.is_some() {
            break;
        }
        if let Some(e) = fleet.failure() {
            interrupted = Some(e);
            break;
        }
        if plan
            .duration
            .is_some_and(|d| now.duration_since(start) >= d)
        {
            break;
        }
        match plan.scenario {
            Scenario::LinkLimit => {
                if new_errors > 0
                    && new_errors as f64 > plan.max_error_rate * attempts.max(1) as f64
                {
                    link_limit = Some(c.connected);
                    break;
                }
                if c.connected >= plan.connections {
                    break;
                }
            }
            Scenario::Concurrency => {
                let target = plan.steps[step_idx];
                match &mut step {
                    Step::Ramp {
                        since,
                        best,
                        best_at,
                        hist: ramp_hist,
                    } => {
                        ramp_hist.add(&snap.interval);
                        if c.connected > *best {
                            *best = c.connected;
                            *best_at = now;
                        }
                        // Held once reached, or when the ramp stalls for 10 s
                        // (the step then reports what it could hold).
                        let stalled = now.duration_since(*best_at) >= Duration::from_secs(10)
                            && now.duration_since(*since) >= Duration::from_secs(10);
                        if c.connected >= target || stalled {
                            step = Step::Hold {
                                ramp_s: now.duration_since(*since).as_secs_f64(),
                                ramp_latency: percentiles_by_name(ramp_hist),
                                since: now,
                                min: c.connected,
                                hist: Box::default(),
                                errors0: c.errors(),
                                timeouts0: c.timeouts,
                            };
                        }
                    }
                    Step::Hold {
                        ramp_s,
                        ramp_latency,
                        since,
                        min,
                        hist,
                        errors0,
                        timeouts0,
                    } => {
                        *min = (*min).min(c.connected);
                        hist.add(&snap.interval);
                        let held = now.duration_since(*since);
                        if held >= plan.step_duration {
                            steps.push(StepSummary {
                                target,
                                ramp_s: *ramp_s,
                                ramp_latency: std::mem::take(ramp_latency),
                                hold_started_s: since.duration_since(start).as_secs_f64(),
                                connected_min: *min,
                                held_s: held.as_secs_f64(),
                                latency: percentiles_by_name(hist),
                                errors: c.errors() - *errors0,
                                timeouts: c.timeouts - *timeouts0,
                            });
                            step_idx += 1;
                            if step_idx == plan.steps.len() {
                                break;
                            }
                            fleet.set_target(plan.steps[step_idx]);
                            step = Step::Ramp {
                                since: now,
                                best: c.connected,
                                best_at: now,
                                hist: Box::default(),
                            };
                        }
                    }
                }
            }
            Scenario::Stability | Scenario::Churn => {}
        }
    }
    // Stop pushing, then give pushes already accepted by the gateway a moment
    // (at most 2 s) to reach the connections before they close.
    let _ = push_stop.send(true);
    if let Some(p) = pusher {
        // Its request in flight completes (and is counted) first.
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    let settle_until = Instant::now() + Duration::from_secs(2);
    while plan.push.is_some() && Instant::now() < settle_until {
        let recipients = push_stats
            .recipients
            .load(std::sync::atomic::Ordering::Relaxed);
        if fleet.snapshot().counters.pushes >= recipients {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (counters, total) = tokio::task::spawn_blocking(move || fleet.finish())
        .await
        .map_err(|e| e.to_string())?;
    let _ = push_stop.send(true);
    Ok(Outcome {
        timeline,
        steps,
        link_limit,
        interrupted,
        elapsed,
        push: push_stats,
        counters,
        total,
        peak,
        ramp_s,
        server_memory: rss_before
            .zip(rss_end)
            .map(|(before, (end, n))| ServerMemory::new(before, end, n)),
    })
}
