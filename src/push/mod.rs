//! Pushes: the backend's push API, routing between nodes, and messages kept
//! for offline devices.
//!
//! - `api`: `POST /v1/push`: parses and checks a request, delivers to the
//!   sessions held here, and hands the rest to routing or offline storage;
//! - `routing`: pushes for devices held by other nodes, and topic pushes and
//!   broadcasts for every node, over Redis pub/sub;
//! - `offline`: pushes with a TTL for devices online nowhere, and unacked
//!   pushes of ended sessions, kept in Redis until the device binds.
//!
//! Dependencies point down: push → presence (its Redis connection and key
//! schema) → gateway (delivery to this node's sessions). Presence never
//! calls push: what it hears for push (routed messages on its subscription,
//! devices coming online) it hands up through [`PushEvents`], which
//! [`Delivery`] implements.

pub mod api;
mod offline;
mod routing;

pub use routing::RoutedPush;

use std::sync::Arc;

use crate::presence::{PushEvents, RedisPresence};

/// Delivers on this node what presence hears: pushes that other nodes routed
/// here, and the offline messages of devices that just bound here. miopd
/// starts presence with it.
pub struct Delivery;

impl PushEvents for Delivery {
    fn routed(&self, presence: &RedisPresence, message: &str) {
        presence.deliver_routed(message);
    }

    fn came_online(&self, presence: Arc<RedisPresence>, devices: Vec<String>) {
        tokio::spawn(presence.deliver_offline(devices));
    }
}
