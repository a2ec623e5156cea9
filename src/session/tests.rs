//! Drives the session with a virtual clock: `t0 + Duration` stands in for time.

use std::time::{Duration, Instant};

use super::*;
use crate::auth::Authenticator;
use crate::protocol::{Bind, Body, CloseReason, Credential, DecodeError, ErrorCode, Frame};

struct Rig {
    t0: Instant,
    cfg: SessionConfig,
    auth: Authenticator,
    s: Session,
}

fn rig() -> Rig {
    let t0 = Instant::now();
    Rig {
        t0,
        cfg: SessionConfig {
            bind_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            max_frame_len: 4096,
            max_outbound_bytes: 1 << 20,
        },
        auth: Authenticator::new(["pk".to_string()], Some("secret".into())),
        s: Session::new(7, t0),
    }
}

fn bind_frame(seq: u32, device: &str, key: &str) -> Frame {
    Frame::new(
        seq,
        Body::Bind(Bind {
            device_id: device.into(),
            credential: Credential::AppKey(key.into()),
            topics: vec!["news".into()],
        }),
    )
}

impl Rig {
    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn frame(&mut self, secs: u64, f: Frame) -> Vec<Action> {
        let mut out = Vec::new();
        let now = self.at(secs);
        self.s
            .handle_frame(f, now, 1_000, &self.cfg, &self.auth, &mut out);
        out
    }

    fn tick(&mut self, secs: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.s.handle_timeout(self.at(secs), &self.cfg, &mut out);
        out
    }
}

fn sent(actions: &[Action]) -> Vec<&Body> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(f) => Some(&f.body),
            _ => None,
        })
        .collect()
}

fn close_reason(actions: &[Action]) -> Option<CloseReason> {
    actions.iter().find_map(|a| match a {
        Action::Close { reason } => Some(*reason),
        _ => None,
    })
}

#[test]
fn good_bind_acks_and_goes_online() {
    let mut r = rig();
    let out = r.frame(1, bind_frame(42, "dev-1", "pk"));
    match &out[0] {
        Action::Send(f) => {
            assert_eq!(f.seq, 42);
            match &f.body {
                Body::BindAck(a) => {
                    assert_eq!(a.heartbeat_interval_ms, 10_000);
                    assert_eq!(a.heartbeat_timeout_ms, 30_000);
                    assert_eq!(a.max_frame_len, 4096);
                    assert_eq!(a.session_id, 7);
                }
                other => panic!("expected BindAck, got {other:?}"),
            }
        }
        other => panic!("expected Send, got {other:?}"),
    }
    assert_eq!(
        out[1],
        Action::Presence(PresenceChange::Online {
            device_id: "dev-1".into(),
            session_id: 7,
            topics: vec!["news".into()],
        })
    );
    assert_eq!(out.len(), 2);
    assert_eq!(r.s.state(), SessionState::Bound);
    assert_eq!(r.s.device_id(), Some("dev-1"));
}

#[test]
fn wrong_key_is_an_error_then_close_and_never_online() {
    let mut r = rig();
    let out = r.frame(1, bind_frame(3, "dev-1", "nope"));
    assert_eq!(out[0], Action::BindRejected(ErrorCode::AuthFailed));
    match sent(&out)[..] {
        [Body::Error(e), Body::Close(c)] => {
            assert_eq!(e.code(), Some(ErrorCode::AuthFailed));
            assert_eq!(c.reason(), Some(CloseReason::AuthFailed));
        }
        ref other => panic!("unexpected frames {other:?}"),
    }
    assert!(!out.iter().any(|a| matches!(a, Action::Presence(_))));
    assert_eq!(close_reason(&out), Some(CloseReason::AuthFailed));
    assert_eq!(r.s.state(), SessionState::Closing);
    assert_eq!(r.s.device_id(), None);
}

#[test]
fn token_bind_checks_device_and_expiry() {
    let mut r = rig();
    let token = crate::auth::mint_token(b"secret", "dev-9", 2_000);
    let mut f = bind_frame(1, "dev-9", "x");
    if let Body::Bind(b) = &mut f.body {
        b.credential = Credential::Token(token.clone());
    }
    let out = r.frame(0, f.clone());
    assert!(matches!(
        out[0],
        Action::Send(Frame {
            body: Body::BindAck(_),
            ..
        })
    ));

    let mut other = rig();
    if let Body::Bind(b) = &mut f.body {
        b.device_id = "dev-10".into();
    }
    let out = other.frame(0, f);
    assert_eq!(out[0], Action::BindRejected(ErrorCode::AuthFailed));
}

