//! Fuzz target: the session state machine (`miop::session::Session`) driven by
//! a sequence of events: structure-aware client frames (encoded and decoded
//! again, as the engine would hand them over), raw bytes through the decoder
//! (decode errors included), clock advances and timeouts, kicks, refusals,
//! rate-limit kicks and transport closure.
//!
//! Checks after every event:
//! - no panic;
//! - state transitions are legal: AwaitingBind -> Bound | Closing,
//!   Bound -> Closing, Closing stays Closing and ignores every input;
//! - every frame the session sends is a server-to-client frame within the
//!   protocol's limits that decodes back to itself (never oversized);
//! - `Close` is asked for exactly when the session starts closing (except on
//!   transport closure, where there is nobody left to tell), and once;
//! - presence: Online exactly when it binds (with BindAck first), Offline
//!   exactly when a bound session closes, both fenced by its session id;
//! - topics: no duplicates, at most MAX_BIND_TOPICS, and `Topics` actions
//!   describe exactly the change, followed by a TopicsAck with the new list;
//! - deadlines: a timeout before the deadline does nothing, a closing
//!   session has none.

#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use miop::protocol::{decode, Body, CloseReason, DecodeError, Frame, MAX_BIND_TOPICS};
use miop::session::{Action, PresenceChange, Session, SessionConfig, SessionState};
use miop_fuzz::{authenticator, check_server_frame, ArbFrame, UNIX_START_MS};

#[derive(Debug, Arbitrary)]
struct Config {
    bind_timeout_ms: u16,
    heartbeat_ms: u16,
    timeout_extra_ms: u16,
    /// Selects the largest inbound frame: from the largest Bind to 64 KiB.
    max_frame: u8,
}

