//! Miop: a push gateway for a million long-lived mobile connections per host.
//!
//! - [`protocol`]: the Miop v1 wire format (sans-io codec).
//! - [`session`]: the per-connection state machine (sans-io).
//! - [`auth`]: app keys and HMAC device tokens.
pub mod auth;
pub mod protocol;
pub mod session;
