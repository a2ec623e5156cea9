//! Fuzz target: the WebSocket server layer (`miop::transport::ws::WsServer`)
//! on a byte stream built from an upgrade request (valid, with a subprotocol,
//! or arbitrary bytes) and client frames (any first byte, masked or not, any
//! length encoding, lengths that lie, raw bytes), split into reads at
//! arbitrary points; and `seal` on arbitrary chunks of Miop frames.
//!
//! Checks:
//! - no panic;
//! - the split does not matter: the stream fed in one read and in the
//!   arbitrary reads gives the same Miop bytes, the same reply bytes, the
//!   same outcome (error, open, Close) and the same state;
//! - nothing happens after an error or a Close: later input is ignored;
//! - heap is bounded by the handshake limit plus one read, and none is held
//!   once the connection is dead;
//! - the reply is well formed: an HTTP error response after a handshake
//!   error; otherwise the `101` and then whole unmasked server frames, Pongs
//!   and at most one Close, last, carrying the error's close code if any;
//! - `seal` loses no byte, and wraps each Miop frame of a well-formed chunk
//!   in its own unmasked final binary message.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use miop::protocol::{Header, Opcode, HEADER_LEN};
use miop::transport::ws::{WsConfig, WsError, WsRead, WsServer};

const KEY_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

#[derive(Debug, Arbitrary)]
enum Request {
    Valid,
    WithProtocol,
    /// The valid request with one byte replaced.
    Mutated(u16, u8),
    Raw(Vec<u8>),
}

impl Request {
    fn bytes(&self) -> Vec<u8> {
        let valid = |extra: &str| {
            format!("GET /miop?x HTTP/1.1\r\nHost: h\r\n{KEY_HEADERS}{extra}\r\n").into_bytes()
        };
        match self {
            Request::Valid => valid(""),
            Request::WithProtocol => valid("Sec-WebSocket-Protocol: chat, miop\r\n"),
            Request::Mutated(at, b) => {
                let mut r = valid("");
                let at = *at as usize % r.len();
                r[at] = *b;
                r
            }
            Request::Raw(b) => b.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Piece {
    Frame {
        /// FIN, RSV1-3 and the opcode, as sent.
        first: u8,
        mask: Option<[u8; 4]>,
        /// 0: minimal length encoding, 1: 16-bit, 2: 64-bit.
        width: u8,
        /// A length that does not match the payload.
        lie: Option<u64>,
        payload: Vec<u8>,
    },
    /// A binary frame, masked, of `len` repeated bytes (long payloads
    /// without long inputs).
    Long {
        len: u16,
        byte: u8,
        mask: [u8; 4],
    },
    Raw(Vec<u8>),
}

impl Piece {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Frame {
                first,
                mask,
                width,
                lie,
                payload,
            } => {
                let len = lie.unwrap_or(payload.len() as u64);
                out.push(*first);
                let m = if mask.is_some() { 0x80 } else { 0 };
                match width % 3 {
                    0 if len < 126 => out.push(m | len as u8),
                    0 | 1 if len <= 0xffff => {
                        out.push(m | 126);
                        out.extend_from_slice(&(len as u16).to_be_bytes());
                    }
                    _ => {
                        out.push(m | 127);
                        out.extend_from_slice(&len.to_be_bytes());
                    }
                }
                let start = out.len();
                out.extend_from_slice(payload);
                if let Some(mask) = mask {
                    out.splice(start..start, *mask);
                    for (i, b) in out[start + 4..].iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                }
            }
            Piece::Long { len, byte, mask } => {
                let len = *len as usize;
                out.push(0x82);
                if len < 126 {
                    out.push(0x80 | len as u8);
                } else {
                    out.push(0x80 | 126);
                    out.extend_from_slice(&(len as u16).to_be_bytes());
                }
                out.extend_from_slice(mask);
                out.extend((0..len).map(|i| byte ^ mask[i % 4]));
            }
            Piece::Raw(b) => out.extend_from_slice(b),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Selects `max_handshake`: small, so that too-long requests are reached.
    max_handshake: u8,
    request: Request,
    pieces: Vec<Piece>,
    /// Where the stream is cut into reads.
    cuts: Vec<u16>,
    /// The server sent its Close before these reads.
    sent_close: bool,
    /// For `seal`: chunks of Miop frames of these lengths (taken modulo
    /// 65,537, under 16 making a malformed tail), or raw bytes.
    chunks: Vec<Chunk>,
}

#[derive(Debug, Arbitrary)]
enum Chunk {
    Frames(Vec<u16>),
    Raw(Vec<u8>),
}

/// Everything one run produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    plain: Vec<u8>,
    reply: Vec<u8>,
    result: Result<(), WsError>,
    opened: usize,
    liveness: bool,
    peer_closed: bool,
    is_open: bool,
    /// Heap still held (a partial request or control payload): its size
    /// depends on how the buffer grew, so only whether there is any.
    holds_heap: bool,
}

fn run(cfg: &WsConfig, sent_close: bool, reads: &[&[u8]]) -> Outcome {
    let mut ws = WsServer::new();
    if sent_close {
        ws.sent_close();
    }
    let (mut plain, mut reply) = (Vec::new(), Vec::new());
    let mut out = Outcome {
        plain: Vec::new(),
        reply: Vec::new(),
        result: Ok(()),
        opened: 0,
        liveness: false,
        peer_closed: false,
        is_open: false,
        holds_heap: false,
    };
    let mut dead = false;
    for read in reads {
        let before = (plain.len(), reply.len());
        match ws.receive(cfg, read, &mut plain, &mut reply) {
            Ok(r) if dead => {
                assert_eq!(r, WsRead::default(), "a dead connection reacted");
                assert_eq!(
                    (plain.len(), reply.len()),
                    before,
                    "a dead connection wrote"
                );
            }
            Ok(r) => {
                out.opened += r.open as usize;
                out.liveness |= r.liveness;
                out.peer_closed |= r.peer_closed;
                dead = r.peer_closed;
            }
            Err(e) => {
                assert!(!dead, "a dead connection failed again");
                // A framing error in the read that completed the handshake:
                // the Err stands for that read's WsRead, `open` included.
                if e.close_code().is_some() && out.opened == 0 {
                    out.opened = 1;
                }
                out.result = Err(e);
                dead = true;
            }
        }
        // A request buffer grows by doubling.
        assert!(
            ws.heap_bytes() <= 2 * (cfg.max_handshake + read.len()) + 256,
            "{} heap bytes",
            ws.heap_bytes()
        );
        if dead {
            assert_eq!(ws.heap_bytes(), 0, "a dead connection holds heap");
            assert!(!ws.is_open());
        }
    }
    assert!(out.opened <= 1);
    if out.result.is_err() {
        // An Err stands for its read's WsRead: whether earlier reads had
        // liveness depends on the split, and does not matter any more.
        out.liveness = false;
    }
    out.plain = plain;
    out.reply = reply;
    out.is_open = ws.is_open();
    out.holds_heap = ws.heap_bytes() > 0;
    out
}

/// Parses unmasked server frames; returns (opcode, payload) of each.
fn server_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 2, "partial server frame");
        assert_eq!(b[0] & 0xf0, 0x80, "FIN set, RSV clear");
        assert_eq!(b[1] & 0x80, 0, "server frames are unmasked");
        let (len, at) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((b[0] & 0x0f, b[at..at + len].to_vec()));
        b = &b[at + len..];
    }
    frames
}

