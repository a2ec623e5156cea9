//! Server frames: one binary message per outbound Miop frame, control
//! replies and the Close. Server frames are never masked (RFC 6455 section
//! 5.1).

use bytes::{BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::protocol::{Header, HEADER_LEN};

/// An unmasked, final frame header with `opcode`.
fn server_header(opcode: OpCode) -> FrameHeader {
    FrameHeader {
        is_final: true,
        opcode,
        mask: None,
        ..FrameHeader::default()
    }
}

/// Appends a whole unmasked frame to `out`.
pub(super) fn write_frame(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    server_header(opcode)
        .format(payload.len() as u64, out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
}

pub(super) fn close_frame(code: u16) -> Bytes {
    let mut out = Vec::with_capacity(4);
    write_frame(
        OpCode::Control(Control::Close),
        &code.to_be_bytes(),
        &mut out,
    );
    Bytes::from(out)
}

/// The lengths of the Miop frames in `chunk`, read from their headers
/// ([`Header::frame_len`], the whole frame's length). A tail that is not a
/// whole frame (shorter than a header, or than the length its header claims)
/// counts as one frame, so no byte is dropped.
fn frame_lens(chunk: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = &chunk[at..];
        if rest.is_empty() {
            return None;
        }
        let len = match rest.first_chunk::<HEADER_LEN>() {
            Some(header) => {
                let len = Header::read(header).frame_len as usize;
                if (HEADER_LEN..=rest.len()).contains(&len) {
                    len
                } else {
                    rest.len()
                }
            }
            None => rest.len(),
        };
        at += len;
        Some(len)
    })
}

pub(super) fn seal(chunks: Vec<Bytes>, out: &mut Vec<Bytes>) {
    let binary = server_header(OpCode::Data(Data::Binary));
    let (mut frames, mut head_bytes) = (0, 0);
    for len in chunks.iter().flat_map(|c| frame_lens(c)) {
        frames += 1;
        head_bytes += binary.len(len as u64);
    }
    // Every header of the call in one buffer, handed out in slices.
    let mut heads = BytesMut::with_capacity(head_bytes);
    for len in chunks.iter().flat_map(|c| frame_lens(c)) {
        binary
            .format(len as u64, &mut (&mut heads).writer())
            .expect("writing to a BytesMut cannot fail");
    }
    let mut heads = heads.freeze();
    out.reserve(2 * frames);
    for chunk in &chunks {
        let mut at = 0;
        for len in frame_lens(chunk) {
            out.push(heads.split_to(binary.len(len as u64)));
            out.push(chunk.slice(at..at + len));
            at += len;
        }
    }
}
