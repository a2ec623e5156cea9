//! The push API on one node: unicast, multicast, topics and broadcast with
//! acks, bad requests, and slow consumers under pushes.

mod common;

use std::time::Duration;

use common::*;
use miop::client::Client;
use miop::protocol::{Body, Credential, Frame, FLAG_ACK_REQUIRED};
use serde_json::Value;

const TOKEN: &str = "push-secret";
const T: Duration = Duration::from_secs(10);

fn gateway(extra: &[&str]) -> Miopd {
    let mut args = vec!["--cores", "2", "--push-token", TOKEN];
    args.extend_from_slice(extra);
    Miopd::start(&args)
}

fn push(gw: &Miopd, body: &str) -> (u16, Value) {
    push_json(gw, TOKEN, body)
}

/// The next frame must be a Push; returns (message id, payload, ack flag).
async fn expect_push(c: &mut Client) -> (u64, Vec<u8>, bool) {
    let f = next_frame(c, T).await.unwrap().expect("connection closed");
    match f.body {
        Body::Push(p) => (
            p.message_id,
            p.payload.to_vec(),
            f.flags & FLAG_ACK_REQUIRED != 0,
        ),
        other => panic!("expected a Push, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_is_delivered_acked_and_measured() {
    let gw = gateway(&[]);
    let mut c = gw.bound("phone-1").await;
    let (status, r) = push(
        &gw,
        r#"{"to": {"device": "phone-1"}, "payload": "hello", "ttl": 60}"#,
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            r["delivered"].as_u64(),
            r["offline"].as_u64(),
            r["unknown"].as_u64()
        ),
        (Some(1), Some(0), Some(0))
    );
    let (id, payload, ack) = expect_push(&mut c).await;
    assert_eq!(
        (id, payload.as_slice(), ack),
        (r["id"].as_u64().unwrap(), &b"hello"[..], true)
    );
    c.ack(id).await.unwrap();
    wait_until(T, "ack measured", || {
        gw.metric("miop_push_ack_latency_seconds_count") == Some(1.0)
    });
    assert_eq!(gw.metric("miop_push_acks_total"), Some(1.0));
    // Binary payloads and pushes without an ack request.
    let (_, r) = push(
        &gw,
        r#"{"to": {"device": "phone-1"}, "payload_b64": "AAH/", "ack": false}"#,
    );
    let (id, payload, ack) = expect_push(&mut c).await;
    assert_eq!(
        (id, payload.as_slice(), ack),
        (r["id"].as_u64().unwrap(), &[0u8, 1, 255][..], false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_counts_delivered_and_unknown_devices() {
    let gw = gateway(&[]);
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(gw.bound(&format!("m-{i}")).await);
    }
    let (status, r) = push(
        &gw,
        r#"{"to": {"devices": ["m-0", "m-1", "m-2", "nobody"]}, "payload": "hi all"}"#,
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["delivered"].as_u64(), r["unknown"].as_u64()),
        (Some(3), Some(1))
    );
    for c in clients.iter_mut() {
        let (id, payload, _) = expect_push(c).await;
        assert_eq!(
            (id, payload.as_slice()),
            (r["id"].as_u64().unwrap(), &b"hi all"[..])
        );
        c.ack(id).await.unwrap();
    }
    wait_until(T, "three acks", || {
        gw.metric("miop_push_acks_total") == Some(3.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_pushes_reach_only_members() {
    let gw = gateway(&[]);
    let mut members = Vec::new();
    for i in 0..4 {
        let mut c = gw.client().await;
        c.bind(
            &format!("t-{i}"),
            Credential::AppKey(KEY.into()),
            vec!["news".into(), "sport".into()],
        )
        .await
        .unwrap();
        members.push(c);
    }
    let mut outsider = gw.bound("t-out").await;
    let (status, r) = push(&gw, r#"{"to": {"topic": "news"}, "payload": "headline"}"#);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["delivered"], 4);
    for c in members.iter_mut() {
        assert_eq!(expect_push(c).await.1, b"headline");
    }
    // The outsider got nothing: its next frame is the answer to a ping.
    let rtt = outsider.ping().await;
    assert!(rtt.is_ok());
    outsider.send(&Frame::ping(77)).await.unwrap();
    let f = next_frame(&mut outsider, T).await.unwrap().unwrap();
    assert_eq!((f.seq, f.body), (77, Body::Pong));
    // Members that leave leave their topics.
    drop(members.pop());
    wait_until(T, "member gone", || gw.metric("miop_sessions") == Some(4.0));
    let (_, r) = push(&gw, r#"{"to": {"topic": "news"}, "payload": "again"}"#);
    assert_eq!(r["delivered"], 3);
    let (_, r) = push(
        &gw,
        r#"{"to": {"topic": "nobody-listens"}, "payload": "x"}"#,
    );
    assert_eq!(r["delivered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_session_on_every_core() {
    let gw = gateway(&[]);
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(gw.bound(&format!("b-{i}")).await);
    }
    let cores: std::collections::HashSet<u64> = clients
        .iter()
        .map(|c| c.bind_ack().unwrap().session_id >> 48)
        .collect();
    assert_eq!(cores.len(), 2, "sessions on both cores");
    let (status, r) = push(&gw, r#"{"to": "all", "payload": "everyone"}"#);
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["delivered"], 40);
    for c in clients.iter_mut() {
        let (id, payload, _) = expect_push(c).await;
        assert_eq!(
            (id, payload.as_slice()),
            (r["id"].as_u64().unwrap(), &b"everyone"[..])
        );
        c.ack(id).await.unwrap();
    }
    wait_until(T, "40 acks", || {
        gw.metric("miop_push_ack_latency_seconds_count") == Some(40.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_push_requests_get_clear_4xx_errors() {
    let gw = gateway(&[]);
    let _c = gw.bound("known").await;
    let big = format!(r#"{{"to": "all", "payload": "{}"}}"#, "x".repeat(70_000));
    for (body, token, status, needle) in [
        (
            r#"{"to": {"device": "known"}, "payload": "x"}"#,
            None,
            401,
            "missing Authorization",
        ),
        (
            r#"{"to": {"device": "known"}, "payload": "x"}"#,
            Some("wrong"),
            403,
            "wrong push token",
        ),
        ("{not json", Some(TOKEN), 400, "not valid JSON"),
        (
            r#"{"to": {"group": "g"}, "payload": "x"}"#,
            Some(TOKEN),
            400,
            "unknown target",
        ),
        (
            r#"{"to": {"device": "ghost"}, "payload": "x"}"#,
            Some(TOKEN),
            404,
            "not online",
        ),
        (big.as_str(), Some(TOKEN), 413, "exceeds the maximum"),
    ] {
        let (s, text) = gw.post("/v1/push", body, token);
        assert_eq!(s, status, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{text}");
    }
    // Without --push-token the API is off.
    let off = Miopd::start(&[]);
    let (s, text) = off.post(
        "/v1/push",
        r#"{"to": "all", "payload": "x"}"#,
        Some("anything"),
    );
    assert_eq!(s, 403, "{text}");
    assert!(text.contains("disabled"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_cannot_make_pushes_pile_up() {
    let gw = Miopd::start(&[
        "--cores",
        "1",
        "--push-token",
        TOKEN,
        "--outbound-limit",
        "262144",
    ]);
    let _sleeper = sleeper(&gw, "sleeper").await;
    let mut reader = gw.bound("reader").await;
    let payload = "p".repeat(60_000);
    let body = format!(r#"{{"to": {{"device": "sleeper"}}, "payload": "{payload}"}}"#);
    // Far more than the kernel buffers and the outbound limit can hold.
    let mut pushes = 0;
    while gw.metric("miop_connections_closed_total{reason=\"slow_consumer\"}") != Some(1.0) {
        let (status, _) = gw.post("/v1/push", &body, Some(TOKEN));
        assert!(status == 200 || status == 404, "{status}");
        pushes += 1;
        assert!(
            pushes < 2_000,
            "120 MB pushed and the slow consumer was never closed"
        );
    }
    assert_eq!(gw.get("/v1/sessions/sleeper").0, 404);
    // Others are unaffected.
    let (_, r) = push(
        &gw,
        r#"{"to": {"device": "reader"}, "payload": "still here"}"#,
    );
    assert_eq!(r["delivered"], 1);
    assert_eq!(expect_push(&mut reader).await.1, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_a_slow_device_connected_and_bounded() {
    let gw = Miopd::start(&[
        "--cores",
        "1",
        "--push-token",
        TOKEN,
        "--outbound-limit",
        "262144",
        "--slow-consumer",
        "drop-oldest",
    ]);
    let mut sleeper = sleeper(&gw, "sleeper").await;
    let body = format!(
        r#"{{"to": {{"device": "sleeper"}}, "payload": "{}"}}"#,
        "p".repeat(60_000)
    );
    let mut pushes = 0;
    while gw.metric("miop_outbound_dropped_total").unwrap_or(0.0) == 0.0 {
        let (status, text) = gw.post("/v1/push", &body, Some(TOKEN));
        assert_eq!(status, 200, "{text}");
        pushes += 1;
        assert!(pushes < 2_000, "120 MB pushed and nothing was dropped");
    }
    // Still connected and bound; nothing closed as a slow consumer.
    assert_eq!(gw.get("/v1/sessions/sleeper").0, 200);
    assert_eq!(
        gw.metric("miop_connections_closed_total{reason=\"slow_consumer\"}"),
        Some(0.0)
    );
    // When it reads again, it gets whole frames (the newest), not garbage.
    let f = next_frame(&mut sleeper, T).await.unwrap().unwrap();
    assert!(
        matches!(f.body, Body::Push(ref p) if p.payload.len() == 60_000),
        "{:?}",
        f.seq
    );
}

#[tokio::test]
async fn the_client_hands_out_a_redelivered_push_once() {
    use miop::protocol::{Push, FLAG_ACK_REQUIRED};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A stand-in server that delivers message 7 twice, then message 8.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for id in [7u64, 7, 8] {
            let mut f = Frame::new(
                0,
                Body::Push(Push {
                    message_id: id,
                    payload: bytes::Bytes::from_static(b"m"),
                }),
            );
            f.flags = FLAG_ACK_REQUIRED;
            s.write_all(&f.to_bytes().unwrap()).await.unwrap();
        }
        // Three acks come back: duplicates are acknowledged again.
        let mut acks = vec![0u8; 3 * 24];
        s.read_exact(&mut acks).await.unwrap();
        acks
    });
    let mut c = Client::connect(addr).await.unwrap();
    let first = c.next_push().await.unwrap().unwrap();
    let second = c.next_push().await.unwrap().unwrap();
    assert_eq!((first.message_id, second.message_id), (7, 8));
    let acks = server.await.unwrap();
    let ids: Vec<u64> = acks
        .chunks(24)
        .map(|a| u64::from_be_bytes(a[16..24].try_into().unwrap()))
        .collect();
    assert_eq!(ids, vec![7, 7, 8]);
}
