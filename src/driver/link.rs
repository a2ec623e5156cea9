//! What passes between a core and the control plane, and the glue both
//! drivers share: carrying out the engine's intents that are not socket
//! operations, answering commands, batching presence changes, logging
//! notices without flooding.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::log_limit::RateLimitedLog;
use crate::engine::{
    ConnKey, ConnView, Engine, EngineStats, Intent, Notice, Now, PresenceEvent, PushJob,
    PushOutcome, SessionRef, UnackedHandoff,
};
use crate::metrics::histogram::{Histogram, READ_HANDLING_BUCKETS};
use crate::protocol::CloseReason;

/// A request from the control plane (or another core, via the control plane)
/// to one core.
pub enum Command {
    /// Close the session if it is still there.
    Kick { at: SessionRef, reason: CloseReason },
    Inspect {
        at: SessionRef,
        reply: oneshot::Sender<Option<ConnView>>,
    },
    /// Queue a push for its targets on this core.
    Push {
        job: PushJob,
        reply: oneshot::Sender<PushOutcome>,
    },
    /// Counters and histograms so far (for `/metrics`).
    Stats { reply: oneshot::Sender<CoreStats> },
    /// Stop accepting, send Close(SERVER_SHUTDOWN) to every session, and
    /// report once every connection is closed or `timeout` has passed.
    Drain {
        timeout: Duration,
        reply: oneshot::Sender<DrainReport>,
    },
}

/// What a core tells the control plane on its own initiative.
#[derive(Debug)]
pub enum CoreReport {
    /// Presence changes of one turn of the core's loop, in order.
    Presence {
        core: u16,
        events: Vec<PresenceEvent>,
    },
    /// Unacked pushes of an ended session, for offline storage.
    Unacked(UnackedHandoff),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DrainReport {
    /// Connections closed by the drain (their Close was written).
    pub closed: usize,
    /// Connections still open at the drain timeout, shut down regardless.
    pub forced: usize,
}

/// Accept failures, by errno class (labels of `miop_accept_errors_total`).
pub const ACCEPT_ERRNOS: [&str; 6] = [
    "EMFILE",
    "ENFILE",
    "ENOBUFS",
    "ENOMEM",
    "ECONNABORTED",
    "other",
];

pub fn accept_errno_index(errno: Option<i32>) -> usize {
    match errno {
        Some(libc::EMFILE) => 0,
        Some(libc::ENFILE) => 1,
        Some(libc::ENOBUFS) => 2,
        Some(libc::ENOMEM) => 3,
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => 4,
        _ => 5,
    }
}

/// A driver's own counters.
#[derive(Debug, Clone)]
pub struct DriverStats {
    pub accept_errors: [u64; ACCEPT_ERRNOS.len()],
    /// Time to handle one read (decode, session, replies queued).
    pub read_handling: Histogram,
    /// io_uring operations submitted (uring) or syscalls made for sockets
    /// (epoll), by kind: readiness waits (epoll_wait), reads (RECV ops or
    /// recv calls), writes (WRITEV ops or writev calls), inline writes
    /// (sendmsg tried before a WRITEV), accepts, buffer hand-backs
    /// (PROVIDE_BUFFERS ops).
    pub polls: u64,
    pub reads: u64,
    pub writes: u64,
    /// Writes tried inline (non-blocking sendmsg) by the io_uring driver.
    pub inline_writes: u64,
    pub accepts: u64,
    pub provides: u64,
    /// Times the core stopped accepting at the fd high-water mark.
    pub accept_pauses: u64,
    /// The core is not accepting now (0 or 1; a gauge).
    pub accept_paused: u64,
    /// Turns of the core's loop, and turns cut short to let I/O through.
    pub turns: u64,
    pub yields: u64,
}

impl Default for DriverStats {
    fn default() -> Self {
        DriverStats {
            accept_errors: [0; ACCEPT_ERRNOS.len()],
            read_handling: Histogram::new(READ_HANDLING_BUCKETS),
            polls: 0,
            reads: 0,
            writes: 0,
            inline_writes: 0,
            accepts: 0,
            provides: 0,
            accept_pauses: 0,
            accept_paused: 0,
            turns: 0,
            yields: 0,
        }
    }
}

/// One core's figures, as sent to the control plane.
#[derive(Debug, Clone)]
pub struct CoreStats {
    pub core: u16,
    pub engine: EngineStats,
    pub driver: DriverStats,
}

/// The socket operations the engine's intents and writes turn into.
pub trait Transport {
    /// Shut the socket down; call `Engine::released` once its fd is closed
    /// and no operation on it is pending.
    fn shutdown(&mut self, engine: &mut Engine, key: ConnKey);
    /// Read the connection again: its pause (over the inbound budget) is over.
    fn resume_reading(&mut self, engine: &mut Engine, key: ConnKey);
    /// Write every chunk, in order, then call `Engine::on_written`.
    fn write(&mut self, engine: &mut Engine, now: Now, key: ConnKey, batch: Vec<bytes::Bytes>);
}

/// The part of a core's loop that talks to the control plane.
pub struct Link {
    pub core: u16,
    pub commands: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<CoreReport>,
    presence: Vec<PresenceEvent>,
    /// Writes of this turn, performed at its end (see [`Link::finish_turn`]).
    writes: Vec<(ConnKey, Vec<bytes::Bytes>)>,
    pushes: HashMap<u64, oneshot::Sender<PushOutcome>>,
    next_tag: u64,
    protocol_log: RateLimitedLog,
    slow_log: RateLimitedLog,
    pub accept_log: RateLimitedLog,
}

impl Link {
    pub fn new(
        core: u16,
        commands: mpsc::UnboundedReceiver<Command>,
        reports: mpsc::UnboundedSender<CoreReport>,
    ) -> Link {
        Link {
            core,
            commands,
            reports,
            presence: Vec::new(),
            writes: Vec::new(),
            pushes: HashMap::new(),
            next_tag: 1,
            protocol_log: RateLimitedLog::new(Duration::from_secs(5)),
            slow_log: RateLimitedLog::new(Duration::from_secs(5)),
            accept_log: RateLimitedLog::new(Duration::from_secs(5)),
        }
    }

