//! The WebSocket server side (RFC 6455): the HTTP upgrade, then one Miop frame
//! per binary message.
//!
//! [`WsServer`] is a sans-io layer the engine runs per connection: bytes read
//! from the socket go into [`WsServer::receive`], which hands back the Miop
//! byte stream carried by binary messages and the bytes to answer with (the
//! `101 Switching Protocols`, Pongs, the Close reply); outbound Miop frames go
//! through [`WsServer::seal`], which wraps each in its own binary message
//! without copying it.
//!
//! # Memory
//!
//! An idle open connection holds no heap buffer: [`WsServer`] is a small
//! fixed state (`size_of::<WsServer>()` is asserted in the tests), and a
//! partial frame header lives inline in it. Heap is held only while the
//! upgrade request or a Ping/Close payload is partial ([`WsServer::heap_bytes`]).
//! Data payloads are never buffered: they are unmasked and appended to the
//! caller's `plain` as they arrive, tracking the mask offset across reads.
//!
//! # What is tungstenite's and what is hand-written
//!
//! tungstenite's `WebSocket` type is not used: it owns a read buffer per
//! connection and assembles whole messages, which is the memory this layer
//! exists to avoid. Its protocol pieces are used where they fit:
//! [`FrameHeader::parse`](tungstenite::protocol::frame::FrameHeader::parse)
//! (it reports incomplete input without consuming it, so it is fed from the
//! socket bytes directly or from the 14-byte inline header buffer),
//! [`FrameHeader::format`](tungstenite::protocol::frame::FrameHeader::format)
//! for server frame headers,
//! [`derive_accept_key`](tungstenite::handshake::derive_accept_key) and
//! [`CloseCode`](tungstenite::protocol::frame::coding::CloseCode) for which
//! status codes a peer may send. httparse parses the upgrade request.
//! Hand-written, because no library exposes it without a buffer: the
//! streaming state machine (header, payload with a running mask, partial
//! control frame), the masking loop (tungstenite's is private), the request
//! validation (tungstenite's server handshake builds `http::Request`s and
//! `String`s and answers errors itself) and the error responses.

mod handshake;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;

use bytes::Bytes;

use inbound::Reader;

/// Settings of the WebSocket listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// The request path the upgrade must target, e.g. `/miop`. A query string
    /// in the request is ignored.
    pub path: String,
    /// Most bytes the upgrade request may take, its final blank line included
    /// (8 KiB is plenty).
    pub max_handshake: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: "/miop".to_string(),
            max_handshake: 8 * 1024,
        }
    }
}

/// What one [`WsServer::receive`] call saw besides payload bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WsRead {
    /// The handshake completed during this call (the `101` is in `reply`).
    pub open: bool,
    /// At least one complete WebSocket frame (data, Ping or Pong) arrived.
    pub liveness: bool,
    /// A Close frame arrived (the Close reply is in `reply`, unless the
    /// server had sent its Close first); later input is ignored.
    pub peer_closed: bool,
}

/// Why a WebSocket connection failed. Handshake errors are answered with an
/// HTTP error response, framing errors with a Close frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// Not an HTTP/1.1 GET request (or not HTTP at all).
    #[error("not an HTTP/1.1 GET request")]
    BadRequest,
    /// The request path is not the configured one.
    #[error("wrong request path")]
    WrongPath,
    /// `Upgrade: websocket` or `Connection: upgrade` is missing.
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("unsupported WebSocket version")]
    BadVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not base64 of 16 bytes.
    #[error("bad Sec-WebSocket-Key")]
    BadKey,
    /// The request did not end within `max_handshake` bytes.
    #[error("upgrade request too long")]
    HandshakeTooLong,
    /// A text message: Miop speaks binary only.
    #[error("text message")]
    TextMessage,
    /// A client frame without a mask.
    #[error("unmasked client frame")]
    Unmasked,
    /// RSV1-3 set, but no extension was negotiated.
    #[error("reserved bits set")]
    ReservedBits,
    /// A reserved opcode.
    #[error("reserved opcode")]
    BadOpcode,
    /// A 64-bit payload length with its most significant bit set.
    #[error("bad payload length")]
    BadLength,
    /// A control frame with more than 125 bytes of payload.
    #[error("control frame too long")]
    ControlTooLong,
    /// A control frame without the FIN bit.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A continuation frame outside a fragmented message.
    #[error("continuation without a message")]
    UnexpectedContinuation,
    /// A new data message while a fragmented one is unfinished.
    #[error("new message inside a fragmented message")]
    ExpectedContinuation,
    /// A Close payload of one byte, or with a status code a peer may not send.
    #[error("bad close frame")]
    BadClose,
    /// A Close reason that is not UTF-8.
    #[error("close reason not UTF-8")]
    BadCloseReason,
}

