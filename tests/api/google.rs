//! Google sign-in (docs/SECURITY.md group E) against a fake OpenID provider over real HTTP:
//! ID-token checks, the authorization-code flow with PKCE, GIS redirect mode, linking rules, the
//! JWKS cache, and the events of each outcome.

use std::time::Duration;

use base64::Engine;
use flux_auth::config::Settings;
use flux_auth::security_log::SecurityEvent;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_oidc::{self, CLIENT_ID, CLIENT_SECRET, FRONTEND_URL, FakeProvider, REDIRECT_URI};
use crate::helpers::*;

pub(crate) async fn google_app(
    backend: Backend,
    provider: &FakeProvider,
    tweak: impl FnOnce(&mut Settings) + 'static,
) -> Option<TestApp> {
    let issuer = provider.issuer.clone();
    TestApp::builder(backend)
        .settings(move |s| {
            fake_oidc::configure(s, &issuer);
            tweak(s);
        })
        .try_spawn()
        .await
}

pub(crate) async fn sign_in(app: &TestApp, credential: &str) -> reqwest::Response {
    app.post_json("/api/auth/google", &json!({ "credential": credential }))
        .await
}

async fn signed_in(app: &TestApp, credential: &str) -> Value {
    let response = sign_in(app, credential).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn reasons(events: &[SecurityEvent], event_type: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .map(|e| e.metadata["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// (issuer, subject, user id) of every stored identity.
async fn stored_identities(app: &TestApp) -> Vec<(String, String, String)> {
    match app.backend {
        Backend::Postgres => {
            let pool = app.db.as_ref().unwrap().pool().await;
            let rows = sqlx::query_as("SELECT issuer, subject, user_id FROM user_identities")
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows
        }
        Backend::File => users_file(app)["users"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|u| {
                let id = u["id"].as_str().unwrap().to_owned();
                u["identities"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |i| {
                        (
                            i["issuer"].as_str().unwrap().to_owned(),
                            i["subject"].as_str().unwrap().to_owned(),
                            id.clone(),
                        )
                    })
            })
            .collect(),
    }
}

async fn user_count(app: &TestApp) -> i64 {
    match app.backend {
        Backend::Postgres => {
            let pool = app.db.as_ref().unwrap().pool().await;
            let n = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        }
        Backend::File => match std::fs::read(app.data_dir().join("users.json")) {
            Ok(_) => users_file(app)["users"].as_array().unwrap().len() as i64,
            Err(_) => 0,
        },
    }
}

fn users_file(app: &TestApp) -> Value {
    serde_json::from_slice(&std::fs::read(app.data_dir().join("users.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn a_valid_token_creates_a_user_then_signs_the_same_user_in_on_both_stores() {
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let Some(mut app) = google_app(backend, &provider, |_| {}).await else {
            continue;
        };
        let first = provider.id_token(&app, "sub-ann", "Ann@Gmail.com", json!({}));
        let body = signed_in(&app, &first).await;
        assert_eq!(body["success"], true);
        assert_eq!(body["isNewUser"], true, "{backend:?}");
        assert_eq!(body["token"], body["accessToken"]);
        assert_eq!(body["tokenType"], "Bearer");
        let user = &body["user"];
        assert_eq!(user["email"], "ann@gmail.com");
        assert_eq!(user["emailVerified"], true);
        assert_eq!(user["userType"], "client");
        assert_eq!(user["name"], "Test Person");
        for hidden in ["googleId", "password", "passwordHash", "identities"] {
            assert!(user.get(hidden).is_none(), "{hidden} leaked");
        }
        let me: Value = app
            .me(body["accessToken"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["id"], user["id"]);

        // A second sign-in (a new credential, as GIS issues each time) is the same user.
        let second = provider.id_token(
            &app,
            "sub-ann",
            "ann@gmail.com",
            json!({"aud": fake_oidc::OTHER_CLIENT_ID, "azp": fake_oidc::OTHER_CLIENT_ID}),
        );
        let again = signed_in(&app, &second).await;
        assert_eq!(again["isNewUser"], false);
        assert_eq!(again["user"]["id"], user["id"]);
        assert_eq!(user_count(&app).await, 1);
        assert_eq!(
            stored_identities(&app).await,
            [(
                provider.issuer.clone(),
                "sub-ann".to_owned(),
                user["id"].as_str().unwrap().to_owned()
            )]
        );

        // A Google-only account has no password: password login gets the generic 401.
        assert_error(
            app.login("ann@gmail.com", PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;

        let events = app
            .events_where(|e| count_of(e, "token_generated") == 2)
            .await;
        let success: Vec<&SecurityEvent> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "oauth_success")
            .collect();
        assert_eq!(success.len(), 2, "{backend:?}");
        assert_eq!(success[0].metadata["isNewUser"], true);
        assert_eq!(success[1].metadata["isNewUser"], false);
        assert_eq!(success[0].metadata["flow"], "id_token");
        assert_eq!(success[0].user_id.as_deref(), user["id"].as_str());
        assert_eq!(success[0].metadata["email"], "ann@gmail.com");
        assert_eq!(count_of(&events, "oauth_failed"), 0);
        // The account's creation has its own event, recorded before the account was written.
        let created: Vec<&SecurityEvent> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "signup_success")
            .collect();
        assert_eq!(created.len(), 1, "{backend:?}");
        assert_eq!(created[0].user_id.as_deref(), user["id"].as_str());
        assert_eq!(created[0].metadata["provider"], "google");
        assert_eq!(created[0].metadata["flow"], "id_token");
        assert!(created[0].created_at <= success[0].created_at);

        // The credentials are nowhere: not in events, data files, spool or database.
        let mut everything = files_text(app.dir.path());
        everything.push_str(&app.stored_text().await);
        everything.push_str(&serde_json::to_string(&events).unwrap());
        for credential in [&first, &second] {
            let signature = credential.rsplit('.').next().unwrap();
            assert!(
                !everything.contains(signature),
                "credential stored ({backend:?})"
            );
        }
        app.stop().await;
    }
}

/// A token whose payload was changed after signing.
fn tampered(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    claims["email"] = "mallory@gmail.com".into();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

#[tokio::test]
async fn each_bad_credential_is_a_401_with_its_reason_and_creates_nobody() {
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |_| {}).await.unwrap();
    let keys = fake_oidc::test_keys();
    let now = app.clock().now().timestamp();
    let claims = |patch: Value| provider.claims(&app, "sub-rae", "rae@gmail.com", patch);
    let good = claims(json!({}));
    let signed = |c: &Value| fake_oidc::sign(c, &keys[0], &keys[0].kid);
    let hs256_with_public_key = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(keys[0].kid.clone());
        let key = jsonwebtoken::EncodingKey::from_secret(keys[0].public_pem.as_bytes());
        jsonwebtoken::encode(&header, &good, &key).unwrap()
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": keys[0].kid})
            .to_string()
            .as_bytes()),
        b64(good.to_string().as_bytes())
    );
    let no_kid = {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(keys[0].private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &good,
            &key,
        )
        .unwrap()
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "bad signature",
            tampered(&signed(&good)),
            "AUTH_GOOGLE_INVALID",
            "bad_signature",
        ),
        (
            "another key",
            fake_oidc::sign(&good, &keys[1], &keys[0].kid),
            "AUTH_GOOGLE_INVALID",
            "bad_signature",
        ),
        (
            "HS256 with the public key",
            hs256_with_public_key,
            "AUTH_GOOGLE_INVALID",
            "algorithm_not_allowed",
        ),
        (
            "alg none",
            unsigned,
            "AUTH_GOOGLE_INVALID",
            "algorithm_not_allowed",
        ),
        ("no kid", no_kid, "AUTH_GOOGLE_INVALID", "missing_kid"),
        (
            "unknown kid",
            fake_oidc::sign(&good, &keys[1], "no-such-kid"),
            "AUTH_GOOGLE_INVALID",
            "unknown_kid",
        ),
        (
            "Google's issuer from another provider",
            signed(&claims(json!({"iss": "https://accounts.google.com"}))),
            "AUTH_GOOGLE_INVALID",
            "wrong_issuer",
        ),
        (
            "another app's audience",
            signed(&claims(
                json!({"aud": "someone-else", "azp": "someone-else"}),
            )),
            "AUTH_GOOGLE_INVALID",
            "wrong_audience",
        ),
        (
            "an extra untrusted audience",
            signed(&claims(json!({"aud": [CLIENT_ID, "someone-else"]}))),
            "AUTH_GOOGLE_INVALID",
            "untrusted_audience",
        ),
        (
            "azp of another app",
            signed(&claims(json!({"azp": "someone-else"}))),
            "AUTH_GOOGLE_INVALID",
            "azp_mismatch",
        ),
        (
            "expired",
            signed(&claims(json!({"iat": now - 7200, "exp": now - 3600}))),
            "AUTH_GOOGLE_EXPIRED",
            "expired",
        ),
        (
            "iat in the future",
            signed(&claims(json!({"iat": now + 3600, "exp": now + 7200}))),
            "AUTH_GOOGLE_INVALID",
            "issued_in_future",
        ),
        (
            "unverified email",
            signed(&claims(json!({"email_verified": false}))),
            "AUTH_GOOGLE_EMAIL_UNVERIFIED",
            "email_not_verified",
        ),
        (
            "no email",
            signed(&claims(json!({"email": null}))),
            "AUTH_GOOGLE_EMAIL_UNVERIFIED",
            "email_missing",
        ),
        (
            "not a JWT",
            "definitely-not-a-jwt".into(),
            "AUTH_GOOGLE_INVALID",
            "malformed_token",
        ),
    ];
    for (name, credential, code, _) in &cases {
        let response = sign_in(&app, credential).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}");
        let body = assert_error(response, StatusCode::UNAUTHORIZED, code).await;
        assert!(
            !body.to_string().contains("InvalidSignature"),
            "{name}: library text"
        );
    }
    assert_eq!(
        user_count(&app).await,
        0,
        "no rejected credential created a user"
    );

    // The same valid credential twice: the replay is refused.
    let valid = signed(&good);
    signed_in(&app, &valid).await;
    assert_error(
        sign_in(&app, &valid).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_GOOGLE_INVALID",
    )
    .await;
    // A missing credential is a 400 naming the field.
    let body = assert_error(
        app.post_json("/api/auth/google", &json!({})).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(body["field"], "credential");

    let expected: Vec<String> = cases
        .iter()
        .map(|(_, _, _, reason)| reason.to_string())
        .chain(["token_replayed".to_owned(), "invalid_request".to_owned()])
        .collect();
    let events = app
        .events_where(|e| count_of(e, "oauth_failed") == expected.len())
        .await;
    assert_eq!(reasons(&events, "oauth_failed"), expected);
    for event in events
        .iter()
        .filter(|e| e.event_type.as_str() == "oauth_failed")
    {
        assert_eq!(event.severity.as_str(), "warning");
        assert_eq!(event.metadata["provider"], "google");
        assert!(event.user_id.is_none(), "an unverified token names nobody");
    }
    let mut everything = files_text(app.dir.path());
    everything.push_str(&serde_json::to_string(&events).unwrap());
    for (name, credential, _, _) in &cases {
        if let Some(signature) = credential.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!everything.contains(signature), "{name}: credential logged");
        }
    }
    assert!(!everything.contains(valid.rsplit('.').next().unwrap()));
}

#[tokio::test]
async fn a_hosted_domain_setting_admits_that_workspace_only() {
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |s| {
        s.google_hosted_domain = Some("corp.test".into());
    })
    .await
    .unwrap();
    for (sub, patch) in [("s1", json!({})), ("s2", json!({"hd": "other.test"}))] {
        let token = provider.id_token(&app, sub, "dev@corp.test", patch);
        assert_error(
            sign_in(&app, &token).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_GOOGLE_DOMAIN_NOT_ALLOWED",
        )
        .await;
    }
    let token = provider.id_token(&app, "s3", "dev@corp.test", json!({"hd": "corp.test"}));
    assert_eq!(signed_in(&app, &token).await["isNewUser"], true);
    let events = app.events_where(|e| count_of(e, "oauth_failed") == 2).await;
    assert_eq!(
        reasons(&events, "oauth_failed"),
        ["hosted_domain_mismatch", "hosted_domain_mismatch"]
    );
}

/// Marks the account with `email` verified, as an operator or a verification link would.
async fn mark_email_verified(app: &TestApp, email: &str) {
    match app.backend {
        Backend::Postgres => {
            let pool = app.db.as_ref().unwrap().pool().await;
            let done = sqlx::query("UPDATE users SET email_verified = true WHERE email = $1")
                .bind(email)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            assert_eq!(done.rows_affected(), 1, "{email}");
        }
        Backend::File => {
            // Replaced whole, as an operator's tool would: the service reloads a replaced file.
            let path = app.data_dir().join("users.json");
            let mut file = users_file(app);
            let user = file["users"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|u| u["email"] == email)
                .unwrap();
            user["emailVerified"] = json!(true);
            let temp = path.with_extension("json.edit");
            std::fs::write(&temp, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        }
    }
}

/// `lastLogin` and the live sessions of the account behind `access_token`, as its holder sees them.
async fn account_state(app: &TestApp, access_token: &str) -> (Value, usize) {
    let me: Value = app.me(access_token).await.json().await.unwrap();
    let sessions: Value = app
        .get_auth("/api/auth/sessions", access_token)
        .await
        .json()
        .await
        .unwrap();
    (
        me["lastLogin"].clone(),
        sessions["sessions"].as_array().unwrap().len(),
    )
}

#[tokio::test]
async fn a_pre_registered_unverified_account_is_never_entered_through_google_on_both_stores() {
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let Some(mut app) = google_app(backend, &provider, |_| {}).await else {
            continue;
        };
        // Someone registers the address first, with a password of their choosing.
        let squatter = app.signed_up("victim@gmail.com").await;
        let access = squatter["accessToken"].as_str().unwrap().to_owned();
        let before = account_state(&app, &access).await;

        // The owner signs in with Google, by ID token and by the code flow: refused both ways.
        let token = provider.id_token(&app, "sub-victim", "victim@gmail.com", json!({}));
        assert_error(
            sign_in(&app, &token).await,
            StatusCode::CONFLICT,
            "AUTH_ACCOUNT_EXISTS_UNVERIFIED",
        )
        .await;
        let (location, binding) = authorize(&app).await;
        let q = query(&location);
        let token = provider.id_token(
            &app,
            "sub-victim",
            "victim@gmail.com",
            json!({"nonce": q["nonce"]}),
        );
        provider.issue_code("code-v", &q["code_challenge"], REDIRECT_URI, &token);
        let response = callback(
            &app,
            &binding,
            &[("state", &q["state"]), ("code", "code-v")],
        )
        .await;
        assert_error(
            response,
            StatusCode::CONFLICT,
            "AUTH_ACCOUNT_EXISTS_UNVERIFIED",
        )
        .await;

        // Nothing of the account was touched: no identity, no login time, no new session.
        assert!(stored_identities(&app).await.is_empty(), "{backend:?}");
        assert_eq!(user_count(&app).await, 1);
        assert_eq!(account_state(&app, &access).await, before, "{backend:?}");
        let events = app.events_where(|e| count_of(e, "oauth_failed") == 2).await;
        assert_eq!(count_of(&events, "oauth_success"), 0);
        assert_eq!(
            reasons(&events, "oauth_failed"),
            ["account_exists_unverified", "account_exists_unverified"]
        );
        for failed in events
            .iter()
            .filter(|e| e.event_type.as_str() == "oauth_failed")
        {
            assert_eq!(failed.user_id.as_deref(), squatter["user"]["id"].as_str());
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn an_existing_verified_password_account_is_linked_only_when_google_is_authoritative() {
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let Some(mut app) = google_app(backend, &provider, |_| {}).await else {
            continue;
        };
        // A verified account at @gmail.com: Google owns the address, so the identity links.
        let gmail = app.signed_up("lee@gmail.com").await;
        mark_email_verified(&app, "lee@gmail.com").await;
        let token = provider.id_token(&app, "sub-lee", "lee@gmail.com", json!({}));
        let body = signed_in(&app, &token).await;
        assert_eq!(body["isNewUser"], false);
        assert_eq!(body["user"]["id"], gmail["user"]["id"], "{backend:?}");
        assert_eq!(
            app.login("lee@gmail.com", PASSWORD).await.status(),
            StatusCode::OK
        );

        // Another domain without `hd`: Google is not authoritative; the user must use the password.
        let other = app.signed_up("kim@corp.test").await;
        mark_email_verified(&app, "kim@corp.test").await;
        let token = provider.id_token(&app, "sub-kim", "kim@corp.test", json!({}));
        assert_error(
            sign_in(&app, &token).await,
            StatusCode::CONFLICT,
            "AUTH_ACCOUNT_EXISTS",
        )
        .await;
        // The same address as a verified Workspace account (`hd`) links.
        let token = provider.id_token(&app, "sub-kim", "kim@corp.test", json!({"hd": "corp.test"}));
        assert_eq!(
            signed_in(&app, &token).await["user"]["id"],
            other["user"]["id"]
        );
        assert_eq!(user_count(&app).await, 2);

        let events = app
            .events_where(|e| count_of(e, "oauth_success") == 2 && count_of(e, "oauth_failed") == 1)
            .await;
        assert_eq!(
            reasons(&events, "oauth_failed"),
            ["account_exists_not_authoritative"]
        );
        let failed = events
            .iter()
            .find(|e| e.event_type.as_str() == "oauth_failed")
            .unwrap();
        assert_eq!(failed.user_id.as_deref(), other["user"]["id"].as_str());
        let linked: Vec<&Value> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "oauth_success")
            .map(|e| &e.metadata["linked"])
            .collect();
        assert_eq!(linked, [&json!(true), &json!(true)]);
        app.stop().await;
    }
}

#[tokio::test]
async fn an_email_change_at_the_provider_neither_duplicates_nor_takes_over() {
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let Some(mut app) = google_app(backend, &provider, |_| {}).await else {
            continue;
        };
        let hd = json!({"hd": "corp.test"});
        let a = signed_in(
            &app,
            &provider.id_token(&app, "sub-1", "a@corp.test", hd.clone()),
        )
        .await;
        let b = app.signed_up("b@corp.test").await;

        // sub-1 now reports b@corp.test: still account A, and B is neither linked nor changed.
        let moved = signed_in(
            &app,
            &provider.id_token(&app, "sub-1", "b@corp.test", hd.clone()),
        )
        .await;
        assert_eq!(moved["isNewUser"], false);
        assert_eq!(moved["user"]["id"], a["user"]["id"], "{backend:?}");
        assert_eq!(
            moved["user"]["email"], "a@corp.test",
            "the account's email is its own"
        );
        assert_eq!(
            app.login("b@corp.test", PASSWORD).await.status(),
            StatusCode::OK
        );

        // A new identity that now has a@corp.test does not get account A (linked to sub-1).
        let token = provider.id_token(&app, "sub-2", "a@corp.test", hd.clone());
        assert_error(
            sign_in(&app, &token).await,
            StatusCode::CONFLICT,
            "AUTH_ACCOUNT_EXISTS",
        )
        .await;
        assert_eq!(user_count(&app).await, 2);
        let identities = stored_identities(&app).await;
        assert_eq!(identities.len(), 1, "{identities:?}");
        assert_eq!(identities[0].2, a["user"]["id"].as_str().unwrap());
        assert!(b["user"]["id"] != a["user"]["id"]);

        let events = app.events_where(|e| count_of(e, "oauth_failed") == 1).await;
        assert_eq!(
            reasons(&events, "oauth_failed"),
            ["account_linked_to_other_identity"]
        );
        app.stop().await;
    }
}

/// The query parameters of a URL.
pub(crate) fn query(url: &url::Url) -> std::collections::HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// The `Set-Cookie` values of a response.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Starts a code flow as a browser would: the provider URL, and the browser-binding cookie
/// (`name=value`) the browser then holds.
pub(crate) async fn authorize(app: &TestApp) -> (url::Url, String) {
    let response = app
        .client
        .get(app.url("/api/auth/google/authorize"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let cookies = set_cookies(&response);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let binding = cookies[0].split(';').next().unwrap().to_owned();
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    (location, binding)
}

/// The provider's redirect back, from a browser holding `cookie` (`""`: none).
pub(crate) async fn callback(
    app: &TestApp,
    cookie: &str,
    params: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url("/api/auth/google/callback"))
        .header("user-agent", UA)
        .query(params);
    if !cookie.is_empty() {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_code_flow_runs_end_to_end_with_pkce_state_and_nonce_on_both_stores() {
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let Some(mut app) = google_app(backend, &provider, |_| {}).await else {
            continue;
        };
        let (location, binding) = authorize(&app).await;
        assert!(
            location
                .as_str()
                .starts_with(&provider.authorization_endpoint()),
            "{location}"
        );
        let q = query(&location);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], CLIENT_ID);
        assert_eq!(q["redirect_uri"], REDIRECT_URI);
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(
            q["scope"].split(' ').any(|s| s == "openid"),
            "{}",
            q["scope"]
        );
        assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
        assert_ne!(q["state"], q["nonce"]);

        let id_token = provider.id_token(
            &app,
            "sub-code",
            "cody@gmail.com",
            json!({"nonce": q["nonce"]}),
        );
        provider.issue_code("code-1", &q["code_challenge"], REDIRECT_URI, &id_token);
        let response = callback(
            &app,
            &binding,
            &[("state", &q["state"]), ("code", "code-1")],
        )
        .await;
        assert_eq!(response.status(), StatusCode::FOUND, "{backend:?}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
        let target = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
        assert!(
            target.as_str().starts_with(&format!("{FRONTEND_URL}#")),
            "{target}"
        );
        assert_eq!(target.query(), None, "no token in the query");
        let fragment: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(target.fragment().unwrap().as_bytes())
                .into_owned()
                .collect();
        assert_eq!(fragment["isNewUser"], "true");
        assert_eq!(fragment["tokenType"], "Bearer");
        assert_eq!(fragment["token"], fragment["accessToken"]);
        assert_eq!(fragment["refreshToken"].len(), 54);
        let me: Value = app.me(&fragment["accessToken"]).await.json().await.unwrap();
        assert_eq!(me["email"], "cody@gmail.com");
        assert_eq!(
            app.refresh(&fragment["refreshToken"]).await.status(),
            StatusCode::OK
        );

        // The token endpoint got the PKCE verifier of the challenge and our client credentials.
        let requests = provider.token_requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(
            fake_oidc::s256(&requests[0].form["code_verifier"]),
            q["code_challenge"]
        );
        assert_eq!(requests[0].form["redirect_uri"], REDIRECT_URI);
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
        );
        assert_eq!(requests[0].authorization.as_deref(), Some(basic.as_str()));

        // Replaying the callback: the state was used up, and the code is not sent again.
        let replay = callback(
            &app,
            &binding,
            &[("state", &q["state"]), ("code", "code-1")],
        )
        .await;
        assert_error(replay, StatusCode::BAD_REQUEST, "AUTH_OAUTH_STATE_INVALID").await;
        assert_eq!(provider.token_requests().len(), 1);

        let events = app
            .events_where(|e| count_of(e, "oauth_success") == 1 && count_of(e, "oauth_failed") == 1)
            .await;
        let success = events
            .iter()
            .find(|e| e.event_type.as_str() == "oauth_success")
            .unwrap();
        assert_eq!(success.metadata["flow"], "code");
        assert_eq!(success.metadata["isNewUser"], true);
        assert_eq!(reasons(&events, "oauth_failed"), ["state_invalid"]);
        let everything = files_text(app.dir.path()) + &app.stored_text().await;
        assert!(!everything.contains(id_token.rsplit('.').next().unwrap()));
        assert!(!everything.contains(&requests[0].form["code_verifier"]));
        app.stop().await;
    }
}

#[tokio::test]
async fn the_code_flow_refuses_a_wrong_nonce_a_forged_state_a_bad_verifier_and_a_denial() {
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |_| {}).await.unwrap();

    let (location, binding) = authorize(&app).await;
    let q = query(&location);
    let wrong_nonce = provider.id_token(
        &app,
        "sub-n",
        "nina@gmail.com",
        json!({"nonce": "not-the-nonce"}),
    );
    provider.issue_code("code-n", &q["code_challenge"], REDIRECT_URI, &wrong_nonce);
    let response = callback(
        &app,
        &binding,
        &[("state", &q["state"]), ("code", "code-n")],
    )
    .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_GOOGLE_INVALID").await;

    let (location, binding) = authorize(&app).await;
    let q = query(&location);
    let no_nonce = provider.id_token(&app, "sub-n", "nina@gmail.com", json!({}));
    provider.issue_code("code-m", &q["code_challenge"], REDIRECT_URI, &no_nonce);
    let response = callback(
        &app,
        &binding,
        &[("state", &q["state"]), ("code", "code-m")],
    )
    .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_GOOGLE_INVALID").await;

    // A code bound to another PKCE challenge: the provider refuses our verifier.
    let (location, binding) = authorize(&app).await;
    let q = query(&location);
    let token = provider.id_token(
        &app,
        "sub-n",
        "nina@gmail.com",
        json!({"nonce": q["nonce"]}),
    );
    provider.issue_code(
        "code-p",
        &fake_oidc::s256("someone-elses-verifier"),
        REDIRECT_URI,
        &token,
    );
    let response = callback(
        &app,
        &binding,
        &[("state", &q["state"]), ("code", "code-p")],
    )
    .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_GOOGLE_INVALID").await;

    let response = callback(
        &app,
        &binding,
        &[("state", "forged-state"), ("code", "code-x")],
    )
    .await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "AUTH_OAUTH_STATE_INVALID",
    )
    .await;
    let response = callback(&app, &binding, &[("code", "code-x")]).await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "AUTH_OAUTH_STATE_INVALID",
    )
    .await;

    let (location, binding) = authorize(&app).await;
    let q = query(&location);
    let response = callback(
        &app,
        &binding,
        &[("state", &q["state"]), ("error", "access_denied")],
    )
    .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "AUTH_GOOGLE_DENIED").await;

    assert_eq!(user_count(&app).await, 0);
    let events = app.events_where(|e| count_of(e, "oauth_failed") == 6).await;
    assert_eq!(
        reasons(&events, "oauth_failed"),
        [
            "nonce_mismatch",
            "nonce_mismatch",
            "code_rejected",
            "state_invalid",
            "state_invalid",
            "provider_denied"
        ]
    );
}

