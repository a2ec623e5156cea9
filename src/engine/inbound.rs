//! Events that start at the peer: a new connection, bytes read, and what the
//! session decides about them.

use std::net::SocketAddr;

use super::budget::Budget;
use super::conn::{Conn, ADMITTED, SHUT};
use super::{ConnKey, Engine, Intent, Notice, Now, PresenceEvent, SessionRef};
use crate::protocol::{self, Body, CloseReason, MAX_BIND_FRAME_LEN};
use crate::session::{Action, PresenceChange, Session, SessionState};
use crate::transport::Wire;

/// Shortest retry-after hint for a session closed as RATE_LIMITED.
const RATE_LIMITED_RETRY_MS: u32 = 30_000;

impl Engine {
    /// A connection was accepted on the node's first listener (plain TCP in
    /// tests). Returns its key; the session must Bind within the bind timeout.
    pub fn accept(&mut self, now: Now, peer: SocketAddr) -> ConnKey {
        self.accept_on(now, peer, 0)
    }

    /// A connection was accepted on listener number `listener` (an index
    /// into the configuration's transports). Returns its key; the session
    /// must Bind within the bind timeout, which also bounds the transport's
    /// handshakes.
    pub fn accept_on(&mut self, now: Now, peer: SocketAddr, listener: usize) -> ConnKey {
        let serial = self.next_serial;
        self.next_serial += 1;
        // Core id in the top bits makes session ids unique per node without a
        // shared counter.
        let session_id = ((self.cfg.core as u64) << 48) | (serial & ((1 << 48) - 1));
        let now_ms = self.timers.ms_floor(now.mono);
        let l = &self.cfg.limits;
        let budget = Budget::new(
            now_ms,
            2.0 * l.frames_per_sec as f32,
            2.0 * l.bytes_per_sec as f32,
        );
        let spec = self.cfg.transports.spec(listener);
        let (wire, failure) = match Wire::new(spec, &self.cfg.transports) {
            Ok(w) => (w, None),
            Err(f) => (None, Some(f)),
        };
        let mut conn = Conn::new(Session::new(session_id, now.mono), peer, budget);
        conn.wire = wire;
        let slot = self.conns.insert(conn);
        let key = ConnKey(slot as u32);
        self.high_water = self.high_water.max(slot + 1);
        self.stats.accepted += 1;
        self.arm(key);
        let at = SessionRef { key, session_id };
        if self.draining {
            self.kick(now, at, CloseReason::ServerShutdown);
        } else if let Some(f) = failure {
            // A listener whose transport cannot start (never with a
            // configuration that passed start-up checks).
            self.transport_failed(now, key, f);
        } else if !spec.proxy {
            // Behind a PROXY header the address is known only once the
            // header arrives: admission waits for it.
            self.admit(now, at, peer);
        }
        key
    }

    /// Admission control for a connection from `peer` (the socket's, or
    /// the one its PROXY header named).
    pub(super) fn admit(&mut self, now: Now, at: SessionRef, peer: SocketAddr) {
        let now_ms = self.timers.ms_floor(now.mono);
        let Some(c) = self.conns.get_mut(at.key.index()) else {
            return;
        };
        c.set(ADMITTED, true);
        if let Err(r) = self.admission.on_accept(peer.ip(), now_ms) {
            // Told at once, with when to come back, instead of a silent drop.
            self.stats.refused[r as usize] += 1;
            let retry = self.admission.retry_after(r.retry_base_ms());
            let mut actions = std::mem::take(&mut self.scratch);
            c.session.refuse(0, retry, r.message(), &mut actions);
            self.apply(now, at, &mut actions);
            self.scratch = actions;
        }
    }

    /// Bytes read from a connection (never empty: EOF is
    /// [`Engine::on_transport_end`]).
    pub fn on_bytes(&mut self, now: Now, key: ConnKey, bytes: &[u8]) {
        match self.conns.get(key.index()) {
            Some(c) if c.wire.is_some() => self.on_wire_bytes(now, key, bytes),
            _ => self.on_miop_bytes(now, key, bytes),
        }
    }

