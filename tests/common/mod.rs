//! Shared test harness: a real miopd process on loopback, plus small helpers.
//!
//! Each test starts its own gateway on free ports (`127.0.0.1:0`) and reads the
//! addresses from the one `miopd ready ...` line it prints on stdout. The
//! gateway runs in its own process, so a test's client sockets and the
//! gateway's sockets count against different fd limits.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod mosquitto;
pub mod netns;
pub mod pki;
pub mod redis;
pub mod seccomp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use miop::client::{Client, ClientError};
use miop::protocol::{Body, Credential, Frame};

pub const KEY: &str = "pk";
/// The admin token every test gateway gets (`get` and `try_get` send it).
pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct Miopd {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    /// The network namespace it runs in, if any (its admin API is reached
    /// from inside it).
    netns: Option<netns::Host>,
    /// The `miopd ready ...` line.
    ready: String,
}

#[derive(Default)]
pub struct Options {
    pub args: Vec<String>,
    /// Lower RLIMIT_NOFILE (soft and hard) for the gateway process.
    pub fd_limit: Option<u64>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Deny io_uring to the gateway with a seccomp filter, as Docker >= 25
    /// and containerd 2 do by default.
    pub deny_io_uring: bool,
    /// Device listen address (default `127.0.0.1:0`).
    pub listen: Option<String>,
    /// Run the gateway inside this network namespace (`ip netns exec`); the
    /// admin API (on that namespace's loopback) is then reached from inside
    /// it, so it stays reachable whatever links a test cuts.
    pub netns: Option<netns::Host>,
}

impl Miopd {
    pub fn start(args: &[&str]) -> Miopd {
        Miopd::start_with(Options {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        })
    }

    pub fn start_with(opts: Options) -> Miopd {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("miopd-test-{}-{n}.log", std::process::id()));
        let bin = env!("CARGO_BIN_EXE_miopd");
        let mut cmd = match &opts.netns {
            Some(host) => host.command(bin),
            None => Command::new(bin),
        };
        cmd.args([
            "--listen",
            opts.listen.as_deref().unwrap_or("127.0.0.1:0"),
            "--admin",
            "127.0.0.1:0",
            "--app-key",
            KEY,
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .args(&opts.args)
        .env("MIOP_LOG", "debug")
        .env_remove("MIOP_APP_KEYS")
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
        if opts.deny_io_uring {
            seccomp::deny_io_uring(&mut cmd);
        }
        if let Some(limit) = opts.fd_limit {
            use std::os::unix::process::CommandExt;
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn miopd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("miopd did not become ready; log: {}", log.display()));
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| {
                    panic!(
                        "no {name} in {line:?}; log: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                })
                .parse()
                .unwrap()
        };
        Miopd {
            listen: field("listen="),
            admin: field("admin="),
            ready: line.clone(),
            child,
            log,
            netns: opts.netns,
        }
    }

    /// A connection to the admin API (from inside the gateway's namespace, if any).
    fn admin_stream(&self) -> std::io::Result<TcpStream> {
        match &self.netns {
            Some(host) => host.connect_std(self.admin, Duration::from_secs(10)),
            None => TcpStream::connect(self.admin),
        }
    }

    /// The address of another device listener from the ready line: "tls",
    /// "ws" or "wss".
    pub fn listener(&self, kind: &str) -> SocketAddr {
        let prefix = format!("{kind}=");
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", self.ready))
            .parse()
            .unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.listen).await.expect("connect")
    }

    /// A client bound as `device` with the test app key.
    pub async fn bound(&self, device: &str) -> Client {
        let mut c = self.client().await;
        c.bind(device, Credential::AppKey(KEY.into()), vec![])
            .await
            .expect("bind");
        c
    }

    /// `GET path` on the admin API: (status, body). Plain HTTP/1.0 over std.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|| panic!("admin API did not answer GET {path}"))
    }

    /// Like `get`, but `None` when the admin API cannot answer (e.g. while the
    /// process is out of file descriptors).
    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        self.try_get_as(path, Some(ADMIN_TOKEN))
    }

    /// `GET path` with the given bearer token (or none).
    pub fn try_get_as(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        let mut s = self.admin_stream().ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    /// `POST path` with a JSON body and an optional bearer token: (status, body).
    pub fn post(&self, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
        let mut s = self.admin_stream().expect("admin connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one sample in /metrics (`name` includes labels, if any).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.try_get("/metrics")?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Miopd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds or `limit` passes; panics with `what` then.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next frame from the server within `limit` (a deadline, not a pause).
pub async fn next_frame(c: &mut Client, limit: Duration) -> Result<Option<Frame>, ClientError> {
    tokio::time::timeout(limit, c.recv())
        .await
        .expect("no frame from server in time")
}

/// Reads frames until the server closes; returns the bodies it sent.
pub async fn frames_until_eof(c: &mut Client, limit: Duration) -> Vec<Body> {
    full_frames_until_eof(c, limit)
        .await
        .into_iter()
        .map(|f| f.body)
        .collect()
}

/// Reads frames until the server closes; returns the frames (with seq) it sent.
pub async fn full_frames_until_eof(c: &mut Client, limit: Duration) -> Vec<Frame> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, c.recv())
            .await
            .expect("server did not close in time")
        {
            Ok(Some(f)) => out.push(f),
            Ok(None) => return out,
            // A reset after the last frame still counts as closed.
            Err(ClientError::Io(_)) => return out,
            Err(e) => panic!("unexpected client error: {e}"),
        }
    }
}

/// A node sharing presence through `redis_url` (lease 3 s unless `extra`
/// names another), plus `extra` flags.
pub fn node_on(redis_url: &str, id: &str, extra: &[&str]) -> Miopd {
    let mut args = vec!["--cores", "2", "--redis", redis_url, "--node-id", id];
    if !extra.contains(&"--presence-lease") {
        args.extend_from_slice(&["--presence-lease", "3s"]);
    }
    args.extend_from_slice(extra);
    Miopd::start(&args)
}

/// One look at /v1/consistency: Redis equal to this node's memory with `n`
/// sessions, nothing missing, stale, mismatched or pending, and no
/// reconciliation running or about to (/healthz): the writer interleaves a
/// reconciliation with its batches, so Redis can look right before the
/// reconciliation after an outage has finished.
pub fn consistent(gw: &Miopd, n: u64) -> bool {
    let Some((200, body)) = gw.try_get("/v1/consistency") else {
        return false;
    };
    let c: serde_json::Value = serde_json::from_str(&body).unwrap();
    let equal = c["missing"] == 0
        && c["stale"] == 0
        && c["mismatched"] == 0
        && c["pending"] == 0
        && c["local_sessions"] == n
        && c["redis_entries"] == n;
    equal
        && gw.try_get("/healthz").is_some_and(|(_, h)| {
            let h: serde_json::Value = serde_json::from_str(&h).unwrap_or_default();
            h["presence"]["reconciling"] != true
        })
}

/// `POST /v1/push` with the bearer token; (status, JSON answer).
pub fn push_json(gw: &Miopd, token: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = gw.post("/v1/push", body, Some(token));
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// A client bound as `device` with a 4 KiB receive buffer, for tests of
/// devices that stop reading.
pub async fn sleeper(gw: &Miopd, device: &str) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.listen).await.unwrap();
    let mut c = Client::from_stream(stream);
    c.bind(device, Credential::AppKey(KEY.into()), vec![])
        .await
        .unwrap();
    c
}
