//! Reading client frames (RFC 6455 section 5) as they stream in.
//!
//! Between frames the reader is a 14-byte inline header buffer; inside a data
//! frame it is the bytes left and the mask, rotated to the next byte's
//! offset, and payload bytes are unmasked into the caller's `plain` as they
//! come. Only a Ping or Close payload split across reads is buffered (at most
//! 125 bytes, boxed so the idle state stays small); a Pong payload is
//! skipped.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::{outbound, WsError, WsRead};

/// Longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// Longest control frame payload.
const MAX_CONTROL: usize = 125;

/// Where the reader is in the client's frame stream.
#[derive(Debug)]
pub(super) enum Reader {
    /// Between frames, or `len` bytes into a frame header.
    Header { buf: [u8; MAX_HEADER], len: u8 },
    /// Inside a data frame's payload (`deliver`) or a Pong's (skipped).
    /// `mask` is rotated so that `mask[0]` applies to the next byte.
    Payload {
        remaining: u64,
        mask: [u8; 4],
        deliver: bool,
    },
    /// Inside a Ping's or Close's payload, answered once it is complete.
    Control(Box<PartialControl>),
}

/// A Ping or Close payload split across reads.
#[derive(Debug)]
pub(super) struct PartialControl {
    close: bool,
    mask: [u8; 4],
    len: u8,
    have: u8,
    data: [u8; MAX_CONTROL],
}

/// What a frame header starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Ping,
    Pong,
    Close,
}

impl Reader {
    pub(super) fn new() -> Reader {
        Reader::Header {
            buf: [0; MAX_HEADER],
            len: 0,
        }
    }

    pub(super) fn heap_bytes(&self) -> usize {
        match self {
            Reader::Control(_) => std::mem::size_of::<PartialControl>(),
            _ => 0,
        }
    }

