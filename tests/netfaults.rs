//! Network faults. The gateway, Redis and the clients run on separate
//! "hosts" (network namespaces joined by veth links, tests/common/netns.rs):
//! mobile-like links through a fault-injecting TCP proxy (300 ms RTT,
//! jitter, stalls, resets; tests/common/fault_proxy.rs), a partition between
//! the gateway and Redis, and one between the clients and the gateway, made
//! by taking a link down. Sessions must survive what does not concern them;
//! presence and offline messages must be right once the link heals.
//!
//! These tests need root (network namespaces): without it they fail and say so.

mod common;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::fault_proxy::{Connector, FaultProxy, Faults, Kill};
use common::netns::{End, Host, Net, NsRedis};
use common::*;
use miop::client::Client;
use miop::protocol::{Body, Credential, Frame, FLAG_ACK_REQUIRED};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

const TOKEN: &str = "push-secret";
/// Bound on every wait for a condition (a deadline, not a pause).
const LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Devices: one task per device that binds, heartbeats at the announced
// interval, acknowledges pushes, gives up on a silent server after the
// announced heartbeat timeout, and reconnects (when allowed) like a phone.

#[derive(Debug, Default)]
struct DevState {
    bound: bool,
    binds: u32,
    bind_failures: u32,
    last_error: String,
    pongs: u64,
    rtts: Vec<Duration>,
    /// How each bound session ended, in order.
    ends: Vec<String>,
    /// Distinct pushes in arrival order: (id, payload).
    pushes: Vec<(u64, String)>,
    duplicates: u32,
}

impl DevState {
    fn payloads(&self) -> Vec<&str> {
        self.pushes.iter().map(|(_, p)| p.as_str()).collect()
    }
}

enum Ctl {
    /// Send Close(NORMAL) and stay offline.
    Leave,
}

struct Device {
    id: String,
    state: Arc<Mutex<DevState>>,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Fleet {
    devices: Vec<Device>,
    /// Whether devices reconnect after losing their session.
    reconnect: watch::Sender<bool>,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            devices: Vec::new(),
            reconnect: watch::channel(true).0,
        }
    }

    /// Starts devices `ids` in `host`, connecting to `target`.
    fn spawn(&mut self, host: &Host, target: SocketAddr, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            let state = Arc::new(Mutex::new(DevState::default()));
            let (ctl, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(device(
                id.clone(),
                host.clone(),
                target,
                state.clone(),
                rx,
                self.reconnect.subscribe(),
            ));
            self.devices.push(Device {
                id,
                state,
                ctl,
                task,
            });
        }
    }

    fn get(&self, id: &str) -> &Device {
        self.devices
            .iter()
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("no device {id}"))
    }

    fn st(&self, id: &str) -> MutexGuard<'_, DevState> {
        self.get(id).state.lock().unwrap()
    }

    fn leave(&self, id: &str) {
        let _ = self.get(id).ctl.send(Ctl::Leave);
    }

    fn all(&self, ids: &[String], f: impl Fn(&DevState) -> bool) -> bool {
        ids.iter().all(|id| f(&self.st(id)))
    }

    fn count(&self, f: impl Fn(&DevState) -> bool) -> usize {
        self.devices
            .iter()
            .filter(|d| f(&d.state.lock().unwrap()))
            .count()
    }

    /// Ping round trips of every device: (p50, p99, max).
    fn rtt_summary(&self) -> (Duration, Duration, Duration) {
        let mut all: Vec<Duration> = self
            .devices
            .iter()
            .flat_map(|d| d.state.lock().unwrap().rtts.clone())
            .collect();
        all.sort();
        if all.is_empty() {
            return Default::default();
        }
        let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
        (at(0.5), at(0.99), *all.last().unwrap())
    }
}

async fn connect_and_bind(host: &Host, target: SocketAddr, id: &str) -> Result<Client, String> {
    let stream = host.connect(target).await.map_err(|e| e.to_string())?;
    let mut c = Client::from_stream(stream);
    c.bind(id, Credential::AppKey(KEY.into()), vec![])
        .await
        .map_err(|e| e.to_string())?;
    Ok(c)
}

