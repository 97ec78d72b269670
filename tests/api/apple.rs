//! Sign in with Apple against a local provider (the fake OpenID provider in Apple's place, via
//! `APPLE_ISSUER_URL`), with real RSA (RS256) and P-256 (ES256) keys: identity-token checks, the
//! name from the body on the first sign-in only, the email from the token only, linking, replay,
//! the second factor, and the events.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_oidc::{self, FakeProvider, test_keys};
use crate::helpers::*;
use crate::two_factor::{at_least, code_now, enable, verify, with_totp_key};

const SERVICES_ID: &str = "art.fluxstudio.web";

/// A P-256 key pair made for these tests (`openssl ecparam -name prime256v1 -genkey`): its
/// PKCS#8 PEM for signing and its public point for the JWK.
const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIzKqc8M5vn6pyIB9\n+d8g/NbzuPJkyCr0TqvL+PNuPVyhRANCAAQftL/GT1iGBMvJjxsw6mdSvKfUQDRL\nIemzetbs1PW8hfE9hlCUIvCfZyXK8YVJgPQW5EsIervXLYWYV27lEbcf\n-----END PRIVATE KEY-----\n";
const EC_X: &str = "H7S_xk9YhgTLyY8bMOpnUryn1EA0SyHps3rW7NT1vIU";
const EC_Y: &str = "8T2GUJQi8J9nJcrxhUmA9BbkSwh6u9cthZhXbuURtx8";

fn ec_jwk() -> Value {
    json!({ "kty": "EC", "crv": "P-256", "kid": "apple-ec", "use": "sig", "alg": "ES256",
            "x": EC_X, "y": EC_Y })
}

/// The provider publishing one RSA and one EC key, as Apple may.
async fn apple_provider() -> FakeProvider {
    let provider = FakeProvider::start().await;
    provider.publish_jwks(vec![test_keys()[0].jwk(), ec_jwk()]);
    provider
}

async fn apple_app(backend: Backend, provider: &FakeProvider) -> Option<TestApp> {
    let issuer = provider.issuer.clone();
    TestApp::builder(backend)
        .settings(move |s| {
            with_totp_key(s);
            s.apple_client_id = vec![SERVICES_ID.into(), "art.fluxstudio.ios".into()];
            s.apple_issuer_url = Some(issuer);
        })
        .try_spawn()
        .await
}