impl WsError {
    /// A short snake_case label for a metric.
    pub fn reason(&self) -> &'static str {
        match self {
            WsError::BadRequest => "bad_request",
            WsError::WrongPath => "wrong_path",
            WsError::NotUpgrade => "not_upgrade",
            WsError::BadVersion => "bad_version",
            WsError::BadKey => "bad_key",
            WsError::HandshakeTooLong => "handshake_too_long",
            WsError::TextMessage => "text_message",
            WsError::Unmasked => "unmasked",
            WsError::ReservedBits => "reserved_bits",
            WsError::BadOpcode => "bad_opcode",
            WsError::BadLength => "bad_length",
            WsError::ControlTooLong => "control_too_long",
            WsError::FragmentedControl => "fragmented_control",
            WsError::UnexpectedContinuation => "unexpected_continuation",
            WsError::ExpectedContinuation => "expected_continuation",
            WsError::BadClose => "bad_close",
            WsError::BadCloseReason => "bad_close_reason",
        }
    }

    /// The HTTP status a handshake error is answered with; None for framing
    /// errors.
    pub fn http_status(&self) -> Option<u16> {
        Some(match self {
            WsError::BadRequest | WsError::NotUpgrade | WsError::BadKey => 400,
            WsError::WrongPath => 404,
            WsError::BadVersion => 426,
            WsError::HandshakeTooLong => 431,
            _ => return None,
        })
    }

    /// The Close status code a framing error is answered with; None for
    /// handshake errors.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            WsError::TextMessage => Some(CLOSE_UNSUPPORTED),
            WsError::BadCloseReason => Some(CLOSE_INVALID_DATA),
            _ if self.http_status().is_some() => None,
            _ => Some(CLOSE_PROTOCOL_ERROR),
        }
    }

    /// Appends the answer to this error to `reply`.
    fn write_reply(&self, reply: &mut Vec<u8>) {
        match self.close_code() {
            Some(code) => reply.extend_from_slice(&WsServer::close_frame(code)),
            None => handshake::write_error_response(self, reply),
        }
    }
}

/// Close status 1000: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close status 1001: the server is going away (shutdown, drain).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close status 1002: protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close status 1003: a data type the endpoint cannot accept (text).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close status 1007: payload data not consistent with its type.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close status 1008: policy violation.
pub const CLOSE_POLICY: u16 = 1008;
/// Close status 1011: the server hit an unexpected condition.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// The server side of one WebSocket connection: a small fixed state, see the
/// module documentation.
#[derive(Debug)]
pub struct WsServer {
    state: State,
    /// A fragmented binary message is unfinished: the next data frame must be
    /// a continuation.
    in_message: bool,
    /// The server has sent its Close ([`WsServer::sent_close`]): the peer's
    /// Close is the reply to it and is not answered.
    close_sent: bool,
}

#[derive(Debug)]
enum State {
    /// Before the upgrade request is complete; holds it only if a read ended
    /// inside it.
    Handshake(Option<Box<handshake::Partial>>),
    /// After the `101`: reading client frames.
    Open(Reader),
    /// A Close arrived or an error happened: input is ignored.
    Closed,
}

impl Default for WsServer {
    fn default() -> Self {
        WsServer::new()
    }
}