#[tokio::test]
async fn a_code_flow_completes_only_in_the_browser_that_started_it() {
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |_| {}).await.unwrap();

    // The binding cookie: host-only, HTTPS-only, out of scripts' reach, sent on the way back.
    let response = app
        .client
        .get(app.url("/api/auth/google/authorize"))
        .send()
        .await
        .unwrap();
    let cookie = set_cookies(&response).pop().unwrap();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    assert!(
        attributes[0].starts_with("__Host-oauth_binding="),
        "{cookie}"
    );
    assert!(
        attributes[0].len() > "__Host-oauth_binding=".len() + 40,
        "{cookie}"
    );
    for wanted in ["Path=/", "HttpOnly", "Secure", "SameSite=Lax"] {
        assert!(attributes.contains(&wanted), "{wanted} missing: {cookie}");
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain="), "{cookie}");

    // Someone starts a flow in their own browser and gets the victim's browser to open the
    // callback URL (login CSRF): without the starter's cookie, or with another flow's, it is
    // refused before the code is ever exchanged.
    let (location, _attackers) = authorize(&app).await;
    let q = query(&location);
    let token = provider.id_token(
        &app,
        "sub-mallory",
        "mallory@gmail.com",
        json!({"nonce": q["nonce"]}),
    );
    provider.issue_code("code-csrf", &q["code_challenge"], REDIRECT_URI, &token);
    let response = callback(&app, "", &[("state", &q["state"]), ("code", "code-csrf")]).await;
    assert!(
        set_cookies(&response)
            .iter()
            .any(|c| c.starts_with("__Host-oauth_binding=;") && c.contains("Max-Age=0")),
        "the callback clears the binding"
    );
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "AUTH_OAUTH_STATE_INVALID",
    )
    .await;

    let (location, _attackers) = authorize(&app).await;
    let q = query(&location);
    provider.issue_code("code-csrf-2", &q["code_challenge"], REDIRECT_URI, &token);
    let (_, victims) = authorize(&app).await;
    let response = callback(
        &app,
        &victims,
        &[("state", &q["state"]), ("code", "code-csrf-2")],
    )
    .await;
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "AUTH_OAUTH_STATE_INVALID",
    )
    .await;
    assert!(
        provider.token_requests().is_empty(),
        "no code was exchanged"
    );
    assert_eq!(user_count(&app).await, 0);

    // The browser that started a flow completes it, and its binding is cleared.
    let (location, binding) = authorize(&app).await;
    let q = query(&location);
    let token = provider.id_token(
        &app,
        "sub-vic",
        "vic@gmail.com",
        json!({"nonce": q["nonce"]}),
    );
    provider.issue_code("code-ok", &q["code_challenge"], REDIRECT_URI, &token);
    let response = callback(
        &app,
        &binding,
        &[("state", &q["state"]), ("code", "code-ok")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(
        set_cookies(&response)
            .iter()
            .any(|c| c.starts_with("__Host-oauth_binding=;") && c.contains("Max-Age=0"))
    );

    let events = app
        .events_where(|e| count_of(e, "oauth_failed") == 2 && count_of(e, "oauth_success") == 1)
        .await;
    assert_eq!(
        reasons(&events, "oauth_failed"),
        ["state_browser_mismatch", "state_browser_mismatch"]
    );
}

#[tokio::test]
async fn pending_authorizations_live_in_redis_with_a_ttl_when_it_is_configured() {
    if !redis_available().await {
        return;
    }
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |s| {
        s.redis_url = Some(secrecy::SecretString::from(redis_url()));
    })
    .await
    .unwrap();
    let prefix = app.settings.redis_key_prefix.clone();
    let (location, binding) = authorize(&app).await;
    let q = query(&location);
    let mut conn = redis_conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}oidc:state:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        !keys[0].contains(&q["state"]),
        "the key is a hash of the state"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");

    let token = provider.id_token(
        &app,
        "sub-r",
        "rita@gmail.com",
        json!({"nonce": q["nonce"]}),
    );
    provider.issue_code("code-r", &q["code_challenge"], REDIRECT_URI, &token);
    let response = callback(
        &app,
        &binding,
        &[("state", &q["state"]), ("code", "code-r")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}oidc:state:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "the state is taken once");
    let replay = callback(
        &app,
        &binding,
        &[("state", &q["state"]), ("code", "code-r")],
    )
    .await;
    assert_error(replay, StatusCode::BAD_REQUEST, "AUTH_OAUTH_STATE_INVALID").await;
}

