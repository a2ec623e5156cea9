//! Counters and histograms of one engine: plain integers the engine bumps on
//! its own thread, copied to the control plane when `/metrics` is scraped.

use super::admission::REFUSALS;
use crate::metrics::histogram::{Histogram, BIND_DURATION_BUCKETS, PUSH_ACK_BUCKETS};
use crate::protocol::{CloseReason, ErrorCode};

/// Close kinds: the eleven close reasons (by wire value), then the
/// transport's.
pub const CLOSE_KINDS: usize = 13;
pub const CLOSE_PEER: usize = 11;
pub const CLOSE_IO_ERROR: usize = 12;
/// Bind results: 0 is "ok", then each error code by wire value (1..=10).
pub const BIND_RESULTS: usize = 11;
/// Labels of [`EngineStats::handshakes`].
pub const HANDSHAKE_KINDS: [&str; 3] = ["tls", "ws", "proxy"];

/// Metric label of close kind `i`.
pub fn close_kind_name(i: usize) -> &'static str {
    match i {
        CLOSE_PEER => "peer_closed",
        CLOSE_IO_ERROR => "io_error",
        _ => CloseReason::from_u16(i as u16).map_or("other", CloseReason::name),
    }
}

/// Metric label of bind result `i`.
pub fn bind_result_name(i: usize) -> &'static str {
    match i {
        0 => "ok",
        _ => ErrorCode::from_u16(i as u16).map_or("other", ErrorCode::name),
    }
}

#[derive(Debug, Clone)]
pub struct EngineStats {
    pub accepted: u64,
    pub closed: [u64; CLOSE_KINDS],
    pub binds: [u64; BIND_RESULTS],
    pub heartbeat_timeouts: u64,
    pub bind_timeouts: u64,
    pub push_acks: u64,
    /// Push frames queued to sessions.
    pub deliveries: u64,
    /// Queued pushes dropped for slow consumers (drop-oldest policy).
    pub outbound_dropped: u64,
    /// Connections and Binds refused by admission control, by
    /// [`super::Refusal`].
    pub refused: [u64; REFUSALS],
    /// Reads paused because a session went over its inbound budget.
    pub throttled: u64,
    /// Deadline entries that fired (each re-arms at most once): the timer's
    /// whole cost, which follows deadlines, not connections.
    pub timers_fired: u64,
    /// Completed transport handshakes: TLS, WebSocket upgrades, PROXY
    /// headers (see [`HANDSHAKE_KINDS`]).
    pub handshakes: [u64; 3],
    /// Transport failures by layer and reason (a small set: see
    /// `crate::transport`).
    pub transport_failures: Vec<(&'static str, &'static str, u64)>,
    /// Open connections (gauge).
    pub connections: u64,
    /// Bound sessions (gauge).
    pub sessions: u64,
    /// Accept to successful Bind.
    pub bind_duration: Histogram,
    pub push_ack_latency: Histogram,
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            accepted: 0,
            closed: [0; CLOSE_KINDS],
            binds: [0; BIND_RESULTS],
            heartbeat_timeouts: 0,
            bind_timeouts: 0,
            push_acks: 0,
            deliveries: 0,
            outbound_dropped: 0,
            refused: [0; REFUSALS],
            throttled: 0,
            timers_fired: 0,
            handshakes: [0; 3],
            transport_failures: Vec::new(),
            connections: 0,
            sessions: 0,
            bind_duration: Histogram::new(BIND_DURATION_BUCKETS),
            push_ack_latency: Histogram::new(PUSH_ACK_BUCKETS),
        }
    }
}

impl EngineStats {
    pub fn closed_reason(&mut self, reason: CloseReason) {
        self.closed[reason as usize] += 1;
    }

    pub fn bind_result(&mut self, code: Option<ErrorCode>) {
        self.binds[code.map_or(0, |c| c as usize)] += 1;
    }

    pub fn transport_failure(&mut self, f: crate::transport::WireFailure) {
        match self
            .transport_failures
            .iter_mut()
            .find(|(l, r, _)| *l == f.layer && *r == f.reason)
        {
            Some(e) => e.2 += 1,
            None => self.transport_failures.push((f.layer, f.reason, 1)),
        }
    }

    /// Adds another core's figures (gauges add up too).
    pub fn merge(&mut self, o: &EngineStats) {
        for (a, b) in self.handshakes.iter_mut().zip(o.handshakes) {
            *a += b;
        }
        for &(layer, reason, n) in &o.transport_failures {
            match self
                .transport_failures
                .iter_mut()
                .find(|(l, r, _)| *l == layer && *r == reason)
            {
                Some(e) => e.2 += n,
                None => self.transport_failures.push((layer, reason, n)),
            }
        }
        self.accepted += o.accepted;
        for (a, b) in self.closed.iter_mut().zip(o.closed) {
            *a += b;
        }
        for (a, b) in self.binds.iter_mut().zip(o.binds) {
            *a += b;
        }
        self.heartbeat_timeouts += o.heartbeat_timeouts;
        self.bind_timeouts += o.bind_timeouts;
        self.push_acks += o.push_acks;
        self.deliveries += o.deliveries;
        self.outbound_dropped += o.outbound_dropped;
        self.timers_fired += o.timers_fired;
        for (a, b) in self.refused.iter_mut().zip(o.refused) {
            *a += b;
        }
        self.throttled += o.throttled;
        self.connections += o.connections;
        self.sessions += o.sessions;
        self.bind_duration.merge(&o.bind_duration);
        self.push_ack_latency.merge(&o.push_ack_latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cover_every_reason_and_code() {
        assert_eq!(
            close_kind_name(CloseReason::SlowConsumer as usize),
            "slow_consumer"
        );
        assert_eq!(close_kind_name(CLOSE_PEER), "peer_closed");
        assert_eq!(bind_result_name(0), "ok");
        assert_eq!(
            bind_result_name(ErrorCode::AuthFailed as usize),
            "auth_failed"
        );
        assert!((0..CLOSE_KINDS).all(|i| close_kind_name(i) != "other"));
        assert!((0..BIND_RESULTS).all(|i| bind_result_name(i) != "other"));
    }
}
