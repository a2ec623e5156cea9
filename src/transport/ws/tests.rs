//! Drives [`WsServer`] with byte strings: client frames are built with
//! tungstenite's own frame writer, server frames are parsed back with its
//! header parser, and one test runs tungstenite's client against the server
//! over an in-memory pipe.

use std::collections::VecDeque;
use std::io::{Cursor, Read, Write};

use bytes::Bytes;
use proptest::prelude::*;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader};

use super::*;
use crate::protocol::{self, CloseReason, ErrorCode, Header, Opcode, HEADER_LEN, MAX_FRAME_LEN};

/// RFC 6455 section 1.3's example key, at this gateway's path.
const REQ: &[u8] = b"GET /miop HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

/// The answer to [`REQ`].
const RESP: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
\r\n";

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn cfg() -> WsConfig {
    WsConfig {
        path: "/miop".into(),
        max_handshake: 8 * 1024,
    }
}

/// A request with `headers` (each ending in \r\n) in place of REQ's.
fn request(line: &str, headers: &str) -> Vec<u8> {
    format!("{line}\r\nHost: h\r\n{headers}\r\n").into_bytes()
}

const GOOD_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// A client frame, masked with `mask` (None: unmasked), by tungstenite.
fn frame_with(opcode: OpCode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask,
        ..FrameHeader::default()
    };
    let mut out = Vec::new();
    Frame::from_payload(header, Bytes::copy_from_slice(payload))
        .format(&mut out)
        .unwrap();
    out
}

fn client(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    frame_with(opcode, fin, payload, Some(MASK))
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client(OpCode::Data(Data::Binary), true, payload)
}

fn ping(payload: &[u8]) -> Vec<u8> {
    client(OpCode::Control(Control::Ping), true, payload)
}

