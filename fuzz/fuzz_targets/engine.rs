//! Fuzz target: the per-core engine (`miop::engine::Engine`) driven by an
//! `arbitrary` sequence of events over a few connections, the harness
//! playing the driver (as `src/engine/testing.rs` does, but with the order
//! of everything left to the fuzzer): accepts, client frames and raw bytes
//! split into chunks at arbitrary points, writes that complete (or fail)
//! late or never, peers that stop reading, transport ends, releases, kicks
//! with live and stale session refs, pushes (to sessions, topics, everyone),
//! the drain, force-closing, time advancing, and job work in small budgets.
//! The engine's configuration (admission limits, inbound budgets, the
//! slow-consumer policy, timeouts) is drawn within what `miopd` accepts.
//!
//! Checks after every event:
//! - no panic (debug assertions are on in fuzz builds);
//! - every byte written to a connection decodes as server-to-client frames
//!   within the protocol's limits, each batch ends on a frame boundary, and
//!   nothing follows a Close frame;
//! - a connection gets at most one batch at a time, and none once it is shut
//!   down (or released); Shutdown comes once per connection;
//! - connection count = accepted - released; bound sessions = Online -
//!   Offline presence events = connections with a bound session; the topic
//!   index is empty when no session is bound;
//! - Online/Offline pair up per session ref, and every push job is reported
//!   done exactly once;
//! - after `handle_timeouts` says nothing more is due, the next timeout is
//!   in the future (a driver would otherwise spin);
//! - at the end, a drain with writes flowing and time passing empties the
//!   engine: no connection, session, topic or unacked push is left.

#![no_main]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use miop::config::{Limits, SlowConsumerPolicy};
use miop::engine::{
    ConnKey, Engine, EngineConfig, Intent, Now, PresenceEvent, PushJob, PushTargets, SessionRef,
    TransportEnd,
};
use miop::protocol::{
    decode_buf, Body, CloseReason, Frame, Push, FLAG_ACK_REQUIRED, MAX_BIND_FRAME_LEN,
    MAX_FRAME_LEN,
};
use miop::session::SessionConfig;
use miop_fuzz::{authenticator, check_server_frame, topic_name, ArbFrame, UNIX_START_MS};

#[derive(Debug, Arbitrary)]
struct Setup {
    /// Admission limits and inbound budgets, or none.
    limited: bool,
    max_conns_per_ip: u8,
    accept_rate_per_ip: u8,
    max_sessions: u8,
    bind_rate: u8,
    frames_per_sec: u8,
    budget_grace_ms: u16,
    stall_timeout_ms: u16,
    drop_oldest: bool,
    cores: u8,
    bind_timeout_ms: u16,
    heartbeat_ms: u16,
    close_linger_ms: u16,
    /// 4096 bytes and up.
    outbound_extra: u16,
    small_max_frame: bool,
    /// Sessions `Engine::work` advances per driver turn (1..=8).
    work_budget: u8,
    /// Timeouts `handle_timeouts` fires per call (1..=8).
    timeout_budget: u8,
    /// Release shut-down connections at once (else on `Op::Release`).
    eager_release: bool,
}