async fn gis_post(app: &TestApp, form: &[(&str, &str)], cookie: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/api/auth/google/callback"))
        .header("user-agent", UA)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        );
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn gis_redirect_mode_requires_the_g_csrf_token_cookie_to_equal_the_field() {
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |_| {}).await.unwrap();
    let credential = provider.id_token(&app, "sub-g", "gina@gmail.com", json!({}));
    let form = [
        ("credential", credential.as_str()),
        ("g_csrf_token", "csrf-abc"),
    ];

    let missing_cookie = gis_post(&app, &form, None).await;
    assert_error(missing_cookie, StatusCode::BAD_REQUEST, "AUTH_GOOGLE_CSRF").await;
    let mismatch = gis_post(&app, &form, Some("g_csrf_token=csrf-xyz")).await;
    assert_error(mismatch, StatusCode::BAD_REQUEST, "AUTH_GOOGLE_CSRF").await;
    let missing_field = gis_post(&app, &form[..1], Some("g_csrf_token=csrf-abc")).await;
    assert_error(missing_field, StatusCode::BAD_REQUEST, "AUTH_GOOGLE_CSRF").await;
    let json_body = app
        .client
        .post(app.url("/api/auth/google/callback"))
        .json(&json!({"credential": credential}))
        .send()
        .await
        .unwrap();
    assert_error(
        json_body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
    assert_eq!(user_count(&app).await, 0);

    let ok = gis_post(&app, &form, Some("other=1; g_csrf_token=csrf-abc")).await;
    assert_eq!(ok.status(), StatusCode::FOUND);
    let target = url::Url::parse(ok.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(target.query(), None);
    let fragment: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(target.fragment().unwrap().as_bytes())
            .into_owned()
            .collect();
    assert_eq!(fragment["isNewUser"], "true");
    assert_eq!(
        app.me(&fragment["accessToken"]).await.status(),
        StatusCode::OK
    );

    let events = app
        .events_where(|e| count_of(e, "oauth_failed") == 3 && count_of(e, "oauth_success") == 1)
        .await;
    assert_eq!(
        reasons(&events, "oauth_failed"),
        ["csrf_cookie_missing", "csrf_mismatch", "csrf_field_missing"]
    );
    let success = events
        .iter()
        .find(|e| e.event_type.as_str() == "oauth_success")
        .unwrap();
    assert_eq!(success.metadata["flow"], "gis_redirect");
}

#[tokio::test]
async fn the_jwks_is_fetched_once_for_many_sign_ins_and_a_rotated_key_is_picked_up() {
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |_| {}).await.unwrap();
    let keys = fake_oidc::test_keys();
    for i in 0..5 {
        let token = provider.id_token(
            &app,
            &format!("sub-{i}"),
            &format!("u{i}@gmail.com"),
            json!({}),
        );
        signed_in(&app, &token).await;
    }
    assert_eq!(
        provider.jwks_fetches(),
        1,
        "cached per Cache-Control max-age"
    );

    // A flood of made-up kids: refused, and no fetch per request.
    let claims = provider.claims(&app, "sub-x", "x@gmail.com", json!({}));
    for i in 0..10 {
        let token = fake_oidc::sign(&claims, &keys[1], &format!("random-kid-{i}"));
        assert_error(
            sign_in(&app, &token).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_GOOGLE_INVALID",
        )
        .await;
    }
    assert_eq!(provider.jwks_fetches(), 1, "unknown kids are rate-limited");

    // Rotation: the provider now signs with key 2 only. Within the cooldown the new kid is
    // refused; once it has passed, one refetch picks it up.
    provider.publish(&[&keys[2]]);
    let rotated = |app: &TestApp, sub: &str| {
        fake_oidc::sign(
            &provider.claims(app, sub, &format!("{sub}@gmail.com"), json!({})),
            &keys[2],
            &keys[2].kid,
        )
    };
    assert_error(
        sign_in(&app, &rotated(&app, "r0")).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_GOOGLE_INVALID",
    )
    .await;
    app.clock().advance(Duration::from_secs(31));
    signed_in(&app, &rotated(&app, "r1")).await;
    assert_eq!(provider.jwks_fetches(), 2);
    signed_in(&app, &rotated(&app, "r2")).await;
    assert_eq!(provider.jwks_fetches(), 2);
    // The retired key no longer verifies anything.
    let old = provider.id_token(&app, "sub-old", "old@gmail.com", json!({}));
    assert_error(
        sign_in(&app, &old).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_GOOGLE_INVALID",
    )
    .await;
    assert_eq!(provider.jwks_fetches(), 2);

    // Past max-age (3600 s) the set is fetched again.
    app.clock().advance(Duration::from_secs(3601));
    signed_in(&app, &rotated(&app, "r3")).await;
    assert_eq!(provider.jwks_fetches(), 3);

    let events = app
        .events_where(|e| count_of(e, "oauth_failed") == 12)
        .await;
    assert!(
        reasons(&events, "oauth_failed")
            .iter()
            .all(|r| r == "unknown_kid")
    );
}

