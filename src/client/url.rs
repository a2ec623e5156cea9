//! Miop URLs (PROTOCOL.md §10.2, §2): the transport, the server, the device
//! and its credential in one string, as the seed's load tests wrote them
//! (`miop://$HOSTNAME:pk@server:port/`).
//!
//! ```text
//! miop://DEVICE:KEY@HOST[:PORT]/             TCP        (port 7700)
//! miops://DEVICE:KEY@HOST[:PORT]/            TLS        (port 7701)
//! ws://DEVICE:KEY@HOST[:PORT][/PATH]         WebSocket  (port 80, path /miop)
//! wss://DEVICE:KEY@HOST[:PORT][/PATH]        WebSocket over TLS (port 443, path /miop)
//! SCHEME://DEVICE@HOST[:PORT][/PATH]?token=TOKEN     a device token instead of an app key
//! ```
//!
//! The user is the device id (or, for the load generator, a device-id
//! prefix); the password is the app key. Device id, key and token are
//! percent-decoded. A URL carries exactly one credential: an app key or a
//! `token` query parameter, never both.

use std::fmt;
use std::str::FromStr;

use super::ClientError;
use crate::protocol::Credential;

/// The port of `miop://` URLs that name none.
pub const DEFAULT_PORT: u16 = 7700;
/// The WebSocket path of `ws://` and `wss://` URLs that name none.
pub const DEFAULT_WS_PATH: &str = "/miop";

/// How a client reaches the server (PROTOCOL.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `miop://`: Miop frames straight over TCP.
    Tcp,
    /// `miops://`: over TLS, terminated by the gateway.
    Tls,
    /// `ws://`: one Miop frame per binary WebSocket message.
    Ws,
    /// `wss://`: WebSocket over TLS.
    Wss,
}

