//! The admin plane under stress and without credentials: `/v1/*` reads need
//! a bearer token, a connection cap answers 503 past it, and slow or idle
//! admin connections are closed by the header / request timeout, so the
//! admin port keeps answering and never holds the fds device binds need.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Miopd, ADMIN_TOKEN};

const PUSH_TOKEN: &str = "push-token-for-admin-tests";

/// Reads until the server closes the connection (or `limit` passes): what
/// it sent, and whether it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[test]
fn v1_reads_need_a_token_and_health_and_metrics_do_not() {
    let gw = Miopd::start(&["--push-token", PUSH_TOKEN]);
    for path in ["/v1/sessions/d1", "/v1/presence/d1", "/v1/consistency"] {
        let (status, body) = gw.try_get_as(path, None).unwrap();
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert!(body.contains("missing Authorization"), "{body}");
        let (status, body) = gw.try_get_as(path, Some("not-the-token")).unwrap();
        assert_eq!(status, 403, "{path} with a wrong token: {body}");
        assert!(body.contains("wrong admin token"), "{body}");
        // The read-only admin token and the push token both open reads.
        for token in [ADMIN_TOKEN, PUSH_TOKEN] {
            let (status, body) = gw.try_get_as(path, Some(token)).unwrap();
            assert!(
                status == 200 || status == 404,
                "{path} with a token: {status} {body}"
            );
        }
    }
    // The admin token is read-only: it does not push.
    let (status, _) = gw.post(
        "/v1/push",
        r#"{"to": "all", "payload": "x"}"#,
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 403);
    assert_eq!(gw.try_get_as("/healthz", None).unwrap().0, 200);
    let (status, body) = gw.try_get_as("/metrics", None).unwrap();
    assert_eq!(status, 200);
    let refused = body
        .lines()
        .find_map(|l| l.strip_prefix("miop_admin_unauthorized_total "))
        .map(|v| v.trim().parse::<f64>().unwrap());
    assert_eq!(refused, Some(6.0), "3 paths × (missing + wrong)");
}

#[tokio::test]
async fn past_the_connection_cap_admin_answers_503_and_devices_still_bind() {
    let gw = Miopd::start(&["--admin-max-conns", "4", "--admin-timeout", "2s"]);
    // Four idle connections take every permit.
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(gw.admin).unwrap())
        .collect();
    // Let the server accept all four before the fifth.
    common::wait_until(
        Duration::from_secs(10),
        "a fifth admin connection refused",
        || {
            let mut extra = TcpStream::connect(gw.admin).unwrap();
            let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(1));
            closed
                && answer.starts_with("HTTP/1.1 503")
                && answer.contains("too many admin connections")
        },
    );
    // A flood of admin connections does not stop device binds.
    let mut flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(gw.admin).ok())
        .collect();
    let mut device = gw.bound("d-during-admin-flood").await;
    device.ping().await.expect("ping");
    flood.clear();
    // The idle four are closed by the header timeout (the idle keep-alive
    // limit), which frees the permits: the admin API answers again.
    for s in &mut idle {
        let (_, closed) = read_until_closed(s, Duration::from_secs(20));
        assert!(closed, "an idle admin connection was never closed");
    }
    common::wait_until(Duration::from_secs(10), "/healthz answers again", || {
        matches!(gw.try_get("/healthz"), Some((200, _)))
    });
    let refused = gw
        .metric("miop_admin_connections_refused_total")
        .expect("refusals counted");
    assert!(refused >= 200.0, "refused {refused}");
}

#[test]
fn slow_and_idle_admin_clients_are_cut_off() {
    let gw = Miopd::start(&["--admin-timeout", "1s", "--push-token", PUSH_TOKEN]);
    // Slowloris: half a request head, then nothing.
    let mut slow = TcpStream::connect(gw.admin).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow:")
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(15));
    assert!(closed, "a half-sent request head was never closed");

    // Keep-alive: one request answered, then the idle connection is closed.
    let mut keep = TcpStream::connect(gw.admin).unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (answer, closed) = read_until_closed(&mut keep, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle keep-alive connection was never closed");

    // A body that never arrives in full: 408, then closed.
    let mut body = TcpStream::connect(gw.admin).unwrap();
    write!(
        body,
        "POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUSH_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"to\": "
    )
    .unwrap();
    let (answer, closed) = read_until_closed(&mut body, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not completed within 1000 ms"), "{answer}");
    assert!(closed, "a connection after its 408 was never closed");
    assert!(gw.metric("miop_admin_request_timeouts_total").unwrap() >= 1.0);
}
