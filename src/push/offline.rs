//! Messages kept for offline devices. A push with a TTL for a device that is
//! online nowhere is kept in a bounded Redis list until the TTL passes; so
//! are the unacknowledged pushes of sessions that ended. When the device
//! binds here, the presence writer hands it back here (through
//! [`crate::presence::PushEvents`]) and `deliver_offline` delivers the list
//! in order (at-least-once delivery).

use std::sync::Arc;

use fred::prelude::*;
use futures_util::future::join_all;
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
    /// here. Expired messages are dropped and counted; if the session is gone
    /// again before delivery, the rest goes back to Redis.
    pub(super) async fn deliver_offline(self: Arc<Self>, devices: Vec<String>) {
        for device in devices {
            let taken: Fred<Vec<String>> = self
                .redis()
                .eval(
                    keys::TAKE_OFFLINE,
                    keys::offline(&device),
                    Vec::<String>::new(),
                )
                .await;
            let entries = match taken {
                Ok(e) => e,
                Err(e) => {
                    self.warn("cannot fetch offline messages", &e);
                    continue;
                }
            };
            let now = unix_ms();
            let mut rest = entries.iter();
            while let Some(raw) = rest.next() {
                let Ok(entry) = serde_json::from_str::<OfflineEntry>(raw) else {
                    continue;
                };
                if entry.exp_ms <= now {
                    metrics::counter!(m::OFFLINE_EXPIRED).increment(1);
                    continue;
                }
                let Ok(payload) = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    &entry.payload_b64,
                ) else {
                    continue;
                };
                let to = crate::gateway::PushTo::Devices(vec![device.clone()]);
                match self
                    .gateway()
                    .push_local(entry.id, &to, payload.into(), entry.ack, Some(entry.exp_ms))
                    .await
                {
                    Ok(r) if r.report.delivered > 0 => {
                        metrics::counter!(m::OFFLINE_DELIVERED).increment(1);
                    }
                    _ => {
                        // Gone again: keep this one and the rest, in order.
                        let back: Vec<String> = std::iter::once(raw).chain(rest).cloned().collect();
                        let _: Fred<i64> = self
                            .redis()
                            .lpush(
                                keys::offline(&device),
                                back.into_iter().rev().collect::<Vec<_>>(),
                            )
                            .await;
                        break;
                    }
                }
            }
        }
    }
}
