//! The reconnecting client, `miop::client::Session`: it rebinds with its
//! topics after a gateway restart, with jittered exponential backoff
//! (PROTOCOL.md §10.10); it waits at least a Close's retry-after hint (§8.7);
//! it stops when replaced or refused rather than fighting (§9.2); it delivers
//! a message redelivered after a reconnect once (§10.8); and it stops reading,
//! not growing, when the application does not read.
//!
//! Real miopd processes where the gateway's behaviour is the point (restart,
//! REPLACED, AUTH_FAILED); a stand-in gateway on a tokio listener, speaking the
//! crate's codec, where the test needs the server to do something on cue (a
//! TRY_LATER with a hint, a redelivery). Nothing sleeps: every wait is for a
//! condition, with a deadline. Timing is asserted only as lower bounds the
//! session guarantees (it never reconnects before the delay it announced, nor
//! before the server's hint) and against the seeded backoff schedule.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use miop::client::{
    Backoff, Client, Disconnect, Jitter, Session, SessionConfig, SessionEvent, SessionState,
    TopicsUpdate,
};
use miop::protocol::{
    Bind, BindAck, Body, CloseReason, Credential, ErrorCode, Frame, Push, FLAG_ACK_REQUIRED,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

const TOKEN: &str = "push-secret";
const T: Duration = Duration::from_secs(20);
const MS: Duration = Duration::from_millis(1);

fn gateway(listen: Option<SocketAddr>) -> Miopd {
    Miopd::start_with(Options {
        args: ["--cores", "2", "--push-token", TOKEN]
            .map(String::from)
            .to_vec(),
        listen: listen.map(|a| a.to_string()),
        ..Options::default()
    })
}

fn config(addr: SocketAddr, device: &str) -> SessionConfig {
    SessionConfig::new(addr.to_string(), device, Credential::AppKey(KEY.into()))
}

/// Reads state changes until one satisfies `done`; returns them all, that one last.
async fn until(
    s: &mut Session,
    what: &str,
    done: impl Fn(&SessionState) -> bool,
) -> Vec<SessionEvent> {
    let end = tokio::time::Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        let event = match tokio::time::timeout_at(end, s.events.recv()).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => panic!("event stream ended ({e}) waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
        };
        let last = done(&event.state);
        seen.push(event);
        if last {
            return seen;
        }
    }
}

fn is_bound(s: &SessionState) -> bool {
    matches!(s, SessionState::Bound { .. })
}

fn is_stopped(s: &SessionState) -> bool {
    matches!(s, SessionState::Stopped { .. })
}

fn session_id(events: &[SessionEvent]) -> u64 {
    match events.last().map(|e| &e.state) {
        Some(SessionState::Bound { session_id, .. }) => *session_id,
        other => panic!("not bound: {other:?}"),
    }
}

async fn next_push(s: &mut Session) -> Push {
    tokio::time::timeout(T, s.next_push())
        .await
        .expect("no push in time")
        .expect("push stream ended")
}

fn push_json_ok(gw: &Miopd, body: &str) -> Value {
    let (status, v) = push_json(gw, TOKEN, body);
    assert_eq!(status, 200, "{v}");
    v
}

