//! Login with email and password: the login limits and lockouts, the check against the stored
//! hash (a dummy one for unknown users), and the upgrade of a legacy hash.

use super::{AuthService, SignIn, required};
use crate::auth::passwords::Verification;
use crate::auth::two_factor::SignInMethod;
use crate::auth::{AuthError, password_policy};
use crate::domain::{Email, UserRecord, ValidationError};
use crate::limits::{Exceeded, Limit, Refusal, ip_subject};
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};

/// What a login presents, as sent: either may be missing, which is refused naming the field.
// No `Debug`: it holds a password.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub email: Option<&'a str>,
    pub password: Option<&'a str>,
}

impl AuthService {
    pub async fn login(
        &self,
        credentials: Credentials<'_>,
        ctx: &RequestContext,
    ) -> Result<SignIn, AuthError> {
        let ip = ip_subject(ctx.client.ip);
        let validated = (|| {
            let email = Email::parse(required(credentials.email, "email", "Email")?)?;
            let password = match credentials.password {
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
                let attempted = credentials.email.unwrap_or_default();
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
        if self.policy.require_email_verification && !user.email_verified {
            // After the password check: without the password this reveals nothing.
            self.record_outcome(
                SecurityEvent::from_request(EventType::LoginFailed, ctx)
                    .user(&user.id)
                    .email(&user.email)
                    .reason("email_not_verified"),
            )
            .await?;
            return Err(AuthError::EmailNotVerified);
        }
        if verdict == Verification::ValidNeedsRehash {
            self.rehash(&user, password, ctx).await;
        }
        // With two-factor on, the password alone neither clears the account's failures (wrong
        // codes count toward the same lockout) nor starts a session: the second step does both.
        let second_step = user.two_factor_enabled;
        if !second_step {
            self.limits.login_succeeded(email.key()).await;
        }
        // Success is recorded once the session exists (the store writes `last_login` with it,
        // one commit on Postgres); a login the store could not start a session for is recorded
        // as the failure it is.
        let success = SecurityEvent::from_request(EventType::LoginSuccess, ctx)
            .user(&user.id)
            .email(&user.email);
        match self
            .finish_sign_in(user.clone(), SignInMethod::Password, ctx, success)
            .await
        {
            Ok(outcome) => Ok(outcome),
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

    /// The login limits (see [`crate::limits::Limits::admit_login`]); a refusal is recorded.
    /// Answers the account's remaining lockout.
    pub(super) async fn admit_login(
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

    /// Counts a failed login against the account (when it exists) and the address, and records
    /// the lock or block it starts.
    pub(super) async fn count_failure(
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
}
