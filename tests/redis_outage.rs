//! No silent loss: while Redis cannot answer (hung with SIGSTOP, or killed),
//! a push whose Redis part fails answers 503 saying which devices' message
//! was neither delivered nor stored, within a bounded time; what was
//! delivered locally is still counted, and a push to a device bound on this
//! node still succeeds. Once Redis is back, the same push is stored and the
//! device gets it (and only it) when it binds.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;
use miop::client::Client;
use miop::protocol::Body;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const TOKEN: &str = "push-secret";
const T: Duration = Duration::from_secs(20);
/// A generous bound on one push while Redis is out (the command timeout is
/// 2 s); the test harness's HTTP read timeout is 10 s as well.
const PUSH_BOUND: Duration = Duration::from_secs(10);

fn node(redis: &Redis, id: &str) -> Miopd {
    node_on(&redis.url(), id, &["--push-token", TOKEN])
}

/// Pushes and prints how long the answer took.
fn push(gw: &Miopd, body: &str) -> (u16, Value) {
    let t0 = Instant::now();
    let (status, r) = push_json(gw, TOKEN, body);
    let took = t0.elapsed();
    println!("push {body} -> {status} {r} in {took:?}");
    assert!(took < PUSH_BOUND, "push took {took:?}");
    (status, r)
}

fn redis_up(gw: &Miopd, up: bool) {
    let v = if up { 1.0 } else { 0.0 };
    wait_until(T, &format!("miop_redis_up {v}"), || {
        gw.metric("miop_redis_up") == Some(v)
    });
}

async fn next_push(c: &mut Client) -> (u64, Vec<u8>) {
    let f = next_frame(c, T).await.unwrap().expect("connection closed");
    match f.body {
        Body::Push(p) => (p.message_id, p.payload.to_vec()),
        other => panic!("expected a Push, got {other:?}"),
    }
}

/// Nothing else is queued for the client: a ping is answered next.
async fn nothing_pending(c: &mut Client) {
    c.send(&miop::protocol::Frame::ping(9)).await.unwrap();
    let f = next_frame(c, T).await.unwrap().unwrap();
    assert_eq!((f.seq, f.body), (9, Body::Pong));
}

fn counts(r: &Value) -> (u64, u64, u64) {
    (
        r["delivered"].as_u64().unwrap(),
        r["offline"].as_u64().unwrap(),
        r["unknown"].as_u64().unwrap(),
    )
}

fn unavailable(r: &Value) {
    let e = r["error"].as_str().unwrap_or_default();
    assert!(e.starts_with("Redis unavailable: "), "{r}");
    assert!(!e.contains("redis://"), "the reason names the URL: {r}");
}

