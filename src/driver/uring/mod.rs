//! The io_uring driver: one tokio-uring runtime per core, one task driving
//! every connection of the core.
//!
//! An idle connection is a 40-byte row here (its fd and one pending
//! `RECV` that selects its buffer from the core's provided-buffer group only
//! when data arrives) plus tokio-uring's slot for that op: no task, no
//! buffer. A completion wakes the core's task through a waker that names the
//! connection (`driver/wake.rs`); the engine decodes and answers; the buffer
//! goes back to the kernel at the end of the turn and the receive is
//! re-armed. Writes are gathered: everything the engine queued for a
//! connection goes out in one `WRITEV`.
//!
//! Each turn of the loop costs a park of the runtime (tokio's reactor, the
//! ring's submission and completion queues), so the driver keeps turns per
//! message low: readiness and read are one operation, and the first writes
//! of a turn are tried inline with a non-blocking `sendmsg`, which saves the
//! write's completion and the turn it would wake (a heartbeat's Pong then
//! costs one turn, not three). Past [`INLINE_WRITES`] per turn — a broadcast
//! or a burst — writes go through the ring, batched into one submission.

mod accept;
mod ops;
mod pbufs;
mod yielder;

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use self::ops::{AcceptAddr, AcceptOp, RecvOp, WriteBufs, WriteOp};
use self::pbufs::ProvidedBufs;
use self::yielder::Yielder;
use super::fd_budget::{AcceptGate, FdBudget};
use super::link::{DriverStats, Link, Transport};
use super::wake::{WakeQueue, QUIET};
use super::{Alarm, CoreParams, Turn, BUDGET_CONNS, BUDGET_SESSIONS};
use crate::engine::{ConnKey, Engine, Now, TransportEnd};

/// Tokens at and above this name accept operations, not connections.
const ACCEPT_TOKEN: u32 = 1 << 31;
/// Tokens of buffer hand-backs (quiet: collected at the next turn).
const PROVIDE_TOKEN: u32 = ACCEPT_TOKEN | QUIET;
const NONE: u32 = u32::MAX;
/// How often a core paused at the fd high-water mark checks the budget.
pub const FD_RECHECK: Duration = Duration::from_millis(50);
/// Writes tried inline (non-blocking `sendmsg`) per turn before the rest go
/// through the ring.
pub const INLINE_WRITES: usize = 64;

/// A ring with room for bursts: the submission queue is sized for many
/// concurrent accepts, receives and writes, the completion queue four times
/// that.
pub fn build_runtime() -> std::io::Result<tokio_uring::Runtime> {
    let mut uring = tokio_uring::uring_builder();
    uring.setup_cqsize(16_384);
    tokio_uring::Runtime::new(tokio_uring::builder().entries(4096).uring_builder(&uring))
}

/// One connection's row: its socket and the operations pending on it.
struct Conn {
    fd: OwnedFd,
    /// The pending receive (the idle state).
    recv: Option<RecvOp>,
    /// Index into `Io::writes`, or NONE.
    write: u32,
    /// The engine asked for a shutdown: no new operations; release once the
    /// pending ones have completed.
    shut: bool,
}

/// The socket side: connection rows and their in-flight operations.
struct Io {
    wake: &'static WakeQueue,
    conns: Vec<Option<Conn>>,
    writes: Slab<WriteOp>,
    bufs: ProvidedBufs,
    /// Receives that found the buffer group empty: re-armed once buffers
    /// are back.
    starved: Vec<ConnKey>,
    inline_left: usize,
    open: usize,
    stats: DriverStats,
    fd_budget: std::sync::Arc<FdBudget>,
}

pub struct UringCore {
    engine: Engine,
    link: Link,
    io: Io,
    listeners: Vec<std::net::TcpListener>,
    /// `accepts_per_listener` slots per listener, listener after listener.
    accepts: Vec<Option<AcceptOp>>,
    accepts_per_listener: usize,
    /// Boxed: the kernel writes into the address while the op is in flight,
    /// so it must not move when the op (which owns the box) moves.
    #[allow(clippy::vec_box)]
    spare_addrs: Vec<Box<AcceptAddr>>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
    alarm: Alarm,
    yielder: Yielder,
    turn: Turn,
    ready: Vec<u32>,
    panic_on_accept: bool,
    gate: AcceptGate,
    sndbuf: u32,
}

