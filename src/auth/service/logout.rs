//! Logout: of the caller's session, or of every session of the user.

use chrono::DateTime;

use super::{AuthService, Authenticated, RefusedToken};
use crate::auth::AuthError;
use crate::auth::refresh::{RefreshTokens, hash_token};
use crate::auth::tokens::TokenError;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};

impl AuthService {
    /// Logout: revokes the caller's session (and the one of `refresh_token`, when it is theirs)
    /// and denylists the access token. A token already revoked by an earlier logout gets the same
    /// success, with nothing recorded twice.
    pub async fn logout(
        &self,
        token: &str,
        refresh_token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let auth = match self.authenticate(token).await {
            Ok(auth) => auth,
            Err(RefusedToken {
                error:
                    AuthError::AccessToken(TokenError::Invalid(
                        "token_revoked" | "session_revoked" | "all_sessions_revoked",
                    )),
                ..
            }) => return Ok(()),
            Err(refused) => return Err(self.refuse(refused, ctx).await),
        };
        let now = self.clock.now();
        let claims = &auth.claims;
        let until =
            DateTime::from_timestamp(claims.exp, 0).unwrap_or(now) + chrono::Duration::seconds(60);
        self.revocations
            .revoke_token(&claims.jti.to_string(), until)
            .await?;
        let mut revoked = Vec::new();
        if self
            .store
            .revoke_session(&auth.user.id, claims.sid, now, "logout")
            .await?
        {
            revoked.push(claims.sid);
        }
        if let Some(raw) = refresh_token.filter(|t| RefreshTokens::well_formed(t))
            && let Some((session, _)) = self.store.session_by_token_hash(&hash_token(raw)).await?
            && session.user_id == auth.user.id
            && session.id != claims.sid
            && self
                .store
                .revoke_session(&auth.user.id, session.id, now, "logout")
                .await?
        {
            revoked.push(session.id);
        }
        self.revocations
            .revoke_session(&claims.sid.to_string(), until)
            .await?;
        for sid in &revoked {
            if *sid != claims.sid {
                self.revocations
                    .revoke_session(&sid.to_string(), until)
                    .await?;
            }
            // Revocations stand whatever becomes of their events (failing closed); a lost one
            // makes the request fail so that the client does not take it as recorded.
            self.record_outcome(
                SecurityEvent::from_request(EventType::TokenRevoked, ctx)
                    .user(&auth.user.id)
                    .reason("logout")
                    .with("sessionId", sid.to_string()),
            )
            .await?;
        }
        self.record_outcome(
            SecurityEvent::from_request(EventType::Logout, ctx)
                .user(&auth.user.id)
                .with("sessionId", claims.sid.to_string())
                .with("accessTokenId", claims.jti.to_string())
                .with("sessionsRevoked", revoked.len()),
        )
        .await
    }

    /// Logout from every device: every session revoked, every access token issued before now dead.
    pub async fn logout_all(
        &self,
        auth: &Authenticated,
        ctx: &RequestContext,
    ) -> Result<u64, AuthError> {
        let now = self.clock.now();
        let count = self
            .store
            .revoke_all_sessions(&auth.user.id, now, "logout_all")
            .await?;
        let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
        self.revocations
            .revoke_user_tokens_before(&auth.user.id, now, until)
            .await?;
        self.revocations
            .revoke_token(&auth.claims.jti.to_string(), until)
            .await?;
        self.record_outcome(
            SecurityEvent::from_request(EventType::MassTokenRevocation, ctx)
                .user(&auth.user.id)
                .reason("logout_all")
                .with("tokensRevoked", count),
        )
        .await?;
        Ok(count)
    }
}
