//! The session state machine: awaiting-bind → bound → closing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Action, PresenceChange, SessionConfig};
use crate::auth::Authenticator;
use crate::protocol::{
    Bind, BindAck, Body, CloseReason, DecodeError, ErrorCode, Frame, MAX_BIND_TOPICS,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Connected; waiting for a valid Bind within the bind timeout.
    AwaitingBind,
    /// Bound to a device id; heartbeats expected.
    Bound,
    /// A Close was decided; the driver flushes and closes. Inputs are ignored.
    Closing,
}

/// One connection's protocol state. Kept small on purpose: a node holds a
/// million of these (88 bytes on 64-bit targets). Times after `opened_at` are
/// kept as millisecond offsets from it rather than 16-byte `Instant`s.
#[derive(Debug)]
pub struct Session {
    session_id: u64,
    opened_at: Instant,
    /// Last time any frame arrived (liveness), in ms after `opened_at`.
    last_inbound_ms: u64,
    /// When the Bind succeeded, in ms after `opened_at` (`NOT_BOUND` before).
    /// Binds happen within the bind timeout (at most 7 days), so u32 fits.
    bound_after_ms: u32,
    state: SessionState,
    frames_in: u64,
    /// Shared with the node's device index, so the id is stored once.
    device_id: Option<Arc<str>>,
    /// Topics joined (at Bind, then by Subscribe), without duplicates, in the
    /// order joined; at most [`MAX_BIND_TOPICS`].
    topics: Vec<String>,
}

const NOT_BOUND: u32 = u32::MAX;

/// Milliseconds from `from` to `to` (0 if `to` is earlier).
fn ms_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

/// A read-only view of a session for the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub state: SessionState,
    pub session_id: u64,
    pub device_id: Option<String>,
    pub topics: Vec<String>,
    pub connected_ms: u64,
    pub bound_ms: Option<u64>,
    pub idle_ms: u64,
    pub frames_in: u64,
}

impl Session {
    /// A session for a connection accepted at `now`. `session_id` must be unique
    /// on this node (it fences presence changes).
    pub fn new(session_id: u64, now: Instant) -> Session {
        Session {
            state: SessionState::AwaitingBind,
            session_id,
            opened_at: now,
            last_inbound_ms: 0,
            bound_after_ms: NOT_BOUND,
            device_id: None,
            topics: Vec::new(),
            frames_in: 0,
        }
    }

    fn last_inbound(&self) -> Instant {
        self.opened_at + Duration::from_millis(self.last_inbound_ms)
    }

    fn bound_at(&self) -> Option<Instant> {
        (self.bound_after_ms != NOT_BOUND)
            .then(|| self.opened_at + Duration::from_millis(self.bound_after_ms as u64))
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    pub fn device_id(&self) -> Option<&str> {
        self.device_id.as_deref()
    }

    /// The bound device's id, shared (not copied) with whoever keeps it.
    pub fn device(&self) -> Option<&Arc<str>> {
        self.device_id.as_ref()
    }

    /// The topics this session has joined now (no duplicates).
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// When [`Session::handle_timeout`] must be called next, if ever.
    pub fn deadline(&self, cfg: &SessionConfig) -> Option<Instant> {
        match self.state {
            SessionState::AwaitingBind => Some(self.opened_at + cfg.bind_timeout),
            SessionState::Bound => Some(self.last_inbound() + cfg.heartbeat_timeout),
            SessionState::Closing => None,
        }
    }

    /// The transport saw the peer alive without a Miop frame (a WebSocket
    /// ping): counts for the heartbeat timeout like a frame.
    pub fn note_liveness(&mut self, now: Instant) {
        if self.state == SessionState::Bound {
            self.last_inbound_ms = ms_between(self.opened_at, now);
        }
    }

    /// Handles one frame received from the peer.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        now: Instant,
        unix_now: u64,
        cfg: &SessionConfig,
        auth: &Authenticator,
        out: &mut Vec<Action>,
    ) {
        if self.state == SessionState::Closing {
            return;
        }
        self.frames_in += 1;
        self.last_inbound_ms = ms_between(self.opened_at, now);
        let seq = frame.seq;
        match (self.state, frame.body) {
            (_, Body::Close(_)) => self.close(CloseReason::Normal, None, out),
            (SessionState::AwaitingBind, Body::Bind(bind)) => {
                self.bind(seq, bind, now, unix_now, cfg, auth, out)
            }
            (
                SessionState::AwaitingBind,
                Body::Ping
                | Body::PushAck { .. }
                | Body::Subscribe { .. }
                | Body::Unsubscribe { .. },
            ) => self.fail(seq, ErrorCode::NotBound, "send Bind first", out),
            (SessionState::Bound, Body::Ping) => out.push(Action::Send(Frame::pong(seq))),
            (SessionState::Bound, Body::PushAck { message_id }) => {
                out.push(Action::Acked { message_id })
            }
            (SessionState::Bound, Body::Subscribe { topics }) => self.subscribe(seq, topics, out),
            (SessionState::Bound, Body::Unsubscribe { topics }) => {
                self.unsubscribe(seq, topics, out)
            }
            (SessionState::Bound, Body::Bind(_)) => self.fail(
                seq,
                ErrorCode::AlreadyBound,
                "connection is already bound",
                out,
            ),
            (_, body) => {
                let msg = format!("{} is not valid from a client", body.opcode().name());
                self.fail(seq, ErrorCode::UnknownOpcode, &msg, out)
            }
        }
    }

