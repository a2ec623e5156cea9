//! The per-connection session state machine, sans-io.
//!
//! A [`Session`] takes decoded frames, decode errors, timer expiries, kicks and
//! transport closure, each with the current `now`, and answers with
//! [`Action`]s: frames to send, presence changes, "close the connection". It
//! never touches a socket or a clock, so tests drive it with a virtual clock and
//! the io_uring driver stays a thin loop around it.

mod action;
mod config;
mod machine;

pub use action::{Action, PresenceChange};
pub use config::SessionConfig;
pub use machine::{Session, SessionInfo, SessionState};

#[cfg(test)]
mod tests;
