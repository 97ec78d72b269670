//! FluxStudio's access tokens at the switch: after `import-fluxstudio`, a token FluxStudio issued
//! to an imported user works on flux-auth only while `LEGACY_ACCESS_TOKENS_UNTIL` is ahead of the
//! service's clock, never without the setting, never when FluxStudio's Redis has it revoked, never
//! a `2fa_pending` one nor one signed with another secret; its acceptance is recorded once per
//! token; and a value more than 15 minutes ahead stops `check-config`.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::fluxstudio::*;
use crate::helpers::*;

/// A token as FluxStudio signs them (jsonwebtoken for Node: `{"alg":"HS256","typ":"JWT"}`).
fn fluxstudio_token(secret: &str, claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// FluxStudio's access-token claims for the imported user `index`, issued now for 15 minutes.
fn access_claims(index: usize, jti: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({
        "id": USERS[index].id,
        "email": USERS[index].email,
        "userType": "client",
        "type": "access",
        "jti": jti,
        "iat": now,
        "exp": now + 900,
    })
}

fn jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn imported_db() -> Option<TestDb> {
    if !redis_available().await {
        return None;
    }
    let db = fluxstudio_db(Variant::Current).await?;
    let work = tempfile::tempdir().unwrap();
    let out = run_cli(
        work.path(),
        &[("DATABASE_URL", &db.url)],
        &["import-fluxstudio"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    Some(db)
}

async fn app_on(db: TestDb, until: Option<chrono::DateTime<Utc>>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.database_url = Some(SecretString::from(db.url.clone()));
    settings.redis_url = Some(SecretString::from(redis_url()));
    settings.access_token_ttl_secs = 60;
    settings.legacy_access_tokens_until = until.map(|t| t.to_rfc3339());
    TestApp::start(settings, dir, Some(db), Backend::Postgres).await
}

async fn me_id(app: &TestApp, token: &str) -> Option<String> {
    let response = app.me(token).await;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body: Value = response.json().await.unwrap();
    Some(body["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_fluxstudio_access_token_works_only_inside_the_window_and_never_when_revoked() {
    let Some(db) = imported_db().await else {
        return;
    };
    let alice = fluxstudio_token(JWT_SECRET, access_claims(0, &jti()));

    // Without the setting, FluxStudio's token is not this service's.
    let app = app_on(db, None).await;
    assert_error(
        app.me(&alice).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;

    let until = Utc::now() + chrono::Duration::minutes(10);
    let app = app
        .restart_with(|s| s.legacy_access_tokens_until = Some(until.to_rfc3339()))
        .await;
    for _ in 0..3 {
        assert_eq!(me_id(&app, &alice).await.as_deref(), Some(USERS[0].id));
    }
    let bob_jti = jti();
    let bob = fluxstudio_token(JWT_SECRET, access_claims(1, &bob_jti));
    assert_eq!(me_id(&app, &bob).await.as_deref(), Some(USERS[1].id));

    // Revoked in FluxStudio's Redis key: refused.
    let revoked_jti = jti();
    let revoked = fluxstudio_token(JWT_SECRET, access_claims(1, &revoked_jti));
    let key = format!("revoked_token:{revoked_jti}");
    let mut redis = redis_conn().await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .arg("EX")
        .arg(900)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_error(
        app.me(&revoked).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();

    // Never a two-factor temp token, never another secret, never one past its own expiry.
    let now = Utc::now().timestamp();
    let pending = fluxstudio_token(
        JWT_SECRET,
        json!({ "id": USERS[6].id, "type": "2fa_pending", "iat": now, "exp": now + 300 }),
    );
    assert_error(
        app.me(&pending).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    let forged = fluxstudio_token(&random_secret(), access_claims(0, &jti()));
    assert_error(
        app.me(&forged).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
    let mut old = access_claims(0, &jti());
    old["iat"] = json!(now - 1200);
    old["exp"] = json!(now - 300);
    let old = fluxstudio_token(JWT_SECRET, old);
    assert_error(
        app.me(&old).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_EXPIRED",
    )
    .await;

    // Logged out with it, it is revoked as any token is.
    assert_eq!(app.logout(&bob).await.status(), StatusCode::OK);
    assert_error(
        app.me(&bob).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;

    // One event per token accepted, however many requests it made.
    let events = app
        .events_where(|e| count_of(e, "legacy_access_token_accepted") >= 2)
        .await;
    let accepted: Vec<_> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "legacy_access_token_accepted")
        .collect();
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    assert_eq!(accepted[0].user_id.as_deref(), Some(USERS[0].id));
    assert_eq!(accepted[1].user_id.as_deref(), Some(USERS[1].id));
    assert_eq!(accepted[1].metadata["accessTokenId"], bob_jti.as_str());
    assert_eq!(
        accepted[1].token_id.map(|t| t.to_string()),
        Some(bob_jti.clone())
    );
    let refused = events
        .iter()
        .filter(|e| e.event_type.as_str() == "token_verification_failed")
        .filter_map(|e| e.metadata.get("reason").and_then(Value::as_str))
        .collect::<Vec<_>>();
    assert!(refused.contains(&"token_revoked"), "{refused:?}");
    assert!(refused.contains(&"token type"), "{refused:?}");

    // A flux-auth token past its time is expired, whatever the window: never tried as FluxStudio's.
    let login = app.login("bob@example.com", BOB_PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
    let login: Value = login.json().await.unwrap();
    let own = login["accessToken"].as_str().unwrap().to_owned();
    app.clock().advance(Duration::from_secs(120));
    assert_error(
        app.me(&own).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_EXPIRED",
    )
    .await;

    // Past the instant (the token itself still has minutes to live): refused.
    assert_eq!(me_id(&app, &alice).await.as_deref(), Some(USERS[0].id));
    app.clock().advance(Duration::from_secs(10 * 60));
    assert_error(
        app.me(&alice).await,
        StatusCode::UNAUTHORIZED,
        "AUTH_TOKEN_INVALID",
    )
    .await;
}

#[tokio::test]
async fn check_config_refuses_a_window_past_fifteen_minutes_and_says_to_remove_a_past_one() {
    let work = tempfile::tempdir().unwrap();
    let check = |until: chrono::DateTime<Utc>| {
        let until = until.to_rfc3339();
        let work = work.path().to_owned();
        async move {
            run_cli(
                &work,
                &[
                    ("JWT_SECRET", JWT_SECRET),
                    ("REDIS_URL", "redis://127.0.0.1:6379"),
                    ("LEGACY_ACCESS_TOKENS_UNTIL", &until),
                ],
                &["check-config"],
            )
            .await
        }
    };
    let late = check(Utc::now() + chrono::Duration::minutes(16)).await;
    assert_eq!(late.status.code(), Some(78), "{}", text(&late.stdout));
    assert!(
        text(&late.stderr).contains("more than 15 minutes"),
        "{}",
        text(&late.stderr)
    );
    let fine = check(Utc::now() + chrono::Duration::minutes(14)).await;
    assert!(fine.status.success(), "{}", text(&fine.stderr));
    assert!(text(&fine.stdout).contains("FluxStudio's access tokens: accepted until"));
    let past = check(Utc::now() - chrono::Duration::minutes(1)).await;
    assert!(past.status.success(), "{}", text(&past.stderr));
    assert!(
        text(&past.stdout).contains("remove the setting"),
        "{}",
        text(&past.stdout)
    );
}