#[test]
fn bind_timeout_closes_unbound_connection() {
    let mut r = rig();
    assert_eq!(r.s.deadline(&r.cfg), Some(r.at(5)));
    assert!(r.tick(4).is_empty());
    let out = r.tick(5);
    assert_eq!(close_reason(&out), Some(CloseReason::BindTimeout));
    assert!(
        matches!(sent(&out)[..], [Body::Close(c)] if c.reason() == Some(CloseReason::BindTimeout))
    );
    assert_eq!(r.s.deadline(&r.cfg), None);
}

#[test]
fn any_inbound_frame_extends_the_heartbeat_deadline() {
    let mut r = rig();
    r.frame(1, bind_frame(1, "dev-1", "pk"));
    assert_eq!(r.s.deadline(&r.cfg), Some(r.at(31)));
    let out = r.frame(20, Frame::ping(2));
    assert_eq!(sent(&out), vec![&Body::Pong]);
    assert_eq!(r.s.deadline(&r.cfg), Some(r.at(50)));
    // A PushAck counts as liveness too.
    let out = r.frame(45, Frame::push_ack(3, 99));
    assert_eq!(out, vec![Action::Acked { message_id: 99 }]);
    assert!(r.tick(74).is_empty());
    let out = r.tick(75);
    assert_eq!(close_reason(&out), Some(CloseReason::HeartbeatTimeout));
    assert!(out.contains(&Action::Presence(PresenceChange::Offline {
        device_id: "dev-1".into(),
        session_id: 7,
        reason: CloseReason::HeartbeatTimeout,
    })));
}

#[test]
fn frames_before_bind_are_rejected() {
    let mut r = rig();
    let out = r.frame(0, Frame::ping(5));
    match sent(&out)[..] {
        [Body::Error(e), Body::Close(c)] => {
            assert_eq!(e.code(), Some(ErrorCode::NotBound));
            assert_eq!(c.reason(), Some(CloseReason::ProtocolError));
        }
        ref other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn second_bind_is_a_protocol_error_and_goes_offline() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let out = r.frame(1, bind_frame(2, "dev-2", "pk"));
    assert!(matches!(sent(&out)[0], Body::Error(e) if e.code() == Some(ErrorCode::AlreadyBound)));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Presence(PresenceChange::Offline { .. }))));
    assert_eq!(close_reason(&out), Some(CloseReason::ProtocolError));
}

