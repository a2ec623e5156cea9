//! Network namespaces for network-fault tests: "hosts" (one network
//! namespace each) joined by veth links with their own 10.0.k.0/24 subnet,
//! links that can be cut and healed (`ip link set DEV down`) and shaped with
//! the tbf qdisc, processes started inside a host with `ip netns exec`, and
//! sockets that this test process opens inside a host.
//!
//! The test process itself stays in its own namespace. A socket belongs to
//! the namespace it was created in, whichever thread uses it later, so
//! [`Host::socket`] creates it on a short-lived thread that has entered the
//! namespace (`setns`) and hands it back; tokio then drives it like any
//! other. Clients in the "clients" host, the admin API on the gateway host's
//! loopback, a fault proxy listening in the clients host: all are reached
//! that way, and none of it touches the machine's own interfaces or routes.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`): without it
//! [`Net::new`] panics with a message saying so, so the tests fail instead of
//! passing silently.
//!
//! Cleanup: dropping the [`Net`] (also while a test panics and unwinds) kills
//! whatever still runs inside its namespaces and deletes them, which deletes
//! their veths and qdiscs. Namespaces are named `miop-<pid>-<n>-<role>`. A run
//! that could not unwind (SIGKILL, Ctrl-C, abort) leaves its namespaces and
//! processes behind; the next [`Net::new`] in any test process removes the
//! namespaces of that pattern whose `<pid>` is no longer alive, after killing
//! what runs inside them. Namespaces of live processes are never touched.

use std::ffi::OsStr;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

const PREFIX: &str = "miop-";
const NETNS_DIR: &str = "/run/netns";

/// Runs `ip ARGS`; the error is its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(|_| ())
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e} (install iproute2)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and links of one test. Drop removes them all.
pub struct Net {
    id: String,
    hosts: Mutex<Vec<Host>>,
    links: AtomicUsize,
}

/// One network namespace: a "host" with a loopback and its links.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (`ip netns list`).
    pub name: Arc<str>,
    /// The short role it was created with ("gw", "redis", ...).
    pub role: Arc<str>,
}

/// One end of a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    A,
    B,
}

/// A veth pair between two hosts: `addr_a` on host `a`, `addr_b` on host `b`,
/// in their own /24.
pub struct Link {
    pub a: Host,
    pub b: Host,
    pub dev_a: String,
    pub dev_b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
}

fn require_root() {
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the network-fault tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN, for \
         `ip netns` and veth links); this process runs as uid {euid}. Run them as \
         root (e.g. `sudo -E cargo test --test netfaults`)."
    );
    if let Err(e) = run("ip", &["-V"]) {
        panic!("the network-fault tests need the `ip` command: {e}");
    }
}

/// Whether process `pid` still runs (a zombie does not: it is dead, waiting
/// for its parent to reap it).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// Kills every process inside namespace `name` and deletes it.
fn remove_namespace(name: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        eprintln!("netns: {e}");
    }
}

/// Removes namespaces `miop-<pid>-...` left behind by test processes that
/// are gone (killed before they could clean up).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let me = std::process::id() as i32;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != me && !alive(pid) {
            eprintln!("netns: removing {name}, left behind by process {pid} which is gone");
            remove_namespace(&name);
        }
    }
}

