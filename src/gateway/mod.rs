//! miopd's data plane: per-core io_uring runtimes holding device connections.
//!
//! [`start`] raises the fd limit, binds one SO_REUSEPORT listener per core,
//! starts the core threads and returns a [`Gateway`] handle the control plane
//! uses to inspect sessions and to drain.

mod connection;
mod core;
pub mod index;
mod listener;
mod log_limit;
mod node;
mod outbound;
pub mod push;
mod read_pool;
mod readiness;
mod registry;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub use self::listener::somaxconn;
pub use self::log_limit::RateLimitedLog;
pub use self::node::{
    CoreCommand, DrainReport, Node, PushOutcome, PushTargets, SessionView, Unacked, UnackedHandoff,
};
pub use self::push::{push_local, LocalPush, PushReport, PushTo};
pub use self::registry::{Location, Registry};
use crate::auth::Authenticator;
use crate::config::Config;

/// A running data plane.
pub struct Gateway {
    pub node: Arc<Node>,
    pub listen_addr: SocketAddr,
    /// Next push message id: unix ms at start × 4096, then counting up, so ids
    /// are unique per node, increase, and stay below 2^53 (exact in JSON).
    next_message_id: std::sync::atomic::AtomicU64,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit and returns the result.
/// Production hosts raise the hard limit (LimitNOFILE=1048576); we never assume
/// a particular value.
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

/// Starts the core threads. Fails with a readable message if a listener cannot
/// be bound or io_uring cannot be set up.
pub fn start(
    cfg: &Config,
    auth: Authenticator,
    fd_limit: u64,
    presence: Option<Arc<crate::presence::PendingChanges>>,
    unacked_tx: Option<mpsc::UnboundedSender<UnackedHandoff>>,
) -> Result<Gateway, String> {
    let listeners = listener::bind_all(cfg.listen, cfg.cores, cfg.backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let listen_addr = listeners[0]
        .local_addr()
        .map_err(|e| format!("cannot read the listen address: {e}"))?;
    let mut senders = Vec::with_capacity(cfg.cores);
    let mut receivers = Vec::with_capacity(cfg.cores);
    for _ in 0..cfg.cores {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        receivers.push(rx);
    }
    let node = Arc::new(Node {
        node_id: cfg.node_id.clone(),
        session: cfg.session,
        auth,
        registry: Registry::new(cfg.cores * 16, (fd_limit as usize).min(4 << 20)),
        cores: senders,
        draining: AtomicBool::new(false),
        started: Instant::now(),
        fd_limit,
        drain_timeout: cfg.drain_timeout,
        slow_consumer: cfg.slow_consumer,
        unacked_tx,
        incarnation: format!("{:08x}", fastrand::u32(..)),
        presence,
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(u16, bool), String>>();
    let mut threads = Vec::new();
    for (id, (listener, rx)) in listeners.into_iter().zip(receivers).enumerate() {
        let node = node.clone();
        let ready = ready_tx.clone();
        let id = id as u16;
        let t = std::thread::Builder::new()
            .name(format!("miop-core-{id}"))
            .spawn(move || run_core(id, node, listener, rx, ready))
            .map_err(|e| format!("cannot start core thread: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    for _ in 0..cfg.cores {
        match ready_rx.recv() {
            Ok(Ok((id, registered))) => {
                tracing::debug!(core = id, registered_buffers = registered, "core ready")
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a core thread exited during start-up".into()),
        }
    }
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Gateway {
        node,
        listen_addr,
        next_message_id: std::sync::atomic::AtomicU64::new(start_ms << 12),
        threads: std::sync::Mutex::new(threads),
    })
}

fn run_core(
    id: u16,
    node: Arc<Node>,
    listener: std::net::TcpListener,
    rx: mpsc::UnboundedReceiver<CoreCommand>,
    ready: std::sync::mpsc::Sender<Result<(u16, bool), String>>,
) {
    let runtime = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "cannot set up io_uring on core {id}: {e}. miopd needs Linux 5.11+ with io_uring \
                 enabled (sysctl kernel.io_uring_disabled=0; containers need a seccomp profile \
                 that allows io_uring_setup)"
            )));
            return;
        }
    };
    runtime.block_on(async move {
        let core = std::rc::Rc::new(core::Core::new(id, node));
        let _ = ready.send(Ok((id, core.reads.is_registered())));
        core.run(listener, rx).await;
    });
}

/// A ring with room for bursts: the submission queue is sized for many
/// concurrent accepts, reads and polls, the completion queue four times that.
fn build_runtime() -> std::io::Result<tokio_uring::Runtime> {
    let mut uring = tokio_uring::uring_builder();
    uring.setup_cqsize(16_384);
    tokio_uring::Runtime::new(tokio_uring::builder().entries(4096).uring_builder(&uring))
}

impl Gateway {
    pub fn next_message_id(&self) -> u64 {
        self.next_message_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Pushes to targets held by this node (see [`push::push_local`]).
    pub async fn push(
        &self,
        to: PushTo,
        payload: bytes::Bytes,
        ack: bool,
    ) -> Result<PushReport, String> {
        let id = self.next_message_id();
        Ok(push::push_local(&self.node, id, &to, payload, ack, None)
            .await?
            .report)
    }

    /// Looks a bound session up on whichever core holds it.
    pub async fn inspect(&self, device_id: &str) -> Option<SessionView> {
        let loc = self.node.registry.get(device_id)?;
        let (tx, rx) = oneshot::channel();
        self.node.cores[loc.core as usize]
            .send(CoreCommand::Inspect {
                slot: loc.slot,
                session_id: loc.session_id,
                reply: tx,
            })
            .ok()?;
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()?
    }

    /// Stops accepting, sends Close(SERVER_SHUTDOWN) to every session and waits
    /// (at most the drain timeout plus a margin) for the cores to finish.
    pub async fn drain(&self) -> DrainReport {
        let mut replies = Vec::new();
        for tx in &self.node.cores {
            let (reply, rx) = oneshot::channel();
            if tx.send(CoreCommand::Drain { reply }).is_ok() {
                replies.push(rx);
            }
        }
        let mut total = DrainReport::default();
        let deadline = self.node.drain_timeout + Duration::from_secs(2);
        for rx in replies {
            if let Ok(Ok(r)) = tokio::time::timeout(deadline, rx).await {
                total.closed += r.closed;
                total.forced += r.forced;
            }
        }
        // Core threads end when their drain completes; don't wait on a stuck one.
        for t in std::mem::take(&mut *self.threads.lock().unwrap()) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        total
    }
}
