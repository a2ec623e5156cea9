//! TLS and WebSocket transports, miopd and Mosquitto in the same run.
//!
//! One CA and one server certificate (ECDSA P-256, rcgen) go to a temp dir;
//! miopd (`--listen-tls`) and a private Mosquitto (`certfile`/`keyfile`) both
//! serve them. Then, each server fresh for each measurement:
//!
//! 1. User-space memory per idle session: N connections (TLS_SESSIONS,
//!    default 10,000) from several loopback source addresses, each bound
//!    (Bind → BindAck; MQTT CONNECT → CONNACK), RSS growth once settled ÷ N.
//!    Plain TCP for both servers too, so the TLS overhead shows.
//! 2. TLS handshakes per second: TLS_HANDSHAKE_SECS (default 5) of full
//!    handshakes (the client never resumes) + Bind/BindAck or
//!    CONNECT/CONNACK, then close, TLS_HANDSHAKE_CONCURRENCY (default 64) at
//!    a time; handshakes/s and the server's CPU seconds (utime + stime) per
//!    1,000 handshakes. The client shares the 2 cores, so the server's CPU
//!    per handshake is the fairer comparison.
//! 3. WebSocket idle memory: N sessions on miopd's `ws=` listener (one Miop
//!    frame per binary message) and on a Mosquitto `protocol websockets`
//!    listener (subprotocol "mqtt"); each skipped with a message when the
//!    build lacks it.
//!
//! Before the runtime starts it also measures, in this process, the heap one
//! established idle TLS connection holds in miopd's transport layer
//! (`miop::transport::Wire` around rustls's `UnbufferedServerConnection`),
//! driven by an in-memory rustls client: what the TLS part of miopd's figure
//! is made of.
//!
//! Run: `cargo bench --bench transports` (env TLS_SESSIONS=N,
//! TLS_CONCURRENCY=C for the idle fleets (default 64), TLS_HANDSHAKE_SECS,
//! TLS_HANDSHAKES=M to stop after M handshakes, TLS_HANDSHAKE_CONCURRENCY;
//! MIOP_IO picks miopd's driver as usual).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use miop::client::fleet::{connect_from, FleetSpec};
use miop::protocol::{decode_buf, Bind, Body, Credential, Frame, MAX_FRAME_LEN};
use miop::transport::tls::{TlsFiles, TlsServer};
use miop::transport::ws::WsConfig;
use miop::transport::{ListenerKind, ListenerSpec, Transports, Wire};
use rustls::client::Resumption;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

mod common;
#[path = "../tests/common/pki.rs"]
mod pki;

use common::gateway_proc::GatewayProc;
use common::{cpu_secs, free_port, metric, mqtt_connect, settle_rss, Killed};

const APP_KEY: &str = "pk";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Setup {
    /// Idle sessions per measurement.
    n: usize,
    /// Connections being set up at once in the idle fleets.
    concurrency: usize,
    hs_secs: f64,
    hs_max: usize,
    hs_concurrency: usize,
    sources: Vec<IpAddr>,
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Trusts the CA; never resumes a session (every handshake is full).
    client: Arc<ClientConfig>,
}

fn bad_data(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

// ---------------------------------------------------------------- servers

fn start_miopd(s: &Setup, tag: &str) -> GatewayProc {
    let bin = std::env::var("MIOPD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_miopd").into());
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--listen-tls", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&s.cert)
        .arg("--tls-key")
        .arg(&s.key)
        .args(["--app-key", APP_KEY, "--cores", "2", "--heartbeat", "600s"])
        .env("MIOP_LOG", "warn");
    GatewayProc::start(
        cmd,
        &s.dir.join(format!("miopd-{tag}.stderr")),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("miopd: {e}"))
}

fn mosquitto_bin() -> Option<&'static str> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

struct Broker {
    proc: Killed,
    addr: SocketAddr,
}