fn close(payload: &[u8]) -> Vec<u8> {
    client(OpCode::Control(Control::Close), true, payload)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Everything several `receive` calls produced.
#[derive(Debug, Default)]
struct Out {
    plain: Vec<u8>,
    reply: Vec<u8>,
    reads: Vec<WsRead>,
}

impl Out {
    fn any(&self, f: impl Fn(&WsRead) -> bool) -> bool {
        self.reads.iter().any(f)
    }
}

/// Feeds `parts` one call each; panics on error.
fn feed(ws: &mut WsServer, parts: &[&[u8]]) -> Out {
    let mut out = Out::default();
    for part in parts {
        let read = ws
            .receive(&cfg(), part, &mut out.plain, &mut out.reply)
            .unwrap();
        out.reads.push(read);
    }
    out
}

fn open() -> WsServer {
    let mut ws = WsServer::new();
    let out = feed(&mut ws, &[REQ]);
    assert_eq!(out.reply, RESP);
    assert!(ws.is_open());
    ws
}

/// Server frames in `bytes`: (opcode, fin, payload). Checks they are
/// unmasked, with no reserved bits, and that nothing is left over.
fn server_frames(bytes: &[u8]) -> Vec<(OpCode, bool, Vec<u8>)> {
    let mut cursor = Cursor::new(bytes);
    let mut frames = Vec::new();
    while (cursor.position() as usize) < bytes.len() {
        let (header, len) = FrameHeader::parse(&mut cursor)
            .unwrap()
            .expect("whole frame header");
        assert_eq!(header.mask, None, "server frames are unmasked");
        assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
        let at = cursor.position() as usize;
        let end = at + len as usize;
        frames.push((header.opcode, header.is_final, bytes[at..end].to_vec()));
        cursor.set_position(end as u64);
    }
    frames
}

fn pong_frame(payload: &[u8]) -> (OpCode, bool, Vec<u8>) {
    (OpCode::Control(Control::Pong), true, payload.to_vec())
}

fn close_frame_of(payload: &[u8]) -> (OpCode, bool, Vec<u8>) {
    (OpCode::Control(Control::Close), true, payload.to_vec())
}

/// Split points of a `len`-byte input: all of them when short, else the
/// first and last 24 and a stride between.
fn splits(len: usize) -> Vec<usize> {
    if len <= 400 {
        return (0..=len).collect();
    }
    let mut at: Vec<usize> = (0..=24)
        .chain(len - 24..=len)
        .chain((24..len).step_by(997))
        .collect();
    at.sort_unstable();
    at.dedup();
    at
}

// ---- handshake ----

#[test]
fn accept_key_is_rfc_6455_example() {
    assert_eq!(
        tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let mut ws = WsServer::new();
    assert!(!ws.is_open());
    let out = feed(&mut ws, &[REQ]);
    assert_eq!(out.reply, RESP);
    assert_eq!(
        out.reads,
        [WsRead {
            open: true,
            ..WsRead::default()
        }]
    );
    assert!(ws.is_open());
    assert!(out.plain.is_empty());
}

#[test]
fn request_split_at_every_boundary() {
    for at in 0..=REQ.len() {
        let mut ws = WsServer::new();
        let out = feed(&mut ws, &[&REQ[..at], &REQ[at..]]);
        assert_eq!(out.reply, RESP, "split at {at}");
        assert_eq!(out.reads[0].open, at == REQ.len(), "split at {at}");
        assert_eq!(out.reads[1].open, at < REQ.len(), "split at {at}");
        assert!(ws.is_open());
        assert_eq!(ws.heap_bytes(), 0, "the request buffer is freed once open");
    }
}

#[test]
fn request_one_byte_per_read() {
    let mut ws = WsServer::new();
    let parts: Vec<&[u8]> = REQ.chunks(1).collect();
    let out = feed(&mut ws, &parts);
    assert_eq!(out.reply, RESP);
    assert_eq!(out.reads.iter().filter(|r| r.open).count(), 1);
    assert!(out.reads.last().unwrap().open);
}

#[test]
fn partial_request_is_the_only_heap_before_open() {
    let mut ws = WsServer::new();
    assert_eq!(ws.heap_bytes(), 0);
    feed(&mut ws, &[b""]);
    assert_eq!(ws.heap_bytes(), 0, "an empty read allocates nothing");
    feed(&mut ws, &[&REQ[..10]]);
    assert!(ws.heap_bytes() >= 10);
    feed(&mut ws, &[&REQ[10..]]);
    assert_eq!(ws.heap_bytes(), 0);
}

#[test]
fn pipelined_frames_after_the_request() {
    let mut input = REQ.to_vec();
    input.extend(binary(b"hello"));
    input.extend(ping(b"p"));
    input.extend(binary(b" world"));

    // In one read.
    let mut ws = WsServer::new();
    let out = feed(&mut ws, &[&input]);
    assert_eq!(out.plain, b"hello world");
    assert!(out.reply.starts_with(RESP));
    assert_eq!(server_frames(&out.reply[RESP.len()..]), [pong_frame(b"p")]);
    assert_eq!(
        out.reads,
        [WsRead {
            open: true,
            liveness: true,
            peer_closed: false
        }]
    );

    // Split anywhere: the request may be buffered with frames behind it.
    for at in 0..=input.len() {
        let mut ws = WsServer::new();
        let out = feed(&mut ws, &[&input[..at], &input[at..]]);
        assert_eq!(out.plain, b"hello world", "split at {at}");
        assert!(out.reply.starts_with(RESP));
        assert_eq!(server_frames(&out.reply[RESP.len()..]), [pong_frame(b"p")]);
        assert_eq!(ws.heap_bytes(), 0);
    }
}

#[test]
fn query_string_is_ignored() {
    let mut ws = WsServer::new();
    let req = request("GET /miop?token=abc HTTP/1.1", GOOD_HEADERS);
    let out = feed(&mut ws, &[&req]);
    assert_eq!(out.reply, RESP);
}

#[test]
fn header_matching_is_case_insensitive_and_token_based() {
    let headers = "upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n\
sec-websocket-key:   dGhlIHNhbXBsZSBub25jZQ==  \r\nSEC-WEBSOCKET-VERSION: 13\r\n";
    let mut ws = WsServer::new();
    let out = feed(&mut ws, &[&request("GET /miop HTTP/1.1", headers)]);
    assert_eq!(out.reply, RESP);
}

#[test]
fn subprotocol_miop_is_echoed_when_offered() {
    let accept = |protocols: &str| {
        let mut ws = WsServer::new();
        let headers = format!("{GOOD_HEADERS}{protocols}");
        let out = feed(&mut ws, &[&request("GET /miop HTTP/1.1", &headers)]);
        String::from_utf8(out.reply).unwrap()
    };
    let echoed = "Sec-WebSocket-Protocol: miop\r\n";
    assert!(accept("Sec-WebSocket-Protocol: chat, miop\r\n").contains(echoed));
    assert!(
        accept("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: miop\r\n").contains(echoed)
    );
    assert!(!accept("Sec-WebSocket-Protocol: chat\r\n").contains("Sec-WebSocket-Protocol"));
    assert!(!accept("Sec-WebSocket-Protocol: MIOP\r\n").contains("Sec-WebSocket-Protocol"));
    assert!(!accept("").contains("Sec-WebSocket-Protocol"));
}

// ---- frames ----

#[test]
fn idle_open_connection_holds_no_heap() {
    let mut ws = open();
    assert_eq!(ws.heap_bytes(), 0);
    // A partial header stays inline.
    let f = binary(&pattern(70_000));
    feed(&mut ws, &[&f[..7]]);
    assert_eq!(ws.heap_bytes(), 0);
    // A partial data payload is not buffered.
    let out = feed(&mut ws, &[&f[7..5000]]);
    assert_eq!(ws.heap_bytes(), 0);
    assert_eq!(out.plain, pattern(70_000)[..5000 - 14]);
}

#[test]
fn size_of_ws_server_is_small() {
    let size = std::mem::size_of::<WsServer>();
    eprintln!("size_of::<WsServer>() = {size}");
    assert!(size <= 24, "WsServer is {size} bytes");
}

#[test]
fn binary_frames_of_every_length_encoding_split_anywhere() {
    // 0..=125: 7-bit length; 126 and 65535: 16-bit; 65536: 64-bit.
    for len in [0, 1, 5, 125, 126, 127, 65_535, 65_536] {
        let payload = pattern(len);
        let f = binary(&payload);
        for at in splits(f.len()) {
            let mut ws = open();
            let out = feed(&mut ws, &[&f[..at], &f[at..]]);
            assert_eq!(out.plain.len(), len, "len {len} split at {at}");
            assert!(out.plain == payload, "len {len} split at {at}");
            assert_eq!(
                out.reads[0].liveness,
                at == f.len(),
                "len {len} split at {at}"
            );
            assert_eq!(
                out.reads[1].liveness,
                at < f.len(),
                "len {len} split at {at}"
            );
            assert!(out.reply.is_empty());
            assert_eq!(ws.heap_bytes(), 0);
        }
    }
}

#[test]
fn mask_offset_carries_across_reads() {
    // Reads of 1, 2, 3 and 5 bytes put every mask offset at a read boundary.
    let payload = pattern(1000);
    let f = binary(&payload);
    for step in [1, 2, 3, 5, 4096] {
        let mut ws = open();
        let parts: Vec<&[u8]> = f.chunks(step).collect();
        let out = feed(&mut ws, &parts);
        assert!(out.plain == payload, "reads of {step}");
    }
}

#[test]
fn many_frames_in_one_read_and_one_miop_frame_over_many_messages() {
    let miop = protocol::Frame::error(9, ErrorCode::Malformed, "x")
        .to_bytes()
        .unwrap();
    let mut ws = open();
    let mut input = Vec::new();
    for piece in miop.chunks(3) {
        input.extend(binary(piece));
    }
    input.extend(binary(&[miop.as_ref(), miop.as_ref()].concat()));
    let out = feed(&mut ws, &[&input]);
    assert_eq!(
        out.plain,
        [miop.as_ref(), miop.as_ref(), miop.as_ref()].concat()
    );
}

#[test]
fn fragmented_message_with_interleaved_ping() {
    let mut ws = open();
    let mut input = client(OpCode::Data(Data::Binary), false, b"ab");
    input.extend(ping(b"hi"));
    input.extend(client(OpCode::Data(Data::Continue), false, b"cd"));
    input.extend(client(OpCode::Control(Control::Pong), true, b"unsolicited"));
    input.extend(client(OpCode::Data(Data::Continue), true, b"ef"));
    // The message is over: a new one starts with Binary.
    input.extend(binary(b"gh"));
    for at in splits(input.len()) {
        let mut ws2 = open();
        let out = feed(&mut ws2, &[&input[..at], &input[at..]]);
        assert_eq!(out.plain, b"abcdefgh", "split at {at}");
        assert_eq!(server_frames(&out.reply), [pong_frame(b"hi")]);
    }
    let out = feed(&mut ws, &[&input]);
    assert_eq!(out.plain, b"abcdefgh");
    assert!(out.reads[0].liveness);
}

#[test]
fn ping_is_answered_with_pong_echo() {
    for len in [0, 1, 124, 125] {
        let payload = pattern(len);
        let f = ping(&payload);
        for at in 0..=f.len() {
            let mut ws = open();
            let out = feed(&mut ws, &[&f[..at], &f[at..]]);
            assert_eq!(
                server_frames(&out.reply),
                [pong_frame(&payload)],
                "len {len} at {at}"
            );
            assert!(out.any(|r| r.liveness));
            assert!(out.plain.is_empty());
            assert_eq!(ws.heap_bytes(), 0);
        }
    }
}

#[test]
fn partial_control_payload_is_the_only_heap_when_open() {
    let mut ws = open();
    let f = ping(&pattern(100));
    let out = feed(&mut ws, &[&f[..50]]);
    assert!(ws.heap_bytes() > 0);
    assert!(out.reply.is_empty());
    assert!(!out.reads[0].liveness);
    let out = feed(&mut ws, &[&f[50..]]);
    assert_eq!(ws.heap_bytes(), 0);
    assert_eq!(server_frames(&out.reply), [pong_frame(&pattern(100))]);
    assert!(out.reads[0].liveness);
}

#[test]
fn pong_is_liveness_without_reply() {
    let mut ws = open();
    let f = client(OpCode::Control(Control::Pong), true, b"whatever");
    let out = feed(&mut ws, &[&f[..4], &f[4..]]);
    assert_eq!(out.reads[0], WsRead::default());
    assert_eq!(
        out.reads[1],
        WsRead {
            liveness: true,
            ..WsRead::default()
        }
    );
    assert!(out.reply.is_empty() && out.plain.is_empty());
}

#[test]
fn close_is_answered_with_close_echoing_the_code() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice("bye ✓".as_bytes());
    let f = close(&payload);
    for at in 0..=f.len() {
        let mut ws = open();
        let out = feed(&mut ws, &[&f[..at], &f[at..]]);
        assert_eq!(
            server_frames(&out.reply),
            [close_frame_of(&1000u16.to_be_bytes())],
            "at {at}"
        );
        assert!(out.any(|r| r.peer_closed));
        assert!(!ws.is_open());
        assert_eq!(ws.heap_bytes(), 0);
    }
}

#[test]
fn empty_close_gets_empty_close() {
    let mut ws = open();
    let out = feed(&mut ws, &[&close(b"")]);
    assert_eq!(server_frames(&out.reply), [close_frame_of(b"")]);
    assert_eq!(
        out.reads,
        [WsRead {
            peer_closed: true,
            ..WsRead::default()
        }]
    );
}

#[test]
fn input_after_close_is_ignored() {
    let mut ws = open();
    let mut input = binary(b"a");
    input.extend(close(&1001u16.to_be_bytes()));
    input.extend(binary(b"b"));
    input.extend(ping(b"c"));
    let out = feed(&mut ws, &[&input]);
    assert_eq!(out.plain, b"a");
    assert_eq!(
        server_frames(&out.reply),
        [close_frame_of(&1001u16.to_be_bytes())]
    );
    // Later reads too, even garbage.
    let out = feed(&mut ws, &[&binary(b"d"), b"\xff\xff\xff"]);
    assert!(out.plain.is_empty() && out.reply.is_empty());
    assert!(out.reads.iter().all(|r| *r == WsRead::default()));
}

#[test]
fn close_after_server_close_is_not_answered() {
    let mut ws = open();
    let ours = WsServer::close_frame(CLOSE_GOING_AWAY);
    assert_eq!(
        server_frames(&ours),
        [close_frame_of(&1001u16.to_be_bytes())]
    );
    ws.sent_close();
    // Frames in flight are still read.
    let mut input = binary(b"late");
    input.extend(close(&1001u16.to_be_bytes()));
    let out = feed(&mut ws, &[&input]);
    assert_eq!(out.plain, b"late");
    assert!(out.reply.is_empty());
    assert!(out.reads[0].peer_closed);
    assert!(!ws.is_open());
}

// ---- errors ----

/// The status line of an HTTP error response, after checking it is whole.
fn status_line(reply: &[u8]) -> String {
    let text = String::from_utf8(reply.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), len);
    assert!(head.contains("\r\nConnection: "));
    head.lines().next().unwrap().to_string()
}

