//! Comparing this node's memory with Redis: a reconciliation [`Pass`]
//! repairs the differences (after reconnects, lapsed leases, lost kicks and
//! on a slow timer) in paced rounds that survive failures,
//! [`RedisPresence::consistency`] only counts them, and
//! [`RedisPresence::lookup`] reads one device's entry. The device index is
//! the truth for this node's sessions; Redis is made to match it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::error::ErrorKind;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, InfoKind};
use futures_util::future::join_all;
use serde::Serialize;

use super::pace::{self, Pace};
use super::{keys, Fred, RedisPresence, BATCH};
use crate::gateway::Bound;
use crate::metrics as m;

/// How often a long reconciliation logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Where a reconciliation pass is.
enum Stage {
    /// Comparing local sessions with their entries; the next one to compare.
    Local(usize),
    /// Scanning the node's device set for members it does not hold.
    Stale {
        /// The `SSCAN` cursor ("0" before the first round and after the last).
        cursor: String,
        /// The set's size (`SCARD`), read with the first round.
        size: Option<u64>,
        /// Members returned so far.
        scanned: u64,
    },
}

/// A reconciliation pass: local sessions first, then the node's device set,
/// in rounds the size of the pacing window. The writer keeps it across
/// failed rounds, so a timeout costs one round, not the pass; it starts over
/// only when Redis was replaced meanwhile. It holds the names of the local
/// sessions of when it was made (one pointer per session, the strings are
/// shared with the device index).
pub(super) struct Pass {
    devices: Vec<Arc<str>>,
    stage: Stage,
    /// The run id of the Redis the pass reads (after its first round; `None`
    /// on a cluster).
    run_id: Option<String>,
    /// `RedisPresence::reconnects` when the pass last checked its Redis.
    epoch: u64,
    /// The random start delay ends.
    pub(super) not_before: Instant,
    /// Another pass was asked for after this one had begun reading: it
    /// follows this one.
    pub(super) again: bool,
    /// The first round.
    started: Option<Instant>,
    missing: u64,
    /// Local sessions marked for the writer without reading their entries,
    /// after a whole round found none (see `local_round`).
    unread: u64,
    mismatched: u64,
    stale: u64,
    rounds: u64,
    /// Failed rounds (each retried after a pause).
    pub(super) interruptions: u64,
    last_report: Instant,
}

impl Pass {
    /// It has read from Redis: a request made now is not covered by it.
    pub(super) fn has_started(&self) -> bool {
        self.started.is_some()
    }

    /// Devices it has yet to compare: the local sessions not compared yet,
    /// then the members of the device set not scanned yet.
    pub(super) fn remaining(&self) -> u64 {
        match &self.stage {
            Stage::Local(next) => (self.devices.len() - next) as u64,
            Stage::Stale { size, scanned, .. } => size.unwrap_or(0).saturating_sub(*scanned),
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.map(|t| t.elapsed()).unwrap_or_default()
    }
}

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

    /// A new reconciliation pass over the sessions held now; it starts after
    /// a random delay that grows with their number (`pace::start_delay`).
    pub(super) fn new_pass(&self) -> Pass {
        let devices: Vec<Arc<str>> = self
            .gateway
            .snapshot()
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let delay = pace::start_delay(devices.len());
        tracing::debug!(
            sessions = devices.len(),
            delay_ms = delay.as_millis() as u64,
            "presence reconciliation scheduled"
        );
        self.reconciling.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let pass = Pass {
            devices,
            stage: Stage::Local(0),
            run_id: None,
            epoch: self.reconnects.load(Ordering::Relaxed),
            not_before: now + delay,
            again: false,
            started: None,
            missing: 0,
            unread: 0,
            mismatched: 0,
            stale: 0,
            rounds: 0,
            interruptions: 0,
            last_report: now,
        };
        metrics::gauge!(m::RECONCILE_REMAINING).set(pass.remaining() as f64);
        pass
    }