fn poll_op<F: Future + Unpin>(op: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(op).poll(&mut Context::from_waker(waker))
}

impl UringCore {
    /// Must run inside the core's tokio-uring runtime.
    pub fn new(p: CoreParams) -> std::io::Result<UringCore> {
        let capacity = p.capacity;
        Ok(UringCore {
            engine: Engine::new(p.engine, Now::read(), capacity),
            link: p.link,
            io: Io {
                wake: WakeQueue::new(),
                conns: Vec::with_capacity(capacity),
                writes: Slab::new(),
                bufs: ProvidedBufs::new(),
                starved: Vec::new(),
                inline_left: INLINE_WRITES,
                open: 0,
                stats: DriverStats::default(),
                fd_budget: p.fd_budget.clone(),
            },
            accepts: (0..p.accepts_in_flight.max(1) * p.listeners.len())
                .map(|_| None)
                .collect(),
            accepts_per_listener: p.accepts_in_flight.max(1),
            spare_addrs: Vec::new(),
            listeners: p.listeners,
            accepting: true,
            accept_paused_until: None,
            accept_backoff: Duration::from_millis(5),
            alarm: Alarm::default(),
            yielder: Yielder::new()?,
            turn: Turn::default(),
            ready: Vec::new(),
            panic_on_accept: p.panic_on_accept,
            gate: AcceptGate::default(),
            sndbuf: p.sndbuf,
        })
    }

