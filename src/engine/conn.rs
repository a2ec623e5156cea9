//! One row of a core's connection table.
//!
//! An idle bound connection is only its session state machine, its peer
//! address, its timer slot and a few flags. Anything that exists only while
//! bytes are moving (a partial inbound frame, queued outbound frames, the
//! close linger) lives in a boxed [`Active`] that is freed once drained, so a
//! million idle sessions do not mean a million buffers.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use super::budget::Budget;
use super::outbound::Outbound;
use super::timers::NO_TIMER;
use crate::session::{Session, SessionState};
use crate::transport::Wire;

/// A peer address in 16 bytes instead of `SocketAddr`'s 32: IPv6 peers are
/// boxed (mobile carriers' IPv6 is common, but the box is one allocation only
/// for those).
#[derive(Debug, Clone)]
pub enum Peer {
    V4(SocketAddrV4),
    V6(Box<SocketAddrV6>),
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Peer {
        match a {
            SocketAddr::V4(a) => Peer::V4(a),
            SocketAddr::V6(a) => Peer::V6(Box::new(a)),
        }
    }
}

impl Peer {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Peer::V4(a) => SocketAddr::V4(*a),
            Peer::V6(a) => SocketAddr::V6(**a),
        }
    }
}

/// Buffers of a connection that is moving bytes.
#[derive(Default)]
pub struct Active {
    /// The start of a frame whose rest has not arrived.
    pub inbound: Vec<u8>,
    pub outbound: Outbound,
    /// When a closing connection is shut down even if its last frames are
    /// not written (a peer that stopped reading), in timer ms.
    pub linger_until_ms: Option<u64>,
    /// Reading is paused until then (over the inbound budget), in timer ms.
    pub paused_until_ms: Option<u64>,
    /// Over its inbound budget since then, in timer ms.
    pub over_budget_since_ms: Option<u64>,
    /// Its queue passed the outbound limit (drop-oldest) and no write has
    /// completed since then, in timer ms.
    pub stalled_since_ms: Option<u64>,
}

impl Active {
    fn is_idle(&self) -> bool {
        self.inbound.is_empty()
            && self.outbound.is_empty()
            && self.linger_until_ms.is_none()
            && self.paused_until_ms.is_none()
            && self.over_budget_since_ms.is_none()
            && self.stalled_since_ms.is_none()
    }
}

pub const WRITING: u8 = 1;
pub const SHUT: u8 = 2;
pub const FLUSH_QUEUED: u8 = 4;
/// The connection counts against its address in admission control (behind a
/// PROXY header, only once the header named the address).
pub const ADMITTED: u8 = 8;

pub struct Conn {
    pub session: Session,
    pub peer: Peer,
    pub active: Option<Box<Active>>,
    /// Deadline of this connection's live timer entry ([`NO_TIMER`]: none).
    pub timer_ms: u64,
    /// Inbound frames and bytes per second.
    pub budget: Budget,
    /// [`WRITING`]: a batch is with the driver; [`SHUT`]: the driver was told
    /// to shut the socket down (the row waits for `released`);
    /// [`FLUSH_QUEUED`]: the connection is in the engine's flush list;
    /// [`ADMITTED`]: counted by admission control.
    pub flags: u8,
    /// TLS, WebSocket, PROXY header: None on plain TCP.
    pub wire: Option<Box<Wire>>,
}

impl Conn {
    pub fn new(session: Session, peer: SocketAddr, budget: Budget) -> Conn {
        Conn {
            session,
            peer: peer.into(),
            active: None,
            timer_ms: NO_TIMER,
            budget,
            flags: 0,
            wire: None,
        }
    }

    pub fn is(&self, session_id: u64) -> bool {
        self.session.session_id() == session_id
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    pub fn closing(&self) -> bool {
        self.session.state() == SessionState::Closing
    }

    pub fn active(&mut self) -> &mut Active {
        self.active.get_or_insert_with(Box::default)
    }

    pub fn queued(&self) -> usize {
        self.active.as_ref().map_or(0, |a| a.outbound.queued())
    }

    /// The transport has bytes of its own to send (handshake, alert, reply).
    pub fn wire_wants_write(&self) -> bool {
        self.wire.as_ref().is_some_and(|w| w.wants_write())
    }

    /// Miop frames may be written (every transport handshake is done).
    pub fn wire_ready(&self) -> bool {
        self.wire.as_ref().is_none_or(|w| w.ready())
    }

    /// Frees the buffers once nothing is moving.
    pub fn compact(&mut self) {
        if self.active.as_ref().is_some_and(|a| a.is_idle()) {
            self.active = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stay_small() {
        // The row is the largest per-session cost of the engine: keep an eye
        // on it (docs/BENCHMARKS.md itemises the bytes per idle session).
        assert_eq!(std::mem::size_of::<Conn>(), 144);
        assert_eq!(std::mem::size_of::<Peer>(), 16);
    }
}