#[test]
fn server_only_opcodes_from_a_client_are_rejected() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let out = r.frame(1, Frame::pong(9));
    match &out[0] {
        Action::Send(f) => {
            assert_eq!(f.seq, 9);
            assert!(
                matches!(&f.body, Body::Error(e) if e.code() == Some(ErrorCode::UnknownOpcode))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn kick_sends_close_with_reason_and_goes_offline_once() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let mut out = Vec::new();
    r.s.kick(CloseReason::Replaced, "bound elsewhere", &mut out);
    assert!(
        matches!(sent(&out)[..], [Body::Close(c)] if c.reason() == Some(CloseReason::Replaced))
    );
    assert_eq!(close_reason(&out), Some(CloseReason::Replaced));
    // Everything after closing is ignored: no second offline, no replies.
    let mut again = Vec::new();
    r.s.kick(CloseReason::ServerShutdown, "drain", &mut again);
    r.s.handle_transport_closed(&mut again);
    let now = r.at(2);
    r.s.handle_frame(Frame::ping(1), now, 0, &r.cfg, &r.auth, &mut again);
    assert!(again.is_empty());
}

#[test]
fn decode_error_is_answered_with_its_code_and_seq() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let mut out = Vec::new();
    let err = DecodeError::FrameTooLarge {
        len: 1 << 20,
        max: 4096,
        seq: 77,
    };
    r.s.handle_decode_error(&err, &mut out);
    match &out[0] {
        Action::Send(f) => {
            assert_eq!(f.seq, 77);
            assert!(
                matches!(&f.body, Body::Error(e) if e.code() == Some(ErrorCode::FrameTooLarge))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(close_reason(&out), Some(CloseReason::ProtocolError));
}

#[test]
fn transport_close_reports_offline_without_frames() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let mut out = Vec::new();
    r.s.handle_transport_closed(&mut out);
    assert_eq!(out.len(), 1);
    assert!(matches!(
        out[0],
        Action::Presence(PresenceChange::Offline { .. })
    ));
    assert_eq!(r.s.state(), SessionState::Closing);
}

#[test]
fn client_close_is_not_answered() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let out = r.frame(1, Frame::close(0, CloseReason::Normal, "bye"));
    assert!(sent(&out).is_empty());
    assert_eq!(close_reason(&out), Some(CloseReason::Normal));
}

#[test]
fn control_characters_in_device_id_are_refused() {
    let mut r = rig();
    let out = r.frame(0, bind_frame(1, "dev\n1", "pk"));
    assert_eq!(out[0], Action::BindRejected(ErrorCode::InvalidDeviceId));
    assert_eq!(r.s.state(), SessionState::Closing);
}

fn topics(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn subscribe(seq: u32, names: &[&str]) -> Frame {
    Frame::new(
        seq,
        Body::Subscribe {
            topics: topics(names),
        },
    )
}

fn unsubscribe(seq: u32, names: &[&str]) -> Frame {
    Frame::new(
        seq,
        Body::Unsubscribe {
            topics: topics(names),
        },
    )
}

#[test]
fn subscribe_joins_new_topics_once_and_acks_the_whole_list() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk")); // joins "news" at bind
    let out = r.frame(1, subscribe(5, &["sports", "news", "sports", "weather"]));
    assert_eq!(
        out,
        vec![
            Action::Topics {
                joined: topics(&["sports", "weather"]),
                left: vec![],
            },
            Action::Send(Frame::topics_ack(5, topics(&["news", "sports", "weather"]))),
        ]
    );
    assert_eq!(r.s.topics(), topics(&["news", "sports", "weather"]));
    assert_eq!(r.s.state(), SessionState::Bound);
    assert_eq!(
        r.s.info(r.at(1)).topics,
        topics(&["news", "sports", "weather"])
    );
}

#[test]
fn unsubscribe_leaves_joined_topics_and_ignores_others() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    r.frame(1, subscribe(2, &["sports"]));
    let out = r.frame(2, unsubscribe(3, &["news", "nope", "news"]));
    assert_eq!(
        out,
        vec![
            Action::Topics {
                joined: vec![],
                left: topics(&["news"]),
            },
            Action::Send(Frame::topics_ack(3, topics(&["sports"]))),
        ]
    );
    // Leaving the last topic is fine: the ack lists none.
    let out = r.frame(3, unsubscribe(4, &["sports"]));
    assert_eq!(out[1], Action::Send(Frame::topics_ack(4, vec![])));
    assert!(r.s.topics().is_empty());
}

#[test]
fn topic_requests_that_change_nothing_are_acked_without_a_topics_action() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let out = r.frame(1, subscribe(2, &["news"]));
    assert_eq!(
        out,
        vec![Action::Send(Frame::topics_ack(2, topics(&["news"])))]
    );
    let out = r.frame(2, unsubscribe(3, &["sports"]));
    assert_eq!(
        out,
        vec![Action::Send(Frame::topics_ack(3, topics(&["news"])))]
    );
    assert_eq!(r.s.topics(), topics(&["news"]));
}

#[test]
fn topic_requests_count_as_liveness() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    r.frame(20, subscribe(2, &["a"]));
    assert_eq!(r.s.deadline(&r.cfg), Some(r.at(50)));
    r.frame(40, unsubscribe(3, &["a"]));
    assert_eq!(r.s.deadline(&r.cfg), Some(r.at(70)));
    assert!(r.tick(69).is_empty());
}

