//! Who is online, shared through Redis: the key schema and the control-plane
//! worker that writes the node's changes, reconciles after outages, and
//! cleans up after dead nodes.
//! docs/PRESENCE.md describes the schema and the guarantees.

pub mod keys;
mod redis;

pub use redis::{Consistency, PresenceEntry, RedisPresence, RedisSettings, RoutedPush};
