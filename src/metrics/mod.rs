//! Metric names, descriptions and the exporter.
//!
//! Names follow Prometheus conventions: base units, `_total` for counters, no
//! per-device or per-address labels. The recorder is installed once, before the
//! cores start, and rendered by the admin server (`GET /metrics`), which first
//! publishes the cores' own figures (`gateway/stats.rs`).

pub mod control;
pub mod histogram;

use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const SESSIONS: &str = "miop_sessions";
pub const CONNECTIONS: &str = "miop_connections";
pub const ACCEPTED: &str = "miop_connections_accepted_total";
pub const BINDS: &str = "miop_binds_total";
pub const HEARTBEAT_TIMEOUTS: &str = "miop_heartbeat_timeouts_total";
pub const BIND_TIMEOUTS: &str = "miop_bind_timeouts_total";
pub const CLOSES: &str = "miop_connections_closed_total";
pub const ACCEPT_ERRORS: &str = "miop_accept_errors_total";
pub const PUSH_ACKS: &str = "miop_push_acks_total";
pub const KICKS: &str = "miop_kicks_total";
pub const CORES: &str = "miop_cores";
pub const FD_LIMIT: &str = "miop_fd_limit";
pub const PUSHES: &str = "miop_pushes_total";
pub const PUSH_RECIPIENTS: &str = "miop_push_recipients_total";
pub const PUSH_ACK_LATENCY: &str = "miop_push_ack_latency_seconds";
pub const PUSHES_ROUTED: &str = "miop_pushes_routed_total";
pub const OUTBOUND_DROPPED: &str = "miop_outbound_dropped_total";
pub const CORE_SESSIONS: &str = "miop_core_sessions";
pub const BIND_DURATION: &str = "miop_bind_duration_seconds";
pub const READ_HANDLING: &str = "miop_read_handling_seconds";
pub const CORE_CONNECTIONS: &str = "miop_core_connections";
pub const LISTEN_OVERFLOWS: &str = "miop_kernel_listen_overflows_total";
pub const LISTEN_DROPS: &str = "miop_kernel_listen_drops_total";
pub const UNACKED: &str = "miop_unacked_pushes_total";
pub const OFFLINE_STORED: &str = "miop_offline_messages_stored_total";
pub const OFFLINE_DELIVERED: &str = "miop_offline_messages_delivered_total";
pub const OFFLINE_EXPIRED: &str = "miop_offline_messages_expired_total";
pub const REDIS_UP: &str = "miop_redis_up";
pub const REDIS_RECONNECTS: &str = "miop_redis_reconnects_total";
pub const SUBSCRIBER_RECONNECTS: &str = "miop_redis_subscriber_resets_total";
pub const PRESENCE_QUEUE: &str = "miop_presence_queue_depth";
pub const PRESENCE_LAG: &str = "miop_presence_sync_lag_seconds";
pub const PRESENCE_BATCH: &str = "miop_presence_batch_size";
pub const PRESENCE_BATCH_SECONDS: &str = "miop_presence_batch_duration_seconds";
pub const PRESENCE_WRITES: &str = "miop_presence_writes_total";
pub const RECONCILIATIONS: &str = "miop_presence_reconciliations_total";
pub const RECONCILE_FIXES: &str = "miop_presence_reconcile_fixes_total";
pub const RECONCILE_ABORTS: &str = "miop_presence_reconciliations_aborted_total";
pub const RECONCILE_INTERRUPTIONS: &str = "miop_presence_reconcile_interruptions_total";
pub const RECONCILE_REMAINING: &str = "miop_presence_reconcile_remaining";
pub const PRESENCE_WINDOW: &str = "miop_presence_pipeline_window";
pub const REDIS_PROBES: &str = "miop_redis_probes_total";
pub const REMOTE_KICKS: &str = "miop_presence_remote_kicks_total";
pub const NODE_CLEANUPS: &str = "miop_presence_dead_node_cleanups_total";
pub const CLEANED_ENTRIES: &str = "miop_presence_cleaned_entries_total";
pub const DELIVERIES: &str = "miop_push_deliveries_total";
pub const IO_OPERATIONS: &str = "miop_io_operations_total";
pub const CORE_TURNS: &str = "miop_core_turns_total";
pub const CORE_YIELDS: &str = "miop_core_yields_total";
pub const BUILD_INFO: &str = "miop_build_info";
pub const ADMISSION_REFUSALS: &str = "miop_admission_refusals_total";
pub const TRANSPORT_HANDSHAKES: &str = "miop_transport_handshakes_total";
pub const TRANSPORT_FAILURES: &str = "miop_transport_failures_total";
pub const TLS_RELOADS: &str = "miop_tls_reloads_total";
pub const INBOUND_THROTTLED: &str = "miop_inbound_throttled_total";
pub const ACCEPT_PAUSES: &str = "miop_accept_pauses_total";
pub const ACCEPT_PAUSED: &str = "miop_accept_paused_cores";
pub const ADMIN_CONNECTIONS: &str = "miop_admin_connections";
pub const ADMIN_REFUSED: &str = "miop_admin_connections_refused_total";
pub const ADMIN_ACCEPT_ERRORS: &str = "miop_admin_accept_errors_total";
pub const ADMIN_TIMEOUTS: &str = "miop_admin_request_timeouts_total";
pub const ADMIN_UNAUTHORIZED: &str = "miop_admin_unauthorized_total";

