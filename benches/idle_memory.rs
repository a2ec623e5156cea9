//! User-space memory per idle bound session.
//!
//! Starts a release miopd, binds N sessions from this process (default
//! 19,000: the fd limit here is 20,000 per process), waits until the gateway
//! reports them all, and divides the gateway's RSS growth by N. In the same
//! run it does the same against a fresh Mosquitto broker with N idle MQTT
//! 3.1.1 connections (if `mosquitto` is installed), so the ratio compares two
//! servers measured on the same machine at the same time.
//!
//! Run: `cargo bench --bench idle_memory` (env IDLE_SESSIONS=N to change N;
//! MIOP_IO=uring,epoll (the default) lists the drivers to measure, each in
//! turn in the same run; MIOPD_BIN=path measures another miopd build, e.g. an
//! older one for a before/after figure, with MIOP_IO=auto).

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use miop::client::fleet::{bind_fleet, connect_from, FleetSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{free_port, metric, mqtt_connect, rss_bytes, Killed};

async fn settle(pid: u32) -> u64 {
    // RSS right after a burst still moves a little; take it once stable.
    let mut last = rss_bytes(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_bytes(pid);
        if now.abs_diff(last) < 64 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

async fn miopd(n: usize, io: &str) -> (u64, u64, f64) {
    let port = free_port();
    let admin_port = free_port();
    let bin = std::env::var("MIOPD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_miopd").into());
    let child = Command::new(&bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .args(["--app-key", "pk", "--cores", "2", "--heartbeat", "600s"])
        .env("MIOP_LOG", "warn")
        .env("MIOP_IO", io)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn miopd");
    let gw = Killed(child);
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let start = Instant::now();
    while metric(admin, "miop_sessions").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "miopd did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = settle(gw.0.id()).await;
    let spec = FleetSpec {
        target,
        sources: FleetSpec::loopback_sources(4),
        prefix: "idle".into(),
        first: 0,
        count: n,
        app_key: "pk".into(),
        concurrency: 256,
    };
    let t = Instant::now();
    let clients = bind_fleet(&spec)
        .await
        .unwrap_or_else(|(d, e)| panic!("{d}: {e}"));
    let bind_secs = t.elapsed().as_secs_f64();
    while metric(admin, "miop_sessions") != Some(n as f64) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = settle(gw.0.id()).await;
    drop(clients);
    (before, after, bind_secs)
}

async fn mosquitto(n: usize) -> Option<(u64, u64)> {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    let conf = std::env::temp_dir().join(format!("miop-bench-mosquitto-{port}.conf"));
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\nlog_type error\n")).ok()?;
    let broker = Killed(
        Command::new(bin)
            .args(["-c", conf.to_str()?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(target).await.is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // probe connection closes
    let before = settle(broker.0.id()).await;
    let sources = FleetSpec::loopback_sources(4);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in 0..n {
        let src: IpAddr = sources[i % sources.len()];
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            let mut s = connect_from(src, target).await.expect("mqtt connect");
            s.write_all(&mqtt_connect(&format!("idle-{i}")))
                .await
                .unwrap();
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await.expect("CONNACK");
            assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK refused");
            s
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    let after = settle(broker.0.id()).await;
    drop(conns);
    let _ = std::fs::remove_file(conf);
    Some((before, after))
}

fn main() {
    let n: usize = std::env::var("IDLE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(19_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Each driver in turn (MIOP_IO lists them, default both), then the peer.
    let drivers = std::env::var("MIOP_IO").unwrap_or_else(|_| "uring,epoll".into());
    rt.block_on(async {
        println!(
            "binary={}",
            std::env::var("MIOPD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_miopd").into())
        );
        let mut results = Vec::new();
        for io in drivers.split(',') {
            let (before, after, bind_secs) = miopd(n, io).await;
            let per = (after - before) as f64 / n as f64;
            println!("miopd      io={io} sessions={n} rss_before={before} rss_after={after} growth_per_session={per:.0} B  (bound in {bind_secs:.2}s, {:.0} binds/s)", n as f64 / bind_secs);
            results.push((io.to_owned(), per));
            // Let the client sockets leave the fd table before the next fleet.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match mosquitto(n).await {
            Some((b, a)) => {
                let peer = (a - b) as f64 / n as f64;
                println!("mosquitto  connections={n} rss_before={b} rss_after={a} growth_per_connection={peer:.0} B");
                for (io, per) in results {
                    println!("ratio miopd({io})/mosquitto = {:.2}", per / peer);
                }
            }
            None => println!("mosquitto  not installed or did not start: no peer figure in this run"),
        }
    });
}
