//! The admin listener: its own accept loop around hyper's HTTP/1 server,
//! because `axum::serve` has no limits at all and the admin plane must keep
//! answering exactly when the node is under stress.
//!
//! - **A connection cap** (`--admin-max-conns`): each connection holds a
//!   permit; past the cap a connection gets one short `503` and is closed
//!   (`miop_admin_connections_refused_total`), so a flood of idle admin
//!   connections cannot eat the fds reserved for the admin API and Redis
//!   (`--fd-reserve`) or block device binds.
//! - **A header timeout that is also the idle keep-alive limit**
//!   (`--admin-timeout`): hyper's `header_read_timeout` runs whenever a
//!   connection waits for a request head, first or next, so a slowloris
//!   sender and an idle keep-alive connection are both closed after it.
//! - **A request timeout** (the same duration): a handler, including the
//!   reading of a slowly sent body, that takes longer is answered `408`
//!   and the connection closed.
//! - **A lifetime cap** ([`MAX_LIFETIME`]): bounds a client that sends
//!   requests but never reads the answers (hyper has no write timeout).
//! - **accept() errors** (EMFILE at the fd limit) are counted and retried
//!   after a short pause instead of spinning or stopping the server.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crate::config::AdminLimits;
use crate::metrics as m;

/// The longest an admin connection lives, whatever it does.
pub const MAX_LIFETIME: Duration = Duration::from_secs(300);

/// What a connection over the cap is told before it is closed.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 38\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many admin connections, try later\n";

/// Serves `router` on `listener` under `limits`, until the runtime stops.
pub async fn serve(listener: TcpListener, router: Router, limits: AdminLimits) {
    let timeout = limits.timeout;
    let router = router.layer(axum::middleware::from_fn(move |req, next| {
        request_timeout(timeout, req, next)
    }));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned = false;
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                let errno = crate::driver::link::ACCEPT_ERRNOS
                    [crate::driver::link::accept_errno_index(e.raw_os_error())];
                metrics::counter!(m::ADMIN_ACCEPT_ERRORS, "errno" => errno).increment(1);
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, "admin listener cannot accept; retrying (counted in miop_admin_accept_errors_total)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        warned = false;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!(m::ADMIN_REFUSED).increment(1);
            // Best effort: the answer fits any socket buffer; no waiting on a
            // client that is part of a flood.
            let _ = stream.try_write(OVER_CAP);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        metrics::gauge!(m::ADMIN_CONNECTIONS).increment(1.0);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(MAX_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "admin connection ended"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!("admin connection closed at its lifetime cap"),
            }
            metrics::gauge!(m::ADMIN_CONNECTIONS).decrement(1.0);
            drop(permit);
        });
    }
}

/// Answers `408` (and closes) when a request, body included, is not handled
/// within `limit`.
async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!(m::ADMIN_TIMEOUTS).increment(1);
            let mut r = (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(serde_json::json!({
                    "error": format!("request not completed within {} ms", limit.as_millis())
                })),
            )
                .into_response();
            r.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            r
        }
    }
}
