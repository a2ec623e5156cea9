//! The I/O drivers: thin loops between sockets and the sans-io engine.
//!
//! Each core runs one driver on its own thread: [`uring`] (io_uring through
//! tokio-uring, the fast path) or [`epoll`] (tokio's reactor plus a raw epoll
//! set, for hosts where io_uring is blocked). Both do the same few things:
//! accept, wait for readability without holding a buffer, read into a
//! per-core buffer, hand the bytes and the time to the engine, write what the
//! engine queued in one gathered write per connection, shut down what it
//! closes, and pass everything else to the control plane through the
//! [`link::Link`]. `--io auto` picks io_uring and falls back to epoll only
//! where io_uring is refused (see [`resolve`]).

pub mod epoll;
pub mod fd_budget;
pub mod link;
pub mod listener;
pub mod log_limit;
pub mod uring;
pub mod wake;

use std::io;
use std::os::fd::RawFd;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use self::link::{DrainReport, DriverStats, Link, Transport};
use crate::config::IoMode;
use crate::engine::{Engine, EngineConfig, Now};

pub use self::log_limit::RateLimitedLog;

/// Connections serviced per turn of a core's loop before it yields.
pub const BUDGET_CONNS: usize = 4096;
/// Sessions a broadcast, a drain or the deadlines may visit per turn.
pub const BUDGET_SESSIONS: usize = 4096;
/// Commands taken from the control plane per turn.
const BUDGET_COMMANDS: usize = 1024;

/// The driver a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Uring,
    Epoll,
}

impl Io {
    pub fn name(self) -> &'static str {
        match self {
            Io::Uring => "uring",
            Io::Epoll => "epoll",
        }
    }
}

/// Picks the driver. `Auto` tries to set up an io_uring; where the kernel
/// refuses it (EPERM: a seccomp profile or `kernel.io_uring_disabled`;
/// ENOSYS: a kernel without io_uring; EACCES) it returns epoll and the
/// warning to log. Any other failure is an error, as is `Uring` when
/// io_uring cannot be set up.
pub fn resolve(mode: IoMode) -> Result<(Io, Option<String>), String> {
    match mode {
        IoMode::Epoll => Ok((Io::Epoll, None)),
        IoMode::Uring => probe_uring()
            .map(|()| (Io::Uring, None))
            .map_err(|e| format!("--io uring: cannot set up io_uring: {e}{}", disabled_hint())),
        IoMode::Auto => match probe_uring() {
            Ok(()) => Ok((Io::Uring, None)),
            Err(e) if refused(&e) => Ok((
                Io::Epoll,
                Some(format!(
                    "io_uring is not available ({e}{}); running on epoll. To use io_uring: allow \
                     io_uring_setup, io_uring_enter and io_uring_register in the container's \
                     seccomp profile (deploy/seccomp/, docs/DEPLOY.md) and set \
                     kernel.io_uring_disabled=0; or pass --io epoll to silence this warning",
                    disabled_hint()
                )),
            )),
            Err(e) => Err(format!(
                "cannot set up io_uring: {e}{} (pass --io epoll to run without it)",
                disabled_hint()
            )),
        },
    }
}

fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM | libc::ENOSYS | libc::EACCES)
    )
}

/// Sets up (and drops) a small ring: the same call the cores make.
fn probe_uring() -> io::Result<()> {
    io_uring::IoUring::new(2).map(drop)
}

/// What `kernel.io_uring_disabled` says, if it forbids io_uring.
fn disabled_hint() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) if v.trim() != "0" => format!("; kernel.io_uring_disabled = {}", v.trim()),
        _ => String::new(),
    }
}

/// Everything a core's driver starts from.
pub struct CoreParams {
    pub engine: EngineConfig,
    pub link: Link,
    /// The core's sockets of each device listener, in the order of the
    /// engine's `transports.listeners` (its index is passed to
    /// `Engine::accept_on`).
    pub listeners: Vec<std::net::TcpListener>,
    /// Connection rows to reserve (virtual memory until used).
    pub capacity: usize,
    /// Accept operations kept in flight (io_uring).
    pub accepts_in_flight: usize,
    /// The node's fd budget for device connections (shared by the cores).
    pub fd_budget: std::sync::Arc<fd_budget::FdBudget>,
    /// SO_SNDBUF of accepted sockets (0: the kernel's default).
    pub sndbuf: u32,
    /// Panic when the core accepts its first connection: a failpoint for the
    /// test that proves a dead core ends the process
    /// (`MIOP_FAILPOINT_CORE_PANIC=<core>`).
    pub panic_on_accept: bool,
}

