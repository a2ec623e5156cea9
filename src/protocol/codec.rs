//! Decoding bytes into frames and encoding frames into bytes.
//!
//! Decoding distinguishes *incomplete* input (`Ok(None)`: read more) from
//! *invalid* input (`Err`: answer with an Error frame and close). Oversized and
//! bad headers are rejected as soon as the 16 header bytes are present, before
//! the body is buffered, so a peer cannot make the receiver buffer a huge frame.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{put_str16, put_str8, Reader};
use super::{
    Bind, BindAck, Body, Close, Credential, ErrorCode, ErrorFrame, Frame, Header, Opcode, Push,
    HEADER_LEN, MAX_BIND_TOPICS, MAX_CREDENTIAL_LEN, MAX_DEVICE_ID_LEN, MAX_FRAME_LEN,
    MAX_MESSAGE_LEN, MAX_TOPIC_LEN, VERSION,
};

/// Why bytes could not be decoded. Each maps to the [`ErrorCode`] a server
/// sends back, and carries the offending frame's `seq` (0 if not known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize, seq: u32 },
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion { version: u8, seq: u32 },
    #[error("unknown opcode {opcode:#04x}")]
    UnknownOpcode { opcode: u8, seq: u32 },
    #[error("malformed frame: {reason}")]
    Malformed { reason: &'static str, seq: u32 },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownOpcode { .. } => ErrorCode::UnknownOpcode,
            DecodeError::Malformed { .. } => ErrorCode::Malformed,
        }
    }

    pub fn seq(&self) -> u32 {
        match *self {
            DecodeError::FrameTooLarge { seq, .. }
            | DecodeError::UnsupportedVersion { seq, .. }
            | DecodeError::UnknownOpcode { seq, .. }
            | DecodeError::Malformed { seq, .. } => seq,
        }
    }
}

/// Why a frame could not be encoded (a field or list outside the spec's limits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Too long, or too short (an empty device id, topic or Subscribe list).
    #[error("{0} is outside the limits the protocol allows")]
    FieldTooLong(&'static str),
    #[error("frame of {0} bytes exceeds the protocol maximum")]
    FrameTooLarge(usize),
}

/// A validated header whose whole frame is present in the input.
struct Located {
    header: Header,
    opcode: Opcode,
    frame_len: usize,
    /// Header extension bytes (16..header_len).
    ext: Range<usize>,
    body: Range<usize>,
}

/// Header extension entry type: a server's retry-after hint on a Close
/// (revision 3; value: u32 milliseconds).
pub const EXT_RETRY_AFTER: u8 = 1;
/// Encoded size of the retry-after entry: type, length, u32.
const EXT_RETRY_AFTER_LEN: usize = 2 + 4;

/// Finds entry `kind` with a 4-byte value in header extension bytes: a
/// sequence of `type u8, length u8, value`. Unknown types are skipped; an
/// entry running past the extension ends the search (a revision-1 or -2
/// sender may put anything there, and it must not make a frame invalid).
fn ext_u32(ext: &[u8], kind: u8) -> Option<u32> {
    let mut rest = ext;
    while let [t, len, tail @ ..] = rest {
        let len = *len as usize;
        let value = tail.get(..len)?;
        if *t == kind && len == 4 {
            return Some(u32::from_be_bytes(value.try_into().ok()?));
        }
        rest = &tail[len..];
    }
    None
}

/// Validates the header at the start of `src` and checks the whole frame is there.
fn locate(src: &[u8], max_frame_len: usize) -> Result<Option<Located>, DecodeError> {
    let Some(head) = src.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::read(head);
    let seq = header.seq;
    let frame_len = header.frame_len as usize;
    if frame_len > max_frame_len {
        return Err(DecodeError::FrameTooLarge {
            len: frame_len,
            max: max_frame_len,
            seq,
        });
    }
    if header.version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version: header.version,
            seq,
        });
    }
    let header_len = header.header_len as usize;
    if header_len < HEADER_LEN || frame_len < header_len {
        return Err(DecodeError::Malformed {
            reason: "header length or frame length out of range",
            seq,
        });
    }
    let Some(opcode) = Opcode::from_u8(header.opcode) else {
        return Err(DecodeError::UnknownOpcode {
            opcode: header.opcode,
            seq,
        });
    };
    if src.len() < frame_len {
        return Ok(None);
    }
    Ok(Some(Located {
        header,
        opcode,
        frame_len,
        ext: HEADER_LEN..header_len,
        body: header_len..frame_len,
    }))
}