/// Everything a push meets while Redis is out, `here` being bound on `gw`.
async fn pushes_while_redis_is_out(gw: &Miopd, here: &mut Client) {
    // A TTL push to a device online nowhere: not a 404, not "unknown".
    let (status, r) = push(
        gw,
        r#"{"to": {"device": "away"}, "payload": "lost?", "ttl": 60}"#,
    );
    assert_eq!(status, 503, "{r}");
    unavailable(&r);
    assert_eq!(counts(&r), (0, 0, 0), "{r}");
    assert_eq!(r["not_stored"], json!(["away"]), "{r}");

    // A multicast: the local device gets it and is counted, the other one
    // is listed as not stored.
    let (status, r) = push(
        gw,
        r#"{"to": {"devices": ["here", "away"]}, "payload": "half", "ttl": 60}"#,
    );
    assert_eq!(status, 503, "{r}");
    unavailable(&r);
    assert_eq!(counts(&r), (1, 0, 0), "{r}");
    assert_eq!(r["not_stored"], json!(["away"]), "{r}");
    let (id, payload) = next_push(here).await;
    assert_eq!(
        (id, payload.as_slice()),
        (r["id"].as_u64().unwrap(), &b"half"[..])
    );
    here.ack(id).await.unwrap();

    // Without a TTL: whether "away" is online on another node is not known.
    let (status, r) = push(gw, r#"{"to": {"device": "away"}, "payload": "x"}"#);
    assert_eq!(status, 503, "{r}");
    unavailable(&r);
    assert_eq!(counts(&r), (0, 0, 0), "{r}");
    assert_eq!(r["not_routed"], json!(["away"]), "{r}");
    assert!(r.get("not_stored").is_none(), "{r}");

    // A broadcast reaches this node's sessions but not the other nodes.
    let (status, r) = push(gw, r#"{"to": "all", "payload": "everyone"}"#);
    assert_eq!(status, 503, "{r}");
    unavailable(&r);
    assert_eq!(r["delivered"], 1, "{r}");
    assert!(r.get("other_nodes").is_none(), "{r}");
    let (id, payload) = next_push(here).await;
    assert_eq!(
        (id, payload.as_slice()),
        (r["id"].as_u64().unwrap(), &b"everyone"[..])
    );
    here.ack(id).await.unwrap();

    // A device bound here needs nothing from Redis: delivered, 200.
    let (status, r) = push(
        gw,
        r#"{"to": {"device": "here"}, "payload": "local", "ttl": 60}"#,
    );
    assert_eq!((status, counts(&r)), (200, (1, 0, 0)), "{r}");
    let (id, payload) = next_push(here).await;
    assert_eq!(
        (id, payload.as_slice()),
        (r["id"].as_u64().unwrap(), &b"local"[..])
    );
    here.ack(id).await.unwrap();

    // Counted and logged.
    for kind in ["device", "devices", "all"] {
        assert!(
            gw.metric(&format!(
                "miop_pushes_total{{kind=\"{kind}\",result=\"unavailable\"}}"
            ))
            .unwrap_or(0.0)
                >= 1.0,
            "{kind}"
        );
    }
    assert_eq!(
        gw.metric("miop_push_recipients_total{outcome=\"unavailable\"}"),
        Some(3.0)
    );
    assert!(
        gw.log_text()
            .contains("push answered 503: Redis unavailable"),
        "no WARN line"
    );
}

/// Redis is back: the TTL push is kept, and the device gets that one (none
/// of the ones answered 503) when it binds.
async fn stored_once_redis_is_back(gw: &Miopd) {
    let id = kept_for(gw, "away");
    let mut away = gw.bound("away").await;
    gets_only(&mut away, id).await;
}

/// A push "kept" with a TTL to `device`, online nowhere: it is kept
/// offline. Returns its id.
fn kept_for(gw: &Miopd, device: &str) -> u64 {
    let body = json!({"to": {"device": device}, "payload": "kept", "ttl": 60});
    let (status, r) = push(gw, &body.to_string());
    assert_eq!((status, counts(&r)), (200, (0, 1, 0)), "{r}");
    r["id"].as_u64().unwrap()
}

/// The client gets the kept push `id` (and acks it), and nothing else.
async fn gets_only(c: &mut Client, id: u64) {
    let (got, payload) = next_push(c).await;
    assert_eq!((got, payload.as_slice()), (id, &b"kept"[..]));
    c.ack(got).await.unwrap();
    nothing_pending(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_is_a_503_naming_what_was_not_stored() {
    let redis = Redis::start();
    let a = node(&redis, "A");
    redis_up(&a, true);
    let mut here = a.bound("here").await;
    wait_until(T, "presence synced", || consistent(&a, 1));

    redis.signal(Signal::SIGSTOP);
    pushes_while_redis_is_out(&a, &mut here).await;

    redis.signal(Signal::SIGCONT);
    // A hung server's connection is replaced (fred's unresponsive check, or
    // the presence worker's failure count): wait until it answers again.
    redis_up(&a, true);
    wait_until(T, "presence synced again", || consistent(&a, 1));
    stored_once_redis_is_back(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_is_a_503_and_a_restarted_one_stores_again() {
    let mut redis = Redis::start();
    let a = node(&redis, "A");
    redis_up(&a, true);
    let mut here = a.bound("here").await;
    wait_until(T, "presence synced", || consistent(&a, 1));

    redis.kill();
    redis_up(&a, false);
    pushes_while_redis_is_out(&a, &mut here).await;

    redis.restart();
    redis_up(&a, true);
    wait_until(T, "presence restored", || consistent(&a, 1));
    stored_once_redis_is_back(&a).await;
}

/// Redis answers, but with an error, for one step of the push (an ACL takes
/// the command away from the gateway's user): the lookup succeeds, then
/// keeping the message, or publishing it to the node holding the device,
/// fails. Both are a 503 naming the device, with Redis's own words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_error_while_storing_or_routing_is_a_503() {
    let redis = Redis::start();
    let (a, b) = (node(&redis, "A"), node(&redis, "B"));
    redis_up(&a, true);
    let mut on_b = b.bound("on-b").await;
    wait_until(T, "presence synced", || consistent(&b, 1));

    // Keeping fails: EVAL refused (the lookup, HGET, still works).
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "-eval"]).trim(),
        "OK"
    );
    let (status, r) = push(
        &a,
        r#"{"to": {"devices": ["on-b", "away"]}, "payload": "x", "ttl": 60}"#,
    );
    assert_eq!(status, 503, "{r}");
    unavailable(&r);
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("keeping the message for offline devices") && e.contains("NOPERM"),
        "{r}"
    );
    // on-b was routed to B; away was neither delivered nor kept.
    assert_eq!(counts(&r), (1, 0, 0), "{r}");
    assert_eq!(r["not_stored"], json!(["away"]), "{r}");
    let (id, _) = next_push(&mut on_b).await;
    assert_eq!(id, r["id"].as_u64().unwrap());
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "+eval"]).trim(),
        "OK"
    );

    // Routing fails: SPUBLISH to B's channel refused.
    assert_eq!(
        redis
            .cli(&["ACL", "SETUSER", "default", "-spublish"])
            .trim(),
        "OK"
    );
    let (status, r) = push(&a, r#"{"to": {"device": "on-b"}, "payload": "y"}"#);
    assert_eq!(status, 503, "{r}");
    unavailable(&r);
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("routing to the node holding the device") && e.contains("NOPERM"),
        "{r}"
    );
    assert_eq!(counts(&r), (0, 0, 0), "{r}");
    assert_eq!(r["not_routed"], json!(["on-b"]), "{r}");
    assert_eq!(
        redis
            .cli(&["ACL", "SETUSER", "default", "+spublish"])
            .trim(),
        "OK"
    );
}

