//! Google sign-in, and through `OIDC_ISSUER_URL` any OpenID provider in Google's place: ID-token
//! verification against the provider's keys, the authorization-code flow, and the accounts the
//! identities sign in as (`sign_in`). See docs/API.md "Google" and docs/SECURITY.md group E.

mod code_flow;
pub mod error;
pub mod id_token;
mod jwks;
pub(crate) mod one_time;
mod provider;
pub mod settings;
mod sign_in;

use std::sync::Arc;

use url::Url;

pub use error::GoogleError;
pub use id_token::{Rejection, VerifiedIdToken};
pub use settings::setting_problems;
pub use sign_in::{CallbackParams, Flow, GoogleOutcome, Started};

use code_flow::CodeFlow;
use id_token::ClaimPolicy;
use jwks::{JwksCache, KeyError};
use one_time::OneTimeStore;
use provider::Provider;
use settings::OidcSettings;

use crate::clock::Clock;
use crate::config::Settings;
use crate::redis_link::RedisLink;

/// Which provider a [`GoogleSignIn`] signs in with: its name in events, and its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Google, or the OpenID provider of `OIDC_ISSUER_URL`.
    Google,
    /// Sign in with Apple: identity tokens only (no code flow here), events `apple_*`.
    Apple,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Google => "google",
            Self::Apple => "apple",
        }
    }

    pub fn success(self) -> crate::security_log::EventType {
        match self {
            Self::Google => crate::security_log::EventType::OauthSuccess,
            Self::Apple => crate::security_log::EventType::AppleSuccess,
        }
    }

    pub fn failure(self) -> crate::security_log::EventType {
        match self {
            Self::Google => crate::security_log::EventType::OauthFailed,
            Self::Apple => crate::security_log::EventType::AppleFailed,
        }
    }

    /// The provider of a name from [`ProviderKind::name`].
    pub fn parse(name: &str) -> Self {
        if name == "apple" {
            Self::Apple
        } else {
            Self::Google
        }
    }
}

/// Everything an OpenID sign-in needs, built once at start: Google's when `GOOGLE_CLIENT_ID` is
/// set, Apple's when `APPLE_CLIENT_ID` is (the same checks, keys cache and linking rules).
pub struct GoogleSignIn {
    kind: ProviderKind,
    policy: ClaimPolicy,
    provider: Provider,
    jwks: JwksCache,
    one_time: OneTimeStore,
    http: reqwest::Client,
    clock: Clock,
    /// `None` without `GOOGLE_REDIRECT_URI`.
    code_flow: Option<CodeFlow>,
    frontend_url: Option<Url>,
}

impl GoogleSignIn {
    /// `None` when `GOOGLE_CLIENT_ID` is not set. Expects `Settings::problems()` to be empty.
    pub fn from_settings(
        settings: &Settings,
        redis: Option<Arc<RedisLink>>,
        clock: Clock,
    ) -> anyhow::Result<Option<Self>> {
        let Some(oidc) = OidcSettings::from_settings(settings)? else {
            return Ok(None);
        };
        let code_flow = match (&oidc.redirect_uri, oidc.client_ids.first()) {
            (Some(redirect_uri), Some(client_id)) => Some(CodeFlow {
                client_id: client_id.clone(),
                client_secret: oidc.client_secret.clone(),
                redirect_uri: redirect_uri.clone(),
                hosted_domain: oidc.hosted_domain.clone(),
            }),
            _ => None,
        };
        Ok(Some(Self {
            kind: ProviderKind::Google,
            policy: ClaimPolicy {
                issuers: oidc.accepted_issuers.clone(),
                canonical_issuer: oidc.issuer.clone(),
                client_ids: oidc.client_ids.clone(),
                hosted_domain: oidc.hosted_domain.clone(),
            },
            provider: Provider::new(&oidc, clock.clone())?,
            jwks: JwksCache::new(clock.clone()),
            one_time: OneTimeStore::new(redis, &settings.redis_key_prefix, clock.clone()),
            http: provider::http_client()?,
            clock,
            code_flow,
            frontend_url: oidc.frontend_url,
        }))
    }

    /// Sign in with Apple; `None` when `APPLE_CLIENT_ID` is not set.
    pub fn apple_from_settings(
        settings: &Settings,
        redis: Option<Arc<RedisLink>>,
        clock: Clock,
    ) -> anyhow::Result<Option<Self>> {
        let Some(apple) = OidcSettings::for_apple(settings)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            kind: ProviderKind::Apple,
            policy: ClaimPolicy {
                issuers: apple.accepted_issuers.clone(),
                canonical_issuer: apple.issuer.clone(),
                client_ids: apple.client_ids.clone(),
                hosted_domain: None,
            },
            provider: Provider::new(&apple, clock.clone())?,
            jwks: JwksCache::new(clock.clone()),
            // Apart from Google's, so a token's replay marker is per provider.
            one_time: OneTimeStore::in_namespace(
                redis,
                &settings.redis_key_prefix,
                "apple",
                clock.clone(),
            ),
            http: provider::http_client()?,
            clock,
            code_flow: None,
            frontend_url: None,
        }))
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// Where browser flows end; 503 without `FRONTEND_URL`.
    pub fn frontend_url(&self) -> Result<&Url, GoogleError> {
        self.frontend_url.as_ref().ok_or(GoogleError::NotConfigured(
            "Google sign-in redirects need FRONTEND_URL",
        ))
    }

    /// Verifies an ID token: header, signature against the provider's key, then the claims.
    /// `nonce` is the one this flow set, if it set one.
    pub async fn verify(
        &self,
        credential: &str,
        nonce: Option<&str>,
    ) -> Result<VerifiedIdToken, GoogleError> {
        let kid = id_token::header_kid(credential)?;
        let metadata = self
            .provider
            .metadata(&self.http)
            .await
            .map_err(|e| GoogleError::ProviderUnavailable(e.0))?;
        let key = self
            .jwks
            .key(&self.http, &metadata.jwks_uri, &kid)
            .await
            .map_err(|e| match e {
                KeyError::UnknownKid => GoogleError::Rejected(Rejection::UnknownKid),
                KeyError::Unavailable(why) => GoogleError::ProviderUnavailable(why),
            })?;
        let claims = id_token::verify_signature(credential, &key)?;
        Ok(id_token::check_claims(
            claims,
            &self.policy,
            self.clock.now().timestamp(),
            nonce,
        )?)
    }
}