/// Decodes one frame from the front of `src`.
///
/// Returns the frame and how many bytes it used, `Ok(None)` if `src` holds only
/// part of a frame, or an error if the bytes can never become a valid frame.
/// A Push payload is copied; use [`decode_buf`] to share it without a copy.
pub fn decode(src: &[u8], max_frame_len: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some(at) = locate(src, max_frame_len)? else {
        return Ok(None);
    };
    let frame = parse_body(&at, &src[at.ext.clone()], &src[at.body.clone()], |r| {
        Bytes::copy_from_slice(&src[at.body.start + r.start..at.body.start + r.end])
    })?;
    Ok(Some((frame, at.frame_len)))
}

/// Decodes one frame from the front of `buf`, removing its bytes. A Push payload
/// shares `buf`'s memory (no copy). After a body error the frame's bytes are
/// already gone from `buf`; every decode error ends the connection anyway.
pub fn decode_buf(buf: &mut BytesMut, max_frame_len: usize) -> Result<Option<Frame>, DecodeError> {
    let Some(at) = locate(buf, max_frame_len)? else {
        return Ok(None);
    };
    let whole = buf.split_to(at.frame_len).freeze();
    let body = whole.slice(at.body.clone());
    let frame = parse_body(&at, &whole[at.ext.clone()], &body, |r| body.slice(r))?;
    Ok(Some(frame))
}

fn parse_body(
    at: &Located,
    ext: &[u8],
    body: &[u8],
    payload: impl FnOnce(Range<usize>) -> Bytes,
) -> Result<Frame, DecodeError> {
    let seq = at.header.seq;
    let mut r = Reader::new(body);
    let parsed: Result<Body, &'static str> = (|| {
        let b = match at.opcode {
            Opcode::Bind => Body::Bind(parse_bind(&mut r)?),
            Opcode::BindAck => Body::BindAck(BindAck {
                heartbeat_interval_ms: r.u32("bind_ack.heartbeat_interval_ms")?,
                heartbeat_timeout_ms: r.u32("bind_ack.heartbeat_timeout_ms")?,
                max_frame_len: r.u32("bind_ack.max_frame_len")?,
                session_id: r.u64("bind_ack.session_id")?,
            }),
            Opcode::Ping => Body::Ping,
            Opcode::Pong => Body::Pong,
            Opcode::Push => {
                let message_id = r.u64("push.message_id")?;
                let start = r.position();
                let end = body.len();
                r.bytes(end - start, "push.payload")?;
                Body::Push(Push {
                    message_id,
                    payload: payload(start..end),
                })
            }
            Opcode::PushAck => Body::PushAck {
                message_id: r.u64("push_ack.message_id")?,
            },
            Opcode::Close => Body::Close(Close {
                reason: r.u16("close.reason")?,
                message: r.str8("close.message")?.to_owned(),
                retry_after_ms: ext_u32(ext, EXT_RETRY_AFTER),
            }),
            Opcode::Error => Body::Error(ErrorFrame {
                code: r.u16("error.code")?,
                message: r.str8("error.message")?.to_owned(),
            }),
            Opcode::Subscribe => Body::Subscribe {
                topics: parse_topics(&mut r, 1, TOPICS_SUBSCRIBE)?,
            },
            Opcode::Unsubscribe => Body::Unsubscribe {
                topics: parse_topics(&mut r, 1, TOPICS_UNSUBSCRIBE)?,
            },
            Opcode::TopicsAck => Body::TopicsAck {
                topics: parse_topics(&mut r, 0, TOPICS_ACK)?,
            },
        };
        r.finish()?;
        Ok(b)
    })();
    match parsed {
        Ok(body) => Ok(Frame {
            seq,
            flags: at.header.flags,
            body,
        }),
        Err(reason) => Err(DecodeError::Malformed { reason, seq }),
    }
}