/// Redis places the device on a node that is not listening (it died and its
/// lease has not lapsed yet, or it is cut off from Redis and not subscribed
/// again): the publish reaches nobody, so the push is never counted as
/// delivered. Without a ttl it is a 503 naming the node; with one it is kept
/// and the device gets it when it binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_node_that_does_not_listen_is_never_counted_as_delivered() {
    let redis = Redis::start();
    let a = node(&redis, "A");
    redis_up(&a, true);
    assert_eq!(
        redis
            .cli(&[
                "HSET",
                "miop:dev:parked",
                "node",
                "ghost",
                "sid",
                "1",
                "since",
                "0",
                "epoch",
                "1"
            ])
            .trim(),
        "4"
    );
    let (status, r) = push(&a, r#"{"to": {"device": "parked"}, "payload": "lost?"}"#);
    assert_eq!(status, 503, "{r}");
    assert_eq!(counts(&r), (0, 0, 0), "{r}");
    assert_eq!(r["not_routed"], json!(["parked"]), "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("(ghost) is not listening"), "{r}");

    let (status, r) = push(
        &a,
        r#"{"to": {"device": "parked"}, "payload": "kept", "ttl": 60}"#,
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(counts(&r), (0, 1, 0), "{r}");
    let mut c = a.bound("parked").await;
    let (id, payload) = next_push(&mut c).await;
    assert_eq!(
        (id, &payload[..]),
        (r["id"].as_u64().unwrap(), &b"kept"[..])
    );
    nothing_pending(&mut c).await;
}

/// A device binds and its kept messages cannot be read at that moment (an
/// ACL takes LRANGE away, as a Redis error or a lost reply would): nothing
/// is removed from the list, the gateway retries while the device stays
/// bound, and the device gets the message once Redis answers, without
/// binding again. Only then is the message removed from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_messages_whose_first_read_failed_still_reach_the_bound_device() {
    let redis = Redis::start();
    let a = node(&redis, "A");
    redis_up(&a, true);
    let id = kept_for(&a, "late");
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "-lrange"]).trim(),
        "OK"
    );
    let mut late = a.bound("late").await;
    wait_until(T, "presence synced", || consistent(&a, 1));
    wait_until(T, "a failed read of the kept messages logged", || {
        a.log_text()
            .contains("cannot deliver offline messages; retrying")
    });
    assert_eq!(
        redis.cli(&["LLEN", "miop:offline:late"]).trim(),
        "1",
        "a message that was not delivered stays kept"
    );
    assert_eq!(
        redis.cli(&["ACL", "SETUSER", "default", "+lrange"]).trim(),
        "OK"
    );
    gets_only(&mut late, id).await;
    wait_until(T, "the delivered message removed from Redis", || {
        redis.cli(&["EXISTS", "miop:offline:late"]).trim() == "0"
    });
}