impl Scheme {
    /// The URL scheme, without `://`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Tcp => "miop",
            Scheme::Tls => "miops",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    /// The port a URL of this scheme means when it names none (WebSocket
    /// URLs use the web's ports: a gateway listening on its own WebSocket
    /// ports, 7702 and 7703, is reached with the port in the URL).
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Tcp => DEFAULT_PORT,
            Scheme::Tls => 7701,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    /// Whether the connection runs over TLS (`miops://`, `wss://`).
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss)
    }

    /// Whether Miop frames travel in WebSocket messages (`ws://`, `wss://`).
    pub fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    /// The scheme named `name` (case-insensitive, as URL schemes are).
    fn from_name(name: &str) -> Option<Scheme> {
        [Scheme::Tcp, Scheme::Tls, Scheme::Ws, Scheme::Wss]
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed Miop URL.
///
/// `Display` masks the secret (`miop://dev:***@host:7700/`), and so does
/// `Debug`: both are safe in logs and reports. [`MiopUrl::to_url_string`]
/// gives the whole URL, secret included, which parses back to an equal
/// `MiopUrl`.
#[derive(Clone, PartialEq, Eq)]
pub struct MiopUrl {
    pub scheme: Scheme,
    pub device_id: String,
    /// The app key; empty when the URL carries a token instead.
    pub app_key: String,
    /// The device token of `?token=`, if the URL carries one instead of an
    /// app key.
    pub token: Option<String>,
    /// The host as written: a name, an IPv4 address or a bracketed IPv6
    /// address (`[::1]`).
    pub host: String,
    pub port: u16,
    /// The HTTP path of the WebSocket upgrade (`ws://`, `wss://`):
    /// [`DEFAULT_WS_PATH`] when the URL has none or only `/`; kept
    /// percent-encoded, as it goes on the request line. Always `/` for
    /// `miop://` and `miops://`, which have no use for one.
    pub path: String,
}

impl MiopUrl {
    /// `host:port`, for `Client::connect` (IPv6 hosts keep their brackets).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The host without the brackets of an IPv6 address: the name to check
    /// the server's TLS certificate against (or the address, for an IP).
    pub fn host_name(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// The Bind's credential: the token if the URL carries one, else the app
    /// key.
    pub fn credential(&self) -> Credential {
        match &self.token {
            Some(t) => Credential::Token(t.clone()),
            None => Credential::AppKey(self.app_key.clone()),
        }
    }

    /// The URL with its secret masked, for logs (the same as `Display`).
    pub fn redacted(&self) -> String {
        self.to_string()
    }

    /// The whole URL, **secret included** (never log it): parsing it gives
    /// back an equal `MiopUrl`.
    pub fn to_url_string(&self) -> String {
        self.write(true)
    }

    /// The URL, with its secret or with the secret masked.
    fn write(&self, with_secret: bool) -> String {
        let mask = |s: &str| {
            if with_secret {
                percent_encode(s)
            } else {
                "***".to_owned()
            }
        };
        let mut out = format!("{}://{}", self.scheme, percent_encode(&self.device_id));
        if self.token.is_none() {
            out.push(':');
            out.push_str(&mask(&self.app_key));
        }
        out.push_str(&format!("@{}:{}{}", self.host, self.port, self.path));
        if let Some(t) = &self.token {
            out.push_str("?token=");
            out.push_str(&mask(t));
        }
        out
    }
}

impl FromStr for MiopUrl {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<MiopUrl, ClientError> {
        let bad = |why: &str| {
            ClientError::Url(format!(
                "{why} in {:?} (expected miop://DEVICE:KEY@HOST:PORT/, or \
                 miops://, ws://, wss://; ?token=TOKEN instead of :KEY)",
                redact(s)
            ))
        };
        let (scheme, rest) = match s.split_once("://") {
            Some((name, rest)) => match Scheme::from_name(name) {
                Some(scheme) => (scheme, rest),
                None => {
                    return Err(bad(&format!(
                        "unsupported scheme {name:?} (use miop, miops, ws or wss)"
                    )))
                }
            },
            None => return Err(bad("missing scheme miop://")),
        };
        // authority [path] [?query] [#fragment]
        let rest = rest.split('#').next().unwrap_or("");
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| bad("missing DEVICE@ (DEVICE:KEY@, or DEVICE@ with ?token=)"))?;
        let (device, key) = match userinfo.split_once(':') {
            Some((d, k)) => (d, Some(k)),
            None => (userinfo, None),
        };
        if device.is_empty() {
            return Err(bad("empty device id"));
        }
        let device_id =
            percent_decode(device).ok_or_else(|| bad("invalid %-escape in device id"))?;
        if device_id.chars().any(char::is_control) {
            return Err(bad("control character in device id"));
        }
        let mut token = None;
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            if name != "token" {
                return Err(bad(&format!(
                    "unknown query parameter {name:?} (only token= is understood)"
                )));
            }
            if token.is_some() {
                return Err(bad("more than one token"));
            }
            if value.is_empty() {
                return Err(bad("empty token"));
            }
            token = Some(percent_decode(value).ok_or_else(|| bad("invalid %-escape in token"))?);
        }
        let app_key = match (key, &token) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "both an app key and a token (give DEVICE:KEY@ or ?token=, not both)",
                ))
            }
            (None, None) => {
                return Err(bad(
                    "missing :KEY after the device id (or a ?token=TOKEN query)",
                ))
            }
            (Some(""), None) => return Err(bad("empty app key")),
            (Some(k), None) => {
                percent_decode(k).ok_or_else(|| bad("invalid %-escape in app key"))?
            }
            (None, Some(_)) => String::new(),
        };
        let (host, port) = split_host_port(hostport, scheme.default_port()).map_err(bad)?;
        let path = if !scheme.is_websocket() {
            "/".to_owned()
        } else if path.is_empty() || path == "/" {
            DEFAULT_WS_PATH.to_owned()
        } else {
            // Sent as is on the request line: it must be one token there.
            if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(bad("space or control character in path"));
            }
            if percent_decode(path).is_none() {
                return Err(bad("invalid %-escape in path"));
            }
            path.to_owned()
        };
        Ok(MiopUrl {
            scheme,
            device_id,
            app_key,
            token,
            host,
            port,
            path,
        })
    }
}

/// The secret is masked.
impl fmt::Display for MiopUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.write(false))
    }
}

/// The secrets are masked (an empty app key, with a token, shows as empty).
impl fmt::Debug for MiopUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.app_key.is_empty() { "" } else { "***" };
        f.debug_struct("MiopUrl")
            .field("scheme", &self.scheme)
            .field("device_id", &self.device_id)
            .field("app_key", &key)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .finish()
    }
}

/// `s` with the password and any `token=` value masked, for error messages
/// (a URL that fails to parse may still hold a real secret).
fn redact(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@').map(|i| start + i) {
            if let Some(colon) = out[start..at].find(':').map(|i| start + i) {
                out.replace_range(colon + 1..at, "***");
            }
        }
    }
    if let Some(i) = out.find("token=").map(|i| i + "token=".len()) {
        let end = out[i..].find(['&', '#']).map_or(out.len(), |j| i + j);
        out.replace_range(i..end, "***");
    }
    out
}

