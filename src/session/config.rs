//! Timing and size policy shared by every session of a node.

use std::time::Duration;

use crate::protocol::MAX_FRAME_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// A connection that has not bound within this time is closed (BIND_TIMEOUT).
    pub bind_timeout: Duration,
    /// How often clients must send something; announced in BindAck.
    pub heartbeat_interval: Duration,
    /// Silence after which a bound session is closed (HEARTBEAT_TIMEOUT).
    pub heartbeat_timeout: Duration,
    /// Largest inbound frame accepted; announced in BindAck.
    pub max_frame_len: u32,
    /// Bytes queued for a peer that does not read before it is closed as a
    /// slow consumer (SLOW_CONSUMER). Bounds the memory one client can pin.
    pub max_outbound_bytes: usize,
}

impl SessionConfig {
    /// The default timeout allows two missed heartbeats plus slack for mobile
    /// networks before a session is declared dead.
    pub fn with_heartbeat(heartbeat_interval: Duration) -> SessionConfig {
        SessionConfig {
            heartbeat_interval,
            heartbeat_timeout: heartbeat_interval * 3,
            ..SessionConfig::default()
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            bind_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
            max_frame_len: MAX_FRAME_LEN as u32,
            max_outbound_bytes: 256 * 1024,
        }
    }
}