impl Setup {
    fn config(&self) -> EngineConfig {
        let heartbeat = Duration::from_millis(self.heartbeat_ms as u64 % 20_000 + 1);
        let max_frame_len = if self.small_max_frame {
            MAX_BIND_FRAME_LEN as u32
        } else {
            MAX_FRAME_LEN as u32
        };
        let session = SessionConfig {
            bind_timeout: Duration::from_millis(self.bind_timeout_ms as u64 % 20_000 + 1),
            heartbeat_interval: heartbeat,
            heartbeat_timeout: heartbeat * 3,
            max_frame_len,
            max_outbound_bytes: 4096 + self.outbound_extra as usize,
        };
        let mut cfg = EngineConfig::new(0, session, authenticator());
        cfg.cores = self.cores as u16 % 4 + 1;
        cfg.close_linger = Duration::from_millis(self.close_linger_ms as u64 % 10_000);
        cfg.slow_consumer = if self.drop_oldest {
            SlowConsumerPolicy::DropOldest
        } else {
            SlowConsumerPolicy::Close
        };
        cfg.limits = if self.limited {
            Limits {
                max_conns_per_ip: self.max_conns_per_ip as u32 % 5,
                accept_rate_per_ip: self.accept_rate_per_ip as u32 % 5,
                exempt: Vec::new(),
                max_sessions: self.max_sessions as u64 % 5,
                bind_rate: self.bind_rate as u32 % 5,
                frames_per_sec: self.frames_per_sec as u32 % 50 + 1,
                // miopd requires at least --max-frame.
                bytes_per_sec: max_frame_len,
                budget_grace: Duration::from_millis(self.budget_grace_ms as u64 % 20_000),
                stall_timeout: Duration::from_millis(self.stall_timeout_ms as u64 % 20_000),
                ..Limits::default()
            }
        } else {
            Limits {
                stall_timeout: Duration::from_millis(self.stall_timeout_ms as u64 % 20_000),
                ..Limits::unlimited()
            }
        };
        cfg
    }
}

