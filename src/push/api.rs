//! `POST /v1/push`: the backend's way to reach devices.
//!
//! ```text
//! POST /v1/push
//! Authorization: Bearer <--push-token>
//! {"to": {"device": "ID"} | {"devices": ["ID", ...]} | {"topic": "T"} | "all",
//!  "payload": "text" | "payload_b64": "...", "ttl": seconds, "ack": true}
//! → 200 {"id": 7356..., "delivered": N, "offline": N, "unknown": N}
//! ```
//!
//! Every malformed request is a 4xx with `{"error": "..."}` saying what is
//! wrong: 401 without a bearer token, 403 with a wrong one (or when the push
//! API is disabled because no --push-token is set), 400 for bad JSON or
//! targets, 413 for an oversized payload or target list, 404 when the one
//! device addressed is not online (and no `ttl` kept it).
//!
//! The push is first delivered to the sessions held here; with `--redis`,
//! the devices not held here are looked up and routed to the node holding
//! them, those online nowhere are kept offline if the push has a `ttl`, and
//! topic pushes and broadcasts are published to every node (while this node
//! delivers to its own sessions, not after: a core that does not answer
//! within 10 s makes a 503 that carries `other_nodes` when they got it).
//! `unknown` only
//! counts devices that Redis reported as online nowhere (and not kept).
//!
//! **No silent loss.** When Redis cannot answer for that part (an error, a
//! dead or hung server), the answer is **503**, never a 404 or a 200 hiding
//! the failure:
//!
//! ```text
//! → 503 {"error": "Redis unavailable: <what>: <short cause>", "id", "delivered",
//!        "offline", "unknown",
//!        "not_stored": [IDs]   (device targets with a ttl: neither delivered nor kept)
//!      | "not_routed": [IDs]}  (device targets without a ttl: may be online elsewhere)
//! ```
//!
//! A device that Redis places on a node that is not listening (no subscriber
//! on its push channel: the node died and its lease has not lapsed yet, or
//! it was cut off from Redis and has not subscribed again) would lose the
//! message in pub/sub, so it is never counted as delivered: with a `ttl` the
//! message is kept for it as for an offline device (`offline`; it gets it at
//! its next bind), without one the answer is 503 with the device in
//! `not_routed` and an error naming the node.
//!
//! Local deliveries that happened are still counted in `delivered`, so the
//! caller can retry just the devices listed. A topic push or broadcast whose
//! publish failed answers 503 with the local counts and no `other_nodes`. A
//! push that needs nothing from Redis (every device addressed is bound here)
//! answers as usual while Redis is down. All Redis commands of one push
//! share one command timeout (2 s in miopd), so the answer comes within
//! about that time whether Redis is dead or hung. A command still queued
//! (Redis down, reconnecting) when its time runs out is never sent later;
//! one already written to a hung server may still run if it resumes, so a
//! device listed in `not_stored` whose push the caller retries can, rarely,
//! get the message twice (delivery is at-least-once). Each such 503 is counted in
//! `miop_pushes_total{result="unavailable"}` (its devices in
//! `miop_push_recipients_total{outcome="unavailable"}`) and logged at WARN
//! (one line per 10 s, with the number suppressed).

use axum::body::Bytes as Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use std::time::Duration;

use super::{Deadline, RoutedPush};
use crate::gateway::{Gateway, PushTo, RateLimitedLog};
use crate::metrics as m;
use crate::presence::RedisPresence;
use crate::protocol::{HEADER_LEN, MAX_DEVICE_ID_LEN, MAX_FRAME_LEN, MAX_TOPIC_LEN};

/// Largest payload a Push frame can carry (frame limit less header and id).
pub const MAX_PAYLOAD: usize = MAX_FRAME_LEN - HEADER_LEN - 8;
/// Most devices one request may address.
pub const MAX_DEVICES: usize = 10_000;
/// Longest TTL accepted (30 days).
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A parsed, valid push request.
#[derive(Debug)]
pub struct PushRequest {
    pub to: PushTo,
    pub kind: &'static str,
    pub payload: bytes::Bytes,
    pub ttl: Option<u64>,
    pub ack: bool,
}

