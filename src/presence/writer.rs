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

/// Devices per script call on a single Redis. One `EVAL` per device cost
/// about 35 µs of gateway CPU per entry and half a Redis core for 30,000
/// entries a second when a restarted Redis was filled again
/// (docs/BENCHMARKS.md); per-command work on both sides is most of that.
/// A hundred keep one call's time in Redis well under a millisecond.
const ENTRIES_PER_SCRIPT: usize = 100;

/// What writing one device's entry did: `None` for a removal, else (won,
/// previous node, previous session).
type Written = Fred<Option<(bool, String, String)>>;

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
        let results = self.write_entries(&me, &batch, &held).await;
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

    /// Writes each device's entry (`held`: its session here, or none: remove
    /// the entry in this node's name) and says what each write did, in the
    /// batch's order. A single Redis gets [`ENTRIES_PER_SCRIPT`] devices per
    /// script call; a cluster one call per device (its keys are in
    /// different slots).
    async fn write_entries(
        &self,
        me: &str,
        batch: &[Box<str>],
        held: &[Option<Bound>],
    ) -> Vec<Written> {
        if self.client.is_clustered() {
            return join_all(
                batch
                    .iter()
                    .zip(held)
                    .map(|(device, loc)| self.write_entry(me, device, loc.as_ref())),
            )
            .await;
        }
        let (online, offline): (Vec<usize>, Vec<usize>) =
            (0..batch.len()).partition(|&i| held[i].is_some());
        let onlines = join_all(online.chunks(ENTRIES_PER_SCRIPT).map(|idx| async move {
            let keys: Vec<String> = idx.iter().map(|&i| keys::device(&batch[i])).collect();
            let mut args = Vec::with_capacity(1 + 2 * idx.len());
            args.push(me.to_owned());
            for loc in idx.iter().filter_map(|&i| held[i].as_ref()) {
                args.push(self.tag(loc.session_id));
                args.push(loc.since_ms.to_string());
            }
            let reply: Fred<Vec<Value>> = self.client.eval(keys::ONLINE_MANY, keys, args).await;
            (idx, reply.and_then(|r| online_replies(r, idx.len())))
        }));
        let purges = join_all(offline.chunks(ENTRIES_PER_SCRIPT).map(|idx| async move {
            let keys: Vec<String> = idx.iter().map(|&i| keys::device(&batch[i])).collect();
            let reply: Fred<i64> = self
                .client
                .eval(keys::PURGE_MANY, keys, vec![me.to_owned()])
                .await;
            (idx, reply)
        }));
        let (onlines, purges) = futures_util::join!(onlines, purges);
        let mut results: Vec<Option<Written>> = (0..batch.len()).map(|_| None).collect();
        for (idx, reply) in onlines {
            match reply {
                Ok(each) => {
                    for (&i, r) in idx.iter().zip(each) {
                        results[i] = Some(Ok(Some(r)));
                    }
                }
                Err(e) => idx.iter().for_each(|&i| results[i] = Some(Err(e.clone()))),
            }
        }
        for (idx, reply) in purges {
            for &i in idx {
                results[i] = Some(reply.as_ref().map(|_| None).map_err(Clone::clone));
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every device was written"))
            .collect()
    }

    /// One device's entry, one script call (on a cluster).
    async fn write_entry(&self, me: &str, device: &str, loc: Option<&Bound>) -> Written {
        let key = keys::device(device);
        match loc {
            Some(loc) => {
                let args = vec![
                    me.to_owned(),
                    self.tag(loc.session_id),
                    loc.since_ms.to_string(),
                ];
                let (won, prev_node, prev_sid): (i64, String, String) =
                    self.client.eval(keys::ONLINE, key, args).await?;
                Ok(Some((won == 1, prev_node, prev_sid)))
            }
            None => {
                let _: i64 = self
                    .client
                    .eval(keys::PURGE, key, vec![me.to_owned()])
                    .await?;
                Ok(None)
            }
        }
    }
}

/// The reply of [`keys::ONLINE_MANY`] for `n` devices: (won, previous node,
/// previous session) each.
fn online_replies(reply: Vec<Value>, n: usize) -> Fred<Vec<(bool, String, String)>> {
    if reply.len() != 3 * n {
        return Err(fred::error::Error::new(
            fred::error::ErrorKind::Parse,
            format!(
                "ONLINE_MANY answered {} values for {n} devices",
                reply.len()
            ),
        ));
    }
    Ok(reply
        .chunks(3)
        .map(|r| {
            (
                r[0].as_i64() == Some(1),
                r[1].as_string().unwrap_or_default(),
                r[2].as_string().unwrap_or_default(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_many_device_reply_splits_into_one_result_per_device() {
        let reply = vec![
            Value::Integer(1),
            Value::from(""),
            Value::from(""),
            Value::Integer(0),
            Value::from("B"),
            Value::from("9c41d2e7-2a"),
        ];
        assert_eq!(
            online_replies(reply.clone(), 2).unwrap(),
            vec![
                (true, String::new(), String::new()),
                (false, "B".to_owned(), "9c41d2e7-2a".to_owned()),
            ]
        );
        // A reply that does not fit the devices asked about is an error
        // (the batch is requeued), not a guess.
        assert!(online_replies(reply, 3).is_err());
    }
}
