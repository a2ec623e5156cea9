//! Topic subscription over real sockets (docs/PROTOCOL.md §8.9, §8.10,
//! §10.11): a bound session joins and leaves topics with Subscribe and
//! Unsubscribe, each answered by a TopicsAck listing all its topics, and topic
//! pushes follow.

mod common;

use std::time::Duration;

use common::*;
use miop::client::Client;
use miop::protocol::{Body, CloseReason, Credential, ErrorCode, Frame};
use serde_json::Value;

const TOKEN: &str = "push-secret";
const T: Duration = Duration::from_secs(10);

fn gateway() -> Miopd {
    Miopd::start(&["--cores", "2", "--push-token", TOKEN])
}

/// Pushes `payload` to `topic`; returns how many sessions it was delivered to.
fn push_topic(gw: &Miopd, topic: &str, payload: &str) -> u64 {
    let body = format!(r#"{{"to": {{"topic": "{topic}"}}, "payload": "{payload}"}}"#);
    let (status, text) = gw.post("/v1/push", &body, Some(TOKEN));
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["delivered"].as_u64().unwrap()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The next frame must be a Push; returns its payload.
async fn expect_push(c: &mut Client) -> Vec<u8> {
    let f = next_frame(c, T).await.unwrap().expect("connection closed");
    match f.body {
        Body::Push(p) => p.payload.to_vec(),
        other => panic!("expected a Push, got {other:?}"),
    }
}

/// Proves nothing was queued for `c`: the next frame is the Pong to a Ping
/// sent now (frames on one connection arrive in order).
async fn expect_nothing_queued(c: &mut Client, seq: u32) {
    c.send(&Frame::ping(seq)).await.unwrap();
    let f = next_frame(c, T).await.unwrap().unwrap();
    assert_eq!((f.seq, f.body), (seq, Body::Pong));
}

/// The admin API's view of a session's topics.
fn admin_topics(gw: &Miopd, device: &str) -> Vec<String> {
    let (status, body) = gw.get(&format!("/v1/sessions/{device}"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    serde_json::from_value(v["topics"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_steer_topic_pushes() {
    let gw = gateway();
    let mut c = gw.bound("sub-1").await;
    assert_eq!(push_topic(&gw, "news", "before"), 0);

    c.send(&Frame::new(
        10,
        Body::Subscribe {
            topics: names(&["news"]),
        },
    ))
    .await
    .unwrap();
    let f = next_frame(&mut c, T).await.unwrap().unwrap();
    assert_eq!(
        (f.seq, f.body),
        (
            10,
            Body::TopicsAck {
                topics: names(&["news"])
            }
        )
    );
    assert_eq!(admin_topics(&gw, "sub-1"), names(&["news"]));

    assert_eq!(push_topic(&gw, "news", "x"), 1);
    assert_eq!(expect_push(&mut c).await, b"x");

    c.send(&Frame::new(
        11,
        Body::Unsubscribe {
            topics: names(&["news"]),
        },
    ))
    .await
    .unwrap();
    let f = next_frame(&mut c, T).await.unwrap().unwrap();
    assert_eq!((f.seq, f.body), (11, Body::TopicsAck { topics: vec![] }));
    assert!(admin_topics(&gw, "sub-1").is_empty());

    assert_eq!(push_topic(&gw, "news", "y"), 0);
    expect_nothing_queued(&mut c, 12).await;
    // The session is still bound and usable.
    assert_eq!(gw.metric("miop_sessions"), Some(1.0));
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_before_bind_is_not_bound() {
    let gw = gateway();
    for (seq, body) in [
        (
            3,
            Body::Subscribe {
                topics: names(&["news"]),
            },
        ),
        (
            4,
            Body::Unsubscribe {
                topics: names(&["news"]),
            },
        ),
    ] {
        let mut c = gw.client().await;
        c.send(&Frame::new(seq, body)).await.unwrap();
        let frames = full_frames_until_eof(&mut c, T).await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0].seq, seq);
        assert!(
            matches!(&frames[0].body, Body::Error(e) if e.code() == Some(ErrorCode::NotBound)),
            "{frames:?}"
        );
        assert!(
            matches!(&frames[1].body, Body::Close(c) if c.reason() == Some(CloseReason::ProtocolError)),
            "{frames:?}"
        );
    }
    assert_eq!(push_topic(&gw, "news", "x"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_helpers_and_bind_topics_share_one_index_across_cores() {
    let gw = gateway();
    // Half join "a" at Bind; everyone subscribes to "b" (and again to "a",
    // which changes nothing for those already in it).
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = gw.client().await;
        let at_bind = if i % 2 == 0 { names(&["a"]) } else { vec![] };
        c.bind(&format!("h-{i}"), Credential::AppKey(KEY.into()), at_bind)
            .await
            .unwrap();
        let list = c.subscribe(names(&["b", "a", "b"])).await.unwrap();
        let expect = if i % 2 == 0 {
            names(&["a", "b"])
        } else {
            names(&["b", "a"])
        };
        assert_eq!(list, expect, "h-{i}");
        clients.push(c);
    }
    let cores: std::collections::HashSet<u64> = clients
        .iter()
        .map(|c| c.bind_ack().unwrap().session_id >> 48)
        .collect();
    assert_eq!(cores.len(), 2, "sessions on both cores");
    assert_eq!(push_topic(&gw, "a", "to-a"), 8);
    assert_eq!(push_topic(&gw, "b", "to-b"), 8);
    for c in clients.iter_mut() {
        assert_eq!(expect_push(c).await, b"to-a");
        assert_eq!(expect_push(c).await, b"to-b");
    }

    // Those that joined "a" at Bind leave it; leaving a topic never joined is
    // harmless.
    for c in clients.iter_mut().step_by(2) {
        assert_eq!(
            c.unsubscribe(names(&["a", "never"])).await.unwrap(),
            names(&["b"])
        );
    }
    assert_eq!(push_topic(&gw, "a", "a-again"), 4);
    for (i, c) in clients.iter_mut().enumerate() {
        if i % 2 == 1 {
            assert_eq!(expect_push(c).await, b"a-again");
        } else {
            expect_nothing_queued(c, 900).await;
        }
    }

    // A session that goes away leaves the topics it subscribed to.
    let gone = clients.pop().unwrap();
    gone.close().await.unwrap();
    wait_until(T, "session gone", || {
        gw.metric("miop_sessions") == Some(7.0)
    });
    assert_eq!(push_topic(&gw, "b", "b-again"), 7);
    assert_eq!(push_topic(&gw, "a", "a-third"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_32_topics_is_malformed_and_closes_the_session() {
    let gw = gateway();
    let mut c = gw.client().await;
    c.bind("greedy", Credential::AppKey(KEY.into()), names(&["t0"]))
        .await
        .unwrap();
    let many: Vec<String> = (1..32).map(|i| format!("t{i}")).collect();
    assert_eq!(c.subscribe(many).await.unwrap().len(), 32);
    assert_eq!(push_topic(&gw, "t31", "full"), 1);
    assert_eq!(expect_push(&mut c).await, b"full");

    c.send(&Frame::new(
        40,
        Body::Subscribe {
            topics: names(&["t0", "one-too-many"]),
        },
    ))
    .await
    .unwrap();
    let frames = full_frames_until_eof(&mut c, T).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].seq, 40);
    assert!(
        matches!(&frames[0].body, Body::Error(e) if e.code() == Some(ErrorCode::Malformed)),
        "{frames:?}"
    );
    assert!(
        matches!(&frames[1].body, Body::Close(c) if c.reason() == Some(CloseReason::ProtocolError)),
        "{frames:?}"
    );
    wait_until(T, "session gone", || {
        gw.metric("miop_sessions") == Some(0.0)
    });
    assert_eq!(push_topic(&gw, "t0", "x"), 0);
    assert_eq!(push_topic(&gw, "one-too-many", "x"), 0);
}
