//! `mqtt://[USER[:PASS]@]HOST[:PORT][/]`: the broker and, optionally, the
//! credentials every benchmark client sends in CONNECT. Unlike `miop://`,
//! the user part is not a device-id prefix (MQTT has its own client id, set
//! by `--client-id`), so it may be left out: Mosquitto here allows anonymous
//! clients on 127.0.0.1:1883.

use std::fmt;
use std::str::FromStr;

use crate::client::{percent_decode, split_host_port};

/// The IANA port for MQTT without TLS.
pub const DEFAULT_PORT: u16 = 1883;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// Username and password for CONNECT (MQTT 3.1.1 allows a username alone).
    pub username: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    /// `host:port` (IPv6 hosts keep their brackets).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl FromStr for MqttUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<MqttUrl, String> {
        let bad = |why: &str| format!("{why} in {s:?} (expected mqtt://[USER:PASS@]HOST:PORT/)");
        let rest = s
            .strip_prefix("mqtt://")
            .ok_or_else(|| bad("missing scheme mqtt://"))?;
        let rest = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (u, None),
                };
                if user.is_empty() {
                    return Err(bad("empty user name"));
                }
                let dec = |x: &str| percent_decode(x).ok_or_else(|| bad("invalid %-escape"));
                (Some(dec(user)?), pass.map(dec).transpose()?)
            }
        };
        let (host, port) = split_host_port(hostport, DEFAULT_PORT).map_err(bad)?;
        Ok(MqttUrl {
            username,
            password,
            host,
            port,
        })
    }
}

/// The password is masked, as for `miop://` URLs in reports.
impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "mqtt://{u}:***@{}:{}/", self.host, self.port),
            (Some(u), None) => write!(f, "mqtt://{u}@{}:{}/", self.host, self.port),
            _ => write!(f, "mqtt://{}:{}/", self.host, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_credentials() {
        let u: MqttUrl = "mqtt://127.0.0.1:1883/".parse().unwrap();
        assert_eq!(
            (u.username.as_deref(), u.addr()),
            (None, "127.0.0.1:1883".into())
        );
        assert_eq!(u.to_string(), "mqtt://127.0.0.1:1883/");
        let u: MqttUrl = "mqtt://bench:s%40cret@localhost".parse().unwrap();
        assert_eq!(u.username.as_deref(), Some("bench"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.port, DEFAULT_PORT);
        assert_eq!(u.to_string(), "mqtt://bench:***@localhost:1883/");
        let u: MqttUrl = "mqtt://only@[::1]:9/".parse().unwrap();
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("only"), None)
        );
        assert_eq!(u.addr(), "[::1]:9");
        for bad in ["mqtt://:p@h:1/", "mqtt://h:0/", "mqtt:///", "http://h:1/"] {
            assert!(bad.parse::<MqttUrl>().is_err(), "{bad}");
        }
    }
}
