//! The HTTP upgrade (RFC 6455 section 4.2): finding the end of the request,
//! validating it, and the `101` or error response.
//!
//! The request is parsed straight from the read when it arrives whole (the
//! common case: no copy, no allocation); only a read that ends inside it
//! makes a buffer ([`Partial`]), bounded by `max_handshake` plus one read.

use base64::Engine as _;
use tungstenite::handshake::derive_accept_key;

use super::{WsConfig, WsError};

/// The subprotocol echoed when the client offers it.
const SUBPROTOCOL: &str = "miop";
/// Most header lines a request may have.
const MAX_HEADERS: usize = 64;

/// The start of a request that arrived over several reads.
#[derive(Debug)]
pub(super) struct Partial {
    bytes: Vec<u8>,
}

impl Partial {
    pub(super) fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }
}

/// Where the frames after a complete request are: the tail of this read, or
/// of the buffered request (the read that completed it was appended to it).
pub(super) enum Rest {
    Input(usize),
    Buffered(Vec<u8>, usize),
}

impl Rest {
    pub(super) fn bytes<'a>(&'a self, input: &'a [u8]) -> &'a [u8] {
        match self {
            Rest::Input(at) => &input[*at..],
            Rest::Buffered(buf, at) => &buf[*at..],
        }
    }
}

/// Takes one read during the handshake. Returns None while the request is
/// incomplete, or, once it is complete and valid (the `101` is then in
/// `reply`), where the bytes after it are. On error the caller writes the
/// error response.
pub(super) fn advance(
    cfg: &WsConfig,
    partial: &mut Option<Box<Partial>>,
    input: &[u8],
    reply: &mut Vec<u8>,
) -> Result<Option<Rest>, WsError> {
    match partial {
        None => {
            check_start(input)?;
            match find_end(input, 0) {
                Some(end) => {
                    accept(cfg, &input[..end], reply)?;
                    Ok(Some(Rest::Input(end)))
                }
                None => {
                    if input.len() >= cfg.max_handshake {
                        return Err(WsError::HandshakeTooLong);
                    }
                    if !input.is_empty() {
                        *partial = Some(Box::new(Partial {
                            bytes: input.to_vec(),
                        }));
                    }
                    Ok(None)
                }
            }
        }
        Some(p) => {
            let from = p.bytes.len().saturating_sub(3);
            p.bytes.extend_from_slice(input);
            check_start(&p.bytes)?;
            match find_end(&p.bytes, from) {
                Some(end) => {
                    let bytes = std::mem::take(&mut p.bytes);
                    *partial = None;
                    accept(cfg, &bytes[..end], reply)?;
                    Ok(Some(Rest::Buffered(bytes, end)))
                }
                None if p.bytes.len() >= cfg.max_handshake => Err(WsError::HandshakeTooLong),
                None => Ok(None),
            }
        }
    }
}

/// Rejects a request that does not start like `GET ` as soon as its first
/// bytes show it (a TLS ClientHello or a stray protocol), rather than after
/// `max_handshake` bytes.
fn check_start(bytes: &[u8]) -> Result<(), WsError> {
    let n = bytes.len().min(4);
    if bytes[..n] == b"GET "[..n] {
        Ok(())
    } else {
        Err(WsError::BadRequest)
    }
}

/// The offset just past the first `\r\n\r\n` that ends at or after
/// `from + 4`.
fn find_end(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// Validates a complete request (its blank line included) and appends the
/// `101 Switching Protocols` to `reply`.
fn accept(cfg: &WsConfig, request: &[u8], reply: &mut Vec<u8>) -> Result<(), WsError> {
    if request.len() > cfg.max_handshake {
        return Err(WsError::HandshakeTooLong);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(WsError::BadRequest),
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return Err(WsError::BadRequest);
    }
    let path = req.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != cfg.path {
        return Err(WsError::WrongPath);
    }

    let (mut upgrade, mut connection, mut miop) = (false, false, false);
    let mut version: Option<&[u8]> = None;
    let mut versions = 0;
    let mut key: Option<&[u8]> = None;
    let mut keys = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, b"upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(h.value.trim_ascii());
            versions += 1;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(h.value.trim_ascii());
            keys += 1;
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // Subprotocol names are case-sensitive (RFC 6455 section 4.1).
            miop |= tokens(h.value).any(|t| t == SUBPROTOCOL.as_bytes());
        }
    }
    if !upgrade || !connection {
        return Err(WsError::NotUpgrade);
    }
    if versions != 1 || version != Some(b"13") {
        return Err(WsError::BadVersion);
    }
    let key = match key {
        Some(key) if keys == 1 && is_valid_key(key) => key,
        _ => return Err(WsError::BadKey),
    };

    reply.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    reply.extend_from_slice(derive_accept_key(key).as_bytes());
    reply.extend_from_slice(b"\r\n");
    if miop {
        reply.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        reply.extend_from_slice(SUBPROTOCOL.as_bytes());
        reply.extend_from_slice(b"\r\n");
    }
    reply.extend_from_slice(b"\r\n");
    Ok(())
}

/// The comma-separated elements of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Key` must be base64 of 16 bytes (RFC 6455 section 4.1).
fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24
        && matches!(
            base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded),
            Ok(16)
        )
}

/// Appends the HTTP response that answers a handshake error.
pub(super) fn write_error_response(err: &WsError, reply: &mut Vec<u8>) {
    // A 426 names the protocol to upgrade to, and an Upgrade header must be
    // listed in Connection (RFC 9110 section 7.8).
    let (status, extra, connection) = match err {
        WsError::WrongPath => ("404 Not Found", "", "close"),
        WsError::BadVersion => (
            "426 Upgrade Required",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            "Upgrade, close",
        ),
        WsError::HandshakeTooLong => ("431 Request Header Fields Too Large", "", "close"),
        _ => ("400 Bad Request", "", "close"),
    };
    let body = err.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra}Connection: {connection}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len() + 1
    );
    reply.extend_from_slice(head.as_bytes());
    reply.extend_from_slice(body.as_bytes());
    reply.push(b'\n');
}