#[derive(Debug, Arbitrary)]
enum Target {
    /// Session refs seen so far (live or stale), by index.
    Sessions(Vec<u8>),
    Topic(u8),
    All,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// A connection from 10.0.0.(n % 3).
    Accept(u8),
    /// Frames from a client, concatenated and cut into chunks at these
    /// offsets (each chunk one read).
    Frames {
        conn: u8,
        frames: Vec<ArbFrame>,
        cuts: Vec<u16>,
    },
    Raw {
        conn: u8,
        bytes: Vec<u8>,
    },
    /// The batch the driver holds for a connection completes (or fails).
    Wrote {
        conn: u8,
        ok: bool,
    },
    /// The peer stops (or starts again) reading: its batches are held.
    Stall {
        conn: u8,
        on: bool,
    },
    TransportEnd {
        conn: u8,
        io_error: bool,
    },
    /// Releases shut-down connections with no write pending.
    Release,
    Kick {
        session: u8,
        reason: u8,
        stale: bool,
    },
    Push {
        target: Target,
        message_id: u8,
        payload_len: u16,
        ack: bool,
        keep_ms: Option<u16>,
    },
    Drain,
    ForceCloseAll,
    Advance(u16),
    AdvanceLong(u32),
    Work(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

/// The harness's view of one connection (one incarnation of a key).
#[derive(Default)]
struct Conn {
    /// Bytes written to it not yet decoded (a batch must end on a frame
    /// boundary, so this is empty between batches).
    stream: BytesMut,
    saw_close: bool,
    shut: bool,
    held: Option<Vec<Bytes>>,
    stalled: bool,
}

struct Harness {
    engine: Engine,
    now: Now,
    work_budget: usize,
    timeout_budget: usize,
    eager_release: bool,
    conns: BTreeMap<ConnKey, Conn>,
    accepted: usize,
    released: usize,
    online: HashMap<SessionRef, Arc<str>>,
    /// For `MIOP_FUZZ_STATS=1` (is the fuzzer getting anywhere?).
    frames_out: usize,
    pushes_out: usize,
    max_online: usize,
    /// Every session ref that was ever online (kick and push targets).
    refs: Vec<SessionRef>,
    pushes_pending: HashSet<u64>,
    next_tag: u64,
    next_port: u16,
}

impl Harness {
    fn key(&self, n: u8) -> Option<ConnKey> {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        if keys.is_empty() {
            return None;
        }
        Some(keys[n as usize % keys.len()])
    }

    fn live_key(&self, n: u8) -> Option<ConnKey> {
        let keys: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.shut)
            .map(|(k, _)| *k)
            .collect();
        if keys.is_empty() {
            return None;
        }
        Some(keys[n as usize % keys.len()])
    }

    fn record(&mut self, key: ConnKey, batch: &[Bytes]) {
        let c = self
            .conns
            .get_mut(&key)
            .expect("a written connection is known");
        for chunk in batch {
            c.stream.extend_from_slice(chunk);
        }
        loop {
            match decode_buf(&mut c.stream, MAX_FRAME_LEN) {
                Ok(Some(f)) => {
                    check_server_frame(&f);
                    self.frames_out += 1;
                    self.pushes_out += matches!(f.body, Body::Push(_)) as usize;
                    assert!(!c.saw_close, "frame after Close on {key:?}: {f:?}");
                    if matches!(f.body, Body::Close(_)) {
                        c.saw_close = true;
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("the engine wrote bytes that do not decode: {e}"),
            }
        }
        assert!(c.stream.is_empty(), "a batch ends on a frame boundary");
    }

    fn release(&mut self, key: ConnKey) {
        let c = self.conns.remove(&key).expect("known");
        assert!(c.shut && c.held.is_none());
        self.engine.released(key);
        self.released += 1;
    }

    /// A driver turn: some job work, then every write and intent.
    fn pump(&mut self) {
        for _ in 0..64 {
            let more = self.engine.work(self.now, self.work_budget);
            let mut any = false;
            while let Some((key, batch)) = self.engine.poll_transmit() {
                any = true;
                let c = self
                    .conns
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("a batch for unknown {key:?}"));
                assert!(!c.shut, "a batch for shut-down {key:?}");
                assert!(c.held.is_none(), "two batches at once for {key:?}");
                if c.stalled {
                    c.held = Some(batch);
                } else {
                    self.record(key, &batch);
                    self.engine.on_written(self.now, key, true);
                }
            }
            while let Some(i) = self.engine.poll_intent() {
                any = true;
                self.intent(i);
            }
            if !more && !any {
                break;
            }
        }
        self.check();
    }

    fn intent(&mut self, i: Intent) {
        match i {
            Intent::Shutdown(key) => {
                let c = self
                    .conns
                    .get_mut(&key)
                    .unwrap_or_else(|| panic!("Shutdown of unknown {key:?}"));
                assert!(!c.shut, "Shutdown twice for {key:?}");
                c.shut = true;
                if self.eager_release && c.held.is_none() {
                    self.release(key);
                }
            }
            Intent::ResumeReading(key) => {
                assert!(self.conns.contains_key(&key), "resume of unknown {key:?}");
            }
            Intent::Presence(PresenceEvent::Online { device, at, .. }) => {
                assert!(self.conns.contains_key(&at.key), "Online on unknown {at:?}");
                assert!(
                    self.online.insert(at, device).is_none(),
                    "Online twice for {at:?}"
                );
                self.refs.push(at);
                self.max_online = self.max_online.max(self.online.len());
            }
            Intent::Presence(PresenceEvent::Offline { device, at }) => {
                let d = self
                    .online
                    .remove(&at)
                    .unwrap_or_else(|| panic!("Offline without Online for {at:?}"));
                assert_eq!(d, device);
            }
            Intent::Unacked(h) => {
                assert!(!h.messages.is_empty(), "an empty handoff");
            }
            Intent::PushDone { tag, .. } => {
                assert!(
                    self.pushes_pending.remove(&tag),
                    "PushDone {tag} not pending"
                );
            }
            Intent::Notice(_) => {}
        }
    }

    fn check(&self) {
        assert_eq!(self.engine.connections(), self.conns.len());
        assert_eq!(self.accepted - self.released, self.conns.len());
        assert_eq!(self.engine.sessions(), self.online.len());
        let bound = self
            .conns
            .keys()
            .filter_map(|k| self.engine.session_of(*k))
            .collect::<HashSet<_>>();
        assert_eq!(bound.len(), self.online.len());
        for at in &bound {
            assert!(self.online.contains_key(at), "bound {at:?} not online");
        }
        if self.online.is_empty() {
            assert_eq!(self.engine.topics(), 0, "topics with no session bound");
        }
        assert!(self.engine.buffered_connections() <= self.conns.len());
    }

    fn advance(&mut self, d: Duration) {
        self.now.mono += d;
        self.now.unix_ms += d.as_millis() as u64;
        self.timeouts();
    }

    fn timeouts(&mut self) {
        for _ in 0..10_000 {
            if !self
                .engine
                .next_timeout()
                .is_some_and(|t| t <= self.now.mono)
            {
                self.pump();
                return;
            }
            if !self.engine.handle_timeouts(self.now, self.timeout_budget) {
                if let Some(t) = self.engine.next_timeout() {
                    assert!(
                        t > self.now.mono,
                        "handle_timeouts says nothing is due, but a timeout is {:?} past",
                        self.now.mono - t
                    );
                }
            }
            self.pump();
        }
        panic!("timeouts keep coming due at the same instant");
    }

    fn accept(&mut self, n: u8) {
        self.next_port = self.next_port.wrapping_add(1);
        let peer: SocketAddr = format!("10.0.0.{}:{}", n % 3 + 1, self.next_port)
            .parse()
            .unwrap();
        let key = self.engine.accept(self.now, peer);
        assert!(
            self.conns.insert(key, Conn::default()).is_none(),
            "key {key:?} reused before release"
        );
        self.accepted += 1;
        self.pump();
    }

    fn bytes(&mut self, key: ConnKey, bytes: &[u8]) {
        if bytes.is_empty() {
            return; // EOF is on_transport_end
        }
        self.engine.on_bytes(self.now, key, bytes);
        self.pump();
    }

    fn wrote(&mut self, key: ConnKey, ok: bool) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(batch) = c.held.take() else {
            return;
        };
        let shut = c.shut;
        if ok && !shut {
            self.record(key, &batch);
        }
        self.engine.on_written(self.now, key, ok);
        if shut && self.eager_release {
            self.release(key);
        }
        self.pump();
    }

    fn push(
        &mut self,
        target: &Target,
        message_id: u8,
        payload_len: u16,
        ack: bool,
        keep: Option<u16>,
    ) {
        let targets = match target {
            Target::Sessions(list) => PushTargets::Sessions(
                list.iter()
                    .take(8)
                    .filter_map(|i| {
                        (!self.refs.is_empty()).then(|| self.refs[*i as usize % self.refs.len()])
                    })
                    .collect(),
            ),
            Target::Topic(t) => PushTargets::Topic(topic_name(*t).into()),
            Target::All => PushTargets::All,
        };
        let frame = Frame {
            seq: 0,
            flags: if ack { FLAG_ACK_REQUIRED } else { 0 },
            body: Body::Push(Push {
                message_id: message_id as u64 % 16,
                payload: Bytes::from(vec![b'p'; payload_len as usize % 6000]),
            }),
        }
        .to_bytes()
        .unwrap();
        self.next_tag += 1;
        self.pushes_pending.insert(self.next_tag);
        self.engine.push(
            self.now,
            PushJob {
                tag: self.next_tag,
                targets,
                frame,
                message_id: message_id as u64 % 16,
                ack,
                keep_until_ms: keep.map(|ms| self.now.unix_ms + ms as u64),
            },
        );
        self.pump();
    }

    /// The end: the peers read everything, the engine drains, time passes;
    /// the engine must end up empty.
    fn finish(&mut self) {
        if std::env::var_os("MIOP_FUZZ_STATS").is_some() {
            eprintln!(
                "stats: accepted={} max_online={} frames_out={} pushes_out={} pushes={}",
                self.accepted, self.max_online, self.frames_out, self.pushes_out, self.next_tag
            );
        }
        for c in self.conns.values_mut() {
            c.stalled = false;
        }
        self.engine.begin_drain();
        for _ in 0..200 {
            let keys: Vec<_> = self.conns.keys().copied().collect();
            for key in keys {
                self.wrote(key, true);
                if self
                    .conns
                    .get(&key)
                    .is_some_and(|c| c.shut && c.held.is_none())
                {
                    self.release(key);
                }
            }
            self.pump();
            if self.conns.is_empty() && !self.engine.has_work() {
                break;
            }
            self.advance(Duration::from_secs(1));
        }
        assert!(
            self.conns.is_empty(),
            "drain left {} connections",
            self.conns.len()
        );
        assert!(self.engine.is_empty());
        assert_eq!(self.engine.sessions(), 0);
        assert_eq!(self.engine.topics(), 0);
        assert_eq!(self.engine.sessions_with_unacked(), 0);
        assert!(self.online.is_empty());
        assert!(
            self.pushes_pending.is_empty(),
            "pushes never done: {:?}",
            self.pushes_pending
        );
    }
}

fn chunks(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .take(16)
        .map(|c| *c as usize % (bytes.len() + 1))
        .collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

fuzz_target!(|input: Input| {
    let s = &input.setup;
    let now = Now {
        mono: Instant::now(),
        unix_ms: UNIX_START_MS,
    };
    let mut h = Harness {
        engine: Engine::new(s.config(), now, 8),
        now,
        work_budget: s.work_budget as usize % 8 + 1,
        timeout_budget: s.timeout_budget as usize % 8 + 1,
        eager_release: s.eager_release,
        conns: BTreeMap::new(),
        accepted: 0,
        released: 0,
        online: HashMap::new(),
        frames_out: 0,
        pushes_out: 0,
        max_online: 0,
        refs: Vec::new(),
        pushes_pending: HashSet::new(),
        next_tag: 0,
        next_port: 40_000,
    };
    for op in input.ops.iter().take(128) {
        match op {
            Op::Accept(n) => {
                if h.conns.len() < 8 {
                    h.accept(*n)
                }
            }
            Op::Frames { conn, frames, cuts } => {
                let Some(key) = h.live_key(*conn) else {
                    continue;
                };
                let mut all = Vec::new();
                for f in frames.iter().take(16) {
                    if let Some(b) = f.bytes() {
                        all.extend_from_slice(&b);
                    }
                }
                for chunk in chunks(&all, cuts) {
                    h.bytes(key, &chunk);
                }
            }
            Op::Raw { conn, bytes } => {
                if let Some(key) = h.live_key(*conn) {
                    h.bytes(key, bytes);
                }
            }
            Op::Wrote { conn, ok } => {
                if let Some(key) = h.key(*conn) {
                    h.wrote(key, *ok);
                }
            }
            Op::Stall { conn, on } => {
                if let Some(key) = h.key(*conn) {
                    h.conns.get_mut(&key).unwrap().stalled = *on;
                    if !on {
                        h.wrote(key, true);
                    }
                }
            }
            Op::TransportEnd { conn, io_error } => {
                if let Some(key) = h.key(*conn) {
                    let why = if *io_error {
                        TransportEnd::IoError
                    } else {
                        TransportEnd::PeerClosed
                    };
                    h.engine.on_transport_end(h.now, key, why);
                    h.pump();
                }
            }
            Op::Release => {
                let keys: Vec<_> = h
                    .conns
                    .iter()
                    .filter(|(_, c)| c.shut && c.held.is_none())
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    h.release(key);
                }
                h.check();
            }
            Op::Kick {
                session,
                reason,
                stale,
            } => {
                if h.refs.is_empty() {
                    continue;
                }
                let mut at = h.refs[*session as usize % h.refs.len()];
                if *stale {
                    at.session_id += 1;
                }
                let reason = CloseReason::from_u16(*reason as u16 % 11).unwrap();
                h.engine.kick(h.now, at, reason);
                h.pump();
            }
            Op::Push {
                target,
                message_id,
                payload_len,
                ack,
                keep_ms,
            } => h.push(target, *message_id, *payload_len, *ack, *keep_ms),
            Op::Drain => {
                h.engine.begin_drain();
                h.pump();
            }
            Op::ForceCloseAll => {
                h.engine.force_close_all(h.now);
                h.pump();
            }
            Op::Advance(ms) => h.advance(Duration::from_millis(*ms as u64)),
            Op::AdvanceLong(ms) => h.advance(Duration::from_millis(*ms as u64 % 600_000)),
            Op::Work(n) => {
                h.engine.work(h.now, *n as usize % 16);
                h.pump();
            }
        }
    }
    h.finish();
});