    /// Miop bytes from the peer: straight from the socket on plain TCP, or
    /// unwrapped by the connection's transport layers.
    pub(super) fn on_miop_bytes(&mut self, now: Now, key: ConnKey, bytes: &[u8]) {
        let mut actions = std::mem::take(&mut self.scratch);
        let Some(c) = self.conns.get_mut(key.index()) else {
            return;
        };
        if c.has(SHUT) || c.closing() {
            return;
        }
        let session_id = c.session.session_id();
        let cfg = &self.cfg;
        let now_ms = self.timers.ms_floor(now.mono);
        // Nobody is trusted before Bind: until then a frame may be no longer
        // than the largest valid Bind, whatever the limit after it.
        let max = if c.session.state() == SessionState::AwaitingBind {
            (cfg.session.max_frame_len as usize).min(MAX_BIND_FRAME_LEN)
        } else {
            cfg.session.max_frame_len as usize
        };
        let mut frames = 0u32;
        // Fast path: whole frames straight from the driver's read buffer; only
        // an incomplete tail is copied into the connection's own buffer.
        let mut held = c
            .active
            .as_mut()
            .map(|a| std::mem::take(&mut a.inbound))
            .unwrap_or_default();
        if !held.is_empty() {
            // Exactly what is needed: a doubling here would let a client that
            // trickles a large frame pin twice its size.
            held.reserve_exact(bytes.len());
            held.extend_from_slice(bytes);
        }
        let (used, total) = {
            let src: &[u8] = if held.is_empty() { bytes } else { &held };
            let mut used = 0;
            while !c.closing() {
                match protocol::decode(&src[used..], max) {
                    Ok(Some((frame, n))) => {
                        used += n;
                        frames += 1;
                        if matches!(frame.body, Body::Bind(_))
                            && c.session.state() == SessionState::AwaitingBind
                        {
                            if let Err(r) = self.admission.on_bind(self.stats.sessions, now_ms) {
                                self.stats.refused[r as usize] += 1;
                                let retry = self.admission.retry_after(r.retry_base_ms());
                                c.session
                                    .refuse(frame.seq, retry, r.message(), &mut actions);
                                break;
                            }
                        }
                        c.session.handle_frame(
                            frame,
                            now.mono,
                            now.unix_secs(),
                            &cfg.session,
                            &cfg.auth,
                            &mut actions,
                        );
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.intents
                            .push_back(Intent::Notice(Notice::ProtocolError {
                                peer: c.peer.addr(),
                                error: e.to_string(),
                            }));
                        c.session.handle_decode_error(&e, &mut actions);
                        break;
                    }
                }
            }
            (used, src.len())
        };
        if !c.closing() && used < total {
            let rest = if held.is_empty() {
                bytes[used..].to_vec()
            } else {
                held.drain(..used);
                held
            };
            c.active().inbound = rest;
        }
        // Charge the read to the session's inbound budget.
        let l = &cfg.limits;
        let pause_ms = c.budget.charge(
            now_ms,
            frames,
            bytes.len() as u32,
            l.frames_per_sec,
            l.bytes_per_sec,
        );
        let mut rate_limited = false;
        if pause_ms > 0 && !c.closing() {
            let a = c.active();
            let since = *a.over_budget_since_ms.get_or_insert(now_ms);
            let grace = l.budget_grace.as_millis() as u64;
            let left = (since + grace).saturating_sub(now_ms);
            if left == 0 {
                // Slowed down for the whole grace and still over budget.
                rate_limited = true;
            } else {
                // Slow it down; no longer than the grace it has left, so a
                // flood that stays over is closed when the grace is over.
                a.paused_until_ms = Some(now_ms + pause_ms.min(left));
                self.stats.throttled += 1;
            }
        } else if let Some(a) = c.active.as_mut() {
            a.over_budget_since_ms = None;
        }
        c.compact();
        let at = SessionRef { key, session_id };
        self.apply(now, at, &mut actions);
        if rate_limited {
            let retry = self.admission.retry_after(RATE_LIMITED_RETRY_MS);
            if let Some(c) = self.live_mut(at) {
                c.session.kick_with_retry(
                    CloseReason::RateLimited,
                    "over the inbound budget (frames or bytes per second)",
                    retry,
                    &mut actions,
                );
            }
            self.apply(now, at, &mut actions);
        } else if pause_ms > 0 {
            self.arm(key);
        }
        self.scratch = actions;
    }

    /// Closes a session on the node's initiative (duplicate bind, drain, slow
    /// consumer, admin). Returns whether the session was there to close.
    pub fn kick(&mut self, now: Now, at: SessionRef, reason: CloseReason) -> bool {
        let mut actions = std::mem::take(&mut self.scratch);
        let Some(c) = self.live_mut(at) else {
            return false;
        };
        if c.has(SHUT) || c.closing() {
            return false;
        }
        c.session.kick(reason, kick_message(reason), &mut actions);
        self.apply(now, at, &mut actions);
        self.scratch = actions;
        true
    }

