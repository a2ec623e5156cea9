//! Whether Redis answers. fred's own notion of "connected" misses a hung
//! server (its TCP connection stays open), and a command that times out does
//! not tell a hung Redis from one that is only slow: after an outage, every
//! node sharing one Redis reconciles at once, and commands can wait longer
//! than the command timeout while Redis answers all along.
//!
//! So a failed command only wakes the health watch, which sends a PING on a
//! connection of its own (it does not queue behind this node's commands) with
//! its own timeout (not counting what this thread waited for a CPU, see
//! `cpu_wait`). Redis is "hung" only when two such PINGs in a row get no
//! answer, or when the command connection got no reply at all for
//! `STUCK_AFTER` command timeouts while the PINGs were answered (that one
//! connection is dead; again not counting what this thread waited for a
//! CPU, up to `STARVED_GRACE` times that in wall time): then the connections are re-established, and the
//! reconnection starts a reconciliation. A slow Redis keeps its connection
//! and its queued work; the worker paces itself instead (`pace`). The writer
//! only writes, and /healthz only reports "up", while Redis answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;

use super::cpu_wait::RoundTimer;
use super::RedisPresence;
use crate::metrics as m;

/// PINGs in a row without an answer (each within the command timeout) after
/// which Redis is taken for hung.
const HUNG_AFTER: u32 = 2;
/// Command timeouts without any successful command on the command
/// connection, while PINGs are answered, after which that connection is
/// taken for dead.
const STUCK_AFTER: u32 = 5;
/// Most wall time a PING probe may take, in command timeouts, when this
/// thread waited for a CPU meanwhile.
const STARVED_GRACE: u32 = 4;

impl RedisPresence {
    /// Redis answers, as the writer last saw it.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether Redis answers now, as the writer sees it on each wake; logs
    /// when that changes, and once if Redis is still unreachable a second
    /// after start-up.
    pub(super) fn check_connection(&self, started: Instant, startup_warned: &mut bool) -> bool {
        let connected = self.client.is_connected() && !self.hung.load(Ordering::Relaxed);
        if connected != self.up.swap(connected, Ordering::Relaxed) {
            metrics::gauge!(m::REDIS_UP).set(if connected { 1.0 } else { 0.0 });
            if connected {
                self.ever_up.store(true, Ordering::Relaxed);
            } else {
                tracing::warn!("Redis is unreachable; sessions are unaffected, presence changes queue until it is back");
            }
        }
        if !connected
            && !self.ever_up.load(Ordering::Relaxed)
            && !*startup_warned
            && started.elapsed() >= Duration::from_secs(1)
        {
            *startup_warned = true;
            tracing::warn!(
                redis = %crate::config::redact_url(&self.settings.url),
                "Redis is unreachable at start-up; serving with presence in memory only until it is back"
            );
        }
        connected
    }

    /// A Redis command succeeded: the server answers.
    pub(super) fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.hung.store(false, Ordering::Relaxed);
        *self.last_success.lock().unwrap() = Instant::now();
    }

    /// A Redis command failed (timed out, or Redis answered an error). Not a
    /// verdict by itself: the health watch probes.
    pub(super) fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.health_wake.notify_one();
    }

    /// The health watch: while commands fail, PINGs Redis on the probe
    /// connection, at most once per command timeout, and decides between
    /// slow (nothing to do) and hung (reconnect).
    pub(super) async fn health_watch(self: Arc<Self>) {
        let timeout = self.settings.command_timeout;
        loop {
            self.health_wake.notified().await;
            let mut unanswered = 0u32;
            let mut silence = Silence::new(*self.last_success.lock().unwrap());
            while self.failures.load(Ordering::Relaxed) > 0
                && !self.hung.load(Ordering::Relaxed)
                && self.client.is_connected()
            {
                let sent = Instant::now();
                let (answered, rtt) = self.probe_once(timeout).await;
                if answered {
                    unanswered = 0;
                    metrics::counter!(m::REDIS_PROBES, "result" => "answered").increment(1);
                    let (wall, scheduled) = silence.observe(*self.last_success.lock().unwrap());
                    if connection_is_stuck(wall, scheduled, timeout) {
                        self.declare_hung(&format!(
                            "Redis answers on another connection, but the command connection had no reply for {} s ({} s of it with a CPU)",
                            wall.as_secs(),
                            scheduled.as_secs()
                        ));
                        break;
                    }
                    self.slow_log.lock().unwrap().warn(|suppressed| {
                        tracing::info!(
                            ping_ms = rtt.as_millis() as u64,
                            suppressed,
                            "Redis commands time out or fail, but Redis answers a PING: it is slow, not hung; keeping the connection and pacing presence work"
                        )
                    });
                    tokio::time::sleep(timeout).await;
                } else {
                    unanswered += 1;
                    metrics::counter!(m::REDIS_PROBES, "result" => "unanswered").increment(1);
                    if unanswered >= HUNG_AFTER {
                        self.declare_hung(&format!(
                            "Redis does not answer ({HUNG_AFTER} PINGs on a separate connection unanswered within {} ms each)",
                            timeout.as_millis()
                        ));
                        break;
                    }
                    // At most one probe per command timeout, even when the
                    // probe connection fails at once.
                    tokio::time::sleep_until((sent + timeout).into()).await;
                }
            }
        }
    }

    /// One PING on the probe connection: whether it was answered, and in
    /// how long. Redis gets `timeout` to answer, not counting what this
    /// thread waited for a CPU meanwhile (`cpu_wait`), up to
    /// [`STARVED_GRACE`] times `timeout` of wall time: on a saturated
    /// machine a starved control plane reads the answer late, and taking
    /// that for a hung Redis reconnects and reconciles, the most expensive
    /// thing it could do then.
    async fn probe_once(&self, timeout: Duration) -> (bool, Duration) {
        let timer = RoundTimer::start();
        let sent = Instant::now();
        let cap = sent + timeout * STARVED_GRACE;
        let options = fred::prelude::Options {
            timeout: Some(timeout * STARVED_GRACE),
            ..Default::default()
        };
        let probe = self.probe.with_options(&options);
        let ping = probe.ping::<Value>(None);
        tokio::pin!(ping);
        loop {
            let until = (Instant::now() + timeout.saturating_sub(timer.took())).min(cap);
            match tokio::time::timeout_at(until.into(), &mut ping).await {
                Ok(answer) => return (answer.is_ok(), sent.elapsed()),
                Err(_) if timer.took() >= timeout || Instant::now() >= cap => {
                    return (false, sent.elapsed())
                }
                Err(_) => {}
            }
        }
    }

    /// Redis is taken for hung: report it down and re-establish the
    /// connections; the reconnection starts a reconciliation.
    fn declare_hung(&self, why: &str) {
        if self.hung.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.up.swap(false, Ordering::Relaxed) {
            metrics::gauge!(m::REDIS_UP).set(0.0);
        }
        tracing::warn!("{why}; reconnecting (sessions are unaffected, presence changes queue)");
        let (client, probe) = (self.client.clone(), self.probe.clone());
        tokio::spawn(async move {
            let _ = futures_util::join!(client.force_reconnection(), probe.force_reconnection());
        });
    }

    /// Health details for /healthz.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "redis",
            "redis": if self.is_up() { "up" } else { "down" },
            "pending": self.pending.len(),
            "lag_seconds": self.pending.lag_seconds(),
            "reconciling": self.reconciling.load(Ordering::Relaxed),
        })
    }
}

