//! The writer: drains the node's pending presence changes into Redis in
//! pipelined batches. A change names only a device; the writer writes what
//! the gateway's device index says at that moment (online with the live
//! session, or no entry in this node's name), so coalesced and replayed
//! changes are always right. It writes nothing until the kick channel is
//! subscribed and the lease is held, and reconciles first when asked to.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use futures_util::future::join_all;

use super::{keys, Fred, RedisPresence, BATCH};
use crate::gateway::Bound;
use crate::metrics as m;

impl RedisPresence {
    /// The writer task: wakes on new changes, and every 100 ms to notice
    /// Redis coming and going.
    pub(super) async fn writer(self: Arc<Self>) {
        let started = Instant::now();
        let mut startup_warned = false;
        loop {
            tokio::select! {
                _ = self.pending.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
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
            if self.pending.take_overflowed() {
                self.needs_reconcile.store(true, Ordering::Relaxed);
            }
            if self.needs_reconcile.swap(false, Ordering::Relaxed) {
                match self.reconcile().await {
                    Ok(()) => self.succeeded(),
                    Err(e) => {
                        // Retried on the next wake; the batches below still go.
                        self.needs_reconcile.store(true, Ordering::Relaxed);
                        self.failed();
                        self.warn("presence reconciliation failed; will retry", &e);
                    }
                }
            }
            loop {
                let batch = self.pending.take(BATCH);
                if batch.is_empty() {
                    break;
                }
                match self.write_batch(batch).await {
                    Ok(()) => self.succeeded(),
                    Err(e) => {
                        self.failed();
                        self.warn("presence write failed; changes requeued", &e);
                        break;
                    }
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
            self.client.sadd::<i64, _, _>(&set_key, add).await
        };
        let srem = async {
            if remove.is_empty() {
                return Ok(0);
            }
            self.client.srem::<i64, _, _>(&set_key, remove).await
        };
        let (a, r) = futures_util::join!(sadd, srem);
        if a.is_err() || r.is_err() {
            // The device entries are right; the set is repaired by reconciliation.
            self.needs_reconcile.store(true, Ordering::Relaxed);
        }
        for (node, msg) in kicks {
            match self
                .client
                .spublish::<i64, _, _>(keys::kick_channel(&node), msg)
                .await
            {
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
            metrics::counter!(m::PRESENCE_WRITES, "result" => "error")
                .increment(failed.len() as u64);
            self.pending.requeue(failed);
            return Err(e);
        }
        Ok(())
    }
}
