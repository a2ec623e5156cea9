//! Bytes leaving the engine and connections ending: gathered writes, the
//! close linger, shutdown and release.

use bytes::Bytes;

use super::conn::{ADMITTED, FLUSH_QUEUED, SHUT, WRITING};
use super::stats::{CLOSE_IO_ERROR, CLOSE_PEER};
use super::{ConnKey, Engine, Intent, Now, SessionRef, TransportEnd};

impl Engine {
    /// The next gathered write: a connection and the chunks to write to it,
    /// in order. The driver writes all of them (resubmitting the rest of a
    /// partial write itself) and then calls [`Engine::on_written`]; a
    /// connection has at most one batch with the driver at a time.
    pub fn poll_transmit(&mut self) -> Option<(ConnKey, Vec<Bytes>)> {
        while let Some(key) = self.flush.pop_front() {
            let Some(c) = self.conns.get_mut(key.index()) else {
                continue;
            };
            c.set(FLUSH_QUEUED, false);
            if c.has(SHUT) || c.has(WRITING) {
                continue;
            }
            // Miop frames wait for the transport's handshakes.
            let frames = if c.wire_ready() {
                c.active.as_mut().and_then(|a| a.outbound.take_batch())
            } else {
                None
            };
            let closing = c.closing();
            let batch = match c.wire.as_mut() {
                None => frames,
                Some(wire) => {
                    let last = frames.is_none() && closing;
                    if last {
                        // The session's last frame is written: the
                        // transport's goodbye (close_notify, WebSocket
                        // Close) follows.
                        wire.close();
                    }
                    let mut out = Vec::new();
                    wire.seal(frames.unwrap_or_default(), &mut out);
                    (!out.is_empty()).then_some(out)
                }
            };
            if let Some(batch) = batch {
                c.set(WRITING, true);
                return Some((key, batch));
            }
            if closing {
                // Everything the session wanted sent is written.
                self.shutdown(key);
            } else {
                c.compact();
            }
        }
        None
    }

    /// The batch from [`Engine::poll_transmit`] was written in full (`ok`),
    /// or the write failed.
    pub fn on_written(&mut self, now: Now, key: ConnKey, ok: bool) {
        let Some(c) = self.conns.get_mut(key.index()) else {
            return;
        };
        if c.has(SHUT) {
            return;
        }
        c.set(WRITING, false);
        if let Some(a) = c.active.as_mut() {
            a.outbound.written();
            if ok {
                // The client reads: a drop-oldest stall is over.
                a.stalled_since_ms = None;
            }
        }
        if !ok {
            return self.on_transport_end(now, key, TransportEnd::IoError);
        }
        if c.queued() > 0 || c.closing() || c.wire_wants_write() {
            self.flush_later(key);
        } else {
            c.compact();
        }
    }

    /// The transport ended (EOF, reset, failed read or write) without the
    /// session deciding it: the session goes offline and the socket is shut
    /// down at once (nothing more can be delivered).
    pub fn on_transport_end(&mut self, now: Now, key: ConnKey, why: TransportEnd) {
        self.end_transport(now, key, why, false);
    }

    /// Ends the session for a transport reason. `goodbye`: the connection's
    /// transport layer still has bytes of its own to write (a TLS alert, an
    /// HTTP error, a WebSocket Close reply): the session's queued frames are
    /// dropped and the socket is shut down once those are written, instead
    /// of at once.
    pub(super) fn end_transport(
        &mut self,
        now: Now,
        key: ConnKey,
        why: TransportEnd,
        goodbye: bool,
    ) {
        let mut actions = std::mem::take(&mut self.scratch);
        let Some(c) = self.conns.get_mut(key.index()) else {
            return;
        };
        if c.has(SHUT) {
            return;
        }
        if !c.closing() {
            self.stats.closed[match why {
                TransportEnd::PeerClosed => CLOSE_PEER,
                TransportEnd::IoError => CLOSE_IO_ERROR,
            }] += 1;
        }
        let at = SessionRef {
            key,
            session_id: c.session.session_id(),
        };
        c.session.handle_transport_closed(&mut actions);
        if goodbye {
            if let Some(a) = c.active.as_mut() {
                a.outbound.clear_queued();
            }
        }
        self.apply(now, at, &mut actions);
        self.scratch = actions;
        if goodbye {
            self.begin_close(now, key);
        } else {
            self.shutdown(key);
        }
    }

    /// The driver closed the socket of a connection it was told to shut down,
    /// and no operation on it is pending: its key may be reused.
    pub fn released(&mut self, key: ConnKey) {
        if self.conns.get(key.index()).is_some_and(|c| c.has(SHUT)) {
            let c = self.conns.remove(key.index());
            if c.has(ADMITTED) {
                self.admission.on_release(c.peer.addr().ip());
            }
        }
    }

    /// Shuts down every connection not shut down yet (the end of a drain
    /// that ran out of time). Returns how many.
    pub fn force_close_all(&mut self, now: Now) -> usize {
        let keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.has(SHUT))
            .map(|(k, _)| ConnKey(k as u32))
            .collect();
        for &key in &keys {
            self.on_transport_end(now, key, TransportEnd::IoError);
        }
        keys.len()
    }

    /// The session decided to close: flush what it queued (its Close frame),
    /// then shut down; a peer that does not read gets the close linger.
    pub(super) fn begin_close(&mut self, now: Now, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index()) else {
            return;
        };
        if c.has(SHUT) {
            return;
        }
        if !c.wire_ready() {
            // A handshake never finished: no Miop frame can go out; only the
            // transport's own bytes (an alert) may.
            if let Some(a) = c.active.as_mut() {
                a.outbound.clear_queued();
            }
        }
        if c.queued() == 0 && !c.has(WRITING) && c.wire.is_none() {
            return self.shutdown(key);
        }
        let until = self.timers.ms_ceil(now.mono + self.cfg.close_linger);
        c.active().linger_until_ms = Some(until);
        self.arm(key);
        self.flush_later(key);
    }

    /// Tells the driver to shut the socket down; the row stays (inert) until
    /// the driver releases it, so the key is not reused under it.
    pub(super) fn shutdown(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index()) else {
            return;
        };
        if c.has(SHUT) {
            return;
        }
        debug_assert!(c.closing(), "shut down without the session closing");
        c.set(SHUT, true);
        // Free what can no longer be sent; a batch the driver holds is its own.
        c.active = None;
        self.intents.push_back(Intent::Shutdown(key));
    }

    pub(super) fn flush_later(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key.index()) {
            if !c.has(FLUSH_QUEUED) {
                c.set(FLUSH_QUEUED, true);
                self.flush.push_back(key);
            }
        }
    }
}
