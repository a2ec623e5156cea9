//! One load thread: a current-thread tokio runtime that launches its share of
//! connections, keeps each bound and heartbeating, re-establishes them after
//! failures, and records everything into its [`ThreadStats`].
//!
//! Connection `i` of the run belongs to global thread `i % total_threads`, so a
//! target of N connections is spread evenly over threads and processes.
//!
//! The connection life cycle (launch, handshake, session, close, backoff,
//! churn) is the same for both protocols; the Miop handshake and session are
//! here, their MQTT counterparts in `mqtt/session.rs`.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::cli::{BenchUrl, Plan};
use super::mqtt::{self, MqttConn};
use super::script::Script;
use super::stats::{bump, Metric, ThreadStats};
use crate::client::fleet::connect_from;
use crate::client::{Client, ClientError, Connector, MiopUrl};
use crate::protocol::{Body, Frame, FLAG_ACK_REQUIRED};

/// Handshakes (connect + bind) in flight per thread at once. Without a rate,
/// connections open as fast as the server completes them, up to this many
/// outstanding: a closed loop that finds the server's accept limit without
/// drowning it in SYN retransmits.
const HANDSHAKES_IN_FLIGHT: usize = 512;

/// Shared between the controller and every load thread of one process.
pub struct Control {
    /// Connections (global count, over all processes) that should be open.
    pub target: AtomicU64,
    pub stop: AtomicBool,
    stop_tx: watch::Sender<bool>,
}

impl Control {
    pub fn new(target: u64) -> Arc<Control> {
        let (stop_tx, _) = watch::channel(false);
        Arc::new(Control {
            target: AtomicU64::new(target),
            stop: AtomicBool::new(false),
            stop_tx,
        })
    }

    pub fn set_target(&self, n: u64) {
        self.target.store(n, Ordering::Relaxed);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stop_tx.send(true);
    }
}

/// Which connections one thread owns.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// This thread's index among all threads of all processes.
    pub global_thread: u64,
    pub total_threads: u64,
}

impl Share {
    /// The k-th connection index of this thread.
    fn index(&self, k: u64) -> u64 {
        self.global_thread + k * self.total_threads
    }

    /// How many of this thread's connections fall below `n`.
    fn count_below(&self, n: u64) -> u64 {
        if n <= self.global_thread {
            0
        } else {
            (n - self.global_thread).div_ceil(self.total_threads)
        }
    }
}

/// One load thread's state, shared by its connection tasks.
pub(super) struct Ctx {
    pub(super) plan: Arc<Plan>,
    share: Share,
    pub(super) stats: Arc<ThreadStats>,
    pub(super) control: Arc<Control>,
    script: Option<Script>,
    /// Bounds the handshakes (connect + bind) in flight.
    pub(super) handshakes: Semaphore,
    /// Churn signals of bound connections, by local number k.
    churn: RefCell<Vec<Option<Rc<Notify>>>>,
    next_seq: std::cell::Cell<u32>,
}

impl Ctx {
    /// Time to the next heartbeat: the script's delay(), else --ping-interval,
    /// else what the server announced (`announced`).
    pub(super) fn heartbeat(&self, announced: Duration) -> Duration {
        if let Some(ms) = self.script.as_ref().and_then(|sc| sc.delay_ms()) {
            return Duration::from_millis(ms);
        }
        self.plan.ping_interval.unwrap_or(announced)
    }

    /// Whether a script chooses the heartbeat intervals.
    pub(super) fn scripted_heartbeat(&self) -> bool {
        self.script.as_ref().is_some_and(|s| s.has_delay())
    }
}

/// A connection that completed its handshake, of either protocol.
enum Link {
    /// With the heartbeat interval from BindAck.
    Miop(Client, Duration),
    Mqtt(MqttConn),
}

