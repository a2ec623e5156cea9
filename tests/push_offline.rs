//! Offline messages: pushes with a TTL to devices that are online nowhere are
//! kept in Redis and delivered, in order, when the device binds; expired ones
//! are dropped and counted.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::*;
use miop::client::Client;
use miop::protocol::Body;
use serde_json::Value;

const TOKEN: &str = "push-secret";
const T: Duration = Duration::from_secs(20);

fn node(redis: &Redis, id: &str) -> Miopd {
    node_on(&redis.url(), id, &["--push-token", TOKEN])
}

fn push(gw: &Miopd, body: &str) -> (u16, Value) {
    push_json(gw, TOKEN, body)
}

async fn next_push(c: &mut Client) -> (u64, Vec<u8>) {
    let f = next_frame(c, T).await.unwrap().expect("connection closed");
    match f.body {
        Body::Push(p) => (p.message_id, p.payload.to_vec()),
        other => panic!("expected a Push, got {other:?}"),
    }
}

fn ready(gw: &Miopd) {
    wait_until(T, "node connected to Redis", || {
        gw.metric("miop_redis_up") == Some(1.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_messages_arrive_in_order_when_the_device_binds() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, "A"), node(&redis, "B"));
    ready(&a);
    let mut ids = Vec::new();
    for i in 1..=3 {
        let (status, r) = push(
            &a,
            &format!(r#"{{"to": {{"device": "later"}}, "payload": "m{i}", "ttl": 60}}"#),
        );
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            (
                r["delivered"].as_u64(),
                r["offline"].as_u64(),
                r["unknown"].as_u64()
            ),
            (Some(0), Some(1), Some(0))
        );
        ids.push(r["id"].as_u64().unwrap());
    }
    assert_eq!(redis.cli(&["LLEN", "miop:offline:later"]).trim(), "3");
    // The device binds on another node than the one that kept the messages.
    let mut c = b.bound("later").await;
    for (i, id) in ids.iter().enumerate() {
        let (got, payload) = next_push(&mut c).await;
        assert_eq!((got, payload), (*id, format!("m{}", i + 1).into_bytes()));
        c.ack(got).await.unwrap();
    }
    assert_eq!(redis.cli(&["EXISTS", "miop:offline:later"]).trim(), "0");
    wait_until(T, "delivered counted", || {
        b.metric("miop_offline_messages_delivered_total") == Some(3.0)
    });
    // Once online, pushes are delivered directly again.
    let (_, r) = push(
        &a,
        r#"{"to": {"device": "later"}, "payload": "now", "ttl": 60}"#,
    );
    assert_eq!(
        (r["delivered"].as_u64(), r["offline"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(next_push(&mut c).await.1, b"now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dropped_and_counted() {
    let redis = Redis::start();
    let a = node(&redis, "A");
    ready(&a);
    let (_, r) = push(
        &a,
        r#"{"to": {"device": "late"}, "payload": "old", "ttl": 1}"#,
    );
    assert_eq!(r["offline"], 1);
    // The TTL is the scenario: let it pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, fresh) = push(
        &a,
        r#"{"to": {"device": "late"}, "payload": "fresh", "ttl": 60}"#,
    );
    let mut c = a.bound("late").await;
    let (id, payload) = next_push(&mut c).await;
    assert_eq!(
        (id, payload.as_slice()),
        (fresh["id"].as_u64().unwrap(), &b"fresh"[..])
    );
    wait_until(T, "expiry counted", || {
        a.metric("miop_offline_messages_expired_total") == Some(1.0)
    });
    // Nothing else is pending for it.
    c.send(&miop::protocol::Frame::ping(5)).await.unwrap();
    let f = next_frame(&mut c, T).await.unwrap().unwrap();
    assert_eq!((f.seq, f.body), (5, Body::Pong));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ttl_an_offline_device_is_a_404() {
    let redis = Redis::start();
    let a = node(&redis, "A");
    ready(&a);
    let (status, r) = push(&a, r#"{"to": {"device": "nobody"}, "payload": "x"}"#);
    assert_eq!(status, 404, "{r}");
    assert!(r["error"].as_str().unwrap().contains("ttl"), "{r}");
    assert_eq!(redis.cli(&["EXISTS", "miop:offline:nobody"]).trim(), "0");
    let (status, r) = push(
        &a,
        r#"{"to": {"devices": ["n1", "n2"]}, "payload": "x", "ttl": 30}"#,
    );
    assert_eq!((status, r["offline"].as_u64()), (200, Some(2)), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_push_is_delivered_again_after_reconnect_and_an_acked_one_is_not() {
    let redis = Redis::start();
    let a = node(&redis, "A");
    ready(&a);
    // Received but never acknowledged: the device went away first.
    let mut c = a.bound("forgetful").await;
    let (_, r) = push(
        &a,
        r#"{"to": {"device": "forgetful"}, "payload": "important", "ttl": 60}"#,
    );
    let id = r["id"].as_u64().unwrap();
    assert_eq!(next_push(&mut c).await, (id, b"important".to_vec()));
    drop(c);
    wait_until(T, "kept offline", || {
        redis.cli(&["LLEN", "miop:offline:forgetful"]).trim() == "1"
    });
    assert_eq!(
        a.metric("miop_unacked_pushes_total{fate=\"kept_offline\"}"),
        Some(1.0)
    );
    let mut again = a.bound("forgetful").await;
    assert_eq!(next_push(&mut again).await, (id, b"important".to_vec()));
    again.ack(id).await.unwrap();

    // Acknowledged before leaving: nothing comes back.
    let (_, r) = push(
        &a,
        r#"{"to": {"device": "forgetful"}, "payload": "seen", "ttl": 60}"#,
    );
    let id2 = r["id"].as_u64().unwrap();
    assert_eq!(next_push(&mut again).await, (id2, b"seen".to_vec()));
    again.ack(id2).await.unwrap();
    // The ack is processed before the goodbye (same connection, in order).
    again.close().await.unwrap();
    wait_until(T, "offline", || a.metric("miop_sessions") == Some(0.0));
    assert_eq!(redis.cli(&["EXISTS", "miop:offline:forgetful"]).trim(), "0");
    assert_eq!(
        a.metric("miop_unacked_pushes_total{fate=\"kept_offline\"}"),
        Some(1.0)
    );
}
