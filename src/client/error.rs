//! Errors a client sees.

use crate::protocol::{CloseReason, DecodeError, EncodeError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server sent an invalid frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    #[error("server answered with error {code}: {message}")]
    Rejected { code: u16, message: String },
    #[error("server closed the session (reason {reason}): {message}")]
    Closed {
        reason: u16,
        message: String,
        /// The Close's retry-after hint (revision 3, PROTOCOL.md §8.7), if any.
        retry_after_ms: Option<u32>,
    },
    #[error("server closed the connection")]
    Eof,
    #[error("connection ended in the middle of a frame")]
    Truncated,
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("invalid miop URL: {0}")]
    Url(String),
    /// The TLS configuration could not be built (an unreadable CA or key
    /// file), or the TLS handshake failed (an untrusted or expired server
    /// certificate, a name mismatch, a refused client certificate).
    #[error("TLS: {0}")]
    Tls(String),
    /// The WebSocket upgrade failed (wrong path, subprotocol not accepted).
    #[error("WebSocket: {0}")]
    WebSocket(String),
}

impl ClientError {
    /// The error code, if the server rejected the request with an Error frame.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Rejected { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }

    /// The close reason, if the server closed the session with a Close frame.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self {
            ClientError::Closed { reason, .. } => CloseReason::from_u16(*reason),
            _ => None,
        }
    }
}
