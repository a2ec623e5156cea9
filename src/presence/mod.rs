//! Who is online, shared through Redis: the key schema and the control-plane
//! worker ([`RedisPresence`]) that writes this node's changes, reconciles
//! after outages, and cleans up after dead nodes. docs/PRESENCE.md describes
//! the schema and the guarantees.
//!
//! The worker is one value, kept by the control plane with fred; its
//! concerns live in one file each:
//!
//! - this file: the worker's state, its settings, and [`RedisPresence::start`]
//!   (the fred clients, their reconnect policy, the tasks below);
//! - `health`: whether Redis answers, and what /healthz says about it. A
//!   failed command is not enough to call Redis hung: a PING on a separate
//!   connection tells a slow Redis (it answers; the work is paced instead)
//!   from a hung one (reconnect);
//! - `pace`: how many commands go in one round of bulk work (adapting to
//!   Redis's latency), the pause after a failed round, and the random delay
//!   before a reconciliation;
//! - `writer`: a writer drains the coalesced `ChangeFeed` in batches; the
//!   commands of a batch are issued concurrently, which fred pipelines on the
//!   connection. Failed changes go back to the queue; nothing waits on Redis
//!   on the I/O cores, and a Redis outage never touches a session;
//! - `kicks`: "last bind wins": the ONLINE script keeps the entry with the
//!   later bind time. A node that overwrites another node's entry tells it
//!   over sharded pub/sub to kick its session; a node whose write loses kicks
//!   its own;
//! - `lease`: a lease key, refreshed on a timer, says the node is alive.
//!   Nodes clean the entries of a node whose lease lapsed (kill -9, power
//!   loss); a node shutting down withdraws its own;
//! - `reconcile`: after every (re)connect, and whenever this node's lease
//!   had lapsed, the node re-asserts every session it holds and removes
//!   entries in its name that it no longer holds, so Redis and memory
//!   converge without a restart. A pass runs in paced rounds between the
//!   writer's batches and survives failed rounds (it resumes where it
//!   stopped); the same comparison, read-only, answers /v1/consistency;
//! - `keys`: the key schema and the Lua scripts.
//!
//! Dependencies point one way: `crate::push` (the push API, routing between
//! nodes, offline messages) uses this worker's Redis connection and key
//! schema, so push depends on presence and presence never names push. What
//! presence hears that concerns pushes (messages routed to this node arrive
//! on its subscription; the writer sees devices come online) it hands up
//! through the [`PushEvents`] it was started with. Presence talks to the
//! gateway through its facade ([`Gateway`]: locate, kick, push, snapshot) and
//! to Redis, never to sessions directly.

mod cpu_wait;
mod health;
pub mod keys;
mod kicks;
mod lease;
mod pace;
mod reconcile;
mod writer;

pub use reconcile::{Consistency, PresenceEntry};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::*;

use crate::gateway::{ChangeFeed, Gateway, RateLimitedLog};
use crate::metrics as m;

/// Changes written per batch, and devices read per round: one pipelined
/// round of commands.
pub(crate) const BATCH: usize = 1000;

/// Slots of fred's event channels on the subscriber client (messages).
const SUBSCRIBER_CHANNEL_CAPACITY: usize = 4096;
/// Slots of fred's event channels on the command and probe clients.
const COMMAND_CHANNEL_CAPACITY: usize = 32;

/// Where Redis is and how long to wait for it (from the command line).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// redis://host:port or redis-cluster://host:port (any node of the cluster).
    pub url: String,
    /// Lease TTL; refreshed every third of it.
    pub lease_ttl: Duration,
    /// Timeout of every Redis command.
    pub command_timeout: Duration,
}

/// The node's presence worker: one per node, on the control-plane runtime,
/// shared by its own background tasks and the admin and push APIs. Its state
/// is flags and counters that those tasks read and set without locks.
pub struct RedisPresence {
    client: Client,
    /// A connection of its own for PINGs that tell a slow Redis from a hung
    /// one: a PING here does not wait behind the command connection's queue.
    probe: Client,
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
    /// Commands failed since the last success (timeouts, errors). fred
    /// judges a connection unresponsive by the time since its last write,
    /// which our own retries keep short, so a hung server is detected here:
    /// failures wake the health watch, which probes (see `health`).
    failures: std::sync::atomic::AtomicU32,
    /// The health watch found Redis hung (no answer to its probes) and
    /// forced a reconnection; cleared by the next successful command.
    hung: AtomicBool,
    /// When a command last succeeded on the command connection.
    last_success: std::sync::Mutex<Instant>,
    /// Wakes the health watch (a command failed).
    health_wake: tokio::sync::Notify,
    /// A reconciliation pass is under way (or waiting for its start delay).
    reconciling: AtomicBool,
    /// (Re)connections of the command connection so far: a reconciliation
    /// pass that sees it change checks whether Redis was replaced.
    reconnects: AtomicU64,
    /// A second reconciliation after a lapsed lease, once any cleanup that
    /// other nodes started against this node has finished.
    reconcile_again_at: std::sync::Mutex<Option<Instant>>,
    /// When the last lease refresh that Redis confirmed was sent: the lease
    /// is known to have lived until then plus its TTL, and no longer.
    lease_confirmed_sent: std::sync::Mutex<Option<Instant>>,
    log: std::sync::Mutex<RateLimitedLog>,
    /// The health watch's "slow, not hung" notice, rate-limited on its own.
    slow_log: std::sync::Mutex<RateLimitedLog>,
    /// Where routed pushes and devices coming online go (the push layer).
    events: Box<dyn PushEvents>,
}