/// Runs one load thread to completion (until `control.stop`).
pub fn run_thread(
    plan: Arc<Plan>,
    share: Share,
    stats: Arc<ThreadStats>,
    control: Arc<Control>,
    script_args: Vec<String>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let script = plan
            .script
            .as_ref()
            .and_then(|p| match Script::load(p, &script_args) {
                Ok(s) => Some(s),
                Err(e) => {
                    // Validated in the main process already; this is unexpected.
                    tracing::error!("{e}");
                    None
                }
            });
        let mine = share.count_below(plan.connections) as usize;
        let ctx = Rc::new(Ctx {
            plan,
            share,
            stats,
            control,
            script,
            handshakes: Semaphore::new(HANDSHAKES_IN_FLIGHT),
            churn: RefCell::new(vec![None; mine]),
            next_seq: std::cell::Cell::new(1),
        });
        if ctx.plan.churn_rate > 0.0 {
            tokio::task::spawn_local(churner(ctx.clone()));
        }
        launcher(ctx.clone()).await;
        // Wait for the connections to notice the stop and close cleanly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ctx.stats.connected.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Starts this thread's connections as the target allows, at the thread's
/// share of --connect-rate.
async fn launcher(ctx: Rc<Ctx>) {
    let rate = ctx
        .plan
        .connect_rate
        .map(|r| r / ctx.share.total_threads as f64);
    let pace = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_at = Instant::now();
    let mut k = 0u64;
    let mut stop_rx = ctx.control.stop_tx.subscribe();
    loop {
        if ctx.control.stop.load(Ordering::Relaxed) {
            return;
        }
        let target = ctx
            .control
            .target
            .load(Ordering::Relaxed)
            .min(ctx.plan.connections);
        if k >= ctx.share.count_below(target) {
            // Wait for a higher target (concurrency steps) or the stop.
            tokio::select! {
                _ = stop_rx.changed() => {}
                _ = sleep(Duration::from_millis(50)) => {}
            }
            next_at = Instant::now();
            continue;
        }
        if let Some(p) = pace {
            sleep_until(next_at).await;
            next_at += p;
        }
        tokio::task::spawn_local(connection(ctx.clone(), k));
        k += 1;
    }
}

/// Why a bound session ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    Stop,
    Churn,
    Failed,
}

async fn connection(ctx: Rc<Ctx>, k: u64) {
    let i = ctx.share.index(k);
    let plan = ctx.plan.clone();
    let device = plan.device_id(i);
    let src: IpAddr = plan.sources[(i % plan.sources.len() as u64) as usize];
    let dst: SocketAddr = plan.targets[(i % plan.targets.len() as u64) as usize];
    let mut stop_rx = ctx.control.stop_tx.subscribe();
    let mut failures = 0u32;
    loop {
        if ctx.control.stop.load(Ordering::Relaxed) {
            return;
        }
        let bound = match &plan.url {
            BenchUrl::Miop(url) => handshake(&ctx, url, &device, src, dst)
                .await
                .map(|(c, i)| Link::Miop(c, i)),
            BenchUrl::Mqtt(m) => mqtt::handshake(&ctx, m, &device, src, dst)
                .await
                .map(Link::Mqtt),
        };
        let mut link = match bound {
            Some(b) => {
                failures = 0;
                b
            }
            None => {
                if !plan.reconnect {
                    return;
                }
                failures += 1;
                backoff(&mut stop_rx, failures).await;
                continue;
            }
        };
        let signal = Rc::new(Notify::new());
        ctx.churn.borrow_mut()[k as usize] = Some(signal.clone());
        ctx.stats.connected.fetch_add(1, Ordering::Relaxed);
        let ended = match &mut link {
            Link::Miop(client, ack_interval) => {
                session(&ctx, client, *ack_interval, &signal, &mut stop_rx).await
            }
            Link::Mqtt(conn) => mqtt::session(&ctx, conn, &signal, &mut stop_rx).await,
        };
        ctx.stats.connected.fetch_sub(1, Ordering::Relaxed);
        ctx.churn.borrow_mut()[k as usize] = None;
        match ended {
            Ended::Stop => {
                let _ = timeout(Duration::from_secs(1), link.close()).await;
                return;
            }
            Ended::Churn => {
                let _ = timeout(Duration::from_secs(1), link.close()).await;
                bump(&ctx.stats.churned);
                // Offline for a moment, then back.
                let pause = Duration::from_millis(fastrand::u64(100..1000));
                tokio::select! {
                    _ = stop_rx.changed() => return,
                    _ = sleep(pause) => {}
                }
            }
            Ended::Failed => {
                drop(link);
                if !plan.reconnect {
                    return;
                }
                failures += 1;
                backoff(&mut stop_rx, failures).await;
            }
        }
        bump(&ctx.stats.reconnects);
    }
}

impl Link {
    /// Closes politely: Close frame or DISCONNECT, then FIN.
    async fn close(self) {
        match self {
            Link::Miop(c, _) => drop(c.close().await),
            Link::Mqtt(c) => drop(c.disconnect().await),
        }
    }
}

