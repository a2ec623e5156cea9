//! A private redis-server per test, on a free loopback port, so tests can kill,
//! pause and restart it without touching anyone else's Redis.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// `requirepass`, if any (then in `url()` and given to redis-cli).
    password: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            password: None,
        };
        r.spawn();
        r
    }

    /// A Redis that requires `password` (AUTH).
    pub fn start_with_password(password: &str) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            password: Some(password.to_owned()),
        };
        r.spawn();
        r
    }

    /// A port with no Redis on it yet (start it later with `restart`).
    pub fn absent() -> Redis {
        Redis {
            child: None,
            port: free_port(),
            password: None,
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                // DEBUG SLEEP, for tests of a slow Redis (`slow_down`).
                "--enable-debug-command",
                "local",
            ])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_string(), p.clone()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < end,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// kill -9: Redis loses everything (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new, empty redis-server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--no-auth-warning", "-a", p.as_str()]),
            )
            .args(args)
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

/// A Redis kept slow (see [`Redis::slow_down`]) until this is dropped.
pub struct Slowdown {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Blocks done so far.
    pub blocks: Arc<std::sync::atomic::AtomicU64>,
}

impl Redis {
    /// Makes the server slow but not hung, as a heavily loaded one is: a
    /// thread blocks it with `DEBUG SLEEP busy`, lets it serve for `gap`,
    /// and blocks it again, until the returned value is dropped. Every
    /// command that reaches it during a block waits for the block's end.
    pub fn slow_down(&self, busy: Duration, gap: Duration) -> Slowdown {
        assert!(self.password.is_none(), "slow_down sends no AUTH");
        let stop = Arc::new(AtomicBool::new(false));
        let blocks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let thread = {
            let (stop, blocks) = (stop.clone(), blocks.clone());
            std::thread::spawn(move || {
                let secs = format!("{:.3}", busy.as_secs_f64());
                let cmd = format!(
                    "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{secs}\r\n",
                    secs.len()
                );
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                while !stop.load(Ordering::Relaxed) {
                    conn.write_all(cmd.as_bytes()).unwrap();
                    let mut reply = String::new();
                    reader.read_line(&mut reply).unwrap();
                    assert_eq!(reply.trim_end(), "+OK", "DEBUG SLEEP refused");
                    blocks.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(gap);
                }
            })
        };
        Slowdown {
            stop,
            thread: Some(thread),
            blocks,
        }
    }
}

impl Drop for Slowdown {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server ignores SIGKILL until continued? No: SIGKILL works,
            // but continue it first so nothing lingers half-stopped.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        self.kill();
    }
}
