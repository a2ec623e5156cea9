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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::presence::{PushEvents, RedisPresence};

/// The time the Redis part of one push may take, all commands together.
/// Each command is given what is left as fred's own per-command timeout
/// (not a `tokio::time::timeout` around it: a command fred times out while
/// still queued, e.g. during a reconnect, is marked so and never written
/// late; one already written to a hung server can still run when it
/// resumes), and none is started once the budget is spent.
/// fred's timeout runs on the reply, so it covers a hung server (SIGSTOP,
/// connection open, no answer) as well as a dead one (commands queued while
/// it reconnects).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: tokio::time::Instant,
    total: Duration,
}

impl Deadline {
    pub(crate) fn after(total: Duration) -> Deadline {
        Deadline {
            at: tokio::time::Instant::now() + total,
            total,
        }
    }

    /// Options giving the next command what is left of the budget, or the
    /// reason it cannot be started.
    pub(crate) fn options(&self) -> Result<fred::prelude::Options, String> {
        let left = self
            .at
            .saturating_duration_since(tokio::time::Instant::now());
        // fred reads a zero timeout as "none".
        if left < Duration::from_millis(1) {
            return Err(format!("no answer within {} ms", self.total.as_millis()));
        }
        Ok(fred::prelude::Options {
            timeout: Some(left),
            ..Default::default()
        })
    }
}

/// A Redis failure in a few words, for the push API's answer and the log:
/// fred's error kind and details (they name neither the URL nor its
/// password), shortened; a timeout says how long it waited and whether the
/// client was connected at all (a dead server) or not (a hung one).
pub(crate) fn cause(
    e: &fred::error::Error,
    presence: &RedisPresence,
    deadline: &Deadline,
) -> String {
    if *e.kind() == fred::error::ErrorKind::Timeout {
        return format!(
            "no answer within {} ms{}",
            deadline.total.as_millis(),
            if fred::prelude::ClientLike::is_connected(presence.redis()) {
                ""
            } else {
                " (not connected)"
            }
        );
    }
    let mut s = e.to_string();
    if s.len() > 160 {
        let mut end = 160;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Delivers on this node what presence hears: pushes that other nodes routed
/// here, and the offline messages of devices that just bound here. miopd
/// starts presence with it.
#[derive(Default)]
pub struct Delivery {
    /// Devices queued for or in offline delivery, and whether they came
    /// online again meanwhile (see `offline_worker`).
    active: Arc<Mutex<HashMap<String, bool>>>,
    /// The offline worker's queue, started with the first device.
    queue: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl PushEvents for Delivery {
    fn routed(&self, presence: &RedisPresence, message: &str) {
        presence.deliver_routed(message);
    }

    fn came_online(&self, presence: Arc<RedisPresence>, devices: Vec<String>) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(presence.offline_worker(rx, self.active.clone()));
            tx
        });
        let mut active = self.active.lock().unwrap();
        for d in devices {
            match active.get_mut(&d) {
                Some(again) => *again = true,
                None => {
                    active.insert(d.clone(), false);
                    // The worker lives as long as the process.
                    let _ = queue.send(d);
                }
            }
        }
    }
}
