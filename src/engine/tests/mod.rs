//! The engine driven deterministically on a virtual clock (see
//! `engine/testing.rs` for the rig).

mod delivery;
mod lifecycle;
mod limits;
mod timeouts;
mod transports;

pub use super::testing::*;
pub use super::*;
pub use crate::protocol::{Bind, Body, CloseReason, Credential, Frame};
pub use bytes::BytesMut;
pub use std::collections::HashMap;
pub use std::time::Duration;
