//! 10,000 concurrent sessions bind and ping. The gateway runs in its own
//! process (one process may hold only ~20,000 fds on the test machines), and
//! this test holds the 10,000 client sockets in its own binary so that no
//! other test shares its fd budget.

mod common;

use std::time::Duration;

use common::*;
use miop::client::fleet::{bind_fleet, FleetSpec};

const SESSIONS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_bind_and_ping() {
    let gw = Miopd::start(&["--cores", "2", "--heartbeat", "60s"]);
    let spec = FleetSpec {
        target: gw.listen,
        sources: FleetSpec::loopback_sources(4),
        prefix: "scale".into(),
        first: 0,
        count: SESSIONS,
        app_key: KEY.into(),
        concurrency: 512,
    };
    let mut clients = bind_fleet(&spec)
        .await
        .unwrap_or_else(|(dev, e)| panic!("{dev} failed to bind: {e}"));
    assert_eq!(clients.len(), SESSIONS);
    assert_eq!(gw.metric("miop_sessions"), Some(SESSIONS as f64));
    assert_eq!(
        gw.metric("miop_binds_total{result=\"ok\"}"),
        Some(SESSIONS as f64)
    );
    let (_, health) = gw.get("/healthz");
    assert!(
        health.contains(&format!("\"sessions\":{SESSIONS}")),
        "{health}"
    );

    // Every session pings, all at once, from 2 worker threads.
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let mine: Vec<_> = clients.drain(..(SESSIONS / 8).min(clients.len())).collect();
        tasks.push(tokio::spawn(async move {
            let mut back = Vec::with_capacity(mine.len());
            for mut c in mine {
                tokio::time::timeout(Duration::from_secs(30), c.ping())
                    .await
                    .unwrap_or_else(|_| panic!("ping timed out in chunk {chunk}"))
                    .unwrap_or_else(|e| panic!("ping failed in chunk {chunk}: {e}"));
                back.push(c);
            }
            back
        }));
    }
    let mut pinged = Vec::new();
    for t in tasks {
        pinged.extend(t.await.unwrap());
    }
    assert_eq!(pinged.len(), SESSIONS);
    // Sessions are spread over both cores (the core is the top 16 bits of the
    // session id in BindAck), and a sample is inspectable.
    let cores: std::collections::HashSet<u64> = pinged
        .iter()
        .map(|c| c.bind_ack().unwrap().session_id >> 48)
        .collect();
    assert_eq!(cores.len(), 2, "sessions should land on both cores");
    for i in (0..SESSIONS).step_by(997) {
        let (status, body) = gw.get(&format!("/v1/sessions/scale-{i}"));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["frames_in"], 2, "bind + ping for scale-{i}");
    }
    drop(pinged);
    wait_until(
        Duration::from_secs(30),
        "all sessions offline after clients closed",
        || gw.metric("miop_sessions") == Some(0.0) && gw.metric("miop_connections") == Some(0.0),
    );
}
