//! `miop://DEVICE:KEY@host:port/` URLs, as the seed's load tests wrote them
//! (`miop://$HOSTNAME:pk@server:port/`): user = device id (or, for the load
//! generator, a device-id prefix), password = app key.

use std::fmt;
use std::str::FromStr;

use super::ClientError;

pub const DEFAULT_PORT: u16 = 7700;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiopUrl {
    pub device_id: String,
    pub app_key: String,
    pub host: String,
    pub port: u16,
}

impl MiopUrl {
    /// `host:port`, for `Client::connect` (IPv6 hosts keep their brackets).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl FromStr for MiopUrl {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<MiopUrl, ClientError> {
        let bad = |why: &str| {
            ClientError::Url(format!(
                "{why} in {s:?} (expected miop://DEVICE:KEY@HOST:PORT/)"
            ))
        };
        let rest = match s.split_once("://") {
            Some(("miop", rest)) => rest,
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme:?}"))),
            None => return Err(bad("missing scheme miop://")),
        };
        let rest = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = rest
            .rsplit_once('@')
            .ok_or_else(|| bad("missing DEVICE:KEY@"))?;
        let (device, key) = userinfo
            .split_once(':')
            .ok_or_else(|| bad("missing :KEY after the device id"))?;
        if device.is_empty() {
            return Err(bad("empty device id"));
        }
        if key.is_empty() {
            return Err(bad("empty app key"));
        }
        let (host, port) = split_host_port(hostport, DEFAULT_PORT).map_err(bad)?;
        Ok(MiopUrl {
            device_id: percent_decode(device)
                .ok_or_else(|| bad("invalid %-escape in device id"))?,
            app_key: percent_decode(key).ok_or_else(|| bad("invalid %-escape in app key"))?,
            host,
            port,
        })
    }
}

impl fmt::Display for MiopUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "miop://{}:***@{}:{}/",
            self.device_id, self.host, self.port
        )
    }
}

/// Decodes `%XX` escapes (userinfo may hold `@` or `:` escaped).
/// `HOST[:PORT]` of a URL's authority (`[v6]:port` keeps its brackets):
/// the host and the port, `default_port` when none is given; the error says
/// what is wrong. Shared by `miop://` and miop-bench's `mqtt://`.
pub(crate) fn split_host_port(
    hostport: &str,
    default_port: u16,
) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h.split_once(']').ok_or("unclosed [ in host")?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("empty host");
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("invalid port")?,
    };
    Ok((host, port))
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_url_parses() {
        let u: MiopUrl = "miop://host-1:pk@127.0.0.1:7700/".parse().unwrap();
        assert_eq!(u.device_id, "host-1");
        assert_eq!(u.app_key, "pk");
        assert_eq!(u.addr(), "127.0.0.1:7700");
        let u: MiopUrl = "miop://d%40x:k%3Ay@[::1]:9/".parse().unwrap();
        assert_eq!(
            (u.device_id.as_str(), u.app_key.as_str(), u.addr().as_str()),
            ("d@x", "k:y", "[::1]:9")
        );
        let u: MiopUrl = "miop://d:k@example".parse().unwrap();
        assert_eq!(u.port, DEFAULT_PORT);
    }

    #[test]
    fn bad_urls_say_why() {
        for (s, why) in [
            ("127.0.0.1:7700", "missing scheme"),
            ("http://d:k@h:1/", "unsupported scheme"),
            ("miop://h:1/", "missing DEVICE:KEY@"),
            ("miop://d@h:1/", "missing :KEY"),
            ("miop://:k@h:1/", "empty device id"),
            ("miop://d:@h:1/", "empty app key"),
            ("miop://d:k@h:99999/", "invalid port"),
            ("miop://d:k@:1/", "empty host"),
        ] {
            let e = s.parse::<MiopUrl>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
