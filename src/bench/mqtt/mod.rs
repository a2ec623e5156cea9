//! miop-bench's `mqtt://` target: the same command, options and report
//! against an MQTT 3.1.1 broker (Mosquitto, say), so that a Miop gateway and
//! a broker can be measured on one workload: idle connections, connect rate,
//! heartbeat round trips at the same rate, and the fan-out of one message to
//! every connection.
//!
//! - `url.rs`: `mqtt://[USER:PASS@]HOST:PORT/`.
//! - `packet.rs`: the packets used, on `rumqttc`'s MQTT 3.1.1 codec.
//! - `conn.rs`: one client connection (socket and buffers, no task of its own).
//! - `session.rs`: handshake (CONNECT, SUBSCRIBE) and heartbeat/receive loop,
//!   recording what the Miop session records.
//! - `publisher.rs`: the one extra connection that publishes the fan-out.

mod conn;
pub mod packet;
mod publisher;
mod session;
mod url;

pub use self::conn::{MqttConn, MqttError};
pub use self::publisher::run as publisher;
pub use self::session::DEFAULT_HEARTBEAT;
pub(super) use self::session::{handshake, session};
pub use self::url::MqttUrl;