/// How long the command connection has gone without a reply, in wall time
/// and in time this thread had a CPU: the replies of a connection are read
/// by this thread, so while it waits on a run queue nothing can be read,
/// whatever Redis does. At 1,000,000 sessions on 2 cores the gateways took
/// Redis for hung 49 times in one ramp on wall time alone, and each
/// reconnection started a full reconciliation (docs/BENCHMARKS.md).
struct Silence {
    /// The last success this spell started from.
    since: Instant,
    /// This thread's run-queue wait since the spell was first observed.
    timer: RoundTimer,
}

impl Silence {
    fn new(last_success: Instant) -> Silence {
        Silence {
            since: last_success,
            timer: RoundTimer::start(),
        }
    }

    /// The silence so far: (wall time since the last success, that less
    /// what this thread waited for a CPU since the watch began to look). A
    /// newer success starts a new spell.
    fn observe(&mut self, last_success: Instant) -> (Duration, Duration) {
        if last_success != self.since {
            *self = Silence::new(last_success);
        }
        let wall = self.since.elapsed();
        (wall, wall.saturating_sub(self.timer.waited()))
    }
}

/// Whether a command connection silent for `wall` (`scheduled` of it with
/// a CPU) while PINGs on another connection are answered is dead: after
/// [`STUCK_AFTER`] command timeouts with a CPU, or [`STARVED_GRACE`] times
/// that in wall time however starved this thread was.
fn connection_is_stuck(wall: Duration, scheduled: Duration, timeout: Duration) -> bool {
    scheduled >= timeout * STUCK_AFTER || wall >= timeout * STUCK_AFTER * STARVED_GRACE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_command_connection_is_stuck_only_for_time_it_had_a_cpu_or_four_times_that() {
        let t = Duration::from_secs(2);
        let s = Duration::from_secs;
        // An idle machine: wall time and scheduled time agree.
        assert!(!connection_is_stuck(s(9), s(9), t));
        assert!(connection_is_stuck(s(10), s(10), t));
        // Starved: 10 s of wall time, 3 of them with a CPU: not yet.
        assert!(!connection_is_stuck(s(10), s(3), t));
        assert!(!connection_is_stuck(s(39), s(9), t));
        // However starved, 4 x 5 command timeouts end it.
        assert!(connection_is_stuck(s(40), s(1), t));
    }

    #[test]
    fn a_newer_success_starts_a_new_silence() {
        let old = Instant::now() - Duration::from_secs(30);
        let mut silence = Silence::new(old);
        let (wall, scheduled) = silence.observe(old);
        assert!(wall >= Duration::from_secs(30), "{wall:?}");
        assert!(scheduled <= wall);
        let fresh = Instant::now();
        let (wall, _) = silence.observe(fresh);
        assert!(wall < Duration::from_secs(30), "{wall:?}");
    }
}