    /// Carries out one command. Returns the drain request if it is one (the
    /// driver runs the drain: it owns the listener).
    pub fn command(
        &mut self,
        engine: &mut Engine,
        now: Now,
        cmd: Command,
        driver: &DriverStats,
    ) -> Option<(Duration, oneshot::Sender<DrainReport>)> {
        match cmd {
            Command::Kick { at, reason } => {
                engine.kick(now, at, reason);
            }
            Command::Inspect { at, reply } => {
                let _ = reply.send(engine.inspect(now, at));
            }
            Command::Push { mut job, reply } => {
                job.tag = self.next_tag;
                self.next_tag += 1;
                self.pushes.insert(job.tag, reply);
                engine.push(now, job);
            }
            Command::Stats { reply } => {
                let _ = reply.send(CoreStats {
                    core: self.core,
                    engine: engine.stats(),
                    driver: driver.clone(),
                });
            }
            Command::Drain { timeout, reply } => {
                engine.begin_drain();
                return Some((timeout, reply));
            }
        }
        None
    }

    /// Takes the engine's intents: shutdowns go to the transport at once,
    /// writes wait for the end of the turn, the rest goes to the control
    /// plane and the log.
    pub fn run_intents(&mut self, engine: &mut Engine, io: &mut impl Transport) {
        loop {
            let mut progressed = false;
            while let Some(w) = engine.poll_transmit() {
                progressed = true;
                self.writes.push(w);
            }
            while let Some(intent) = engine.poll_intent() {
                progressed = true;
                match intent {
                    Intent::Shutdown(key) => io.shutdown(engine, key),
                    Intent::ResumeReading(key) => io.resume_reading(engine, key),
                    Intent::Presence(p) => self.presence.push(p),
                    Intent::Unacked(h) => {
                        let _ = self.reports.send(CoreReport::Unacked(h));
                    }
                    Intent::PushDone { tag, outcome } => {
                        if let Some(reply) = self.pushes.remove(&tag) {
                            let _ = reply.send(outcome);
                        }
                    }
                    Intent::Notice(n) => self.log(n),
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Ends a turn: the presence changes go to the control plane as one
    /// batch, and only then the turn's writes to the sockets. So a client
    /// never reads its BindAck before the node's device index can know of the
    /// bind (a push or a lookup right after the BindAck finds the session).
    pub fn finish_turn(&mut self, engine: &mut Engine, now: Now, io: &mut impl Transport) {
        loop {
            self.run_intents(engine, io);
            self.flush_reports();
            if self.writes.is_empty() {
                break;
            }
            for (key, batch) in std::mem::take(&mut self.writes) {
                io.write(engine, now, key, batch);
            }
        }
    }

    /// Sends this turn's presence changes as one batch (no shared lock per
    /// bind: one channel message per turn).
    pub fn flush_reports(&mut self) {
        if !self.presence.is_empty() {
            let events = std::mem::take(&mut self.presence);
            let _ = self.reports.send(CoreReport::Presence {
                core: self.core,
                events,
            });
        }
    }

    fn log(&mut self, n: Notice) {
        let core = self.core;
        match n {
            Notice::ProtocolError { peer, error } => self.protocol_log.warn(|suppressed| {
                tracing::warn!(core, %peer, error = %error, suppressed, "protocol error; closing the connection")
            }),
            Notice::BindRefused { peer, code } => self.protocol_log.warn(|suppressed| {
                tracing::warn!(core, %peer, code = code.name(), suppressed, "bind refused")
            }),
            Notice::SlowConsumer { peer, queued } => self.slow_log.warn(|suppressed| {
                tracing::warn!(core, %peer, queued, suppressed, "closing a slow consumer: outbound queue over its limit")
            }),
        }
    }
}

impl DriverStats {
    pub fn merge(&mut self, o: &DriverStats) {
        for (a, b) in self.accept_errors.iter_mut().zip(o.accept_errors) {
            *a += b;
        }
        self.read_handling.merge(&o.read_handling);
        self.polls += o.polls;
        self.reads += o.reads;
        self.writes += o.writes;
        self.inline_writes += o.inline_writes;
        self.accepts += o.accepts;
        self.provides += o.provides;
        self.accept_pauses += o.accept_pauses;
        self.accept_paused += o.accept_paused;
        self.turns += o.turns;
        self.yields += o.yields;
    }
}
