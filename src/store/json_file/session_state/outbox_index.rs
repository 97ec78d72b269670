//! The outbox's pending messages of each kind by when they are due and by age, and its dead ones
//! counted: what the sender claims and reports without going over every message kept (sent
//! messages stay a week, so the outbox holds far more than waits).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::outbox::{OutboxMessage, OutboxState};

#[derive(Debug, Clone, Default)]
pub(in crate::store::json_file) struct KindIndex {
    /// Pending messages by their next attempt.
    pub due: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// Pending messages by their creation.
    pub created: BTreeSet<(DateTime<Utc>, Uuid)>,
    pub dead: u64,
}

#[derive(Debug, Clone, Default)]
pub(in crate::store::json_file) struct OutboxIndex {
    kinds: HashMap<String, KindIndex>,
}

impl OutboxIndex {
    /// `message` entered the outbox (a new one, or the new version of one removed first).
    pub fn add(&mut self, m: &OutboxMessage) {
        let kind = self.kinds.entry(m.kind.clone()).or_default();
        match m.state {
            OutboxState::Pending => {
                kind.due.insert((m.next_attempt_at, m.id));
                kind.created.insert((m.created_at, m.id));
            }
            OutboxState::Dead => kind.dead += 1,
            OutboxState::Sent => {}
        }
    }

    /// `message` (as it was indexed) left the outbox, or is about to be replaced.
    pub fn remove(&mut self, m: &OutboxMessage) {
        let Some(kind) = self.kinds.get_mut(&m.kind) else {
            return;
        };
        match m.state {
            OutboxState::Pending => {
                kind.due.remove(&(m.next_attempt_at, m.id));
                kind.created.remove(&(m.created_at, m.id));
            }
            OutboxState::Dead => kind.dead = kind.dead.saturating_sub(1),
            OutboxState::Sent => {}
        }
    }

    pub fn kind(&self, kind: &str) -> Option<&KindIndex> {
        self.kinds.get(kind)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn pending_messages_are_indexed_until_sent_and_dead_ones_counted() {
        let now = Utc::now();
        let mut index = OutboxIndex::default();
        let first = OutboxMessage::new("email", "a@example.com", "t", "{}".into(), now);
        let mut second = OutboxMessage::new("email", "b@example.com", "t", "{}".into(), now);
        second.next_attempt_at = now - Duration::seconds(5);
        index.add(&first);
        index.add(&second);
        let email = index.kind("email").unwrap();
        assert_eq!(email.due.first().map(|(_, id)| *id), Some(second.id));
        assert_eq!(email.created.len(), 2);
        // Replaced: the old version comes out, the new one goes in.
        index.remove(&second);
        let mut dead = second.clone();
        dead.state = OutboxState::Dead;
        index.add(&dead);
        index.remove(&first);
        let mut sent = first.clone();
        sent.state = OutboxState::Sent;
        index.add(&sent);
        let email = index.kind("email").unwrap();
        assert!(email.due.is_empty() && email.created.is_empty());
        assert_eq!(email.dead, 1);
        index.remove(&dead);
        assert_eq!(index.kind("email").unwrap().dead, 0);
        assert!(index.kind("webhook").is_none());
    }
}
