//! Deadlines on the virtual clock: exact, lazy, spread out.

use super::*;

#[test]
fn bind_timeout_fires_at_the_deadline_not_before() {
    let mut r = Rig::new(0);
    let key = r.connect();
    r.advance(Duration::from_millis(4_999));
    assert!(r.frames(key).is_empty());
    r.advance(Duration::from_millis(1));
    assert_eq!(r.close_reason(key), Some(CloseReason::BindTimeout));
    assert!(r.engine.is_empty());
    assert_eq!(r.engine.stats().bind_timeouts, 1);
}

#[test]
fn any_frame_extends_the_heartbeat_deadline() {
    let mut r = Rig::new(0);
    let at = r.device("d");
    r.advance(Duration::from_secs(20));
    r.send(at.key, Frame::ping(1));
    r.advance(Duration::from_secs(29));
    assert_eq!(
        r.close_reason(at.key),
        None,
        "30 s after the last frame, not 30 s after bind"
    );
    r.advance(Duration::from_secs(1));
    assert_eq!(r.close_reason(at.key), Some(CloseReason::HeartbeatTimeout));
    assert!(r
        .take_intents()
        .iter()
        .any(|i| matches!(i, Intent::Presence(PresenceEvent::Offline { .. }))));
    assert_eq!(r.engine.stats().heartbeat_timeouts, 1);
}

#[test]
fn timer_cost_follows_the_deadlines_not_the_connections() {
    let mut r = Rig::new(0);
    let n = 1000;
    let keys: Vec<ConnKey> = (0..n).map(|i| r.device(&format!("d{i}")).key).collect();
    // Every session pings every 10 s for 10 minutes, in 1 s steps.
    for second in 1..=600u64 {
        r.now.mono += Duration::from_secs(1);
        r.now.unix_ms += 1000;
        for (i, k) in keys.iter().enumerate() {
            if (i as u64 + second).is_multiple_of(10) {
                r.engine.on_bytes(r.now, *k, &ping_bytes());
            }
        }
        while r.engine.next_timeout().is_some_and(|t| t <= r.now.mono) {
            r.engine.handle_timeouts(r.now, usize::MAX);
        }
        r.pump();
    }
    let s = r.engine.stats();
    assert_eq!(s.sessions, n as u64, "no live session timed out");
    assert!(
        r.engine.timer_entries() <= n as usize,
        "one entry per connection"
    );
    // A deadline fires (and is re-armed) about once per heartbeat timeout
    // (30 s) per session: ~20 per session in 600 s, not 600 (a per-second scan).
    let per_session = s.timers_fired as f64 / n as f64;
    assert!(
        per_session <= 21.0,
        "{per_session} timer firings per session"
    );
}

fn ping_bytes() -> Vec<u8> {
    let mut b = BytesMut::new();
    Frame::ping(1).encode(&mut b).unwrap();
    b.to_vec()
}

#[test]
fn a_burst_of_expiries_is_spread_over_turns() {
    let mut r = Rig::new(0);
    for _ in 0..2500 {
        r.connect();
    }
    r.now.mono += Duration::from_secs(5);
    assert!(r.engine.handle_timeouts(r.now, 1000), "more are due");
    assert!(r.engine.handle_timeouts(r.now, 1000));
    assert!(
        !r.engine.handle_timeouts(r.now, 1000),
        "all fired in three turns"
    );
    r.pump();
    assert_eq!(r.engine.stats().bind_timeouts, 2500);
    assert!(r.engine.is_empty());
}

#[test]
fn a_peer_that_does_not_take_its_close_is_shut_down_after_the_linger() {
    let mut r = Rig::new(0);
    let at = r.device("d");
    r.stalled.push(at.key);
    assert!(r.engine.kick(r.now, at, CloseReason::AdminKick));
    r.pump();
    assert!(r.shut.is_empty(), "the Close is still being written");
    r.advance(Duration::from_millis(4_999));
    assert!(r.shut.is_empty());
    r.advance(Duration::from_millis(1));
    assert_eq!(r.shut, vec![at.key], "shut down after the 5 s linger");
    assert!(r.engine.is_empty());
}

#[test]
fn a_heartbeat_timeout_shorter_than_the_bind_timeout_is_kept() {
    let mut cfg = config(0);
    cfg.session.bind_timeout = Duration::from_secs(10);
    cfg.session.heartbeat_timeout = Duration::from_millis(800);
    let mut r = Rig::with(cfg);
    let at = r.device("d");
    r.advance(Duration::from_millis(799));
    assert_eq!(r.close_reason(at.key), None);
    r.advance(Duration::from_millis(1));
    assert_eq!(r.close_reason(at.key), Some(CloseReason::HeartbeatTimeout));
}
