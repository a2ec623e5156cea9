//! Presence throughput and convergence with Redis.
//!
//! 1. Binds N sessions (default 19,000) at once to a release miopd using a
//!    private redis-server, and measures how long Redis takes to hold them all
//!    (presence changes written per second).
//! 2. Kills Redis for 30 s (OUTAGE_SECS) with the N sessions bound, starts an
//!    empty Redis on the same port, and measures the time until
//!    /v1/consistency reports Redis equal to memory again.
//!
//! Run: `cargo bench --bench presence` (needs redis-server and redis-cli).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use miop::client::fleet::{bind_fleet, FleetSpec};

mod common;
use common::{free_port, get, metric, Killed};

fn redis(port: u16) -> Killed {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let start = Instant::now();
    while Command::new("redis-cli")
        .args(["-p", &port.to_string(), "PING"])
        .output()
        .map(|o| o.stdout != b"PONG\n")
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Killed(child)
}

fn converged(admin: SocketAddr, n: usize) -> bool {
    let Some(body) = get(admin, "/v1/consistency") else {
        return false;
    };
    let Ok(c) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    c["missing"] == 0
        && c["stale"] == 0
        && c["mismatched"] == 0
        && c["pending"] == 0
        && c["redis_entries"] == n as u64
        && c["local_sessions"] == n as u64
}

/// Polls until converged; the time it took (10 ms resolution).
async fn time_to_converge(admin: SocketAddr, n: usize, since: Instant) -> Duration {
    loop {
        if converged(admin, n) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(300),
            "did not converge"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() {
    let n: usize = std::env::var("PRESENCE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(19_000);
    let outage: u64 = std::env::var("OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let redis_port = free_port();
    let mut r = redis(redis_port);
    let (port, admin_port) = (free_port(), free_port());
    let gw = Killed(
        Command::new(env!("CARGO_BIN_EXE_miopd"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin",
                &format!("127.0.0.1:{admin_port}"),
            ])
            .args(["--app-key", "pk", "--cores", "2", "--heartbeat", "600s"])
            .args([
                "--redis",
                &format!("redis://127.0.0.1:{redis_port}"),
                "--node-id",
                "bench",
                "--admin-token",
                common::ADMIN_TOKEN,
            ])
            .env("MIOP_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("miopd"),
    );
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let start = Instant::now();
        while metric(admin, "miop_redis_up") != Some(1.0) || !converged(admin, 0) {
            assert!(start.elapsed() < Duration::from_secs(20), "miopd did not connect to Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spec = FleetSpec {
            target,
            sources: FleetSpec::loopback_sources(4),
            prefix: "p".into(),
            first: 0,
            count: n,
            app_key: "pk".into(),
            concurrency: 256,
        };
        let t0 = Instant::now();
        let clients = bind_fleet(&spec).await.unwrap_or_else(|(d, e)| panic!("{d}: {e}"));
        let bound = t0.elapsed();
        let synced = time_to_converge(admin, n, t0).await;
        let writes = metric(admin, "miop_presence_writes_total{result=\"ok\"}").unwrap_or(0.0);
        println!(
            "bind burst: sessions={n} bound_in={:.2}s redis_holds_all_after={:.2}s presence_writes={writes:.0} => {:.0} changes/s written (end to end, bind start to Redis equal to memory)",
            bound.as_secs_f64(),
            synced.as_secs_f64(),
            n as f64 / synced.as_secs_f64()
        );
        println!(
            "batches: {}",
            get(admin, "/metrics")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("miop_presence_batch_size_count") || l.starts_with("miop_presence_batch_size_sum"))
                .collect::<Vec<_>>()
                .join("  ")
        );

        // The outage: Redis gone for OUTAGE_SECS, then back empty.
        drop(r);
        let down_at = Instant::now();
        while metric(admin, "miop_redis_up") != Some(0.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining = Duration::from_secs(outage).saturating_sub(down_at.elapsed());
        tokio::time::sleep(remaining).await;
        let sessions_during = metric(admin, "miop_sessions").unwrap_or(0.0);
        r = redis(redis_port);
        let back = Instant::now();
        let reconverged = time_to_converge(admin, n, back).await;
        println!(
            "outage: redis down {:.1}s with {n} sessions (sessions during outage: {sessions_during:.0}); after restart Redis equal to memory in {:.2}s; reconnects={} reconciliations={}",
            (back - down_at).as_secs_f64(),
            reconverged.as_secs_f64(),
            metric(admin, "miop_redis_reconnects_total").unwrap_or(0.0),
            metric(admin, "miop_presence_reconciliations_total").unwrap_or(0.0),
        );
        assert_eq!(metric(admin, "miop_sessions"), Some(n as f64), "no session was lost");
        drop(clients);
        drop(r);
        drop(gw);
    });
}
