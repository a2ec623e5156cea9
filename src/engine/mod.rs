//! The per-core engine: every connection of one I/O core, sans-io.
//!
//! In the style of quinn-proto's `Endpoint`: the engine owns the core's
//! connection table (sessions, partial inbound frames, outbound queues), its
//! topic index, unacked pushes and deadlines. It takes events — a connection
//! accepted, bytes read, a write completed, the transport ended, a command
//! from the control plane, the time — and answers with bytes to write
//! ([`Engine::poll_transmit`]) and [`Intent`]s ([`Engine::poll_intent`]):
//! shut this socket down, this device came online, these pushes were never
//! acknowledged. It reads no clock (every event carries a [`Now`]), does no
//! I/O and spawns nothing, so the logic of a core is tested deterministically
//! on a virtual clock (see `tests/`), and the io_uring and epoll drivers in
//! `crate::driver` stay thin loops around it.
//!
//! Long work (a broadcast to every session, a drain) is queued as jobs that
//! [`Engine::work`] advances a budget at a time, so a driver can keep
//! answering pings between chunks.

mod acks;
mod admission;
mod budget;
mod conn;
mod deadlines;
mod event;
mod fanout;
mod inbound;
mod outbound;
mod outflow;
mod push;
mod stats;
mod timers;
mod topics;
mod transport;

#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use self::acks::Acks;
use self::admission::Admission;
pub use self::admission::{Refusal, REFUSALS};
use self::conn::Conn;
pub use self::event::{ConnKey, Intent, Notice, Now, PresenceEvent, SessionRef, TransportEnd};
use self::fanout::Job;
pub use self::outbound::MAX_BATCH_CHUNKS;
pub use self::push::{PushJob, PushOutcome, PushTargets, Unacked, UnackedHandoff};
pub use self::stats::{
    bind_result_name, close_kind_name, EngineStats, BIND_RESULTS, CLOSE_KINDS, HANDSHAKE_KINDS,
};
use self::timers::Timers;
use self::topics::TopicIndex;
use crate::auth::Authenticator;
use crate::config::{Limits, SlowConsumerPolicy};
use crate::session::{Action, SessionConfig, SessionInfo, SessionState};
use crate::transport::Transports;

/// What an engine is configured with (the node's policy for its sessions).
#[derive(Clone)]
pub struct EngineConfig {
    /// Core number: the top bits of session ids, so they are unique per node.
    pub core: u16,
    pub session: SessionConfig,
    pub auth: Authenticator,
    pub slow_consumer: SlowConsumerPolicy,
    /// How long a closing connection may take to flush its last frames before
    /// its socket is shut down regardless (a peer that stopped reading).
    pub close_linger: Duration,
    /// Admission control and budgets (node-wide figures; each core takes its
    /// share of `cores`).
    pub limits: Limits,
    pub cores: u16,
    /// Seeds the jitter of retry-after hints (the engine reads no entropy).
    pub seed: u64,
    /// The node's listeners and what each speaks (TLS, WebSocket, PROXY
    /// header): connections accepted on a layered listener get a
    /// [`crate::transport::Wire`].
    pub transports: Arc<Transports>,
}

impl EngineConfig {
    pub fn new(core: u16, session: SessionConfig, auth: Authenticator) -> EngineConfig {
        EngineConfig {
            core,
            session,
            auth,
            slow_consumer: SlowConsumerPolicy::Close,
            close_linger: Duration::from_secs(5),
            limits: Limits::default(),
            cores: 1,
            seed: core as u64,
            transports: Arc::new(Transports::default()),
        }
    }
}

/// A session as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ConnView {
    pub peer: SocketAddr,
    pub info: SessionInfo,
}

pub struct Engine {
    cfg: EngineConfig,
    conns: Slab<Conn>,
    /// One past the highest slot ever used: bounds scans by slot.
    high_water: usize,
    timers: Timers,
    topics: TopicIndex,
    acks: Acks,
    admission: Admission,
    /// When the ack bookkeeping is pruned next.
    prune_at: Instant,
    next_serial: u64,
    intents: VecDeque<Intent>,
    /// Connections that may have bytes to write.
    flush: VecDeque<ConnKey>,
    jobs: VecDeque<Job>,
    stats: EngineStats,
    draining: bool,
    /// Reused for every session's actions: no allocation per read.
    scratch: Vec<Action>,
    /// Reused for the Miop bytes a transport layer unwraps from a read.
    unwrapped: Vec<u8>,
}

/// How often the push-to-ack bookkeeping drops entries past its window.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

impl Engine {
    /// `capacity`: connection slots reserved up front (untouched capacity is
    /// only virtual memory; growing by doubling would copy the table).
    pub fn new(cfg: EngineConfig, now: Now, capacity: usize) -> Engine {
        let start_ms = 0;
        Engine {
            admission: Admission::new(cfg.limits.clone(), cfg.cores, cfg.seed, start_ms),
            cfg,
            conns: Slab::with_capacity(capacity),
            high_water: 0,
            timers: Timers::new(now.mono),
            topics: TopicIndex::default(),
            acks: Acks::default(),
            prune_at: now.mono + PRUNE_EVERY,
            next_serial: 1,
            intents: VecDeque::new(),
            flush: VecDeque::new(),
            jobs: VecDeque::new(),
            stats: EngineStats::default(),
            draining: false,
            scratch: Vec::new(),
            unwrapped: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The next thing the driver or the control plane must act on.
    pub fn poll_intent(&mut self) -> Option<Intent> {
        self.intents.pop_front()
    }

    /// Counters and gauges so far.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.connections = self.conns.len() as u64;
        s
    }

    /// Open connections (including ones shut down and not yet released).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bound sessions.
    pub fn sessions(&self) -> usize {
        self.stats.sessions as usize
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Connections holding buffers (partial frames, queued bytes): idle
    /// sessions hold none.
    pub fn buffered_connections(&self) -> usize {
        self.conns
            .iter()
            .filter(|(_, c)| c.active.is_some())
            .count()
    }

    /// Whether the driver must not read this connection now (it is over its
    /// inbound budget; an [`Intent::ResumeReading`] follows).
    pub fn read_paused(&self, key: ConnKey) -> bool {
        self.conns
            .get(key.index())
            .and_then(|c| c.active.as_ref())
            .is_some_and(|a| a.paused_until_ms.is_some())
    }

    /// Source addresses with admission state on this core.
    pub fn tracked_addresses(&self) -> usize {
        self.admission.tracked_addresses()
    }

    /// Sessions with pushes not acknowledged yet.
    pub fn sessions_with_unacked(&self) -> usize {
        self.acks.sessions_with_unacked()
    }

    /// Topics with at least one member on this core.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// The state of a session, if it is still there.
    pub fn inspect(&self, now: Now, at: SessionRef) -> Option<ConnView> {
        let c = self.live(at)?;
        Some(ConnView {
            peer: c.peer.addr(),
            info: c.session.info(now.mono),
        })
    }

    /// The bound session on a connection, if any (for drivers and tests).
    pub fn session_of(&self, key: ConnKey) -> Option<SessionRef> {
        let c = self.conns.get(key.index())?;
        (c.session.state() == SessionState::Bound).then_some(SessionRef {
            key,
            session_id: c.session.session_id(),
        })
    }

    fn live(&self, at: SessionRef) -> Option<&Conn> {
        self.conns
            .get(at.key.index())
            .filter(|c| c.is(at.session_id))
    }

    fn live_mut(&mut self, at: SessionRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(at.key.index())
            .filter(|c| c.is(at.session_id))
    }
}