async fn device(
    id: String,
    host: Host,
    target: SocketAddr,
    st: Arc<Mutex<DevState>>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    mut reconnect: watch::Receiver<bool>,
) {
    let mut rng = fastrand::Rng::with_seed(id.bytes().fold(7u64, |h, b| h * 31 + b as u64));
    let mut ever_bound = false;
    let mut attempt = 0u32;
    loop {
        if ever_bound && reconnect.wait_for(|on| *on).await.is_err() {
            return;
        }
        if attempt > 0 {
            // Jittered, capped backoff, as a phone does.
            let base = 100u64 << attempt.min(3);
            tokio::time::sleep(Duration::from_millis(base + rng.u64(0..base))).await;
        }
        attempt += 1;
        let mut c = match tokio::time::timeout(LIMIT, connect_and_bind(&host, target, &id)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let mut s = st.lock().unwrap();
                s.bind_failures += 1;
                s.last_error = e;
                continue;
            }
            Err(_) => {
                let mut s = st.lock().unwrap();
                s.bind_failures += 1;
                s.last_error = "bind timed out".into();
                continue;
            }
        };
        ever_bound = true;
        attempt = 1;
        {
            let mut s = st.lock().unwrap();
            s.bound = true;
            s.binds += 1;
        }
        let end = session(&mut c, &st, &mut ctl).await;
        {
            let mut s = st.lock().unwrap();
            s.bound = false;
            s.ends.push(end.clone());
        }
        if end == "left" {
            let _ = c.close().await;
            return;
        }
        if end == "closed: Replaced" {
            return; // a newer session holds the device: do not fight it
        }
    }
}