/// Installs the global Prometheus recorder and describes every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe_gauge!(SESSIONS, "Bound sessions on this node now.");
    describe_gauge!(
        CONNECTIONS,
        "Open device connections (bound or not) on this node now."
    );
    describe_counter!(ACCEPTED, "Device connections accepted.");
    describe_counter!(
        BINDS,
        "Bind attempts, by result (ok or the error code name)."
    );
    describe_counter!(
        HEARTBEAT_TIMEOUTS,
        "Bound sessions closed because no frame arrived within the heartbeat timeout."
    );
    describe_counter!(
        BIND_TIMEOUTS,
        "Connections closed because no Bind arrived within the bind timeout."
    );
    describe_counter!(CLOSES, "Device connections closed, by reason.");
    describe_counter!(
        ACCEPT_ERRORS,
        "accept() failures, by errno name (EMFILE means the fd limit is reached)."
    );
    describe_counter!(PUSH_ACKS, "PushAck frames received.");
    describe_counter!(
        KICKS,
        "Sessions kicked by the node, by reason (replaced = duplicate bind)."
    );
    describe_gauge!(CORES, "I/O cores (io_uring runtimes) serving connections.");
    describe_gauge!(
        FD_LIMIT,
        "The process's file descriptor limit after start-up."
    );
    describe_counter!(PUSHES, "Push API requests, by target kind and result.");
    describe_gauge!(CORE_SESSIONS, "Bound sessions per I/O core.");
    describe_gauge!(CORE_CONNECTIONS, "Open device connections per I/O core.");
    describe_counter!(
        DELIVERIES,
        "Push frames queued to bound sessions (one per recipient)."
    );
    describe_counter!(
        IO_OPERATIONS,
        "Socket operations by kind (poll, read, write, accept): io_uring operations submitted with --io uring, socket syscalls with --io epoll."
    );
    describe_counter!(CORE_TURNS, "Turns of the I/O cores' event loops.");
    describe_counter!(
        CORE_YIELDS,
        "Turns cut short to let I/O through (a broadcast, a burst of expiries or of ready connections)."
    );
    describe_gauge!(ADMIN_CONNECTIONS, "Open admin API connections.");
    describe_counter!(
        ADMIN_REFUSED,
        "Admin API connections refused (503, closed) because --admin-max-conns were open."
    );
    describe_counter!(
        ADMIN_ACCEPT_ERRORS,
        "accept() failures of the admin listener, by errno name."
    );
    describe_counter!(
        ADMIN_TIMEOUTS,
        "Admin API requests answered 408 because they were not completed within --admin-timeout."
    );
    describe_counter!(
        ADMIN_UNAUTHORIZED,
        "Admin API reads (/v1/sessions, /v1/presence, /v1/consistency) refused for a missing (401) or wrong (403) bearer token; refused pushes count in miop_pushes_total{result=\"unauthorized\"}."
    );
    describe_counter!(
        ADMISSION_REFUSALS,
        "Connections and Binds refused by admission control (Error UNAVAILABLE + Close TRY_LATER with a retry-after hint), by reason: conns_per_ip, accept_rate_per_ip, max_sessions, bind_rate."
    );
    describe_counter!(
        TRANSPORT_HANDSHAKES,
        "Completed transport handshakes, by transport: tls (TLS handshakes), ws (WebSocket upgrades), proxy (PROXY protocol headers read)."
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads on SIGHUP, by result (ok, error: the current certificate stays)."
    );
    describe_counter!(
        TRANSPORT_FAILURES,
        "Connections closed because their transport failed, by transport (tls, ws, proxy) and reason: tls not_tls, no_client_cert, bad_client_cert, peer_alert (the client refused our certificate), incompatible, misbehaved, decrypt_error, handshake_timeout; ws bad_request, wrong_path, bad_version, text_message, ...; proxy missing, garbled, unsupported, too_long."
    );
    describe_counter!(
        INBOUND_THROTTLED,
        "Times a session went over its inbound budget (frames or bytes per second) and the core stopped reading it for a while."
    );
    describe_counter!(
        ACCEPT_PAUSES,
        "Times a core stopped accepting because the process reached its fd high-water mark (the fd limit less --fd-reserve)."
    );
    describe_gauge!(
        ACCEPT_PAUSED,
        "I/O cores not accepting now because of the fd budget (they resume below the low-water mark)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels say the version and the I/O driver (io: uring or epoll)."
    );
    describe_counter!(LISTEN_OVERFLOWS, "Kernel TCP accept-queue overflows (ListenOverflows in /proc/net/netstat; whole network namespace).");
    describe_counter!(LISTEN_DROPS, "Kernel TCP SYNs dropped at listening sockets (ListenDrops in /proc/net/netstat; whole network namespace).");
    process_collector().describe();
    describe_counter!(UNACKED, "Pushes with a TTL still unacked when their session ended, by fate (kept_offline, dropped).");
    describe_counter!(
        OUTBOUND_DROPPED,
        "Queued pushes dropped for slow consumers (--slow-consumer drop-oldest)."
    );
    describe_counter!(
        OFFLINE_STORED,
        "Messages kept in Redis for offline devices (one per device)."
    );
    describe_counter!(
        OFFLINE_DELIVERED,
        "Kept messages delivered when their device bound."
    );
    describe_counter!(
        OFFLINE_EXPIRED,
        "Kept messages dropped because their TTL passed before the device bound."
    );
    describe_counter!(
        PUSHES_ROUTED,
        "Pushes sent to other nodes through Redis: devices routed, and topic/broadcast fan-outs."
    );
    describe_counter!(
        PUSH_RECIPIENTS,
        "Push recipients, by outcome (delivered to a socket, unknown)."
    );
    describe_gauge!(
        REDIS_UP,
        "1 when the presence client is connected to Redis and Redis answers (absent in standalone mode)."
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Connections (and reconnections) to Redis; each triggers a reconciliation."
    );
    describe_counter!(
        SUBSCRIBER_RECONNECTS,
        "Pub/sub connections to Redis reset because Redis no longer had this node's subscription (a connection dropped during a partition; kicks and routed pushes would otherwise be missed)."
    );
    describe_gauge!(
        PRESENCE_QUEUE,
        "Presence changes queued for Redis (coalesced per device)."
    );
    describe_gauge!(
        PRESENCE_LAG,
        Unit::Seconds,
        "Age of the oldest presence change not yet written to Redis."
    );
    describe_counter!(
        PRESENCE_WRITES,
        "Presence changes written to Redis, by result."
    );
    describe_counter!(
        RECONCILIATIONS,
        "Full reconciliations of this node's presence with Redis, completed."
    );
    describe_counter!(
        RECONCILE_FIXES,
        "Entries fixed by reconciliation, by kind (missing, mismatched, stale)."
    );
    describe_counter!(
        RECONCILE_ABORTS,
        "Reconciliations abandoned before completing because Redis was replaced (restarted, failed over) while they ran; a new one starts over."
    );
    describe_counter!(
        RECONCILE_INTERRUPTIONS,
        "Rounds of a reconciliation that failed (timeout or error); the reconciliation pauses, then resumes where it stopped."
    );
    describe_gauge!(
        RECONCILE_REMAINING,
        "Devices the running reconciliation has yet to compare with Redis (0 when none runs)."
    );
    describe_gauge!(
        PRESENCE_WINDOW,
        "Redis commands per pipelined round of presence writes and reconciliation reads; shrinks when Redis is slow."
    );
    describe_counter!(
        REDIS_PROBES,
        "PINGs sent on a separate connection after Redis commands failed, by result (answered: Redis is slow, not hung; unanswered)."
    );
    describe_counter!(
        REMOTE_KICKS,
        "Duplicate-bind kicks exchanged with other nodes via Redis, by direction."
    );
    describe_counter!(
        NODE_CLEANUPS,
        "Dead nodes (lapsed lease) whose presence this node removed."
    );
    describe_counter!(
        CLEANED_ENTRIES,
        "Presence entries of dead nodes removed by this node."
    );
    Ok(handle)
}

