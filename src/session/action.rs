//! What a session asks its driver to do.

use std::sync::Arc;

use crate::protocol::{CloseReason, ErrorCode, Frame};

/// One instruction from a [`super::Session`] to its driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this frame to the peer.
    Send(Frame),
    /// The node's view of who is online changed.
    Presence(PresenceChange),
    /// A Bind was refused (for metrics and logs; the frames are in `Send`s).
    BindRejected(ErrorCode),
    /// The peer acknowledged a push.
    Acked { message_id: u64 },
    /// A Subscribe or Unsubscribe changed the bound session's topics: `joined`
    /// were not held before, `left` were (both without duplicates, and never
    /// both empty). [`super::Session::topics`] already holds the new list. Not
    /// emitted when the request changed nothing; topics joined at Bind come in
    /// [`PresenceChange::Online`] instead.
    Topics {
        joined: Vec<String>,
        left: Vec<String>,
    },
    /// Flush the frames sent so far, then close the connection. `reason` says why
    /// (for metrics and logs); `Normal` when the peer asked to close.
    Close { reason: CloseReason },
}

/// A change in presence, keyed by device id and fenced by the session id so a
/// late "offline" of a replaced session cannot undo the newer session's "online".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Online {
        device_id: Arc<str>,
        session_id: u64,
        topics: Vec<String>,
    },
    Offline {
        device_id: Arc<str>,
        session_id: u64,
        reason: CloseReason,
    },
}