/// One bound session; returns how it ended.
async fn session(
    c: &mut Client,
    st: &Mutex<DevState>,
    ctl: &mut mpsc::UnboundedReceiver<Ctl>,
) -> String {
    let ack = *c.bind_ack().expect("bound");
    let interval = Duration::from_millis(ack.heartbeat_interval_ms as u64);
    let silence = Duration::from_millis(ack.heartbeat_timeout_ms as u64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_in = Instant::now();
    let mut seq = 1_000_000u32;
    let mut sent: VecDeque<(u32, Instant)> = VecDeque::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if last_in.elapsed() > silence {
                    return "silent server".into();
                }
                seq += 1;
                sent.push_back((seq, Instant::now()));
                if let Err(e) = c.send(&Frame::ping(seq)).await {
                    return format!("ping failed: {e}");
                }
            }
            cmd = ctl.recv() => match cmd {
                Some(Ctl::Leave) | None => return "left".into(),
            },
            f = c.recv() => {
                let frame = match f {
                    Ok(Some(f)) => f,
                    Ok(None) => return "eof".into(),
                    Err(e) => return format!("error: {e}"),
                };
                last_in = Instant::now();
                match frame.body {
                    Body::Pong => {
                        let mut s = st.lock().unwrap();
                        s.pongs += 1;
                        if let Some(i) = sent.iter().position(|(q, _)| *q == frame.seq) {
                            s.rtts.push(sent[i].1.elapsed());
                            sent.drain(..=i);
                        }
                    }
                    Body::Push(p) => {
                        if frame.flags & FLAG_ACK_REQUIRED != 0 {
                            if let Err(e) = c.ack(p.message_id).await {
                                return format!("ack failed: {e}");
                            }
                        }
                        let mut s = st.lock().unwrap();
                        if s.pushes.iter().any(|(id, _)| *id == p.message_id) {
                            s.duplicates += 1;
                        } else {
                            let text = String::from_utf8_lossy(&p.payload).into_owned();
                            s.pushes.push((p.message_id, text));
                        }
                    }
                    Body::Close(cl) => {
                        return match cl.reason() {
                            Some(r) => format!("closed: {r:?}"),
                            None => format!("closed: {}", cl.reason),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Gateways and helpers.

fn gateway(host: &Host, redis_url: &str, node: &str, heartbeat_timeout: &str) -> Miopd {
    let args = [
        "--cores",
        "2",
        "--redis",
        redis_url,
        "--node-id",
        node,
        "--presence-lease",
        "3s",
        "--heartbeat",
        "1s",
        "--heartbeat-timeout",
        heartbeat_timeout,
        "--push-token",
        TOKEN,
    ];
    let gw = Miopd::start_with(Options {
        args: args.iter().map(|s| s.to_string()).collect(),
        listen: Some("0.0.0.0:7700".into()),
        netns: Some(host.clone()),
        ..Options::default()
    });
    wait_until(LIMIT, "gateway connected to Redis", || {
        gw.metric("miop_redis_up") == Some(1.0)
    });
    gw
}

/// Where clients reach `gw` over a link whose gateway end has `addr`.
fn via(gw: &Miopd, addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(addr.into(), gw.listen.port())
}

/// Opens upstream connections from inside `host`.
fn connector(host: &Host) -> Connector {
    let host = host.clone();
    Arc::new(move |addr| {
        let host = host.clone();
        Box::pin(async move { host.connect(addr).await })
    })
}

fn metric(gw: &Miopd, name: &str) -> f64 {
    gw.metric(name).unwrap_or(0.0)
}

fn sessions(gw: &Miopd) -> f64 {
    metric(gw, "miop_sessions")
}

fn heartbeat_timeouts(gw: &Miopd) -> f64 {
    metric(gw, "miop_heartbeat_timeouts_total")
}

/// Where Redis says `device` is online, as `node` answers: `Some(node)` or
/// `None` (404). Panics on other answers.
fn presence(node: &Miopd, device: &str) -> Option<String> {
    let (status, body) = node.get(&format!("/v1/presence/{device}"));
    match status {
        200 => {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["node_alive"], true, "{body}");
            Some(v["node"].as_str().unwrap().to_owned())
        }
        404 => None,
        _ => panic!("/v1/presence/{device}: {status} {body}"),
    }
}

fn push_to(gw: &Miopd, devices: &[String], payload: &str) -> (u16, Value) {
    let body = serde_json::json!({"to": {"devices": devices}, "payload": payload, "ttl": 120});
    push_json(gw, TOKEN, &body.to_string())
}

fn push_one(gw: &Miopd, device: &str, payload: &str) -> (u16, Value) {
    let body = serde_json::json!({"to": {"device": device}, "payload": payload, "ttl": 120});
    push_json(gw, TOKEN, &body.to_string())
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------

/// 50 devices on mobile-like links (300 ms RTT, jitter, stalls, 32 KB/s each
/// way, through a 4 Mbit/s tbf-shaped link): they bind, heartbeat and get
/// their pushes, and the gateway closes none of them while the link is merely
/// slow. Connections the proxy resets leave the gateway at once; ones that
/// vanish silently leave it by heartbeat timeout; both leave presence, and
/// their devices bind again. Then random resets: every push with a TTL still
/// reaches every device (at-least-once), and presence ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mobile_links_keep_slow_sessions_and_lose_dead_ones() {
    let started = Instant::now();
    let net = Net::new();
    let (phones, gwh, redish) = (net.host("phones"), net.host("gw"), net.host("redis"));
    let radio = net.link(&phones, &gwh);
    radio.shape("4mbit");
    assert!(radio.qdiscs().contains("tbf"), "{}", radio.qdiscs());
    let backhaul = net.link(&gwh, &redish);
    let redis = NsRedis::start(&redish);
    let gw = gateway(&gwh, &redis.url(backhaul.addr_b), "A", "10s");
    // NETFAULTS_SEED=N replays the proxy's faults with another seed.
    let seed = std::env::var("NETFAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261101);
    let proxy = FaultProxy::start(
        phones.listen("127.0.0.1:0".parse().unwrap()).unwrap(),
        via(&gw, radio.addr_b),
        connector(&phones),
        Faults::mobile(),
        seed,
    );
    let mut fleet = Fleet::new();
    let ids = names("m", 0..50);
    fleet.spawn(&phones, proxy.addr, ids.clone());

    // 1. Slow but alive.
    wait_until(LIMIT, "50 devices bound through the proxy", || {
        fleet.all(&ids, |s| s.bound) && sessions(&gw) == 50.0
    });
    let bound_after = started.elapsed();
    wait_until(LIMIT, "presence has the 50", || consistent(&gw, 50));
    for i in 1..=5 {
        let (status, r) = push_to(&gw, &ids, &format!("p{i}"));
        assert_eq!((status, r["delivered"].as_u64()), (200, Some(50)), "{r}");
    }
    // Past the heartbeat timeout (10 s) in heartbeats, with the pushes in.
    wait_until(
        Duration::from_secs(45),
        "5 pushes and 12 pongs on every device",
        || fleet.all(&ids, |s| s.pushes.len() == 5 && s.pongs >= 12),
    );
    for id in &ids {
        let s = fleet.st(id);
        assert_eq!(s.payloads(), ["p1", "p2", "p3", "p4", "p5"], "{id}");
        assert_eq!((s.binds, s.ends.len()), (1, 0), "{id}: {:?}", s.ends);
    }
    assert_eq!(
        heartbeat_timeouts(&gw),
        0.0,
        "a slow link is not a dead one"
    );
    assert_eq!(sessions(&gw), 50.0);
    wait_until(LIMIT, "250 acks counted", || {
        metric(&gw, "miop_push_ack_latency_seconds_count") == 250.0
    });
    let (p50, p99, max) = fleet.rtt_summary();
    let stats = proxy.stats();
    eprintln!(
        "mobile (seed {seed}): 50 bound in {}, ping RTT p50 {} p99 {} max {}, {} stalls",
        secs(bound_after),
        secs(p50),
        secs(p99),
        secs(max),
        stats.stalls
    );
    assert!(
        stats.stalls > 0,
        "the link stalled at least once: {stats:?}"
    );

    // 2. Ten connections reset, ten vanish; their devices stay away for now.
    fleet.reconnect.send_replace(false);
    let cut = Instant::now();
    assert_eq!(proxy.kill(10, Kill::Reset), 10);
    assert_eq!(proxy.kill(10, Kill::Vanish), 10);
    wait_until(LIMIT, "20 devices saw their connection end", || {
        fleet.count(|s| !s.ends.is_empty()) == 20
    });
    let hit: Vec<String> = ids
        .iter()
        .filter(|id| !fleet.st(id).ends.is_empty())
        .cloned()
        .collect();
    wait_until(LIMIT, "the 10 reset sessions gone from the gateway", || {
        sessions(&gw) == 40.0
    });
    let reset_gone = cut.elapsed();
    assert_eq!(heartbeat_timeouts(&gw), 0.0);
    // The vanished ones: only the heartbeat timeout (10 s) can tell.
    wait_until(
        Duration::from_secs(10 + 5),
        "the 10 vanished sessions timed out",
        || sessions(&gw) == 30.0,
    );
    let vanished_gone = cut.elapsed();
    assert_eq!(heartbeat_timeouts(&gw), 10.0);
    wait_until(LIMIT, "presence has the 30 left", || consistent(&gw, 30));
    let presence_gone = cut.elapsed();
    for id in &hit {
        assert_eq!(gw.get(&format!("/v1/sessions/{id}")).0, 404, "{id}");
        assert_eq!(presence(&gw, id), None, "{id}");
    }
    assert_eq!(
        fleet.count(|s| s.ends.is_empty() && s.bound),
        30,
        "the others did not notice"
    );
    eprintln!(
        "mobile: reset sessions gone after {}, vanished ones after {} (heartbeat timeout 10s), presence exact after {}",
        secs(reset_gone),
        secs(vanished_gone),
        secs(presence_gone)
    );

    // 3. They come back through the same bad link.
    let back = Instant::now();
    fleet.reconnect.send_replace(true);
    wait_until(LIMIT, "all 50 bound again", || {
        fleet.all(&ids, |s| s.bound) && sessions(&gw) == 50.0
    });
    wait_until(LIMIT, "presence has the 50 again", || consistent(&gw, 50));
    let rebound = back.elapsed();
    for id in &hit {
        assert_eq!(presence(&gw, id).as_deref(), Some("A"), "{id}");
        assert_eq!(fleet.st(id).binds, 2, "{id}");
    }

    // 4. Lossy: random resets, reconnects, and pushes with a TTL meanwhile.
    proxy.set_faults(Faults {
        reset_per_sec: 0.04,
        ..Faults::mobile()
    });
    let before = proxy.stats().random_resets;
    for (i, resets) in [(6, 4), (7, 12), (8, 20)] {
        wait_until(Duration::from_secs(40), "random resets happen", || {
            proxy.stats().random_resets >= before + resets
        });
        let (status, r) = push_to(&gw, &ids, &format!("p{i}"));
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            r["delivered"].as_u64().unwrap() + r["offline"].as_u64().unwrap(),
            50,
            "every device is online or kept offline: {r}"
        );
    }
    proxy.set_faults(Faults::mobile());
    let resets = proxy.stats().random_resets - before;
    wait_until(LIMIT, "all 50 bound after the lossy spell", || {
        fleet.all(&ids, |s| s.bound) && sessions(&gw) == 50.0
    });
    wait_until(LIMIT, "every push reached every device", || {
        fleet.all(&ids, |s| s.pushes.len() == 8)
    });
    wait_until(LIMIT, "presence exact after the lossy spell", || {
        consistent(&gw, 50)
    });
    for id in &ids {
        let s = fleet.st(id);
        let mut got = s.payloads();
        got.sort();
        assert_eq!(
            got,
            ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"],
            "{id}"
        );
    }
    assert_eq!(
        heartbeat_timeouts(&gw),
        10.0,
        "only the vanished ones timed out"
    );
    let dups: u32 = ids.iter().map(|id| fleet.st(id).duplicates).sum();
    eprintln!(
        "mobile: 20 devices rebound in {}; lossy spell: {resets} random resets, {} binds in all, {dups} duplicate pushes suppressed; test took {}",
        secs(rebound),
        ids.iter().map(|id| fleet.st(id).binds).sum::<u32>(),
        secs(started.elapsed())
    );
}

/// Two gateways share presence through Redis; the link between gateway A and
/// Redis goes down (the Redis end: A sees silence, not a closed socket).
/// During the partition A keeps every session (they keep pinging; nothing is
/// closed), devices bind and leave on A, devices move from A to B, and A
/// reports Redis down. A push with a TTL through A to an offline device fails
/// visibly. B cleans up A's entries once A's lease lapses. After the heal
/// presence converges on both nodes (A's moved sessions are kicked), a push
/// kept by B for a device that was in fact online on A reaches it, and
/// offline messages are delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_gateway_and_redis_keeps_sessions_and_presence_converges() {
    let started = Instant::now();
    let net = Net::new();
    let phones = net.host("phones");
    let (gwa, gwb, redish) = (net.host("gwa"), net.host("gwb"), net.host("redis"));
    let to_a = net.link(&phones, &gwa);
    let to_b = net.link(&phones, &gwb);
    let a_redis = net.link(&gwa, &redish);
    let b_redis = net.link(&gwb, &redish);
    let redis = NsRedis::start(&redish);
    let a = gateway(&gwa, &redis.url(a_redis.addr_b), "A", "5s");
    let b = gateway(&gwb, &redis.url(b_redis.addr_b), "B", "5s");
    let (at_a, at_b) = (via(&a, to_a.addr_b), via(&b, to_b.addr_b));

    let (stay, leave, new, movers) = (
        names("a", 10..80),
        names("a", 0..10),
        names("n", 0..10),
        names("mv", 0..10),
    );
    let mut on_a = Fleet::new();
    let mut on_b = Fleet::new();
    on_a.spawn(&phones, at_a, names("a", 0..80));
    on_a.spawn(&phones, at_a, movers.clone());
    wait_until(LIMIT, "90 devices bound on A", || {
        on_a.count(|s| s.bound) == 90 && sessions(&a) == 90.0
    });
    wait_until(LIMIT, "presence has A's 90", || {
        consistent(&a, 90) && consistent(&b, 0)
    });

    // The partition.
    let pongs_at_cut: Vec<u64> = stay.iter().map(|id| on_a.st(id).pongs).collect();
    a_redis.cut(End::B);
    let cut = Instant::now();
    // Devices move to B while A cannot hear B's kicks.
    on_b.spawn(&phones, at_b, movers.clone());
    // On A: ten leave, ten new ones bind.
    for id in &leave {
        on_a.leave(id);
    }
    on_a.spawn(&phones, at_a, new.clone());
    wait_until(LIMIT, "binds and unbinds done during the partition", || {
        sessions(&b) == 10.0 && sessions(&a) == 90.0 && on_a.all(&new, |s| s.bound)
    });
    wait_until(LIMIT, "A sees Redis down", || {
        metric(&a, "miop_redis_up") == 0.0
    });
    let detected = cut.elapsed();
    let (_, health) = a.get("/healthz");
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        (h["status"].as_str(), h["presence"]["redis"].as_str()),
        (Some("ok"), Some("down")),
        "{health}"
    );

    // Local delivery does not need Redis.
    let (status, r) = push_one(&a, "a-50", "local");
    assert_eq!((status, r["delivered"].as_u64()), (200, Some(1)), "{r}");
    // A push with a TTL to an offline device: it cannot be kept, and says so.
    let t = Instant::now();
    let (off_status, off_body) = push_one(&a, "off-1", "lost?");
    let off_took = t.elapsed();
    assert_eq!(
        (off_status, &off_body["not_stored"]),
        (503, &serde_json::json!(["off-1"])),
        "a message A could not store is reported as not stored: {off_body}"
    );

    // B cleans up A once A's lease lapses: A's devices look offline to B.
    wait_until(LIMIT, "B cleaned up A's entries", || {
        metric(&b, "miop_presence_dead_node_cleanups_total") == 1.0
    });
    let cleaned = cut.elapsed();
    assert_eq!(presence(&b, "a-61"), None);
    // So B keeps a push for a-61 offline, although a-61 is online on A.
    let (status, kept) = push_one(&b, "a-61", "kept by B");
    assert_eq!((status, kept["offline"].as_u64()), (200, Some(1)), "{kept}");

    // Every session on A kept pinging through the partition.
    wait_until(LIMIT, "5 more pongs on every device of A", || {
        stay.iter()
            .zip(&pongs_at_cut)
            .all(|(id, p0)| on_a.st(id).pongs >= p0 + 5)
    });
    wait_until(LIMIT, "a-50 got its push", || {
        on_a.st("a-50").payloads() == ["local"]
    });
    for id in stay.iter().chain(&new).chain(&movers) {
        let s = on_a.st(id);
        assert!(
            s.bound && s.ends.is_empty(),
            "{id} lost its session: {:?}",
            s.ends
        );
    }
    assert_eq!(heartbeat_timeouts(&a), 0.0);
    let partition = cut.elapsed();

    // Heal.
    a_redis.heal();
    let healed = Instant::now();
    wait_until(LIMIT, "A sees Redis up", || {
        metric(&a, "miop_redis_up") == 1.0
    });
    let reconnected = healed.elapsed();
    // The movers' old sessions on A lose to their newer binds on B.
    wait_until(LIMIT, "A's movers replaced", || {
        on_a.all(&movers, |s| s.ends == ["closed: Replaced"])
    });
    wait_until(LIMIT, "presence converged on both nodes", || {
        consistent(&a, 80) && consistent(&b, 10)
    });
    let converged = healed.elapsed();
    for node in [&a, &b] {
        for id in &leave {
            assert_eq!(presence(node, id), None, "{id}");
        }
        for id in stay.iter().chain(&new) {
            assert_eq!(presence(node, id).as_deref(), Some("A"), "{id}");
        }
        for id in &movers {
            assert_eq!(presence(node, id).as_deref(), Some("B"), "{id}");
        }
    }
    assert_eq!(redis.device_entries(), 90);
    // What B kept for a-61 reaches it on A once A is back in Redis.
    wait_until(LIMIT, "a-61 got the push B kept", || {
        on_a.st("a-61").payloads() == ["kept by B"]
    });
    // No session was lost but the movers' (replaced, as they should be).
    for id in stay.iter().chain(&new) {
        let s = on_a.st(id);
        assert!(
            s.bound && s.ends.is_empty() && s.binds == 1,
            "{id}: {:?}",
            s.ends
        );
    }
    assert!(on_b.all(&movers, |s| s.bound && s.ends.is_empty()));
    assert_eq!(heartbeat_timeouts(&a), 0.0);
    assert_eq!(
        metric(&a, "miop_connections_closed_total{reason=\"replaced\"}"),
        10.0
    );

    // Offline messages after the heal: kept in order, delivered at bind.
    for i in 1..=3 {
        let (status, r) = push_one(&a, "off-2", &format!("o{i}"));
        assert_eq!((status, r["offline"].as_u64()), (200, Some(1)), "{r}");
    }
    on_a.spawn(&phones, at_a, ["off-2".to_string()]);
    wait_until(LIMIT, "off-2 got its 3 offline messages", || {
        on_a.st("off-2").pushes.len() >= 3
    });
    assert_eq!(on_a.st("off-2").payloads(), ["o1", "o2", "o3"]);
    // Nothing was kept from the push A could not store.
    assert_eq!(redis.cli(&["EXISTS", "miop:offline:off-1"]).trim(), "0");
    eprintln!(
        "partition gw-redis: A saw Redis down after {}; push to an offline device during it: {off_status} {off_body} in {}; \
         B cleaned A's entries after {}; partition lasted {}; after the heal A reconnected in {}, presence converged in {}; \
         sessions kept on A: {} of {}, 0 heartbeat timeouts; test took {}",
        secs(detected),
        secs(off_took),
        secs(cleaned),
        secs(partition),
        secs(reconnected),
        secs(converged),
        stay.len() + new.len(),
        stay.len() + new.len(),
        secs(started.elapsed())
    );
}

/// A push with a TTL is at-least-once: here it goes through B to devices that
/// Redis still says are on A, while A is cut off from Redis (before its
/// lease lapses). B routes it over A's push channel and answers "delivered";
/// Redis writes it to A's subscriber connection, which the partition holds.
/// Once the partition heals, every device must still get it. (It does
/// because that connection survives a short partition and TCP delivers what
/// waited; the test below shows what happens when it does not survive.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_routed_to_a_gateway_cut_off_from_redis_is_not_lost() {
    let net = Net::new();
    let phones = net.host("phones");
    let (gwa, gwb, redish) = (net.host("gwa"), net.host("gwb"), net.host("redis"));
    let to_a = net.link(&phones, &gwa);
    let a_redis = net.link(&gwa, &redish);
    let b_redis = net.link(&gwb, &redish);
    let redis = NsRedis::start(&redish);
    let a = gateway(&gwa, &redis.url(a_redis.addr_b), "A", "5s");
    let b = gateway(&gwb, &redis.url(b_redis.addr_b), "B", "5s");
    let ids = names("r", 0..10);
    let mut on_a = Fleet::new();
    on_a.spawn(&phones, via(&a, to_a.addr_b), ids.clone());
    wait_until(LIMIT, "10 devices bound on A, in presence", || {
        on_a.all(&ids, |s| s.bound) && consistent(&a, 10)
    });
    assert_eq!(presence(&b, "r-0").as_deref(), Some("A"));

    a_redis.cut(End::B);
    let (status, r) = push_to(&b, &ids, "via B");
    assert_eq!(status, 200, "{r}");
    eprintln!("push through B during the partition: {r}");
    wait_until(LIMIT, "B cleaned up A's entries", || {
        metric(&b, "miop_presence_dead_node_cleanups_total") == 1.0
    });
    a_redis.heal();
    wait_until(LIMIT, "presence converged", || consistent(&a, 10));
    let end = Instant::now() + LIMIT;
    while Instant::now() < end && !on_a.all(&ids, |s| s.payloads() == ["via B"]) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| on_a.st(id).payloads() != ["via B"])
        .collect();
    assert!(
        missing.is_empty(),
        "B answered {r} but {} of 10 devices never got the push ({missing:?}), \
         30 s after presence converged; Redis has offline messages for: {}",
        missing.len(),
        redis.cli(&["--scan", "--pattern", "miop:offline:*"]).trim()
    );
    assert!(on_a.all(&ids, |s| s.ends.is_empty()));
}

