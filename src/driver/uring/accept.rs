//! Accepting connections on the io_uring driver: a few ACCEPT operations
//! kept in flight on the core's SO_REUSEPORT listener, back-off when the
//! process is out of fds or memory, and the stop at the start of a drain.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::task::Poll;
use std::time::Duration;

use super::ops::{self, AcceptAddr};
use super::{poll_op, UringCore, ACCEPT_TOKEN};
use crate::driver::link::accept_errno_index;
use crate::engine::Now;

impl UringCore {
    pub(super) fn arm_accept(&mut self, i: usize) {
        if !self.accepting || self.accepts[i].is_some() || !self.may_accept() {
            return;
        }
        let addr = self.spare_addrs.pop().unwrap_or_else(AcceptAddr::new);
        let listener = &self.listeners[i / self.accepts_per_listener];
        let mut op = ops::accept(listener.as_raw_fd(), addr);
        self.io.stats.accepts += 1;
        let waker = self.io.wake.waker(ACCEPT_TOKEN + i as u32);
        if poll_op(&mut op, &waker).is_pending() {
            self.accepts[i] = Some(op);
        }
    }

    pub(super) fn service_accept(&mut self, now: Now, i: usize) {
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
                    // SAFETY: shutdown on an fd we own (closed when it drops).
                    unsafe { libc::shutdown(raw, libc::SHUT_RDWR) };
                    return;
                }
                crate::driver::failpoint(self.panic_on_accept, self.link.core);
                crate::driver::tune_accepted(raw, self.sndbuf);
                self.io.fd_budget.opened();
                let key = self
                    .engine
                    .accept_on(now, peer, i / self.accepts_per_listener);
                self.io.insert(key, fd);
                self.io.arm_recv(key);
                self.arm_accept(i);
            }
            Err(_) if !self.accepting => {}
            Err(e) => {
                let kind = accept_errno_index(e.raw_os_error());
                self.io.stats.accept_errors[kind] += 1;
                if crate::driver::accept_error_is_transient(&e) {
                    self.arm_accept(i);
                } else {
                    // Out of fds or memory: back off (5 ms doubling to 1 s) so
                    // the loop does not spin; accepting resumes within one
                    // backoff step of connections closing.
                    let backoff = self.accept_backoff;
                    let core = self.link.core;
                    self.link.accept_log.warn(|suppressed| {
                        crate::driver::log_accept_error(core, &e, suppressed, backoff)
                    });
                    self.accept_paused_until = Some(now.mono + backoff);
                    self.accept_backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Stops accepting for the drain: shutting the listening socket down
    /// completes the pending accepts with an error.
    pub(super) fn stop_accepting(&mut self) {
        self.accepting = false;
        tracing::debug!(core = self.link.core, "accept loop stopped for drain");
        for l in &self.listeners {
            // SAFETY: shutdown on a listener we own.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    /// Whether the fd budget lets this core accept (pausing, with a warning,
    /// at the high-water mark).
    pub(super) fn may_accept(&mut self) -> bool {
        let mut paused = false;
        let open = self.gate.open(&self.io.fd_budget, || paused = true);
        if paused {
            self.io.stats.accept_pauses += 1;
            let (core, budget) = (self.link.core, &self.io.fd_budget);
            self.link
                .accept_log
                .warn(|suppressed| crate::driver::log_fd_pause(core, budget, suppressed));
        }
        self.io.stats.accept_paused = self.gate.is_paused() as u64;
        open
    }
}