fn handshake_error(input: &[u8]) -> (WsError, Vec<u8>) {
    let mut ws = WsServer::new();
    let (mut plain, mut reply) = (Vec::new(), Vec::new());
    let err = ws
        .receive(&cfg(), input, &mut plain, &mut reply)
        .unwrap_err();
    assert!(!ws.is_open());
    assert_eq!(ws.heap_bytes(), 0);
    // Dead: later input is ignored.
    let mut more = Vec::new();
    assert_eq!(
        ws.receive(&cfg(), REQ, &mut plain, &mut more),
        Ok(WsRead::default())
    );
    assert!(more.is_empty() && plain.is_empty());
    (err, reply)
}

#[test]
fn handshake_errors() {
    let without = |name: &str| {
        let headers: String = GOOD_HEADERS
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with(name))
            .collect();
        request("GET /miop HTTP/1.1", &headers)
    };
    let with = |extra: &str| request("GET /miop HTTP/1.1", &format!("{GOOD_HEADERS}{extra}"));
    let replace = |name: &str, line: &str| {
        let mut r = without(name);
        r.truncate(r.len() - 2);
        r.extend_from_slice(line.as_bytes());
        r.extend_from_slice(b"\r\n");
        r
    };
    let cases: Vec<(Vec<u8>, WsError, &str)> = vec![
        (
            request("POST /miop HTTP/1.1", GOOD_HEADERS),
            WsError::BadRequest,
            "400",
        ),
        (
            request("GET /miop HTTP/1.0", GOOD_HEADERS),
            WsError::BadRequest,
            "400",
        ),
        (
            request("GET /miop", GOOD_HEADERS),
            WsError::BadRequest,
            "400",
        ),
        (
            request("GET /miop HTTP/1.1", "Bad Header\r\n"),
            WsError::BadRequest,
            "400",
        ),
        (b"\x16\x03\x01\x02\x00".to_vec(), WsError::BadRequest, "400"), // a TLS ClientHello
        (b"G\x00".to_vec(), WsError::BadRequest, "400"),
        (
            request("GET /other HTTP/1.1", GOOD_HEADERS),
            WsError::WrongPath,
            "404",
        ),
        (
            request("GET /miop/ HTTP/1.1", GOOD_HEADERS),
            WsError::WrongPath,
            "404",
        ),
        (without("Upgrade"), WsError::NotUpgrade, "400"),
        (
            replace("Upgrade", "Upgrade: h2c\r\n"),
            WsError::NotUpgrade,
            "400",
        ),
        (without("Connection"), WsError::NotUpgrade, "400"),
        (
            replace("Connection", "Connection: keep-alive\r\n"),
            WsError::NotUpgrade,
            "400",
        ),
        (without("Sec-WebSocket-Version"), WsError::BadVersion, "426"),
        (
            replace("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8\r\n"),
            WsError::BadVersion,
            "426",
        ),
        (
            with("Sec-WebSocket-Version: 8\r\n"),
            WsError::BadVersion,
            "426",
        ),
        (without("Sec-WebSocket-Key"), WsError::BadKey, "400"),
        (
            replace("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ=\r\n"),
            WsError::BadKey,
            "400",
        ),
        (
            replace(
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n",
            ),
            WsError::BadKey,
            "400",
        ),
        (
            // base64 of 17 bytes.
            replace(
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n",
            ),
            WsError::BadKey,
            "400",
        ),
        (
            with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            WsError::BadKey,
            "400",
        ),
        (
            with(&format!("X-Pad: {}\r\n", "a".repeat(9000))),
            WsError::HandshakeTooLong,
            "431",
        ),
        (
            format!("GET /miop HTTP/1.1\r\nX-Pad: {}", "a".repeat(9000)).into_bytes(),
            WsError::HandshakeTooLong,
            "431",
        ),
    ];
    for (input, want, status) in cases {
        let shown = String::from_utf8_lossy(&input[..input.len().min(120)]).into_owned();
        let (err, reply) = handshake_error(&input);
        assert_eq!(err, want, "{shown}");
        assert_eq!(err.http_status(), Some(status.parse().unwrap()));
        assert_eq!(err.close_code(), None);
        let line = status_line(&reply);
        assert!(
            line.starts_with(&format!("HTTP/1.1 {status} ")),
            "{line} for {shown}"
        );
        if want == WsError::BadVersion {
            let text = String::from_utf8(reply).unwrap();
            assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        }
    }
}

