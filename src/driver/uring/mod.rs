//! The io_uring driver: one tokio-uring runtime per core, one task driving
//! every connection of the core.
//!
//! An idle connection is a row of 32 bytes here (its fd and one in-flight
//! `POLL_ADD`) plus tokio-uring's slot for that op: no task, no buffer. When
//! the poll completes, the connection borrows a registered buffer for one
//! `READ_FIXED`, the engine decodes and answers, the buffer goes back, and the
//! poll is re-armed. Writes are one `WRITEV` of everything the engine queued
//! for the connection. Completions wake the core's task through wakers that
//! name the connection (`driver/wake.rs`), so a turn of the loop services
//! exactly the connections that have something to do.

mod bufs;
mod ops;
mod yielder;

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use self::bufs::ReadBufs;
use self::ops::{AcceptAddr, AcceptOp, PollOp, ReadOp, WriteBufs, WriteOp};
use self::yielder::Yielder;
use super::link::{accept_errno_index, DriverStats, Link, Transport};
use super::wake::WakeQueue;
use super::{CoreParams, Turn, BUDGET_CONNS, BUDGET_SESSIONS};
use crate::engine::{ConnKey, Engine, Now, TransportEnd};

/// Read buffers per core: reads in flight at once, not connections.
const READ_BUFFERS: usize = 256;
/// Tokens at and above this name accept operations, not connections.
const ACCEPT_TOKEN: u32 = 1 << 31;
const NONE: u32 = u32::MAX;

/// A ring with room for bursts: the submission queue is sized for many
/// concurrent accepts, reads and polls, the completion queue four times that.
pub fn build_runtime() -> std::io::Result<tokio_uring::Runtime> {
    let mut uring = tokio_uring::uring_builder();
    uring.setup_cqsize(16_384);
    tokio_uring::Runtime::new(tokio_uring::builder().entries(4096).uring_builder(&uring))
}

/// One connection's row: its socket and the operations pending on it.
struct Conn {
    fd: OwnedFd,
    /// Waiting for readability (the idle state).
    poll: Option<PollOp>,
    /// Index into `Io::reads` / `Io::writes`, or NONE.
    read: u32,
    write: u32,
    /// The engine asked for a shutdown: no new operations; release once the
    /// pending ones have completed.
    shut: bool,
    /// Readable, waiting for a free read buffer.
    wants_buffer: bool,
}

/// The socket side: connection rows and their in-flight operations.
struct Io {
    wake: &'static WakeQueue,
    conns: Vec<Option<Conn>>,
    reads: Slab<ReadOp>,
    writes: Slab<WriteOp>,
    bufs: ReadBufs,
    buffer_waiters: std::collections::VecDeque<ConnKey>,
    open: usize,
    stats: DriverStats,
}

pub struct UringCore {
    engine: Engine,
    link: Link,
    io: Io,
    listener: std::net::TcpListener,
    accepts: Vec<Option<AcceptOp>>,
    /// Boxed: the kernel writes into the address while the op is in flight,
    /// so it must not move when the op (which owns the box) moves.
    #[allow(clippy::vec_box)]
    spare_addrs: Vec<Box<AcceptAddr>>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    yielder: Yielder,
    turn: Turn,
    ready: Vec<u32>,
}

