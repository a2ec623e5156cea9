//! Pushes as the control plane hands them to the gateway: who they are for,
//! and what became of them on this node.

/// Who a push is for, as the push API names them.
#[derive(Debug, Clone)]
pub enum PushTo {
    Devices(Vec<String>),
    Topic(String),
    All,
}

/// What became of a push.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PushReport {
    pub id: u64,
    /// Queued to the socket of a bound session.
    pub delivered: u64,
    /// Kept for a device that is offline.
    pub offline: u64,
    /// Not online on this node (and not kept).
    pub unknown: u64,
}

/// The local part of a push, and the devices it could not find here.
#[derive(Debug, Default)]
pub struct LocalPush {
    pub report: PushReport,
    /// Addressed devices not bound on this node (candidates for routing).
    pub not_here: Vec<String>,
}
