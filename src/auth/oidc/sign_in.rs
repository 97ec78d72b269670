//! The three ways in (an ID token from Google Identity Services, the authorization-code flow,
//! GIS redirect mode) and what they share: the account the identity signs in as, the linking
//! rules, the events, and the session.
//!
//! Linking (docs/SECURITY.md E5/E6): an identity is found by (`iss`, `sub`) only. An unknown identity
//! whose email no account has gets a new account. One whose email an account has is linked to it
//! only when that account's email is verified (otherwise 409 `AUTH_ACCOUNT_EXISTS_UNVERIFIED`,
//! and the account is left untouched: a pre-registered address is never a way in), the provider
//! is authoritative for that address (`@gmail.com`, or a verified email of the Workspace domain
//! `hd`) and the account has no other identity at this provider; otherwise 409, and the user
//! signs in with the password instead. A later email change at the provider changes neither
//! account.

use std::time::Duration;

use chrono::Utc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::GoogleSignIn;
use super::code_flow::Pending;
use super::error::GoogleError;
use super::id_token::{LEEWAY_SECS, Rejection, VerifiedIdToken};
use crate::auth::AuthError;
use crate::auth::service::{AuthService, SignIn};
use crate::auth::two_factor::SignInMethod;
use crate::domain::GOOGLE_ISSUER;
use crate::domain::{Email, Name, UserRecord, UserType, ValidationError};
use crate::limits::{Limit, ip_subject};
use crate::security_log::event::RequestContext;
use crate::security_log::{EventType, SecurityEvent};
use crate::store::{IdentityRecord, StoreError};

/// How long a started authorization may take to come back.
const STATE_TTL: Duration = Duration::from_secs(600);
/// Replay markers live until the token expires; never longer than this.
const MAX_REPLAY_TTL_SECS: i64 = 24 * 3600;
const STATE_KIND: &str = "state";
const USED_TOKEN_KIND: &str = "used";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// `POST /api/auth/google {credential}`.
    IdToken,
    /// `GET /api/auth/google/authorize` then `GET /api/auth/google/callback`.
    Code,
    /// `POST /api/auth/google/callback` from Google Identity Services' redirect mode.
    GisRedirect,
}

impl Flow {
    fn as_str(self) -> &'static str {
        match self {
            Self::IdToken => "id_token",
            Self::Code => "code",
            Self::GisRedirect => "gis_redirect",
        }
    }
}

/// The query of `GET /api/auth/google/callback`, and the browser's binding cookie.
#[derive(Debug, Default)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub binding: Option<String>,
}

/// A started code flow: the provider URL for the browser, and the binding value for its cookie
/// (kept for `ttl`, as long as the pending state).
pub struct Started {
    pub url: url::Url,
    pub binding: String,
    pub ttl: Duration,
}

pub struct GoogleOutcome {
    /// The session, or the second step it waits for when the user has two-factor sign-in on.
    pub sign_in: SignIn,
    pub is_new_user: bool,
}

/// Where an identity lands.
struct Account {
    user: UserRecord,
    is_new: bool,
    linked: bool,
}