pub fn kicked(reason: &'static str) {
    counter!(KICKS, "reason" => reason).increment(1);
}

pub fn unacked(n: u64, fate: &'static str) {
    counter!(UNACKED, "fate" => fate).increment(n);
}

/// Process metrics (RSS, CPU, open and max fds, threads), refreshed at every
/// scrape by [`collect`].
fn process_collector() -> &'static metrics_process::Collector {
    static C: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    C.get_or_init(metrics_process::Collector::default)
}

/// Refreshes the values read from the OS: process metrics and the kernel's
/// listen-queue counters. Called before each render of /metrics.
pub fn collect() {
    process_collector().collect();
    if let Some((overflows, drops)) = listen_counters() {
        counter!(LISTEN_OVERFLOWS).absolute(overflows);
        counter!(LISTEN_DROPS).absolute(drops);
    }
}

/// ListenOverflows and ListenDrops from /proc/net/netstat: a connect burst
/// that overflows the accept queue (the seed's "TCP queue overflow") shows here.
fn listen_counters() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse().ok())
    };
    Some((get("ListenOverflows")?, get("ListenDrops")?))
}

/// Registers every counter with each label value it can take, at 0, so that
/// series exist from the start: `rate()` and alerts see a 0 instead of "no
/// data" before the first event. Presence metrics only when Redis is used.
pub fn init_zero(presence: bool, io: &'static str) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "io" => io).set(1.0);
    // The I/O cores' counters (binds, closes, timeouts, accept errors, acks,
    // drops) are set, every label value, from the cores' figures at each
    // scrape (gateway/stats.rs): they need no registration here.
    counter!(KICKS, "reason" => "replaced").increment(0);
    for kind in ["device", "devices", "topic", "all"] {
        for result in ["ok", "not_found"] {
            counter!(PUSHES, "kind" => kind, "result" => result).increment(0);
        }
    }
    for result in ["unauthorized", "invalid"] {
        counter!(PUSHES, "kind" => "unknown", "result" => result).increment(0);
    }
    for o in ["delivered", "unknown"] {
        counter!(PUSH_RECIPIENTS, "outcome" => o).increment(0);
    }
    for f in ["kept_offline", "dropped"] {
        counter!(UNACKED, "fate" => f).increment(0);
    }
    if presence {
        for c in [
            REDIS_RECONNECTS,
            SUBSCRIBER_RECONNECTS,
            RECONCILIATIONS,
            NODE_CLEANUPS,
            CLEANED_ENTRIES,
            OFFLINE_STORED,
            OFFLINE_DELIVERED,
            OFFLINE_EXPIRED,
        ] {
            counter!(c).increment(0);
        }
        for r in ["ok", "error"] {
            counter!(PRESENCE_WRITES, "result" => r).increment(0);
        }
        for k in ["missing", "mismatched", "stale"] {
            counter!(RECONCILE_FIXES, "kind" => k).increment(0);
        }
        for d in ["sent", "received"] {
            counter!(REMOTE_KICKS, "direction" => d).increment(0);
        }
        for k in ["devices", "fanout"] {
            counter!(PUSHES_ROUTED, "kind" => k).increment(0);
        }
        // Pushes answered 503 because Redis did not answer (push/api.rs).
        for kind in ["device", "devices", "topic", "all"] {
            counter!(PUSHES, "kind" => kind, "result" => "unavailable").increment(0);
        }
        counter!(PUSH_RECIPIENTS, "outcome" => "unavailable").increment(0);
        gauge!(PRESENCE_QUEUE).set(0.0);
        gauge!(PRESENCE_LAG).set(0.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listen_counters_are_read_from_proc() {
        let (o, d) = super::listen_counters().expect("TcpExt in /proc/net/netstat");
        assert!(d >= o, "ListenDrops includes overflows: {d} < {o}");
    }
}