    /// Handles bytes that could not be decoded: Error, then Close.
    pub fn handle_decode_error(&mut self, err: &DecodeError, out: &mut Vec<Action>) {
        if self.state == SessionState::Closing {
            return;
        }
        if self.state == SessionState::AwaitingBind {
            out.push(Action::BindRejected(err.code()));
        }
        let msg = err.to_string();
        self.send_error_and_close(err.seq(), err.code(), &msg, CloseReason::ProtocolError, out);
    }

    /// Closes the session if its deadline has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant, cfg: &SessionConfig, out: &mut Vec<Action>) {
        match self.deadline(cfg) {
            Some(d) if now >= d => {}
            _ => return,
        }
        let (reason, msg) = match self.state {
            SessionState::AwaitingBind => {
                (CloseReason::BindTimeout, "no Bind within the bind timeout")
            }
            _ => (
                CloseReason::HeartbeatTimeout,
                "no frame within the heartbeat timeout",
            ),
        };
        self.close(reason, Some(msg), out);
    }

    /// Closes the session on the node's initiative (duplicate bind, drain, admin).
    pub fn kick(&mut self, reason: CloseReason, message: &str, out: &mut Vec<Action>) {
        if self.state != SessionState::Closing {
            self.close(reason, Some(message), out);
        }
    }

    /// The node cannot take this connection now (admission control): answers
    /// Error(UNAVAILABLE) with `seq` (the Bind's, or 0 for a refusal at
    /// accept) and Close(TRY_LATER) with a retry-after hint, and closes. A
    /// bound session goes offline. (PROTOCOL.md §10.12.)
    pub fn refuse(&mut self, seq: u32, retry_after_ms: u32, message: &str, out: &mut Vec<Action>) {
        if self.state == SessionState::Closing {
            return;
        }
        out.push(Action::Send(Frame::error(
            seq,
            ErrorCode::Unavailable,
            message,
        )));
        out.push(Action::Send(Frame::close_retry(
            0,
            CloseReason::TryLater,
            message,
            retry_after_ms,
        )));
        self.go_offline(CloseReason::TryLater, out);
        self.state = SessionState::Closing;
        out.push(Action::Close {
            reason: CloseReason::TryLater,
        });
    }

    /// Closes the session with a retry-after hint on its Close (a client that
    /// kept sending over its budget: RATE_LIMITED).
    pub fn kick_with_retry(
        &mut self,
        reason: CloseReason,
        message: &str,
        retry_after_ms: u32,
        out: &mut Vec<Action>,
    ) {
        if self.state == SessionState::Closing {
            return;
        }
        out.push(Action::Send(Frame::close_retry(
            0,
            reason,
            message,
            retry_after_ms,
        )));
        self.go_offline(reason, out);
        self.state = SessionState::Closing;
        out.push(Action::Close { reason });
    }

    /// The transport ended (EOF, reset) without a Close frame.
    pub fn handle_transport_closed(&mut self, out: &mut Vec<Action>) {
        if self.state == SessionState::Closing {
            return;
        }
        self.go_offline(CloseReason::Normal, out);
        self.state = SessionState::Closing;
    }

    /// Time since the connection was accepted (no allocation, unlike `info`).
    pub fn connected_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.opened_at)
    }

    pub fn info(&self, now: Instant) -> SessionInfo {
        let ms = |d: Duration| d.as_millis() as u64;
        SessionInfo {
            state: self.state,
            session_id: self.session_id,
            device_id: self.device_id.as_deref().map(str::to_owned),
            topics: self.topics.clone(),
            connected_ms: ms(now.saturating_duration_since(self.opened_at)),
            bound_ms: self
                .bound_at()
                .map(|b| ms(now.saturating_duration_since(b))),
            idle_ms: ms(now.saturating_duration_since(self.last_inbound())),
            frames_in: self.frames_in,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bind(
        &mut self,
        seq: u32,
        bind: Bind,
        now: Instant,
        unix_now: u64,
        cfg: &SessionConfig,
        auth: &Authenticator,
        out: &mut Vec<Action>,
    ) {
        if bind.device_id.chars().any(char::is_control) {
            out.push(Action::BindRejected(ErrorCode::InvalidDeviceId));
            return self.fail(
                seq,
                ErrorCode::InvalidDeviceId,
                "device id has control characters",
                out,
            );
        }
        if auth
            .check(&bind.device_id, &bind.credential, unix_now)
            .is_err()
        {
            out.push(Action::BindRejected(ErrorCode::AuthFailed));
            return self.send_error_and_close(
                seq,
                ErrorCode::AuthFailed,
                "authentication failed",
                CloseReason::AuthFailed,
                out,
            );
        }
        let device_id: Arc<str> = bind.device_id.into();
        self.state = SessionState::Bound;
        self.bound_after_ms = ms_between(self.opened_at, now).min(NOT_BOUND as u64 - 1) as u32;
        self.device_id = Some(device_id.clone());
        self.topics = bind.topics;
        dedup_in_order(&mut self.topics);
        let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
        out.push(Action::Send(Frame::new(
            seq,
            Body::BindAck(BindAck {
                heartbeat_interval_ms: ms(cfg.heartbeat_interval),
                heartbeat_timeout_ms: ms(cfg.heartbeat_timeout),
                max_frame_len: cfg.max_frame_len,
                session_id: self.session_id,
            }),
        )));
        out.push(Action::Presence(PresenceChange::Online {
            device_id,
            session_id: self.session_id,
            topics: self.topics.clone(),
        }));
    }

    /// Joins the topics not joined yet, all or nothing: if the session would
    /// hold more than [`MAX_BIND_TOPICS`] it is closed (MALFORMED) unchanged.
    fn subscribe(&mut self, seq: u32, mut topics: Vec<String>, out: &mut Vec<Action>) {
        topics.retain(|t| !self.topics.contains(t));
        dedup_in_order(&mut topics);
        if self.topics.len() + topics.len() > MAX_BIND_TOPICS {
            return self.fail(seq, ErrorCode::Malformed, "too many topics", out);
        }
        self.topics.extend_from_slice(&topics);
        self.topics_changed(seq, topics, Vec::new(), out);
    }

    /// Leaves the listed topics; ones not joined are ignored.
    fn unsubscribe(&mut self, seq: u32, topics: Vec<String>, out: &mut Vec<Action>) {
        let mut left = Vec::new();
        self.topics.retain(|t| {
            let leave = topics.contains(t);
            if leave {
                left.push(t.clone());
            }
            !leave
        });
        self.topics_changed(seq, Vec::new(), left, out);
    }

    /// Tells the driver what changed (before the ack is queued, so its index is
    /// up to date by the time the client reads the ack), then acks with the
    /// whole list.
    fn topics_changed(
        &mut self,
        seq: u32,
        joined: Vec<String>,
        left: Vec<String>,
        out: &mut Vec<Action>,
    ) {
        if !joined.is_empty() || !left.is_empty() {
            out.push(Action::Topics { joined, left });
        }
        out.push(Action::Send(Frame::topics_ack(seq, self.topics.clone())));
    }

    fn fail(&mut self, seq: u32, code: ErrorCode, msg: &str, out: &mut Vec<Action>) {
        self.send_error_and_close(seq, code, msg, CloseReason::ProtocolError, out)
    }

    fn send_error_and_close(
        &mut self,
        seq: u32,
        code: ErrorCode,
        msg: &str,
        reason: CloseReason,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Send(Frame::error(seq, code, msg)));
        self.close(reason, Some(msg), out);
    }

    /// Sends Close (unless the peer asked for it), reports offline, and asks the
    /// driver to close the connection.
    fn close(&mut self, reason: CloseReason, message: Option<&str>, out: &mut Vec<Action>) {
        if let Some(m) = message {
            out.push(Action::Send(Frame::close(0, reason, m)));
        }
        self.go_offline(reason, out);
        self.state = SessionState::Closing;
        out.push(Action::Close { reason });
    }

    fn go_offline(&mut self, reason: CloseReason, out: &mut Vec<Action>) {
        if self.state == SessionState::Bound {
            if let Some(device_id) = self.device_id.clone() {
                out.push(Action::Presence(PresenceChange::Offline {
                    device_id,
                    session_id: self.session_id,
                    reason,
                }));
            }
        }
    }
}

/// Removes repeated entries, keeping each first occurrence in place. Lists
/// hold at most [`MAX_BIND_TOPICS`] entries, so quadratic is fine.
fn dedup_in_order(list: &mut Vec<String>) {
    let mut i = 0;
    while i < list.len() {
        if list[..i].contains(&list[i]) {
            list.remove(i);
        } else {
            i += 1;
        }
    }
}