#[test]
fn handshake_too_long_over_several_reads() {
    let mut ws = WsServer::new();
    let (mut plain, mut reply) = (Vec::new(), Vec::new());
    let head = b"GET /miop HTTP/1.1\r\nX-Pad: ";
    ws.receive(&cfg(), head, &mut plain, &mut reply).unwrap();
    let pad = [b'a'; 1000];
    let mut result = Ok(WsRead::default());
    let mut sent = head.len();
    while result.is_ok() {
        result = ws.receive(&cfg(), &pad, &mut plain, &mut reply);
        sent += pad.len();
        assert!(sent < 8 * 1024 + 2 * pad.len(), "never rejected");
    }
    assert_eq!(result, Err(WsError::HandshakeTooLong));
    assert!(status_line(&reply).starts_with("HTTP/1.1 431 "));
    assert_eq!(ws.heap_bytes(), 0);
}

#[test]
fn request_of_exactly_max_handshake_is_accepted() {
    let base = request("GET /miop HTTP/1.1", &format!("{GOOD_HEADERS}X-Pad: \r\n"));
    let pad = 8 * 1024 - base.len();
    let req = request(
        "GET /miop HTTP/1.1",
        &format!("{GOOD_HEADERS}X-Pad: {}\r\n", "a".repeat(pad)),
    );
    assert_eq!(req.len(), 8 * 1024);
    let mut ws = WsServer::new();
    assert_eq!(feed(&mut ws, &[&req[..100], &req[100..]]).reply, RESP);
    let (err, _) = handshake_error(&request(
        "GET /miop HTTP/1.1",
        &format!("{GOOD_HEADERS}X-Pad: {}\r\n", "a".repeat(pad + 1)),
    ));
    assert_eq!(err, WsError::HandshakeTooLong);
}

