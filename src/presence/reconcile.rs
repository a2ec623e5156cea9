//! Comparing this node's memory with Redis: [`RedisPresence::reconcile`]
//! repairs the differences (after reconnects, lapsed leases, lost kicks and
//! on a slow timer), [`RedisPresence::consistency`] only counts them, and
//! [`RedisPresence::lookup`] reads one device's entry. The device index is
//! the truth for this node's sessions; Redis is made to match it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use fred::prelude::*;
use futures_util::future::join_all;
use serde::Serialize;

use super::{keys, Fred, RedisPresence, BATCH};
use crate::gateway::Bound;
use crate::metrics as m;

/// What Redis says about one device.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceEntry {
    pub device_id: String,
    pub node: String,
    pub session: String,
    pub epoch: u64,
    pub since_ms: u64,
    /// Whether the holding node's lease is current.
    pub node_alive: bool,
    /// This node holds the session.
    pub local: bool,
}

/// Differences between this node's memory and Redis.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Consistency {
    /// Local sessions with no entry in Redis.
    pub missing: u64,
    /// Entries in Redis in this node's name for sessions it does not hold.
    pub stale: u64,
    /// Local sessions whose entry names another node or session.
    pub mismatched: u64,
    pub local_sessions: u64,
    pub redis_entries: u64,
    /// Changes still queued for Redis.
    pub pending: u64,
    /// Entries compared (all, or the sample).
    pub checked: u64,
    pub sampled: bool,
}

impl RedisPresence {
    /// Local sessions, compared with Redis: (missing, mismatched) device lists.
    async fn compare_local(&self, local: &[(Arc<str>, Bound)]) -> Fred<(Vec<usize>, Vec<usize>)> {
        let (mut missing, mut mismatched) = (Vec::new(), Vec::new());
        for (base, chunk) in local.chunks(BATCH).enumerate() {
            let reads = join_all(chunk.iter().map(|(d, _)| {
                self.client.hmget::<(Option<String>, Option<String>), _, _>(
                    keys::device(d),
                    vec!["node", "sid"],
                )
            }))
            .await;
            for (i, ((_, loc), r)) in chunk.iter().zip(reads).enumerate() {
                let idx = base * BATCH + i;
                match r? {
                    (None, _) => missing.push(idx),
                    (Some(node), sid)
                        if node != self.me()
                            || sid.as_deref() != Some(self.tag(loc.session_id).as_str()) =>
                    {
                        mismatched.push(idx)
                    }
                    _ => {}
                }
            }
        }
        Ok((missing, mismatched))
    }

    /// Entries in this node's name (per its device set) it does not hold:
    /// (device, session tag) pairs, plus the set's size.
    async fn find_stale(
        &self,
        local: &HashSet<&str>,
        sample: Option<usize>,
    ) -> Fred<(Vec<(String, Option<String>)>, u64, u64)> {
        let mut members: Vec<String> = self.client.smembers(keys::node_devices(self.me())).await?;
        let total = members.len() as u64;
        if let Some(n) = sample {
            fastrand::shuffle(&mut members);
            members.truncate(n);
        }
        let checked = members.len() as u64;
        let candidates: Vec<String> = members
            .into_iter()
            .filter(|d| !local.contains(d.as_str()))
            .collect();
        let mut stale = Vec::new();
        for chunk in candidates.chunks(BATCH) {
            let reads = join_all(chunk.iter().map(|d| {
                self.client.hmget::<(Option<String>, Option<String>), _, _>(
                    keys::device(d),
                    vec!["node", "sid"],
                )
            }))
            .await;
            for (d, r) in chunk.iter().zip(reads) {
                let (node, sid) = r?;
                // In the set but held by nobody or another node: only the
                // set member is stale. Held in our name: the entry is stale.
                let ours = node.as_deref() == Some(self.me());
                stale.push((d.clone(), if ours { sid } else { None }));
            }
        }
        Ok((stale, total, checked))
    }