    /// Reads `input`: data payload to `plain`, Pongs and the Close reply to
    /// `reply`. Stops at a Close (`read.peer_closed`); the caller ignores
    /// what follows. On error the caller writes the Close that answers it.
    pub(super) fn read(
        &mut self,
        in_message: &mut bool,
        close_sent: bool,
        input: &[u8],
        plain: &mut Vec<u8>,
        reply: &mut Vec<u8>,
        read: &mut WsRead,
    ) -> Result<(), WsError> {
        let mut pos = 0;
        while pos < input.len() {
            match self {
                Reader::Header { buf, len } => {
                    let Some((header, payload_len, used)) = take_header(buf, len, &input[pos..])?
                    else {
                        return Ok(());
                    };
                    pos += used;
                    let (kind, mask) = check(&header, payload_len, in_message)?;
                    match kind {
                        Kind::Data | Kind::Pong if payload_len == 0 => read.liveness = true,
                        Kind::Data | Kind::Pong => {
                            *self = Reader::Payload {
                                remaining: payload_len,
                                mask,
                                deliver: kind == Kind::Data,
                            }
                        }
                        Kind::Ping | Kind::Close => {
                            // At most 125, checked.
                            let len = payload_len as usize;
                            let rest = &input[pos..];
                            if rest.len() >= len {
                                pos += len;
                                let mut data = [0; MAX_CONTROL];
                                data[..len].copy_from_slice(&rest[..len]);
                                unmask(&mut data[..len], mask);
                                if control(kind, &data[..len], close_sent, reply, read)? {
                                    return Ok(());
                                }
                            } else {
                                let mut p = Box::new(PartialControl {
                                    close: kind == Kind::Close,
                                    mask,
                                    len: len as u8,
                                    have: rest.len() as u8,
                                    data: [0; MAX_CONTROL],
                                });
                                p.data[..rest.len()].copy_from_slice(rest);
                                *self = Reader::Control(p);
                                return Ok(());
                            }
                        }
                    }
                }
                Reader::Payload {
                    remaining,
                    mask,
                    deliver,
                } => {
                    let avail = &input[pos..];
                    let n = (*remaining).min(avail.len() as u64) as usize;
                    if *deliver {
                        let start = plain.len();
                        plain.extend_from_slice(&avail[..n]);
                        unmask(&mut plain[start..], *mask);
                    }
                    mask.rotate_left(n % 4);
                    *remaining -= n as u64;
                    pos += n;
                    if *remaining == 0 {
                        read.liveness = true;
                        *self = Reader::new();
                    }
                }
                Reader::Control(p) => {
                    let (have, len) = (p.have as usize, p.len as usize);
                    let n = (len - have).min(input.len() - pos);
                    p.data[have..have + n].copy_from_slice(&input[pos..pos + n]);
                    p.have += n as u8;
                    pos += n;
                    if have + n == len {
                        let kind = if p.close { Kind::Close } else { Kind::Ping };
                        let mut data = p.data;
                        unmask(&mut data[..len], p.mask);
                        *self = Reader::new();
                        if control(kind, &data[..len], close_sent, reply, read)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Completes a frame header from the `len` bytes kept in `buf` and `input`.
/// Returns the header, its payload length and how much of `input` it took;
/// or None once all of `input` is kept in `buf`.
fn take_header(
    buf: &mut [u8; MAX_HEADER],
    len: &mut u8,
    input: &[u8],
) -> Result<Option<(FrameHeader, u64, usize)>, WsError> {
    let have = *len as usize;
    if have == 0 {
        // The common case: parse straight from the read.
        let mut cursor = Cursor::new(input);
        return match FrameHeader::parse(&mut cursor) {
            Ok(Some((header, payload_len))) => {
                Ok(Some((header, payload_len, cursor.position() as usize)))
            }
            Ok(None) => {
                // Incomplete, so shorter than a header.
                buf[..input.len()].copy_from_slice(input);
                *len = input.len() as u8;
                Ok(None)
            }
            // The only error parsing from memory: a reserved opcode.
            Err(_) => Err(WsError::BadOpcode),
        };
    }
    let take = (MAX_HEADER - have).min(input.len());
    buf[have..have + take].copy_from_slice(&input[..take]);
    let mut cursor = Cursor::new(&buf[..have + take]);
    match FrameHeader::parse(&mut cursor) {
        Ok(Some((header, payload_len))) => {
            let used = cursor.position() as usize - have;
            *len = 0;
            Ok(Some((header, payload_len, used)))
        }
        Ok(None) => {
            *len = (have + take) as u8;
            Ok(None)
        }
        Err(_) => Err(WsError::BadOpcode),
    }
}

/// Validates a client frame header against the connection's state and
/// returns what it starts and its mask.
fn check(
    header: &FrameHeader,
    payload_len: u64,
    in_message: &mut bool,
) -> Result<(Kind, [u8; 4]), WsError> {
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(WsError::ReservedBits);
    }
    let Some(mask) = header.mask else {
        return Err(WsError::Unmasked);
    };
    if payload_len > i64::MAX as u64 {
        return Err(WsError::BadLength);
    }
    let kind = match header.opcode {
        OpCode::Data(Data::Text) => return Err(WsError::TextMessage),
        OpCode::Data(Data::Binary) if *in_message => return Err(WsError::ExpectedContinuation),
        OpCode::Data(Data::Continue) if !*in_message => {
            return Err(WsError::UnexpectedContinuation)
        }
        OpCode::Data(Data::Binary | Data::Continue) => {
            *in_message = !header.is_final;
            Kind::Data
        }
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(WsError::BadOpcode)
        }
        OpCode::Control(control) => {
            if !header.is_final {
                return Err(WsError::FragmentedControl);
            }
            if payload_len > MAX_CONTROL as u64 {
                return Err(WsError::ControlTooLong);
            }
            match control {
                Control::Ping => Kind::Ping,
                Control::Pong => Kind::Pong,
                _ => Kind::Close,
            }
        }
    };
    Ok((kind, mask))
}

/// Answers a complete, unmasked Ping or Close payload. Returns whether it
/// was a Close.
fn control(
    kind: Kind,
    payload: &[u8],
    close_sent: bool,
    reply: &mut Vec<u8>,
    read: &mut WsRead,
) -> Result<bool, WsError> {
    if kind == Kind::Ping {
        outbound::write_frame(OpCode::Control(Control::Pong), payload, reply);
        read.liveness = true;
        return Ok(false);
    }
    match payload {
        [] => {}
        [_] => return Err(WsError::BadClose),
        [hi, lo, reason @ ..] => {
            if !CloseCode::from(u16::from_be_bytes([*hi, *lo])).is_allowed() {
                return Err(WsError::BadClose);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::BadCloseReason);
            }
        }
    }
    if !close_sent {
        // Echo the status code (RFC 6455 section 5.5.1), without the reason.
        let code = &payload[..payload.len().min(2)];
        outbound::write_frame(OpCode::Control(Control::Close), code, reply);
    }
    read.peer_closed = true;
    Ok(true)
}

/// XORs `buf` with `mask`, `mask[0]` applying to `buf[0]`: a word at a time
/// (tungstenite's `apply_mask` is private).
pub(super) fn unmask(buf: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut words = buf.chunks_exact_mut(4);
    for w in &mut words {
        let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in words.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}
