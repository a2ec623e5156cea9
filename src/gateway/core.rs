//! One I/O core: a thread with its own tokio-uring runtime, listener, sessions,
//! read buffers and timers. Nothing here is shared with other cores except the
//! device [`Registry`](super::registry::Registry) and the cores' mailboxes.

use std::cell::{Cell, RefCell};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use slab::Slab;
use tokio::sync::{mpsc, Notify};
use tokio_uring::net::{TcpListener, TcpStream};

use super::log_limit::RateLimitedLog;
use super::node::{
    CoreCommand, DrainReport, PushOutcome, PushTargets, SessionView, SharedNode, Unacked,
    UnackedHandoff,
};
use super::outbound::Outbound;
use super::read_pool::ReadPool;
use super::registry::Location;
use crate::config::SlowConsumerPolicy;
use crate::metrics::{self as m, CoreMetrics};
use crate::protocol::{self, CloseReason};
use crate::session::{Action, PresenceChange, Session, SessionState};

/// How long a closing connection may take to flush its last frames before its
/// socket is shut down regardless (a peer that stopped reading).
const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// Cap on the per-core slot reservation (virtual memory, not RSS).
const MAX_RESERVED_SLOTS: usize = 4 << 20;
/// Sessions (slot, session id) by topic.
type TopicIndex = HashMap<Box<str>, HashSet<(usize, u64)>>;

/// How long a push's send time is kept for measuring its acks.
const PUSH_ACK_WINDOW: Duration = Duration::from_secs(600);
/// Read buffers per core: reads in flight at once, not connections.
const READ_BUFFERS: usize = 256;

/// One connection as the core tracks it.
pub(super) struct Conn {
    pub stream: Rc<TcpStream>,
    pub session: Session,
    pub peer: SocketAddr,
    /// Encoded frames waiting for the writer (unallocated when idle).
    pub outbound: Outbound,
    /// The start of a frame whose rest has not arrived (unallocated when idle).
    pub inbound: BytesMut,
    /// A writer task is flushing `outbound`.
    pub writing: bool,
    /// The reader task has ended; the entry goes once the writer is done too.
    pub reader_done: bool,
    /// Set when the session decided to close: flush, then shut the socket down.
    pub closing_since: Option<Instant>,
}

pub struct Core {
    pub id: u16,
    node: SharedNode,
    conns: RefCell<Slab<Conn>>,
    next_serial: Cell<u64>,
    pub(super) reads: ReadPool,
    draining: Cell<bool>,
    drained: Notify,
    metrics: CoreMetrics,
    accept_log: RateLimitedLog,
    slow_log: RateLimitedLog,
    /// Refused binds and protocol errors: a flood of bad clients must not
    /// flood the log.
    client_error_log: RateLimitedLog,
    /// Sessions by topic (joined at Bind or by Subscribe), for topic pushes.
    topics: RefCell<TopicIndex>,
    /// Send time of pushes awaiting PushAcks, by message id (one entry per
    /// message per core, however many recipients), for push-to-ack latency.
    push_sent: RefCell<HashMap<u64, Instant>>,
    /// Pushes with a TTL awaiting their PushAck, per session: handed to offline
    /// storage if the session ends first. Only sessions with unacked pushes
    /// have an entry, so idle sessions pay nothing.
    unacked: RefCell<HashMap<(usize, u64), VecDeque<Unacked>>>,
}

/// Most unacked pushes remembered per session (the oldest go first).
const MAX_UNACKED_PER_SESSION: usize = 100;

