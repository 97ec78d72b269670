//! The auth flows: signup, login, authenticate, refresh, logout, sessions. Each flow validates its
//! input, talks to the store, issues tokens and records exactly the security events API.md lists.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::breached::BreachedPasswords;
use super::password_policy;
use super::passwords::{HashError, PasswordHasher, Verification};
use super::refresh::{RefreshTokens, hash_token};
use super::revocation::RevocationList;
use super::tokens::{AccessClaims, AccessTokens, IssuedAccessToken, TokenError};
use crate::clock::Clock;
use crate::config::{FingerprintPolicy, Settings};
use crate::domain::{Email, Name, UserRecord, UserType, ValidationError};
use crate::limits::{Exceeded, Limit, Limits, Refusal, ip_subject};
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent, SecurityLogger};
use crate::store::{
    InvalidReason, NewSession, RotateOutcome, RotateRequest, SessionRecord, Store, StoreError,
    TokenRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0:?}")]
    Validation(ValidationError),
    #[error("email already registered")]
    EmailExists,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("access token rejected: {0}")]
    AccessToken(TokenError),
    #[error("refresh token rejected")]
    RefreshInvalid { expired: bool },
    #[error("refresh token reused")]
    RefreshReused,
    #[error("session not found")]
    SessionNotFound,
    #[error("rate limited")]
    RateLimited(Exceeded),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Sync durability: the request's own event could not be kept, so it must not succeed.
    #[error(transparent)]
    EventNotKept(#[from] crate::security_log::NotKept),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => Self::Unavailable(why),
            StoreError::Conflict(what) => {
                Self::Internal(anyhow::anyhow!("unexpected conflict on {what}"))
            }
            StoreError::NotFound => Self::Internal(anyhow::anyhow!("record vanished")),
            StoreError::Other(e) => Self::Internal(e),
        }
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        Self::Internal(anyhow::Error::new(e))
    }
}

impl From<ValidationError> for AuthError {
    fn from(e: ValidationError) -> Self {
        Self::Validation(e)
    }
}

/// Signup body. Every field is optional here so that a missing one is a 400 naming the field;
/// unknown fields (`role`, `id`, `emailVerified`...) are ignored and never stored. The `schema`
/// attributes give the OpenAPI document the contract: these fields are required.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(description = "Signup body; unknown fields are ignored.")]
pub struct SignupRequest {
    #[schema(value_type = String, required = true, max_length = 254, format = Email)]
    pub email: Option<String>,
    /// At least the configured minimum (8 by default) characters; not a common password.
    #[schema(value_type = String, required = true, max_length = 128)]
    pub password: Option<String>,
    #[schema(value_type = String, required = true, min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// `client` (the default) or `designer`; `admin` is never self-assigned.
    #[schema(value_type = Option<String>, example = "client")]
    pub user_type: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    #[schema(value_type = String, required = true)]
    pub email: Option<String>,
    #[schema(value_type = String, required = true)]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    #[schema(value_type = String, required = true)]
    pub refresh_token: Option<String>,
}

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

/// The caller of an authenticated request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub claims: std::sync::Arc<AccessClaims>,
    pub user: UserRecord,
}

/// A bearer token that was not accepted: the error to answer with, and the user and session it
/// named when it passed verification (for the event that records it).
pub struct RefusedToken {
    error: AuthError,
    user_id: Option<String>,
    session_id: Option<Uuid>,
}

pub struct SessionPolicy {
    pub idle_ttl: chrono::Duration,
    pub absolute_ttl: chrono::Duration,
    pub grace: chrono::Duration,
    pub max_sessions: usize,
    pub fingerprint: FingerprintPolicy,
    pub password_min_length: usize,
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
        }
    }
}

pub struct AuthService {
    pub store: Arc<dyn Store>,
    pub limits: Arc<Limits>,
    pub clock: Clock,
    pub hasher: PasswordHasher,
    pub access: AccessTokens,
    pub refresh: RefreshTokens,
    pub revocations: Arc<dyn RevocationList>,
    pub events: SecurityLogger,
    pub policy: SessionPolicy,
    /// The breached-password list new passwords are checked against; loaded once.
    pub breached: BreachedPasswords,
}

