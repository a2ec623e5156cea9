//! Messages kept for offline devices. A push with a TTL for a device that is
//! online nowhere is kept in a bounded Redis list until the TTL passes; so
//! are the unacknowledged pushes of sessions that ended. When the device
//! binds here, the presence writer hands it back here (through
//! [`crate::presence::PushEvents`]) and `offline_worker` delivers the list
//! in order (at-least-once delivery).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde::Serialize;

use super::{cause, Deadline, RoutedPush};
use crate::metrics as m;
use crate::presence::{keys, Fred, RedisPresence};
use fred::types::CustomCommand;

impl RedisPresence {
    /// Stores the unacked pushes of ended sessions as offline messages, so
    /// the device gets them again when it binds (at-least-once delivery).
    pub async fn keep_unacked(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::gateway::UnackedHandoff>,
    ) {
        while let Some(h) = rx.recv().await {
            let now = unix_ms();
            for u in h.messages {
                let Some(left_ms) = u.keep_until_ms.checked_sub(now).filter(|l| *l > 0) else {
                    continue;
                };
                let payload = u.frame.slice(crate::protocol::HEADER_LEN + 8..);
                let msg = RoutedPush::new(
                    u.message_id,
                    true,
                    &payload,
                    self.me(),
                    &crate::gateway::PushTo::Devices(Vec::new()),
                );
                let kept = self
                    .store_offline(
                        &msg,
                        left_ms.div_ceil(1000),
                        &[h.device_id.to_string()],
                        Deadline::after(self.command_timeout()),
                    )
                    .await;
                if let Some(e) = kept.error {
                    self.warn("cannot keep an unacked push offline", &e);
                }
            }
        }
    }
}

/// A message kept in Redis for an offline device (JSON list entry).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct OfflineEntry {
    id: u64,
    ack: bool,
    /// Expiry, unix ms.
    exp_ms: u64,
    payload_b64: String,
}

/// What became of the devices handed to [`RedisPresence::store_offline`].
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// Devices the message was kept for.
    pub stored: u64,
    /// Devices it was not kept for.
    pub failed: Vec<String>,
    /// Why, for the first failure.
    pub error: Option<String>,
}

/// Attempts at delivering a device's kept messages after it bound (about
/// 2.5 minutes with the backoff: 1 s doubling up to 30 s) before they are
/// left for its next bind.
const OFFLINE_ATTEMPTS: u32 = 10;

/// Devices whose kept messages are read at once on a node (see
/// `offline_worker`).
const OFFLINE_READS_IN_FLIGHT: usize = 16;

