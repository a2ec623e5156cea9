//! The epoll driver, for hosts where io_uring is blocked (Docker's and
//! containerd's default seccomp profiles, kernels built or configured
//! without it).
//!
//! One epoll instance per core, registered with the core's tokio runtime as
//! a single `AsyncFd`: the core's task sleeps until the epoll fd is readable,
//! then collects the ready connections with `epoll_wait(0)`. Connections are
//! registered edge-triggered for input and output once, at accept, so an idle
//! connection costs its fd and a 16-byte row here (plus the kernel's epoll
//! item) and nothing in tokio. Reads go into one per-core buffer (a read is
//! synchronous, so one buffer serves every connection); writes are one
//! `writev` of everything the engine queued, finished on EPOLLOUT when the
//! socket buffer was full.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;

use super::fd_budget::{AcceptGate, FdBudget};
use super::link::{accept_errno_index, DriverStats, Link, Transport};
use super::{Alarm, CoreParams, Turn, BUDGET_CONNS, BUDGET_SESSIONS};
use crate::engine::{ConnKey, Engine, Now, TransportEnd};

/// The per-core read buffer.
const READ_BUF_LEN: usize = 64 * 1024;
/// Reads per connection per turn before others get their turn.
const READS_PER_TURN: usize = 4;
/// Token of the listening socket.
const LISTEN_TOKEN: u64 = u64::MAX;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// A write the socket did not take in full: the rest waits for EPOLLOUT.
struct PendingWrite {
    chunks: Vec<Bytes>,
    /// Bytes of `chunks[0]` already written.
    offset: usize,
}

struct Conn {
    fd: OwnedFd,
    pending: Option<Box<PendingWrite>>,
}

struct Io {
    epoll: AsyncFd<OwnedFd>,
    conns: Vec<Option<Conn>>,
    /// Generation per row, in the event token: an event fetched for a
    /// connection that was closed (and its row reused) in the same turn is
    /// recognised as stale.
    gens: Vec<u32>,
    buf: Vec<u8>,
    /// Connections that may still have unread bytes (edge-triggered).
    unread: Vec<ConnKey>,
    open: usize,
    stats: DriverStats,
    fd_budget: std::sync::Arc<FdBudget>,
}

pub struct EpollCore {
    engine: Engine,
    link: Link,
    io: Io,
    listeners: Vec<std::net::TcpListener>,
    accepting: bool,
    /// Per listener: it may have connections waiting (edge-triggered).
    accept_pending: Vec<bool>,
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
    alarm: Alarm,
    turn: Turn,
    events: Vec<libc::epoll_event>,
    panic_on_accept: bool,
    gate: AcceptGate,
    sndbuf: u32,
}

fn token(key: ConnKey, gen: u32) -> u64 {
    (gen as u64) << 32 | key.0 as u64
}

fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: valid fds and a valid event struct.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl EpollCore {
    /// Must run inside the core's tokio runtime.
    pub fn new(p: CoreParams) -> io::Result<EpollCore> {
        // SAFETY: epoll_create1 returns a new fd or -1.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a new fd we own.
        let epfd = unsafe { OwnedFd::from_raw_fd(raw) };
        for (i, l) in p.listeners.iter().enumerate() {
            l.set_nonblocking(true)?;
            epoll_add(
                epfd.as_raw_fd(),
                l.as_raw_fd(),
                (libc::EPOLLIN | libc::EPOLLET) as u32,
                LISTEN_TOKEN - i as u64,
            )?;
        }
        let listeners = p.listeners.len();
        Ok(EpollCore {
            engine: Engine::new(p.engine, Now::read(), p.capacity),
            link: p.link,
            io: Io {
                // SAFETY: we own the epoll fd and never close or replace it
                // while the AsyncFd holds it.
                epoll: unsafe { AsyncFd::register(epfd)? },
                conns: Vec::with_capacity(p.capacity),
                gens: Vec::with_capacity(p.capacity),
                buf: vec![0; READ_BUF_LEN],
                unread: Vec::new(),
                open: 0,
                stats: DriverStats::default(),
                fd_budget: p.fd_budget.clone(),
            },
            listeners: p.listeners,
            accepting: true,
            accept_pending: vec![true; listeners],
            accept_paused_until: None,
            accept_backoff: Duration::from_millis(5),
            alarm: Alarm::default(),
            turn: Turn::default(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            panic_on_accept: p.panic_on_accept,
            gate: AcceptGate::default(),
            sndbuf: p.sndbuf,
        })
    }

    /// Runs the core until it has drained.
    pub async fn run(mut self) {
        std::future::poll_fn(|cx| self.turn(cx)).await
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.io.stats.turns += 1;
        let now = Now::read();
        if let Some(drain) =
            self.turn
                .commands(&mut self.engine, &mut self.link, now, cx, &self.io.stats)
        {
            self.accepting = false;
            tracing::debug!(core = self.link.core, "accept loop stopped for drain");
            for l in &self.listeners {
                let _ = nix::sys::socket::shutdown(l.as_raw_fd(), nix::sys::socket::Shutdown::Both);
            }
            self.turn.start_drain(now, drain, self.engine.connections());
        }
        let mut more = false;
        // Connections with bytes left over from the last turn first.
        let unread = std::mem::take(&mut self.io.unread);
        for key in unread {
            self.read(now, key);
        }
        // Until the epoll fd has nothing more to say. Polling again after
        // clearing its readiness is what registers this task for the next
        // event (a poll that returns Ready registers nothing).
        while let Poll::Ready(Ok(mut guard)) = self.io.epoll.poll_read_ready(cx) {
            // SAFETY: the buffer holds EVENTS entries.
            let n = unsafe {
                libc::epoll_wait(
                    guard.get_inner().as_raw_fd(),
                    self.events.as_mut_ptr(),
                    EVENTS as i32,
                    0,
                )
            };
            self.io.stats.polls += 1;
            let n = n.max(0) as usize;
            let full = n == EVENTS;
            if !full {
                guard.clear_ready();
            }
            drop(guard);
            for i in 0..n {
                let ev = self.events[i];
                self.event(now, ev.events, ev.u64);
            }
            if full {
                // More are waiting: take them next turn, after the rest.
                more = true;
                break;
            }
        }
        if self.accepting && self.accept_paused_until.is_none_or(|t| now.mono >= t) {
            self.accept_paused_until = None;
            for l in 0..self.listeners.len() {
                if self.accept_pending[l] {
                    more |= self.accept(now, l);
                }
            }
        }
        more |= self
            .turn
            .timers_and_jobs(&mut self.engine, now, BUDGET_SESSIONS);
        self.link.finish_turn(&mut self.engine, now, &mut self.io);
        // Left over from this turn, or resumed by it (ResumeReading).
        more |= !self.io.unread.is_empty();
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
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let deadlines = [
            self.engine.next_timeout(),
            self.accept_paused_until,
            self.turn.drain_deadline(),
            // Paused at the fd high-water mark: look again soon.
            self.gate
                .is_paused()
                .then(|| now.mono + super::uring::FD_RECHECK),
        ];
        if self.alarm.set(cx, now, deadlines) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Whether the fd budget lets this core accept (pausing, with a warning,
    /// at the high-water mark).
    fn may_accept(&mut self) -> bool {
        let mut paused = false;
        let open = self.gate.open(&self.io.fd_budget, || paused = true);
        if paused {
            self.io.stats.accept_pauses += 1;
            let (core, budget) = (self.link.core, &self.io.fd_budget);
            self.link
                .accept_log
                .warn(|suppressed| super::log_fd_pause(core, budget, suppressed));
        }
        self.io.stats.accept_paused = self.gate.is_paused() as u64;
        open
    }

    /// One event from the epoll set.
    fn event(&mut self, now: Now, flags: u32, data: u64) {
        if data > LISTEN_TOKEN - self.listeners.len() as u64 {
            self.accept_pending[(LISTEN_TOKEN - data) as usize] = true;
            return;
        }
        let key = ConnKey(data as u32);
        if self.io.gens.get(key.index()) != Some(&((data >> 32) as u32))
            || self.io.conns.get(key.index()).is_none_or(Option::is_none)
        {
            return; // stale: closed (and maybe reused) this turn
        }
        if flags & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            self.io.finish_write(&mut self.engine, now, key);
        }
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            self.read(now, key);
        }
    }

    /// Accepts up to a budget of waiting connections. Returns whether more
    /// may be waiting.
    fn accept(&mut self, now: Now, listener: usize) -> bool {
        for _ in 0..BUDGET_CONNS {
            if !self.may_accept() {
                // Waiting connections stay in the kernel's accept queue.
                return false;
            }
            // SAFETY: accept4 on our listening socket; null address buffers
            // are allowed (the peer is read with getpeername below).
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let raw = unsafe {
                libc::accept4(
                    self.listeners[listener].as_raw_fd(),
                    &mut storage as *mut _ as *mut libc::sockaddr,
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            self.io.stats.accepts += 1;
            if raw < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.accept_pending[listener] = false;
                    return false;
                }
                let kind = accept_errno_index(e.raw_os_error());
                self.io.stats.accept_errors[kind] += 1;
                if super::accept_error_is_transient(&e) {
                    continue;
                }
                let backoff = self.accept_backoff;
                let core = self.link.core;
                self.link
                    .accept_log
                    .warn(|suppressed| super::log_accept_error(core, &e, suppressed, backoff));
                self.accept_paused_until = Some(now.mono + backoff);
                self.accept_backoff = (backoff * 2).min(Duration::from_secs(1));
                return false;
            }
            self.accept_backoff = Duration::from_millis(5);
            // SAFETY: a new fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let peer = super::peer_addr(&storage, len);
            super::failpoint(self.panic_on_accept, self.link.core);
            super::tune_accepted(raw, self.sndbuf);
            self.io.fd_budget.opened();
            let key = self.engine.accept_on(now, peer, listener);
            if let Err(e) = self.io.insert(key, fd) {
                tracing::warn!(core = self.link.core, error = %e, "cannot watch a new connection");
                self.engine
                    .on_transport_end(now, key, TransportEnd::IoError);
                self.link.run_intents(&mut self.engine, &mut self.io);
                continue;
            }
            // Its Bind may already be here (the registration is edge-triggered).
            self.read(now, key);
        }
        true
    }

    /// Reads what the connection has, a few buffers at most per turn (none
    /// while the engine has paused it: over its inbound budget, the bytes
    /// wait in the kernel and TCP flow control holds the client back).
    fn read(&mut self, now: Now, key: ConnKey) {
        if self.engine.read_paused(key) {
            return;
        }
        let mut exhausted = true;
        for _ in 0..READS_PER_TURN {
            let Some(c) = self.io.conns.get(key.index()).and_then(Option::as_ref) else {
                return;
            };
            let fd = c.fd.as_raw_fd();
            // SAFETY: reads into our buffer of that length.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.io.buf.as_mut_ptr() as *mut libc::c_void,
                    self.io.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            self.io.stats.reads += 1;
            if n == 0 {
                self.engine
                    .on_transport_end(now, key, TransportEnd::PeerClosed);
                exhausted = false;
                break;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    self.engine
                        .on_transport_end(now, key, TransportEnd::IoError);
                }
                exhausted = false;
                break;
            }
            let n = n as usize;
            let started = Instant::now();
            self.engine.on_bytes(now, key, &self.io.buf[..n]);
            self.io
                .stats
                .read_handling
                .record(started.elapsed().as_secs_f64());
            self.link.run_intents(&mut self.engine, &mut self.io);
            if n < self.io.buf.len() {
                exhausted = false; // a short read: drained
                break;
            }
            if self.engine.read_paused(key) {
                exhausted = false; // resumed by ResumeReading
                break;
            }
        }
        self.link.run_intents(&mut self.engine, &mut self.io);
        // Still readable after the per-turn reads: continue next turn.
        if exhausted && self.io.conns.get(key.index()).is_some_and(Option::is_some) {
            self.io.unread.push(key);
        }
    }
}