/// Feeds `input` to an open connection, byte by byte and in one read;
/// checks both fail the same way, and returns the error and the close code
/// sent.
fn framing_error(input: &[u8]) -> (WsError, u16) {
    let mut first = None;
    for step in [input.len().max(1), 1] {
        let mut ws = open();
        let (mut plain, mut reply) = (Vec::new(), Vec::new());
        let mut result = Ok(WsRead::default());
        for part in input.chunks(step) {
            result = ws.receive(&cfg(), part, &mut plain, &mut reply);
            if result.is_err() {
                break;
            }
        }
        let err = result.unwrap_err();
        assert!(!ws.is_open());
        assert_eq!(ws.heap_bytes(), 0);
        let frames = server_frames(&reply);
        let (opcode, fin, payload) = frames.last().unwrap().clone();
        assert_eq!((opcode, fin), (OpCode::Control(Control::Close), true));
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        assert_eq!(err.close_code(), Some(code));
        assert_eq!(err.http_status(), None);
        // Dead: later input is ignored.
        let mut more = Vec::new();
        assert_eq!(
            ws.receive(&cfg(), &ping(b"x"), &mut plain, &mut more),
            Ok(WsRead::default())
        );
        assert!(more.is_empty());
        match &first {
            None => first = Some((err, code)),
            Some(f) => assert_eq!(f, &(err, code)),
        }
    }
    first.unwrap()
}

