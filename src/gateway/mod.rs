//! miopd's data plane as the control plane sees it: the core threads and a
//! small facade over them.
//!
//! [`start`] binds one SO_REUSEPORT listener per core and starts a thread per
//! core running the chosen driver around its engine. The [`Gateway`] is what
//! the control plane (admin API, push API, presence in Redis, routing,
//! offline storage) uses: [`Gateway::locate`], [`Gateway::kick`],
//! [`Gateway::push_local`], [`Gateway::drain`], [`Gateway::inspect`]. It
//! never exposes connection slots: callers name devices and sessions.
//!
//! Cores hand their presence changes to the control plane in per-core
//! batches; the control plane applies them to the node's [`index::DeviceIndex`]
//! on its own thread (no lock shared with the cores), kicks replaced
//! sessions, and marks the devices in the [`ChangeFeed`] that the Redis
//! writer drains.

pub mod change_feed;
pub mod index;
mod push;
pub mod stats;
pub mod threads;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use self::change_feed::ChangeFeed;
use self::index::{DeviceIndex, Location};
pub use self::push::{LocalPush, PushReport, PushTo};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::driver::link::{Command, CoreReport, Link};
pub use crate::driver::link::{CoreStats, DrainReport};
pub use crate::driver::listener::somaxconn;
pub use crate::driver::RateLimitedLog;
use crate::driver::{CoreParams, Io};
pub use crate::engine::UnackedHandoff;
use crate::engine::{EngineConfig, PushJob, PushTargets, SessionRef};
use crate::metrics as m;
use crate::protocol::{Body, CloseReason, Frame, Push, FLAG_ACK_REQUIRED};
use crate::session::SessionInfo;
use crate::transport::tls::TlsServer;
use crate::transport::ws::WsConfig;
use crate::transport::{ListenerSpec, Transports};

/// A bound session, as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub session_id: u64,
    /// Bind time (unix ms): orders binds of one device across nodes.
    pub since_ms: u64,
}

/// What the admin API shows for one session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionView {
    pub node: String,
    pub core: u16,
    pub peer: String,
    #[serde(flatten)]
    pub info: SessionInfo,
}

struct IndexState {
    index: DeviceIndex,
    reports: mpsc::UnboundedReceiver<CoreReport>,
}

