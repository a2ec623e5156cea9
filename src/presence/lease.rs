//! The node's lease and the cleanup after dead nodes. A lease key, refreshed
//! on a timer, says the node is alive; the entries of a node whose lease
//! lapsed (kill -9, power loss) are purged by whichever live node claims the
//! cleanup first. A node that finds its own lease lapsed (a long pause, an
//! outage) reconciles, since others may have purged its entries. On a
//! graceful shutdown the node withdraws its entries itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use futures_util::future::join_all;

use super::{keys, Fred, RedisPresence, BATCH};
use crate::metrics as m;

/// A full reconciliation also runs about this often, as a backstop for kicks
/// lost in a subscriber reconnect (pub/sub is at-most-once).
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// The time to the next periodic reconciliation: [`RECONCILE_EVERY`] give or
/// take a quarter, drawn anew each time. Gateways started together (a
/// deploy, a host's restart, the 56 of a 1M benchmark) would otherwise read
/// all their entries back in the same seconds every five minutes, a burst
/// for Redis and for the cores they share.
fn next_periodic_reconcile() -> Duration {
    RECONCILE_EVERY.mul_f64(0.75 + fastrand::f64() / 2.0)
}

impl RedisPresence {
    /// Refreshes the lease every third of its TTL. Kept apart from the cleanup
    /// below so that a long cleanup never delays the refresh.
    pub(super) async fn lease_loop(self: Arc<Self>) {
        let every = self.settings.lease_ttl / 3;
        loop {
            let refreshed = if self.client.is_connected() {
                match self.refresh_lease().await {
                    Ok(()) => {
                        self.succeeded();
                        true
                    }
                    Err(e) => {
                        self.failed();
                        self.warn("cannot refresh the node lease", &e);
                        false
                    }
                }
            } else {
                false
            };
            // Until it succeeds (start-up, outages), retry soon: a node without
            // a lease looks dead to the others.
            tokio::time::sleep(if refreshed {
                every
            } else {
                Duration::from_millis(100)
            })
            .await;
        }
    }

    pub(super) async fn cleanup_loop(self: Arc<Self>) {
        let every = self.settings.lease_ttl / 2;
        let mut last_reconcile = Instant::now();
        let mut period = next_periodic_reconcile();
        loop {
            tokio::time::sleep(every).await;
            let again = {
                let mut at = self.reconcile_again_at.lock().unwrap();
                match *at {
                    Some(t) if Instant::now() >= t => {
                        *at = None;
                        true
                    }
                    _ => false,
                }
            };
            if again || last_reconcile.elapsed() >= period {
                last_reconcile = Instant::now();
                period = next_periodic_reconcile();
                self.needs_reconcile.store(true, Ordering::Relaxed);
                self.pending.notify.notify_one();
            }
            if self.client.is_connected() {
                if let Err(e) = self.clean_dead_nodes().await {
                    self.warn("cannot clean up after dead nodes", &e);
                }
            }
        }
    }

    async fn refresh_lease(&self) -> Fred<()> {
        let ttl = self.settings.lease_ttl.as_millis() as i64;
        let sent = Instant::now();
        let previous: Option<String> = self
            .client
            .set(
                keys::lease(self.me()),
                self.incarnation.as_str(),
                Some(Expiration::PX(ttl)),
                None,
                true,
            )
            .await?;
        // The value alone does not prove the lease held: a refresh that
        // timed out during a partition can still reach Redis after the
        // lease expired (and after another node purged our entries) and
        // set it again, and then this one finds our own value. So a lease
        // is also taken as lapsed when more than a TTL passed between the
        // sending of the last confirmed refresh and this reply.
        let confirmed_before = self.lease_confirmed_sent.lock().unwrap().replace(sent);
        let outlived = confirmed_before.is_some_and(|s| s.elapsed() > self.settings.lease_ttl);
        if outlived || previous.as_deref() != Some(self.incarnation.as_str()) {
            // First lease of this process, or it lapsed (a long pause, an
            // outage): other nodes may have purged our entries.
            let first = !self.leased.load(Ordering::Relaxed);
            if previous.is_some() || !first {
                tracing::info!(
                    "node lease lapsed (or may have: no refresh confirmed for longer than its TTL) or was another incarnation's; reconciling presence"
                );
            }
            self.needs_reconcile.store(true, Ordering::Relaxed);
            self.pending.notify.notify_one();
            if self.ever_up.load(Ordering::Relaxed)
                && (previous.is_some() || !first || self.may_be_purged().await)
            {
                // Another node may be purging our entries right now; check
                // again once any such cleanup is over.
                *self.reconcile_again_at.lock().unwrap() =
                    Some(Instant::now() + self.settings.lease_ttl * 2);
            }
        }
        let _: i64 = self.client.sadd(keys::NODES, self.me()).await?;
        if !self.leased.swap(true, Ordering::Relaxed) {
            self.pending.notify.notify_one();
        }
        Ok(())
    }