impl Io {
    fn insert(&mut self, key: ConnKey, fd: OwnedFd) -> io::Result<()> {
        let i = key.index();
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
            self.gens.resize(i + 1, 0);
        }
        self.gens[i] = self.gens[i].wrapping_add(1);
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        epoll_add(
            self.epoll.as_raw_fd(),
            fd.as_raw_fd(),
            events,
            token(key, self.gens[i]),
        )?;
        self.conns[i] = Some(Conn { fd, pending: None });
        self.open += 1;
        Ok(())
    }

    /// Writes as much of `chunks` (from `offset` in the first) as the socket
    /// takes. Returns Ok(true) when all of it was written.
    fn writev(fd: RawFd, w: &mut PendingWrite, stats: &mut DriverStats) -> io::Result<bool> {
        loop {
            let mut iov: [libc::iovec; crate::engine::MAX_BATCH_CHUNKS] = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
                crate::engine::MAX_BATCH_CHUNKS];
            let mut count = 0;
            for (i, c) in w.chunks.iter().enumerate().take(iov.len()) {
                let skip = if i == 0 { w.offset } else { 0 };
                iov[count] = libc::iovec {
                    iov_base: c[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: c.len() - skip,
                };
                count += 1;
            }
            if count == 0 {
                return Ok(true);
            }
            // SAFETY: iovecs point into live chunks.
            let n = unsafe { libc::writev(fd, iov.as_ptr(), count as i32) };
            stats.writes += 1;
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            let mut n = n as usize;
            while n > 0 {
                let left = w.chunks[0].len() - w.offset;
                if n >= left {
                    n -= left;
                    w.chunks.remove(0);
                    w.offset = 0;
                } else {
                    w.offset += n;
                    n = 0;
                }
            }
            if w.chunks.is_empty() {
                return Ok(true);
            }
        }
    }

    /// The socket became writable (or failed): continue a pending write.
    fn finish_write(&mut self, engine: &mut Engine, now: Now, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return;
        };
        let Some(mut w) = c.pending.take() else {
            return;
        };
        match Io::writev(c.fd.as_raw_fd(), &mut w, &mut self.stats) {
            Ok(true) => engine.on_written(now, key, true),
            Ok(false) => c.pending = Some(w),
            Err(_) => engine.on_written(now, key, false),
        }
    }
}

