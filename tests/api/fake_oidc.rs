//! A fake OpenID provider standing in for Google: discovery, a JWKS with Cache-Control, and a
//! token endpoint that checks PKCE, served over real HTTP on 127.0.0.1:0, signing ID tokens with
//! real RSA keys generated here. It counts JWKS fetches and records token requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::task::JoinHandle;

use crate::helpers::TestApp;

pub const CLIENT_ID: &str = "flux-web.apps.example";
pub const OTHER_CLIENT_ID: &str = "flux-mobile.apps.example";
pub const CLIENT_SECRET: &str = "test-client-secret-7f3a9c";
pub const REDIRECT_URI: &str = "https://auth.flux.test/api/auth/google/callback";
pub const FRONTEND_URL: &str = "https://app.flux.test/auth/done";

/// An RSA key pair with the forms the tests need.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub private_pem: String,
    pub public_pem: String,
    pub n: String,
    pub e: String,
}

impl TestKey {
    pub fn jwk(&self) -> Value {
        json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": self.n, "e": self.e })
    }
}

/// Keys are generated once per test binary (2048-bit RSA generation takes a while).
pub fn test_keys() -> &'static [TestKey] {
    static KEYS: OnceLock<Vec<TestKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..4)
            .map(|i| {
                let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
                let public = private.to_public_key();
                let b64 =
                    |bytes: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                TestKey {
                    kid: format!("test-key-{i}"),
                    private_pem: private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                    public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
                    n: b64(public.n().to_bytes_be()),
                    e: b64(public.e().to_bytes_be()),
                }
            })
            .collect()
    })
}

/// A code the token endpoint will exchange once, for `id_token`, if the PKCE verifier matches.
struct IssuedCode {
    challenge: String,
    redirect_uri: String,
    id_token: String,
}

/// What the token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub form: HashMap<String, String>,
    pub authorization: Option<String>,
}

pub struct ProviderState {
    pub issuer: String,
    published: Mutex<Vec<Value>>,
    cache_control: Mutex<String>,
    jwks_fetches: AtomicUsize,
    codes: Mutex<HashMap<String, IssuedCode>>,
    token_requests: Mutex<Vec<TokenRequest>>,
}

pub struct FakeProvider {
    pub issuer: String,
    pub state: Arc<ProviderState>,
    handle: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl FakeProvider {
    /// Serves discovery, the JWKS (publishing `test_keys()[0]`) and the token endpoint.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(ProviderState {
            issuer: issuer.clone(),
            published: Mutex::new(vec![test_keys()[0].jwk()]),
            cache_control: Mutex::new("public, max-age=3600, must-revalidate".into()),
            jwks_fetches: AtomicUsize::new(0),
            codes: Mutex::new(HashMap::new()),
            token_requests: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .with_state(state.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            issuer,
            state,
            handle,
        }
    }

    pub fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.issuer)
    }

    /// Replaces the published keys (rotation).
    pub fn publish(&self, keys: &[&TestKey]) {
        *self.state.published.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    /// Replaces the published keys with these JWKs (an EC key among them).
    pub fn publish_jwks(&self, jwks: Vec<Value>) {
        *self.state.published.lock().unwrap() = jwks;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.token_requests.lock().unwrap().clone()
    }

    /// Lets the token endpoint exchange `code` once for `id_token`, given the right verifier.
    pub fn issue_code(&self, code: &str, challenge: &str, redirect_uri: &str, id_token: &str) {
        self.state.codes.lock().unwrap().insert(
            code.to_owned(),
            IssuedCode {
                challenge: challenge.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                id_token: id_token.to_owned(),
            },
        );
    }

    /// Valid claims for `sub`/`email` as of the app's clock, with `patch` applied (a `null`
    /// removes the claim).
    pub fn claims(&self, app: &TestApp, sub: &str, email: &str, patch: Value) -> Value {
        let now = app.clock().now().timestamp();
        let mut claims = json!({
            "iss": self.issuer, "aud": CLIENT_ID, "azp": CLIENT_ID, "sub": sub, "email": email,
            "email_verified": true, "name": "Test Person", "iat": now, "exp": now + 3600,
        });
        for (key, value) in patch.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        claims
    }

    /// An ID token signed with the published key.
    pub fn id_token(&self, app: &TestApp, sub: &str, email: &str, patch: Value) -> String {
        sign(
            &self.claims(app, sub, email, patch),
            &test_keys()[0],
            &test_keys()[0].kid,
        )
    }
}

/// RS256 with `key`, announcing `kid`.
pub fn sign(claims: &Value, key: &TestKey, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let encoding = EncodingKey::from_rsa_pem(key.private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &encoding).unwrap()
}

/// The PKCE S256 challenge of a verifier.
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
}

async fn discovery(State(state): State<Arc<ProviderState>>) -> Json<Value> {
    let base = &state.issuer;
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
}

async fn jwks(State(state): State<Arc<ProviderState>>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = state.published.lock().unwrap().clone();
    let cache_control = state.cache_control.lock().unwrap().clone();
    (
        [(header::CACHE_CONTROL, cache_control)],
        Json(json!({ "keys": keys })),
    )
        .into_response()
}

async fn token(
    State(state): State<Arc<ProviderState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    state.token_requests.lock().unwrap().push(TokenRequest {
        form: form.clone(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned()),
    });
    let invalid = |what: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_grant", "error_description": what })),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return invalid("grant_type");
    }
    let code = form.get("code").cloned().unwrap_or_default();
    // Single use, like a real provider.
    let Some(issued) = state.codes.lock().unwrap().remove(&code) else {
        return invalid("unknown code");
    };
    if form.get("redirect_uri") != Some(&issued.redirect_uri) {
        return invalid("redirect_uri");
    }
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if s256(&verifier) != issued.challenge {
        return invalid("PKCE verification failed");
    }
    Json(json!({
        "access_token": "provider-access-token",
        "token_type": "Bearer",
        "expires_in": 3599,
        "scope": "openid email profile",
        "id_token": issued.id_token,
    }))
    .into_response()
}

/// Settings that point the app at the provider at `issuer`, with two trusted client ids.
pub fn configure(settings: &mut flux_auth::config::Settings, issuer: &str) {
    settings.google_client_id = vec![CLIENT_ID.into(), OTHER_CLIENT_ID.into()];
    settings.google_client_secret = Some(secrecy::SecretString::from(CLIENT_SECRET));
    settings.google_redirect_uri = Some(REDIRECT_URI.into());
    settings.frontend_url = Some(FRONTEND_URL.into());
    settings.oidc_issuer_url = Some(issuer.to_owned());
}
