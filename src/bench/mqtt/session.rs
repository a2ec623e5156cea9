//! The MQTT counterparts of the Miop handshake and session in `engine.rs`,
//! recording into the same counters and histograms so that one report format
//! compares a Miop gateway and an MQTT broker on the same workload:
//!
//! | report      | miop://               | mqtt://                         |
//! |-------------|-----------------------|---------------------------------|
//! | connect     | TCP connect           | TCP connect                     |
//! | bind        | Bind → BindAck        | CONNECT → CONNACK               |
//! | ping        | Ping → Pong           | PINGREQ → PINGRESP              |
//! | push        | Push received (acked) | PUBLISH received (PUBACK at QoS 1) |
//!
//! A connection counts as connected once its SUBSCRIBE is acknowledged, so a
//! fan-out started when every connection is up reaches all of them.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, timeout, Instant};

use super::conn::{MqttConn, MqttError};
use super::packet::{Incoming, QoS};
use crate::bench::cli::MqttPlan;
use crate::bench::engine::{push_timestamp, tcp_connect, Ctx, Ended};
use crate::bench::stats::{bump, Metric, ThreadStats};

/// Heartbeat interval without --ping-interval or a script (MQTT brokers
/// announce none): miopd's default heartbeat, so that the default runs
/// compare like with like.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// Packet id of each client's one SUBSCRIBE.
const SUBSCRIBE_PKID: u16 = 1;

/// CONNECT's keep-alive: the heartbeat interval in whole seconds (rounded
/// up), so the broker expects exactly the pings the client sends. With a
/// script choosing each interval, 0: the broker enforces none.
pub(in crate::bench) fn keep_alive(ctx: &Ctx) -> u16 {
    if ctx.scripted_heartbeat() {
        return 0;
    }
    let every = ctx.plan.ping_interval.unwrap_or(DEFAULT_HEARTBEAT);
    every.as_secs_f64().ceil().clamp(1.0, u16::MAX as f64) as u16
}

/// TCP connect, CONNECT → CONNACK (the "bind"), then SUBSCRIBE → SUBACK.
pub(in crate::bench) async fn handshake(
    ctx: &Ctx,
    m: &MqttPlan,
    client_id: &str,
    src: IpAddr,
    dst: SocketAddr,
) -> Option<MqttConn> {
    let s = &ctx.stats;
    let _permit = ctx.handshakes.acquire().await.ok()?;
    let stream = tcp_connect(ctx, client_id, src, dst).await?;
    let mut conn = MqttConn::new(stream);
    let login = m
        .url
        .username
        .as_deref()
        .map(|u| (u, m.url.password.as_deref().unwrap_or("")));
    let t1 = Instant::now();
    let connected = timeout(
        ctx.plan.timeout,
        conn.connect(client_id, keep_alive(ctx), login),
    )
    .await;
    match connected {
        Ok(Ok(())) => {
            s.record(Metric::Bind, t1.elapsed());
            bump(&s.binds);
        }
        Ok(Err(e)) => {
            count_failure(s, client_id, &e);
            return None;
        }
        Err(_) => {
            bump(&s.timeouts);
            return None;
        }
    }
    match timeout(
        ctx.plan.timeout,
        conn.subscribe(SUBSCRIBE_PKID, &m.topic, m.qos),
    )
    .await
    {
        Ok(Ok(())) => Some(conn),
        Ok(Err(e)) => {
            count_failure(s, client_id, &e);
            None
        }
        Err(_) => {
            bump(&s.timeouts);
            None
        }
    }
}

/// A refusal is a bind error, as a Miop Error frame is.
fn count_failure(s: &ThreadStats, client_id: &str, e: &MqttError) {
    tracing::debug!(%client_id, error = %e, "MQTT handshake failed");
    match e {
        MqttError::Refused(_) => bump(&s.bind_errors),
        MqttError::Closed => bump(&s.server_closes),
        MqttError::Io(_) | MqttError::Protocol(_) => bump(&s.read_errors),
    }
}

/// PINGREQ at the heartbeat interval (one outstanding at a time, answered
/// within --timeout or the connection is replaced), PUBLISH received and
/// acknowledged, until stopped, churned or failed.
pub(in crate::bench) async fn session(
    ctx: &Ctx,
    conn: &mut MqttConn,
    churn: &Notify,
    stop_rx: &mut watch::Receiver<bool>,
) -> Ended {
    let s = &ctx.stats;
    let interval = || ctx.heartbeat(DEFAULT_HEARTBEAT);
    // Spread the first pings over one interval, as the Miop session does.
    let mut next_ping = Instant::now() + interval().mul_f64(fastrand::f64());
    let mut awaiting: Option<Instant> = None;
    // Registered once per session, as in the Miop session.
    let stop = stop_rx.changed();
    let churned = churn.notified();
    let timer = sleep_until(next_ping);
    tokio::pin!(stop, churned, timer);
    loop {
        let wake = awaiting.map_or(next_ping, |sent| sent + ctx.plan.timeout);
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            // Stop and churn last: a `Notified` in the waiting state takes
            // its list's lock at every poll, so they are polled only when
            // the timer and the socket are not ready (each time the session
            // is about to wait), not at every frame.
            biased;
            _ = &mut timer => {
                if awaiting.is_some() {
                    bump(&s.timeouts);
                    return Ended::Failed;
                }
                if conn.ping().await.is_err() {
                    bump(&s.write_errors);
                    return Ended::Failed;
                }
                bump(&s.pings);
                awaiting = Some(Instant::now());
            }
            packet = conn.recv() => match packet {
                Ok(Some(Incoming::PingResp)) => {
                    // PINGRESP carries no id: it answers the one PINGREQ out.
                    if let Some(sent) = awaiting.take() {
                        s.record(Metric::Ping, sent.elapsed());
                        bump(&s.pongs);
                        next_ping = Instant::now() + interval();
                    }
                }
                Ok(Some(Incoming::Publish { qos, pkid, payload })) => {
                    bump(&s.pushes);
                    if let Some(sent_us) = push_timestamp(&payload) {
                        let now_us = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_micros() as u64);
                        s.record(Metric::Push, Duration::from_micros(now_us.saturating_sub(sent_us)));
                    }
                    if qos != QoS::AtMostOnce && conn.puback(pkid).await.is_err() {
                        bump(&s.write_errors);
                        return Ended::Failed;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    bump(&s.read_errors);
                    return Ended::Failed;
                }
            },
            _ = &mut stop => return Ended::Stop,
            _ = &mut churned => return Ended::Churn,
        }
    }
}