impl Broker {
    fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

/// A private Mosquitto with one listener on a free loopback port; `extra`
/// goes after the `listener` line (certfile/keyfile, protocol). Err with
/// its stderr when it does not come up.
async fn start_mosquitto(s: &Setup, tag: &str, extra: &str) -> Result<Broker, String> {
    let bin = mosquitto_bin().ok_or("mosquitto is not installed")?;
    let port = free_port();
    let conf = s.dir.join(format!("mosquitto-{tag}.conf"));
    let stderr = s.dir.join(format!("mosquitto-{tag}.stderr"));
    // Mosquitto 2.0.11 exits ("Unable to start any listening sockets") when
    // its only listener is a websockets one: a plain one goes first.
    let companion = if extra.contains("protocol websockets") {
        format!("listener {} 127.0.0.1\n", free_port())
    } else {
        String::new()
    };
    std::fs::write(
        &conf,
        format!(
            "persistence false\nallow_anonymous true\nlog_dest stderr\nlog_type error\n\
             {companion}listener {port} 127.0.0.1\nmax_connections -1\n{extra}"
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut proc = Killed(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = proc.0.try_wait() {
            let err = std::fs::read_to_string(&stderr).unwrap_or_default();
            return Err(format!("exited at start ({status}): {}", err.trim()));
        }
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("did not listen within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The probe connection closes (a failed handshake on a TLS listener).
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Broker { proc, addr })
}

fn mosquitto_version() -> String {
    mosquitto_bin()
        .and_then(|b| Command::new(b).arg("-h").output().ok())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- clients

fn bind_frame(device: &str) -> Vec<u8> {
    Frame::new(
        1,
        Body::Bind(Bind {
            device_id: device.to_owned(),
            credential: Credential::AppKey(APP_KEY.into()),
            topics: Vec::new(),
        }),
    )
    .to_bytes()
    .expect("encode Bind")
    .to_vec()
}

fn expect_bind_ack(buf: &mut BytesMut) -> io::Result<Option<()>> {
    match decode_buf(buf, MAX_FRAME_LEN).map_err(bad_data)? {
        None => Ok(None),
        Some(f) => match f.body {
            Body::BindAck(_) => Ok(Some(())),
            other => Err(bad_data(format!("expected BindAck, got {other:?}"))),
        },
    }
}

/// Bind → BindAck over any byte stream.
async fn miop_bind<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, device: &str) -> io::Result<()> {
    s.write_all(&bind_frame(device)).await?;
    s.flush().await?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if expect_bind_ack(&mut buf)?.is_some() {
            return Ok(());
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// CONNECT → CONNACK over any byte stream.
async fn mqtt_handshake<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, id: &str) -> io::Result<()> {
    s.write_all(&mqtt_connect(id)).await?;
    s.flush().await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack != [0x20, 2, 0, 0] {
        return Err(bad_data(format!("CONNACK refused: {ack:?}")));
    }
    Ok(())
}

async fn tcp(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = connect_from(src, dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn tls(
    cfg: Arc<ClientConfig>,
    src: IpAddr,
    dst: SocketAddr,
) -> io::Result<TlsStream<TcpStream>> {
    let s = tcp(src, dst).await?;
    TlsConnector::from(cfg).connect(pki::localhost(), s).await
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket on `path`, asking for `subprotocol` if any.
async fn ws(src: IpAddr, dst: SocketAddr, path: &str, subprotocol: Option<&str>) -> io::Result<Ws> {
    let s = tcp(src, dst).await?;
    let mut req = format!("ws://{dst}{path}")
        .into_client_request()
        .map_err(io::Error::other)?;
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let (ws, _) = client_async(req, s).await.map_err(io::Error::other)?;
    Ok(ws)
}

/// The next binary message (pings are answered by tungstenite).
async fn ws_binary(ws: &mut Ws) -> io::Result<Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(other)) => return Err(bad_data(format!("expected binary, got {other:?}"))),
            Some(Err(e)) => return Err(io::Error::other(e)),
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

async fn ws_miop_bind(ws: &mut Ws, device: &str) -> io::Result<()> {
    ws.send(Message::Binary(bind_frame(device).into()))
        .await
        .map_err(io::Error::other)?;
    let msg = ws_binary(ws).await?;
    expect_bind_ack(&mut BytesMut::from(&msg[..]))?
        .ok_or_else(|| bad_data("a binary message without a whole frame"))
}

async fn ws_mqtt_connect(ws: &mut Ws, id: &str) -> io::Result<()> {
    ws.send(Message::Binary(mqtt_connect(id).into()))
        .await
        .map_err(io::Error::other)?;
    let msg = ws_binary(ws).await?;
    if msg[..] != [0x20, 2, 0, 0] {
        return Err(bad_data(format!("CONNACK refused: {msg:?}")));
    }
    Ok(())
}

// ---------------------------------------------------------------- runners

/// Opens `s.n` connections with `open(i, source)`, `s.concurrency` at a
/// time; all of them, or the first error with the connection it happened to.
async fn open_all<T, F, Fut>(s: &Setup, open: F) -> Result<(Vec<T>, f64), String>
where
    F: Fn(usize, IpAddr) -> Fut,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(s.concurrency));
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(s.n);
    for i in 0..s.n {
        let fut = open(i, s.sources[i % s.sources.len()]);
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            fut.await
        }));
    }
    let mut held = Vec::with_capacity(s.n);
    for (i, t) in tasks.into_iter().enumerate() {
        held.push(
            t.await
                .unwrap()
                .map_err(|e| format!("connection {i}: {e}"))?,
        );
    }
    Ok((held, t.elapsed().as_secs_f64()))
}

struct Idle {
    before: u64,
    after: u64,
    n: usize,
    secs: f64,
}

impl Idle {
    fn per(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.n as f64
    }
}

/// RSS of `pid` before, and with all connections `open` made held and
/// `ready` true.
async fn idle<T, F, Fut>(
    s: &Setup,
    pid: u32,
    ready: impl Fn() -> bool,
    open: F,
) -> Result<Idle, String>
where
    F: Fn(usize, IpAddr) -> Fut,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let before = settle_rss(pid).await;
    let (held, secs) = open_all(s, open).await?;
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the server did not report every session within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = settle_rss(pid).await;
    let n = held.len();
    drop(held);
    // Let the client sockets leave this process's fd table.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Idle {
        before,
        after,
        n,
        secs,
    })
}