/// Redis drops connections whose peer stopped answering (`tcp-keepalive`,
/// 300 s by default; 1 s here to make a long partition short). After a
/// partition longer than that, Redis has forgotten gateway A's connections,
/// but A, which writes nothing on its subscriber connection, does not know:
/// it must still hear kicks and pushes routed to it once the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_partition_the_gateway_still_hears_kicks_and_routed_pushes() {
    let net = Net::new();
    let phones = net.host("phones");
    let (gwa, gwb, redish) = (net.host("gwa"), net.host("gwb"), net.host("redis"));
    let to_a = net.link(&phones, &gwa);
    let to_b = net.link(&phones, &gwb);
    let a_redis = net.link(&gwa, &redish);
    let b_redis = net.link(&gwb, &redish);
    let redis = NsRedis::start_with(&redish, &["--tcp-keepalive", "1"]);
    let a = gateway(&gwa, &redis.url(a_redis.addr_b), "A", "5s");
    let b = gateway(&gwb, &redis.url(b_redis.addr_b), "B", "5s");
    let (at_a, at_b) = (via(&a, to_a.addr_b), via(&b, to_b.addr_b));
    let ids = names("k", 0..2);
    let mut on_a = Fleet::new();
    on_a.spawn(&phones, at_a, ids.clone());
    wait_until(LIMIT, "2 devices bound on A, in presence", || {
        on_a.all(&ids, |s| s.bound) && consistent(&a, 2)
    });
    let subscribers = || {
        redis
            .cli(&["PUBSUB", "SHARDNUMSUB", "miop:push:{A}"])
            .lines()
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    assert_eq!(subscribers(), "1", "A listens on its push channel");

    a_redis.cut(End::B);
    let cut = Instant::now();
    // Redis gives up on A's connections (keepalive probes unanswered).
    wait_until(LIMIT, "Redis dropped A's subscriber connection", || {
        subscribers() == "0"
    });
    let dropped = cut.elapsed();
    a_redis.heal();
    let healed = Instant::now();
    wait_until(LIMIT, "A reconnected and presence converged", || {
        metric(&a, "miop_redis_up") == 1.0 && consistent(&a, 2)
    });
    let converged = healed.elapsed();
    // Pub/sub only reaches a node that is subscribed: wait for A's
    // subscription to be back (a push published before that is not lost
    // either: B answers 503 not_routed, tests/redis_outage.rs).
    wait_until(LIMIT, "A subscribed to its push channel again", || {
        subscribers() == "1"
    });

    // A push through B to k-0, and k-1 binding on B, must both reach A.
    let (status, r) = push_one(&b, "k-0", "via B");
    let mut on_b = Fleet::new();
    on_b.spawn(&phones, at_b, ["k-1".to_string()]);
    let end = Instant::now() + LIMIT;
    let done =
        |f: &Fleet| f.st("k-0").payloads() == ["via B"] && f.st("k-1").ends == ["closed: Replaced"];
    while Instant::now() < end && !done(&on_a) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (k0, k1) = (on_a.st("k-0").payloads().len(), on_a.st("k-1").ends.clone());
    eprintln!(
        "long partition: Redis dropped A's connections {} after the cut; after the heal A was back in presence in {}; \
         A's subscribers on its push channel now: {}; push through B: {status} {r}; k-0 got {k0} push(es); \
         k-1's old session on A ended: {k1:?}; sessions on A {} B {}",
        secs(dropped),
        secs(converged),
        subscribers(),
        sessions(&a),
        sessions(&b)
    );
    let a_conns: Vec<String> = redis
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains(&format!("addr={}:", a_redis.addr_a)))
        .map(|l| {
            let keep = ["addr=", "age=", "sub=", "ssub=", "cmd="];
            let fields = l.split_whitespace();
            let kept: Vec<&str> = fields
                .filter(|f| keep.iter().any(|k| f.starts_with(k)))
                .collect();
            kept.join(" ")
        })
        .collect();
    assert!(
        done(&on_a),
        "30 s after the heal, A still misses what Redis sends it: push through B answered {r} \
         but k-0 got {k0} push(es); k-1 bound on B but its old session on A {}; \
         subscribers of miop:push:{{A}}: {}; A's connections as Redis sees them: {a_conns:?}; \
         A's miop_redis_up: {}",
        if k1.is_empty() {
            "is still open".to_string()
        } else {
            format!("ended {k1:?}")
        },
        subscribers(),
        metric(&a, "miop_redis_up"),
    );
}

