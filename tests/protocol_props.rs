//! Property tests for the Miop v1 codec (`miop::protocol`).
//!
//! - every valid frame of every kind round-trips (encode → decode == original,
//!   consumed == encoded_len), through both `decode` and `decode_buf`;
//! - arbitrary and near-valid bytes never make the decoder panic, `decode` and
//!   `decode_buf` agree, nothing reports consuming more than its input, and
//!   whatever decodes re-encodes and decodes to the same frame;
//! - every strict prefix of a valid encoding is incomplete (`Ok(None)`), never
//!   an error;
//! - concatenated frames, delivered in arbitrary chunks, decode one by one;
//! - the encoder and the decoder enforce the limits of docs/PROTOCOL.md §5,
//!   for Bind and for the topic lists of Subscribe, Unsubscribe and TopicsAck.

use bytes::{Bytes, BytesMut};
use miop::protocol::{
    decode, decode_buf, Bind, BindAck, Body, Close, CloseReason, Credential, DecodeError,
    EncodeError, ErrorCode, ErrorFrame, Frame, Header, Opcode, Push, HEADER_LEN,
    MAX_BIND_FRAME_LEN, MAX_BIND_TOPICS, MAX_CREDENTIAL_LEN, MAX_DEVICE_ID_LEN, MAX_FRAME_LEN,
    MAX_MESSAGE_LEN, MAX_TOPIC_LEN, VERSION,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

// ------------------------------------------------------------ strategies

/// UTF-8 text of `min..=max` bytes: ASCII (which reaches the exact limits) or
/// arbitrary chars (multi-byte sequences), cut to `max` bytes on a char boundary.
fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
    let ascii = vec(0x20u8..0x7f, min..=max)
        .prop_map(|b| String::from_utf8(b).unwrap())
        .boxed();
    let unicode = vec(any::<char>(), min..=max.min(64))
        .prop_map(move |cs| {
            let mut s = String::new();
            for c in cs {
                if s.len() + c.len_utf8() > max {
                    break;
                }
                s.push(c);
            }
            s
        })
        .prop_filter("too short", move |s| s.len() >= min)
        .boxed();
    prop_oneof![ascii, unicode]
}

fn payload() -> impl Strategy<Value = Bytes> {
    let max = MAX_FRAME_LEN - HEADER_LEN - 8;
    prop_oneof![
        8 => vec(any::<u8>(), 0..300),
        1 => vec(any::<u8>(), 0..=max),
        1 => Just(vec![0xa5; max]),
    ]
    .prop_map(Bytes::from)
}

fn credential() -> impl Strategy<Value = Credential> {
    prop_oneof![
        text(0, MAX_CREDENTIAL_LEN).prop_map(Credential::AppKey),
        text(0, MAX_CREDENTIAL_LEN).prop_map(Credential::Token),
    ]
}

/// A topic list of `min..=MAX_BIND_TOPICS` topics of any legal length.
fn topics(min: usize) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        8 => vec(text(1, MAX_TOPIC_LEN), min..=MAX_BIND_TOPICS),
        1 => Just(vec!["t".repeat(MAX_TOPIC_LEN); MAX_BIND_TOPICS]),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (text(1, MAX_DEVICE_ID_LEN), credential(), topics(0)).prop_map(
            |(device_id, credential, topics)| Body::Bind(Bind {
                device_id,
                credential,
                topics
            })
        ),
        any::<(u32, u32, u32, u64)>().prop_map(|(i, t, m, s)| Body::BindAck(BindAck {
            heartbeat_interval_ms: i,
            heartbeat_timeout_ms: t,
            max_frame_len: m,
            session_id: s,
        })),
        Just(Body::Ping),
        Just(Body::Pong),
        (any::<u64>(), payload()).prop_map(|(message_id, payload)| Body::Push(Push {
            message_id,
            payload
        })),
        any::<u64>().prop_map(|message_id| Body::PushAck { message_id }),
        (any::<u16>(), text(0, MAX_MESSAGE_LEN), any::<Option<u32>>()).prop_map(
            |(reason, message, retry_after_ms)| Body::Close(Close {
                reason,
                message,
                retry_after_ms
            })
        ),
        (any::<u16>(), text(0, MAX_MESSAGE_LEN))
            .prop_map(|(code, message)| Body::Error(ErrorFrame { code, message })),
        topics(1).prop_map(|topics| Body::Subscribe { topics }),
        topics(1).prop_map(|topics| Body::Unsubscribe { topics }),
        topics(0).prop_map(|topics| Body::TopicsAck { topics }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (any::<u32>(), any::<u16>(), body()).prop_map(|(seq, flags, body)| Frame { seq, flags, body })
}

