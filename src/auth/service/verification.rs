//! Email verification: the mail (at signup, on request, and when a provider sign-in meets an
//! unverified account with its address), and the use of its link. Asking for a mail answers the
//! same whether or not the account exists or is verified, and the lookup and the queueing
//! happen after the answer, in the bounded queue of `mail_requests` that every address enters
//! alike, so neither the body nor the time tells.

use super::mail_requests::{MailRequest, MailRequestKind};
use super::{AuthService, required};
use crate::auth::AuthError;
use crate::auth::one_time::{self, MAX_TOKEN_CHARS};
use crate::domain::{Email, UserRecord};
use crate::limits::{Limit, ip_subject};
use crate::mail::Template;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::outbox::{TokenEffect, TokenPurpose, TokenUse};

/// The one answer to a resend request.
pub const RESEND_MESSAGE: &str =
    "If an account with that email needs verification, a new link is on its way.";

impl AuthService {
    /// Queues a verification mail for `user` (a new link; the previous one stops working) and
    /// records `email_verification_sent`. `why` says what asked for it.
    pub async fn send_verification(
        &self,
        user: &UserRecord,
        why: &str,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let (raw, token) = one_time::issue(&user.id, TokenPurpose::VerifyEmail, self.clock.now());
        let link = self.mail.link("/verify-email", &raw, &user.email);
        self.mail
            .send(
                &user.email,
                &user.name,
                &Template::VerifyEmail { link },
                Some(&token),
            )
            .await?;
        self.record(
            SecurityEvent::from_request(EventType::EmailVerificationSent, ctx)
                .user(&user.id)
                .email(&user.email)
                .reason(why),
        )
        .await;
        Ok(())
    }

    /// `POST /api/auth/resend-verification`: checks the address and the per-address limit,
    /// queues the lookup (or drops it when the queue is full: the answer is the same) and
    /// answers.
    pub async fn resend_verification(
        &self,
        email: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let email = Email::parse(required(email, "email", "Email")?)?;
        self.enforce(
            Limit::ResendVerificationPerIp,
            &ip_subject(ctx.client.ip),
            ctx,
        )
        .await?;
        self.mail_requests.submit(MailRequest {
            kind: MailRequestKind::Verification,
            email,
            ctx: ctx.clone(),
        });
        Ok(())
    }

    /// The lookup and the mail of a resend request, run by a queue worker.
    pub(super) async fn resend_in_background(
        &self,
        email: &Email,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let Some(user) = self.store.user_by_email(email).await? else {
            return Ok(());
        };
        if user.email_verified {
            return Ok(());
        }
        if !self.mail_allowed(&user, "verification").await {
            return Ok(());
        }
        self.send_verification(&user, "resend", ctx).await
    }

    /// A provider sign-in met `user_id`'s unverified account with the same address: the owner
    /// is mailed a verification link (within the mail limits). A failure is logged: the sign-in
    /// is refused either way.
    pub async fn verification_for_linking(&self, user_id: &str, ctx: &RequestContext) {
        let result = async {
            let Some(user) = self.store.user_by_id(user_id).await? else {
                return Ok(());
            };
            if user.email_verified || !self.mail_allowed(&user, "verification").await {
                return Ok(());
            }
            self.send_verification(&user, "provider_sign_in", ctx).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, user_id, "could not queue a verification mail");
        }
    }

    /// Whether one more mail of `what` may go to `user`: one a minute for verification mails,
    /// three an hour per kind. Over the limit the request is answered alike and nothing is sent.
    pub(super) async fn mail_allowed(&self, user: &UserRecord, what: &str) -> bool {
        let key = Email::key_of(&user.email).unwrap_or_else(|| user.id.clone());
        if what == "verification"
            && self
                .limits
                .check(Limit::VerificationMailGap, &key)
                .await
                .is_err()
        {
            return false;
        }
        self.limits
            .check(Limit::MailPerAccount, &format!("{what}:{key}"))
            .await
            .is_ok()
    }

    /// `POST /api/auth/verify-email`: consumes the link's token and verifies the address.
    pub async fn verify_email(
        &self,
        token: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        self.enforce(Limit::OneTimeTokenPerIp, &ip_subject(ctx.client.ip), ctx)
            .await?;
        let token = required(token, "token", "Token")?;
        let invalid = AuthError::TokenRefused {
            code: "AUTH_INVALID_VERIFICATION_TOKEN",
            message: "This verification link is invalid or was already used",
        };
        if token.chars().count() > MAX_TOKEN_CHARS {
            return Err(invalid);
        }
        let hash = one_time::hash(token);
        let used = self
            .store
            .use_one_time_token(&hash, &TokenEffect::VerifyEmail, self.clock.now())
            .await?;
        match used {
            TokenUse::Applied { user_id } => {
                let mut event =
                    SecurityEvent::from_request(EventType::EmailVerified, ctx).user(&user_id);
                if let Some(user) = self.store.user_by_id(&user_id).await? {
                    event = event.email(&user.email);
                }
                self.record_outcome(event).await
            }
            TokenUse::Expired => Err(AuthError::TokenRefused {
                code: "AUTH_VERIFICATION_EXPIRED",
                message: "This verification link has expired. Ask for a new one",
            }),
            TokenUse::Unknown => Err(invalid),
        }
    }
}