fn sessions_are(admin: SocketAddr, n: usize) -> impl Fn() -> bool {
    move || metric(admin, "miop_sessions") == Some(n as f64)
}

struct Churn {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    secs: f64,
    server_cpu: f64,
}

impl Churn {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn cpu_per_1000(&self) -> f64 {
        self.server_cpu / self.ok.max(1) as f64 * 1000.0
    }
}

/// `op(i, source)` back to back from `s.hs_concurrency` tasks for
/// `s.hs_secs` (or `s.hs_max` operations); the server's CPU meanwhile.
async fn churn<F, Fut>(s: &Setup, pid: u32, op: F) -> Churn
where
    F: Fn(usize, IpAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new((0usize, None::<String>)));
    let sources = Arc::new(s.sources.clone());
    let (max, concurrency) = (s.hs_max, s.hs_concurrency);
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(s.hs_secs);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (op, next, ok, errors, sources) = (
            op.clone(),
            next.clone(),
            ok.clone(),
            errors.clone(),
            sources.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                match op(i, sources[i % sources.len()]).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let mut g = errors.lock().unwrap();
                        g.0 += 1;
                        g.1.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    // The server closes the last connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server_cpu = cpu_secs(pid) - cpu0;
    let (errors, first_error) = errors.lock().unwrap().clone();
    Churn {
        ok: ok.load(Ordering::Relaxed),
        errors,
        first_error,
        secs,
        server_cpu,
    }
}

// ------------------------------------------ miopd's TLS layer, in process

/// The system allocator, counting live blocks by requested size on a thread
/// that asks for it (only [`wire_heap`]'s, for a while; every other
/// allocation passes straight through after one thread-local read).
struct SizeCounting;

const SIZE_BUCKETS: usize = 16_385;
static LIVE_BY_SIZE: [AtomicIsize; SIZE_BUCKETS] = [const { AtomicIsize::new(0) }; SIZE_BUCKETS];

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize, d: isize) {
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        LIVE_BY_SIZE[size.min(SIZE_BUCKETS - 1)].fetch_add(d, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for SizeCounting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            count(l.size(), 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            count(l.size(), 1);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(l.size(), -1);
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            count(l.size(), -1);
            count(new, 1);
        }
        q
    }
}

