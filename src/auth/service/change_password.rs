//! Change-password: the signed-in user proves the current password and sets a new one. A wrong
//! current password is a 400 (the web app signs the user out on a 401) and counts toward the
//! account's lockout like a failed login; success ends every other session and keeps the
//! caller's.

use super::{AuthService, Authenticated};
use crate::auth::passwords::Verification;
use crate::auth::{AuthError, password_policy};
use crate::domain::{Email, ValidationError};
use crate::limits::ip_subject;
use crate::mail::Template;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};

/// What a change presents, as sent.
// No `Debug`: it holds passwords.
#[derive(Clone, Copy)]
pub struct PasswordChange<'a> {
    pub current_password: Option<&'a str>,
    pub new_password: Option<&'a str>,
}

impl AuthService {
    /// `POST /api/auth/change-password`.
    pub async fn change_password(
        &self,
        auth: &Authenticated,
        change: PasswordChange<'_>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let user = &auth.user;
        let current = match change.current_password {
            Some(p) if !p.is_empty() => p,
            _ => {
                return Err(ValidationError::new(
                    "currentPassword",
                    "Current password is required",
                )
                .into());
            }
        };
        let new = match change.new_password {
            Some(p) if !p.is_empty() => p,
            _ => {
                return Err(ValidationError::new("newPassword", "New password is required").into());
            }
        };
        password_policy::check_length(current, 1).map_err(|e| ValidationError {
            field: "currentPassword",
            ..e
        })?;
        let Some(stored) = user.password_hash.as_deref() else {
            self.change_failed(ctx, &user.id, &user.email, "no_password_set")
                .await?;
            return Err(AuthError::NoPassword);
        };
        let ip = ip_subject(ctx.client.ip);
        let key = Email::key_of(&user.email).unwrap_or_else(|| user.id.clone());
        let locked = self.admit_change(&ip, &key, ctx).await?;
        let verdict = self.hasher.verify(current, Some(stored)).await?;
        let right = matches!(
            verdict,
            Verification::Valid | Verification::ValidNeedsRehash
        );
        if locked || !right {
            if !locked {
                self.count_failure(Some(user), &key, &ip, ctx).await;
            }
            self.change_failed(
                ctx,
                &user.id,
                &user.email,
                if locked {
                    "account_locked"
                } else {
                    "wrong_password"
                },
            )
            .await?;
            return Err(AuthError::WrongCurrentPassword);
        }
        password_policy::check_new(
            new,
            &user.email,
            &user.name,
            self.policy.password_min_length,
            &self.breached,
        )
        .map_err(|e| ValidationError {
            field: "newPassword",
            ..e
        })?;
        self.limits.login_succeeded(&key).await;
        let hash = self.hasher.hash(new).await?;
        self.store.set_password_hash(&user.id, &hash).await?;
        let now = self.clock.now();
        let mut revoked = 0u64;
        for session in self
            .store
            .live_sessions(&user.id, now, self.policy.idle_ttl)
            .await?
        {
            if session.id != auth.claims.sid
                && self
                    .store
                    .revoke_session(&user.id, session.id, now, "password_changed")
                    .await?
            {
                let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
                self.revocations
                    .revoke_session(&session.id.to_string(), until)
                    .await?;
                revoked += 1;
            }
        }
        self.record_outcome(
            SecurityEvent::from_request(EventType::PasswordChanged, ctx)
                .user(&user.id)
                .email(&user.email)
                .with("sessionsRevoked", revoked),
        )
        .await?;
        self.notice(user, Template::PasswordChanged).await;
        Ok(())
    }

    /// The account's lockout and the per-address login limit, as a login is checked; answers
    /// whether the account is locked.
    async fn admit_change(
        &self,
        ip: &str,
        account: &str,
        ctx: &RequestContext,
    ) -> Result<bool, AuthError> {
        Ok(self.admit_login(ip, Some(account), ctx).await?.is_some())
    }

    async fn change_failed(
        &self,
        ctx: &RequestContext,
        user_id: &str,
        email: &str,
        reason: &str,
    ) -> Result<(), AuthError> {
        self.record_outcome(
            SecurityEvent::from_request(EventType::ChangePasswordFailed, ctx)
                .user(user_id)
                .email(email)
                .reason(reason),
        )
        .await
    }
}
