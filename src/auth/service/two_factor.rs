//! Two-factor sign-in: turning it on (setup, then a first code), off (a code, or an admin or
//! operator for a user who lost both device and backup codes), and the second step of a sign-in
//! (`/api/2fa/verify`: the temp token and a code start the session the first step withheld).
//!
//! A code is a TOTP code (accepted once per time step per user, recorded in the store in the same
//! step as it is checked) or a backup code (single use). Wrong codes in the second step count
//! toward the account's lockout like wrong passwords, and kill the temp token after 5.

use super::{AuthService, AuthSuccess, Authenticated};
use crate::auth::AuthError;
use crate::auth::two_factor::challenge::Challenge;
use crate::auth::two_factor::codes::{self, Code, Enrolment};
use crate::auth::two_factor::{SecretCipher, SignInMethod};
use crate::domain::{Email, UserRecord, ValidationError};
use crate::limits::{Exceeded, Limit, Refusal, ip_subject};
use crate::mail::Template;
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::TwoFactorRecord;

/// What a sign-in whose first factor passed answers: a session, or a temp token for the second
/// step when the user has two-factor sign-in on.
pub enum SignIn {
    Session(Box<AuthSuccess>),
    SecondFactor { temp_token: String },
}

/// Who turns a user's two-factor sign-in off for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisabledBy {
    Admin,
    Operator,
}

impl DisabledBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
        }
    }
}

/// Which kind of code passed, as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Passed {
    Totp,
    BackupCode,
}

impl Passed {
    fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::BackupCode => "backup_code",
        }
    }
}

/// Why a code was refused, as `mfa_challenge_failed` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrong {
    Malformed,
    Mismatch,
    Replayed,
    UnknownBackupCode,
    AccountLocked,
}

impl Wrong {
    fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_code",
            Self::Mismatch => "wrong_code",
            Self::Replayed => "replayed_code",
            Self::UnknownBackupCode => "wrong_backup_code",
            Self::AccountLocked => "account_locked",
        }
    }
}

fn required_code(code: Option<&str>) -> Result<&str, ValidationError> {
    match code.map(str::trim) {
        Some(c) if !c.is_empty() => Ok(c),
        _ => Err(ValidationError::new(
            "code",
            "Verification code is required",
        )),
    }
}

impl AuthService {
    fn cipher(&self) -> Result<&SecretCipher, AuthError> {
        self.two_factor
            .cipher
            .as_ref()
            .ok_or(AuthError::TwoFactorUnavailable(
                "TOTP_ENCRYPTION_KEY is not set",
            ))
    }

    fn now_secs(&self) -> u64 {
        self.clock.now().timestamp().max(0) as u64
    }

    /// After the first factor: a session, or, with two-factor on, a temp token and no session.
    /// `success` is the sign-in's own event, recorded once its session exists.
    pub(crate) async fn finish_sign_in(
        &self,
        user: UserRecord,
        method: SignInMethod,
        ctx: &RequestContext,
        success: SecurityEvent,
    ) -> Result<SignIn, AuthError> {
        // The user's own flag, moved by the store in the same write as the secret: no second read
        // on the sign-in path, so a store that fails now fails where the session is started,
        // which records the failure.
        if user.two_factor_enabled {
            let temp_token = self.two_factor.challenges.issue(&user.id, method).await;
            return Ok(SignIn::SecondFactor { temp_token });
        }
        let now = self.clock.now();
        let records_login = method == SignInMethod::Password;
        let user = if records_login {
            UserRecord {
                last_login: Some(now),
                ..user
            }
        } else {
            user
        };
        let tokens = self
            .start_session(&user, ctx, now, records_login, Some(success))
            .await?;
        Ok(SignIn::Session(Box::new(AuthSuccess { user, tokens })))
    }

    /// `POST /api/2fa/setup`: a new pending secret, shown once as text, otpauth URL and QR code.
    pub async fn two_factor_setup(
        &self,
        caller: &Authenticated,
        _ctx: &RequestContext,
    ) -> Result<Enrolment, AuthError> {
        let cipher = self.cipher()?;
        let user = &caller.user;
        let secret = codes::new_secret();
        let enrolment = codes::enrolment(&secret, &user.email)?;
        if !self
            .store
            .set_pending_two_factor(&user.id, &cipher.encrypt(&user.id, &secret))
            .await?
        {
            return Err(AuthError::TwoFactorAlreadyEnabled);
        }
        Ok(enrolment)
    }