    /// Makes Redis match this node's memory, one paced round after another,
    /// for up to `budget` (at least one round), so that the writer's batches
    /// go in between: marks every local session whose entry is missing or
    /// wrong, and every member of the node's device set it does not hold, for
    /// the writer (which writes the index's truth), and adds the local
    /// sessions to the set. `Ok(true)` when the pass is complete. A failed
    /// round fails the call and leaves the pass where it was: the caller
    /// retries after a pause, and the pass resumes with that round.
    pub(super) async fn reconcile_rounds(
        &self,
        pass: &mut Pass,
        pace: &mut Pace,
        budget: Duration,
    ) -> Fred<bool> {
        let began = Instant::now();
        if !self.same_redis(pass).await? {
            return Ok(false);
        }
        loop {
            let done = match pass.stage {
                Stage::Local(_) => self.local_round(pass, pace).await?,
                Stage::Stale { .. } => self.stale_round(pass, pace).await?,
            };
            pass.rounds += 1;
            self.succeeded();
            metrics::gauge!(m::RECONCILE_REMAINING).set(pass.remaining() as f64);
            metrics::gauge!(m::PRESENCE_WINDOW).set(pace.window() as f64);
            if done {
                self.finish(pass);
                return Ok(true);
            }
            if pass.last_report.elapsed() >= PROGRESS_EVERY {
                pass.last_report = Instant::now();
                tracing::info!(
                    sessions = pass.devices.len(),
                    remaining = pass.remaining(),
                    window = pace.window(),
                    interruptions = pass.interruptions,
                    elapsed_ms = pass.elapsed().as_millis() as u64,
                    "presence reconciliation under way"
                );
            }
            if began.elapsed() >= budget {
                return Ok(false);
            }
        }
    }

    /// Before the first round, notes which Redis the pass reads; after a
    /// reconnection, checks that it is still that one. A Redis that was
    /// replaced (restarted: its data is gone; failed over) voids what the
    /// pass checked: it starts over, as a new pass (`false`). On a cluster a
    /// reconnection may be to a replaced shard, so any reconnection starts
    /// over.
    async fn same_redis(&self, pass: &mut Pass) -> Fred<bool> {
        let epoch = self.reconnects.load(Ordering::Relaxed);
        if pass.started.is_none() {
            pass.run_id = self.run_id().await?;
            pass.epoch = epoch;
            pass.started = Some(Instant::now());
            return Ok(true);
        }
        if pass.epoch == epoch {
            return Ok(true);
        }
        let run_id = self.run_id().await?;
        pass.epoch = epoch;
        if run_id.is_some() && run_id == pass.run_id {
            tracing::info!(
                remaining = pass.remaining(),
                "reconnected to the same Redis; the presence reconciliation resumes where it was"
            );
            return Ok(true);
        }
        metrics::counter!(m::RECONCILE_ABORTS).increment(1);
        tracing::info!(
            remaining = pass.remaining(),
            "Redis was replaced during the presence reconciliation; starting it over"
        );
        *pass = self.new_pass();
        Ok(false)
    }