/// `HOST[:PORT]` of a URL's authority (`[v6]:port` keeps its brackets):
/// the host and the port, `default_port` when none is given; the error says
/// what is wrong. Shared by `miop://` and miop-bench's `mqtt://`.
pub(crate) fn split_host_port(
    hostport: &str,
    default_port: u16,
) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, after) = h.split_once(']').ok_or("unclosed [ in host")?;
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':').ok_or("junk after ] in host")?),
        };
        (format!("[{h}]"), port)
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

/// Decodes `%XX` escapes (userinfo may hold `@` or `:` escaped). `None` for
/// a `%` not followed by two hex digits, or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Escapes every byte but RFC 3986's unreserved characters, so the result
/// is safe anywhere in userinfo or a query value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> MiopUrl {
        s.parse()
            .unwrap_or_else(|e| panic!("{s} does not parse: {e}"))
    }

    #[test]
    fn seed_url_parses() {
        let u = parse("miop://host-1:pk@127.0.0.1:7700/");
        assert_eq!(u.device_id, "host-1");
        assert_eq!(u.app_key, "pk");
        assert_eq!(u.addr(), "127.0.0.1:7700");
        assert_eq!(
            (u.scheme, u.token, u.path.as_str()),
            (Scheme::Tcp, None, "/")
        );
        let u = parse("miop://d%40x:k%3Ay@[::1]:9/");
        assert_eq!(
            (u.device_id.as_str(), u.app_key.as_str(), u.addr().as_str()),
            ("d@x", "k:y", "[::1]:9")
        );
        let u = parse("miop://d:k@example");
        assert_eq!(u.port, DEFAULT_PORT);
    }

    #[test]
    fn schemes_ports_and_paths() {
        for (s, scheme, addr, path) in [
            ("miop://d:k@h", Scheme::Tcp, "h:7700", "/"),
            ("miop://d:k@h:1/ignored/path", Scheme::Tcp, "h:1", "/"),
            ("miops://d:k@h/", Scheme::Tls, "h:7701", "/"),
            ("miops://d:k@h:8443", Scheme::Tls, "h:8443", "/"),
            ("ws://d:k@h", Scheme::Ws, "h:80", "/miop"),
            ("ws://d:k@h:7702/", Scheme::Ws, "h:7702", "/miop"),
            ("ws://d:k@h/push/v1?#frag", Scheme::Ws, "h:80", "/push/v1"),
            ("wss://d:k@h", Scheme::Wss, "h:443", "/miop"),
            ("wss://d:k@h:7703/gw%20x", Scheme::Wss, "h:7703", "/gw%20x"),
            ("WSS://d:k@h/", Scheme::Wss, "h:443", "/miop"),
            ("MIOP://d:k@h/", Scheme::Tcp, "h:7700", "/"),
        ] {
            let u = parse(s);
            assert_eq!(
                (u.scheme, u.addr().as_str(), u.path.as_str()),
                (scheme, addr, path),
                "{s}"
            );
        }
        assert!(Scheme::Tls.is_tls() && Scheme::Wss.is_tls());
        assert!(!Scheme::Tcp.is_tls() && !Scheme::Ws.is_tls());
        assert!(Scheme::Ws.is_websocket() && Scheme::Wss.is_websocket());
        assert!(!Scheme::Tcp.is_websocket() && !Scheme::Tls.is_websocket());
        let names: Vec<_> = [Scheme::Tcp, Scheme::Tls, Scheme::Ws, Scheme::Wss]
            .map(Scheme::name)
            .into();
        assert_eq!(names, ["miop", "miops", "ws", "wss"]);
    }

    #[test]
    fn a_token_instead_of_an_app_key() {
        let tok = "1700000000.3f459e2a4f7c47c44a83d4ece248ff235de1b966c74deab8e76377dd70141a68";
        let u = parse(&format!("miop://dev-1@h:7700/?token={tok}"));
        assert_eq!(u.token.as_deref(), Some(tok));
        assert_eq!(u.app_key, "");
        assert_eq!(u.credential(), Credential::Token(tok.into()));
        // Percent-decoded; no path needed before the query.
        let u = parse("wss://d@h?token=a%2Bb%26c");
        assert_eq!(u.token.as_deref(), Some("a+b&c"));
        assert_eq!(u.path, "/miop");
        let u = parse("ws://d@h/custom?token=t");
        assert_eq!(
            (u.path.as_str(), u.token.as_deref()),
            ("/custom", Some("t"))
        );
        assert_eq!(
            parse("miop://d:k@h/").credential(),
            Credential::AppKey("k".into())
        );
    }

    #[test]
    fn ipv6_hosts() {
        let u = parse("miops://d:k@[2001:db8::1]/");
        assert_eq!((u.host.as_str(), u.port), ("[2001:db8::1]", 7701));
        assert_eq!(u.host_name(), "2001:db8::1");
        assert_eq!(u.addr(), "[2001:db8::1]:7701");
        let u = parse("wss://d@[::1]:7703/x?token=t");
        assert_eq!((u.addr().as_str(), u.path.as_str()), ("[::1]:7703", "/x"));
        assert_eq!(parse("ws://d:k@example.org").host_name(), "example.org");
    }

    #[test]
    fn display_masks_and_to_url_string_round_trips() {
        for s in [
            "miop://host-1:pk@127.0.0.1:7700/",
            "miops://d%40x:s3cret%3Ay%20z@[::1]:9/",
            "ws://Ger%C3%A4t:s3cret@h:80/miop",
            "wss://d@h:443/a/b%20c?token=1.abc%2B%2F",
        ] {
            let u = parse(s);
            assert_eq!(parse(&u.to_url_string()), u, "{s}");
            let shown = u.to_string();
            assert_eq!(shown, u.redacted());
            assert!(shown.contains("***"), "{shown}");
            for secret in [&u.app_key, u.token.as_ref().unwrap_or(&u.app_key)] {
                if !secret.is_empty() {
                    assert!(!shown.contains(secret.as_str()), "{shown}");
                    assert!(!format!("{u:?}").contains(secret.as_str()), "{u:?}");
                }
            }
        }
        let u = parse("miop://host-1:pk@127.0.0.1:7700/");
        assert_eq!(u.to_string(), "miop://host-1:***@127.0.0.1:7700/");
        assert_eq!(u.to_url_string(), "miop://host-1:pk@127.0.0.1:7700/");
        let u = parse("wss://d@h?token=s3cret");
        assert_eq!(u.to_string(), "wss://d@h:443/miop?token=***");
        assert_eq!(u.to_url_string(), "wss://d@h:443/miop?token=s3cret");
    }

    #[test]
    fn bad_urls_say_why() {
        for (s, why) in [
            ("127.0.0.1:7700", "missing scheme"),
            ("http://d:k@h:1/", "unsupported scheme"),
            ("mqtt://d:k@h:1/", "unsupported scheme"),
            ("miop://h:1/", "missing DEVICE@"),
            ("miop://d@h:1/", "missing :KEY"),
            ("ws://d@h:1/miop?", "missing :KEY"),
            ("miop://:k@h:1/", "empty device id"),
            ("miop://d:@h:1/", "empty app key"),
            ("miop://d:k@h:99999/", "invalid port"),
            ("miop://d:k@h:0/", "invalid port"),
            ("miop://d:k@:1/", "empty host"),
            ("miop://d:k@[::1/", "unclosed ["),
            ("miop://d:k@[::1]x/", "junk after ]"),
            ("miop://d:k@h/?token=t", "both an app key and a token"),
            ("miop://d@h/?token=", "empty token"),
            ("miop://d@h/?token=a&token=b", "more than one token"),
            ("miop://d@h/?tokne=t", "unknown query parameter"),
            ("miop://d%zz:k@h/", "invalid %-escape in device id"),
            ("miop://d%4:k@h/", "invalid %-escape in device id"),
            ("miop://d%+1:k@h/", "invalid %-escape in device id"),
            ("miop://d%0A:k@h/", "control character in device id"),
            ("miop://d:k%ff@h/", "invalid %-escape in app key"),
            ("miop://d:k%@h/", "invalid %-escape in app key"),
            ("miop://d@h/?token=%g0", "invalid %-escape in token"),
            ("ws://d:k@h/a%2", "invalid %-escape in path"),
            ("ws://d:k@h/a\tb", "control character in path"),
        ] {
            let e = s.parse::<MiopUrl>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn errors_do_not_repeat_the_secret() {
        for s in [
            "miop://d:s3cret@h:99999/",
            "miop://d:s3cret@h/?token=other",
            "miop://d@h:99999/?token=s3cret",
            "miop://d@h:0/?x=1&token=s3cret&y",
        ] {
            let e = s.parse::<MiopUrl>().unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.contains("***"), "{e}");
        }
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%20b%2fc").as_deref(), Some("a b/c"));
        assert_eq!(percent_decode("%C3%A4").as_deref(), Some("ä"));
        for s in ["%", "%2", "%zz", "%+1", "%-1", "%ff", "%C3"] {
            assert_eq!(percent_decode(s), None, "{s}");
        }
        assert_eq!(percent_encode("a b/ä~"), "a%20b%2F%C3%A4~");
    }
}
