//! Access tokens (C1–C7, C11, C13): what a valid token carries; every forged, edited or confused
//! token gets a 401 in the Error shape with `WWW-Authenticate` (never a 500) and one
//! `token_verification_failed` event; `JWT_SECRET_PREVIOUS` keeps old tokens valid; weak secrets
//! stop startup with a message that says how to fix them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flux_auth::app::App;
use flux_auth::config::Environment;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

const OTHER_SECRET: &str = "attacker-key-0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a";
const ROTATED_SECRET: &str = "rotated-key-9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d";

/// Signs `claims` with `alg` and `key` (via jsonwebtoken); `edit` adjusts the header first.
fn signed(alg: Algorithm, key: &str, claims: &Value, edit: impl FnOnce(&mut Header)) -> String {
    let mut header = Header::new(alg);
    header.typ = Some("at+jwt".into());
    edit(&mut header);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

/// An unsigned token with a hand-built header: what jsonwebtoken refuses to produce.
fn unsigned(header: Value, claims: &Value) -> String {
    format!("{}.{}.", b64url_json(&header), b64url_json(claims))
}

/// `claims` with `key` set to `value`, or removed when `value` is null.
fn edited(claims: &Value, key: &str, value: Value) -> Value {
    let mut claims = claims.clone();
    let map = claims.as_object_mut().unwrap();
    match value {
        Value::Null => map.remove(key),
        value => map.insert(key.to_owned(), value),
    };
    claims
}

/// HS-signed with `key` under the header `kid`.
fn keyed(alg: Algorithm, key: &str, kid: &str, claims: &Value) -> String {
    signed(alg, key, claims, |h| h.kid = Some(kid.to_owned()))
}

/// Asserts a 401 in the Error shape with `WWW-Authenticate: Bearer…`; returns the body.
async fn assert_401(response: Response, code: &str, what: &str) -> Value {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    let challenge = response
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"))
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    assert_error(response, StatusCode::UNAUTHORIZED, code).await
}

#[tokio::test]
async fn access_token_carries_the_documented_header_and_claims() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let email = unique_email();
    let body = app.signed_up(&email).await;
    let token = body["accessToken"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let kid = header.kid.expect("kid header");
    assert!(!kid.is_empty() && !JWT_SECRET.contains(&kid), "{kid}");

    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[&app.settings.jwt_issuer]);
    validation.set_audience(&[&app.settings.jwt_audience]);
    let claims: Value = jsonwebtoken::decode(
        token,
        &DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .expect("verifies with the configured secret, issuer and audience")
    .claims;
    let user = &body["user"];
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["id"], user["id"]);
    assert_eq!(claims["email"], email.as_str());
    assert_eq!(claims["userType"], "client");
    assert_eq!(claims["type"], "access");
    assert_eq!(claims["iss"], "flux-auth");
    assert_eq!(claims["aud"], "fluxstudio");
    for id in ["sid", "jti"] {
        assert!(
            claims[id].as_str().unwrap().parse::<uuid::Uuid>().is_ok(),
            "{id}"
        );
    }
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 900, "C11: the documented access TTL");
    assert!((iat - chrono::Utc::now().timestamp()).abs() < 60);
    assert_eq!(body["expiresAt"].as_i64().unwrap() / 1000, exp);

    let me = app.me(token).await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(&me.json::<Value>().await.unwrap(), user);
    // Every login is a new session with a new token id.
    let again = jwt_claims(app.logged_in(&email).await["accessToken"].as_str().unwrap());
    assert_ne!(again["sid"], claims["sid"]);
    assert_ne!(again["jti"], claims["jti"]);
}

