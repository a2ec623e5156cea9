//! Presence in Redis, kept by the control plane with fred.
//!
//! - A writer drains the coalesced [`PendingChanges`] in batches; the commands
//!   of a batch are issued concurrently, which fred pipelines on the
//!   connection. Failed changes go back to the queue; nothing waits on Redis on
//!   the io_uring cores, and a Redis outage never touches a session.
//! - fred reconnects forever with jittered exponential backoff; commands time
//!   out. After every (re)connect, and whenever this node's lease had lapsed,
//!   the node reconciles: it re-asserts every session it holds and removes
//!   entries in its name that it no longer holds, so Redis and memory converge
//!   without a restart.
//! - A lease key, refreshed on a timer, says the node is alive. Nodes clean
//!   the entries of a node whose lease lapsed (kill -9, power loss).
//! - "Last bind wins": the ONLINE script keeps the entry with the later bind
//!   time. A node that overwrites another node's entry tells it over sharded
//!   pub/sub to kick its session; a node whose write loses kicks its own.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use futures_util::future::join_all;
use serde::Serialize;

use super::keys;
use crate::gateway::{Bound, ChangeFeed, Gateway, RateLimitedLog};
use crate::metrics as m;
use crate::protocol::CloseReason;

/// Changes written per batch (one pipelined round of commands).
const BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// redis://host:port or redis-cluster://host:port (any node of the cluster).
    pub url: String,
    /// Lease TTL; refreshed every third of it.
    pub lease_ttl: Duration,
    /// Timeout of every Redis command.
    pub command_timeout: Duration,
}

pub struct RedisPresence {
    client: Client,
    subscriber: SubscriberClient,
    gateway: Arc<Gateway>,
    pending: Arc<ChangeFeed>,
    incarnation: String,
    settings: RedisSettings,
    up: AtomicBool,
    ever_up: AtomicBool,
    needs_reconcile: AtomicBool,
    /// The kick channel is subscribed: until then nothing is written, so no
    /// other node can address a kick to this one that it would miss.
    subscribed: AtomicBool,
    /// The node holds its lease: entries written before it would look like a
    /// dead node's to the others.
    leased: AtomicBool,
    /// A handle to this value for tasks spawned from `&self` methods.
    self_ref: std::sync::OnceLock<std::sync::Weak<RedisPresence>>,
    /// Commands failed in a row (timeouts of a hung server, errors). fred
    /// judges a connection unresponsive by the time since its last write,
    /// which our own retries keep short, so a hung server is detected here.
    failures: std::sync::atomic::AtomicU32,
    /// A second reconciliation after a lapsed lease, once any cleanup that
    /// other nodes started against this node has finished.
    reconcile_again_at: std::sync::Mutex<Option<Instant>>,
    log: std::sync::Mutex<RateLimitedLog>,
}

/// A full reconciliation also runs this often, as a backstop for kicks lost in
/// a subscriber reconnect (pub/sub is at-most-once).
const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// What Redis says about one device.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceEntry {
    pub device_id: String,
    pub node: String,
    pub session: String,
    pub epoch: u64,
    pub since_ms: u64,
    /// Whether the holding node's lease is current.
    pub node_alive: bool,
    /// This node holds the session.
    pub local: bool,
}

/// Differences between this node's memory and Redis.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Consistency {
    /// Local sessions with no entry in Redis.
    pub missing: u64,
    /// Entries in Redis in this node's name for sessions it does not hold.
    pub stale: u64,
    /// Local sessions whose entry names another node or session.
    pub mismatched: u64,
    pub local_sessions: u64,
    pub redis_entries: u64,
    /// Changes still queued for Redis.
    pub pending: u64,
    /// Entries compared (all, or the sample).
    pub checked: u64,
    pub sampled: bool,
}

type Fred<T> = Result<T, fred::error::Error>;

