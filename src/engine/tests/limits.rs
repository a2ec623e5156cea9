//! Admission control and budgets on the virtual clock.

use super::*;
use crate::config::Limits;
use crate::protocol::ErrorCode;

fn rig_with(limits: Limits) -> Rig {
    let mut cfg = config(0);
    cfg.limits = limits;
    Rig::with(cfg)
}

fn connect_from(r: &mut Rig, ip: &str, port: u16) -> ConnKey {
    let key = r
        .engine
        .accept(r.now, format!("{ip}:{port}").parse().unwrap());
    r.written.remove(&key); // a reused key: forget the last connection's frames
    r.pump();
    key
}

fn refusal(r: &Rig, key: ConnKey) -> Option<(u32, u32)> {
    match &r.written.get(&key)?[..] {
        [e, c] => match (&e.body, &c.body) {
            (Body::Error(err), Body::Close(close))
                if err.code() == Some(ErrorCode::Unavailable)
                    && close.reason() == Some(CloseReason::TryLater) =>
            {
                Some((e.seq, close.retry_after_ms?))
            }
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn before_bind_a_frame_may_not_be_longer_than_the_largest_bind() {
    let mut r = Rig::new(0);
    let key = r.connect();
    // A Bind header announcing 65,536 bytes (the announced max_frame_len):
    // refused as soon as its 16 header bytes are in, nothing buffered.
    let mut head = [0u8; 16];
    crate::protocol::Header::write(&mut head, 65_536, crate::protocol::Opcode::Bind, 0, 3);
    r.send_bytes(key, &head);
    match &r.frames(key)[..] {
        [Body::Error(e), Body::Close(c)] => {
            assert_eq!(e.code(), Some(ErrorCode::FrameTooLarge));
            assert_eq!(c.reason(), Some(CloseReason::ProtocolError));
        }
        other => panic!("{other:?}"),
    }
    assert!(r.engine.is_empty());
    // After Bind, the announced limit applies.
    let at = r.device("d");
    let big = Frame::new(
        4,
        Body::Subscribe {
            topics: (0..32).map(|i| format!("{i:0>100}")).collect(),
        },
    );
    r.send(at.key, big);
    assert!(matches!(r.last(at.key), Some(Body::TopicsAck { .. })));
}

#[test]
fn one_address_cannot_hold_more_than_its_share_and_others_still_bind() {
    let mut r = rig_with(Limits {
        max_conns_per_ip: 2,
        ..Limits::unlimited()
    });
    let a = connect_from(&mut r, "192.0.2.1", 1);
    let b = connect_from(&mut r, "192.0.2.1", 2);
    let refused = connect_from(&mut r, "192.0.2.1", 3);
    let (seq, retry) = refusal(&r, refused).expect("Error(UNAVAILABLE) + Close(TRY_LATER)");
    assert_eq!(seq, 0);
    assert!((10_000..20_000).contains(&retry), "{retry}");
    assert_eq!(r.engine.stats().refused[Refusal::ConnsPerIp as usize], 1);
    // Other addresses are not affected.
    let other = connect_from(&mut r, "198.51.100.7", 1);
    r.bind(other, "other");
    r.bind(a, "a");
    // A connection of the address closes: its share frees up.
    r.engine
        .on_transport_end(r.now, b, TransportEnd::PeerClosed);
    r.pump();
    let again = connect_from(&mut r, "192.0.2.1", 4);
    r.bind(again, "again");
}

#[test]
fn an_address_that_connects_too_fast_is_told_to_come_back() {
    let mut r = rig_with(Limits {
        accept_rate_per_ip: 5,
        ..Limits::unlimited()
    });
    // A burst of twice the rate passes, then one in 200 ms.
    for port in 0..10 {
        let k = connect_from(&mut r, "192.0.2.2", port);
        assert_eq!(refusal(&r, k), None);
    }
    let k = connect_from(&mut r, "192.0.2.2", 10);
    assert!(refusal(&r, k).is_some());
    r.advance(Duration::from_millis(200));
    let k = connect_from(&mut r, "192.0.2.2", 11);
    assert_eq!(refusal(&r, k), None);
    assert_eq!(
        r.engine.stats().refused[Refusal::AcceptRatePerIp as usize],
        1
    );
}

#[test]
fn the_session_cap_and_the_bind_rate_refuse_binds_with_their_seq() {
    let mut r = rig_with(Limits {
        max_sessions: 2,
        bind_rate: 3,
        ..Limits::unlimited()
    });
    r.device("a");
    r.device("b");
    let full = r.connect();
    r.send(
        full,
        Frame::new(
            77,
            Body::Bind(Bind {
                device_id: "c".into(),
                credential: Credential::AppKey(KEY.into()),
                topics: vec![],
            }),
        ),
    );
    let (seq, retry) = refusal(&r, full).expect("refused");
    assert_eq!(seq, 77, "the Bind's seq");
    assert!((30_000..60_000).contains(&retry));
    assert_eq!(r.engine.sessions(), 2);
    let s = r.engine.stats();
    assert_eq!(s.refused[Refusal::MaxSessions as usize], 1);
    // Bind rate: 3 per second; 2 used by a and b, 1 by the refused c.
    let mut r2 = rig_with(Limits {
        bind_rate: 3,
        ..Limits::unlimited()
    });
    r2.device("x");
    r2.device("y");
    r2.device("z");
    let k = r2.connect();
    r2.send(
        k,
        Frame::new(
            5,
            Body::Bind(Bind {
                device_id: "w".into(),
                credential: Credential::AppKey(KEY.into()),
                topics: vec![],
            }),
        ),
    );
    assert_eq!(refusal(&r2, k).map(|(s, _)| s), Some(5));
    assert_eq!(r2.engine.stats().refused[Refusal::BindRate as usize], 1);
    r2.advance(Duration::from_millis(400));
    r2.device("w");
}

fn pings(n: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    for seq in 0..n {
        Frame::ping(seq).encode(&mut b).unwrap();
    }
    b.to_vec()
}

#[test]
fn a_ping_flood_is_slowed_down_then_closed_while_others_are_answered() {
    let mut r = rig_with(Limits {
        frames_per_sec: 10,
        budget_grace: Duration::from_secs(5),
        ..Limits::unlimited()
    });
    let flood = r.device("flood");
    let calm = r.device("calm");
    // Twice the rate is the burst (20 frames, one of them the Bind); 39
    // pings at once are 20 over: a 2 s pause.
    r.send_bytes(flood.key, &pings(39));
    assert!(r.engine.read_paused(flood.key), "reading paused");
    assert_eq!(r.engine.stats().throttled, 1);
    r.send(calm.key, Frame::ping(1));
    assert_eq!(r.last(calm.key), Some(Body::Pong), "others are answered");
    // The pause ends with a ResumeReading for the driver.
    r.advance(Duration::from_millis(1_999));
    assert!(r.engine.read_paused(flood.key));
    r.advance(Duration::from_millis(1));
    assert!(!r.engine.read_paused(flood.key));
    assert!(r
        .take_intents()
        .iter()
        .any(|i| matches!(i, Intent::ResumeReading(k) if *k == flood.key)));
    // Still flooding at every read: closed once over budget for 5 s.
    for _ in 0..5 {
        r.send_bytes(flood.key, &pings(40));
        r.advance(Duration::from_secs(1));
    }
    r.send_bytes(flood.key, &pings(40));
    assert_eq!(r.close_reason(flood.key), Some(CloseReason::RateLimited));
    let hint = r.written[&flood.key].iter().find_map(|f| match &f.body {
        Body::Close(c) => c.retry_after_ms,
        _ => None,
    });
    assert!(
        hint.is_some_and(|h| (30_000..60_000).contains(&h)),
        "{hint:?}"
    );
    assert_eq!(
        r.engine.stats().closed[CloseReason::RateLimited as usize],
        1
    );
    r.send(calm.key, Frame::ping(2));
    assert_eq!(r.last(calm.key), Some(Body::Pong));
}

#[test]
fn a_burst_within_the_budget_is_not_throttled_and_a_pause_is_forgiven() {
    let mut r = rig_with(Limits {
        frames_per_sec: 10,
        ..Limits::unlimited()
    });
    let at = r.device("d");
    r.send_bytes(at.key, &pings(19));
    assert!(!r.engine.read_paused(at.key));
    r.send_bytes(at.key, &pings(5));
    assert!(r.engine.read_paused(at.key));
    r.advance(Duration::from_secs(3));
    r.send(at.key, Frame::ping(9));
    assert!(!r.engine.read_paused(at.key));
    assert_eq!(r.close_reason(at.key), None);
}

#[test]
fn a_drop_oldest_session_that_never_reads_is_closed_after_the_stall_timeout() {
    let mut cfg = config(0);
    cfg.slow_consumer = crate::config::SlowConsumerPolicy::DropOldest;
    cfg.limits.stall_timeout = Duration::from_secs(60);
    cfg.session.heartbeat_timeout = Duration::from_secs(600);
    let mut r = Rig::with(cfg);
    let stuck = r.device("stuck");
    let reader = r.device("reader");
    r.stalled.push(stuck.key);
    r.stalled.push(reader.key);
    let push = |r: &mut Rig, id| {
        r.push(PushTargets::All, id, None);
    };
    for id in 0..300 {
        push(&mut r, id);
    }
    // The reader reads again after 30 s: its stall is over.
    r.advance(Duration::from_secs(30));
    r.unstall(reader.key);
    r.advance(Duration::from_secs(29));
    assert_eq!(
        r.engine.stats().closed[CloseReason::SlowConsumer as usize],
        0
    );
    r.advance(Duration::from_secs(1));
    assert_eq!(r.close_reason(reader.key), None);
    assert_eq!(
        r.engine.stats().closed[CloseReason::SlowConsumer as usize],
        1,
        "closed after 60 s of not reading"
    );
    // Its Close cannot be written either: shut down after the linger.
    r.advance(Duration::from_secs(5));
    assert!(r.shut.contains(&stuck.key));
}
