//! A test driver for the engine: no sockets, no threads, a virtual clock.
//! A [`Rig`] plays the driver: it feeds encoded frames in, takes the engine's
//! writes out (decoding them back into frames), reports them written, and
//! releases connections the engine shuts down. Used by the engine's own
//! tests and by the gateway's (two engines and the device index).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::*;
use crate::auth::Authenticator;
use crate::protocol::{Bind, Body, Credential, Frame, FLAG_ACK_REQUIRED};
use crate::session::SessionConfig;

pub const KEY: &str = "pk";

pub fn session_config() -> SessionConfig {
    SessionConfig {
        bind_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(30),
        max_frame_len: 65_536,
        max_outbound_bytes: 4096,
    }
}

/// The rig's engine configuration: no admission limits.
pub fn config(core: u16) -> EngineConfig {
    let mut cfg = EngineConfig::new(
        core,
        session_config(),
        Authenticator::new([KEY.to_string()], None),
    );
    cfg.limits = crate::config::Limits::unlimited();
    cfg
}

pub struct Rig {
    pub engine: Engine,
    pub now: Now,
    /// Frames written to each connection so far (decoded).
    pub written: HashMap<ConnKey, Vec<Frame>>,
    /// Connections whose writes the "peer" does not read: their batches stay
    /// with the driver (never reported written).
    pub stalled: Vec<ConnKey>,
    pub held: HashMap<ConnKey, Vec<bytes::Bytes>>,
    /// Connections the engine told the driver to shut down.
    pub shut: Vec<ConnKey>,
    /// Intents other than Shutdown, in order.
    pub intents: Vec<Intent>,
    next_port: u16,
}

impl Rig {
    /// An engine without admission limits (tests of limits set their own).
    pub fn new(core: u16) -> Rig {
        Rig::with(config(core))
    }

    pub fn with(cfg: EngineConfig) -> Rig {
        let t0 = Instant::now();
        let now = Now {
            mono: t0,
            unix_ms: 1_700_000_000_000,
        };
        Rig {
            engine: Engine::new(cfg, now, 64),
            now,
            written: HashMap::new(),
            stalled: Vec::new(),
            held: HashMap::new(),
            shut: Vec::new(),
            intents: Vec::new(),
            next_port: 40_000,
        }
    }

    /// Moves the virtual clock forward and fires what is due, as a driver
    /// would when its timer expires.
    pub fn advance(&mut self, d: Duration) {
        self.now.mono += d;
        self.now.unix_ms += d.as_millis() as u64;
        while self
            .engine
            .next_timeout()
            .is_some_and(|t| t <= self.now.mono)
        {
            if !self.engine.handle_timeouts(self.now, 1000) {
                break;
            }
        }
        self.pump();
    }

    pub fn connect(&mut self) -> ConnKey {
        self.next_port += 1;
        let peer: SocketAddr = format!("10.0.0.1:{}", self.next_port).parse().unwrap();
        let key = self.engine.accept(self.now, peer);
        self.written.remove(&key); // a reused key: a new connection
        self.pump();
        key
    }