impl WsServer {
    pub fn new() -> WsServer {
        WsServer {
            state: State::Handshake(None),
            in_message: false,
            close_sent: false,
        }
    }

    /// The handshake completed (server frames may be sent), and no Close has
    /// arrived and no error happened since.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Heap bytes this connection holds: nonzero only while the upgrade
    /// request or a Ping/Close payload is partial.
    pub fn heap_bytes(&self) -> usize {
        match &self.state {
            State::Handshake(Some(p)) => p.heap_bytes(),
            State::Open(r) => r.heap_bytes(),
            _ => 0,
        }
    }

    /// Records that the server sent a Close ([`WsServer::close_frame`]): the
    /// peer's Close that follows is its answer and gets no reply (RFC 6455
    /// section 5.5.1). Frames keep being read until it arrives.
    pub fn sent_close(&mut self) {
        self.close_sent = true;
    }

    /// Consumes bytes read from the socket.
    ///
    /// Appends the unmasked payload of binary (and continuation) data frames
    /// to `plain` — the Miop byte stream, which the engine reassembles into
    /// frames itself, so a Miop frame split over several WebSocket messages
    /// and several Miop frames in one message are both accepted — and appends
    /// bytes to send to the peer to `reply`: the `101 Switching Protocols`
    /// response, Pongs for Pings, the Close reply. Bytes after the upgrade
    /// request in the same read are frames (a client may pipeline).
    ///
    /// On a handshake error, `reply` ends with an HTTP error response (400,
    /// 404 for a wrong path, 426 for a missing or wrong version, 431 for a
    /// request over `max_handshake`); on a framing error it ends with a Close
    /// frame (1002, 1003 for text, 1007 for a non-UTF-8 Close reason). Either
    /// way the whole of `reply` should be sent before the connection is
    /// closed; `plain` may hold payload that arrived before the bad frame. The
    /// connection is then dead: later calls ignore their input.
    pub fn receive(
        &mut self,
        cfg: &WsConfig,
        input: &[u8],
        plain: &mut Vec<u8>,
        reply: &mut Vec<u8>,
    ) -> Result<WsRead, WsError> {
        let mut read = WsRead::default();
        let result = match &mut self.state {
            State::Closed => return Ok(read),
            State::Open(reader) => reader.read(
                &mut self.in_message,
                self.close_sent,
                input,
                plain,
                reply,
                &mut read,
            ),
            State::Handshake(partial) => match handshake::advance(cfg, partial, input, reply) {
                Ok(None) => return Ok(read),
                Ok(Some(rest)) => {
                    read.open = true;
                    let mut reader = Reader::new();
                    let result = reader.read(
                        &mut self.in_message,
                        self.close_sent,
                        rest.bytes(input),
                        plain,
                        reply,
                        &mut read,
                    );
                    self.state = State::Open(reader);
                    result
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) if read.peer_closed => self.state = State::Closed,
            Ok(()) => {}
            Err(e) => {
                e.write_reply(reply);
                self.state = State::Closed;
                return Err(e);
            }
        }
        Ok(read)
    }

    /// Wraps outbound Miop bytes into binary messages, exactly one Miop frame
    /// per message. `chunks` hold whole Miop frames (a chunk may hold several
    /// back to back; a frame never spans chunks). For each frame, pushes a
    /// small header and then a zero-copy slice of the chunk to `out`; all the
    /// headers of one call share one allocation.
    ///
    /// A chunk whose tail is not a whole Miop frame (a caller bug) has that
    /// tail sent as one message, for the peer's decoder to reject, rather
    /// than dropped.
    pub fn seal(&self, chunks: Vec<Bytes>, out: &mut Vec<Bytes>) {
        outbound::seal(chunks, out)
    }

    /// A Close frame (server frames are unmasked) with the given status code,
    /// for when the server ends the connection. Call
    /// [`WsServer::sent_close`] once it is queued.
    pub fn close_frame(code: u16) -> Bytes {
        outbound::close_frame(code)
    }
}
