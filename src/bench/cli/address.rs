//! Where connections come from and go to: `--bind` source addresses (each
//! one gives another ~28k ephemeral ports per target, the way past one
//! address's port limit) and `--target` gateways, as lists and ranges.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Source addresses for outgoing connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(pub Vec<IpAddr>);

/// `127.0.0.2-127.0.0.40`, `127.0.0.0/26`, `::1`, or comma-separated mixes.
pub fn parse_sources(s: &str) -> Result<Sources, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .parse()
                .map_err(|_| format!("{a:?} is not an IPv4 address in {part:?}"))?;
            let b: Ipv4Addr = b
                .parse()
                .map_err(|_| format!("{b:?} is not an IPv4 address in {part:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if a > b {
                return Err(format!("address range {part:?} is backwards"));
            }
            if b - a >= 1 << 16 {
                return Err(format!(
                    "address range {part:?} is larger than 65536 addresses"
                ));
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else if let Some((net, len)) = part.split_once('/') {
            let net: Ipv4Addr = net
                .parse()
                .map_err(|_| format!("{net:?} is not an IPv4 network in {part:?}"))?;
            let len: u32 = len
                .parse()
                .ok()
                .filter(|l| (16..=32).contains(l))
                .ok_or_else(|| format!("prefix length in {part:?} must be between 16 and 32"))?;
            let mask = if len == 32 {
                u32::MAX
            } else {
                !(u32::MAX >> len)
            };
            let base = u32::from(net) & mask;
            let size = 1u32 << (32 - len);
            // Skip the network and broadcast addresses of real subnets.
            let (first, last) = if size > 2 {
                (base + 1, base + size - 2)
            } else {
                (base, base + size - 1)
            };
            out.extend((first..=last).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(
                part.parse::<IpAddr>()
                    .map_err(|_| format!("{part:?} is not an IP address"))?,
            );
        }
    }
    if out.is_empty() {
        return Err("--bind needs at least one address".into());
    }
    Ok(Sources(out))
}

/// `HOST:PORT` or `HOST:PORT-PORT`.
pub fn parse_targets(s: &str) -> Result<Vec<SocketAddr>, String> {
    let s = s.trim();
    let (host, ports) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("target {s:?} must be HOST:PORT or HOST:PORT-PORT"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {p:?} in target {s:?}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if lo > hi {
        return Err(format!("port range {lo}-{hi} is backwards in target {s:?}"));
    }
    let base = resolve(&format!("{host}:{lo}"))?[0];
    Ok((lo..=hi).map(|p| SocketAddr::new(base.ip(), p)).collect())
}

/// Resolves `HOST:PORT` to at least one address.
pub(super) fn resolve(hostport: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {hostport}: no addresses"));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_and_targets() {
        let s = parse_sources("127.0.0.2-127.0.0.40").unwrap();
        assert_eq!(s.0.len(), 39);
        assert_eq!(s.0[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        let s = parse_sources("127.0.1.0/29").unwrap();
        assert_eq!(s.0.len(), 6);
        assert_eq!(parse_sources("127.0.0.2,127.0.0.3").unwrap().0.len(), 2);
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
        assert!(parse_sources("10.0.0.0/8").is_err());
        let t = parse_targets("127.0.0.1:7700-7702").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].port(), 7702);
        assert!(parse_targets("127.0.0.1").is_err());
        assert!(parse_targets("127.0.0.1:9-3").is_err());
    }
}