/// Jittered exponential backoff: 100 ms doubling to 5 s, full jitter.
async fn backoff(stop_rx: &mut watch::Receiver<bool>, failures: u32) {
    let cap = Duration::from_millis(100 * (1u64 << failures.min(6))).min(Duration::from_secs(5));
    let wait = Duration::from_millis(fastrand::u64(10..=cap.as_millis() as u64));
    tokio::select! {
        _ = stop_rx.changed() => {}
        _ = sleep(wait) => {}
    }
}

/// Connects (with the transport's handshakes) and binds, recording
/// latencies and classifying failures.
async fn handshake(
    ctx: &Ctx,
    url: &MiopUrl,
    device: &str,
    src: IpAddr,
    dst: SocketAddr,
) -> Option<(Client, Duration)> {
    let plan = &ctx.plan;
    let s = &ctx.stats;
    let _permit = ctx.handshakes.acquire().await.ok()?;
    let stream = tcp_connect(ctx, device, src, dst).await?;
    let mut client = match plan.connector.as_ref().filter(|c| !c.is_plain()) {
        // miop://: nothing between the TCP connect and the Bind.
        None => Client::from_stream(stream),
        Some(connector) => transport_handshake(ctx, connector, device, stream).await?,
    };
    let t1 = Instant::now();
    let bound = timeout(
        plan.timeout,
        client.bind(device, url.credential(), Vec::new()),
    )
    .await;
    match bound {
        Ok(Ok(ack)) => {
            s.record(Metric::Bind, t1.elapsed());
            bump(&s.binds);
            Some((
                client,
                Duration::from_millis(ack.heartbeat_interval_ms.max(1) as u64),
            ))
        }
        Ok(Err(e)) => {
            tracing::debug!(%device, error = %e, "bind failed");
            match e {
                ClientError::Rejected { .. } => bump(&s.bind_errors),
                ClientError::Closed { .. } => bump(&s.server_closes),
                _ => bump(&s.read_errors),
            }
            None
        }
        Err(_) => {
            bump(&s.timeouts);
            None
        }
    }
}

/// The TLS handshake and/or WebSocket upgrade after the TCP connect
/// (miops://, ws://, wss://), timed as [`Metric::Handshake`]; a failure, or
/// no completion within --timeout, is a handshake error. The first failure
/// of the process is logged with its reason (the preflight has already
/// checked one handshake, so these are failures under load).
async fn transport_handshake(
    ctx: &Ctx,
    connector: &Connector,
    device: &str,
    stream: tokio::net::TcpStream,
) -> Option<Client> {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    let s = &ctx.stats;
    let t0 = Instant::now();
    let why = match timeout(ctx.plan.timeout, connector.handshake(stream)).await {
        Ok(Ok(stream)) => {
            s.record(Metric::Handshake, t0.elapsed());
            return Some(Client::from_transport(stream));
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no handshake within {:?}", ctx.plan.timeout),
    };
    bump(&s.handshake_errors);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(%device, "handshake failed (the first; later ones are only counted): {why}");
    } else {
        tracing::debug!(%device, "handshake failed: {why}");
    }
    None
}

/// The TCP connect of a handshake (the caller holds a handshake permit),
/// recorded and classified the same way for both protocols.
pub(super) async fn tcp_connect(
    ctx: &Ctx,
    device: &str,
    src: IpAddr,
    dst: SocketAddr,
) -> Option<tokio::net::TcpStream> {
    let s = &ctx.stats;
    if ctx.control.stop.load(Ordering::Relaxed) {
        return None;
    }
    let t0 = Instant::now();
    match timeout(ctx.plan.timeout, connect_from(src, dst)).await {
        Ok(Ok(stream)) => {
            s.record(Metric::Connect, t0.elapsed());
            bump(&s.connects);
            Some(stream)
        }
        Ok(Err(e)) => {
            tracing::debug!(%device, error = %e, "connect failed");
            bump(&s.connect_errors);
            None
        }
        Err(_) => {
            // wrk counts a connect that never completes as a connect error.
            bump(&s.connect_errors);
            None
        }
    }
}

