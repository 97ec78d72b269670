//! The provider's endpoints: Google's published ones, or those of any OpenID provider read from
//! its discovery document. Also the one outbound HTTP client: timeouts, no redirects, capped
//! bodies, so a slow or hostile endpoint costs a bounded wait and bounded memory.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::settings::OidcSettings;
use crate::clock::Clock;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Discovery documents and key sets are a few KiB; anything near this is not one.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Discovery is re-read this often, so a provider that moves its JWKS is followed.
const METADATA_TTL_SECS: i64 = 24 * 3600;
/// After a failed discovery, requests fail fast for this long instead of each trying again.
const METADATA_RETRY_SECS: i64 = 5;

/// The HTTP client for every call to the provider. Redirects are never followed: a token or key
/// endpoint that redirects is misconfigured or compromised (and oauth2 asks for this).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("flux-auth/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Why the provider could not be asked; for the log, never for a response body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ProviderUnavailable(pub String);

/// GETs a JSON document: 200 only, at most `MAX_DOCUMENT_BYTES`, returning the headers too.
pub async fn get_json<T: DeserializeOwned>(
    http: &reqwest::Client,
    url: &Url,
) -> Result<(T, reqwest::header::HeaderMap), ProviderUnavailable> {
    let fail = |what: String| ProviderUnavailable(format!("GET {url}: {what}"));
    let mut response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(fail(format!("status {}", response.status())));
    }
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(fail("document too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    let value = serde_json::from_slice(&body).map_err(|_| fail("not the expected JSON".into()))?;
    Ok((value, headers))
}

/// Where to send the browser, where to exchange a code, where the signing keys are.
#[derive(Debug, Clone)]
pub struct ProviderMetadata {
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Url,
    /// The token endpoint takes the client secret in the form body rather than Basic auth.
    pub secret_in_body: bool,
}

impl ProviderMetadata {
    /// Google's endpoints as its discovery document publishes them.
    fn google() -> anyhow::Result<Self> {
        Ok(Self {
            authorization_endpoint: Url::parse("https://accounts.google.com/o/oauth2/v2/auth")?,
            token_endpoint: Url::parse("https://oauth2.googleapis.com/token")?,
            jwks_uri: Url::parse("https://www.googleapis.com/oauth2/v3/certs")?,
            secret_in_body: false,
        })
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Option<Vec<String>>,
}

/// Google's fixed endpoints, or a discovery document read on first use and kept for a day.
pub struct Provider {
    issuer: String,
    discovery_url: Option<Url>,
    require_https: bool,
    fixed: Option<Arc<ProviderMetadata>>,
    cached: tokio::sync::Mutex<Cached>,
    clock: Clock,
}

#[derive(Default)]
struct Cached {
    metadata: Option<(Arc<ProviderMetadata>, DateTime<Utc>)>,
    failed_at: Option<DateTime<Utc>>,
}

impl Provider {
    pub fn new(settings: &OidcSettings, clock: Clock) -> anyhow::Result<Self> {
        let fixed = match settings.discovery_url {
            None => Some(Arc::new(ProviderMetadata::google()?)),
            Some(_) => None,
        };
        Ok(Self {
            issuer: settings.issuer.clone(),
            discovery_url: settings.discovery_url.clone(),
            require_https: settings.require_https,
            fixed,
            cached: tokio::sync::Mutex::new(Cached::default()),
            clock,
        })
    }

    pub async fn metadata(
        &self,
        http: &reqwest::Client,
    ) -> Result<Arc<ProviderMetadata>, ProviderUnavailable> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let Some(url) = &self.discovery_url else {
            return Err(ProviderUnavailable("no discovery URL".into()));
        };
        // One discovery at a time; the others wait for its answer instead of asking again.
        let mut cached = self.cached.lock().await;
        let now = self.clock.now();
        if let Some((metadata, fetched_at)) = &cached.metadata
            && now < *fetched_at + chrono::Duration::seconds(METADATA_TTL_SECS)
        {
            return Ok(metadata.clone());
        }
        if let Some(failed_at) = cached.failed_at
            && now < failed_at + chrono::Duration::seconds(METADATA_RETRY_SECS)
        {
            // A stale document still beats none while the provider is briefly away.
            if let Some((metadata, _)) = &cached.metadata {
                return Ok(metadata.clone());
            }
            return Err(ProviderUnavailable("discovery failed moments ago".into()));
        }
        match self.discover(http, url).await {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                cached.metadata = Some((metadata.clone(), now));
                cached.failed_at = None;
                Ok(metadata)
            }
            Err(e) => {
                cached.failed_at = Some(now);
                tracing::warn!(error = %e, "OpenID discovery failed");
                match &cached.metadata {
                    Some((metadata, _)) => Ok(metadata.clone()),
                    None => Err(e),
                }
            }
        }
    }

    async fn discover(
        &self,
        http: &reqwest::Client,
        url: &Url,
    ) -> Result<ProviderMetadata, ProviderUnavailable> {
        let (doc, _): (Discovery, _) = get_json(http, url).await?;
        let bad = |what: &str| ProviderUnavailable(format!("discovery document at {url}: {what}"));
        // OpenID Discovery §4.3: the document must name exactly the issuer we asked about, or
        // whoever served it could mint tokens for another issuer.
        if doc.issuer != self.issuer {
            return Err(bad("issuer does not match OIDC_ISSUER_URL"));
        }
        if let Some(algs) = &doc.id_token_signing_alg_values_supported
            && !algs.iter().any(|a| a == "RS256")
        {
            return Err(bad("provider does not sign ID tokens with RS256"));
        }
        let endpoint = |raw: &str, name: &str| -> Result<Url, ProviderUnavailable> {
            let url = Url::parse(raw).map_err(|_| bad(&format!("{name} is not a URL")))?;
            let https = url.scheme() == "https";
            if !(https || (url.scheme() == "http" && !self.require_https)) {
                return Err(bad(&format!("{name} must be https")));
            }
            Ok(url)
        };
        let methods = doc
            .token_endpoint_auth_methods_supported
            .unwrap_or_default();
        let basic = methods.is_empty() || methods.iter().any(|m| m == "client_secret_basic");
        Ok(ProviderMetadata {
            authorization_endpoint: endpoint(
                &doc.authorization_endpoint,
                "authorization_endpoint",
            )?,
            token_endpoint: endpoint(&doc.token_endpoint, "token_endpoint")?,
            jwks_uri: endpoint(&doc.jwks_uri, "jwks_uri")?,
            secret_in_body: !basic && methods.iter().any(|m| m == "client_secret_post"),
        })
    }
}
