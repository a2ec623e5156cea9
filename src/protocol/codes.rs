//! Error codes (Error frames) and close reasons (Close frames).

/// Why a request failed. Sent in Error frames; values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be parsed (bad lengths, bad UTF-8, trailing bytes).
    Malformed = 1,
    /// The frame is longer than the receiver's maximum frame length.
    FrameTooLarge = 2,
    /// The header's version is not one the receiver speaks.
    UnsupportedVersion = 3,
    /// The opcode is not defined, or not valid in this direction.
    UnknownOpcode = 4,
    /// The Bind's app key or token was rejected.
    AuthFailed = 5,
    /// A frame other than Bind arrived before the session was bound.
    NotBound = 6,
    /// A second Bind arrived on an already bound connection.
    AlreadyBound = 7,
    /// The device id is not acceptable (v1: it contains control characters;
    /// empty, too long or non-UTF-8 ids are already Malformed at decoding).
    InvalidDeviceId = 8,
    /// The server cannot take the session now (capacity, shutting down).
    Unavailable = 9,
    /// Anything else.
    Internal = 10,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => Malformed,
            2 => FrameTooLarge,
            3 => UnsupportedVersion,
            4 => UnknownOpcode,
            5 => AuthFailed,
            6 => NotBound,
            7 => AlreadyBound,
            8 => InvalidDeviceId,
            9 => Unavailable,
            10 => Internal,
            _ => return None,
        })
    }

    /// Stable snake_case name, used in logs and metric labels.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Malformed => "malformed",
            FrameTooLarge => "frame_too_large",
            UnsupportedVersion => "unsupported_version",
            UnknownOpcode => "unknown_opcode",
            AuthFailed => "auth_failed",
            NotBound => "not_bound",
            AlreadyBound => "already_bound",
            InvalidDeviceId => "invalid_device_id",
            Unavailable => "unavailable",
            Internal => "internal",
        }
    }
}

/// Why a connection is being closed. Sent in Close frames; values are part of
/// the wire format. Unknown values must be accepted and treated as `Normal`-like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseReason {
    /// Orderly close requested by the sender (a client logging out).
    Normal = 0,
    /// The server is shutting down (drain); reconnect, ideally to another node.
    ServerShutdown = 1,
    /// Kicked: a newer session bound the same device id. Do not reconnect blindly.
    Replaced = 2,
    /// No frame arrived within the heartbeat timeout.
    HeartbeatTimeout = 3,
    /// No Bind arrived within the bind timeout.
    BindTimeout = 4,
    /// An operator kicked the session.
    AdminKick = 5,
    /// The peer violated the protocol (an Error frame precedes this Close).
    ProtocolError = 6,
    /// Authentication failed (an Error frame precedes this Close).
    AuthFailed = 7,
    /// The peer did not read fast enough and its outbound queue overflowed.
    SlowConsumer = 8,
    /// Revision 3: the server cannot take the session now (the node is at its
    /// session cap or bind rate, the peer's address has too many connections
    /// or connects too fast, the node is out of file descriptors). An
    /// Error(UNAVAILABLE) precedes it; the Close may carry a retry-after hint.
    TryLater = 9,
    /// Revision 3: the peer sent more frames or bytes per second than its
    /// inbound budget, and kept doing so after being slowed down.
    RateLimited = 10,
}

impl CloseReason {
    pub fn from_u16(v: u16) -> Option<CloseReason> {
        use CloseReason::*;
        Some(match v {
            0 => Normal,
            1 => ServerShutdown,
            2 => Replaced,
            3 => HeartbeatTimeout,
            4 => BindTimeout,
            5 => AdminKick,
            6 => ProtocolError,
            7 => AuthFailed,
            8 => SlowConsumer,
            9 => TryLater,
            10 => RateLimited,
            _ => return None,
        })
    }

    /// Stable snake_case name, used in logs and metric labels.
    pub fn name(self) -> &'static str {
        use CloseReason::*;
        match self {
            Normal => "normal",
            ServerShutdown => "server_shutdown",
            Replaced => "replaced",
            HeartbeatTimeout => "heartbeat_timeout",
            BindTimeout => "bind_timeout",
            AdminKick => "admin_kick",
            ProtocolError => "protocol_error",
            AuthFailed => "auth_failed",
            SlowConsumer => "slow_consumer",
            TryLater => "try_later",
            RateLimited => "rate_limited",
        }
    }
}
