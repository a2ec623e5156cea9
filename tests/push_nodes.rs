//! Pushes between nodes: three miopd nodes on one Redis; pushes accepted by
//! node A reach devices on B and C, and broadcasts and topics reach all nodes.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;
use miop::client::Client;
use miop::protocol::{Body, Credential};
use serde_json::Value;

const TOKEN: &str = "push-secret";
const T: Duration = Duration::from_secs(20);

fn node(redis: &Redis, id: &str) -> Miopd {
    node_on(&redis.url(), id, &["--push-token", TOKEN])
}

/// Waits until the node's sessions are all in Redis (so others can find them).
fn synced(gw: &Miopd, n: u64) {
    wait_until(T, "presence synced", || consistent(gw, n));
}

fn push(gw: &Miopd, body: &str) -> (u16, Value) {
    push_json(gw, TOKEN, body)
}

async fn expect_push(c: &mut Client, id: u64, payload: &[u8]) {
    let f = next_frame(c, T).await.unwrap().expect("connection closed");
    match f.body {
        Body::Push(p) => {
            assert_eq!((p.message_id, &p.payload[..]), (id, payload));
            c.ack(p.message_id).await.unwrap();
        }
        other => panic!("expected a Push, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_devices_on_other_nodes_and_broadcasts_reach_all() {
    let redis = Redis::start();
    let (a, b, c) = (node(&redis, "A"), node(&redis, "B"), node(&redis, "C"));
    let mut on_a = a.bound("on-a").await;
    let mut on_b = b.bound("on-b").await;
    let mut on_c = c.client().await;
    on_c.bind("on-c", Credential::AppKey(KEY.into()), vec!["news".into()])
        .await
        .unwrap();
    for gw in [&a, &b, &c] {
        synced(gw, 1);
    }

    // Unicast and multicast through A to devices held by B and C.
    let (status, r) = push(&a, r#"{"to": {"device": "on-b"}, "payload": "to b"}"#);
    assert_eq!((status, r["delivered"].as_u64()), (200, Some(1)), "{r}");
    expect_push(&mut on_b, r["id"].as_u64().unwrap(), b"to b").await;
    let (_, r) = push(
        &a,
        r#"{"to": {"devices": ["on-a", "on-b", "on-c", "ghost"]}, "payload": "many"}"#,
    );
    assert_eq!(
        (r["delivered"].as_u64(), r["unknown"].as_u64()),
        (Some(3), Some(1)),
        "{r}"
    );
    let id = r["id"].as_u64().unwrap();
    for cl in [&mut on_a, &mut on_b, &mut on_c] {
        expect_push(cl, id, b"many").await;
    }

    // A broadcast through A reaches the sessions of all three nodes.
    let (_, r) = push(&a, r#"{"to": "all", "payload": "everyone"}"#);
    assert_eq!(
        (r["delivered"].as_u64(), r["other_nodes"].as_u64()),
        (Some(1), Some(2)),
        "{r}"
    );
    let id = r["id"].as_u64().unwrap();
    for cl in [&mut on_a, &mut on_b, &mut on_c] {
        expect_push(cl, id, b"everyone").await;
    }

    // A topic push through A reaches the member on C only.
    let (_, r) = push(&a, r#"{"to": {"topic": "news"}, "payload": "headline"}"#);
    expect_push(&mut on_c, r["id"].as_u64().unwrap(), b"headline").await;
    for cl in [&mut on_a, &mut on_b] {
        cl.send(&miop::protocol::Frame::ping(9)).await.unwrap();
        let f = next_frame(cl, T).await.unwrap().unwrap();
        assert_eq!(
            (f.seq, f.body),
            (9, Body::Pong),
            "non-members get no topic push"
        );
    }

    // The delivering nodes measured the acks of what they delivered.
    wait_until(T, "acks measured on B", || {
        b.metric("miop_push_ack_latency_seconds_count") == Some(3.0)
    });
    wait_until(T, "acks measured on C", || {
        c.metric("miop_push_ack_latency_seconds_count") == Some(3.0)
    });
    assert_eq!(
        a.metric("miop_pushes_routed_total{kind=\"devices\"}"),
        Some(3.0)
    );
}
