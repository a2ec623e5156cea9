//! Pushes between nodes. A push for a device held by another node goes to
//! that node's sharded push channel (Redis says which node holds it); a
//! topic push or a broadcast goes to the fan-out channel that every node
//! hears. Both travel as a [`RoutedPush`] over the presence worker's Redis
//! connection. The receiving side is the presence subscription (it shares a
//! slot with the node's kick channel), which hands each message back here
//! through [`crate::presence::PushEvents`].

use fred::prelude::*;
use futures_util::future::join_all;
use serde::Serialize;

use super::{cause, Deadline};
use crate::metrics as m;
use crate::presence::{keys, RedisPresence, BATCH};

/// What became of the devices handed to [`RedisPresence::route`].
#[derive(Debug, Default)]
pub(crate) struct Routed {
    /// Devices published to the node Redis says holds them.
    pub routed: u64,
    /// Devices Redis says are online nowhere.
    pub nowhere: Vec<String>,
    /// Devices Redis could not be asked about, or whose publish to their
    /// node failed: whether they got the message is not known.
    pub failed: Vec<String>,
    /// Why, for the first failure.
    pub error: Option<String>,
    /// Devices Redis says are online on a node that is not listening (no
    /// subscriber on its push channel: dead with its lease not yet lapsed,
    /// or cut off from Redis and not yet subscribed again). Pub/sub would
    /// drop the message, so it is not counted as routed.
    pub unheard: Vec<String>,
    /// The first such node.
    pub unheard_node: Option<String>,
}

impl RedisPresence {
    /// Routes a push for devices not held here to the nodes Redis says hold
    /// them, within `deadline`. After the first failure nothing more is
    /// tried: the remaining devices are `failed` too.
    pub(crate) async fn route(
        &self,
        message: &RoutedPush,
        devices: Vec<String>,
        deadline: Deadline,
    ) -> Routed {
        let mut out = Routed::default();
        let mut by_node: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        let mut chunks = devices.chunks(BATCH);
        for chunk in chunks.by_ref() {
            let client = match deadline.options() {
                Ok(o) => self.redis().with_options(&o),
                Err(e) => {
                    out.error = Some(format!("looking up where the devices are online: {e}"));
                    out.failed.extend(chunk.iter().cloned());
                    break;
                }
            };
            let holders = join_all(
                chunk
                    .iter()
                    .map(|d| client.hget::<Option<String>, _, _>(keys::device(d), "node")),
            )
            .await;
            for (d, h) in chunk.iter().zip(holders) {
                match h {
                    Ok(Some(node)) if node != self.me() => {
                        by_node.entry(node).or_default().push(d.clone())
                    }
                    Ok(_) => out.nowhere.push(d.clone()),
                    Err(e) => {
                        out.error.get_or_insert_with(|| {
                            format!(
                                "looking up where the devices are online: {}",
                                cause(&e, self, &deadline)
                            )
                        });
                        out.failed.push(d.clone());
                    }
                }
            }
            if out.error.is_some() {
                break;
            }
        }
        for rest in chunks {
            out.failed.extend(rest.iter().cloned());
        }
        for (node, devices) in by_node {
            if out.error.is_some() {
                out.failed.extend(devices);
                continue;
            }
            let n = devices.len() as u64;
            let msg = RoutedPush {
                devices: Some(devices),
                ..message.clone()
            };
            let sent = match deadline.options() {
                Ok(o) => self
                    .redis()
                    .with_options(&o)
                    .spublish::<i64, _, _>(keys::push_channel(&node), msg.to_json())
                    .await
                    .map_err(|e| cause(&e, self, &deadline)),
                Err(e) => Err(e),
            };
            match sent {
                Ok(0) => {
                    out.unheard_node.get_or_insert_with(|| node.clone());
                    out.unheard.extend(msg.devices.unwrap_or_default());
                }
                Ok(_) => out.routed += n,
                Err(e) => {
                    out.error = Some(format!("routing to the node holding the device: {e}"));
                    out.failed.extend(msg.devices.unwrap_or_default());
                }
            }
        }
        metrics::counter!(m::PUSHES_ROUTED, "kind" => "devices").increment(out.routed);
        out
    }

    /// Sends a topic push or a broadcast to every other node, within
    /// `deadline`. Returns how many other nodes were listening, or why it
    /// could not be published.
    pub(crate) async fn fan_out(
        &self,
        message: &RoutedPush,
        deadline: Deadline,
    ) -> Result<u64, String> {
        let receivers: i64 = self
            .redis()
            .with_options(&deadline.options()?)
            .publish(keys::FANOUT, message.to_json())
            .await
            .map_err(|e| cause(&e, self, &deadline))?;
        let others = (receivers.max(1) - 1) as u64; // this node hears it too
        metrics::counter!(m::PUSHES_ROUTED, "kind" => "fanout").increment(1);
        Ok(others)
    }

    /// A push published by another node: deliver it to our own targets.
    pub(super) fn deliver_routed(&self, text: &str) {
        let msg: RoutedPush = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return self.warn("ignoring a malformed routed push", &e),
        };
        if msg.origin == self.me() {
            return; // our own fan-out, already delivered locally
        }
        let Some(to) = msg.target() else { return };
        let payload = match base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            &msg.payload_b64,
        ) {
            Ok(p) => bytes::Bytes::from(p),
            Err(e) => return self.warn("ignoring a routed push with a bad payload", &e),
        };
        let gateway = self.gateway().clone();
        tokio::spawn(async move {
            match gateway
                .push_local(msg.id, &to, payload, msg.ack, msg.keep_until_ms)
                .await
            {
                Ok(r) => {
                    metrics::counter!(m::PUSH_RECIPIENTS, "outcome" => "delivered")
                        .increment(r.report.delivered);
                }
                Err(e) => tracing::warn!(error = %e, "routed push not delivered"),
            }
        });
    }
}

/// A push travelling between nodes over Redis pub/sub (JSON).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RoutedPush {
    pub id: u64,
    pub ack: bool,
    pub payload_b64: String,
    /// Node that accepted the push.
    pub origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Every session.
    #[serde(default)]
    pub all: bool,
    /// Keep unacked copies until then (unix ms): the push had a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_until_ms: Option<u64>,
}

impl RoutedPush {
    pub fn new(
        id: u64,
        ack: bool,
        payload: &[u8],
        origin: &str,
        to: &crate::gateway::PushTo,
    ) -> RoutedPush {
        use crate::gateway::PushTo;
        RoutedPush {
            id,
            ack,
            payload_b64: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                payload,
            ),
            origin: origin.to_owned(),
            devices: None,
            topic: match to {
                PushTo::Topic(t) => Some(t.clone()),
                _ => None,
            },
            all: matches!(to, PushTo::All),
            keep_until_ms: None,
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("routed push serializes")
    }

    fn target(&self) -> Option<crate::gateway::PushTo> {
        use crate::gateway::PushTo;
        match (&self.devices, &self.topic, self.all) {
            (Some(d), None, false) => Some(PushTo::Devices(d.clone())),
            (None, Some(t), false) => Some(PushTo::Topic(t.clone())),
            (None, None, true) => Some(PushTo::All),
            _ => None,
        }
    }
}
