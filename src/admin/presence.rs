//! The admin API's views of shared presence: what Redis says about a device
//! (`GET /v1/presence/{device_id}`) and how far this node's memory and Redis
//! differ (`GET /v1/consistency`). Unlike the rest of the admin API they ask
//! Redis, so they answer 503 while it is unreachable; in standalone mode
//! they answer from this node's memory, which is then the presence store.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AdminState;

/// Redis did not answer: 503, saying so.
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
pub(super) async fn device(State(s): State<AdminState>, Path(device_id): Path<String>) -> Response {
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
pub(super) struct ConsistencyQuery {
    /// Compare only this many random sessions (and set members) instead of all.
    sample: Option<usize>,
}

/// Compares this node's memory with Redis: counts of missing, stale and
/// mismatched entries (docs/PRESENCE.md gives the cost of a full check).
pub(super) async fn consistency(
    State(s): State<AdminState>,
    Query(q): Query<ConsistencyQuery>,
) -> Response {
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