/// Parses and validates a request body; the error is (status, message).
pub fn parse(body: &[u8]) -> Result<PushRequest, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("body must be a JSON object".into()))?;
    for k in obj.keys() {
        if !["to", "payload", "payload_b64", "ttl", "ack"].contains(&k.as_str()) {
            return Err(bad(format!("unknown field {k:?}")));
        }
    }
    let check_device = |d: &Value| -> Result<String, (StatusCode, String)> {
        let s = d
            .as_str()
            .ok_or_else(|| bad(format!("device ids must be strings, got {d}")))?;
        if s.is_empty() || s.len() > MAX_DEVICE_ID_LEN {
            return Err(bad(format!(
                "device id {s:?} must be 1 to {MAX_DEVICE_ID_LEN} bytes"
            )));
        }
        Ok(s.to_owned())
    };
    let (to, kind) = match obj.get("to") {
        None => return Err(bad("missing \"to\": {\"device\": ID}, {\"devices\": [...]}, {\"topic\": T} or \"all\"".into())),
        Some(Value::String(s)) if s == "all" => (PushTo::All, "all"),
        Some(Value::Object(t)) if t.len() == 1 => {
            let (k, val) = t.iter().next().expect("one key");
            match k.as_str() {
                "device" => (PushTo::Devices(vec![check_device(val)?]), "device"),
                "devices" => {
                    let list = val.as_array().ok_or_else(|| bad("\"devices\" must be an array".into()))?;
                    if list.is_empty() {
                        return Err(bad("\"devices\" must not be empty".into()));
                    }
                    if list.len() > MAX_DEVICES {
                        return Err((
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("at most {MAX_DEVICES} devices per request, got {}", list.len()),
                        ));
                    }
                    (PushTo::Devices(list.iter().map(check_device).collect::<Result<_, _>>()?), "devices")
                }
                "topic" => {
                    let t = val.as_str().ok_or_else(|| bad("\"topic\" must be a string".into()))?;
                    if t.is_empty() || t.len() > MAX_TOPIC_LEN {
                        return Err(bad(format!("topic must be 1 to {MAX_TOPIC_LEN} bytes")));
                    }
                    (PushTo::Topic(t.to_owned()), "topic")
                }
                other => return Err(bad(format!("unknown target {other:?}: use device, devices, topic or \"all\""))),
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "invalid \"to\" {other}: use {{\"device\": ID}}, {{\"devices\": [...]}}, {{\"topic\": T}} or \"all\""
            )))
        }
    };
    let payload = match (obj.get("payload"), obj.get("payload_b64")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "give either \"payload\" or \"payload_b64\", not both".into()
            ))
        }
        (Some(Value::String(s)), None) => bytes::Bytes::from(s.clone().into_bytes()),
        (None, Some(Value::String(s))) => bytes::Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| bad(format!("\"payload_b64\" is not valid base64: {e}")))?,
        ),
        (None, None) => return Err(bad("missing \"payload\" (text) or \"payload_b64\"".into())),
        _ => return Err(bad("\"payload\" and \"payload_b64\" must be strings".into())),
    };
    if payload.len() > MAX_PAYLOAD {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "payload of {} bytes exceeds the maximum of {MAX_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(t) if t <= MAX_TTL_SECS => Some(t),
            _ => {
                return Err(bad(format!(
                    "\"ttl\" must be seconds between 0 and {MAX_TTL_SECS}"
                )))
            }
        },
    };
    let ack = match obj.get("ack") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("\"ack\" must be true or false".into())),
    };
    Ok(PushRequest {
        to,
        kind,
        payload,
        ttl,
        ack,
    })
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorize(headers: &HeaderMap, token: Option<&str>) -> Result<(), Box<Response>> {
    let deny = |status, msg: &str| Err(Box::new(error(status, msg)));
    let Some(token) = token else {
        return deny(
            StatusCode::FORBIDDEN,
            "the push API is disabled: start miopd with --push-token",
        );
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => deny(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <push token>",
        ),
        Some(g) if crate::auth::constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => deny(StatusCode::FORBIDDEN, "wrong push token"),
    }
}

