//! Starting a session for a sign-in (signup, login, Google): the session and its first token
//! pair, the sign-in's events, the eviction of sessions past the cap, and the withdrawal of a
//! session whose sign-in could not be recorded.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AuthService, IssuedTokens};
use crate::auth::AuthError;
use crate::auth::refresh::hash_token;
use crate::domain::UserRecord;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::{NewSession, SessionRecord, TokenRecord};

impl AuthService {
    /// Starts a new session (refresh-token family) for `user` and issues its first token pair;
    /// with `records_login`, the store sets the user's `last_login` to `now` in the same write.
    /// `success` (the sign-in's own event) and `token_generated` are recorded once the session
    /// exists; if either cannot be kept (sync mode) the session is ended and the call fails.
    /// Only then, once the sign-in stands, are the user's oldest sessions past the cap evicted:
    /// a sign-in that is withdrawn takes no other device's session with it.
    pub(crate) async fn start_session(
        &self,
        user: &UserRecord,
        ctx: &RequestContext,
        now: DateTime<Utc>,
        records_login: bool,
        success: Option<SecurityEvent>,
    ) -> Result<IssuedTokens, AuthError> {
        let session_id = Uuid::new_v4();
        let refresh_token = self.refresh.generate();
        let token_id = Uuid::now_v7();
        let new = NewSession {
            session: SessionRecord {
                id: session_id,
                user_id: user.id.clone(),
                device_name: ctx.client.device_name(),
                ip_address: ctx.client.ip.to_string(),
                user_agent: ctx
                    .client
                    .user_agent
                    .as_deref()
                    .map(|ua| crate::security_log::sanitize(ua, 512)),
                fingerprint: ctx.client.fingerprint().as_str().to_owned(),
                created_at: now,
                last_used_at: now,
                expires_at: now + self.policy.absolute_ttl,
                revoked_at: None,
                revoked_reason: None,
            },
            token: TokenRecord {
                id: token_id,
                session_id,
                token_hash: hash_token(&refresh_token),
                created_at: now,
                rotated_at: None,
                replaced_by: None,
            },
            records_login,
        };
        // No cap here: the eviction waits until the sign-in's events are kept (below).
        self.store
            .create_session(&new, usize::MAX, self.policy.idle_ttl)
            .await?;
        let access = self.access.issue(user, session_id, now)?;
        let tokens = IssuedTokens {
            access,
            refresh_token,
            session_id,
        };
        if let Some(success) = success {
            self.record_session_outcome(success, &user.id, &tokens)
                .await?;
        }
        self.record_session_outcome(
            SecurityEvent::from_request(EventType::TokenGenerated, ctx)
                .user(&user.id)
                .token(token_id)
                .with("tokenId", token_id.to_string())
                .with("sessionId", session_id.to_string()),
            &user.id,
            &tokens,
        )
        .await?;
        self.evict_sessions_over_cap(user, session_id, now, ctx)
            .await;
        Ok(tokens)
    }

    /// Ends the user's oldest live sessions past the cap, never `keep` (the sign-in's own). The
    /// sign-in stands whatever happens here: its events are kept and its tokens about to be sent.
    /// A failure leaves the user over the cap until the next sign-in evicts, and is logged.
    async fn evict_sessions_over_cap(
        &self,
        user: &UserRecord,
        keep: Uuid,
        now: DateTime<Utc>,
        ctx: &RequestContext,
    ) {
        let evicted = match self
            .store
            .evict_sessions(
                &user.id,
                keep,
                self.policy.max_sessions,
                self.policy.idle_ttl,
                now,
            )
            .await
        {
            Ok(evicted) => evicted,
            Err(e) => {
                tracing::warn!(error = %e, user_id = %user.id, "could not end the sessions past the cap after a sign-in");
                return;
            }
        };
        let until = now + chrono::Duration::seconds(self.access.ttl_secs());
        for old in evicted {
            // The store has ended the session (its refresh token is dead); this stops its
            // access token before it expires.
            if let Err(e) = self
                .revocations
                .revoke_session(&old.to_string(), until)
                .await
            {
                tracing::warn!(error = %e, session_id = %old, "could not deny the access tokens of a session evicted by the cap");
            }
            self.record(
                SecurityEvent::from_request(EventType::TokenRevoked, ctx)
                    .user(&user.id)
                    .reason("session_limit")
                    .with("sessionId", old.to_string()),
            )
            .await;
        }
    }

    /// The outcome event of a request that started a session: if it cannot be kept, the session
    /// is ended before its tokens leave the service, so no sign-in is answered that the log does
    /// not know about.
    async fn record_session_outcome(
        &self,
        event: SecurityEvent,
        user_id: &str,
        tokens: &IssuedTokens,
    ) -> Result<(), AuthError> {
        let result = self.record_outcome(event).await;
        if result.is_err() {
            self.withdraw_session(user_id, tokens.session_id).await;
        }
        result
    }

    /// Ends a session nobody holds the tokens of. Best effort: its tokens were never sent, so a
    /// failure here leaves a session no one can use (it expires by itself).
    async fn withdraw_session(&self, user_id: &str, session_id: Uuid) {
        let now = self.clock.now();
        if let Err(e) = self
            .store
            .revoke_session(user_id, session_id, now, "event_not_kept")
            .await
        {
            tracing::warn!(error = %e, %session_id, "could not end a session whose sign-in event was not kept");
        }
        let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
        if let Err(e) = self
            .revocations
            .revoke_session(&session_id.to_string(), until)
            .await
        {
            tracing::warn!(error = %e, %session_id, "could not deny a session whose sign-in event was not kept");
        }
    }

    /// The failure event of a sign-in whose session could not be started (the store is down),
    /// so that no success is recorded for it. Nothing is recorded when the failure is the log's
    /// own: an event it cannot keep.
    pub(super) async fn session_failed(
        &self,
        event_type: EventType,
        user: &UserRecord,
        ctx: &RequestContext,
        error: &AuthError,
    ) {
        let reason = match error {
            AuthError::EventNotKept(_) => return,
            AuthError::Unavailable(_) => "store_unavailable",
            _ => "internal_error",
        };
        // The request fails whatever becomes of this event.
        self.record(
            SecurityEvent::from_request(event_type, ctx)
                .user(&user.id)
                .email(&user.email)
                .reason(reason),
        )
        .await;
    }
}
