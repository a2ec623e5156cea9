//! Transports between a socket and the engine: TLS, WebSocket and the PROXY
//! protocol header, each a sans-io layer (bytes in, bytes out) that the
//! engine runs per connection, so the io_uring and epoll drivers stay byte
//! pumps and every transport is tested without sockets.
//!
//! - [`listener`]: the device listeners of a node and what each speaks.
//! - [`wire`]: one connection's stack of layers.
//! - [`proxy`]: the PROXY protocol v1/v2 header a load balancer puts first.
//! - [`tls`]: rustls's server configuration, with a certificate a SIGHUP
//!   reloads; `tls_conn`: one connection's TLS on rustls's unbuffered API.
//! - [`ws`]: the WebSocket handshake and framing (one Miop frame per binary
//!   message).

pub mod listener;
pub mod proxy;
pub mod tls;
mod tls_conn;
pub mod wire;
pub mod ws;

pub use self::listener::{ListenerKind, ListenerSpec, Transports};
pub use self::wire::{Wire, WireFailure, WireRead};
