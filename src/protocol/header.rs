//! The fixed 16-byte frame header and the opcode table.

use super::{HEADER_LEN, VERSION};

/// Push flag: the sender wants a PushAck for this message.
pub const FLAG_ACK_REQUIRED: u16 = 0x0001;

/// Frame types. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    Bind = 0x01,
    BindAck = 0x02,
    Ping = 0x03,
    Pong = 0x04,
    Push = 0x05,
    PushAck = 0x06,
    Close = 0x07,
    Error = 0x08,
    Subscribe = 0x09,
    Unsubscribe = 0x0A,
    TopicsAck = 0x0B,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x01 => Opcode::Bind,
            0x02 => Opcode::BindAck,
            0x03 => Opcode::Ping,
            0x04 => Opcode::Pong,
            0x05 => Opcode::Push,
            0x06 => Opcode::PushAck,
            0x07 => Opcode::Close,
            0x08 => Opcode::Error,
            0x09 => Opcode::Subscribe,
            0x0A => Opcode::Unsubscribe,
            0x0B => Opcode::TopicsAck,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Opcode::Bind => "bind",
            Opcode::BindAck => "bind_ack",
            Opcode::Ping => "ping",
            Opcode::Pong => "pong",
            Opcode::Push => "push",
            Opcode::PushAck => "push_ack",
            Opcode::Close => "close",
            Opcode::Error => "error",
            Opcode::Subscribe => "subscribe",
            Opcode::Unsubscribe => "unsubscribe",
            Opcode::TopicsAck => "topics_ack",
        }
    }
}

/// The decoded fixed header. `opcode` stays a raw byte here so that a frame with
/// an unknown opcode can still be answered with its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total frame length, header included.
    pub frame_len: u32,
    /// Header length; 16 in v1, larger values carry extensions a v1 peer skips.
    pub header_len: u16,
    pub version: u8,
    pub opcode: u8,
    pub flags: u16,
    pub seq: u32,
}

impl Header {
    /// Reads the header fields from the first 16 bytes; no validation.
    pub fn read(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            frame_len: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            header_len: u16::from_be_bytes([b[4], b[5]]),
            version: b[6],
            opcode: b[7],
            flags: u16::from_be_bytes([b[8], b[9]]),
            // b[10..12] is reserved: zero when sent, ignored when received.
            seq: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Writes a v1 header.
    pub fn write(out: &mut [u8; HEADER_LEN], frame_len: u32, opcode: Opcode, flags: u16, seq: u32) {
        Header::write_ext(out, frame_len, 0, opcode, flags, seq)
    }

    /// Like [`Header::write`], for a header followed by `ext_len` bytes of
    /// header extensions (revision 3: a Close with a retry-after hint).
    pub fn write_ext(
        out: &mut [u8; HEADER_LEN],
        frame_len: u32,
        ext_len: usize,
        opcode: Opcode,
        flags: u16,
        seq: u32,
    ) {
        out[0..4].copy_from_slice(&frame_len.to_be_bytes());
        out[4..6].copy_from_slice(&((HEADER_LEN + ext_len) as u16).to_be_bytes());
        out[6] = VERSION;
        out[7] = opcode as u8;
        out[8..10].copy_from_slice(&flags.to_be_bytes());
        out[10..12].copy_from_slice(&[0, 0]);
        out[12..16].copy_from_slice(&seq.to_be_bytes());
    }
}