pub async fn handle(
    gateway: &Gateway,
    presence: Option<&RedisPresence>,
    token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = authorize(headers, token) {
        metrics::counter!(m::PUSHES, "kind" => "unknown", "result" => "unauthorized").increment(1);
        return *r;
    }
    let req = match parse(&body) {
        Ok(r) => r,
        Err((status, msg)) => {
            metrics::counter!(m::PUSHES, "kind" => "unknown", "result" => "invalid").increment(1);
            return error(status, msg);
        }
    };
    let id = gateway.next_message_id();
    // Pushes to devices with a TTL are at-least-once: unacked copies are kept
    // until the TTL passes and go to offline storage if the session ends
    // before acknowledging. (Not for topics and broadcasts: a copy per
    // recipient of a broadcast would cost memory per session.)
    let addressed = matches!(req.to, PushTo::Devices(_));
    let keep_until_ms = req.ttl.filter(|t| *t > 0 && addressed).map(|t| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            + t * 1000
    });
    // With shared presence: Redis and the message as other nodes get it.
    let routing = presence.map(|p| {
        let mut msg = RoutedPush::new(id, req.ack, &req.payload, &gateway.node_id, &req.to);
        msg.keep_until_ms = keep_until_ms;
        (p, msg)
    });
    let local_push = gateway.push_local(id, &req.to, req.payload.clone(), req.ack, keep_until_ms);
    // A topic push or broadcast goes out to the other nodes while this one
    // delivers to its own sessions, not after: at a broadcast to 1M over 56
    // gateways, this node's local job took ~7 s on a busy core, and every
    // other node waited for it before hearing of the message.
    let everywhere = matches!(req.to, PushTo::Topic(_) | PushTo::All);
    let (local, published) = match routing.as_ref().filter(|_| everywhere) {
        Some((p, msg)) => {
            let deadline = Deadline::after(p.command_timeout());
            let (local, published) = tokio::join!(local_push, p.fan_out(msg, deadline));
            (local, Some(published))
        }
        None => (local_push.await, None),
    };
    let local = match local {
        Ok(l) => l,
        Err(e) => {
            let mut body = json!({ "error": e });
            if let Some(Ok(n)) = published {
                // The other nodes have it already: say so, so a retry is a
                // choice made knowing they would get it twice.
                body["other_nodes"] = json!(n);
            }
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    };
    let mut report = local.report;
    let mut nodes = None;
    // Devices whose message Redis could not take: with a TTL, neither
    // delivered nor kept (`not_stored`); without, not routed to whichever
    // node may hold them (`not_routed`).
    let mut failed: Vec<String> = Vec::new();
    let mut failure: Option<String> = None;
    let ttl = req.ttl.filter(|t| *t > 0);
    // With shared presence, what is not held here goes to the node that holds
    // it; topic pushes and broadcasts go to every node.
    if let Some((p, msg)) = &routing {
        // Its own time for the commands that follow the local delivery.
        let deadline = Deadline::after(p.command_timeout());
        match &req.to {
            PushTo::Devices(_) if !local.not_here.is_empty() => {
                let r = p.route(msg, local.not_here, deadline).await;
                report.delivered += r.routed;
                failed = r.failed;
                failure = r.error;
                // `unknown` only counts what Redis says is online nowhere.
                report.unknown = r.nowhere.len() as u64;
                // Online on a node that does not listen: with a TTL, keep it
                // for them as for offline devices (they get it at their next
                // bind); without, say it did not go out.
                let mut keep = r.nowhere;
                if !r.unheard.is_empty() {
                    if ttl.is_some() {
                        keep.extend(r.unheard);
                    } else {
                        failure.get_or_insert_with(|| {
                            format!(
                                "the node holding the device ({}) is not listening on Redis (down, or reconnecting)",
                                r.unheard_node.as_deref().unwrap_or("?")
                            )
                        });
                        failed.extend(r.unheard);
                    }
                }
                // Online nowhere: keep it for them if the push has a TTL.
                if let Some(ttl) = ttl.filter(|_| !keep.is_empty()) {
                    let s = p.store_offline(msg, ttl, &keep, deadline).await;
                    report.offline += s.stored;
                    report.unknown = 0;
                    failed.extend(s.failed);
                    if let Some(e) = s.error {
                        failure.get_or_insert_with(|| {
                            format!("keeping the message for offline devices: {e}")
                        });
                    }
                }
            }
            PushTo::Topic(_) | PushTo::All => match published {
                Some(Ok(n)) => nodes = Some(n),
                Some(Err(e)) => failure = Some(format!("publishing to the other nodes: {e}")),
                None => {}
            },
            _ => {}
        }
    }
    metrics::counter!(m::PUSH_RECIPIENTS, "outcome" => "delivered").increment(report.delivered);
    metrics::counter!(m::PUSH_RECIPIENTS, "outcome" => "unknown").increment(report.unknown);
    let mut body = json!({
        "id": report.id,
        "delivered": report.delivered,
        "offline": report.offline,
        "unknown": report.unknown,
    });
    if let Some(cause) = failure {
        // Redis did not answer for part of the push: say so, with what did
        // happen, so the caller can retry the rest.
        let reason = if cause.starts_with("the node holding") {
            cause
        } else {
            format!("Redis unavailable: {cause}")
        };
        metrics::counter!(m::PUSHES, "kind" => req.kind, "result" => "unavailable").increment(1);
        metrics::counter!(m::PUSH_RECIPIENTS, "outcome" => "unavailable")
            .increment(failed.len() as u64);
        UNAVAILABLE_LOG.lock().unwrap().warn(|suppressed| {
            tracing::warn!(
                id = report.id,
                kind = req.kind,
                delivered = report.delivered,
                devices_affected = failed.len(),
                suppressed,
                "push answered 503: {reason}"
            )
        });
        body["error"] = json!(reason);
        if addressed {
            body[if ttl.is_some() {
                "not_stored"
            } else {
                "not_routed"
            }] = json!(failed);
        }
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if let Some(n) = nodes {
        // Other nodes deliver to their own sessions; their counts are not known here.
        body["other_nodes"] = json!(n);
    }
    if req.kind == "device" && report.delivered == 0 && report.offline == 0 {
        metrics::counter!(m::PUSHES, "kind" => req.kind, "result" => "not_found").increment(1);
        body["error"] = json!(if presence.is_some() {
            "device is not online (give a \"ttl\" to keep the message until it binds)"
        } else {
            "device is not online on this node (offline storage needs --redis)"
        });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    metrics::counter!(m::PUSHES, "kind" => req.kind, "result" => "ok").increment(1);
    Json(body).into_response()
}

/// One WARN line per 10 s for pushes answered 503 because Redis did not
/// answer (the others are counted in the next line's `suppressed`).
static UNAVAILABLE_LOG: std::sync::LazyLock<std::sync::Mutex<RateLimitedLog>> =
    std::sync::LazyLock::new(|| {
        std::sync::Mutex::new(RateLimitedLog::new(Duration::from_secs(10)))
    });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_shapes_parse() {
        let r = parse(br#"{"to": {"device": "d1"}, "payload": "hi", "ttl": 60}"#).unwrap();
        assert!(matches!(r.to, PushTo::Devices(ref v) if v == &["d1"]));
        assert_eq!(
            (r.kind, &r.payload[..], r.ttl, r.ack),
            ("device", &b"hi"[..], Some(60), true)
        );
        let r = parse(br#"{"to": {"devices": ["a", "b"]}, "payload_b64": "AAEC"}"#).unwrap();
        assert_eq!((r.kind, &r.payload[..]), ("devices", &[0u8, 1, 2][..]));
        let r = parse(br#"{"to": {"topic": "news"}, "payload": "x", "ack": false}"#).unwrap();
        assert!(matches!(r.to, PushTo::Topic(ref t) if t == "news") && !r.ack);
        assert!(matches!(
            parse(br#"{"to": "all", "payload": ""}"#).unwrap().to,
            PushTo::All
        ));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let big = format!(
            r#"{{"to": "all", "payload": "{}"}}"#,
            "x".repeat(MAX_PAYLOAD + 1)
        );
        for (body, status, needle) in [
            (&b"not json"[..], 400, "not valid JSON"),
            (br#"[1]"#, 400, "JSON object"),
            (br#"{"payload": "x"}"#, 400, "missing \"to\""),
            (
                br#"{"to": {"group": "g"}, "payload": "x"}"#,
                400,
                "unknown target",
            ),
            (
                br#"{"to": "everyone", "payload": "x"}"#,
                400,
                "invalid \"to\"",
            ),
            (
                br#"{"to": {"devices": []}, "payload": "x"}"#,
                400,
                "must not be empty",
            ),
            (
                br#"{"to": {"device": ""}, "payload": "x"}"#,
                400,
                "1 to 128 bytes",
            ),
            (br#"{"to": "all"}"#, 400, "missing \"payload\""),
            (
                br#"{"to": "all", "payload": "x", "payload_b64": "eA=="}"#,
                400,
                "not both",
            ),
            (br#"{"to": "all", "payload_b64": "!!"}"#, 400, "base64"),
            (br#"{"to": "all", "payload": "x", "ttl": -1}"#, 400, "ttl"),
            (
                br#"{"to": "all", "payload": "x", "extra": 1}"#,
                400,
                "unknown field",
            ),
            (big.as_bytes(), 413, "exceeds the maximum"),
        ] {
            let (s, msg) = parse(body).unwrap_err();
            assert_eq!(s.as_u16(), status, "{msg}");
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
    }
}
