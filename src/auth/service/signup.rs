//! Signup: a new password account, signed in.

use uuid::Uuid;

use super::{AuthService, AuthSuccess, required};
use crate::auth::{AuthError, password_policy};
use crate::domain::{Email, Name, UserRecord, UserType, ValidationError};
use crate::limits::ip_subject;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::StoreError;

/// What a signup asks for, as sent: any field may be missing, and each is checked here so that
/// the refusal names the field and is recorded.
// No `Debug`: it holds a password.
#[derive(Clone, Copy)]
pub struct NewAccount<'a> {
    pub email: Option<&'a str>,
    pub password: Option<&'a str>,
    pub name: Option<&'a str>,
    /// `client` (the default) or `designer`; `admin` is never self-assigned.
    pub user_type: Option<&'a str>,
}

impl AuthService {
    pub async fn signup(
        &self,
        account: NewAccount<'_>,
        ctx: &RequestContext,
    ) -> Result<AuthSuccess, AuthError> {
        self.admit_signup(&ip_subject(ctx.client.ip), ctx).await?;
        let attempted_email = account.email.unwrap_or_default();
        let validated = (|| {
            let email = Email::parse(required(account.email, "email", "Email")?)?;
            let password = required(account.password, "password", "Password")?;
            let name = Name::parse(required(account.name, "name", "Name")?)?;
            let user_type = UserType::parse_self_assigned(account.user_type)?;
            Ok::<_, ValidationError>((email, password, name, user_type))
        })();
        let (email, password, name, user_type) = match validated {
            Ok(v) => v,
            Err(e) => {
                self.signup_failed(ctx, attempted_email, &format!("invalid_{}", e.field))
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
        let now = self.clock.now();
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
            updated_at: now,
            two_factor_enabled: false,
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
        // The account exists whatever becomes of its mail: a failure to queue it is logged, and
        // resend-verification sends another.
        if let Err(e) = self.send_verification(&user, "signup", ctx).await {
            tracing::warn!(error = %e, user_id = %user.id, "could not queue the verification mail");
        }
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
}
