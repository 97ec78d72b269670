//! Refresh: the refresh token presented is rotated for its successor, and its session gets a new
//! access token. Each outcome of the rotation other than success ends in its own event and error.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AuthService, IssuedTokens};
use crate::auth::AuthError;
use crate::auth::refresh::{RefreshTokens, hash_token};
use crate::config::FingerprintPolicy;
use crate::domain::{UNSET_FINGERPRINT, UserRecord, ValidationError};
use crate::limits::ip_subject;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::{InvalidReason, RotateOutcome, RotateRequest, SessionRecord};

/// A rotation the store accepted: the presented token is rotated, `new_token_id` replaces it.
struct Rotated {
    session: SessionRecord,
    old_token_id: Uuid,
    new_token_id: Uuid,
    fingerprint_matched: bool,
    /// Within the reuse grace: a concurrent request rotated the same token first, and this one
    /// gets the same successor.
    concurrent: bool,
}

impl AuthService {
    pub async fn refresh(
        &self,
        refresh_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(UserRecord, IssuedTokens), AuthError> {
        let presented = refresh_token.filter(|t| !t.is_empty());
        let well_formed = presented.filter(|t| RefreshTokens::well_formed(t));
        self.admit_refresh(well_formed, ctx).await?;
        let Some(presented) = presented else {
            return Err(ValidationError::new("refreshToken", "Refresh token is required").into());
        };
        let now = self.clock.now();
        if well_formed.is_none() {
            self.events
                .record_token_failure(
                    &ip_subject(ctx.client.ip),
                    "malformed",
                    refresh_failure(ctx, "malformed"),
                )
                .await;
            return Err(AuthError::RefreshInvalid { expired: false });
        }
        let successor = self.refresh.successor(presented);
        let request = self.rotate_request(presented, &successor, now, ctx);
        // The user and the stored successor's id come with the outcome where the store reads them
        // in the same query (Postgres); otherwise they are looked up below.
        let rotation = self.store.rotate_refresh_token_with_user(&request).await?;
        let rotated = self
            .settle(
                rotation.outcome,
                rotation.stored_successor_id,
                &request,
                ctx,
            )
            .await?;
        let user = self
            .session_user(rotation.user, &rotated.session, now, ctx)
            .await?;
        if !rotated.fingerprint_matched {
            self.record(
                SecurityEvent::from_request(EventType::DeviceFingerprintMismatch, ctx)
                    .user(&user.id)
                    .token(rotated.old_token_id)
                    .reason("logged")
                    .with("sessionId", rotated.session.id.to_string())
                    .with("expectedFingerprint", rotated.session.fingerprint.clone()),
            )
            .await;
        }
        if rotated.session.fingerprint == UNSET_FINGERPRINT {
            // The session came from the old service; this device's fingerprint is now its own.
            self.record(
                SecurityEvent::from_request(EventType::LegacySessionAdopted, ctx)
                    .user(&user.id)
                    .token(rotated.new_token_id)
                    .with("sessionId", rotated.session.id.to_string()),
            )
            .await;
        }
        let access = self.access.issue(&user, rotated.session.id, now)?;
        // The rotation is committed; if its event is not kept the request fails, and a retry with
        // the same token within the reuse grace gets the same successor.
        self.record_outcome(
            SecurityEvent::from_request(EventType::TokenRefreshed, ctx)
                .user(&user.id)
                .token(rotated.new_token_id)
                .with("oldTokenId", rotated.old_token_id.to_string())
                .with("tokenId", rotated.new_token_id.to_string())
                .with("sessionId", rotated.session.id.to_string())
                .with("concurrent", rotated.concurrent),
        )
        .await?;
        Ok((
            user,
            IssuedTokens {
                access,
                refresh_token: successor,
                session_id: rotated.session.id,
            },
        ))
    }

    /// The refresh limits: per session once the token names one (its tag), and per address, in
    /// one round trip. A refusal is recorded.
    async fn admit_refresh(
        &self,
        well_formed: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let session = well_formed.map(|t| self.refresh.session_tag(t));
        if let Err(exceeded) = self
            .limits
            .admit_refresh(&ip_subject(ctx.client.ip), session.as_deref())
            .await
        {
            return Err(self.limited(exceeded, ctx, exceeded.limit.name()).await);
        }
        Ok(())
    }

    /// What the store is asked to do: replace the presented token by `successor`, under the
    /// session policy.
    fn rotate_request(
        &self,
        presented: &str,
        successor: &str,
        now: DateTime<Utc>,
        ctx: &RequestContext,
    ) -> RotateRequest {
        RotateRequest {
            presented_hash: hash_token(presented),
            successor_id: Uuid::now_v7(),
            successor_hash: hash_token(successor),
            now,
            grace: self.policy.grace,
            idle_ttl: self.policy.idle_ttl,
            fingerprint: ctx.client.fingerprint().as_str().to_owned(),
            ip_address: ctx.client.ip.to_string(),
            reject_on_fingerprint_mismatch: self.policy.fingerprint == FingerprintPolicy::Reject,
        }
    }

    /// The rotation's outcome: a rotated token, or the error it ends in (recorded).
    async fn settle(
        &self,
        outcome: RotateOutcome,
        stored_successor_id: Option<Uuid>,
        request: &RotateRequest,
        ctx: &RequestContext,
    ) -> Result<Rotated, AuthError> {
        match outcome {
            RotateOutcome::Rotated {
                session,
                old_token_id,
                fingerprint_matched,
            } => Ok(Rotated {
                session,
                old_token_id,
                new_token_id: request.successor_id,
                fingerprint_matched,
                concurrent: false,
            }),
            RotateOutcome::Grace {
                session,
                old_token_id,
                fingerprint_matched,
            } => {
                // Same successor as the first request: report the id it was stored under, not
                // this request's unused one, so `token_refreshed` names a token that exists.
                let stored_id = match stored_successor_id {
                    Some(id) => id,
                    None => self
                        .store
                        .session_by_token_hash(&request.successor_hash)
                        .await?
                        .map_or(request.successor_id, |(_, id)| id),
                };
                Ok(Rotated {
                    session,
                    old_token_id,
                    new_token_id: stored_id,
                    fingerprint_matched,
                    concurrent: true,
                })
            }
            RotateOutcome::ReuseDetected { session, token_id } => Err(self
                .reuse_detected(&session, token_id, request.now, ctx)
                .await),
            RotateOutcome::FingerprintRejected { session, token_id } => Err(self
                .fingerprint_rejected(&session, token_id, request.now, ctx)
                .await),
            RotateOutcome::Invalid {
                reason,
                session,
                token_id,
            } => Err(self
                .invalid_token(reason, session.as_ref(), token_id, ctx)
                .await),
        }
    }

    /// A rotated token came back: the whole session is ended.
    async fn reuse_detected(
        &self,
        session: &SessionRecord,
        token_id: Uuid,
        now: DateTime<Utc>,
        ctx: &RequestContext,
    ) -> AuthError {
        if let Err(e) = self.end_session_tokens(session, now).await {
            return e;
        }
        self.record(
            SecurityEvent::from_request(EventType::TokenReuseDetected, ctx)
                .user(&session.user_id)
                .token(token_id)
                .reason("rotated_token_presented_again")
                .with("sessionId", session.id.to_string())
                .with("familyRevoked", true),
        )
        .await;
        AuthError::RefreshReused
    }

    /// Another device's fingerprint, under the `reject` policy: the session is ended.
    async fn fingerprint_rejected(
        &self,
        session: &SessionRecord,
        token_id: Uuid,
        now: DateTime<Utc>,
        ctx: &RequestContext,
    ) -> AuthError {
        if let Err(e) = self.end_session_tokens(session, now).await {
            return e;
        }
        self.record(
            SecurityEvent::from_request(EventType::DeviceFingerprintMismatch, ctx)
                .user(&session.user_id)
                .token(token_id)
                .reason("rejected")
                .with("sessionId", session.id.to_string())
                .with("expectedFingerprint", session.fingerprint.clone()),
        )
        .await;
        AuthError::RefreshInvalid { expired: false }
    }

    /// An unknown, revoked or expired token.
    async fn invalid_token(
        &self,
        reason: InvalidReason,
        session: Option<&SessionRecord>,
        token_id: Option<Uuid>,
        ctx: &RequestContext,
    ) -> AuthError {
        let mut event = refresh_failure(ctx, reason.as_str());
        if let Some(s) = session {
            event = event.user(&s.user_id).with("sessionId", s.id.to_string());
        }
        if let Some(id) = token_id {
            event = event.token(id);
        }
        self.events
            .record_token_failure(&ip_subject(ctx.client.ip), reason.as_str(), event)
            .await;
        AuthError::RefreshInvalid {
            expired: reason == InvalidReason::Expired,
        }
    }

    /// The session's user, as read with the rotation or else from the store. A session whose
    /// user is gone is ended, and its token refused.
    async fn session_user(
        &self,
        read: Option<UserRecord>,
        session: &SessionRecord,
        now: DateTime<Utc>,
        ctx: &RequestContext,
    ) -> Result<UserRecord, AuthError> {
        let user = match read {
            Some(user) => Some(user),
            None => self.store.user_by_id(&session.user_id).await?,
        };
        let Some(user) = user else {
            self.store
                .revoke_session(&session.user_id, session.id, now, "user_deleted")
                .await?;
            self.record(refresh_failure(ctx, "user_gone").user(&session.user_id))
                .await;
            return Err(AuthError::RefreshInvalid { expired: false });
        };
        Ok(user)
    }

    /// Makes the access tokens of a revoked session stop working at once.
    async fn end_session_tokens(
        &self,
        session: &SessionRecord,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
        self.revocations
            .revoke_session(&session.id.to_string(), until)
            .await?;
        Ok(())
    }
}

/// The `token_verification_failed` event of a refused refresh token.
fn refresh_failure(ctx: &RequestContext, reason: &str) -> SecurityEvent {
    SecurityEvent::from_request(EventType::TokenVerificationFailed, ctx)
        .reason(reason)
        .with("tokenKind", "refresh")
}
