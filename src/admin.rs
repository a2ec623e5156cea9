//! The admin HTTP API, served on the control-plane thread (plain tokio).
//!
//! `GET /healthz`, `GET /metrics` (Prometheus text) and
//! `GET /v1/sessions/{device_id}` (a session's in-memory state). It listens on
//! loopback by default; nothing here walks sessions itself: lookups go through
//! the device index to the owning core.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::gateway::Gateway;
use crate::presence::RedisPresence;

#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub metrics: PrometheusHandle,
    /// None in standalone mode (presence is the node's memory).
    pub presence: Option<Arc<RedisPresence>>,
    /// Bearer token of the push API (None: push API disabled).
    pub push_token: Option<Arc<str>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/sessions/{device_id}", get(session))
        .route("/v1/presence/{device_id}", get(presence))
        .route("/v1/consistency", get(consistency))
        .route("/v1/push", axum::routing::post(push))
        .with_state(state)
}

async fn healthz(State(s): State<AdminState>) -> Response {
    let gw = &s.gateway;
    let draining = gw.is_draining();
    let body = json!({
        "status": if draining { "draining" } else { "ok" },
        "node": gw.node_id,
        "cores": gw.cores(),
        "io": gw.io.name(),
        "sessions": gw.sessions(),
        "uptime_seconds": gw.started.elapsed().as_secs(),
        "fd_limit": gw.fd_limit,
        "presence": match &s.presence {
            Some(p) => p.status(),
            None => json!({"mode": "standalone"}),
        },
        "listen": s.gateway.listen_addr.to_string(),
    });
    let code = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    crate::metrics::collect();
    let cores = s.gateway.core_stats().await;
    let histograms = crate::gateway::stats::publish(&cores);
    let mut body = s.metrics.render();
    body.push_str(&histograms);
    if s.presence.is_some() {
        crate::metrics::control::render(&mut body);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn session(State(s): State<AdminState>, Path(device_id): Path<String>) -> Response {
    match s.gateway.inspect(&device_id).await {
        Some(view) => Json(view).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not bound on this node", "device_id": device_id})),
        )
            .into_response(),
    }
}

fn redis_unavailable(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": format!("Redis unavailable: {e}"), "redis": "down"})),
    )
        .into_response()
}

/// What the shared presence store says about a device: 200 with the holding
/// node when it is online, 404 when not. In standalone mode the store is this
/// node's memory.
async fn presence(State(s): State<AdminState>, Path(device_id): Path<String>) -> Response {
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not online", "device_id": device_id})),
        )
            .into_response()
    };
    match &s.presence {
        Some(p) => match p.lookup(&device_id).await {
            Ok(Some(entry)) => Json(entry).into_response(),
            Ok(None) => not_found(),
            Err(e) => redis_unavailable(e),
        },
        None => match s.gateway.locate(&device_id) {
            Some(loc) => Json(json!({
                "device_id": device_id,
                "node": s.gateway.node_id,
                "session": s.gateway.session_tag(loc.session_id),
                "since_ms": loc.since_ms,
                "node_alive": true,
                "local": true,
                "source": "memory",
            }))
            .into_response(),
            None => not_found(),
        },
    }
}

#[derive(serde::Deserialize)]
struct ConsistencyQuery {
    /// Compare only this many random sessions (and set members) instead of all.
    sample: Option<usize>,
}

/// Compares this node's memory with Redis: counts of missing, stale and
/// mismatched entries (docs/PRESENCE.md gives the cost of a full check).
async fn consistency(State(s): State<AdminState>, Query(q): Query<ConsistencyQuery>) -> Response {
    match &s.presence {
        Some(p) => match p.consistency(q.sample).await {
            Ok(c) => Json(c).into_response(),
            Err(e) => redis_unavailable(e),
        },
        None => Json(json!({
            "missing": 0, "stale": 0, "mismatched": 0,
            "local_sessions": s.gateway.sessions(),
            "mode": "standalone",
        }))
        .into_response(),
    }
}

async fn push(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    crate::push::api::handle(
        &s.gateway,
        s.presence.as_deref(),
        s.push_token.as_deref(),
        &headers,
        body,
    )
    .await
}
