//! Admission control and budgets: what a node accepts before it trusts a
//! connection, and how much one connection may send.
//!
//! Every limit here is enforced on the I/O cores by the engine (so both
//! drivers get them) without any lock shared between cores: a node-wide limit
//! of N is N / cores on each core. SO_REUSEPORT spreads connections over the
//! cores by a hash of the 4-tuple, so the per-core shares add up to the
//! node's limit within a few percent; the docs say so.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open connections per source address (0: no limit).
    pub max_conns_per_ip: u32,
    /// New connections per second per source address (0: no limit); the
    /// burst allowed is twice this.
    pub accept_rate_per_ip: u32,
    /// Addresses the per-address limits do not apply to (local proxies,
    /// load-test rigs). Loopback by default.
    pub exempt: Vec<IpNet>,
    /// Bound sessions on the node (0: only the fd limit).
    pub max_sessions: u64,
    /// Successful and attempted Binds per second on the node (0: no limit);
    /// the burst allowed is one second's worth.
    pub bind_rate: u32,
    /// Frames per second one session may send (burst: twice this).
    pub frames_per_sec: u32,
    /// Bytes per second one session may send (burst: twice this).
    pub bytes_per_sec: u32,
    /// How long a session may stay over its budget (being slowed down)
    /// before it is closed with RATE_LIMITED.
    pub budget_grace: Duration,
    /// With `--slow-consumer drop-oldest`: how long a session's queue may
    /// stay over the outbound limit without the client reading before it is
    /// closed after all.
    pub stall_timeout: Duration,
    /// SO_SNDBUF of device sockets in bytes (0: the kernel's default).
    pub sndbuf: u32,
    /// File descriptors kept free for the admin API, Redis and the process:
    /// the cores stop accepting when this few are left.
    pub fd_reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns_per_ip: 1024,
            accept_rate_per_ip: 200,
            exempt: default_exempt(),
            max_sessions: 0,
            bind_rate: 20_000,
            frames_per_sec: 200,
            bytes_per_sec: 256 * 1024,
            budget_grace: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            sndbuf: 16 * 1024,
            fd_reserve: 0,
        }
    }
}

impl Limits {
    /// No admission limit and generous budgets (tests that are not about
    /// limits, and tools).
    pub fn unlimited() -> Limits {
        Limits {
            max_conns_per_ip: 0,
            accept_rate_per_ip: 0,
            exempt: Vec::new(),
            max_sessions: 0,
            bind_rate: 0,
            frames_per_sec: 1_000_000,
            bytes_per_sec: 1 << 30,
            ..Limits::default()
        }
    }
}

/// Loopback: a local TLS terminator or proxy would otherwise put every
/// device behind one address.
pub fn default_exempt() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("valid"),
        "::1/128".parse().expect("valid"),
    ]
}

/// Parses `--limit-exempt`: comma-separated CIDRs or addresses, or `none`.
pub fn parse_exempt(list: &[String]) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for item in list.iter().flat_map(|s| s.split(',')).map(str::trim) {
        if item.is_empty() || item == "none" {
            continue;
        }
        let net = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("--limit-exempt: {item:?} is not an address or CIDR"))?;
        out.push(net);
    }
    Ok(out)
}

impl Limits {
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.exempt.iter().any(|n| n.contains(&ip))
    }

    /// The fd reserve to use for a process with `fd_limit`: the configured
    /// one, or 1/64 of the limit with at least 64 (but never more than a
    /// quarter of a small limit).
    pub fn fd_reserve_for(&self, fd_limit: u64) -> u64 {
        if self.fd_reserve > 0 {
            self.fd_reserve
        } else {
            (fd_limit / 64).max(64).min(fd_limit / 4)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_lists_parse_and_match() {
        let l = Limits {
            exempt: parse_exempt(&["10.0.0.0/8, 192.0.2.7".into(), "2001:db8::/32".into()])
                .unwrap(),
            ..Limits::default()
        };
        assert!(l.is_exempt("10.1.2.3".parse().unwrap()));
        assert!(l.is_exempt("192.0.2.7".parse().unwrap()));
        assert!(!l.is_exempt("192.0.2.8".parse().unwrap()));
        assert!(l.is_exempt("2001:db8::1".parse().unwrap()));
        assert!(l.is_exempt("::ffff:10.0.0.1".parse().unwrap()), "v4-mapped");
        assert!(parse_exempt(&["none".into()]).unwrap().is_empty());
        assert!(parse_exempt(&["nope".into()]).is_err());
        assert!(Limits::default().is_exempt("127.0.0.9".parse().unwrap()));
    }

    #[test]
    fn the_fd_reserve_scales_with_the_limit() {
        let l = Limits::default();
        assert_eq!(l.fd_reserve_for(256), 64);
        assert_eq!(l.fd_reserve_for(64), 16);
        assert_eq!(l.fd_reserve_for(1_048_576), 16_384);
    }
}
