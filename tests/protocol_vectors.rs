//! Replays the Miop v1 test vectors of `tests/vectors.json` through the codec,
//! and checks that the hex vectors printed in `docs/PROTOCOL.md` are the same
//! bytes, so neither the JSON nor the spec can drift from the codec.
//!
//! vectors.json is a list of objects:
//! - valid: `{"name", "description", "hex", "frame": {...}}`, optionally with
//!   `"decode_only": true` for valid but non-canonical encodings (the frame
//!   decodes from `hex`, but encoding it gives other bytes);
//! - invalid: `{"name", "description", "hex", "error": E}` where E is the
//!   `ErrorCode::name()` the decoder reports, or `"incomplete"` when the decoder
//!   must return `Ok(None)` (wait for more bytes).
//!
//! A frame is `{"seq", "flags", "opcode", "body"}`; `opcode` is
//! `Opcode::name()`, and `body` holds the body fields by their spec names
//! (Push payload as hex; Bind `credential_kind` is "app_key" or "token"; the
//! topic lists of Bind, Subscribe, Unsubscribe and TopicsAck are `"topics"`).
//!
//! In docs/PROTOCOL.md every vector is a fenced block whose info string is
//! `hex NAME`; inside, `#` starts a comment and whitespace is ignored.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use miop::protocol::{
    decode, decode_buf, Bind, BindAck, Body, Close, CloseReason, Credential, ErrorCode, ErrorFrame,
    Frame, Header, Opcode, Push, FLAG_ACK_REQUIRED, HEADER_LEN, MAX_FRAME_LEN,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

const VECTORS: &str = include_str!("vectors.json");
const SPEC: &str = include_str!("../docs/PROTOCOL.md");

/// The highest opcode v1 (revision 2) defines; every one from 1 up is defined.
const LAST_OPCODE: u8 = 0x0B;

const ERRORS: [&str; 5] = [
    "malformed",
    "frame_too_large",
    "unsupported_version",
    "unknown_opcode",
    "incomplete",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    hex: String,
    #[serde(default)]
    decode_only: bool,
    frame: Option<Value>,
    error: Option<String>,
}

impl Vector {
    fn bytes(&self) -> Vec<u8> {
        hex::decode(&self.hex).unwrap_or_else(|e| panic!("{}: bad hex: {e}", self.name))
    }

    fn frame(&self) -> Option<Frame> {
        self.frame
            .as_ref()
            .map(|f| frame_from_json(f).unwrap_or_else(|e| panic!("{}: {e}", self.name)))
    }
}

fn vectors() -> Vec<Vector> {
    serde_json::from_str(VECTORS).expect("tests/vectors.json does not parse")
}

// ------------------------------------------------------------ JSON → Frame

type R<T> = Result<T, String>;

struct Obj<'a> {
    map: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, what: &str) -> R<Obj<'a>> {
        match v {
            Value::Object(map) => Ok(Obj {
                map,
                used: BTreeSet::new(),
            }),
            _ => Err(format!("{what} is not an object")),
        }
    }

    fn get(&mut self, key: &'static str) -> R<&'a Value> {
        self.used.insert(key);
        self.map
            .get(key)
            .ok_or_else(|| format!("missing field {key:?}"))
    }

    fn opt(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.map.get(key)
    }

    fn uint(&mut self, key: &'static str, max: u64) -> R<u64> {
        let v = self.get(key)?;
        match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => Err(format!("{key:?} is not an integer in 0..={max}: {v}")),
        }
    }

    fn str(&mut self, key: &'static str) -> R<&'a str> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| format!("{key:?} is not a string"))
    }

    /// `"topics"`: a list of strings.
    fn topics(&mut self) -> R<Vec<String>> {
        self.get("topics")?
            .as_array()
            .ok_or("topics is not a list")?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "topic is not a string".to_owned())
            })
            .collect()
    }

    /// Fails on keys that were never asked for (typos in vectors.json).
    fn done(self) -> R<()> {
        for k in self.map.keys() {
            if !self.used.contains(k.as_str()) {
                return Err(format!("unexpected field {k:?}"));
            }
        }
        Ok(())
    }
}