    /// At this process's first lease (just taken, before this node joins
    /// the node set): whether a cleanup of an earlier process under the same
    /// node id may be under way, or may still start, and so purge entries
    /// this process writes. Cleaners only look at members of the node set
    /// and leave it last; a claim marks one at work. A node id Redis has
    /// never seen (or whose cleanup is over) needs no second reconciliation,
    /// which would otherwise re-read every entry two leases after each start.
    /// If Redis does not answer, it may.
    async fn may_be_purged(&self) -> bool {
        let member: Fred<bool> = self.client.sismember(keys::NODES, self.me()).await;
        if member.unwrap_or(true) {
            return true;
        }
        let claimed: Fred<i64> = self.client.exists(keys::cleanup_claim(self.me())).await;
        claimed.map_or(true, |n| n > 0)
    }

    async fn clean_dead_nodes(&self) -> Fred<()> {
        let nodes: Vec<String> = self.client.smembers(keys::NODES).await?;
        for node in nodes.into_iter().filter(|n| n != self.me()) {
            let alive: i64 = self.client.exists(keys::lease(&node)).await?;
            if alive > 0 {
                continue;
            }
            let claim_ttl = (self.settings.lease_ttl * 2).as_millis() as i64;
            let claimed: Option<String> = self
                .client
                .set(
                    keys::cleanup_claim(&node),
                    self.me(),
                    Some(Expiration::PX(claim_ttl)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            if claimed.is_none() {
                continue; // another node is cleaning it
            }
            let devices: Vec<String> = self.client.smembers(keys::node_devices(&node)).await?;
            let mut purged = 0u64;
            for chunk in devices.chunks(BATCH) {
                // Stop as soon as the node is back: its reconciliation owns
                // its entries again.
                let back: i64 = self.client.exists(keys::lease(&node)).await?;
                if back > 0 {
                    break;
                }
                let results = join_all(chunk.iter().map(|d| {
                    self.client.eval::<i64, _, _, _>(
                        keys::PURGE,
                        keys::device(d),
                        vec![node.clone()],
                    )
                }))
                .await;
                for r in results {
                    purged += r? as u64;
                }
            }
            // It may have come back meanwhile (a long pause): then its own
            // reconciliation restores what was purged; keep its set.
            let back: i64 = self.client.exists(keys::lease(&node)).await?;
            if back > 0 {
                tracing::info!(node = %node, purged, "node came back during cleanup; leaving it");
                continue;
            }
            let _: i64 = self.client.del(keys::node_devices(&node)).await?;
            let _: i64 = self.client.srem(keys::NODES, node.as_str()).await?;
            metrics::counter!(m::NODE_CLEANUPS).increment(1);
            metrics::counter!(m::CLEANED_ENTRIES).increment(purged);
            tracing::info!(dead_node = %node, purged, "removed the presence of a node whose lease lapsed");
        }
        Ok(())
    }

    /// On graceful shutdown, after the drain: writes the last changes, then
    /// removes whatever is left in this node's name and its lease, so other
    /// nodes need not wait for the lease to lapse. Bounded by `limit`.
    pub async fn withdraw(&self, limit: Duration) {
        let work = async {
            while !self.pending.is_empty() {
                self.pending.notify.notify_one();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let me = self.me().to_owned();
            let devices: Vec<String> = self.client.smembers(keys::node_devices(&me)).await?;
            for chunk in devices.chunks(BATCH) {
                for r in join_all(chunk.iter().map(|d| {
                    self.client
                        .eval::<i64, _, _, _>(keys::PURGE, keys::device(d), vec![me.clone()])
                }))
                .await
                {
                    r?;
                }
            }
            let _: i64 = self
                .client
                .del(vec![keys::node_devices(&me), keys::lease(&me)])
                .await?;
            let _: i64 = self.client.srem(keys::NODES, me.as_str()).await?;
            Ok::<usize, fred::error::Error>(devices.len())
        };
        match tokio::time::timeout(limit, work).await {
            Ok(Ok(left)) => tracing::info!(purged = left, "presence withdrawn from Redis"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not withdraw presence; other nodes will clean it after the lease")
            }
            Err(_) => tracing::warn!(
                "presence withdrawal timed out; other nodes will clean it after the lease"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_reconciliations_are_spread_over_half_a_period() {
        let draws: Vec<Duration> = (0..200).map(|_| next_periodic_reconcile()).collect();
        let (lo, hi) = (RECONCILE_EVERY.mul_f64(0.75), RECONCILE_EVERY.mul_f64(1.25));
        assert!(draws.iter().all(|d| (lo..=hi).contains(d)), "{draws:?}");
        // Not one instant for every gateway: 200 draws span most of the range.
        let span = *draws.iter().max().unwrap() - *draws.iter().min().unwrap();
        assert!(span > RECONCILE_EVERY / 3, "{span:?}");
    }
}
