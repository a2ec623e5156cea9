//! `miop-bench mqtt://...` against a real Mosquitto (a private one per test,
//! on a free loopback port): the Miop workload (connect, bind, heartbeats,
//! one fan-out) measured on an MQTT 3.1.1 broker, with the same report.
//! Needs the `mosquitto` package (its `mosquitto` and `mosquitto_passwd`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::wait_until;
use miop::bench::mqtt::packet::Incoming;
use miop::bench::mqtt::MqttConn;
use miop::bench::report::Report;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_miop-bench"))
        .args(args)
        .output()
        .expect("run miop-bench")
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "miop-bench-mqtt-test-{}-{name}.json",
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
    let r = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    r
}

/// Clients the broker counted as connected at its last `$SYS` update (every
/// `sys_interval`, retained), asked over a probe connection of our own (which
/// the count may or may not include yet).
fn broker_clients(m: &Mosquitto) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", m.port))
            .await
            .unwrap();
        let mut probe = MqttConn::new(stream);
        probe.connect("probe", 0, None).await.unwrap();
        probe
            .subscribe(
                1,
                "$SYS/broker/clients/connected",
                miop::bench::mqtt::packet::QoS::AtMostOnce,
            )
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), probe.recv())
            .await
            .expect("no $SYS message within 10 s");
        let Ok(Some(Incoming::Publish { payload, .. })) = next else {
            panic!("expected a $SYS PUBLISH, got {next:?}")
        };
        let _ = probe.disconnect().await;
        std::str::from_utf8(&payload)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    })
}

#[test]
fn mqtt_run_connects_pings_and_fans_out_to_every_subscriber() {
    let broker = Mosquitto::start();
    let json = json_path("fanout");
    let url = format!("mqtt://127.0.0.1:{}/", broker.port);
    let pid = broker.pid().to_string();
    let out = bench(&[
        &url,
        "-t",
        "2",
        "-c",
        "200",
        "-d",
        "3s",
        "--ping-interval",
        "200ms",
        "--push-rate",
        "1/s",
        "--push-count",
        "1",
        "--qos",
        "1",
        "--no-reconnect",
        "--latency",
        "--server-pid",
        &pid,
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let s = &r.summary;
    let c = &s.counters;
    assert_eq!(s.url, url);
    // Every client connected (CONNACK) and subscribed (SUBACK), no errors.
    assert_eq!((c.connects, c.binds), (200, 200), "{c:?}");
    assert_eq!(c.errors(), 0, "{c:?}");
    assert_eq!(c.server_closes, 0, "{c:?}");
    assert_eq!(s.peak_connected, 200);
    assert_eq!(s.latency["connect"].count, 200);
    assert_eq!(s.latency["bind"].count, 200);
    // Heartbeats were PINGREQ → PINGRESP round trips, each one timed.
    assert!(c.pongs > 0, "{c:?}");
    assert_eq!(s.latency["ping"].count, c.pongs);
    // One PUBLISH, PUBACKed by the broker, reached all 200 subscribers.
    assert_eq!((s.push_requests, s.push_errors), (1, 0), "{s:?}");
    assert_eq!(s.push_recipients, 200);
    assert_eq!(c.pushes, 200, "{c:?}");
    assert_eq!(s.latency["push"].count, 200);
    assert!(s.ramp_s.is_some(), "{s:?}");
    let m = s.server_memory.expect("--server-pid gives server memory");
    assert_eq!(m.connections, 200, "{m:?}");
    assert!(m.rss_before_bytes > 0, "{m:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Fan-out: 200 of 200 deliveries"), "{text}");
    assert!(text.contains("Latency Distribution (push)"), "{text}");
    assert!(
        text.contains("Socket errors: connect 0, read 0, write 0, timeout 0"),
        "{text}"
    );
    // Every client (and the publisher) sent DISCONNECT and closed.
    wait_until(
        Duration::from_secs(20),
        "the broker sees no benchmark client",
        || broker_clients(&broker) <= 1,
    );
}

#[test]
fn mqtt_credentials_are_sent_and_a_refusal_is_a_bind_error() {
    let broker = Mosquitto::with_login("bench", "s3cret");
    // Right credentials, QoS 0: the fan-out still reaches everyone.
    let json = json_path("login");
    let out = bench(&[
        &format!("mqtt://bench:s3cret@127.0.0.1:{}/", broker.port),
        "-t",
        "1",
        "-c",
        "50",
        "-d",
        "3s",
        "--ping-interval",
        "500ms",
        "--push-rate",
        "1/s",
        "--push-count",
        "1",
        "--qos",
        "0",
        "--push-to",
        "topic:bench/t",
        "--client-id",
        "login",
        "--no-reconnect",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = report(&out, &json);
    let s = &r.summary;
    assert_eq!(
        s.url,
        format!("mqtt://bench:***@127.0.0.1:{}/", broker.port)
    );
    assert_eq!(s.counters.binds, 50, "{s:?}");
    assert_eq!(s.counters.errors(), 0, "{s:?}");
    assert_eq!((s.push_requests, s.counters.pushes), (1, 50), "{s:?}");

    // A wrong password: CONNACK refuses every client, counted as bind errors,
    // and the run fails with one clear line.
    let json = json_path("refused");
    let out = bench(&[
        &format!("mqtt://bench:wrong@127.0.0.1:{}/", broker.port),
        "-t",
        "1",
        "-c",
        "20",
        "-d",
        "2s",
        "--no-reconnect",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let c = r.summary.counters;
    assert_eq!((c.connects, c.binds, c.bind_errors), (20, 0, 20), "{c:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no session could be bound"), "{stderr}");
}
