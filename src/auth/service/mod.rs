//! The auth flows, one file each: signup, login, bearer-token checks, refresh, logout, the
//! caller's sessions, profile and settings, two-factor sign-in, the session every sign-in starts,
//! email verification,
//! password reset and change. Each flow validates its input, talks to the store, issues tokens
//! and records exactly the security events docs/API.md lists. Inputs are plain values (the
//! strings as sent, checked here), never HTTP types.

mod bearer;
mod change_password;
mod login;
mod logout;
mod mail_requests;
mod password_reset;
mod profile;
mod refresh;
mod session_start;
mod sessions;
mod signup;
mod two_factor;
mod verification;

use std::sync::Arc;

use uuid::Uuid;

use super::AuthError;
use super::breached::BreachedPasswords;
use super::fluxstudio_tokens::FluxStudioTokens;
use super::passwords::PasswordHasher;
use super::refresh::RefreshTokens;
use super::revocation::RevocationList;
use super::tokens::{AccessTokens, IssuedAccessToken};
use super::two_factor::TwoFactor;
use crate::clock::Clock;
use crate::config::{FingerprintPolicy, Settings};
use crate::domain::{UserRecord, ValidationError};
use crate::limits::{Exceeded, Limit, Limits};
use crate::mail::Outbox;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent, SecurityLogger};
use crate::store::Store;

pub use bearer::{Authenticated, RefusedToken};
pub use change_password::PasswordChange;
pub use login::Credentials;
pub use mail_requests::{MAIL_REQUEST_WORKERS, MailRequestKind, MailRequestLevels, MailRequests};
pub use password_reset::{FORGOT_MESSAGE, PasswordReset};
pub use profile::ProfileEdit;
pub use signup::NewAccount;
pub use two_factor::{DisabledBy, SignIn};
pub use verification::RESEND_MESSAGE;

/// A freshly issued access + refresh token pair.
pub struct IssuedTokens {
    pub access: IssuedAccessToken,
    pub refresh_token: String,
    pub session_id: Uuid,
}

pub struct AuthSuccess {
    pub user: UserRecord,
    pub tokens: IssuedTokens,
}

pub struct SessionPolicy {
    pub idle_ttl: chrono::Duration,
    pub absolute_ttl: chrono::Duration,
    pub grace: chrono::Duration,
    pub max_sessions: usize,
    pub fingerprint: FingerprintPolicy,
    pub password_min_length: usize,
    /// `REQUIRE_EMAIL_VERIFICATION`: password logins to unverified accounts are refused.
    pub require_email_verification: bool,
}

impl SessionPolicy {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            idle_ttl: chrono::Duration::seconds(s.refresh_idle_ttl_secs as i64),
            absolute_ttl: chrono::Duration::seconds(s.refresh_absolute_ttl_secs as i64),
            grace: chrono::Duration::seconds(s.refresh_reuse_grace_secs as i64),
            max_sessions: s.max_sessions_per_user as usize,
            fingerprint: s.fingerprint_policy,
            password_min_length: s.password_min_length,
            require_email_verification: s.require_email_verification,
        }
    }
}

pub struct AuthService {
    pub store: Arc<dyn Store>,
    pub limits: Arc<Limits>,
    pub clock: Clock,
    pub hasher: PasswordHasher,
    pub access: AccessTokens,
    /// FluxStudio's access tokens, while `LEGACY_ACCESS_TOKENS_UNTIL` is ahead.
    pub fluxstudio: Option<FluxStudioTokens>,
    pub refresh: RefreshTokens,
    pub revocations: Arc<dyn RevocationList>,
    pub events: SecurityLogger,
    pub policy: SessionPolicy,
    /// The breached-password list new passwords are checked against; loaded once.
    pub breached: BreachedPasswords,
    /// Where the flows queue mail.
    pub mail: Arc<Outbox>,
    /// Two-factor sign-in: the secrets' cipher and the pending second steps.
    pub two_factor: TwoFactor,
    /// Forgot-password and resend-verification lookups, after the answer.
    pub mail_requests: MailRequests,
}

/// A field that must be present and not blank.
fn required<'a>(
    value: Option<&'a str>,
    field: &'static str,
    label: &str,
) -> Result<&'a str, ValidationError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(ValidationError::new(field, format!("{label} is required"))),
    }
}

impl AuthService {
    /// An event incidental to the request: its answer stands whatever becomes of the event.
    async fn record(&self, event: SecurityEvent) {
        self.events.record(event).await;
    }

    /// The event that says what the request did: in sync mode the request fails (503) when it is
    /// not kept. See docs/API.md, "Security events", for which events are which.
    pub(crate) async fn record_outcome(&self, event: SecurityEvent) -> Result<(), AuthError> {
        Ok(self.events.record_outcome(event).await?)
    }

    /// Counts one request against `limit`; over it, records `rate_limit_exceeded` and refuses.
    pub(crate) async fn enforce(
        &self,
        limit: Limit,
        subject: &str,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        match self.limits.check(limit, subject).await {
            Ok(()) => Ok(()),
            Err(exceeded) => Err(self.limited(exceeded, ctx, limit.name()).await),
        }
    }

    /// The signup limit and the address's signup block (a `signup_burst`'s action): a block is
    /// refused as the limit is, 429 with the time it has left.
    pub(crate) async fn admit_signup(
        &self,
        ip: &str,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        match self.limits.admit_signup(ip).await {
            Ok(()) => Ok(()),
            Err(crate::limits::Refusal::Exceeded(exceeded)) => {
                Err(self.limited(exceeded, ctx, exceeded.limit.name()).await)
            }
            Err(crate::limits::Refusal::IpBlocked(wait)) => {
                let exceeded = Exceeded {
                    limit: crate::limits::Limit::SignupPerIp,
                    max: 0,
                    window_secs: wait.as_secs(),
                    retry_after_secs: wait.as_secs().max(1),
                };
                Err(self.limited(exceeded, ctx, "signup_blocked").await)
            }
        }
    }

    async fn limited(&self, exceeded: Exceeded, ctx: &RequestContext, reason: &str) -> AuthError {
        self.record(rate_limited_event(exceeded, ctx, reason)).await;
        AuthError::RateLimited(exceeded)
    }
}

/// The event of a 429.
fn rate_limited_event(exceeded: Exceeded, ctx: &RequestContext, reason: &str) -> SecurityEvent {
    SecurityEvent::from_request(EventType::RateLimitExceeded, ctx)
        .reason(reason)
        .with("limit", exceeded.max)
        .with("windowSecs", exceeded.window_secs)
        .with("retryAfter", exceeded.retry_after_secs)
}