fn check_reply(out: &Outcome) {
    let text_end = out
        .reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    if let Err(e) = &out.result {
        if let Some(status) = e.http_status() {
            assert_eq!(out.opened, 0);
            let head = format!("HTTP/1.1 {status} ");
            assert!(out.reply.starts_with(head.as_bytes()), "{e:?}");
            return;
        }
    }
    if out.opened == 0 {
        assert!(out.reply.is_empty() && out.plain.is_empty());
        return;
    }
    assert!(out
        .reply
        .starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    let frames = server_frames(&out.reply[text_end.unwrap()..]);
    for (i, (opcode, payload)) in frames.iter().enumerate() {
        match opcode {
            0xa => assert!(payload.len() <= 125),
            0x8 => {
                assert_eq!(i, frames.len() - 1, "a frame after the Close");
                assert!(payload.is_empty() || payload.len() == 2);
                if let Err(e) = &out.result {
                    let code = e.close_code().unwrap();
                    assert_eq!(payload[..], code.to_be_bytes());
                }
            }
            _ => panic!("server sent opcode {opcode}"),
        }
    }
    let closes = frames.iter().filter(|(op, _)| *op == 0x8).count();
    match &out.result {
        Err(_) => assert_eq!(closes, 1),
        Ok(()) => assert!(closes <= 1 && (closes == 0 || out.peer_closed)),
    }
}

fn miop_frame(len: usize, seq: u32) -> Vec<u8> {
    let mut header = [0; HEADER_LEN];
    Header::write(&mut header, len as u32, Opcode::Push, 0, seq);
    let mut f = header.to_vec();
    f.resize(len.max(HEADER_LEN), seq as u8);
    f.truncate(len);
    f
}

/// Most bytes of Miop frames one input may seal, and of one WebSocket
/// stream: enough for several maximal frames, little enough to stay fast.
const BUDGET: usize = 1 << 17;

fn check_seal(chunks: &[Chunk]) {
    let mut budget = BUDGET;
    let mut frames = 0;
    let mut well_formed = true;
    let chunks: Vec<Bytes> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Chunk::Frames(lens) => {
                let mut b = Vec::new();
                for &len in lens {
                    let len = len as usize % (65_536 + 1);
                    if len > budget {
                        break;
                    }
                    budget -= len;
                    well_formed &= len >= HEADER_LEN;
                    frames += 1;
                    b.extend(miop_frame(len, i as u32));
                }
                Bytes::from(b)
            }
            Chunk::Raw(b) => {
                well_formed &= b.is_empty();
                Bytes::from(b.clone())
            }
        })
        .collect();
    let mut out = Vec::new();
    WsServer::new().seal(chunks.clone(), &mut out);
    assert_eq!(out.len() % 2, 0);
    let mut payload = Vec::new();
    for pair in out.chunks(2) {
        let header = server_frames(&[&pair[0][..], &pair[1][..]].concat());
        assert_eq!(header.len(), 1);
        assert_eq!(header[0].0, 0x2, "binary");
        payload.extend_from_slice(&pair[1]);
    }
    assert_eq!(payload, chunks.concat(), "seal lost or changed bytes");
    if well_formed {
        assert_eq!(out.len(), 2 * frames);
    }
}

fuzz_target!(|input: Input| {
    let cfg = WsConfig {
        path: "/miop".into(),
        max_handshake: 64 + 4 * input.max_handshake as usize,
    };
    let mut stream = input.request.bytes();
    for piece in &input.pieces {
        if stream.len() > BUDGET {
            break;
        }
        piece.encode(&mut stream);
    }
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| c as usize % (stream.len() + 1))
        .collect();
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    let reads: Vec<&[u8]> = cuts.windows(2).map(|w| &stream[w[0]..w[1]]).collect();

    let whole = run(&cfg, input.sent_close, &[&stream]);
    let split = run(&cfg, input.sent_close, &reads);
    assert_eq!(whole, split, "the split into reads changed the outcome");
    check_reply(&whole);

    check_seal(&input.chunks);
});