    /// `POST /api/2fa/verify-setup`: the first code from the pending secret turns two-factor on;
    /// answers the backup codes, which are shown this once.
    pub async fn two_factor_verify_setup(
        &self,
        caller: &Authenticated,
        code: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Vec<String>, AuthError> {
        let code = required_code(code)?;
        let cipher = self.cipher()?;
        let user = &caller.user;
        let record = self.store.two_factor(&user.id).await?;
        let record = match record {
            Some(r) if r.enabled() => return Err(AuthError::TwoFactorAlreadyEnabled),
            Some(r) => r,
            None => return Err(AuthError::TwoFactorNotSetUp),
        };
        let pending = record
            .pending_secret
            .as_deref()
            .ok_or(AuthError::TwoFactorNotSetUp)?;
        let secret = cipher
            .decrypt(&user.id, pending)
            .map_err(|_| AuthError::TwoFactorUnavailable("a pending secret does not decrypt"))?;
        let step = match codes::classify(code) {
            Some(Code::Totp(code)) => codes::matching_step(&secret, &code, self.now_secs()),
            _ => None,
        };
        let Some(step) = step else {
            self.record(
                SecurityEvent::from_request(EventType::MfaChallengeFailed, ctx)
                    .user(&user.id)
                    .reason("wrong_setup_code"),
            )
            .await;
            return Err(AuthError::TwoFactorInvalidCode);
        };
        let backup_codes = codes::new_backup_codes();
        let hashes: Vec<String> = backup_codes
            .iter()
            .map(|c| codes::backup_code_hash(&user.id, &c.replace('-', "")))
            .collect();
        let now = self.clock.now();
        if !self
            .store
            .enable_two_factor(&user.id, pending, step as i64, &hashes, now)
            .await?
        {
            // Another setup replaced the pending secret meanwhile, or another request finished
            // this one: this code is for a secret that is no longer waiting.
            return Err(AuthError::TwoFactorInvalidCode);
        }
        self.record_outcome(
            SecurityEvent::from_request(EventType::MfaEnabled, ctx)
                .user(&user.id)
                .email(&user.email)
                .with("method", "totp"),
        )
        .await?;
        self.notice(user, Template::TwoFactor { enabled: true })
            .await;
        Ok(backup_codes)
    }

    /// `POST /api/2fa/disable`: a TOTP or backup code turns two-factor off.
    pub async fn two_factor_disable(
        &self,
        caller: &Authenticated,
        code: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(), AuthError> {
        let code = required_code(code)?;
        let user = &caller.user;
        let record = match self.store.two_factor(&user.id).await? {
            Some(r) if r.enabled() => r,
            _ => return Err(AuthError::TwoFactorNotEnabled),
        };
        if let Err(wrong) = self.check_code(user, &record, code, ctx).await? {
            self.record(
                SecurityEvent::from_request(EventType::MfaChallengeFailed, ctx)
                    .user(&user.id)
                    .reason(wrong.as_str())
                    .with("during", "disable"),
            )
            .await;
            return Err(AuthError::TwoFactorInvalidCode);
        }
        self.store.disable_two_factor(&user.id).await?;
        self.record_outcome(
            SecurityEvent::from_request(EventType::MfaDisabled, ctx)
                .user(&user.id)
                .email(&user.email)
                .with("by", "user"),
        )
        .await?;
        self.notice(user, Template::TwoFactor { enabled: false })
            .await;
        Ok(())
    }

    /// An admin (dashboard) or operator (CLI) turns a user's two-factor off: for a user who lost
    /// both the device and the backup codes. `ctx` is the admin's request (none for the CLI).
    /// False when it was not on.
    pub async fn two_factor_disable_for(
        &self,
        user: &UserRecord,
        by: DisabledBy,
        ctx: Option<&RequestContext>,
        admin_id: Option<&str>,
    ) -> Result<bool, AuthError> {
        if !self.store.disable_two_factor(&user.id).await? {
            return Ok(false);
        }
        let event = match ctx {
            Some(ctx) => SecurityEvent::from_request(EventType::MfaDisabled, ctx),
            None => SecurityEvent::new(EventType::MfaDisabled),
        };
        let mut event = event
            .user(&user.id)
            .email(&user.email)
            .with("by", by.as_str());
        if let Some(admin_id) = admin_id {
            event = event.with("adminId", admin_id);
        }
        self.record_outcome(event).await?;
        self.notice(user, Template::TwoFactor { enabled: false })
            .await;
        Ok(true)
    }

    /// Checks a code against the user's active secret and backup codes, using it up when right:
    /// `Ok(Err(why))` for a wrong one.
    async fn check_code(
        &self,
        user: &UserRecord,
        record: &TwoFactorRecord,
        code: &str,
        ctx: &RequestContext,
    ) -> Result<Result<Passed, Wrong>, AuthError> {
        match codes::classify(code) {
            None => Ok(Err(Wrong::Malformed)),
            Some(Code::Totp(code)) => {
                let stored = record
                    .secret
                    .as_deref()
                    .ok_or(AuthError::TwoFactorNotEnabled)?;
                let secret = self.cipher()?.decrypt(&user.id, stored).map_err(|_| {
                    AuthError::TwoFactorUnavailable("a stored secret does not decrypt")
                })?;
                let Some(step) = codes::matching_step(&secret, &code, self.now_secs()) else {
                    return Ok(Err(Wrong::Mismatch));
                };
                if self.store.accept_totp_step(&user.id, step as i64).await? {
                    Ok(Ok(Passed::Totp))
                } else {
                    Ok(Err(Wrong::Replayed))
                }
            }
            Some(Code::Backup(code)) => {
                let hash = codes::backup_code_hash(&user.id, &code);
                if !self.store.use_backup_code(&user.id, &hash).await? {
                    return Ok(Err(Wrong::UnknownBackupCode));
                }
                let left = record.backup_codes.len().saturating_sub(1);
                self.record(
                    SecurityEvent::from_request(EventType::MfaBackupCodeUsed, ctx)
                        .user(&user.id)
                        .email(&user.email)
                        .with("remaining", left),
                )
                .await;
                Ok(Ok(Passed::BackupCode))
            }
        }
    }

    /// `POST /api/2fa/verify`: the second step. The temp token is taken for the time this
    /// request decides, so two requests cannot both use it; a wrong code puts it back, counted.
    /// Answers the session and, for a provider sign-in, whether it created the account.
    pub async fn two_factor_verify(
        &self,
        temp_token: Option<&str>,
        code: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<(AuthSuccess, Option<bool>), AuthError> {
        let temp_token = match temp_token.map(str::trim) {
            Some(t) if !t.is_empty() => t,
            _ => {
                return Err(ValidationError::new("tempToken", "tempToken is required").into());
            }
        };
        let code = required_code(code)?;
        let ip = ip_subject(ctx.client.ip);
        // The address's login limits first (counted once per code, like a login): a flood of
        // made-up tokens or guessed codes is refused like one of logins.
        self.admit_ip(&ip, ctx).await?;
        let Some(challenge) = self.two_factor.challenges.take(temp_token).await else {
            self.record_outcome(
                SecurityEvent::from_request(EventType::MfaChallengeFailed, ctx)
                    .reason("token_invalid"),
            )
            .await?;
            return Err(AuthError::TwoFactorTokenExpired);
        };
        let result = self
            .verify_challenge(temp_token, &challenge, code, ctx)
            .await;
        if let Err(e) = &result
            && !matches!(
                e,
                AuthError::TwoFactorInvalidCode | AuthError::TwoFactorTokenExpired
            )
        {
            // Not the code's fault (the store or the log failed): the token stays usable, uncounted.
            self.two_factor
                .challenges
                .restore(temp_token, challenge)
                .await;
        }
        result
    }

    async fn verify_challenge(
        &self,
        temp_token: &str,
        challenge: &Challenge,
        code: &str,
        ctx: &RequestContext,
    ) -> Result<(AuthSuccess, Option<bool>), AuthError> {
        let Some(user) = self.store.user_by_id(&challenge.user_id).await? else {
            return Err(AuthError::TwoFactorTokenExpired);
        };
        let record = match self.store.two_factor(&user.id).await? {
            Some(r) if r.enabled() => r,
            // Turned off meanwhile: the sign-in starts over, without a second step.
            _ => return Err(AuthError::TwoFactorTokenExpired),
        };
        let account = Email::key_of(&user.email);
        let ip = ip_subject(ctx.client.ip);
        let locked = match account.as_deref() {
            Some(account) => self.limits.account_locked(account).await.is_some(),
            None => false,
        };
        let verdict = if locked {
            Err(Wrong::AccountLocked)
        } else {
            self.check_code(&user, &record, code, ctx).await?
        };
        let passed = match verdict {
            Ok(passed) => passed,
            Err(wrong) => {
                if wrong != Wrong::AccountLocked
                    && let Some(account) = account.as_deref()
                {
                    self.count_failure(Some(&user), account, &ip, ctx).await;
                }
                let alive = self
                    .two_factor
                    .challenges
                    .put_back(temp_token, challenge.clone())
                    .await;
                self.record_outcome(
                    SecurityEvent::from_request(EventType::MfaChallengeFailed, ctx)
                        .user(&user.id)
                        .email(&user.email)
                        .reason(wrong.as_str())
                        .with("failures", challenge.failures + 1)
                        .with("tokenRevoked", !alive),
                )
                .await?;
                return Err(AuthError::TwoFactorInvalidCode);
            }
        };
        if let Some(account) = account.as_deref() {
            self.limits.login_succeeded(account).await;
        }
        let now = self.clock.now();
        let (success, records_login, is_new_user) = match &challenge.method {
            SignInMethod::Password => (
                SecurityEvent::from_request(EventType::LoginSuccess, ctx),
                true,
                None,
            ),
            SignInMethod::Provider {
                provider,
                issuer,
                flow,
                is_new_user,
                linked,
            } => (
                SecurityEvent::from_request(provider_success(provider), ctx)
                    .with("provider", provider.as_str())
                    .with("issuer", issuer.as_str())
                    .with("flow", flow.as_str())
                    .with("isNewUser", *is_new_user)
                    .with("linked", *linked),
                false,
                Some(*is_new_user),
            ),
        };
        let success = success
            .user(&user.id)
            .email(&user.email)
            .with("secondFactor", passed.as_str());
        let user = if records_login {
            UserRecord {
                last_login: Some(now),
                ..user
            }
        } else {
            user
        };
        let event_type = if records_login {
            EventType::LoginFailed
        } else {
            provider_failure(&challenge.method)
        };
        match self
            .start_session(&user, ctx, now, records_login, Some(success))
            .await
        {
            Ok(tokens) => Ok((AuthSuccess { user, tokens }, is_new_user)),
            Err(e) => {
                self.session_failed(event_type, &user, ctx, &e).await;
                Err(e)
            }
        }
    }

    /// The address's login limit (see [`crate::limits::Limits::admit_login`]).
    async fn admit_ip(&self, ip: &str, ctx: &RequestContext) -> Result<(), AuthError> {
        match self.limits.admit_login(ip, None).await {
            Ok(_) => Ok(()),
            Err(refusal) => Err(self.refusal(refusal, ctx).await),
        }
    }

    async fn refusal(&self, refusal: Refusal, ctx: &RequestContext) -> AuthError {
        match refusal {
            Refusal::Exceeded(exceeded) => self.limited(exceeded, ctx, exceeded.limit.name()).await,
            Refusal::IpBlocked(wait) => {
                let exceeded = Exceeded {
                    limit: Limit::LoginPerIp,
                    max: 0,
                    window_secs: wait.as_secs(),
                    retry_after_secs: wait.as_secs().max(1),
                };
                self.limited(exceeded, ctx, "ip_blocked").await
            }
        }
    }
}

/// The success event of a provider's sign-in.
fn provider_success(provider: &str) -> EventType {
    crate::auth::oidc::ProviderKind::parse(provider).success()
}

fn provider_failure(method: &SignInMethod) -> EventType {
    match method {
        SignInMethod::Password => EventType::LoginFailed,
        SignInMethod::Provider { provider, .. } => {
            crate::auth::oidc::ProviderKind::parse(provider).failure()
        }
    }
}
