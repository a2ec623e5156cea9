//! Time passing: bind and heartbeat timeouts, the close linger, pruning.

use std::time::Instant;

use super::conn::SHUT;
use super::timers::NO_TIMER;
use super::{ConnKey, Engine, Intent, Now, SessionRef, PRUNE_EVERY};
use crate::protocol::CloseReason;

impl Engine {
    /// When [`Engine::handle_timeouts`] should be called next, if ever.
    pub fn next_timeout(&self) -> Option<Instant> {
        let timer = self.timers.next_ms().map(|ms| self.timers.instant(ms));
        let prune = (self.acks.tracked_messages() > 0).then_some(self.prune_at);
        match (timer, prune) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires the deadlines due at `now`, at most `budget` of them (so that a
    /// burst of thousands of expiries is spread over several turns of the
    /// driver instead of one stall). Returns whether more are due.
    pub fn handle_timeouts(&mut self, now: Now, budget: usize) -> bool {
        if now.mono >= self.prune_at {
            self.acks.prune(now.mono);
            self.prune_at = now.mono + PRUNE_EVERY;
        }
        let now_ms = self.timers.ms_floor(now.mono);
        let mut fired = 0;
        let mut actions = std::mem::take(&mut self.scratch);
        while fired < budget {
            let Some((ms, slot)) = self.timers.pop_due(now_ms) else {
                break;
            };
            let key = ConnKey(slot);
            let Some(c) = self.conns.get_mut(key.index()) else {
                continue;
            };
            if c.timer_ms != ms {
                continue; // superseded by an earlier entry
            }
            c.timer_ms = NO_TIMER;
            fired += 1;
            self.stats.timers_fired += 1;
            if c.has(SHUT) {
                continue;
            }
            let at = SessionRef {
                key,
                session_id: c.session.session_id(),
            };
            let stall = self.cfg.limits.stall_timeout.as_millis() as u64;
            if let Some(a) = c.active.as_mut() {
                if a.linger_until_ms.is_some_and(|t| t <= now_ms) {
                    // The peer did not take its last frames in time.
                    self.shutdown(key);
                    continue;
                }
                if a.paused_until_ms.is_some_and(|t| t <= now_ms) {
                    a.paused_until_ms = None;
                    self.intents.push_back(Intent::ResumeReading(key));
                }
                if a.stalled_since_ms.is_some_and(|t| t + stall <= now_ms) {
                    a.stalled_since_ms = None;
                    self.intents
                        .push_back(Intent::Notice(super::Notice::SlowConsumer {
                            peer: c.peer.addr(),
                            queued: a.outbound.len(),
                        }));
                    self.kick(now, at, CloseReason::SlowConsumer);
                    self.arm(key);
                    continue;
                }
            }
            let Some(c) = self.conns.get_mut(key.index()) else {
                continue;
            };
            if !c.closing() {
                c.session
                    .handle_timeout(now.mono, &self.cfg.session, &mut actions);
                self.apply(now, at, &mut actions);
            }
            self.arm(key);
        }
        self.scratch = actions;
        self.timers.next_ms().is_some_and(|ms| ms <= now_ms)
    }

    /// Makes sure the connection has a timer entry at or before its deadline.
    pub(super) fn arm(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.index()) else {
            return;
        };
        if c.has(SHUT) {
            return;
        }
        let session = if c.closing() {
            None
        } else {
            c.session
                .deadline(&self.cfg.session)
                .map(|d| self.timers.ms_ceil(d))
        };
        let stall = self.cfg.limits.stall_timeout.as_millis() as u64;
        let due = match c.active.as_ref() {
            None => session,
            Some(a) => [
                session,
                a.linger_until_ms,
                a.paused_until_ms,
                a.stalled_since_ms.map(|t| t + stall),
            ]
            .into_iter()
            .flatten()
            .min(),
        };
        if let Some(due) = due {
            if due < c.timer_ms {
                c.timer_ms = due;
                self.timers.schedule(due, key.0);
            }
        }
    }

    /// Timer entries, live and stale (for tests and benchmarks).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}