    pub fn send(&mut self, key: ConnKey, frame: Frame) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf).unwrap();
        self.send_bytes(key, &buf);
    }

    pub fn send_bytes(&mut self, key: ConnKey, bytes: &[u8]) {
        self.engine.on_bytes(self.now, key, bytes);
        self.pump();
    }

    pub fn bind_with(&mut self, key: ConnKey, device: &str, topics: &[&str]) -> SessionRef {
        let f = Frame::new(
            1,
            Body::Bind(Bind {
                device_id: device.into(),
                credential: Credential::AppKey(KEY.into()),
                topics: topics.iter().map(|t| t.to_string()).collect(),
            }),
        );
        self.send(key, f);
        assert!(
            matches!(self.last(key), Some(Body::BindAck(_))),
            "bind of {device} not acked: {:?}",
            self.frames(key)
        );
        self.engine.session_of(key).expect("bound")
    }

    pub fn bind(&mut self, key: ConnKey, device: &str) -> SessionRef {
        self.bind_with(key, device, &[])
    }

    /// A new connection bound as `device`.
    pub fn device(&mut self, device: &str) -> SessionRef {
        let key = self.connect();
        self.bind(key, device)
    }

    /// Runs the engine's queued work and writes, as a driver turn does.
    pub fn pump(&mut self) {
        loop {
            let more = self.engine.work(self.now, 1000);
            let mut wrote = false;
            while let Some((key, batch)) = self.engine.poll_transmit() {
                wrote = true;
                if self.stalled.contains(&key) {
                    self.held.insert(key, batch);
                    continue;
                }
                self.record(key, &batch);
                self.engine.on_written(self.now, key, true);
            }
            while let Some(i) = self.engine.poll_intent() {
                match i {
                    Intent::Shutdown(key) => {
                        self.shut.push(key);
                        self.held.remove(&key);
                        self.engine.released(key);
                    }
                    other => self.intents.push(other),
                }
            }
            if !more && !wrote {
                break;
            }
        }
    }

    /// Decodes a written batch into the connection's frames.
    fn record(&mut self, key: ConnKey, batch: &[bytes::Bytes]) {
        let mut bytes = BytesMut::new();
        for chunk in batch {
            bytes.extend_from_slice(chunk);
        }
        let frames = self.written.entry(key).or_default();
        while let Some(f) = crate::protocol::decode_buf(&mut bytes, 1 << 20).unwrap() {
            frames.push(f);
        }
        assert!(bytes.is_empty(), "a batch ends on a frame boundary");
    }

    /// The peer starts reading again: its held batch is written.
    pub fn unstall(&mut self, key: ConnKey) {
        self.stalled.retain(|k| *k != key);
        if let Some(batch) = self.held.remove(&key) {
            self.record(key, &batch);
            self.engine.on_written(self.now, key, true);
        }
        self.pump();
    }

    pub fn frames(&self, key: ConnKey) -> Vec<Body> {
        self.written
            .get(&key)
            .map(|v| v.iter().map(|f| f.body.clone()).collect())
            .unwrap_or_default()
    }

    pub fn last(&self, key: ConnKey) -> Option<Body> {
        self.frames(key).pop()
    }

    pub fn clear_frames(&mut self) {
        self.written.clear();
    }

    /// Push message ids written to a connection, in order.
    pub fn pushes(&self, key: ConnKey) -> Vec<u64> {
        self.frames(key)
            .into_iter()
            .filter_map(|b| match b {
                Body::Push(p) => Some(p.message_id),
                _ => None,
            })
            .collect()
    }

    pub fn close_reason(&self, key: ConnKey) -> Option<CloseReason> {
        self.frames(key).into_iter().find_map(|b| match b {
            Body::Close(c) => c.reason(),
            _ => None,
        })
    }

    pub fn take_intents(&mut self) -> Vec<Intent> {
        std::mem::take(&mut self.intents)
    }

    /// Pushes `message_id` to `targets` and returns this core's outcome.
    pub fn push(
        &mut self,
        targets: PushTargets,
        message_id: u64,
        keep: Option<u64>,
    ) -> PushOutcome {
        let frame = Frame {
            seq: 0,
            flags: FLAG_ACK_REQUIRED,
            body: Body::Push(crate::protocol::Push {
                message_id,
                payload: bytes::Bytes::from_static(b"hello"),
            }),
        }
        .to_bytes()
        .unwrap();
        let tag = message_id;
        self.engine.push(
            self.now,
            PushJob {
                tag,
                targets,
                frame,
                message_id,
                ack: true,
                keep_until_ms: keep,
            },
        );
        self.pump();
        let pos = self
            .intents
            .iter()
            .position(|i| matches!(i, Intent::PushDone { tag: t, .. } if *t == tag))
            .expect("push done");
        match self.intents.remove(pos) {
            Intent::PushDone { outcome, .. } => outcome,
            _ => unreachable!(),
        }
    }
}

use crate::protocol::CloseReason;