#[global_allocator]
static ALLOC: SizeCounting = SizeCounting;

/// Heap bytes in use (all arenas, chunk sizes included), from glibc.
fn heap_in_use() -> usize {
    unsafe { libc::mallinfo2() }.uordblks
}

/// Moves the client's pending TLS records into the wire, and the wire's
/// answer (handshake records, sealed frames) into the client.
fn pump(
    t: &Transports,
    wire: &mut Wire,
    client: &mut ClientConnection,
    frames: Vec<Bytes>,
) -> Vec<u8> {
    let mut up = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut up).unwrap();
    }
    let mut plain = Vec::new();
    if !up.is_empty() {
        wire.receive(t, &up, &mut plain).expect("wire receive");
    }
    let mut out = Vec::new();
    wire.seal(frames, &mut out);
    for b in out {
        let mut rd = &b[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().expect("client TLS");
    }
    plain
}

/// What one established, bound, idle TLS connection keeps in miopd's
/// transport layer: `k` wires (exactly what miopd's engine creates per TLS
/// connection) driven through the handshake, a Bind in and one small frame
/// out by in-memory rustls clients, which are then dropped; the heap growth
/// ÷ k.
fn wire_heap(s: &Setup, k: usize) -> WireHeap {
    let server = TlsServer::load(TlsFiles {
        cert: s.cert.clone(),
        key: s.key.clone(),
        client_ca: None,
    })
    .expect("TLS config");
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let spec = ListenerSpec {
        kind: ListenerKind::Tls,
        addr,
        proxy: false,
    };
    let t = Transports {
        listeners: vec![spec],
        tls: Some(Arc::new(server)),
        ws: WsConfig::default(),
    };
    let ack = Frame::new(1, Body::Pong).to_bytes().unwrap();
    let mut wires = Vec::with_capacity(k);
    let mut clients = Vec::with_capacity(k);
    let devices: Vec<Vec<u8>> = (0..k).map(|i| bind_frame(&format!("mem-{i}"))).collect();
    let before = heap_in_use();
    COUNTING.with(|c| c.set(true));
    for (i, bind) in devices.iter().enumerate() {
        let mut wire = Wire::new(spec, &t).expect("wire").expect("a TLS wire");
        let mut client = ClientConnection::new(s.client.clone(), pki::localhost()).unwrap();
        while client.is_handshaking() || !wire.ready() {
            pump(&t, &mut wire, &mut client, Vec::new());
        }
        client.writer().write_all(bind).unwrap();
        let plain = pump(&t, &mut wire, &mut client, vec![ack.clone()]);
        assert_eq!(plain.len(), bind.len(), "the Bind {i} came through");
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        assert!(!got.is_empty(), "the reply came through");
        wires.push(wire);
        clients.push(client);
    }
    drop(clients);
    COUNTING.with(|c| c.set(false));
    let after = heap_in_use();
    drop(wires);
    let blocks: Vec<(usize, f64)> = LIVE_BY_SIZE
        .iter()
        .enumerate()
        .map(|(size, n)| (size, n.load(Ordering::Relaxed) as f64 / k as f64))
        .filter(|&(_, per)| per.abs() >= 0.05)
        .collect();
    WireHeap {
        malloc: (after as f64 - before as f64) / k as f64,
        blocks,
    }
}

/// One established idle TLS wire's heap.
struct WireHeap {
    /// Per wire, as glibc counts it (chunk headers and rounding included).
    malloc: f64,
    /// Live blocks per wire by requested size (the last bucket: larger).
    blocks: Vec<(usize, f64)>,
}

impl WireHeap {
    fn requested(&self) -> f64 {
        self.blocks.iter().map(|&(size, n)| size as f64 * n).sum()
    }