impl Transport for Io {
    fn resume_reading(&mut self, _engine: &mut Engine, key: ConnKey) {
        // Edge-triggered: bytes that arrived during the pause raised no new
        // event, so read it next turn regardless.
        self.unread.push(key);
    }

    fn shutdown(&mut self, engine: &mut Engine, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index()).and_then(Option::take) else {
            return;
        };
        // Nothing is pending in the kernel on our behalf: close at once (the
        // epoll registration goes with the last reference to the socket).
        // SAFETY: shutdown on an fd we own; it is closed when `c` drops.
        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        drop(c);
        self.open -= 1;
        self.fd_budget.closed();
        engine.released(key);
    }

    fn write(&mut self, engine: &mut Engine, now: Now, key: ConnKey, batch: Vec<Bytes>) {
        let Some(c) = self.conns.get_mut(key.index()).and_then(Option::as_mut) else {
            return engine.on_written(now, key, false);
        };
        let mut w = PendingWrite {
            chunks: batch,
            offset: 0,
        };
        match Io::writev(c.fd.as_raw_fd(), &mut w, &mut self.stats) {
            Ok(true) => engine.on_written(now, key, true),
            Ok(false) => c.pending = Some(Box::new(w)),
            Err(_) => engine.on_written(now, key, false),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_row_is_16_bytes() {
        // Its fd and an empty pending-write slot (plus a 4-byte generation).
        assert_eq!(std::mem::size_of::<Option<super::Conn>>(), 16);
    }
}
