//! A change in progress on the sessions, and the prune of long-ended sessions it can include.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Op, PruneHint, Sessions, TotpStep, ended_at, retention};
use crate::store::outbox::{OneTimeToken, OutboxMessage};
use crate::store::{SessionRecord, TokenRecord};

/// A change in progress on the pending state: every edit is applied at once and recorded as an
/// op for the journal.
pub(crate) struct Tx<'a> {
    state: &'a mut Sessions,
    ops: &'a mut Vec<Op>,
}

impl<'a> Tx<'a> {
    pub fn new(state: &'a mut Sessions, ops: &'a mut Vec<Op>) -> Self {
        Self { state, ops }
    }

    pub fn state(&self) -> &Sessions {
        self.state
    }

    pub(super) fn record(&mut self, op: Op) {
        self.state.apply(&op);
        self.ops.push(op);
    }

    #[cfg(test)]
    pub fn record_for_test(&mut self, op: Op) {
        self.record(op);
    }

    pub fn put_session(&mut self, session: SessionRecord) {
        if let Some(hint) = &mut self.state.prune_hint {
            hint.due = hint
                .due
                .min(ended_at(&session, hint.idle_ttl) + retention());
        }
        self.record(Op::Session(Arc::new(session)));
    }

    pub fn put_token(&mut self, token: TokenRecord) {
        self.record(Op::Token(Arc::new(token)));
    }

    pub fn put_one_time(&mut self, token: OneTimeToken) {
        self.record(Op::OneTime(Arc::new(token)));
    }

    pub fn drop_one_time(&mut self, hash: &str) {
        self.record(Op::DropOneTime(hash.to_owned()));
    }

    pub fn put_outgoing(&mut self, message: OutboxMessage) {
        self.record(Op::Outgoing(Arc::new(message)));
    }

    pub fn drop_outgoing(&mut self, id: uuid::Uuid) {
        self.record(Op::DropOutgoing(id));
    }

    pub fn put_totp_step(&mut self, user_id: &str, step: i64) {
        self.record(Op::TotpStep(Arc::new(TotpStep {
            user_id: user_id.to_owned(),
            step,
        })));
    }

    pub fn drop_totp_step(&mut self, user_id: &str) {
        if self.state.totp_step(user_id).is_some() {
            self.record(Op::DropTotpStep(user_id.to_owned()));
        }
    }

    /// Forgets the accepted steps older than a day: a code is accepted only for a
    /// step within one of the clock's, so such a step refuses nothing. Kept a day rather than a
    /// minute so that a clock set back a little still finds them. The map holds only the users
    /// who signed in with a code within the day; the periodic clean-up runs it.
    pub fn prune_totp_steps(&mut self, now: DateTime<Utc>) -> u64 {
        let old: Vec<String> = self
            .state
            .totp_steps_past(now)
            .map(|s| s.user_id.clone())
            .collect();
        let count = old.len() as u64;
        for user in old {
            self.record(Op::DropTotpStep(user));
        }
        count
    }

    /// Removes the sessions that ended more than the retention ago (and their tokens, and tokens
    /// whose session is gone), like the old full-file prune, but only when one can be due: the
    /// scan is skipped until the earliest end seen plus the retention. Returns how many sessions
    /// went.
    pub fn prune(&mut self, now: DateTime<Utc>, idle_ttl: chrono::Duration, force: bool) -> u64 {
        let skip = !force
            && self
                .state
                .prune_hint
                .is_some_and(|h| h.idle_ttl == idle_ttl && now < h.due);
        if skip {
            return 0;
        }
        let keep = retention();
        let mut due: Option<DateTime<Utc>> = None;
        let mut gone = Vec::new();
        for entry in self.state.sessions() {
            let until = ended_at(&entry.rec, idle_ttl) + keep;
            if now < until {
                due = Some(due.map_or(until, |d| d.min(until)));
            } else {
                gone.push(entry.rec.id);
            }
        }
        let orphans = self.state.orphan_families();
        let count = gone.len() as u64;
        for id in gone.into_iter().chain(orphans) {
            self.record(Op::DropSession(id));
        }
        self.state.prune_hint = Some(PruneHint {
            due: due.unwrap_or(DateTime::<Utc>::MAX_UTC),
            idle_ttl,
        });
        count
    }
}
