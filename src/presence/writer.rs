//! The writer: drains the node's pending presence changes into Redis in
//! pipelined batches. A change names only a device; the writer writes what
//! the gateway's device index says at that moment (online with the live
//! session, or no entry in this node's name), so coalesced and replayed
//! changes are always right. It writes nothing until the kick channel is
//! subscribed and the lease is held. It also runs the reconciliation passes
//! (`reconcile`), alternating slices of a pass with batches, and paces both
//! (`pace`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures_util::future::join_all;

use super::pace::Pace;
use super::reconcile::Pass;
use super::{keys, Fred, RedisPresence, BATCH};
use crate::gateway::Bound;
use crate::metrics as m;

/// While a reconciliation runs, the writer alternates between it and the
/// pending set, about this long each.
const RECONCILE_SLICE: Duration = Duration::from_millis(250);

impl RedisPresence {
    /// The writer task: wakes on new changes, and every 100 ms to notice
    /// Redis coming and going. It runs the reconciliation too, a slice of
    /// rounds at a time between drains of the pending set, and paces both
    /// (`pace`): one round of at most a window of commands in flight, and a
    /// pause after a failed round.
    pub(super) async fn writer(self: Arc<Self>) {
        let started = Instant::now();
        let mut startup_warned = false;
        let mut pace = Pace::new(self.settings.command_timeout, BATCH);
        let mut pass: Option<Pass> = None;
        let mut reconnects = 0;
        loop {
            let now = Instant::now();
            let can_write = self.is_up()
                && self.subscribed.load(Ordering::Relaxed)
                && self.leased.load(Ordering::Relaxed);
            let runnable = can_write && pass.as_ref().is_some_and(|p| p.not_before <= now);
            let mut wake = now + Duration::from_millis(100);
            if let Some(p) = pass.as_ref().filter(|p| p.not_before > now) {
                wake = wake.min(p.not_before);
            }
            if let Some(t) = pace.paused_until(now) {
                wake = t;
            } else if runnable {
                // Reconciliation work is waiting: only let others run.
                wake = now;
            }
            if wake > now {
                tokio::select! {
                    _ = self.pending.notify.notified() => {}
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
            } else {
                tokio::task::yield_now().await;
            }
            metrics::gauge!(m::PRESENCE_QUEUE).set(self.pending.len() as f64);
            metrics::gauge!(m::PRESENCE_LAG).set(self.pending.lag_seconds());
            let connected = self.check_connection(started, &mut startup_warned);
            if !connected
                || !self.subscribed.load(Ordering::Relaxed)
                || !self.leased.load(Ordering::Relaxed)
            {
                continue;
            }
            let seen = self.reconnects.load(Ordering::Relaxed);
            if seen != reconnects {
                // Every node may be reconnecting now: start with small
                // rounds. A pass under way checks which Redis this is.
                reconnects = seen;
                pace.restart();
                if pass.is_none() {
                    pass = Some(self.new_pass());
                }
            }
            if self.pending.take_overflowed() {
                self.needs_reconcile.store(true, Ordering::Relaxed);
            }
            if self.needs_reconcile.swap(false, Ordering::Relaxed) {
                match pass.as_mut() {
                    None => pass = Some(self.new_pass()),
                    // Not reading yet: it will cover this request.
                    Some(p) if !p.has_started() => {}
                    Some(p) => p.again = true,
                }
            }
            let now = Instant::now();
            if pace.paused_until(now).is_some() {
                continue;
            }
            if let Some(p) = pass.as_mut().filter(|p| p.not_before <= now) {
                match self.reconcile_rounds(p, &mut pace, RECONCILE_SLICE).await {
                    Ok(true) => {
                        pass = p.again.then(|| self.new_pass());
                    }
                    Ok(false) => {}
                    Err(e) => {
                        p.interruptions += 1;
                        metrics::counter!(m::RECONCILE_INTERRUPTIONS).increment(1);
                        pace.failed(Instant::now());
                        self.failed();
                        self.warn(
                            "a presence reconciliation round failed; it resumes where it stopped after a pause",
                            &e,
                        );
                        continue;
                    }
                }
            }
            let writing = Instant::now();
            loop {
                let batch = self.pending.take(pace.window());
                if batch.is_empty() {
                    break;
                }
                let sent = batch.len();
                let t0 = Instant::now();
                match self.write_batch(batch).await {
                    Ok(()) => {
                        pace.done(sent, t0.elapsed());
                        self.succeeded();
                    }
                    Err(e) => {
                        pace.failed(Instant::now());
                        self.failed();
                        self.warn("presence write failed; changes requeued", &e);
                        break;
                    }
                }
                metrics::gauge!(m::PRESENCE_WINDOW).set(pace.window() as f64);
                if writing.elapsed() >= RECONCILE_SLICE
                    && pass
                        .as_ref()
                        .is_some_and(|p| p.not_before <= Instant::now())
                {
                    // The reconciliation's turn: both get their slices.
                    break;
                }
            }
            metrics::gauge!(m::PRESENCE_QUEUE).set(self.pending.len() as f64);
            metrics::gauge!(m::PRESENCE_LAG).set(self.pending.lag_seconds());
        }
    }

    /// Writes, for each device, what the device index says now: online with
    /// the live session, or no entry in this node's name.
    async fn write_batch(&self, batch: Vec<Box<str>>) -> Fred<()> {
        let batch_size = batch.len();
        let started = Instant::now();
        let me = self.me().to_owned();
        let held: Vec<Option<Bound>> = batch.iter().map(|d| self.gateway.locate(d)).collect();
        // Into the node's set before the entry exists: if this node dies in
        // between, cleanup after it still finds (and purges) the entry.
        let joining: Vec<String> = batch
            .iter()
            .zip(&held)
            .filter(|(_, l)| l.is_some())
            .map(|(d, _)| d.to_string())
            .collect();
        if !joining.is_empty() {
            if let Err(e) = self
                .client
                .sadd::<i64, _, _>(keys::node_devices(&me), joining)
                .await
            {
                metrics::counter!(m::PRESENCE_WRITES, "result" => "error")
                    .increment(batch.len() as u64);
                self.pending.requeue(batch);
                return Err(e);
            }
        }
        let results = join_all(batch.iter().zip(&held).map(|(device, loc)| {
            let key = keys::device(device);
            let me = me.clone();
            async move {
                match loc {
                    Some(loc) => {
                        let args = vec![me, self.tag(loc.session_id), loc.since_ms.to_string()];
                        let (won, prev_node, prev_sid): (i64, String, String) =
                            self.client.eval(keys::ONLINE, key, args).await?;
                        Ok(Some((won == 1, prev_node, prev_sid)))
                    }
                    None => {
                        let _: i64 = self.client.eval(keys::PURGE, key, vec![me]).await?;
                        Ok::<_, fred::error::Error>(None)
                    }
                }
            }
        }))
        .await;
        let mut failed = Vec::new();
        let mut first_err = None;
        let (mut add, mut remove, mut kicks) = (Vec::new(), Vec::new(), Vec::new());
        let mut came_online = Vec::new();
        for ((device, loc), result) in batch.into_iter().zip(held).zip(results) {
            match result {
                Err(e) => {
                    first_err.get_or_insert(e);
                    failed.push(device);
                }
                Ok(Some((true, prev_node, prev_sid))) => {
                    if loc.is_some() {
                        came_online.push(device.to_string());
                    }
                    if !prev_node.is_empty() && prev_node != me {
                        kicks.push((prev_node, format!("{device}\n{prev_sid}")));
                    }
                    add.push(device.to_string());
                }
                Ok(Some((false, _, _))) => {
                    // A later bind on another node holds the device.
                    if let Some(loc) = loc {
                        self.kick_local(&device, loc.session_id);
                    }
                    remove.push(device.to_string());
                }
                Ok(None) => remove.push(device.to_string()),
            }
        }
        let ok = (add.len() + remove.len()) as u64;
        metrics::counter!(m::PRESENCE_WRITES, "result" => "ok").increment(ok);
        let set_key = keys::node_devices(&me);
        let sadd = async {
            if add.is_empty() {
                return Ok(0);
            }
            self.client.sadd::<i64, _, _>(&set_key, add.clone()).await
        };
        let srem = async {
            if remove.is_empty() {
                return Ok(0);
            }
            self.client
                .srem::<i64, _, _>(&set_key, remove.clone())
                .await
        };
        let (a, r) = futures_util::join!(sadd, srem);
        let write_errors = failed.len() as u64;
        // The device entries are right but the set is not: write those
        // devices again (which repeats the set update), rather than ask for a
        // whole reconciliation because one command timed out.
        for (result, devices) in [(a, add), (r, remove)] {
            if let Err(e) = result {
                first_err.get_or_insert(e);
                failed.extend(devices.into_iter().map(Box::<str>::from));
            }
        }
        // Kicks go out together: a wave of devices moving here must not
        // cost one round trip each.
        let published = join_all(kicks.into_iter().map(|(node, msg)| {
            self.client
                .spublish::<i64, _, _>(keys::kick_channel(&node), msg)
        }))
        .await;
        for result in published {
            match result {
                Ok(_) => metrics::counter!(m::REMOTE_KICKS, "direction" => "sent").increment(1),
                Err(e) => self.warn("cannot publish a kick to another node", &e),
            }
        }
        m::control::presence_batch(batch_size, started.elapsed().as_secs_f64());
        if !came_online.is_empty() {
            if let Some(me) = self.self_ref.get().and_then(|w| w.upgrade()) {
                self.events.came_online(me, came_online);
            }
        }
        if let Some(e) = first_err {
            metrics::counter!(m::PRESENCE_WRITES, "result" => "error").increment(write_errors);
            self.pending.requeue(failed);
            return Err(e);
        }
        Ok(())
    }
}
