//! How many source addresses a run needs, so miop-bench never runs out of
//! ports by default.
//!
//! A TCP connection is unique by (source address, source port, target
//! address, target port), and the kernel picks source ports from
//! `net.ipv4.ip_local_port_range` (~28k by default, ~64k widened). miop-bench
//! binds sources with `IP_BIND_ADDRESS_NO_PORT`, so each (source address,
//! target) pair could use the whole range; but the kernel's port search in
//! `connect()` walks the ports already taken on the source address, by
//! connections to any target, and slows down badly long before the range is
//! full: on this machine a 300k run over 8 source addresses and 16 targets
//! (~37k connections per address, only ~2.3k per pair) collapsed at ~220k
//! with the CPU in that search, while 100 addresses (3k each) held it and
//! 200 held 1M (5k each) (platform-facts, docs/BENCHMARKS.md). So the plan
//! is at most [`PER_ADDRESS`] connections per source address.
//!
//! On loopback targets (127.0.0.0/8) every 127.x.y.z is a local address, so
//! without `--bind` miop-bench spreads over as many as it needs, from
//! 127.0.0.2 up. An explicit `--bind` wins; a layout that cannot work (more
//! connections per pair than the port range) or that will crawl (more than
//! [`PER_ADDRESS`]) is reported as a warning.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Connections per source address the plan stays under.
pub const PER_ADDRESS: u64 = 5_000;

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
pub fn port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The source addresses for a run and any warnings about the layout.
/// `given`: `--bind`, if any; `ports`: the ephemeral port range.
pub fn choose(
    given: Option<&[IpAddr]>,
    targets: &[SocketAddr],
    connections: u64,
    ports: (u16, u16),
) -> (Vec<IpAddr>, Vec<String>) {
    let range = u64::from(ports.1.saturating_sub(ports.0)) + 1;
    let per_target = connections.div_ceil(targets.len().max(1) as u64);
    let mut warnings = Vec::new();
    let loopback = targets
        .iter()
        .all(|t| matches!(t.ip(), IpAddr::V4(ip) if ip.is_loopback()));
    let sources = match given {
        Some(s) => s.to_vec(),
        None if loopback && connections > PER_ADDRESS => {
            let n = connections.div_ceil(PER_ADDRESS).min(LOOPBACK_SOURCES);
            (0..n as u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i)))
                .collect()
        }
        None => vec![match targets.first().map(SocketAddr::ip) {
            Some(IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }],
    };
    let per_pair = per_target.div_ceil(sources.len() as u64);
    if per_pair > range {
        warnings.push(format!(
            "{connections} connections over {} source address(es) × {} target(s) is {per_pair} per pair, \
             but net.ipv4.ip_local_port_range ({} {}) has only {range} ports: the run cannot reach -c; \
             add --bind addresses (e.g. 127.0.0.2-127.0.0.{}) or targets, or widen the range",
            sources.len(),
            targets.len(),
            ports.0,
            ports.1,
            1 + connections.div_ceil(PER_ADDRESS).min(254),
        ));
    } else if connections.div_ceil(sources.len() as u64) > PER_ADDRESS {
        warnings.push(format!(
            "{} connections per source address: above {PER_ADDRESS} the kernel's \
             port search in connect() slows the run down; use more --bind addresses{}",
            connections.div_ceil(sources.len() as u64),
            if loopback {
                " (or leave --bind out on loopback)"
            } else {
                ""
            }
        ));
    }
    (sources, warnings)
}

/// Most loopback source addresses chosen automatically (65,000 from
/// 127.0.0.2 cover 325M connections).
const LOOPBACK_SOURCES: u64 = 65_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn small_runs_keep_the_kernels_choice() {
        let (s, w) = choose(None, &[t("127.0.0.1:7700")], 5_000, (32768, 60999));
        assert_eq!(s, vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_million_on_loopback_spreads_over_enough_addresses() {
        let targets: Vec<_> = (0..56)
            .map(|i| t(&format!("127.0.0.1:{}", 7700 + i)))
            .collect();
        let (s, w) = choose(None, &targets, 1_000_000, (1024, 65535));
        // 5,000 per address, as the 1M run of platform-facts (200 addresses).
        assert_eq!(s.len(), 200);
        assert_eq!(s[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s[199], "127.0.0.201".parse::<IpAddr>().unwrap());
        assert!(w.is_empty(), "{w:?}");
        let (s, w) = choose(None, &[t("127.0.0.1:7700")], 300_000, (32768, 60999));
        assert_eq!(s.len(), 60);
        assert!(w.is_empty(), "{w:?}");
        // Past 127.0.0.255 the addresses go on into 127.0.1.x.
        let (s, _) = choose(None, &[t("127.0.0.1:7700")], 2_000_000, (1024, 65535));
        assert_eq!(s[399], "127.0.1.145".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_explicit_bind_wins_and_a_layout_that_cannot_work_is_reported() {
        let one: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap()];
        let (s, w) = choose(Some(&one), &[t("127.0.0.1:7700")], 100_000, (32768, 60999));
        assert_eq!(s, one);
        assert!(w[0].contains("cannot reach -c"), "{w:?}");
        let (_, w) = choose(Some(&one), &[t("127.0.0.1:7700")], 20_000, (32768, 60999));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("slows the run down"), "{w:?}");
        // A remote target: no automatic addresses, but a warning.
        let (s, w) = choose(None, &[t("10.0.0.1:7700")], 100_000, (32768, 60999));
        assert_eq!(s, vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        assert!(w[0].contains("cannot reach -c"), "{w:?}");
    }
}