impl GoogleSignIn {
    /// `POST /api/auth/google {credential}`.
    pub async fn sign_in(
        &self,
        auth: &AuthService,
        credential: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<GoogleOutcome, GoogleError> {
        let result = async {
            auth.enforce(Limit::LoginPerIp, &ip_subject(ctx.client.ip), ctx)
                .await?;
            let credential = credential.filter(|c| !c.trim().is_empty()).ok_or_else(|| {
                AuthError::Validation(ValidationError::new("credential", "credential is required"))
            })?;
            let token = self.verify(credential.trim(), None).await?;
            self.complete(auth, credential.trim(), token, Flow::IdToken, ctx)
                .await
        }
        .await;
        self.recorded(auth, Flow::IdToken, ctx, result).await
    }

    /// `POST /api/auth/apple {identityToken, user, nonce}`: an Apple identity token, checked like
    /// Google's ID token (with `nonce` when the client sent one). `name` (from the body's `user`)
    /// names an account this sign-in creates, and nothing else: Apple sends it on the first
    /// sign-in only, and the email comes from the token alone.
    pub async fn apple_sign_in(
        &self,
        auth: &AuthService,
        identity_token: Option<&str>,
        nonce: Option<&str>,
        name: Option<String>,
        ctx: &RequestContext,
    ) -> Result<GoogleOutcome, GoogleError> {
        let result = async {
            auth.enforce(Limit::LoginPerIp, &ip_subject(ctx.client.ip), ctx)
                .await?;
            let credential = identity_token
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    AuthError::Validation(ValidationError::new(
                        "identityToken",
                        "identityToken is required",
                    ))
                })?;
            let nonce = nonce.map(str::trim).filter(|n| !n.is_empty());
            let mut token = self.verify(credential, nonce).await?;
            token.name = token.name.or(name);
            self.complete(auth, credential, token, Flow::IdToken, ctx)
                .await
        }
        .await;
        self.recorded(auth, Flow::IdToken, ctx, result).await
    }

    /// `GET /api/auth/google/authorize`: the provider URL, with `state`, `nonce` and the PKCE
    /// challenge, and the browser binding for the starting browser's cookie; the verifier, the
    /// nonce and the binding's hash wait for the callback under the state.
    pub async fn authorize(
        &self,
        auth: &AuthService,
        ctx: &RequestContext,
    ) -> Result<Started, GoogleError> {
        let flow = self.code_flow()?;
        self.frontend_url()?;
        // Each call stores a pending state: counted like a login, so it cannot be flooded.
        auth.enforce(Limit::LoginPerIp, &ip_subject(ctx.client.ip), ctx)
            .await?;
        let metadata = self
            .provider
            .metadata(&self.http)
            .await
            .map_err(|e| GoogleError::ProviderUnavailable(e.0))?;
        let started = flow.authorization(&metadata);
        let value =
            serde_json::to_string(&started.pending).map_err(|e| AuthError::Internal(e.into()))?;
        self.one_time
            .put(STATE_KIND, &started.state, &value, STATE_TTL)
            .await;
        Ok(Started {
            url: started.url,
            binding: started.binding,
            ttl: STATE_TTL,
        })
    }

    /// `GET /api/auth/google/callback`: takes the state (once), exchanges the code with the PKCE
    /// verifier, and verifies the ID token with the nonce set at authorize.
    pub async fn callback(
        &self,
        auth: &AuthService,
        params: CallbackParams,
        ctx: &RequestContext,
    ) -> Result<GoogleOutcome, GoogleError> {
        let result = async {
            let flow = self.code_flow()?;
            self.frontend_url()?;
            auth.enforce(Limit::LoginPerIp, &ip_subject(ctx.client.ip), ctx)
                .await?;
            let state = params
                .state
                .as_deref()
                .filter(|s| !s.is_empty() && s.len() <= 512);
            let pending = match state {
                Some(state) => self.one_time.take(STATE_KIND, state).await,
                None => None,
            };
            let pending: Pending = pending
                .and_then(|p| serde_json::from_str(&p).ok())
                .ok_or(GoogleError::StateInvalid)?;
            // The state is used up either way: a callback begun in another browser (login
            // CSRF, RFC 6749 §10.12) completes nowhere.
            if !pending.bound_to(params.binding.as_deref()) {
                return Err(GoogleError::StateUnbound);
            }
            if params.error.is_some() {
                return Err(GoogleError::Denied);
            }
            let code = params
                .code
                .as_deref()
                .filter(|c| !c.is_empty() && c.len() <= 2048)
                .ok_or(GoogleError::MissingCode)?;
            let metadata = self
                .provider
                .metadata(&self.http)
                .await
                .map_err(|e| GoogleError::ProviderUnavailable(e.0))?;
            let id_token = flow
                .exchange(&metadata, &self.http, code, pending.verifier)
                .await?;
            let token = self.verify(&id_token, Some(&pending.nonce)).await?;
            self.complete(auth, &id_token, token, Flow::Code, ctx).await
        }
        .await;
        self.recorded(auth, Flow::Code, ctx, result).await
    }

    /// `POST /api/auth/google/callback` (GIS redirect mode): the `g_csrf_token` cookie must equal
    /// the form field (Google's double-submit check), then the credential is verified.
    pub async fn gis_callback(
        &self,
        auth: &AuthService,
        credential: Option<&str>,
        csrf_field: Option<&str>,
        csrf_cookie: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<GoogleOutcome, GoogleError> {
        let result = async {
            self.frontend_url()?;
            auth.enforce(Limit::LoginPerIp, &ip_subject(ctx.client.ip), ctx)
                .await?;
            match (
                csrf_field.filter(|v| !v.is_empty()),
                csrf_cookie.filter(|v| !v.is_empty()),
            ) {
                (Some(field), Some(cookie)) => {
                    if !bool::from(field.as_bytes().ct_eq(cookie.as_bytes())) {
                        return Err(GoogleError::Csrf("csrf_mismatch"));
                    }
                }
                (None, _) => return Err(GoogleError::Csrf("csrf_field_missing")),
                (_, None) => return Err(GoogleError::Csrf("csrf_cookie_missing")),
            }
            let credential = credential
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .ok_or(GoogleError::Rejected(Rejection::Malformed))?;
            let token = self.verify(credential, None).await?;
            self.complete(auth, credential, token, Flow::GisRedirect, ctx)
                .await
        }
        .await;
        self.recorded(auth, Flow::GisRedirect, ctx, result).await
    }

    fn code_flow(&self) -> Result<&super::CodeFlow, GoogleError> {
        self.code_flow.as_ref().ok_or(GoogleError::NotConfigured(
            "The Google authorization-code flow needs GOOGLE_REDIRECT_URI and FRONTEND_URL",
        ))
    }

    /// After verification: refuse a replayed token, find or create the account, record the
    /// success, start the session.
    async fn complete(
        &self,
        auth: &AuthService,
        credential: &str,
        token: VerifiedIdToken,
        flow: Flow,
        ctx: &RequestContext,
    ) -> Result<GoogleOutcome, GoogleError> {
        let now = self.clock.now();
        let ttl = (token.expires_at + LEEWAY_SECS - now.timestamp()).clamp(1, MAX_REPLAY_TTL_SECS);
        if !self
            .one_time
            .first_use(USED_TOKEN_KIND, credential, Duration::from_secs(ttl as u64))
            .await
        {
            return Err(Rejection::Replayed.into());
        }
        let account = self.account_for(auth, &token, flow, ctx).await?;
        let user = account.user;
        // Success is recorded once the session exists; when it cannot be started, `recorded`
        // records `oauth_failed` with the reason instead.
        let success = SecurityEvent::from_request(self.kind.success(), ctx)
            .user(&user.id)
            .email(&user.email)
            .with("provider", self.kind.name())
            .with("issuer", token.issuer.as_str())
            .with("flow", flow.as_str())
            .with("isNewUser", account.is_new)
            .with("linked", account.linked);
        let method = SignInMethod::Provider {
            provider: self.kind.name().into(),
            issuer: token.issuer.clone(),
            flow: flow.as_str().into(),
            is_new_user: account.is_new,
            linked: account.linked,
        };
        let sign_in = auth.finish_sign_in(user, method, ctx, success).await?;
        Ok(GoogleOutcome {
            sign_in,
            is_new_user: account.is_new,
        })
    }

    /// Records `oauth_failed` for a failure (with the reason; never the credential).
    async fn recorded(
        &self,
        auth: &AuthService,
        flow: Flow,
        ctx: &RequestContext,
        result: Result<GoogleOutcome, GoogleError>,
    ) -> Result<GoogleOutcome, GoogleError> {
        let Err(error) = &result else {
            return result;
        };
        if let GoogleError::ProviderUnavailable(why) = error {
            tracing::warn!(reason = %why, provider = self.kind.name(), "OpenID provider unavailable; sign-in answered 503");
        }
        if let Some(reason) = error.event_reason() {
            let mut event = SecurityEvent::from_request(self.kind.failure(), ctx)
                .reason(reason)
                .with("provider", self.kind.name())
                .with("flow", flow.as_str());
            if let GoogleError::AccountExists { user_id, email, .. }
            | GoogleError::AccountUnverified { user_id, email } = error
            {
                event = event.user(user_id).email(email);
            }
            // The outcome of a sign-in, like a password login's: not kept, not answered.
            auth.record_outcome(event).await?;
        }
        if let GoogleError::AccountUnverified { user_id, .. } = error {
            // The address's owner gets a link that proves it; once verified, this sign-in links.
            auth.verification_for_linking(user_id, ctx).await;
        }
        result
    }

    /// The account `token` signs in as: its linked one, a new one, or (when allowed) the existing
    /// account with its email, now linked.
    async fn account_for(
        &self,
        auth: &AuthService,
        token: &VerifiedIdToken,
        flow: Flow,
        ctx: &RequestContext,
    ) -> Result<Account, GoogleError> {
        let now = self.clock.now();
        let store = &auth.store;
        // Two rounds at most: a lost race with a concurrent sign-in or signup is resolved by
        // looking again, never by overwriting.
        for _ in 0..2 {
            if let Some(user) = store
                .user_by_identity(&token.issuer, &token.subject)
                .await
                .map_err(AuthError::from)?
            {
                store
                    .touch_identity(&token.issuer, &token.subject, Some(&token.email), now)
                    .await
                    .map_err(AuthError::from)?;
                store
                    .set_last_login(&user.id, now)
                    .await
                    .map_err(AuthError::from)?;
                let user = UserRecord {
                    last_login: Some(now),
                    ..user
                };
                return Ok(Account {
                    user,
                    is_new: false,
                    linked: false,
                });
            }
            let email = Email::parse(&token.email)
                .map_err(|_| GoogleError::Rejected(Rejection::EmailMissing))?;
            let identity = IdentityRecord {
                issuer: token.issuer.clone(),
                subject: token.subject.clone(),
                user_id: String::new(),
                email: Some(email.as_str().to_owned()),
                created_at: now,
                last_used_at: now,
            };
            match store.user_by_email(&email).await.map_err(AuthError::from)? {
                None => {
                    let user = new_user(token, &email, now);
                    let identity = IdentityRecord {
                        user_id: user.id.clone(),
                        ..identity
                    };
                    // As at signup, the account's creation is recorded before the account is
                    // written, so an account that exists has its creation event even after a
                    // crash between the two (durably first in sync mode); a failed write is
                    // followed by `signup_failed` naming the event it cancels.
                    let created = SecurityEvent::from_request(EventType::SignupSuccess, ctx)
                        .user(&user.id)
                        .email(&user.email)
                        .with("provider", self.kind.name())
                        .with("flow", flow.as_str());
                    let created_id = created.id.to_string();
                    auth.record_outcome(created).await?;
                    let written = store.insert_user_with_identity(&user, &identity).await;
                    if let Err(e) = &written {
                        let reason = match e {
                            StoreError::Conflict(_) => "email_exists",
                            StoreError::Unavailable(_) => "store_unavailable",
                            _ => "internal_error",
                        };
                        auth.record_outcome(
                            SecurityEvent::from_request(EventType::SignupFailed, ctx)
                                .user(&user.id)
                                .email(&user.email)
                                .reason(reason)
                                .with("provider", self.kind.name())
                                .with("cancels", created_id),
                        )
                        .await?;
                    }
                    match written {
                        Ok(()) => {
                            return Ok(Account {
                                user,
                                is_new: true,
                                linked: false,
                            });
                        }
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => return Err(AuthError::from(e).into()),
                    }
                }
                Some(existing) => {
                    if !existing.email_verified {
                        // Whoever registered this address never proved they own it: entering the
                        // account would hand the real owner an account the registrant holds a
                        // password and sessions for. Nothing of it is read further or changed.
                        return Err(GoogleError::AccountUnverified {
                            user_id: existing.id.clone(),
                            email: existing.email.clone(),
                        });
                    }
                    let linked_here = store
                        .identities_of(&existing.id)
                        .await
                        .map_err(AuthError::from)?
                        .iter()
                        .any(|i| i.issuer == token.issuer);
                    let refuse = |reason| GoogleError::AccountExists {
                        user_id: existing.id.clone(),
                        email: existing.email.clone(),
                        reason,
                    };
                    if linked_here {
                        // Someone else's identity at this provider owns the account: the address
                        // moved between provider accounts. Never a takeover.
                        return Err(refuse("account_linked_to_other_identity"));
                    }
                    // Apple vouches for every address it reports (a relay address is Apple's own).
                    if self.kind == super::ProviderKind::Google && !authoritative(token) {
                        return Err(refuse("account_exists_not_authoritative"));
                    }
                    let identity = IdentityRecord {
                        user_id: existing.id.clone(),
                        ..identity
                    };
                    match store.link_identity(&identity).await {
                        Ok(()) => {}
                        Err(StoreError::Conflict(_) | StoreError::NotFound) => continue,
                        Err(e) => return Err(AuthError::from(e).into()),
                    }
                    store
                        .set_last_login(&existing.id, now)
                        .await
                        .map_err(AuthError::from)?;
                    let user = UserRecord {
                        last_login: Some(now),
                        google_id: existing.google_id.clone().or_else(|| {
                            (token.issuer == GOOGLE_ISSUER).then(|| token.subject.clone())
                        }),
                        ..existing
                    };
                    return Ok(Account {
                        user,
                        is_new: false,
                        linked: true,
                    });
                }
            }
        }
        Err(AuthError::Internal(anyhow::anyhow!(
            "identity sign-in kept racing with concurrent changes"
        ))
        .into())
    }
}