/// Heartbeats and receives pushes until stopped, churned or failed.
async fn session(
    ctx: &Ctx,
    client: &mut Client,
    ack_interval: Duration,
    churn: &Notify,
    stop_rx: &mut watch::Receiver<bool>,
) -> Ended {
    let s = &ctx.stats;
    let interval = || ctx.heartbeat(ack_interval);
    // Spread the first heartbeats over one interval so a ramp does not
    // synchronise every connection's pings.
    let first = interval();
    let mut next_ping = Instant::now() + first.mul_f64(fastrand::f64());
    let mut awaiting: Option<(u32, Instant)> = None;
    // One registration each for the whole session, not one per frame: at a
    // broadcast to 1M, re-arming the timer and the two notifications for
    // every push was a tenth of the load generator's CPU.
    let stop = stop_rx.changed();
    let churned = churn.notified();
    let timer = sleep_until(next_ping);
    tokio::pin!(stop, churned, timer);
    loop {
        let wake = match awaiting {
            Some((_, sent)) => sent + ctx.plan.timeout,
            None => next_ping,
        };
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            // Stop and churn last: a `Notified` in the waiting state takes
            // its list's lock at every poll, so they are polled only when
            // the timer and the socket are not ready (each time the session
            // is about to wait), not at every frame.
            biased;
            _ = &mut timer => {
                if awaiting.is_some() {
                    // No Pong within --timeout: a true timeout, and the
                    // connection is replaced.
                    bump(&s.timeouts);
                    return Ended::Failed;
                }
                let seq = ctx.next_seq.get();
                ctx.next_seq.set(seq.wrapping_add(1).max(1));
                if client.send(&Frame::ping(seq)).await.is_err() {
                    bump(&s.write_errors);
                    return Ended::Failed;
                }
                bump(&s.pings);
                awaiting = Some((seq, Instant::now()));
            }
            frame = client.recv() => match frame {
                Ok(Some(f)) => match f.body {
                    Body::Pong => {
                        if let Some((seq, sent)) = awaiting {
                            if seq == f.seq {
                                s.record(Metric::Ping, sent.elapsed());
                                bump(&s.pongs);
                                awaiting = None;
                                next_ping = Instant::now() + interval();
                            }
                        }
                    }
                    Body::Push(p) => {
                        bump(&s.pushes);
                        if let Some(sent_us) = push_timestamp(&p.payload) {
                            let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
                            s.record(Metric::Push, Duration::from_micros(now_us.saturating_sub(sent_us)));
                        }
                        if f.flags & FLAG_ACK_REQUIRED != 0 && client.ack(p.message_id).await.is_err() {
                            bump(&s.write_errors);
                            return Ended::Failed;
                        }
                    }
                    Body::Close(_) => {
                        bump(&s.server_closes);
                        return Ended::Failed;
                    }
                    _ => {}
                },
                Ok(None) | Err(_) => {
                    bump(&s.read_errors);
                    return Ended::Failed;
                }
            },
            _ = &mut stop => return Ended::Stop,
            _ = &mut churned => return Ended::Churn,
        }
    }
}

/// Push payloads that start with `t=<unix microseconds>;` carry their send
/// time; the delivery latency is measured from it (clocks must agree, which
/// they do on one machine).
pub fn push_timestamp(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"t=")?;
    let end = rest.iter().position(|b| *b == b';')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Takes a random bound connection of this thread offline (it comes back after
/// a short pause), at the thread's share of --churn-rate.
async fn churner(ctx: Rc<Ctx>) {
    let per_thread = ctx.plan.churn_rate / ctx.share.total_threads as f64;
    let pace = Duration::from_secs_f64(1.0 / per_thread.max(1e-6));
    let mut next = Instant::now() + pace;
    let mut stop_rx = ctx.control.stop_tx.subscribe();
    loop {
        tokio::select! {
            _ = stop_rx.changed() => return,
            _ = sleep_until(next) => {}
        }
        next += pace;
        let slots = ctx.churn.borrow();
        if slots.is_empty() {
            continue;
        }
        // A few random probes find a bound connection unless almost none are.
        for _ in 0..16 {
            if let Some(Some(signal)) = slots.get(fastrand::usize(..slots.len())) {
                signal.notify_one();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_partition_the_connections() {
        let total = 3;
        let shares: Vec<Share> = (0..total)
            .map(|g| Share {
                global_thread: g,
                total_threads: total,
            })
            .collect();
        for n in [0, 1, 2, 3, 10, 11] {
            let sum: u64 = shares.iter().map(|s| s.count_below(n)).sum();
            assert_eq!(sum, n, "n={n}");
        }
        assert_eq!(shares[1].index(0), 1);
        assert_eq!(shares[1].index(2), 7);
    }

    #[test]
    fn push_timestamps_are_parsed() {
        assert_eq!(
            push_timestamp(b"t=1700000000123456;hello"),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(push_timestamp(b"hello"), None);
        assert_eq!(push_timestamp(b"t=12"), None);
    }
}