/// A running data plane.
pub struct Gateway {
    pub node_id: String,
    /// Random per process start: makes session ids unique across restarts in
    /// shared presence.
    pub incarnation: String,
    pub started: Instant,
    pub fd_limit: u64,
    /// The driver the cores run.
    pub io: Io,
    /// The plain TCP listener's address.
    pub listen_addr: SocketAddr,
    /// Every device listener (plain TCP first) with its actual address.
    pub listeners: Vec<ListenerSpec>,
    /// The TLS configuration, for reloading the certificate on SIGHUP.
    pub tls: Option<Arc<TlsServer>>,
    drain_timeout: Duration,
    cores: Vec<mpsc::UnboundedSender<Command>>,
    index: Mutex<IndexState>,
    feed: Option<Arc<ChangeFeed>>,
    unacked: Mutex<Option<mpsc::UnboundedSender<UnackedHandoff>>>,
    draining: AtomicBool,
    /// Next push message id: unix ms at start × 4096, then counting up, so ids
    /// are unique per node, increase, and stay below 2^53 (exact in JSON).
    next_message_id: AtomicU64,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Accept operations each io_uring core keeps in flight.
const ACCEPTS_IN_FLIGHT: usize = 8;

/// Binds the listeners and starts the core threads. `presence_feed`: keep a
/// [`ChangeFeed`] of devices whose presence changed (for Redis). Fails with a
/// readable message if a listener cannot be bound or a core cannot start.
pub fn start(
    cfg: &Config,
    auth: Authenticator,
    fd_limit: u64,
    io: Io,
    presence_feed: bool,
) -> Result<Gateway, String> {
    let tls = match &cfg.transports.tls {
        Some(files) => Some(Arc::new(TlsServer::load(files.clone())?)),
        None => None,
    };
    // Per listener, one SO_REUSEPORT socket per core; then per core, one
    // socket of each listener.
    let mut specs = Vec::new();
    let mut sockets_of_core: Vec<Vec<std::net::TcpListener>> =
        (0..cfg.cores).map(|_| Vec::new()).collect();
    for (kind, addr, proxy) in cfg.transports.listeners(cfg.listen) {
        let sockets = crate::driver::listener::bind_all(addr, cfg.cores, cfg.backlog)
            .map_err(|e| format!("cannot listen on {addr} ({}): {e}", kind.name()))?;
        let addr = sockets[0]
            .local_addr()
            .map_err(|e| format!("cannot read the listen address: {e}"))?;
        specs.push(ListenerSpec { kind, addr, proxy });
        for (core, s) in sockets.into_iter().enumerate() {
            sockets_of_core[core].push(s);
        }
    }
    let listen_addr = specs[0].addr;
    let transports = Arc::new(Transports {
        listeners: specs.clone(),
        tls: tls.clone(),
        ws: WsConfig {
            path: cfg.transports.ws_path.clone(),
            ..WsConfig::default()
        },
    });
    let (report_tx, reports) = mpsc::unbounded_channel();
    // Reserve for this core's share of the fd limit up front: untouched
    // capacity is only virtual memory, whereas growing by doubling would copy
    // the tables and leave half of them allocated.
    let per_core = (fd_limit as usize / cfg.cores.max(1)).min(4 << 20);
    let fd_budget = std::sync::Arc::new(crate::driver::fd_budget::FdBudget::new(
        fd_limit,
        cfg.limits.fd_reserve_for(fd_limit),
    ));
    let seed = fastrand::u64(..);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut cores = Vec::with_capacity(cfg.cores);
    let mut threads = Vec::with_capacity(cfg.cores);
    for (id, listeners) in sockets_of_core.into_iter().enumerate() {
        let id = id as u16;
        let (tx, rx) = mpsc::unbounded_channel();
        cores.push(tx);
        let mut engine = EngineConfig::new(id, cfg.session, auth.clone());
        engine.slow_consumer = cfg.slow_consumer;
        engine.limits = cfg.limits.clone();
        engine.cores = cfg.cores as u16;
        engine.seed = seed ^ id as u64;
        engine.transports = transports.clone();
        let params = CoreParams {
            engine,
            link: Link::new(id, rx, report_tx.clone()),
            listeners,
            capacity: per_core,
            accepts_in_flight: ACCEPTS_IN_FLIGHT,
            fd_budget: fd_budget.clone(),
            sndbuf: cfg.limits.sndbuf,
            panic_on_accept: std::env::var("MIOP_FAILPOINT_CORE_PANIC")
                .is_ok_and(|v| v == id.to_string()),
        };
        threads.push(
            threads::spawn_core(io, params, ready_tx.clone())
                .map_err(|e| format!("cannot start core thread: {e}"))?,
        );
    }
    drop(ready_tx);
    for _ in 0..cfg.cores {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a core thread exited during start-up".into()),
        }
    }
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Gateway {
        node_id: cfg.node_id.clone(),
        incarnation: format!("{:08x}", fastrand::u32(..)),
        started: Instant::now(),
        fd_limit,
        io,
        listen_addr,
        listeners: specs,
        tls,
        drain_timeout: cfg.drain_timeout,
        cores,
        index: Mutex::new(IndexState {
            index: DeviceIndex::with_capacity((fd_limit as usize).min(4 << 20)),
            reports,
        }),
        feed: presence_feed.then(|| Arc::new(ChangeFeed::new(16, 4_000_000))),
        unacked: Mutex::new(None),
        draining: AtomicBool::new(false),
        next_message_id: AtomicU64::new(start_ms << 12),
        threads: Mutex::new(threads),
    })
}

impl Gateway {
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn next_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The session as stored in shared presence: unique across restarts.
    pub fn session_tag(&self, session_id: u64) -> String {
        format!("{}-{session_id:x}", self.incarnation)
    }

    /// Devices whose presence changed (None: standalone, nobody listens).
    pub fn presence_feed(&self) -> Option<&Arc<ChangeFeed>> {
        self.feed.as_ref()
    }

    /// Where unacked pushes of ended sessions go (offline storage). Without
    /// a sink they are dropped and counted.
    pub fn set_unacked_sink(&self, tx: mpsc::UnboundedSender<UnackedHandoff>) {
        *self.unacked.lock().unwrap() = Some(tx);
    }