    /// Runs the core until it has drained.
    pub async fn run(mut self) {
        // The buffers go to the kernel before the first receive is armed
        // (submissions are processed in order).
        self.io.flush_buffers();
        for i in 0..self.accepts.len() {
            self.arm_accept(i);
        }
        std::future::poll_fn(|cx| self.turn(cx)).await
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.io.wake.register(cx.waker());
        self.yielder.reset(cx);
        self.io.stats.turns += 1;
        self.io.inline_left = INLINE_WRITES;
        let now = Now::read();
        if let Some(drain) =
            self.turn
                .commands(&mut self.engine, &mut self.link, now, cx, &self.io.stats)
        {
            self.stop_accepting();
            self.turn.start_drain(now, drain, self.engine.connections());
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.io.wake.take(&mut ready);
        let more_ready = ready.len() > BUDGET_CONNS;
        for &token in ready.iter().take(BUDGET_CONNS) {
            if token & PROVIDE_TOKEN == PROVIDE_TOKEN {
                self.io.collect_provide((token & !PROVIDE_TOKEN) as usize);
            } else if token >= ACCEPT_TOKEN {
                self.service_accept(now, (token - ACCEPT_TOKEN) as usize);
            } else {
                self.service_conn(now, ConnKey(token));
            }
        }
        if more_ready {
            // Put the rest back for the next turn (after a yield).
            for &token in &ready[BUDGET_CONNS..] {
                self.io.wake.waker(token).wake_by_ref();
            }
        }
        self.ready = ready;
        let mut more = more_ready;
        more |= self
            .turn
            .timers_and_jobs(&mut self.engine, now, BUDGET_SESSIONS);
        self.link.finish_turn(&mut self.engine, now, &mut self.io);
        self.io.flush_buffers();
        self.io.rearm_starved();
        if self.accepting && self.accept_paused_until.is_some_and(|t| now.mono >= t) {
            self.accept_paused_until = None;
            for i in 0..self.accepts.len() {
                self.arm_accept(i);
            }
        }
        if self.accepting && self.gate.is_paused() && self.may_accept() {
            // Below the fd low-water mark again.
            for i in 0..self.accepts.len() {
                self.arm_accept(i);
            }
        }
        let open = self.io.open;
        if self
            .turn
            .drain_done(&mut self.engine, &mut self.link, now, open, &mut self.io)
        {
            return Poll::Ready(());
        }
        if more {
            self.io.stats.yields += 1;
            self.yielder.yield_now(cx);
            return Poll::Pending;
        }
        let deadlines = [
            self.engine.next_timeout(),
            self.accept_paused_until,
            self.turn.drain_deadline(),
            // Paused at the fd high-water mark: look again soon (connections
            // close on every core, not only this one).
            self.gate.is_paused().then(|| now.mono + FD_RECHECK),
        ];
        if self.alarm.set(cx, now, deadlines) {
            self.yielder.yield_now(cx);
        }
        Poll::Pending
    }

    // ----- connections -----------------------------------------------------

    fn service_conn(&mut self, now: Now, key: ConnKey) {
        let waker = self.io.wake.waker(key.0);
        self.service_recv(now, key, &waker);
        self.service_write(now, key, &waker);
        self.link.run_intents(&mut self.engine, &mut self.io);
        self.io.release_if_done(&mut self.engine, key);
    }

    fn service_recv(&mut self, now: Now, key: ConnKey, waker: &Waker) {
        let Some(c) = self.io.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return;
        };
        let Some(op) = c.recv.as_mut() else {
            return;
        };
        let Poll::Ready((res, buf)) = poll_op(op, waker) else {
            return;
        };
        c.recv = None;
        let shut = c.shut;
        match (res, buf) {
            (_, Some(id)) if shut => self.io.bufs.give_back(id),
            (Ok(n), Some(id)) => {
                let started = Instant::now();
                self.engine.on_bytes(now, key, self.io.bufs.filled(id, n));
                self.io.bufs.give_back(id);
                self.io
                    .stats
                    .read_handling
                    .record(started.elapsed().as_secs_f64());
            }
            _ if shut => {}
            (Ok(0), None) => self
                .engine
                .on_transport_end(now, key, TransportEnd::PeerClosed),
            (Err(e), None) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.io.starved.push(key);
                return;
            }
            _ => self
                .engine
                .on_transport_end(now, key, TransportEnd::IoError),
        }
        // Shutdowns decided by these bytes happen before the next receive;
        // a session over its inbound budget is not read until ResumeReading.
        self.link.run_intents(&mut self.engine, &mut self.io);
        if !self.engine.read_paused(key) {
            self.io.arm_recv(key);
        }
    }

    fn service_write(&mut self, now: Now, key: ConnKey, waker: &Waker) {
        let Some(c) = self.io.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return;
        };
        if c.write == NONE {
            return;
        }
        let Poll::Ready((res, mut bufs)) = poll_op(&mut self.io.writes[c.write as usize], waker)
        else {
            return;
        };
        self.io.writes.remove(c.write as usize);
        c.write = NONE;
        if c.shut {
            return;
        }
        match res {
            Ok(n) if bufs.advance(n) => {
                // A partial write: the rest goes out next.
                let fd = c.fd.as_raw_fd();
                self.io.submit_write(key, fd, bufs);
            }
            Ok(_) => self.engine.on_written(now, key, true),
            Err(_) => self.engine.on_written(now, key, false),
        }
    }
}

impl Io {
    fn insert(&mut self, key: ConnKey, fd: OwnedFd) {
        let i = key.index();
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        debug_assert!(self.conns[i].is_none(), "key reused before release");
        self.conns[i] = Some(Conn {
            fd,
            recv: None,
            write: NONE,
            shut: false,
        });
        self.open += 1;
    }

