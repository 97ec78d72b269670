//! Forgot-password and reset-password. A request answers the same text whatever the address,
//! and the lookup and the queueing happen after the answer, in the bounded queue of
//! `mail_requests` that every address enters alike, so neither body nor time tells who has an
//! account (nor who has a Google-only one: that account is mailed "Sign in with Google"). A
//! reset consumes the link's token with the new hash in one step, then ends every session and
//! access token of the user.

use super::mail_requests::{MailRequest, MailRequestKind};
use super::{AuthService, required};
use crate::auth::one_time::{self, MAX_TOKEN_CHARS};
use crate::auth::{AuthError, password_policy};
use crate::domain::{Email, UserRecord, ValidationError};
use crate::limits::{Limit, ip_subject};
use crate::mail::Template;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::outbox::{TokenEffect, TokenPurpose, TokenUse};

/// The one answer to a forgot-password request.
pub const FORGOT_MESSAGE: &str =
    "If an account with that email exists, a link to reset its password is on its way.";

/// What a reset presents, as sent.
// No `Debug`: it holds a password.
#[derive(Clone, Copy)]
pub struct PasswordReset<'a> {
    pub token: Option<&'a str>,
    pub password: Option<&'a str>,
}

impl AuthService {
    /// `POST /api/auth/forgot-password`: checks the address and the per-address limit, queues
    /// the lookup (or drops it when the queue is full: the answer is the same) and answers.
    pub async fn forgot_password(
        &self,
        email: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let email = Email::parse(required(email, "email", "Email")?)?;
        self.enforce(Limit::ForgotPasswordPerIp, &ip_subject(ctx.client.ip), ctx)
            .await?;
        self.mail_requests.submit(MailRequest {
            kind: MailRequestKind::ResetPassword,
            email,
            ctx: ctx.clone(),
        });
        Ok(())
    }

    /// The lookup and the mail of a forgot-password request, run by a queue worker.
    pub(super) async fn forgot_in_background(
        &self,
        email: &Email,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let Some(user) = self.store.user_by_email(email).await? else {
            self.record(
                SecurityEvent::from_request(EventType::PasswordResetRequested, ctx)
                    .email(email.as_str())
                    .reason("unknown_email"),
            )
            .await;
            return Ok(());
        };
        if !self.mail_allowed(&user, "reset").await {
            self.record(
                SecurityEvent::from_request(EventType::PasswordResetRequested, ctx)
                    .user(&user.id)
                    .email(&user.email)
                    .reason("account_limit"),
            )
            .await;
            return Ok(());
        }
        let google_only = user.password_hash.is_none()
            && (user.google_id.is_some() || !self.store.identities_of(&user.id).await?.is_empty());
        if google_only {
            self.mail
                .send(&user.email, &user.name, &Template::SignInWithGoogle, None)
                .await?;
        } else {
            let (raw, token) =
                one_time::issue(&user.id, TokenPurpose::ResetPassword, self.clock.now());
            let link = self.mail.link("/reset-password", &raw, &user.email);
            self.mail
                .send(
                    &user.email,
                    &user.name,
                    &Template::ResetPassword { link },
                    Some(&token),
                )
                .await?;
        }
        self.record(
            SecurityEvent::from_request(EventType::PasswordResetRequested, ctx)
                .user(&user.id)
                .email(&user.email)
                .reason(if google_only {
                    "provider_only"
                } else {
                    "mailed"
                }),
        )
        .await;
        Ok(())
    }

    /// `POST /api/auth/reset-password`.
    pub async fn reset_password(
        &self,
        reset: PasswordReset<'_>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        self.enforce(Limit::OneTimeTokenPerIp, &ip_subject(ctx.client.ip), ctx)
            .await?;
        let token = required(reset.token, "token", "Token")?;
        let password = match reset.password {
            Some(p) if !p.is_empty() => p,
            _ => return Err(ValidationError::new("password", "Password is required").into()),
        };
        let invalid = AuthError::TokenRefused {
            code: "AUTH_INVALID_RESET_TOKEN",
            message: "This reset link is invalid, expired or was already used. Ask for a new one",
        };
        if token.chars().count() > MAX_TOKEN_CHARS {
            return Err(invalid);
        }
        let hash = one_time::hash(token);
        // A look first, so a dead link costs no hashing and the policy can name the account.
        let now = self.clock.now();
        let Some(stored) = self
            .store
            .one_time_token(&hash)
            .await?
            .filter(|t| t.purpose == TokenPurpose::ResetPassword && t.expires_at > now)
        else {
            return Err(invalid);
        };
        let Some(user) = self.store.user_by_id(&stored.user_id).await? else {
            return Err(invalid);
        };
        password_policy::check_new(
            password,
            &user.email,
            &user.name,
            self.policy.password_min_length,
            &self.breached,
        )?;
        let password_hash = self.hasher.hash(password).await?;
        let used = self
            .store
            .use_one_time_token(
                &hash,
                &TokenEffect::ResetPassword { password_hash },
                self.clock.now(),
            )
            .await?;
        match used {
            TokenUse::Applied { .. } => {}
            TokenUse::Expired | TokenUse::Unknown => return Err(invalid),
        }
        let revoked = self.end_everything(&user.id, "password_reset").await?;
        self.limits
            .clear_account(&Email::key_of(&user.email).unwrap_or_default())
            .await;
        self.record_outcome(
            SecurityEvent::from_request(EventType::PasswordResetCompleted, ctx)
                .user(&user.id)
                .email(&user.email)
                .with("sessionsRevoked", revoked),
        )
        .await?;
        self.notice(&user, Template::PasswordChanged).await;
        Ok(())
    }

    /// Every session of the user revoked and every access token issued until now denied.
    pub(super) async fn end_everything(
        &self,
        user_id: &str,
        reason: &str,
    ) -> Result<u64, AuthError> {
        let now = self.clock.now();
        let count = self.store.revoke_all_sessions(user_id, now, reason).await?;
        let until = now + chrono::Duration::seconds(self.access.ttl_secs() + 60);
        self.revocations
            .revoke_user_tokens_before(user_id, now, until)
            .await?;
        Ok(count)
    }

    /// Queues a notice (no link to act on) for `user`; a failure to queue is logged, never the
    /// request's failure. Two-factor on/off notices go through here too.
    pub async fn notice(&self, user: &UserRecord, template: Template) {
        if let Err(e) = self
            .mail
            .send(&user.email, &user.name, &template, None)
            .await
        {
            tracing::warn!(error = %e, user_id = %user.id, template = template.name(),
                "could not queue a notice");
        }
    }
}