fn required<'a>(
    value: &'a Option<String>,
    field: &'static str,
    label: &str,
) -> Result<&'a str, ValidationError> {
    match value.as_deref() {
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
    /// not kept. See "Security events" in README for which events are which.
    pub(crate) async fn record_outcome(&self, event: SecurityEvent) -> Result<(), AuthError> {
        Ok(self.events.record_outcome(event).await?)
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
        let now = Utc::now();
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
    async fn session_failed(
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

    /// The login limits (see [`crate::limits::Limits::admit_login`]); a refusal is recorded.
    /// Answers the account's remaining lockout.
    async fn admit_login(
        &self,
        ip: &str,
        account: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Option<std::time::Duration>, AuthError> {
        match self.limits.admit_login(ip, account).await {
            Ok(locked) => Ok(locked),
            Err(Refusal::Exceeded(exceeded)) => {
                Err(self.limited(exceeded, ctx, exceeded.limit.name()).await)
            }
            Err(Refusal::IpBlocked(wait)) => {
                let exceeded = Exceeded {
                    limit: Limit::LoginPerIp,
                    max: 0,
                    window_secs: wait.as_secs(),
                    retry_after_secs: wait.as_secs().max(1),
                };
                Err(self.limited(exceeded, ctx, "ip_blocked").await)
            }
        }
    }

    async fn limited(&self, exceeded: Exceeded, ctx: &RequestContext, reason: &str) -> AuthError {
        self.record(rate_limited_event(exceeded, ctx, reason)).await;
        AuthError::RateLimited(exceeded)
    }

    /// Counts a failed login against the account (when it exists) and the address, and records
    /// the lock or block it starts.
    async fn count_failure(
        &self,
        user: Option<&UserRecord>,
        email: &str,
        ip: &str,
        ctx: &RequestContext,
    ) {
        let report = self.limits.login_failed(user.map(|_| email), ip).await;
        if let (Some(user), Some(failure)) = (user, report.account)
            && failure.lock_ms > 0
        {
            if failure.count == Some(report.account_threshold) {
                self.record(
                    SecurityEvent::from_request(EventType::BruteForceDetected, ctx)
                        .user(&user.id)
                        .email(email)
                        .reason("account_failure_threshold")
                        .with("failures", report.account_threshold),
                )
                .await;
            }
            self.record(
                SecurityEvent::from_request(EventType::AccountLocked, ctx)
                    .user(&user.id)
                    .email(email)
                    .with("failures", failure.count.unwrap_or_default())
                    .with("lockedForSecs", failure.lock_ms / 1000),
            )
            .await;
        }
        if let Some(failure) = report.ip
            && failure.lock_ms > 0
            && failure.count.is_some()
        {
            self.record(
                SecurityEvent::from_request(EventType::BruteForceDetected, ctx)
                    .reason("ip_failure_threshold")
                    .with("failures", failure.count.unwrap_or_default())
                    .with("blockedForSecs", failure.lock_ms / 1000),
            )
            .await;
        }
    }

    pub async fn signup(
        &self,
        req: SignupRequest,
        ctx: &RequestContext,
    ) -> Result<AuthSuccess, AuthError> {
        self.enforce(Limit::SignupPerIp, &ip_subject(ctx.client.ip), ctx)
            .await?;
        let attempted_email = req.email.clone().unwrap_or_default();
        let validated = (|| {
            let email = Email::parse(required(&req.email, "email", "Email")?)?;
            let password = required(&req.password, "password", "Password")?;
            let name = Name::parse(required(&req.name, "name", "Name")?)?;
            let user_type = UserType::parse_self_assigned(req.user_type.as_deref())?;
            Ok::<_, ValidationError>((email, password, name, user_type))
        })();
        let (email, password, name, user_type) = match validated {
            Ok(v) => v,
            Err(e) => {
                self.signup_failed(ctx, &attempted_email, &format!("invalid_{}", e.field))
                    .await?;
                return Err(e.into());
            }
        };
        let name_str = name.into_inner();
        if let Err(e) = password_policy::check_new(
            password,
            email.as_str(),
            &name_str,
            self.policy.password_min_length,
            &self.breached,
        ) {
            self.signup_failed(ctx, email.as_str(), "weak_password")
                .await?;
            return Err(e.into());
        }
        if self.store.user_by_email(&email).await?.is_some() {
            self.signup_failed(ctx, email.as_str(), "email_exists")
                .await?;
            return Err(AuthError::EmailExists);
        }
        let hash = self.hasher.hash(password).await?;
        let now = Utc::now();
        let user = UserRecord {
            id: Uuid::new_v4().to_string(),
            email: email.as_str().to_owned(),
            name: name_str,
            user_type,
            password_hash: Some(hash),
            google_id: None,
            email_verified: false,
            avatar: None,
            created_at: now,
            last_login: Some(now),
            extra: Default::default(),
        };
        // The account's creation event is recorded before the account is written, so an account
        // that exists always has its `signup_success`, even after a crash between the two writes
        // (in sync mode the event is durable first). If the account then cannot be written,
        // `signup_failed` says why and names the event it cancels.
        let created = SecurityEvent::from_request(EventType::SignupSuccess, ctx)
            .user(&user.id)
            .email(&user.email);
        let created_id = created.id.to_string();
        self.record_outcome(created).await?;
        if let Err(e) = self.store.insert_user(&user).await {
            let (reason, error) = match e {
                // Lost a race with a concurrent signup of the same email: exactly one account.
                StoreError::Conflict(_) => ("email_exists", AuthError::EmailExists),
                StoreError::Unavailable(why) => ("store_unavailable", AuthError::Unavailable(why)),
                other => ("internal_error", other.into()),
            };
            self.record_outcome(
                SecurityEvent::from_request(EventType::SignupFailed, ctx)
                    .user(&user.id)
                    .email(&user.email)
                    .reason(reason)
                    .with("cancels", created_id),
            )
            .await?;
            return Err(error);
        }
        self.limits.clear_account(email.key()).await;
        let tokens = self.start_session(&user, ctx, now, false, None).await?;
        Ok(AuthSuccess { user, tokens })
    }

    async fn signup_failed(
        &self,
        ctx: &RequestContext,
        email: &str,
        reason: &str,
    ) -> Result<(), AuthError> {
        self.record_outcome(
            SecurityEvent::from_request(EventType::SignupFailed, ctx)
                .email(email)
                .reason(reason),
        )
        .await
    }

    pub async fn login(
        &self,
        req: LoginRequest,
        ctx: &RequestContext,
    ) -> Result<AuthSuccess, AuthError> {
        let ip = ip_subject(ctx.client.ip);
        let validated = (|| {
            let email = Email::parse(required(&req.email, "email", "Email")?)?;
            let password = match req.password.as_deref() {
                Some(p) if !p.is_empty() => p,
                _ => return Err(ValidationError::new("password", "Password is required")),
            };
            // Bounds only: the policy applies to new passwords, and this caps hashing work.
            password_policy::check_length(password, 1)?;
            Ok((email, password))
        })();
        // One round trip for every limit: the account's only once the request names one.
        // Limits and lockouts count per mailbox: every spelling of an address is one account.
        let account = validated.as_ref().ok().map(|(email, _)| email.key());
        let locked = self.admit_login(&ip, account, ctx).await?;
        let (email, password) = match validated {
            Ok(v) => v,
            Err(e) => {
                let attempted = req.email.as_deref().unwrap_or_default();
                self.record_outcome(
                    SecurityEvent::from_request(EventType::LoginFailed, ctx)
                        .email(attempted)
                        .reason(&format!("invalid_{}", e.field)),
                )
                .await?;
                return Err(e.into());
            }
        };
        let user = self.store.user_by_email(&email).await?;
        if let Some(wait) = locked {
            // Same work and the same answer as a wrong password, even for the right one, and not
            // counted: a locked account tells an attacker nothing and cannot be locked longer.
            self.hasher.verify(password, None).await?;
            let mut event = SecurityEvent::from_request(EventType::FailedLoginAttempt, ctx)
                .email(email.as_str())
                .reason("account_locked")
                .with("lockedForSecs", wait.as_secs());
            if let Some(user) = &user {
                event = event.user(&user.id);
            }
            self.record_outcome(event).await?;
            return Err(AuthError::InvalidCredentials);
        }
        // Unknown users and Google-only accounts verify against a dummy hash: same time, same 401.
        let verdict = self
            .hasher
            .verify(
                password,
                user.as_ref().and_then(|u| u.password_hash.as_deref()),
            )
            .await?;
        let user = match (user, verdict) {
            (Some(user), Verification::Valid | Verification::ValidNeedsRehash) => user,
            (known, _) => {
                self.count_failure(known.as_ref(), email.key(), &ip, ctx)
                    .await;
                let event = match known {
                    Some(known) => SecurityEvent::from_request(EventType::FailedLoginAttempt, ctx)
                        .user(&known.id)
                        .reason(if known.password_hash.is_some() {
                            "wrong_password"
                        } else {
                            "no_password_set"
                        }),
                    None => SecurityEvent::from_request(EventType::LoginFailed, ctx)
                        .reason("unknown_email"),
                };
                // An outcome like the success: were a refusal answered 401 while a success that
                // cannot be recorded is answered 503, the status would tell a right password.
                self.record_outcome(event.email(email.as_str())).await?;
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.limits.login_succeeded(email.key()).await;
        let now = Utc::now();
        if verdict == Verification::ValidNeedsRehash {
            self.rehash(&user, password, ctx).await;
        }
        // The store writes `last_login` with the new session (one commit on Postgres).
        let user = UserRecord {
            last_login: Some(now),
            ..user
        };
        // Success is recorded once the session exists; a login the store could not start a
        // session for is recorded as the failure it is.
        let success = SecurityEvent::from_request(EventType::LoginSuccess, ctx)
            .user(&user.id)
            .email(&user.email);
        match self
            .start_session(&user, ctx, now, true, Some(success))
            .await
        {
            Ok(tokens) => Ok(AuthSuccess { user, tokens }),
            Err(e) => {
                self.session_failed(EventType::LoginFailed, &user, ctx, &e)
                    .await;
                Err(e)
            }
        }
    }

    /// Upgrades a legacy bcrypt (or weaker argon2) hash. A failure here must not fail the login.
    async fn rehash(&self, user: &UserRecord, password: &str, ctx: &RequestContext) {
        let from = if user
            .password_hash
            .as_deref()
            .is_some_and(|h| h.starts_with("$2"))
        {
            "bcrypt"
        } else {
            "argon2"
        };
        let stored = user.password_hash.as_deref().unwrap_or_default();
        let result = async {
            let hash = self.hasher.rehash(password, stored).await?;
            self.store.set_password_hash(&user.id, &hash).await?;
            Ok::<_, AuthError>(())
        }
        .await;
        match result {
            Ok(()) => {
                self.record(
                    SecurityEvent::from_request(EventType::PasswordRehashed, ctx)
                        .user(&user.id)
                        .with("from", from),
                )
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, user_id = %user.id, "could not upgrade a password hash; will retry at next login")
            }
        }
    }

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

    /// Verifies a bearer token and loads its user, recording nothing: a refused token comes back
    /// as a [`RefusedToken`], which the caller records with [`Self::refuse`] and the request's
    /// context. So the context (headers copied into strings) is built only for a refusal, not on
    /// every authenticated request.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, RefusedToken> {
        let claims = self.access.verify(token).map_err(|e| RefusedToken {
            error: AuthError::AccessToken(e),
            user_id: None,
            session_id: None,
        })?;
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
        Ok(Authenticated { claims, user })
    }

    /// Records a refused bearer token (`token_verification_failed`; not for internal errors)
    /// and gives back the error to answer with: a 429 once the address is over its limit of
    /// refused tokens. Only tokens whose signature did not verify (forged, garbled, signed with
    /// another key) are counted and refused by the limit. A token the service signed (expired,
    /// revoked, its user gone) always gets its 401: it is the answer that makes a client refresh
    /// or sign in again, and such tokens are no more than the service issued. A valid token never
    /// comes here. Past the address's threshold anonymous refusals are summarised (see
    /// [`SecurityLogger::record_token_failure`]).
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

    pub async fn refresh(
        &self,
        req: RefreshRequest,
        ctx: &RequestContext,
    ) -> Result<(UserRecord, IssuedTokens), AuthError> {
        let presented = req.refresh_token.as_deref().filter(|t| !t.is_empty());
        let well_formed = presented.filter(|t| RefreshTokens::well_formed(t));
        // Per session once the token names one (its tag), and per address: one round trip.
        let session = well_formed.map(|t| self.refresh.session_tag(t));
        if let Err(exceeded) = self
            .limits
            .admit_refresh(&ip_subject(ctx.client.ip), session.as_deref())
            .await
        {
            return Err(self.limited(exceeded, ctx, exceeded.limit.name()).await);
        }
        let Some(presented) = presented else {
            return Err(ValidationError::new("refreshToken", "Refresh token is required").into());
        };
        let now = Utc::now();
        let fail = |reason: &str| {
            SecurityEvent::from_request(EventType::TokenVerificationFailed, ctx)
                .reason(reason)
                .with("tokenKind", "refresh")
        };
        let ip = ip_subject(ctx.client.ip);
        if well_formed.is_none() {
            self.events
                .record_token_failure(&ip, "malformed", fail("malformed"))
                .await;
            return Err(AuthError::RefreshInvalid { expired: false });
        }
        let successor = self.refresh.successor(presented);
        let request = RotateRequest {
            presented_hash: hash_token(presented),
            successor_id: Uuid::now_v7(),
            successor_hash: hash_token(&successor),
            now,
            grace: self.policy.grace,
            idle_ttl: self.policy.idle_ttl,
            fingerprint: ctx.client.fingerprint().as_str().to_owned(),
            ip_address: ctx.client.ip.to_string(),
            reject_on_fingerprint_mismatch: self.policy.fingerprint == FingerprintPolicy::Reject,
        };
        // The user and the stored successor's id come with the outcome where the store reads them
        // in the same query (Postgres); otherwise they are looked up below.
        let rotation = self.store.rotate_refresh_token_with_user(&request).await?;
        let (session, old_token_id, new_token_id, matched, concurrent) = match rotation.outcome {
            RotateOutcome::Rotated {
                session,
                old_token_id,
                fingerprint_matched,
            } => (
                session,
                old_token_id,
                request.successor_id,
                fingerprint_matched,
                false,
            ),
            RotateOutcome::Grace {
                session,
                old_token_id,
                fingerprint_matched,
            } => {
                // Same successor as the first request: report the id it was stored under, not
                // this request's unused one, so `token_refreshed` names a token that exists.
                let stored_id = match rotation.stored_successor_id {
                    Some(id) => id,
                    None => self
                        .store
                        .session_by_token_hash(&request.successor_hash)
                        .await?
                        .map_or(request.successor_id, |(_, id)| id),
                };
                (session, old_token_id, stored_id, fingerprint_matched, true)
            }
            RotateOutcome::ReuseDetected { session, token_id } => {
                self.end_session_tokens(&session, now).await?;
                self.record(
                    SecurityEvent::from_request(EventType::TokenReuseDetected, ctx)
                        .user(&session.user_id)
                        .token(token_id)
                        .reason("rotated_token_presented_again")
                        .with("sessionId", session.id.to_string())
                        .with("familyRevoked", true),
                )
                .await;
                return Err(AuthError::RefreshReused);
            }
            RotateOutcome::FingerprintRejected { session, token_id } => {
                self.end_session_tokens(&session, now).await?;
                self.record(
                    SecurityEvent::from_request(EventType::DeviceFingerprintMismatch, ctx)
                        .user(&session.user_id)
                        .token(token_id)
                        .reason("rejected")
                        .with("sessionId", session.id.to_string())
                        .with("expectedFingerprint", session.fingerprint.clone()),
                )
                .await;
                return Err(AuthError::RefreshInvalid { expired: false });
            }
            RotateOutcome::Invalid {
                reason,
                session,
                token_id,
            } => {
                let mut event = fail(reason.as_str());
                if let Some(s) = &session {
                    event = event.user(&s.user_id).with("sessionId", s.id.to_string());
                }
                if let Some(id) = token_id {
                    event = event.token(id);
                }
                self.events
                    .record_token_failure(&ip, reason.as_str(), event)
                    .await;
                return Err(AuthError::RefreshInvalid {
                    expired: reason == InvalidReason::Expired,
                });
            }
        };
        let user = match rotation.user {
            Some(user) => Some(user),
            None => self.store.user_by_id(&session.user_id).await?,
        };
        let Some(user) = user else {
            self.store
                .revoke_session(&session.user_id, session.id, now, "user_deleted")
                .await?;
            self.record(fail("user_gone").user(&session.user_id)).await;
            return Err(AuthError::RefreshInvalid { expired: false });
        };
        if !matched {
            self.record(
                SecurityEvent::from_request(EventType::DeviceFingerprintMismatch, ctx)
                    .user(&user.id)
                    .token(old_token_id)
                    .reason("logged")
                    .with("sessionId", session.id.to_string())
                    .with("expectedFingerprint", session.fingerprint.clone()),
            )
            .await;
        }
        let access = self.access.issue(&user, session.id, now)?;
        // The rotation is committed; if its event is not kept the request fails, and a retry with
        // the same token within the reuse grace gets the same successor.
        self.record_outcome(
            SecurityEvent::from_request(EventType::TokenRefreshed, ctx)
                .user(&user.id)
                .token(new_token_id)
                .with("oldTokenId", old_token_id.to_string())
                .with("tokenId", new_token_id.to_string())
                .with("sessionId", session.id.to_string())
                .with("concurrent", concurrent),
        )
        .await?;
        Ok((
            user,
            IssuedTokens {
                access,
                refresh_token: successor,
                session_id: session.id,
            },
        ))
    }

    /// Denies again the access tokens of sessions revoked within the last access-token lifetime.
    /// Without Redis the denylist lives in memory; after a restart this keeps a logged-out
    /// session's access token from working until it expires. Waits for the store to answer.
    pub async fn restore_revocations(&self, stop: tokio_util::sync::CancellationToken) {
        let ttl = chrono::Duration::seconds(self.access.ttl_secs() + 60);
        let mut wait = std::time::Duration::from_millis(200);
        loop {
            match self.store.sessions_revoked_since(Utc::now() - ttl).await {
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
        let now = Utc::now();
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
        let now = Utc::now();
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

    pub async fn sessions(&self, auth: &Authenticated) -> Result<Vec<SessionRecord>, AuthError> {
        Ok(self
            .store
            .live_sessions(&auth.user.id, Utc::now(), self.policy.idle_ttl)
            .await?)
    }

    pub async fn revoke_session(
        &self,
        auth: &Authenticated,
        session_id: Uuid,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let now = Utc::now();
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
}

/// The event of a 429.
fn rate_limited_event(exceeded: Exceeded, ctx: &RequestContext, reason: &str) -> SecurityEvent {
    SecurityEvent::from_request(EventType::RateLimitExceeded, ctx)
        .reason(reason)
        .with("limit", exceeded.max)
        .with("windowSecs", exceeded.window_secs)
        .with("retryAfter", exceeded.retry_after_secs)
}