/// The failpoint of [`CoreParams::panic_on_accept`].
fn failpoint(armed: bool, core: u16) {
    if armed {
        panic!("failpoint MIOP_FAILPOINT_CORE_PANIC={core}");
    }
}

/// Runs one core on the current thread until it has drained. `ready` is
/// told once the driver is set up (or why it could not be).
pub fn run_core(io: Io, p: CoreParams, ready: impl FnOnce(Result<(), String>)) {
    let core = p.engine.core;
    match io {
        Io::Uring => {
            let rt = match uring::build_runtime() {
                Ok(rt) => rt,
                Err(e) => return ready(Err(format!("cannot set up io_uring on core {core}: {e}"))),
            };
            rt.block_on(async move {
                match uring::UringCore::new(p) {
                    Ok(c) => {
                        tracing::debug!(core, "core ready (io_uring)");
                        ready(Ok(()));
                        c.run().await
                    }
                    Err(e) => ready(Err(format!("cannot start core {core}: {e}"))),
                }
            });
        }
        Io::Epoll => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    return ready(Err(format!("cannot start the runtime of core {core}: {e}")))
                }
            };
            rt.block_on(async move {
                match epoll::EpollCore::new(p) {
                    Ok(c) => {
                        tracing::debug!(core, "core ready (epoll)");
                        ready(Ok(()));
                        c.run().await
                    }
                    Err(e) => ready(Err(format!("cannot start core {core}: {e}"))),
                }
            });
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit and returns the result.
/// Production hosts raise the hard limit (LimitNOFILE=1048576); nothing here
/// assumes a particular value.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard {
                if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                    tracing::warn!(error = %e, soft, hard, "cannot raise RLIMIT_NOFILE");
                    return soft;
                }
            }
            hard
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            0
        }
    }
}

/// The address the kernel wrote for an accepted connection (0.0.0.0:0 if it
/// is of a family a TCP listener cannot produce).
pub fn peer_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> std::net::SocketAddr {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match storage.ss_family as i32 {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says this is a sockaddr_in, and it fits.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says this is a sockaddr_in6, and it fits.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            ))
        }
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

/// Socket options of an accepted connection: no Nagle delay (pushes and
/// pongs are small and latency matters), and a small send buffer so a client
/// that stops reading pins kilobytes of kernel memory, not megabytes.
fn tune_accepted(fd: RawFd, sndbuf: u32) {
    let set = |level, name, value: libc::c_int| {
        // SAFETY: setsockopt with a valid int option on an fd we own.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    if sndbuf > 0 {
        set(
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            sndbuf.min(i32::MAX as u32) as i32,
        );
    }
}

/// Logs that a core stopped accepting for lack of file descriptors.
fn log_fd_pause(core: u16, budget: &fd_budget::FdBudget, suppressed: u64) {
    let (high, low) = budget.marks();
    tracing::warn!(
        core,
        open = budget.open(),
        high_water = high,
        low_water = low,
        suppressed,
        "fd budget exhausted: not accepting until connections close (the admin API and Redis keep their reserve)"
    );
}

/// The peer went away between SYN and accept, or a signal: harmless.
fn accept_error_is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR)
    )
}

fn log_accept_error(core: u16, e: &io::Error, suppressed: u64, backoff: Duration) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => tracing::warn!(
            core,
            errno = link::ACCEPT_ERRNOS[link::accept_errno_index(e.raw_os_error())],
            suppressed,
            backoff_ms = backoff.as_millis() as u64,
            "accept failed: out of file descriptors or memory; backing off"
        ),
        _ => {
            tracing::error!(core, error = %e, suppressed, backoff_ms = backoff.as_millis() as u64, "accept failed")
        }
    }
}

