//! The admin HTTP API, served on the control-plane thread (plain tokio).
//!
//! This file: the router, `GET /healthz`, `GET /metrics` (Prometheus text)
//! and `GET /v1/sessions/{device_id}` (a session's in-memory state), which
//! answer from this node alone. `auth` guards the `/v1/*` reads with a
//! bearer token; `server` is the listener with its connection cap and
//! timeouts. `presence` serves the views of shared
//! presence (`/v1/presence/{device_id}`, `/v1/consistency`), which ask Redis;
//! `POST /v1/push` is `crate::push::api`. It listens on loopback by default;
//! nothing here walks sessions itself: lookups go through the gateway's
//! facade (the device index and the owning core).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::gateway::Gateway;
use crate::presence::RedisPresence;

mod auth;
mod presence;
mod server;

pub use self::auth::ReadTokens;
pub use self::server::{serve, AdminLimits};

#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    pub metrics: PrometheusHandle,
    /// None in standalone mode (presence is the node's memory).
    pub presence: Option<Arc<RedisPresence>>,
    /// Bearer token of the push API (None: push API disabled).
    pub push_token: Option<Arc<str>>,
    /// Tokens that open the `/v1/*` reads (the admin token or the push token).
    pub read_tokens: ReadTokens,
}

pub fn router(state: AdminState) -> Router {
    let reads = Router::new()
        .route("/v1/sessions/{device_id}", get(session))
        .route("/v1/presence/{device_id}", get(presence::device))
        .route("/v1/consistency", get(presence::consistency))
        .route_layer(axum::middleware::from_fn_with_state(
            state.read_tokens.clone(),
            auth::require_read_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // The push API checks its own token (it answers with push metrics).
        .route("/v1/push", axum::routing::post(push))
        .merge(reads)
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
        "listeners": gw.listeners.iter().map(|l| json!({
            "transport": l.kind.name(),
            "addr": l.addr.to_string(),
            "proxy_protocol": l.proxy,
        })).collect::<Vec<_>>(),
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