/// The link between the phones and the gateway goes down (the phones' end:
/// the gateway hears nothing more, the phones cannot send). The gateway
/// closes every session at its heartbeat timeout and presence drops them; a
/// push with a TTL sent into the dead link is never acknowledged, so it is
/// kept, and delivered once the link is back and the devices bind again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_clients_and_gateway_times_sessions_out_and_they_come_back() {
    let started = Instant::now();
    let net = Net::new();
    let (phones, gwh, redish) = (net.host("phones"), net.host("gw"), net.host("redis"));
    let radio = net.link(&phones, &gwh);
    let backhaul = net.link(&gwh, &redish);
    let redis = NsRedis::start(&redish);
    let gw = gateway(&gwh, &redis.url(backhaul.addr_b), "A", "5s");
    let ids = names("c", 0..50);
    let mut fleet = Fleet::new();
    fleet.spawn(&phones, via(&gw, radio.addr_b), ids.clone());
    wait_until(LIMIT, "50 devices bound, in presence", || {
        fleet.all(&ids, |s| s.bound) && consistent(&gw, 50)
    });

    radio.cut(End::A);
    let cut = Instant::now();
    let (status, r) = push_to(&gw, &ids, "into the tunnel");
    assert_eq!((status, r["delivered"].as_u64()), (200, Some(50)), "{r}");
    wait_until(
        Duration::from_secs(5 + 10),
        "the gateway timed out all 50",
        || sessions(&gw) == 0.0,
    );
    let timed_out = cut.elapsed();
    assert_eq!(heartbeat_timeouts(&gw), 50.0);
    wait_until(LIMIT, "presence dropped them", || consistent(&gw, 0));
    let dropped = cut.elapsed();
    for id in &ids {
        assert_eq!(presence(&gw, id), None, "{id}");
    }
    // The phones noticed too, and cannot get through.
    wait_until(
        LIMIT,
        "every phone gave up its session and failed to reconnect",
        || {
            fleet.all(&ids, |s| {
                !s.bound && s.ends.len() == 1 && s.bind_failures > 0
            })
        },
    );
    assert!(fleet.all(&ids, |s| s.ends == ["silent server"]));
    wait_until(LIMIT, "the unacked push kept for all 50", || {
        metric(&gw, "miop_unacked_pushes_total{fate=\"kept_offline\"}") == 50.0
    });

    radio.heal();
    let healed = Instant::now();
    wait_until(LIMIT, "all 50 bound again, in presence", || {
        fleet.all(&ids, |s| s.bound) && sessions(&gw) == 50.0 && consistent(&gw, 50)
    });
    let back = healed.elapsed();
    wait_until(
        LIMIT,
        "the push from the tunnel delivered to all 50",
        || fleet.all(&ids, |s| s.payloads() == ["into the tunnel"]),
    );
    let delivered = healed.elapsed();
    for id in &ids {
        assert_eq!(presence(&gw, id).as_deref(), Some("A"), "{id}");
        assert_eq!(fleet.st(id).binds, 2, "{id}");
    }
    eprintln!(
        "partition phones-gw: sessions timed out {} after the cut (heartbeat timeout 5s), presence dropped them after {}; \
         after the heal all 50 bound again and presence was exact in {}, the kept push delivered to all in {}; test took {}",
        secs(timed_out),
        secs(dropped),
        secs(back),
        secs(delivered),
        secs(started.elapsed())
    );
}

/// The fault proxy itself, on loopback against an echo server: it never
/// delivers before the latency, holds bytes while blackholed and delivers
/// them after, and a kill resets the client's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_delays_holds_and_resets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let latency = Duration::from_millis(100);
    let proxy = FaultProxy::local(
        upstream,
        Faults {
            latency,
            ..Faults::default()
        },
        1,
    )
    .await;
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = [0u8; 5];
    let t = Instant::now();
    c.write_all(b"hello").await.unwrap();
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    assert!(t.elapsed() >= 2 * latency, "{:?}", t.elapsed());

    proxy.set_latency(Duration::ZERO);
    proxy.blackhole(true);
    c.write_all(b"held!").await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
    assert!(held.is_err(), "nothing crosses a blackhole");
    proxy.blackhole(false);
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"held!");

    assert_eq!(proxy.live(), 1);
    assert_eq!(proxy.kill(5, Kill::Reset), 1);
    let err = c.read(&mut buf).await.expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    wait_until(LIMIT, "the proxy counted it", || {
        proxy.stats().killed_reset == 1 && proxy.live() == 0
    });
}
