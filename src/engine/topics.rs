//! Which sessions of one core joined which topic, for topic pushes.
//!
//! Only sessions that joined a topic have entries, so idle sessions without
//! topics pay nothing here. Members are fenced by session id: a slot reused by
//! a later connection is never mistaken for an old member.

use std::collections::{HashMap, HashSet};

use super::event::SessionRef;

#[derive(Default)]
pub struct TopicIndex {
    members: HashMap<Box<str>, HashSet<SessionRef>>,
}

impl TopicIndex {
    pub fn join<'a>(&mut self, at: SessionRef, topics: impl IntoIterator<Item = &'a String>) {
        for t in topics {
            match self.members.get_mut(t.as_str()) {
                Some(m) => {
                    m.insert(at);
                }
                None => {
                    self.members.insert(t.as_str().into(), HashSet::from([at]));
                }
            }
        }
    }

    /// Removes the session from each topic, dropping topics left empty.
    pub fn leave<'a>(&mut self, at: SessionRef, topics: impl IntoIterator<Item = &'a String>) {
        for t in topics {
            if let Some(m) = self.members.get_mut(t.as_str()) {
                m.remove(&at);
                if m.is_empty() {
                    self.members.remove(t.as_str());
                }
            }
        }
    }

    pub fn members(&self, topic: &str) -> Option<&HashSet<SessionRef>> {
        self.members.get(topic)
    }

    /// Number of topics with at least one member.
    pub fn len(&self) -> usize {
        self.members.len()
    }
}