/// The field names a topic list reports in Malformed errors.
struct TopicFields {
    count: &'static str,
    count_range: &'static str,
    topic: &'static str,
    topic_range: &'static str,
}

const TOPICS_BIND: TopicFields = TopicFields {
    count: "bind.topic_count",
    count_range: "bind.topic_count too large",
    topic: "bind.topic",
    topic_range: "bind.topic empty or too long",
};
const TOPICS_SUBSCRIBE: TopicFields = TopicFields {
    count: "subscribe.topic_count",
    count_range: "subscribe.topic_count zero or too large",
    topic: "subscribe.topic",
    topic_range: "subscribe.topic empty or too long",
};
const TOPICS_UNSUBSCRIBE: TopicFields = TopicFields {
    count: "unsubscribe.topic_count",
    count_range: "unsubscribe.topic_count zero or too large",
    topic: "unsubscribe.topic",
    topic_range: "unsubscribe.topic empty or too long",
};
const TOPICS_ACK: TopicFields = TopicFields {
    count: "topics_ack.topic_count",
    count_range: "topics_ack.topic_count too large",
    topic: "topics_ack.topic",
    topic_range: "topics_ack.topic empty or too long",
};

/// A `u8` count in `min..=MAX_BIND_TOPICS`, then that many `str8` topics of
/// 1..=[`MAX_TOPIC_LEN`] bytes. The count is checked before any topic is read.
fn parse_topics(
    r: &mut Reader<'_>,
    min: usize,
    f: TopicFields,
) -> Result<Vec<String>, &'static str> {
    let count = r.u8(f.count)? as usize;
    if count < min || count > MAX_BIND_TOPICS {
        return Err(f.count_range);
    }
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let t = r.str8(f.topic)?;
        if t.is_empty() || t.len() > MAX_TOPIC_LEN {
            return Err(f.topic_range);
        }
        topics.push(t.to_owned());
    }
    Ok(topics)
}