    /// Makes Redis match this node's memory: marks every local session whose
    /// entry is missing or wrong, and every entry in this node's name it does
    /// not hold, for the writer (which writes the index's truth); repairs the
    /// node's device set.
    pub async fn reconcile(&self) -> Fred<()> {
        let started = Instant::now();
        let local = self.gateway.snapshot();
        let (missing, mismatched) = self.compare_local(&local).await?;
        for &i in missing.iter().chain(&mismatched) {
            self.pending.mark(&local[i].0);
        }
        let set_key = keys::node_devices(self.me());
        for chunk in local.chunks(BATCH) {
            let members: Vec<String> = chunk.iter().map(|(d, _)| d.to_string()).collect();
            let _: i64 = self.client.sadd(&set_key, members).await?;
        }
        // Stale: compare with the index as it is now, not the snapshot above.
        let now = self.gateway.snapshot();
        let names: HashSet<&str> = now.iter().map(|(d, _)| &**d).collect();
        let (stale, _, _) = self.find_stale(&names, None).await?;
        let mut stale_entries = 0u64;
        for (d, sid) in &stale {
            stale_entries += sid.is_some() as u64;
            self.pending.mark(d);
        }
        metrics::counter!(m::RECONCILIATIONS).increment(1);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "missing").increment(missing.len() as u64);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "mismatched")
            .increment(mismatched.len() as u64);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "stale").increment(stale_entries);
        tracing::info!(
            sessions = local.len(),
            missing = missing.len(),
            mismatched = mismatched.len(),
            stale = stale_entries,
            took_ms = started.elapsed().as_millis() as u64,
            "presence reconciled with Redis"
        );
        Ok(())
    }

    /// Compares memory with Redis without changing anything. Full by default
    /// (one HMGET per local session and per set member, pipelined in batches
    /// of 1000, plus one SMEMBERS); `sample` limits both sides to that many.
    pub async fn consistency(&self, sample: Option<usize>) -> Fred<Consistency> {
        let mut local = self.gateway.snapshot();
        let local_sessions = local.len() as u64;
        if let Some(n) = sample {
            fastrand::shuffle(&mut local);
            local.truncate(n);
        }
        let (missing, mismatched) = self.compare_local(&local).await?;
        let all: Vec<(Arc<str>, Bound)>;
        let names: HashSet<&str> = if sample.is_some() {
            // Stale means "not held here at all": check against every session.
            all = self.gateway.snapshot();
            all.iter().map(|(d, _)| &**d).collect()
        } else {
            local.iter().map(|(d, _)| &**d).collect()
        };
        let (stale, redis_entries, checked_set) = self.find_stale(&names, sample).await?;
        Ok(Consistency {
            missing: missing.len() as u64,
            stale: stale.iter().filter(|(_, sid)| sid.is_some()).count() as u64,
            mismatched: mismatched.len() as u64,
            local_sessions,
            redis_entries,
            pending: self.pending.len() as u64,
            checked: local.len() as u64 + checked_set,
            sampled: sample.is_some(),
        })
    }

    /// What Redis says about one device.
    pub async fn lookup(&self, device: &str) -> Fred<Option<PresenceEntry>> {
        let (node, sid, epoch, since): (Option<String>, Option<String>, Option<u64>, Option<u64>) =
            self.client
                .hmget(keys::device(device), vec!["node", "sid", "epoch", "since"])
                .await?;
        let (Some(node), Some(session)) = (node, sid) else {
            return Ok(None);
        };
        let alive: i64 = self.client.exists(keys::lease(&node)).await?;
        let local = node == self.me()
            && self
                .gateway
                .locate(device)
                .is_some_and(|l| self.tag(l.session_id) == session);
        Ok(Some(PresenceEntry {
            device_id: device.to_owned(),
            node,
            session,
            epoch: epoch.unwrap_or(0),
            since_ms: since.unwrap_or(0),
            node_alive: alive > 0,
            local,
        }))
    }
}