impl Core {
    pub fn new(id: u16, node: SharedNode) -> Core {
        Core {
            id,
            // Reserve for this core's share of the fd limit up front: untouched
            // capacity is only virtual memory, whereas growing by doubling
            // would copy the table and leave half of it allocated.
            conns: RefCell::new(Slab::with_capacity(
                (node.fd_limit as usize / node.cores.len().max(1)).min(MAX_RESERVED_SLOTS),
            )),
            next_serial: Cell::new(1),
            reads: ReadPool::new(READ_BUFFERS),
            draining: Cell::new(false),
            drained: Notify::new(),
            metrics: CoreMetrics::new(id),
            node,
            accept_log: RateLimitedLog::new(Duration::from_secs(5)),
            slow_log: RateLimitedLog::new(Duration::from_secs(5)),
            client_error_log: RateLimitedLog::new(Duration::from_secs(5)),
            topics: RefCell::new(HashMap::new()),
            push_sent: RefCell::new(HashMap::new()),
            unacked: RefCell::new(HashMap::new()),
        }
    }

    /// Runs the core until it has drained. Spawns the accept loop and the timer.
    pub async fn run(
        self: Rc<Self>,
        listener: std::net::TcpListener,
        mut rx: mpsc::UnboundedReceiver<CoreCommand>,
    ) {
        let listen_fd = listener.as_raw_fd();
        let listener = TcpListener::from_std(listener);
        tokio_uring::spawn(self.clone().accept_loop(listener));
        tokio_uring::spawn(self.clone().timer_loop());
        while let Some(cmd) = rx.recv().await {
            match cmd {
                CoreCommand::Kick {
                    slot,
                    session_id,
                    reason,
                } => self.kick(slot as usize, session_id, reason),
                CoreCommand::Inspect {
                    slot,
                    session_id,
                    reply,
                } => {
                    let _ = reply.send(self.inspect(slot as usize, session_id));
                }
                CoreCommand::Push {
                    targets,
                    frame,
                    message_id,
                    ack,
                    keep_until_ms,
                    reply,
                } => {
                    let _ = reply.send(self.push(targets, frame, message_id, ack, keep_until_ms));
                }
                CoreCommand::Drain { reply } => {
                    let report = self.drain(listen_fd).await;
                    let _ = reply.send(report);
                    return;
                }
            }
        }
    }