/// The core's timer: one tokio `Sleep`, re-registered only when the next
/// deadline moves (resetting a tokio timer is not free, and most turns do
/// not move it).
pub struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Option<Instant>,
}

impl Default for Alarm {
    fn default() -> Self {
        Alarm {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            at: None,
        }
    }
}

impl Alarm {
    /// Sets the alarm for the earliest of `deadlines` and registers the task
    /// for it. Returns true if that time has already come (the caller must
    /// run another turn).
    pub fn set(
        &mut self,
        cx: &mut Context<'_>,
        now: Now,
        deadlines: impl IntoIterator<Item = Option<Instant>>,
    ) -> bool {
        use std::future::Future;
        let at = deadlines.into_iter().flatten().min();
        if at != self.at {
            self.at = at;
            let when = at.unwrap_or_else(|| now.mono + Duration::from_secs(3600));
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(when));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.at = None;
            return true;
        }
        false
    }
}

/// The parts of a turn both drivers share: commands, deadlines and jobs,
/// and the drain.
#[derive(Default)]
pub struct Turn {
    drain: Option<Drain>,
}

struct Drain {
    deadline: Instant,
    reply: Option<oneshot::Sender<DrainReport>>,
    total: usize,
    forced: usize,
    /// After forcing: how long to wait for the sockets to be released.
    release_by: Option<Instant>,
}

impl Turn {
    /// Takes the control plane's commands. Returns a drain request (or a
    /// synthetic one if the control plane is gone).
    pub fn commands(
        &mut self,
        engine: &mut Engine,
        link: &mut Link,
        now: Now,
        cx: &mut Context<'_>,
        stats: &DriverStats,
    ) -> Option<(Duration, oneshot::Sender<DrainReport>)> {
        for _ in 0..BUDGET_COMMANDS {
            match link.commands.poll_recv(cx) {
                Poll::Ready(Some(cmd)) => {
                    if let Some(d) = link.command(engine, now, cmd, stats) {
                        return Some(d);
                    }
                }
                Poll::Ready(None) if self.drain.is_none() => {
                    engine.begin_drain();
                    return Some((Duration::ZERO, oneshot::channel().0));
                }
                _ => break,
            }
        }
        None
    }

    pub fn start_drain(
        &mut self,
        now: Now,
        (timeout, reply): (Duration, oneshot::Sender<DrainReport>),
        total: usize,
    ) {
        if self.drain.is_none() {
            self.drain = Some(Drain {
                deadline: now.mono + timeout,
                reply: Some(reply),
                total,
                forced: 0,
                release_by: None,
            });
        }
    }

    /// Fires due deadlines and advances queued jobs. Returns whether either
    /// has more to do now.
    pub fn timers_and_jobs(&mut self, engine: &mut Engine, now: Now, budget: usize) -> bool {
        let mut more = false;
        if engine.next_timeout().is_some_and(|t| t <= now.mono) {
            more |= engine.handle_timeouts(now, budget);
        }
        if engine.has_work() {
            more |= engine.work(now, budget);
        }
        more
    }

    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain
            .as_ref()
            .map(|d| d.release_by.unwrap_or(d.deadline))
    }

    /// Whether the drain is over (everyone released, or out of time); then
    /// the report has been sent and the core may stop.
    pub fn drain_done(
        &mut self,
        engine: &mut Engine,
        link: &mut Link,
        now: Now,
        open: usize,
        io: &mut impl Transport,
    ) -> bool {
        let Some(d) = self.drain.as_mut() else {
            return false;
        };
        let finished = if engine.is_empty() && open == 0 {
            true
        } else if let Some(by) = d.release_by {
            now.mono >= by
        } else if now.mono >= d.deadline {
            d.forced = engine.force_close_all(now);
            link.finish_turn(engine, now, io);
            d.release_by = Some(now.mono + Duration::from_secs(1));
            engine.is_empty() && open == 0
        } else {
            false
        };
        if finished {
            if let Some(reply) = d.reply.take() {
                let _ = reply.send(DrainReport {
                    closed: d.total.saturating_sub(d.forced),
                    forced: d.forced,
                });
            }
        }
        finished
    }
}