#[tokio::test]
async fn without_configuration_the_google_routes_answer_503() {
    let mut app = TestApp::try_spawn(Backend::File).await.unwrap();
    let body = assert_error(
        sign_in(&app, "a.b.c").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "AUTH_GOOGLE_NOT_CONFIGURED",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("GOOGLE_CLIENT_ID")
    );
    for path in [
        "/api/auth/google/authorize",
        "/api/auth/google/callback?state=a&code=b",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_error(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "AUTH_GOOGLE_NOT_CONFIGURED",
        )
        .await;
    }
    let health: Value = app.health().await;
    assert_eq!(health["checks"]["oauth"], "not_configured");
    app.stop().await;

    // A client id alone: ID-token sign-in is on, the code flow says what it lacks.
    let app = app
        .restart_with(|s| s.google_client_id = vec![CLIENT_ID.into()])
        .await;
    let response = app
        .client
        .get(app.url("/api/auth/google/authorize"))
        .send()
        .await
        .unwrap();
    let body = assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "AUTH_GOOGLE_NOT_CONFIGURED",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("GOOGLE_REDIRECT_URI"),
        "{body}"
    );
    let health: Value = app.health().await;
    assert_eq!(health["checks"]["oauth"], "configured");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_503_never_a_500() {
    // A port nothing listens on.
    let closed = free_port();
    let provider = FakeProvider::start().await;
    let app = TestApp::builder(Backend::File)
        .settings(move |s| fake_oidc::configure(s, &format!("http://127.0.0.1:{closed}")))
        .try_spawn()
        .await
        .unwrap();
    let token = provider.id_token(&app, "sub-u", "una@gmail.com", json!({}));
    let response = sign_in(&app, &token).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "AUTH_PROVIDER_UNAVAILABLE",
    )
    .await;
    let response = app
        .client
        .get(app.url("/api/auth/google/authorize"))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "AUTH_PROVIDER_UNAVAILABLE",
    )
    .await;
    let events = app.events_where(|e| count_of(e, "oauth_failed") == 1).await;
    assert_eq!(reasons(&events, "oauth_failed"), ["provider_unavailable"]);
}

