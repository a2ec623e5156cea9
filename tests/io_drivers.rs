//! The I/O drivers as an operator meets them: io_uring where the kernel
//! allows it, epoll where a container's seccomp profile denies it (`--io
//! auto`), the driver in use visible in /healthz and /metrics, and a core
//! that dies taking the process down instead of hiding behind a healthy
//! /healthz.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use miop::protocol::Credential;

const T: Duration = Duration::from_secs(10);

fn healthz_io(gw: &Miopd) -> String {
    let (status, body) = gw.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["io"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_auto_runs_on_epoll_where_io_uring_is_denied() {
    let gw = Miopd::start_with(Options {
        args: ["--io", "auto", "--cores", "2", "--push-token", "t"]
            .map(String::from)
            .to_vec(),
        deny_io_uring: true,
        ..Options::default()
    });
    assert_eq!(healthz_io(&gw), "epoll");
    let build = gw
        .get("/metrics")
        .1
        .lines()
        .find(|l| l.starts_with("miop_build_info{"))
        .map(str::to_owned)
        .expect("miop_build_info");
    assert!(
        build.contains("io=\"epoll\"") && build.ends_with(" 1"),
        "{build}"
    );
    // One warning, saying why and how to enable io_uring.
    let log = gw.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("io_uring is not available"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("Operation not permitted") && warnings[0].contains("seccomp"),
        "{}",
        warnings[0]
    );
    // It serves: binds, pings, pushes.
    let mut a = gw.bound("denied-a").await;
    let mut b = gw.bound("denied-b").await;
    a.ping().await.unwrap();
    let (status, body) = gw.post(
        "/v1/push",
        r#"{"to": {"device": "denied-b"}, "payload": "over epoll"}"#,
        Some("t"),
    );
    assert_eq!(status, 200, "{body}");
    let push = tokio::time::timeout(T, b.next_push())
        .await
        .expect("push within 10 s")
        .unwrap()
        .expect("a push");
    assert_eq!(&push.payload[..], b"over epoll");
    let mut again = gw.client().await;
    again
        .bind("denied-c", Credential::AppKey(KEY.into()), vec![])
        .await
        .unwrap();
}

#[test]
fn io_uring_forced_where_it_is_denied_is_an_error() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_miopd"));
    cmd.args([
        "--io",
        "uring",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--app-key",
        KEY,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    common::seccomp::deny_io_uring(&mut cmd);
    let out = cmd.output().expect("run miopd");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--io uring: cannot set up io_uring")
            && stderr.contains("Operation not permitted"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_in_use_is_reported() {
    // CI runs the suite with MIOP_IO=uring and with MIOP_IO=epoll: whichever
    // was asked for is the one in use (auto picks io_uring on this kernel).
    let gw = Miopd::start(&[]);
    let expected = match std::env::var("MIOP_IO").as_deref() {
        Ok("epoll") => "epoll",
        _ => "uring",
    };
    assert_eq!(healthz_io(&gw), expected);
    let series = format!(
        "miop_build_info{{version=\"{}\",io=\"{expected}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(gw.metric(&series), Some(1.0), "{series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_that_panics_takes_the_process_down() {
    let mut gw = Miopd::start_with(Options {
        args: ["--cores", "2"].map(String::from).to_vec(),
        env: vec![("MIOP_FAILPOINT_CORE_PANIC".into(), "1".into())],
        ..Options::default()
    });
    assert_eq!(gw.get("/healthz").0, 200);
    // SO_REUSEPORT spreads connections over the cores by address hash: keep
    // connecting until one lands on core 1 and the process goes.
    let mut status = None;
    for _ in 0..200 {
        let _ = tokio::net::TcpStream::connect(gw.listen).await;
        status = gw.wait_exit(Duration::from_millis(50));
        if status.is_some() {
            break;
        }
    }
    let status = status.expect("miopd exited after its core panicked");
    assert_eq!(status.code(), Some(70), "{status:?}");
    let log = gw.log_text();
    assert!(
        log.contains("I/O core panicked") && log.contains("I/O core 1 panicked"),
        "{log}"
    );
}