impl RedisPresence {
    /// Starts the client, the subscriber and the background tasks on the
    /// current (control-plane) runtime. Redis being down is not an error.
    pub fn start(settings: RedisSettings, gateway: Arc<Gateway>) -> Result<Arc<Self>, String> {
        let pending = gateway
            .presence_feed()
            .cloned()
            .ok_or("the gateway was started without a presence feed")?;
        let config = Config::from_url(&settings.url)
            .map_err(|e| format!("invalid --redis URL {}: {e}", settings.url))?;
        let mut policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
        policy.set_jitter(200);
        let timeout = settings.command_timeout;
        let mut builder = Builder::from_config(config);
        builder
            .with_config(|c| c.fail_fast = false)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 2;
                // Bounded: our own queue holds the backlog, not fred's.
                c.max_command_buffer_len = 50_000;
                // A hung server (SIGSTOP, stuck) keeps its TCP connection
                // open: treat a connection as dead when replies stop, so the
                // client reconnects and the node reconciles afterwards.
                c.unresponsive.max_timeout = Some(timeout * 2);
                c.unresponsive.interval = (timeout / 2).max(Duration::from_millis(100));
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
                // Room for a burst of kicks before the subscriber lags.
                p.broadcast_channel_capacity = 4096;
            })
            .set_policy(policy);
        let client = builder.build().map_err(|e| e.to_string())?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| e.to_string())?;
        let this = Arc::new(RedisPresence {
            client,
            subscriber,
            incarnation: gateway.incarnation.clone(),
            gateway,
            pending,
            settings,
            up: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            needs_reconcile: AtomicBool::new(true),
            subscribed: AtomicBool::new(false),
            leased: AtomicBool::new(false),
            self_ref: std::sync::OnceLock::new(),
            failures: std::sync::atomic::AtomicU32::new(0),
            reconcile_again_at: std::sync::Mutex::new(None),
            log: std::sync::Mutex::new(RateLimitedLog::new(Duration::from_secs(10))),
        });
        let _ = this.self_ref.set(Arc::downgrade(&this));
        this.client.connect();
        this.subscriber.connect();
        // Not fred's manage_subscriptions(): in fred 10.1 its resubscribe_all()
        // first sends SUBSCRIBE with no channels, which Redis rejects, and
        // returns before re-subscribing shard channels. We re-subscribe the
        // kick channel ourselves after every reconnect of the subscriber.
        {
            let t = this.clone();
            drop(this.subscriber.on_reconnect(move |_| {
                let t = t.clone();
                async move {
                    t.subscribed.store(false, Ordering::Relaxed);
                    tokio::spawn(async move { t.subscribe_kicks().await });
                    Ok(())
                }
            }));
        }
        {
            let t = this.clone();
            drop(this.client.on_reconnect(move |server| {
                let t = t.clone();
                async move {
                    metrics::counter!(m::REDIS_RECONNECTS).increment(1);
                    tracing::info!(%server, "connected to Redis; reconciling presence");
                    t.needs_reconcile.store(true, Ordering::Relaxed);
                    t.pending.notify.notify_one();
                    Ok(())
                }
            }));
        }
        tokio::spawn(this.clone().writer());
        tokio::spawn(this.clone().lease_loop());
        tokio::spawn(this.clone().cleanup_loop());
        tokio::spawn(this.clone().kick_listener());
        Ok(this)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn me(&self) -> &str {
        &self.gateway.node_id
    }

    fn tag(&self, session_id: u64) -> String {
        self.gateway.session_tag(session_id)
    }

    fn warn(&self, what: &str, e: &dyn std::fmt::Display) {
        self.log
            .lock()
            .unwrap()
            .warn(|suppressed| tracing::warn!(error = %e, suppressed, "{what}"));
    }

    /// A Redis command succeeded: the server answers.
    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// A Redis command failed. After two in a row the server is treated as
    /// down (it may be hung with its connection open): the connection is
    /// re-established, and the reconnect triggers a reconciliation.
    fn failed(&self) {
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

    // ----- writing ---------------------------------------------------------

    async fn writer(self: Arc<Self>) {
        let started = Instant::now();
        let mut startup_warned = false;
        loop {
            tokio::select! {
                _ = self.pending.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            metrics::gauge!(m::PRESENCE_QUEUE).set(self.pending.len() as f64);
            metrics::gauge!(m::PRESENCE_LAG).set(self.pending.lag_seconds());
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
                && !startup_warned
                && started.elapsed() >= Duration::from_secs(1)
            {
                startup_warned = true;
                tracing::warn!(
                    redis = %self.settings.url,
                    "Redis is unreachable at start-up; serving with presence in memory only until it is back"
                );
            }
            if !connected
                || !self.subscribed.load(Ordering::Relaxed)
                || !self.leased.load(Ordering::Relaxed)
            {
                continue;
            }
            if self.pending.take_overflowed() {
                self.needs_reconcile.store(true, Ordering::Relaxed);
            }
            if self.needs_reconcile.swap(false, Ordering::Relaxed) {
                match self.reconcile().await {
                    Ok(()) => self.succeeded(),
                    Err(e) => {
                        // Retried on the next wake; the batches below still go.
                        self.needs_reconcile.store(true, Ordering::Relaxed);
                        self.failed();
                        self.warn("presence reconciliation failed; will retry", &e);
                    }
                }
            }
            loop {
                let batch = self.pending.take(BATCH);
                if batch.is_empty() {
                    break;
                }
                match self.write_batch(batch).await {
                    Ok(()) => self.succeeded(),
                    Err(e) => {
                        self.failed();
                        self.warn("presence write failed; changes requeued", &e);
                        break;
                    }
                }
            }
            metrics::gauge!(m::PRESENCE_QUEUE).set(self.pending.len() as f64);
            metrics::gauge!(m::PRESENCE_LAG).set(self.pending.lag_seconds());
        }
    }

    /// Writes, for each device, what the device index says now: online with
    /// the live session, or no entry in this node's name.
    async fn write_batch(&self, batch: Vec<Box<str>>) -> Fred<()> {
        let batch_size = batch.len();
        let started = Instant::now();
        let me = self.me().to_owned();
        let held: Vec<Option<Bound>> = batch.iter().map(|d| self.gateway.locate(d)).collect();
        // Into the node's set before the entry exists: if this node dies in
        // between, cleanup after it still finds (and purges) the entry.
        let joining: Vec<String> = batch
            .iter()
            .zip(&held)
            .filter(|(_, l)| l.is_some())
            .map(|(d, _)| d.to_string())
            .collect();
        if !joining.is_empty() {
            if let Err(e) = self
                .client
                .sadd::<i64, _, _>(keys::node_devices(&me), joining)
                .await
            {
                metrics::counter!(m::PRESENCE_WRITES, "result" => "error")
                    .increment(batch.len() as u64);
                self.pending.requeue(batch);
                return Err(e);
            }
        }
        let results = join_all(batch.iter().zip(&held).map(|(device, loc)| {
            let key = keys::device(device);
            let me = me.clone();
            async move {
                match loc {
                    Some(loc) => {
                        let args = vec![me, self.tag(loc.session_id), loc.since_ms.to_string()];
                        let (won, prev_node, prev_sid): (i64, String, String) =
                            self.client.eval(keys::ONLINE, key, args).await?;
                        Ok(Some((won == 1, prev_node, prev_sid)))
                    }
                    None => {
                        let _: i64 = self.client.eval(keys::PURGE, key, vec![me]).await?;
                        Ok::<_, fred::error::Error>(None)
                    }
                }
            }
        }))
        .await;
        let mut failed = Vec::new();
        let mut first_err = None;
        let (mut add, mut remove, mut kicks) = (Vec::new(), Vec::new(), Vec::new());
        let mut came_online = Vec::new();
        for ((device, loc), result) in batch.into_iter().zip(held).zip(results) {
            match result {
                Err(e) => {
                    first_err.get_or_insert(e);
                    failed.push(device);
                }
                Ok(Some((true, prev_node, prev_sid))) => {
                    if loc.is_some() {
                        came_online.push(device.to_string());
                    }
                    if !prev_node.is_empty() && prev_node != me {
                        kicks.push((prev_node, format!("{device}\n{prev_sid}")));
                    }
                    add.push(device.to_string());
                }
                Ok(Some((false, _, _))) => {
                    // A later bind on another node holds the device.
                    if let Some(loc) = loc {
                        self.kick_local(&device, loc.session_id);
                    }
                    remove.push(device.to_string());
                }
                Ok(None) => remove.push(device.to_string()),
            }
        }
        let ok = (add.len() + remove.len()) as u64;
        metrics::counter!(m::PRESENCE_WRITES, "result" => "ok").increment(ok);
        let set_key = keys::node_devices(&me);
        let sadd = async {
            if add.is_empty() {
                return Ok(0);
            }
            self.client.sadd::<i64, _, _>(&set_key, add).await
        };
        let srem = async {
            if remove.is_empty() {
                return Ok(0);
            }
            self.client.srem::<i64, _, _>(&set_key, remove).await
        };
        let (a, r) = futures_util::join!(sadd, srem);
        if a.is_err() || r.is_err() {
            // The device entries are right; the set is repaired by reconciliation.
            self.needs_reconcile.store(true, Ordering::Relaxed);
        }
        for (node, msg) in kicks {
            match self
                .client
                .spublish::<i64, _, _>(keys::kick_channel(&node), msg)
                .await
            {
                Ok(_) => metrics::counter!(m::REMOTE_KICKS, "direction" => "sent").increment(1),
                Err(e) => self.warn("cannot publish a kick to another node", &e),
            }
        }
        m::control::presence_batch(batch_size, started.elapsed().as_secs_f64());
        if !came_online.is_empty() {
            if let Some(me) = self.self_ref.get().and_then(|w| w.upgrade()) {
                tokio::spawn(me.deliver_offline(came_online));
            }
        }
        if let Some(e) = first_err {
            metrics::counter!(m::PRESENCE_WRITES, "result" => "error")
                .increment(failed.len() as u64);
            self.pending.requeue(failed);
            return Err(e);
        }
        Ok(())
    }

    /// Kicks this node's session for `device` if it is still `session_id`.
    fn kick_local(&self, device: &str, session_id: u64) {
        self.gateway.kick(device, session_id, CloseReason::Replaced);
    }

    // ----- kicks from other nodes -------------------------------------------

    /// (Re)subscribes the kick channel, retrying until it works; writes pause
    /// meanwhile, and a reconciliation follows to repair kicks missed while
    /// unsubscribed.
    async fn subscribe_kicks(&self) {
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

    async fn kick_listener(self: Arc<Self>) {
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
                self.deliver_routed(&text);
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

    // ----- lease and dead nodes --------------------------------------------

    /// Refreshes the lease every third of its TTL. Kept apart from the cleanup
    /// below so that a long cleanup never delays the refresh.
    async fn lease_loop(self: Arc<Self>) {
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

    async fn cleanup_loop(self: Arc<Self>) {
        let every = self.settings.lease_ttl / 2;
        let mut last_reconcile = Instant::now();
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
            if again || last_reconcile.elapsed() >= RECONCILE_EVERY {
                last_reconcile = Instant::now();
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
        if previous.as_deref() != Some(self.incarnation.as_str()) {
            // First lease of this process, or it lapsed (a long pause, an
            // outage): other nodes may have purged our entries.
            if previous.is_some() || self.ever_up.load(Ordering::Relaxed) {
                tracing::info!(
                    "node lease was missing or another incarnation's; reconciling presence"
                );
            }
            self.needs_reconcile.store(true, Ordering::Relaxed);
            self.pending.notify.notify_one();
            if self.ever_up.load(Ordering::Relaxed) {
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

    // ----- reconciliation and consistency ------------------------------------

    /// Local sessions, compared with Redis: (missing, mismatched) device lists.
    async fn compare_local(&self, local: &[(Arc<str>, Bound)]) -> Fred<(Vec<usize>, Vec<usize>)> {
        let (mut missing, mut mismatched) = (Vec::new(), Vec::new());
        for (base, chunk) in local.chunks(BATCH).enumerate() {
            let reads = join_all(chunk.iter().map(|(d, _)| {
                self.client.hmget::<(Option<String>, Option<String>), _, _>(
                    keys::device(d),
                    vec!["node", "sid"],
                )
            }))
            .await;
            for (i, ((_, loc), r)) in chunk.iter().zip(reads).enumerate() {
                let idx = base * BATCH + i;
                match r? {
                    (None, _) => missing.push(idx),
                    (Some(node), sid)
                        if node != self.me()
                            || sid.as_deref() != Some(self.tag(loc.session_id).as_str()) =>
                    {
                        mismatched.push(idx)
                    }
                    _ => {}
                }
            }
        }
        Ok((missing, mismatched))
    }

    /// Entries in this node's name (per its device set) it does not hold:
    /// (device, session tag) pairs, plus the set's size.
    async fn find_stale(
        &self,
        local: &HashSet<&str>,
        sample: Option<usize>,
    ) -> Fred<(Vec<(String, Option<String>)>, u64, u64)> {
        let mut members: Vec<String> = self.client.smembers(keys::node_devices(self.me())).await?;
        let total = members.len() as u64;
        if let Some(n) = sample {
            fastrand::shuffle(&mut members);
            members.truncate(n);
        }
        let checked = members.len() as u64;
        let candidates: Vec<String> = members
            .into_iter()
            .filter(|d| !local.contains(d.as_str()))
            .collect();
        let mut stale = Vec::new();
        for chunk in candidates.chunks(BATCH) {
            let reads = join_all(chunk.iter().map(|d| {
                self.client.hmget::<(Option<String>, Option<String>), _, _>(
                    keys::device(d),
                    vec!["node", "sid"],
                )
            }))
            .await;
            for (d, r) in chunk.iter().zip(reads) {
                let (node, sid) = r?;
                // In the set but held by nobody or another node: only the
                // set member is stale. Held in our name: the entry is stale.
                let ours = node.as_deref() == Some(self.me());
                stale.push((d.clone(), if ours { sid } else { None }));
            }
        }
        Ok((stale, total, checked))
    }

    /// Makes Redis match this node's memory: marks every local session whose
    /// entry is missing or wrong, and every entry in this node's name it does
    /// not hold, for the writer (which writes the index's truth); repairs the
    /// node's device set.
    pub async fn reconcile(&self) -> Fred<()> {
        let started = Instant::now();
        let local = self.gateway.snapshot();
        let (missing, mismatched) = self.compare_local(&local).await?;
        for &i in missing.iter().chain(&mismatched) {
            self.pending.mark(&local[i].0);
        }
        let set_key = keys::node_devices(self.me());
        for chunk in local.chunks(BATCH) {
            let members: Vec<String> = chunk.iter().map(|(d, _)| d.to_string()).collect();
            let _: i64 = self.client.sadd(&set_key, members).await?;
        }
        // Stale: compare with the index as it is now, not the snapshot above.
        let now = self.gateway.snapshot();
        let names: HashSet<&str> = now.iter().map(|(d, _)| &**d).collect();
        let (stale, _, _) = self.find_stale(&names, None).await?;
        let mut stale_entries = 0u64;
        for (d, sid) in &stale {
            stale_entries += sid.is_some() as u64;
            self.pending.mark(d);
        }
        metrics::counter!(m::RECONCILIATIONS).increment(1);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "missing").increment(missing.len() as u64);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "mismatched")
            .increment(mismatched.len() as u64);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "stale").increment(stale_entries);
        tracing::info!(
            sessions = local.len(),
            missing = missing.len(),
            mismatched = mismatched.len(),
            stale = stale_entries,
            took_ms = started.elapsed().as_millis() as u64,
            "presence reconciled with Redis"
        );
        Ok(())
    }

    /// Compares memory with Redis without changing anything. Full by default
    /// (one HMGET per local session and per set member, pipelined in batches
    /// of 1000, plus one SMEMBERS); `sample` limits both sides to that many.
    pub async fn consistency(&self, sample: Option<usize>) -> Fred<Consistency> {
        let mut local = self.gateway.snapshot();
        let local_sessions = local.len() as u64;
        if let Some(n) = sample {
            fastrand::shuffle(&mut local);
            local.truncate(n);
        }
        let (missing, mismatched) = self.compare_local(&local).await?;
        let all: Vec<(Arc<str>, Bound)>;
        let names: HashSet<&str> = if sample.is_some() {
            // Stale means "not held here at all": check against every session.
            all = self.gateway.snapshot();
            all.iter().map(|(d, _)| &**d).collect()
        } else {
            local.iter().map(|(d, _)| &**d).collect()
        };
        let (stale, redis_entries, checked_set) = self.find_stale(&names, sample).await?;
        Ok(Consistency {
            missing: missing.len() as u64,
            stale: stale.iter().filter(|(_, sid)| sid.is_some()).count() as u64,
            mismatched: mismatched.len() as u64,
            local_sessions,
            redis_entries,
            pending: self.pending.len() as u64,
            checked: local.len() as u64 + checked_set,
            sampled: sample.is_some(),
        })
    }

    /// What Redis says about one device.
    pub async fn lookup(&self, device: &str) -> Fred<Option<PresenceEntry>> {
        let (node, sid, epoch, since): (Option<String>, Option<String>, Option<u64>, Option<u64>) =
            self.client
                .hmget(keys::device(device), vec!["node", "sid", "epoch", "since"])
                .await?;
        let (Some(node), Some(session)) = (node, sid) else {
            return Ok(None);
        };
        let alive: i64 = self.client.exists(keys::lease(&node)).await?;
        let local = node == self.me()
            && self
                .gateway
                .locate(device)
                .is_some_and(|l| self.tag(l.session_id) == session);
        Ok(Some(PresenceEntry {
            device_id: device.to_owned(),
            node,
            session,
            epoch: epoch.unwrap_or(0),
            since_ms: since.unwrap_or(0),
            node_alive: alive > 0,
            local,
        }))
    }

    // ----- pushes between nodes ---------------------------------------------

    /// Routes a push for devices not held here to the nodes Redis says hold
    /// them. Returns how many devices were routed.
    pub async fn route(
        &self,
        message: &RoutedPush,
        devices: Vec<String>,
    ) -> Fred<(u64, Vec<String>)> {
        let mut nowhere = Vec::new();
        let mut by_node: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for chunk in devices.chunks(BATCH) {
            let holders = join_all(chunk.iter().map(|d| {
                self.client
                    .hget::<Option<String>, _, _>(keys::device(d), "node")
            }))
            .await;
            for (d, h) in chunk.iter().zip(holders) {
                match h? {
                    Some(node) if node != self.me() => {
                        by_node.entry(node).or_default().push(d.clone())
                    }
                    _ => nowhere.push(d.clone()),
                }
            }
        }
        let mut routed = 0;
        for (node, devices) in by_node {
            let n = devices.len() as u64;
            let msg = RoutedPush {
                devices: Some(devices),
                ..message.clone()
            };
            let _: i64 = self
                .client
                .spublish(keys::push_channel(&node), msg.to_json())
                .await?;
            routed += n;
        }
        metrics::counter!(m::PUSHES_ROUTED, "kind" => "devices").increment(routed);
        Ok((routed, nowhere))
    }

    /// Sends a topic push or a broadcast to every other node. Returns how many
    /// other nodes were listening.
    pub async fn fan_out(&self, message: &RoutedPush) -> Fred<u64> {
        let receivers: i64 = self.client.publish(keys::FANOUT, message.to_json()).await?;
        let others = (receivers.max(1) - 1) as u64; // this node hears it too
        metrics::counter!(m::PUSHES_ROUTED, "kind" => "fanout").increment(1);
        Ok(others)
    }

    /// A push published by another node: deliver it to our own targets.
    fn deliver_routed(&self, text: &str) {
        let msg: RoutedPush = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return self.warn("ignoring a malformed routed push", &e),
        };
        if msg.origin == self.me() {
            return; // our own fan-out, already delivered locally
        }
        let Some(to) = msg.target() else { return };
        let payload = match base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            &msg.payload_b64,
        ) {
            Ok(p) => bytes::Bytes::from(p),
            Err(e) => return self.warn("ignoring a routed push with a bad payload", &e),
        };
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            match gateway
                .push_local(msg.id, &to, payload, msg.ack, msg.keep_until_ms)
                .await
            {
                Ok(r) => {
                    metrics::counter!(m::PUSH_RECIPIENTS, "outcome" => "delivered")
                        .increment(r.report.delivered);
                }
                Err(e) => tracing::warn!(error = %e, "routed push not delivered"),
            }
        });
    }
}

impl RedisPresence {
    /// Stores the unacked pushes of ended sessions as offline messages, so
    /// the device gets them again when it binds (at-least-once delivery).
    pub async fn keep_unacked(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::gateway::UnackedHandoff>,
    ) {
        while let Some(h) = rx.recv().await {
            let now = unix_ms();
            for u in h.messages {
                let Some(left_ms) = u.keep_until_ms.checked_sub(now).filter(|l| *l > 0) else {
                    continue;
                };
                let payload = u.frame.slice(crate::protocol::HEADER_LEN + 8..);
                let msg = RoutedPush::new(
                    u.message_id,
                    true,
                    &payload,
                    self.me(),
                    &crate::gateway::PushTo::Devices(Vec::new()),
                );
                if let Err(e) = self
                    .store_offline(&msg, left_ms.div_ceil(1000), &[h.device_id.to_string()])
                    .await
                {
                    self.warn("cannot keep an unacked push offline", &e);
                }
            }
        }
    }
}

impl RedisPresence {
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

/// A message kept in Redis for an offline device (JSON list entry).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct OfflineEntry {
    id: u64,
    ack: bool,
    /// Expiry, unix ms.
    exp_ms: u64,
    payload_b64: String,
}

/// Most messages kept per offline device (the oldest are dropped first).
pub const MAX_OFFLINE_PER_DEVICE: usize = 100;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisPresence {
    /// Keeps a push for devices that are online nowhere, for `ttl_secs`.
    pub async fn store_offline(
        &self,
        message: &RoutedPush,
        ttl_secs: u64,
        devices: &[String],
    ) -> Fred<u64> {
        let ttl_ms = ttl_secs.max(1) * 1000;
        // The list outlives its messages (2 × TTL, at least TTL + 60 s), so a
        // device that comes back finds its expired messages and they are
        // counted; lists of devices that never return expire by themselves.
        let keep_ms = (ttl_ms * 2).max(ttl_ms + 60_000);
        let entry = serde_json::to_string(&OfflineEntry {
            id: message.id,
            ack: message.ack,
            exp_ms: unix_ms() + ttl_ms,
            payload_b64: message.payload_b64.clone(),
        })
        .expect("offline entry serializes");
        let results = join_all(devices.iter().map(|d| {
            self.client.eval::<i64, _, _, _>(
                keys::STORE_OFFLINE,
                keys::offline(d),
                vec![
                    entry.clone(),
                    MAX_OFFLINE_PER_DEVICE.to_string(),
                    keep_ms.to_string(),
                ],
            )
        }))
        .await;
        let mut stored = 0;
        for r in results {
            r?;
            stored += 1;
        }
        metrics::counter!(m::OFFLINE_STORED).increment(stored);
        Ok(stored)
    }

    /// Delivers, in order, what was kept for devices that just came online
    /// here. Expired messages are dropped and counted; if the session is gone
    /// again before delivery, the rest goes back to Redis.
    async fn deliver_offline(self: Arc<Self>, devices: Vec<String>) {
        for device in devices {
            let taken: Fred<Vec<String>> = self
                .client
                .eval(
                    keys::TAKE_OFFLINE,
                    keys::offline(&device),
                    Vec::<String>::new(),
                )
                .await;
            let entries = match taken {
                Ok(e) => e,
                Err(e) => {
                    self.warn("cannot fetch offline messages", &e);
                    continue;
                }
            };
            let now = unix_ms();
            let mut rest = entries.iter();
            while let Some(raw) = rest.next() {
                let Ok(entry) = serde_json::from_str::<OfflineEntry>(raw) else {
                    continue;
                };
                if entry.exp_ms <= now {
                    metrics::counter!(m::OFFLINE_EXPIRED).increment(1);
                    continue;
                }
                let Ok(payload) = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    &entry.payload_b64,
                ) else {
                    continue;
                };
                let to = crate::gateway::PushTo::Devices(vec![device.clone()]);
                match self
                    .gateway
                    .push_local(entry.id, &to, payload.into(), entry.ack, Some(entry.exp_ms))
                    .await
                {
                    Ok(r) if r.report.delivered > 0 => {
                        metrics::counter!(m::OFFLINE_DELIVERED).increment(1);
                    }
                    _ => {
                        // Gone again: keep this one and the rest, in order.
                        let back: Vec<String> = std::iter::once(raw).chain(rest).cloned().collect();
                        let _: Fred<i64> = self
                            .client
                            .lpush(
                                keys::offline(&device),
                                back.into_iter().rev().collect::<Vec<_>>(),
                            )
                            .await;
                        break;
                    }
                }
            }
        }
    }
}