#[tokio::test]
async fn users_linked_by_the_old_services_google_id_are_found_by_their_google_identity() {
    use flux_auth::domain::GOOGLE_ISSUER;
    use flux_auth::store::{IdentityStore, UserStore};
    // The file store: a users.json written by the old service.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.json"),
        json!({"users": [{"id": 1760390026607u64, "email": "old@gmail.com", "name": "Old",
                          "googleId": "g-legacy", "userType": "client", "createdAt": "2025-10-13T21:13:46.607Z"}]})
        .to_string(),
    )
    .unwrap();
    let store = flux_auth::store::json_file::FileStore::open(dir.path())
        .await
        .unwrap();
    let user = store
        .user_by_identity(GOOGLE_ISSUER, "g-legacy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.id, "1760390026607");
    assert!(
        store
            .user_by_identity("https://other.example", "g-legacy")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.identities_of(&user.id).await.unwrap().len(), 1);
    store
        .touch_identity(
            GOOGLE_ISSUER,
            "g-legacy",
            Some("old@gmail.com"),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let file: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("users.json")).unwrap()).unwrap();
    let entry = &file["users"][0];
    assert_eq!(
        entry["googleId"], "g-legacy",
        "the old field stays for a rollback"
    );
    assert_eq!(entry["identities"][0]["subject"], "g-legacy");
    assert_eq!(store.identities_of(&user.id).await.unwrap().len(), 1);

    // Postgres: a user imported with google_id.
    if !postgres_available().await {
        return;
    }
    let db = TestDb::create().await;
    let database = flux_auth::db::Database::connect_lazy(
        &secrecy::SecretString::from(db.url.clone()),
        &flux_auth::db::Schemas::default(),
        2,
        Duration::from_secs(5),
    )
    .unwrap();
    database.migrate().await.unwrap();
    let pg = flux_auth::store::postgres::PgStore::from_database(database);
    pg.import_user(&user).await.unwrap();
    let found = pg
        .user_by_identity(GOOGLE_ISSUER, "g-legacy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, user.id);
    pg.touch_identity(
        GOOGLE_ISSUER,
        "g-legacy",
        Some("old@gmail.com"),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let identities = pg.identities_of(&user.id).await.unwrap();
    assert_eq!(identities.len(), 1, "{identities:?}");
    assert_eq!(identities[0].email.as_deref(), Some("old@gmail.com"));
}

#[tokio::test]
async fn google_sign_in_counts_against_the_per_ip_login_limit() {
    let provider = FakeProvider::start().await;
    let app = google_app(Backend::File, &provider, |s| {
        s.rate_limits = flux_auth::config::Switch::On;
        s.login_limit_per_ip = 2;
    })
    .await
    .unwrap();
    for sub in ["l1", "l2"] {
        signed_in(
            &app,
            &provider.id_token(&app, sub, &format!("{sub}@gmail.com"), json!({})),
        )
        .await;
    }
    let token = provider.id_token(&app, "l3", "l3@gmail.com", json!({}));
    let response = sign_in(&app, &token).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED").await;
    let events = app
        .events_where(|e| count_of(e, "rate_limit_exceeded") == 1)
        .await;
    assert_eq!(count_of(&events, "rate_limit_exceeded"), 1);
    assert_eq!(
        count_of(&events, "oauth_failed"),
        0,
        "one event per outcome"
    );
}

/// Links `subject` at `issuer` to the account with `email` the way a version without the
/// verified-email rule did, behind the service's back: a `user_identities` row on Postgres, an
/// `identities` entry in users.json. With `legacy`, as the old service did: `google_id` only.
async fn link_as_before(app: &TestApp, email: &str, issuer: &str, subject: &str, legacy: bool) {
    match app.backend {
        Backend::Postgres if legacy => {
            let sql = format!("UPDATE users SET google_id = '{subject}' WHERE email = $1");
            assert_eq!(change_users_by_sql(app, &sql, email).await, 1);
        }
        Backend::Postgres => {
            let pool = app.db.as_ref().unwrap().pool().await;
            sqlx::query(
                "INSERT INTO user_identities (issuer, subject, user_id, email) \
                 SELECT $1, $2, id, email FROM users WHERE email = $3",
            )
            .bind(issuer)
            .bind(subject)
            .bind(email)
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        Backend::File => {
            let path = app.data_dir().join("users.json");
            let mut file = users_file(app);
            let user = file["users"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|u| u["email"] == email)
                .unwrap();
            if legacy {
                user["googleId"] = json!(subject);
            } else {
                let now = chrono::Utc::now().to_rfc3339();
                user["identities"] = json!([{ "issuer": issuer, "subject": subject,
                    "email": email, "createdAt": now, "lastUsedAt": now }]);
            }
            let temp = path.with_extension("json.edit");
            std::fs::write(&temp, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        }
    }
}

#[tokio::test]
async fn accounts_open_to_a_provider_and_a_password_are_listed_and_revoke_password_shuts_the_registrant_out_on_both_stores()
 {
    if !redis_available().await {
        return;
    }
    for backend in BACKENDS {
        let provider = FakeProvider::start().await;
        let Some(mut app) = google_app(backend, &provider, |s| {
            s.redis_url = Some(secrecy::SecretString::from(redis_url()));
        })
        .await
        else {
            continue;
        };
        let issuer = provider.issuer.clone();
        // Someone registered the owner's address, and holds a session in it...
        let squatter = app.signed_up("victim@gmail.com").await;
        let victim = squatter["user"]["id"].as_str().unwrap().to_owned();
        let access = squatter["accessToken"].as_str().unwrap().to_owned();
        let refresh = squatter["refreshToken"].as_str().unwrap().to_owned();
        // ... which the owner then entered through Google, as versions without the rule let them.
        link_as_before(&app, "victim@gmail.com", &issuer, "sub-victim", false).await;
        // The old service linked by `googleId` alone, verifying nothing; on the file store that
        // link counts as a verified email.
        let id_of = |body: Value| body["user"]["id"].as_str().unwrap().to_owned();
        let legacy = id_of(app.signed_up("legacy@gmail.com").await);
        link_as_before(&app, "legacy@gmail.com", &issuer, "g-legacy", true).await;
        // Verified, then linked by Google sign-in: listed too, since a password still opens it.
        let linked = id_of(app.signed_up("linked@gmail.com").await);
        mark_email_verified(&app, "linked@gmail.com").await;
        let token = provider.id_token(&app, "sub-linked", "linked@gmail.com", json!({}));
        assert_eq!(signed_in(&app, &token).await["isNewUser"], false);
        // Not listed: no provider identity; created by Google, so no password.
        app.signed_up("plain@x.com").await;
        let token = provider.id_token(&app, "sub-new", "new@gmail.com", json!({}));
        assert_eq!(signed_in(&app, &token).await["isNewUser"], true);

        let work = tempfile::tempdir().unwrap();
        let data_dir = app.data_dir().to_str().unwrap().to_owned();
        let cli_events = work.path().join("cli-events");
        let database_url = app.db.as_ref().map(|db| db.url.clone());
        let redis = redis_url();
        let mut envs = vec![
            ("JWT_SECRET", JWT_SECRET),
            ("REDIS_URL", redis.as_str()),
            ("REDIS_KEY_PREFIX", app.settings.redis_key_prefix.as_str()),
            ("SECURITY_LOG_DIR", cli_events.to_str().unwrap()),
        ];
        match &database_url {
            Some(url) => envs.push(("DATABASE_URL", url.as_str())),
            None => envs.push(("DATA_DIR", data_dir.as_str())),
        }

        let report = run_cli(work.path(), &envs, &["users", "linked-with-password"]).await;
        assert!(report.status.success(), "{}", text(&report.stderr));
        let listed = text(&report.stdout);
        let line = |id: &str, email: &str, issuer: &str, verified: &str| {
            format!("{id} <{email}> has a password and signs in through {issuer}; email {verified}")
        };
        let verified_legacy = match backend {
            Backend::File => "verified",
            Backend::Postgres => "unverified",
        };
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(
            lines[..3],
            [
                line(&victim, "victim@gmail.com", &issuer, "unverified"),
                line(
                    &legacy,
                    "legacy@gmail.com",
                    "https://accounts.google.com",
                    verified_legacy
                ),
                line(&linked, "linked@gmail.com", &issuer, "verified"),
            ],
            "{backend:?}: {listed}"
        );
        let unverified = if backend == Backend::File { 1 } else { 2 };
        assert_eq!(
            lines[3],
            format!(
                "3 account(s) open to a provider identity and a password, {unverified} with an \
                 unverified email"
            )
        );

        // An account no provider signs in to keeps its password: nothing else would open it.
        let refused = run_cli(
            work.path(),
            &envs,
            &["users", "revoke-password", "plain@x.com"],
        )
        .await;
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
        assert!(
            text(&refused.stderr).contains("has no provider identity"),
            "{}",
            text(&refused.stderr)
        );
        assert_eq!(
            app.login("plain@x.com", PASSWORD).await.status(),
            StatusCode::OK
        );

        let revoked = run_cli(
            work.path(),
            &envs,
            &["users", "revoke-password", "VICTIM@gmail.com"],
        )
        .await;
        assert!(
            revoked.status.success(),
            "{backend:?}: {}",
            text(&revoked.stderr)
        );
        assert!(
            text(&revoked.stdout).contains(&format!(
                "{victim} <victim@gmail.com>: password removed, 1 session(s) ended"
            )),
            "{}",
            text(&revoked.stdout)
        );

        // The registrant is out: the password, the refresh token and the access token.
        assert_error(
            app.login("victim@gmail.com", PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_INVALID_CREDENTIALS",
        )
        .await;
        eventually("the refresh token refused", MIRROR_PATIENCE, || async {
            let status = app.refresh(&refresh).await.status();
            assert_ne!(
                status,
                StatusCode::OK,
                "{backend:?}: a revoked session refreshed"
            );
            (status == StatusCode::UNAUTHORIZED).then_some(())
        })
        .await;
        eventually("the access token refused", MIRROR_PATIENCE, || async {
            (app.me(&access).await.status() == StatusCode::UNAUTHORIZED).then_some(())
        })
        .await;
        // The owner signs in through Google, to the same account.
        let token = provider.id_token(&app, "sub-victim", "victim@gmail.com", json!({}));
        let owner = signed_in(&app, &token).await;
        assert_eq!(owner["user"]["id"], victim.as_str(), "{backend:?}");

        let again = run_cli(work.path(), &envs, &["users", "linked-with-password"]).await;
        let listed = text(&again.stdout);
        assert!(!listed.contains(&victim), "{listed}");
        assert!(listed.contains("\n2 account(s) open to"), "{listed}");

        let events = match backend {
            Backend::Postgres => app.events().await,
            Backend::File => events_from_files(&cli_events),
        };
        let recorded: Vec<&SecurityEvent> = events
            .iter()
            .filter(|e| e.event_type.as_str() == "mass_token_revocation")
            .collect();
        assert_eq!(recorded.len(), 1, "{backend:?}: {recorded:?}");
        let event = recorded[0];
        assert_eq!(event.user_id.as_deref(), Some(victim.as_str()));
        assert_eq!(event.metadata["reason"], "password_revoked");
        assert_eq!(event.metadata["by"], "cli");
        assert_eq!(event.metadata["passwordRemoved"], true);
        assert_eq!(event.metadata["tokensRevoked"], 1);
        app.stop().await;
    }
}
