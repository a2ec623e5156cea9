//! What goes into the engine besides bytes (the time, connection handles) and
//! what comes out of it (intents for the driver and the control plane).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::push::{PushOutcome, UnackedHandoff};
use crate::protocol::ErrorCode;

/// The time of an event, as the driver read it. The engine never reads a
/// clock: tests hand it a virtual one.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time: deadlines, latencies.
    pub mono: Instant,
    /// Wall-clock time in unix milliseconds: bind times (which order binds
    /// across nodes), token expiry, message TTLs.
    pub unix_ms: u64,
}

impl Now {
    /// Reads both clocks (for drivers; the engine itself never calls this).
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }
}

/// A connection of one engine: the index of its row in the engine's table,
/// which the driver uses for its own per-connection row too. A key is not
/// reused until the driver has released the connection, so it names one
/// socket for as long as the driver holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey(pub u32);

impl ConnKey {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A session on one engine, as other threads name it: the connection and the
/// session id, which fences references that outlive the connection (a kick
/// or a push that arrives after the slot was reused does nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionRef {
    pub key: ConnKey,
    pub session_id: u64,
}

/// Why the transport ended without the session deciding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEnd {
    /// The peer closed its side (EOF).
    PeerClosed,
    /// A read or write failed (reset, timeout).
    IoError,
}

/// Something the driver or the control plane must act on, in order.
#[derive(Debug)]
pub enum Intent {
    /// Shut the socket down (both directions) and release it. Every frame the
    /// session wanted sent has been written, or the close linger ran out.
    /// The driver calls [`super::Engine::released`] once no operation on the
    /// socket is pending and its fd is closed.
    Shutdown(ConnKey),
    /// The connection's read pause is over: read it again (it was over its
    /// inbound budget; see [`super::Engine::read_paused`]).
    ResumeReading(ConnKey),
    /// Who is online on this core changed (for the node's device index).
    Presence(PresenceEvent),
    /// Pushes a session did not acknowledge before it ended (at-least-once:
    /// the control plane keeps them offline).
    Unacked(UnackedHandoff),
    /// A push command finished on this core.
    PushDone { tag: u64, outcome: PushOutcome },
    /// Something worth a (rate-limited) log line.
    Notice(Notice),
}

/// A change in who is online, fenced by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    Online {
        device: Arc<str>,
        at: SessionRef,
        /// Bind time, unix ms: orders binds of one device across nodes.
        since_ms: u64,
    },
    Offline {
        device: Arc<str>,
        at: SessionRef,
    },
}

/// Events a flood of bad clients could repeat thousands of times a second:
/// the driver logs them rate-limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    ProtocolError { peer: SocketAddr, error: String },
    BindRefused { peer: SocketAddr, code: ErrorCode },
    SlowConsumer { peer: SocketAddr, queued: usize },
}