fn frame_from_json(v: &Value) -> R<Frame> {
    let mut f = Obj::new(v, "frame")?;
    let seq = f.uint("seq", u32::MAX.into())? as u32;
    let flags = f.uint("flags", u16::MAX.into())? as u16;
    let opcode = f.str("opcode")?;
    let mut b = Obj::new(f.get("body")?, "body")?;
    let body = match opcode {
        "bind" => {
            let device_id = b.str("device_id")?.to_owned();
            let secret = b.str("credential")?.to_owned();
            let credential = match b.str("credential_kind")? {
                "app_key" => Credential::AppKey(secret),
                "token" => Credential::Token(secret),
                k => return Err(format!("unknown credential_kind {k:?}")),
            };
            let topics = b.topics()?;
            Body::Bind(Bind {
                device_id,
                credential,
                topics,
            })
        }
        "bind_ack" => Body::BindAck(BindAck {
            heartbeat_interval_ms: b.uint("heartbeat_interval_ms", u32::MAX.into())? as u32,
            heartbeat_timeout_ms: b.uint("heartbeat_timeout_ms", u32::MAX.into())? as u32,
            max_frame_len: b.uint("max_frame_len", u32::MAX.into())? as u32,
            session_id: b.uint("session_id", u64::MAX)?,
        }),
        "ping" => Body::Ping,
        "pong" => Body::Pong,
        "push" => Body::Push(Push {
            message_id: b.uint("message_id", u64::MAX)?,
            payload: Bytes::from(
                hex::decode(b.str("payload")?).map_err(|e| format!("payload: {e}"))?,
            ),
        }),
        "push_ack" => Body::PushAck {
            message_id: b.uint("message_id", u64::MAX)?,
        },
        "close" => {
            let reason = b.uint("reason", u16::MAX.into())? as u16;
            let name = CloseReason::from_u16(reason).map(CloseReason::name);
            check_name(b.opt("reason_name"), name, "reason_name")?;
            Body::Close(Close {
                reason,
                message: b.str("message")?.to_owned(),
                retry_after_ms: match b.opt("retry_after_ms") {
                    None => None,
                    Some(_) => Some(b.uint("retry_after_ms", u32::MAX.into())? as u32),
                },
            })
        }
        "error" => {
            let code = b.uint("code", u16::MAX.into())? as u16;
            let name = ErrorCode::from_u16(code).map(ErrorCode::name);
            check_name(b.opt("code_name"), name, "code_name")?;
            Body::Error(ErrorFrame {
                code,
                message: b.str("message")?.to_owned(),
            })
        }
        "subscribe" => Body::Subscribe {
            topics: b.topics()?,
        },
        "unsubscribe" => Body::Unsubscribe {
            topics: b.topics()?,
        },
        "topics_ack" => Body::TopicsAck {
            topics: b.topics()?,
        },
        op => return Err(format!("unknown opcode name {op:?}")),
    };
    b.done()?;
    f.done()?;
    let frame = Frame { seq, flags, body };
    if frame.body.opcode().name() != opcode {
        return Err(format!("opcode name {opcode:?} is not Opcode::name()"));
    }
    Ok(frame)
}

/// `reason_name` / `code_name` are optional, but when present they must be the
/// codec's name for the number, and they must be present for known numbers.
fn check_name(given: Option<&Value>, known: Option<&str>, what: &str) -> R<()> {
    match (given.map(Value::as_str), known) {
        (None, None) => Ok(()),
        (Some(Some(g)), Some(k)) if g == k => Ok(()),
        (g, k) => Err(format!("{what}: vectors.json has {g:?}, codec says {k:?}")),
    }
}

// ------------------------------------------------------------ vectors.json

#[test]
fn vectors_json_is_well_formed() {
    let vs = vectors();
    assert!(vs.len() >= 30, "suspiciously few vectors: {}", vs.len());
    let mut names = BTreeSet::new();
    for v in &vs {
        assert!(
            names.insert(v.name.as_str()),
            "duplicate vector name {}",
            v.name
        );
        assert!(
            !v.name.is_empty()
                && v.name
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "vector names are snake_case: {:?}",
            v.name
        );
        assert_eq!(
            v.hex,
            v.hex.to_ascii_lowercase(),
            "{}: hex must be lowercase",
            v.name
        );
        v.bytes();
        match (&v.frame, &v.error) {
            (Some(_), None) => {
                v.frame();
            }
            (None, Some(e)) => {
                assert!(
                    ERRORS.contains(&e.as_str()),
                    "{}: unknown error {e:?}",
                    v.name
                );
                assert!(
                    !v.decode_only,
                    "{}: decode_only on an invalid vector",
                    v.name
                );
            }
            _ => panic!("{}: needs exactly one of \"frame\" and \"error\"", v.name),
        }
    }
}

