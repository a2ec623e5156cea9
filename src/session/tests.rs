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
