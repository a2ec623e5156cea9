//! Ending a turn of the core's loop early without losing io_uring progress.
//!
//! tokio-uring hands queued submissions to the kernel only when the thread
//! parks (or the submission queue fills), and dispatches completions only when
//! tokio polls the ring's fd. A task that simply wakes itself to continue a
//! long job (a broadcast to 500,000 sessions, a burst of expiries) is polled
//! again without parking: nothing it queued would reach the kernel, and no
//! completion would come back. So a yielding core instead writes to an
//! eventfd registered with tokio and waits for it: the thread parks (flushing
//! the submission queue), tokio's poll sees both the ring and the eventfd
//! ready, and the core continues right after.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;

pub struct Yielder {
    fd: AsyncFd<OwnedFd>,
    /// A write is pending that the next turn must consume.
    armed: bool,
}

impl Yielder {
    pub fn new() -> io::Result<Yielder> {
        // SAFETY: eventfd returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a valid fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Yielder {
            // SAFETY: we own the eventfd and never close or replace it while
            // the AsyncFd holds it.
            fd: unsafe { AsyncFd::register(fd)? },
            armed: false,
        })
    }

    /// At the start of a turn: consumes the wake-up of an earlier yield.
    pub fn reset(&mut self, cx: &mut Context<'_>) {
        if !self.armed {
            return;
        }
        if let Poll::Ready(Ok(mut guard)) = self.fd.poll_read_ready(cx) {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into v (eventfd's counter).
            unsafe { libc::read(self.fd.as_raw_fd(), &mut v as *mut u64 as *mut _, 8) };
            guard.clear_ready();
            self.armed = false;
        }
    }

    /// Ends this turn so that the runtime parks, then polls the core again.
    pub fn yield_now(&mut self, cx: &mut Context<'_>) {
        if !self.armed {
            let one = 1u64;
            // SAFETY: writes 8 bytes to the eventfd.
            unsafe { libc::write(self.fd.as_raw_fd(), &one as *const u64 as *const _, 8) };
            self.armed = true;
        }
        if self.fd.poll_read_ready(cx).is_ready() {
            // Readiness was already known: the next turn consumes it.
            cx.waker().wake_by_ref();
        }
    }
}