    fn describe(&self) -> String {
        let mut b = self.blocks.clone();
        b.sort_by_key(|x| std::cmp::Reverse(x.0));
        b.iter()
            .map(|&(size, n)| {
                if (n - 1.0).abs() < 0.01 {
                    format!("{size}")
                } else {
                    format!("{size}x{n:.2}")
                }
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

// ---------------------------------------------------------------- main

fn setup() -> Setup {
    let pki = pki::Pki::new("transports-bench");
    let (cert, key, _) = pki.server("server");
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let mut client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    // Full handshakes only: Mosquitto (OpenSSL) sends TLS 1.3 tickets.
    client.resumption = Resumption::disabled();
    Setup {
        n: env_or("TLS_SESSIONS", 10_000),
        concurrency: env_or("TLS_CONCURRENCY", 64),
        hs_secs: env_or("TLS_HANDSHAKE_SECS", 5.0),
        hs_max: env_or("TLS_HANDSHAKES", usize::MAX),
        hs_concurrency: env_or("TLS_HANDSHAKE_CONCURRENCY", 64),
        sources: FleetSpec::loopback_sources(8),
        dir: pki.dir.clone(),
        cert,
        key,
        client: Arc::new(client),
    }
}

fn line(server: &str, what: &str, r: &Result<Idle, String>) -> Option<f64> {
    match r {
        Ok(m) => {
            println!(
                "{server:<10} {what:<4} sessions={} rss_before={} rss_after={} growth_per_session={:.0} B  (opened in {:.2}s, {:.0}/s)",
                m.n,
                m.before,
                m.after,
                m.per(),
                m.secs,
                m.n as f64 / m.secs
            );
            Some(m.per())
        }
        Err(e) => {
            println!("{server:<10} {what:<4} skipped: {e}");
            None
        }
    }
}

fn churn_line(server: &str, c: &Churn, concurrency: usize) {
    println!(
        "{server:<10} tls handshakes: {} in {:.2}s = {:.0}/s ({} concurrent), server CPU {:.2}s = {:.3} s per 1,000 handshakes, errors {}{}",
        c.ok,
        c.secs,
        c.rate(),
        concurrency,
        c.server_cpu,
        c.cpu_per_1000(),
        c.errors,
        c.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

fn main() {
    let s = setup();
    println!(
        "binary={}",
        std::env::var("MIOPD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_miopd").into())
    );
    println!(
        "mosquitto={} sessions={} concurrency={} handshake_secs={} handshake_concurrency={} certificate=ECDSA P-256 (rcgen) in {}",
        mosquitto_version(),
        s.n,
        s.concurrency,
        s.hs_secs,
        s.hs_concurrency,
        s.dir.display()
    );

    // Single-threaded, before the runtime: the heap per established wire.
    let k = 2_000;
    let wire = wire_heap(&s, k);
    println!(
        "rustls     size_of::<UnbufferedServerConnection>()={} B, size_of::<Wire>()={} B; per established idle TLS wire (in process, {k} wires): malloc {:.0} B, requested {:.0} B in blocks of {}",
        std::mem::size_of::<UnbufferedServerConnection>(),
        std::mem::size_of::<Wire>(),
        wire.malloc,
        wire.requested(),
        wire.describe()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&s));
    let _ = std::fs::remove_dir_all(&s.dir);
}

async fn run(s: &Setup) {
    let cfg = s.client.clone();

    // A probe: what a TLS client negotiates with each server.
    {
        let gw = start_miopd(s, "probe");
        let tls_addr = gw.listener("tls").expect("miopd printed no tls= listener");
        let c = tls(cfg.clone(), s.sources[0], tls_addr)
            .await
            .expect("TLS to miopd");
        let conn = c.get_ref().1;
        println!(
            "miopd      negotiated {:?} {:?} {:?}",
            conn.protocol_version(),
            conn.negotiated_cipher_suite().map(|c| c.suite()),
            conn.negotiated_key_exchange_group().map(|g| g.name())
        );
        if let Ok(b) = start_mosquitto(
            s,
            "probe",
            &format!(
                "certfile {}\nkeyfile {}\n",
                s.cert.display(),
                s.key.display()
            ),
        )
        .await
        {
            match tls(cfg.clone(), s.sources[0], b.addr).await {
                Ok(c) => {
                    let conn = c.get_ref().1;
                    println!(
                        "mosquitto  negotiated {:?} {:?} {:?}",
                        conn.protocol_version(),
                        conn.negotiated_cipher_suite().map(|c| c.suite()),
                        conn.negotiated_key_exchange_group().map(|g| g.name())
                    );
                }
                Err(e) => println!("mosquitto  TLS probe failed: {e}"),
            }
        }
    }

    // 1. Idle memory, TCP and TLS, both servers.
    let tls_conf = format!(
        "certfile {}\nkeyfile {}\n",
        s.cert.display(),
        s.key.display()
    );
    let miopd_tcp = {
        let gw = start_miopd(s, "tcp");
        let dst = gw.listen;
        idle(
            s,
            gw.pid(),
            sessions_are(gw.admin, s.n),
            |i, src| async move {
                let mut c = tcp(src, dst).await?;
                miop_bind(&mut c, &format!("tcp-{i}")).await?;
                Ok(c)
            },
        )
        .await
    };
    let miopd_tcp = line("miopd", "tcp", &miopd_tcp);
    let miopd_tls = {
        let gw = start_miopd(s, "tls");
        let dst = gw.listener("tls").unwrap();
        let cfg = cfg.clone();
        idle(s, gw.pid(), sessions_are(gw.admin, s.n), move |i, src| {
            let cfg = cfg.clone();
            async move {
                let mut c = tls(cfg, src, dst).await?;
                miop_bind(&mut c, &format!("tls-{i}")).await?;
                Ok(c)
            }
        })
        .await
    };
    let miopd_tls = line("miopd", "tls", &miopd_tls);
    let mosq_tcp = match start_mosquitto(s, "tcp", "").await {
        Ok(b) => {
            let dst = b.addr;
            idle(
                s,
                b.pid(),
                || true,
                |i, src| async move {
                    let mut c = tcp(src, dst).await?;
                    mqtt_handshake(&mut c, &format!("tcp-{i}")).await?;
                    Ok(c)
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    let mosq_tcp = line("mosquitto", "tcp", &mosq_tcp);
    let mosq_tls = match start_mosquitto(s, "tls", &tls_conf).await {
        Ok(b) => {
            let dst = b.addr;
            let cfg = cfg.clone();
            idle(
                s,
                b.pid(),
                || true,
                move |i, src| {
                    let cfg = cfg.clone();
                    async move {
                        let mut c = tls(cfg, src, dst).await?;
                        mqtt_handshake(&mut c, &format!("tls-{i}")).await?;
                        Ok(c)
                    }
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    let mosq_tls = line("mosquitto", "tls", &mosq_tls);
    let overhead = |tls: Option<f64>, tcp: Option<f64>| match (tls, tcp) {
        (Some(a), Some(b)) => format!("{:.0} B", a - b),
        _ => "n/a".into(),
    };
    println!(
        "TLS overhead per idle session: miopd {}, mosquitto {}",
        overhead(miopd_tls, miopd_tcp),
        overhead(mosq_tls, mosq_tcp)
    );
    println!(
        "ratio miopd/mosquitto per idle session: tcp {}, tls {}",
        ratio(miopd_tcp, mosq_tcp),
        ratio(miopd_tls, mosq_tls)
    );

    // 2. Handshakes per second.
    let miopd_hs = {
        let gw = start_miopd(s, "handshakes");
        let dst = gw.listener("tls").unwrap();
        let cfg = cfg.clone();
        let c = churn(s, gw.pid(), move |i, src| {
            let cfg = cfg.clone();
            async move {
                let mut c = tls(cfg, src, dst).await?;
                miop_bind(&mut c, &format!("hs-{i}")).await
            }
        })
        .await;
        let counted = metric(
            gw.admin,
            "miop_transport_handshakes_total{transport=\"tls\"}",
        );
        churn_line("miopd", &c, s.hs_concurrency);
        println!("miopd      miop_transport_handshakes_total{{transport=\"tls\"}} = {counted:?}");
        c
    };
    let mosq_hs = match start_mosquitto(s, "handshakes", &tls_conf).await {
        Ok(b) => {
            let dst = b.addr;
            let cfg = cfg.clone();
            let c = churn(s, b.pid(), move |i, src| {
                let cfg = cfg.clone();
                async move {
                    let mut c = tls(cfg, src, dst).await?;
                    mqtt_handshake(&mut c, &format!("hs-{i}")).await
                }
            })
            .await;
            churn_line("mosquitto", &c, s.hs_concurrency);
            Some(c)
        }
        Err(e) => {
            println!("mosquitto  tls handshakes skipped: {e}");
            None
        }
    };
    if let Some(m) = &mosq_hs {
        println!(
            "ratio miopd/mosquitto: handshakes/s {:.2}, server CPU per handshake {:.2}",
            miopd_hs.rate() / m.rate(),
            miopd_hs.cpu_per_1000() / m.cpu_per_1000()
        );
    }

    // 3. WebSocket idle memory.
    let miopd_ws = {
        let gw = start_miopd(s, "ws");
        match gw.listener("ws") {
            None => Err("miopd has no WebSocket listener in this build".to_owned()),
            Some(dst) => {
                // One probe first: a build with the listener but without
                // the layer refuses the upgrade.
                let probe = async {
                    let mut c = ws(s.sources[0], dst, "/miop", None).await?;
                    ws_miop_bind(&mut c, "ws-probe").await?;
                    c.close(None).await.map_err(io::Error::other)
                };
                match probe.await {
                    Err(e) => Err(format!(
                        "miopd's ws listener did not take a WebSocket Bind ({e}): no WebSocket layer in this build"
                    )),
                    Ok(()) => {
                        let start = Instant::now();
                        while metric(gw.admin, "miop_sessions") != Some(0.0)
                            && start.elapsed() < Duration::from_secs(5)
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        idle(s, gw.pid(), sessions_are(gw.admin, s.n), |i, src| async move {
                            let mut c = ws(src, dst, "/miop", None).await?;
                            ws_miop_bind(&mut c, &format!("ws-{i}")).await?;
                            Ok(c)
                        })
                        .await
                    }
                }
            }
        }
    };
    let miopd_ws = line("miopd", "ws", &miopd_ws);
    let mosq_ws = match start_mosquitto(s, "ws", "protocol websockets\n").await {
        Ok(b) => {
            let dst = b.addr;
            idle(
                s,
                b.pid(),
                || true,
                |i, src| async move {
                    let mut c = ws(src, dst, "/mqtt", Some("mqtt")).await?;
                    ws_mqtt_connect(&mut c, &format!("ws-{i}")).await?;
                    Ok(c)
                },
            )
            .await
        }
        Err(e) => Err(format!("no websockets listener: {e}")),
    };
    let mosq_ws = line("mosquitto", "ws", &mosq_ws);
    println!(
        "ratio miopd/mosquitto per idle WebSocket session: {}",
        ratio(miopd_ws, mosq_ws)
    );

    let b = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0} B"));
    println!();
    println!("summary ({} sessions per idle figure)", s.n);
    println!("                         miopd      mosquitto  ratio");
    for (what, m, q) in [
        ("idle tcp session", miopd_tcp, mosq_tcp),
        ("idle tls session", miopd_tls, mosq_tls),
        ("idle ws session", miopd_ws, mosq_ws),
    ] {
        println!("  {what:<22} {:<10} {:<10} {}", b(m), b(q), ratio(m, q));
    }
    let rate = |c: Option<&Churn>| c.map(|c| c.rate());
    let cpu = |c: Option<&Churn>| c.map(|c| c.cpu_per_1000());
    let f = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.0}{unit}"));
    println!(
        "  {:<22} {:<10} {:<10} {}",
        "tls handshakes/s",
        f(rate(Some(&miopd_hs)), "/s"),
        f(rate(mosq_hs.as_ref()), "/s"),
        ratio(rate(Some(&miopd_hs)), rate(mosq_hs.as_ref()))
    );
    let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.3} s"));
    println!(
        "  {:<22} {:<10} {:<10} {}",
        "server CPU / 1,000 hs",
        ms(cpu(Some(&miopd_hs))),
        ms(cpu(mosq_hs.as_ref())),
        ratio(cpu(Some(&miopd_hs)), cpu(mosq_hs.as_ref()))
    );
}
