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

use crate::metrics as m;
use crate::presence::{keys, Fred, RedisPresence, BATCH};

impl RedisPresence {
    /// Routes a push for devices not held here to the nodes Redis says hold
    /// them. Returns how many devices were routed.
    pub async fn route(
        &self,
        message: &RoutedPush,
        devices: Vec<String>,
    ) -> Fred<(u64, Vec<String>)> {
        let mut nowhere = Vec::new();
        let mut by_node: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for chunk in devices.chunks(BATCH) {
            let holders = join_all(chunk.iter().map(|d| {
                self.redis()
                    .hget::<Option<String>, _, _>(keys::device(d), "node")
            }))
            .await;
            for (d, h) in chunk.iter().zip(holders) {
                match h? {
                    Some(node) if node != self.me() => {
                        by_node.entry(node).or_default().push(d.clone())
                    }
                    _ => nowhere.push(d.clone()),
                }
            }
        }
        let mut routed = 0;
        for (node, devices) in by_node {
            let n = devices.len() as u64;
            let msg = RoutedPush {
                devices: Some(devices),
                ..message.clone()
            };
            let _: i64 = self
                .redis()
                .spublish(keys::push_channel(&node), msg.to_json())
                .await?;
            routed += n;
        }
        metrics::counter!(m::PUSHES_ROUTED, "kind" => "devices").increment(routed);
        Ok((routed, nowhere))
    }

    /// Sends a topic push or a broadcast to every other node. Returns how many
    /// other nodes were listening.
    pub async fn fan_out(&self, message: &RoutedPush) -> Fred<u64> {
        let receivers: i64 = self
            .redis()
            .publish(keys::FANOUT, message.to_json())
            .await?;
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