    /// Carries out a session's actions, in order.
    pub(super) fn apply(&mut self, now: Now, at: SessionRef, actions: &mut Vec<Action>) {
        let max_out = self.cfg.session.max_outbound_bytes;
        let mut slow = None;
        for action in actions.drain(..) {
            let Some(c) = self
                .conns
                .get_mut(at.key.index())
                .filter(|c| c.is(at.session_id))
            else {
                continue;
            };
            match action {
                Action::Send(frame) => {
                    if c.has(SHUT) {
                        continue;
                    }
                    let peer = c.peer.addr();
                    let closing = c.closing();
                    let out = &mut c.active().outbound;
                    if let Err(e) = out.encode(&frame) {
                        // Only a bug can get here (server frames are built
                        // within the limits); say so instead of panicking.
                        self.intents
                            .push_back(Intent::Notice(Notice::ProtocolError {
                                peer,
                                error: format!("cannot encode a server frame: {e}"),
                            }));
                    }
                    if out.len() > max_out && !closing {
                        // The peer is not reading: free what is queued for it
                        // and close it, instead of growing without bound.
                        let queued = out.len();
                        out.clear_queued();
                        slow = Some((peer, queued));
                    }
                    self.flush_later(at.key);
                }
                Action::Presence(PresenceChange::Online { device_id, .. }) => {
                    self.topics.join(at, c.session.topics());
                    self.stats.sessions += 1;
                    self.stats.bind_result(None);
                    let waited = c.session.connected_for(now.mono);
                    self.stats.bind_duration.record(waited.as_secs_f64());
                    self.intents
                        .push_back(Intent::Presence(PresenceEvent::Online {
                            device: device_id,
                            at,
                            since_ms: now.unix_ms,
                        }));
                    // The heartbeat deadline may come before the bind deadline
                    // the timer holds.
                    self.arm(at.key);
                }
                Action::Presence(PresenceChange::Offline { device_id, .. }) => {
                    self.stats.sessions -= 1;
                    self.topics.leave(at, c.session.topics());
                    self.hand_off_unacked(now, &device_id, at);
                    self.intents
                        .push_back(Intent::Presence(PresenceEvent::Offline {
                            device: device_id,
                            at,
                        }));
                }
                Action::Topics { joined, left } => {
                    self.topics.join(at, &joined);
                    self.topics.leave(at, &left);
                }
                Action::BindRejected(code) => {
                    self.stats.bind_result(Some(code));
                    self.intents.push_back(Intent::Notice(Notice::BindRefused {
                        peer: c.peer.addr(),
                        code,
                    }));
                }
                Action::Acked { message_id } => {
                    self.stats.push_acks += 1;
                    if let Some(latency) = self.acks.acked(at, message_id, now.mono) {
                        self.stats.push_ack_latency.record(latency.as_secs_f64());
                    }
                }
                Action::Close { reason } => {
                    self.stats.closed_reason(reason);
                    match reason {
                        CloseReason::HeartbeatTimeout => self.stats.heartbeat_timeouts += 1,
                        CloseReason::BindTimeout => {
                            self.stats.bind_timeouts += 1;
                            // The bind timeout bounds transport handshakes too.
                            if let Some(layer) = c.wire.as_ref().and_then(|w| w.handshaking_layer())
                            {
                                self.stats.transport_failure(crate::transport::WireFailure {
                                    layer,
                                    reason: "handshake_timeout",
                                });
                            }
                        }
                        _ => {}
                    }
                    self.begin_close(now, at.key);
                }
            }
        }
        if let Some((peer, queued)) = slow {
            self.intents
                .push_back(Intent::Notice(Notice::SlowConsumer { peer, queued }));
            self.kick(now, at, CloseReason::SlowConsumer);
        }
    }

    /// Unacked pushes of an ended session go to offline storage (through the
    /// control plane), so the device gets them again when it binds; the
    /// client library drops the duplicates it already saw.
    fn hand_off_unacked(&mut self, now: Now, device: &std::sync::Arc<str>, at: SessionRef) {
        let Some(queue) = self.acks.take(at) else {
            return;
        };
        let messages: Vec<_> = queue
            .into_iter()
            .filter(|u| u.keep_until_ms > now.unix_ms)
            .collect();
        if !messages.is_empty() {
            self.intents
                .push_back(Intent::Unacked(super::UnackedHandoff {
                    device_id: device.clone(),
                    messages,
                }));
        }
    }
}

/// The human-readable message of a Close the node decided.
pub(super) fn kick_message(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::Replaced => "the device bound again on another connection",
        CloseReason::ServerShutdown => "server shutting down",
        CloseReason::SlowConsumer => "outbound queue overflow: the client does not read",
        _ => "closed by the server",
    }
}