#[test]
fn topic_requests_before_bind_are_not_bound() {
    for f in [subscribe(5, &["news"]), unsubscribe(6, &["news"])] {
        let mut r = rig();
        let seq = f.seq;
        let out = r.frame(0, f);
        match &out[..] {
            [Action::Send(e), Action::Send(c), Action::Close { reason }] => {
                assert_eq!(e.seq, seq);
                assert!(matches!(&e.body, Body::Error(e) if e.code() == Some(ErrorCode::NotBound)));
                assert!(
                    matches!(&c.body, Body::Close(c) if c.reason() == Some(CloseReason::ProtocolError))
                );
                assert_eq!(*reason, CloseReason::ProtocolError);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(r.s.topics().is_empty());
        assert_eq!(r.s.state(), SessionState::Closing);
    }
}

#[test]
fn more_than_32_topics_is_malformed_and_closes_without_joining() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk")); // 1 topic
    let names: Vec<String> = (0..31).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let out = r.frame(1, subscribe(2, &refs));
    assert!(
        matches!(&out[1], Action::Send(f) if matches!(&f.body, Body::TopicsAck { topics } if topics.len() == 32))
    );
    // At the limit, topics already held still do not count twice.
    let out = r.frame(2, subscribe(3, &["news", "t0"]));
    assert_eq!(out.len(), 1, "{out:?}");
    let before = r.s.topics().to_vec();

    let out = r.frame(3, subscribe(4, &["news", "one-too-many"]));
    match sent(&out)[..] {
        [Body::Error(e), Body::Close(c)] => {
            assert_eq!(e.code(), Some(ErrorCode::Malformed));
            assert_eq!(e.message, "too many topics");
            assert_eq!(c.reason(), Some(CloseReason::ProtocolError));
        }
        ref other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(&out[0], Action::Send(f) if f.seq == 4));
    assert!(!out.iter().any(|a| matches!(a, Action::Topics { .. })));
    assert!(out.contains(&Action::Presence(PresenceChange::Offline {
        device_id: "dev-1".into(),
        session_id: 7,
        reason: CloseReason::ProtocolError,
    })));
    assert_eq!(close_reason(&out), Some(CloseReason::ProtocolError));
    // The list the driver reads on offline is the one it indexed.
    assert_eq!(r.s.topics(), before);
}

#[test]
fn bind_keeps_each_topic_once() {
    let mut r = rig();
    let mut f = bind_frame(1, "dev-1", "pk");
    if let Body::Bind(b) = &mut f.body {
        b.topics = topics(&["a", "b", "a", "c", "b"]);
    }
    let out = r.frame(0, f);
    assert!(out.contains(&Action::Presence(PresenceChange::Online {
        device_id: "dev-1".into(),
        session_id: 7,
        topics: topics(&["a", "b", "c"]),
    })));
    assert_eq!(r.s.topics(), topics(&["a", "b", "c"]));
    // Leaving a topic given twice at bind leaves it entirely.
    let out = r.frame(1, unsubscribe(2, &["a"]));
    assert_eq!(
        out[1],
        Action::Send(Frame::topics_ack(2, topics(&["b", "c"])))
    );
}

#[test]
fn topics_ack_from_a_client_is_an_unknown_opcode() {
    let mut r = rig();
    r.frame(0, bind_frame(1, "dev-1", "pk"));
    let out = r.frame(1, Frame::topics_ack(9, topics(&["news"])));
    assert!(
        matches!(&out[0], Action::Send(f) if f.seq == 9 && matches!(&f.body, Body::Error(e) if e.code() == Some(ErrorCode::UnknownOpcode)))
    );
    assert_eq!(close_reason(&out), Some(CloseReason::ProtocolError));
}

#[test]
fn a_refused_bind_gets_unavailable_and_a_close_with_a_retry_hint() {
    let mut r = rig();
    let mut out = Vec::new();
    r.s.refuse(9, 1500, "node at capacity", &mut out);
    match sent(&out)[..] {
        [Body::Error(e), Body::Close(c)] => {
            assert_eq!(e.code(), Some(ErrorCode::Unavailable));
            assert_eq!(c.reason(), Some(CloseReason::TryLater));
            assert_eq!(c.retry_after_ms, Some(1500));
        }
        ref other => panic!("{other:?}"),
    }
    assert_eq!(close_reason(&out), Some(CloseReason::TryLater));
    assert!(!out.iter().any(|a| matches!(a, Action::Presence(_))));
    assert_eq!(r.s.state(), SessionState::Closing);
    let mut again = Vec::new();
    r.s.refuse(1, 1, "x", &mut again);
    assert!(again.is_empty(), "closing: nothing more");
}