    // ----- the device index ------------------------------------------------

    /// Applies the cores' reports until none is left (called before every
    /// lookup, so a lookup sees every change a core made before it).
    fn sync(&self) -> std::sync::MutexGuard<'_, IndexState> {
        let mut st = self.index.lock().unwrap();
        while let Ok(r) = st.reports.try_recv() {
            self.apply(&mut st.index, r);
        }
        st
    }

    fn apply(&self, index: &mut DeviceIndex, report: CoreReport) {
        match report {
            CoreReport::Presence { core, events } => {
                for ev in events {
                    let device = match &ev {
                        crate::engine::PresenceEvent::Online { device, .. }
                        | crate::engine::PresenceEvent::Offline { device, .. } => device.clone(),
                    };
                    if let Some(kick) = index.apply(core, ev) {
                        m::kicked(CloseReason::Replaced.name());
                        let _ = self.cores[kick.core as usize].send(Command::Kick {
                            at: kick.at,
                            reason: CloseReason::Replaced,
                        });
                    }
                    if let Some(feed) = &self.feed {
                        feed.mark(&device);
                    }
                }
            }
            CoreReport::Unacked(h) => {
                let n = h.messages.len() as u64;
                let sent = self
                    .unacked
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|tx| tx.send(h).is_ok());
                m::unacked(n, if sent { "kept_offline" } else { "dropped" });
            }
        }
    }

    /// Applies the cores' reports as they arrive. Runs on the control plane
    /// for the life of the node.
    pub async fn run_index(self: Arc<Self>) {
        std::future::poll_fn(|cx| {
            let mut guard = self.index.lock().unwrap();
            let st = &mut *guard;
            loop {
                match st.reports.poll_recv(cx) {
                    std::task::Poll::Ready(Some(r)) => self.apply(&mut st.index, r),
                    std::task::Poll::Ready(None) => return std::task::Poll::Ready(()),
                    std::task::Poll::Pending => return std::task::Poll::Pending,
                }
            }
        })
        .await
    }

    fn location(&self, device: &str) -> Option<Location> {
        self.sync().index.get(device)
    }

    /// The session holding `device` on this node, if any.
    pub fn locate(&self, device: &str) -> Option<Bound> {
        self.location(device).map(|l| Bound {
            session_id: l.session_id,
            since_ms: l.since_ms,
        })
    }

    /// Every bound device and its session (a copy; for reconciliation).
    pub fn snapshot(&self) -> Vec<(Arc<str>, Bound)> {
        self.sync()
            .index
            .snapshot()
            .into_iter()
            .map(|(d, l)| {
                (
                    d,
                    Bound {
                        session_id: l.session_id,
                        since_ms: l.since_ms,
                    },
                )
            })
            .collect()
    }

    /// Bound sessions on this node.
    pub fn sessions(&self) -> usize {
        self.sync().index.len()
    }

    // ----- commands --------------------------------------------------------

    /// Closes `device`'s session if it is still `session_id`. Returns whether
    /// a kick was sent.
    pub fn kick(&self, device: &str, session_id: u64, reason: CloseReason) -> bool {
        match self.location(device) {
            Some(l) if l.session_id == session_id => {
                m::kicked(reason.name());
                self.cores[l.core as usize]
                    .send(Command::Kick { at: l.at(), reason })
                    .is_ok()
            }
            _ => false,
        }
    }

    /// A bound session's state, from the core that holds it.
    pub async fn inspect(&self, device: &str) -> Option<SessionView> {
        let loc = self.location(device)?;
        let (reply, rx) = oneshot::channel();
        self.cores[loc.core as usize]
            .send(Command::Inspect {
                at: loc.at(),
                reply,
            })
            .ok()?;
        let view = tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .ok()?
            .ok()??;
        Some(SessionView {
            node: self.node_id.clone(),
            core: loc.core,
            peer: view.peer.to_string(),
            info: view.info,
        })
    }

    /// Queues message `id` for every target of `to` bound on this node. The
    /// Push frame is encoded once; each core makes its own copy and queues it
    /// for its own targets, a budget of sessions per turn.
    pub async fn push_local(
        &self,
        id: u64,
        to: &PushTo,
        payload: Bytes,
        ack: bool,
        keep_until_ms: Option<u64>,
    ) -> Result<LocalPush, String> {
        let frame = Frame {
            seq: 0,
            flags: if ack { FLAG_ACK_REQUIRED } else { 0 },
            body: Body::Push(Push {
                message_id: id,
                payload,
            }),
        }
        .to_bytes()
        .map_err(|e| e.to_string())?;
        let mut out = LocalPush {
            report: PushReport {
                id,
                ..PushReport::default()
            },
            not_here: Vec::new(),
        };
        let n = self.cores.len();
        // Per core, the devices of its targets (a push to named devices),
        // to name those whose session ended before the core got the push.
        let mut names: Vec<Vec<(SessionRef, &String)>> = vec![Vec::new(); n];
        let per_core: Vec<PushTargets> = match to {
            PushTo::Devices(devices) => {
                let mut lists = vec![Vec::new(); n];
                let st = self.sync();
                for d in devices {
                    match st.index.get(d) {
                        Some(l) => {
                            lists[l.core as usize].push(l.at());
                            names[l.core as usize].push((l.at(), d));
                        }
                        None => {
                            out.report.unknown += 1;
                            out.not_here.push(d.clone());
                        }
                    }
                }
                lists.into_iter().map(PushTargets::Sessions).collect()
            }
            PushTo::Topic(t) => {
                let t: Arc<str> = t.as_str().into();
                (0..n).map(|_| PushTargets::Topic(t.clone())).collect()
            }
            PushTo::All => (0..n).map(|_| PushTargets::All).collect(),
        };
        let mut replies = Vec::new();
        for (core, targets) in per_core.into_iter().enumerate() {
            if matches!(&targets, PushTargets::Sessions(l) if l.is_empty()) {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            let job = PushJob {
                tag: 0,
                targets,
                frame: frame.clone(),
                message_id: id,
                ack,
                keep_until_ms: keep_until_ms.filter(|_| ack),
            };
            if self.cores[core].send(Command::Push { job, reply }).is_ok() {
                replies.push((core, rx));
            }
        }
        for (core, rx) in replies {
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(o)) => {
                    out.report.delivered += o.delivered;
                    out.report.unknown += o.gone - o.gone_sessions.len() as u64;
                    // Ended between the lookup and the push: not here any
                    // more, so the caller looks for them like any device not
                    // held here (bound again elsewhere, or kept offline).
                    for gone in &o.gone_sessions {
                        out.report.unknown += 1;
                        if let Some((_, d)) = names[core].iter().find(|(at, _)| at == gone) {
                            out.not_here.push((*d).clone());
                        }
                    }
                }
                _ => return Err("a core did not answer in time".into()),
            }
        }
        Ok(out)
    }

    /// Counters and histograms of every core that answers within a second.
    pub async fn core_stats(&self) -> Vec<CoreStats> {
        let mut replies = Vec::new();
        for tx in &self.cores {
            let (reply, rx) = oneshot::channel();
            if tx.send(Command::Stats { reply }).is_ok() {
                replies.push(rx);
            }
        }
        let mut out = Vec::new();
        for rx in replies {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), rx).await {
                out.push(s);
            }
        }
        out
    }

    /// Stops accepting, sends Close(SERVER_SHUTDOWN) to every session and waits
    /// (at most the drain timeout plus a margin) for the cores to finish.
    pub async fn drain(&self) -> DrainReport {
        self.draining.store(true, Ordering::Relaxed);
        let mut replies = Vec::new();
        for tx in &self.cores {
            let (reply, rx) = oneshot::channel();
            let cmd = Command::Drain {
                timeout: self.drain_timeout,
                reply,
            };
            if tx.send(cmd).is_ok() {
                replies.push(rx);
            }
        }
        let mut total = DrainReport::default();
        let deadline = self.drain_timeout + Duration::from_secs(3);
        for rx in replies {
            if let Ok(Ok(r)) = tokio::time::timeout(deadline, rx).await {
                total.closed += r.closed;
                total.forced += r.forced;
            }
        }
        // Apply the last presence changes the cores sent while draining.
        drop(self.sync());
        // Core threads end when their drain completes; don't wait on a stuck one.
        for t in std::mem::take(&mut *self.threads.lock().unwrap()) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        total
    }
}