    /// The run id of the Redis server (a new one at every start), or `None`
    /// when it cannot be known: on a cluster (one per shard), or when Redis
    /// refuses `INFO` (an ACL). Without it, any reconnection starts the pass
    /// over. A timeout is an error like any other failed round's.
    async fn run_id(&self) -> Fred<Option<String>> {
        if self.client.is_clustered() {
            return Ok(None);
        }
        match self.client.info::<String>(Some(InfoKind::Server)).await {
            Ok(info) => Ok(info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(|id| id.trim().to_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Timeout
                        | ErrorKind::IO
                        | ErrorKind::Canceled
                        | ErrorKind::Backpressure
                ) =>
            {
                Err(e)
            }
            Err(_) => Ok(None),
        }
    }

    /// One round of local sessions: `HMGET node sid` of each (still held
    /// here) and one `SADD` of them all to the node's set. Nothing is marked
    /// or counted unless the whole round succeeded.
    async fn local_round(&self, pass: &mut Pass, pace: &mut Pace) -> Fred<bool> {
        let Stage::Local(next) = pass.stage else {
            return Ok(false);
        };
        let mut end = (next + pace.window()).min(pass.devices.len());
        // A device that left since the snapshot is the writer's business
        // (its change is marked); one that came since is too.
        let held: Vec<(&Arc<str>, Bound)> = pass.devices[next..end]
            .iter()
            .filter_map(|d| self.gateway.locate(d).map(|b| (d, b)))
            .collect();
        if !held.is_empty() {
            let set_key = keys::node_devices(self.me());
            let members: Vec<String> = held.iter().map(|(d, _)| d.to_string()).collect();
            let sent = Instant::now();
            let (reads, added) = futures_util::join!(
                join_all(held.iter().map(|(d, _)| {
                    self.client.hmget::<(Option<String>, Option<String>), _, _>(
                        keys::device(d),
                        vec!["node", "sid"],
                    )
                })),
                self.client.sadd::<i64, _, _>(&set_key, members)
            );
            let took = sent.elapsed();
            let reads: Vec<(Option<String>, Option<String>)> =
                reads.into_iter().collect::<Fred<_>>()?;
            added?;
            pace.done(held.len() + 1, took);
            let mut missing = 0usize;
            for ((device, loc), entry) in held.iter().zip(reads) {
                match entry {
                    (None, _) => missing += 1,
                    (Some(node), sid)
                        if node != self.me()
                            || sid.as_deref() != Some(self.tag(loc.session_id).as_str()) =>
                    {
                        pass.mismatched += 1
                    }
                    _ => continue,
                }
                self.pending.mark(device);
            }
            pass.missing += missing as u64;
            if missing == held.len() && held.len() >= pace::MIN_WINDOW {
                // Not one entry in a whole round: Redis lost this node's
                // entries (restarted empty, flushed, failed over to a
                // replica that had none) or never had them (a ramp whose
                // writes are still queued). Reading the rest one by one
                // would confirm it at the cost of a read per session, half
                // the work of restoring them; every one is written instead,
                // and a write of an entry that was there after all is
                // harmless (the writer writes the index's truth).
                let rest = self.mark_unread(&pass.devices[end..]);
                pass.missing += rest;
                pass.unread += rest;
                end = pass.devices.len();
            }
        }
        pass.stage = if end == pass.devices.len() {
            Stage::Stale {
                cursor: "0".into(),
                size: None,
                scanned: 0,
            }
        } else {
            Stage::Local(end)
        };
        Ok(false)
    }

    /// Marks the devices of `devices` still held here for the writer,
    /// without reading their entries (and without the `SADD` a round makes:
    /// the writer's batch adds each to the node's set before its entry).
    /// How many were marked.
    fn mark_unread(&self, devices: &[Arc<str>]) -> u64 {
        let mut marked = 0;
        for d in devices {
            if self.gateway.locate(d).is_some() {
                self.pending.mark(d);
                marked += 1;
            }
        }
        marked
    }

    /// One round over the node's device set (`SSCAN`, so the set is never
    /// read in one reply and the scan can resume): each member this node
    /// does not hold now is marked (the writer PURGEs an entry in this
    /// node's name and `SREM`s the member); `HMGET node` tells which of them
    /// are stale entries rather than stale members. `true` when the scan is
    /// complete.
    async fn stale_round(&self, pass: &mut Pass, pace: &mut Pace) -> Fred<bool> {
        let Stage::Stale {
            cursor,
            size,
            scanned,
        } = &mut pass.stage
        else {
            return Ok(false);
        };
        let set_key = keys::node_devices(self.me());
        let sent = Instant::now();
        let want_size = size.is_none();
        let (scan, card) = futures_util::join!(
            self.client.custom::<(String, Vec<String>), _>(
                CustomCommand::new_static("SSCAN", ClusterHash::FirstKey, false),
                vec![
                    set_key.clone(),
                    cursor.clone(),
                    "COUNT".into(),
                    pace.window().to_string(),
                ],
            ),
            async {
                if want_size {
                    self.client.scard::<u64, _>(&set_key).await.map(Some)
                } else {
                    Ok(None)
                }
            }
        );
        let (next_cursor, members) = scan?;
        let card = card?;
        let candidates: Vec<String> = members
            .iter()
            .filter(|d| self.gateway.locate(d).is_none())
            .cloned()
            .collect();
        let reads: Vec<Option<String>> = join_all(candidates.iter().map(|d| {
            self.client
                .hget::<Option<String>, _, _>(keys::device(d), "node")
        }))
        .await
        .into_iter()
        .collect::<Fred<_>>()?;
        pace.done(members.len().max(1) + candidates.len(), sent.elapsed());
        if let Some(n) = card {
            *size = Some(n);
        }
        *scanned += members.len() as u64;
        *cursor = next_cursor;
        let finished = cursor.as_str() == "0";
        for (device, node) in candidates.iter().zip(reads) {
            // Held by nobody or by another node: only the set member is
            // stale. Held in this node's name: the entry is.
            pass.stale += (node.as_deref() == Some(self.me())) as u64;
            self.pending.mark(device);
        }
        Ok(finished)
    }

    /// A pass completed: counted and logged.
    fn finish(&self, pass: &Pass) {
        self.reconciling.store(false, Ordering::Relaxed);
        metrics::gauge!(m::RECONCILE_REMAINING).set(0.0);
        metrics::counter!(m::RECONCILIATIONS).increment(1);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "missing").increment(pass.missing);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "mismatched").increment(pass.mismatched);
        metrics::counter!(m::RECONCILE_FIXES, "kind" => "stale").increment(pass.stale);
        tracing::info!(
            sessions = pass.devices.len(),
            missing = pass.missing,
            unread = pass.unread,
            mismatched = pass.mismatched,
            stale = pass.stale,
            rounds = pass.rounds,
            interruptions = pass.interruptions,
            took_ms = pass.elapsed().as_millis() as u64,
            "presence reconciled with Redis"
        );
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
