//! Session rules that need the file store's state: the read-only half of a rotation, and the
//! eviction of a user's oldest sessions over the cap.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::session_state::{Sessions, Tx};
use crate::store::{
    InvalidReason, RotateOutcome, RotateRequest, RotationDecision, SessionRecord, decide_rotation,
};

pub(super) enum Decided {
    Final(Box<RotateOutcome>),
    NeedsWrite,
}

/// The read-only half of rotation: answers outright when nothing has to be written.
pub(super) fn decide(state: &Sessions, request: &RotateRequest) -> Decided {
    let Some(token) = state.token_by_hash(&request.presented_hash) else {
        return Decided::Final(Box::new(invalid(InvalidReason::Unknown, None, None)));
    };
    let Some(session) = state.session(&token.session_id) else {
        return Decided::Final(Box::new(invalid(
            InvalidReason::Unknown,
            None,
            Some(token.id),
        )));
    };
    let successor = token.replaced_by.and_then(|id| state.token(&id));
    match decide_rotation(&token, session, successor.map(|t| t.as_ref()), request) {
        RotationDecision::Grace {
            fingerprint_matched,
        } => Decided::Final(Box::new(RotateOutcome::Grace {
            session: SessionRecord::clone(session),
            old_token_id: token.id,
            fingerprint_matched,
        })),
        RotationDecision::Invalid(reason) => Decided::Final(Box::new(invalid(
            reason,
            Some(SessionRecord::clone(session)),
            Some(token.id),
        ))),
        _ => Decided::NeedsWrite,
    }
}

/// Revokes the user's oldest live sessions other than `keep` (arrival breaks ties) so that,
/// with `keep`, at most `max_live` are live; returns their ids.
pub(super) fn evict(
    tx: &mut Tx<'_>,
    user_id: &str,
    keep: Uuid,
    max_live: usize,
    idle_ttl: chrono::Duration,
    now: DateTime<Utc>,
) -> Vec<Uuid> {
    let mut live: Vec<(DateTime<Utc>, u64, Uuid)> = tx
        .state()
        .open_sessions_of(user_id)
        .filter(|e| e.rec.id != keep && e.rec.is_live(now, idle_ttl))
        .map(|e| (e.rec.created_at, e.ord, e.rec.id))
        .collect();
    live.sort_unstable();
    let excess = live.len().saturating_sub(max_live.saturating_sub(1));
    let mut evicted = Vec::with_capacity(excess);
    for (_, _, id) in live.into_iter().take(excess) {
        let Some(session) = tx.state().session(&id) else {
            continue;
        };
        let mut session = SessionRecord::clone(session);
        session.revoked_at = Some(now);
        session.revoked_reason = Some("session_limit".into());
        tx.put_session(session);
        evicted.push(id);
    }
    evicted
}

pub(super) fn invalid(
    reason: InvalidReason,
    session: Option<SessionRecord>,
    token_id: Option<Uuid>,
) -> RotateOutcome {
    RotateOutcome::Invalid {
        reason,
        session,
        token_id,
    }
}
