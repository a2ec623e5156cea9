//! The node's device index: which core holds which device's session.
//!
//! Cores never lock it. Each core hands its presence changes to the control
//! plane in batches (one message per turn of its loop), and the control plane
//! applies them here, in the order they arrive, on its own thread. A bind of a
//! device that another session holds returns a [`Kick`] for the older
//! session, wherever it is. Entries are fenced by session: a late "offline"
//! of a replaced session never removes the newer one. The device id is the
//! session's own `Arc<str>`, so it is stored once per device.
//!
//! Sans-io like the engine: tests feed it two engines' intents directly.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::{ConnKey, PresenceEvent, SessionRef};

/// Where a bound session lives on this node. Flat (24 bytes, not 32 with a
/// nested `SessionRef`): a node holds one per bound device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub session_id: u64,
    /// Bind time (unix ms): orders binds of one device across nodes.
    pub since_ms: u64,
    key: ConnKey,
    pub core: u16,
}

impl Location {
    pub fn new(core: u16, at: SessionRef, since_ms: u64) -> Location {
        Location {
            session_id: at.session_id,
            since_ms,
            key: at.key,
            core,
        }
    }

    /// The session on its core.
    pub fn at(&self) -> SessionRef {
        SessionRef {
            key: self.key,
            session_id: self.session_id,
        }
    }
}

/// Close this session: the device bound again elsewhere on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kick {
    pub core: u16,
    pub at: SessionRef,
}

#[derive(Default)]
pub struct DeviceIndex {
    devices: HashMap<Arc<str>, Location>,
}

impl DeviceIndex {
    /// `expected`: devices to reserve room for, so the table does not rehash
    /// (and hold a half-empty copy) while a node fills.
    pub fn with_capacity(expected: usize) -> DeviceIndex {
        DeviceIndex {
            devices: HashMap::with_capacity(expected),
        }
    }

    /// Applies one change from `core`. Returns the session the change
    /// replaces, which must be kicked (the newest bind wins).
    pub fn apply(&mut self, core: u16, event: PresenceEvent) -> Option<Kick> {
        match event {
            PresenceEvent::Online {
                device,
                at,
                since_ms,
            } => {
                let loc = Location::new(core, at, since_ms);
                match self.devices.get_mut(&*device) {
                    Some(old) => {
                        let prev = std::mem::replace(old, loc);
                        ((prev.core, prev.at()) != (core, at)).then_some(Kick {
                            core: prev.core,
                            at: prev.at(),
                        })
                    }
                    None => {
                        self.devices.insert(device, loc);
                        None
                    }
                }
            }
            PresenceEvent::Offline { device, at } => {
                if self
                    .devices
                    .get(&*device)
                    .is_some_and(|l| l.core == core && l.at() == at)
                {
                    self.devices.remove(&*device);
                }
                None
            }
        }
    }

    pub fn get(&self, device: &str) -> Option<Location> {
        self.devices.get(device).copied()
    }

    /// Every bound device and where it is (a copy; for reconciliation).
    pub fn snapshot(&self) -> Vec<(Arc<str>, Location)> {
        self.devices.iter().map(|(d, l)| (d.clone(), *l)).collect()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: u32, sid: u64) -> SessionRef {
        SessionRef {
            key: ConnKey(key),
            session_id: sid,
        }
    }

    fn online(d: &str, a: SessionRef) -> PresenceEvent {
        PresenceEvent::Online {
            device: d.into(),
            at: a,
            since_ms: 0,
        }
    }

    #[test]
    fn an_entry_is_40_bytes_plus_the_id() {
        // The key is the session's own Arc<str> (16 bytes here, the text and
        // its two counts in one shared allocation), the value 24 bytes.
        assert_eq!(std::mem::size_of::<(Arc<str>, Location)>(), 40);
    }

    #[test]
    fn newest_bind_wins_and_stale_offline_is_ignored() {
        let mut ix = DeviceIndex::default();
        assert_eq!(ix.apply(0, online("d", at(1, 1))), None);
        assert_eq!(
            ix.apply(1, online("d", at(1, 2))),
            Some(Kick {
                core: 0,
                at: at(1, 1)
            })
        );
        let stale = PresenceEvent::Offline {
            device: "d".into(),
            at: at(1, 1),
        };
        assert_eq!(ix.apply(0, stale), None);
        assert_eq!(ix.get("d").map(|l| (l.core, l.at())), Some((1, at(1, 2))));
        let same_key_other_core = PresenceEvent::Offline {
            device: "d".into(),
            at: at(1, 2),
        };
        ix.apply(0, same_key_other_core);
        assert_eq!(ix.len(), 1, "fenced by core too");
        ix.apply(
            1,
            PresenceEvent::Offline {
                device: "d".into(),
                at: at(1, 2),
            },
        );
        assert!(ix.is_empty());
    }
}
