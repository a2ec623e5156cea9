//! Who is online, shared through Redis: the key schema, the coalesced queue of
//! changes the cores produce, and the control-plane worker that writes them,
//! reconciles after outages, and cleans up after dead nodes.
//! docs/PRESENCE.md describes the schema and the guarantees.

pub mod keys;
mod pending;
mod redis;

pub use pending::PendingChanges;
pub use redis::{Consistency, PresenceEntry, RedisPresence, RedisSettings, RoutedPush};