/// A small frame (no huge payloads), for tests that do work per byte.
fn small_frame() -> impl Strategy<Value = Frame> {
    frame().prop_filter("small", |f| f.encoded_len() <= 4096)
}

/// Bytes that get past the header checks more often than random ones: a v1
/// header (sometimes with extension bytes or a slightly wrong length) for any
/// opcode 0..=12 (every defined one, and one undefined on each side), then an
/// arbitrary body.
fn near_valid() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..=12,
        any::<u32>(),
        any::<u16>(),
        prop_oneof![6 => Just(0usize), 1 => 0usize..8],
        prop_oneof![6 => Just(0i64), 1 => -3i64..=3],
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(opcode, seq, flags, ext, skew, body)| {
            let header_len = HEADER_LEN + ext;
            let frame_len = (header_len + body.len()) as i64 + skew;
            let mut out = Vec::new();
            out.extend_from_slice(&(frame_len.max(0) as u32).to_be_bytes());
            out.extend_from_slice(&(header_len as u16).to_be_bytes());
            out.push(VERSION);
            out.push(opcode);
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend(std::iter::repeat_n(0xee, ext));
            out.extend_from_slice(&body);
            out
        })
}

/// A valid encoding with a few bytes overwritten.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (small_frame(), vec((any::<Index>(), any::<u8>()), 1..4)).prop_map(|(f, edits)| {
        let mut b = f.to_bytes().unwrap().to_vec();
        for (i, v) in edits {
            let at = i.index(b.len());
            b[at] = v;
        }
        b
    })
}

