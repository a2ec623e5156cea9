//! Acknowledgements on one core: when each acked push was sent (for the
//! push-to-ack latency) and which pushes each session has not acked yet (for
//! at-least-once delivery). Only sessions with unacked pushes have an entry,
//! so idle sessions pay nothing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::event::SessionRef;
use super::push::Unacked;

/// Most unacked pushes remembered per session (the oldest go first).
pub const MAX_UNACKED_PER_SESSION: usize = 100;
/// Acks later than this after the push are not measured; bounds `sent`.
pub const ACK_WINDOW: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Acks {
    /// Send time of pushes awaiting PushAcks, by message id: one entry per
    /// message per core, however many recipients.
    sent: HashMap<u64, Instant>,
    unacked: HashMap<SessionRef, VecDeque<Unacked>>,
}

impl Acks {
    pub fn sent(&mut self, message_id: u64, at: Instant) {
        self.sent.entry(message_id).or_insert(at);
    }

    /// Remembers a push the session must acknowledge.
    pub fn keep(&mut self, at: SessionRef, u: Unacked) {
        let q = self.unacked.entry(at).or_default();
        if q.len() == MAX_UNACKED_PER_SESSION {
            q.pop_front();
        }
        q.push_back(u);
    }

    /// A PushAck arrived: forgets the copy and returns the push-to-ack
    /// latency if the push was sent within the window.
    pub fn acked(&mut self, at: SessionRef, message_id: u64, now: Instant) -> Option<Duration> {
        if let Some(q) = self.unacked.get_mut(&at) {
            q.retain(|u| u.message_id != message_id);
            if q.is_empty() {
                self.unacked.remove(&at);
            }
        }
        self.sent
            .get(&message_id)
            .map(|s| now.saturating_duration_since(*s))
    }

    /// The session ended: its unacked copies, oldest first.
    pub fn take(&mut self, at: SessionRef) -> Option<VecDeque<Unacked>> {
        self.unacked.remove(&at)
    }

    /// Forgets send times older than the window.
    pub fn prune(&mut self, now: Instant) {
        self.sent
            .retain(|_, s| now.saturating_duration_since(*s) < ACK_WINDOW);
    }

    pub fn tracked_messages(&self) -> usize {
        self.sent.len()
    }

    pub fn sessions_with_unacked(&self) -> usize {
        self.unacked.len()
    }
}