fn poll_op<F: std::future::Future + Unpin>(op: &mut F, waker: &Waker) -> Poll<F::Output> {
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
                reads: Slab::with_capacity(READ_BUFFERS),
                writes: Slab::new(),
                bufs: ReadBufs::new(READ_BUFFERS),
                buffer_waiters: Default::default(),
                open: 0,
                stats: DriverStats::default(),
            },
            accepts: (0..p.accepts_in_flight.max(1)).map(|_| None).collect(),
            spare_addrs: Vec::new(),
            listener: p.listener,
            accepting: true,
            accept_paused_until: None,
            accept_backoff: Duration::from_millis(5),
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            yielder: Yielder::new()?,
            turn: Turn::default(),
            ready: Vec::new(),
        })
    }

    pub fn registered_buffers(&self) -> bool {
        self.io.bufs.is_registered()
    }

    /// Runs the core until it has drained.
    pub async fn run(mut self) {
        for i in 0..self.accepts.len() {
            self.arm_accept(i);
        }
        std::future::poll_fn(|cx| self.turn(cx)).await
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.io.wake.register(cx.waker());
        self.yielder.reset(cx);
        self.io.stats.turns += 1;
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
            if token >= ACCEPT_TOKEN {
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
        self.serve_buffer_waiters(now);
        let mut more = more_ready;
        more |= self
            .turn
            .timers_and_jobs(&mut self.engine, now, BUDGET_SESSIONS);
        self.link.run_intents(&mut self.engine, now, &mut self.io);
        self.link.flush_reports();
        if self.accepting && self.accept_paused_until.is_some_and(|t| now.mono >= t) {
            self.accept_paused_until = None;
            for i in 0..self.accepts.len() {
                if self.accepts[i].is_none() {
                    self.arm_accept(i);
                }
            }
        }
        if self.turn.drain_done(
            &mut self.engine,
            &mut self.link,
            now,
            self.io.open,
            &mut self.io,
        ) {
            return Poll::Ready(());
        }
        if more {
            self.io.stats.yields += 1;
            self.yielder.yield_now(cx);
            return Poll::Pending;
        }
        let wake_at = [
            self.engine.next_timeout(),
            self.accept_paused_until,
            self.turn.drain_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| now.mono + Duration::from_secs(3600));
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::from_std(wake_at));
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.yielder.yield_now(cx);
        }
        Poll::Pending
    }

    // ----- accepting -------------------------------------------------------

    fn arm_accept(&mut self, i: usize) {
        if !self.accepting || self.accepts[i].is_some() {
            return;
        }
        let addr = self.spare_addrs.pop().unwrap_or_else(AcceptAddr::new);
        let mut op = ops::accept(self.listener.as_raw_fd(), addr);
        self.io.stats.accepts += 1;
        let waker = self.io.wake.waker(ACCEPT_TOKEN + i as u32);
        match poll_op(&mut op, &waker) {
            Poll::Pending => self.accepts[i] = Some(op),
            Poll::Ready(_) => unreachable!("an op cannot complete before it is submitted"),
        }
    }

    fn service_accept(&mut self, now: Now, i: usize) {
        let Some(op) = self.accepts.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let waker = self.io.wake.waker(ACCEPT_TOKEN + i as u32);
        let Poll::Ready((res, addr)) = poll_op(op, &waker) else {
            return;
        };
        self.accepts[i] = None;
        let peer = addr.peer();
        self.spare_addrs.push(addr);
        match res {
            Ok(raw) => {
                // SAFETY: the kernel returned a new fd that we now own.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                self.accept_backoff = Duration::from_millis(5);
                if !self.accepting || self.engine.is_draining() {
                    let _ = nix::sys::socket::shutdown(raw, nix::sys::socket::Shutdown::Both);
                    return;
                }
                super::tune_accepted(raw);
                let key = self.engine.accept(now, peer);
                self.io.insert(key, fd);
                self.io.arm_poll(key);
                self.arm_accept(i);
            }
            Err(_) if !self.accepting => {}
            Err(e) => {
                let kind = accept_errno_index(e.raw_os_error());
                self.io.stats.accept_errors[kind] += 1;
                if super::accept_error_is_transient(&e) {
                    self.arm_accept(i);
                } else {
                    // Out of fds or memory: back off (5 ms doubling to 1 s) so
                    // the loop does not spin; accepting resumes within one
                    // backoff step of connections closing.
                    let backoff = self.accept_backoff;
                    let core = self.link.core;
                    self.link
                        .accept_log
                        .warn(|suppressed| super::log_accept_error(core, &e, suppressed, backoff));
                    self.accept_paused_until = Some(now.mono + backoff);
                    self.accept_backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Stops accepting for the drain: shutting the listening socket down
    /// completes the pending accepts with an error.
    fn stop_accepting(&mut self) {
        self.accepting = false;
        tracing::debug!(core = self.link.core, "accept loop stopped for drain");
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }

    // ----- connections -----------------------------------------------------

    fn service_conn(&mut self, now: Now, key: ConnKey) {
        let waker = self.io.wake.waker(key.0);
        let Some(c) = self.io.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return;
        };
        if let Some(op) = c.poll.as_mut() {
            if let Poll::Ready(res) = poll_op(op, &waker) {
                c.poll = None;
                if !c.shut {
                    match res {
                        Ok(_) => self.io.start_read(key),
                        Err(_) => self
                            .engine
                            .on_transport_end(now, key, TransportEnd::IoError),
                    }
                }
            }
        }
        self.service_read(now, key, &waker);
        self.service_write(now, key, &waker);
        self.link.run_intents(&mut self.engine, now, &mut self.io);
        self.io.release_if_done(&mut self.engine, key);
    }

    fn service_read(&mut self, now: Now, key: ConnKey, waker: &Waker) {
        let Some(c) = self.io.conns[key.index()].as_mut() else {
            return;
        };
        if c.read == NONE {
            return;
        }
        let Poll::Ready((res, mut buf)) = poll_op(&mut self.io.reads[c.read as usize], waker)
        else {
            return;
        };
        self.io.reads.remove(c.read as usize);
        c.read = NONE;
        let shut = c.shut;
        let full = match res {
            _ if shut => false,
            Ok(0) => {
                self.engine
                    .on_transport_end(now, key, TransportEnd::PeerClosed);
                false
            }
            Ok(n) => {
                let started = Instant::now();
                self.engine.on_bytes(now, key, buf.filled(n));
                self.io
                    .stats
                    .read_handling
                    .record(started.elapsed().as_secs_f64());
                n == buf.capacity()
            }
            Err(_) => {
                self.engine
                    .on_transport_end(now, key, TransportEnd::IoError);
                false
            }
        };
        self.io.bufs.give_back(buf);
        // Shutdowns decided by this read happen before the next operation.
        self.link.run_intents(&mut self.engine, now, &mut self.io);
        if self.io.conns[key.index()].as_ref().is_some_and(|c| !c.shut) {
            if full {
                // The buffer filled up: more is probably waiting.
                self.io.start_read(key);
            } else {
                self.io.arm_poll(key);
            }
        }
    }

    fn service_write(&mut self, now: Now, key: ConnKey, waker: &Waker) {
        let Some(c) = self.io.conns[key.index()].as_mut() else {
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

    fn serve_buffer_waiters(&mut self, now: Now) {
        while let Some(&key) = self.io.buffer_waiters.front() {
            let waiting = self.io.conns[key.index()]
                .as_ref()
                .is_some_and(|c| c.wants_buffer && !c.shut);
            if !waiting {
                self.io.buffer_waiters.pop_front();
                continue;
            }
            let Some(buf) = self.io.bufs.take() else {
                break;
            };
            self.io.buffer_waiters.pop_front();
            self.io.conns[key.index()].as_mut().unwrap().wants_buffer = false;
            self.io.submit_read(key, buf);
        }
        let _ = now;
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
            poll: None,
            read: NONE,
            write: NONE,
            shut: false,
            wants_buffer: false,
        });
        self.open += 1;
    }

    fn arm_poll(&mut self, key: ConnKey) {
        let waker = self.wake.waker(key.0);
        let Some(c) = self.conns[key.index()].as_mut() else {
            return;
        };
        if c.shut || c.poll.is_some() || c.read != NONE {
            return;
        }
        let mut op = ops::poll_readable(c.fd.as_raw_fd());
        self.stats.polls += 1;
        if poll_op(&mut op, &waker).is_pending() {
            c.poll = Some(op);
        }
    }

    fn start_read(&mut self, key: ConnKey) {
        match self.bufs.take() {
            Some(buf) => self.submit_read(key, buf),
            None => {
                if let Some(c) = self.conns[key.index()].as_mut() {
                    c.wants_buffer = true;
                    self.buffer_waiters.push_back(key);
                }
            }
        }
    }

    fn submit_read(&mut self, key: ConnKey, buf: bufs::ReadBuf) {
        let waker = self.wake.waker(key.0);
        let Some(c) = self.conns[key.index()].as_mut() else {
            return self.bufs.give_back(buf);
        };
        let mut op = ops::read(c.fd.as_raw_fd(), buf);
        self.stats.reads += 1;
        let _ = poll_op(&mut op, &waker);
        c.read = self.reads.insert(op) as u32;
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
            .is_some_and(|c| c.shut && c.poll.is_none() && c.read == NONE && c.write == NONE);
        if done {
            self.conns[key.index()] = None;
            self.open -= 1;
            engine.released(key);
        }
    }
}

impl Transport for Io {
    fn shutdown(&mut self, engine: &mut Engine, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return;
        };
        c.shut = true;
        // Wakes the pending poll, read or write, so they complete now.
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
        self.submit_write(key, fd, WriteBufs::new(batch));
    }
}
