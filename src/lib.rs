//! Miop: a push gateway for a million long-lived mobile connections per host.
//!
//! - [`protocol`]: the Miop v1 wire format (sans-io codec).
//! - [`session`]: the per-connection state machine (sans-io).
//! - [`auth`]: app keys and HMAC device tokens.
//! - [`gateway`]: the per-core io_uring data plane of miopd.
//! - [`presence`]: who is online, shared through Redis.
//! - [`push`]: the push API, routing between nodes, offline messages.
//! - [`admin`]: the control plane's HTTP API.
//! - [`client`]: a tokio client for devices, tests and the load generator.
pub mod admin;
pub mod auth;
pub mod bench;
pub mod client;
pub mod config;
pub mod driver;
pub mod engine;
pub mod gateway;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod session;
pub mod transport;
