//! What an admin does to someone else's account from the security dashboard: find it with its
//! live sessions, revoke one session, revoke them all. Kept apart from the user's own flows in
//! `service/`: the subject is another user, and every change records which admin made it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::AuthError;
use super::service::{AuthService, Authenticated};
use crate::domain::{Email, UserRecord};
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::SessionRecord;

/// Why a session ended, as stored and as the events' `reason`.
const REASON: &str = "revoked_by_admin";

impl AuthService {
    /// The user whose id is `query`, or else whose email it is, with their live sessions.
    pub async fn find_user_for_admin(
        &self,
        query: &str,
    ) -> Result<Option<(UserRecord, Vec<SessionRecord>)>, AuthError> {
        let query = query.trim();
        let mut user = self.store.user_by_id(query).await?;
        if user.is_none()
            && let Ok(email) = Email::parse(query)
        {
            user = self.store.user_by_email(&email).await?;
        }
        let Some(user) = user else {
            return Ok(None);
        };
        let sessions = self
            .store
            .live_sessions(&user.id, self.clock.now(), self.policy.idle_ttl)
            .await?;
        Ok(Some((user, sessions)))
    }

    /// Ends one live session of `user_id`: its refresh token stops working and its access tokens
    /// are denied at once. `SessionNotFound` when it is not that user's live session.
    pub async fn admin_revoke_session(
        &self,
        admin: &Authenticated,
        user_id: &str,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let now = self.clock.now();
        if !self
            .store
            .revoke_session(user_id, session_id, now, REASON)
            .await?
        {
            return Err(AuthError::SessionNotFound);
        }
        self.revocations
            .revoke_session(&session_id.to_string(), self.denied_until(now))
            .await?;
        self.record_outcome(
            by_admin(EventType::TokenRevoked, admin, user_id, ctx)
                .with("sessionId", session_id.to_string()),
        )
        .await
    }

    /// Ends every live session of `user_id` and denies every access token issued to them so far.
    /// `None` when there is no such user; else how many sessions were live.
    pub async fn admin_revoke_all_sessions(
        &self,
        admin: &Authenticated,
        user_id: &str,
        ctx: &RequestContext,
    ) -> Result<Option<u64>, AuthError> {
        if self.store.user_by_id(user_id).await?.is_none() {
            return Ok(None);
        }
        let now = self.clock.now();
        let count = self.store.revoke_all_sessions(user_id, now, REASON).await?;
        self.revocations
            .revoke_user_tokens_before(user_id, now, self.denied_until(now))
            .await?;
        self.record_outcome(
            by_admin(EventType::MassTokenRevocation, admin, user_id, ctx)
                .with("tokensRevoked", count),
        )
        .await?;
        Ok(Some(count))
    }

    /// Denylist entries outlive the longest-lived access token they could match.
    fn denied_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::seconds(self.access.ttl_secs() + 60)
    }
}

/// An event about `user_id` (so it shows in their timeline) that names the admin who caused it.
fn by_admin(
    event_type: EventType,
    admin: &Authenticated,
    user_id: &str,
    ctx: &RequestContext,
) -> SecurityEvent {
    SecurityEvent::from_request(event_type, ctx)
        .user(user_id)
        .reason(REASON)
        .with("by", "admin")
        .with("adminId", admin.user.id.as_str())
}
