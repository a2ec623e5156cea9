//! Delivering one push to the sessions this node holds.
//!
//! The Push frame is encoded once; each core receives the shared `Bytes` once
//! and queues it for its own targets in a single pass. The control plane never
//! walks sessions itself. Used for pushes accepted by this node's API and for
//! pushes routed here from other nodes through Redis.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::node::{CoreCommand, Node, PushTargets};
use crate::protocol::{Body, Frame, Push, FLAG_ACK_REQUIRED};

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
    /// Kept for a device that is offline (needs offline storage: not yet).
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

/// Queues message `id` for every target of `to` bound on this node.
pub async fn push_local(
    node: &Node,
    id: u64,
    to: &PushTo,
    payload: bytes::Bytes,
    ack: bool,
    keep_until_ms: Option<u64>,
) -> Result<LocalPush, String> {
    let frame = Frame {
        seq: 0,
        flags: if ack { FLAG_ACK_REQUIRED } else { 0 },
        body: Body::Push(Push {
            message_id: id,
            payload,
        }),
    }
    .to_bytes()
    .map_err(|e| e.to_string())?;
    let mut out = LocalPush {
        report: PushReport {
            id,
            ..PushReport::default()
        },
        not_here: Vec::new(),
    };
    let cores = node.cores.len();
    let per_core: Vec<PushTargets> = match to {
        PushTo::Devices(devices) => {
            let mut lists: Vec<Vec<(u32, u64)>> = vec![Vec::new(); cores];
            for d in devices {
                match node.registry.get(d) {
                    Some(loc) => lists[loc.core as usize].push((loc.slot, loc.session_id)),
                    None => {
                        out.report.unknown += 1;
                        out.not_here.push(d.clone());
                    }
                }
            }
            lists.into_iter().map(PushTargets::Sessions).collect()
        }
        PushTo::Topic(t) => {
            let t: Arc<str> = t.as_str().into();
            (0..cores).map(|_| PushTargets::Topic(t.clone())).collect()
        }
        PushTo::All => (0..cores).map(|_| PushTargets::All).collect(),
    };
    let mut replies = Vec::new();
    for (core, targets) in per_core.into_iter().enumerate() {
        if matches!(&targets, PushTargets::Sessions(l) if l.is_empty()) {
            continue;
        }
        let (reply, rx) = oneshot::channel();
        let cmd = CoreCommand::Push {
            targets,
            frame: frame.clone(),
            message_id: id,
            ack,
            keep_until_ms: keep_until_ms.filter(|_| ack),
            reply,
        };
        if node.cores[core].send(cmd).is_ok() {
            replies.push(rx);
        }
    }
    for rx in replies {
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(o)) => {
                out.report.delivered += o.delivered;
                out.report.unknown += o.gone;
            }
            _ => return Err("a core did not answer in time".into()),
        }
    }
    Ok(out)
}
