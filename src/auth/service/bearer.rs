//! Bearer tokens: verifying an access token (or, while the operator allows it, one of
//! FluxStudio's) and loading its user, and recording one that was refused or a FluxStudio token's
//! first acceptance.

use std::sync::Arc;

use uuid::Uuid;

use super::{AuthService, rate_limited_event};
use crate::auth::AuthError;
use crate::auth::fluxstudio_tokens::{Outcome, not_ours};
use crate::auth::tokens::{AccessClaims, TokenError};
use crate::domain::UserRecord;
use crate::limits::{Limit, ip_subject};
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};

/// The caller of an authenticated request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub claims: Arc<AccessClaims>,
    pub user: UserRecord,
    /// The token is one of FluxStudio's (`LEGACY_ACCESS_TOKENS_UNTIL`).
    pub legacy: bool,
}

/// A bearer token that was not accepted: the error to answer with, and the user and session it
/// named when it passed verification (for the event that records it).
pub struct RefusedToken {
    pub(super) error: AuthError,
    user_id: Option<String>,
    session_id: Option<Uuid>,
}

impl AuthService {
    /// Verifies a bearer token and loads its user, recording nothing: a refused token comes back
    /// as a [`RefusedToken`], which the caller records with [`Self::refuse`] and the request's
    /// context. So the context (headers copied into strings) is built only for a refusal, not on
    /// every authenticated request.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, RefusedToken> {
        let (claims, legacy) = match self.access.verify(token) {
            Ok(claims) => (claims, false),
            Err(e) => (self.fluxstudio_claims(token, e).await?, true),
        };
        let refused = |error| RefusedToken {
            error,
            user_id: Some(claims.sub.clone()),
            session_id: Some(claims.sid),
        };
        match self.revocations.check(&claims).await {
            Ok(None) => {}
            Ok(Some(revoked)) => {
                return Err(refused(AuthError::AccessToken(TokenError::Invalid(
                    revoked.as_str(),
                ))));
            }
            Err(e) => return Err(refused(AuthError::Internal(e))),
        }
        let user = match self.store.user_by_id(&claims.sub).await {
            Ok(Some(user)) => user,
            Ok(None) => {
                return Err(refused(AuthError::AccessToken(TokenError::Invalid(
                    "user_gone",
                ))));
            }
            Err(e) => return Err(refused(e.into())),
        };
        Ok(Authenticated {
            claims,
            user,
            legacy,
        })
    }

    /// A token this service refused (`refusal`) tried as one of FluxStudio's: only while that
    /// is allowed and only when the refusal says it is not one of this service's (never an
    /// expired one of its own). Otherwise the refusal stands.
    async fn fluxstudio_claims(
        &self,
        token: &str,
        refusal: TokenError,
    ) -> Result<Arc<AccessClaims>, RefusedToken> {
        let standing = RefusedToken {
            error: AuthError::AccessToken(refusal),
            user_id: None,
            session_id: None,
        };
        let Some(fluxstudio) = self.fluxstudio.as_ref().filter(|_| not_ours(&refusal)) else {
            return Err(standing);
        };
        match fluxstudio.verify(token).await {
            Outcome::Accepted(claims) => Ok(claims),
            Outcome::NotLegacy => Err(standing),
            Outcome::Refused { user_id, error } => Err(RefusedToken {
                error: AuthError::AccessToken(error),
                user_id: Some(user_id),
                session_id: None,
            }),
        }
    }

    /// Records `legacy_access_token_accepted` the first time a FluxStudio token is accepted
    /// here (once per token, not per request: see [`FluxStudioTokens::first_use`]).
    ///
    /// [`FluxStudioTokens::first_use`]: crate::auth::fluxstudio_tokens::FluxStudioTokens::first_use
    pub async fn note_legacy_use(&self, auth: &Authenticated, ctx: &RequestContext) {
        let Some(fluxstudio) = self.fluxstudio.as_ref().filter(|_| auth.legacy) else {
            return;
        };
        if !fluxstudio.first_use(&auth.claims) {
            return;
        }
        let expires = chrono::DateTime::from_timestamp(auth.claims.exp, 0).unwrap_or_default();
        self.record(
            SecurityEvent::from_request(EventType::LegacyAccessTokenAccepted, ctx)
                .user(&auth.user.id)
                .token(auth.claims.jti)
                .with("accessTokenId", auth.claims.jti.to_string())
                .with("expiresAt", expires.to_rfc3339())
                .with("acceptedUntil", fluxstudio.until().to_rfc3339()),
        )
        .await;
    }

    /// Records a refused bearer token (`token_verification_failed`; not for internal errors)
    /// and gives back the error to answer with: a 429 once the address is over its limit of
    /// refused tokens. Only tokens whose signature did not verify (forged, garbled, signed with
    /// another key) are counted and refused by the limit. A token the service signed (expired,
    /// revoked, its user gone) always gets its 401: it is the answer that makes a client refresh
    /// or sign in again, and such tokens are no more than the service issued. A valid token never
    /// comes here. Past the address's threshold anonymous refusals are summarised (see
    /// [`crate::security_log::SecurityLogger::record_token_failure`]).
    pub async fn refuse(&self, refused: RefusedToken, ctx: &RequestContext) -> AuthError {
        let RefusedToken {
            error,
            user_id,
            session_id,
        } = refused;
        let AuthError::AccessToken(e) = &error else {
            return error;
        };
        let reason = match e {
            TokenError::Expired => "expired",
            TokenError::Invalid(why) => why,
        };
        let ip = ip_subject(ctx.client.ip);
        // A refusal that names a user came after the signature and claims were checked.
        let signed = user_id.is_some() || e.signature_verified();
        if !signed && let Err(exceeded) = self.limits.check(Limit::BearerFailurePerIp, &ip).await {
            let event = rate_limited_event(exceeded, ctx, exceeded.limit.name());
            self.events
                .record_token_failure(&ip, "rate_limited", event)
                .await;
            return AuthError::RateLimited(exceeded);
        }
        let mut event = SecurityEvent::from_request(EventType::TokenVerificationFailed, ctx)
            .reason(reason)
            .with("tokenKind", "access");
        if let Some(user_id) = user_id {
            event = event.user(user_id);
        }
        if let Some(session_id) = session_id {
            event = event.with("sessionId", session_id.to_string());
        }
        self.events.record_token_failure(&ip, reason, event).await;
        error
    }
}