#[tokio::test]
async fn c1_c5_forged_and_confused_tokens_get_401_and_one_event_each() {
    // More refused tokens than the per-address summary threshold: every one is recorded here.
    let app = TestApp::builder(Backend::File)
        .settings(|s| s.token_failure_log_threshold = 0)
        .spawn()
        .await;
    let body = app.signed_up(&unique_email()).await;
    let valid = body["accessToken"].as_str().unwrap();
    let refresh_token = body["refreshToken"].as_str().unwrap();
    let kid = jsonwebtoken::decode_header(valid).unwrap().kid.unwrap();
    let claims = jwt_claims(valid);
    let right = |claims: &Value| keyed(Algorithm::HS256, JWT_SECRET, &kid, claims);
    let now = chrono::Utc::now().timestamp();

    // Control: the genuine claims re-signed by this helper are accepted, so every rejection
    // below is caused by the one thing that was changed.
    assert_eq!(app.me(&right(&claims)).await.status(), StatusCode::OK);

    let parts: Vec<&str> = valid.split('.').collect();
    let (head, payload, signature) = (parts[0], parts[1], parts[2]);
    let admin = b64url_json(&edited(&claims, "userType", json!("admin")));
    let none_header = |alg: &str| json!({ "alg": alg, "typ": "at+jwt", "kid": kid });
    let ghost = edited(
        &edited(&claims, "sub", json!("ghost")),
        "id",
        json!("ghost"),
    );
    let mut forged: Vec<(&str, String)> = ["none", "None", "NONE", "nOnE"]
        .into_iter()
        .map(|alg| ("alg none", unsigned(none_header(alg), &claims)))
        .collect();
    forged.extend([
        ("alg none, old signature", {
            let h = b64url_json(&none_header("none"));
            format!("{h}.{payload}.{signature}")
        }),
        ("signature removed", format!("{head}.{payload}.")),
        ("signature segment removed", format!("{head}.{payload}")),
        ("payload edited", format!("{head}.{admin}.{signature}")),
        (
            "another key",
            keyed(Algorithm::HS256, OTHER_SECRET, &kid, &claims),
        ),
        (
            "another key and kid",
            keyed(Algorithm::HS256, OTHER_SECRET, "k2", &claims),
        ),
        (
            "HS384, right secret",
            keyed(Algorithm::HS384, JWT_SECRET, &kid, &claims),
        ),
        (
            "HS512, right secret",
            keyed(Algorithm::HS512, JWT_SECRET, &kid, &claims),
        ),
        ("missing exp", right(&edited(&claims, "exp", Value::Null))),
        ("missing iat", right(&edited(&claims, "iat", Value::Null))),
        (
            "nbf in the future",
            right(&edited(&claims, "nbf", json!(now + 600))),
        ),
        ("missing iss", right(&edited(&claims, "iss", Value::Null))),
        (
            "wrong iss",
            right(&edited(&claims, "iss", json!("https://evil.example"))),
        ),
        ("missing aud", right(&edited(&claims, "aud", Value::Null))),
        (
            "wrong aud",
            right(&edited(&claims, "aud", json!("another-app"))),
        ),
        ("missing sub", right(&edited(&claims, "sub", Value::Null))),
        (
            "sub differs from id",
            right(&edited(&claims, "sub", json!("someone-else"))),
        ),
        ("sub of no user", right(&ghost)),
        (
            "type refresh",
            right(&edited(&claims, "type", json!("refresh"))),
        ),
        ("type missing", right(&edited(&claims, "type", Value::Null))),
        (
            "typ JWT",
            signed(Algorithm::HS256, JWT_SECRET, &claims, |h| {
                h.kid = Some(kid.clone());
                h.typ = Some("JWT".into());
            }),
        ),
        (
            "typ missing",
            signed(Algorithm::HS256, JWT_SECRET, &claims, |h| {
                h.kid = Some(kid.clone());
                h.typ = None;
            }),
        ),
        (
            "kid path traversal",
            keyed(Algorithm::HS256, JWT_SECRET, "../../x", &claims),
        ),
        (
            "kid SQL",
            keyed(Algorithm::HS256, JWT_SECRET, "' OR 1=1 --", &claims),
        ),
        ("refresh token as access token", refresh_token.to_owned()),
        ("three garbage segments", "not.a.jwt".to_owned()),
    ]);
    for (what, token) in &forged {
        assert_401(app.me(token).await, "AUTH_TOKEN_INVALID", what).await;
    }
    let expired = right(&edited(
        &edited(&claims, "iat", json!(now - 1200)),
        "exp",
        json!(now - 300),
    ));
    assert_401(
        app.me(&expired).await,
        "AUTH_TOKEN_EXPIRED",
        "exp in the past",
    )
    .await;
    assert_401(
        app.refresh(valid).await,
        "AUTH_REFRESH_INVALID",
        "access token presented to /refresh",
    )
    .await;
    // The genuine token still works: none of the above revoked anything.
    assert_eq!(app.me(valid).await.status(), StatusCode::OK);

    let presented = forged.len() + 2;
    let events = app
        .events_where(|e| count_of(e, "token_verification_failed") >= presented)
        .await;
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "token_verification_failed")
        .collect();
    assert_eq!(failures.len(), presented, "one event per presented token");
    assert_eq!(
        failures
            .iter()
            .filter(|e| e.metadata["tokenKind"] == "refresh")
            .count(),
        1
    );
    assert!(failures.iter().any(|e| e.metadata["reason"] == "expired"));
    for event in &failures {
        assert!(
            event.metadata["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
        let text = serde_json::to_string(event).unwrap();
        for (what, token) in &forged {
            assert!(!text.contains(token.as_str()), "{what}: token in an event");
        }
    }
}

#[tokio::test]
async fn c6_jku_x5u_and_embedded_jwk_headers_are_never_fetched_or_trusted() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let valid = app.signed_up(&unique_email()).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let kid = jsonwebtoken::decode_header(&valid).unwrap().kid.unwrap();
    let claims = jwt_claims(&valid);

    // A key server that hands out the attacker's key: a service that fetched it would be fooled.
    let attacker_jwk = Jwk::from_encoding_key(
        &EncodingKey::from_secret(OTHER_SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let fetches = Arc::new(AtomicUsize::new(0));
    let key_server = tokio::spawn({
        let fetches = fetches.clone();
        let jwks = json!({ "keys": [attacker_jwk] }).to_string();
        async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                fetches.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                    jwks.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        }
    });

    type HeaderEdit<'a> = Box<dyn Fn(&mut Header) + 'a>;
    let headers: [(&str, HeaderEdit); 4] = [
        ("jku", Box::new(|h: &mut Header| h.jku = Some(url.clone()))),
        ("x5u", Box::new(|h: &mut Header| h.x5u = Some(url.clone()))),
        (
            "jwk",
            Box::new(|h: &mut Header| h.jwk = Some(attacker_jwk.clone())),
        ),
        (
            "jku and own kid",
            Box::new(|h: &mut Header| {
                h.jku = Some(url.clone());
                h.kid = Some("attacker".into());
            }),
        ),
    ];
    for (what, edit) in &headers {
        let forged = signed(Algorithm::HS256, OTHER_SECRET, &claims, |h| {
            h.kid = Some(kid.clone());
            edit(h);
        });
        assert_401(app.me(&forged).await, "AUTH_TOKEN_INVALID", what).await;
        // Signed with the real key, the header may be ignored or refused, but nothing breaks.
        let genuine = signed(Algorithm::HS256, JWT_SECRET, &claims, |h| {
            h.kid = Some(kid.clone());
            edit(h);
        });
        let status = app.me(&genuine).await.status();
        assert!(
            status == StatusCode::OK || status == StatusCode::UNAUTHORIZED,
            "{what} on a genuine token: {status}"
        );
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        0,
        "the service fetched a key"
    );
    key_server.abort();
}

#[tokio::test]
async fn c7_malformed_authorization_headers_get_401_never_500() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let valid = app.signed_up(&unique_email()).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    // Under the 16 KiB head limit (a 64 KB one is a 431: bad_input.rs).
    let huge = format!("Bearer {}", "a".repeat(8 * 1024));
    let cases = [
        ("empty", String::new()),
        ("scheme only", "Bearer".to_owned()),
        ("scheme and space", "Bearer ".to_owned()),
        ("two segments", "Bearer abc.def".to_owned()),
        ("four segments", "Bearer a.b.c.d".to_owned()),
        ("not base64", "Bearer !!!.@@@.###".to_owned()),
        ("8 KB token", huge),
        ("doubled Bearer", format!("Bearer Bearer {valid}")),
        ("Basic", "Basic dXNlcjpwYXNz".to_owned()),
        ("no scheme", valid.clone()),
    ];
    for (what, value) in cases {
        let response = app
            .client
            .get(app.url("/api/auth/me"))
            .header("user-agent", UA)
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_401(response, "AUTH_TOKEN_INVALID", what).await;
    }
    let no_header = app
        .client
        .get(app.url("/api/auth/me"))
        .send()
        .await
        .unwrap();
    assert_401(no_header, "AUTH_TOKEN_MISSING", "no header").await;
    let in_query = app
        .client
        .get(app.url(&format!("/api/auth/me?access_token={valid}")))
        .send()
        .await
        .unwrap();
    assert_401(in_query, "AUTH_TOKEN_MISSING", "token in the query string").await;
}