impl Config {
    fn session(&self) -> SessionConfig {
        let heartbeat = Duration::from_millis(self.heartbeat_ms as u64 + 1);
        SessionConfig {
            bind_timeout: Duration::from_millis(self.bind_timeout_ms as u64 + 1),
            heartbeat_interval: heartbeat,
            heartbeat_timeout: heartbeat + Duration::from_millis(self.timeout_extra_ms as u64 + 1),
            max_frame_len: match self.max_frame % 3 {
                0 => miop::protocol::MAX_FRAME_LEN as u32,
                1 => miop::protocol::MAX_BIND_FRAME_LEN as u32,
                _ => 8192,
            },
            max_outbound_bytes: 4096,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Frame(ArbFrame),
    /// Several frames back to back, as one read.
    Frames(Vec<ArbFrame>),
    Raw(Vec<u8>),
    Advance(u16),
    AdvanceLong(u32),
    /// `handle_timeout` at the current time (whether due or not).
    Timeout,
    /// `handle_timeout` exactly at the deadline (or just before it).
    AtDeadline(bool),
    Kick(u8, String),
    KickWithRetry(u8, String, u32),
    Refuse(u32, u32, String),
    TransportClosed,
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: Config,
    session_id: u64,
    ops: Vec<Op>,
}

fn reason(r: u8) -> CloseReason {
    CloseReason::from_u16(r as u16 % 11).unwrap()
}

struct Checker {
    session: Session,
    cfg: SessionConfig,
    t0: Instant,
    now: Instant,
    closes: usize,
    online: bool,
    was_bound: bool,
}

impl Checker {
    fn unix_secs(&self) -> u64 {
        (UNIX_START_MS + (self.now - self.t0).as_millis() as u64) / 1000
    }

    /// Runs one event and checks what it did.
    fn step(&mut self, event: impl FnOnce(&mut Session, &mut Vec<Action>), kind: Kind) {
        let before = self.session.state();
        let topics_before = self.session.topics().to_vec();
        let mut out = Vec::new();
        event(&mut self.session, &mut out);
        let after = self.session.state();

        // Legal transitions.
        match (before, after) {
            (SessionState::AwaitingBind, _) => {}
            (SessionState::Bound, SessionState::Bound | SessionState::Closing) => {}
            (SessionState::Closing, SessionState::Closing) => {}
            (b, a) => panic!("illegal transition {b:?} -> {a:?}"),
        }
        if before == SessionState::Closing {
            assert!(out.is_empty(), "a closing session acted: {out:?}");
        }
        if after == SessionState::Closing {
            assert_eq!(self.session.deadline(&self.cfg), None);
        }

        // Frames, presence, topics, close.
        let mut topics = topics_before.clone();
        let mut bind_acked = false;
        let mut closes = 0;
        let mut pending_topics_ack: Option<Vec<String>> = None;
        for (i, a) in out.iter().enumerate() {
            assert_eq!(closes, 0, "an action after Close: {out:?}");
            match a {
                Action::Send(f) => {
                    check_server_frame(f);
                    match &f.body {
                        Body::BindAck(ack) => {
                            assert_eq!(before, SessionState::AwaitingBind);
                            assert_eq!(ack.session_id, self.session.session_id());
                            bind_acked = true;
                        }
                        Body::TopicsAck { topics: t } => {
                            assert_eq!(before, SessionState::Bound, "{out:?}");
                            assert_eq!(t, &self.session.topics(), "TopicsAck is the whole list");
                            pending_topics_ack = None;
                        }
                        _ => {}
                    }
                }
                Action::Presence(PresenceChange::Online {
                    device_id,
                    session_id,
                    topics: t,
                }) => {
                    assert!(bind_acked, "Online before BindAck: {out:?}");
                    assert!(!self.online && !self.was_bound, "second Online");
                    assert_eq!(*session_id, self.session.session_id());
                    assert_eq!(Some(&**device_id), self.session.device_id());
                    assert_eq!(t, &self.session.topics());
                    self.online = true;
                    self.was_bound = true;
                    topics = t.clone();
                }
                Action::Presence(PresenceChange::Offline {
                    device_id,
                    session_id,
                    ..
                }) => {
                    assert!(self.online, "Offline without Online: {out:?}");
                    assert_eq!(before, SessionState::Bound);
                    assert_eq!(*session_id, self.session.session_id());
                    assert_eq!(Some(&**device_id), self.session.device_id());
                    self.online = false;
                }
                Action::Topics { joined, left } => {
                    assert_eq!(before, SessionState::Bound);
                    assert!(!joined.is_empty() || !left.is_empty(), "empty Topics");
                    for j in joined {
                        assert!(!topics.contains(j), "joined twice: {j:?}");
                        topics.push(j.clone());
                    }
                    for l in left {
                        let n = topics.len();
                        topics.retain(|t| t != l);
                        assert_eq!(topics.len() + 1, n, "left a topic not held: {l:?}");
                    }
                    let mut a = topics.clone();
                    let mut b = self.session.topics().to_vec();
                    a.sort();
                    b.sort();
                    assert_eq!(a, b, "Topics does not describe the change");
                    // The ack must follow.
                    pending_topics_ack = Some(self.session.topics().to_vec());
                    assert!(
                        matches!(
                            out.get(i + 1),
                            Some(Action::Send(Frame {
                                body: Body::TopicsAck { .. },
                                ..
                            }))
                        ),
                        "Topics not followed by TopicsAck: {out:?}"
                    );
                }
                Action::BindRejected(_) => assert_eq!(before, SessionState::AwaitingBind),
                Action::Acked { .. } => assert_eq!(before, SessionState::Bound),
                Action::Close { .. } => closes += 1,
            }
        }
        assert!(pending_topics_ack.is_none());
        self.closes += closes;
        assert!(self.closes <= 1, "Close asked for twice");
        let started_closing = before != SessionState::Closing && after == SessionState::Closing;
        if kind == Kind::TransportClosed {
            assert_eq!(closes, 0, "Close on a closed transport");
        } else {
            assert_eq!(
                started_closing,
                closes == 1,
                "Close iff closing: {before:?} -> {after:?}, {out:?}"
            );
        }
        if before == SessionState::AwaitingBind && after == SessionState::Bound {
            assert!(self.online && bind_acked);
        }
        if before == SessionState::Bound && after == SessionState::Closing {
            assert!(!self.online, "a bound session closed without Offline");
        }
        if after == SessionState::Bound {
            assert!(self.online);
        } else if after == SessionState::Closing {
            assert!(!self.online);
        }

        // Topic list: no duplicates, within the limit.
        let t = self.session.topics();
        assert!(t.len() <= MAX_BIND_TOPICS, "{} topics", t.len());
        for (i, a) in t.iter().enumerate() {
            assert!(!t[..i].contains(a), "duplicate topic {a:?}");
        }
        let info = self.session.info(self.now);
        assert_eq!(info.state, after);
        assert_eq!(info.topics, t);
    }

    fn frame(&mut self, frame: Frame) {
        let now = self.now;
        let unix = self.unix_secs();
        let cfg = self.cfg;
        let auth = authenticator();
        self.step(
            |s, out| s.handle_frame(frame, now, unix, &cfg, &auth, out),
            Kind::Other,
        );
    }

    fn decode_error(&mut self, e: DecodeError) {
        self.step(|s, out| s.handle_decode_error(&e, out), Kind::Other);
    }

    /// Decodes `bytes` frame by frame as the engine does (with the limit
    /// that applies before and after Bind) and hands each over.
    fn bytes(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while self.session.state() != SessionState::Closing {
            let max = if self.session.state() == SessionState::AwaitingBind {
                (self.cfg.max_frame_len as usize).min(miop::protocol::MAX_BIND_FRAME_LEN)
            } else {
                self.cfg.max_frame_len as usize
            };
            match decode(rest, max) {
                Ok(Some((f, n))) => {
                    rest = &rest[n..];
                    self.frame(f);
                }
                Ok(None) => break,
                Err(e) => {
                    self.decode_error(e);
                    break;
                }
            }
        }
    }

    fn timeout(&mut self) {
        let now = self.now;
        let cfg = self.cfg;
        let due = self.session.deadline(&cfg).is_some_and(|d| now >= d);
        let before = self.session.state();
        self.step(|s, out| s.handle_timeout(now, &cfg, out), Kind::Other);
        if !due {
            assert_eq!(
                self.session.state(),
                before,
                "timed out before the deadline"
            );
        } else {
            assert_eq!(
                self.session.state(),
                SessionState::Closing,
                "not closed at the deadline"
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TransportClosed,
    Other,
}

fuzz_target!(|input: Input| {
    let t0 = Instant::now();
    let cfg = input.config.session();
    let mut c = Checker {
        session: Session::new(input.session_id, t0),
        cfg,
        t0,
        now: t0,
        closes: 0,
        online: false,
        was_bound: false,
    };
    assert!(c.session.deadline(&cfg).is_some());
    for op in input.ops.iter().take(256) {
        match op {
            Op::Frame(f) => {
                // What a client can send arrives decoded: frames beyond the
                // protocol's limits only ever come as raw bytes.
                if let Some(bytes) = f.bytes() {
                    c.bytes(&bytes);
                }
            }
            Op::Frames(fs) => {
                let mut all = Vec::new();
                for f in fs.iter().take(16) {
                    if let Some(b) = f.bytes() {
                        all.extend_from_slice(&b);
                    }
                }
                c.bytes(&all);
            }
            Op::Raw(b) => c.bytes(b),
            Op::Advance(ms) => {
                c.now += Duration::from_millis(*ms as u64);
                c.timeout();
            }
            Op::AdvanceLong(ms) => {
                c.now += Duration::from_millis(*ms as u64);
            }
            Op::Timeout => c.timeout(),
            Op::AtDeadline(early) => {
                if let Some(d) = c.session.deadline(&cfg) {
                    let at = if *early {
                        d - Duration::from_millis(1)
                    } else {
                        d
                    };
                    if at > c.now {
                        c.now = at;
                    }
                    c.timeout();
                }
            }
            Op::Kick(r, msg) => {
                let r = reason(*r);
                c.step(|s, out| s.kick(r, msg, out), Kind::Other);
            }
            Op::KickWithRetry(r, msg, retry) => {
                let r = reason(*r);
                c.step(|s, out| s.kick_with_retry(r, msg, *retry, out), Kind::Other);
            }
            Op::Refuse(seq, retry, msg) => {
                c.step(|s, out| s.refuse(*seq, *retry, msg, out), Kind::Other);
            }
            Op::TransportClosed => c.step(
                |s, out| s.handle_transport_closed(out),
                Kind::TransportClosed,
            ),
        }
    }
});