    // ----- accepting -------------------------------------------------------

    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let mut backoff = Duration::from_millis(5);
        loop {
            // The accept future is always awaited to completion (never raced in
            // a select!): tokio-uring would leak the fd of a dropped accept.
            match listener.accept().await {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    if self.draining.get() {
                        let _ = stream.shutdown(Shutdown::Both);
                        continue;
                    }
                    self.on_accept(stream, peer);
                }
                Err(e) if self.draining.get() => {
                    tracing::debug!(core = self.id, error = %e, "accept loop stopped for drain");
                    return;
                }
                Err(e) => {
                    let errno = errno_name(e.raw_os_error());
                    m::accept_error(errno);
                    match e.raw_os_error() {
                        // Out of fds or memory: back off (5 ms doubling to 1 s) so
                        // the loop does not spin; accepting resumes within one
                        // backoff step of connections closing.
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            self.accept_log.warn(|suppressed| {
                                tracing::warn!(
                                    core = self.id,
                                    errno,
                                    suppressed,
                                    backoff_ms = backoff.as_millis() as u64,
                                    "accept failed: out of file descriptors or memory; backing off"
                                )
                            });
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                        // The peer went away between SYN and accept: harmless.
                        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR) => {}
                        _ => {
                            self.accept_log.warn(|suppressed| {
                                tracing::error!(core = self.id, error = %e, suppressed, "accept failed")
                            });
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
        }
    }

    fn on_accept(self: &Rc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let serial = self.next_serial.get();
        self.next_serial.set(serial + 1);
        // Core id in the top bits makes session ids unique per node without a
        // shared counter.
        let session_id = ((self.id as u64) << 48) | (serial & ((1 << 48) - 1));
        let stream = Rc::new(stream);
        let slot = self.conns.borrow_mut().insert(Conn {
            stream: stream.clone(),
            session: Session::new(session_id, Instant::now()),
            peer,
            outbound: Outbound::default(),
            inbound: BytesMut::new(),
            writing: false,
            reader_done: false,
            closing_since: None,
        });
        self.metrics.accepted.increment(1);
        self.metrics.connections.increment(1.0);
        self.metrics.core_connections.increment(1.0);
        tokio_uring::spawn(super::connection::read_loop(
            self.clone(),
            slot,
            session_id,
            stream,
        ));
    }

    // ----- inbound ---------------------------------------------------------

    /// True while the connection exists and has not decided to close.
    pub(super) fn is_open(&self, slot: usize, sid: u64) -> bool {
        self.conns
            .borrow()
            .get(slot)
            .is_some_and(|c| c.is(sid) && c.closing_since.is_none())
    }

    /// Feeds bytes read from the socket to the session. Returns whether the
    /// reader should keep reading.
    pub(super) fn on_bytes(self: &Rc<Self>, slot: usize, sid: u64, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            self.transport_closed(slot, sid, "peer_closed");
            return false;
        }
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut actions = Vec::new();
        {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = live(&mut conns, slot, sid) else {
                return false;
            };
            let cfg = &self.node.session;
            let max = cfg.max_frame_len as usize;
            // Fast path: whole frames straight from the pooled read buffer; only
            // an incomplete tail is copied into the connection's own buffer.
            let mut held = std::mem::take(&mut c.inbound);
            let src: &[u8] = if held.is_empty() {
                bytes
            } else {
                held.extend_from_slice(bytes);
                &held
            };
            let mut used = 0;
            loop {
                if c.session.state() == SessionState::Closing {
                    break;
                }
                match protocol::decode(&src[used..], max) {
                    Ok(Some((frame, n))) => {
                        used += n;
                        c.session.handle_frame(
                            frame,
                            now,
                            unix_now,
                            cfg,
                            &self.node.auth,
                            &mut actions,
                        );
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let peer = c.peer;
                        self.client_error_log.warn(|suppressed| {
                            tracing::warn!(core = self.id, %peer, error = %e, suppressed, "protocol error; closing the connection")
                        });
                        c.session.handle_decode_error(&e, &mut actions);
                        break;
                    }
                }
            }
            if c.session.state() != SessionState::Closing && used < src.len() {
                let mut rest = BytesMut::with_capacity(src.len() - used);
                rest.extend_from_slice(&src[used..]);
                c.inbound = rest;
            }
        }
        self.apply(slot, sid, actions);
        self.metrics
            .read_handling
            .record(now.elapsed().as_secs_f64());
        self.is_open(slot, sid)
    }

