//! Devices whose presence changed since a consumer last looked: the feed the
//! Redis presence writer drains.
//!
//! The control plane marks a device here whenever it applies a core's bind or
//! offline to the device index; nothing on the I/O cores waits on it, and
//! nothing here waits on Redis. The writer later writes what the device index
//! says *at write time* (online with the live session, or no entry in this
//! node's name), so however many changes a device went through, one write
//! brings Redis to the current state, and the set holds at most one entry per
//! device. A hard cap bounds it anyway; past it, marks are dropped and the
//! consumer is told to reconcile the node's whole state instead.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

type Shard = Mutex<HashSet<Box<str>>>;

pub struct ChangeFeed {
    hasher: RandomState,
    shards: Box<[Shard]>,
    len: AtomicUsize,
    cap: usize,
    overflowed: AtomicBool,
    /// Shard where the next `take` starts, so no shard waits behind others.
    cursor: AtomicUsize,
    /// Since when the set has been non-empty (the age of the oldest change).
    backlog_since: Mutex<Option<Instant>>,
    /// Wakes the writer.
    pub notify: tokio::sync::Notify,
}

impl ChangeFeed {
    pub fn new(shards: usize, cap: usize) -> ChangeFeed {
        let shards = shards.max(1).next_power_of_two();
        ChangeFeed {
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::new(HashSet::new())).collect(),
            len: AtomicUsize::new(0),
            cap,
            overflowed: AtomicBool::new(false),
            cursor: AtomicUsize::new(0),
            backlog_since: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn shard(&self, device_id: &str) -> &Shard {
        let h = self.hasher.hash_one(device_id) as usize;
        &self.shards[h & (self.shards.len() - 1)]
    }

    fn insert(&self, device_id: &str) {
        let mut shard = self.shard(device_id).lock().unwrap();
        if shard.contains(device_id) {
            return;
        }
        if self.len.load(Ordering::Relaxed) >= self.cap {
            self.overflowed.store(true, Ordering::Relaxed);
            return;
        }
        shard.insert(device_id.into());
        if self.len.fetch_add(1, Ordering::Relaxed) == 0 {
            self.backlog_since
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
        }
    }

    /// Marks a device changed (never blocks on I/O).
    pub fn mark(&self, device_id: &str) {
        self.insert(device_id);
        self.notify.notify_one();
    }

    /// Marks devices dirty again after a failed write.
    pub fn requeue(&self, devices: Vec<Box<str>>) {
        for d in devices {
            self.insert(&d);
        }
    }

    /// Takes up to `max` dirty devices.
    pub fn take(&self, max: usize) -> Vec<Box<str>> {
        let mut out = Vec::with_capacity(max.min(self.len()));
        let n_shards = self.shards.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for shard in (0..n_shards).map(|i| &self.shards[(start + i) % n_shards]) {
            if out.len() >= max {
                break;
            }
            let mut s = shard.lock().unwrap();
            let n = (max - out.len()).min(s.len());
            if n == s.len() {
                out.extend(s.drain());
            } else {
                let keys: Vec<Box<str>> = s.iter().take(n).cloned().collect();
                for k in keys {
                    s.remove(&k);
                    out.push(k);
                }
            }
        }
        let before = self.len.fetch_sub(out.len(), Ordering::Relaxed);
        let mut since = self.backlog_since.lock().unwrap();
        // While a backlog remains, keep the time it began: an upper bound on
        // the age of the oldest unwritten change.
        if before == out.len() {
            *since = None;
        }
        out
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Seconds since the set became non-empty (0 when empty).
    pub fn lag_seconds(&self) -> f64 {
        self.backlog_since
            .lock()
            .unwrap()
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// True once if marks were dropped at the cap since the last call.
    pub fn take_overflowed(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_device_however_many_changes() {
        let p = ChangeFeed::new(4, 100);
        for _ in 0..5 {
            p.mark("d");
        }
        p.mark("e");
        assert_eq!(p.len(), 2);
        let mut got = p.take(10);
        got.sort();
        assert_eq!(got, vec!["d".into(), "e".into()] as Vec<Box<str>>);
        assert!(p.is_empty());
        assert_eq!(p.lag_seconds(), 0.0);
    }

    #[test]
    fn cap_bounds_memory_and_flags_overflow() {
        let p = ChangeFeed::new(2, 3);
        for i in 0..10 {
            p.mark(&format!("d{i}"));
        }
        assert_eq!(p.len(), 3);
        assert!(p.take_overflowed());
        assert!(!p.take_overflowed());
        let batch = p.take(2);
        assert_eq!(batch.len(), 2);
        assert_eq!(p.len(), 1);
        p.requeue(batch);
        assert_eq!(p.len(), 3);
    }
}