#[tokio::test]
async fn token_info_describes_the_presented_token() {
    let app = TestApp::try_spawn(Backend::File).await.unwrap();
    let email = unique_email();
    let body = app.signed_up(&email).await;
    let token = body["accessToken"].as_str().unwrap();
    let response = app.get_auth("/api/auth/token-info", token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let info: Value = response.json().await.unwrap();
    assert_eq!(info["userId"], body["user"]["id"]);
    assert_eq!(info["email"], email.as_str());
    assert_eq!(info["userType"], "client");
    let time = |key: &str| {
        chrono::DateTime::parse_from_rfc3339(info[key].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let claims = jwt_claims(token);
    assert_eq!(
        time("issuedAt").timestamp(),
        claims["iat"].as_i64().unwrap()
    );
    assert_eq!(
        time("expiresAt").timestamp(),
        claims["exp"].as_i64().unwrap()
    );
    let left = info["timeToExpiry"].as_i64().unwrap();
    assert!((1..=900).contains(&left), "{left}");
    assert_401(
        app.get_auth("/api/auth/token-info", "not.a.jwt").await,
        "AUTH_TOKEN_INVALID",
        "token-info with a bad token",
    )
    .await;
}

#[tokio::test]
async fn jwt_secret_previous_keeps_tokens_of_the_old_secret_valid() {
    for backend in BACKENDS {
        let Some(app) = TestApp::try_spawn(backend).await else {
            continue;
        };
        let body = app.signed_up(&unique_email()).await;
        let old_access = body["accessToken"].as_str().unwrap().to_owned();
        let old_kid = jsonwebtoken::decode_header(&old_access).unwrap().kid;

        let rotated = app
            .restart_with(|s| {
                s.jwt_secret_previous = s.jwt_secret.take();
                s.jwt_secret = Some(SecretString::from(ROTATED_SECRET));
            })
            .await;
        assert_eq!(
            rotated.me(&old_access).await.status(),
            StatusCode::OK,
            "{backend:?}"
        );
        let refreshed = rotated
            .refresh(body["refreshToken"].as_str().unwrap())
            .await;
        assert_eq!(
            refreshed.status(),
            StatusCode::OK,
            "{backend:?}: refresh survives rotation"
        );
        let new_access = refreshed.json::<Value>().await.unwrap()["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(
            jsonwebtoken::decode_header(&new_access).unwrap().kid,
            old_kid
        );
        assert_eq!(rotated.me(&new_access).await.status(), StatusCode::OK);

        // Once the previous secret is dropped, its tokens stop working: it was that key, and
        // nothing else, that accepted them.
        let retired = rotated.restart_with(|s| s.jwt_secret_previous = None).await;
        assert_401(
            retired.me(&old_access).await,
            "AUTH_TOKEN_INVALID",
            "retired key",
        )
        .await;
        assert_eq!(retired.me(&new_access).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn c13_weak_or_missing_secrets_stop_startup_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let secret = |s: &str| Some(SecretString::from(s.to_owned()));
    let mut cases: Vec<(&str, flux_auth::config::Settings)> = Vec::new();
    for (what, value) in [
        ("16 bytes", "k9#Qz7!mV2@xL4pR"),
        ("31 bytes", "k9#Qz7!mV2@xL4pR8sT1wY6uN3bC5dE"),
        (
            "published default",
            "your-super-secret-jwt-key-change-this-in-production",
        ),
    ] {
        let mut s = test_settings(dir.path());
        s.jwt_secret = secret(value);
        cases.push((what, s));
    }
    let mut weak_previous = test_settings(dir.path());
    weak_previous.jwt_secret_previous = secret("old-and-short");
    cases.push(("weak previous secret", weak_previous));
    let mut production = test_settings(dir.path());
    production.node_env = Environment::Production;
    production.jwt_secret = None;
    cases.push(("production without a secret", production));

    for (what, settings) in cases {
        let message = match App::build(settings).await {
            Ok(_) => panic!("{what}: the service started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(message.contains("JWT_SECRET"), "{what}: {message}");
        assert!(
            message.contains("gen-secret"),
            "{what}: says how to fix it: {message}"
        );
    }
    assert!(
        !dir.path().join("data/.jwt-secret").exists(),
        "production never generates a secret"
    );
    // The boundary: 32 random bytes are enough.
    let mut ok = test_settings(dir.path());
    ok.jwt_secret = secret("k9#Qz7!mV2@xL4pR8sT1wY6uN3bC5dEf");
    assert!(
        App::build(ok).await.is_ok(),
        "a 32-byte random secret is accepted"
    );
}

#[tokio::test]
async fn c13_without_a_secret_development_generates_one_and_keeps_it() {
    let app = TestApp::builder(Backend::File)
        .settings(|s| s.jwt_secret = None)
        .try_spawn()
        .await
        .unwrap();
    let path = app.data_dir().join(".jwt-secret");
    let meta = std::fs::metadata(&path).expect("secret kept in DATA_DIR");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let generated = std::fs::read_to_string(&path).unwrap();
    assert!(generated.trim().len() >= 32);
    let token = app.signed_up(&unique_email()).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let restarted = app.restart_with(|_| {}).await;
    assert_eq!(
        restarted.me(&token).await.status(),
        StatusCode::OK,
        "same secret after restart"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), generated);
}