/// The body of a valid frame under a (possibly different) opcode, cut short or
/// extended, with `frame_len` fixed up: exercises every body parser on
/// plausible content, including short fields and trailing bytes.
fn reframed() -> impl Strategy<Value = Vec<u8>> {
    (
        small_frame(),
        1u8..=Opcode::TopicsAck as u8,
        any::<Index>(),
        vec(any::<u8>(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(f, opcode, cut, extra, shorten)| {
            let mut b = f.to_bytes().unwrap().to_vec();
            b[7] = opcode;
            if shorten {
                b.truncate(HEADER_LEN + cut.index(b.len() - HEADER_LEN + 1));
            } else {
                b.extend_from_slice(&extra);
            }
            let len = b.len() as u32;
            b[..4].copy_from_slice(&len.to_be_bytes());
            b
        })
}

// ------------------------------------------------------------ helpers

/// Decodes with both entry points, checks that they agree and that nothing
/// claims more bytes than it was given, and returns `decode`'s answer.
fn decode_checked(src: &[u8], max: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    let a = decode(src, max);
    let mut buf = BytesMut::from(src);
    let b = decode_buf(&mut buf, max);
    match (&a, &b) {
        (Ok(Some((fa, n))), Ok(Some(fb))) => {
            assert!(*n <= src.len(), "consumed {n} of {} bytes", src.len());
            assert!(*n >= HEADER_LEN, "consumed {n} < header");
            assert_eq!(fa, fb);
            assert_eq!(buf.len(), src.len() - n);
        }
        (Ok(None), Ok(None)) => assert_eq!(&buf[..], src),
        (Err(ea), Err(eb)) => {
            assert_eq!(ea, eb);
            // An error is only ever reported once a whole header is present,
            // and it carries that header's seq.
            let head: &[u8; HEADER_LEN] = src
                .first_chunk()
                .expect("error reported on fewer than 16 bytes");
            assert_eq!(ea.seq(), Header::read(head).seq);
        }
        _ => panic!("decode gave {a:?} but decode_buf gave {b:?}"),
    }
    a
}

/// Whatever decodes must re-encode, and decode again to the same frame.
fn reencode(f: &Frame) {
    let again = f.to_bytes().expect("a decoded frame must re-encode");
    assert_eq!(again.len(), f.encoded_len());
    assert_eq!(
        decode(&again, MAX_FRAME_LEN).unwrap(),
        Some((f.clone(), again.len()))
    );
}

fn check_bytes(src: &[u8], max: usize) {
    if let Ok(Some((f, _))) = decode_checked(src, max) {
        reencode(&f);
    }
}

/// The prefix lengths worth testing for an encoding of `len` bytes.
fn cut_points(len: usize) -> Vec<usize> {
    if len <= 600 {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..=HEADER_LEN + 2).collect();
    v.extend((0..64).map(|i| HEADER_LEN + i * (len - HEADER_LEN) / 64));
    v.extend(len - 3..len);
    v.sort_unstable();
    v.dedup();
    v
}

// ------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(f in frame()) {
        let bytes = f.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), f.encoded_len());
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);

        let head = Header::read(bytes.first_chunk().unwrap());
        prop_assert_eq!(head.frame_len as usize, bytes.len());
        // Only a Close with a retry-after hint has a header extension (6 bytes).
        let ext = match &f.body {
            Body::Close(c) if c.retry_after_ms.is_some() => 6,
            _ => 0,
        };
        prop_assert_eq!(head.header_len as usize, HEADER_LEN + ext);
        prop_assert_eq!(head.version, VERSION);
        prop_assert_eq!(head.opcode, f.body.opcode() as u8);
        prop_assert_eq!(head.flags, f.flags);
        prop_assert_eq!(head.seq, f.seq);
        prop_assert_eq!(&bytes[10..12], &[0u8, 0][..]);

        prop_assert_eq!(decode(&bytes, MAX_FRAME_LEN).unwrap(), Some((f.clone(), bytes.len())));
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode_buf(&mut buf, MAX_FRAME_LEN).unwrap(), Some(f.clone()));
        prop_assert!(buf.is_empty());

        // A receiver whose limit is exactly the frame's length accepts it.
        prop_assert_eq!(decode(&bytes, bytes.len()).unwrap(), Some((f, bytes.len())));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        src in vec(any::<u8>(), 0..300),
        max in prop_oneof![Just(MAX_FRAME_LEN), 0usize..400],
    ) {
        check_bytes(&src, max);
    }

    #[test]
    fn near_valid_bytes_never_panic(src in near_valid(), tail in vec(any::<u8>(), 0..8)) {
        check_bytes(&src, MAX_FRAME_LEN);
        let mut more = src.clone();
        more.extend_from_slice(&tail);
        check_bytes(&more, MAX_FRAME_LEN);
    }

    #[test]
    fn mutated_frames_never_panic(src in mutated()) {
        check_bytes(&src, MAX_FRAME_LEN);
    }

    #[test]
    fn reframed_bodies_never_panic(src in reframed()) {
        check_bytes(&src, MAX_FRAME_LEN);
    }

    #[test]
    fn prefixes_are_incomplete(f in frame()) {
        let bytes = f.to_bytes().unwrap();
        for cut in cut_points(bytes.len()) {
            let part = &bytes[..cut];
            prop_assert_eq!(decode(part, MAX_FRAME_LEN), Ok(None), "prefix of {} bytes", cut);
            let mut buf = BytesMut::from(part);
            prop_assert_eq!(decode_buf(&mut buf, MAX_FRAME_LEN), Ok(None), "prefix of {} bytes", cut);
            prop_assert_eq!(&buf[..], part, "decode_buf consumed an incomplete frame");
        }
    }

    #[test]
    fn oversized_rejected_from_header_alone(f in small_frame(), extra in 0usize..64) {
        let bytes = f.to_bytes().unwrap();
        let max = bytes.len() - 1;
        // As soon as the header is in, before the body, and with any tail.
        for cut in [HEADER_LEN, bytes.len()] {
            let err = decode(&bytes[..cut], max).unwrap_err();
            prop_assert_eq!(err.code(), ErrorCode::FrameTooLarge);
            prop_assert_eq!(err.seq(), f.seq);
        }
        let mut longer = bytes.to_vec();
        longer.extend(std::iter::repeat_n(0, extra));
        prop_assert_eq!(decode_checked(&longer, max).unwrap_err().code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn concatenated_frames_decode_one_by_one(
        frames in vec(small_frame(), 1..8),
        chunks in vec(1usize..200, 1..40),
        tail in vec(any::<u8>(), 0..16),
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend_from_slice(&f.to_bytes().unwrap());
        }

        // decode over a slice, advancing by what it reports.
        let mut at = 0;
        for f in &frames {
            let (g, n) = decode(&stream[at..], MAX_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(&g, f);
            prop_assert_eq!(n, f.encoded_len());
            at += n;
        }
        prop_assert_eq!(at, stream.len());
        prop_assert_eq!(decode(&stream[at..], MAX_FRAME_LEN), Ok(None));

        // Frames followed by anything: each frame consumes exactly its bytes.
        let mut dirty = stream.clone();
        dirty.extend_from_slice(&tail);
        let (g, n) = decode(&dirty, MAX_FRAME_LEN).unwrap().unwrap();
        prop_assert_eq!(&g, &frames[0]);
        prop_assert_eq!(n, frames[0].encoded_len());

        // decode_buf fed in arbitrary chunks, as from a socket.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut fed = 0;
        let mut sizes = chunks.iter().cycle();
        while fed < stream.len() {
            let n = (*sizes.next().unwrap()).min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            while let Some(f) = decode_buf(&mut buf, MAX_FRAME_LEN).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn close_and_error_constructors_clip_messages(s in ".{0,300}", seq in any::<u32>()) {
        for f in [
            Frame::close(seq, CloseReason::AdminKick, &s),
            Frame::error(seq, ErrorCode::Internal, &s),
        ] {
            let m = match &f.body {
                Body::Close(c) => &c.message,
                Body::Error(e) => &e.message,
                _ => unreachable!(),
            };
            prop_assert!(m.len() <= MAX_MESSAGE_LEN);
            prop_assert!(s.starts_with(m.as_str()));
            if s.len() <= MAX_MESSAGE_LEN {
                prop_assert_eq!(m, &s);
            } else {
                // Cut on the last char boundary at or below the limit.
                prop_assert!(m.len() > MAX_MESSAGE_LEN - 4);
            }
            let bytes = f.to_bytes().unwrap();
            prop_assert_eq!(decode(&bytes, MAX_FRAME_LEN).unwrap(), Some((f, bytes.len())));
        }
    }
}

// ------------------------------------------------------------ encoder limits

fn bind(device_id: &str, secret: &str, topics: &[String]) -> Frame {
    Frame::new(
        1,
        Body::Bind(Bind {
            device_id: device_id.into(),
            credential: Credential::Token(secret.into()),
            topics: topics.to_vec(),
        }),
    )
}

fn rejects(f: &Frame) -> EncodeError {
    let mut out = BytesMut::from(&b"keep"[..]);
    let err = f.encode(&mut out).unwrap_err();
    assert_eq!(&out[..], b"keep", "a failed encode must write nothing");
    err
}

#[test]
fn encoder_enforces_limits() {
    let a = |n: usize| "a".repeat(n);
    let topics = |n: usize, len: usize| vec![a(len); n];

    // At the limits: fine, and round-trips.
    let ok = [
        bind(
            &a(MAX_DEVICE_ID_LEN),
            &a(MAX_CREDENTIAL_LEN),
            &topics(MAX_BIND_TOPICS, MAX_TOPIC_LEN),
        ),
        bind("d", "", &[]),
        Frame::new(
            0,
            Body::Close(Close {
                reason: 0,
                message: a(MAX_MESSAGE_LEN),
                retry_after_ms: Some(u32::MAX),
            }),
        ),
        Frame::new(
            0,
            Body::Error(ErrorFrame {
                code: 1,
                message: a(MAX_MESSAGE_LEN),
            }),
        ),
        Frame::new(
            0,
            Body::Push(Push {
                message_id: 1,
                payload: Bytes::from(vec![7; MAX_FRAME_LEN - HEADER_LEN - 8]),
            }),
        ),
    ];
    for f in &ok {
        let bytes = f.to_bytes().unwrap();
        assert_eq!(
            decode(&bytes, MAX_FRAME_LEN).unwrap(),
            Some((f.clone(), bytes.len()))
        );
    }
    assert_eq!(ok[4].encoded_len(), MAX_FRAME_LEN);
    let topic_frames = |t: Vec<String>| {
        [
            Frame::new(2, Body::Subscribe { topics: t.clone() }),
            Frame::new(3, Body::Unsubscribe { topics: t.clone() }),
            Frame::topics_ack(3, t),
        ]
    };
    for f in topic_frames(topics(MAX_BIND_TOPICS, MAX_TOPIC_LEN))
        .into_iter()
        .chain(topic_frames(topics(1, 1)))
        .chain([Frame::topics_ack(4, vec![])])
    {
        let bytes = f.to_bytes().unwrap();
        assert_eq!(
            decode(&bytes, MAX_FRAME_LEN).unwrap(),
            Some((f.clone(), bytes.len()))
        );
    }
    // The largest Subscribe fits in the smallest frame limit a server may set.
    let largest = Frame::new(
        2,
        Body::Subscribe {
            topics: topics(MAX_BIND_TOPICS, MAX_TOPIC_LEN),
        },
    );
    assert_eq!(largest.encoded_len(), 4145);
    assert!(largest.encoded_len() <= MAX_BIND_FRAME_LEN);

    // One past them: refused.
    let too_long = |f: Frame| matches!(rejects(&f), EncodeError::FieldTooLong(_));
    assert!(too_long(bind("", "k", &[])));
    assert!(too_long(bind(&a(MAX_DEVICE_ID_LEN + 1), "k", &[])));
    assert!(too_long(bind("d", &a(MAX_CREDENTIAL_LEN + 1), &[])));
    assert!(too_long(bind("d", "k", &topics(MAX_BIND_TOPICS + 1, 1))));
    assert!(too_long(bind("d", "k", &topics(1, 0))));
    assert!(too_long(bind("d", "k", &topics(1, MAX_TOPIC_LEN + 1))));
    for bad in [
        topics(MAX_BIND_TOPICS + 1, 1),
        topics(1, 0),
        topics(1, MAX_TOPIC_LEN + 1),
    ] {
        for f in topic_frames(bad) {
            assert!(too_long(f.clone()), "{f:?}");
        }
    }
    // Subscribe and Unsubscribe name at least one topic; TopicsAck may not.
    assert!(too_long(Frame::new(2, Body::Subscribe { topics: vec![] })));
    assert!(too_long(Frame::new(
        3,
        Body::Unsubscribe { topics: vec![] }
    )));
    assert!(too_long(Frame::new(
        0,
        Body::Close(Close {
            reason: 0,
            message: a(MAX_MESSAGE_LEN + 1),
            retry_after_ms: None,
        })
    )));
    assert!(too_long(Frame::new(
        0,
        Body::Error(ErrorFrame {
            code: 0,
            message: a(MAX_MESSAGE_LEN + 1)
        })
    )));
    let big = Frame::new(
        0,
        Body::Push(Push {
            message_id: 1,
            payload: Bytes::from(vec![7; MAX_FRAME_LEN - HEADER_LEN - 7]),
        }),
    );
    assert_eq!(rejects(&big), EncodeError::FrameTooLarge(MAX_FRAME_LEN + 1));
}

#[test]
fn decoder_enforces_limits() {
    // Bodies one past each limit, built by hand: all MALFORMED.
    fn bind_body(device: &[u8], kind: u8, secret: &[u8], topics: &[&[u8]], count: u8) -> Vec<u8> {
        let mut b = vec![device.len() as u8];
        b.extend_from_slice(device);
        b.push(kind);
        b.extend_from_slice(&(secret.len() as u16).to_be_bytes());
        b.extend_from_slice(secret);
        b.push(count);
        for t in topics {
            b.push(t.len() as u8);
            b.extend_from_slice(t);
        }
        b
    }
    fn frame(op: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_be_bytes());
        out.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
        out.extend_from_slice(&[VERSION, op, 0, 0, 0, 0, 0, 0, 0, 9]);
        out.extend_from_slice(body);
        out
    }
    let a = |n: usize| vec![b'a'; n];
    let long_topic = a(MAX_TOPIC_LEN + 1);
    let ok_topic = a(MAX_TOPIC_LEN);
    let many: Vec<&[u8]> = vec![&b"t"[..]; MAX_BIND_TOPICS + 1];
    let max: Vec<&[u8]> = vec![&ok_topic[..]; MAX_BIND_TOPICS];
    let bad = [
        bind_body(&a(MAX_DEVICE_ID_LEN + 1), 1, b"k", &[], 0),
        bind_body(b"", 1, b"k", &[], 0),
        bind_body(b"d", 1, &a(MAX_CREDENTIAL_LEN + 1), &[], 0),
        bind_body(b"d", 2, b"k", &many, many.len() as u8),
        bind_body(b"d", 2, b"k", &[&long_topic], 1),
        bind_body(b"d", 2, b"k", &[b""], 1),
        bind_body(b"d", 0, b"k", &[], 0),
        bind_body(b"d", 3, b"k", &[], 0),
    ];
    for body in &bad {
        let err = decode(&frame(Opcode::Bind as u8, body), MAX_FRAME_LEN).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Malformed, "{err}");
        assert_eq!(err.seq(), 9);
    }
    let good = bind_body(
        &a(MAX_DEVICE_ID_LEN),
        1,
        &a(MAX_CREDENTIAL_LEN),
        &max,
        max.len() as u8,
    );
    let bytes = frame(Opcode::Bind as u8, &good);
    let (f, n) = decode(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(f.to_bytes().unwrap(), bytes);

    // Topic lists of Subscribe, Unsubscribe and TopicsAck: the same limits,
    // except that only TopicsAck may be empty.
    fn topic_body(topics: &[&[u8]], count: u8) -> Vec<u8> {
        let mut b = vec![count];
        for t in topics {
            b.push(t.len() as u8);
            b.extend_from_slice(t);
        }
        b
    }
    let lists = [Opcode::Subscribe, Opcode::Unsubscribe, Opcode::TopicsAck];
    for op in lists {
        let bad = [
            topic_body(&many, many.len() as u8),
            topic_body(&[&long_topic], 1),
            topic_body(&[b""], 1),
            topic_body(&[b"t"], 2),
            topic_body(&[b"t", b"u"], 1),
            topic_body(&[&[0xff]], 1),
            vec![],
        ];
        for body in &bad {
            let err = decode(&frame(op as u8, body), MAX_FRAME_LEN).unwrap_err();
            assert_eq!(err.code(), ErrorCode::Malformed, "{op:?}: {err}");
            assert_eq!(err.seq(), 9);
        }
        let empty = decode(&frame(op as u8, &topic_body(&[], 0)), MAX_FRAME_LEN);
        if op == Opcode::TopicsAck {
            assert_eq!(
                empty.unwrap().unwrap().0.body,
                Body::TopicsAck { topics: vec![] }
            );
        } else {
            assert_eq!(empty.unwrap_err().code(), ErrorCode::Malformed, "{op:?}");
        }
        let bytes = frame(op as u8, &topic_body(&max, max.len() as u8));
        let (f, n) = decode(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(f.to_bytes().unwrap(), bytes);
    }

    // The largest legal frame decodes; one byte more is FRAME_TOO_LARGE.
    let push = frame(Opcode::Push as u8, &vec![1; MAX_FRAME_LEN - HEADER_LEN]);
    assert!(decode(&push, MAX_FRAME_LEN).unwrap().is_some());
    let over = frame(Opcode::Push as u8, &vec![1; MAX_FRAME_LEN - HEADER_LEN + 1]);
    assert_eq!(
        decode(&over[..HEADER_LEN], MAX_FRAME_LEN)
            .unwrap_err()
            .code(),
        ErrorCode::FrameTooLarge
    );
}
