//! Shared by the fuzz targets: structure-aware client frames built from
//! `arbitrary` input, and the checks every frame a server writes must pass.
//!
//! Frames are drawn mostly from small pools (a few device ids, topics, the
//! right app key, tokens minted for the right device) so that the fuzzer
//! reaches bound sessions, topic changes and pushes quickly instead of
//! spending its time on binds that fail authentication; arbitrary strings and
//! raw bytes are mixed in for everything else.

use arbitrary::Arbitrary;
use bytes::Bytes;
use miop::auth::{mint_token, Authenticator};
use miop::protocol::{
    decode, Bind, Body, Credential, Frame, Opcode, Push, MAX_BIND_TOPICS, MAX_FRAME_LEN,
    MAX_MESSAGE_LEN,
};

/// The app key the targets' authenticators accept.
pub const APP_KEY: &str = "pk";
/// The token secret the targets' authenticators accept.
pub const TOKEN_SECRET: &str = "fuzz-secret";
/// The wall clock the targets start at (unix ms).
pub const UNIX_START_MS: u64 = 1_700_000_000_000;

pub fn authenticator() -> Authenticator {
    Authenticator::new([APP_KEY.to_string()], Some(TOKEN_SECRET.to_string()))
}

/// A device id: one of a few (so binds collide and replace each other) or
/// anything (control characters, long ids: InvalidDeviceId, Malformed).
#[derive(Debug, Arbitrary)]
pub enum ArbDevice {
    Pool(u8),
    Any(String),
}

impl ArbDevice {
    pub fn get(&self) -> String {
        match self {
            ArbDevice::Pool(i) => format!("dev{}", i % 4),
            ArbDevice::Any(s) => s.clone(),
        }
    }
}

/// A topic: one of a few, or anything.
#[derive(Debug, Arbitrary)]
pub enum ArbTopic {
    Pool(u8),
    Any(String),
}

impl ArbTopic {
    pub fn get(&self) -> String {
        match self {
            ArbTopic::Pool(i) => topic_name(*i),
            ArbTopic::Any(s) => s.clone(),
        }
    }
}

pub fn topic_name(i: u8) -> String {
    format!("t{}", i % 6)
}

#[derive(Debug, Arbitrary)]
pub enum ArbCredential {
    /// The right app key.
    AppKey,
    /// A token for the bound device id, expiring this many seconds after
    /// the start (0: already expired).
    Token(u16),
    /// A token minted for another device.
    TokenFor(ArbDevice),
    OtherKey(String),
    OtherToken(String),
}

#[derive(Debug, Arbitrary)]
pub enum ArbBody {
    Bind {
        device: ArbDevice,
        credential: ArbCredential,
        topics: Vec<ArbTopic>,
    },
    Ping,
    PushAck(u8),
    Close(u16, String),
    Subscribe(Vec<ArbTopic>),
    Unsubscribe(Vec<ArbTopic>),
    /// A frame only a server may send (UnknownOpcode from a client).
    ServerOnly(u8),
}

/// A frame a client could send.
#[derive(Debug, Arbitrary)]
pub struct ArbFrame {
    pub seq: u32,
    pub body: ArbBody,
}

impl ArbFrame {
    pub fn frame(&self) -> Frame {
        let topics = |list: &[ArbTopic]| list.iter().map(ArbTopic::get).collect::<Vec<_>>();
        let body = match &self.body {
            ArbBody::Bind {
                device,
                credential,
                topics: t,
            } => {
                let device_id = device.get();
                let credential = match credential {
                    ArbCredential::AppKey => Credential::AppKey(APP_KEY.into()),
                    ArbCredential::Token(secs) => Credential::Token(mint_token(
                        TOKEN_SECRET.as_bytes(),
                        &device_id,
                        UNIX_START_MS / 1000 + *secs as u64,
                    )),
                    ArbCredential::TokenFor(other) => Credential::Token(mint_token(
                        TOKEN_SECRET.as_bytes(),
                        &other.get(),
                        UNIX_START_MS / 1000 + 1_000_000,
                    )),
                    ArbCredential::OtherKey(k) => Credential::AppKey(k.clone()),
                    ArbCredential::OtherToken(k) => Credential::Token(k.clone()),
                };
                Body::Bind(Bind {
                    device_id,
                    credential,
                    topics: topics(t),
                })
            }
            ArbBody::Ping => Body::Ping,
            ArbBody::PushAck(id) => Body::PushAck {
                message_id: *id as u64 % 16,
            },
            ArbBody::Close(reason, msg) => Body::Close(miop::protocol::Close {
                reason: *reason,
                message: msg.clone(),
                retry_after_ms: None,
            }),
            ArbBody::Subscribe(t) => Body::Subscribe { topics: topics(t) },
            ArbBody::Unsubscribe(t) => Body::Unsubscribe { topics: topics(t) },
            ArbBody::ServerOnly(k) => match k % 4 {
                0 => Body::Pong,
                1 => Body::Push(Push {
                    message_id: *k as u64,
                    payload: Bytes::from_static(b"x"),
                }),
                2 => Body::TopicsAck { topics: vec![] },
                _ => Body::Error(miop::protocol::ErrorFrame {
                    code: *k as u16,
                    message: String::new(),
                }),
            },
        };
        Frame::new(self.seq, body)
    }

    /// The frame's bytes, if it encodes (frames over the protocol's limits do
    /// not; they are not something a client can send, only raw bytes).
    pub fn bytes(&self) -> Option<Bytes> {
        self.frame().to_bytes().ok()
    }
}

/// Opcodes a server may send to a client.
pub fn server_to_client(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::BindAck
            | Opcode::Pong
            | Opcode::Push
            | Opcode::Close
            | Opcode::Error
            | Opcode::TopicsAck
    )
}

/// Checks a frame the server decided to send: a server-to-client opcode,
/// within the protocol's limits (it encodes, at most [`MAX_FRAME_LEN`]
/// bytes, messages and topic lists within theirs), and it decodes back to
/// itself.
pub fn check_server_frame(frame: &Frame) {
    assert!(
        server_to_client(frame.body.opcode()),
        "server sent a client-only frame: {frame:?}"
    );
    match &frame.body {
        Body::Close(c) => assert!(c.message.len() <= MAX_MESSAGE_LEN, "{frame:?}"),
        Body::Error(e) => assert!(e.message.len() <= MAX_MESSAGE_LEN, "{frame:?}"),
        Body::TopicsAck { topics } => assert!(topics.len() <= MAX_BIND_TOPICS, "{frame:?}"),
        _ => {}
    }
    let bytes = frame
        .to_bytes()
        .unwrap_or_else(|e| panic!("server frame does not encode ({e}): {frame:?}"));
    assert!(
        bytes.len() <= MAX_FRAME_LEN,
        "oversized server frame: {} bytes",
        bytes.len()
    );
    let (again, n) = decode(&bytes, MAX_FRAME_LEN)
        .expect("a server frame decodes")
        .expect("a server frame is complete");
    assert_eq!(n, bytes.len());
    assert_eq!(&again, frame);
}