    /// The socket reached EOF or failed.
    pub(super) fn transport_closed(self: &Rc<Self>, slot: usize, sid: u64, why: &'static str) {
        let mut actions = Vec::new();
        let stream = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = live(&mut conns, slot, sid) else {
                return;
            };
            if c.closing_since.is_none() {
                m::closed(why);
                c.closing_since = Some(Instant::now());
            }
            c.session.handle_transport_closed(&mut actions);
            c.outbound.clear();
            c.stream.clone()
        };
        self.apply(slot, sid, actions);
        let _ = stream.shutdown(Shutdown::Both);
    }

    // ----- acting on session decisions -------------------------------------

    /// Carries out a session's actions for the connection at `slot`.
    fn apply(self: &Rc<Self>, slot: usize, sid: u64, actions: Vec<Action>) {
        let mut replaced = Vec::new();
        let mut flush = false;
        let mut slow = false;
        for action in actions {
            match action {
                Action::Send(frame) => {
                    let mut conns = self.conns.borrow_mut();
                    if let Some(c) = live(&mut conns, slot, sid) {
                        if let Err(e) = c.outbound.encode(&frame) {
                            tracing::error!(core = self.id, error = %e, "cannot encode a server frame");
                        }
                        flush = true;
                        if c.outbound.len() > self.node.session.max_outbound_bytes
                            && c.closing_since.is_none()
                        {
                            // The peer is not reading: free what is queued for
                            // it and close it, instead of growing without bound.
                            c.outbound.clear();
                            slow = true;
                        }
                    }
                }
                Action::Presence(PresenceChange::Online {
                    device_id,
                    session_id,
                    topics,
                }) => {
                    self.join_topics(slot, session_id, topics);
                    self.metrics.sessions.increment(1.0);
                    self.metrics.core_sessions.increment(1.0);
                    self.metrics.binds_ok.increment(1);
                    if let Some(c) = self.conns.borrow().get(slot).filter(|c| c.is(session_id)) {
                        let waited = c.session.connected_for(Instant::now());
                        self.metrics.bind_duration.record(waited.as_secs_f64());
                    }
                    let since_ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let loc = Location {
                        core: self.id,
                        slot: slot as u32,
                        session_id,
                        since_ms,
                    };
                    if let Some(old) = self.node.registry.bind(&device_id, loc) {
                        replaced.push(old);
                    }
                    if let Some(p) = &self.node.presence {
                        p.mark(&device_id);
                    }
                }
                Action::Presence(PresenceChange::Offline {
                    device_id,
                    session_id,
                    ..
                }) => {
                    self.metrics.sessions.decrement(1.0);
                    self.metrics.core_sessions.decrement(1.0);
                    self.node.registry.unbind(&device_id, session_id);
                    self.leave_topics(slot, session_id);
                    self.hand_off_unacked(&device_id, slot, session_id);
                    if let Some(p) = &self.node.presence {
                        p.mark(&device_id);
                    }
                }
                Action::Topics { joined, left } => {
                    self.join_topics(slot, sid, joined);
                    self.drop_from_topics(slot, sid, &left);
                }
                Action::BindRejected(code) => {
                    m::bind_rejected(code.name());
                    let peer = self.conns.borrow().get(slot).map(|c| c.peer);
                    self.client_error_log.warn(|suppressed| {
                        tracing::warn!(
                            core = self.id,
                            ?peer,
                            code = code.name(),
                            suppressed,
                            "bind refused"
                        )
                    });
                }
                Action::Acked { message_id } => {
                    self.metrics.push_acks.increment(1);
                    let mut unacked = self.unacked.borrow_mut();
                    if let Some(q) = unacked.get_mut(&(slot, sid)) {
                        q.retain(|u| u.message_id != message_id);
                        if q.is_empty() {
                            unacked.remove(&(slot, sid));
                        }
                    }
                    drop(unacked);
                    if let Some(sent) = self.push_sent.borrow().get(&message_id) {
                        self.metrics
                            .push_ack_latency
                            .record(sent.elapsed().as_secs_f64());
                    }
                }
                Action::Close { reason } => {
                    let mut conns = self.conns.borrow_mut();
                    if let Some(c) = live(&mut conns, slot, sid) {
                        if c.closing_since.is_none() {
                            c.closing_since = Some(Instant::now());
                            m::closed(reason.name());
                            match reason {
                                CloseReason::HeartbeatTimeout => {
                                    self.metrics.heartbeat_timeouts.increment(1)
                                }
                                CloseReason::BindTimeout => self.metrics.bind_timeouts.increment(1),
                                _ => {}
                            }
                        }
                        flush = true;
                    }
                }
            }
        }
        if slow {
            self.slow_log.warn(|suppressed| {
                tracing::warn!(
                    core = self.id,
                    suppressed,
                    limit = self.node.session.max_outbound_bytes,
                    "closing a slow consumer: outbound queue over its limit"
                )
            });
            self.kick(slot, sid, CloseReason::SlowConsumer);
        }
        if flush {
            self.ensure_writer(slot, sid);
        }
        for old in replaced {
            self.kick_at(old, CloseReason::Replaced);
        }
    }

    /// Kicks a session wherever it lives on this node.
    fn kick_at(self: &Rc<Self>, loc: Location, reason: CloseReason) {
        m::kicked(reason.name());
        if loc.core == self.id {
            self.kick(loc.slot as usize, loc.session_id, reason);
        } else if let Some(tx) = self.node.cores.get(loc.core as usize) {
            let _ = tx.send(CoreCommand::Kick {
                slot: loc.slot,
                session_id: loc.session_id,
                reason,
            });
        }
    }

    pub(super) fn kick(self: &Rc<Self>, slot: usize, sid: u64, reason: CloseReason) {
        let mut actions = Vec::new();
        {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = live(&mut conns, slot, sid) else {
                return;
            };
            let msg = match reason {
                CloseReason::Replaced => "the device bound again on another connection",
                CloseReason::ServerShutdown => "server shutting down",
                CloseReason::SlowConsumer => "outbound queue overflow: the client does not read",
                _ => "closed by the server",
            };
            c.session.kick(reason, msg, &mut actions);
        }
        self.apply(slot, sid, actions);
    }

    /// Adds the session to each topic's members.
    fn join_topics(&self, slot: usize, sid: u64, topics: Vec<String>) {
        let mut index = self.topics.borrow_mut();
        for t in topics {
            index
                .entry(t.into_boxed_str())
                .or_default()
                .insert((slot, sid));
        }
    }

    /// Removes the session from each topic's members, dropping topics that
    /// end up with none.
    fn drop_from_topics(&self, slot: usize, sid: u64, topics: &[String]) {
        let mut index = self.topics.borrow_mut();
        for t in topics {
            if let Some(members) = index.get_mut(t.as_str()) {
                members.remove(&(slot, sid));
                if members.is_empty() {
                    index.remove(t.as_str());
                }
            }
        }
    }

    /// The session went offline: it leaves every topic it holds now (joined
    /// at Bind or by Subscribe, minus those left by Unsubscribe).
    /// Unacked pushes of an ended session go to offline storage (with Redis),
    /// so the device gets them again when it binds; the client library drops
    /// the duplicates it already saw.
    fn hand_off_unacked(&self, device_id: &str, slot: usize, sid: u64) {
        let Some(messages) = self.unacked.borrow_mut().remove(&(slot, sid)) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let messages: Vec<Unacked> = messages
            .into_iter()
            .filter(|u| u.keep_until_ms > now)
            .collect();
        if messages.is_empty() {
            return;
        }
        let n = messages.len() as u64;
        match &self.node.unacked_tx {
            Some(tx)
                if tx
                    .send(UnackedHandoff {
                        device_id: device_id.into(),
                        messages,
                    })
                    .is_ok() =>
            {
                m::unacked(n, "kept_offline")
            }
            _ => m::unacked(n, "dropped"),
        }
    }

    fn leave_topics(&self, slot: usize, sid: u64) {
        let topics: Vec<String> = match self.conns.borrow().get(slot).filter(|c| c.is(sid)) {
            Some(c) => c.session.topics().to_vec(),
            None => return,
        };
        self.drop_from_topics(slot, sid, &topics);
    }

    // ----- pushes ----------------------------------------------------------

    /// Queues one encoded Push frame (shared, not copied) for every target on
    /// this core, in one pass without awaiting; writers then flush each
    /// connection. A target over its outbound limit is closed as a slow
    /// consumer instead of growing.
    fn push(
        self: &Rc<Self>,
        targets: PushTargets,
        frame: Bytes,
        message_id: u64,
        ack: bool,
        keep_until_ms: Option<u64>,
    ) -> PushOutcome {
        let max = self.node.session.max_outbound_bytes;
        let mut out = PushOutcome::default();
        let (mut flush, mut slow) = (Vec::new(), Vec::new());
        let mut missing = 0;
        let mut dropped = 0u64;
        let mut kept = Vec::new();
        {
            let mut conns = self.conns.borrow_mut();
            let mut deliver = |slot: usize, c: &mut Conn| {
                if c.session.state() != SessionState::Bound || c.closing_since.is_some() {
                    out.gone += 1;
                    return;
                }
                c.outbound.push(frame.clone());
                out.delivered += 1;
                if keep_until_ms.is_some() {
                    kept.push((slot, c.session.session_id()));
                }
                let mut closing = false;
                if c.outbound.len() > max {
                    match self.node.slow_consumer {
                        SlowConsumerPolicy::Close => {
                            c.outbound.clear();
                            slow.push((slot, c.session.session_id()));
                            closing = true;
                        }
                        SlowConsumerPolicy::DropOldest => dropped += c.outbound.drop_oldest(max),
                    }
                }
                if !closing && !c.writing {
                    flush.push((slot, c.session.session_id()));
                }
            };
            match &targets {
                PushTargets::Sessions(list) => {
                    for &(slot, sid) in list {
                        match live(&mut conns, slot as usize, sid) {
                            Some(c) => deliver(slot as usize, c),
                            None => missing += 1,
                        }
                    }
                }
                PushTargets::Topic(topic) => {
                    if let Some(members) = self.topics.borrow().get(&**topic) {
                        for &(slot, sid) in members {
                            if let Some(c) = live(&mut conns, slot, sid) {
                                deliver(slot, c);
                            }
                        }
                    }
                }
                PushTargets::All => {
                    for (slot, c) in conns.iter_mut() {
                        if c.session.state() == SessionState::Bound && c.closing_since.is_none() {
                            deliver(slot, c);
                        }
                    }
                }
            }
        }
        out.gone += missing;
        if let Some(until) = keep_until_ms {
            let mut unacked = self.unacked.borrow_mut();
            for key in kept {
                let q = unacked.entry(key).or_default();
                if q.len() == MAX_UNACKED_PER_SESSION {
                    q.pop_front();
                }
                q.push_back(Unacked {
                    message_id,
                    frame: frame.clone(),
                    keep_until_ms: until,
                });
            }
        }
        if dropped > 0 {
            m::outbound_dropped(dropped);
        }
        if ack && out.delivered > 0 {
            self.push_sent
                .borrow_mut()
                .insert(message_id, Instant::now());
        }
        for (slot, sid) in flush {
            self.ensure_writer(slot, sid);
        }
        for (slot, sid) in slow {
            self.slow_log.warn(|suppressed| {
                tracing::warn!(
                    core = self.id,
                    suppressed,
                    "closing a slow consumer: pushes over its outbound limit"
                )
            });
            self.kick(slot, sid, CloseReason::SlowConsumer);
        }
        out
    }

    // ----- outbound --------------------------------------------------------

    fn ensure_writer(self: &Rc<Self>, slot: usize, sid: u64) {
        let stream = {
            let mut conns = self.conns.borrow_mut();
            let Some(c) = live(&mut conns, slot, sid) else {
                return;
            };
            if c.writing {
                return;
            }
            c.writing = true;
            c.stream.clone()
        };
        tokio_uring::spawn(super::connection::write_loop(
            self.clone(),
            slot,
            sid,
            stream,
        ));
    }

    /// Takes the bytes the writer should send next. `None` means the writer is
    /// done: nothing is queued (the socket is shut down if the session is
    /// closing, and the entry removed if the reader has ended too).
    pub(super) fn next_outbound(&self, slot: usize, sid: u64) -> Option<bytes::Bytes> {
        let mut conns = self.conns.borrow_mut();
        let c = live(&mut conns, slot, sid)?;
        if let Some(bytes) = c.outbound.take() {
            return Some(bytes);
        }
        c.writing = false;
        if c.closing_since.is_some() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        let remove = c.reader_done;
        drop(conns);
        if remove {
            self.remove(slot, sid);
        }
        None
    }

    /// The reader task ended; remove the entry unless a writer still runs.
    pub(super) fn reader_done(&self, slot: usize, sid: u64) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = live(&mut conns, slot, sid) else {
            return;
        };
        c.reader_done = true;
        let remove = !c.writing;
        drop(conns);
        if remove {
            self.remove(slot, sid);
        }
    }

    fn remove(&self, slot: usize, sid: u64) {
        let mut conns = self.conns.borrow_mut();
        if conns
            .get(slot)
            .is_some_and(|c| c.session.session_id() == sid)
        {
            let c = conns.remove(slot);
            // Shut down before the last reference drops: tokio-uring keeps an fd
            // open while any op on it is parked, so closing alone may not end
            // the connection.
            let _ = c.stream.shutdown(Shutdown::Both);
            self.metrics.connections.decrement(1.0);
            self.metrics.core_connections.decrement(1.0);
            if self.draining.get() && conns.is_empty() {
                self.drained.notify_one();
            }
        }
    }

    // ----- timers ----------------------------------------------------------

    /// Checks session deadlines at a coarse tick (a quarter of the shortest
    /// timeout, between 50 ms and 1 s). One pass over the core's sessions per
    /// tick is cheaper than a timer per session at a million sessions, and
    /// keeps idle sessions free of timer state.
    async fn timer_loop(self: Rc<Self>) {
        let cfg = self.node.session;
        let tick = (cfg.bind_timeout.min(cfg.heartbeat_timeout) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut expired = Vec::new();
        let mut lingering = Vec::new();
        loop {
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            {
                let conns = self.conns.borrow();
                for (slot, c) in conns.iter() {
                    match c.closing_since {
                        Some(since) if now >= since + CLOSE_LINGER => {
                            lingering.push(c.stream.clone())
                        }
                        Some(_) => {}
                        None => {
                            if c.session.deadline(&cfg).is_some_and(|d| now >= d) {
                                expired.push((slot, c.session.session_id()));
                            }
                        }
                    }
                }
            }
            for (slot, sid) in expired.drain(..) {
                let mut actions = Vec::new();
                if let Some(c) = self.conns.borrow_mut().get_mut(slot) {
                    c.session.handle_timeout(now, &cfg, &mut actions);
                }
                self.apply(slot, sid, actions);
            }
            for stream in lingering.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
            // Acks later than this are not measured; keeps the map bounded.
            self.push_sent
                .borrow_mut()
                .retain(|_, sent| now.duration_since(*sent) < PUSH_ACK_WINDOW);
        }
    }

    // ----- control ---------------------------------------------------------

    fn inspect(&self, slot: usize, sid: u64) -> Option<SessionView> {
        let conns = self.conns.borrow();
        let c = conns.get(slot).filter(|c| c.is(sid))?;
        Some(SessionView {
            node: self.node.node_id.clone(),
            core: self.id,
            peer: c.peer.to_string(),
            info: c.session.info(Instant::now()),
        })
    }

    async fn drain(self: &Rc<Self>, listen_fd: i32) -> DrainReport {
        self.draining.set(true);
        self.node.draining.store(true, Ordering::Relaxed);
        // Shutting the listening socket down completes the pending accept with
        // an error, which ends the accept loop without dropping the op.
        unsafe {
            libc::shutdown(listen_fd, libc::SHUT_RDWR);
        }
        let live: Vec<(usize, u64)> = self
            .conns
            .borrow()
            .iter()
            .map(|(slot, c)| (slot, c.session.session_id()))
            .collect();
        let total = live.len();
        for (slot, sid) in live {
            self.kick(slot, sid, CloseReason::ServerShutdown);
        }
        let deadline = tokio::time::Instant::now() + self.node_drain_timeout();
        while !self.conns.borrow().is_empty() {
            if tokio::time::timeout_at(deadline, self.drained.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let forced = self.conns.borrow().len();
        for (_, c) in self.conns.borrow().iter() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        DrainReport {
            closed: total - forced.min(total),
            forced,
        }
    }

    fn node_drain_timeout(&self) -> Duration {
        self.node.drain_timeout
    }
}

/// The connection at `slot` if it is still session `sid` (slots are reused;
/// the session id fences stale references from timers, kicks and writers).
fn live(conns: &mut Slab<Conn>, slot: usize, sid: u64) -> Option<&mut Conn> {
    conns.get_mut(slot).filter(|c| c.is(sid))
}

impl Conn {
    fn is(&self, sid: u64) -> bool {
        self.session.session_id() == sid
    }
}

fn errno_name(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::EPROTO) => "EPROTO",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EINTR) => "EINTR",
        Some(libc::EINVAL) => "EINVAL",
        _ => "other",
    }
}