fn parse_bind(r: &mut Reader<'_>) -> Result<Bind, &'static str> {
    let device_id = r.str8("bind.device_id")?;
    if device_id.is_empty() || device_id.len() > MAX_DEVICE_ID_LEN {
        return Err("bind.device_id empty or too long");
    }
    let kind = r.u8("bind.credential_kind")?;
    let secret = r.str16("bind.credential")?;
    if secret.len() > MAX_CREDENTIAL_LEN {
        return Err("bind.credential too long");
    }
    let credential = match kind {
        1 => Credential::AppKey(secret.to_owned()),
        2 => Credential::Token(secret.to_owned()),
        _ => return Err("bind.credential_kind unknown"),
    };
    let topics = parse_topics(r, 0, TOPICS_BIND)?;
    Ok(Bind {
        device_id: device_id.to_owned(),
        credential,
        topics,
    })
}

impl Frame {
    /// Header extension bytes [`Frame::encode`] writes (only a Close with a
    /// retry-after hint has any).
    fn ext_len(&self) -> usize {
        match &self.body {
            Body::Close(Close {
                retry_after_ms: Some(_),
                ..
            }) => EXT_RETRY_AFTER_LEN,
            _ => 0,
        }
    }

    /// Number of bytes [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self.ext_len()
            + match &self.body {
                Body::Bind(b) => {
                    let secret = match &b.credential {
                        Credential::AppKey(s) | Credential::Token(s) => s.len(),
                    };
                    1 + b.device_id.len() + 1 + 2 + secret + topics_len(&b.topics)
                }
                Body::BindAck(_) => 4 + 4 + 4 + 8,
                Body::Ping | Body::Pong => 0,
                Body::Push(p) => 8 + p.payload.len(),
                Body::PushAck { .. } => 8,
                Body::Close(c) => 2 + 1 + c.message.len(),
                Body::Error(e) => 2 + 1 + e.message.len(),
                Body::Subscribe { topics }
                | Body::Unsubscribe { topics }
                | Body::TopicsAck { topics } => topics_len(topics),
            }
    }

    /// Appends the encoded frame to `out`. Fails, writing nothing, if a field or
    /// the whole frame exceeds the protocol's limits.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        self.validate()?;
        let len = self.encoded_len();
        if len > MAX_FRAME_LEN {
            return Err(EncodeError::FrameTooLarge(len));
        }
        out.reserve(len);
        let mut head = [0u8; HEADER_LEN];
        Header::write_ext(
            &mut head,
            len as u32,
            self.ext_len(),
            self.body.opcode(),
            self.flags,
            self.seq,
        );
        out.put_slice(&head);
        if let Body::Close(Close {
            retry_after_ms: Some(ms),
            ..
        }) = &self.body
        {
            out.put_u8(EXT_RETRY_AFTER);
            out.put_u8(4);
            out.put_u32(*ms);
        }
        match &self.body {
            Body::Bind(b) => {
                put_str8(out, &b.device_id);
                let (kind, secret) = match &b.credential {
                    Credential::AppKey(s) => (1u8, s),
                    Credential::Token(s) => (2u8, s),
                };
                out.put_u8(kind);
                put_str16(out, secret);
                put_topics(out, &b.topics);
            }
            Body::BindAck(a) => {
                out.put_u32(a.heartbeat_interval_ms);
                out.put_u32(a.heartbeat_timeout_ms);
                out.put_u32(a.max_frame_len);
                out.put_u64(a.session_id);
            }
            Body::Ping | Body::Pong => {}
            Body::Push(p) => {
                out.put_u64(p.message_id);
                out.put_slice(&p.payload);
            }
            Body::PushAck { message_id } => out.put_u64(*message_id),
            Body::Close(c) => {
                out.put_u16(c.reason);
                put_str8(out, &c.message);
            }
            Body::Error(e) => {
                out.put_u16(e.code);
                put_str8(out, &e.message);
            }
            Body::Subscribe { topics }
            | Body::Unsubscribe { topics }
            | Body::TopicsAck { topics } => put_topics(out, topics),
        }
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out.freeze())
    }

    fn validate(&self) -> Result<(), EncodeError> {
        let check = |ok: bool, what| {
            if ok {
                Ok(())
            } else {
                Err(EncodeError::FieldTooLong(what))
            }
        };
        match &self.body {
            Body::Bind(b) => {
                check(
                    !b.device_id.is_empty() && b.device_id.len() <= MAX_DEVICE_ID_LEN,
                    "bind.device_id",
                )?;
                let secret = match &b.credential {
                    Credential::AppKey(s) | Credential::Token(s) => s,
                };
                check(secret.len() <= MAX_CREDENTIAL_LEN, "bind.credential")?;
                check_topics(&b.topics, 0, "bind.topics", "bind.topic")
            }
            Body::Subscribe { topics } => {
                check_topics(topics, 1, "subscribe.topics", "subscribe.topic")
            }
            Body::Unsubscribe { topics } => {
                check_topics(topics, 1, "unsubscribe.topics", "unsubscribe.topic")
            }
            Body::TopicsAck { topics } => {
                check_topics(topics, 0, "topics_ack.topics", "topics_ack.topic")
            }
            Body::Close(c) => check(c.message.len() <= MAX_MESSAGE_LEN, "close.message"),
            Body::Error(e) => check(e.message.len() <= MAX_MESSAGE_LEN, "error.message"),
            _ => Ok(()),
        }
    }
}

/// Encoded length of a topic list: the count byte plus each `str8`.
fn topics_len(topics: &[String]) -> usize {
    1 + topics.iter().map(|t| 1 + t.len()).sum::<usize>()
}

fn put_topics(out: &mut BytesMut, topics: &[String]) {
    out.put_u8(topics.len() as u8);
    for t in topics {
        put_str8(out, t);
    }
}

/// A topic list of `min..=MAX_BIND_TOPICS` names of 1..=`MAX_TOPIC_LEN` bytes.
fn check_topics(
    topics: &[String],
    min: usize,
    list: &'static str,
    topic: &'static str,
) -> Result<(), EncodeError> {
    if topics.len() < min || topics.len() > MAX_BIND_TOPICS {
        return Err(EncodeError::FieldTooLong(list));
    }
    if topics
        .iter()
        .any(|t| t.is_empty() || t.len() > MAX_TOPIC_LEN)
    {
        return Err(EncodeError::FieldTooLong(topic));
    }
    Ok(())
}
