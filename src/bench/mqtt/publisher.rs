//! The fan-out publisher of an mqtt:// run, the counterpart of `pusher.rs`'s
//! broadcast push: once every connection is subscribed, one extra MQTT
//! connection publishes `--push-rate` messages a second (at most
//! `--push-count`) to the run's topic. Payloads start with `t=<unix µs>;` like
//! Miop pushes, so each subscriber records the delivery latency and the
//! largest of them is the time to the last subscriber.
//!
//! A message counts as a request once written (QoS 0) or once the broker's
//! PUBACK arrives (QoS 1). A broker does not say how many subscribers it
//! delivered to, so the recipients counted per message are the run's
//! connections, all subscribed when publishing starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::conn::{MqttConn, MqttError};
use super::packet::{Incoming, QoS};
use crate::bench::cli::{MqttPlan, Plan, PushPlan};
use crate::bench::pusher::{payload, PushStats};

/// Waits for `go`, then publishes at `push.rate` until `stop` or `push.count`.
pub async fn run(
    plan: Arc<Plan>,
    m: MqttPlan,
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
    let client_id = format!("{}-publisher", m.client_prefix);
    let mut conn = match timeout(plan.timeout, connect(&plan, &m, &client_id)).await {
        Ok(Ok(c)) => c,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "no CONNACK within --timeout".into(),
            };
            eprintln!("miop-bench: the MQTT publisher could not connect ({why})");
            stats.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let pace = Duration::from_secs_f64(1.0 / push.rate);
    let mut next = Instant::now();
    let mut sent = 0u64;
    let mut pkid = 0u16;
    while push.count.is_none_or(|c| sent < c) {
        tokio::select! {
            _ = stop.changed() => break,
            _ = sleep_until(next) => {}
        }
        next += pace;
        sent += 1;
        pkid = pkid.checked_add(1).unwrap_or(1);
        let body = Bytes::from(payload(push.size));
        let done = timeout(plan.timeout, publish(&mut conn, &m, pkid, body)).await;
        match done {
            Ok(Ok(())) => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                stats
                    .recipients
                    .fetch_add(plan.connections, Ordering::Relaxed);
            }
            other => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no PUBACK within --timeout".into(),
                };
                eprintln!("miop-bench: MQTT publish failed ({why}); stopping the publisher");
                return;
            }
        }
    }
    let _ = timeout(Duration::from_secs(1), conn.disconnect()).await;
}

async fn connect(plan: &Plan, m: &MqttPlan, client_id: &str) -> Result<MqttConn, MqttError> {
    let mut conn = MqttConn::new(TcpStream::connect(plan.targets[0]).await?);
    let login = m
        .url
        .username
        .as_deref()
        .map(|u| (u, m.url.password.as_deref().unwrap_or("")));
    // Keep-alive 0: the publisher sends no pings, and the broker must not
    // drop it between messages of a slow --push-rate.
    conn.connect(client_id, 0, login).await?;
    Ok(conn)
}

/// One PUBLISH; at QoS 1, waits for its PUBACK.
async fn publish(
    conn: &mut MqttConn,
    m: &MqttPlan,
    pkid: u16,
    body: Bytes,
) -> Result<(), MqttError> {
    conn.publish(&m.topic, m.qos, pkid, body).await?;
    if m.qos == QoS::AtMostOnce {
        return Ok(());
    }
    loop {
        match conn.recv().await? {
            Some(Incoming::PubAck(id)) if id == pkid => return Ok(()),
            Some(_) => {}
            None => return Err(MqttError::Closed),
        }
    }
}