#[test]
fn framing_errors() {
    let with_first_byte = |f: Vec<u8>, set: u8| {
        let mut f = f;
        f[0] |= set;
        f
    };
    let huge_len = {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        f.extend_from_slice(&MASK);
        f
    };
    let close_code = |code: u16| close(&code.to_be_bytes());
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(b"\xff\xfe");
    let cases: Vec<(Vec<u8>, WsError, u16)> = vec![
        (
            client(OpCode::Data(Data::Text), true, b"hi"),
            WsError::TextMessage,
            1003,
        ),
        (
            frame_with(OpCode::Data(Data::Binary), true, b"hi", None),
            WsError::Unmasked,
            1002,
        ),
        (
            frame_with(OpCode::Control(Control::Ping), true, b"", None),
            WsError::Unmasked,
            1002,
        ),
        (
            with_first_byte(binary(b"x"), 0x40),
            WsError::ReservedBits,
            1002,
        ),
        (
            with_first_byte(binary(b"x"), 0x20),
            WsError::ReservedBits,
            1002,
        ),
        (
            with_first_byte(binary(b"x"), 0x10),
            WsError::ReservedBits,
            1002,
        ),
        (
            client(OpCode::Data(Data::Reserved(3)), true, b"x"),
            WsError::BadOpcode,
            1002,
        ),
        (
            client(OpCode::Control(Control::Reserved(0xb)), true, b"x"),
            WsError::BadOpcode,
            1002,
        ),
        (huge_len, WsError::BadLength, 1002),
        (ping(&[0; 126]), WsError::ControlTooLong, 1002),
        (close(&[3; 126]), WsError::ControlTooLong, 1002),
        (
            client(OpCode::Control(Control::Ping), false, b"x"),
            WsError::FragmentedControl,
            1002,
        ),
        (
            client(OpCode::Data(Data::Continue), true, b"x"),
            WsError::UnexpectedContinuation,
            1002,
        ),
        (
            [
                client(OpCode::Data(Data::Binary), false, b"a"),
                binary(b"b"),
            ]
            .concat(),
            WsError::ExpectedContinuation,
            1002,
        ),
        (
            [
                binary(b"a"),
                client(OpCode::Data(Data::Continue), false, b"b"),
            ]
            .concat(),
            WsError::UnexpectedContinuation,
            1002,
        ),
        (close(b"\x03"), WsError::BadClose, 1002),
        (close_code(999), WsError::BadClose, 1002),
        (close_code(1005), WsError::BadClose, 1002),
        (close_code(1006), WsError::BadClose, 1002),
        (close_code(5000), WsError::BadClose, 1002),
        (close(&bad_reason), WsError::BadCloseReason, 1007),
    ];
    for (input, want, code) in cases {
        assert_eq!(framing_error(&input), (want.clone(), code), "{want:?}");
    }
}

#[test]
fn allowed_close_codes_are_echoed() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999,
    ] {
        let mut ws = open();
        let out = feed(&mut ws, &[&close(&u16::to_be_bytes(code))]);
        assert_eq!(
            server_frames(&out.reply),
            [close_frame_of(&code.to_be_bytes())]
        );
    }
}

#[test]
fn error_after_pipelined_open_keeps_the_101() {
    let mut input = REQ.to_vec();
    input.extend(client(OpCode::Data(Data::Text), true, b"hi"));
    let mut ws = WsServer::new();
    let (mut plain, mut reply) = (Vec::new(), Vec::new());
    let err = ws
        .receive(&cfg(), &input, &mut plain, &mut reply)
        .unwrap_err();
    assert_eq!(err, WsError::TextMessage);
    assert!(reply.starts_with(RESP));
    assert_eq!(
        server_frames(&reply[RESP.len()..]),
        [close_frame_of(&1003u16.to_be_bytes())]
    );
}

#[test]
fn error_reasons_are_distinct_snake_case_labels() {
    let all = [
        WsError::BadRequest,
        WsError::WrongPath,
        WsError::NotUpgrade,
        WsError::BadVersion,
        WsError::BadKey,
        WsError::HandshakeTooLong,
        WsError::TextMessage,
        WsError::Unmasked,
        WsError::ReservedBits,
        WsError::BadOpcode,
        WsError::BadLength,
        WsError::ControlTooLong,
        WsError::FragmentedControl,
        WsError::UnexpectedContinuation,
        WsError::ExpectedContinuation,
        WsError::BadClose,
        WsError::BadCloseReason,
    ];
    let mut labels: Vec<&str> = all.iter().map(WsError::reason).collect();
    for label in &labels {
        assert!(
            label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{label}"
        );
    }
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
    for e in &all {
        assert!(
            e.http_status().is_some() != e.close_code().is_some(),
            "{e:?}"
        );
    }
}

