//! The admin HTTP API, served on the control-plane thread (plain tokio).
//!
//! `GET /healthz`, `GET /metrics` (Prometheus text) and
//! `GET /v1/sessions/{device_id}` (a session's in-memory state). It listens on
//! loopback by default; nothing here walks sessions itself: lookups go through
//! the device index to the owning core.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::gateway::Gateway;

#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/sessions/{device_id}", get(session))
        .with_state(state)
}

async fn healthz(State(s): State<AdminState>) -> Response {
    let node = &s.gateway.node;
    let draining = node.draining.load(Ordering::Relaxed);
    let body = json!({
        "status": if draining { "draining" } else { "ok" },
        "node": node.node_id,
        "cores": node.cores.len(),
        "sessions": node.registry.len(),
        "uptime_seconds": node.started.elapsed().as_secs(),
        "fd_limit": node.fd_limit,
        "presence": "standalone",
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
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
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
