//! Push load: `POST /v1/push` at a steady rate over one keep-alive HTTP/1.1
//! connection, once every connection of the run is bound. Each payload starts
//! with `t=<unix µs>;`, so the receiving connections measure delivery latency
//! (the "push" latency of the report).
//!
//! A small hand-written HTTP/1.1 client: the crate already has a server-side
//! HTTP stack (axum/hyper) but no client, and one fixed request shape does not
//! justify a client dependency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use super::cli::{Plan, PushPlan, PushTarget};

#[derive(Default)]
pub struct PushStats {
    /// Push API requests answered 200.
    pub requests: AtomicU64,
    /// Requests that failed (connection errors, non-200 answers).
    pub errors: AtomicU64,
    /// Recipients the gateway reported delivered (local + routed).
    pub recipients: AtomicU64,
}

struct Http {
    addr: String,
    stream: Option<BufStream<TcpStream>>,
}

impl Http {
    async fn post(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(BufStream::new(s));
        }
        let s = self.stream.as_mut().expect("connected");
        let result = async {
            let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
                self.addr,
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body.as_bytes()).await?;
            s.flush().await?;
            let mut line = String::new();
            s.read_line(&mut line).await?;
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
            let mut len = 0usize;
            loop {
                line.clear();
                if s.read_line(&mut line).await? == 0 {
                    return Err(std::io::Error::other("connection closed in headers"));
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut resp = vec![0; len];
            s.read_exact(&mut resp).await?;
            Ok((status, resp))
        }
        .await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }
}

/// A push payload of `size` bytes (at least the timestamp): `t=<unix µs>;`
/// then padding. Shared with the MQTT publisher, so both measure alike.
pub fn payload(size: usize) -> String {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut payload = format!("t={now_us};");
    while payload.len() < size {
        payload.push('x');
    }
    payload
}

fn body(plan: &Plan, push: &PushPlan) -> String {
    let payload = payload(push.size);
    let to = match &push.target {
        PushTarget::All => "\"all\"".to_owned(),
        PushTarget::Device => {
            let i = fastrand::u64(..plan.connections);
            format!(
                "{{\"device\": {}}}",
                serde_json::Value::String(plan.device_id(i))
            )
        }
        PushTarget::Topic(t) => format!("{{\"topic\": {}}}", serde_json::Value::String(t.clone())),
    };
    format!("{{\"to\": {to}, \"payload\": \"{payload}\"}}")
}

/// Waits for `go`, then pushes at `push.rate` until `stop` (or `push.count`).
pub async fn run(
    plan: Arc<Plan>,
    push: PushPlan,
    go: Arc<AtomicBool>,
    stats: Arc<PushStats>,
    mut stop: watch::Receiver<bool>,
) {
    while !go.load(Ordering::Relaxed) {
        tokio::select! {
            _ = stop.changed() => return,
            _ = sleep(Duration::from_millis(20)) => {}
        }
    }
    let mut http = Http {
        addr: push.api.clone(),
        stream: None,
    };
    let pace = Duration::from_secs_f64(1.0 / push.rate);
    let mut next = Instant::now();
    let mut warned = false;
    let mut sent = 0u64;
    while push.count.is_none_or(|c| sent < c) {
        tokio::select! {
            _ = stop.changed() => return,
            _ = sleep_until(next) => {}
        }
        next += pace;
        sent += 1;
        match http
            .post("/v1/push", push.token.as_deref(), &body(&plan, &push))
            .await
        {
            Ok((200, resp)) => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                let delivered = serde_json::from_slice::<serde_json::Value>(&resp)
                    .ok()
                    .and_then(|v| v["delivered"].as_u64())
                    .unwrap_or(0);
                stats.recipients.fetch_add(delivered, Ordering::Relaxed);
            }
            other => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if !warned {
                    warned = true;
                    let why = match other {
                        Ok((code, resp)) => {
                            format!("HTTP {code}: {}", String::from_utf8_lossy(&resp))
                        }
                        Err(e) => e.to_string(),
                    };
                    eprintln!("miop-bench: push API request failed ({why}); counting further failures silently");
                }
            }
        }
    }
}
