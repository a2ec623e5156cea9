//! miop-bench, the load generator: what wrk is for HTTP, for long-lived Miop
//! sessions. Connections bind, heartbeat and receive pushes; the tool reports
//! connect, bind, heartbeat and push-delivery latency, per second and at the
//! end, merged exactly over threads and worker processes. The same workload
//! runs against an MQTT broker (`mqtt://` URLs, see [`mqtt`]) for comparison.

pub mod cli;
pub mod engine;
pub mod fleet;
pub mod html;
pub mod mqtt;
pub mod pusher;
pub mod report;
pub mod run;
pub mod script;
pub mod server_memory;
pub mod stats;