/// A push travelling between nodes over Redis pub/sub (JSON).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RoutedPush {
    pub id: u64,
    pub ack: bool,
    pub payload_b64: String,
    /// Node that accepted the push.
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Every session.
    #[serde(default)]
    pub all: bool,
    /// Keep unacked copies until then (unix ms): the push had a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_until_ms: Option<u64>,
}

impl RoutedPush {
    pub fn new(
        id: u64,
        ack: bool,
        payload: &[u8],
        origin: &str,
        to: &crate::gateway::PushTo,
    ) -> RoutedPush {
        use crate::gateway::PushTo;
        RoutedPush {
            id,
            ack,
            payload_b64: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                payload,
            ),
            origin: origin.to_owned(),
            devices: None,
            topic: match to {
                PushTo::Topic(t) => Some(t.clone()),
                _ => None,
            },
            all: matches!(to, PushTo::All),
            keep_until_ms: None,
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("routed push serializes")
    }

    fn target(&self) -> Option<crate::gateway::PushTo> {
        use crate::gateway::PushTo;
        match (&self.devices, &self.topic, self.all) {
            (Some(d), None, false) => Some(PushTo::Devices(d.clone())),
            (None, Some(t), false) => Some(PushTo::Topic(t.clone())),
            (None, None, true) => Some(PushTo::All),
            _ => None,
        }
    }
}
