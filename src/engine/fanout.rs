//! Work that touches many sessions — pushes and the drain — queued as jobs
//! and advanced a budget of sessions at a time by [`Engine::work`], so a
//! broadcast to a whole core yields to the driver every few thousand sessions
//! and pings on the same core keep flowing.

use bytes::Bytes;

use super::conn::SHUT;
use super::push::Unacked;
use super::{ConnKey, Engine, Intent, Now, PushJob, PushOutcome, PushTargets, SessionRef};
use crate::config::SlowConsumerPolicy;
use crate::protocol::CloseReason;
use crate::session::SessionState;

pub(super) enum Job {
    Push {
        job: PushJob,
        /// This core's own copy of the frame.
        frame: Bytes,
        /// The sessions still to visit (explicit targets or a topic's
        /// members at the time the push arrived), or `None` for every slot.
        list: Option<Vec<SessionRef>>,
        /// Next index into `list`, or next slot.
        cursor: usize,
        outcome: PushOutcome,
    },
    Drain {
        cursor: usize,
    },
}

impl Engine {
    /// Queues a push for its targets on this core. It completes (an
    /// [`Intent::PushDone`] with the job's tag) as [`Engine::work`] advances.
    pub fn push(&mut self, now: Now, job: PushJob) {
        let frame = Bytes::copy_from_slice(&job.frame);
        let list = match &job.targets {
            PushTargets::Sessions(list) => Some(list.clone()),
            PushTargets::Topic(t) => Some(
                self.topics
                    .members(t)
                    .map(|m| m.iter().copied().collect())
                    .unwrap_or_default(),
            ),
            PushTargets::All => None,
        };
        if job.ack {
            self.acks.sent(job.message_id, now.mono);
        }
        self.jobs.push_back(Job::Push {
            job,
            frame,
            list,
            cursor: 0,
            outcome: PushOutcome::default(),
        });
    }

    /// Stops taking new sessions and closes every session with
    /// Close(SERVER_SHUTDOWN), a budget at a time through [`Engine::work`].
    /// The drain is over when [`Engine::is_empty`].
    pub fn begin_drain(&mut self) {
        if !self.draining {
            self.draining = true;
            self.jobs.push_back(Job::Drain { cursor: 0 });
        }
    }

    /// Whether jobs are waiting for [`Engine::work`].
    pub fn has_work(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Advances queued jobs by at most `budget` sessions. Returns whether
    /// work remains.
    pub fn work(&mut self, now: Now, budget: usize) -> bool {
        let mut left = budget;
        while left > 0 {
            let Some(mut job) = self.jobs.pop_front() else {
                return false;
            };
            let done = match &mut job {
                Job::Push {
                    job,
                    frame,
                    list,
                    cursor,
                    outcome,
                } => {
                    let done = match list {
                        Some(list) => {
                            let end = (*cursor + left).min(list.len());
                            for &at in &list[*cursor..end] {
                                self.deliver(now, at.key, Some(at.session_id), job, frame, outcome);
                            }
                            left -= end - *cursor;
                            *cursor = end;
                            end == list.len()
                        }
                        None => {
                            let end = (*cursor + left).min(self.high_water);
                            for slot in *cursor..end {
                                self.deliver(now, ConnKey(slot as u32), None, job, frame, outcome);
                            }
                            left -= end - *cursor;
                            *cursor = end;
                            end == self.high_water
                        }
                    };
                    if done {
                        self.intents.push_back(Intent::PushDone {
                            tag: job.tag,
                            outcome: std::mem::take(outcome),
                        });
                    }
                    done
                }
                Job::Drain { cursor } => {
                    let end = (*cursor + left).min(self.high_water);
                    for slot in *cursor..end {
                        let key = ConnKey(slot as u32);
                        if let Some(c) = self.conns.get(slot) {
                            let at = SessionRef {
                                key,
                                session_id: c.session.session_id(),
                            };
                            self.kick(now, at, CloseReason::ServerShutdown);
                        }
                    }
                    left -= end - *cursor;
                    *cursor = end;
                    end == self.high_water
                }
            };
            if !done {
                self.jobs.push_front(job);
            }
        }
        !self.jobs.is_empty()
    }

    /// Queues `frame` for one target. `session_id` None: any bound session
    /// in the slot (a broadcast); absent or unbound slots are not targets.
    fn deliver(
        &mut self,
        now: Now,
        key: ConnKey,
        session_id: Option<u64>,
        job: &PushJob,
        frame: &Bytes,
        outcome: &mut PushOutcome,
    ) {
        let max = self.cfg.session.max_outbound_bytes;
        let gone = |outcome: &mut PushOutcome| {
            if let Some(session_id) = session_id {
                outcome.gone += 1;
                outcome.gone_sessions.push(SessionRef { key, session_id });
            }
        };
        let Some(c) = self.conns.get_mut(key.index()) else {
            return gone(outcome);
        };
        if session_id.is_some_and(|sid| !c.is(sid))
            || c.session.state() != SessionState::Bound
            || c.has(SHUT)
        {
            return gone(outcome);
        }
        let at = SessionRef {
            key,
            session_id: c.session.session_id(),
        };
        let peer = c.peer.addr();
        let out = &mut c.active().outbound;
        out.push(frame.clone());
        outcome.delivered += 1;
        self.stats.deliveries += 1;
        let mut slow = None;
        let mut stall = false;
        if out.len() > max {
            match self.cfg.slow_consumer {
                SlowConsumerPolicy::Close => {
                    slow = Some((peer, out.len()));
                    out.clear_queued();
                }
                SlowConsumerPolicy::DropOldest => {
                    self.stats.outbound_dropped += out.drop_oldest(max);
                    // A client that still reads nothing is closed after
                    // --stall-timeout (it would pin its queue forever).
                    stall = true;
                }
            }
        }
        if let Some(until) = job.keep_until_ms.filter(|_| job.ack) {
            self.acks.keep(
                at,
                Unacked {
                    message_id: job.message_id,
                    frame: frame.clone(),
                    keep_until_ms: until,
                },
            );
        }
        if stall {
            let now_ms = self.timers.ms_floor(now.mono);
            if let Some(c) = self.conns.get_mut(key.index()) {
                let fresh = c.active().stalled_since_ms.is_none();
                c.active().stalled_since_ms.get_or_insert(now_ms);
                if fresh {
                    self.arm(key);
                }
            }
        }
        match slow {
            Some((peer, queued)) => {
                self.intents
                    .push_back(Intent::Notice(super::Notice::SlowConsumer { peer, queued }));
                self.kick(now, at, CloseReason::SlowConsumer);
            }
            None => self.flush_later(key),
        }
    }
}
