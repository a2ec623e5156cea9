//! Pushes as one core sees them: who a push is for, what became of it, and
//! the unacknowledged copies kept for at-least-once delivery.

use std::sync::Arc;

use bytes::Bytes;

use super::event::SessionRef;

/// Who on one core a push is for.
#[derive(Debug, Clone)]
pub enum PushTargets {
    /// Specific sessions, as found in the node's device index.
    Sessions(Vec<SessionRef>),
    /// Every session that joined the topic.
    Topic(Arc<str>),
    /// Every bound session.
    All,
}

/// One push command for one core.
#[derive(Debug, Clone)]
pub struct PushJob {
    /// Echoed in [`super::Intent::PushDone`] so the driver can answer the caller.
    pub tag: u64,
    pub targets: PushTargets,
    /// The encoded Push frame. The engine copies it once per core, so that the
    /// reference count each recipient takes stays on this core's cache lines.
    pub frame: Bytes,
    pub message_id: u64,
    /// The frame asks for a PushAck (push-to-ack latency is measured).
    pub ack: bool,
    /// Keep unacked copies until then (unix ms), to hand them to offline
    /// storage if the session ends first (at-least-once).
    pub keep_until_ms: Option<u64>,
}

/// What one core did with a push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Queued to a bound session's socket.
    pub delivered: u64,
    /// Targets that were gone or closing by the time the core got the push.
    pub gone: u64,
    /// Of those, the sessions a push to named devices targeted: the caller
    /// still owes their devices the message (keep it offline, or find where
    /// they bound again), so it must know which.
    pub gone_sessions: Vec<SessionRef>,
}

/// A pushed message a session did not acknowledge (yet).
#[derive(Debug, Clone)]
pub struct Unacked {
    pub message_id: u64,
    /// The encoded Push frame (the payload starts at byte 24).
    pub frame: Bytes,
    /// Keep it until then (unix ms).
    pub keep_until_ms: u64,
}

/// Unacked messages of a device whose session ended, for offline storage.
#[derive(Debug)]
pub struct UnackedHandoff {
    pub device_id: Arc<str>,
    pub messages: Vec<Unacked>,
}
