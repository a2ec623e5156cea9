//! State shared by every core of one gateway process.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::registry::Registry;
use crate::auth::Authenticator;
use crate::protocol::CloseReason;
use crate::session::{SessionConfig, SessionInfo};

/// Read-only configuration plus the thread-safe device index and the cores'
/// mailboxes. Core-local state (sessions, buffers) is never shared.
pub struct Node {
    pub node_id: String,
    pub session: SessionConfig,
    pub auth: Authenticator,
    pub registry: Registry,
    pub cores: Vec<mpsc::UnboundedSender<CoreCommand>>,
    pub draining: AtomicBool,
    pub started: Instant,
    pub fd_limit: u64,
    pub drain_timeout: std::time::Duration,
    pub slow_consumer: crate::config::SlowConsumerPolicy,
    /// Where cores hand unacked messages of ended sessions (None: standalone,
    /// they are dropped and counted).
    pub unacked_tx: Option<mpsc::UnboundedSender<UnackedHandoff>>,
    /// Random per process start: makes session ids unique across restarts in
    /// shared presence.
    pub incarnation: String,
    /// Presence changes for Redis (None: standalone, in-memory presence only).
    pub presence: Option<Arc<crate::presence::PendingChanges>>,
}

/// A message to one core, sent from another core or the control plane.
pub enum CoreCommand {
    /// Close the session at `slot` if it is still `session_id`.
    Kick {
        slot: u32,
        session_id: u64,
        reason: CloseReason,
    },
    /// Report the state of the session at `slot` if it is still `session_id`.
    Inspect {
        slot: u32,
        session_id: u64,
        reply: oneshot::Sender<Option<SessionView>>,
    },
    /// Queue an encoded Push frame for the targets on this core.
    Push {
        targets: PushTargets,
        frame: bytes::Bytes,
        message_id: u64,
        /// The frame asks for a PushAck (push-to-ack latency is measured).
        ack: bool,
        /// Keep unacked copies until then (unix ms), to redeliver them via
        /// offline storage if the session ends first (at-least-once).
        keep_until_ms: Option<u64>,
        reply: oneshot::Sender<PushOutcome>,
    },
    /// Stop accepting, send Close(SERVER_SHUTDOWN) to every session, and report
    /// once every connection is closed or the drain timeout has passed.
    Drain { reply: oneshot::Sender<DrainReport> },
}

/// What the admin API shows for one session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionView {
    pub node: String,
    pub core: u16,
    pub peer: String,
    #[serde(flatten)]
    pub info: SessionInfo,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DrainReport {
    pub closed: usize,
    pub forced: usize,
}

pub type SharedNode = Arc<Node>;

/// Who on one core a push is for.
#[derive(Debug, Clone)]
pub enum PushTargets {
    /// Specific sessions: (slot, session id) as found in the device index.
    Sessions(Vec<(u32, u64)>),
    /// Every session that joined the topic.
    Topic(Arc<str>),
    /// Every bound session.
    All,
}

/// What one core did with a push.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushOutcome {
    /// Queued to a bound session's socket.
    pub delivered: u64,
    /// Targets that were gone or closing by the time the core got the push.
    pub gone: u64,
}

/// A pushed message a session did not acknowledge before it ended.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub message_id: u64,
    /// The encoded Push frame (the payload starts at byte 24).
    pub frame: bytes::Bytes,
    /// Keep it until then (unix ms).
    pub keep_until_ms: u64,
}

/// Unacked messages of a device whose session ended, for offline storage.
#[derive(Debug)]
pub struct UnackedHandoff {
    pub device_id: Box<str>,
    pub messages: Vec<Unacked>,
}