// ---- seal ----

/// A raw Miop frame of `len` bytes (header included).
fn raw_miop(len: usize, seq: u32) -> Vec<u8> {
    let mut header = [0; HEADER_LEN];
    Header::write(&mut header, len as u32, Opcode::Push, 0, seq);
    let mut f = header.to_vec();
    f.resize(len, seq as u8);
    f
}

/// Parses sealed messages back: each a header Bytes (an unmasked final
/// binary frame header) then its payload.
fn unseal(out: &[Bytes]) -> Vec<Bytes> {
    assert_eq!(out.len() % 2, 0);
    out.chunks(2)
        .map(|pair| {
            let mut cursor = Cursor::new(pair[0].as_ref());
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(
                cursor.position() as usize,
                pair[0].len(),
                "the header Bytes is only the header"
            );
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(len as usize, pair[1].len());
            pair[1].clone()
        })
        .collect()
}

#[test]
fn seal_puts_each_miop_frame_in_its_own_message() {
    let frames = [
        protocol::Frame::ping(1).to_bytes().unwrap(),
        protocol::Frame::close(2, CloseReason::Normal, "bye")
            .to_bytes()
            .unwrap(),
        protocol::Frame::error(3, ErrorCode::Malformed, &"m".repeat(200))
            .to_bytes()
            .unwrap(),
    ];
    let chunk = Bytes::from(frames.concat());
    let ws = open();
    let mut out = Vec::new();
    ws.seal(vec![chunk.clone()], &mut out);
    let messages = unseal(&out);
    assert_eq!(messages.len(), 3);
    for (message, frame) in messages.iter().zip(&frames) {
        assert_eq!(message, frame);
        let (decoded, used) = protocol::decode(message, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, message.len());
        assert_eq!(decoded.to_bytes().unwrap(), frame);
    }
    // Zero-copy: the payloads point into the chunk.
    assert_eq!(messages[0].as_ptr(), chunk.as_ptr());
    assert_eq!(
        messages[2].as_ptr(),
        chunk[frames[0].len() + frames[1].len()..].as_ptr()
    );
}

#[test]
fn seal_handles_every_length_encoding_and_several_chunks() {
    // 16..=125: 7-bit length; 126 and 65535: 16-bit; 65536: 64-bit.
    let lens = [16, 125, 126, 65_535, MAX_FRAME_LEN];
    let chunks: Vec<Bytes> = vec![
        Bytes::from([raw_miop(16, 1), raw_miop(125, 2)].concat()),
        Bytes::new(),
        Bytes::from(raw_miop(126, 3)),
        Bytes::from([raw_miop(65_535, 4), raw_miop(MAX_FRAME_LEN, 5)].concat()),
    ];
    let mut out = Vec::new();
    WsServer::new().seal(chunks, &mut out);
    let messages = unseal(&out);
    let got: Vec<usize> = messages.iter().map(Bytes::len).collect();
    assert_eq!(got, lens);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m.as_ref(), raw_miop(lens[i], i as u32 + 1));
    }
    // Header sizes: 2, 2, 4, 4, 10.
    let heads: Vec<usize> = out.iter().step_by(2).map(Bytes::len).collect();
    assert_eq!(heads, [2, 2, 4, 4, 10]);
}

#[test]
fn seal_sends_a_malformed_tail_as_one_message() {
    let mut chunk = raw_miop(20, 1);
    chunk.extend_from_slice(&raw_miop(40, 2)[..30]); // claims 40 bytes, has 30
    let mut out = Vec::new();
    WsServer::new().seal(vec![Bytes::from(chunk)], &mut out);
    let lens: Vec<usize> = unseal(&out).iter().map(Bytes::len).collect();
    assert_eq!(lens, [20, 30]);
    let mut out = Vec::new();
    WsServer::new().seal(vec![Bytes::from_static(b"short")], &mut out);
    assert_eq!(unseal(&out), [Bytes::from_static(b"short")]);
}

#[test]
fn close_frame_is_unmasked_close_with_code() {
    assert_eq!(
        WsServer::close_frame(1000).as_ref(),
        [0x88, 0x02, 0x03, 0xe8]
    );
    assert_eq!(
        server_frames(&WsServer::close_frame(4000)),
        [close_frame_of(&4000u16.to_be_bytes())]
    );
}

// ---- property: any frames, any splits ----