/// Apple's claims for `sub`/`email` at the app's clock, with `patch` (`null` removes a claim).
fn claims(app: &TestApp, provider: &FakeProvider, sub: &str, email: &str, patch: Value) -> Value {
    let now = app.clock().now().timestamp();
    let mut claims = json!({
        "iss": provider.issuer, "aud": SERVICES_ID, "sub": sub, "email": email,
        "email_verified": "true", "is_private_email": "false", "auth_time": now,
        "iat": now, "exp": now + 600,
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

fn signed_es256(claims: &Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn signed_rs256(claims: &Value) -> String {
    fake_oidc::sign(claims, &test_keys()[0], &test_keys()[0].kid)
}

async fn apple(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/api/auth/apple", &body).await
}

fn first_time_user(first: &str, last: &str) -> Value {
    json!({ "name": { "firstName": first, "lastName": last }, "email": "someone.else@example.com" })
}

#[tokio::test]
async fn apple_signs_in_with_rsa_and_ec_keys_taking_the_name_once_on_both_stores() {
    for backend in BACKENDS {
        let provider = apple_provider().await;
        let Some(app) = apple_app(backend, &provider).await else {
            continue;
        };
        let email = "ann.apple@privaterelay.appleid.com";
        let rsa = signed_rs256(&claims(
            &app,
            &provider,
            "apple-sub-ann",
            email,
            json!({"is_private_email": "true"}),
        ));
        let first = apple(
            &app,
            json!({ "identityToken": rsa, "user": first_time_user("Ann", "Apple") }),
        )
        .await;
        assert_eq!(first.status(), StatusCode::OK);
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["isNewUser"], true, "{first}");
        assert_eq!(first["user"]["name"], "Ann Apple");
        // The email is the token's, never the body's.
        assert_eq!(first["user"]["email"], email);
        assert_eq!(first["user"]["emailVerified"], true);
        assert_eq!(
            app.me(first["accessToken"].as_str().unwrap())
                .await
                .status(),
            StatusCode::OK
        );

        // Later: an ES256 token; a name in the body changes nothing.
        app.clock().advance(std::time::Duration::from_secs(5));
        let ec = signed_es256(
            &claims(
                &app,
                &provider,
                "apple-sub-ann",
                email,
                json!({"nonce": "n-123"}),
            ),
            "apple-ec",
        );
        let again = apple(
            &app,
            json!({ "identityToken": ec, "nonce": "n-123", "user": first_time_user("Mallory", "X") }),
        )
        .await;
        assert_eq!(again.status(), StatusCode::OK);
        let again: Value = again.json().await.unwrap();
        assert_eq!(again["isNewUser"], false);
        assert_eq!(again["user"]["id"], first["user"]["id"]);
        assert_eq!(again["user"]["name"], "Ann Apple");

        let successes = at_least(&app, "apple_success", 2).await;
        assert_eq!(successes[0].metadata["provider"], "apple");
        assert_eq!(successes[0].metadata["isNewUser"], true);
        assert_eq!(successes[1].metadata["isNewUser"], false);
        assert_eq!(count_of(&app.events().await, "oauth_success"), 0);
    }
}

#[tokio::test]
async fn apple_refuses_each_bad_identity_token_with_its_reason() {
    let provider = apple_provider().await;
    let Some(app) = apple_app(Backend::File, &provider).await else {
        return;
    };
    let good = |patch: Value| claims(&app, &provider, "apple-sub-bad", "bad@icloud.com", patch);
    let now = app.clock().now().timestamp();
    let mut tampered = signed_es256(&good(json!({})), "apple-ec");
    tampered.replace_range(tampered.len() - 6.., "AAAAAA");
    // RS256 claimed for the EC key: the key decides the algorithm, so this is refused.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("apple-ec".into());
    let alg_swap = jsonwebtoken::encode(
        &header,
        &good(json!({})),
        &EncodingKey::from_rsa_pem(test_keys()[0].private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "identityToken": signed_rs256(&good(json!({"aud": "someone.else"}))) }),
            "wrong_audience",
        ),
        (
            json!({ "identityToken": signed_rs256(&good(json!({"iss": "https://appleid.apple.com.evil"}))) }),
            "wrong_issuer",
        ),
        (
            json!({ "identityToken": signed_rs256(&good(json!({"iat": now - 7200, "exp": now - 3600}))) }),
            "expired",
        ),
        (json!({ "identityToken": tampered }), "bad_signature"),
        (
            json!({ "identityToken": signed_es256(&good(json!({})), "no-such-kid") }),
            "unknown_kid",
        ),
        (
            json!({ "identityToken": signed_rs256(&good(json!({"email": null}))) }),
            "email_missing",
        ),
        (
            json!({ "identityToken": signed_rs256(&good(json!({"nonce": "theirs"}))), "nonce": "ours" }),
            "nonce_mismatch",
        ),
        (json!({ "identityToken": alg_swap }), "bad_signature"),
        (json!({ "identityToken": "not.a.jwt" }), "malformed_token"),
    ];
    for (body, _) in &cases {
        assert_error(
            apple(&app, body.clone()).await,
            StatusCode::UNAUTHORIZED,
            "AUTH_APPLE_INVALID",
        )
        .await;
    }
    // Replay: the same token twice.
    let once = signed_rs256(&good(
        json!({"sub": "apple-sub-once", "email": "once@icloud.com"}),
    ));
    assert_eq!(
        apple(&app, json!({ "identityToken": once })).await.status(),
        StatusCode::OK
    );
    assert_error(
        apple(&app, json!({ "identityToken": once })).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_APPLE_INVALID",
    )
    .await;
    // Bad bodies.
    let missing = assert_error(
        apple(&app, json!({ "user": first_time_user("A", "B") })).await,
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(missing["field"], "identityToken");
    assert_error(
        apple(&app, json!({ "identityToken": 5 })).await,
        StatusCode::BAD_REQUEST,
        "INVALID_BODY",
    )
    .await;
    let not_json = app
        .client
        .post(app.url("/api/auth/apple"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(
        not_json,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;

    let failed = at_least(&app, "apple_failed", cases.len() + 2).await;
    let reasons: Vec<&str> = failed
        .iter()
        .map(|e| e.metadata["reason"].as_str().unwrap_or_default())
        .collect();
    for (_, reason) in &cases {
        assert!(reasons.contains(reason), "{reason} not in {reasons:?}");
    }
    assert!(reasons.contains(&"token_replayed"), "{reasons:?}");
    // Only the one good token made an account.
    let users: Value =
        serde_json::from_slice(&std::fs::read(app.data_dir().join("users.json")).unwrap()).unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn apple_never_enters_an_unverified_account_and_answers_501_unconfigured() {
    for backend in BACKENDS {
        let provider = apple_provider().await;
        let Some(app) = apple_app(backend, &provider).await else {
            continue;
        };
        let email = unique_email();
        app.signed_up(&email).await;
        let token = signed_rs256(&claims(&app, &provider, "apple-sub-pre", &email, json!({})));
        assert_error(
            apple(&app, json!({ "identityToken": token })).await,
            StatusCode::CONFLICT,
            "AUTH_ACCOUNT_EXISTS_UNVERIFIED",
        )
        .await;
        let failed = at_least(&app, "apple_failed", 1).await;
        assert_eq!(failed[0].metadata["reason"], "account_exists_unverified");
    }
    let Some(plain) = TestApp::try_spawn(Backend::File).await else {
        return;
    };
    assert_error(
        apple(&plain, json!({ "identityToken": "x.y.z" })).await,
        StatusCode::NOT_IMPLEMENTED,
        "NOT_IMPLEMENTED",
    )
    .await;
}

#[tokio::test]
async fn apple_sign_in_asks_for_the_second_factor() {
    let provider = apple_provider().await;
    let Some(app) = apple_app(Backend::Postgres, &provider).await else {
        return;
    };
    let email = "two.step@icloud.com";
    let first: Value = apple(
        &app,
        json!({ "identityToken": signed_rs256(&claims(&app, &provider, "apple-sub-2fa", email, json!({}))) }),
    )
    .await
    .json()
    .await
    .unwrap();
    let (secret, _) = enable(&app, first["accessToken"].as_str().unwrap()).await;
    let second: Value = apple(
        &app,
        json!({ "identityToken": signed_es256(&claims(&app, &provider, "apple-sub-2fa", email, json!({})), "apple-ec") }),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(second["requires2FA"], true, "{second}");
    assert!(second.get("accessToken").is_none());
    let done = verify(
        &app,
        second["tempToken"].as_str().unwrap(),
        &code_now(&app, &secret),
    )
    .await;
    assert_eq!(done.status(), StatusCode::OK);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["isNewUser"], false);
    let successes = at_least(&app, "apple_success", 2).await;
    assert_eq!(successes[1].metadata["secondFactor"], "totp");
}