#[test]
fn vectors_cover_every_opcode_and_outcome() {
    let vs = vectors();
    let ops: BTreeSet<&str> = vs
        .iter()
        .filter_map(|v| v.frame())
        .map(|f| f.body.opcode().name())
        .collect();
    for op in 1..=LAST_OPCODE {
        let name = Opcode::from_u8(op).unwrap().name();
        assert!(ops.contains(name), "no valid vector for opcode {name}");
    }
    let errs: BTreeSet<&str> = vs.iter().filter_map(|v| v.error.as_deref()).collect();
    for e in ERRORS {
        assert!(errs.contains(e), "no invalid vector with outcome {e}");
    }
    let frames: Vec<Frame> = vs.iter().filter_map(|v| v.frame()).collect();
    let has = |p: &dyn Fn(&Frame) -> bool| frames.iter().any(p);
    assert!(has(
        &|f| matches!(&f.body, Body::Bind(b) if matches!(b.credential, Credential::Token(_)))
    ));
    assert!(has(
        &|f| matches!(&f.body, Body::Bind(b) if matches!(b.credential, Credential::AppKey(_)))
    ));
    assert!(has(
        &|f| matches!(&f.body, Body::Bind(b) if !b.topics.is_empty())
    ));
    assert!(has(
        &|f| matches!(f.body, Body::Push(_)) && f.flags & FLAG_ACK_REQUIRED != 0
    ));
    assert!(has(
        &|f| matches!(f.body, Body::Push(_)) && f.flags & FLAG_ACK_REQUIRED == 0
    ));
    assert!(has(
        &|f| matches!(&f.body, Body::TopicsAck { topics } if topics.is_empty())
    ));
    assert!(has(
        &|f| matches!(&f.body, Body::TopicsAck { topics } if topics.len() > 1)
    ));
    // Invalid topic lists of every kind of frame that carries one.
    for op in ["subscribe", "unsubscribe", "topics_ack"] {
        assert!(
            vs.iter()
                .any(|v| v.error.as_deref() == Some("malformed") && v.name.starts_with(op)),
            "no malformed vector for {op}"
        );
    }
}

/// Decodes `bytes` with both entry points and checks they agree.
fn decode_both(bytes: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    let a = decode(bytes, MAX_FRAME_LEN);
    let mut buf = BytesMut::from(bytes);
    let b = decode_buf(&mut buf, MAX_FRAME_LEN);
    match (&a, &b) {
        (Ok(Some((fa, n))), Ok(Some(fb))) => {
            assert_eq!(fa, fb, "decode and decode_buf disagree");
            assert_eq!(
                buf.len(),
                bytes.len() - n,
                "decode_buf consumed other than decode"
            );
        }
        (Ok(None), Ok(None)) => assert_eq!(&buf[..], bytes, "decode_buf consumed on incomplete"),
        (Err(ea), Err(eb)) => assert_eq!(ea, eb, "decode and decode_buf disagree"),
        _ => panic!("decode gave {a:?}, decode_buf gave {b:?}"),
    }
    a.map_err(|e| e.code().name().to_owned())
}