/// The result of a Redis command.
pub(crate) type Fred<T> = Result<T, fred::error::Error>;

impl RedisPresence {
    /// Starts the client, the subscriber and the background tasks on the
    /// current (control-plane) runtime. Redis being down is not an error.
    /// `events` receives what presence hears for the push layer (miopd
    /// passes `crate::push::Delivery`).
    pub fn start(
        settings: RedisSettings,
        gateway: Arc<Gateway>,
        events: impl PushEvents + 'static,
    ) -> Result<Arc<Self>, String> {
        let pending = gateway
            .presence_feed()
            .cloned()
            .ok_or("the gateway was started without a presence feed")?;
        let config = Config::from_url(&settings.url).map_err(|e| {
            format!(
                "invalid --redis URL {}: {e}",
                crate::config::redact_url(&settings.url)
            )
        })?;
        // Doubling from 100 ms to at most 1 s: a Redis that comes back is
        // found within a second (with the jitter), and an attempt a second
        // per connection costs a dead Redis nothing. At 5 s, a restarted
        // Redis waited 2.5 s on average before the first node wrote again.
        let mut policy = ReconnectPolicy::new_exponential(0, 100, 1_000, 2);
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
                // The command and probe clients receive no messages, only
                // connection events (a reconnection is at least 100 ms
                // apart): fred's default event channels are enough.
                p.broadcast_channel_capacity = COMMAND_CHANNEL_CAPACITY;
            })
            .set_policy(policy);
        let client = builder.build().map_err(|e| e.to_string())?;
        let probe = builder.build().map_err(|e| e.to_string())?;
        // Room for a burst of kicks and routed pushes before the subscriber
        // lags. Only the subscriber gets it: fred preallocates these
        // channels, and 4096 slots on each of the three clients were 7 MB
        // of every idle gateway (0.4 GB over the 56 of a 1M run).
        builder.with_performance_config(|p| {
            p.broadcast_channel_capacity = SUBSCRIBER_CHANNEL_CAPACITY;
        });
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| e.to_string())?;
        let this = Arc::new(RedisPresence {
            client,
            probe,
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
            hung: AtomicBool::new(false),
            last_success: std::sync::Mutex::new(Instant::now()),
            health_wake: tokio::sync::Notify::new(),
            reconnects: AtomicU64::new(0),
            reconciling: AtomicBool::new(false),
            reconcile_again_at: std::sync::Mutex::new(None),
            lease_confirmed_sent: std::sync::Mutex::new(None),
            log: std::sync::Mutex::new(RateLimitedLog::new(Duration::from_secs(10))),
            slow_log: std::sync::Mutex::new(RateLimitedLog::new(Duration::from_secs(10))),
            events: Box::new(events),
        });
        let _ = this.self_ref.set(Arc::downgrade(&this));
        this.client.connect();
        this.subscriber.connect();
        this.probe.connect();
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
                    // The writer starts a reconciliation, or lets the one
                    // under way check whether Redis was replaced meanwhile.
                    t.reconnects.fetch_add(1, Ordering::Relaxed);
                    t.pending.notify.notify_one();
                    Ok(())
                }
            }));
        }
        tokio::spawn(this.clone().writer());
        tokio::spawn(this.clone().lease_loop());
        tokio::spawn(this.clone().cleanup_loop());
        tokio::spawn(this.clone().kick_listener());
        tokio::spawn(this.clone().subscriber_watch());
        tokio::spawn(this.clone().health_watch());
        Ok(this)
    }

    /// This node's id: the `node` field of its entries and the tag of its keys.
    pub(crate) fn me(&self) -> &str {
        &self.gateway.node_id
    }

    /// A local session as its entry names it.
    fn tag(&self, session_id: u64) -> String {
        self.gateway.session_tag(session_id)
    }

    /// Logs a Redis failure, rate-limited: an outage fails every command.
    pub(crate) fn warn(&self, what: &str, e: &dyn std::fmt::Display) {
        self.log
            .lock()
            .unwrap()
            .warn(|suppressed| tracing::warn!(error = %e, suppressed, "{what}"));
    }
}

/// The Redis connection and the gateway, for the push layer, which routes
/// pushes and keeps offline messages through this worker rather than a
/// connection of its own.
impl RedisPresence {
    /// The fred client (commands; the subscriber stays private).
    pub(crate) fn redis(&self) -> &Client {
        &self.client
    }

    /// The timeout of one Redis command (`RedisSettings::command_timeout`);
    /// the push API gives the Redis part of one push this much in all.
    pub(crate) fn command_timeout(&self) -> Duration {
        self.settings.command_timeout
    }

    /// The gateway's facade.
    pub(crate) fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }
}

/// What presence hears that is the push layer's business, handed up to it.
///
/// Messages routed to this node arrive on the presence subscription (the
/// node's push channel shares a slot with its kick channel), and the writer
/// is the first to know a device came online here (it may have offline
/// messages). Presence hands both to this trait instead of calling
/// `crate::push`, which depends on presence: so the modules form no cycle.
/// Both methods run on the control-plane runtime and must not wait: they
/// spawn what takes time.
pub trait PushEvents: Send + Sync {
    /// A message on this node's push channel or on the fan-out channel.
    fn routed(&self, presence: &RedisPresence, message: &str);
    /// Devices this node just wrote as online with a session here.
    fn came_online(&self, presence: Arc<RedisPresence>, devices: Vec<String>);
}