/// Most messages kept per offline device (the oldest are dropped first).
pub const MAX_OFFLINE_PER_DEVICE: usize = 100;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisPresence {
    /// Keeps a push for devices that are online nowhere, for `ttl_secs`,
    /// within `deadline`. Returns the devices it was kept for (in order) and
    /// the first failure, if any: the other devices' message was not kept.
    pub(crate) async fn store_offline(
        &self,
        message: &RoutedPush,
        ttl_secs: u64,
        devices: &[String],
        deadline: Deadline,
    ) -> Stored {
        let ttl_ms = ttl_secs.max(1) * 1000;
        // The list outlives its messages (2 × TTL, at least TTL + 60 s), so a
        // device that comes back finds its expired messages and they are
        // counted; lists of devices that never return expire by themselves.
        let keep_ms = (ttl_ms * 2).max(ttl_ms + 60_000);
        let entry = serde_json::to_string(&OfflineEntry {
            id: message.id,
            ack: message.ack,
            exp_ms: unix_ms() + ttl_ms,
            payload_b64: message.payload_b64.clone(),
        })
        .expect("offline entry serializes");
        let mut out = Stored::default();
        let client = match deadline.options() {
            Ok(o) => self.redis().with_options(&o),
            Err(e) => {
                out.failed = devices.to_vec();
                out.error = Some(e);
                return out;
            }
        };
        // EVAL as a custom command: fred's `eval` does not take per-command
        // options (its LuaInterface is not implemented for WithOptions).
        let results = join_all(devices.iter().map(|d| {
            let key = keys::offline(d);
            let slot = fred::util::redis_keyslot(key.as_bytes());
            client.custom::<i64, String>(
                CustomCommand::new_static("EVAL", Some(slot), false),
                vec![
                    keys::STORE_OFFLINE.to_owned(),
                    "1".to_owned(),
                    key,
                    entry.clone(),
                    MAX_OFFLINE_PER_DEVICE.to_string(),
                    keep_ms.to_string(),
                ],
            )
        }))
        .await;
        for (d, r) in devices.iter().zip(results) {
            match r {
                Ok(_) => out.stored += 1,
                Err(e) => {
                    out.error.get_or_insert_with(|| cause(&e, self, &deadline));
                    out.failed.push(d.clone());
                }
            }
        }
        metrics::counter!(m::OFFLINE_STORED).increment(out.stored);
        out
    }

    /// Delivers, in order, what was kept for devices that just came online
    /// here: one worker per node, taking devices from `queue`, with at most
    /// [`OFFLINE_READS_IN_FLIGHT`] of them read at once however many bind
    /// (a ramp to a million sessions hands up a thousand devices per batch
    /// of the writer, and a read per device in flight for each batch timed
    /// the node's own presence writes out on a busy host). A device is in
    /// `active` from its queueing to the end of its delivery, so it is
    /// delivered once at a time; one that came online again meanwhile is
    /// read once more at the end, so nothing stored in between waits for
    /// its next bind.
    pub(super) async fn offline_worker(
        self: Arc<Self>,
        queue: tokio::sync::mpsc::UnboundedReceiver<String>,
        active: Arc<Mutex<HashMap<String, bool>>>,
    ) {
        let devices =
            futures_util::stream::unfold(
                queue,
                |mut q| async move { q.recv().await.map(|d| (d, q)) },
            );
        devices
            .for_each_concurrent(OFFLINE_READS_IN_FLIGHT, |device| {
                let active = &active;
                let me = &self;
                async move {
                    loop {
                        me.deliver_with_retries(&device).await;
                        let mut active = active.lock().unwrap();
                        match active.get_mut(&device) {
                            Some(again) if *again => *again = false,
                            _ => {
                                active.remove(&device);
                                break;
                            }
                        }
                    }
                }
            })
            .await;
    }

    /// [`Self::deliver_kept`] until it succeeds, while the device is still
    /// bound here, at most [`OFFLINE_ATTEMPTS`] times with a backoff: a
    /// Redis hiccup right after a bind must not leave kept messages waiting
    /// for the device's next bind. What is not delivered stays in Redis.
    async fn deliver_with_retries(&self, device: &str) {
        let mut backoff = Duration::from_secs(1);
        for attempt in 1..=OFFLINE_ATTEMPTS {
            match self.deliver_kept(device).await {
                Ok(()) => return,
                Err(e) if attempt == OFFLINE_ATTEMPTS => {
                    self.warn(
                        "cannot deliver offline messages; they stay kept until the device binds again",
                        &e,
                    );
                    return;
                }
                Err(e) => self.warn("cannot deliver offline messages; retrying", &e),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
            if self.gateway().locate(device).is_none() {
                return;
            }
        }
    }

    /// Reads the device's kept messages, delivers them in order, then
    /// removes those delivered (and expired or unreadable ones) from the
    /// list. Nothing is removed before it was handed to the session: a lost
    /// reply or a failed removal means a message is delivered again
    /// (at-least-once), never lost. If the session is gone again, the rest
    /// stays for its next bind.
    async fn deliver_kept(&self, device: &str) -> Fred<()> {
        let key = keys::offline(device);
        let entries: Vec<String> = self.redis().lrange(&key, 0, -1).await?;
        let now = unix_ms();
        let mut done = Vec::new();
        for raw in entries {
            let Ok(entry) = serde_json::from_str::<OfflineEntry>(&raw) else {
                done.push(raw);
                continue;
            };
            if entry.exp_ms <= now {
                metrics::counter!(m::OFFLINE_EXPIRED).increment(1);
                done.push(raw);
                continue;
            }
            let Ok(payload) = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                &entry.payload_b64,
            ) else {
                done.push(raw);
                continue;
            };
            let to = crate::gateway::PushTo::Devices(vec![device.to_string()]);
            match self
                .gateway()
                .push_local(entry.id, &to, payload.into(), entry.ack, Some(entry.exp_ms))
                .await
            {
                Ok(r) if r.report.delivered > 0 => {
                    metrics::counter!(m::OFFLINE_DELIVERED).increment(1);
                    done.push(raw);
                }
                // Gone again: this one and the rest stay, in order.
                _ => break,
            }
        }
        if !done.is_empty() {
            let _: i64 = self.redis().eval(keys::REMOVE_OFFLINE, key, done).await?;
        }
        Ok(())
    }
}
