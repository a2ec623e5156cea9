//! A fault-injecting TCP proxy for tests of bad links (the kernel here has no
//! netem): it forwards each accepted connection to an upstream address and,
//! per direction, delays every chunk it reads (one-way latency plus jitter,
//! order kept as TCP keeps it), limits the bandwidth, and stalls at random
//! (a lost segment waits for its retransmission, and everything behind it
//! waits too). It resets connections at random, or when told to, and can make
//! one "vanish": the client gets a reset while the upstream side stays open
//! and silent, as when a phone loses its network without a goodbye.
//!
//! Real packet loss is what TCP turns into latency spikes and, past its
//! patience, resets: that is what this proxy produces, at the socket level.
//!
//! Faults can be changed while connections run ([`FaultProxy::set_faults`],
//! [`FaultProxy::set_latency`], [`FaultProxy::blackhole`]). Every random
//! choice comes from a generator seeded from the proxy's seed and the
//! connection's number (connections are numbered in accept order), so a run
//! is repeatable as far as the timing of the sockets allows.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What the link does to the bytes. All zero: a plain proxy.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added to every chunk in each direction (150 ms each way = 300 ms RTT).
    pub latency: Duration,
    /// Extra delay per chunk, uniform in `0..jitter`; order is kept.
    pub jitter: Duration,
    /// Chance that a chunk hits a stall: it, and everything after it in that
    /// direction, waits a stall length first.
    pub stall_chance: f64,
    /// Stall lengths, uniform in `stall_min..=stall_max`.
    pub stall_min: Duration,
    pub stall_max: Duration,
    /// Bytes per second per connection and direction (`None`: unlimited).
    pub bandwidth: Option<u64>,
    /// Chance per connection and second that the proxy resets it (both sides).
    pub reset_per_sec: f64,
}

impl Faults {
    /// A mobile-like link: 300 ms RTT with jitter, 2% of chunks stalled for
    /// 0.2-1.5 s, 32 KB/s each way. No resets (set `reset_per_sec`).
    pub fn mobile() -> Faults {
        Faults {
            latency: Duration::from_millis(150),
            jitter: Duration::from_millis(50),
            stall_chance: 0.02,
            stall_min: Duration::from_millis(200),
            stall_max: Duration::from_millis(1500),
            bandwidth: Some(32_000),
            reset_per_sec: 0.0,
        }
    }
}

/// How [`FaultProxy::kill`] ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    /// A reset to both sides (a middlebox dropped the flow).
    Reset,
    /// A reset to the client only; the upstream connection stays open and
    /// silent until the proxy is dropped (the device vanished: the server can
    /// only notice by its heartbeat timeout).
    Vanish,
}

/// Counters since the proxy started.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    /// Connections whose upstream connect failed (the client got a reset).
    pub upstream_failed: u64,
    /// Connections that ended on their own (both sides closed).
    pub closed: u64,
    /// Resets from `reset_per_sec`.
    pub random_resets: u64,
    /// Connections reset because one side failed (the other gets a reset).
    pub error_resets: u64,
    pub killed_reset: u64,
    pub killed_vanish: u64,
    pub stalls: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Opens the upstream connection (e.g. from inside a network namespace).
pub type Connector = Arc<
    dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> + Send + Sync,
>;

pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    connector: Connector,
    faults: Mutex<Faults>,
    hold: watch::Sender<bool>,
    seed: u64,
    live: Mutex<BTreeMap<u64, oneshot::Sender<Kill>>>,
    vanished: Mutex<Vec<TcpStream>>,
    stats: Mutex<Stats>,
    victims: Mutex<fastrand::Rng>,
}

#[derive(Clone, Copy)]
enum Dir {
    Up,
    Down,
}

impl FaultProxy {
    /// A proxy on `listener` to `upstream`, connecting with `connector`.
    pub fn start(
        listener: TcpListener,
        upstream: SocketAddr,
        connector: Connector,
        faults: Faults,
        seed: u64,
    ) -> FaultProxy {
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            upstream,
            connector,
            faults: Mutex::new(faults),
            hold: watch::channel(false).0,
            seed,
            live: Mutex::new(BTreeMap::new()),
            vanished: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::default()),
            victims: Mutex::new(fastrand::Rng::with_seed(seed)),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// A proxy on a free loopback port to `upstream`, in this process's namespace.
    pub async fn local(upstream: SocketAddr, faults: Faults, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connector: Connector = Arc::new(|a| Box::pin(TcpStream::connect(a)));
        FaultProxy::start(listener, upstream, connector, faults, seed)
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// New faults, for the chunks read from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// One-way latency (each direction) from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.faults.lock().unwrap().latency = latency;
    }

    /// While on, nothing is delivered in either direction (bytes wait in the
    /// proxy, connections stay open): a partition. Off delivers what waited.
    pub fn blackhole(&self, on: bool) {
        self.shared.hold.send_replace(on);
    }

    /// Ends up to `n` live connections, chosen at random (seeded); returns
    /// how many.
    pub fn kill(&self, n: usize, how: Kill) -> usize {
        let mut live = self.shared.live.lock().unwrap();
        let mut ids: Vec<u64> = live.keys().copied().collect();
        self.shared.victims.lock().unwrap().shuffle(&mut ids);
        let mut killed = 0;
        for id in ids.into_iter().take(n) {
            if let Some(tx) = live.remove(&id) {
                if tx.send(how).is_ok() {
                    killed += 1;
                }
            }
        }
        killed
    }

