//! Typed frames: one variant per opcode, with the body fields of docs/PROTOCOL.md.

use bytes::Bytes;

use super::{CloseReason, ErrorCode, Opcode, MAX_MESSAGE_LEN};

/// One Miop frame: the header fields a sender chooses plus a typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number chosen by the requester; responses (BindAck, Pong,
    /// TopicsAck, Error) echo the sequence number of the frame they answer.
    pub seq: u32,
    /// Header flags. Only [`super::FLAG_ACK_REQUIRED`] (on Push) is defined in v1.
    pub flags: u16,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Bind(Bind),
    BindAck(BindAck),
    Ping,
    Pong,
    Push(Push),
    PushAck {
        message_id: u64,
    },
    Close(Close),
    Error(ErrorFrame),
    /// Client → server: join these topics (1..=32 names; already joined ones
    /// are kept once). Answered by [`Body::TopicsAck`].
    Subscribe {
        topics: Vec<String>,
    },
    /// Client → server: leave these topics (1..=32 names; ones not joined are
    /// ignored). Answered by [`Body::TopicsAck`].
    Unsubscribe {
        topics: Vec<String>,
    },
    /// Server → client: the session's whole topic list (0..=32 names) after the
    /// Subscribe or Unsubscribe whose `seq` it echoes.
    TopicsAck {
        topics: Vec<String>,
    },
}

/// How a device proves it may bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A shared application key (the password of a `miop://DEVICE:KEY@host/` URL).
    AppKey(String),
    /// A per-device HMAC token minted by the backend (see docs/PROTOCOL.md).
    Token(String),
}

/// Client → server: make this connection the session of `device_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub device_id: String,
    pub credential: Credential,
    /// Topics to join at bind time (used by topic pushes).
    pub topics: Vec<String>,
}

/// Server → client: the session is bound; the client must send a frame (Ping if
/// nothing else) at least every `heartbeat_interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAck {
    pub heartbeat_interval_ms: u32,
    /// The server closes the session when nothing arrived for this long.
    pub heartbeat_timeout_ms: u32,
    /// Largest frame the server accepts from this client.
    pub max_frame_len: u32,
    /// Server-assigned id of this session (unique per node and start).
    pub session_id: u64,
}

/// Server → client: a message. `payload` is opaque to the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub message_id: u64,
    pub payload: Bytes,
}

/// Either direction: the sender is closing the connection, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Raw reason code; see [`CloseReason`]. Unknown codes are kept, not rejected.
    pub reason: u16,
    pub message: String,
    /// Server only (revision 3): reconnect no sooner than this many
    /// milliseconds from now (already jittered by the server). Carried in a
    /// header extension, so revision-1 and -2 receivers skip it.
    pub retry_after_ms: Option<u32>,
}

/// Server → client: the frame with the echoed `seq` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// Raw error code; see [`ErrorCode`]. Unknown codes are kept, not rejected.
    pub code: u16,
    pub message: String,
}

impl Body {
    pub fn opcode(&self) -> Opcode {
        match self {
            Body::Bind(_) => Opcode::Bind,
            Body::BindAck(_) => Opcode::BindAck,
            Body::Ping => Opcode::Ping,
            Body::Pong => Opcode::Pong,
            Body::Push(_) => Opcode::Push,
            Body::PushAck { .. } => Opcode::PushAck,
            Body::Close(_) => Opcode::Close,
            Body::Error(_) => Opcode::Error,
            Body::Subscribe { .. } => Opcode::Subscribe,
            Body::Unsubscribe { .. } => Opcode::Unsubscribe,
            Body::TopicsAck { .. } => Opcode::TopicsAck,
        }
    }
}

impl Frame {
    pub fn new(seq: u32, body: Body) -> Frame {
        Frame {
            seq,
            flags: 0,
            body,
        }
    }

    pub fn ping(seq: u32) -> Frame {
        Frame::new(seq, Body::Ping)
    }

    pub fn pong(seq: u32) -> Frame {
        Frame::new(seq, Body::Pong)
    }

    pub fn push_ack(seq: u32, message_id: u64) -> Frame {
        Frame::new(seq, Body::PushAck { message_id })
    }

    pub fn topics_ack(seq: u32, topics: Vec<String>) -> Frame {
        Frame::new(seq, Body::TopicsAck { topics })
    }

    pub fn close(seq: u32, reason: CloseReason, message: &str) -> Frame {
        Frame::new(
            seq,
            Body::Close(Close {
                reason: reason as u16,
                message: clip(message),
                retry_after_ms: None,
            }),
        )
    }

    /// A server Close that tells the client when to come back (revision 3).
    pub fn close_retry(seq: u32, reason: CloseReason, message: &str, retry_after_ms: u32) -> Frame {
        Frame::new(
            seq,
            Body::Close(Close {
                reason: reason as u16,
                message: clip(message),
                retry_after_ms: Some(retry_after_ms),
            }),
        )
    }

    pub fn error(seq: u32, code: ErrorCode, message: &str) -> Frame {
        Frame::new(
            seq,
            Body::Error(ErrorFrame {
                code: code as u16,
                message: clip(message),
            }),
        )
    }
}

impl Close {
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u16(self.reason)
    }
}

impl ErrorFrame {
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// Cuts a human-readable message to [`MAX_MESSAGE_LEN`] bytes on a char boundary.
fn clip(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_LEN {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}
