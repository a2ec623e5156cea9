//! Kicks: enforcing "last bind wins" across nodes. When this node's write
//! replaces another node's entry, the writer publishes a kick to that node's
//! sharded channel; this file holds the receiving side. The same
//! subscription carries pushes routed to this node (its push channel shares
//! the kick channel's hash tag, so one slot, one subscription) and the
//! fan-out channel: those messages go up to the push layer through
//! [`super::PushEvents`].
//!
//! Pub/sub is at-most-once: a kick lost in a reconnect or a lagging buffer
//! is repaired by the reconciliation that follows.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;

use super::{keys, RedisPresence};
use crate::metrics as m;
use crate::protocol::CloseReason;

impl RedisPresence {
    /// Kicks this node's session for `device` if it is still `session_id`.
    pub(super) fn kick_local(&self, device: &str, session_id: u64) {
        self.gateway.kick(device, session_id, CloseReason::Replaced);
    }

    /// (Re)subscribes the kick channel, retrying until it works; writes pause
    /// meanwhile, and a reconciliation follows to repair kicks missed while
    /// unsubscribed.
    pub(super) async fn subscribe_kicks(&self) {
        // The kick and push channels share this node's hash tag (one slot).
        let channels = vec![keys::kick_channel(self.me()), keys::push_channel(self.me())];
        let mut wait = Duration::from_millis(100);
        while let Err(e) = async {
            self.subscriber.ssubscribe(channels.clone()).await?;
            self.subscriber.subscribe(keys::FANOUT).await
        }
        .await
        {
            tracing::debug!(error = %e, "kick channel subscription pending");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        self.subscribed.store(true, Ordering::Relaxed);
        self.needs_reconcile.store(true, Ordering::Relaxed);
        self.pending.notify.notify_one();
    }

    /// Checks every third of the lease that Redis still has this node's
    /// subscription (`PUBSUB SHARDNUMSUB` of its push channel, asked on the
    /// command connection).
    ///
    /// The subscriber only ever reads, so nothing tells it that Redis dropped
    /// its connection during a partition (Redis's `tcp-keepalive` closes a
    /// silent peer after a few minutes; a NAT or load balancer with an idle
    /// timeout does the same): the node would stay subscribed to nothing,
    /// missing kicks and routed pushes while everything else looks healthy.
    /// Asking Redis, rather than pinging the subscriber, leaves a connection
    /// that only stalled for a short partition alone: its queued messages
    /// still arrive when the link heals. A missing subscription forces a
    /// reconnection of the subscriber, which re-subscribes (see `start`).
    pub(super) async fn subscriber_watch(self: Arc<Self>) {
        let every = (self.settings.lease_ttl / 3).max(Duration::from_millis(500));
        let channel = keys::push_channel(self.me());
        loop {
            tokio::time::sleep(every).await;
            if !self.subscribed.load(Ordering::Relaxed) || !self.is_up() {
                continue; // a (re)subscription is under way, or Redis is away
            }
            let counts: Result<Vec<fred::types::Value>, _> =
                self.client.pubsub_shardnumsub(channel.clone()).await;
            let subscribers = match counts {
                Ok(v) => v.get(1).and_then(|n| n.as_i64()),
                Err(_) => continue, // Redis trouble: the health checks see it
            };
            if subscribers == Some(0) && self.subscribed.load(Ordering::Relaxed) {
                tracing::warn!(
                    channel = %channel,
                    "Redis no longer has this node's subscription (its connection was dropped); resubscribing"
                );
                metrics::counter!(m::SUBSCRIBER_RECONNECTS).increment(1);
                self.subscribed.store(false, Ordering::Relaxed);
                let _ = self.subscriber.force_reconnection().await;
            }
        }
    }

    /// The subscriber's task: kicks for this node's sessions, and pushes
    /// routed to it.
    pub(super) async fn kick_listener(self: Arc<Self>) {
        let mut rx = self.subscriber.message_rx();
        self.subscribe_kicks().await;
        loop {
            let msg = match rx.recv().await {
                Ok(msg) => msg,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    // Kicks were dropped from fred's buffer: reconciliation
                    // finds the sessions this node lost and kicks them.
                    tracing::warn!(missed, "kick messages overflowed; reconciling");
                    self.needs_reconcile.store(true, Ordering::Relaxed);
                    self.pending.notify.notify_one();
                    continue;
                }
                Err(_) => return,
            };
            let Some(text) = msg.value.as_string() else {
                continue;
            };
            if &*msg.channel != keys::kick_channel(self.me()).as_str() {
                self.events.routed(&self, &text);
                continue;
            }
            let Some((device, sid)) = text.split_once('\n') else {
                continue;
            };
            metrics::counter!(m::REMOTE_KICKS, "direction" => "received").increment(1);
            if let Some(b) = self.gateway.locate(device) {
                if self.tag(b.session_id) == sid {
                    self.gateway
                        .kick(device, b.session_id, CloseReason::Replaced);
                }
            }
        }
    }
}
