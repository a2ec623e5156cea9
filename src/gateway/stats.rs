//! Publishing the cores' figures at scrape time.
//!
//! Cores keep plain counters and histograms (see `engine/stats.rs` and
//! `driver/link.rs`); on every scrape of `/metrics` the control plane asks
//! each core for a copy, sums them, sets the exporter's counters and gauges,
//! and renders the histograms itself so that every bucket exists from the
//! start. Nothing on a core's hot path touches a shared metric.

use metrics::{counter, gauge};

use crate::driver::link::{CoreStats, DriverStats, ACCEPT_ERRNOS};
use crate::engine::{bind_result_name, close_kind_name, EngineStats, BIND_RESULTS, CLOSE_KINDS};
use crate::metrics::*;

/// Sets the exporter's series from the cores' figures and returns the text
/// of the histograms (appended to the exporter's rendering).
pub fn publish(cores: &[CoreStats]) -> String {
    let mut engine = EngineStats::default();
    let mut driver = DriverStats::default();
    for c in cores {
        engine.merge(&c.engine);
        driver.merge(&c.driver);
        let core = c.core.to_string();
        gauge!(CORE_SESSIONS, "core" => core.clone()).set(c.engine.sessions as f64);
        gauge!(CORE_CONNECTIONS, "core" => core).set(c.engine.connections as f64);
    }
    gauge!(SESSIONS).set(engine.sessions as f64);
    gauge!(CONNECTIONS).set(engine.connections as f64);
    counter!(ACCEPTED).absolute(engine.accepted);
    for i in 0..BIND_RESULTS {
        counter!(BINDS, "result" => bind_result_name(i)).absolute(engine.binds[i]);
    }
    for i in 0..CLOSE_KINDS {
        counter!(CLOSES, "reason" => close_kind_name(i)).absolute(engine.closed[i]);
    }
    counter!(HEARTBEAT_TIMEOUTS).absolute(engine.heartbeat_timeouts);
    counter!(BIND_TIMEOUTS).absolute(engine.bind_timeouts);
    counter!(PUSH_ACKS).absolute(engine.push_acks);
    counter!(OUTBOUND_DROPPED).absolute(engine.outbound_dropped);
    counter!(DELIVERIES).absolute(engine.deliveries);
    for (i, name) in ACCEPT_ERRNOS.iter().enumerate() {
        counter!(ACCEPT_ERRORS, "errno" => *name).absolute(driver.accept_errors[i]);
    }
    for (op, n) in [
        ("poll", driver.polls),
        ("read", driver.reads),
        ("write", driver.writes),
        ("write_inline", driver.inline_writes),
        ("accept", driver.accepts),
        ("provide_buffers", driver.provides),
    ] {
        counter!(IO_OPERATIONS, "op" => op).absolute(n);
    }
    for i in 0..crate::engine::REFUSALS {
        let reason = crate::engine::Refusal::from_index(i).name();
        counter!(ADMISSION_REFUSALS, "reason" => reason).absolute(engine.refused[i]);
    }
    counter!(INBOUND_THROTTLED).absolute(engine.throttled);
    for (i, kind) in crate::engine::HANDSHAKE_KINDS.iter().enumerate() {
        counter!(TRANSPORT_HANDSHAKES, "transport" => *kind).absolute(engine.handshakes[i]);
    }
    for &(layer, reason, n) in &engine.transport_failures {
        counter!(TRANSPORT_FAILURES, "transport" => layer, "reason" => reason).absolute(n);
    }
    counter!(ACCEPT_PAUSES).absolute(driver.accept_pauses);
    gauge!(ACCEPT_PAUSED).set(driver.accept_paused as f64);
    counter!(CORE_TURNS).absolute(driver.turns);
    counter!(CORE_YIELDS).absolute(driver.yields);
    let mut out = String::new();
    engine.bind_duration.render(
        BIND_DURATION,
        "Time from accepting a connection to its successful Bind.",
        &mut out,
    );
    driver.read_handling.render(
        READ_HANDLING,
        "Core time to handle one read (decoding and answering its frames: heartbeats, binds, acks).",
        &mut out,
    );
    engine.push_ack_latency.render(
        PUSH_ACK_LATENCY,
        "Time from queueing a push to its PushAck.",
        &mut out,
    );
    out
}