fn topic_set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The gateway's view of a device's session: (session id, topics).
fn admin_session(gw: &Miopd, device: &str) -> (u64, BTreeSet<String>) {
    let (status, body) = gw.get(&format!("/v1/sessions/{device}"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    (
        v["session_id"].as_u64().unwrap(),
        serde_json::from_value(v["topics"].clone()).unwrap(),
    )
}

// --- a. gateway restart -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebinds_with_its_topics_after_a_gateway_restart_with_backoff() {
    let mut gw = gateway(None);
    let addr = gw.listen;
    // A tiny base so that several attempts fit in a restart; a seed so that
    // the delays the session draws are known in advance.
    let backoff = Backoff {
        base: 40 * MS,
        cap: 640 * MS,
        reset_after: Duration::from_secs(60),
    };
    const SEED: u64 = 0x5eed;
    let mut s = Session::start(
        config(addr, "phoenix")
            .topics(["news"])
            .backoff(backoff)
            .jitter_seed(SEED),
    )
    .unwrap();
    let first = until(&mut s, "first bind", is_bound).await;
    assert_eq!(first[0].state, SessionState::Connecting { attempt: 0 });
    assert!(is_bound(&first.last().unwrap().state));
    // Joined after the Bind: the session must remember it for the next one.
    match s.subscribe(["sports"]).await.unwrap() {
        TopicsUpdate::Acked(topics) => assert_eq!(
            topics.iter().cloned().collect::<BTreeSet<_>>(),
            topic_set(&["news", "sports"])
        ),
        other => panic!("bound, yet {other:?}"),
    }
    push_json_ok(&gw, r#"{"to": {"topic": "news"}, "payload": "before"}"#);
    assert_eq!(next_push(&mut s).await.payload, "before");

    // The gateway dies without a word (no Close), and nothing listens for a while.
    gw.signal(nix::sys::signal::Signal::SIGKILL);
    gw.wait_exit(T).expect("miopd did not die");
    let mut log = until(&mut s, "a third reconnect", |st| {
        *st == SessionState::Connecting { attempt: 3 }
    })
    .await;
    // A new gateway on the same address.
    let gw = gateway(Some(addr));
    log.extend(until(&mut s, "the rebind", is_bound).await);

    // Bound again, to the new gateway, with both topics, in the Bind. (Session
    // ids are unique per node *and start*: the new one may reuse the old id.)
    let new_id = session_id(&log);
    assert_eq!(
        admin_session(&gw, "phoenix"),
        (new_id, topic_set(&["news", "sports"]))
    );
    for topic in ["news", "sports"] {
        let body = format!(r#"{{"to": {{"topic": "{topic}"}}, "payload": "after-{topic}"}}"#);
        assert_eq!(push_json_ok(&gw, &body)["delivered"], 1);
        assert_eq!(next_push(&mut s).await.payload, format!("after-{topic}"));
    }

    // The timeline: Disconnected → Connecting{1} → Disconnected → Connecting{2}
    // → ... → Bound. Each delay is the seeded schedule's (so within its
    // doubling ceiling), and no attempt started before its delay was over.
    let mut jitter = Jitter::seeded(SEED);
    let mut attempt = 0;
    let mut total = Duration::ZERO;
    for pair in log.windows(2) {
        let SessionState::Disconnected { reason, retry_in } = &pair[0].state else {
            continue;
        };
        attempt += 1;
        assert!(matches!(reason, Disconnect::Lost(_)), "{reason}");
        assert_eq!(pair[1].state, SessionState::Connecting { attempt });
        let expected = backoff.delay(attempt, &mut jitter);
        assert_eq!(*retry_in, expected, "attempt {attempt}");
        assert!(*retry_in <= backoff.ceiling(attempt));
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= *retry_in,
            "attempt {attempt} started after {waited:?}, before its delay {retry_in:?}"
        );
        total += *retry_in;
        eprintln!(
            "attempt {attempt}: ceiling {:?}, drew {retry_in:?}, started after {waited:?}",
            backoff.ceiling(attempt)
        );
    }
    assert!(attempt >= 3, "{log:#?}");
    // Every reconnect waited: the outage's attempts took at least the sum.
    let first_loss = log.iter().find(|e| !is_bound(&e.state)).unwrap().at;
    assert!(log.last().unwrap().at - first_loss >= total);
}

// --- b. retry-after hint ------------------------------------------------------

/// A stand-in gateway's side of one connection, framed with the crate's codec.
async fn accept(listener: &TcpListener) -> Client {
    let (stream, _) = tokio::time::timeout(T, listener.accept())
        .await
        .expect("no connection in time")
        .unwrap();
    Client::from_stream(stream)
}

async fn expect_bind(c: &mut Client) -> (u32, Bind) {
    match next_frame(c, T).await.unwrap() {
        Some(Frame {
            seq,
            body: Body::Bind(b),
            ..
        }) => (seq, b),
        other => panic!("expected a Bind, got {other:?}"),
    }
}

fn bind_ack(seq: u32, session_id: u64, heartbeat_interval_ms: u32) -> Frame {
    Frame::new(
        seq,
        Body::BindAck(BindAck {
            heartbeat_interval_ms,
            heartbeat_timeout_ms: 60_000,
            max_frame_len: 65_536,
            session_id,
        }),
    )
}

fn push_frame(message_id: u64, payload: &'static str) -> Frame {
    Frame {
        seq: 0,
        flags: FLAG_ACK_REQUIRED,
        body: Body::Push(Push {
            message_id,
            payload: Bytes::from_static(payload.as_bytes()),
        }),
    }
}

/// The next frame other than Ping.
async fn next_non_ping(c: &mut Client) -> Body {
    loop {
        match next_frame(c, T).await.unwrap() {
            Some(Frame {
                body: Body::Ping, ..
            }) => continue,
            Some(f) => return f.body,
            None => panic!("connection closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_later_waits_at_least_the_retry_after_hint() {
    const HINT_MS: u32 = 300;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The session's own backoff is far below the hint: the hint must decide.
    let backoff = Backoff {
        base: 10 * MS,
        ..Backoff::default()
    };
    let mut s = Session::start(config(addr, "patient").backoff(backoff)).unwrap();

    let mut first = accept(&listener).await;
    let (seq, bind) = expect_bind(&mut first).await;
    assert_eq!(bind.device_id, "patient");
    first
        .send(&Frame::error(seq, ErrorCode::Unavailable, "at capacity"))
        .await
        .unwrap();
    let refused_at = std::time::Instant::now();
    first
        .send(&Frame::close_retry(
            0,
            CloseReason::TryLater,
            "try later",
            HINT_MS,
        ))
        .await
        .unwrap();
    drop(first);
    let mut second = accept(&listener).await;
    let came_back_after = refused_at.elapsed();
    let (seq, _) = expect_bind(&mut second).await;
    second.send(&bind_ack(seq, 77, 30_000)).await.unwrap();

    // A protocol lower bound, not a performance threshold: the session may
    // not come back before the hint has passed since it got the Close.
    let hint = HINT_MS * MS;
    assert!(
        came_back_after >= hint,
        "reconnected {came_back_after:?} after a {hint:?} hint"
    );
    let log = until(&mut s, "bound", is_bound).await;
    let states: Vec<&SessionState> = log.iter().map(|e| &e.state).collect();
    assert_eq!(
        states,
        [
            &SessionState::Connecting { attempt: 0 },
            &SessionState::Disconnected {
                reason: Disconnect::Closed {
                    reason: CloseReason::TryLater as u16,
                    message: "try later".into(),
                    retry_after: Some(hint),
                    error: Some(ErrorCode::Unavailable as u16),
                },
                // max(backoff ≤ 10 ms, hint)
                retry_in: hint,
            },
            &SessionState::Connecting { attempt: 1 },
            &SessionState::Bound {
                session_id: 77,
                heartbeat_interval: Duration::from_secs(30),
            },
        ]
    );
    assert!(log[2].at - log[1].at >= hint);
    s.close().await;
    // The goodbye of a bound session.
    match next_non_ping(&mut second).await {
        Body::Close(c) => assert_eq!(c.reason, CloseReason::Normal as u16),
        other => panic!("expected Close, got {other:?}"),
    }
}

// --- c. REPLACED stops --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_session_stops_instead_of_kicking_back() {
    let gw = gateway(None);
    let mut old = Session::start(config(gw.listen, "twin")).unwrap();
    until(&mut old, "old bound", is_bound).await;
    let mut new = Session::start(config(gw.listen, "twin")).unwrap();
    let new_id = session_id(&until(&mut new, "new bound", is_bound).await);

    let log = until(&mut old, "old stopped", is_stopped).await;
    // Straight from Bound to Stopped: no Disconnected, no reconnect.
    assert_eq!(log.len(), 1, "{log:#?}");
    let SessionState::Stopped { reason } = &log[0].state else {
        unreachable!()
    };
    assert_eq!(
        reason.close_reason(),
        Some(CloseReason::Replaced),
        "{reason}"
    );
    // Terminal: both of its streams end.
    assert!(matches!(old.events.recv().await, Err(RecvError::Closed)));
    assert!(old.next_push().await.is_none());
    assert_eq!(
        old.subscribe(["x"]).await,
        Err(miop::client::SessionError::Stopped)
    );

    // The new session was not kicked back: same session at the gateway, still
    // bound, no state change, and it gets the device's pushes.
    assert_eq!(admin_session(&gw, "twin").0, new_id);
    let v = push_json_ok(&gw, r#"{"to": {"device": "twin"}, "payload": "hi"}"#);
    assert_eq!(next_push(&mut new).await.payload, "hi");
    assert_eq!(v["delivered"], 1);
    assert_eq!(admin_session(&gw, "twin").0, new_id);
    assert!(matches!(new.events.try_recv(), Err(TryRecvError::Empty)));
    assert!(is_bound(&new.state()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_stops_the_session() {
    let gw = gateway(None);
    let mut s = Session::start(SessionConfig::new(
        gw.listen.to_string(),
        "intruder",
        Credential::AppKey("wrong".into()),
    ))
    .unwrap();
    let log = until(&mut s, "stopped", is_stopped).await;
    let states: Vec<&SessionState> = log.iter().map(|e| &e.state).collect();
    let [SessionState::Connecting { attempt: 0 }, SessionState::Stopped { reason }] = &states[..]
    else {
        panic!("{log:#?}")
    };
    assert_eq!(
        reason.close_reason(),
        Some(CloseReason::AuthFailed),
        "{reason}"
    );
    assert!(matches!(
        reason,
        Disconnect::Closed { error: Some(code), .. } if *code == ErrorCode::AuthFailed as u16
    ));
}

// --- d. duplicates across reconnects ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redelivered_after_a_reconnect_reaches_the_app_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backoff = Backoff {
        base: 10 * MS,
        ..Backoff::default()
    };
    let mut s = Session::start(config(addr, "twice").backoff(backoff)).unwrap();

    // Connection 1: push 7, see its ack, then vanish (as if the ack was lost
    // with the connection: the gateway would deliver 7 again).
    let mut one = accept(&listener).await;
    let (seq, _) = expect_bind(&mut one).await;
    one.send(&bind_ack(seq, 1, 30_000)).await.unwrap();
    one.send(&push_frame(7, "seven")).await.unwrap();
    assert_eq!(
        next_non_ping(&mut one).await,
        Body::PushAck { message_id: 7 }
    );
    drop(one);

    // Connection 2: 7 again, then 8. Both are acknowledged (§10.8: a
    // duplicate too), but the application sees 7 once.
    let mut two = accept(&listener).await;
    let (seq, _) = expect_bind(&mut two).await;
    two.send(&bind_ack(seq, 2, 30_000)).await.unwrap();
    two.send(&push_frame(7, "seven")).await.unwrap();
    two.send(&push_frame(8, "eight")).await.unwrap();
    assert_eq!(
        next_non_ping(&mut two).await,
        Body::PushAck { message_id: 7 }
    );
    assert_eq!(
        next_non_ping(&mut two).await,
        Body::PushAck { message_id: 8 }
    );

    let got: Vec<(u64, Bytes)> = [next_push(&mut s).await, next_push(&mut s).await]
        .into_iter()
        .map(|p| (p.message_id, p.payload))
        .collect();
    assert_eq!(
        got,
        [(7, Bytes::from("seven")), (8, Bytes::from("eight"))],
        "7 twice?"
    );
    // Nothing else was queued for the application.
    assert!(s.pushes.try_recv().is_err());
}

// --- bounded reading ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_does_not_read_stops_the_acks_not_the_heartbeats() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config(addr, "sluggish");
    cfg.push_buffer = 2;
    let mut s = Session::start(cfg).unwrap();
    let mut gw = accept(&listener).await;
    let (seq, _) = expect_bind(&mut gw).await;
    gw.send(&bind_ack(seq, 1, 20)).await.unwrap();
    for id in 1..=6 {
        gw.send(&push_frame(id, "x")).await.unwrap();
    }
    // Two fit in the channel and are acknowledged; the third is held,
    // unacknowledged, and the session stops reading, but it keeps
    // heartbeating: three Pings in a row with no third ack.
    assert_eq!(
        next_non_ping(&mut gw).await,
        Body::PushAck { message_id: 1 }
    );
    assert_eq!(
        next_non_ping(&mut gw).await,
        Body::PushAck { message_id: 2 }
    );
    for _ in 0..3 {
        let f = next_frame(&mut gw, T).await.unwrap().unwrap();
        assert_eq!(f.body, Body::Ping);
    }
    // The application reads: room for one more, then for everything.
    assert_eq!(next_push(&mut s).await.message_id, 1);
    assert_eq!(
        next_non_ping(&mut gw).await,
        Body::PushAck { message_id: 3 }
    );
    for id in 2..=6 {
        assert_eq!(next_push(&mut s).await.message_id, id);
    }
    for id in 4..=6 {
        assert_eq!(
            next_non_ping(&mut gw).await,
            Body::PushAck { message_id: id }
        );
    }
    assert!(is_bound(&s.state()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_is_not_reading_still_sees_why_it_was_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config(addr, "distracted");
    cfg.push_buffer = 1;
    let mut s = Session::start(cfg).unwrap();
    let mut gw = accept(&listener).await;
    let (seq, _) = expect_bind(&mut gw).await;
    gw.send(&bind_ack(seq, 1, 20)).await.unwrap();
    until(&mut s, "bound", is_bound).await;
    // 1 fills the channel, 2 is held: the session has stopped reading.
    gw.send(&push_frame(1, "one")).await.unwrap();
    gw.send(&push_frame(2, "two")).await.unwrap();
    assert_eq!(
        next_non_ping(&mut gw).await,
        Body::PushAck { message_id: 1 }
    );
    // Replaced meanwhile: the Close waits unread behind push 2, and the
    // session's next heartbeat finds the connection gone.
    gw.send(&Frame::close(0, CloseReason::Replaced, "replaced"))
        .await
        .unwrap();
    drop(gw);
    let log = until(&mut s, "stopped", is_stopped).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    let SessionState::Stopped { reason } = &log[0].state else {
        unreachable!()
    };
    assert_eq!(
        reason.close_reason(),
        Some(CloseReason::Replaced),
        "{reason}"
    );
    // What was delivered stays; the held push was never acknowledged nor delivered.
    assert_eq!(next_push(&mut s).await.message_id, 1);
    assert!(s.next_push().await.is_none());
}

// --- backoff reset ----------------------------------------------------------------

/// The `attempt` of every Connecting while a stand-in gateway binds the
/// session and drops the connection at once, `binds` times.
async fn attempts_against_a_flapping_gateway(reset_after: Duration, binds: u64) -> Vec<u32> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backoff = Backoff {
        base: 5 * MS,
        cap: 40 * MS,
        reset_after,
    };
    let mut s = Session::start(config(addr, "flappy").backoff(backoff)).unwrap();
    let mut log = Vec::new();
    for id in 1..=binds {
        let mut c = accept(&listener).await;
        let (seq, _) = expect_bind(&mut c).await;
        c.send(&bind_ack(seq, id, 30_000)).await.unwrap();
        log.extend(until(&mut s, "bound", is_bound).await);
    }
    // The reconnect after the last drop.
    log.extend(
        until(&mut s, "a reconnect", |st| {
            matches!(st, SessionState::Connecting { .. })
        })
        .await,
    );
    log.iter()
        .filter_map(|e| match e.state {
            SessionState::Connecting { attempt } => Some(attempt),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backoff_grows_while_binds_do_not_last_and_starts_over_after_one_that_did() {
    // Dropped right after each BindAck: nothing reached reset_after, so the
    // backoff keeps growing (a crash-looping or kicking gateway is not
    // hammered at the base rate).
    assert_eq!(
        attempts_against_a_flapping_gateway(Duration::from_secs(60), 3).await,
        [0, 1, 2, 3]
    );
    // With reset_after zero every bind lasted long enough: each reconnect is
    // a first one again.
    assert_eq!(
        attempts_against_a_flapping_gateway(Duration::ZERO, 3).await,
        [0, 1, 1, 1]
    );
}