#[derive(Debug, Clone)]
enum ClientFrame {
    Binary(Vec<u8>, [u8; 4]),
    /// A message in fragments (first Binary, then continuations).
    Fragments(Vec<Vec<u8>>, [u8; 4]),
    Ping(Vec<u8>, [u8; 4]),
    Pong(Vec<u8>, [u8; 4]),
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let payload = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..130),
        1 => prop::collection::vec(any::<u8>(), 126..70_000),
    ];
    let control = prop::collection::vec(any::<u8>(), 0..=125);
    prop_oneof![
        4 => (payload, any::<[u8; 4]>()).prop_map(|(p, m)| ClientFrame::Binary(p, m)),
        1 => (prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..4), any::<[u8; 4]>())
            .prop_map(|(p, m)| ClientFrame::Fragments(p, m)),
        1 => (control.clone(), any::<[u8; 4]>()).prop_map(|(p, m)| ClientFrame::Ping(p, m)),
        1 => (control, any::<[u8; 4]>()).prop_map(|(p, m)| ClientFrame::Pong(p, m)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_frames_split_anywhere(
        frames in prop::collection::vec(client_frame(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut input = REQ.to_vec();
        let mut want_plain = Vec::new();
        let mut want_reply = RESP.to_vec();
        for f in &frames {
            match f {
                ClientFrame::Binary(p, m) => {
                    input.extend(frame_with(OpCode::Data(Data::Binary), true, p, Some(*m)));
                    want_plain.extend_from_slice(p);
                }
                ClientFrame::Fragments(parts, m) => {
                    for (i, p) in parts.iter().enumerate() {
                        let opcode = if i == 0 { Data::Binary } else { Data::Continue };
                        input.extend(frame_with(OpCode::Data(opcode), i + 1 == parts.len(), p, Some(*m)));
                        want_plain.extend_from_slice(p);
                    }
                }
                ClientFrame::Ping(p, m) => {
                    input.extend(frame_with(OpCode::Control(Control::Ping), true, p, Some(*m)));
                    outbound::write_frame(OpCode::Control(Control::Pong), p, &mut want_reply);
                }
                ClientFrame::Pong(p, m) => {
                    input.extend(frame_with(OpCode::Control(Control::Pong), true, p, Some(*m)));
                }
            }
        }
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        at.push(0);
        at.push(input.len());
        at.sort_unstable();
        let parts: Vec<&[u8]> = at.windows(2).map(|w| &input[w[0]..w[1]]).collect();
        let mut ws = WsServer::new();
        let out = feed(&mut ws, &parts);
        prop_assert!(out.plain == want_plain);
        prop_assert_eq!(&out.reply, &want_reply);
        prop_assert_eq!(out.reads.iter().filter(|r| r.open).count(), 1);
        prop_assert!(out.any(|r| r.liveness));
        prop_assert_eq!(ws.heap_bytes(), 0);
        prop_assert!(ws.is_open());
    }
}

// ---- a real client ----

/// An in-memory socket: what tungstenite's client writes goes through the
/// server at once; what the server answers (and what the test seals) is
/// what the client reads.
struct Pipe {
    server: WsServer,
    to_client: VecDeque<u8>,
    plain: Vec<u8>,
    reads: Vec<WsRead>,
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut reply = Vec::new();
        let read = self
            .server
            .receive(&cfg(), buf, &mut self.plain, &mut reply)
            .unwrap();
        self.reads.push(read);
        self.to_client.extend(reply);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.to_client.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.to_client.read(buf)
    }
}

#[test]
fn tungstenite_client_round_trip() {
    use tungstenite::client::IntoClientRequest;
    use tungstenite::Message;

    let mut request = "ws://gateway.example/miop?v=1"
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "miop".parse().unwrap());
    let pipe = Pipe {
        server: WsServer::new(),
        to_client: VecDeque::new(),
        plain: Vec::new(),
        reads: Vec::new(),
    };
    // The client checks Sec-WebSocket-Accept and the echoed subprotocol.
    let (mut client, response) = tungstenite::client(request, pipe).unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "miop");
    assert!(client.get_ref().server.is_open());

    // Client to server: masked binary messages (random masks) become the
    // Miop stream.
    let miop = protocol::Frame::ping(7).to_bytes().unwrap();
    client.send(Message::Binary(miop.clone())).unwrap();
    client
        .send(Message::Binary(Bytes::from(pattern(70_000))))
        .unwrap();
    assert_eq!(
        client.get_ref().plain,
        [miop.as_ref(), &pattern(70_000)].concat()
    );

    // Ping: the client reads the Pong.
    client
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .unwrap();
    assert_eq!(
        client.read().unwrap(),
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    // Server to client: sealed frames are one message each.
    let frames = [
        miop.clone(),
        Bytes::from(raw_miop(MAX_FRAME_LEN, 9)),
        miop.clone(),
    ];
    let mut out = Vec::new();
    client
        .get_ref()
        .server
        .seal(vec![Bytes::from(frames.concat())], &mut out);
    for b in out {
        client.get_mut().to_client.extend(b.as_ref());
    }
    for f in &frames {
        assert_eq!(client.read().unwrap(), Message::Binary(f.clone()));
    }

    // The client closes; the server echoes the code and the client sees it.
    client
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "bye".into(),
        }))
        .unwrap();
    match client.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected the Close reply, got {other:?}"),
    }
    assert!(client.get_ref().reads.iter().any(|r| r.peer_closed));
    assert!(!client.get_ref().server.is_open());
}