impl Net {
    /// A new, empty set of namespaces. Panics (test failure) without root.
    pub fn new() -> Net {
        static STALE: Once = Once::new();
        static N: AtomicUsize = AtomicUsize::new(0);
        require_root();
        STALE.call_once(remove_stale);
        Net {
            id: format!(
                "{PREFIX}{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            hosts: Mutex::new(Vec::new()),
            links: AtomicUsize::new(0),
        }
    }

    /// A new host (namespace) with its loopback up. `role` is short (it names
    /// the peer's veth: at most 11 bytes).
    pub fn host(&self, role: &str) -> Host {
        assert!(
            role.len() <= 11 && !role.contains('-'),
            "short role: {role}"
        );
        let name = format!("{}-{role}", self.id);
        ip(&["netns", "add", &name]).unwrap_or_else(|e| {
            panic!("{e} (the network-fault tests need CAP_SYS_ADMIN and CAP_NET_ADMIN)")
        });
        let host = Host {
            name: name.as_str().into(),
            role: role.into(),
        };
        // Registered before anything else can fail, so Drop removes it.
        self.hosts.lock().unwrap().push(host.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("{e}"));
        host
    }

    /// A veth link between `a` (10.0.k.1) and `b` (10.0.k.2), both ends up.
    /// In each host the device is named after the other end: `l<k>-<role>`.
    pub fn link(&self, a: &Host, b: &Host) -> Link {
        let k = self.links.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(k < 255, "too many links");
        let dev_a = format!("l{k}-{}", b.role);
        let dev_b = format!("l{k}-{}", a.role);
        ip(&[
            "link", "add", &dev_a, "netns", &a.name, "type", "veth", "peer", "name", &dev_b,
            "netns", &b.name,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let link = Link {
            a: a.clone(),
            b: b.clone(),
            dev_a,
            dev_b,
            addr_a: Ipv4Addr::new(10, 0, k as u8, 1),
            addr_b: Ipv4Addr::new(10, 0, k as u8, 2),
        };
        for end in [End::A, End::B] {
            let (host, dev, addr) = link.end(end);
            ip(&[
                "-n",
                &host.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        }
        link.heal();
        link
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let hosts = std::mem::take(&mut *self.hosts.lock().unwrap_or_else(|e| e.into_inner()));
        for host in hosts.iter().rev() {
            remove_namespace(&host.name);
        }
    }
}

impl Link {
    fn end(&self, end: End) -> (&Host, &str, Ipv4Addr) {
        match end {
            End::A => (&self.a, &self.dev_a, self.addr_a),
            End::B => (&self.b, &self.dev_b, self.addr_b),
        }
    }

    /// Takes one end down (`ip link set DEV down`). The other end loses its
    /// carrier and whatever it sends is dropped: it sees a silent partition
    /// (no error, no answer; new connections fail once ARP gives up), which is
    /// what a host sees when the network between it and its peer fails. The
    /// downed end's own routes go, so its sockets get "unreachable" errors.
    pub fn cut(&self, end: End) {
        let (host, dev, _) = self.end(end);
        ip(&["-n", &host.name, "link", "set", dev, "down"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Both ends up (again); their routes come back with them.
    pub fn heal(&self) {
        for end in [End::A, End::B] {
            let (host, dev, _) = self.end(end);
            ip(&["-n", &host.name, "link", "set", dev, "up"]).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Limits both directions to `rate` (tc syntax: "2mbit", "512kbit") with a
    /// token bucket filter; packets that would wait longer than 200 ms are
    /// dropped, so TCP sees loss as well as a slow link.
    pub fn shape(&self, rate: &str) {
        for end in [End::A, End::B] {
            let (host, dev, _) = self.end(end);
            run(
                "tc",
                &[
                    "-n", &host.name, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "16kb", "latency", "200ms",
                ],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// The qdiscs of both ends, as `tc qdisc show` prints them.
    pub fn qdiscs(&self) -> String {
        [End::A, End::B]
            .iter()
            .map(|&end| {
                let (host, dev, _) = self.end(end);
                run("tc", &["-n", &host.name, "qdisc", "show", "dev", dev]).unwrap_or_default()
            })
            .collect()
    }
}

impl Host {
    /// `ip netns exec NAME program`: a command that runs inside this host with
    /// the test's environment (so `MIOP_IO` and friends pass through). `ip`
    /// execs the program, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this host's network namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let path = format!("{NETNS_DIR}/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)?;
                // Only this thread moves; it ends right after `f`.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .expect("thread in a network namespace panicked")
        })
    }

    /// A new TCP/IPv4 socket in this host.
    pub fn socket(&self) -> io::Result<Socket> {
        self.enter(|| Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)))
    }

    /// Connects from this host to `addr` (tokio).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let s = self.socket()?;
        s.set_nonblocking(true)?;
        let std: std::net::TcpStream = s.into();
        tokio::net::TcpSocket::from_std_stream(std)
            .connect(addr)
            .await
    }

    /// Connects from this host to `addr` (blocking, std).
    pub fn connect_std(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<std::net::TcpStream> {
        let s = self.socket()?;
        s.connect_timeout(&addr.into(), timeout)?;
        Ok(s.into())
    }

    /// A tokio listener on `addr` in this host (call inside a runtime).
    pub fn listen(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let s = self.socket()?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(s.into())
    }
}

/// A redis-server inside a host, on port 6379 of every address of it.
pub struct NsRedis {
    child: Option<Child>,
    host: Host,
    pub port: u16,
}

impl NsRedis {
    pub fn start(host: &Host) -> NsRedis {
        NsRedis::start_with(host, &[])
    }

    /// With extra redis-server arguments (e.g. `["--tcp-keepalive", "1"]`).
    pub fn start_with(host: &Host, extra: &[&str]) -> NsRedis {
        let port = 6379;
        let child = host
            .command("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let r = NsRedis {
            child: Some(child),
            host: host.clone(),
            port,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while r.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < end,
                "redis-server did not start in {}",
                host.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// `redis://ADDR:6379`, as seen from a host linked to this one at `addr`.
    pub fn url(&self, addr: Ipv4Addr) -> String {
        format!("redis://{addr}:{}", self.port)
    }

    /// `redis-cli ARGS` inside the Redis host (works during partitions).
    pub fn cli(&self, args: &[&str]) -> String {
        self.host
            .command("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Number of device entries in Redis.
    pub fn device_entries(&self) -> usize {
        self.cli(&["--scan", "--pattern", "miop:dev:*"])
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    }
}

impl Drop for NsRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
