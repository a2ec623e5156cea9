//! Whether Redis answers. fred's own notion of "connected" misses a hung
//! server (its TCP connection stays open), so commands that fail in a row
//! also count as down and force a reconnection; the writer only writes, and
//! /healthz only reports "up", while both agree that Redis answers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fred::prelude::*;

use super::RedisPresence;
use crate::metrics as m;

impl RedisPresence {
    /// Redis answers, as the writer last saw it.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether Redis answers now, as the writer sees it on each wake; logs
    /// when that changes, and once if Redis is still unreachable a second
    /// after start-up.
    pub(super) fn check_connection(&self, started: Instant, startup_warned: &mut bool) -> bool {
        let connected = self.client.is_connected() && self.failures.load(Ordering::Relaxed) < 2;
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
    }

    /// A Redis command failed. After two in a row the server is treated as
    /// down (it may be hung with its connection open): the connection is
    /// re-established, and the reconnect triggers a reconciliation.
    pub(super) fn failed(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= 2
            && self.up.swap(false, Ordering::Relaxed)
        {
            metrics::gauge!(m::REDIS_UP).set(0.0);
            tracing::warn!("Redis does not answer; reconnecting (sessions are unaffected, presence changes queue)");
            self.needs_reconcile.store(true, Ordering::Relaxed);
            let client = self.client.clone();
            tokio::spawn(async move {
                let _ = client.force_reconnection().await;
            });
        }
    }

    /// Health details for /healthz.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": "redis",
            "redis": if self.is_up() { "up" } else { "down" },
            "pending": self.pending.len(),
            "lag_seconds": self.pending.lag_seconds(),
        })
    }
}
