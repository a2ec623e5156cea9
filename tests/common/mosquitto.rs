//! A private Mosquitto per test, on a free loopback port, from a config file
//! the test writes (anonymous or with a password file, no persistence), so
//! tests never depend on, or disturb, a broker the machine may run on 1883.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const MISSING: &str = "the mosquitto broker is needed by the mqtt:// tests of miop-bench \
     (Debian/Ubuntu: apt-get install mosquitto)";

impl Mosquitto {
    /// Anonymous clients allowed.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(None)
    }

    /// Only `user` with `password` may connect.
    pub fn with_login(user: &str, password: &str) -> Mosquitto {
        Mosquitto::start_with(Some((user, password)))
    }

    fn start_with(login: Option<(&str, &str)>) -> Mosquitto {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("miop-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = format!(
            "listener {port} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type error\nsys_interval 1\n"
        );
        match login {
            None => conf.push_str("allow_anonymous true\n"),
            Some((user, password)) => {
                let file = dir.join("passwd");
                let out = Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .output()
                    .expect(MISSING);
                assert!(out.status.success(), "mosquitto_passwd: {out:?}");
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
        }
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(MISSING);
        let mut m = Mosquitto { child, port, dir };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!(
                    "mosquitto exited at start ({status}); config in {}",
                    m.dir.display()
                );
            }
            assert!(
                Instant::now() < end,
                "mosquitto did not listen on {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
