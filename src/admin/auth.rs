//! Bearer tokens on the admin API's `/v1/*` reads.
//!
//! `/v1/sessions/{id}` shows peer addresses and `/v1/consistency` makes the
//! node read Redis for every session, so neither is open to whoever reaches
//! the admin port. A read takes the read-only `--admin-token` or the push
//! token (`--push-token`, the more powerful of the two); with neither set,
//! the reads are disabled (403 saying how to enable them). `/healthz` and
//! `/metrics` stay open: probes and Prometheus need no secret, and the
//! admin address is loopback by default. Tokens are compared in constant
//! time and never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::metrics as m;

/// The tokens a `/v1/*` read may present.
#[derive(Clone, Default)]
pub struct ReadTokens {
    pub admin: Option<Arc<str>>,
    pub push: Option<Arc<str>>,
}

impl std::fmt::Debug for ReadTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTokens")
            .field("admin", &self.admin.as_ref().map(|_| "<redacted>"))
            .field("push", &self.push.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The outcome of checking a request's `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token is configured: reads are off.
    Disabled,
    /// No `Authorization: Bearer` header.
    Missing,
    Wrong,
}

impl ReadTokens {
    pub fn check(&self, authorization: Option<&str>) -> Verdict {
        if self.admin.is_none() && self.push.is_none() {
            return Verdict::Disabled;
        }
        let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return Verdict::Missing;
        };
        let matches = |t: &Option<Arc<str>>| {
            t.as_deref()
                .is_some_and(|t| crate::auth::constant_time_eq(given.as_bytes(), t.as_bytes()))
        };
        // Both compared, whatever the first says: no timing hint of which matched.
        let (a, p) = (matches(&self.admin), matches(&self.push));
        if a | p {
            Verdict::Allowed
        } else {
            Verdict::Wrong
        }
    }
}

/// Middleware for the `/v1/*` read routes.
pub async fn require_read_token(
    State(tokens): State<ReadTokens>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (status, message) = match tokens.check(given) {
        Verdict::Allowed => return next.run(req).await,
        Verdict::Disabled => (
            StatusCode::FORBIDDEN,
            "the admin API's /v1 reads are disabled: start miopd with --admin-token",
        ),
        Verdict::Missing => (
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <admin token>",
        ),
        Verdict::Wrong => (StatusCode::FORBIDDEN, "wrong admin token"),
    };
    metrics::counter!(m::ADMIN_UNAUTHORIZED).increment(1);
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_token_opens_reads_and_none_configured_disables_them() {
        let both = ReadTokens {
            admin: Some("ro".into()),
            push: Some("rw".into()),
        };
        assert_eq!(both.check(Some("Bearer ro")), Verdict::Allowed);
        assert_eq!(both.check(Some("Bearer rw")), Verdict::Allowed);
        assert_eq!(both.check(Some("Bearer r")), Verdict::Wrong);
        assert_eq!(both.check(Some("ro")), Verdict::Missing);
        assert_eq!(both.check(None), Verdict::Missing);
        let none = ReadTokens::default();
        assert_eq!(none.check(Some("Bearer ro")), Verdict::Disabled);
        let shown = format!("{both:?}");
        assert!(
            shown.contains("redacted") && !shown.contains("rw"),
            "{shown}"
        );
    }
}