    fn arm_recv(&mut self, key: ConnKey) {
        let waker = self.wake.waker(key.0);
        let Some(c) = self.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return;
        };
        if c.shut || c.recv.is_some() {
            return;
        }
        let mut op = ops::recv(c.fd.as_raw_fd(), self.bufs.group(), pbufs::BUF_LEN as u32);
        self.stats.reads += 1;
        if poll_op(&mut op, &waker).is_pending() {
            c.recv = Some(op);
        }
    }

    fn rearm_starved(&mut self) {
        for key in std::mem::take(&mut self.starved) {
            self.arm_recv(key);
        }
    }

    /// Hands consumed buffers back to the kernel (in batches; at once if a
    /// receive found the group empty).
    fn flush_buffers(&mut self) {
        let wake = self.wake;
        let force = !self.starved.is_empty();
        let n = self.bufs.flush(force, |idx, op| {
            let waker = wake.waker(PROVIDE_TOKEN | idx as u32);
            let _ = poll_op(op, &waker);
        });
        self.stats.provides += n as u64;
    }

    fn collect_provide(&mut self, idx: usize) {
        let waker = self.wake.waker(PROVIDE_TOKEN | idx as u32);
        if let Some(op) = self.bufs.ops.get_mut(idx) {
            if let Poll::Ready(res) = poll_op(op, &waker) {
                self.bufs.ops.remove(idx);
                if let Err(e) = res {
                    tracing::error!(error = %e, "io_uring refused read buffers back");
                }
            }
        }
    }

    fn submit_write(&mut self, key: ConnKey, fd: RawFd, bufs: WriteBufs) {
        let waker = self.wake.waker(key.0);
        let mut op = ops::writev(fd, bufs);
        self.stats.writes += 1;
        let _ = poll_op(&mut op, &waker);
        let idx = self.writes.insert(op) as u32;
        if let Some(c) = self.conns[key.index()].as_mut() {
            c.write = idx;
        }
    }

    /// Closes the socket and frees the row once it is shut down and nothing
    /// is pending on it (tokio-uring would otherwise keep the fd open).
    fn release_if_done(&mut self, engine: &mut Engine, key: ConnKey) {
        let done = self.conns[key.index()]
            .as_ref()
            .is_some_and(|c| c.shut && c.recv.is_none() && c.write == NONE);
        if done {
            self.conns[key.index()] = None;
            self.open -= 1;
            self.fd_budget.closed();
            engine.released(key);
        }
    }
}

/// Sends as much of `chunks` as the socket takes now, without blocking.
fn send_now(fd: RawFd, chunks: &[Bytes]) -> std::io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; crate::engine::MAX_BATCH_CHUNKS];
    for (v, c) in iov.iter_mut().zip(chunks) {
        *v = libc::iovec {
            iov_base: c.as_ptr() as *mut libc::c_void,
            iov_len: c.len(),
        };
    }
    // SAFETY: a zeroed msghdr is valid; the iovecs point into live chunks.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = chunks.len().min(iov.len()) as _;
    // SAFETY: sendmsg on an fd we own with a valid msghdr.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Transport for Io {
    fn resume_reading(&mut self, _engine: &mut Engine, key: ConnKey) {
        self.arm_recv(key);
    }

    fn shutdown(&mut self, engine: &mut Engine, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return;
        };
        c.shut = true;
        // Completes the pending receive and write now.
        // SAFETY: shutdown on an fd we own.
        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        self.release_if_done(engine, key);
    }

    fn write(&mut self, engine: &mut Engine, now: Now, key: ConnKey, batch: Vec<Bytes>) {
        let Some(c) = self.conns.get(key.index()).and_then(Option::as_ref) else {
            return engine.on_written(now, key, false);
        };
        if c.shut {
            return;
        }
        let fd = c.fd.as_raw_fd();
        let mut bufs = WriteBufs::new(batch);
        if self.inline_left > 0 {
            self.inline_left -= 1;
            self.stats.inline_writes += 1;
            match send_now(fd, bufs.chunks()) {
                Ok(n) if !bufs.advance(n) => return engine.on_written(now, key, true),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return engine.on_written(now, key, false),
            }
        }
        self.submit_write(key, fd, bufs);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_row_is_40_bytes() {
        // Its fd, the pending receive (16 bytes; 24 as an Option), the write
        // index, a flag: docs/BENCHMARKS.md itemises an idle session's bytes.
        assert_eq!(std::mem::size_of::<Option<super::Conn>>(), 40);
        assert_eq!(std::mem::size_of::<super::RecvOp>(), 16);
    }
}
