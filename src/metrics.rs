//! Metric names and the handles the cores update.
//!
//! Names follow Prometheus conventions: base units, `_total` for counters, no
//! per-device or per-address labels. The recorder is installed once, before the
//! cores start, and rendered by the admin server (`GET /metrics`).

use metrics::{counter, describe_counter, describe_gauge, gauge, Counter, Gauge};
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
    Ok(handle)
}

/// Handles resolved once per core so the hot path does no registry lookups.
pub struct CoreMetrics {
    pub sessions: Gauge,
    pub connections: Gauge,
    pub accepted: Counter,
    pub binds_ok: Counter,
    pub heartbeat_timeouts: Counter,
    pub bind_timeouts: Counter,
    pub push_acks: Counter,
}

impl CoreMetrics {
    pub fn new() -> CoreMetrics {
        CoreMetrics {
            sessions: gauge!(SESSIONS),
            connections: gauge!(CONNECTIONS),
            accepted: counter!(ACCEPTED),
            binds_ok: counter!(BINDS, "result" => "ok"),
            heartbeat_timeouts: counter!(HEARTBEAT_TIMEOUTS),
            bind_timeouts: counter!(BIND_TIMEOUTS),
            push_acks: counter!(PUSH_ACKS),
        }
    }
}

impl Default for CoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn bind_rejected(result: &'static str) {
    counter!(BINDS, "result" => result).increment(1);
}

pub fn closed(reason: &'static str) {
    counter!(CLOSES, "reason" => reason).increment(1);
}

pub fn kicked(reason: &'static str) {
    counter!(KICKS, "reason" => reason).increment(1);
}

pub fn accept_error(errno: &'static str) {
    counter!(ACCEPT_ERRORS, "errno" => errno).increment(1);
}
