//! Transports between a socket and the engine: TLS, WebSocket and the PROXY
//! protocol header, each a sans-io layer (bytes in, bytes out) that the
//! engine runs per connection, so the io_uring and epoll drivers stay byte
//! pumps and every transport is tested without sockets.
//!
//! - [`proxy`]: the PROXY protocol v1/v2 header a load balancer puts first.
//! - [`ws`]: the WebSocket handshake and framing (one Miop frame per binary
//!   message).

pub mod proxy;
pub mod ws;
