//! The Miop v1 wire protocol, sans-io.
//!
//! Everything here turns bytes into [`Frame`]s and back. Nothing here does I/O
//! or reads a clock, so the gateway, the client library, the load generator and
//! the fuzzer all share one implementation. docs/PROTOCOL.md is the normative
//! description; `tests/vectors.json` holds byte-exact test vectors replayed by
//! `tests/protocol_vectors.rs`.

mod codec;
mod codes;
mod frame;
mod header;
mod wire;

pub use codec::{decode, decode_buf, DecodeError, EncodeError};
pub use codes::{CloseReason, ErrorCode};
pub use frame::{Bind, BindAck, Body, Close, Credential, ErrorFrame, Frame, Push};
pub use header::{Header, Opcode, FLAG_ACK_REQUIRED};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed v1 header in bytes.
pub const HEADER_LEN: usize = 16;
/// Largest frame (header included) the v1 spec allows. A server may advertise a
/// smaller limit in BindAck; no peer may send a larger frame.
pub const MAX_FRAME_LEN: usize = 65_536;
/// Longest device id in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;
/// Longest credential (app key or token) in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 1024;
/// Longest topic name in bytes.
pub const MAX_TOPIC_LEN: usize = 128;
/// Most topics one Bind, Subscribe, Unsubscribe or TopicsAck may carry, and
/// most topics one session may have joined at once.
pub const MAX_BIND_TOPICS: usize = 32;
/// Longest human-readable message in Close and Error frames.
pub const MAX_MESSAGE_LEN: usize = 255;
/// The largest Bind the limits allow (longest device id, credential and 32
/// longest topics). A receiver must accept frames at least this long, since a
/// client learns the server's limit only from BindAck.
pub const MAX_BIND_FRAME_LEN: usize = HEADER_LEN
    + (1 + MAX_DEVICE_ID_LEN)
    + 1
    + (2 + MAX_CREDENTIAL_LEN)
    + 1
    + MAX_BIND_TOPICS * (1 + MAX_TOPIC_LEN);
