//! The authorization-code flow with the `oauth2` crate: the redirect to the provider (state,
//! nonce, PKCE S256) and the back-channel exchange of the code for an ID token.

use base64::Engine;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use super::error::GoogleError;
use super::id_token::Rejection;
use super::provider::ProviderMetadata;

/// The OpenID part of a token response: the ID token beside the access token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default)]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type CodeClient = oauth2::Client<
    BasicErrorResponse,
    StandardTokenResponse<IdTokenField, BasicTokenType>,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// What the callback needs from the authorize step; stored single-use under the state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
    /// Hex SHA-256 of the browser binding: the value of the cookie set on the browser that
    /// started the flow (RFC 6749 §10.12). A pending state stored without one never completes.
    pub binding_hash: String,
}

impl Pending {
    /// Whether `binding` (the callback's cookie) is the one this flow was started with; in
    /// constant time.
    pub fn bound_to(&self, binding: Option<&str>) -> bool {
        let Some(binding) = binding.filter(|b| !b.is_empty() && b.len() <= 128) else {
            return false;
        };
        bool::from(
            binding_hash(binding)
                .as_bytes()
                .ct_eq(self.binding_hash.as_bytes()),
        )
    }
}

fn binding_hash(binding: &str) -> String {
    hex::encode(Sha256::digest(binding.as_bytes()))
}

/// A started authorization: where to send the browser, and what to keep.
pub struct Authorization {
    pub url: Url,
    pub state: String,
    pub pending: Pending,
    /// For the starting browser's cookie only; never stored.
    pub binding: String,
}

pub struct CodeFlow {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub redirect_uri: Url,
    pub hosted_domain: Option<String>,
}

/// 256 bits from the OS, base64url: for `state` and `nonce`.
fn random_value() -> String {
    let bytes: [u8; 32] = crate::auth::os_random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl CodeFlow {
    fn client(&self, metadata: &ProviderMetadata) -> CodeClient {
        let mut client = oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(metadata.authorization_endpoint.clone()))
            .set_token_uri(TokenUrl::from_url(metadata.token_endpoint.clone()))
            .set_redirect_uri(RedirectUrl::from_url(self.redirect_uri.clone()));
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        if metadata.secret_in_body {
            client = client.set_auth_type(AuthType::RequestBody);
        }
        client
    }

    /// The provider URL to send the browser to, its `state`, what the callback will need, and the
    /// browser binding: a random value for the starting browser's cookie, of which the pending
    /// state keeps only the hash.
    pub fn authorization(&self, metadata: &ProviderMetadata) -> Authorization {
        let state = random_value();
        let nonce = random_value();
        let binding = random_value();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client(metadata);
        let mut request = client
            .authorize_url(|| CsrfToken::new(state.clone()))
            .add_scope(Scope::new("openid".into()))
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .add_extra_param("nonce", nonce.clone());
        if let Some(domain) = &self.hosted_domain {
            // Only a hint for Google's account chooser; the `hd` claim is what is enforced.
            request = request.add_extra_param("hd", domain.clone());
        }
        let (url, _) = request.url();
        let pending = Pending {
            verifier: verifier.secret().clone(),
            nonce,
            binding_hash: binding_hash(&binding),
        };
        Authorization {
            url,
            state,
            pending,
            binding,
        }
    }

    /// Exchanges `code` (with the PKCE verifier) for the ID token.
    pub async fn exchange(
        &self,
        metadata: &ProviderMetadata,
        http: &reqwest::Client,
        code: &str,
        verifier: String,
    ) -> Result<String, GoogleError> {
        let response = self
            .client(metadata)
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(body) => {
                    // The provider's error code only; never the code or the response body.
                    tracing::warn!(error = %body.error().as_ref(), "token endpoint refused the authorization code");
                    GoogleError::Rejected(Rejection::CodeRejected)
                }
                RequestTokenError::Request(e) => {
                    GoogleError::ProviderUnavailable(format!("token endpoint: {e}"))
                }
                RequestTokenError::Parse(_, _) => {
                    GoogleError::ProviderUnavailable("token endpoint: response not understood".into())
                }
                RequestTokenError::Other(what) => {
                    GoogleError::ProviderUnavailable(format!("token endpoint: {what}"))
                }
            })?;
        response
            .extra_fields()
            .id_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or(GoogleError::Rejected(Rejection::Malformed))
    }
}
