//! The caller's sessions: listing them, revoking one or all the others; and, at start, the denial of the access
//! tokens of recently revoked sessions.

use uuid::Uuid;

use super::{AuthService, Authenticated};
use crate::auth::AuthError;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::SessionRecord;

impl AuthService {
    pub async fn sessions(&self, auth: &Authenticated) -> Result<Vec<SessionRecord>, AuthError> {
        Ok(self
            .store
            .live_sessions(&auth.user.id, self.clock.now(), self.policy.idle_ttl)
            .await?)
    }

    pub async fn revoke_session(
        &self,
        auth: &Authenticated,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let now = self.clock.now();
        if !self
            .store
            .revoke_session(&auth.user.id, session_id, now, "revoked_by_user")
            .await?
        {
            return Err(AuthError::SessionNotFound);
        }
        let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
        self.revocations
            .revoke_session(&session_id.to_string(), until)
            .await?;
        self.record_outcome(
            SecurityEvent::from_request(EventType::TokenRevoked, ctx)
                .user(&auth.user.id)
                .reason("revoked_by_user")
                .with("sessionId", session_id.to_string())
                .with("current", session_id == auth.claims.sid),
        )
        .await
    }

    /// Revokes every live session of the caller but the caller's own, and denies their access
    /// tokens at once; returns how many were revoked.
    pub async fn revoke_other_sessions(
        &self,
        auth: &Authenticated,
        ctx: &RequestContext,
    ) -> Result<usize, AuthError> {
        let now = self.clock.now();
        let revoked = self
            .store
            .revoke_other_sessions(
                &auth.user.id,
                auth.claims.sid,
                now,
                self.policy.idle_ttl,
                "revoked_by_user",
            )
            .await?;
        let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
        for sid in &revoked {
            self.revocations
                .revoke_session(&sid.to_string(), until)
                .await?;
        }
        // Revocations stand whatever becomes of their events (failing closed); a lost one makes
        // the request fail so that the client does not take it as recorded.
        for sid in &revoked {
            self.record_outcome(
                SecurityEvent::from_request(EventType::TokenRevoked, ctx)
                    .user(&auth.user.id)
                    .reason("revoked_by_user")
                    .with("sessionId", sid.to_string())
                    .with("current", false),
            )
            .await?;
        }
        Ok(revoked.len())
    }

    /// Denies again the access tokens of sessions revoked within the last access-token lifetime.
    /// Without Redis the denylist lives in memory; after a restart this keeps a logged-out
    /// session's access token from working until it expires. Waits for the store to answer.
    pub async fn restore_revocations(&self, stop: tokio_util::sync::CancellationToken) {
        let ttl = chrono::Duration::seconds(self.access.ttl_secs() + 60);
        let mut wait = std::time::Duration::from_millis(200);
        loop {
            match self
                .store
                .sessions_revoked_since(self.clock.now() - ttl)
                .await
            {
                Ok(sessions) => {
                    for (sid, revoked_at) in &sessions {
                        if let Err(e) = self
                            .revocations
                            .revoke_session(&sid.to_string(), *revoked_at + ttl)
                            .await
                        {
                            tracing::warn!(error = %e, "could not restore a session revocation");
                        }
                    }
                    tracing::debug!(
                        sessions = sessions.len(),
                        "recent session revocations restored"
                    );
                    return;
                }
                Err(_) => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(std::time::Duration::from_secs(10));
                }
            }
        }
    }
}
