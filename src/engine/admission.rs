//! Admission control on one core: who may connect and who may bind, decided
//! before the node trusts a connection (PROTOCOL.md §10.12).
//!
//! Per source address: open connections and new connections per second.
//! Per node: bound sessions and binds per second. Every node-wide figure is
//! shared evenly between the cores (SO_REUSEPORT spreads connections over
//! them), so no lock is shared between cores and a refusal costs a hash
//! lookup. A refused client is told when to come back: a retry-after hint
//! drawn uniformly from [base, 2 × base), so refused clients do not return
//! in step.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::Limits;

/// Why a connection or a Bind was refused (label of
/// `miop_admission_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ConnsPerIp = 0,
    AcceptRatePerIp = 1,
    MaxSessions = 2,
    BindRate = 3,
}

pub const REFUSALS: usize = 4;

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::ConnsPerIp => "conns_per_ip",
            Refusal::AcceptRatePerIp => "accept_rate_per_ip",
            Refusal::MaxSessions => "max_sessions",
            Refusal::BindRate => "bind_rate",
        }
    }

    pub fn from_index(i: usize) -> Refusal {
        [
            Refusal::ConnsPerIp,
            Refusal::AcceptRatePerIp,
            Refusal::MaxSessions,
            Refusal::BindRate,
        ][i]
    }

    /// The human-readable message of the Error and Close.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::ConnsPerIp => "too many connections from this address",
            Refusal::AcceptRatePerIp => "this address connects too fast",
            Refusal::MaxSessions => "node at its session limit",
            Refusal::BindRate => "node at its bind rate",
        }
    }

    /// The shortest retry-after hint for this refusal, in ms.
    pub fn retry_base_ms(self) -> u32 {
        match self {
            Refusal::ConnsPerIp => 10_000,
            Refusal::AcceptRatePerIp => 2_000,
            Refusal::MaxSessions => 30_000,
            Refusal::BindRate => 1_000,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    pub fn full(burst: f64, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Refills for the time since the last call and takes `n` tokens if
    /// there are that many.
    pub fn take(&mut self, now_ms: u64, rate: f64, burst: f64, n: f64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last_ms = now_ms.max(self.last_ms);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn is_full(&self, now_ms: u64, rate: f64, burst: f64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens + elapsed * rate >= burst
    }
}

struct PerIp {
    conns: u32,
    accepts: Bucket,
}

/// One core's share of the limits, and its counters.
pub struct Admission {
    limits: Limits,
    /// This core's share of the per-address and node figures.
    conns_per_ip: u32,
    accept_rate: f64,
    max_sessions: u64,
    bind_rate: f64,
    per_ip: HashMap<IpAddr, PerIp>,
    binds: Bucket,
    rng: fastrand::Rng,
    /// Per-address entries are dropped once idle; checked every so often.
    sweep_at_ms: u64,
}

/// `n` shared by `cores` (rounded up; 0 stays "no limit").
fn share(n: u64, cores: u16) -> u64 {
    if n == 0 {
        0
    } else {
        n.div_ceil(cores.max(1) as u64).max(1)
    }
}

impl Admission {
    pub fn new(limits: Limits, cores: u16, seed: u64, now_ms: u64) -> Admission {
        let accept_rate = share(limits.accept_rate_per_ip as u64, cores) as f64;
        let bind_rate = share(limits.bind_rate as u64, cores) as f64;
        Admission {
            conns_per_ip: share(limits.max_conns_per_ip as u64, cores) as u32,
            accept_rate,
            max_sessions: share(limits.max_sessions, cores),
            bind_rate,
            binds: Bucket::full(bind_rate, now_ms),
            per_ip: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            sweep_at_ms: now_ms + 60_000,
            limits,
        }
    }

    /// A connection from `ip` was accepted: admits it or says why not. The
    /// connection counts against its address either way (it holds an fd
    /// until it is released).
    pub fn on_accept(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        if self.limits.is_exempt(ip) {
            return Ok(());
        }
        self.sweep(now_ms);
        let rate = self.accept_rate;
        let e = self.per_ip.entry(ip).or_insert_with(|| PerIp {
            conns: 0,
            accepts: Bucket::full(rate * 2.0, now_ms),
        });
        e.conns += 1;
        if self.conns_per_ip > 0 && e.conns > self.conns_per_ip {
            return Err(Refusal::ConnsPerIp);
        }
        if rate > 0.0 && !e.accepts.take(now_ms, rate, rate * 2.0, 1.0) {
            return Err(Refusal::AcceptRatePerIp);
        }
        Ok(())
    }

    /// A connection from `ip` is gone (its fd closed).
    pub fn on_release(&mut self, ip: IpAddr) {
        if let Some(e) = self.per_ip.get_mut(&ip) {
            e.conns = e.conns.saturating_sub(1);
        }
    }

    /// A Bind is about to be processed while `sessions` are bound here.
    pub fn on_bind(&mut self, sessions: u64, now_ms: u64) -> Result<(), Refusal> {
        if self.max_sessions > 0 && sessions >= self.max_sessions {
            return Err(Refusal::MaxSessions);
        }
        if self.bind_rate > 0.0 && !self.binds.take(now_ms, self.bind_rate, self.bind_rate, 1.0) {
            return Err(Refusal::BindRate);
        }
        Ok(())
    }

    /// A retry-after hint for `base_ms`: uniform in [base, 2 × base).
    pub fn retry_after(&mut self, base_ms: u32) -> u32 {
        base_ms + self.rng.u32(0..base_ms.max(1))
    }

    /// Drops per-address entries with no connection and a full bucket.
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.sweep_at_ms {
            return;
        }
        self.sweep_at_ms = now_ms + 60_000;
        let rate = self.accept_rate;
        self.per_ip
            .retain(|_, e| e.conns > 0 || !e.accepts.is_full(now_ms, rate, rate * 2.0));
    }

    /// Addresses with state (for tests and memory accounting).
    pub fn tracked_addresses(&self) -> usize {
        self.per_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_conns_per_ip: 4,
            accept_rate_per_ip: 10,
            exempt: vec!["10.9.0.0/16".parse().unwrap()],
            max_sessions: 6,
            bind_rate: 4,
            ..Limits::default()
        }
    }

    #[test]
    fn per_address_connections_and_rate_are_shared_by_the_cores() {
        let mut a = Admission::new(limits(), 2, 1, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // 4 per address over 2 cores: 2 here.
        assert_eq!(a.on_accept(ip, 0), Ok(()));
        assert_eq!(a.on_accept(ip, 0), Ok(()));
        assert_eq!(a.on_accept(ip, 0), Err(Refusal::ConnsPerIp));
        a.on_release(ip);
        a.on_release(ip);
        // 10/s over 2 cores: 5/s here with a burst of 10; 2 used.
        for _ in 0..8 {
            assert_eq!(a.on_accept(ip, 0), Ok(()));
            a.on_release(ip);
        }
        assert_eq!(a.on_accept(ip, 0), Err(Refusal::AcceptRatePerIp));
        a.on_release(ip);
        assert_eq!(a.on_accept(ip, 200), Ok(()), "a token back after 200 ms");
        let exempt: IpAddr = "10.9.1.1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(a.on_accept(exempt, 0), Ok(()));
        }
        assert_eq!(a.tracked_addresses(), 1, "exempt addresses leave no state");
    }

    #[test]
    fn session_cap_and_bind_rate() {
        let mut a = Admission::new(limits(), 2, 1, 0);
        // 6 sessions over 2 cores: 3 here; 4 binds/s: 2 here.
        assert_eq!(a.on_bind(0, 0), Ok(()));
        assert_eq!(a.on_bind(1, 0), Ok(()));
        assert_eq!(a.on_bind(2, 0), Err(Refusal::BindRate));
        assert_eq!(a.on_bind(2, 500), Ok(()));
        assert_eq!(a.on_bind(3, 5_000), Err(Refusal::MaxSessions));
    }

    #[test]
    fn retry_hints_are_spread_over_one_base() {
        let mut a = Admission::new(limits(), 1, 7, 0);
        let hints: Vec<u32> = (0..200).map(|_| a.retry_after(1000)).collect();
        assert!(hints.iter().all(|h| (1000..2000).contains(h)));
        let distinct: std::collections::HashSet<_> = hints.iter().collect();
        assert!(distinct.len() > 100, "jittered, not one value");
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let mut a = Admission::new(limits(), 1, 1, 0);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        a.on_accept(ip, 0).unwrap();
        a.on_release(ip);
        a.on_accept("192.0.2.10".parse().unwrap(), 120_000).unwrap();
        assert_eq!(a.tracked_addresses(), 1);
    }
}