    /// Connections open through the proxy now (vanished ones excluded).
    pub fn live(&self) -> usize {
        self.shared.live.lock().unwrap().len()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        let live = std::mem::take(&mut *self.shared.live.lock().unwrap());
        for (_, tx) in live {
            let _ = tx.send(Kill::Reset);
        }
        self.shared.vanished.lock().unwrap().clear();
    }
}

impl Shared {
    fn faults(&self) -> Faults {
        self.faults.lock().unwrap().clone()
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap());
    }

    fn rng(&self, id: u64, stream: u64) -> fastrand::Rng {
        fastrand::Rng::with_seed(
            self.seed
                ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ stream.wrapping_mul(0xbf58_476d_1ce4_e5b9),
        )
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let next = AtomicU64::new(0);
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        shared.live.lock().unwrap().insert(id, tx);
        shared.count(|s| s.accepted += 1);
        tokio::spawn(serve(id, client, shared.clone(), rx));
    }
}

/// Closing with SO_LINGER 0 sends a reset instead of a FIN.
fn abort_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

enum End {
    Closed,
    Failed,
    Random,
    Killed(Kill),
}

async fn serve(id: u64, mut client: TcpStream, shared: Arc<Shared>, kill: oneshot::Receiver<Kill>) {
    let mut upstream = match (shared.connector)(shared.upstream).await {
        Ok(s) => s,
        Err(_) => {
            shared.live.lock().unwrap().remove(&id);
            shared.count(|s| s.upstream_failed += 1);
            abort_on_close(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut up_rng, mut down_rng, mut reset_rng) =
        (shared.rng(id, 1), shared.rng(id, 2), shared.rng(id, 3));
    let end = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = pump(cr, uw, &shared, &mut up_rng, Dir::Up);
        let down = pump(ur, cw, &shared, &mut down_rng, Dir::Down);
        let random_reset = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let p = shared.faults().reset_per_sec;
                if p > 0.0 && reset_rng.f64() < p {
                    return;
                }
            }
        };
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => if r.is_ok() { End::Closed } else { End::Failed },
            k = kill => End::Killed(k.unwrap_or(Kill::Reset)),
            () = random_reset => End::Random,
        }
    };
    shared.live.lock().unwrap().remove(&id);
    match end {
        End::Closed => shared.count(|s| s.closed += 1),
        End::Failed | End::Random | End::Killed(Kill::Reset) => {
            shared.count(|s| match end {
                End::Failed => s.error_resets += 1,
                End::Random => s.random_resets += 1,
                _ => s.killed_reset += 1,
            });
            abort_on_close(&client);
            abort_on_close(&upstream);
        }
        End::Killed(Kill::Vanish) => {
            shared.count(|s| s.killed_vanish += 1);
            abort_on_close(&client);
            shared.vanished.lock().unwrap().push(upstream);
        }
    }
}

/// One direction: reads chunks as they come, stamps each with the time the
/// link delivers it, and writes it then. EOF is passed on as a FIN once
/// everything before it is delivered.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    rng: &mut fastrand::Rng,
    dir: Dir,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<(Instant, Vec<u8>)>>();
    let read = async move {
        let now = Instant::now();
        let (mut free_at, mut last, mut stalled_until) = (now, now, now);
        loop {
            let mut buf = vec![0u8; 16 * 1024];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                let _ = tx.send(None);
                return Ok::<_, io::Error>(());
            }
            buf.truncate(n);
            shared.count(|s| match dir {
                Dir::Up => s.bytes_up += n as u64,
                Dir::Down => s.bytes_down += n as u64,
            });
            let f = shared.faults();
            let now = Instant::now();
            if f.stall_chance > 0.0 && rng.f64() < f.stall_chance {
                let (lo, hi) = (
                    f.stall_min.as_micros() as u64,
                    f.stall_max.as_micros() as u64,
                );
                stalled_until = now + Duration::from_micros(rng.u64(lo..=hi.max(lo)));
                shared.count(|s| s.stalls += 1);
            }
            free_at = match f.bandwidth {
                Some(bw) if bw > 0 => {
                    free_at.max(now) + Duration::from_secs_f64(n as f64 / bw as f64)
                }
                _ => now,
            };
            let jitter = match f.jitter.as_micros() as u64 {
                0 => Duration::ZERO,
                j => Duration::from_micros(rng.u64(0..j)),
            };
            last = (free_at + f.latency + jitter).max(stalled_until).max(last);
            let _ = tx.send(Some((last, buf)));
        }
    };
    let mut hold = shared.hold.subscribe();
    let write = async move {
        while let Some(item) = rx.recv().await {
            let Some((at, buf)) = item else {
                // Everything before the EOF is delivered: pass the FIN on.
                let _ = to.shutdown().await;
                return Ok(());
            };
            tokio::time::sleep_until(at).await;
            let _ = hold.wait_for(|on| !*on).await;
            to.write_all(&buf).await?;
        }
        Ok::<_, io::Error>(())
    };
    tokio::try_join!(read, write).map(|_| ())
}
