//! miop-bench against a real miopd on loopback: counts, percentiles, true
//! timeouts, churn, worker-process merging, scripts, and bad input.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use miop::bench::report::Report;
use nix::sys::signal::Signal;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_miop-bench"))
        .args(args)
        .output()
        .expect("run miop-bench")
}

fn url(gw: &Miopd, prefix: &str) -> String {
    format!("miop://{prefix}:{KEY}@{}/", gw.listen)
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "miop-bench-test-{}-{name}.json",
        std::process::id()
    ))
}

fn report(out: &Output, path: &PathBuf) -> Report {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "miop-bench failed: {stdout}\n{stderr}"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn counts_and_percentiles_match_the_run_and_the_gateway() {
    let gw = Miopd::start(&["--cores", "2"]);
    let json = json_path("counts");
    let out = bench(&[
        &url(&gw, "known"),
        "-t",
        "2",
        "-c",
        "300",
        "-d",
        "3s",
        "--ping-interval",
        "100ms",
        "--latency",
        "--no-reconnect",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let s = &r.summary;
    let c = &s.counters;
    assert_eq!((c.connects, c.binds), (300, 300));
    assert_eq!(c.errors(), 0, "{c:?}");
    assert_eq!(s.peak_connected, 300);
    // Every histogram sample is one event counted.
    assert_eq!(s.latency["bind"].count, 300);
    assert_eq!(s.latency["connect"].count, 300);
    assert_eq!(s.latency["ping"].count, c.pongs);
    // 300 sessions pinging every 100 ms for ~3 s (first pings spread over one interval).
    assert!(c.pongs > 300 * 20, "{c:?}");
    let p = s.latency["ping"];
    assert!(p.min <= p.p50 && p.p50 <= p.p99 && p.p99 <= p.max, "{p:?}");
    // The gateway saw the same binds, and each session's pings.
    assert_eq!(gw.metric("miop_binds_total{result=\"ok\"}"), Some(300.0));
    assert!(
        r.timeline.len() >= 3 && r.timeline.len() <= 4,
        "{}",
        r.timeline.len()
    );
    assert_eq!(r.timeline.last().unwrap().counters.binds, 300);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Latency Distribution (ping)"), "{text}");
    assert!(
        text.contains("Socket errors: connect 0, read 0, write 0, timeout 0"),
        "{text}"
    );
    for q in ["50%", "75%", "90%", "99%", "99.9%", "99.99%", "100%"] {
        assert!(text.contains(&format!("  {q:>7}")), "missing {q} in {text}");
    }
    wait_until(
        Duration::from_secs(10),
        "sessions closed after the run",
        || gw.metric("miop_sessions") == Some(0.0),
    );
}

#[test]
fn a_stopped_server_counts_true_timeouts_and_connections_come_back() {
    let gw = Miopd::start(&["--cores", "1"]);
    let json = json_path("sigstop");
    let child = Command::new(env!("CARGO_BIN_EXE_miop-bench"))
        .args([
            &url(&gw, "stop"),
            "-t",
            "1",
            "-c",
            "50",
            "-d",
            "9s",
            "--ping-interval",
            "200ms",
            "--timeout",
            "1s",
        ])
        .args(["--json", json.to_str().unwrap(), "--progress", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "50 sessions bound", || {
        gw.metric("miop_sessions") == Some(50.0)
    });
    gw.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(2)); // the outage itself: longer than --timeout
    gw.signal(Signal::SIGCONT);
    let out = child.wait_with_output().unwrap();
    let r = report(&out, &json);
    let c = r.summary.counters;
    // Every session had a ping (or a re-bind) outstanding that got no reply.
    assert!(c.timeouts >= 50, "{c:?}");
    assert!(c.reconnects >= 50, "{c:?}");
    // After SIGCONT the fleet was re-established.
    assert_eq!(
        r.timeline.last().unwrap().connected,
        50,
        "{:?}",
        r.timeline.last()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("timeout {}", c.timeouts)), "{text}");
}

#[test]
fn churn_takes_sessions_offline_and_brings_them_back() {
    let gw = Miopd::start(&["--cores", "2"]);
    let json = json_path("churn");
    let out = bench(&[
        &url(&gw, "churn"),
        "-t",
        "2",
        "-c",
        "200",
        "-d",
        "4s",
        "--scenario",
        "churn",
        "--churn-rate",
        "40",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let c = r.summary.counters;
    assert!(c.churned >= 60, "{c:?}");
    assert!(c.binds >= 200 + c.churned / 2, "{c:?}");
    assert_eq!(c.errors(), 0, "{c:?}");
    assert_eq!(r.summary.scenario, "churn");
    // The gateway saw the churned sessions leave cleanly (Close from client).
    let closes = gw
        .metric("miop_connections_closed_total{reason=\"normal\"}")
        .unwrap_or(0.0);
    assert!(
        closes >= c.churned as f64,
        "gateway closes {closes} vs churned {}",
        c.churned
    );
}

#[test]
fn worker_processes_merge_into_one_report() {
    let gw = Miopd::start(&["--cores", "2"]);
    let json = json_path("procs");
    let out = bench(&[
        &url(&gw, "procs"),
        "-t",
        "3",
        "-c",
        "600",
        "-d",
        "3s",
        "--procs",
        "3",
        "--ping-interval",
        "250ms",
        "--bind",
        "127.0.0.2-127.0.0.4",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let s = &r.summary;
    assert_eq!(s.procs, 3);
    assert_eq!(s.counters.binds, 600);
    assert_eq!(
        s.latency["bind"].count, 600,
        "histograms from all workers merged"
    );
    assert_eq!(s.latency["ping"].count, s.counters.pongs);
    assert_eq!(s.peak_connected, 600);
    assert_eq!(gw.metric("miop_binds_total{result=\"ok\"}"), Some(600.0));
    // Device numbering is global: procs-0 .. procs-599, each bound once.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("over 3 processes"), "{text}");
}

#[test]
fn concurrency_steps_report_latency_per_step() {
    let gw = Miopd::start(&["--cores", "2"]);
    let json = json_path("steps");
    let out = bench(&[
        &url(&gw, "steps"),
        "-t",
        "2",
        "--scenario",
        "concurrency",
        "--steps",
        "100,300",
        "--step-duration",
        "2s",
        "--ping-interval",
        "100ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    assert_eq!(r.summary.steps.len(), 2);
    assert_eq!(r.summary.steps[0].target, 100);
    assert_eq!(r.summary.steps[0].connected_min, 100);
    assert_eq!(r.summary.steps[1].connected_min, 300);
    assert!(r.summary.steps.iter().all(|s| s.latency["ping"].count > 0));
    assert_eq!(r.summary.counters.binds, 300);
}

#[test]
fn lua_scripts_set_think_time_and_report_at_the_end() {
    let gw = Miopd::start(&[]);
    let dir = std::env::temp_dir().join(format!("miop-bench-lua-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("t.lua");
    std::fs::write(
        &script,
        "local tag = 'none'\nfunction init(args) tag = args[1] end\nfunction delay() return 50 end\n\
         function done(summary, latency)\n  io.write(string.format('DONE %s binds=%d p99=%d\\n', tag, summary.binds, latency:percentile(99)))\nend\n",
    )
    .unwrap();
    let out = bench(&[
        &url(&gw, "lua"),
        "-t",
        "1",
        "-c",
        "20",
        "-d",
        "2s",
        "-s",
        script.to_str().unwrap(),
        "--",
        "tagged",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("DONE"))
        .unwrap_or_else(|| panic!("no done() output in {text}"));
    assert!(line.starts_with("DONE tagged binds=20 p99="), "{line}");
    // delay() of 50 ms: ~20 pings per second per session over ~2 s.
    let pings: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Pings/sec:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        pings > 20.0 * 8.0,
        "pings/s {pings} too low for a 50 ms delay()"
    );
    // The stock delay.lua from scripts/ loads too.
    let stock = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/delay.lua");
    let out = bench(&[
        &url(&gw, "stock"),
        "-t",
        "1",
        "-c",
        "5",
        "-d",
        "1s",
        "-s",
        stock,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_input_is_one_clear_line_and_a_nonzero_exit() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("miop://d:k@127.0.0.1:{closed_port}/");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["miop://d:k@127.0.0.1".into(), "-c".into(), "0".into()],
            "at least 1",
        ),
        (vec!["127.0.0.1:7700".into()], "missing scheme"),
        (vec!["miop://nokey@127.0.0.1:7700/".into()], "missing :KEY"),
        (vec!["miop:/d:k@127.0.0.1:7700/".into()], "missing scheme"),
        (
            vec![
                "miop://d:k@127.0.0.1:7700/".into(),
                "-t".into(),
                "9".into(),
                "-c".into(),
                "3".into(),
            ],
            "at least -t",
        ),
        (
            vec![
                "miop://d:k@127.0.0.1:7700/".into(),
                "-d".into(),
                "soon".into(),
            ],
            "not a duration",
        ),
        (
            vec![
                "miop://d:k@127.0.0.1:7700/".into(),
                "--bind".into(),
                "127.0.0.9-127.0.0.1".into(),
            ],
            "backwards",
        ),
        (
            vec![unreachable, "-d".into(), "1s".into()],
            "cannot connect to",
        ),
    ];
    for (args, expect) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_miop-bench"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
        assert!(lines <= 4, "{args:?}: not one clear line: {stderr}");
    }
}

#[test]
fn link_limit_finds_where_the_gateway_stops_taking_sessions() {
    // A gateway that can hold only ~200 connections (fd limit 256): beyond
    // that it stops accepting (its fd budget) and binds time out.
    let gw = Miopd::start_with(Options {
        args: vec!["--cores".into(), "1".into()],
        fd_limit: Some(256),
        ..Options::default()
    });
    let json = json_path("link");
    let out = bench(&[
        &url(&gw, "link"),
        "-t",
        "1",
        "-c",
        "2000",
        "-d",
        "20s",
        "--timeout",
        "1s",
        "--scenario",
        "link-limit",
        "--connect-rate",
        "500",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let limit = r
        .summary
        .link_limit
        .unwrap_or_else(|| panic!("no link limit found: {:?}", r.summary.counters));
    let held = gw.metric("miop_sessions").unwrap();
    assert!((100..256).contains(&limit), "limit {limit}");
    assert!(
        r.summary.duration_s < 20.0,
        "stopped at the limit, not at -d"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!(
        "Link limit: errors crossed the threshold at {limit} bound sessions"
    )));
    assert!(
        gw.metric("miop_accept_pauses_total").unwrap_or(0.0) > 0.0,
        "held {held}"
    );
}

#[test]
fn ctrl_c_stops_closes_every_connection_and_still_reports() {
    let gw = Miopd::start(&["--cores", "2"]);
    let json = json_path("sigint");
    let child = Command::new(env!("CARGO_BIN_EXE_miop-bench"))
        .args([
            &url(&gw, "int"),
            "-t",
            "2",
            "-c",
            "100",
            "-d",
            "1h",
            "--procs",
            "2",
        ])
        .args(["--json", json.to_str().unwrap(), "--progress", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "100 sessions bound", || {
        gw.metric("miop_sessions") == Some(100.0)
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let r = report(&out, &json);
    assert_eq!(
        r.summary.interrupted.as_deref(),
        Some("interrupted (SIGINT)")
    );
    assert!(r.summary.duration_s < 3600.0);
    assert_eq!(r.summary.counters.binds, 100);
    assert_eq!(
        r.summary.latency["bind"].count, 100,
        "worker histograms still merged"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stopped early: interrupted (SIGINT)"),
        "{text}"
    );
    // Every session said goodbye with a Close frame before the exit.
    wait_until(
        Duration::from_secs(10),
        "gateway sessions back to 0",
        || gw.metric("miop_sessions") == Some(0.0),
    );
    assert_eq!(
        gw.metric("miop_connections_closed_total{reason=\"normal\"}"),
        Some(100.0)
    );
}

#[test]
fn push_mode_drives_the_push_api_and_measures_delivery() {
    let gw = Miopd::start(&["--cores", "2", "--push-token", "tok"]);
    let json = json_path("push");
    let api = format!("http://{}", gw.admin);
    let out = bench(&[
        &url(&gw, "pm"),
        "-t",
        "2",
        "-c",
        "100",
        "-d",
        "3s",
        "--push-rate",
        "5/s",
        "--push-api",
        &api,
        "--push-token",
        "tok",
        "--push-size",
        "200",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let s = &r.summary;
    assert!(s.push_requests >= 2, "{s:?}");
    assert_eq!(s.push_errors, 0);
    // Every broadcast reached all 100 sessions, and every delivery was seen
    // and timed by a connection.
    assert_eq!(s.push_recipients, s.push_requests * 100);
    assert_eq!(s.counters.pushes, s.push_recipients);
    assert_eq!(s.latency["push"].count, s.counters.pushes);
    wait_until(Duration::from_secs(10), "acks measured", || {
        gw.metric("miop_push_ack_latency_seconds_count") == Some(s.push_recipients as f64)
    });
    assert!(String::from_utf8_lossy(&out.stdout).contains("Push API:"));
    // A wrong token is reported, not hidden.
    let out = bench(&[
        &url(&gw, "pm2"),
        "-t",
        "1",
        "-c",
        "5",
        "-d",
        "2s",
        "--push-rate",
        "5/s",
        "--push-api",
        &api,
        "--push-token",
        "bad",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 403"), "{stderr}");
}

#[test]
fn one_counted_broadcast_gives_the_fan_out_and_server_memory() {
    // The miop:// side of the Mosquitto comparison (tests/bench_mqtt.rs):
    // --push-count 1 sends one broadcast, --server-pid reads miopd's RSS.
    let gw = Miopd::start(&["--cores", "1", "--push-token", "tok"]);
    let json = json_path("fanout");
    let api = format!("http://{}", gw.admin);
    let pid = gw.pid().to_string();
    let out = bench(&[
        &url(&gw, "fo"),
        "-t",
        "2",
        "-c",
        "200",
        "-d",
        "3s",
        "--ping-interval",
        "200ms",
        "--push-rate",
        "5/s",
        "--push-count",
        "1",
        "--push-api",
        &api,
        "--push-token",
        "tok",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let s = &r.summary;
    assert_eq!((s.push_requests, s.push_errors), (1, 0), "{s:?}");
    assert_eq!((s.push_recipients, s.counters.pushes), (200, 200), "{s:?}");
    assert_eq!(s.latency["push"].count, 200);
    assert!(s.ramp_s.is_some(), "{s:?}");
    let m = s.server_memory.expect("--server-pid gives server memory");
    assert_eq!(m.connections, 200, "{m:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Fan-out: 200 of 200 deliveries"), "{text}");
    assert!(text.contains("Server memory: RSS"), "{text}");
    assert!(text.contains("Ramp: 200 connections up in"), "{text}");
}