#[test]
fn valid_vectors_decode_to_their_frame() {
    for v in vectors() {
        let Some(frame) = v.frame() else { continue };
        let bytes = v.bytes();
        let got = decode_both(&bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(got, Some((frame.clone(), bytes.len())), "{}", v.name);

        // A following frame must not be touched.
        let mut two = bytes.clone();
        two.extend_from_slice(&Frame::ping(77).to_bytes().unwrap());
        let (f, n) = decode(&two, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!((f, n), (frame.clone(), bytes.len()), "{}", v.name);
        let mut buf = BytesMut::from(&two[..]);
        assert_eq!(
            decode_buf(&mut buf, MAX_FRAME_LEN).unwrap(),
            Some(frame),
            "{}",
            v.name
        );
        assert_eq!(
            decode_buf(&mut buf, MAX_FRAME_LEN).unwrap(),
            Some(Frame::ping(77))
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn valid_vectors_encode_to_their_hex() {
    for v in vectors() {
        let Some(frame) = v.frame() else { continue };
        let bytes = v.bytes();
        let enc = frame
            .to_bytes()
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        if v.decode_only {
            assert_ne!(
                &enc[..],
                &bytes[..],
                "{}: canonical, drop decode_only",
                v.name
            );
            assert_eq!(
                decode(&enc, MAX_FRAME_LEN).unwrap(),
                Some((frame, enc.len()))
            );
            continue;
        }
        assert_eq!(hex::encode(&enc), v.hex, "{}: encoding differs", v.name);
        assert_eq!(frame.encoded_len(), bytes.len(), "{}", v.name);
        // encode appends to what is already in the buffer.
        let mut out = BytesMut::from(&b"xyz"[..]);
        frame.encode(&mut out).unwrap();
        assert_eq!(&out[..3], b"xyz");
        assert_eq!(&out[3..], &bytes[..], "{}", v.name);
    }
}

#[test]
fn invalid_vectors_give_their_error() {
    for v in vectors() {
        let Some(err) = &v.error else { continue };
        let bytes = v.bytes();
        match decode_both(&bytes) {
            Ok(None) => assert_eq!(err, "incomplete", "{}: got incomplete", v.name),
            Ok(Some((f, _))) => panic!("{}: expected {err}, decoded {f:?}", v.name),
            Err(got) => assert_eq!(&got, err, "{}", v.name),
        }
        if err != "incomplete" {
            // Errors carry the seq of the rejected frame's header.
            let e = decode(&bytes, MAX_FRAME_LEN).unwrap_err();
            let head: &[u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
            assert_eq!(e.seq(), Header::read(head).seq, "{}", v.name);
        }
    }
}

#[test]
fn token_example_is_the_documented_hmac() {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(b"miop-token-v1:dev-1:1700000000");
    let token = format!("1700000000.{}", hex::encode(mac.finalize().into_bytes()));
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "bind_token")
        .unwrap();
    match v.frame().unwrap().body {
        Body::Bind(Bind {
            credential: Credential::Token(t),
            ref device_id,
            ..
        }) => {
            assert_eq!(device_id, "dev-1");
            assert_eq!(t, token);
        }
        other => panic!("bind_token is {other:?}"),
    }
    // The server's own minting and checking agree with the spec's example.
    assert_eq!(
        miop::auth::mint_token(b"s3cret", "dev-1", 1_700_000_000),
        token
    );
    let auth = miop::auth::Authenticator::new([], Some("s3cret".to_owned()));
    let cred = Credential::Token(token.clone());
    assert_eq!(auth.check("dev-1", &cred, 1_699_999_999), Ok(()));
    assert!(
        auth.check("dev-1", &cred, 1_700_000_000).is_err(),
        "expires > now"
    );
    assert!(
        auth.check("dev-2", &cred, 0).is_err(),
        "a token is bound to its device"
    );
    assert!(
        SPEC.contains(&format!("\"{token}\"")),
        "PROTOCOL.md lacks the token {token}"
    );
}

// ------------------------------------------------------------ PROTOCOL.md

struct DocVector {
    name: String,
    hex: String,
    line: usize,
    in_vectors_section: bool,
    /// The last `*Outcome:*` paragraph seen before the block, in §13.
    outcome: Option<String>,
}

/// Extracts every ```` ```hex NAME ```` block of the spec.
fn doc_vectors(doc: &str) -> Vec<DocVector> {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut outcome = None;
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.starts_with("## ") {
            in_section = line.contains("Test vectors");
            outcome = None;
        }
        if line.starts_with("#### ") {
            outcome = None;
        }
        if let Some(rest) = line.strip_prefix("*Outcome:*") {
            outcome = Some(rest.trim().to_owned());
        }
        let Some(info) = line.trim_start().strip_prefix("```hex") else {
            continue;
        };
        let name = info.trim();
        assert!(
            !name.is_empty(),
            "PROTOCOL.md:{}: hex block without a name",
            i + 1
        );
        let mut hex = String::new();
        loop {
            let (j, l) = lines
                .next()
                .unwrap_or_else(|| panic!("PROTOCOL.md:{}: unterminated hex block", i + 1));
            if l.trim_start().starts_with("```") {
                break;
            }
            let data = l.split('#').next().unwrap();
            for c in data.chars().filter(|c| !c.is_whitespace()) {
                assert!(
                    c.is_ascii_hexdigit(),
                    "PROTOCOL.md:{}: {c:?} is not hex (comments start with #)",
                    j + 1
                );
                hex.push(c.to_ascii_lowercase());
            }
        }
        out.push(DocVector {
            name: name.to_owned(),
            hex,
            line: i + 1,
            in_vectors_section: in_section,
            outcome: outcome.clone(),
        });
    }
    out
}

#[test]
fn spec_hex_matches_vectors_json() {
    let vs: BTreeMap<String, Vector> = vectors().into_iter().map(|v| (v.name.clone(), v)).collect();
    let doc = doc_vectors(SPEC);
    assert!(
        doc.iter().any(|d| !d.in_vectors_section),
        "worked example has no hex blocks"
    );
    let mut in_section = BTreeSet::new();
    for d in &doc {
        let v = vs.get(&d.name).unwrap_or_else(|| {
            panic!(
                "PROTOCOL.md:{}: vector {:?} is not in vectors.json",
                d.line, d.name
            )
        });
        assert_eq!(
            d.hex, v.hex,
            "PROTOCOL.md:{}: hex of {:?} differs from vectors.json",
            d.line, d.name
        );
        if d.in_vectors_section {
            assert!(
                in_section.insert(d.name.as_str()),
                "PROTOCOL.md:{}: {:?} appears twice in Test vectors",
                d.line,
                d.name
            );
            let outcome = d.outcome.as_deref().unwrap_or_else(|| {
                panic!(
                    "PROTOCOL.md:{}: {:?} has no *Outcome:* line",
                    d.line, d.name
                )
            });
            match v.error.as_deref() {
                Some("incomplete") => assert!(outcome.starts_with("incomplete"), "{}", d.name),
                Some(e) => assert_eq!(outcome, format!("`{}`.", e.to_uppercase()), "{}", d.name),
                None => assert!(outcome.starts_with("decodes"), "{}", d.name),
            }
        }
    }
    let missing: Vec<&String> = vs
        .keys()
        .filter(|n| !in_section.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "vectors missing from the Test vectors section of PROTOCOL.md: {missing:?}"
    );
}

#[test]
fn spec_tables_match_the_codec() {
    // Every opcode, error code and close reason appears in the spec with its number.
    for op in 1..=LAST_OPCODE {
        let opcode = Opcode::from_u8(op).unwrap();
        assert_eq!(opcode as u8, op);
        let name = opcode.name();
        // The table names the frame in CamelCase: bind_ack is BindAck.
        let camel: String = name
            .split('_')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .collect();
        assert!(
            SPEC.contains(&format!("| `0x{op:02X}` | {camel} ")),
            "opcode {name} missing from the spec's table as {camel}"
        );
    }
    assert!(Opcode::from_u8(0).is_none());
    for op in LAST_OPCODE + 1..=u8::MAX {
        assert!(Opcode::from_u8(op).is_none(), "opcode {op:#04x} is defined");
    }
    assert!(SPEC.contains(&format!(
        "`opcode` not one of 0x01..=0x{LAST_OPCODE:02X} → `UNKNOWN_OPCODE`"
    )));
    for code in 1..=10u16 {
        let name = ErrorCode::from_u16(code).unwrap().name().to_uppercase();
        assert!(
            SPEC.contains(&format!("| {code} | `{name}` |")),
            "error code {code} {name} missing from the spec's table"
        );
    }
    assert!(ErrorCode::from_u16(11).is_none() && ErrorCode::from_u16(0).is_none());
    for reason in 0..=10u16 {
        let name = CloseReason::from_u16(reason).unwrap().name().to_uppercase();
        assert!(
            SPEC.contains(&format!("| {reason} | `{name}` |")),
            "close reason {reason} {name} missing from the spec's table"
        );
    }
    assert!(CloseReason::from_u16(11).is_none());

    // The limits table quotes the codec's constants.
    use miop::protocol::*;
    for row in [
        format!("| Maximum frame length, header included (v1 protocol maximum) | {MAX_FRAME_LEN} bytes |"),
        format!("| Device id | 1..={MAX_DEVICE_ID_LEN} bytes of UTF-8 |"),
        format!("| Credential (app key or token) | 0..={MAX_CREDENTIAL_LEN} bytes of UTF-8 |"),
        format!("| Topics per Bind | 0..={MAX_BIND_TOPICS} |"),
        format!("| Topics per Subscribe or Unsubscribe | 1..={MAX_BIND_TOPICS} |"),
        format!("| Topics per TopicsAck | 0..={MAX_BIND_TOPICS} |"),
        format!("| Topics one session holds at once | 0..={MAX_BIND_TOPICS} |"),
        format!("| Topic name | 1..={MAX_TOPIC_LEN} bytes of UTF-8 |"),
        format!("| Close and Error message | 0..={MAX_MESSAGE_LEN} bytes of UTF-8 |"),
        format!("| Push payload | 0..={} bytes", MAX_FRAME_LEN - HEADER_LEN - 8),
    ] {
        assert!(SPEC.contains(&row), "PROTOCOL.md lacks the limits row {row:?}");
    }
    assert_eq!(VERSION, 1);
    assert_eq!(FLAG_ACK_REQUIRED, 0x0001);
    assert!(SPEC.contains("| `0x0001` | `FLAG_ACK_REQUIRED` |"));
}