/// Google is authoritative for `@gmail.com`, and for a verified address of a Workspace domain:
/// `hd` set and the address in that domain (stricter than Google asks, so a secondary domain
/// never links silently).
fn authoritative(token: &VerifiedIdToken) -> bool {
    // The canonical domain (lower case, IDNA), so `Ann@Gmail.com` is at gmail.com.
    let Ok(email) = Email::parse(&token.email) else {
        return false;
    };
    let domain = email.domain();
    if domain == "gmail.com" {
        return true;
    }
    token
        .hosted_domain
        .as_deref()
        .is_some_and(|hd| domain == hd || domain.ends_with(&format!(".{hd}")))
}

/// A new account for a first sign-in: a client, no password, the email verified by the provider.
fn new_user(token: &VerifiedIdToken, email: &Email, now: chrono::DateTime<Utc>) -> UserRecord {
    let local_part = email.as_str().split('@').next().unwrap_or_default();
    let name = [token.name.as_deref(), Some(local_part)]
        .into_iter()
        .flatten()
        .find_map(|n| Name::parse(n).ok())
        .map(Name::into_inner)
        .unwrap_or_else(|| "Google user".to_owned());
    let avatar = token
        .picture
        .as_deref()
        .filter(|p| {
            p.starts_with("https://") && p.len() <= 2048 && !p.chars().any(char::is_control)
        })
        .map(str::to_owned);
    UserRecord {
        id: Uuid::new_v4().to_string(),
        email: email.as_str().to_owned(),
        name,
        user_type: UserType::Client,
        password_hash: None,
        google_id: (token.issuer == GOOGLE_ISSUER).then(|| token.subject.clone()),
        email_verified: true,
        avatar,
        created_at: now,
        last_login: Some(now),
        updated_at: now,
        two_factor_enabled: false,
        extra: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(email: &str, hd: Option<&str>) -> VerifiedIdToken {
        VerifiedIdToken {
            issuer: GOOGLE_ISSUER.into(),
            subject: "1".into(),
            email: email.into(),
            hosted_domain: hd.map(str::to_owned),
            name: None,
            picture: None,
            expires_at: 0,
        }
    }

    #[test]
    fn google_is_authoritative_for_gmail_and_its_workspace_domain_only() {
        assert!(authoritative(&token("ann@gmail.com", None)));
        assert!(authoritative(&token(
            "ann@corp.example",
            Some("corp.example")
        )));
        assert!(!authoritative(&token("ann@corp.example", None)));
        assert!(!authoritative(&token(
            "ann@other.example",
            Some("corp.example")
        )));
        assert!(!authoritative(&token("ann@notgmail.com", None)));
        assert!(authoritative(&token("Ann@GMail.com", None)));
    }

    #[test]
    fn new_users_get_a_valid_name() {
        let mut t = token("ann.lee@gmail.com", None);
        t.name = Some("\u{1b}[31m".into());
        let user = new_user(&t, &Email::parse("ann.lee@gmail.com").unwrap(), Utc::now());
        assert_eq!(user.name, "ann.lee");
        assert!(user.password_hash.is_none() && user.email_verified);
        assert_eq!(user.google_id.as_deref(), Some("1"));
    }
}
