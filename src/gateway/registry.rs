//! The node-wide device index: which core holds which device's session.
//!
//! Cores own their sessions; this index only maps a device id to a location so
//! a duplicate Bind on any core can find (and kick) the older session, and the
//! admin API can find a session. Sharded mutexes keep the critical sections
//! short and contention across cores low; entries are fenced by session id so
//! a stale "offline" never removes a newer session.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Where a bound session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub core: u16,
    /// Key of the connection in the core's slab.
    pub slot: u32,
    pub session_id: u64,
    /// Bind time (unix ms): orders binds of one device across nodes.
    pub since_ms: u64,
}

type Shard = Mutex<HashMap<Box<str>, Location>>;

pub struct Registry {
    hasher: RandomState,
    shards: Box<[Shard]>,
}

impl Registry {
    /// `expected` sizes the shards up front so they do not rehash (and hold
    /// a half-empty copy) while a node fills.
    pub fn new(shards: usize, expected: usize) -> Registry {
        let shards = shards.max(1).next_power_of_two();
        let per_shard = expected / shards;
        Registry {
            hasher: RandomState::new(),
            shards: (0..shards)
                .map(|_| Mutex::new(HashMap::with_capacity(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, device_id: &str) -> &Shard {
        let h = self.hasher.hash_one(device_id) as usize;
        &self.shards[h & (self.shards.len() - 1)]
    }

    /// Records `loc` as the holder of `device_id`; returns the session it
    /// replaces, which the caller must kick. The newest bind wins.
    pub fn bind(&self, device_id: &str, loc: Location) -> Option<Location> {
        let mut shard = self.shard(device_id).lock().unwrap();
        match shard.get_mut(device_id) {
            Some(old) => {
                let prev = *old;
                *old = loc;
                (prev.session_id != loc.session_id).then_some(prev)
            }
            None => {
                shard.insert(device_id.into(), loc);
                None
            }
        }
    }

    /// Removes `device_id` if (and only if) `session_id` still holds it.
    pub fn unbind(&self, device_id: &str, session_id: u64) -> bool {
        let mut shard = self.shard(device_id).lock().unwrap();
        if shard
            .get(device_id)
            .is_some_and(|l| l.session_id == session_id)
        {
            shard.remove(device_id);
            return true;
        }
        false
    }

    pub fn get(&self, device_id: &str) -> Option<Location> {
        self.shard(device_id)
            .lock()
            .unwrap()
            .get(device_id)
            .copied()
    }

    /// Every bound device and where it is (a copy; for reconciliation).
    pub fn snapshot(&self) -> Vec<(Box<str>, Location)> {
        let mut out = Vec::with_capacity(self.len());
        for s in self.shards.iter() {
            out.extend(s.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(core: u16, sid: u64) -> Location {
        Location {
            core,
            slot: 0,
            session_id: sid,
            since_ms: 0,
        }
    }

    #[test]
    fn newest_bind_wins_and_stale_unbind_is_ignored() {
        let r = Registry::new(4, 0);
        assert_eq!(r.bind("d", loc(0, 1)), None);
        assert_eq!(r.bind("d", loc(1, 2)), Some(loc(0, 1)));
        assert!(
            !r.unbind("d", 1),
            "old session's offline must not remove the new one"
        );
        assert_eq!(r.get("d"), Some(loc(1, 2)));
        assert!(r.unbind("d", 2));
        assert!(r.is_empty());
    }
}
